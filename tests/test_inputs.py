"""Profile update parsing (docs/semantics.md#inputs): each kind of malformed input becomes a dead letter with its
reason and position; the records around it go on."""
import gzip
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.sample_data import write_avro_updates
from transforms.dead_letter import WriteDeadLetters
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
    ('{"profileId": "p", "timestamp": 1, "event": []}', "field 'event': expected an object"),
    ('{"profileId": "p", "timestamp": 1e20}', "field 'timestamp': 1e+20 is out of range (years 1 to 9999)"),
    ('{"profileId": "p", "timestamp": NaN}', "field 'timestamp': timestamp is not a finite number: nan"),
    ('{"profileId": "", "timestamp": 1}', "field 'profileId': expected a non-empty string"),
    ('{"profileId": "p", "timestamp": 1, "identityMap": {"email": [{"id": 5}]}}', "field 'identityMap.email[0]': expected an object with a string 'id'"),
    ('{"profileId": "p", "timestamp": 1, "identityMap": {"email": {"id": "x"}}}', "field 'identityMap.email': expected a list"),
    ('{"profileId": "p", "timestamp": 1, "identityRemovals": {"ecid": [7]}}', "field 'identityRemovals.ecid[0]': expected a string id"),
    ("[" * 100_000, "invalid JSON: nested too deeply"),
]


@pytest.mark.parametrize("line,reason", BAD)
def test_malformed_lines_become_dead_letters(line, reason):
    assert parse_json_update(line, "in.jsonl", 7) == DeadLetter(reason, "in.jsonl", "line 7", line)


def test_bytes_that_are_not_utf8_become_a_dead_letter():
    item = parse_json_update(b'{"profileId": "\xff"}\n', "in.jsonl", 3)
    assert item == DeadLetter("invalid JSON: not UTF-8 text (invalid start byte at byte 15)", "in.jsonl", "line 3",
                              '{"profileId": "\ufffd"}')


def test_epoch_ms_and_offsets_and_event_time():
    u = parse_json_update('{"profileId": "p", "timestamp": "2024-05-01T12:00:00+02:00", '
                          '"event": {"timestamp": "2024-05-01T10:00:01Z", "commerce": {"order": {"priceTotal": 1}}}}', "f", 1)
    assert (u.timestamp_ms, u.event["timestamp"], u.event["commerce"]) == (1714557600000, 1714557601000,
                                                                         {"order": {"priceTotal": 1}})
    assert parse_json_update(b'{"profileId": "p", "timestamp": "1714557600000"}', "f", 1).timestamp_ms == 1714557600000


def test_avro_bad_record_and_corrupt_file(tmp_path):
    good = [{**OK, "profileId": f"p-{i}"} for i in range(300)]
    path = write_avro_updates(str(tmp_path / "u.avro"), [OK, {"profileId": "p-2", "timestamp": "nope"},
                                                         {**OK, "attributes": {"a": 1}, "event": {"x": 1}}])
    items = list(read_avro_updates(path))
    assert [type(i).__name__ for i in items] == ["ProfileUpdate", "DeadLetter", "ProfileUpdate"]
    assert items[1].position == "record 2" and "not an ISO-8601 timestamp" in items[1].reason
    assert json.loads(items[1].raw)["profileId"] == "p-2"
    assert (items[2].attributes, items[2].event) == ({"a": 1}, {"x": 1, "timestamp": 1714557600000})
    import fastavro
    from schemas import load_schema
    with open(tmp_path / "attrs.avro", "wb") as f:  # attributes that are not JSON text
        fastavro.writer(f, fastavro.parse_schema(load_schema("profile_update.avsc")),
                        [{"profileId": "p", "timestamp": 1, "attributes": "{oops"}])
    [bad] = read_avro_updates(str(tmp_path / "attrs.avro"))
    assert bad.reason == "field 'attributes': invalid JSON: Expecting property name enclosed in double quotes at column 2"
    # several blocks; the last one damaged: the records of the blocks before it still come out
    with open(tmp_path / "blocks.avro", "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(load_schema("profile_update.avsc")),
                        [{**r, "timestamp": 1} for r in good], sync_interval=1000)
    data = (tmp_path / "blocks.avro").read_bytes()
    middle = len(data) // 2
    (tmp_path / "bad.avro").write_bytes(data[:middle] + b"\xff" * 64 + data[middle + 64:])
    items = list(read_updates_file(str(tmp_path / "bad.avro")))
    assert isinstance(items[-1], DeadLetter) and items[-1].reason.startswith("corrupt Avro file")
    assert items[-1].position.startswith(f"after record {len(items) - 1}, offset ")
    assert len(items) < 300 and all(isinstance(i, ProfileUpdate) for i in items[:100])
    (tmp_path / "junk.avro").write_bytes(b"not avro at all")
    [only] = list(read_updates_file(str(tmp_path / "junk.avro")))
    assert only.reason.startswith("corrupt Avro file")


