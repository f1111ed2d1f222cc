"""The schemas in schemas/ agree with the config loader and with the config and record samples of docs/semantics.md."""
import datetime
import json

import jsonschema
import pytest
import yaml

from schemas import load_schema
from transforms.config import ConfigError, config_from_dict, load_config

ENV = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
EXAMPLE = "examples/config.yaml"


def as_json(doc):
    """YAML gives datetimes for unquoted timestamps; the schema sees them as the text they were."""
    return json.loads(json.dumps(doc, default=lambda v: v.isoformat() if isinstance(v, (datetime.date, datetime.datetime)) else v))


@pytest.mark.parametrize("path", ["tests/data/config_example.yaml", EXAMPLE])
def test_documented_configs_validate_and_load(path, monkeypatch):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with open(path) as f:
        jsonschema.validate(as_json(yaml.safe_load(f)), load_schema("config.schema.json"))
    config = load_config(path)
    assert config.destination.stream == "profile-exports" and config.mapping.audiences[0].id == "aud-delorean"


def test_loader_extensions_are_in_the_schema():
    """What the loader accepts beyond the documented basics example: epoch-ms times, bare mapped ids, a single
    policy without the default flag, numbers from the environment (the schema sees the document
    after ``${NAME}`` expansion)."""
    with open(EXAMPLE) as f:
        doc = yaml.safe_load(f)
    doc["audiences"][0]["created_at"] = 1648553325000
    doc["mapping"]["audiences"][0] = "aud-delorean"
    doc["merge_policies"] = [{"id": "mp-only", "type": "timestamp_ordered"}]
    for a in doc["audiences"]:
        a.pop("merge_policy", None)
    jsonschema.validate(as_json(doc), load_schema("config.schema.json"))
    doc["destination"]["retry"]["max_retries"] = "${RETRIES}"
    assert config_from_dict(doc, "examples", {"RETRIES": "3"}).destination.retry.max_retries == 3


@pytest.mark.parametrize("change", [
    lambda d: d["destination"].update(streem="x"),
    lambda d: d.update(extra={}),
    lambda d: d["destination"].pop("region"),
    lambda d: d["destination"].update(name=" "),
    lambda d: d["destination"].update(include_segment_names="yes"),
    lambda d: d["merge_policies"][0].update(type="newest"),
    lambda d: d["merge_policies"][1].update(default=True),
    lambda d: d["merge_policies"][0].pop("default"),
    lambda d: d["merge_policies"][1].pop("datasets"),
    lambda d: d.update(merge_policies=[]),
    lambda d: d["audiences"][0].update(upload={"path": "v.csv", "column": "e", "namespace": "email"}),
    lambda d: d["audiences"][1].pop("rule"),
    lambda d: d["audiences"][3]["upload"].pop("column"),
    lambda d: d["destination"]["retry"].update(max_retries="2"),
    lambda d: d["destination"]["retry"].update(max_retries=-1),
    lambda d: d["evaluation"].update(max_events_per_profile=0),
    lambda d: d["mapping"]["audiences"][0].update(mapped_at=True),
    lambda d: d["destination"]["credentials"].update(token="x"),
])
def test_invalid_configs_are_rejected_by_schema_and_loader(change):
    with open(EXAMPLE) as f:
        doc = yaml.safe_load(f)
    doc["destination"]["credentials"] = {"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}"}
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(as_json(doc), load_schema("config.schema.json"))
    with pytest.raises(ConfigError):
        config_from_dict(doc, "examples", ENV)


DOCUMENTED_UPDATE = {"profileId": "p-1", "timestamp": "2024-05-01T10:00:00Z", "datasetId": "crm",
               "identityMap": {"email": [{"id": "john@acme.com"}], "ecid": [{"id": "1457"}]},
               "identityRemovals": {"ecid": ["1457"]},
               "attributes": {"person": {"name": {"firstName": "John"}}, "loyalty": {"points": None}},
               "event": {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 120.5}}}}

