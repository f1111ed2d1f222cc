"""Config loading and validation (docs/semantics.md#configuration): every error kind with its field path, all at once,
``${NAME}`` expansion, paths resolved against the config's folder, secrets never shown."""
import copy
import json
import logging
import os

import pytest
import yaml

from transforms.config import ConfigError, ConfigFileError, Secret, config_from_dict, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-super-secret"}
SECRET = ENV["AWS_SECRET_ACCESS_KEY"]
with open(os.path.join(EXAMPLES, "config.yaml")) as _f:
    EXAMPLE = yaml.safe_load(_f)


def base():
    """examples/config.yaml with credentials from the environment (audiences: delorean, sci-fi
    (inSegment delorean), big-spenders, vip-upload on mp-crm-first)."""
    doc = copy.deepcopy(EXAMPLE)
    doc["destination"]["credentials"] = {"access_key_id": "${AWS_ACCESS_KEY_ID}",
                                         "secret_access_key": "${AWS_SECRET_ACCESS_KEY}"}
    return doc


def errors_of(doc, environ=ENV):
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, EXAMPLES, environ, source="c.yaml")
    return info.value.errors


DELETE = object()


def edit(path, value):
    """A document edit: set (or, with DELETE, remove) the key at a path of keys and indexes."""
    def apply(doc):
        *parents, last = path
        node = doc
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        return doc
    return apply


