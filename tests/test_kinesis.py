"""KinesisWrite against a moto server (and a fault proxy in front of it)."""
from __future__ import annotations

import base64
import glob
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.conftest import read_stream
from transforms.config import AlertSettings, Destination, RetrySettings
from transforms.kinesis import (MAX_RECORD_BYTES, FailedRecord, KinesisSetupError, KinesisWrite, LatencyWindow,
                                RecordSender, _KinesisWriteFn, _stream_listed, check_stream, dead_letter_line, make_client)
from transforms.model import ExportRecord
from transforms.timeutil import now_ms


def destination(endpoint, stream, tmp_path, **kw) -> Destination:
    return Destination(name="t", region="us-east-2", stream=stream, endpoint_url=endpoint,
                       dead_letter=str(tmp_path / "dl"), credentials=kw.pop("credentials", None),
                       retry=kw.pop("retry", RetrySettings(2, 1, 5)), **kw)


def sender_for(dest) -> RecordSender:
    return RecordSender(make_client(dest), dest.stream, dest.retry, sleep=lambda s: None)


def dead_letters(tmp_path):
    return [json.loads(line) for f in glob.glob(str(tmp_path / "dl" / "records" / "*.jsonl")) for line in open(f)]


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


def test_5mib_limit_counts_partition_keys(moto_server, kinesis_stream, tmp_path, fault_proxy):
    name = kinesis_stream()
    sender = sender_for(destination(fault_proxy.url, name, tmp_path))
    key = "k" * 255
    data = b"x" * (100 * 1024 - 200)   # with its 255+ byte key each record is ~100 KiB
    for i in range(60):
        sender.add(key[:-3] + f"{i:03d}", data)
    report = sender.flush()
    sizes = [len(r) for r in fault_proxy.put_requests]
    assert report.sent == 60 and len(sizes) == 2
    assert all(n * (len(data) + 255) <= 5 * 1024 * 1024 for n in sizes)
    assert sizes[0] == (5 * 1024 * 1024) // (len(data) + 255)


def test_record_over_1mib_is_dead_lettered_never_sent(moto_server, kinesis_stream, tmp_path):
    name = kinesis_stream()
    dest = destination(moto_server, name, tmp_path)
    big = b"x" * (MAX_RECORD_BYTES - 3)           # 1 MiB only with its 4-byte key
    with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
        _ = p | beam.Create([ExportRecord("p-big", big, None), ExportRecord("p-ok", b'{"a":1}', None),
                             ExportRecord("p-bg2", big, None)]) | KinesisWrite(dest)
    assert [k for k, _ in read_stream(moto_server, name)] == ["p-ok"]
    dls = sorted(dead_letters(tmp_path), key=lambda d: d["partitionKey"])
    assert [(d["partitionKey"], d["errorCode"], d["attempts"], d["dataEncoding"]) for d in dls] == \
        [("p-bg2", "RecordTooLarge", 0, "base64"), ("p-big", "RecordTooLarge", 0, "base64")]
    [alert] = [json.loads(x) for x in open(tmp_path / "dl" / "alerts.jsonl")]    # one per flush
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
    got = [json.loads(d) for _, d in read_stream(moto_server, name)]
    for key in "abc":
        assert [r["seq"] for r in got if r["key"] == key] == [0, 1, 2]
    assert all(len(set(keys)) == len(keys) for keys in fault_proxy.put_requests)  # one per key per request


def test_retries_exhausted_go_to_dead_letter(moto_server, kinesis_stream, tmp_path, fault_proxy):
    name = kinesis_stream()
    dest = destination(fault_proxy.url, name, tmp_path)
    fault_proxy.plan = [("fail", {0: "InternalFailure"})] * 3                 # three sends, all fail
    with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
        _ = p | beam.Create([ExportRecord("p-1", b'{"v":1}', 1), ExportRecord("p-2", b'{"v":2}', 1)]) | KinesisWrite(dest)
    [dl] = dead_letters(tmp_path)
    assert (dl["partitionKey"], dl["errorCode"], dl["attempts"], dl["data"], dl["stream"]) == \
        ("p-1", "InternalFailure", 3, {"v": 1}, name)
    assert dl["firstAttemptTime"] <= dl["lastAttemptTime"]
    assert [k for k, _ in read_stream(moto_server, name)] == ["p-2"]


