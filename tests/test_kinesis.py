"""KinesisWrite: batching, ordering, retries, requests in flight and AIMD against a fake transport
(milliseconds, no server), and end to end against a moto server (and a fault proxy in front of it)."""
from __future__ import annotations

import base64
import glob
import json
import logging
import random

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from tests.conftest import read_stream
from tests.fault_proxy import FakeKinesis
from transforms.alerts import raise_alert
from transforms.config import AlertSettings, ConfigError, Destination, RetrySettings, config_from_dict
from transforms.kinesis import (MAX_RECORD_BYTES, FailedRecord, KinesisSetupError, KinesisWrite, LatencyWindow,
                                PutRecords, RecordSender, _KinesisWriteFn, _stream_listed, check_stream,
                                dead_letter_line)
from transforms.model import ExportRecord
from transforms.timeutil import now_ms

MiB = 1024 * 1024


def destination(endpoint, stream, tmp_path, **kw) -> Destination:
    return Destination(name="t", region="us-east-2", stream=stream, endpoint_url=endpoint,
                       dead_letter=str(tmp_path / "dl"), credentials=kw.pop("credentials", None),
                       retry=kw.pop("retry", RetrySettings(2, 1, 5)), **kw)


class Clock:
    """A fake monotonic clock; ``sleep`` moves it on and notes the delay."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def fake_sender(fake, retry=RetrySettings(2, 1, 5), max_in_flight=1, clock=None, **kw) -> RecordSender:
    clock = clock or Clock()
    put = PutRecords("s", "us-east-2", "http://kinesis.test", FrozenCredentials(), fake)
    return RecordSender(put, retry, max_in_flight, clock=clock, sleep=clock.sleep, **kw)


class FrozenCredentials:
    """A refreshable credential set: every read may give another key."""

    def __init__(self, keys=("AKIDTEST",)):
        self.keys, self.reads = list(keys), 0

    def get_frozen_credentials(self):
        from botocore.credentials import ReadOnlyCredentials
        key = self.keys[min(self.reads, len(self.keys) - 1)]
        self.reads += 1
        return ReadOnlyCredentials(key, "secret", None)


def sender_for(dest) -> RecordSender:
    """The sink's sender against a real endpoint, one request at a time (moto loses records when
    several PutRecords to one stream run at once)."""
    return RecordSender(PutRecords.for_destination(dest), dest.retry, max_in_flight=1, sleep=lambda s: None)


def dead_letters(tmp_path):
    return [json.loads(line) for f in glob.glob(str(tmp_path / "dl" / "records" / "*.jsonl")) for line in open(f)]


def by_key(delivered):
    out = {}
    for key, data in delivered:
        out.setdefault(key, []).append(json.loads(data)["seq"])
    return out


# ------------------------------------------------------------------ fake transport: batching

def test_requests_hold_at_most_500_records_and_are_signed_per_request():
    fake = FakeKinesis()
    sender = fake_sender(fake)
    credentials = sender.put_records.credentials = FrozenCredentials(["AKIDONE", "AKIDTWO"])
    for i in range(501):
        sender.add(f"k{i}", b'{"i":%d}' % i)
    report = sender.flush()
    assert (report.sent, report.requests, [len(r) for r in fake.requests]) == (501, 2, [500, 1])
    assert [h["Authorization"].split("Credential=")[1].split("/")[0] for h in fake.headers] == ["AKIDONE", "AKIDTWO"]
    assert credentials.reads == 2 and fake.headers[0]["X-Amz-Target"] == "Kinesis_20131202.PutRecords"
    assert fake.delivered[0] == ("k0", b'{"i":0}')


@pytest.mark.parametrize("max_record_bytes,request_limit", [(MiB, 5 * MiB), (4 * MiB, 10 * MiB)])
def test_request_byte_limit_counts_partition_keys(max_record_bytes, request_limit):
    fake = FakeKinesis()
    sender = fake_sender(fake, max_record_bytes=max_record_bytes)
    key, data = "k" * 255, b"x" * (100 * 1024 - 200)   # with its 255-byte key each record is ~100 KiB
    for i in range(120):
        sender.add(key[:-3] + f"{i:03d}", data)
    assert sender.flush().sent == 120
    sizes = [len(r) for r in fake.requests]
    assert sizes[0] == request_limit // (len(data) + 255) and sum(sizes) == 120


@pytest.mark.parametrize("max_record_bytes,size,sent", [
    (MiB, MiB, True), (MiB, MiB + 1, False), (1024, 1024, True), (1024, 1025, False),
    (10 * MiB, 10 * MiB, True), (10 * MiB, 10 * MiB + 1, False),
])
def test_records_over_the_limit_are_never_sent(max_record_bytes, size, sent):
    fake = FakeKinesis()
    sender = fake_sender(fake, max_record_bytes=max_record_bytes)
    oversize = sender.add("p-1", b"x" * (size - 3))   # the 3-byte key counts
    assert (oversize is None) is sent
    if not sent:
        assert (oversize.error_code, oversize.attempts, oversize.first_attempt_ms) == ("RecordTooLarge", 0, None)
        assert str(max_record_bytes) in oversize.error_message
    assert sender.flush().sent == int(sent) and len(fake.requests) == int(sent)


@pytest.mark.parametrize("value,error", [
    (1023, "destination.max_record_bytes: must be at least 1024, got 1023"),
    (10 * MiB + 1, "destination.max_record_bytes: must be at most 10485760, got 10485761"),
    ("big", "destination.max_record_bytes: expected an integer, got a string"),
    (1024, None), (10 * MiB, None),
])
def test_max_record_bytes_range_is_a_config_error(value, error):
    doc = {"destination": {"name": "n", "region": "r", "stream": "s", "max_record_bytes": value},
           "mapping": {}, "merge_policies": [{"id": "mp", "type": "timestamp_ordered"}], "audiences": []}
    if error is None:
        assert config_from_dict(doc, ".", {}).destination.max_record_bytes == value
        return
    with pytest.raises(ConfigError) as raised:
        config_from_dict(doc, ".", {})
    assert error in str(raised.value)


# ------------------------------------------------------------------ fake transport: order and retries

def test_a_request_carries_one_record_per_key_and_order_survives_retries():
    fake = FakeKinesis([("fail", {0: "ProvisionedThroughputExceededException"}), ("fail", {0: "InternalFailure"})])
    sender = fake_sender(fake)
    for i in range(3):
        for key in "abc":
            sender.add(key, json.dumps({"key": key, "seq": i}).encode())
    report = sender.flush()
    assert (report.sent, report.retried, report.dead) == (9, 2, [])
    assert all(len(set(keys)) == len(keys) for keys in fake.requests)
    assert by_key(fake.delivered) == {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1, 2]}


@pytest.mark.parametrize("code,retried", [
    ("ProvisionedThroughputExceededException", True),
    ("InternalFailure", True),
    ("KMSAccessDeniedException", False),
    ("KMSDisabledException", False),
    ("KMSNotFoundException", False),
    ("AccessDeniedException", False),
    ("InvalidArgumentException", False),
])
def test_record_errors_retryable_or_dead_lettered_after_one_attempt(code, retried):
    fake = FakeKinesis([("fail", {0: code})])
    sender = fake_sender(fake)
    sender.add("p-1", b'{"v":1}')
    sender.add("p-2", b'{"v":2}')
    report = sender.flush()
    assert len(fake.requests) == (2 if retried else 1)
    assert report.sent == (2 if retried else 1) and report.retried == int(retried)
    if not retried:
        [(failed, _)] = report.dead
        assert (failed.partition_key, failed.error_code, failed.attempts, report.rejected) == ("p-1", code, 1, 1)


@pytest.mark.parametrize("fault,delivered,sends,throttled", [
    (("status", 500, "InternalFailure"), True, 2, 0),
    (("status", 503, "ServiceUnavailable"), True, 2, 0),
    (("status", 400, "ProvisionedThroughputExceededException"), True, 2, 1),
    (("status", 400, "LimitExceededException"), True, 2, 1),
    ("drop", True, 2, 0),
    (("status", 400, "AccessDeniedException"), False, 1, 0),
    (("status", 400, "ResourceNotFoundException"), False, 1, 0),
    (("status", 400, "KMSAccessDeniedException"), False, 1, 0),
    (("status", 400, "UnrecognizedClientException"), False, 1, 0),
    (("status", 400, "ValidationException"), False, 1, 0),
])
def test_request_errors(fault, delivered, sends, throttled):
    fake = FakeKinesis([fault])
    sender = fake_sender(fake)
    sender.add("p-1", b'{"v":1}')
    report = sender.flush()
    assert (report.sent == 1, len(fake.requests), report.throttled) == (delivered, sends, throttled)
    if not delivered:
        [(failed, _)] = report.dead
        assert (failed.error_code, failed.attempts) == (fault[2], 1)


def test_missing_credentials_dead_letter_without_sending():
    fake = FakeKinesis()
    sender = fake_sender(fake)
    sender.put_records.credentials = None
    sender.add("p-1", b"{}")
    [(failed, _)] = sender.flush().dead
    assert (failed.error_code, failed.attempts, fake.requests) == ("NoCredentials", 1, [])


def test_unreadable_reply_is_retried():
    calls = []

    def garbled_then_fake(url, headers, body):
        calls.append(1)
        return (200, b"<html>proxy error</html>") if len(calls) == 1 else FakeKinesis()(url, headers, body)
    sender = fake_sender(garbled_then_fake)
    sender.add("p-1", b"{}")
    assert sender.flush().sent == 1 and len(calls) == 2


def test_retries_exhausted_then_dead_letter_with_backoff_and_full_jitter():
    clock = Clock()
    fake = FakeKinesis([("fail", {0: "InternalFailure"})] * 3)
    sender = fake_sender(fake, RetrySettings(2, 100, 150), clock=clock, rand=lambda: 1.0)
    sender.add("p-1", b'{"v":1}')
    report = sender.flush()
    [(failed, _)] = report.dead
    assert (failed.error_code, failed.attempts, report.retried, report.rejected) == ("InternalFailure", 3, 2, 0)
    assert failed.first_attempt_ms <= failed.last_attempt_ms
    assert clock.sleeps == [0.1, 0.15]           # base, then doubled but capped at max_delay_ms
    other = Clock()
    jittered = fake_sender(FakeKinesis([("fail", {0: "InternalFailure"})]), RetrySettings(2, 100, 5000), clock=other,
                           rand=lambda: 0.25)
    jittered.add("p-1", b"{}")
    assert jittered.flush().sent == 1 and other.sleeps == [0.025]


def test_throttled_sends_do_not_use_up_retries_nor_double_the_backoff():
    """Throttling is the stream's normal pushback: five throttled sends in a row with
    ``max_retries: 2`` still deliver, each retry after one base delay (full jitter, rand=1)."""
    clock = Clock()
    fake = FakeKinesis([("fail", {0: "ProvisionedThroughputExceededException"})] * 5)
    sender = fake_sender(fake, RetrySettings(2, 100, 5000), clock=clock, rand=lambda: 1.0)
    sender.add("p-1", b'{"v":1}')
    report = sender.flush()
    assert (report.sent, report.retried, report.dead, len(fake.requests)) == (1, 5, [], 6)
    assert clock.sleeps == [0.1] * 5


def test_other_failures_still_count_after_throttling():
    fake = FakeKinesis([("fail", {0: "ProvisionedThroughputExceededException"})] * 3
                       + [("fail", {0: "InternalFailure"})] * 3)
    sender = fake_sender(fake, RetrySettings(2, 1, 5))
    sender.add("p-1", b'{"v":1}')
    [(failed, _)] = sender.flush().dead
    assert (failed.error_code, failed.attempts, len(fake.requests)) == ("InternalFailure", 6, 6)


@pytest.mark.parametrize("fault", [("fail", {0: "ProvisionedThroughputExceededException"}),
                                   ("status", 400, "ProvisionedThroughputExceededException")])
def test_throttled_record_dead_lettered_after_its_deadline(fault):
    fake = FakeKinesis([fault] * 3)
    sender = fake_sender(fake, RetrySettings(2, 1, 5), throttled_ttl_s=0)
    sender.add("p-1", b'{"v":1}')
    report = sender.flush()
    [(failed, _)] = report.dead
    assert (failed.error_code, failed.attempts, len(fake.requests), report.rejected) == (
        "ProvisionedThroughputExceededException", 1, 1, 0)


# ------------------------------------------------------------------ fake transport: AIMD

def test_throttling_halves_the_window_and_paces_full_requests():
    """Each request takes a 30 ms round trip; the first is throttled. Requests stay full (500
    records) and go out at the window's pace: 500 x 30 ms / window apart. The window climbs
    back to where it was cut by half the distance per round trip (a 500-record reply at a
    window of 250 is two round trips' worth), then probes beyond by 10 a round trip."""
    clock, fake, seen = Clock(), FakeKinesis([("status", 400, "ProvisionedThroughputExceededException")]), []

    def round_trip(url, headers, body):
        seen.append((clock.now, sender.window))
        clock.now += 0.03
        return fake(url, headers, body)
    sender = fake_sender(round_trip, RetrySettings(5, 1, 5), clock=clock)
    sender.max_window = 4000
    for i in range(2000):
        sender.add(f"k{i}", b"{}")
    report = sender.flush()
    assert (report.sent, report.throttled, [len(r) for r in fake.requests]) == (2000, 1, [500] * 5)
    times, windows = zip(*seen)
    assert [round(w, 1) for w in windows] == [500, 250, 500, 510, 519.8]
    assert times[1] - times[0] == pytest.approx(0.03 + 500 * 0.03 / 250)
    for i in range(2, 5):
        assert times[i] - times[i - 1] == pytest.approx(max(0.03, 500 * 0.03 / windows[i]))  # one at a time


def test_per_record_throttling_cuts_the_window():
    fake, windows = FakeKinesis([("fail", {i: "ProvisionedThroughputExceededException" for i in range(0, 500, 2)})]), []

    def noting_window(url, headers, body):
        windows.append(sender.window)
        return fake(url, headers, body)
    sender = fake_sender(noting_window)
    for i in range(1000):
        sender.add(f"k{i}", b"{}")
    report = sender.flush()
    assert report.sent == 1000 and report.throttled == 1 and report.retried == 250
    assert windows[:2] == [500, 250]


@pytest.mark.parametrize("window,peak,accepted,grown", [
    (1000, 3000, 1000, 2000),     # a round trip's worth, below the last cut: half the distance
    (1000, 3000, 500, 1500),      # half a round trip's worth: half that
    (2995, 3000, 2995, 3000),     # close to it: at least WINDOW_STEP, but not past it
    (100, 3000, 500, 3000),       # a reply of five round trips' worth: up to it, not past it
    (3000, 3000, 3000, 3010),     # beyond it: by WINDOW_STEP
    (3100, 3000, 3100, 3110),
    (3995, 3000, 3995, 4000),     # at most max_window
])
def test_window_grows_back_to_the_last_cut_then_probes(window, peak, accepted, grown):
    sender = fake_sender(FakeKinesis(), max_in_flight=8)
    sender.window, sender._peak, sender._slow_start = window, peak, False
    sender._grow(accepted)
    assert sender.window == pytest.approx(grown)


def test_slow_start_doubles_until_the_first_throttling():
    sender = fake_sender(FakeKinesis(), max_in_flight=8)
    sender._grow(500)
    assert sender.window == 1000
    sender._throttled(epoch=0, fraction=0.1)
    assert (sender.window, sender._peak, sender._slow_start) == (900, 1000, False)
    sender._throttled(epoch=1, fraction=0.5)     # cut again before a reply was accepted whole
    assert (sender.window, sender._peak) == (450, 1000)
    sender._grow(450)
    sender._throttled(epoch=2, fraction=0.5)     # a new run of cuts begins where it grew to
    assert (sender.window, sender._peak) == (725 / 2, 725)


def test_cut_no_lower_than_what_the_stream_took():
    """Over the last round trips (30 ms) the stream took 2,400 records in the 0.2 s after a
    first reply, 360 per round trip: a cut stops at 0.9 of that (at the cut's share of it when
    deeper: most records refused say the stream takes far less now), and the window climbs back
    to 1.25 of it at most."""
    sender = fake_sender(FakeKinesis(), max_in_flight=8)
    sender._srtt = 0.03
    for i in range(9):
        sender._accepted(i * 0.025, 300)
    sender.window, sender._slow_start = 1000, False
    sender._throttled(epoch=0, fraction=0.75)
    assert (sender.window, sender._peak) == (pytest.approx(250), pytest.approx(1.25 * 360))
    sender.window, sender._peak = 350, 1000      # a run of cuts that began far above
    sender._throttled(epoch=1, fraction=0.1)
    assert (sender.window, sender._peak) == (pytest.approx(0.9 * 360), pytest.approx(1.25 * 360))
    sender.window = 300
    sender._throttled(epoch=2, fraction=0.5)
    assert sender.window == pytest.approx(0.5 * 360)
    sender._accepted(1.0, 300)                   # the older replies leave the span
    assert sender._delivery_window() == 0.0      # measured over too short a time


def test_slow_starts_last_round_trip_cuts_by_its_largest_share():
    """The first throttled reply of a round trip cuts; the replies to requests already in flight
    then do not cut again, except at the end of slow start (it ran into the end of the stream's
    burst with a round trip of requests in flight): those cut by a larger share."""
    sender = fake_sender(FakeKinesis(), max_in_flight=8)
    sender.window = 4000
    sender._throttled(epoch=0, fraction=0.1)
    assert sender.window == pytest.approx(3600)
    sender._throttled(epoch=0, fraction=0.6)     # sent before the cut, more of it throttled
    assert sender.window == pytest.approx(1600)
    sender._throttled(epoch=0, fraction=0.3)     # less: no further cut
    sender._throttled(epoch=0, fraction=1.0)     # all of it: a quarter of the window before the cut
    assert sender.window == pytest.approx(1000)
    sender._throttled(epoch=1, fraction=0.5)     # the next round trip cuts from there
    assert sender.window == pytest.approx(500)
    sender._throttled(epoch=1, fraction=0.9)     # and its later replies don't cut again
    assert sender.window == pytest.approx(500)


def test_a_few_throttled_records_cut_by_their_share_of_a_full_request():
    """At the end of a bundle the last requests carry a few records, often retries on the shards
    that just throttled them: all of them throttled is no sign that the stream takes nothing."""
    fake = FakeKinesis([("fail", {i: "ProvisionedThroughputExceededException" for i in range(20)})])
    sender = fake_sender(fake, max_in_flight=8)
    sender.window, sender._slow_start, sender._srtt = 2000, False, 0.03
    for i in range(20):
        sender.add(f"k{i}", b"{}")
    report = sender.flush()
    assert report.sent == 20 and report.throttled == 1
    assert sender.window == pytest.approx(2000 * (1 - 20 / 500))   # and the retry, the last records, does not grow it


def test_replies_to_the_last_records_do_not_grow_the_window():
    """Requests that took all there was to send (the end of a bundle, a trickle of records)
    say nothing of how much more the stream would take: the window grows only on replies to
    requests that left records behind."""
    sender = fake_sender(FakeKinesis(), max_in_flight=8)
    for i in range(100):
        sender.add(f"k{i}", b"{}")
    sender.flush()
    assert sender.window == 500                  # one request took them all
    for i in range(600):
        sender.add(f"k{i}", b"{}")
    sender.flush()
    assert sender.window == 1000                 # the first one left 100 behind: slow start doubles


def test_throttled_replies_cut_once_per_round_trip():
    sender = fake_sender(FakeKinesis())
    sender.window = 4000
    sender._throttled(epoch=0)
    sender._throttled(epoch=0)           # a reply to a request sent before the cut
    assert sender.window == 2000
    sender._throttled(epoch=1)
    assert sender.window == 1000
    sender._throttled(epoch=2, fraction=0.7)    # records throttled: cut by their share
    assert sender.window == pytest.approx(300)
    sender._throttled(epoch=3, fraction=0.05)
    assert sender.window == pytest.approx(285)
    sender._throttled(epoch=4, fraction=1.0)    # all of it: a quarter at most
    assert sender.window == pytest.approx(71.25)
    for _ in range(100):
        sender._throttled(epoch=sender._epoch)
    assert sender.window == 10           # the floor


# ------------------------------------------------------------------ fake transport: requests in flight

def test_requests_in_flight_never_share_a_key_and_keep_order_under_failures():
    rng = random.Random(7)
    plan = [("fail", {i: rng.choice(["ProvisionedThroughputExceededException", "InternalFailure"])
                      for i in rng.sample(range(100), 10)}) if n % 3 == 0 else "pass" for n in range(200)]
    fake = FakeKinesis(plan, delay_s=0.005)
    sender = RecordSender(PutRecords("s", "r", "http://kinesis.test", FrozenCredentials(), fake),
                          RetrySettings(10, 1, 2), max_in_flight=4)
    try:
        sender.window = 2000   # past slow start: up to four requests of 500 at a time
        for i in range(4000):
            key = f"p-{rng.randrange(300)}"
            sender.add(key, json.dumps({"key": key, "seq": i}).encode())
            sender.send(max_held=2000)
        report = sender.flush()
    finally:
        sender.close()
    assert 1 < fake.max_concurrent <= 4 and not fake.overlapping_keys
    assert sender.held == 0 and len(fake.delivered) == 4000
    for seqs in by_key(fake.delivered).values():
        assert seqs == sorted(seqs)
    assert report.retried > 0


def test_one_request_until_a_round_trip_is_measured_then_slow_start():
    fake = FakeKinesis(delay_s=0.02)
    sender = RecordSender(PutRecords("s", "r", "http://kinesis.test", FrozenCredentials(), fake), max_in_flight=8)
    try:
        for i in range(6000):
            sender.add(f"p-{i}", b"{}")
        assert sender.flush().sent == 6000
    finally:
        sender.close()
    assert fake.concurrency[:2] == [1, 1] and fake.max_concurrent > 1   # then the window doubles


# ------------------------------------------------------------------ the DoFn, with a fake transport

def run_fn(fn, elements, clock=None):
    """Drives the DoFn as a runner does; returns the requests seen before each element and at
    the end of the bundle, and the outputs."""
    fn.setup()
    if clock is not None:
        fn._sender.clock, fn._sender.sleep = clock, clock.sleep
    fn.start_bundle()
    seen, out = [], []
    for element in elements:
        out += fn.process(element, timestamp=0, window=window.GlobalWindow())
        seen.append(len(fn._transport.requests))
        if clock is not None:
            clock.now += 0.06
    out += list(fn.finish_bundle() or ())
    seen.append(len(fn._transport.requests))
    fn.teardown()
    return seen, out


def write_fn(tmp_path, fake, delay_ms=60_000, records=1000, size=MiB, **kw):
    dest = destination("http://127.0.0.1:9", "s", tmp_path, **kw)   # nothing listens: nothing but the fake is called
    return _KinesisWriteFn(dest, None, fake, delay_ms, records, size, 1)


@pytest.mark.parametrize("limits,seen", [
    (dict(records=3), [0, 0, 0, 1, 1, 1, 1, 2, 2]),          # more than 3 held: send and wait
    (dict(size=3 * 110), [0, 0, 0, 1, 1, 1, 1, 2, 2]),       # more than 330 bytes held (110 a record)
    (dict(delay_ms=100), [0, 0, 1, 1, 1, 2, 2, 2, 3]),       # the oldest queued record is 100 ms old (60 ms apart)
    (dict(), [0, 0, 0, 0, 0, 0, 0, 0, 1]),                   # else at the end of the bundle
])
def test_mid_bundle_flush_by_records_bytes_and_delay(tmp_path, limits, seen):
    fake = FakeKinesis()
    fn = write_fn(tmp_path, fake, **limits)
    got, out = run_fn(fn, [ExportRecord(f"p-{i}", b"x" * 107, None) for i in range(8)], clock=Clock())
    assert got == seen and out == [] and len(fake.delivered) == 8


def test_a_profiles_records_as_one_element_go_out_in_order(tmp_path):
    """A list of records (``ExportProfileChanges`` emits a profile's records together) is written
    as its records one by one: in order, limits applied per record, an oversize one dead-lettered."""
    fake = FakeKinesis()
    fn = write_fn(tmp_path, fake, records=3, max_record_bytes=1024)
    profile = [ExportRecord("p-1", b'{"i":%d}' % i, None) for i in range(4)]
    seen, out = run_fn(fn, [profile, [ExportRecord("p-2", b"x" * 2000, None)], ExportRecord("p-3", b"{}", None)])
    # more than 3 held within the list: sent before the next element, a request per record of
    # the one key (a partition key is never in two requests at once)
    assert seen == [4, 4, 4, 5]
    assert [(f.value.partition_key, f.value.error_code) for f in out] == [("p-2", "RecordTooLarge")]
    assert [key for key, _ in fake.delivered] == ["p-1"] * 4 + ["p-3"]
    assert [data for key, data in fake.delivered if key == "p-1"] == [b'{"i":%d}' % i for i in range(4)]


def test_setup_makes_no_call(tmp_path):
    fake = FakeKinesis()
    fn = write_fn(tmp_path, fake)
    fn.setup()
    assert fake.requests == []


def test_failed_records_keep_their_window_and_timestamp(tmp_path, caplog):
    dest = destination("http://127.0.0.1:9", "s", tmp_path, max_record_bytes=1024)
    records = [beam.window.TimestampedValue(ExportRecord(f"p-{i}", b'{"i":%d}' % i, None), 30 + 60 * i) for i in range(3)]
    records.append(beam.window.TimestampedValue(ExportRecord("p-big", b"x" * 2000, None), 150))
    with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
        failed = (p | beam.Create(records) | beam.WindowInto(window.FixedWindows(60))
                  | KinesisWrite(dest, FakeKinesis(default=("status", 400, "AccessDeniedException")), alerts=None,
                                 check=False))
        assert_that(failed | beam.ParDo(WindowOf()), equal_to([
            ("p-0", "AccessDeniedException", 30, 0), ("p-1", "AccessDeniedException", 90, 60),
            ("p-2", "AccessDeniedException", 150, 120), ("p-big", "RecordTooLarge", 150, 120)]))
    assert "permission kinesis:PutRecords is missing (AccessDeniedException)" in caplog.text
    assert len(dead_letters(tmp_path)) == 4


class WindowOf(beam.DoFn):
    def process(self, failed, timestamp=beam.DoFn.TimestampParam, w=beam.DoFn.WindowParam):
        yield failed.partition_key, failed.error_code, int(timestamp), int(w.start)


def test_check_runs_where_the_pipeline_is_built(tmp_path):
    dest = destination("http://127.0.0.1:9", "s", tmp_path)
    p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"]))
    with pytest.raises(KinesisSetupError, match="stream 's' in us-east-2: Could not connect"):
        _ = p | beam.Create([ExportRecord("p", b"{}", None)]) | KinesisWrite(dest, FakeKinesis())


def test_failing_alert_write_keeps_the_log_line(tmp_path, caplog):
    root = tmp_path / "a-file"
    root.write_text("not a directory")
    raise_alert(str(root), "records_dead_lettered", "3 record(s) dead-lettered")
    assert "ALERT records_dead_lettered: 3 record(s) dead-lettered" in caplog.text
    assert "cannot write alert" in caplog.text


# ------------------------------------------------------------------ moto server

def test_check_stream(moto_server, kinesis_stream, tmp_path):
    name = kinesis_stream()
    check_stream(destination(moto_server, name, tmp_path))
    with pytest.raises(KinesisSetupError, match=r"stream 'nope' in us-east-2 does not exist"):
        check_stream(destination(moto_server, "nope", tmp_path))
    with pytest.raises(KinesisSetupError, match="Could not connect|connect"):
        check_stream(destination("http://127.0.0.1:9", name, tmp_path))


def test_501_records_take_two_requests(moto_server, kinesis_stream, tmp_path, fault_proxy):
    name = kinesis_stream()
    sender = sender_for(destination(fault_proxy.url, name, tmp_path))
    for i in range(501):
        sender.add(f"k{i}", b'{"i":%d}' % i)
    report = sender.flush()
    assert (report.sent, report.requests) == (501, 2)
    assert [len(r) for r in fault_proxy.put_requests] == [500, 1]
    assert len(read_stream(moto_server, name)) == 501


def test_record_over_1mib_is_dead_lettered_never_sent(moto_server, kinesis_stream, tmp_path):
    name = kinesis_stream()
    dest = destination(moto_server, name, tmp_path)
    big = b"x" * (MAX_RECORD_BYTES - 3)           # 1 MiB only with its 4-byte key
    with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
        _ = p | beam.Create([ExportRecord("p-big", big, None), ExportRecord("p-ok", b'{"a":1}', None),
                             ExportRecord("p-bg2", big, None)]) | KinesisWrite(dest, max_in_flight=1)
    assert [k for k, _ in read_stream(moto_server, name)] == ["p-ok"]
    dls = sorted(dead_letters(tmp_path), key=lambda d: d["partitionKey"])
    assert [(d["partitionKey"], d["errorCode"], d["attempts"], d["dataEncoding"]) for d in dls] == \
        [("p-bg2", "RecordTooLarge", 0, "base64"), ("p-big", "RecordTooLarge", 0, "base64")]
    [alert] = [json.loads(x) for x in open(tmp_path / "dl" / "alerts.jsonl")]    # one per bundle
    assert (alert["kind"], alert["count"]) == ("records_dead_lettered", 2)


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "InternalFailure"])
def test_failed_records_are_retried_in_order(moto_server, kinesis_stream, tmp_path, fault_proxy, code):
    name = kinesis_stream()
    sender = sender_for(destination(fault_proxy.url, name, tmp_path))
    for i in range(3):
        for key in ("a", "b", "c"):
            sender.add(key, json.dumps({"key": key, "seq": i}).encode())
    fault_proxy.plan = [("fail", {0: code}), ("fail", {0: code})]   # 'a' fails twice
    report = sender.flush()
    assert report.sent == 9 and not report.dead and report.retried == 2
    assert by_key(read_stream(moto_server, name)) == {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1, 2]}
    assert all(len(set(keys)) == len(keys) for keys in fault_proxy.put_requests)  # one per key per request