CASES = [  # (name, edit, the error it must produce)
    ("unknown key", edit(("destination", "streem"), "x"), "destination.streem: unknown key"),
    ("unknown nested key", edit(("destination", "retry", "tries"), 3), "destination.retry.tries: unknown key"),
    ("unknown top-level key", edit(("mappings",), {}), "mappings: unknown key"),
    ("unknown audience key", edit(("audiences", 2, "rules"), "x"), "audiences[2].rules: unknown key"),
    ("wrong type bool for int", edit(("destination", "retry", "max_retries"), True), "destination.retry.max_retries: expected an integer, got a boolean"),
    ("wrong type flag", edit(("destination", "include_segment_names"), "yes"), "destination.include_segment_names: expected true or false, got a string"),
    ("wrong type list", edit(("mapping", "attributes"), "person.name"), "mapping.attributes: expected a list, got a string"),
    ("wrong type string", edit(("mapping", "audiences", 0, "id"), 5), "mapping.audiences[0].id: expected a string, got an integer"),
    ("wrong type section", edit(("alerts",), [600]), "alerts: expected an object, got a list"),
    ("missing required", edit(("destination", "stream"), DELETE), "destination.stream: required field missing"),
    ("empty required", edit(("destination", "region"), " "), "destination.region: must not be empty"),
    ("missing audience name", edit(("audiences", 0, "name"), DELETE), "audiences[0].name: required field missing"),
    ("missing policy type", edit(("merge_policies", 1, "type"), DELETE), "merge_policies[1].type: required field missing"),
    ("missing section", edit(("mapping",), DELETE), "mapping: required field missing"),
    ("bad ${NAME}", edit(("destination", "region"), "us-${NO_SUCH_VAR}"), "destination.region: environment variable NO_SUCH_VAR is not set"),
    ("bad ${NAME} in a secret", edit(("destination", "credentials", "secret_access_key"), "${MISSING_SECRET}"), "destination.credentials.secret_access_key: environment variable MISSING_SECRET is not set"),
    ("duplicate audience id", edit(("audiences", 1, "id"), "aud-delorean"), "audiences[1].id: duplicate audience id 'aud-delorean'"),
    ("duplicate policy id", edit(("merge_policies", 1, "id"), "mp-default"), "merge_policies[1].id: duplicate merge policy id 'mp-default'"),
    ("mapped audience not defined", edit(("mapping", "audiences", 0, "id"), "aud-nope"), "mapping.audiences[0].id: mapped audience 'aud-nope' is not defined in audiences"),
    ("mapped twice", edit(("mapping", "audiences", 1, "id"), "aud-delorean"), "mapping.audiences[1].id: audience 'aud-delorean' is mapped twice"),
    ("unknown merge policy", edit(("audiences", 0, "merge_policy"), "mp-nope"), "audiences[0].merge_policy: unknown merge policy 'mp-nope'"),
    ("bad merge policy type", edit(("merge_policies", 0, "type"), "newest"), "merge_policies[0].type: unknown merge policy type 'newest' (expected timestamp_ordered or dataset_precedence)"),
    ("no merge policy", edit(("merge_policies",), []), "merge_policies: at least one merge policy is needed"),
    ("two defaults", edit(("merge_policies", 1, "default"), True), "merge_policies: exactly one policy must have default: true"),
    ("no default", edit(("merge_policies", 0, "default"), False), "merge_policies: exactly one policy must have default: true"),
    ("precedence without datasets", edit(("merge_policies", 1, "datasets"), DELETE), "merge_policies[1].datasets: dataset_precedence needs the datasets in precedence order"),
    ("rule syntax (real rules module)", edit(("audiences", 0, "rule"), 'vehicle.make = "DeLorean" adn true'), "audiences[0].rule: unexpected token 'adn' at column 27"),
    ("inSegment unknown", edit(("audiences", 1, "rule"), 'inSegment("aud-ghost")'), "audiences[1].rule: inSegment references unknown audience 'aud-ghost'"),
    ("inSegment cycle", edit(("audiences", 0, "rule"), 'inSegment("aud-sci-fi")'), "audiences[0].rule: inSegment cycle: aud-delorean -> aud-sci-fi -> aud-delorean"),
    ("inSegment across policies", edit(("audiences", 1, "rule"), 'inSegment("aud-vip-upload")'), "audiences[1].rule: inSegment('aud-vip-upload') names an audience of merge policy 'mp-crm-first', not 'mp-default'"),
    ("rule and upload", edit(("audiences", 0, "upload"), {"path": "vip.csv", "column": "email", "namespace": "email"}), "audiences[0]: has both a rule and an upload; give one"),
    ("neither rule nor upload", edit(("audiences", 1, "rule"), DELETE), "audiences[1]: needs a rule or an upload"),
    ("incomplete upload", edit(("audiences", 3, "upload", "column"), DELETE), "audiences[3].upload.column: required field missing"),
    ("missing upload file", edit(("audiences", 3, "upload", "path"), "missing.csv"), "audiences[3].upload: " + os.path.join(EXAMPLES, "missing.csv") + ": cannot read upload file: No such file or directory"),
    ("bad timestamp", edit(("audiences", 0, "created_at"), "yesterday"), "audiences[0].created_at: not an ISO-8601 timestamp: 'yesterday'"),
    ("bad mapping timestamp", edit(("mapping", "audiences", 0, "mapped_at"), True), "mapping.audiences[0].mapped_at: expected ISO-8601 text or epoch milliseconds, got a boolean"),
    ("negative retries", edit(("destination", "retry", "max_retries"), -1), "destination.retry.max_retries: must be at least 0, got -1"),
    ("negative delay", edit(("destination", "retry", "base_delay_ms"), -5), "destination.retry.base_delay_ms: must be at least 0, got -5"),
    ("retry bounds", edit(("destination", "retry", "max_delay_ms"), 10), "destination.retry.max_delay_ms: must be at least base_delay_ms (100)"),
    ("max events", edit(("evaluation", "max_events_per_profile"), 0), "evaluation.max_events_per_profile: must be at least 1, got 0"),
    ("float where int", edit(("evaluation", "max_events_per_profile"), 10.5), "evaluation.max_events_per_profile: expected an integer, got a number"),
    # activation controls, export metadata, record size, upload expiry
    ("consent syntax", edit(("activation",), {"marketing_action": "m", "consent": 'c.val = "y" adn true'}), "activation.consent: unexpected token 'adn' at column 13"),
    ("consent inSegment", edit(("activation",), {"marketing_action": "m", "consent": 'inSegment("aud-delorean")'}), "activation.consent: the consent rule reads attributes only, not inSegment"),
    ("consent events", edit(("activation",), {"marketing_action": "m", "consent": "xEvent[eventType = \"x\"].exists()"}), "activation.consent: the consent rule reads attributes only, not xEvent"),
    ("consent needs a marketing action", edit(("activation",), {"consent": 'c.val = "y"'}), "activation.marketing_action: required with consent"),
    ("data usage needs a marketing action", edit(("activation",), {"data_usage": {"labels": {}, "forbidden": []}}), "activation.marketing_action: required with data_usage"),
    ("audience trigger left out", edit(("activation",), {"triggers": ["identity"]}), "activation.triggers: audience cannot be left out"),
    ("unknown trigger", edit(("activation",), {"triggers": ["audience", "attributes"]}), "activation.triggers[1]: unknown trigger 'attributes' (expected audience, identity or attribute)"),
    ("repeated trigger", edit(("activation",), {"triggers": ["audience", "identity", "identity"]}), "activation.triggers[2]: 'identity' is listed twice"),
    ("unknown activation key", edit(("activation",), {"consents": "x"}), "activation.consents: unknown key"),
    ("forbidden label", edit(("activation",), {"marketing_action": "email-targeting", "data_usage": {"labels": {"personalEmail.address": ["C2"]}, "forbidden": ["C2"]}}),
     "mapping.attributes[3]: personalEmail.address carries label C2, which marketing action 'email-targeting' forbids"),
    ("forbidden label on a parent", edit(("activation",), {"marketing_action": "m", "data_usage": {"labels": {"person": ["C5"]}, "forbidden": ["C5"]}}),
     "mapping.attributes[2]: person.birthDate carries label C5, which marketing action 'm' forbids"),
    ("labels must be lists", edit(("activation",), {"marketing_action": "m", "data_usage": {"labels": {"person": "C5"}}}), "activation.data_usage.labels.person: expected a list, got a string"),
    ("record size too small", edit(("destination", "max_record_bytes"), 1000), "destination.max_record_bytes: must be at least 1024, got 1000"),
    ("record size too large", edit(("destination", "max_record_bytes"), 10485761), "destination.max_record_bytes: must be at most 10485760, got 10485761"),
    ("metadata flag", edit(("destination", "include_export_metadata"), "yes"), "destination.include_export_metadata: expected true or false, got a string"),
    ("bad expiry", edit(("audiences", 3, "upload", "expires_at"), "soon"), "audiences[3].upload.expires_at: not an ISO-8601 timestamp: 'soon'"),
]


