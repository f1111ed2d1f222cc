"""Profile updates from JSON lines and Avro container files (SPEC 4).

Parsing is pure (``parse_json_update``, ``read_avro_updates``): a malformed line or record
becomes a ``DeadLetter`` with its reason and source position, never an exception, and the
records around it go on. ``ReadProfileUpdates`` reads whole files (one file per element keeps
line numbers exact) and emits two tagged outputs, ``updates`` and ``dead_letter``.

Decisions: unknown top-level keys are ignored (producers add fields; the record is still
usable); an ``event`` without its own ``timestamp`` takes the update's.
"""
from __future__ import annotations

import io
import json
import time
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue

from transforms.errors import UserError
from transforms.model import DeadLetter, ProfileUpdate
from transforms.timeutil import parse_timestamp_ms

UPDATES = "updates"
DEAD_LETTER = "dead_letter"
_EMPTY: Dict[str, Tuple[str, ...]] = {}


class InvalidUpdate(ValueError):
    pass


def _identities(value, field: str, removals: bool) -> Dict[str, Tuple[str, ...]]:
    if value is None:
        return _EMPTY
    if not isinstance(value, dict):
        raise InvalidUpdate(f"field '{field}': expected an object of namespace -> list")
    out = {}
    for namespace, ids in value.items():
        if not isinstance(ids, list):
            raise InvalidUpdate(f"field '{field}.{namespace}': expected a list")
        seen = []
        for i, item in enumerate(ids):
            if isinstance(item, dict):
                item = item.get("id")
            elif not removals:
                item = None
            if not isinstance(item, str) or not item:
                raise InvalidUpdate(f"field '{field}.{namespace}[{i}]': expected an object with a string 'id'"
                                    if not removals else f"field '{field}.{namespace}[{i}]': expected a string id")
            if item not in seen:
                seen.append(item)
        if seen:
            out[namespace] = tuple(seen)
    return out


def update_from_dict(doc: Any) -> ProfileUpdate:
    """A decoded update document to a ``ProfileUpdate``; ``InvalidUpdate`` names what is wrong."""
    if not isinstance(doc, dict):
        raise InvalidUpdate("expected a JSON object")
    profile_id = doc.get("profileId")
    if profile_id is None:
        raise InvalidUpdate("missing required field 'profileId'")
    if not isinstance(profile_id, str) or not profile_id:
        raise InvalidUpdate("field 'profileId': expected a non-empty string")
    ts = doc.get("timestamp")
    if ts is None:
        raise InvalidUpdate("missing required field 'timestamp'")
    try:
        timestamp_ms = parse_timestamp_ms(ts)
    except ValueError as e:
        raise InvalidUpdate(f"field 'timestamp': {e}") from None
    dataset_id = doc.get("datasetId")
    if dataset_id is not None and not isinstance(dataset_id, str):
        raise InvalidUpdate("field 'datasetId': expected a string")
    attributes = doc.get("attributes")
    if attributes is None:
        attributes = {}
    elif not isinstance(attributes, dict):
        raise InvalidUpdate("field 'attributes': expected an object")
    event = doc.get("event")
    if event is not None:
        if not isinstance(event, dict):
            raise InvalidUpdate("field 'event': expected an object")
        event = dict(event)
        try:
            event["timestamp"] = parse_timestamp_ms(event["timestamp"]) if event.get("timestamp") is not None else timestamp_ms
        except ValueError as e:
            raise InvalidUpdate(f"field 'event.timestamp': {e}") from None
    return ProfileUpdate(profile_id, timestamp_ms, dataset_id,
                         _identities(doc.get("identityMap"), "identityMap", False),
                         _identities(doc.get("identityRemovals"), "identityRemovals", True),
                         attributes, event)


def parse_json_update(line: Union[str, bytes], source: str, line_no: int) -> Union[ProfileUpdate, DeadLetter]:
    try:
        return update_from_dict(json.loads(line))
    except json.JSONDecodeError as e:
        reason = f"invalid JSON: {e.msg} at column {e.colno}"
    except InvalidUpdate as e:
        reason = str(e)
    except RecursionError:
        reason = "invalid JSON: nested too deeply"
    raw = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return DeadLetter(reason, source, f"line {line_no}", raw.rstrip("\n"))


def iter_json_updates(lines: Iterable[bytes], source: str) -> Iterator[Union[ProfileUpdate, DeadLetter]]:
    for n, line in enumerate(lines, 1):
        if line.strip():
            yield parse_json_update(line, source, n)


def _avro_document(record: Dict[str, Any]) -> Dict[str, Any]:
    """Avro carries ``attributes`` and ``event`` as JSON text (Avro has no free-form object)."""
    doc = dict(record)
    for key in ("attributes", "event"):
        if isinstance(doc.get(key), str):
            try:
                doc[key] = json.loads(doc[key])
            except json.JSONDecodeError as e:
                raise InvalidUpdate(f"field '{key}': invalid JSON: {e.msg} at column {e.colno}") from None
    return doc


