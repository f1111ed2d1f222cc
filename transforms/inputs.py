"""Profile updates from JSON lines and Avro container files (docs/semantics.md, "Inputs").

Parsing is pure (``parse_json_update``, ``read_avro_updates``): a malformed line or record
becomes a ``DeadLetter`` with its reason and source position, never an exception, and the
records around it go on. ``ReadProfileUpdates`` reads whole files (one file per element keeps
line numbers exact) and emits two tagged outputs, ``updates`` and ``dead_letter``.

Decisions: unknown top-level keys are ignored (producers add fields; the record is still
usable); an ``event`` without its own ``timestamp`` takes the update's; timestamps must fall in
years 1 to 9999 (what ISO text and Beam's event time can hold). Files are read by extension:
``.avro`` as Avro, anything else as JSON lines (``.gz``/``.bz2``/... decompressed by Beam). A
directory (``--input DIR`` or ``watch:DIR``) holds more than updates (a config, a snapshot, a
README), so from a directory only ``UPDATE_FILE_SUFFIXES`` are read; a glob is taken as given.
"""
from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watch import PollFn, PollResult, Watch, after_total_of, never
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms import progress
from transforms.errors import UserError
from transforms.model import DeadLetter, ProfileUpdate
from transforms.timeutil import now_ms, parse_timestamp_ms

UPDATES = "updates"
DEAD_LETTER = "dead_letter"
_EMPTY: Dict[str, Tuple[str, ...]] = {}
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999  # 0001-01-01 .. 9999-12-31T23:59:59.999Z


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


def _time_ms(value, field: str) -> int:
    try:
        ms = parse_timestamp_ms(value)
    except ValueError as e:
        raise InvalidUpdate(f"field '{field}': {e}") from None
    if not _MIN_MS <= ms <= _MAX_MS:
        raise InvalidUpdate(f"field '{field}': {value!r} is out of range (years 1 to 9999)")
    return ms


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
    timestamp_ms = _time_ms(ts, "timestamp")
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
        own = event.get("timestamp")
        event["timestamp"] = timestamp_ms if own is None else _time_ms(own, "event.timestamp")
    return ProfileUpdate(profile_id, timestamp_ms, dataset_id,
                         _identities(doc.get("identityMap"), "identityMap", False),
                         _identities(doc.get("identityRemovals"), "identityRemovals", True),
                         attributes, event)


def json_error(e: json.JSONDecodeError) -> str:
    """The reason with the column (from 1) where the text goes wrong: for a string left open
    (a truncated line) that is the end of the text, not the string's start."""
    if e.msg.startswith("Unterminated string"):
        return f"invalid JSON: unterminated string at column {len(e.doc) + 1} (opened at column {e.colno})"
    return f"invalid JSON: {e.msg} at column {e.colno}"


def parse_json_update(line: Union[str, bytes], source: str, line_no: int) -> Union[ProfileUpdate, DeadLetter]:
    try:  # without its line break, a truncated line's error is at its end, not "line 2 column 1"
        return update_from_dict(json.loads(line.rstrip(b"\r\n" if isinstance(line, bytes) else "\r\n")))
    except json.JSONDecodeError as e:
        reason = json_error(e)
    except InvalidUpdate as e:
        reason = str(e)
    except UnicodeDecodeError as e:
        reason = f"invalid JSON: not UTF-8 text ({e.reason} at byte {e.start})"
    except RecursionError:
        reason = "invalid JSON: nested too deeply"
    raw = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    return DeadLetter(reason, source, f"line {line_no}", raw.rstrip("\n"))


def iter_json_updates(lines: Iterable[bytes], source: str) -> Iterator[Union[ProfileUpdate, DeadLetter]]:
    """Lines of a file; a read error (a truncated gzip, a lost connection) ends the file with one
    dead letter, after the lines read before it."""
    n = 0
    try:
        for n, line in enumerate(lines, 1):
            if line.strip():
                yield parse_json_update(line, source, n)
    except Exception as e:  # zlib.error, EOFError, OSError, a filesystem's own errors
        yield DeadLetter(f"cannot read the rest of the file: {e}", source, f"after line {n}", "")


