"""Backfill: a snapshot's qualified profiles as export records, vectorized (docs/semantics.md#exports "Backfill").

For the selected mapped audiences, every row whose rule holds at ``as_of`` is exported once
per merge policy, as ``realized``: the selected audiences it qualifies for play the part of the
changed ones, plus every other audience of that policy it is realized in. Records are built by
pyarrow string kernels over whole record batches (the qualifying rows only): mapped attributes
as JSON fragments, the ``ups`` entries from the same text pieces the streaming
``RecordFormatter`` uses, and the identity map by joining list offsets, so no Python object is
made per row or attribute. The bytes are those of ``RecordFormatter.format`` for the profile
that ``snapshot.snapshot_profiles`` reads from the row; where Arrow cannot format a value the
way ``json`` does (strings with control characters, floats outside [1e-4, 1e10), lists,
timestamps, decimals, binary; odd identity maps; partition keys over 256 characters) those
values alone go through Python.

``lastQualificationTime`` is the snapshot's ``segmentMembership`` entry for the audience (any
status) when it has one of the form ``YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM|±HHMM)``, else the
row's ``timestamp`` (``as_of`` when that is null), floored to the second.

With ``activation.consent``, the consent rule is one more boolean mask over the batch (one
merged view per row, as for the audiences): only rows that consent at ``as_of`` are exported,
the others are counted (``consent_withheld``). With ``include_export_metadata`` each record ends
with ``_export`` (sequence 0, ``at`` = ``as_of``, trigger ``backfill``); its id, a SHA-256 per
row, is the one part made in Python.

``ExportSnapshot`` is the Beam step: one element per Parquet row group, read, evaluated and
formatted inside one DoFn (record batches never cross a Beam boundary), yielding one blob of
``records-*.jsonl`` lines per batch and policy for the file sink, or ``ExportRecord`` elements
for Kinesis.
"""
from __future__ import annotations

import json
import re
from functools import reduce
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms import progress
from transforms.audiences import AudienceSet, compile_consent
from transforms.config import ExportConfig
from transforms.file_sink import RecordLines
from transforms.model import ExportRecord
from transforms.record_format import MAX_PARTITION_KEY_CHARS, RecordFormatter, encode_json, export_id
from transforms.snapshot import RESERVED, drop_nulls, open_parquet
from transforms.timeutil import format_qualification_time

_NO_TEXT = pa.scalar(None, pa.string())
_SPECIAL = r'[\x00-\x1f"\\]'
_ISO_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


