"""``KinesisWrite``: a reusable Beam sink for Amazon Kinesis Data Streams on boto3 (SPEC 7).

What it does that the usual sinks don't:
- needs only ``kinesis:ListStreams`` (the start-up check), ``PutRecords`` (and ``PutRecord``
  in IAM policies): nothing else is ever called;
- batches by the real service limits: 500 records and 5 MiB per request *counting partition
  keys*, 1 MiB per record counting its key; an oversize record is dead-lettered as
  ``RecordTooLarge``, never sent;
- retries only what may succeed later: per-record ``ProvisionedThroughputExceededException``
  and ``InternalFailure``, throttled and 5xx requests and connection errors, with exponential
  backoff and full jitter, at most ``retry.max_retries`` times (2: three sends). Configuration
  errors (ResourceNotFound, AccessDenied, InvalidArgument, KMS, bad credentials) are not
  retried: their records go to the dead letter with an ALERT, and the job goes on;
- keeps per-partition-key order, retries included: a request carries at most one record of a
  key, and a key's next record is only sent once the previous one is acknowledged or
  dead-lettered (PutRecords itself does not order records whose neighbours fail);
- adapts: the records-per-request limit halves when the stream throttles and grows back
  while requests succeed (AIMD);
- bounded memory: a flush is forced past ``max_buffered_records`` / ``max_buffered_bytes``,
  at bundle end, and in streaming once the oldest buffered record is ``max_delay_ms`` old
  (checked per element: no timer, hence no keyed-state cost);
- dead letter: one JSON line per undelivered record under ``<dead_letter>/records/``.

Metrics (namespace ``KinesisWrite``): records_sent, records_retried, records_dead_lettered,
requests, bytes_sent, throttled, and the distribution export_latency_ms (the record's
``event_time_ms`` to its acknowledgement).
"""
from __future__ import annotations

import base64
import collections
import json
import logging
import random
import re
import time
from typing import Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.alerts import raise_alert
from transforms.config import AlertSettings, Destination, RetrySettings
from transforms.dead_letter import BundleFileWriter
from transforms.errors import UserError
from transforms.timeutil import format_iso_ms, now_ms

LOG = logging.getLogger(__name__)

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MIN_RECORDS_PER_REQUEST = 10

RETRYABLE_RECORD_ERRORS = frozenset({"ProvisionedThroughputExceededException", "InternalFailure"})
THROTTLING_ERRORS = frozenset({"ProvisionedThroughputExceededException", "LimitExceededException",
                               "ThrottlingException", "Throttling", "RequestLimitExceeded",
                               "SlowDown", "TooManyRequestsException"})
RECORD_TOO_LARGE = "RecordTooLarge"
_XML_ERROR = re.compile(r"<Code>([^<]+)</Code>\s*<Message>([^<]*)</Message>")


class KinesisSetupError(UserError):
    """The stream cannot be written: missing, no permission, bad credentials or endpoint."""


def make_client(destination: Destination):
    """A boto3 Kinesis client whose own retries are off: the retry policy is ours."""
    import boto3
    from botocore.config import Config
    kwargs = {}
    if destination.credentials is not None:
        c = destination.credentials
        kwargs = dict(aws_access_key_id=c.access_key_id.reveal(),
                      aws_secret_access_key=c.secret_access_key.reveal(),
                      aws_session_token=c.session_token.reveal() if c.session_token else None)
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                    read_timeout=30, max_pool_connections=4, tcp_keepalive=True,
                    parameter_validation=False)  # we build every request: validating 500 records costs ~18 µs each
    return boto3.session.Session().client("kinesis", region_name=destination.region,
                                          endpoint_url=destination.endpoint_url, config=config, **kwargs)


def _error_code(error: Exception) -> Tuple[str, str, Optional[int]]:
    """(code, message, HTTP status) of a botocore/connection error."""
    from botocore.exceptions import ClientError
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code, message = err.get("Code") or "ClientError", err.get("Message") or str(error)
        xml = _XML_ERROR.search(message)
        if xml:  # an XML error body (IAM gateways) in a JSON-protocol response
            code, message = xml.group(1), xml.group(2)
        return code, message, status
    return type(error).__name__, str(error), None


