"""Dead-letter replay: delivered records are not sent twice; failing ones stay."""
import glob
import json
import os

import yaml

from pipelines import replay
from tests.conftest import read_stream


def write_config(tmp_path, endpoint, stream):
    doc = yaml.safe_load(open("examples/config.yaml"))
    doc["destination"].update(stream=stream, endpoint_url=endpoint, dead_letter=str(tmp_path / "dl"),
                              retry={"max_retries": 1, "base_delay_ms": 1, "max_delay_ms": 2})
    doc["audiences"][3]["upload"]["path"] = os.path.abspath("examples/vip.csv")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def dead_letter_file(tmp_path, records):
    d = tmp_path / "dl" / "records"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "records-1.jsonl", "w") as f:
        for key, data in records:
            f.write(json.dumps({"partitionKey": key, "data": data, "errorCode": "InternalFailure",
                                "errorMessage": "x", "attempts": 3, "stream": "s"}) + "\n")


def test_replay_sends_once_and_keeps_failures(moto_server, kinesis_stream, fault_proxy, tmp_path, capsys):
    stream = kinesis_stream()
    dead_letter_file(tmp_path, [("p-1", {"a": 1}), ("p-2", {"b": 2}), ("p-3", {"c": 3})])
    config = write_config(tmp_path, fault_proxy.url, stream)
    fault_proxy.plan = [("fail", {1: "InternalFailure"}), ("fail", {0: "InternalFailure"})]  # p-2 fails twice
    assert replay.main(["--config", config, "--dead_letter", str(tmp_path / "dl")]) == 0
    assert "2 records delivered, 1 failed again" in capsys.readouterr().err
    delivered = read_stream(moto_server, stream)
    assert sorted(k for k, _ in delivered) == ["p-1", "p-3"]
    assert json.loads(dict(delivered)["p-1"]) == {"a": 1}
    [left] = glob.glob(str(tmp_path / "dl" / "records" / "*.jsonl"))
    assert [json.loads(l)["partitionKey"] for l in open(left)] == ["p-2"]
    # a second replay sends only what failed, never p-1 or p-3 again
    assert replay.main(["--config", config, "--dead_letter", str(tmp_path / "dl")]) == 0
    assert sorted(k for k, _ in read_stream(moto_server, stream)) == ["p-1", "p-2", "p-3"]
    assert not glob.glob(str(tmp_path / "dl" / "records" / "*.jsonl"))
    assert replay.main(["--config", config, "--dead_letter", str(tmp_path / "dl")]) == 0
    assert len(read_stream(moto_server, stream)) == 3


def test_replay_missing_stream_is_one_line(moto_server, tmp_path, capsys):
    config = write_config(tmp_path, moto_server, "no-such-stream")
    os.makedirs(tmp_path / "dl", exist_ok=True)
    assert replay.main(["--config", config, "--dead_letter", str(tmp_path / "dl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: stream 'no-such-stream' in us-east-2 does not exist (or is not visible to these credentials)"]
