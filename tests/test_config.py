"""Config loading and validation (SPEC 3): every error kind, all at once, secrets never shown."""
import logging

import pytest
import yaml

from pipelines import validate
from transforms.config import ConfigError, Secret, config_from_dict, load_config

EXAMPLE = "examples/config.yaml"
ENV = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-super-secret"}


def base():
    doc = yaml.safe_load(open(EXAMPLE))
    doc["destination"]["credentials"] = {"access_key_id": "${AWS_ACCESS_KEY_ID}",
                                         "secret_access_key": "${AWS_SECRET_ACCESS_KEY}"}
    return doc


def errors_of(doc, environ=ENV):
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, "examples", environ, source="c.yaml")
    return info.value.errors


def test_example_loads_with_defaults_and_resolved_paths():
    config = config_from_dict(base(), "examples", ENV)
    d = config.destination
    assert (d.region, d.stream, d.retry.max_retries, d.dead_letter) == ("us-east-2", "profile-exports", 2, "examples/dead-letter")
    assert d.credentials.secret_access_key.reveal() == ENV["AWS_SECRET_ACCESS_KEY"]
    assert config.audience("aud-sci-fi").merge_policy == "mp-default"      # the default policy
    assert config.audience("aud-vip-upload").upload.path == "examples/vip.csv"
    assert config.mapping.audiences[0].mapped_at_ms == 1713014970000
    assert config.audience("aud-delorean").created_at_ms == 1648553325000
    assert config.alerts.latency_p95_seconds == 600 and config.evaluation.max_events_per_profile == 1000


def edit(path, value):
    """A document edit: set (or with value=DELETE remove) the key at a dotted/indexed path."""
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


DELETE = object()

CASES = [
    ("unknown key", edit(("destination", "streem"), "x"), "destination.streem: unknown key"),
    ("unknown nested key", edit(("destination", "retry", "tries"), 3), "destination.retry.tries: unknown key"),
    ("wrong type", edit(("destination", "retry", "max_retries"), True), "destination.retry.max_retries: expected an integer, got a boolean"),
    ("wrong type flag", edit(("destination", "include_segment_names"), "yes"), "destination.include_segment_names: expected true or false, got a string"),
    ("wrong type list", edit(("mapping", "attributes"), "person.name"), "mapping.attributes: expected a list, got a string"),
    ("missing required", edit(("destination", "stream"), DELETE), "destination.stream: required field missing"),
    ("missing audience name", edit(("audiences", 0, "name"), DELETE), "audiences[0].name: required field missing"),
    ("bad ${NAME}", edit(("destination", "region"), "${NO_SUCH_VAR}"), "destination.region: environment variable NO_SUCH_VAR is not set"),
    ("duplicate audience id", edit(("audiences", 1, "id"), "aud-delorean"), "audiences[1].id: duplicate audience id 'aud-delorean'"),
    ("mapped audience not defined", edit(("mapping", "audiences", 0, "id"), "aud-nope"), "mapping.audiences[0].id: mapped audience 'aud-nope' is not defined in audiences"),
    ("unknown merge policy", edit(("audiences", 0, "merge_policy"), "mp-nope"), "audiences[0].merge_policy: unknown merge policy 'mp-nope'"),
    ("bad merge policy type", edit(("merge_policies", 0, "type"), "newest"), "merge_policies[0].type: unknown merge policy type 'newest' (expected timestamp_ordered or dataset_precedence)"),
    ("rule syntax", edit(("audiences", 0, "rule"), 'vehicle.make = "DeLorean" adn true'), "audiences[0].rule: unexpected token 'adn' at column 27"),
    ("inSegment unknown", edit(("audiences", 1, "rule"), 'inSegment("aud-ghost")'), "audiences: audience 'aud-sci-fi': inSegment of unknown audience 'aud-ghost'"),
    ("inSegment cycle", edit(("audiences", 0, "rule"), 'inSegment("aud-sci-fi")'), "audiences: inSegment cycle: aud-delorean -> aud-sci-fi -> aud-delorean"),
    ("inSegment across policies", edit(("audiences", 1, "rule"), 'inSegment("aud-vip-upload")'), "audiences: audience 'aud-sci-fi' (merge policy 'mp-default'): inSegment of 'aud-vip-upload' of another merge policy ('mp-crm-first')"),
    ("bad timestamp", edit(("audiences", 0, "created_at"), "yesterday"), "audiences[0].created_at: not an ISO-8601 timestamp: 'yesterday'"),
    ("rule and upload", edit(("audiences", 0, "upload"), {"path": "vip.csv", "column": "email", "namespace": "email"}), "audiences[0]: has both a rule and an upload; give one"),
    ("retry bounds", edit(("destination", "retry", "max_delay_ms"), 10), "destination.retry.max_delay_ms: must be at least base_delay_ms (100)"),
    ("negative retries", edit(("destination", "retry", "max_retries"), -1), "destination.retry.max_retries: must be at least 0, got -1"),
    ("two defaults", edit(("merge_policies", 1, "default"), True), "merge_policies: exactly one policy must have default: true, found 2"),
    ("precedence without datasets", edit(("merge_policies", 1, "datasets"), DELETE), "merge_policies[1].datasets: dataset_precedence needs the datasets in precedence order"),
    ("max events", edit(("evaluation", "max_events_per_profile"), 0), "evaluation.max_events_per_profile: must be at least 1, got 0"),
]


