"""Least privilege (docs/semantics.md#kinesis-sink): with moto enforcing IAM, a user allowed only ListStreams, PutRecord
and PutRecords runs a full export; without a permission the failure is clear."""
import glob
import json

import apache_beam as beam
import boto3
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests.conftest import REGION, start_moto, stop
from transforms.config import Credentials, Destination, RetrySettings, Secret
from transforms.kinesis import KinesisSetupError, KinesisWrite, check_stream
from transforms.model import ExportRecord

SEED_POLICY_ACTIONS = ["kinesis:ListStreams", "kinesis:PutRecord", "kinesis:PutRecords"]
UNAUTHENTICATED_SETUP_CALLS = 10


def policy(actions):
    """The seeds' policy (its three actions). Resource "*": moto checks ListStreams against "*",
    not the seeds' ``stream/*`` pattern (AWS itself treats ListStreams as account-level)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": actions, "Resource": "*"}]})


@pytest.fixture(scope="module")
def iam_moto():
    proc, url = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": str(UNAUTHENTICATED_SETUP_CALLS)})
    iam = boto3.client("iam", region_name=REGION, endpoint_url=url)
    kinesis = boto3.client("kinesis", region_name=REGION, endpoint_url=url)
    kinesis.create_stream(StreamName="exports", ShardCount=1)                      # 1
    users = {}
    for name, actions in (("exporter", SEED_POLICY_ACTIONS), ("no-put", ["kinesis:ListStreams"]),
                          ("admin", ["kinesis:*"])):
        iam.create_user(UserName=name)                                               # 2, 5, 8
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=policy(actions))  # 3, 6, 9
        key = iam.create_access_key(UserName=name)["AccessKey"]                      # 4, 7, 10
        users[name] = (key["AccessKeyId"], key["SecretAccessKey"])
    yield url, users
    stop(proc)


def dest(url, users, user, tmp_path):
    key, secret = users[user]
    return Destination(name="t", region=REGION, stream="exports", endpoint_url=url, dead_letter=str(tmp_path),
                       credentials=Credentials(Secret(key), Secret(secret)), retry=RetrySettings(2, 1, 5))


def test_seed_policy_user_runs_a_full_export(iam_moto, tmp_path):
    url, users = iam_moto
    records = [ExportRecord(f"p-{i}", json.dumps({"i": i}).encode(), None) for i in range(50)]
    with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
        _ = p | beam.Create(records) | KinesisWrite(dest(url, users, "exporter", tmp_path))
    assert not glob.glob(str(tmp_path / "records" / "*.jsonl"))
    admin_key, admin_secret = users["admin"]
    reader = boto3.client("kinesis", region_name=REGION, endpoint_url=url,
                          aws_access_key_id=admin_key, aws_secret_access_key=admin_secret)
    shard = reader.list_shards(StreamName="exports")["Shards"][0]["ShardId"]
    it = reader.get_shard_iterator(StreamName="exports", ShardId=shard, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert len(reader.get_records(ShardIterator=it, Limit=1000)["Records"]) == 50


def test_user_without_put_records_gets_the_setup_error(iam_moto, tmp_path):
    url, users = iam_moto
    with pytest.raises(KinesisSetupError, match=r"^stream 'exports' in us-east-2: permission kinesis:PutRecords is missing"):
        check_stream(dest(url, users, "no-put", tmp_path))
    with pytest.raises(Exception, match="permission kinesis:PutRecords is missing"):
        with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
            _ = p | beam.Create([ExportRecord("p-1", b'{"a":1}', None)]) | KinesisWrite(dest(url, users, "no-put", tmp_path))
    assert not glob.glob(str(tmp_path / "records" / "*.jsonl"))


def test_unknown_credentials_fail_before_any_data_moves(iam_moto, tmp_path):
    url, users = iam_moto
    users = dict(users, ghost=("AKIAGHOST0000000000", "nope"))
    with pytest.raises(KinesisSetupError, match="credentials rejected|ListStreams"):
        check_stream(dest(url, users, "ghost", tmp_path))


@pytest.mark.parametrize("user,problem", [("ghost", "credentials rejected"),
                                          ("no-put", "permission kinesis:PutRecords is missing")])
def test_problem_only_a_worker_sees_dead_letters_with_one_alert(iam_moto, tmp_path, caplog, user, problem):
    """The launcher's check passed (or ran elsewhere); on the worker the stream refuses the
    records: they go to the dead letter, one ALERT names the problem, no traceback."""
    url, users = iam_moto
    users = dict(users, ghost=("AKIAGHOST0000000000", "nope"))
    records = [ExportRecord(f"p-{i}", json.dumps({"i": i}).encode(), None) for i in range(5)]
    with beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner"])) as p:
        _ = p | beam.Create(records) | KinesisWrite(dest(url, users, user, tmp_path), check=False, max_in_flight=1)
    dead = [json.loads(line) for f in glob.glob(str(tmp_path / "records" / "*.jsonl")) for line in open(f)]
    assert sorted(d["partitionKey"] for d in dead) == [f"p-{i}" for i in range(5)]
    assert all(d["attempts"] == 1 for d in dead)
    [alert] = [json.loads(line) for line in open(tmp_path / "alerts.jsonl")]
    assert alert["kind"] == "stream_rejected_configuration" and problem in alert["message"]
    assert caplog.text.count("ALERT") == 1 and "Traceback" not in caplog.text
