"""Backfill: a snapshot's qualified profiles as export records, vectorized (SPEC 6 "Backfill").

For the selected mapped audiences, every row whose rule holds at ``as_of`` is exported once
per merge policy, as ``realized``: the selected audiences it qualifies for play the part of the
changed ones, plus every other audience of that policy it is realized in. A record is built
from pyarrow string kernels over whole record batches: mapped attributes as JSON fragments,
the ``ups`` entries from the same text pieces the streaming ``RecordFormatter`` uses, and the
identity map by joining list offsets, so no Python object is made per row or attribute.
Values Arrow cannot format the way ``json`` does (strings with control characters, nested
or temporal leaves, odd identity maps) fall back to the per-profile formatter for just those
values, keeping the bytes identical to a streaming record of the same profile.

``ExportSnapshot`` is the Beam step: one element per Parquet row group, read, evaluated and
formatted inside one DoFn (record batches never cross a Beam boundary), yielding a blob of
``records-*.jsonl`` lines per batch for the file sink, or ``ExportRecord`` elements for Kinesis.
"""
from __future__ import annotations

import collections
import json
import re
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from transforms.audiences import AudienceSet
from transforms.config import ExportConfig
from transforms.model import ExportRecord
from transforms.record_format import MAX_PARTITION_KEY_CHARS, RecordFormatter, _encode
from transforms.snapshot import open_parquet, snapshot_profiles

_CONTROL = r"[\x00-\x1f]"


def _concat(*parts) -> pa.Array:
    """Element-wise concatenation of string arrays and scalars; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def _join_present(arrays: Sequence[pa.Array], sep: str) -> Tuple[pa.Array, pa.Array]:
    """Join the non-null values of each row with ``sep`` (null where none is present), and
    where any was present. Folded pairwise: ``binary_join_element_wise(null_handling="skip")``
    drops rows whose values are all null (SPEC 9)."""
    acc = arrays[0]
    for a in arrays[1:]:
        joined = _concat(acc, sep, a)
        acc = pc.coalesce(joined, acc, a)
    return acc, acc.is_valid()


def json_strings(values: pa.Array) -> pa.Array:
    """String values as JSON string literals (``json`` escaping with ensure_ascii=False)."""
    escaped = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    out = _concat('"', escaped, '"')
    control = pc.fill_null(pc.match_substring_regex(values, _CONTROL), False)
    if pc.any(control).as_py():
        fixed = [json.dumps(v, ensure_ascii=False) if c else o
                 for v, c, o in zip(values.to_pylist(), control.to_pylist(), out.to_pylist())]
        out = pa.array(fixed, pa.string())
    return out


def _json_floats(values: pa.Array) -> pa.Array:
    text = pc.cast(values, pa.string())
    text = pc.replace_substring_regex(text, r"e([+-])(\d)$", r"e\10\2")
    integral = pc.invert(pc.match_substring_regex(text, r"[.eEnN]"))
    return pc.if_else(integral, _concat(text, ".0"), text)


def json_values(values: pa.Array) -> Optional[pa.Array]:
    """Leaf values as JSON text (null where absent); None when nothing can be exported."""
    t = values.type
    if pa.types.is_dictionary(t):
        values, t = values.cast(t.value_type), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return json_strings(values.cast(pa.string()))
    if pa.types.is_integer(t):
        return pc.cast(values, pa.string())
    if pa.types.is_floating(t):
        return _json_floats(values.cast(pa.float64()))
    if pa.types.is_boolean(t):
        return pc.if_else(values, "true", "false")
    if pa.types.is_date(t):
        return _concat('"', pc.cast(values.cast(pa.date32()), pa.string()), '"')
    if pa.types.is_null(t):
        return None
    # structs, lists, timestamps, decimals, binary: the per-profile encoder, per value
    from transforms.snapshot import _drop_nulls
    return pa.array([None if v is None or (d := _drop_nulls(v)) == {} else _encode(d)
                     for v in values.to_pylist()], pa.string())


def _child(values, key: str) -> Optional[pa.Array]:
    if isinstance(values, pa.RecordBatch):
        i = values.schema.get_field_index(key)
        return values.column(i) if i >= 0 else None
    if not pa.types.is_struct(values.type) or values.type.get_field_index(key) < 0:
        return None
    return pc.struct_field(values, [values.type.get_field_index(key)])


def attribute_members(values, tree: Mapping[str, Optional[dict]]) -> Tuple[Optional[pa.Array], Optional[pa.Array]]:
    """The ``"key":value`` members of one object level joined with commas, and where present."""
    members = []
    for key, sub in tree.items():
        child = _child(values, key)
        if child is None:
            continue
        if sub is None:
            value = json_values(child)
        else:
            inner, present = attribute_members(child, sub) if pa.types.is_struct(child.type) else (None, None)
            value = None if inner is None else pc.if_else(present, _concat("{", inner, "}"), pa.scalar(None, pa.string()))
        if value is not None:
            members.append(_concat(json.dumps(key, ensure_ascii=False) + ":", value))
    if not members:
        return None, None
    return _join_present(members, ",")


def identity_map_json(identity_map: Optional[pa.Array], n: int) -> pa.Array:
    """``{"ns":[{"id":"..."}],...}`` per row from map<string, list<struct<id>>>, by offsets."""
    if identity_map is None:
        return pa.array(["{}"] * n, pa.string())
    arr = identity_map
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    items = arr.items
    entry_start, entry_end = arr.offsets[0].as_py(), arr.offsets[-1].as_py()
    items = items.slice(entry_start, entry_end - entry_start)
    keys = arr.keys.slice(entry_start, entry_end - entry_start)
    ids = pc.struct_field(items.flatten(), [0]) if len(items) else pa.array([], pa.string())
    odd = (arr.null_count or items.null_count or ids.null_count or keys.null_count
           or (len(items) and pc.min(pc.list_value_length(items)).as_py() == 0))
    if odd:  # null rows, empty or null lists, null ids: the per-profile shape, per row
        return _identity_map_rows(arr)
    id_json = _concat('{"id":', json_strings(ids), "}")
    item_offsets = pc.subtract(items.offsets, items.offsets[0])
    lists = pa.ListArray.from_arrays(item_offsets, id_json)
    entries = _concat(json_strings(keys), ":[", pc.binary_join(lists, ","), "]")
    map_offsets = pc.subtract(arr.offsets, arr.offsets[0])
    rows = pa.ListArray.from_arrays(map_offsets, entries)
    return _concat("{", pc.binary_join(rows, ","), "}")


def _identity_map_rows(arr: pa.Array) -> pa.Array:
    out = []
    for entries in arr.to_pylist():
        ids = {ns: [i["id"] for i in (items or ()) if i and i.get("id")] for ns, items in (entries or ())}
        out.append("{" + ",".join(json.dumps(ns, ensure_ascii=False) + ":[" + ",".join(
            '{"id":' + json.dumps(i, ensure_ascii=False) + "}" for i in v) + "]" for ns, v in ids.items() if v) + "}")
    return pa.array(out, pa.string())


_OFFSET = re.compile(r"([+-]\d\d):?(\d\d)$")


def qualification_times(batch: pa.RecordBatch, audience_id: str, row_time: pa.Array) -> pa.Array:
    """``lastQualificationTime`` text per row: the snapshot's own for the audience, else the
    row's ``timestamp``; ``YYYY-MM-DDTHH:MM:SSZ``."""
    i = batch.schema.get_field_index("segmentMembership")
    if i < 0:
        return row_time
    pattern = '"' + re.escape(audience_id) + r'"\s*:\s*\{[^{}]*"lastQualificationTime"\s*:\s*"(?P<t>[^"]+)"'
    found = pc.struct_field(pc.extract_regex(batch.column(i).cast(pa.string()), pattern), [0])
    text = pc.replace_substring_regex(found, r"\.\d+", "")
    text = pc.replace_substring_regex(text, r"[Zz]$", "+0000")
    text = pc.replace_substring_regex(text, r"([+-]\d\d):(\d\d)$", r"\1\2")
    parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S%z", unit="s", error_is_null=True)
    own = pc.strftime(parsed, format="%Y-%m-%dT%H:%M:%SZ")
    return pc.coalesce(own, row_time)


