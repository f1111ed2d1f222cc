"""The kinesis:STREAM reader's failure paths: throttling and connection errors wait for the next
poll, other errors fail the bundle, a closed (resharded) shard is read to its end and finished,
and a stream whose shards cannot be listed is one error line before the job starts."""
import json

import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.conftest import REGION
from transforms.errors import UserError
from transforms.inputs import SEQUENCE_END, ReadKinesisUpdates, _ReadShardFn, _ShardRestrictionProvider


def client_error(code):
    return ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "GetRecords")


def record(seq, profile):
    return {"SequenceNumber": str(seq), "Data": json.dumps({"profileId": profile, "timestamp": 1714557600000}).encode()}


class ShardClient:
    """GetShardIterator and GetRecords of one shard: ``pages`` are GetRecords answers in turn
    (an exception is raised instead)."""

    def __init__(self, pages):
        self.pages, self.iterators = list(pages), []

    def get_shard_iterator(self, **kwargs):
        self.iterators.append(kwargs)
        return {"ShardIterator": "it-0"}

    def get_records(self, ShardIterator, Limit):
        page = self.pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page


def invoke(client, restriction=None, max_idle_polls=None):
    """One invocation of the shard reader as a runner makes it: (outputs, residual or None)."""
    fn = _ReadShardFn("in", REGION, None, None, poll_interval_s=0.1, max_idle_polls=max_idle_polls)
    fn.setup()                       # builds a client (no call made), replaced by the scripted one
    fn._client = client
    restriction = restriction or _ShardRestrictionProvider().initial_restriction("shard-0")
    tracker = ThreadsafeRestrictionTracker(_ShardRestrictionProvider().create_tracker(restriction))
    out = list(fn.process("shard-0", tracker=RestrictionTrackerView(tracker),
                          watermark=ManualWatermarkEstimator(None)))
    residual, _ = tracker.deferred_status() or (None, None)
    return [getattr(o, "value", o) for o in out], residual, fn


@pytest.mark.parametrize("error", [client_error("ProvisionedThroughputExceededException"),
                                   client_error("KMSThrottlingException"), client_error("InternalFailure"),
                                   EndpointConnectionError(endpoint_url="http://kinesis.test")])
def test_transient_errors_wait_for_the_next_poll(error):
    page = {"Records": [record(100, "p-1")], "NextShardIterator": "it-1", "MillisBehindLatest": 5000}
    out, residual, _ = invoke(ShardClient([page, error]))
    assert [u.profile_id for u in out] == ["p-1"]
    assert residual.start == 101 and residual.stop == SEQUENCE_END   # resumes after the last record read


def test_other_errors_fail_the_bundle():
    with pytest.raises(ClientError, match="AccessDeniedException"):
        invoke(ShardClient([client_error("AccessDeniedException")]))


def test_a_closed_shard_is_read_to_its_end_and_finished():
    page = {"Records": [record(7, "p-1"), record(9, "p-2")], "MillisBehindLatest": 0}   # no NextShardIterator
    out, residual, _ = invoke(ShardClient([page]))
    assert [u.profile_id for u in out] == ["p-1", "p-2"] and residual is None


def test_a_restart_after_a_checkpoint_asks_for_the_records_after_it():
    client = ShardClient([{"Records": [], "NextShardIterator": "it-1", "MillisBehindLatest": 0}])
    out, residual, _ = invoke(client, OffsetRange(101, SEQUENCE_END))
    assert out == [] and residual.start == 101
    assert (client.iterators[0]["ShardIteratorType"], client.iterators[0]["StartingSequenceNumber"]) == \
        ("AFTER_SEQUENCE_NUMBER", "100")


def test_idle_polls_end_a_bounded_read():
    empty = {"Records": [], "NextShardIterator": "it-1", "MillisBehindLatest": 0}
    out, residual, _ = invoke(ShardClient([empty]), max_idle_polls=1)
    assert out == [] and residual is None


def test_shards_that_cannot_be_listed_are_one_error_line(moto_server):
    with pytest.raises(UserError, match=r"^--input kinesis:missing: cannot list shards: .*ResourceNotFound"):
        ReadKinesisUpdates("missing", REGION, moto_server)._shards()
    with pytest.raises(UserError, match=r"^--input kinesis:in: cannot list shards: .*Could not connect"):
        ReadKinesisUpdates("in", REGION, "http://127.0.0.1:9")._shards()
