"""Parquet profile snapshots and experience events (docs/semantics.md#inputs), read where the work runs.

A snapshot row: ``profileId`` (string), ``timestamp`` (Parquet timestamp, UTC), ``identityMap``
(map<string, list<struct<id: string>>>), optional ``segmentMembership`` (JSON text as in the
export) and XDM attributes as further (nested struct) columns.

Reading scales with the files, not the launcher: ``ReadParquetRowGroups`` expands the glob and
lists each file's row groups inside the pipeline (a step per file, spread over workers), and
each row group is read by the step that uses it, with only the columns it needs
(``backfill.snapshot_columns``). Before the job starts the launcher only lists the glob once and opens
the first file (``check_files``), so a wrong path or a non-Parquet file is still one line; a
bad file found later by a worker goes to the input dead letter with its reason.

One reader per field, for the backfill and the streaming seed alike: ``membership_entries``
parses ``segmentMembership`` (all rows at once, Arrow's JSON reader), ``normalized_identities``
cleans identity maps (null maps, null or empty ids and namespaces left without ids dropped),
``times_ms`` reads the ``timestamp`` column.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import progress
from transforms.arrow_text import concat, joined_bytes
from transforms.errors import UserError
from transforms.model import DeadLetter, SegmentStatus, SnapshotProfile
from transforms.timeutil import parse_timestamp_ms
from transforms.vectorized import timestamp_ms

RESERVED = ("profileId", "timestamp", "identityMap", "segmentMembership")
DEAD_LETTER = "dead_letter"
# lastQualificationTime forms read: YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM|±HHMM)
_QUALIFICATION_TIME = r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:?\d\d)$"


def match_files(pattern: str, flag: str = "--snapshot") -> List[str]:
    try:
        paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception as e:
        raise UserError(f"{flag} {pattern}: cannot list files: {e}") from None
    if not paths:
        raise UserError(f"{flag} matches no files: {pattern}")
    return paths


def total_bytes(pattern: str) -> int:
    """The matched files' total size, from the listing (no file opened)."""
    return sum(m.size_in_bytes or 0 for m in FileSystems.match([pattern])[0].metadata_list)


def _open(path: str) -> pq.ParquetFile:
    """A Parquet file with the required columns; ValueError naming what is wrong."""
    try:
        f = pq.ParquetFile(FileSystems.open(path) if "://" in path else path)
    except Exception as e:
        raise ValueError(f"not a readable Parquet file ({e})") from None
    schema = f.schema_arrow
    for column in ("profileId", "timestamp"):
        if column not in schema.names:
            raise ValueError(f"no {column!r} column")
    kind = schema.field("timestamp").type
    if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)):
        raise ValueError(f"column 'timestamp' is {kind}, expected a Parquet timestamp")
    return f


def open_parquet(path: str, flag: str = "--snapshot") -> pq.ParquetFile:
    """A Parquet file with the required columns, or one line naming what is wrong."""
    try:
        return _open(path)
    except ValueError as e:
        raise UserError(f"{flag} {path}: {e}") from None


def check_files(pattern: str, flag: str, parquet_only: bool = True) -> List[str]:
    """Before the job starts: the glob lists files and the first one is readable (one listing,
    one footer; the others are read by the workers)."""
    paths = match_files(pattern, flag)
    first = next((p for p in paths if is_parquet(p)), None)
    if parquet_only or first is not None:
        open_parquet(first or paths[0], flag)
    return paths


def is_parquet(path: str) -> bool:
    return path.endswith(".parquet") or path.endswith(".parq")