def read_avro_updates(stream: Union[str, io.IOBase], source: str = None) -> Iterator[Union[ProfileUpdate, DeadLetter]]:
    """Records of an Avro container file; a corrupt block ends the file with one dead letter
    (the valid records before it are still emitted)."""
    import fastavro
    source = source or str(stream)
    f = open(stream, "rb") if isinstance(stream, str) else stream
    n = 0
    try:
        reader = fastavro.reader(f)
        for n, record in enumerate(reader, 1):
            try:
                yield update_from_dict(_avro_document(record))
            except InvalidUpdate as e:
                yield DeadLetter(str(e), source, f"record {n}", json.dumps(record, default=str))
    except Exception as e:  # fastavro raises many kinds on corrupt data; the rest is unreadable
        offset = f.tell() if hasattr(f, "tell") else None
        yield DeadLetter(f"corrupt Avro file: {e}", source, f"after record {n}" + (f", offset {offset}" if offset else ""), "")
    finally:
        if isinstance(stream, str):
            f.close()


def read_updates_file(path: str) -> Iterator[Union[ProfileUpdate, DeadLetter]]:
    """One JSONL (optionally compressed, by extension) or Avro file, by its extension."""
    try:
        f = FileSystems.open(path)
    except Exception as e:
        yield DeadLetter(f"cannot read input file: {e}", path, None, "")
        return
    with f:
        if path.endswith(".avro"):
            yield from read_avro_updates(f, path)
        else:
            yield from iter_json_updates(f, path)


class _ReadUpdatesFileFn(beam.DoFn):
    def __init__(self):
        self._updates = Metrics.counter("inputs", "updates_read")
        self._bad = Metrics.counter("inputs", "input_dead_letters")

    def process(self, path: str):
        for item in read_updates_file(path):
            if isinstance(item, ProfileUpdate):
                self._updates.inc()
                yield TimestampedValue(item, item.timestamp_ms / 1000.0)
            else:
                self._bad.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)


