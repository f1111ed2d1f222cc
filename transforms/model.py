"""The domain values that flow between transforms.

Plain NamedTuples: cheap to build on the hot path, picklable, and encoded by Beam's
default coders without registration.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Tuple


class ProfileUpdate(NamedTuple):
    """One change to a profile (docs/semantics.md#inputs), already validated.

    ``attributes`` is the partial nested object as received: each leaf (any non-dict
    value, lists included) is a write to its path, ``None`` deletes the path.
    ``identities`` / ``identity_removals`` map a namespace to the ids added / removed.
    ``event`` is an experience event; its time is ``event['timestamp']`` when it carries
    one (epoch ms after parsing), else the update's ``timestamp_ms``.
    """
    profile_id: str
    timestamp_ms: int
    dataset_id: Optional[str] = None
    identities: Mapping[str, Tuple[str, ...]] = {}
    identity_removals: Mapping[str, Tuple[str, ...]] = {}
    attributes: Mapping[str, Any] = {}
    event: Optional[Mapping[str, Any]] = None


class SegmentStatus(NamedTuple):
    status: str  # "realized" | "exited"
    last_qualification_ms: int


class SnapshotProfile(NamedTuple):
    """A profile state read from a Parquet snapshot row (streaming seed)."""
    profile_id: str
    timestamp_ms: int
    identities: Mapping[str, Tuple[str, ...]]
    attributes: Mapping[str, Any]
    segment_membership: Mapping[str, SegmentStatus]  # audience id -> status ('existing' read as realized)


class ExportRecord(NamedTuple):
    """A record for the sink: partition key, compact UTF-8 JSON data, and the update time
    that produced it (for the export-latency metric; ``None`` when unknown)."""
    partition_key: str
    data: bytes
    event_time_ms: Optional[int] = None


class DeadLetter(NamedTuple):
    """Something that could not be processed: why, where it came from, and the raw text."""
    reason: str
    source: str           # file path (or stream/shard)
    position: Optional[str]  # "line 12" / "offset 4096" / "record 3"
    raw: str


class ExportRecordBatch(NamedTuple):
    """Records built together (a backfill batch, one merge policy): the partition keys (a
    pyarrow string array) and the pieces whose concatenation is each record's data (string
    arrays and constant strings). Every sink accepts them beside ``ExportRecord``: the file
    sink builds its lines from the pieces in one pass, ``KinesisWrite`` takes ``records()``."""
    policy_id: str
    partition_keys: Any
    parts: Tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.partition_keys)

    def data(self):
        """The records' data as a string array."""
        from transforms.arrow_text import concat
        return concat(*self.parts)

    def records(self):
        """As ``ExportRecord`` elements (no update time: a backfill's records are history)."""
        return [ExportRecord(key, data.encode(), None)
                for key, data in zip(self.partition_keys.to_pylist(), self.data().to_pylist())]