def _avro_document(record: Dict[str, Any]) -> Dict[str, Any]:
    """Avro carries ``attributes`` and ``event`` as JSON text (Avro has no free-form object)."""
    doc = dict(record)
    for key in ("attributes", "event"):
        if isinstance(doc.get(key), str):
            try:
                doc[key] = json.loads(doc[key])
            except json.JSONDecodeError as e:
                raise InvalidUpdate(f"field '{key}': {json_error(e)}") from None
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
        if _without_compression(path).endswith(".avro"):
            yield from read_avro_updates(f, path)
        else:  # Beam's decompressing file is not iterable: read by readline
            yield from iter_json_updates(iter(f.readline, b""), path)


class _ReadUpdatesFileFn(beam.DoFn):
    def setup(self):
        self._read, self._dead = progress.Tally(progress.UPDATES), progress.Tally(progress.INPUTS_DEAD_LETTERED)

    def process(self, path: str):
        for item in read_updates_file(path):
            if isinstance(item, ProfileUpdate):
                self._read.inc()
                yield TimestampedValue(item, item.timestamp_ms / 1000.0)
            else:
                self._dead.inc()
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)

    def finish_bundle(self):
        self._read.flush()
        self._dead.flush()


UPDATE_FILE_SUFFIXES = (".jsonl", ".json", ".avro")
COMPRESSION_SUFFIXES = (".gz",)


def _without_compression(path: str) -> str:
    for suffix in COMPRESSION_SUFFIXES:
        if path.endswith(suffix):
            return path[:-len(suffix)]
    return path