def check_stream(destination: Destination, client=None) -> None:
    """ListStreams (only) to check the stream exists and the credentials reach it.

    Raises ``KinesisSetupError`` with one line naming the problem."""
    from botocore.exceptions import BotoCoreError, ClientError
    client = client or make_client(destination)
    where = f"stream {destination.stream!r} in {destination.region}"
    names: List[str] = []
    kwargs: Dict[str, str] = {}
    try:
        while True:
            page = client.list_streams(**kwargs)
            names.extend(page.get("StreamNames", ()))
            if destination.stream in names or not page.get("HasMoreStreams"):
                break
            kwargs = {"ExclusiveStartStreamName": names[-1]}
    except ClientError as e:
        code, message, status = _error_code(e)
        if "AccessDenied" in code or status == 403:
            raise KinesisSetupError(f"{where}: permission kinesis:ListStreams is missing ({code})") from None
        if code in ("UnrecognizedClientException", "InvalidSignatureException", "InvalidClientTokenId",
                    "ExpiredTokenException", "IncompleteSignature"):
            raise KinesisSetupError(f"{where}: credentials rejected ({code})") from None
        raise KinesisSetupError(f"{where}: ListStreams failed: {code}: {message}") from None
    except BotoCoreError as e:
        raise KinesisSetupError(f"{where}: {e}") from None
    if destination.stream not in names:
        raise KinesisSetupError(f"{where} does not exist (or is not visible to these credentials)")


class PendingRecord:
    __slots__ = ("key", "data", "event_time_ms", "size", "attempts", "first_ms", "last_ms")

    def __init__(self, key: str, data: bytes, event_time_ms: Optional[int]):
        self.key, self.data, self.event_time_ms = key, data, event_time_ms
        self.size = len(key.encode("utf-8")) + len(data)
        self.attempts = 0
        self.first_ms = self.last_ms = None


def dead_letter_line(record: PendingRecord, code: str, message: str, stream: str) -> bytes:
    try:
        data, encoding = json.loads(record.data), None
    except (ValueError, UnicodeDecodeError):
        data, encoding = base64.b64encode(record.data).decode("ascii"), "base64"
    doc = {"partitionKey": record.key, "data": data, "errorCode": code, "errorMessage": message,
           "attempts": record.attempts,
           "firstAttemptTime": format_iso_ms(record.first_ms) if record.first_ms else None,
           "lastAttemptTime": format_iso_ms(record.last_ms) if record.last_ms else None,
           "stream": stream}
    if encoding:
        doc["dataEncoding"] = encoding
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


class SendReport:
    """What one flush did, for metrics and alerts."""
    __slots__ = ("sent", "retried", "requests", "bytes", "throttled", "latencies", "dead")

    def __init__(self):
        self.sent = self.retried = self.requests = self.bytes = self.throttled = 0
        self.latencies: List[int] = []
        self.dead: List[Tuple[PendingRecord, str, str]] = []


