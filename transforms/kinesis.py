"""``KinesisWrite``: a reusable Beam sink for Amazon Kinesis Data Streams on boto3 (docs/semantics.md#kinesis-sink).

What it does that the usual sinks (Beam's Java KinesisIO, Flink's KinesisStreamsSink, the KPL)
don't all do:
- needs only ``kinesis:ListStreams`` and ``PutRecords``: nothing else is ever called, so a
  three-action IAM policy (ListStreams, PutRecord, PutRecords) suffices. ``check_stream`` finds a
  missing stream, permission or bad credentials before any data moves. It runs once per job,
  where the pipeline is built (``KinesisWrite.expand``, or the command lines before they build
  it), never on workers: ListStreams allows 5 calls per second per account, and hundreds of
  workers starting at once would be throttled. What only a worker sees (credentials or a
  permission that work on the launcher but not there) dead-letters the records with one
  ``ALERT`` per bundle naming the problem, without a traceback;
- batches by the service limits: 500 records and 5 MiB per request *counting partition keys*.
  A record over ``destination.max_record_bytes`` (data plus key; default 1 MiB, up to 10 MiB for
  streams raised with ``UpdateMaxRecordSize``, and then 10 MiB per request) is dead-lettered as
  ``RecordTooLarge``, never sent;
- retries only what may succeed later: per-record ``ProvisionedThroughputExceededException``
  and ``InternalFailure``, throttled and 5xx requests and connection errors, with exponential
  backoff and full jitter, at most ``retry.max_retries`` times (2: three sends). Throttling is
  the exception: it is the stream's normal pushback, answered by sending less, so a throttled
  send neither counts against ``max_retries`` nor doubles the backoff; as the KPL's
  ``RecordTtl``, a record throttled for ``THROTTLED_RECORD_TTL_S`` (30 s) after its first send
  is dead-lettered (a slow start that overshoots used to dead-letter records). Configuration
  errors (ResourceNotFound, AccessDenied, InvalidArgument, KMS, bad or missing credentials) are
  not retried: their records go to the dead letter with an ALERT, and the job goes on;
- several requests in flight (``max_in_flight``, default 8), so one instance fills a stream of
  many shards although each request waits tens of milliseconds for AWS; per-partition-key order
  is kept, retries included: a key has at most one record in flight or waiting for a retry, and
  its next record is only released once that one is acknowledged or dead-lettered (PutRecords
  itself does not order the records of one request when some of them fail);
- adapts: requests are paced at a window of records per measured round trip, so a slow stream
  gets full requests further apart rather than small ones every round trip (a request's cost
  is mostly per request). From one full request the window doubles per round trip until the
  first throttling (TCP's slow start; the requests then in flight cut it by the largest share
  of them throttled). Then, once per round trip (replies to requests sent before the last cut
  don't cut again), a request refused whole halves it and records throttled in a request cut
  it by their share (as DCTCP; a request smaller than a full one or the window counts as that:
  a few retries all throttled at the end of a bundle are a small sample), at most to a quarter
  and no lower than 0.9 of what the stream took per round trip lately (times the share of the
  request it took, when smaller); while requests are accepted whole it climbs back by half the
  distance to where the cuts began (capped at 1.25 of what the stream took) per round trip,
  then by ``WINDOW_STEP`` (BIC-TCP's binary search). Replies to requests that took the last
  records there were (the end of a bundle) don't grow it: they show nothing of what more the
  stream would take. A stream of 64 shards needs a window of thousands of records: halving on
  a few throttled records, growing by a constant step, or cutting on every bundle's last
  retries left it half used for hundreds of round trips;
- bounded memory: past ``max_buffered_records`` / ``max_buffered_bytes`` held (queued, waiting
  for a retry or in flight), ``process`` waits for replies. Requests go out as soon as a full
  one is ready, once the oldest queued record is ``max_delay_ms`` old (checked on each element,
  not by a timer: a timer needs keyed state, which costs far more per element than the check),
  and at bundle end, which waits for every record to be delivered or dead-lettered;
- public APIs only and cheap: the request body is built directly (base64 and JSON by hand),
  signed with botocore's SigV4 signer and the session's (refreshable) credentials, sent through
  a transport that is handed in (default: ``HttpTransport``, set up as boto3 sets up its own) and
  its reply read as JSON. botocore's model-driven serializer and parser cost
  ~25 µs per record; this costs a few.

Output: the records that were not delivered, as ``FailedRecord`` in the window and with the
timestamp of the record they came from (also in the dead letter), so a pipeline can count or
route them; delivered records produce nothing.

Metrics (namespace ``KinesisWrite``): records_sent, records_retried, records_dead_lettered,
requests, bytes_sent, throttled, and the distribution export_latency_ms (the record's
``event_time_ms`` to its acknowledgement).
"""
from __future__ import annotations

import base64
from binascii import b2a_base64
import collections
import heapq
import http.client
import json
import logging
import math
import queue
import random
import re
import select
import socket
import threading
import time
from json.encoder import encode_basestring_ascii
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from transforms.alerts import raise_alert
from transforms.config import AlertSettings, Destination, RetrySettings
from transforms.dead_letter import BundleFileWriter
from transforms.errors import UserError
from transforms.model import ExportRecordBatch
from transforms.timeutil import format_iso_ms, now_ms

LOG = logging.getLogger(__name__)

