"""``KinesisWrite``: a reusable Beam sink for Amazon Kinesis Data Streams on boto3 (SPEC 7).

What it does that the usual sinks (Beam's Java KinesisIO, Flink's KinesisStreamsSink, the KPL)
don't all do:
- needs only ``kinesis:ListStreams`` and ``PutRecords``: nothing else is ever called, so the
  seeds' three-action IAM policy suffices; ``check_stream`` finds a missing stream, permission
  or bad credentials before any data moves (the pipelines call it before they build the job,
  the DoFn again in ``setup``);
- batches by the real service limits: 500 records and 5 MiB per request *counting partition
  keys*, 1 MiB per record counting its key; an oversize record is dead-lettered as
  ``RecordTooLarge``, never sent;
- retries only what may succeed later: per-record ``ProvisionedThroughputExceededException``
  and ``InternalFailure``, throttled and 5xx requests and connection errors, with exponential
  backoff and full jitter, at most ``retry.max_retries`` times (2: three sends). Configuration
  errors (ResourceNotFound, AccessDenied, InvalidArgument, KMS, bad credentials) are not
  retried: their records go to the dead letter with an ALERT, and the job goes on;
- keeps per-partition-key order, retries included: requests go out one at a time, each carries
  at most one record of a key, and a key's next record is only picked once the previous one is
  acknowledged or dead-lettered (PutRecords itself does not order the records of one request
  when some of them fail). The price: one record of a key per round trip;
- adapts: the records-per-request limit halves when the stream throttles and grows back by 50
  per accepted request (AIMD), and throttled retries wait the jittered backoff;
- bounded memory: a flush is forced past ``max_buffered_records`` / ``max_buffered_bytes``, at
  bundle end, and in streaming once the oldest buffered record is ``max_delay_ms`` old. The age
  is checked on each element, not by a processing-time timer: a timer needs keyed state, which
  costs far more per element than the check (SPEC 9); an idle stream's buffer goes out at the
  end of its bundle, and runners end streaming bundles within about a second;
- cheap: the request body is built directly (base64 and JSON by hand) and signed by the
  client's own SigV4 signer, then sent over the client's connection pool (its timeouts,
  proxies and TLS settings); botocore's model-driven serializer and parser cost ~25 µs per
  record, this costs a few.

Output: the records that were not delivered, as ``FailedRecord`` (also in the dead letter), so
a pipeline can count or route them; delivered records produce nothing.

Metrics (namespace ``KinesisWrite``): records_sent, records_retried, records_dead_lettered,
requests, bytes_sent, throttled, and the distribution export_latency_ms (the record's
``event_time_ms`` to its acknowledgement).
"""
from __future__ import annotations

import base64
from binascii import b2a_base64
import collections
import json
import logging
import math
import random
import re
import time
from json.encoder import encode_basestring_ascii
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.alerts import raise_alert
from transforms.config import AlertSettings, Destination, RetrySettings
from transforms.dead_letter import BundleFileWriter
from transforms.errors import UserError
from transforms.model import ExportRecordBatch
from transforms.timeutil import format_iso_ms, now_ms

LOG = logging.getLogger(__name__)

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MIN_RECORDS_PER_REQUEST = 10
RECORDS_PER_REQUEST_STEP = 50

RETRYABLE_RECORD_ERRORS = frozenset({"ProvisionedThroughputExceededException", "InternalFailure"})
# Request-level pushback. KMSThrottlingException is throttling, not a KMS configuration error.
THROTTLING_ERRORS = frozenset({"ProvisionedThroughputExceededException", "LimitExceededException",
                               "ThrottlingException", "Throttling", "RequestLimitExceeded",
                               "SlowDown", "TooManyRequestsException", "KMSThrottlingException"})
CREDENTIAL_ERRORS = frozenset({"UnrecognizedClientException", "InvalidSignatureException",
                               "InvalidClientTokenId", "ExpiredTokenException", "IncompleteSignature",
                               "SignatureDoesNotMatch", "MissingAuthenticationToken"})
