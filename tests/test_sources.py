"""Unbounded sources: kinesis:STREAM (every shard, checkpoint positions) and watch:DIR."""
import json
import threading
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import REGION, kinesis_client
from transforms.inputs import ReadKinesisUpdates, WatchProfileUpdates, shard_iterator_args


def streaming_options():
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = False
    return options


def test_kinesis_input_reads_every_shard(moto_server, kinesis_stream):
    stream = kinesis_stream(shards=2)
    client = kinesis_client(moto_server)
    for i in range(20):
        client.put_record(StreamName=stream, PartitionKey=f"p-{i}",
                          Data=json.dumps({"profileId": f"p-{i}", "timestamp": 1714557600000 + i}).encode())
    client.put_record(StreamName=stream, PartitionKey="bad", Data=b"{oops")
    shards = {s["ShardId"] for s in client.list_shards(StreamName=stream)["Shards"]}
    assert len(shards) == 2
    with beam.Pipeline(options=streaming_options()) as p:
        read = p | ReadKinesisUpdates(stream, REGION, moto_server, poll_interval_s=0.1, max_idle_polls=2)
        assert_that(read.updates | beam.Map(lambda u: u.profile_id), equal_to([f"p-{i}" for i in range(20)]))
        assert_that(read.dead_letter | beam.Map(lambda d: (d.reason.split(":")[0], d.source.split("/")[0],
                                                           d.position.split()[0])),
                    equal_to([("invalid JSON", f"kinesis:{stream}", "sequence")]), label="dead")


def test_restart_resumes_after_the_last_committed_record():
    assert shard_iterator_args("s", "shard-0", 0)["ShardIteratorType"] == "TRIM_HORIZON"
    args = shard_iterator_args("s", "shard-0", 4962 + 1)
    assert (args["ShardIteratorType"], args["StartingSequenceNumber"]) == ("AFTER_SEQUENCE_NUMBER", "4962")


def test_checkpoint_residual_starts_after_claimed():
    from transforms.inputs import _PollRestrictionProvider
    tracker = _PollRestrictionProvider().create_tracker(_PollRestrictionProvider().initial_restriction("shard"))
    assert tracker.try_claim(100) and tracker.try_claim(250)
    primary, residual = tracker.try_split(0)
    assert (primary.stop, residual.start) == (251, 251)


def test_watch_dir_reads_files_dropped_after_start(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"profileId": "p-a", "timestamp": 1}) + "\n")

    def drop_later():
        time.sleep(2.0)
        (tmp_path / ".b.tmp").write_text(json.dumps({"profileId": "p-b", "timestamp": 2}) + "\nnot json\n")
        (tmp_path / ".b.tmp").rename(tmp_path / "b.jsonl")
    threading.Thread(target=drop_later, daemon=True).start()
    with beam.Pipeline(options=streaming_options()) as p:
        read = p | WatchProfileUpdates(str(tmp_path), interval_s=0.5, stop_after_s=5)
        assert_that(read.updates | beam.Map(lambda u: u.profile_id), equal_to(["p-a", "p-b"]))
        assert_that(read.dead_letter | beam.Map(lambda d: d.position), equal_to(["line 2"]), label="dead")
