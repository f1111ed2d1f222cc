"""Profile update parsing (SPEC 4): each kind of malformed input becomes a dead letter with its
reason and position; the records around it go on."""
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bench.datagen import write_avro_updates
from transforms.errors import UserError
from transforms.inputs import ReadProfileUpdates, parse_json_update, read_avro_updates, read_updates_file
from transforms.model import DeadLetter, ProfileUpdate

OK = {"profileId": "p-1", "timestamp": "2024-05-01T10:00:00Z"}


def test_full_update_parses():
    line = json.dumps({**OK, "datasetId": "crm", "identityMap": {"email": [{"id": "a@b.c"}, {"id": "a@b.c"}]},
                       "identityRemovals": {"ecid": ["1", {"id": "2"}]},
                       "attributes": {"person": {"name": {"firstName": "J"}}, "loyalty": {"points": None}},
                       "event": {"eventType": "x", "timestamp": 1714557601000}, "extra": 1})
    u = parse_json_update(line, "f", 1)
    assert u == ProfileUpdate("p-1", 1714557600000, "crm", {"email": ("a@b.c",)}, {"ecid": ("1", "2")},
                              {"person": {"name": {"firstName": "J"}}, "loyalty": {"points": None}},
                              {"eventType": "x", "timestamp": 1714557601000})
    assert parse_json_update(json.dumps({"profileId": "p", "timestamp": 5, "event": {}}), "f", 1).event == {"timestamp": 5}


BAD = [
    ("not json", "invalid JSON: Expecting value at column 1"),
    ('{"profileId": "p", "timestamp": 1', "invalid JSON: Expecting ',' delimiter at column 34"),
    ("[1, 2]", "expected a JSON object"),
    ('{"timestamp": 1}', "missing required field 'profileId'"),
    ('{"profileId": 7, "timestamp": 1}', "field 'profileId': expected a non-empty string"),
    ('{"profileId": "p"}', "missing required field 'timestamp'"),
    ('{"profileId": "p", "timestamp": "yesterday"}', "field 'timestamp': not an ISO-8601 timestamp: 'yesterday'"),
    ('{"profileId": "p", "timestamp": true}', "field 'timestamp': timestamp must be ISO-8601 text or epoch milliseconds, got True"),
    ('{"profileId": "p", "timestamp": 1, "identityMap": {"email": ["x"]}}', "field 'identityMap.email[0]': expected an object with a string 'id'"),
    ('{"profileId": "p", "timestamp": 1, "identityMap": []}', "field 'identityMap': expected an object of namespace -> list"),
    ('{"profileId": "p", "timestamp": 1, "attributes": 5}', "field 'attributes': expected an object"),
    ('{"profileId": "p", "timestamp": 1, "datasetId": 5}', "field 'datasetId': expected a string"),
    ('{"profileId": "p", "timestamp": 1, "event": {"timestamp": "soon"}}', "field 'event.timestamp': not an ISO-8601 timestamp: 'soon'"),
]


@pytest.mark.parametrize("line,reason", BAD)
def test_malformed_lines_become_dead_letters(line, reason):
    assert parse_json_update(line, "in.jsonl", 7) == DeadLetter(reason, "in.jsonl", "line 7", line)


def test_avro_bad_record_and_corrupt_file(tmp_path):
    path = write_avro_updates(str(tmp_path / "u.avro"), [OK, {"profileId": "p-2", "timestamp": "nope"}, {**OK, "profileId": "p-3"}])
    items = list(read_avro_updates(path))
    assert [type(i).__name__ for i in items] == ["ProfileUpdate", "DeadLetter", "ProfileUpdate"]
    assert items[1].position == "record 2" and "not an ISO-8601 timestamp" in items[1].reason
    data = open(path, "rb").read()
    (tmp_path / "bad.avro").write_bytes(data[: len(data) - 20] + b"\x00" * 20)
    items = list(read_updates_file(str(tmp_path / "bad.avro")))
    assert isinstance(items[-1], DeadLetter) and items[-1].reason.startswith("corrupt Avro file")
    (tmp_path / "junk.avro").write_bytes(b"not avro at all")
    [only] = list(read_updates_file(str(tmp_path / "junk.avro")))
    assert only.reason.startswith("corrupt Avro file")


def test_no_matching_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--input matches no files"):
        ReadProfileUpdates(str(tmp_path / "*.jsonl"))


def test_pipeline_reads_good_records_around_bad_ones(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(OK) + "\n{bad\n\n" + json.dumps({**OK, "profileId": "p-2"}) + "\n")
    write_avro_updates(str(tmp_path / "b.avro"), [{**OK, "profileId": "p-3"}])
    with TestPipeline() as p:
        read = p | ReadProfileUpdates(str(tmp_path / "*"))
        assert_that(read.updates | beam.Map(lambda u: u.profile_id), equal_to(["p-1", "p-2", "p-3"]))
        assert_that(read.dead_letter | beam.Map(lambda d: (d.position, d.source.endswith("a.jsonl"))),
                    equal_to([("line 2", True)]), label="dead")