@pytest.mark.parametrize("fault,delivered,attempts", [
    (("status", 500, "InternalFailure"), True, 2),
    ("drop", True, 2),
    (("status", 400, "KMSAccessDeniedException"), False, 1),
])
def test_request_faults_through_http(moto_server, kinesis_stream, tmp_path, fault_proxy, fault, delivered, attempts):
    name = kinesis_stream()
    sender = sender_for(destination(fault_proxy.url, name, tmp_path))
    sender.add("p-1", b'{"v":1}')
    fault_proxy.plan = [fault]
    report = sender.flush()
    assert (report.sent == 1) is delivered
    assert len(fault_proxy.put_requests) == attempts
    assert len(read_stream(moto_server, name)) == int(delivered)


def test_pipeline_metrics(moto_server, kinesis_stream, tmp_path):
    name = kinesis_stream()
    dest = destination(moto_server, name, tmp_path)
    p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"]))
    _ = p | beam.Create([ExportRecord(f"p-{i}", b'{"a":1}', now_ms()) for i in range(20)]) | KinesisWrite(dest, max_in_flight=1)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    dists = {d.key.metric.name: d.committed for d in result.metrics().query()["distributions"]}
    assert counters["records_sent"] == 20 and counters["requests"] >= 1 and counters["bytes_sent"] == sum(len(f"p-{i}") + 7 for i in range(20))
    assert dists["export_latency_ms"].count == 20


