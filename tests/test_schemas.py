"""The schemas in schemas/ agree with the loader, the README/SPEC samples and the formatter."""
import datetime
import json

import jsonschema
import pytest
import yaml

from schemas import load_schema
from transforms.config import config_from_dict

ENV = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}


def as_json(doc):
    """YAML gives datetimes for unquoted timestamps; the schema sees them as the text they were."""
    return json.loads(json.dumps(doc, default=lambda v: v.isoformat() if isinstance(v, (datetime.date, datetime.datetime)) else v))


@pytest.mark.parametrize("path", ["tests/data/config_spec_example.yaml", "examples/config.yaml"])
def test_documented_configs_validate_and_load(path):
    doc = yaml.safe_load(open(path))
    jsonschema.validate(as_json(doc), load_schema("config.schema.json"))
    config_from_dict(doc, path.rsplit("/", 1)[0], ENV)


@pytest.mark.parametrize("change", [
    lambda d: d["destination"].update(streem="x"),
    lambda d: d["destination"].pop("region"),
    lambda d: d["merge_policies"][0].update(type="newest"),
    lambda d: d["audiences"][0].update(upload={"path": "v.csv", "column": "e", "namespace": "email"}),
    lambda d: d["destination"]["retry"].update(max_retries="2"),
])
def test_invalid_configs_are_rejected_by_schema_and_loader(change):
    from transforms.config import ConfigError
    doc = yaml.safe_load(open("examples/config.yaml"))
    change(doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(as_json(doc), load_schema("config.schema.json"))
    with pytest.raises(ConfigError):
        config_from_dict(doc, "examples", ENV)


SPEC_UPDATE = {"profileId": "p-1", "timestamp": "2024-05-01T10:00:00Z", "datasetId": "crm",
               "identityMap": {"email": [{"id": "john@acme.com"}], "ecid": [{"id": "1457"}]},
               "identityRemovals": {"ecid": ["1457"]},
               "attributes": {"person": {"name": {"firstName": "John"}}, "loyalty": {"points": None}},
               "event": {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 120.5}}}}

SPEC_RECORD = {"person": {"name": {"firstName": "John", "lastName": "Doe"}, "birthDate": "1985-10-26"},
               "personalEmail": {"address": "john.doe@acme.com"},
               "segmentMembership": {"ups": {"aud-delorean": {
                   "lastQualificationTime": "2024-05-01T10:00:00Z", "status": "realized",
                   "createdAt": 1648553325000, "updatedAt": 1648553330000,
                   "mappingCreatedAt": 1713014970000, "mappingUpdatedAt": 1713014970000,
                   "name": "Customer with DeLorean Cars"}}},
               "identityMap": {"email": [{"id": "john.doe@acme.com"}], "ecid": [{"id": "1457"}]}}


def test_spec_samples_validate():
    jsonschema.validate(SPEC_UPDATE, load_schema("profile_update.schema.json"))
    jsonschema.validate(SPEC_RECORD, load_schema("export_record.schema.json"))
    bad = json.loads(json.dumps(SPEC_RECORD))
    bad["segmentMembership"]["ups"]["aud-delorean"]["status"] = "existing"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, load_schema("export_record.schema.json"))


def test_avro_schema_parses_and_round_trips(tmp_path):
    from bench.datagen import write_avro_updates
    from transforms.inputs import read_avro_updates
    path = write_avro_updates(str(tmp_path / "u.avro"), [SPEC_UPDATE])
    [update] = list(read_avro_updates(path))
    assert update.attributes == SPEC_UPDATE["attributes"] and update.event["timestamp"] == 1714557600000