def _row_times(batch: pa.RecordBatch) -> pa.Array:
    ts = batch.column(batch.schema.get_field_index("timestamp")).cast(pa.timestamp("ms", tz="UTC"))
    seconds = pc.cast(pc.floor_temporal(ts, unit="second"), pa.timestamp("s", tz="UTC"))
    return pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%SZ")


def partition_keys(profile_ids: pa.Array) -> pa.Array:
    long = pc.greater(pc.utf8_length(profile_ids), MAX_PARTITION_KEY_CHARS)
    if not pc.any(long).as_py():
        return profile_ids
    return pa.array([RecordFormatter.partition_key(p) for p in profile_ids.to_pylist()], pa.string())


class PolicyRecords(NamedTuple):
    policy_id: str
    rows: pa.Array          # indices into the batch
    partition_keys: pa.Array
    data: pa.Array          # JSON text per record


class SnapshotExporter:
    """Pure and vectorized: a snapshot record batch in, export records per merge policy out."""

    def __init__(self, config: ExportConfig, audiences: AudienceSet, selected: Sequence[str], as_of_ms: int,
                 events_by_profile=None):
        self.audiences = audiences
        self.as_of_ms = as_of_ms
        self.events = events_by_profile
        self.formatter = RecordFormatter(config)
        policy_of = {a.id: a.merge_policy for a in config.audiences}
        by_policy: Dict[str, List[str]] = collections.OrderedDict()
        for a in config.audiences:
            by_policy.setdefault(a.merge_policy, []).append(a.id)
        chosen = set(selected)
        # per policy involved: its selected audiences, and all its audiences (config order)
        self.plans = [(pid, [a for a in ids if a in chosen], ids) for pid, ids in by_policy.items()
                      if any(a in chosen for a in ids)]
        self.selected = [a for a in selected if a in policy_of]

    def export(self, batch: pa.RecordBatch) -> Tuple[List[PolicyRecords], Dict[str, pa.BooleanArray]]:
        members = self.audiences.evaluate_batch(batch, self.as_of_ms, self.events)
        out = []
        row_time = None
        attrs = None
        idmap = None
        for policy_id, selected, all_ids in self.plans:
            qualifies = members[selected[0]]
            for a in selected[1:]:
                qualifies = pc.or_(qualifies, members[a])
            rows = pc.indices_nonzero(qualifies)
            if len(rows) == 0:
                continue
            if row_time is None:
                row_time = _row_times(batch)
                members_attr, present = attribute_members(batch, self.formatter.mapped_tree)
                attrs = (pa.array(["{"] * len(batch), pa.string()) if members_attr is None
                         else pc.if_else(present, _concat("{", members_attr, ","), "{"))
                idmap = identity_map_json(_child(batch, "identityMap"), len(batch))
            sub = batch.take(rows)
            entries = []
            for a in all_ids:
                head, tail = self.formatter.ups_entry_parts(a, "realized")
                times = qualification_times(sub, a, row_time.take(rows))
                entries.append(pc.if_else(members[a].take(rows), _concat(head, times, tail), pa.scalar(None, pa.string())))
            ups, _ = _join_present(entries, ",")
            data = _concat(attrs.take(rows), '"segmentMembership":{"ups":{', ups, '}},"identityMap":',
                           idmap.take(rows), "}")
            keys = partition_keys(sub.column(sub.schema.get_field_index("profileId")).cast(pa.string()))
            out.append(PolicyRecords(policy_id, rows, keys, data))
        return out, members


