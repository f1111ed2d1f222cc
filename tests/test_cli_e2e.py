"""The command lines end to end, as subprocesses: files in, records out via --output PATH and via
the moto server; errors as one line without a traceback."""
import glob
import json
import os
import subprocess
import sys
import threading
import time

import jsonschema
import pytest
import yaml

from pipelines.sample_data import write_snapshot
from schemas import load_schema
from tests.conftest import kinesis_client, read_stream

DAY = 86_400_000
T0 = 1_714_557_600_000  # 2024-05-01T10:00:00Z


def run(module, *args, timeout=180):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write_config(tmp_path, endpoint="http://127.0.0.1:9", stream="exports", **destination):
    doc = yaml.safe_load(open("examples/config.yaml"))
    doc["destination"].update(stream=stream, endpoint_url=endpoint, dead_letter=str(tmp_path / "dl"),
                              max_requests_in_flight=1, **destination)   # moto: one request at a time
    doc["destination"]["retry"] = {"max_retries": 1, "base_delay_ms": 1, "max_delay_ms": 5}
    doc["audiences"][3]["upload"]["path"] = os.path.abspath("examples/vip.csv")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def records_in(directory):
    return [json.loads(line) for f in sorted(glob.glob(os.path.join(directory, "records-*.jsonl"))) for line in open(f)]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return write_snapshot(str(tmp_path_factory.mktemp("snap") / "snap.parquet"), 3000, with_membership=True,
                          row_group_size=1000)


