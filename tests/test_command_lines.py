"""What a user meets at the terminal, through the command lines as subprocesses: help, strict
options (exit 2, one line, nothing written or sent), --output directories, directory inputs,
progress lines, closing counts equal to a read-back, error positions, replay's defaults, the
sample-data generator and the demo. Argument errors exit before a pipeline is built, so most of
these runs are cheap; the Beam runs are few and each checks several things."""
import glob
import gzip
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from pipelines.sample_data import make_updates, write_jsonl_updates, write_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = ["pipelines.backfill", "pipelines.streaming", "pipelines.replay", "pipelines.validate", "pipelines.demo",
        "pipelines.sample_data"]


def start(module, *args, cwd=ROOT):
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def run(module, *args, **kwargs):
    return finish(start(module, *args, **kwargs))


def run_all(commands):
    """Several cheap command lines at once (each mostly imports)."""
    return [finish(p) for p in [start(m, *a) for m, *a in commands]]


def records_in(directory):
    return [json.loads(line) for f in sorted(glob.glob(os.path.join(directory, "records-*.jsonl"))) for line in open(f)]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small sample (snapshot, updates, events, config) and a config with a bad endpoint."""
    d = tmp_path_factory.mktemp("sample")
    code, out, err = run("pipelines.sample_data", "--out", d, "--profiles", 400, "--updates", 300,
                         "--events", 200, "--endpoint_url", "http://127.0.0.1:9")
    assert code == 0, err
    return d


def test_sample_data_writes_files_that_the_jobs_accept(sample):
    assert sorted(os.listdir(sample)) == ["config.yaml", "events.parquet", "snapshot.parquet", "updates.jsonl"]
    assert sum(1 for _ in open(sample / "updates.jsonl")) == 300
    code, out, err = run("pipelines.validate", "--config", sample / "config.yaml")
    assert code == 0 and out.startswith("OK:"), err


def test_help_lists_each_option_on_one_line():
    own = {
        "pipelines.backfill": ["--config", "--snapshot", "--events", "--audiences", "--as_of", "--output", "--overwrite"],
        "pipelines.streaming": ["--config", "--input", "--seed_snapshot", "--until", "--max_grouped_updates", "--output",
                                "--overwrite"],
        "pipelines.replay": ["--config", "--dead_letter"],
        "pipelines.validate": ["--config"],
        "pipelines.demo": ["--profiles", "--out"],
        "pipelines.sample_data": ["--out", "--profiles", "--updates", "--events"],
    }
    for module, (code, out, err) in zip(JOBS, run_all([(m, "--help") for m in JOBS])):
        assert code == 0 and not err, (module, err)
        lines = out.splitlines()
        for flag in own[module]:
            assert [line for line in lines if line.lstrip().startswith(flag + " ")], (module, flag, out)
        assert ("Beam's pipeline options are accepted" in out) == (module != "pipelines.sample_data"), module


def assert_one_line_error(result, expected):
    code, out, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and not out, err
    assert expected in err, err


def test_unknown_options_are_one_line_errors_and_nothing_is_written(sample, tmp_path):
    config = sample / "config.yaml"
    dead = tmp_path / "dl"
    os.makedirs(dead / "records")
    (dead / "records" / "records-1.jsonl").write_text(json.dumps({"partitionKey": "p", "data": {}}) + "\n")
    out = tmp_path / "out"
    results = run_all([
        ("pipelines.backfill", "--config", config, "--snapshot", sample / "snapshot.parquet",
         "--as-of", "2024-05-01T00:00:00Z", "--output", out),
        ("pipelines.streaming", "--config", config, "--input", sample / "updates.jsonl", "--untill", "2024-06-01",
         "--output", out),
        ("pipelines.replay", "--config", config, "--dead_letter", dead, "--output", out),
        ("pipelines.streaming", "--config", config, "--input", sample / "updates.jsonl", "--runer", "x"),
        ("pipelines.backfill", "--config", config, "--snapshot", sample / "snapshot.parquet", "stray"),
        ("pipelines.validate", "--confg", config),
        ("pipelines.demo", "--profile", "10", "--out", out),
        ("pipelines.sample_data", "--out", out, "--profile", "10"),
        ("pipelines.backfill", "--config", config, "--snapshot", sample / "snapshot.parquet", "--batch_size", "many"),
        ("pipelines.streaming", "--config", config, "--input", sample / "updates.jsonl", "--max_grouped_updates", "0",
         "--output", out),
    ])
    for result, expected in zip(results, [
        "error: unknown option --as-of (did you mean --as_of?)",
        "error: unknown option --untill (did you mean --until?)",
        "error: unknown option --output",
        "error: unknown option --runer (did you mean --runner?)",
        "error: unexpected argument 'stray'",
        "error: unknown option --confg (did you mean --config?)",
        "error: unknown option --profile (did you mean --profiles?)",
        "error: unknown option --profile (did you mean --profiles?)",
        "error: argument --batch_size: invalid int value: 'many'",
        "error: --max_grouped_updates must be 1 or more, not 0",
    ]):
        assert_one_line_error(result, expected)
    assert not out.exists()
    assert os.listdir(dead / "records") == ["records-1.jsonl"]  # nothing replayed


def test_output_must_be_a_directory_without_earlier_records(sample, tmp_path):
    config, snapshot = sample / "config.yaml", sample / "snapshot.parquet"
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "records-old.jsonl").write_text("{}\n")
    results = run_all([
        ("pipelines.backfill", "--config", config, "--snapshot", snapshot, "--output", a_file),
        ("pipelines.backfill", "--config", config, "--snapshot", snapshot, "--output", tmp_path / "x.jsonl"),
        ("pipelines.streaming", "--config", config, "--input", sample / "updates.jsonl", "--output", earlier),
        ("pipelines.backfill", "--config", config, "--snapshot", snapshot, "--overwrite"),
    ])
    assert_one_line_error(results[0], f"--output {a_file}: is an existing file; give a directory")
    assert_one_line_error(results[1], "x.jsonl: looks like a file name; give a directory")
    assert_one_line_error(results[2], "holds 1 records-* file(s) of an earlier run; give --overwrite")
    assert_one_line_error(results[3], "--overwrite applies to --output DIR only")
    assert a_file.read_text() == "keep" and not (tmp_path / "x.jsonl").exists()
    assert os.listdir(earlier) == ["records-old.jsonl"]


def test_backfill_overwrites_reports_progress_and_counts_what_it_wrote(sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "records-old.jsonl").write_text("{}\n")
    code, _, err = run("pipelines.backfill", "--config", sample / "config.yaml", "--snapshot",
                       sample / "snapshot.parquet", "--events", sample / "events.parquet",
                       "--as_of", "2024-05-01T10:00:00Z", "--output", out, "--overwrite",
                       "--progress_interval_s", "0.2")
    assert code == 0, err
    assert not (out / "records-old.jsonl").exists()
    records = records_in(out)
    assert records
    progress = [line for line in err.splitlines() if line.startswith("backfill: ") and "profiles read" in line]
    assert progress and all(" of 400 (" in line and "records out" in line for line in progress), err
    summary = err.strip().splitlines()[-1]
    assert f"; {len(records)} records written to {out}, 0 records dead-lettered" in summary, summary


def test_streaming_reads_the_update_files_of_a_directory(sample, tmp_path):
    """A directory as --input: only *.jsonl/*.json/*.avro (and .gz) are read; a truncated line is
    dead-lettered with the column where it ends; the summary equals the read-back."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    updates = make_updates(40, 10)
    write_jsonl_updates(str(inputs / "a.jsonl"), updates[:20])
    with gzip.open(inputs / "b.json.gz", "wt") as f:
        f.writelines(json.dumps(u) + "\n" for u in updates[20:])
    truncated = json.dumps({"profileId": "p-1", "timestamp": "2024-05-01T10:00:00Z",
                            "attributes": {"person": {"name": {"firstName": "Jennifer"}}}})[:80]
    (inputs / "c.jsonl").write_text(truncated + "\n")
    for name in ("config.yaml", "snapshot.parquet", "README", "notes.txt"):
        (inputs / name).write_text("not an update\n")
    config = yaml.safe_load(open(sample / "config.yaml"))
    config["destination"]["dead_letter"] = str(tmp_path / "dl")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    code, _, err = run("pipelines.streaming", "--config", tmp_path / "config.yaml", "--input", inputs,
                       "--until", "2024-06-01T00:00:00Z", "--output", out, "--progress_interval_s", "0.05")
    assert code == 0, err
    [dead] = [json.loads(line) for f in glob.glob(str(tmp_path / "dl" / "input" / "*.jsonl")) for line in open(f)]
    assert dead["position"] == "line 1" and dead["source"].endswith("c.jsonl")
    assert dead["reason"].startswith("invalid JSON: unterminated string at column 81 ")
    records = records_in(out)
    summary = err.strip().splitlines()[-1]
    assert summary == (f"streaming: 41 inputs read: 40 updates, 1 dead-lettered; {len(records)} records written "
                       f"to {out}, 0 records dead-lettered")
    assert [line for line in err.splitlines() if "updates read" in line and "records out" in line], err


def test_error_positions_and_replay_paths(sample, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("destination:\n  name: x\n  stream: [unclosed\n\n")
    missing = tmp_path / "nowhere"
    results = run_all([("pipelines.validate", "--config", bad),
                       ("pipelines.replay", "--config", sample / "config.yaml", "--dead_letter", missing)])
    code, _, err = results[0]
    assert code == 2 and err.count("\n") == 1 and "not valid YAML or JSON at line 3, column 20" in err, err
    assert_one_line_error(results[1], f"--dead_letter {missing}: no such directory")
    assert not missing.exists()


def test_replay_defaults_to_the_configs_dead_letter(moto_server, kinesis_stream, tmp_path):
    stream = kinesis_stream()
    config = {"destination": {"name": "x", "region": "us-east-2", "stream": stream, "endpoint_url": moto_server,
                              "dead_letter": "./dl"},
              "mapping": {"attributes": ["a"], "audiences": [{"id": "aud"}]},
              "merge_policies": [{"id": "mp", "type": "timestamp_ordered", "default": True}],
              "audiences": [{"id": "aud", "name": "aud", "rule": "a = 1"}]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    records = tmp_path / "dl" / "records"
    records.mkdir(parents=True)
    (records / "records-1.jsonl").write_text(json.dumps({"partitionKey": "p-1", "data": {"a": 1}}) + "\n")
    code, _, err = run("pipelines.replay", "--config", tmp_path / "config.yaml")
    assert code == 0, err
    assert "replay: 1 dead-letter files, 1 records delivered" in err
    assert os.listdir(records / "replayed") == ["records-1.jsonl"]


def test_demo_summary_equals_its_read_back(tmp_path):
    code, out, err = run("pipelines.demo", "--profiles", "300", "--out", tmp_path / "demo")
    assert code == 0, err + out
    assert "records, as the jobs reported" in out


def test_the_repository_stands_alone():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    forbidden = re.compile(r"\bSP" + r"EC\b|\bSP" + r"EC_|\.\./sha" + "red")
    offending = []
    for name in files:
        path = os.path.join(ROOT, name)
        if name.endswith((".parquet", ".avro", ".gz")) or not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8", errors="replace").read()
        offending += [f"{name}: {m.group()}" for m in forbidden.finditer(text)]
    assert not offending, offending


def test_gitignore_covers_what_the_examples_write():
    written = ["demo-output/config.yaml", "examples/dead-letter/input/x.jsonl", "sample-data/snapshot.parquet",
               "sample-data/backfill-records/records-1.jsonl", "bench/out/snapshot-1000.parquet"]
    proc = subprocess.run(["git", "check-ignore", *written], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.split() == written