MAX_RECORDS_PER_REQUEST = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024
LARGE_RECORD_REQUEST_BYTES = 10 * 1024 * 1024  # when records may be over 1 MiB
MAX_RECORD_BYTES = 1024 * 1024  # the default destination.max_record_bytes
MIN_WINDOW = 10
MIN_ROUND_TRIP_S = 0.001
WINDOW_STEP = 10
RATE_SPAN_RTTS = 8  # the stream's delivery rate is measured over this many round trips
DEFAULT_MAX_IN_FLIGHT = 8
THROTTLED_RECORD_TTL_S = 30.0  # as the KPL's RecordTtl: how long a throttled record keeps trying

RETRYABLE_RECORD_ERRORS = frozenset({"ProvisionedThroughputExceededException", "InternalFailure"})
# Request-level pushback. KMSThrottlingException is throttling, not a KMS configuration error.
THROTTLING_ERRORS = frozenset({"ProvisionedThroughputExceededException", "LimitExceededException",
                               "ThrottlingException", "Throttling", "RequestLimitExceeded",
                               "SlowDown", "TooManyRequestsException", "KMSThrottlingException"})
CREDENTIAL_ERRORS = frozenset({"UnrecognizedClientException", "InvalidSignatureException",
                               "InvalidClientTokenId", "ExpiredTokenException", "IncompleteSignature",
                               "SignatureDoesNotMatch", "MissingAuthenticationToken", "NoCredentials"})
RECORD_TOO_LARGE = "RecordTooLarge"
_TARGET = "Kinesis_20131202.PutRecords"
_THROTTLED = "ProvisionedThroughputExceededException"
_ALL_DELIVERED = re.compile(rb'\s*\{\s*"FailedRecordCount"\s*:\s*0\s*,')


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


def make_session(destination: Destination):
    """The boto3 session of the destination: its explicit credentials, else boto3's chain."""
    import boto3
    kwargs = {}
    if destination.credentials is not None:
        c = destination.credentials
        kwargs = dict(aws_access_key_id=c.access_key_id.reveal(),
                      aws_secret_access_key=c.secret_access_key.reveal(),
                      aws_session_token=c.session_token.reveal() if c.session_token else None)
    return boto3.session.Session(region_name=destination.region, **kwargs)


def make_client(destination: Destination, session=None):
    """A boto3 Kinesis client whose own retries are off: the retry policy is ours."""
    from botocore.config import Config
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                    read_timeout=30, tcp_keepalive=True)
    return (session or make_session(destination)).client(
        "kinesis", region_name=destination.region, endpoint_url=destination.endpoint_url, config=config)


_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),   # Nagle off, as urllib3 and boto3
                   (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]


class HttpTransport:
    """The default transport: one keep-alive ``http.client`` connection per sending thread (a
    thread sends one request at a time, so there is no pool to share), set up as boto3's clients
    are: the CA bundle boto3 would use, Nagle off, TCP keep-alive on, a connect and a read timeout. A
    connection the endpoint closed while idle is noticed before it is reused, as urllib3 does.
    Through the environment's proxy for the endpoint (``HTTPS_PROXY``, ``NO_PROXY``...) it
    sends through a urllib3 ``ProxyManager`` of ``max_connections`` instead. Against urllib3's
    pool for every request, this costs ~0.4 ms less client CPU per request (~1 µs per record).
    Built lazily, so the transport can be pickled with the DoFn."""

    def __init__(self, max_connections: int = DEFAULT_MAX_IN_FLIGHT, connect_timeout: float = 5,
                 read_timeout: float = 30):
        self._args = (max_connections, connect_timeout, read_timeout)
        self._local = threading.local()
        self._proxy = None   # a urllib3 ProxyManager, False when there is no proxy
        self._tls = None

    def __getstate__(self):
        return {"_args": self._args}

    def __setstate__(self, state):
        self.__init__(*state["_args"])

    def __call__(self, url: str, headers: Dict[str, str], body: bytes) -> Tuple[int, bytes]:
        if self._proxy is None:
            self._proxy = _proxy_pool(url, *self._args) or False
        if self._proxy:
            response = self._proxy.urlopen("POST", url, body=body, headers=headers, redirect=False)
            return response.status, response.data
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.url != url or _dropped(connection):
            if connection is not None:
                connection.close()
            local.connection = None
            connection = local.connection = self._connect(url)
        try:
            connection.request("POST", local.path, body, headers)
            response = connection.getresponse()
            data = response.read()
        except BaseException as e:   # the connection goes; the sender retries the records
            local.connection = None
            connection.close()
            if isinstance(e, http.client.HTTPException):   # a broken reply is a connection error too
                raise ConnectionError(f"{type(e).__name__}: {e}") from e
            raise
        if response.will_close:
            local.connection = None
            connection.close()
        return response.status, data

    def _connect(self, url: str):
        _, connect_timeout, read_timeout = self._args
        parts = urlsplit(url)
        if parts.scheme == "https":
            if self._tls is None:
                import ssl
                self._tls = ssl.create_default_context(cafile=ca_bundle())
            connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=connect_timeout,
                                                     context=self._tls)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout)
        connection.connect()
        sock = connection.sock
        for option in _SOCKET_OPTIONS:
            sock.setsockopt(*option)
        sock.settimeout(read_timeout)
        self._local.url, self._local.path = url, parts.path or "/"
        return connection


def _dropped(connection) -> bool:
    """Whether the endpoint closed an idle keep-alive connection (it reads as ready, or is gone)."""
    sock = connection.sock
    if sock is None:
        return True
    if not hasattr(select, "poll"):   # Windows
        return bool(select.select([sock], [], [], 0)[0])
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def ca_bundle() -> str:
    """The CA bundle boto3 would verify the endpoint with: ``AWS_CA_BUNDLE`` or the profile's
    ``ca_bundle`` when set, else botocore's own."""
    import botocore.session
    from botocore.httpsession import get_cert_path
    return botocore.session.Session().get_config_variable("ca_bundle") or get_cert_path(True)