def test_latency_window_p95_is_exact_and_forgets_after_a_minute():
    window_ = LatencyWindow(limit_ms=1000)
    window_.add(10_000, [500] * 95 + [2000] * 5)            # exactly 5 % over: p95 is 500
    assert window_.p95_over_limit() is None
    window_.add(10_500, [3000])                              # 6 of 101 over: p95 is 2000
    assert window_.p95_over_limit() == 2000
    window_.add(71_000, [10] * 10)                           # the first second has left the window
    assert window_.p95_over_limit() is None and len(window_.slots) == 1


def test_latency_alert_once_a_minute(tmp_path, caplog):
    fn = _KinesisWriteFn(Destination("t", "r", "s", str(tmp_path)), AlertSettings(1.0), None, 200, 10, 10, 1)
    fn._window, fn._last_latency_alert = LatencyWindow(1000), -60_000
    fn._check_latency(100_000, [500] * 90 + [5000] * 10)
    fn._check_latency(101_000, [5000] * 10)
    assert caplog.text.count("ALERT export_latency") == 1
    assert json.loads(open(tmp_path / "alerts.jsonl").readline())["p95_ms"] == 5000


def test_list_streams_is_paginated():
    class Pages:
        calls = []

        def list_streams(self, **kwargs):
            self.calls.append(kwargs)
            if not kwargs:
                return {"StreamNames": ["a", "b"], "HasMoreStreams": True, "NextToken": "t1"}
            return {"StreamNames": ["c", "mine"], "HasMoreStreams": False}
    assert _stream_listed(Pages(), "mine") and Pages.calls == [{}, {"NextToken": "t1"}]
    assert not _stream_listed(Pages(), "other")