def test_gzip_lines_and_a_truncated_gzip(tmp_path):
    body = "".join(json.dumps({**OK, "profileId": f"p-{i}"}) + "\n" for i in range(2000)).encode()
    (tmp_path / "u.jsonl.gz").write_bytes(gzip.compress(body))
    items = list(read_updates_file(str(tmp_path / "u.jsonl.gz")))
    assert len(items) == 2000 and all(isinstance(i, ProfileUpdate) for i in items)
    packed = gzip.compress(body)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[:3000])  # Beam reads a cut gzip to where it ends
    items = list(read_updates_file(str(tmp_path / "cut.jsonl.gz")))
    assert items[-1].reason == "invalid JSON: unterminated string at column 20 (opened at column 15)"
    assert all(isinstance(i, ProfileUpdate) for i in items[:-1])
    (tmp_path / "bad.jsonl.gz").write_bytes(packed[:3000] + b"\xff" * 100 + packed[3100:])
    items = list(read_updates_file(str(tmp_path / "bad.jsonl.gz")))
    last = items[-1]
    assert last.reason.startswith("cannot read the rest of the file") and last.position == f"after line {len(items) - 1}"


def test_no_matching_files_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--input matches no files"):
        ReadProfileUpdates(str(tmp_path / "*.jsonl"))


def test_pipeline_reads_good_records_around_bad_ones(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.jsonl").write_text(json.dumps(OK) + "\n{bad\n\n" + json.dumps({**OK, "profileId": "p-2"}) + "\n")
    write_avro_updates(str(inputs / "b.avro"), [{**OK, "profileId": "p-3"}, {"profileId": "p-4", "timestamp": "x"}])
    (inputs / "c.ndjson.gz").write_bytes(gzip.compress(json.dumps({**OK, "profileId": "p-5", "timestamp": 5}).encode()))
    with TestPipeline() as p:
        read = p | ReadProfileUpdates(str(inputs / "*"))
        assert_that(read.updates | beam.Map(lambda u, t=beam.DoFn.TimestampParam: (u.profile_id, t.micros // 1000)),
                    equal_to([("p-1", 1714557600000), ("p-2", 1714557600000), ("p-3", 1714557600000), ("p-5", 5)]))
        assert_that(read.dead_letter | beam.Map(lambda d: (d.position, d.source.rsplit("/", 1)[-1])),
                    equal_to([("line 2", "a.jsonl"), ("record 2", "b.avro")]), label="dead")
        read.dead_letter | WriteDeadLetters(str(tmp_path / "dl"))
    [written] = list((tmp_path / "dl" / "input").glob("input-*.jsonl"))
    lines = sorted((json.loads(line) for line in written.read_text().splitlines()), key=lambda d: d["position"])
    assert [(d["position"], d["raw"][:4]) for d in lines] == [("line 2", "{bad"), ("record 2", '{"pr')]
    assert lines[0]["reason"].startswith("invalid JSON") and lines[0]["source"] == str(inputs / "a.jsonl")