DOCUMENTED_RECORD = {"person": {"name": {"firstName": "John", "lastName": "Doe"}, "birthDate": "1985-10-26"},
               "personalEmail": {"address": "john.doe@acme.com"},
               "segmentMembership": {"ups": {"aud-delorean": {
                   "lastQualificationTime": "2024-05-01T10:00:00Z", "status": "realized",
                   "createdAt": 1648553325000, "updatedAt": 1648553330000,
                   "mappingCreatedAt": 1713014970000, "mappingUpdatedAt": 1713014970000,
                   "name": "Customer with DeLorean Cars"}}},
               "identityMap": {"email": [{"id": "john.doe@acme.com"}], "ecid": [{"id": "1457"}]}}


EXPORT = {"id": "a" * 64, "sequence": 3, "at": 1714557600000, "triggers": ["audience", "identity"]}


def test_spec_samples_validate():
    jsonschema.validate(DOCUMENTED_UPDATE, load_schema("profile_update.schema.json"))
    jsonschema.validate({"profileId": "p-2", "timestamp": 1714557600000}, load_schema("profile_update.schema.json"))
    jsonschema.validate(DOCUMENTED_RECORD, load_schema("export_record.schema.json"))
    jsonschema.validate({**DOCUMENTED_RECORD, "_export": EXPORT}, load_schema("export_record.schema.json"))


def changed(doc, path, value):
    """A deep copy of ``doc`` with the key at ``path`` set (or removed with value=None)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = path
    node = doc
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


UPS = ("segmentMembership", "ups", "aud-delorean")


@pytest.mark.parametrize("schema,doc", [
    ("profile_update", changed(DOCUMENTED_UPDATE, ("profileId",), None)),
    ("profile_update", changed(DOCUMENTED_UPDATE, ("timestamp",), None)),
    ("profile_update", changed(DOCUMENTED_UPDATE, ("timestamp",), True)),
    ("profile_update", changed(DOCUMENTED_UPDATE, ("identityMap", "email"), [{"value": "x"}])),
    ("profile_update", changed(DOCUMENTED_UPDATE, ("attributes",), ["x"])),
    ("export_record", changed(DOCUMENTED_RECORD, UPS + ("status",), "existing")),
    ("export_record", changed(DOCUMENTED_RECORD, UPS + ("lastQualificationTime",), "2024-05-01T10:00:00.000Z")),
    ("export_record", changed(DOCUMENTED_RECORD, UPS + ("createdAt",), "2022-03-29")),
    ("export_record", changed(DOCUMENTED_RECORD, UPS + ("lastQualificationTime",), None)),
    ("export_record", changed(DOCUMENTED_RECORD, ("identityMap", "email"), [{"id": 5}])),
    ("export_record", changed(DOCUMENTED_RECORD, ("segmentMembership", "ups"), None)),
    ("export_record", {**DOCUMENTED_RECORD, "_export": {**EXPORT, "triggers": ["timer"]}}),
    ("export_record", {**DOCUMENTED_RECORD, "_export": {**EXPORT, "sequence": -1}}),
    ("export_record", {**DOCUMENTED_RECORD, "_export": {k: v for k, v in EXPORT.items() if k != "id"}}),
])
def test_malformed_updates_and_records_are_rejected(schema, doc):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, load_schema(f"{schema}.schema.json"))


def test_avro_schema_documents_json_encoded_objects():
    import fastavro
    avsc = load_schema("profile_update.avsc")
    fastavro.parse_schema(avsc)
    assert "JSON" in avsc["doc"]
    fields = {f["name"]: f["type"] for f in avsc["fields"]}
    assert fields["timestamp"] == ["string", "long"] and fields["attributes"] == fields["event"] == ["null", "string"]


def test_avro_schema_parses_and_round_trips(tmp_path):
    from pipelines.sample_data import write_avro_updates
    from transforms.inputs import read_avro_updates
    path = write_avro_updates(str(tmp_path / "u.avro"), [DOCUMENTED_UPDATE])
    [update] = list(read_avro_updates(path))
    assert update.attributes == DOCUMENTED_UPDATE["attributes"] and update.event["timestamp"] == 1714557600000


@pytest.mark.parametrize("name", ["config.schema.json", "export_record.schema.json", "profile_update.schema.json"])
def test_schemas_are_valid_draft_2020_12(name):
    jsonschema.Draft202012Validator.check_schema(load_schema(name))