RECORD_TOO_LARGE = "RecordTooLarge"
_XML_ERROR = re.compile(r"<Code>([^<]+)</Code>\s*<Message>([^<]*)</Message>")
_FAILED_COUNT = re.compile(rb'"FailedRecordCount"\s*:\s*(\d+)')


class KinesisSetupError(UserError):
    """The stream cannot be written: missing, no permission, bad credentials or endpoint."""


class FailedRecord(NamedTuple):
    """A record the sink could not deliver (it is in the dead letter too). Attempt times are
    epoch ms; a record never sent (``RecordTooLarge``) has 0 attempts and no times."""
    partition_key: str
    data: bytes
    error_code: str
    error_message: str
    attempts: int
    first_attempt_ms: Optional[int] = None
    last_attempt_ms: Optional[int] = None


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
                    read_timeout=30, max_pool_connections=4, tcp_keepalive=True)
    return boto3.session.Session().client("kinesis", region_name=destination.region,
                                          endpoint_url=destination.endpoint_url, config=config, **kwargs)


def _split_error(code: str, message: str) -> Tuple[str, str]:
    """``com.amazon...#Code`` -> ``Code``; an XML error body (IAM gateways) -> its code and message."""
    xml = _XML_ERROR.search(message or "")
    if xml:
        return xml.group(1), xml.group(2)
    return code.rsplit("#", 1)[-1].split(":", 1)[0], message


def check_stream(destination: Destination, client=None) -> None:
    """Before any data moves: ListStreams (paginated) finds the stream, then an empty
    PutRecords (no record in it) shows whether kinesis:PutRecords is allowed.

    Raises ``KinesisSetupError`` with one line naming the problem. AWS may answer the empty
    request with a validation error instead of a permission error; then nothing is learnt, and a
    missing permission shows on the first real request (records dead-lettered, with an ALERT)."""
    from botocore.exceptions import BotoCoreError, ClientError
    where = f"stream {destination.stream!r} in {destination.region}"
    try:
        client = client or make_client(destination)
        if not _stream_listed(client, destination.stream):
            raise KinesisSetupError(f"{where} does not exist (or is not visible to these credentials)")
        status, body = PutRecordsRequest(client, destination.stream)(())
    except ClientError as e:
        err = e.response.get("Error", {})
        code, message = _split_error(err.get("Code") or "ClientError", err.get("Message") or str(e))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise KinesisSetupError(_setup_problem(where, "ListStreams", code, message, status)) from None
    except (BotoCoreError, ValueError) as e:  # no credentials, bad region name, endpoint unreachable
        raise KinesisSetupError(f"{where}: {e}") from None
    if status != 200:
        code, message = _response_error(status, body)
        if status == 403 or code in CREDENTIAL_ERRORS or code.startswith(("AccessDenied", "KMS", "ResourceNotFound")):
            raise KinesisSetupError(_setup_problem(where, "PutRecords", code, message, status))


def _stream_listed(client, stream: str) -> bool:
    names: List[str] = []
    kwargs: Dict[str, str] = {}
    while True:
        page = client.list_streams(**kwargs)
        names.extend(page.get("StreamNames", ()))
        if stream in names or not page.get("HasMoreStreams") or not names:
            return stream in names
        kwargs = ({"NextToken": page["NextToken"]} if page.get("NextToken")
                  else {"ExclusiveStartStreamName": names[-1]})


def _setup_problem(where: str, action: str, code: str, message: str, status: Optional[int]) -> str:
    if code in CREDENTIAL_ERRORS:
        return f"{where}: credentials rejected ({code})"
    if code.startswith("AccessDenied") or status == 403:
        return f"{where}: permission kinesis:{action} is missing ({code})"
    if code.startswith("ResourceNotFound"):
        return f"{where} does not exist ({code})"
    return f"{where}: {action} failed: {code}: {message}"