def record_lines(records: PolicyRecords) -> bytes:
    """The file sink's ``{"partitionKey":..,"data":..}`` lines of a batch, as one blob."""
    lines = _concat('{"partitionKey":', json_strings(records.partition_keys), ',"data":', records.data, "}\n")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return lines.buffers()[2][start:end].to_pybytes()


def row_groups(paths: Sequence[str]) -> List[Tuple[str, int]]:
    """(file, row group) work items, so one big file still spreads over workers."""
    return [(path, rg) for path in paths for rg in range(open_parquet(path).num_row_groups)]


class _ExportRowGroupFn(beam.DoFn):
    def __init__(self, config: ExportConfig, selected: Sequence[str], as_of_ms: int, events_pattern: Optional[str],
                 as_lines: bool, batch_size: int):
        self._config, self._selected, self._as_of_ms = config, list(selected), as_of_ms
        self._events_pattern, self._as_lines, self._batch_size = events_pattern, as_lines, batch_size
        self._profiles = Metrics.counter("backfill", "profiles")
        self._records = Metrics.counter("backfill", "records")

    def setup(self):
        events = None
        if self._events_pattern:
            from transforms.snapshot import read_events
            events = read_events(self._events_pattern)
        self._exporter = SnapshotExporter(self._config, AudienceSet.from_config(self._config), self._selected,
                                          self._as_of_ms, events)

    def process(self, item):
        path, row_group = item
        f = open_parquet(path)
        for batch in f.iter_batches(batch_size=self._batch_size, row_groups=[row_group]):
            self._profiles.inc(len(batch))
            results, members = self._exporter.export(batch)
            for records in results:
                self._records.inc(len(records.data))
                Metrics.counter("backfill", f"records_{records.policy_id}").inc(len(records.data))
                if self._as_lines:
                    yield record_lines(records)
                else:
                    for key, data in zip(records.partition_keys.to_pylist(), records.data.to_pylist()):
                        yield ExportRecord(key, data.encode(), None)
            for audience_id in self._selected:
                Metrics.counter("backfill", f"members_{audience_id}").inc(pc.sum(members[audience_id]).as_py() or 0)


class ExportSnapshot(beam.PTransform):
    """Snapshot files -> record-line blobs (``as_lines``, for ``WriteRecordFiles``) or
    ``ExportRecord`` elements (for ``KinesisWrite``)."""

    def __init__(self, config: ExportConfig, paths: Sequence[str], selected: Sequence[str], as_of_ms: int,
                 events_pattern: Optional[str] = None, as_lines: bool = True, batch_size: int = 65536):
        super().__init__()
        self._work = row_groups(paths)
        self._fn = _ExportRowGroupFn(config, selected, as_of_ms, events_pattern, as_lines, batch_size)

    def expand(self, pbegin):
        return (pbegin
                | "RowGroups" >> beam.Create(self._work)
                | "Spread" >> beam.Reshuffle()
                | "EvaluateAndFormat" >> beam.ParDo(self._fn))
