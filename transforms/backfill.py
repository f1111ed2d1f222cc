"""Backfill: a snapshot's qualified profiles as export records, vectorized (docs/semantics.md#exports "Backfill").

For the selected mapped audiences, every row whose rule holds at ``as_of`` is exported once
per merge policy, as ``realized``: the selected audiences it qualifies for play the part of the
changed ones, plus every other audience of that policy it is realized in. Records are built by
pyarrow string kernels over whole record batches (the qualifying rows only): mapped attributes
as JSON fragments, the ``ups`` entries from the same text pieces the streaming
``RecordFormatter`` uses, and the identity map by joining list offsets, so no Python object is
made per row or attribute. The bytes are those of ``RecordFormatter.format`` for the profile
that ``snapshot.snapshot_profiles`` reads from the row: identity maps and memberships are read
by the same functions (``snapshot.normalized_identities``, ``snapshot.membership_entries``);
where Arrow cannot format a value the way ``json`` does (strings with control characters,
floats outside [1e-4, 1e10), lists, timestamps, decimals, binary; partition keys over 256
characters) those values alone go through Python.

``lastQualificationTime`` is the snapshot's ``segmentMembership`` entry for the audience (any
status) when it has one of the form ``YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM|±HHMM)``, else the
row's ``timestamp`` (``as_of`` when that is null), floored to the second.

With ``activation.consent``, the consent rule is one more boolean mask over the batch (one
merged view per row, as for the audiences): only rows that consent at ``as_of`` are exported,
the others are counted (``consent_withheld``). With ``include_export_metadata`` each record ends
with ``_export`` (sequence 0, ``at`` = ``as_of``, trigger ``backfill``); its id, a SHA-256 per
row, is the one part made in Python.

``ExportSnapshot`` is the Beam step. It yields ``ExportRecordBatch`` elements (a batch's records
of one merge policy, as Arrow text pieces) and knows nothing of the sink: the file sink builds
its lines from the pieces in one pass, ``KinesisWrite`` takes their records one by one. Without
event rules, each Parquet row group is read (projected columns), evaluated and formatted inside
one DoFn, so record batches never cross a Beam boundary; with event rules, the bucket join of
``transforms.event_join`` comes first. Rows without ``profileId`` are skipped.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import reduce
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms.arrow_text import concat as _concat, json_escaped, python_where as _python_where
from transforms import progress
from transforms.audiences import AudienceSet, compile_consent
from transforms.config import ExportConfig
from transforms.event_join import EventContributions, EventPlan, default_buckets, from_ipc, in_order, split_by_bucket
from transforms.model import DeadLetter, ExportRecordBatch
from transforms.record_format import MAX_PARTITION_KEY_CHARS, RecordFormatter, encode_json, export_id
from transforms.snapshot import (DEAD_LETTER, RESERVED, ReadParquetRowGroups, check_files, drop_nulls,
                                 membership_entries, normalized_identities, read_row_group, split_dead_letters,
                                 total_bytes)
from transforms.timeutil import format_qualification_time

_NO_TEXT = pa.scalar(None, pa.string())


def _join_members(members: Sequence[pa.Array]) -> pa.Array:
    """Concatenation of each row's present members ("" where none), in one pass. Members
    carry their own leading comma; ``null_handling="replace"``, not ``"skip"``, which drops
    rows whose values are all null (docs/DEVELOPING.md)."""
    return pc.binary_join_element_wise(*members, "", null_handling="replace", null_replacement="")


def _drop_comma(joined: pa.Array) -> pa.Array:
    """Without the leading (ASCII) comma; sliced as bytes, ~30x faster than by code points."""
    return pc.binary_slice(joined.view(pa.binary()), 1, 2 ** 31 - 1).view(pa.string())


def _json_floats(values: pa.Array) -> pa.Array:
    """``repr`` of floats: Arrow's shortest text agrees with it on [1e-4, 1e10) (plus ``.0``
    on integral values); other magnitudes and non-finite values go through ``json``."""
    values = values.cast(pa.float64())
    text = pc.cast(values, pa.string())
    text = pc.if_else(pc.match_substring_regex(text, r"[.e]"), text, _concat(text, ".0"))
    magnitude = pc.abs(values)
    odd = pc.fill_null(pc.and_(pc.not_equal(magnitude, 0.0),
                               pc.invert(pc.and_(pc.greater_equal(magnitude, 1e-4), pc.less(magnitude, 1e10)))), False)
    fixed = _python_where(values, odd, encode_json)
    return text if fixed is None else pc.replace_with_mask(text, odd, fixed)


def json_member(prefix: str, values: pa.Array) -> Optional[pa.Array]:
    """``prefix`` (``,"key":``) and the value as JSON per row, null where absent; None when
    the column can hold nothing to export. A struct is an object of its present fields in
    field order, absent when empty."""
    t = values.type
    if pa.types.is_dictionary(t):
        values, t = values.cast(t.value_type), t.value_type
    if pa.types.is_struct(t):
        return json_object(prefix, object_members(values, {f.name: None for f in t}))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _concat(prefix + '"', json_escaped(values.cast(pa.string())), '"')
    if pa.types.is_integer(t):
        return _concat(prefix, pc.cast(values, pa.string()))
    if pa.types.is_floating(t):
        return _concat(prefix, _json_floats(values))
    if pa.types.is_boolean(t):
        return pc.if_else(values, prefix + "true", prefix + "false")
    if pa.types.is_date(t):
        return _concat(prefix + '"', pc.cast(values.cast(pa.date32()), pa.string()), '"')
    if pa.types.is_null(t):
        return None
    # lists, maps, timestamps, decimals, binary: the per-profile encoder, per present value
    present = values.is_valid()
    encoded = _python_where(values, present, lambda v: None if (d := drop_nulls(v)) == {} else encode_json(d))
    if encoded is None:
        return None
    return _concat(prefix, pc.replace_with_mask(pa.nulls(len(values), pa.string()), present, encoded))


def json_object(prefix: str, members: Optional[pa.Array]) -> Optional[pa.Array]:
    """``prefix{...}`` from joined members, null where there are none (empty objects are left
    out, as absent values are)."""
    if members is None:
        return None
    text = _concat(prefix + "{", _drop_comma(members), "}")
    return pc.if_else(pc.greater(pc.binary_length(members), 0), text, _NO_TEXT)


def _child(values, key: str) -> Optional[pa.Array]:
    if isinstance(values, pa.RecordBatch):
        return None if key in RESERVED or key not in values.schema.names else values.column(key)
    if not pa.types.is_struct(values.type) or values.type.get_field_index(key) < 0:
        return None
    return pc.struct_field(values, [values.type.get_field_index(key)])   # parent nulls carry over


def object_members(values, tree: Mapping[str, Optional[dict]]) -> Optional[pa.Array]:
    """The ``,"key":value`` members of one object level (mapping-tree order) per row, joined
    ("" where none is present); None when the schema has none of them."""
    members = []
    for key, sub in tree.items():
        child = _child(values, key)
        if child is None:
            continue
        prefix = "," + json.dumps(key, ensure_ascii=False) + ":"
        if sub is None:
            member = json_member(prefix, child)
        else:
            member = json_object(prefix, object_members(child, sub)) if pa.types.is_struct(child.type) else None
        if member is not None:
            members.append(member)
    return _join_members(members) if members else None


def identity_map_json(identity_map: Optional[pa.Array], n: int) -> pa.Array:
    """``"ns":[{"id":"..."}],...`` (the identity map's members) per row from the map
    ``snapshot.normalized_identities`` returns, by offsets."""
    if identity_map is None:
        return pa.array([""] * n, pa.string())
    arr = normalized_identities(identity_map)
    start, end = arr.offsets[0].as_py(), arr.offsets[-1].as_py()
    items = arr.items.slice(start, end - start)
    keys = arr.keys.slice(start, end - start)
    ids = pc.struct_field(items.flatten(), "id") if len(items) else pa.array([], pa.string())
    id_json = _concat('{"id":"', json_escaped(ids.cast(pa.string())), '"}')
    lists = pa.ListArray.from_arrays(pc.subtract(items.offsets, items.offsets[0]), id_json)
    entries = _concat('"', json_escaped(keys.cast(pa.string())), '":[', pc.binary_join(lists, ","), "]")
    return pc.binary_join(pa.ListArray.from_arrays(pc.subtract(arr.offsets, start), entries), ",")


def _iso_seconds(naive: pa.Array) -> pa.Array:
    """Time-zone-naive UTC timestamps (any unit) -> ``YYYY-MM-DDTHH:MM:SSZ``, floored to the
    second. Arrow's time-zone-aware casts and ``strftime`` are ~20x slower."""
    seconds = pc.floor_temporal(naive, unit="second").cast(pa.timestamp("s"))
    return _concat(pc.utf8_replace_slice(pc.cast(seconds, pa.string()), 10, 11, "T"), "Z")


def row_times(batch: pa.RecordBatch, default_ms: int) -> pa.Array:
    """The rows' ``timestamp`` as text (``default_ms`` where null)."""
    ts = batch.column("timestamp")
    if not pa.types.is_timestamp(ts.type):
        ts = ts.cast(pa.timestamp("ms"))
    text = _iso_seconds(ts.cast(pa.int64()).view(pa.timestamp(ts.type.unit)))   # zoned values are UTC
    return pc.fill_null(text, format_qualification_time(default_ms)) if text.null_count else text


def qualification_texts(ms: pa.Array) -> pa.Array:
    """Epoch ms -> ``YYYY-MM-DDTHH:MM:SSZ`` (floored to the second), null stays null."""
    return _iso_seconds(ms.cast(pa.int64()).cast(pa.timestamp("ms")))


def partition_keys(profile_ids: pa.Array) -> pa.Array:
    """The profile ids; hex SHA-256 for the (rare) ones over 256 characters, in Python."""
    long = pc.greater(pc.utf8_length(profile_ids), MAX_PARTITION_KEY_CHARS)
    hashed = _python_where(profile_ids, long, RecordFormatter.partition_key)
    return profile_ids if hashed is None else pc.replace_with_mask(profile_ids, long, hashed)


class SnapshotExporter:
    """Pure and vectorized: a snapshot record batch in, export records per merge policy out."""

    def __init__(self, config: ExportConfig, audiences: AudienceSet, selected: Sequence[str], as_of_ms: int):
        self.audiences = audiences
        self.as_of_ms = as_of_ms
        self.formatter = RecordFormatter(config)
        # only profiles that consent at as_of are exported: one more mask (one merged view per row)
        self.consent = compile_consent(config.activation.consent).vectorized if config.activation.consent else None
        self.metadata = config.destination.include_export_metadata
        self.withheld = 0   # records of the last batch withheld for lack of consent
        chosen = set(selected)
        # per policy involved (config order): its selected audiences, and all its audiences
        self.plans = []
        for policy in config.merge_policies:
            ids = [a.id for a in config.audiences if a.merge_policy == policy.id]
            if chosen.intersection(ids):
                self.plans.append((policy.id, [a for a in ids if a in chosen], ids))
        self.exported_ids = [a for _, _, ids in self.plans for a in ids]

    def export(self, batch: pa.RecordBatch, event_aggregates: Optional[Mapping] = None
               ) -> Tuple[List[ExportRecordBatch], Dict[str, pa.BooleanArray]]:
        """The records of a batch per merge policy, and every audience's membership column.
        ``event_aggregates``: the rows' event aggregates (``EventPlan.lookup``)."""
        members = self.audiences.evaluate_batch(batch, self.as_of_ms, event_aggregates)
        qualifies = [(pid, reduce(pc.or_, [members[a] for a in selected]), ids) for pid, selected, ids in self.plans]
        if self.consent is not None:
            consents = pc.fill_null(self.consent(batch, self.as_of_ms), False)
            self.withheld = sum(pc.sum(pc.and_not(q, consents)).as_py() or 0 for _, q, _ in qualifies)
            qualifies = [(pid, pc.and_(q, consents), ids) for pid, q, ids in qualifies]
        any_policy = reduce(pc.or_, [q for _, q, _ in qualifies])
        if not pc.any(any_policy).as_py():
            return [], members
        sub = batch.filter(any_policy)   # only qualifying rows are formatted
        attributes = object_members(sub, self.formatter.mapped_tree)
        head = "{" if attributes is None else _concat("{", _drop_comma(_concat(attributes, ",")))
        tail = _concat('}},"identityMap":{', identity_map_json(_column(sub, "identityMap"), len(sub)),
                       "}" if self.metadata else "}}")
        profile_ids = sub.column("profileId").cast(pa.string())
        keys = partition_keys(profile_ids)
        row_time = row_times(sub, self.as_of_ms)
        known = membership_entries(_column(sub, "segmentMembership"), self.exported_ids)
        out = []
        for policy_id, qualified, ids in qualifies:
            rows = qualified.filter(any_policy)
            if not pc.any(rows).as_py():
                continue
            entries = [e for e in (self._entry(a, pc.and_(members[a].filter(any_policy), rows), row_time, known.get(a))
                                   for a in ids) if e is not None]
            parts = (head, '"segmentMembership":{"ups":{', _drop_comma(_join_members(entries)), tail)
            if self.metadata:
                parts += (self._export_metadata(profile_ids, policy_id),)
            if len(qualifies) > 1:   # with one policy, every row of ``sub`` qualifies
                parts = tuple(p if isinstance(p, str) else p.filter(rows) for p in parts)
                out.append(ExportRecordBatch(policy_id, keys.filter(rows), parts))
            else:
                out.append(ExportRecordBatch(policy_id, keys, parts))
        return out, members

    def _export_metadata(self, profile_ids: pa.Array, policy_id: str) -> pa.Array:
        """``,"_export":{...}}`` per row: sequence 0, ``at`` the as-of time, trigger ``backfill``,
        ``id`` from profileId, policy and ``backfill@<as_of ms>`` (hashed in Python: only with
        ``include_export_metadata``)."""
        part = f"backfill@{self.as_of_ms}"
        ids = pa.array([export_id(p, policy_id, part) for p in profile_ids.to_pylist()], pa.string())
        before_id, after_id = RecordFormatter.export_metadata_around_id(0, self.as_of_ms, ("backfill",))
        return _concat(before_id, ids, after_id + "}")

    def _entry(self, audience_id: str, member: pa.Array, row_time: pa.Array,
               known: Optional[Tuple[pa.Array, pa.Array]]) -> Optional[pa.Array]:
        """``,"id":{...}``: the audience's ``ups`` entry where it is realized (null elsewhere);
        its time from the snapshot's entry for the audience (any status), else the row's."""
        if not pc.any(member).as_py():
            return None
        times = row_time.filter(member)
        if known is not None:
            times = pc.coalesce(qualification_texts(known[1].filter(member)), times)
        head, tail = self.formatter.ups_entry_parts(audience_id, "realized")
        return pc.replace_with_mask(pa.nulls(len(member), pa.string()), member, _concat("," + head, times, tail))


def _column(batch: pa.RecordBatch, name: str) -> Optional[pa.Array]:
    return batch.column(name) if name in batch.schema.names else None


def snapshot_columns(config: ExportConfig, audiences: AudienceSet) -> List[str]:
    """The snapshot columns a backfill reads: the reserved ones, and the top-level columns of
    the attribute paths of the rules and the consent rule, and of the mapped attributes
    (column projection)."""
    rules = list(audiences.rules.values())
    if config.activation.consent:
        rules.append(compile_consent(config.activation.consent))
    paths = [p for rule in rules for p in rule.view_paths] + list(config.mapping.attributes)
    return list(dict.fromkeys(list(RESERVED) + [p.split(".")[0] for p in paths]))


def with_profile_ids(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The rows that have a ``profileId`` (as the streaming seed reads them)."""
    ids = batch.column("profileId")
    if not pa.types.is_string(ids.type):
        batch = batch.set_column(batch.schema.get_field_index("profileId"), "profileId", ids.cast(pa.string()))
        ids = batch.column("profileId")
    present = pc.fill_null(pc.greater(pc.binary_length(ids), 0), False)
    return batch if pc.all(present).as_py() else batch.filter(present)


class _ExportFn(beam.DoFn):
    """What both backfill DoFns share: the exporter, built once per worker thread, and its metrics."""

    def __init__(self, config: ExportConfig, selected: Sequence[str], as_of_ms: int, batch_size: int):
        self._config, self._selected, self._as_of_ms = config, list(selected), as_of_ms
        self._batch_size = batch_size
        self._profiles = Metrics.counter("backfill", "profiles")
        self._records = Metrics.counter("backfill", "records")

    def setup(self):
        self._audiences = AudienceSet.from_config(self._config)
        self._columns = snapshot_columns(self._config, self._audiences)
        self._exporters = threading.local()

    def _exported(self, batch: pa.RecordBatch, event_aggregates=None) -> tuple:
        """The batch evaluated and formatted: ``(rows, record batches, memberships, withheld)``.
        Safe on any thread (one exporter per thread); metrics are the caller's (``_emit``)."""
        exporter = getattr(self._exporters, "exporter", None)
        if exporter is None:
            exporter = self._exporters.exporter = SnapshotExporter(self._config, self._audiences, self._selected,
                                                                   self._as_of_ms)
        results, members = exporter.export(batch, event_aggregates)
        return batch.num_rows, results, members, exporter.withheld

    def _emit(self, exported: tuple):
        """The records of ``_exported``, counted (on the DoFn's thread: Beam's metrics are per thread)."""
        rows, results, members, withheld = exported
        self._profiles.inc(rows)
        progress.add(progress.PROFILES, rows)
        if withheld:
            Metrics.counter("backfill", "consent_withheld").inc(withheld)
        for records in results:
            self._records.inc(records.size)
            Metrics.counter("backfill", f"records_{records.policy_id}").inc(records.size)
            yield records
        for audience_id in self._selected:
            Metrics.counter("backfill", f"members_{audience_id}").inc(pc.sum(members[audience_id]).as_py() or 0)


def _unreadable(path: str, row_group: int, e: Exception) -> DeadLetter:
    return DeadLetter(f"--snapshot: cannot read: {e}", path, f"row group {row_group}", "")


class _ExportRowGroupFn(_ExportFn):
    """Attribute rules only: a row group read, evaluated and formatted in one step (record
    batches never cross a Beam boundary)."""

    def process(self, item):
        path, row_group, _ = item
        try:
            for batch in read_row_group(path, row_group, self._columns, self._batch_size):
                yield from self._emit(self._exported(with_profile_ids(batch)))
        except (OSError, ValueError, pa.ArrowException) as e:
            yield _unreadable(path, row_group, e)


class _SnapshotPiecesFn(beam.DoFn):
    """A snapshot row group -> ``(bucket, IPC blob)`` pieces for the event join."""

    def __init__(self, columns: Sequence[str], buckets: int, batch_size: int):
        self._columns, self._buckets, self._batch_size = list(columns), buckets, batch_size

    def process(self, item):
        path, row_group, _ = item
        try:
            for batch in read_row_group(path, row_group, self._columns, self._batch_size):
                yield from split_by_bucket(with_profile_ids(batch), self._buckets)
        except (OSError, ValueError, pa.ArrowException) as e:
            yield _unreadable(path, row_group, e)


class _JoinBucketFn(_ExportFn):
    """One bucket: its events aggregated per profile, then its snapshot rows evaluated and
    formatted in batches of ``batch_size / threads`` rows, ``threads`` batches at a time
    (pyarrow kernels release the GIL), records in order (``transforms.event_join``)."""

    def __init__(self, config: ExportConfig, selected: Sequence[str], as_of_ms: int, batch_size: int, threads: int):
        super().__init__(config, selected, as_of_ms, batch_size)
        self._threads = threads

    def setup(self):
        super().setup()
        self._plan = EventPlan(self._audiences.rules.values(), self._as_of_ms,
                               self._config.evaluation.max_events_per_profile)
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown()

    def process(self, element):
        _, sides = element
        aggregates = self._plan.aggregate([from_ipc(blob) for blob in sides["events"]])
        # each snapshot row's aggregates, looked up once per bucket (reading ids from IPC copies nothing)
        ids = [chunk for blob in sides["snapshot"] for chunk in from_ipc(blob).column("profileId").chunks]
        per_row = self._plan.lookup(aggregates, pa.chunked_array(ids, pa.string()).combine_chunks())

        def export(work: Tuple[List[bytes], int]):
            pieces, first = work
            exported = []
            for batch in pa.concat_tables([from_ipc(blob) for blob in pieces]).combine_chunks().to_batches():
                rows = None if per_row is None else {n: a.slice(first, batch.num_rows) for n, a in per_row.items()}
                exported.append(self._exported(batch, rows))
                first += batch.num_rows
            return exported

        for exported in in_order(export, self._batches(sides["snapshot"]), self._pool, self._threads):
            for one in exported:
                yield from self._emit(one)

    def _batches(self, blobs: Iterable[bytes]) -> Iterator[Tuple[List[bytes], int]]:
        """The snapshot pieces grouped into batches of ``batch_size / threads`` rows or more
        of one schema (row counts read from the IPC streams, without a copy), with the
        position of each batch's first row in the bucket."""
        rows_per_batch = max(1, self._batch_size // self._threads)
        pending, schema, rows, first = [], None, 0, 0
        for blob in blobs:
            reader = pa.ipc.open_stream(blob)
            if pending and reader.schema != schema:
                yield pending, first
                pending, first, rows = [], first + rows, 0
            pending.append(blob)
            schema = reader.schema
            rows += sum(batch.num_rows for batch in reader)
            if rows >= rows_per_batch:
                yield pending, first
                pending, first, rows = [], first + rows, 0
        if pending:
            yield pending, first


class ExportSnapshot(beam.PTransform):
    """A snapshot glob (and an events glob for event rules) -> ``{"records": ExportRecordBatch
    elements, "dead_letter": DeadLetter elements}``. Which sink follows is not its business:
    both sinks take record batches.

    Attribute rules only: one fused step per row group (read with projected columns, evaluate,
    format). With event rules and ``events``: the bucket join of ``transforms.event_join``, its
    contributions and formatting on ``threads`` threads per DoFn.
    The launcher lists each glob once and opens its first file (one-line errors before the job
    starts); files and row groups are expanded by the workers."""

    def __init__(self, config: ExportConfig, snapshot: str, selected: Sequence[str], as_of_ms: int,
                 events: Optional[str] = None, batch_size: int = 131072, buckets: Optional[int] = None,
                 threads: int = 1):
        super().__init__()
        check_files(snapshot, "--snapshot")
        self._config, self._snapshot, self._selected, self._as_of_ms = config, snapshot, list(selected), as_of_ms
        self._batch_size, self._threads = batch_size, threads
        audiences = AudienceSet.from_config(config)
        self._events = events if events and any(r.uses_events for r in audiences.rules.values()) else None
        self._columns = snapshot_columns(config, audiences)
        if self._events:
            check_files(self._events, "--events", parquet_only=False)
            self._buckets = buckets or default_buckets(total_bytes(snapshot) + total_bytes(self._events))

    def expand(self, pbegin):
        snapshot = pbegin | "SnapshotFiles" >> ReadParquetRowGroups(self._snapshot, "--snapshot")
        work = snapshot["work"] | "SpreadRowGroups" >> beam.Reshuffle()
        dead = [snapshot[DEAD_LETTER]]
        args = (self._config, self._selected, self._as_of_ms, self._batch_size)
        if self._events is None:
            out = split_dead_letters(work | "EvaluateAndFormat" >> beam.ParDo(_ExportRowGroupFn(*args)), "records")
            records = out["records"]
            dead.append(out[DEAD_LETTER])
        else:
            events = pbegin | "EventContributions" >> EventContributions(
                self._config, self._events, self._as_of_ms, self._buckets, self._batch_size, self._threads)
            pieces = split_dead_letters(work | "SnapshotPieces" >> beam.ParDo(_SnapshotPiecesFn(
                self._columns, self._buckets, self._batch_size)), "pieces")
            joined = ({"snapshot": pieces["pieces"], "events": events["pieces"]}
                      | "JoinByBucket" >> beam.CoGroupByKey())
            records = joined | "EvaluateAndFormat" >> beam.ParDo(_JoinBucketFn(*args, self._threads))
            dead += [events[DEAD_LETTER], pieces[DEAD_LETTER]]
        return {"records": records, DEAD_LETTER: tuple(dead) | "DeadLetters" >> beam.Flatten()}
