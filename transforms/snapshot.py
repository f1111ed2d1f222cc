"""Parquet profile snapshots (docs/semantics.md#inputs): record batches for the backfill, profile states for the
streaming seed, and experience events for event rules in a backfill.

A snapshot row: ``profileId`` (string), ``timestamp`` (Parquet timestamp, UTC), ``identityMap``
(map<string, list<struct<id: string>>>), optional ``segmentMembership`` (JSON text as in the
export) and XDM attributes as further (nested struct) columns.

Files are checked (readable Parquet, ``profileId`` and ``timestamp`` columns) before anything
runs, so a bad ``--snapshot``/``--seed_snapshot``/``--events`` is one line, not a failed job.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import progress
from transforms.errors import UserError
from transforms.model import SegmentStatus, SnapshotProfile
from transforms.timeutil import parse_timestamp_ms

RESERVED = ("profileId", "timestamp", "identityMap", "segmentMembership")


def match_files(pattern: str, flag: str = "--snapshot") -> List[str]:
    try:
        paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception as e:
        raise UserError(f"{flag} {pattern}: cannot list files: {e}") from None
    if not paths:
        raise UserError(f"{flag} matches no files: {pattern}")
    return paths


def open_parquet(path: str, flag: str = "--snapshot") -> pq.ParquetFile:
    """A Parquet file with the required columns, or one line naming what is wrong."""
    try:
        f = pq.ParquetFile(FileSystems.open(path) if "://" in path else path)
    except Exception as e:
        raise UserError(f"{flag} {path}: not a readable Parquet file ({e})") from None
    schema = f.schema_arrow
    for column in ("profileId", "timestamp"):
        if column not in schema.names:
            raise UserError(f"{flag} {path}: no {column!r} column")
    kind = schema.field("timestamp").type
    if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)):
        raise UserError(f"{flag} {path}: column 'timestamp' is {kind}, expected a Parquet timestamp")
    return f


def iter_snapshot_batches(pattern: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """Record batches of every matching file; the files are matched and checked at the call."""
    files = [open_parquet(path) for path in match_files(pattern)]
    return (batch for f in files for batch in f.iter_batches(batch_size=batch_size))


def iter_file_batches(path: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    yield from open_parquet(path).iter_batches(batch_size=batch_size)


def drop_nulls(value: Any) -> Any:
    """Null leaves and all-null structs left out: to rules and records, null means absent."""
    if isinstance(value, dict):
        out = {k: drop_nulls(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}
    return value


def parse_membership(text: Optional[str]) -> Dict[str, SegmentStatus]:
    """The snapshot's ``segmentMembership`` JSON; ``existing`` is read as ``realized``;
    entries without a readable time or status are skipped."""
    if not text:
        return {}
    try:
        ups = json.loads(text).get("ups") or {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for audience_id, entry in ups.items():
        try:
            status = entry["status"]
            ms = parse_timestamp_ms(entry["lastQualificationTime"].replace("+0000", "+00:00"))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if status in ("realized", "existing"):
            out[audience_id] = SegmentStatus("realized", ms)
        elif status == "exited":
            out[audience_id] = SegmentStatus("exited", ms)
    return out


def times_ms(column: pa.Array) -> List[Optional[int]]:
    """A ``timestamp`` column as epoch ms: any timestamp unit (sub-ms truncated), epoch-ms
    integers, or ISO text."""
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.timestamp("ms", tz="UTC"), safe=False).cast(pa.int64()).to_pylist()
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64()).to_pylist()
    return [None if v is None else parse_timestamp_ms(v) for v in column.to_pylist()]


def snapshot_profiles(batch: pa.RecordBatch) -> Iterator[SnapshotProfile]:
    """Rows as ``SnapshotProfile`` (the streaming seed; a Python object per row is fine there).
    A row without ``profileId`` is skipped; one without ``timestamp`` counts as 0 (older than
    any update)."""
    names = batch.schema.names
    ids = batch.column("profileId").to_pylist()
    times = times_ms(batch.column("timestamp"))
    identity_maps = batch.column("identityMap").to_pylist() if "identityMap" in names else [None] * len(ids)
    memberships = batch.column("segmentMembership").to_pylist() if "segmentMembership" in names else [None] * len(ids)
    attribute_names = [n for n in names if n not in RESERVED]
    attributes = [batch.column(n).to_pylist() for n in attribute_names]
    for i, profile_id in enumerate(ids):
        if not profile_id:
            continue
        identities = {ns: tuple(item["id"] for item in (items or ()) if item and item.get("id"))
                      for ns, items in (identity_maps[i] or ())}
        attrs = drop_nulls({n: col[i] for n, col in zip(attribute_names, attributes)})
        yield SnapshotProfile(profile_id, times[i] or 0, {k: v for k, v in identities.items() if v}, attrs,
                              parse_membership(memberships[i]))


class ReadSnapshotProfiles(beam.PTransform):
    """A snapshot glob -> ``SnapshotProfile`` elements (one file per element, read in parallel)."""

    def __init__(self, pattern: str):
        super().__init__()
        self._paths = match_files(pattern, "--seed_snapshot")
        for path in self._paths:
            open_parquet(path, "--seed_snapshot")

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self._paths)
                | "Reshuffle" >> beam.Reshuffle()
                | "Rows" >> beam.FlatMap(_file_profiles))


def _file_profiles(path: str) -> Iterator[SnapshotProfile]:
    for batch in iter_file_batches(path):
        progress.add(progress.SEED_PROFILES, batch.num_rows)  # live progress of a seeded job
        yield from snapshot_profiles(batch)


def read_events(pattern: str) -> Dict[str, List[dict]]:
    """``--events``: profile id -> its events in time order (Parquet or JSONL; ``timestamp`` as
    epoch ms). A row without a ``profileId`` or a readable ``timestamp`` is a one-line error."""
    events: Dict[str, List[dict]] = {}
    for path in match_files(pattern, "--events"):
        if path.endswith(".parquet"):
            rows = _parquet_rows(path)
        else:
            rows = _json_rows(path)
        for where, row in rows:
            profile_id = row.pop("profileId", None)
            if not isinstance(profile_id, str) or not profile_id:
                raise UserError(f"--events {path}: {where}: no 'profileId'")
            if row.get("timestamp") is None:
                raise UserError(f"--events {path}: {where}: no 'timestamp'")
            try:
                row["timestamp"] = parse_timestamp_ms(row["timestamp"])
            except ValueError as e:
                raise UserError(f"--events {path}: {where}: 'timestamp': {e}") from None
            events.setdefault(profile_id, []).append(drop_nulls(row))
    for history in events.values():
        history.sort(key=lambda e: e["timestamp"])
    return events


def _parquet_rows(path: str) -> Iterator[tuple]:
    n = 0
    for batch in open_parquet(path, "--events").iter_batches():
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


def _json_rows(path: str) -> Iterator[tuple]:
    with FileSystems.open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    raise UserError(f"--events {path}: line {n} is not valid JSON") from None
                if not isinstance(row, dict):
                    raise UserError(f"--events {path}: line {n} is not a JSON object")
                yield f"line {n}", row
