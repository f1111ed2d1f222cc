"""Unbounded sources: kinesis:STREAM (every shard, positions checkpointed) and watch:DIR."""
import json
import os
import threading
import time

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import REGION, kinesis_client
from transforms.inputs import (SEQUENCE_END, ReadKinesisUpdates, WatchProfileUpdates, _ReadShardFn,
                               _ShardRestrictionProvider, shard_iterator_args)
from transforms.model import DeadLetter

AWS_SEQUENCE = 49590338271490256608559692538361571095921575989136588898  # a real one: 56 digits


def local_options():
    return PipelineOptions(["--runner=DirectRunner"])


def put(client, stream, first, count, key=None):
    for i in range(first, first + count):
        client.put_record(StreamName=stream, PartitionKey=key or f"p-{i}",
                          Data=json.dumps({"profileId": f"p-{i}", "timestamp": 1714557600000 + i}).encode())


def test_kinesis_input_reads_every_shard(moto_server, kinesis_stream):
    stream = kinesis_stream(shards=2)
    client = kinesis_client(moto_server)
    put(client, stream, 0, 20)
    client.put_record(StreamName=stream, PartitionKey="bad", Data=b"{oops")
    counts = [len(client.get_records(ShardIterator=client.get_shard_iterator(
        StreamName=stream, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"])["Records"])
        for s in client.list_shards(StreamName=stream)["Shards"]]
    assert len(counts) == 2 and min(counts) > 0  # both shards hold records
    with beam.Pipeline(options=local_options()) as p:
        read = p | ReadKinesisUpdates(stream, REGION, moto_server, poll_interval_s=0.1, max_idle_polls=2)
        assert_that(read.updates | beam.Map(lambda u: u.profile_id), equal_to([f"p-{i}" for i in range(20)]))
        assert_that(read.dead_letter | beam.Map(lambda d: (d.reason.split(":")[0], d.source.split("/")[0],
                                                           d.position.split()[0])),
                    equal_to([("invalid JSON", f"kinesis:{stream}", "sequence")]), label="dead")


class Shard:
    """Drives ``_ReadShardFn`` the way a runner does: one invocation per restriction, the
    deferred residual is the checkpoint a restart resumes from."""

    def __init__(self, endpoint, stream, shard_id):
        self.fn = _ReadShardFn(stream, REGION, endpoint, None, poll_interval_s=0.1, max_idle_polls=None)
        self.fn.setup()
        self.shard_id = shard_id
        self.estimator = ManualWatermarkEstimator(None)

    def invoke(self, restriction):
        tracker = ThreadsafeRestrictionTracker(_ShardRestrictionProvider().create_tracker(restriction))
        out = list(self.fn.process(self.shard_id, tracker=RestrictionTrackerView(tracker),
                                   watermark=self.estimator))
        residual, _ = tracker.deferred_status()
        return [getattr(o, "value", o) for o in out], residual


def test_checkpoint_resume_neither_skips_nor_rereads(moto_server, kinesis_stream):
    stream = kinesis_stream(shards=1)
    client = kinesis_client(moto_server)
    [shard] = [s["ShardId"] for s in client.list_shards(StreamName=stream)["Shards"]]
    put(client, stream, 0, 5)
    first = Shard(moto_server, stream, shard)
    out, checkpoint = first.invoke(_ShardRestrictionProvider().initial_restriction(shard))
    assert [u.profile_id for u in out] == [f"p-{i}" for i in range(5)]
    assert checkpoint.stop == SEQUENCE_END and checkpoint.start > 0
    assert first.estimator.current_watermark() is not None  # caught up: the watermark follows the clock
    put(client, stream, 5, 3)
    client.put_record(StreamName=stream, PartitionKey="x", Data=b'{"profileId": 1, "timestamp": 1}')
    restarted = Shard(moto_server, stream, shard)  # a new worker from the persisted checkpoint
    out, checkpoint2 = restarted.invoke(checkpoint)
    assert [getattr(u, "profile_id", None) for u in out] == ["p-5", "p-6", "p-7", None]
    assert isinstance(out[-1], DeadLetter) and out[-1].position.startswith("sequence ")
    assert out[-1].reason == "field 'profileId': expected a non-empty string"
    out, checkpoint3 = restarted.invoke(checkpoint2)  # nothing new: an empty poll, same position
    assert out == [] and checkpoint3.start == checkpoint2.start


def test_restart_resumes_after_the_last_committed_record():
    assert shard_iterator_args("s", "shard-0", 0)["ShardIteratorType"] == "TRIM_HORIZON"
    args = shard_iterator_args("s", "shard-0", AWS_SEQUENCE + 1)
    assert (args["ShardIteratorType"], args["StartingSequenceNumber"]) == ("AFTER_SEQUENCE_NUMBER", str(AWS_SEQUENCE))


def test_checkpoint_residual_starts_after_claimed_and_only_checkpoints_split():
    provider = _ShardRestrictionProvider()
    tracker = provider.create_tracker(provider.initial_restriction("shard"))
    assert tracker.try_claim(AWS_SEQUENCE) and tracker.try_claim(AWS_SEQUENCE + 250)
    assert tracker.try_split(0.5) is None  # sequence numbers are sparse: no fractional split
    primary, residual = tracker.try_split(0)
    assert (primary.stop, residual.start, residual.stop) == (AWS_SEQUENCE + 251, AWS_SEQUENCE + 251, SEQUENCE_END)
    assert not tracker.try_claim(AWS_SEQUENCE + 300)
    assert len(str(SEQUENCE_END - 1)) == 130  # above the 129 digits Kinesis allows


def test_watch_dir_reads_files_dropped_after_start(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"profileId": "p-a", "timestamp": 1}) + "\n")

    def drop_later():
        time.sleep(1.5)
        (tmp_path / ".b.tmp").write_text(json.dumps({"profileId": "p-b", "timestamp": 2}) + "\nnot json\n")
        (tmp_path / ".b.tmp").rename(tmp_path / "b.jsonl")
        old = tmp_path / "c.jsonl"  # same old mtime as a file already read: still new by its path
        old.write_text(json.dumps({"profileId": "p-c", "timestamp": 3}) + "\n")
        stat = (tmp_path / "a.jsonl").stat()
        os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    threading.Thread(target=drop_later, daemon=True).start()
    started = time.time()
    with beam.Pipeline(options=local_options()) as p:
        read = p | WatchProfileUpdates(str(tmp_path), interval_s=0.5, stop_after_s=3.5)
        assert_that(read.updates | beam.Map(lambda u: u.profile_id), equal_to(["p-a", "p-b", "p-c"]))
        assert_that(read.dead_letter | beam.Map(lambda d: d.position), equal_to(["line 2"]), label="dead")
    assert time.time() - started < 30