@pytest.mark.parametrize("fault,delivered,attempts", [
    (("status", 500, "InternalFailure"), True, 2),
    (("status", 400, "ProvisionedThroughputExceededException"), True, 2),
    ("drop", True, 2),
    (("status", 400, "AccessDeniedException"), False, 1),
    (("status", 400, "ResourceNotFoundException"), False, 1),
    (("status", 400, "KMSAccessDeniedException"), False, 1),
])
def test_request_faults(moto_server, kinesis_stream, tmp_path, fault_proxy, fault, delivered, attempts):
    name = kinesis_stream()
    sender = sender_for(destination(fault_proxy.url, name, tmp_path))
    sender.add("p-1", b'{"v":1}')
    fault_proxy.plan = [fault]
    report = sender.flush()
    assert (report.sent == 1) is delivered
    assert len(fault_proxy.put_requests) == attempts
    if not delivered:
        [failed] = report.dead
        assert (failed.error_code, failed.attempts) == (fault[2], 1)


def test_throttling_shrinks_requests_and_recovers(moto_server, kinesis_stream, tmp_path, fault_proxy):
    name = kinesis_stream()
    sender = sender_for(destination(fault_proxy.url, name, tmp_path, retry=RetrySettings(5, 1, 5)))
    for i in range(600):
        sender.add(f"k{i}", b"{}")
    fault_proxy.plan = [("status", 400, "ProvisionedThroughputExceededException")]
    report = sender.flush()
    assert report.sent == 600 and report.throttled == 1
    assert [len(r) for r in fault_proxy.put_requests][:2] == [500, 250]


def test_pipeline_metrics(moto_server, kinesis_stream, tmp_path):
    name = kinesis_stream()
    dest = destination(moto_server, name, tmp_path)
    p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"]))
    _ = p | beam.Create([ExportRecord(f"p-{i}", b'{"a":1}', now_ms()) for i in range(20)]) | KinesisWrite(dest)
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    dists = {d.key.metric.name: d.committed for d in result.metrics().query()["distributions"]}
    assert counters["records_sent"] == 20 and counters["requests"] >= 1 and counters["bytes_sent"] == sum(len(f"p-{i}") + 7 for i in range(20))
    assert dists["export_latency_ms"].count == 20


def test_latency_window_p95_is_exact_and_forgets_after_a_minute():
    window = LatencyWindow(limit_ms=1000)
    window.add(10_000, [500] * 95 + [2000] * 5)            # exactly 5 % over: p95 is 500
    assert window.p95_over_limit() is None
    window.add(10_500, [3000])                              # 6 of 101 over: p95 is 2000
    assert window.p95_over_limit() == 2000
    window.add(71_000, [10] * 10)                           # the first second has left the window
    assert window.p95_over_limit() is None and len(window.slots) == 1


def test_latency_alert_once_a_minute(tmp_path, caplog):
    fn = _KinesisWriteFn(Destination("t", "r", "s", str(tmp_path)), AlertSettings(1.0), None, 200, 10, 10)
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
    single alert for the flush that dead-lettered."""
    from apache_beam.testing.util import assert_that, equal_to
    name = kinesis_stream()
    dest = destination(fault_proxy.url, name, tmp_path, retry=RetrySettings(4, 1, 5))   # five sends
    records = [ExportRecord(key, json.dumps({"key": key, "seq": i}).encode(), now_ms())
               for i in range(4) for key in ("a", "b", "c")]
    fault_proxy.plan = [("fail", {0: "ProvisionedThroughputExceededException", 2: "InternalFailure"}),
                        ("status", 500, "InternalFailure"), "drop",
                        ("status", 400, "ProvisionedThroughputExceededException"),
                        ("fail", {0: "InternalFailure"})]          # 'a' seq 0 fails its fifth send
    p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"]))
    failed = p | beam.Create(records) | KinesisWrite(dest, max_delay_ms=60_000)
    assert_that(failed | beam.Map(lambda f: (f.partition_key, json.loads(f.data)["seq"], f.error_code, f.attempts)),
                equal_to([("a", 0, "InternalFailure", 5)]))
    result = p.run()
    result.wait_until_finish()
    got = [json.loads(d) for _, d in read_stream(moto_server, name)]
    assert [r["seq"] for r in got if r["key"] == "a"] == [1, 2, 3]
    for key in "bc":
        assert [r["seq"] for r in got if r["key"] == key] == [0, 1, 2, 3]
    assert all(len(set(keys)) == len(keys) for keys in fault_proxy.put_requests)
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert (counters["records_sent"], counters["records_retried"], counters["records_dead_lettered"]) == (11, 11, 1)
    assert counters["throttled"] == 2 and counters["requests"] == len(fault_proxy.put_requests)
    [alert] = [json.loads(x) for x in open(tmp_path / "dl" / "alerts.jsonl")]
    assert (alert["kind"], alert["count"], alert["codes"]) == ("records_dead_lettered", 1, {"InternalFailure": 1})