class PutRecordsRequest:
    """One PutRecords call: a body built by hand, signed by the botocore client's own SigV4
    signer (credential refresh included) and sent through its connection pool.

    Returns (HTTP status, body); connection failures raise botocore's ``BotoCoreError``s."""

    _HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Kinesis_20131202.PutRecords"}

    def __init__(self, client, stream: str):
        self._client = client  # the signer only holds its event hooks weakly
        self._signer = client._request_signer
        self._http = client._endpoint.http_session
        self._url = client.meta.endpoint_url.rstrip("/") + "/"
        self._head = b'{"StreamName":%s,"Records":[' % encode_basestring_ascii(stream).encode()

    def __call__(self, records: Sequence[Tuple]) -> Tuple[int, bytes]:
        from botocore.awsrequest import AWSRequest
        body = b"".join((self._head, b",".join([b'{"Data":"%s","PartitionKey":%s}' % (
            b2a_base64(r[1], newline=False), encode_basestring_ascii(r[0]).encode()) for r in records]), b"]}"))
        request = AWSRequest(method="POST", url=self._url, data=body, headers=dict(self._HEADERS))
        self._signer.sign("PutRecords", request)
        response = self._http.send(request.prepare())
        return response.status_code, response.content


def _response_error(status: int, body: bytes) -> Tuple[str, str]:
    """The (code, message) of a non-200 answer: JSON ``__type``, an XML body, or the status."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
        code, message = doc.get("__type") or f"HTTP{status}", doc.get("message") or doc.get("Message") or ""
    except (ValueError, AttributeError):
        code, message = f"HTTP{status}", text[:500]
    return _split_error(code, message)


def dead_letter_line(failed: FailedRecord, stream: str) -> bytes:
    """One JSON line. ``data`` is the JSON object when re-serializing it gives back the exact
    bytes (so a replay sends what was produced), else base64 with ``dataEncoding``."""
    doc = {"partitionKey": failed.partition_key, "data": None, "errorCode": failed.error_code,
           "errorMessage": failed.error_message, "attempts": failed.attempts,
           "firstAttemptTime": format_iso_ms(failed.first_attempt_ms) if failed.first_attempt_ms else None,
           "lastAttemptTime": format_iso_ms(failed.last_attempt_ms) if failed.last_attempt_ms else None,
           "stream": stream}
    try:
        data = json.loads(failed.data)
        exact = encode_data(data) == failed.data
    except (ValueError, UnicodeDecodeError):
        exact = False
    if exact:
        doc["data"] = data
    else:
        doc["data"], doc["dataEncoding"] = base64.b64encode(failed.data).decode("ascii"), "base64"
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def encode_data(data) -> bytes:
    """Compact UTF-8 JSON, as export records are written (SPEC 6)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def record_too_large(key: str, data: bytes) -> FailedRecord:
    return FailedRecord(key, data, RECORD_TOO_LARGE, f"record is {record_size(key, data)} bytes with its "
                        f"partition key; the limit is {MAX_RECORD_BYTES}", 0)


def record_size(key: str, data: bytes) -> int:
    """What the service counts against its limits: the UTF-8 key plus the data."""
    return (len(key) if key.isascii() else len(key.encode("utf-8"))) + len(data)


class SendReport:
    """What one flush did, for metrics and alerts. ``rejected``: how many of ``dead`` the stream
    refused for good (configuration errors), as opposed to retries running out."""
    __slots__ = ("sent", "retried", "requests", "bytes", "throttled", "rejected", "latencies", "dead")

    def __init__(self):
        self.sent = self.retried = self.requests = self.bytes = self.throttled = self.rejected = 0
        self.latencies: List[int] = []
        self.dead: List[FailedRecord] = []