def test_backfill_to_files(tmp_path, snapshot):
    config = write_config(tmp_path)
    proc = run("pipelines.backfill", "--config", config, "--snapshot", snapshot, "--as_of", "2024-05-01T00:00:00Z",
               "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "skipping audiences whose rules need events (give --events): aud-big-spenders" in proc.stderr
    records = records_in(tmp_path / "out")
    assert records and all(r["data"]["segmentMembership"]["ups"]["aud-delorean"]["status"] == "realized" for r in records)
    assert len({r["partitionKey"] for r in records}) == len(records)
    schema = load_schema("export_record.schema.json")
    for r in records[:50]:
        jsonschema.validate(r["data"], schema)
    assert f"members aud-delorean: {len(records)}" in proc.stderr


def test_backfill_to_kinesis(tmp_path, snapshot, moto_server, kinesis_stream):
    stream = kinesis_stream()
    config = write_config(tmp_path, moto_server, stream)
    proc = run("pipelines.backfill", "--config", config, "--snapshot", snapshot, "--audiences", "aud-delorean",
               "--as_of", "2024-05-01T00:00:00Z")
    assert proc.returncode == 0, proc.stderr
    got = read_stream(moto_server, stream)
    run("pipelines.backfill", "--config", config, "--snapshot", snapshot, "--audiences", "aud-delorean",
                "--as_of", "2024-05-01T00:00:00Z", "--output", str(tmp_path / "out"))
    assert sorted(k for k, _ in got) == sorted(r["partitionKey"] for r in records_in(tmp_path / "out"))


@pytest.mark.parametrize("args,message", [
    (["--snapshot", "/nonexistent/*.parquet"], "--snapshot matches no files: /nonexistent/*.parquet"),
    (["--snapshot", "SNAP", "--audiences", "aud-nope"], "--audiences: not mapped in the config: aud-nope"),
    (["--snapshot", "SNAP", "--as_of", "tomorrow"], "--as_of: not an ISO-8601 timestamp: 'tomorrow'"),
    (["--snapshot", "SNAP", "--output", "kinesis"], "stream 'exports' in us-east-2"),
])
def test_backfill_errors_are_one_line(tmp_path, snapshot, args, message):
    config = write_config(tmp_path)
    proc = run("pipelines.backfill", "--config", config, *[snapshot if a == "SNAP" else a for a in args])
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_config_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text("destination: {name: x}\n")
    proc = run("pipelines.streaming", "--config", str(tmp_path / "c.yaml"), "--input", "x.jsonl")
    assert proc.returncode == 2 and "destination.region: required field missing" in proc.stderr


def purchase(pid, ts, price, **attributes):
    doc = {"profileId": pid, "timestamp": ts,
           "event": {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": price}}}}
    if attributes:
        doc["attributes"] = attributes
    return json.dumps(doc)


def updates_file(tmp_path):
    lines = [
        json.dumps({"profileId": "p-1", "timestamp": T0, "identityMap": {"email": [{"id": "a@x.com"}]},
                    "attributes": {"person": {"name": {"firstName": "Ann"}}}}),
        purchase("p-1", T0 + 1000, 600),                       # enters aud-big-spenders
        "{broken",
        json.dumps({"profileId": "p-2", "timestamp": T0, "attributes": {"loyalty": {"points": 5}}}),
    ]
    path = tmp_path / "updates.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def big_spenders(records):
    return [(r["data"]["segmentMembership"]["ups"]["aud-big-spenders"]["status"],
             r["data"]["segmentMembership"]["ups"]["aud-big-spenders"]["lastQualificationTime"])
            for r in records if "aud-big-spenders" in r["data"]["segmentMembership"]["ups"]]


def test_streaming_replay_time_window_exit_and_until(tmp_path):
    config = write_config(tmp_path)
    updates = updates_file(tmp_path)
    # 7 days after the purchase (+1 ms, the window is '<= 7 days') the profile exits
    proc = run("pipelines.streaming", "--config", config, "--input", updates, "--until", "2024-06-01T00:00:00Z",
               "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(big_spenders(records_in(tmp_path / "out")), key=lambda e: e[1]) == [("realized", "2024-05-01T10:00:01Z"),
                                                        ("exited", "2024-05-08T10:00:01Z")]
    [dead] = [json.loads(l) for f in glob.glob(str(tmp_path / "dl" / "input" / "*.jsonl")) for l in open(f)]
    assert (dead["position"], dead["raw"]) == ("line 3", "{broken") and dead["source"] == updates
    assert "4 inputs read: 3 updates, 1 dead-lettered; 2 records written to" in proc.stderr
    # with --until before the exit is due, it is not emitted
    proc = run("pipelines.streaming", "--config", config, "--input", updates, "--until", "2024-05-05T00:00:00Z",
               "--output", str(tmp_path / "out2"))
    assert proc.returncode == 0, proc.stderr
    assert big_spenders(records_in(tmp_path / "out2")) == [("realized", "2024-05-01T10:00:01Z")]


def test_streaming_watch_dir_picks_up_a_file_dropped_after_start(tmp_path):
    config = write_config(tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()

    def drop():
        time.sleep(4)
        (incoming / ".u.tmp").write_text(json.dumps({"profileId": "p-9", "timestamp": T0, "attributes": {
            "vehicle": {"make": "DeLorean"}, "person": {"birthDate": "1980-01-01"}}}) + "\n")
        (incoming / ".u.tmp").rename(incoming / "u.jsonl")
    threading.Thread(target=drop, daemon=True).start()
    proc = run("pipelines.streaming", "--config", config, "--input", f"watch:{incoming}", "--poll_interval_s", "0.5",
               "--stop_after_s", "8", "--output", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    [record] = records_in(tmp_path / "out")
    assert record["partitionKey"] == "p-9" and "aud-delorean" in record["data"]["segmentMembership"]["ups"]


def test_streaming_from_kinesis_input_to_kinesis(tmp_path, moto_server, kinesis_stream):
    source, sink = kinesis_stream(shards=2), kinesis_stream()
    client = kinesis_client(moto_server)
    for i in range(10):
        client.put_record(StreamName=source, PartitionKey=f"p-{i}", Data=json.dumps(
            {"profileId": f"p-{i}", "timestamp": T0 + i, "attributes": {"vehicle": {"make": "DeLorean"},
                                                                        "person": {"birthDate": "1980-01-01"}}}).encode())
    config = write_config(tmp_path, moto_server, sink)
    proc = run("pipelines.streaming", "--config", config, "--input", f"kinesis:{source}", "--poll_interval_s", "0.2",
               "--stop_after_s", "1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(k for k, _ in read_stream(moto_server, sink)) == sorted(f"p-{i}" for i in range(10))


def test_local_demo_runs_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.demo", "--profiles", "500", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backfill:" in proc.stdout and "streaming:" in proc.stdout and "aud-big-spenders   exited" in proc.stdout
    assert "Local Kinesis endpoint stopped" in proc.stdout