def is_update_file(path: str) -> bool:
    """What a directory contributes: ``*.jsonl``, ``*.json``, ``*.avro`` and their ``.gz``,
    not hidden or still being written."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return not _in_progress(name) and _without_compression(name).endswith(UPDATE_FILE_SUFFIXES)


def is_directory(path: str) -> bool:
    """A local directory, or a path ending with ``/`` (object stores have no directories)."""
    return path.endswith("/") or (FileSystems.get_scheme(path) is None and os.path.isdir(path))


def match_paths(pattern: str) -> list:
    """Paths matching a glob, or the update files of a directory (one error when none do: the
    job would silently do nothing)."""
    directory = is_directory(pattern)
    try:
        result = FileSystems.match([FileSystems.join(pattern, "*") if directory else pattern])[0]
    except Exception as e:
        raise UserError(f"--input {pattern}: cannot list files: {e}") from None
    paths = sorted(m.path for m in result.metadata_list if not directory or is_update_file(m.path))
    if not paths:
        if directory:
            raise UserError(f"--input {pattern}: no *.jsonl, *.json or *.avro files (or their .gz) in this directory")
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

SEQUENCE_END = 10 ** 130  # above any Kinesis sequence number (decimal text of up to 129 digits)
_TRANSIENT = frozenset({"ProvisionedThroughputExceededException", "LimitExceededException",
                        "KMSThrottlingException", "InternalFailure", "ServiceUnavailable"})
_PAGES_PER_POLL = 10  # GetRecords calls per invocation while a shard is behind (then a checkpoint)
_GET_RECORDS_GAP_S = 0.2  # Kinesis allows 5 GetRecords per second per shard


class _ShardTracker(OffsetRestrictionTracker):
    """Sequence numbers of a shard. They are sparse and the end is unknown, so the only split is
    a checkpoint (at the last claimed record); a fractional split is refused."""

    def try_split(self, fraction_of_remainder):
        return super().try_split(0) if fraction_of_remainder == 0 else None


class _ShardRestrictionProvider(RestrictionProvider):
    """``[next sequence number, SEQUENCE_END)`` of one shard. The runner persists the residual of a
    checkpoint, which starts just after the last claimed record: a restart neither skips nor
    re-reads more than what came after that checkpoint."""

    def initial_restriction(self, shard_id):
        return OffsetRange(0, SEQUENCE_END)

    def create_tracker(self, restriction):
        return _ShardTracker(restriction)

    def restriction_size(self, shard_id, restriction):
        return 1  # unknown backlog; every shard weighs the same

    def truncate(self, shard_id, restriction):
        return None  # drain: stop reading


def shard_iterator_args(stream: str, shard_id: str, start: int) -> dict:
    """Where to (re)start a shard: the beginning, or just after the last committed record."""
    args = {"StreamName": stream, "ShardId": shard_id}
    if start == 0:
        args["ShardIteratorType"] = "TRIM_HORIZON"
    else:
        args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=str(start - 1))
    return args


def _is_transient(error: Exception) -> bool:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, ReadTimeoutError
    if isinstance(error, ClientError):
        return error.response.get("Error", {}).get("Code") in _TRANSIENT
    return isinstance(error, (BotoConnectionError, ReadTimeoutError))


def _kinesis_client(stream, region, endpoint_url, credentials):
    from transforms.config import Destination
    from transforms.kinesis import make_client
    return make_client(Destination("input", region, stream, "", endpoint_url=endpoint_url, credentials=credentials))


class _ReadShardFn(beam.DoFn):
    """Reads one shard: GetShardIterator at the restriction's start, then GetRecords pages while
    the shard is behind, claiming each record's sequence number; then the rest of the shard is
    deferred (a checkpoint) for ``poll_interval_s``, or at once while there is a backlog.

    The watermark is the arrival time read up to (now minus GetRecords' ``MillisBehindLatest``),
    so event-time timers downstream fire as the stream is caught up. Throttling and connection
    errors wait for the next poll instead of failing the bundle."""

    def __init__(self, stream, region, endpoint_url, credentials, poll_interval_s, max_idle_polls):
        self._stream, self._region, self._endpoint_url, self._credentials = stream, region, endpoint_url, credentials
        self._poll_interval_s, self._max_idle_polls = poll_interval_s, max_idle_polls
        self._retries = Metrics.counter("inputs", "kinesis_read_retries")

    def setup(self):
        self._client = _kinesis_client(self._stream, self._region, self._endpoint_url, self._credentials)
        self._idle = {}
        self._read, self._dead = progress.Tally(progress.UPDATES), progress.Tally(progress.INPUTS_DEAD_LETTERED)

    def finish_bundle(self):
        self._read.flush()
        self._dead.flush()

    @beam.DoFn.unbounded_per_element()
    def process(self, shard_id: str, tracker=beam.DoFn.RestrictionParam(_ShardRestrictionProvider()),
                watermark=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())):
        source = f"kinesis:{self._stream}/{shard_id}"
        read = 0
        behind_ms = 1
        try:
            iterator = self._client.get_shard_iterator(
                **shard_iterator_args(self._stream, shard_id, tracker.current_restriction().start))["ShardIterator"]
            for page_no in range(_PAGES_PER_POLL):
                if page_no:
                    time.sleep(_GET_RECORDS_GAP_S)
                page = self._client.get_records(ShardIterator=iterator, Limit=1000)
                for record in page["Records"]:
                    sequence = int(record["SequenceNumber"])
                    if not tracker.try_claim(sequence):
                        return  # the runner checkpointed: the residual starts at this record
                    read += 1
                    item = parse_json_update(record["Data"], source, 0)
                    if isinstance(item, ProfileUpdate):
                        self._read.inc()
                        yield TimestampedValue(item, item.timestamp_ms / 1000.0)
                    else:
                        self._dead.inc()
                        yield beam.pvalue.TaggedOutput(DEAD_LETTER, item._replace(position=f"sequence {sequence}"))
                behind_ms = page.get("MillisBehindLatest", 0)
                _advance(watermark, Timestamp.of((now_ms() - behind_ms) / 1000.0))
                iterator = page.get("NextShardIterator")
                if iterator is None:  # a closed (resharded) shard, read to its end
                    tracker.try_claim(SEQUENCE_END - 1)
                    return
                if behind_ms == 0:
                    break
        except Exception as e:
            if not _is_transient(e):
                raise
            self._retries.inc()
            behind_ms = 0
        idle = 0 if read else self._idle.get(shard_id, 0) + 1
        self._idle[shard_id] = idle
        if self._max_idle_polls is not None and idle >= self._max_idle_polls:
            tracker.try_claim(SEQUENCE_END - 1)  # bounded for tests and demos: the shard is done
            return
        tracker.defer_remainder(Duration(seconds=0 if behind_ms else self._poll_interval_s))


def _advance(estimator, watermark: Timestamp) -> None:
    current = estimator.current_watermark()
    if current is None or watermark > current:
        estimator.set_watermark(watermark)


class ReadKinesisUpdates(beam.PTransform):
    """``kinesis:STREAM``: JSON updates (one per record) from every shard of an input stream,
    unbounded, as tagged outputs ``updates`` and ``dead_letter`` (position ``sequence N``).

    Shards are listed (ListShards) when the pipeline is built: shards created by a later
    resharding are read after a restart. ``max_idle_polls`` ends a shard after that many empty
    polls in a row (tests, demos)."""

    def __init__(self, stream: str, region: str, endpoint_url=None, credentials=None,
                 poll_interval_s: float = 1.0, max_idle_polls=None):
        super().__init__()
        self._stream, self._region, self._endpoint_url, self._credentials = stream, region, endpoint_url, credentials
        self._poll_interval_s, self._max_idle_polls = poll_interval_s, max_idle_polls

    def _shards(self):
        client = _kinesis_client(self._stream, self._region, self._endpoint_url, self._credentials)
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


# ------------------------------------------------------------------ watch:DIR (unbounded)

class _ListLandedFiles(PollFn):
    """One poll of a directory for ``Watch``: the update files in it (``is_update_file``: hidden
    and ``*.tmp`` files are still being written). Polls are at least ``interval_s`` apart even on a runner that
    resumes a deferred poll at once (the local ones)."""

    def __init__(self, interval_s: float):
        self._interval_s = interval_s
        self._last = 0.0

    def __call__(self, directory: str) -> PollResult:
        wait = self._last + self._interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last = time.monotonic()
        now = Timestamp.now()
        matched = FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list
        names = sorted(m.path for m in matched if is_update_file(m.path))
        return PollResult.incomplete(names, timestamp=now).with_watermark(now)

    def default_output_coder(self):
        from apache_beam.coders import StrUtf8Coder
        return StrUtf8Coder()


def _in_progress(name: str) -> bool:
    return name.startswith(".") or name.endswith(".tmp")


class WatchProfileUpdates(beam.PTransform):
    """``watch:DIR``: files landing in DIR (any Beam filesystem) are read as they arrive, as
    tagged outputs ``updates`` and ``dead_letter``.

    Built on Beam's ``Watch``: DIR is listed every ``interval_s`` seconds and each path is read
    once; the set of paths seen is the checkpointed restriction, so a restart does not read a
    file again (that set grows with the number of files: move read files away in a long run).
    Writers should write under a hidden or ``*.tmp`` name and rename. ``stop_after_s`` ends the
    watch (tests, demos)."""

    def __init__(self, directory: str, interval_s: float = 5.0, stop_after_s: Optional[float] = None):
        super().__init__()
        self._directory, self._interval_s, self._stop_after_s = directory, interval_s, stop_after_s

    def expand(self, pbegin):
        termination = never() if self._stop_after_s is None else after_total_of(self._stop_after_s)
        return (pbegin
                | "Directory" >> beam.Create([self._directory])
                | "Poll" >> Watch(_ListLandedFiles(self._interval_s), poll_interval=self._interval_s,
                                  termination=termination)
                | "Paths" >> beam.Values()
                | "Parse" >> beam.ParDo(_ReadUpdatesFileFn()).with_outputs(DEAD_LETTER, main=UPDATES))