class RecordSender:
    """Batching, ordering, retries and adaptive rate over one Kinesis client; no Beam here,
    so the replay command and the tests use exactly what the sink uses.

    A buffered record is a plain tuple ``(key, data, event_time_ms, size)``: tuples of atomic
    values leave the garbage collector's watch, objects don't, and with thousands buffered the
    collector alone cost ~2 µs per record. Attempts and attempt times are kept aside, in
    ``_tries``, only for records sent before (``id`` -> [attempts, first ms, last ms])."""

    def __init__(self, client, stream: str, retry: RetrySettings = RetrySettings(),
                 sleep: Callable[[float], None] = time.sleep, rand: Callable[[], float] = random.random):
        self.put_records = PutRecordsRequest(client, stream)
        self.retry, self.sleep, self.rand = retry, sleep, rand
        self.batch_limit = MAX_RECORDS_PER_REQUEST
        self.pending: Deque[Tuple[str, bytes, Optional[int], int]] = collections.deque()
        self.pending_bytes = 0
        self._tries: Dict[int, list] = {}

    def add(self, key: str, data: bytes, event_time_ms: Optional[int] = None) -> Optional[FailedRecord]:
        """Buffer a record; an oversize one is returned (never sent) for the dead letter."""
        size = record_size(key, data)
        if size > MAX_RECORD_BYTES:
            return record_too_large(key, data)
        self.pending.append((key, data, event_time_ms, size))
        self.pending_bytes += size
        return None

    def flush(self) -> SendReport:
        """Send everything buffered, one request at a time; each record ends delivered or
        dead-lettered."""
        report = SendReport()
        while self.pending:
            batch, prefix = self._next_request()
            retry_again, throttled = self._send(batch, report)
            if prefix and not retry_again:  # the usual case: the oldest records all went out
                for _ in batch:
                    self.pending.popleft()
            else:
                finished = {id(r) for r in batch} - {id(r) for r in retry_again}
                self.pending = collections.deque(r for r in self.pending if id(r) not in finished)
            if throttled:
                report.throttled += 1
                self.batch_limit = max(MIN_RECORDS_PER_REQUEST, self.batch_limit // 2)
            elif not retry_again:
                self.batch_limit = min(MAX_RECORDS_PER_REQUEST, self.batch_limit + RECORDS_PER_REQUEST_STEP)
            if retry_again:
                self._backoff(max(self._tries[id(r)][0] for r in retry_again))
        self.pending_bytes = 0
        return report

    def _next_request(self) -> Tuple[List[Tuple], bool]:
        """The oldest records, at most one per partition key, within the request limits; and
        whether they are the first ones of the buffer (no record of a repeated key skipped)."""
        batch, keys, size, limit, prefix = [], set(), 0, self.batch_limit, True
        for record in self.pending:
            if record[0] in keys:
                prefix = False
                continue
            if len(batch) >= limit or size + record[3] > MAX_REQUEST_BYTES:
                break
            batch.append(record)
            keys.add(record[0])
            size += record[3]
        return batch, prefix

    def _backoff(self, attempt: int) -> None:
        cap = min(self.retry.max_delay_ms, self.retry.base_delay_ms * (2 ** max(attempt - 1, 0)))
        self.sleep(self.rand() * cap / 1000.0)  # full jitter

    def _send(self, batch: List[Tuple], report: SendReport) -> Tuple[List[Tuple], bool]:
        """One request; returns the records to send again and whether the stream throttled."""
        from botocore.exceptions import BotoCoreError
        start = now_ms()
        tries = self._tries
        if tries:
            for r in batch:
                t = tries.get(id(r))
                if t is not None:
                    t[0] += 1
                    t[2] = start
        self._start = start
        report.requests += 1
        try:
            status, body = self.put_records(batch)
        except (BotoCoreError, OSError) as e:  # connection refused/reset, timeouts
            return self._retry_or_dead(batch, type(e).__name__, str(e), report), False
        if status != 200:
            code, message = _response_error(status, body)
            if code in THROTTLING_ERRORS or status >= 500:
                return self._retry_or_dead(batch, code, message, report), code in THROTTLING_ERRORS
            self._dead(batch, code, message, report, rejected=True)
            return [], False
        acked = now_ms()
        failed = _FAILED_COUNT.search(body)
        if failed and failed.group(1) == b"0":  # the usual answer: no need to parse it
            self._delivered(batch, acked, report)
            return [], False
        results = json.loads(body).get("Records") or []
        missing = {"ErrorCode": "InternalFailure", "ErrorMessage": "no result for this record"}
        retry_again, throttled = [], False
        for i, record in enumerate(batch):
            result = results[i] if i < len(results) else missing
            code = result.get("ErrorCode")
            throttled |= code == "ProvisionedThroughputExceededException"
            if not code:
                self._delivered([record], acked, report)
            elif code in RETRYABLE_RECORD_ERRORS:
                retry_again += self._retry_or_dead([record], code, result.get("ErrorMessage") or "", report)
            else:
                self._dead([record], code, result.get("ErrorMessage") or "", report, rejected=True)
        return retry_again, throttled

    def _delivered(self, records, acked: int, report: SendReport) -> None:
        report.sent += len(records)
        report.bytes += sum(r[3] for r in records)
        report.latencies.extend(acked - r[2] for r in records if r[2] is not None)
        if self._tries:
            for r in records:
                self._tries.pop(id(r), None)

    def _retry_or_dead(self, records, code: str, message: str, report: SendReport) -> List[Tuple]:
        again, spent = [], []
        for r in records:
            t = self._tries.setdefault(id(r), [1, self._start, self._start])
            (again if t[0] <= self.retry.max_retries else spent).append(r)
        report.retried += len(again)
        self._dead(spent, code, message, report)
        return again

    def _dead(self, records, code: str, message: str, report: SendReport, rejected: bool = False) -> None:
        for r in records:
            attempts, first, last = self._tries.pop(id(r), None) or (1, self._start, self._start)
            report.dead.append(FailedRecord(r[0], r[1], code, message, attempts, first, last))
        if rejected:
            report.rejected += len(records)


class LatencyWindow:
    """Is the export-latency p95 of the last minute over a limit? (SPEC 7)

    Constant memory at any rate: one slot per second with the count, the count over the limit,
    and up to ``keep`` of the over-limit values. p95 > limit exactly when more than 5 % of the
    values are over it; the p95 itself is read from the kept over-limit values (exact unless a
    second had more than ``keep`` of them)."""

    def __init__(self, limit_ms: float, span_s: int = 60, keep: int = 200):
        self.limit_ms, self.span_s, self.keep = limit_ms, span_s, keep
        self.slots: Deque[list] = collections.deque()  # [second, count, over, [over values]]

    def add(self, at_ms: int, latencies: Sequence[int]) -> None:
        second = at_ms // 1000
        if not self.slots or self.slots[-1][0] != second:
            self.slots.append([second, 0, 0, []])
        while self.slots[0][0] <= second - self.span_s:
            self.slots.popleft()
        slot = self.slots[-1]
        over = [v for v in latencies if v > self.limit_ms]
        slot[1] += len(latencies)
        slot[2] += len(over)
        slot[3].extend(over[:self.keep - len(slot[3])])

    def p95_over_limit(self) -> Optional[float]:
        """The p95 (ms) when it is over the limit, else None."""
        count = sum(s[1] for s in self.slots)
        over = sum(s[2] for s in self.slots)
        rank_from_top = count - math.ceil(0.95 * count)  # values above the nearest-rank p95
        if not count or over <= rank_from_top:
            return None
        kept = sorted((v for s in self.slots for v in s[3]), reverse=True)
        return kept[min(len(kept) - 1, rank_from_top * len(kept) // over)]


class _KinesisWriteFn(beam.DoFn):
    def __init__(self, destination: Destination, alerts: Optional[AlertSettings], client_factory,
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
        self._window = LatencyWindow(self._alerts.latency_p95_seconds * 1000) if self._alerts else None
        self._last_latency_alert = -60_000
        self._dead_dir = FileSystems.join(self._destination.dead_letter, "records")

    def start_bundle(self):
        self._oldest_ms = None
        self._unalerted: collections.Counter = collections.Counter()  # error code -> records
        self._unalerted_rejected = 0
        self._dead_writer = BundleFileWriter(self._dead_dir, "records")

    def process(self, element):
        if isinstance(element, ExportRecordBatch):   # a backfill batch: its records one by one
            for record in element.records():
                yield from self.process(record)
            return
        event_time_ms = element[2] if len(element) > 2 else None
        oversize = self._sender.add(element[0], element[1], event_time_ms)
        if oversize is not None:
            yield from self._dead_letter([oversize], rejected=0)
        now = now_ms()
        if self._oldest_ms is None:
            self._oldest_ms = now
        sender = self._sender
        if (len(sender.pending) >= self._max_records or sender.pending_bytes >= self._max_bytes
                or now - self._oldest_ms >= self._max_delay_ms):
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()
        self._dead_writer.close()

    def _flush(self):
        self._oldest_ms = None
        if self._sender.pending:
            report = self._sender.flush()
            m = self._m
            m["records_sent"].inc(report.sent)
            m["records_retried"].inc(report.retried)
            m["requests"].inc(report.requests)
            m["bytes_sent"].inc(report.bytes)
            m["throttled"].inc(report.throttled)
            update = self._latency.update
            for latency in report.latencies:
                update(latency)
            if report.latencies and self._window is not None:
                self._check_latency(now_ms(), report.latencies)
            yield from self._dead_letter(report.dead, report.rejected)
        if self._unalerted:
            self._alert_dead_letters()

    def _dead_letter(self, dead: List[FailedRecord], rejected: int):
        """Each record to the dead-letter file (at once: nothing held in memory) and to the
        output; the alert waits for the flush, so there is one per flush, with counts."""
        stream = self._destination.stream
        for failed in dead:
            self._dead_writer.write(dead_letter_line(failed, stream))
            yield GlobalWindows.windowed_value(failed)
        self._m["records_dead_lettered"].inc(len(dead))
        self._unalerted.update(failed.error_code for failed in dead)
        self._unalerted_rejected += rejected

    def _alert_dead_letters(self) -> None:
        codes, stream = self._unalerted, self._destination.stream
        count = sum(codes.values())
        raise_alert(self._destination.dead_letter,
                    "stream_rejected_configuration" if self._unalerted_rejected else "records_dead_lettered",
                    f"{count} record(s) to stream {stream!r} dead-lettered under {self._dead_dir} "
                    f"({', '.join(f'{c}: {n}' for c, n in codes.items())})",
                    stream=stream, count=count, codes=dict(codes))
        self._unalerted, self._unalerted_rejected = collections.Counter(), 0

    def _check_latency(self, at_ms: int, latencies: Sequence[int]) -> None:
        self._window.add(at_ms, latencies)
        if at_ms - self._last_latency_alert < 60_000:
            return
        p95 = self._window.p95_over_limit()
        if p95 is not None:
            self._last_latency_alert = at_ms
            raise_alert(self._destination.dead_letter, "export_latency",
                        f"export latency p95 over the last minute is {p95 / 1000:.1f} s "
                        f"(limit {self._alerts.latency_p95_seconds:g} s)", p95_ms=p95)


class KinesisWrite(beam.PTransform):
    """Writes ``ExportRecord`` (or ``(partition_key, data[, event_time_ms])``) elements to the
    destination's stream; returns the undelivered ones as ``FailedRecord`` (global window).

    ``client_factory(destination)`` returns the botocore Kinesis client to use (tests, custom
    sessions); ``alerts=None`` turns the latency alert off (replays of historic updates)."""

    def __init__(self, destination: Destination, client_factory=None,
                 alerts: Optional[AlertSettings] = AlertSettings(), max_delay_ms: int = 200,
                 max_buffered_records: int = 5000, max_buffered_bytes: int = 16 * 1024 * 1024):
        super().__init__()
        self._fn = _KinesisWriteFn(destination, alerts, client_factory, max_delay_ms,
                                   max_buffered_records, max_buffered_bytes)

    def expand(self, records):
        return records | "PutRecords" >> beam.ParDo(self._fn)
