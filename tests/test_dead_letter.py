"""Input dead letters: JSON lines under <root>/input/, one file per bundle, counted."""
import json

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.dead_letter import BundleFileWriter, WriteDeadLetters, _ensure_directory
from transforms.model import DeadLetter

LETTERS = [DeadLetter("invalid JSON: Expecting value at column 1", "in/a.jsonl", "line 3", "nope"),
           DeadLetter("corrupt Avro file: bad sync", "in/b.avro", None, ""),
           DeadLetter("field 'profileId': expected a non-empty string", "kinesis:s/shardId-0", "sequence 42", "{\"é\": 1}")]


def test_dead_letters_written_as_json_lines_and_counted(tmp_path):
    p = TestPipeline()
    p | beam.Create(LETTERS) | WriteDeadLetters(str(tmp_path))
    result = p.run()
    result.wait_until_finish()
    files = list((tmp_path / "input").iterdir())
    assert files and all(f.name.startswith("input-") and f.suffix == ".jsonl" for f in files)  # no temp files left
    lines = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert sorted((d["reason"], d["source"], d["position"], d["raw"]) for d in lines) == sorted(LETTERS)
    assert all(d["time"].endswith("Z") and list(d) == ["reason", "source", "position", "raw", "time"] for d in lines)
    [counter] = result.metrics().query(MetricsFilter().with_name("input_dead_letters_written"))["counters"]
    assert counter.committed == 3


def test_no_dead_letters_no_file(tmp_path):
    writer = BundleFileWriter(str(tmp_path / "input"), "input")
    writer.close()
    assert not (tmp_path / "input").exists()


def test_directory_created_once_by_concurrent_bundles(tmp_path):
    _ensure_directory(str(tmp_path / "input"))
    _ensure_directory(str(tmp_path / "input"))  # another bundle got there first
    assert (tmp_path / "input").is_dir()