def test_dead_letter_keeps_exact_bytes():
    exact = dead_letter_line(FailedRecord("k", '{"é":1}'.encode(), "X", "m", 1, 0, 1), "s")
    assert json.loads(exact)["data"] == {"é": 1} and "dataEncoding" not in json.loads(exact)
    spaced = json.loads(dead_letter_line(FailedRecord("k", b'{"a": 1}', "X", "m", 1, 0, 1), "s"))
    assert spaced["dataEncoding"] == "base64" and base64.b64decode(spaced["data"]) == b'{"a": 1}'


def test_pipeline_under_faults_keeps_key_order_and_reports(moto_server, kinesis_stream, tmp_path, fault_proxy):
    """Record failures, a 500, a dropped connection and a throttled request in one real
    pipeline: per-key order read back from the shard, metrics, the FailedRecord output and a
    single alert for the bundle that dead-lettered."""
    name = kinesis_stream()
    dest = destination(fault_proxy.url, name, tmp_path, retry=RetrySettings(4, 1, 5))   # five sends
    records = [ExportRecord(key, json.dumps({"key": key, "seq": i}).encode(), now_ms())
               for i in range(4) for key in ("a", "b", "c", "z")]
    fault_proxy.plan = [("fail", {0: "ProvisionedThroughputExceededException", 2: "InternalFailure"}),
                        ("status", 500, "InternalFailure"), "drop",
                        ("status", 400, "ProvisionedThroughputExceededException")]
    fault_proxy.fail_keys = {"z": "InternalFailure"}                  # every send of 'z' fails
    p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"]))
    failed = p | beam.Create(records) | KinesisWrite(dest, max_delay_ms=60_000, max_in_flight=1, check=False)
    # five sends that count each; a 'z' record sent in a request the plan throttles (the first
    # one's record 0, the fourth whole: where the backoff's jitter puts it) is sent once more for
    # each, as a throttled send does not count against the retries
    assert_that(failed | beam.Map(lambda f: (f.partition_key, json.loads(f.data)["seq"], f.error_code,
                                             5 <= f.attempts <= 7)),
                equal_to([("z", i, "InternalFailure", True) for i in range(4)]))
    result = p.run()
    result.wait_until_finish()
    got = by_key(read_stream(moto_server, name))
    assert got == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]}
    assert all(len(set(keys)) == len(keys) for keys in fault_proxy.put_requests)
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert (counters["records_sent"], counters["records_dead_lettered"]) == (12, 4)
    assert counters["records_retried"] >= 16 + 3 and counters["throttled"] == 2
    assert counters["requests"] == len(fault_proxy.put_requests)
    [alert] = [json.loads(x) for x in open(tmp_path / "dl" / "alerts.jsonl")]
    assert (alert["kind"], alert["count"], alert["codes"]) == ("records_dead_lettered", 4, {"InternalFailure": 4})