@pytest.mark.parametrize("name,change,expected", CASES, ids=[c[0] for c in CASES])
def test_each_error_names_its_field(name, change, expected):
    assert expected in errors_of(change(base()))


INDEPENDENT = ["unknown key", "wrong type bool for int", "missing audience name", "bad ${NAME}",
               "precedence without datasets", "mapped audience not defined", "bad timestamp", "max events",
               "rule syntax (real rules module)", "inSegment across policies", "forbidden label",
               "record size too small", "bad expiry"]


def test_every_activation_key_loads():
    doc = base()
    doc["activation"] = {"marketing_action": "email-targeting", "consent": 'consents.marketing.email.val in ["y", "dy"]',
                         "triggers": ["identity", "audience"],
                         "data_usage": {"labels": {"personalEmail.address": ["C2"], "person.birthDate": ["C5"]},
                                        "forbidden": ["C9"]}}
    doc["destination"].update(include_export_metadata=True, max_record_bytes="${RECORD_BYTES}")
    doc["audiences"][3]["upload"]["expires_at"] = "2024-06-01T00:00:00Z"
    config = config_from_dict(doc, EXAMPLES, dict(ENV, RECORD_BYTES="2097152"))
    a = config.activation
    assert (a.marketing_action, a.consent, a.triggers) == (
        "email-targeting", 'consents.marketing.email.val in ["y", "dy"]', ("audience", "identity"))
    assert a.data_usage.labels == (("personalEmail.address", ("C2",)), ("person.birthDate", ("C5",)))
    assert a.data_usage.forbidden == ("C9",)
    assert config.destination.include_export_metadata and config.destination.max_record_bytes == 2097152
    assert config.audience("aud-vip-upload").upload.expires_at_ms == 1717200000000


def test_activation_defaults_change_nothing():
    config = config_from_dict(base(), EXAMPLES, ENV)
    assert config.activation.consent is None and config.activation.triggers == ("audience", "identity", "attribute")
    assert not config.destination.include_export_metadata and config.destination.max_record_bytes == 1048576
    assert config.audience("aud-vip-upload").upload.expires_at_ms is None


def test_all_errors_are_reported_at_once():
    cases = {name: (change, expected) for name, change, expected in CASES}
    doc = base()
    for name in INDEPENDENT:
        doc = cases[name][0](doc)
    assert sorted(errors_of(doc)) == sorted(cases[name][1] for name in INDEPENDENT)


