"""Parquet profile snapshots (SPEC 4): record batches for the backfill, profile states for the
streaming seed, and experience events for event rules in a backfill.

A snapshot row: ``profileId`` (string), ``timestamp`` (Parquet timestamp, UTC), ``identityMap``
(map<string, list<struct<id: string>>>), optional ``segmentMembership`` (JSON text as in the
export) and XDM attributes as further (nested struct) columns.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

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
    names = f.schema_arrow.names
    for column in ("profileId", "timestamp"):
        if column not in names:
            raise UserError(f"{flag} {path}: no {column!r} column")
    return f


def iter_snapshot_batches(pattern: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    for path in match_files(pattern):
        yield from iter_file_batches(path, batch_size)


def iter_file_batches(path: str, batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    yield from open_parquet(path).iter_batches(batch_size=batch_size)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _drop_nulls(v) for k, v in value.items() if v is not None}
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


def snapshot_profiles(batch: pa.RecordBatch) -> Iterator[SnapshotProfile]:
    """Rows as ``SnapshotProfile`` (the streaming seed; a Python object per row is fine there)."""
    names = batch.schema.names
    ids = batch.column("profileId").to_pylist()
    times = batch.column("timestamp").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_pylist()
    identity_maps = batch.column("identityMap").to_pylist() if "identityMap" in names else [None] * len(ids)
    memberships = batch.column("segmentMembership").to_pylist() if "segmentMembership" in names else [None] * len(ids)
    attribute_names = [n for n in names if n not in RESERVED]
    attributes = [batch.column(n).to_pylist() for n in attribute_names]
    for i, profile_id in enumerate(ids):
        identities = {ns: tuple(item["id"] for item in (items or ()) if item and item.get("id"))
                      for ns, items in (identity_maps[i] or ())}
        attrs = _drop_nulls({n: col[i] for n, col in zip(attribute_names, attributes)})
        yield SnapshotProfile(profile_id, times[i], {k: v for k, v in identities.items() if v}, attrs,
                              parse_membership(memberships[i]))


class ReadSnapshotProfiles(beam.PTransform):
    """A snapshot glob -> ``SnapshotProfile`` elements (one file per element, read in parallel)."""

    def __init__(self, pattern: str):
        super().__init__()
        self._paths = match_files(pattern, "--seed_snapshot")

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self._paths)
                | "Reshuffle" >> beam.Reshuffle()
                | "Rows" >> beam.FlatMap(lambda path: (p for b in iter_file_batches(path) for p in snapshot_profiles(b))))


def read_events(pattern: str) -> Dict[str, List[dict]]:
    """``--events``: profile id -> its events (Parquet or JSONL; ``timestamp`` as epoch ms)."""
    events: Dict[str, List[dict]] = {}
    for path in match_files(pattern, "--events"):
        if path.endswith(".parquet"):
            rows = (r for b in open_parquet(path, "--events").iter_batches() for r in b.to_pylist())
        else:
            rows = _json_rows(path)
        for row in rows:
            profile_id = row.pop("profileId", None)
            try:
                row["timestamp"] = parse_timestamp_ms(row["timestamp"])
            except (KeyError, ValueError, TypeError):
                continue
            if profile_id:
                events.setdefault(profile_id, []).append(_drop_nulls(row))
    return events


def _json_rows(path: str) -> Iterator[dict]:
    with FileSystems.open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise UserError(f"--events {path}: line {n} is not valid JSON") from None