@pytest.mark.parametrize("name,change,expected", CASES, ids=[c[0] for c in CASES])
def test_each_error_names_its_field(name, change, expected):
    assert expected in errors_of(change(base()))


def test_all_errors_are_reported_at_once():
    doc = base()
    for _, change, _ in CASES[:11]:
        doc = change(doc)
    assert len(errors_of(doc)) >= 10


def test_missing_upload_file_is_a_config_error(tmp_path):
    doc = base()
    doc["audiences"][3]["upload"]["path"] = "missing.csv"
    assert any(e.startswith("audiences[3].upload: ") and "missing.csv" in e for e in errors_of(doc))


SECRET = ENV["AWS_SECRET_ACCESS_KEY"]


@pytest.mark.parametrize("credentials", [
    {"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": SECRET, "extra": SECRET},
    {"access_key_id": ["AKIA"], "secret_access_key": {"v": SECRET}},
    {"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}", "session_token": 12},
])
def test_no_secret_in_errors_repr_or_logs(credentials, caplog):
    caplog.set_level(logging.DEBUG)
    doc = base()
    doc["destination"]["credentials"] = credentials
    doc["destination"]["stream"] = 5                      # force an error beside the secrets
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, "examples", ENV)
    text = str(info.value) + repr(info.value) + caplog.text
    assert SECRET not in text and ENV["AWS_ACCESS_KEY_ID"] not in text


def test_secret_never_prints():
    config = config_from_dict(base(), "examples", ENV)
    shown = repr(config) + str(config.destination) + f"{config.destination.credentials.secret_access_key}"
    assert SECRET not in shown and ENV["AWS_ACCESS_KEY_ID"] not in shown
    assert repr(Secret("x")) == "Secret('***')"


def test_load_config_reads_yaml_and_json(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    import json
    (tmp_path / "vip.csv").write_text("email\nx@y.z\n")
    (tmp_path / "c.json").write_text(json.dumps(base(), default=str))
    assert load_config(str(tmp_path / "c.json")).destination.dead_letter == str(tmp_path / "dead-letter")
    (tmp_path / "bad.yaml").write_text("destination: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML or JSON at line \d+"):
        load_config(str(tmp_path / "bad.yaml"))


def test_validate_cli(tmp_path, capsys, monkeypatch):
    assert validate.main(["--config", EXAMPLE]) == 0
    assert capsys.readouterr().out.startswith("OK: examples/config.yaml: 4 audiences (3 mapped), 2 merge policies")
    doc = CASES[0][1](base())
    doc["destination"].pop("credentials")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "vip.csv").write_text("email\n")
    assert validate.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{path}: invalid config: 1 error(s)" and err[1].strip() == "destination.streem: unknown key"


def test_validate_cli_as_a_process_never_prints_a_traceback(tmp_path):
    import subprocess, sys
    (tmp_path / "c.yaml").write_text("{{{")
    proc = subprocess.run([sys.executable, "-m", "pipelines.validate", "--config", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "not valid YAML" in proc.stderr