def _concat(*parts) -> pa.Array:
    """Element-wise concatenation of string arrays and scalars; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def _join_members(members: Sequence[pa.Array]) -> pa.Array:
    """Concatenation of each row's present members ("" where none), in one pass. Members
    carry their own leading comma; ``null_handling="replace"``, not ``"skip"``, which drops
    rows whose values are all null (docs/DEVELOPING.md)."""
    return pc.binary_join_element_wise(*members, "", null_handling="replace", null_replacement="")


def _drop_comma(joined: pa.Array) -> pa.Array:
    """Without the leading (ASCII) comma; sliced as bytes, ~30x faster than by code points."""
    return pc.binary_slice(joined.view(pa.binary()), 1, 2 ** 31 - 1).view(pa.string())


def _python_where(values: pa.Array, mask: pa.Array, fn) -> Optional[pa.Array]:
    """``fn`` of just the masked values (the rare ones Arrow cannot format), as a string
    array to put back with ``replace_with_mask``; None when no value is masked."""
    if not pc.any(mask).as_py():
        return None
    return pa.array([fn(v) for v in values.filter(mask).to_pylist()], pa.string())


def json_escaped(values: pa.Array) -> pa.Array:
    """The JSON text between the quotes of string values (``json`` escaping with
    ensure_ascii=False). Only the values holding a quote, backslash or control character are
    touched; control characters (rare) are escaped by ``json`` itself."""
    special = pc.fill_null(pc.match_substring_regex(values, _SPECIAL), False)
    if not pc.any(special).as_py():
        return values
    odd = values.filter(special)
    fixed = pc.replace_substring(pc.replace_substring(odd, "\\", "\\\\"), '"', '\\"')
    control = pc.match_substring_regex(odd, r"[\x00-\x1f]")
    by_json = _python_where(odd, control, lambda v: json.dumps(v, ensure_ascii=False)[1:-1])
    if by_json is not None:
        fixed = pc.replace_with_mask(fixed, control, by_json)
    return pc.replace_with_mask(values, special, fixed)


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
    """``"ns":[{"id":"..."}],...`` (the identity map's members) per row from
    map<string, list<struct<id>>>, by offsets."""
    if identity_map is None:
        return pa.array([""] * n, pa.string())
    arr = identity_map
    start, end = arr.offsets[0].as_py(), arr.offsets[-1].as_py()
    items = arr.items.slice(start, end - start)
    keys = arr.keys.slice(start, end - start)
    ids = pc.struct_field(items.flatten(), [0]) if len(items) else pa.array([], pa.string())
    odd = (arr.null_count or items.null_count or ids.null_count or keys.null_count
           or (len(items) and pc.min(pc.list_value_length(items)).as_py() == 0)
           or (len(ids) and pc.min(pc.binary_length(ids)).as_py() == 0))
    if odd:  # null rows, empty or null lists, null or empty ids: the per-profile shape, per row
        return _identity_map_rows(arr)
    id_json = _concat('{"id":"', json_escaped(ids.cast(pa.string())), '"}')
    lists = pa.ListArray.from_arrays(pc.subtract(items.offsets, items.offsets[0]), id_json)
    entries = _concat('"', json_escaped(keys.cast(pa.string())), '":[', pc.binary_join(lists, ","), "]")
    return pc.binary_join(pa.ListArray.from_arrays(pc.subtract(arr.offsets, start), entries), ",")


def _identity_map_rows(arr: pa.Array) -> pa.Array:
    """As ``snapshot_profiles`` reads identities: namespaces without a non-empty id dropped."""
    out = []
    for entries in arr.to_pylist():
        ids = {ns: [i["id"] for i in (items or ()) if i and i.get("id")] for ns, items in (entries or ())}
        out.append(",".join(json.dumps(ns, ensure_ascii=False) + ":[" + ",".join(
            '{"id":' + json.dumps(i, ensure_ascii=False) + "}" for i in v) + "]" for ns, v in ids.items() if v))
    return pa.array(out, pa.string())


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


def snapshot_times(membership: pa.Array, audience_id: str) -> pa.Array:
    """The audience's ``lastQualificationTime`` in the snapshot's ``segmentMembership`` JSON,
    normalized to ``YYYY-MM-DDTHH:MM:SSZ``; null where absent or unreadable."""
    pattern = '"' + re.escape(audience_id) + r'"\s*:\s*\{[^{}]*"lastQualificationTime"\s*:\s*"(?P<t>[^"]+)"'
    found = pc.struct_field(pc.extract_regex(membership, pattern), [0])
    normal = pc.match_substring_regex(found, _ISO_Z)
    if pc.all(pc.or_kleene(normal, found.is_null())).as_py():
        return found
    text = pc.replace_substring_regex(found, r"\.\d+", "")
    text = pc.replace_substring_regex(text, r"[Zz]$", "+0000")
    text = pc.replace_substring_regex(text, r"([+-]\d\d):(\d\d)$", r"\1\2")
    parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S%z", unit="s", error_is_null=True)
    return _iso_seconds(parsed.cast(pa.int64()).view(pa.timestamp("s")))


def partition_keys(profile_ids: pa.Array) -> pa.Array:
    """The profile ids; hex SHA-256 for the (rare) ones over 256 characters, in Python."""
    long = pc.greater(pc.utf8_length(profile_ids), MAX_PARTITION_KEY_CHARS)
    hashed = _python_where(profile_ids, long, RecordFormatter.partition_key)
    return profile_ids if hashed is None else pc.replace_with_mask(profile_ids, long, hashed)


class PolicyRecords(NamedTuple):
    """The records of one merge policy in a batch: partition keys, and the pieces (string
    arrays and constants) whose concatenation is each record's data, so the file sink's lines
    are built in one pass."""
    policy_id: str
    partition_keys: pa.Array
    parts: Tuple[object, ...]

    def data(self) -> pa.Array:
        return _concat(*self.parts)


class SnapshotExporter:
    """Pure and vectorized: a snapshot record batch in, export records per merge policy out."""

    def __init__(self, config: ExportConfig, audiences: AudienceSet, selected: Sequence[str], as_of_ms: int,
                 events_by_profile=None):
        self.audiences = audiences
        self.as_of_ms = as_of_ms
        self.events = events_by_profile
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

    def export(self, batch: pa.RecordBatch) -> Tuple[List[PolicyRecords], Dict[str, pa.BooleanArray]]:
        """The records of a batch per merge policy, and every audience's membership column."""
        members = self.audiences.evaluate_batch(batch, self.as_of_ms, self.events)
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
        membership = _column(sub, "segmentMembership")
        out = []
        for policy_id, qualified, ids in qualifies:
            rows = qualified.filter(any_policy)
            if not pc.any(rows).as_py():
                continue
            entries = [e for e in (self._entry(a, pc.and_(members[a].filter(any_policy), rows), row_time, membership)
                                   for a in ids) if e is not None]
            parts = (head, '"segmentMembership":{"ups":{', _drop_comma(_join_members(entries)), tail)
            if self.metadata:
                parts += (self._export_metadata(profile_ids, policy_id),)
            if len(qualifies) > 1:   # with one policy, every row of ``sub`` qualifies
                parts = tuple(p if isinstance(p, str) else p.filter(rows) for p in parts)
                out.append(PolicyRecords(policy_id, keys.filter(rows), parts))
            else:
                out.append(PolicyRecords(policy_id, keys, parts))
        return out, members

    def _export_metadata(self, profile_ids: pa.Array, policy_id: str) -> pa.Array:
        """``,"_export":{...}}`` per row: sequence 0, ``at`` the as-of time, trigger ``backfill``,
        ``id`` from profileId, policy and ``backfill@<as_of ms>`` (hashed in Python: only with
        ``include_export_metadata``)."""
        part = f"backfill@{self.as_of_ms}"
        ids = pa.array([export_id(p, policy_id, part) for p in profile_ids.to_pylist()], pa.string())
        return _concat(',"_export":{"id":"', ids, f'","sequence":0,"at":{self.as_of_ms},"triggers":["backfill"]}}}}')

    def _entry(self, audience_id: str, member: pa.Array, row_time: pa.Array,
               membership: Optional[pa.Array]) -> Optional[pa.Array]:
        """``,"id":{...}``: the audience's ``ups`` entry where it is realized (null elsewhere)."""
        if not pc.any(member).as_py():
            return None
        times = row_time.filter(member)
        if membership is not None:
            times = pc.coalesce(snapshot_times(membership.filter(member).cast(pa.string()), audience_id), times)
        head, tail = self.formatter.ups_entry_parts(audience_id, "realized")
        return pc.replace_with_mask(pa.nulls(len(member), pa.string()), member, _concat("," + head, times, tail))


def _column(batch: pa.RecordBatch, name: str) -> Optional[pa.Array]:
    return batch.column(name) if name in batch.schema.names else None


def record_lines(records: PolicyRecords) -> RecordLines:
    """The file sink's ``{"partitionKey":..,"data":..}`` lines of a batch, as one blob."""
    lines = _concat('{"partitionKey":"', json_escaped(records.partition_keys), '","data":', *records.parts, "}\n")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return RecordLines(lines.buffers()[2][start:end].to_pybytes(), len(lines))


def row_groups(paths: Sequence[str]) -> List[Tuple[str, int]]:
    """(file, row group) work items, so one big file still spreads over workers."""
    return [(path, rg) for path in paths for rg in range(open_parquet(path).num_row_groups)]


class _ExportRowGroupFn(beam.DoFn):
    def __init__(self, config: ExportConfig, selected: Sequence[str], as_of_ms: int,
                 events_by_profile: Optional[Mapping[str, list]], as_lines: bool, batch_size: int):
        self._config, self._selected, self._as_of_ms = config, list(selected), as_of_ms
        self._events, self._as_lines, self._batch_size = events_by_profile, as_lines, batch_size
        self._profiles = Metrics.counter("backfill", "profiles")
        self._records = Metrics.counter("backfill", "records")

    def setup(self):
        self._exporter = SnapshotExporter(self._config, AudienceSet.from_config(self._config), self._selected,
                                          self._as_of_ms, self._events)

    def process(self, item):
        path, row_group = item
        for batch in open_parquet(path).iter_batches(batch_size=self._batch_size, row_groups=[row_group]):
            self._profiles.inc(len(batch))
            progress.add(progress.PROFILES, len(batch))
            results, members = self._exporter.export(batch)
            if self._exporter.withheld:
                Metrics.counter("backfill", "consent_withheld").inc(self._exporter.withheld)
            for records in results:
                self._records.inc(len(records.partition_keys))
                Metrics.counter("backfill", f"records_{records.policy_id}").inc(len(records.partition_keys))
                if self._as_lines:
                    yield record_lines(records)
                else:
                    for key, data in zip(records.partition_keys.to_pylist(), records.data().to_pylist()):
                        yield ExportRecord(key, data.encode(), None)
            for audience_id in self._selected:
                Metrics.counter("backfill", f"members_{audience_id}").inc(pc.sum(members[audience_id]).as_py() or 0)


class ExportSnapshot(beam.PTransform):
    """Snapshot files -> record-line blobs (``as_lines``, for ``WriteRecordFiles``) or
    ``ExportRecord`` elements (for ``KinesisWrite``). ``events_by_profile`` (``read_events``,
    read before the pipeline starts so a bad file is a one-line error) travels with the DoFn."""

    def __init__(self, config: ExportConfig, paths: Sequence[str], selected: Sequence[str], as_of_ms: int,
                 events_by_profile: Optional[Mapping[str, list]] = None, as_lines: bool = True,
                 batch_size: int = 131072):
        super().__init__()
        self._work = row_groups(paths)
        self._fn = _ExportRowGroupFn(config, selected, as_of_ms, events_by_profile, as_lines, batch_size)

    def expand(self, pbegin):
        return (pbegin
                | "RowGroups" >> beam.Create(self._work)
                | "Spread" >> beam.Reshuffle()
                | "EvaluateAndFormat" >> beam.ParDo(self._fn))