class RecordSender:
    """Batching, ordering, retries and adaptive rate over one Kinesis client; no Beam here,
    so the replay command and the tests use exactly what the sink uses."""

    def __init__(self, client, stream: str, retry: RetrySettings = RetrySettings(),
                 sleep: Callable[[float], None] = time.sleep, rand: Callable[[], float] = random.random):
        self.client, self.stream, self.retry = client, stream, retry
        self.sleep, self.rand = sleep, rand
        self.batch_limit = MAX_RECORDS_PER_REQUEST
        self.pending: Deque[PendingRecord] = collections.deque()
        self.pending_bytes = 0

    def add(self, key: str, data: bytes, event_time_ms: Optional[int] = None) -> Optional[PendingRecord]:
        """Buffer a record; an oversize one is returned (never sent) for the dead letter."""
        record = PendingRecord(key, data, event_time_ms)
        if record.size > MAX_RECORD_BYTES:
            return record
        self.pending.append(record)
        self.pending_bytes += record.size
        return None

    def _next_request(self) -> List[PendingRecord]:
        """The oldest records, at most one per partition key, within the request limits."""
        batch, keys, size = [], set(), 0
        for record in self.pending:
            if record.key in keys:
                continue
            if len(batch) >= self.batch_limit or size + record.size > MAX_REQUEST_BYTES:
                break
            batch.append(record)
            keys.add(record.key)
            size += record.size
        return batch

    def _backoff(self, attempt: int) -> None:
        cap = min(self.retry.max_delay_ms, self.retry.base_delay_ms * (2 ** max(attempt - 1, 0)))
        self.sleep(self.rand() * cap / 1000.0)  # full jitter

    def _remove(self, done: Iterable[PendingRecord]) -> None:
        done = set(map(id, done))
        kept = collections.deque(r for r in self.pending if id(r) not in done)
        self.pending_bytes = sum(r.size for r in kept)
        self.pending = kept

    def flush(self) -> SendReport:
        """Send everything buffered; each record ends delivered or dead-lettered."""
        report = SendReport()
        while self.pending:
            batch = self._next_request()
            finished, retry_again, throttled = self._send(batch, report)
            self._remove(finished)
            if throttled:
                report.throttled += 1
                self.batch_limit = max(MIN_RECORDS_PER_REQUEST, self.batch_limit // 2)
            elif not retry_again:
                self.batch_limit = min(MAX_RECORDS_PER_REQUEST, self.batch_limit + 50)
            if retry_again:
                self._backoff(max(r.attempts for r in retry_again))
        return report

    def _send(self, batch: List[PendingRecord], report: SendReport):
        from botocore.exceptions import BotoCoreError, ClientError
        start = now_ms()
        for r in batch:
            r.attempts += 1
            r.first_ms = r.first_ms or start
            r.last_ms = start
        report.requests += 1
        try:
            response = self.client.put_records(
                StreamName=self.stream, Records=[{"Data": r.data, "PartitionKey": r.key} for r in batch])
        except (ClientError, BotoCoreError, ConnectionError, OSError) as e:
            code, message, status = _error_code(e)
            retryable = (code in THROTTLING_ERRORS or status is None and not isinstance(e, ClientError)
                         or (status or 0) >= 500)
            if not retryable:
                report.dead.extend((r, code, message) for r in batch)
                return batch, [], False
            finished = self._retry_or_dead(batch, code, message, report)
            return finished, [r for r in batch if r not in finished], code in THROTTLING_ERRORS
        acked = now_ms()
        finished, retry_again, throttled = [], [], False
        for record, result in zip(batch, response.get("Records", ())):
            code = result.get("ErrorCode")
            if not code:
                finished.append(record)
                report.sent += 1
                report.bytes += record.size
                if record.event_time_ms is not None:
                    report.latencies.append(acked - record.event_time_ms)
            elif code in RETRYABLE_RECORD_ERRORS:
                throttled |= code == "ProvisionedThroughputExceededException"
                if record.attempts > self.retry.max_retries:
                    finished.append(record)
                    report.dead.append((record, code, result.get("ErrorMessage", "")))
                else:
                    retry_again.append(record)
                    report.retried += 1
            else:
                finished.append(record)
                report.dead.append((record, code, result.get("ErrorMessage", "")))
        return finished, retry_again, throttled

    def _retry_or_dead(self, batch, code, message, report) -> List[PendingRecord]:
        finished = []
        for r in batch:
            if r.attempts > self.retry.max_retries:
                finished.append(r)
                report.dead.append((r, code, message))
            else:
                report.retried += 1
        return finished


class LatencyWindow:
    """Export latencies of the last minute, for the p95 alert (SPEC 7)."""

    def __init__(self, span_ms: int = 60_000):
        self.span_ms = span_ms
        self.samples: Deque[Tuple[int, int]] = collections.deque()

    def add(self, at_ms: int, latencies: Sequence[int]) -> None:
        self.samples.extend((at_ms, v) for v in latencies)
        while self.samples and self.samples[0][0] < at_ms - self.span_ms:
            self.samples.popleft()

    def p95(self) -> Optional[int]:
        if not self.samples:
            return None
        values = sorted(v for _, v in self.samples)
        return values[min(len(values) - 1, int(len(values) * 0.95))]


class _KinesisWriteFn(beam.DoFn):
    def __init__(self, destination: Destination, alerts: AlertSettings, client_factory,
                 max_delay_ms: int, max_buffered_records: int, max_buffered_bytes: int):
        self._destination = destination
        self._alerts = alerts
        self._client_factory = client_factory
        self._max_delay_ms = max_delay_ms
        self._max_records = max_buffered_records
        self._max_bytes = max_buffered_bytes
        ns = "KinesisWrite"
        self._m = {name: Metrics.counter(ns, name) for name in
                   ("records_sent", "records_retried", "records_dead_lettered", "requests", "bytes_sent", "throttled")}
        self._latency = Metrics.distribution(ns, "export_latency_ms")

    def setup(self):
        client = (self._client_factory or make_client)(self._destination)
        check_stream(self._destination, client)
        self._sender = RecordSender(client, self._destination.stream, self._destination.retry)
        self._window = LatencyWindow()
        self._last_latency_alert = 0
        self._dead_dir = FileSystems.join(self._destination.dead_letter, "records")

    def start_bundle(self):
        self._oldest_ms = None
        self._dead_writer = BundleFileWriter(self._dead_dir, "records")

    def process(self, element):
        key, data = element[0], element[1]
        event_time_ms = element[2] if len(element) > 2 else None
        oversize = self._sender.add(key, data, event_time_ms)
        if oversize is not None:
            self._dead_letter([(oversize, RECORD_TOO_LARGE,
                                f"record is {oversize.size} bytes with its partition key; the limit is {MAX_RECORD_BYTES}")])
        now = now_ms()
        if self._oldest_ms is None:
            self._oldest_ms = now
        sender = self._sender
        if (len(sender.pending) >= self._max_records or sender.pending_bytes >= self._max_bytes
                or now - self._oldest_ms >= self._max_delay_ms):
            self._flush()

    def finish_bundle(self):
        self._flush()
        self._dead_writer.close()

    def _flush(self):
        self._oldest_ms = None
        if not self._sender.pending:
            return
        report = self._sender.flush()
        m = self._m
        m["records_sent"].inc(report.sent)
        m["records_retried"].inc(report.retried)
        m["requests"].inc(report.requests)
        m["bytes_sent"].inc(report.bytes)
        m["throttled"].inc(report.throttled)
        for latency in report.latencies:
            self._latency.update(latency)
        if report.dead:
            self._dead_letter(report.dead)
        if report.latencies and self._alerts is not None:
            self._check_latency(now_ms(), report.latencies)

    def _dead_letter(self, dead):
        stream = self._destination.stream
        for record, code, message in dead:
            self._dead_writer.write(dead_letter_line(record, code, message, stream))
        self._m["records_dead_lettered"].inc(len(dead))
        codes = collections.Counter(code for _, code, _ in dead)
        config_error = any(c not in RETRYABLE_RECORD_ERRORS and c != RECORD_TOO_LARGE and c not in THROTTLING_ERRORS
                           for c in codes)
        raise_alert(self._destination.dead_letter, "stream_rejected_configuration" if config_error else "records_dead_lettered",
                    f"{len(dead)} record(s) to stream {stream!r} dead-lettered ({', '.join(f'{c}: {n}' for c, n in codes.items())})",
                    stream=stream, count=len(dead), codes=dict(codes))

    def _check_latency(self, at_ms: int, latencies: Sequence[int]) -> None:
        self._window.add(at_ms, latencies)
        p95 = self._window.p95()
        limit_ms = self._alerts.latency_p95_seconds * 1000
        if p95 is not None and p95 > limit_ms and at_ms - self._last_latency_alert >= 60_000:
            self._last_latency_alert = at_ms
            raise_alert(self._destination.dead_letter, "export_latency",
                        f"export latency p95 over the last minute is {p95 / 1000:.1f} s "
                        f"(limit {self._alerts.latency_p95_seconds:g} s)", p95_ms=p95)


class KinesisWrite(beam.PTransform):
    """Writes ``ExportRecord`` (or ``(partition_key, data[, event_time_ms])``) elements to the
    destination's stream. ``client_factory(destination)`` replaces boto3 in tests;
    ``alerts=None`` turns the latency alert off (replays of historic updates)."""

    def __init__(self, destination: Destination, alerts: Optional[AlertSettings] = AlertSettings(),
                 client_factory=None, max_delay_ms: int = 200, max_buffered_records: int = 5000,
                 max_buffered_bytes: int = 16 * 1024 * 1024):
        super().__init__()
        self._fn = _KinesisWriteFn(destination, alerts, client_factory, max_delay_ms,
                                   max_buffered_records, max_buffered_bytes)

    def expand(self, records):
        return records | "PutRecords" >> beam.ParDo(self._fn)
