"""Table-driven unit tests of the pure parts behind the command lines: strict option parsing and
its hints, which files of a directory are updates, and where a YAML or JSON error is."""
import json

import pytest
import yaml

from pipelines.backfill import BackfillOptions
from pipelines.common import ConfigOptions, ExportJobOptions, ProgressOptions, parse_command_line
from transforms.config import _editor_position
from transforms.errors import UserError
from transforms.inputs import is_update_file, json_error

BACKFILL = [ConfigOptions, ExportJobOptions, BackfillOptions, ProgressOptions]


def parse(*argv):
    return parse_command_line(list(argv), "prog", "USAGE", "summary", BACKFILL)


@pytest.mark.parametrize("argv,message", [
    (["--as-of", "2024"], "unknown option --as-of (did you mean --as_of?); see prog --help"),
    (["--snapshots", "x"], "unknown option --snapshots (did you mean --snapshot?)"),
    (["--runer=Direct"], "unknown option --runer (did you mean --runner?)"),
    (["--direct_num_worker", "2"], "unknown option --direct_num_worker (did you mean --direct_num_workers?)"),
    (["--dead_letter", "x"], "unknown option --dead_letter; see prog --help"),
    (["--zzz"], "unknown option --zzz; see prog --help"),
    (["stray"], "unexpected argument 'stray'"),
    (["--batch_size", "x"], "argument --batch_size: invalid int value: 'x'"),
    (["--config"], "argument --config: expected one argument"),
])
def test_unknown_or_bad_options_raise_one_line(argv, message):
    with pytest.raises(UserError) as e:
        parse("--snapshot", "s.parquet", *argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_job_and_beam_options_are_accepted_and_split():
    own, rest = parse("--config", "c.yaml", "--as_of", "2024-05-01T00:00:00Z", "--runner", "DirectRunner",
                      "--output=out", "--direct_num_workers", "2")
    assert (own.config, own.as_of, own.output) == ("c.yaml", "2024-05-01T00:00:00Z", "out")
    assert rest == ["--runner", "DirectRunner", "--direct_num_workers", "2"]


def test_without_beam_options_beam_flags_are_unknown():
    with pytest.raises(UserError, match="unknown option --runner"):
        parse_command_line(["--runner", "x"], "prog", "U", "s", [ConfigOptions], beam_options=False)


def test_help_has_one_line_per_option(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--help")
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for flag in ("--config CONFIG", "--output kinesis|DIR", "--overwrite", "--snapshot GLOB", "--events GLOB",
                 "--audiences ID,ID", "--as_of ISO8601", "--batch_size ROWS", "--progress_interval_s S"):
        assert len([line for line in lines if line.startswith("  " + flag + " ")]) == 1, flag
    assert any(line.startswith("Beam's pipeline options are accepted too") for line in lines)


@pytest.mark.parametrize("path,is_update", [
    ("d/a.jsonl", True), ("d/a.json", True), ("d/a.avro", True), ("d/a.jsonl.gz", True), ("d/a.avro.gz", True),
    ("gs://b/d/a.json.gz", True), ("d/config.yaml", False), ("d/snapshot.parquet", False), ("d/README", False),
    ("d/.a.jsonl.tmp", False), ("d/.hidden.jsonl", False), ("d/a.jsonl.tmp", False), ("d/a.gz", False),
])
def test_update_files_of_a_directory(path, is_update):
    assert is_update_file(path) == is_update


@pytest.mark.parametrize("text,position", [
    ("destination: [unclosed\n", (1, 23)),                 # at the end: the end of the last line
    ("destination: [unclosed\n\n\n", (1, 23)),
    ("a:\n  b: \"open\n  c: d\n", (3, 7)),
    ("a:\n  b: x\n   c: y\n", (3, 5)),                     # inside the text: the ":" PyYAML points at
    ('{"a": "x"', (1, 10)),
])
def test_yaml_error_positions_as_an_editor_shows_them(text, position):
    with pytest.raises(yaml.YAMLError) as e:
        yaml.safe_load(text)
    assert _editor_position(text, e.value.problem_mark) == position


@pytest.mark.parametrize("text,reason", [
    ('{"profileId": "p-1", "name": "Jo', "invalid JSON: unterminated string at column 33 (opened at column 30)"),
    ('{"profileId": "p-1", "n": 12', "invalid JSON: Expecting ',' delimiter at column 29"),
    ('{"profileId": "p-1",, }', "invalid JSON: Expecting property name enclosed in double quotes at column 21"),
])
def test_json_errors_name_the_column_of_the_problem(text, reason):
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(text)
    assert json_error(e.value) == reason