@pytest.mark.parametrize("doc,got", [(None, "null"), ([], "a list"), ("destination", "a string")])
def test_a_document_that_is_not_an_object_is_one_error(doc, got):
    assert errors_of(doc) == [f"config: expected an object with destination, mapping, merge_policies and audiences, got {got}"]


def test_example_loads_with_defaults_and_resolved_paths():
    config = config_from_dict(base(), EXAMPLES, ENV)
    d = config.destination
    assert (d.name, d.region, d.stream, d.endpoint_url) == ("Kinesis - marketing", "us-east-2", "profile-exports", None)
    assert d.dead_letter == os.path.join(EXAMPLES, "dead-letter")
    assert d.credentials.secret_access_key.reveal() == SECRET and d.credentials.session_token is None
    assert config.audience("aud-sci-fi").merge_policy == "mp-default"          # the default policy
    assert config.audience("aud-vip-upload").upload.path == os.path.join(EXAMPLES, "vip.csv")
    assert config.mapping.audiences[0].mapped_at_ms == 1713014970000
    assert config.audience("aud-delorean").created_at_ms == 1648553325000
    assert config.merge_policy("mp-crm-first").datasets == ("crm", "loyalty")


def test_defaults_of_spec_3():
    doc = base()
    for section in ("alerts", "evaluation"):
        del doc[section]
    for key in ("retry", "dead_letter", "include_segment_names", "include_segment_timestamps", "credentials"):
        del doc["destination"][key]
    config = config_from_dict(doc, EXAMPLES, {})
    d = config.destination
    assert (d.retry.max_retries, d.retry.base_delay_ms, d.retry.max_delay_ms) == (2, 100, 5000)
    assert (d.include_segment_names, d.include_segment_timestamps, d.credentials) == (False, False, None)
    assert d.dead_letter == os.path.join(EXAMPLES, "dead-letter")
    assert config.alerts.latency_p95_seconds == 600 and config.evaluation.max_events_per_profile == 1000


def test_a_single_policy_is_the_default_without_the_flag():
    doc = base()
    doc["merge_policies"] = [{"id": "mp-only", "type": "timestamp_ordered"}]
    for a in doc["audiences"]:
        a.pop("merge_policy", None)
    config = config_from_dict(doc, EXAMPLES, ENV)
    assert config.merge_policies[0].default and {a.merge_policy for a in config.audiences} == {"mp-only"}


@pytest.mark.parametrize("folder,dead_letter,expected", [
    ("/cfg", "dl", "/cfg/dl"), ("/cfg", "../dl", "/dl"), ("/cfg", "/var/dl", "/var/dl"),
    ("/cfg", "gs://bucket/dl", "gs://bucket/dl"), ("/cfg", "s3://bucket/x/../dl", "s3://bucket/x/../dl"),
    # a config read from object storage: relative paths stay in its bucket
    ("s3://bucket/team/cfg", "dl", "s3://bucket/team/cfg/dl"), ("s3://bucket/team/cfg", "../dl", "s3://bucket/team/dl"),
    ("gs://bucket/cfg", "../../dl", "gs://bucket/dl"), ("gs://bucket", "./dl/", "gs://bucket/dl"),
    ("s3://bucket/cfg", "/var/dl", "/var/dl"),
])
def test_dead_letter_resolves_against_the_config_folder_and_urls_stay(folder, dead_letter, expected):
    doc = base()
    doc["destination"]["dead_letter"] = dead_letter
    doc["audiences"].pop()                          # the upload CSV is not under /cfg
    doc["mapping"]["audiences"] = [m for m in doc["mapping"]["audiences"] if m["id"] != "aud-vip-upload"]
    assert config_from_dict(doc, folder, ENV).destination.dead_letter == expected


def test_environment_values_reach_strings_numbers_and_times():
    doc = base()
    doc["destination"]["stream"] = "exports-${STAGE}"
    doc["destination"]["retry"]["max_retries"] = "${RETRIES}"
    doc["audiences"][0]["created_at"] = "${CREATED}"
    doc["mapping"]["attributes"].append("${EXTRA_ATTR}")
    doc["destination"]["credentials"]["session_token"] = "${AWS_SESSION_TOKEN}"
    env = dict(ENV, STAGE="prod", RETRIES="5", CREATED="2022-03-29T11:28:45Z", EXTRA_ATTR="loyalty.points",
               AWS_SESSION_TOKEN="token-value")
    config = config_from_dict(doc, EXAMPLES, env)
    assert config.destination.stream == "exports-prod" and config.destination.retry.max_retries == 5
    assert config.audience("aud-delorean").created_at_ms == 1648553325000
    assert config.mapping.attributes[-1] == "loyalty.points"
    assert config.destination.credentials.session_token == Secret("token-value")