def match_paths(pattern: str) -> list:
    """Paths matching a glob (one error when none do: the job would silently do nothing)."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as e:
        raise UserError(f"--input {pattern}: cannot list files: {e}") from None
    paths = sorted(m.path for m in result.metadata_list)
    if not paths:
        raise UserError(f"--input matches no files: {pattern}")
    return paths


class ReadProfileUpdates(beam.PTransform):
    """JSONL/Avro files matching ``pattern`` -> ``updates`` (event-time stamped) and ``dead_letter``."""

    def __init__(self, pattern: str):
        super().__init__()
        self._paths = match_paths(pattern)

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self._paths)
                | "Reshuffle" >> beam.Reshuffle()
                | "Parse" >> beam.ParDo(_ReadUpdatesFileFn()).with_outputs(DEAD_LETTER, main=UPDATES))


# ------------------------------------------------------------------ kinesis:STREAM (unbounded)

UNBOUNDED_SEQUENCE = 1 << 160  # above any Kinesis sequence number (they fit in 128 bits)


class _PollRestrictionProvider(beam.transforms.core.RestrictionProvider):
    """The positions still to read, ``[start, UNBOUNDED)``: Kinesis sequence numbers of a shard,
    or file modification times (ns) of a watched directory. A checkpoint is the residual after
    the last claimed position, so a restart resumes just after what the runner committed."""

    def initial_restriction(self, shard):
        from apache_beam.io.restriction_trackers import OffsetRange
        return OffsetRange(0, UNBOUNDED_SEQUENCE)

    def create_tracker(self, restriction):
        from apache_beam.io.restriction_trackers import OffsetRestrictionTracker
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, shard, restriction):
        return 1  # unknown backlog; every shard weighs the same

    def truncate(self, shard, restriction):
        return None  # drain: stop reading


def shard_iterator_args(stream: str, shard_id: str, start: int) -> dict:
    """Where to (re)start a shard: the beginning, or just after the last committed record."""
    args = {"StreamName": stream, "ShardId": shard_id}
    if start == 0:
        args["ShardIteratorType"] = "TRIM_HORIZON"
    else:
        args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=str(start - 1))
    return args


class _ReadShardFn(beam.DoFn):
    """Reads one shard with GetShardIterator/GetRecords; between polls the rest of the shard is
    deferred (a checkpoint the runner persists)."""

    def __init__(self, stream, region, endpoint_url, credentials, poll_interval_s, max_idle_polls):
        self._stream, self._region, self._endpoint_url, self._credentials = stream, region, endpoint_url, credentials
        self._poll_interval_s, self._max_idle_polls = poll_interval_s, max_idle_polls
        self._updates = Metrics.counter("inputs", "updates_read")
        self._bad = Metrics.counter("inputs", "input_dead_letters")

    def setup(self):
        from transforms.config import Destination
        from transforms.kinesis import make_client
        self._client = make_client(Destination("input", self._region, self._stream, "", endpoint_url=self._endpoint_url,
                                               credentials=self._credentials))
        self._idle = {}

    @beam.DoFn.unbounded_per_element()
    def process(self, shard_id: str, tracker=beam.DoFn.RestrictionParam(_PollRestrictionProvider())):
        start = tracker.current_restriction().start
        iterator = self._client.get_shard_iterator(**shard_iterator_args(self._stream, shard_id, start))["ShardIterator"]
        page = self._client.get_records(ShardIterator=iterator, Limit=1000)
        source = f"kinesis:{self._stream}/{shard_id}"
        for record in page["Records"]:
            sequence = int(record["SequenceNumber"])
            if not tracker.try_claim(sequence):
                return
            item = parse_json_update(record["Data"], source, 0)
            if isinstance(item, ProfileUpdate):
                self._updates.inc()
                yield TimestampedValue(item, item.timestamp_ms / 1000.0)
            else:
                self._bad.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, item._replace(position=f"sequence {sequence}"))
        idle = 0 if page["Records"] else self._idle.get(shard_id, 0) + 1
        self._idle[shard_id] = idle
        if self._max_idle_polls is not None and idle >= self._max_idle_polls:
            tracker.try_claim(UNBOUNDED_SEQUENCE - 1)  # bounded for tests and demos: the shard is done
            return
        from apache_beam.utils.timestamp import Duration
        tracker.defer_remainder(Duration(seconds=self._poll_interval_s if not page["Records"] else 0))


class ReadKinesisUpdates(beam.PTransform):
    """``kinesis:STREAM``: JSON updates from every shard of an input stream (unbounded).

    ``max_idle_polls`` ends a shard after that many empty polls in a row (tests, demos)."""

    def __init__(self, stream: str, region: str, endpoint_url=None, credentials=None,
                 poll_interval_s: float = 1.0, max_idle_polls=None):
        super().__init__()
        self._stream, self._region, self._endpoint_url, self._credentials = stream, region, endpoint_url, credentials
        self._poll_interval_s, self._max_idle_polls = poll_interval_s, max_idle_polls

    def _shards(self):
        from transforms.config import Destination
        from transforms.kinesis import make_client
        client = make_client(Destination("input", self._region, self._stream, "", endpoint_url=self._endpoint_url,
                                         credentials=self._credentials))
        try:
            shards, kwargs = [], {"StreamName": self._stream}
            while True:
                page = client.list_shards(**kwargs)
                shards += [s["ShardId"] for s in page["Shards"]]
                if not page.get("NextToken"):
                    return shards
                kwargs = {"NextToken": page["NextToken"]}
        except Exception as e:
            raise UserError(f"--input kinesis:{self._stream}: cannot list shards: {e}") from None

    def expand(self, pbegin):
        return (pbegin
                | "Shards" >> beam.Create(self._shards())
                | "ReadShards" >> beam.ParDo(_ReadShardFn(self._stream, self._region, self._endpoint_url,
                                                          self._credentials, self._poll_interval_s,
                                                          self._max_idle_polls)).with_outputs(DEAD_LETTER, main=UPDATES))


class _WatchDirectoryFn(beam.DoFn):
    """Lists a directory; files modified after the last claimed modification time are new.
    Between polls the rest is deferred (a checkpoint); the poll also sleeps up to a second when
    idle, since not every runner honours a deferral's delay."""

    def __init__(self, interval_s: float, stop_at_s: Optional[float]):
        self._interval_s, self._stop_at_s = interval_s, stop_at_s

    @beam.DoFn.unbounded_per_element()
    def process(self, directory: str, tracker=beam.DoFn.RestrictionParam(_PollRestrictionProvider())):
        import os
        from apache_beam.utils.timestamp import Duration
        start = tracker.current_restriction().start
        landed = []
        for entry in os.scandir(directory):
            if entry.is_file() and not entry.name.startswith(".") and not entry.name.endswith(".tmp"):
                mtime = entry.stat().st_mtime_ns
                if mtime >= start:
                    landed.append((mtime, entry.path))
        for mtime, path in sorted(landed):
            if not tracker.try_claim(mtime):
                return
            yield path
        if self._stop_at_s is not None and time.time() >= self._stop_at_s:
            tracker.try_claim(UNBOUNDED_SEQUENCE - 1)
            return
        if not landed:
            time.sleep(min(self._interval_s, 1.0))
        tracker.defer_remainder(Duration(seconds=self._interval_s))


class WatchProfileUpdates(beam.PTransform):
    """``watch:DIR``: files landing in DIR are read as they arrive (polled every ``interval_s``;
    each file once, by modification time; hidden and ``*.tmp`` files are skipped, so writers
    should write under such a name and rename). ``stop_after_s`` bounds the watch (tests, demos)."""

    def __init__(self, directory: str, interval_s: float = 5.0, stop_after_s: Optional[float] = None):
        super().__init__()
        self._directory, self._interval_s, self._stop_after_s = directory, interval_s, stop_after_s

    def expand(self, pbegin):
        stop_at = None if self._stop_after_s is None else time.time() + self._stop_after_s
        return (pbegin
                | "Directory" >> beam.Create([self._directory])
                | "Poll" >> beam.ParDo(_WatchDirectoryFn(self._interval_s, stop_at))
                | "Parse" >> beam.ParDo(_ReadUpdatesFileFn()).with_outputs(DEAD_LETTER, main=UPDATES))
