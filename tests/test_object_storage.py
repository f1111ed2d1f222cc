"""Every path of the jobs on object storage: the backfill, the streaming job and the replay read
their config, upload CSV, snapshot, events and updates from ``s3://`` (a moto server) and write
their outputs and dead letters there, giving the same records as the same files on local disk.

One module-scoped fixture runs each job once per filesystem (the runs are the expensive part);
the tests compare what they left behind.
"""
import contextlib
import io
import json
import os
import uuid

import boto3
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.sample_data import snapshot_table
from pipelines import backfill, replay, streaming
from tests.conftest import REGION, kinesis_client, read_stream

AS_OF = "2024-05-01T00:00:00Z"
AS_OF_MS = 1_714_521_600_000
DAY = 86_400_000


def s3_client(endpoint):
    return boto3.client("s3", region_name=REGION, endpoint_url=endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def s3_options(endpoint):
    return ["--s3_endpoint_url", endpoint, "--s3_access_key_id", "testing",
            "--s3_secret_access_key", "testing", "--s3_region_name", REGION]


def config_doc(endpoint, stream):
    """The example config with paths relative to its folder (``cfg/``), leaving it with ``..``."""
    doc = yaml.safe_load(open("examples/config.yaml"))
    doc["destination"].update(stream=stream, endpoint_url=endpoint, dead_letter="../dl",
                              retry={"max_retries": 1, "base_delay_ms": 1, "max_delay_ms": 2})
    doc["audiences"][3]["upload"]["path"] = "../uploads/vip.csv"
    return doc


def tree(endpoint, stream):
    """relative path -> bytes: every input of the three jobs."""
    snapshot = io.BytesIO()
    pq.write_table(snapshot_table(600, with_membership=True), snapshot, row_group_size=200)
    events = [{"profileId": f"p-{i}", "timestamp": AS_OF_MS - (1 + k) * DAY, "eventType": "commerce.purchases",
               "commerce": {"order": {"priceTotal": 300.0}}} for i in range(0, 40, 3) for k in range(2)]
    updates = [{"profileId": f"p-{i}", "timestamp": AS_OF_MS + i * 60_000,
                "attributes": {"vehicle": {"make": "DeLorean"}, "person": {"birthDate": "1980-01-01"}}}
               for i in range(30)]
    dead = [{"partitionKey": f"p-{i}", "data": {"n": i}, "errorCode": "InternalFailure", "errorMessage": "x",
             "attempts": 2, "stream": stream} for i in range(5)]
    return {
        "cfg/config.yaml": yaml.safe_dump(config_doc(endpoint, stream)).encode(),
        "uploads/vip.csv": ("name,email\n" + "".join(f"U{i},user{i}@example.com\n" for i in range(0, 600, 7))).encode(),
        "snap/part-0.parquet": snapshot.getvalue(),
        "events/events.jsonl": "".join(json.dumps(e) + "\n" for e in events).encode(),
        "input/updates.jsonl": ("".join(json.dumps(u) + "\n" for u in updates) + "{not json\n").encode(),
        "dl/records/records-1.jsonl": "".join(json.dumps(d) + "\n" for d in dead).encode(),
    }


def run_cli(module, argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = module.main(argv)
    return code, err.getvalue()


class Local:
    def __init__(self, root):
        self.root = str(root)

    def put(self, files):
        for rel, data in files.items():
            os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
            with open(self.path(rel), "wb") as f:
                f.write(data)

    def path(self, rel):
        return os.path.join(self.root, rel)

    def files(self, prefix):
        base = self.path(prefix)
        return sorted(os.path.relpath(os.path.join(d, f), self.root)
                      for d, _, names in os.walk(base) for f in names)

    def read(self, rel):
        with open(self.path(rel), "rb") as f:
            return f.read()


class S3:
    def __init__(self, client, bucket):
        self.client, self.bucket = client, bucket

    def put(self, files):
        for rel, data in files.items():
            self.client.put_object(Bucket=self.bucket, Key=rel, Body=data)

    def path(self, rel):
        return f"s3://{self.bucket}/{rel}"

    def files(self, prefix):
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix + "/")
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def read(self, rel):
        return self.client.get_object(Bucket=self.bucket, Key=rel)["Body"].read()


def run_jobs(store, extra, endpoint, stream):
    store.put(tree(endpoint, stream))
    config = store.path("cfg/config.yaml")
    return {
        "backfill": run_cli(backfill, ["--config", config, "--snapshot", store.path("snap/*.parquet"),
                                       "--events", store.path("events/*.jsonl"), "--as_of", AS_OF,
                                       "--output", store.path("out-backfill"), *extra]),
        "streaming": run_cli(streaming, ["--config", config, "--input", store.path("input/*.jsonl"),
                                         "--seed_snapshot", store.path("snap/*.parquet"),
                                         "--until", "2024-05-02T00:00:00Z",
                                         "--output", store.path("out-stream"), *extra]),
        "replay": run_cli(replay, ["--config", config, "--dead_letter", store.path("dl"), *extra]),
    }


@pytest.fixture(scope="module")
def runs(moto_server, tmp_path_factory):
    """Each job once on local files and once on S3; (store, exit codes and stderr, stream)."""
    kinesis = kinesis_client(moto_server)
    out = {}
    bucket = f"exports-{uuid.uuid4().hex[:8]}"
    client = s3_client(moto_server)
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    for name, store, extra in (("local", Local(tmp_path_factory.mktemp("local")), []),
                               ("s3", S3(client, bucket), s3_options(moto_server))):
        stream = f"replay-{name}-{uuid.uuid4().hex[:6]}"
        kinesis.create_stream(StreamName=stream, ShardCount=1)
        kinesis.get_waiter("stream_exists").wait(StreamName=stream, WaiterConfig={"Delay": 0.1, "MaxAttempts": 50})
        out[name] = (store, run_jobs(store, extra, moto_server, stream), stream)
    return out


def record_lines(store, prefix):
    names = [n for n in store.files(prefix) if n.rsplit("/", 1)[-1].startswith("records-")]
    return sorted(line for n in names for line in store.read(n).decode().splitlines())


@pytest.mark.parametrize("job", ["backfill", "streaming", "replay"])
def test_every_job_runs_on_s3(runs, job):
    for name in ("local", "s3"):
        code, err = runs[name][1][job]
        assert code == 0, f"{name}: {err}"
        assert "Traceback" not in err


def test_backfill_on_s3_gives_the_local_records(runs):
    local, s3 = (record_lines(runs[n][0], "out-backfill") for n in ("local", "s3"))
    assert local and s3 == local
    audiences = {a for line in local for a in json.loads(line)["data"]["segmentMembership"]["ups"]}
    # the upload CSV (resolved against the config's folder on S3) and the events were read
    assert {"aud-delorean", "aud-vip-upload", "aud-big-spenders"} <= audiences
    summaries = {n: runs[n][1]["backfill"][1].splitlines()[-1].replace(runs[n][0].path("out-backfill"), "OUT")
                 for n in ("local", "s3")}
    assert summaries["s3"] == summaries["local"]


def test_streaming_on_s3_gives_the_local_records_and_dead_letters(runs):
    local, s3 = (record_lines(runs[n][0], "out-stream") for n in ("local", "s3"))
    assert local and s3 == local
    for name in ("local", "s3"):
        store = runs[name][0]
        [dead] = [n for n in store.files("dl/input") if n.endswith(".jsonl")]
        letter = json.loads(store.read(dead))
        assert letter["raw"] == "{not json" and "31" in str(letter["position"])
        assert letter["source"] == store.path("input/updates.jsonl")


def test_replay_on_s3_sends_the_local_records_and_moves_the_file(runs, moto_server):
    sent = {n: sorted(read_stream(moto_server, runs[n][2])) for n in ("local", "s3")}
    assert len(sent["local"]) == 5 and sent["s3"] == sent["local"]
    for name in ("local", "s3"):
        assert runs[name][0].files("dl/records") == ["dl/records/replayed/records-1.jsonl"]


@pytest.mark.parametrize("args, message", [
    (["--config", "s3://{bucket}/cfg/missing.yaml"],
     "error: s3://{bucket}/cfg/missing.yaml: cannot read config file: Not found: s3://{bucket}/cfg/missing.yaml"),
    (["--config", "s3://{bucket}/cfg/config.yaml", "--snapshot", "s3://{bucket}/nothing/*.parquet"],
     "error: --snapshot matches no files: s3://{bucket}/nothing/*.parquet"),
    (["--config", "s3://{bucket}/cfg/bad-upload.yaml"],
     "error: s3://{bucket}/cfg/bad-upload.yaml: audiences[3].upload: s3://{bucket}/uploads/missing.csv: "
     "cannot read upload file: Not found: s3://{bucket}/uploads/missing.csv"),
])
def test_bad_paths_on_s3_are_one_line(runs, moto_server, args, message):
    store = runs["s3"][0]
    doc = yaml.safe_load(store.read("cfg/config.yaml"))
    doc["audiences"][3]["upload"]["path"] = "../uploads/missing.csv"
    store.put({"cfg/bad-upload.yaml": yaml.safe_dump(doc).encode()})
    argv = [a.format(bucket=store.bucket) for a in args]
    if "--snapshot" not in argv:
        argv += ["--snapshot", store.path("snap/*.parquet")]
    code, err = run_cli(backfill, argv + s3_options(moto_server))
    assert code == 2
    assert err.strip().splitlines() == [message.format(bucket=store.bucket)]


def test_validate_reads_a_config_on_s3(runs, moto_server, capsys):
    from pipelines import validate
    store = runs["s3"][0]
    assert validate.main(["--config", store.path("cfg/config.yaml"), *s3_options(moto_server)]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {store.path('cfg/config.yaml')}: 4 audiences")
    assert validate.main(["--config", store.path("cfg/config.yaml"), "--s3_endpoint", moto_server]) == 2
    assert "unknown option --s3_endpoint (did you mean --s3_endpoint_url?)" in capsys.readouterr().err