def _proxy_pool(url: str, connections: int, connect: float, read: float):
    """A urllib3 ``ProxyManager`` when the environment names a proxy for ``url``, else None."""
    from botocore.utils import get_environ_proxies
    proxy = get_environ_proxies(url).get(url.split(":", 1)[0])
    if not proxy:
        return None
    import urllib3
    return urllib3.ProxyManager(proxy, maxsize=connections, block=False, retries=False, ca_certs=ca_bundle(),
                                timeout=urllib3.Timeout(connect=connect, read=read), socket_options=_SOCKET_OPTIONS)


class PutRecords:
    """One PutRecords call: a body built by hand, signed with botocore's SigV4 signer and the
    current credentials (a refreshable set is read per request), sent through ``transport``
    (``(url, headers, body) -> (status, reply bytes)``, raising on connection errors).

    Returns (HTTP status, reply body). Safe to call from several threads at once."""

    def __init__(self, stream: str, region: str, endpoint_url: str, credentials, transport):
        self.stream, self.region, self.url = stream, region, endpoint_url.rstrip("/") + "/"
        self.credentials, self.transport = credentials, transport
        self._head = b'{"StreamName":%s,"Records":[' % encode_basestring_ascii(stream).encode()

    @classmethod
    def for_destination(cls, destination: Destination, transport=None, session=None) -> "PutRecords":
        """The endpoint is the destination's, or the one botocore resolves for its region."""
        session = session or make_session(destination)
        url = destination.endpoint_url or make_client(destination, session).meta.endpoint_url
        return cls(destination.stream, destination.region, url, session.get_credentials(),
                   transport or HttpTransport())

    def body(self, records: Sequence[Tuple]) -> bytes:
        return b"".join((self._head, b",".join([b'{"Data":"%s","PartitionKey":%s}' % (
            b2a_base64(r[1], newline=False), encode_basestring_ascii(r[0]).encode()) for r in records]), b"]}"))

    def __call__(self, records: Sequence[Tuple]) -> Tuple[int, bytes]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import NoCredentialsError
        if self.credentials is None:
            raise NoCredentialsError()
        body = self.body(records)
        request = AWSRequest(method="POST", url=self.url, data=body, headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": _TARGET})
        SigV4Auth(self.credentials.get_frozen_credentials(), "kinesis", self.region).add_auth(request)
        return self.transport(self.url, dict(request.headers.items()), body)


def _split_error(code: str, message: str) -> Tuple[str, str]:
    """``com.amazon...#Code`` -> ``Code``; an XML error body (IAM gateways) -> its code and message."""
    if message and "<Code>" in message:
        from xml.etree import ElementTree
        try:
            root = ElementTree.fromstring(message[message.index("<"):])
            found = root.find(".//Code"), root.find(".//Message")
            if found[0] is not None:
                return found[0].text or code, (found[1].text if found[1] is not None else "") or ""
        except ElementTree.ParseError:
            pass
    return code.rsplit("#", 1)[-1].split(":", 1)[0], message


def response_error(status: int, body: bytes) -> Tuple[str, str]:
    """The (code, message) of a non-200 answer: JSON ``__type``, an XML body, or the status."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
        code, message = doc.get("__type") or f"HTTP{status}", doc.get("message") or doc.get("Message") or ""
    except (ValueError, AttributeError):
        code, message = f"HTTP{status}", text[:500]
    return _split_error(code, message)


def check_stream(destination: Destination, client=None, put_records: Optional[PutRecords] = None) -> PutRecords:
    """Once per job, where the pipeline is built: ListStreams (paginated) finds the stream,
    then an empty PutRecords (no record in it) shows whether kinesis:PutRecords is allowed.
    Returns the ``PutRecords`` it checked with (one connection), for a sender in this process.

    Raises ``KinesisSetupError`` with one line naming the problem. AWS may answer the empty
    request with a validation error instead of a permission error; then nothing is learnt, and a
    missing permission shows on the first real request (records dead-lettered, with an ALERT)."""
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError
    where = f"stream {destination.stream!r} in {destination.region}"
    try:
        # one session for both calls: its credentials are resolved once (a credential_process or
        # web identity federation runs once)
        session = make_session(destination) if client is None or put_records is None else None
        client = client or make_client(destination, session)
        if not _stream_listed(client, destination.stream):
            raise KinesisSetupError(f"{where} does not exist (or is not visible to these credentials)")
        put_records = put_records or PutRecords.for_destination(destination, HttpTransport(1), session)
        status, body = put_records(())
    except ClientError as e:
        err = e.response.get("Error", {})
        code, message = _split_error(err.get("Code") or "ClientError", err.get("Message") or str(e))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise KinesisSetupError(_setup_problem(where, "ListStreams", code, message, status)) from None
    except (BotoCoreError, ValueError, OSError, HTTPError) as e:  # no credentials, bad region, endpoint unreachable
        raise KinesisSetupError(f"{where}: {e}") from None
    if status != 200:
        code, _ = response_error(status, body)
        problem = describe_problem(code, "PutRecords", status)
        if problem is not None:  # a configuration error; other answers teach nothing
            raise KinesisSetupError(f"{where}: {problem}")
    return put_records


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
    return f"{where}: {describe_problem(code, action, status) or f'{action} failed: {code}: {message}'}"


def describe_problem(code: str, action: str = "PutRecords", status: Optional[int] = None) -> Optional[str]:
    """What a configuration error code means for the user, or None for other codes."""
    if code in CREDENTIAL_ERRORS:
        return f"credentials rejected ({code})" if code != "NoCredentials" else "no AWS credentials found"
    if code.startswith("AccessDenied") or status == 403:
        return f"permission kinesis:{action} is missing ({code})"
    if code.startswith("ResourceNotFound"):
        return f"the stream does not exist ({code})"
    if code.startswith("KMS"):
        return f"the stream's KMS key cannot be used ({code})"
    return None


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
    """Compact UTF-8 JSON, as export records are written (docs/semantics.md#exports)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def record_too_large(key: str, data: bytes, limit: int = MAX_RECORD_BYTES) -> FailedRecord:
    return FailedRecord(key, data, RECORD_TOO_LARGE, f"record is {record_size(key, data)} bytes with its "
                        f"partition key; the limit is {limit}", 0)


def record_size(key: str, data: bytes) -> int:
    """What the service counts against its limits: the UTF-8 key plus the data."""
    return (len(key) if key.isascii() else len(key.encode("utf-8"))) + len(data)


class SendReport:
    """What finished since the last report, for metrics and alerts. ``dead``: pairs of
    ``FailedRecord`` and the context the record was added with; ``rejected``: how many of them
    the stream refused for good (configuration errors), as opposed to retries running out."""
    __slots__ = ("sent", "retried", "requests", "bytes", "throttled", "rejected", "latencies", "dead")

    def __init__(self):
        self.sent = self.retried = self.requests = self.bytes = self.throttled = self.rejected = 0
        self.latencies: List[int] = []
        self.dead: List[Tuple[FailedRecord, object]] = []


class RecordSender:
    """Batching, ordering, retries, requests in flight and adaptive rate over one
    ``PutRecords``; no Beam here, so the replay command and the tests use exactly what the sink
    uses. All bookkeeping runs in the caller's thread; worker threads (``max_in_flight`` > 1)
    only sign, send and hand the reply back.

    A record is a plain tuple ``(key, data, event_time_ms, size, context)``. It sits in
    ``_queue`` (added, not yet looked at), in ``_busy[key]`` (waiting: a record of its key is in
    flight, waiting for a retry or in ``_ready``), in ``_ready`` (its turn: sent before any
    queued record), in the retry heap, or in a request. Each moves in O(1): a partial failure
    does not rebuild the queue. Attempts and attempt times are kept aside, in ``_tries``, only
    for records that failed before (``id`` -> [attempts, first ms, last ms, throttled sends])."""

    def __init__(self, put_records: Callable[[Sequence[Tuple]], Tuple[int, bytes]],
                 retry: RetrySettings = RetrySettings(), max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 max_record_bytes: int = MAX_RECORD_BYTES, max_delay_s: Optional[float] = None,
                 throttled_ttl_s: float = THROTTLED_RECORD_TTL_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random):
        self.put_records = put_records
        self.retry, self.clock, self.sleep, self.rand = retry, clock, sleep, rand
        self.max_in_flight, self.max_record_bytes, self.max_delay_s = max_in_flight, max_record_bytes, max_delay_s
        self.throttled_ttl_s = throttled_ttl_s
        self.request_bytes = MAX_REQUEST_BYTES if max_record_bytes <= MAX_RECORD_BYTES else LARGE_RECORD_REQUEST_BYTES
        self.max_window = max_in_flight * MAX_RECORDS_PER_REQUEST
        self.window = float(MAX_RECORDS_PER_REQUEST)  # records per round trip (AIMD)
        self._srtt: Optional[float] = None  # smoothed round trip (s); no pacing before the first reply
        self._tokens, self._tokens_at = float(MAX_RECORDS_PER_REQUEST), 0.0
        self._token_wait: Optional[float] = None
        self._paced_until = 0.0
        self._slow_start = True  # until the first throttling: grow by what was accepted
        self._peak = self.window  # the window where the last run of cuts began
        self._cutting = False  # cut since the last reply accepted whole
        self._last_cut = (self.window, 1.0)  # the window before the last cut, and the cut
        self._acks: Deque[Tuple[float, int]] = collections.deque()  # (reply time, records accepted)
        self._acked = 0  # records accepted in _acks
        self._epoch = 0  # how often the window was cut
        self.held = self.held_bytes = 0  # records added and not yet delivered or dead-lettered
        self._queue: Deque[Tuple] = collections.deque()
        self._queued_bytes = 0
        self._queued_since: Optional[float] = None
        self._ready: Deque[Tuple] = collections.deque()
        self._busy: Dict[str, Optional[Deque[Tuple]]] = {}
        self._retries: List[Tuple[float, int, List[Tuple]]] = []  # heap of (due, sequence, records)
        self._retry_seq = 0
        self._tries: Dict[int, list] = {}
        self._requests = 0
        self._report = SendReport()
        self._jobs: Optional[queue.SimpleQueue] = None
        self._done: queue.SimpleQueue = queue.SimpleQueue()

    # ---------------------------------------------------------------- the caller's side

    def add(self, key: str, data: bytes, event_time_ms: Optional[int] = None,
            context=None) -> Optional[FailedRecord]:
        """Queue a record; an oversize one is returned (never sent) for the dead letter."""
        size = (len(key) if key.isascii() else len(key.encode("utf-8"))) + len(data)
        if size > self.max_record_bytes:
            return record_too_large(key, data, self.max_record_bytes)
        if self._queued_since is None:
            self._queued_since = self.clock()
        self._queue.append((key, data, event_time_ms, size, context))
        self._queued_bytes += size
        self.held += 1
        self.held_bytes += size
        return None

    def send(self, max_held: Optional[int] = None, max_held_bytes: Optional[int] = None,
             force: bool = False) -> Optional[SendReport]:
        """Collect the replies that came back and start the requests that are due: full ones,
        or partial ones too once the oldest queued record is ``max_delay_s`` old (or ``force``);
        then, while more than ``max_held`` records or ``max_held_bytes`` are held, wait for
        replies. Returns what finished since the last call, or None when nothing did."""
        if self._requests and not self._done.empty():
            self._collect(block=False)
        if self._retries:
            self._release_due()
        now = self.clock()
        late = (self.max_delay_s is not None and self._queued_since is not None
                and now - self._queued_since >= self.max_delay_s)
        if (force or late or self._ready or len(self._queue) >= MAX_RECORDS_PER_REQUEST
                or self._queued_bytes >= self.request_bytes) and (force or now >= self._paced_until):
            self._submit(force or late, late)
        while ((max_held is not None and self.held > max_held)
               or (max_held_bytes is not None and self.held_bytes > max_held_bytes)):
            self._wait()
            self._submit(True, False)
        report = self._report
        if not (report.requests or report.dead):
            return None
        self._report = SendReport()
        return report

    def flush(self) -> SendReport:
        """Send everything held; each record ends delivered or dead-lettered."""
        return self.send(0, 0, force=True) or SendReport()

    def close(self) -> None:
        """Stops the worker threads (idle ones; call after ``flush``)."""
        if self._jobs is not None:
            for _ in range(self.max_in_flight):
                self._jobs.put(None)
            self._jobs = None

    # ---------------------------------------------------------------- requests

    def _submit(self, partial: bool, late: bool) -> None:
        """Requests go out paced at ``window`` records per round trip (a token bucket holding
        one full request): a slow stream gets full requests further apart rather than small
        ones every round trip, since what a request costs the client is mostly per request.
        ``partial``: fewer records than a full request may go; ``late`` (records waited
        ``max_delay_s``): wait for one window's worth of pacing at most, not a full request."""
        self._token_wait = None
        while self._requests < self.max_in_flight:
            want = min(MAX_RECORDS_PER_REQUEST, len(self._ready) + len(self._queue))
            if not want or (not partial and want < MAX_RECORDS_PER_REQUEST and self._queued_bytes < self.request_bytes):
                return  # not a full request yet
            if self._srtt is None:
                if self._requests:
                    return  # one request until a round trip is measured
            else:
                now = self.clock()
                rate = self.window / self._srtt
                self._tokens = min(MAX_RECORDS_PER_REQUEST, self._tokens + (now - self._tokens_at) * rate)
                self._tokens_at = now
                need = min(want, max(int(self.window), MIN_WINDOW)) if late else want
                if self._tokens < need - 0.5:  # (half a record: float rounding)
                    self._token_wait = max((need - self._tokens) / rate, 0.0005)
                    self._paced_until = now + self._token_wait  # elements until then don't try again
                    return
                want = min(want, max(need, int(self._tokens + 0.5)))
            batch = self._take(want)
            if not batch:
                return
            self._tokens -= len(batch)
            self._start(batch)

    def _take(self, limit: int) -> List[Tuple]:
        """The next request: records whose turn it is, then queued ones of keys not held back
        (those wait behind their key), within the record and byte limits."""
        batch, size, max_bytes = [], 0, self.request_bytes
        ready, pending, busy = self._ready, self._queue, self._busy
        while ready and limit:
            record = ready[0]
            if size + record[3] > max_bytes:
                return batch
            ready.popleft()
            batch.append(record)
            size += record[3]
            limit -= 1
        taken = 0  # bytes leaving the queue
        while pending and limit:
            record = pending[0]
            key = record[0]
            if key in busy:
                pending.popleft()
                taken += record[3]
                waiting = busy[key]
                if waiting is None:
                    busy[key] = collections.deque((record,))
                else:
                    waiting.append(record)
                continue
            if size + record[3] > max_bytes:
                break
            pending.popleft()
            taken += record[3]
            busy[key] = None
            batch.append(record)
            size += record[3]
            limit -= 1
        self._queued_bytes -= taken
        if not pending:
            self._queued_since = None
        return batch

    def _start(self, batch: List[Tuple]) -> None:
        self._requests += 1
        started = now_ms()
        tries = self._tries
        if tries:
            for r in batch:
                t = tries.get(id(r))
                if t is not None:
                    t[0] += 1
                    t[2] = started
        # the last records there were to send (the end of a bundle, retries alone): their
        # replies show nothing of what more the stream would take, so they don't grow the window
        drained = not (self._queue or self._ready)
        job = (batch, self._epoch, started, self.clock(), drained)
        if self.max_in_flight == 1:
            self._handle(job, self._call(batch))
            return
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            for _ in range(self.max_in_flight):
                threading.Thread(target=self._work, args=(self._jobs,), daemon=True,
                                 name="KinesisWrite-PutRecords").start()
        self._jobs.put(job)

    def _work(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            self._done.put((job, self._call(job[0])))

    def _call(self, batch: List[Tuple]):
        try:
            return self.put_records(batch)
        except Exception as e:  # judged in the caller's thread
            return None, e

    def _collect(self, block: bool) -> None:
        done = self._done
        if block:
            self._handle(*done.get())
        while not done.empty():
            self._handle(*done.get())

    def _wait(self) -> None:
        """Until a reply comes back, the next retry is due or the pacing allows a request."""
        due = self._retries[0][0] - self.clock() if self._retries else None
        if self._token_wait is not None:
            due = self._token_wait if due is None else min(due, self._token_wait)
        if self._requests:
            try:
                self._handle(*self._done.get(timeout=None if due is None else max(due, 0)))
            except queue.Empty:
                pass
            self._collect(block=False)
        elif due is not None and due > 0:
            self.sleep(due)
        self._release_due()

    def _release_due(self) -> None:
        now, retries = self.clock(), self._retries
        while retries and retries[0][0] <= now:
            self._ready.extend(heapq.heappop(retries)[2])

    # ---------------------------------------------------------------- replies

    def _handle(self, job, result) -> None:
        from botocore.exceptions import BotoCoreError, NoCredentialsError
        from urllib3.exceptions import HTTPError
        batch, epoch, started, sent_at, drained = job
        self._requests -= 1
        self._report.requests += 1
        status, body = result
        if status is None:
            if isinstance(body, NoCredentialsError):
                self._dead(batch, "NoCredentials", str(body), started, rejected=True)
            elif isinstance(body, (BotoCoreError, OSError, HTTPError)):  # connection refused/reset, timeouts
                self._retry_or_dead(batch, type(body).__name__, str(body), started)
            else:
                raise body
            return
        now = self.clock()
        rtt = max(now - sent_at, MIN_ROUND_TRIP_S)
        if self._srtt is None:  # pacing starts with the first round trip measured
            self._srtt, self._tokens_at = rtt, now
        else:
            self._srtt = 0.875 * self._srtt + 0.125 * rtt  # as TCP's smoothed RTT
        if status != 200:
            code, message = response_error(status, body)
            throttled = code in THROTTLING_ERRORS
            if throttled or status >= 500:
                self._retry_or_dead(batch, code, message, started, throttled)
                if throttled:
                    self._throttled(epoch)
            else:
                self._dead(batch, code, message, started, rejected=True)
            return
        acked = now_ms()
        if _ALL_DELIVERED.match(body) and body.count(b'"SequenceNumber"') == len(batch):
            # the usual answer, read without parsing its results (json.loads of 500 of them
            # costs ~0.13 ms in the caller's thread, which does all the bookkeeping)
            self._delivered(batch, acked)
            self._accepted(now, len(batch))
            if not drained:
                self._grow(len(batch))
            return
        try:
            reply = json.loads(body)
            failed, results = reply.get("FailedRecordCount", 0), reply["Records"]
            codes = [r.get("ErrorCode") for r in results[:len(batch)]]
        except (ValueError, KeyError, TypeError, AttributeError):
            self._retry_or_dead(batch, "InternalFailure", "unreadable PutRecords reply", started)
            return
        if not failed and len(codes) == len(batch):  # the usual answer
            self._delivered(batch, acked)
            self._accepted(now, len(batch))
            if not drained:
                self._grow(len(batch))
            return
        codes.extend(["InternalFailure"] * (len(batch) - len(codes)))  # records without a result
        delivered = [record for record, code in zip(batch, codes) if not code]
        again = {}  # retryable code -> (records, a message)
        for i in [i for i, code in enumerate(codes) if code]:
            code = codes[i]
            message = (results[i].get("ErrorMessage") or "") if i < len(results) else "no result for this record"
            if code in RETRYABLE_RECORD_ERRORS:
                again.setdefault(code, ([], message))[0].append(batch[i])
            else:
                self._dead((batch[i],), code, message, started, rejected=True)
        self._delivered(delivered, acked)
        self._accepted(now, len(delivered))
        for code, (records, message) in again.items():
            self._retry_or_dead(records, code, message, started, code == _THROTTLED)
        if _THROTTLED in again:  # a few records (retries alone) are a small sample: their share of a full request
            sample = max(len(batch), min(self.window, MAX_RECORDS_PER_REQUEST))
            self._throttled(epoch, len(again[_THROTTLED][0]) / sample)

    def _accepted(self, now: float, count: int) -> None:
        """Notes the records the stream took, over the last ``RATE_SPAN_RTTS`` round trips."""
        acks = self._acks
        acks.append((now, count))
        self._acked += count
        horizon = now - RATE_SPAN_RTTS * self._srtt
        while acks[0][0] < horizon:
            self._acked -= acks.popleft()[1]

    def _grow(self, accepted: int) -> None:
        """Increase per round trip (a window's worth of accepted records), as BIC-TCP: below
        the window where the last run of cuts began, by half the distance to it (a binary
        search for the rate the stream took), at least ``WINDOW_STEP``; above it, by
        ``WINDOW_STEP`` (a stream's one-second burst hides an overshoot for a while, so
        probing stays slow). Before the first throttling, by what was accepted (doubling, as
        TCP's slow start). A stream of 64 shards needs a window of thousands of records: a
        constant step would take hundreds of round trips to get back to it after a cut."""
        self._cutting = False
        window = self.window
        if self._slow_start:
            grown = window + accepted
        elif window < self._peak:  # not past it (a request larger than the window is several round trips)
            grown = min(self._peak, window + max(WINDOW_STEP, (self._peak - window) / 2) * accepted / window)
        else:
            grown = window + WINDOW_STEP * accepted / window
        self.window = min(self.max_window, grown)

    def _throttled(self, epoch: int, fraction: Optional[float] = None) -> None:
        """Multiplicative decrease, once per round trip (replies to requests sent before the
        last cut do not cut again, except those of slow start's last round trip that found
        more throttled: a slow start that ran into the end of the stream's burst has a round
        trip of requests in flight, most of them throttled, and they cut from the window
        before the first cut by their share). A request refused whole halves the window;
        records throttled in an accepted request cut it by their share (what the stream took
        of a request is what it takes: 5 % over its shards' rate throttles about 5 % of the
        records, as DCTCP cuts by the share of marked packets), at most to a quarter, and no
        lower than the stream's delivery per round trip lately times 0.9, or times the cut
        when it is deeper (that delivery may be the burst's: a stream refusing most records
        now takes far less). Halving on a few throttled records would leave a stream of many
        shards half used for hundreds of round trips. The first cut of a run notes where it
        began (``_peak``, the target of ``_grow``), each cut keeps it at most 1.25 of that
        delivery: a stream's one-second burst lets the window overshoot far before it
        throttles."""
        self._report.throttled += 1
        cut = 0.5 if fraction is None else max(0.25, 1.0 - fraction)
        if epoch == self._epoch:
            self._epoch += 1
            self._slow_start = False
            delivery = self._delivery_window()
            if not self._cutting:  # the first cut since a reply was accepted whole
                self._peak, self._cutting = self.window, True
            if delivery:  # a run of cuts after a burst ends far below where it began
                self._peak = min(self._peak, 1.25 * delivery)
            self._last_cut = (self.window, cut)
            self.window = max(MIN_WINDOW, self.window * cut, min(0.9, cut) * delivery)
        elif epoch == 0 and self._epoch == 1 and cut < self._last_cut[1]:  # slow start's last round trip
            before, _ = self._last_cut
            self._last_cut = (before, cut)
            self.window = min(self.window, max(MIN_WINDOW, before * cut, min(0.9, cut) * self._delivery_window()))

    def _delivery_window(self) -> float:
        """What the stream took per round trip lately (0 when not measured over at least half
        the span): a throttling stream takes what its shards allow, so a cut goes no lower.
        Without this floor, cuts in a row (each round trip of a stream running at its limit
        throttles a few records somewhere) would sink the window far below the stream's rate."""
        acks = self._acks
        if not acks or self._srtt is None:
            return 0.0
        span = acks[-1][0] - acks[0][0]
        if span < RATE_SPAN_RTTS * self._srtt / 2:
            return 0.0
        return (self._acked - acks[0][1]) / span * self._srtt  # what came in after the first reply

    def _finished(self, records, size: Optional[int] = None) -> None:
        self.held -= len(records)
        self.held_bytes -= sum([r[3] for r in records]) if size is None else size
        busy, ready = self._busy, self._ready
        for r in records:
            waiting = busy.pop(r[0])
            if waiting:  # the key's next record takes its turn
                ready.append(waiting.popleft())
                busy[r[0]] = waiting or None

    def _delivered(self, records, acked: int) -> None:
        report = self._report
        size = sum([r[3] for r in records])
        report.sent += len(records)
        report.bytes += size
        report.latencies.extend([acked - r[2] for r in records if r[2] is not None])
        if self._tries:
            for r in records:
                self._tries.pop(id(r), None)
        self._finished(records, size)

    def _retry_or_dead(self, records, code: str, message: str, started: int, throttled: bool = False) -> None:
        """Records that may be sent again wait a backoff with full jitter, one draw per reply:
        what failed together is due together, and goes out again in one request.

        A throttled send does not count against ``retry.max_retries``: throttling is the
        stream's normal pushback, which the window answers by sending less (a slow start that
        overshoots throttles a good share of a request several round trips in a row). As the
        KPL does, a throttled record keeps trying until ``throttled_ttl_s`` after its first
        send, then it is dead-lettered; other failures count as before. Throttled sends don't
        double the backoff either (the window already slows the sender down): a record
        throttled at the end of a bundle is not kept waiting for seconds."""
        again, spent, tries, retry = [], [], self._tries, self.retry
        attempts = 1  # the backoff doubles per failure that counts, not per throttled send
        expired = now_ms() - self.throttled_ttl_s * 1000.0
        for r in records:
            t = tries.get(id(r))
            if t is None:
                t = tries[id(r)] = [1, started, started, 0]
            if throttled:
                t[3] += 1
            if (t[1] <= expired) if throttled else (t[0] - t[3] > retry.max_retries):
                spent.append(r)
            else:
                again.append(r)
                attempts = max(attempts, t[0] - t[3])
        if again:
            cap = min(retry.max_delay_ms, retry.base_delay_ms * (2 ** (attempts - 1)))
            self._retry_seq += 1
            heapq.heappush(self._retries, (self.clock() + self.rand() * cap / 1000.0, self._retry_seq, again))
            self._report.retried += len(again)
        if spent:
            self._dead(spent, code, message, started)

    def _dead(self, records, code: str, message: str, started: int, rejected: bool = False) -> None:
        dead = self._report.dead
        for r in records:
            attempts, first, last, _ = self._tries.pop(id(r), None) or (1, started, started, 0)
            dead.append((FailedRecord(r[0], r[1], code, message, attempts, first, last), r[4]))
        if rejected:
            self._report.rejected += len(records)
        self._finished(records)


class LatencyWindow:
    """Is the export-latency p95 of the last minute over a limit? (docs/semantics.md#kinesis-sink)

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
    def __init__(self, destination: Destination, alerts: Optional[AlertSettings], transport,
                 max_delay_ms: int, max_buffered_records: int, max_buffered_bytes: int, max_in_flight: int):
        self._destination = destination
        self._alerts = alerts
        self._transport = transport
        self._max_delay_ms = max_delay_ms
        self._max_records = max_buffered_records
        self._max_bytes = max_buffered_bytes
        self._max_in_flight = max_in_flight
        ns = "KinesisWrite"
        self._m = {name: Metrics.counter(ns, name) for name in
                   ("records_sent", "records_retried", "records_dead_lettered", "requests", "bytes_sent", "throttled")}
        self._latency = Metrics.distribution(ns, "export_latency_ms")

    def setup(self):
        # No stream check here: it ran once where the pipeline was built (see the module doc).
        dest = self._destination
        transport = self._transport or HttpTransport(self._max_in_flight)
        self._sender = RecordSender(PutRecords.for_destination(dest, transport), dest.retry,
                                    self._max_in_flight, dest.max_record_bytes, self._max_delay_ms / 1000.0)
        self._window = LatencyWindow(self._alerts.latency_p95_seconds * 1000) if self._alerts else None
        self._last_latency_alert = -60_000
        self._dead_dir = FileSystems.join(dest.dead_letter, "records")

    def start_bundle(self):
        self._unalerted: collections.Counter = collections.Counter()  # error code -> records
        self._unalerted_rejected = 0
        self._dead_writer = BundleFileWriter(self._dead_dir, "records")
        self._context = (None, None)  # (timestamp, window) of the last record

    def process(self, element, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        if type(element) is list:                    # a profile's records, in order (ExportProfileChanges)
            records = element
        elif isinstance(element, ExportRecordBatch):   # a backfill batch: its records one by one
            records = element.records()
        else:
            records = (element,)
        # a plain function, not a generator: most elements produce nothing, cheaply
        sender = self._sender
        context = self._context
        if context[0] is not timestamp or context[1] is not window:
            # a batch's records (and many streamed ones) share one: a tuple per record held
            # for a round trip or more makes Python's full garbage collections more frequent
            context = self._context = (timestamp, window)
        out = None
        for record in records:
            oversize = sender.add(record[0], record[1], record[2] if len(record) > 2 else None, context)
            report = sender.send(self._max_records, self._max_bytes)
            if oversize is None and report is None:
                continue
            if out is None:
                out = []
            if oversize is not None:
                out += self._dead_letter([(oversize, context)], rejected=0)
            if report is not None:
                out += self._account(report)
        return out or ()

    def finish_bundle(self):
        yield from self._account(self._sender.flush())
        if self._unalerted:
            self._alert_dead_letters()
        self._dead_writer.close()

    def teardown(self):
        sender = getattr(self, "_sender", None)
        if sender is not None:
            sender.close()

    def _account(self, report: SendReport):
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
        if report.dead:
            yield from self._dead_letter(report.dead, report.rejected)

    def _dead_letter(self, dead: List[Tuple[FailedRecord, object]], rejected: int):
        """Each record to the dead-letter file (at once: nothing held in memory) and to the
        output, in the window and at the timestamp of its record; the alert waits for the end
        of the bundle, so there is one per bundle, with counts."""
        stream = self._destination.stream
        for failed, (timestamp, window) in dead:
            self._dead_writer.write(dead_letter_line(failed, stream))
            yield WindowedValue(failed, timestamp, (window,))
        self._m["records_dead_lettered"].inc(len(dead))
        self._unalerted.update(failed.error_code for failed, _ in dead)
        self._unalerted_rejected += rejected

    def _alert_dead_letters(self) -> None:
        codes, stream = self._unalerted, self._destination.stream
        count = sum(codes.values())
        problems = sorted({p for p in map(describe_problem, codes) if p})
        raise_alert(self._destination.dead_letter,
                    "stream_rejected_configuration" if self._unalerted_rejected else "records_dead_lettered",
                    f"{count} record(s) to stream {stream!r} dead-lettered under {self._dead_dir} "
                    f"({', '.join(f'{c}: {n}' for c, n in codes.items())})"
                    + (f": {'; '.join(problems)}" if problems else ""),
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
    """Writes ``ExportRecord`` (or ``(partition_key, data[, event_time_ms])``) elements, lists of
    them (a profile's records in order, as ``ExportProfileChanges`` emits them) and
    ``ExportRecordBatch`` elements to the destination's stream; returns the undelivered ones as ``FailedRecord``, each in the window
    and at the timestamp of its record.

    ``expand`` checks the stream once (ListStreams and an empty PutRecords; ``check=False`` when
    the caller already did). ``transport`` sends the signed requests (``(url, headers, body) ->
    (status, reply bytes)``; tests, custom HTTP stacks; pickled with the DoFn); ``alerts=None``
    turns the latency alert off (replays of historic updates); ``max_in_flight``: requests
    sent at once by one DoFn instance (default: ``destination.max_requests_in_flight``)."""

    def __init__(self, destination: Destination, transport=None,
                 alerts: Optional[AlertSettings] = AlertSettings(), check: bool = True, max_delay_ms: int = 200,
                 max_buffered_records: int = 10_000, max_buffered_bytes: int = 16 * 1024 * 1024,
                 max_in_flight: Optional[int] = None):
        super().__init__()
        self._destination, self._check = destination, check
        if max_in_flight is None:
            max_in_flight = destination.max_requests_in_flight
        self._fn = _KinesisWriteFn(destination, alerts, transport, max_delay_ms, max_buffered_records,
                                   max_buffered_bytes, max_in_flight)

    def expand(self, records):
        if self._check:
            check_stream(self._destination)
        return records | "PutRecords" >> beam.ParDo(self._fn)