def test_environment_defaults_to_os_environ(tmp_path, monkeypatch):
    doc = base()
    doc["destination"]["stream"] = "${STREAM_FROM_ENV}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "vip.csv").write_text("email\n")
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAM_FROM_ENV", "from-env")
    assert load_config(str(path)).destination.stream == "from-env"
    monkeypatch.delenv("STREAM_FROM_ENV")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.errors == ["destination.stream: environment variable STREAM_FROM_ENV is not set"]


def test_load_config_reads_json_and_yaml(tmp_path):
    (tmp_path / "vip.csv").write_text("email\nx@y.z\n")
    (tmp_path / "c.json").write_text(json.dumps(base(), default=str))
    config = load_config(str(tmp_path / "c.json"), ENV)
    assert config.destination.dead_letter == str(tmp_path / "dead-letter") and config.source == str(tmp_path / "c.json")
    assert config.audience("aud-delorean").created_at_ms == 1648553325000


@pytest.mark.parametrize("content,message", [
    (None, "cannot read config file: No such file or directory"),
    ("destination: [unclosed\n", "not valid YAML or JSON at line 1, column 23"),
    ('{"destination": "x"', "not valid YAML or JSON at line 1, column 20: expected ',' or '}'"),
])
def test_an_unreadable_file_is_one_error(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigFileError) as info:
        load_config(str(path), ENV)
    assert len(info.value.errors) == 1 and info.value.errors[0].startswith(message)
    assert str(info.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("credentials", [
    {"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": SECRET, "extra": SECRET},
    {"access_key_id": ["AKIAEXAMPLEKEYID"], "secret_access_key": {"v": SECRET}},
    {"access_key_id": 12, "secret_access_key": [SECRET], "session_token": {SECRET: SECRET}},
    {"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}${NOPE}"},
    [SECRET],
    SECRET,
], ids=["unknown key beside", "wrong types", "nested wrong types", "missing variable beside", "list", "string"])
def test_no_secret_in_errors_repr_or_logs(credentials, caplog):
    caplog.set_level(logging.DEBUG)
    doc = base()
    doc["destination"]["credentials"] = credentials
    doc["destination"]["stream"] = 5                      # another error beside the secrets
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, EXAMPLES, ENV)
    text = str(info.value) + repr(info.value) + "\n".join(info.value.errors) + caplog.text
    assert "destination.stream: expected a string, got an integer" in info.value.errors
    assert any(e.startswith("destination.credentials") for e in info.value.errors)
    assert SECRET not in text and ENV["AWS_ACCESS_KEY_ID"] not in text


def test_secret_never_prints(caplog):
    caplog.set_level(logging.DEBUG)
    doc = base()
    doc["destination"]["credentials"]["session_token"] = "session-token-secret"
    config = config_from_dict(doc, EXAMPLES, ENV)
    logging.getLogger("test").info("loaded %s %r", config, config.destination.credentials)
    creds = config.destination.credentials
    shown = repr(config) + str(config.destination) + f"{creds.secret_access_key}" + caplog.text
    for value in (SECRET, ENV["AWS_ACCESS_KEY_ID"], "session-token-secret"):
        assert value not in shown
    assert creds.session_token.reveal() == "session-token-secret" and repr(Secret("x")) == "Secret('***')"


def test_every_insegment_mistake_is_reported_with_its_rule_path():
    doc = base()
    doc["audiences"][1]["rule"] = 'inSegment("aud-ghost") or inSegment("aud-phantom")'
    doc["audiences"][2]["rule"] = 'inSegment("aud-vip-upload")'
    assert sorted(errors_of(doc)) == [
        "audiences[1].rule: inSegment references unknown audience 'aud-ghost'",
        "audiences[1].rule: inSegment references unknown audience 'aud-phantom'",
        "audiences[2].rule: inSegment('aud-vip-upload') names an audience of merge policy 'mp-crm-first', not 'mp-default'",
    ]