def iter_snapshot_batches(pattern: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Record batches of every matching file; the files are matched and checked at the call."""
    files = [open_parquet(path) for path in match_files(pattern)]
    return (batch for f in files for batch in f.iter_batches(batch_size=batch_size))


# ---- reading inside the pipeline ----------------------------------------------------------------

class _RowGroupsFn(beam.DoFn):
    """A file -> its ``(path, row group, first row)`` work items (JSONL: one item, row group
    None); an unreadable file is a ``DeadLetter``."""

    def __init__(self, flag: str):
        self._flag = flag

    def process(self, path: str):
        if not is_parquet(path) and self._flag == "--events":
            yield path, None, 0
            return
        try:
            meta = _open(path).metadata
        except (ValueError, OSError) as e:
            yield DeadLetter(f"{self._flag}: {e}", path, None, "")
            return
        first = 0
        for rg in range(meta.num_row_groups):
            yield path, rg, first
            first += meta.row_group(rg).num_rows


class ReadParquetRowGroups(beam.PTransform):
    """A glob -> ``{"work": (path, row group, first row) items, "dead_letter": ...}``, expanded
    and listed inside the pipeline and spread over workers (one big file still spreads by row
    group)."""

    def __init__(self, pattern: str, flag: str):
        super().__init__()
        self._pattern, self._flag = pattern, flag

    def expand(self, pbegin):
        work = (pbegin
                | "Glob" >> beam.Create([self._pattern])
                | "Match" >> beam.FlatMap(lambda pattern: [m.path for m in FileSystems.match([pattern])[0].metadata_list])
                | "SpreadFiles" >> beam.Reshuffle()
                | "ListRowGroups" >> beam.ParDo(_RowGroupsFn(self._flag)))
        return split_dead_letters(work, "work")


def split_dead_letters(elements: beam.PCollection, name: str) -> dict:
    """``{name: the other elements, "dead_letter": the DeadLetter elements}``, by two filters:
    DoFns here yield dead letters inline rather than as tagged outputs, which Beam's DaskRunner
    does not keep apart."""
    label = name.title()
    return {name: elements | f"{label}Only" >> beam.Filter(lambda e: not isinstance(e, DeadLetter)),
            DEAD_LETTER: elements | f"{label}DeadLetters" >> beam.Filter(lambda e: isinstance(e, DeadLetter))}


def read_row_group(path: str, row_group: int, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    f = _open(path)
    names = f.schema_arrow.names
    if columns is not None:
        columns = [c for c in columns if c in names]
    return f.iter_batches(batch_size=batch_size, row_groups=[row_group], columns=columns)


# ---- fields -------------------------------------------------------------------------------------

def drop_nulls(value: Any) -> Any:
    """Null leaves and all-null structs left out: to rules and records, null means absent."""
    if isinstance(value, dict):
        out = {k: drop_nulls(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}
    return value


def times_ms(column: pa.Array) -> pa.Array:
    """A ``timestamp`` column as epoch ms (int64, null where absent or unreadable): any
    timestamp unit (sub-ms floored), epoch-ms integers, or ISO text."""
    if pa.types.is_timestamp(column.type):
        return timestamp_ms(column)
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    return pa.array([_ms_or_none(v) for v in column.to_pylist()], pa.int64())


def _ms_or_none(text) -> Optional[int]:
    try:
        return None if text is None else parse_timestamp_ms(text)
    except (ValueError, OverflowError, TypeError):
        return None


def qualification_ms(text: pa.Array) -> pa.Array:
    """``lastQualificationTime`` text -> epoch ms (null where absent or not of the forms read)."""
    text = text.cast(pa.string())
    ok = pc.fill_null(pc.match_substring_regex(text, _QUALIFICATION_TIME), False)
    if not pc.any(ok).as_py():
        return pa.nulls(len(text), pa.int64())
    good = pc.replace_substring_regex(text.filter(ok), r"(\.\d{3})\d+", r"\1")
    try:
        ms = pc.cast(good, pa.timestamp("ms", tz="UTC")).view(pa.int64())
    except pa.ArrowInvalid:           # e.g. month 13: per value
        ms = pa.array([_ms_or_none(v) for v in good.to_pylist()], pa.int64())
    return pc.replace_with_mask(pa.nulls(len(text), pa.int64()), ok, ms)


def membership_entries(membership: Optional[pa.Array], audience_ids: Sequence[str]) -> Dict[str, Tuple[pa.Array, pa.Array]]:
    """The one reader of ``segmentMembership``: per audience, each row's status (``realized``,
    ``existing`` read as ``realized``, ``exited``; null for anything else) and
    ``lastQualificationTime`` in epoch ms (null where absent or unreadable). Rows that are not
    a JSON object count as no entries."""
    n = 0 if membership is None else len(membership)
    if membership is None or not audience_ids or membership.null_count == n:
        return {}
    entry = pa.struct([("lastQualificationTime", pa.string()), ("status", pa.string())])
    schema = pa.schema([("ups", pa.struct([(a, entry) for a in dict.fromkeys(audience_ids)]))])
    present = membership.is_valid()
    lines = membership.filter(present).cast(pa.string())     # only the rows that have one
    try:
        ups = _read_json_lines(lines, schema)
    except pa.ArrowInvalid:   # a row that is not one JSON object of that shape: rewritten per row
        ups = _read_json_lines(pa.array([_membership_line(v) for v in lines.to_pylist()], pa.string()), schema)
    out = {}
    for audience_id in dict.fromkeys(audience_ids):
        item = pc.struct_field(ups, [ups.type.get_field_index(audience_id)])
        status = pc.struct_field(item, [1])
        status = pc.if_else(pc.equal(status, "existing"), "realized", status)
        status = pc.if_else(pc.is_in(status, pa.array(["realized", "exited"])), status, None)
        ms = qualification_ms(pc.struct_field(item, [0]))
        if len(lines) < n:
            status = pc.replace_with_mask(pa.nulls(n, pa.string()), present, status)
            ms = pc.replace_with_mask(pa.nulls(n, pa.int64()), present, ms)
        out[audience_id] = (status, ms)
    return out


def _read_json_lines(lines: pa.Array, schema: pa.Schema) -> pa.Array:
    if pc.any(pc.match_substring(lines, "\n")).as_py():
        raise pa.ArrowInvalid("line breaks inside a value")
    data = pa.py_buffer(joined_bytes(concat(lines, "\n")))
    table = pajson.read_json(pa.BufferReader(data), parse_options=pajson.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="ignore", newlines_in_values=False),
        read_options=pajson.ReadOptions(use_threads=False, block_size=max(1 << 20, data.size + 1)))
    ups = table.column("ups").combine_chunks()
    if len(ups) != len(lines):
        raise pa.ArrowInvalid("not one object per row")
    return ups


def _membership_line(text: str) -> str:
    """One row rewritten for the JSON reader: only entries with string fields kept."""
    try:
        doc = json.loads(text)
    except ValueError:
        return "{}"
    ups = doc.get("ups") if isinstance(doc, dict) else None
    if not isinstance(ups, dict):
        return "{}"
    kept = {a: {k: v for k, v in e.items() if k in ("lastQualificationTime", "status") and isinstance(v, str)}
            for a, e in ups.items() if isinstance(e, dict)}
    return json.dumps({"ups": kept})


def parse_membership(text: Optional[str]) -> Dict[str, SegmentStatus]:
    """One row's ``segmentMembership`` (``membership_entries`` of a single value): entries
    without a readable time or status are skipped."""
    return _membership_rows(pa.array([text], pa.string()), None)[0] if text else {}


def _membership_rows(membership: pa.Array, audience_ids: Optional[Sequence[str]]) -> List[Dict[str, SegmentStatus]]:
    if audience_ids is None:   # every audience the rows name
        audience_ids = list(dict.fromkeys(a for v in membership.to_pylist() if v for a in _audience_ids(v)))
    rows: List[Dict[str, SegmentStatus]] = [{} for _ in range(len(membership))]
    for audience_id, (status, ms) in membership_entries(membership, audience_ids).items():
        for i, (s, t) in enumerate(zip(status.to_pylist(), ms.to_pylist())):
            if s is not None and t is not None:
                rows[i][audience_id] = SegmentStatus(s, t)
    return rows


def _audience_ids(text: str) -> List[str]:
    try:
        ups = json.loads(text).get("ups")
    except (ValueError, AttributeError):
        return []
    return list(ups) if isinstance(ups, dict) else []


def normalized_identities(identity_map: Optional[pa.Array]) -> Optional[pa.Array]:
    """The one normalizer of identity maps (map<string, list<struct<id>>>): null maps empty,
    null or empty ids dropped, namespaces left without an id dropped; ids as the only item
    field. Vectorized (offsets), the array itself when nothing needs dropping."""
    if identity_map is None:
        return None
    arr = identity_map
    n = len(arr)
    offsets = arr.offsets.to_numpy()
    first, count = int(offsets[0]), int(offsets[-1] - offsets[0])
    keys, items = arr.keys.slice(first, count), arr.items.slice(first, count)
    flat = items.flatten()
    if not pa.types.is_struct(flat.type) or flat.type.get_field_index("id") < 0:
        ids = pa.nulls(len(flat), pa.string())
    else:
        ids = pc.struct_field(flat, "id").cast(pa.string())
    good = pc.fill_null(pc.and_(flat.is_valid(), pc.greater(pc.binary_length(ids), 0)), False)
    lengths = pc.fill_null(pc.list_value_length(items), 0).to_numpy(zero_copy_only=False)
    if (flat.type == pa.struct([("id", pa.string())]) and not arr.null_count and not items.null_count
            and (count == 0 or lengths.min() > 0) and pc.all(good).as_py() is not False):
        return arr
    good_np = good.to_numpy(zero_copy_only=False)
    entry_of_item = pc.list_parent_indices(items).to_numpy()
    per_entry = np.bincount(entry_of_item[good_np], minlength=count)
    row_of_entry = np.repeat(np.arange(n), np.diff(offsets))
    entry_ok = (per_entry > 0) & arr.is_valid().to_numpy(zero_copy_only=False)[row_of_entry]
    item_ok = good_np & entry_ok[entry_of_item]
    id_lists = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(per_entry[entry_ok])]).astype(np.int32)),
        pa.StructArray.from_arrays([ids.filter(pa.array(item_ok))], ["id"]))
    map_offsets = np.concatenate([[0], np.cumsum(np.bincount(row_of_entry[entry_ok], minlength=n))]).astype(np.int32)
    return pa.MapArray.from_arrays(pa.array(map_offsets), keys.filter(pa.array(entry_ok)), id_lists)


def snapshot_profiles(batch: pa.RecordBatch, audience_ids: Optional[Sequence[str]] = None) -> Iterator[SnapshotProfile]:
    """Rows as ``SnapshotProfile`` (the streaming seed; a Python object per row is fine there).
    A row without ``profileId`` is skipped; one without ``timestamp`` counts as 0 (older than
    any update). ``audience_ids``: the memberships to read (None: all)."""
    names = batch.schema.names
    n = batch.num_rows
    ids = batch.column("profileId").to_pylist()
    times = times_ms(batch.column("timestamp")).to_pylist()
    identity_maps = (normalized_identities(batch.column("identityMap")).to_pylist() if "identityMap" in names
                     else [None] * n)
    memberships = (_membership_rows(batch.column("segmentMembership"), audience_ids) if "segmentMembership" in names
                   else [{}] * n)
    attribute_names = [name for name in names if name not in RESERVED]
    attributes = [batch.column(name).to_pylist() for name in attribute_names]
    for i, profile_id in enumerate(ids):
        if not profile_id:
            continue
        identities = {ns: tuple(item["id"] for item in items) for ns, items in (identity_maps[i] or ())}
        attrs = drop_nulls({name: col[i] for name, col in zip(attribute_names, attributes)})
        yield SnapshotProfile(profile_id, times[i] or 0, identities, attrs, memberships[i])


class ReadSnapshotProfiles(beam.PTransform):
    """A snapshot glob -> ``SnapshotProfile`` elements (row groups read in parallel; an
    unreadable file is skipped: the seed is a starting point, the stream goes on)."""

    def __init__(self, pattern: str, audience_ids: Optional[Sequence[str]] = None):
        super().__init__()
        self._pattern = pattern
        self._audience_ids = audience_ids
        check_files(pattern, "--seed_snapshot")

    def expand(self, pbegin):
        audience_ids = self._audience_ids
        row_groups = pbegin | "RowGroups" >> ReadParquetRowGroups(self._pattern, "--seed_snapshot")
        return (row_groups["work"]
                | "Spread" >> beam.Reshuffle()
                | "Rows" >> beam.FlatMap(_row_group_profiles, audience_ids))


def _row_group_profiles(item, audience_ids) -> Iterator[SnapshotProfile]:
    for batch in read_row_group(item[0], item[1], None, 65536):
        progress.add(progress.SEED_PROFILES, batch.num_rows)  # live progress of a seeded job
        yield from snapshot_profiles(batch, audience_ids)
