"""The command lines with a config that uses every key, activation controls included: validate,
a streaming replay and a backfill to files, as subprocesses; config mistakes of the activation
section as one line per error."""
import glob
import hashlib
import json
import os
import subprocess
import sys

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from schemas import load_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = 1_714_557_600_000      # 2024-05-01T10:00:00Z
H = 3_600_000
EXPIRES = "2024-05-03T00:00:00Z"
EXPIRES_MS = 1_714_694_400_000


def run(module, *args):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                                   RECORD_BYTES="2097152"))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def full_config(tmp_path, **activation):
    """examples/config.yaml with every optional key set."""
    doc = yaml.safe_load(open(os.path.join(ROOT, "examples", "config.yaml")))
    (tmp_path / "vip.csv").write_text("email\nvip@x\n")
    doc["destination"].update(
        endpoint_url="http://127.0.0.1:9", dead_letter="./dl", include_segment_names=True,
        include_segment_timestamps=True, include_export_metadata=True, max_record_bytes="${RECORD_BYTES}",
        credentials={"access_key_id": "${AWS_ACCESS_KEY_ID}", "secret_access_key": "${AWS_SECRET_ACCESS_KEY}",
                     "session_token": "${AWS_SECRET_ACCESS_KEY}"})
    doc["audiences"][0]["description"] = "Owners of a DeLorean born before 1990"
    doc["audiences"][3]["merge_policy"] = "mp-default"
    doc["audiences"][3]["upload"]["expires_at"] = EXPIRES
    doc["activation"] = {"marketing_action": "email-targeting",
                         "consent": 'consents.marketing.email.val in ["y", "dy"]',
                         "triggers": ["audience", "identity"],
                         "data_usage": {"labels": {"personalEmail.address": ["C2"], "person.birthDate": ["C5"]},
                                        "forbidden": ["C9"]}, **activation}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def records_in(directory):
    return [json.loads(line) for f in sorted(glob.glob(os.path.join(directory, "records-*.jsonl"))) for line in open(f)]


def consent(value):
    return {"consents": {"marketing": {"email": {"val": value}}}}


def update(pid, t, attributes=None, ids=None):
    doc = {"profileId": pid, "timestamp": t, "attributes": attributes or {}}
    if ids:
        doc["identityMap"] = {"email": [{"id": i} for i in ids]}
    return json.dumps(doc)


DELOREAN = {"vehicle": {"make": "DeLorean"}, "person": {"birthDate": "1980-01-01", "name": {"firstName": "Marty"}}}


def test_validate_streaming_and_backfill_with_every_key(tmp_path):
    config = full_config(tmp_path)
    proc = run("pipelines.validate", "--config", config)
    assert proc.returncode == 0 and proc.stdout.startswith("OK: "), proc.stderr

    updates = tmp_path / "updates.jsonl"
    updates.write_text("\n".join([
        update("p-1", T0, {**DELOREAN, **consent("y")}),              # opt-in
        update("p-1", T0 + H, {"person": {"name": {"firstName": "Doc"}}}),   # attribute trigger off
        update("p-1", T0 + 2 * H, consent("n")),                      # opt-out
        update("p-2", T0, consent("dy"), ids=["vip@x"]),              # upload member, expires
        update("p-3", T0, DELOREAN),                                  # never consents: withheld
    ]) + "\n")
    proc = run("pipelines.streaming", "--config", config, "--input", str(updates), "--until", "2024-06-01T00:00:00Z",
               "--output", str(tmp_path / "stream"))
    assert proc.returncode == 0, proc.stderr
    records = sorted(records_in(tmp_path / "stream"), key=lambda r: (r["partitionKey"], r["data"]["_export"]["sequence"]))
    schema = load_schema("export_record.schema.json")
    for r in records:
        jsonschema.validate(r["data"], schema)
    summary = [(r["partitionKey"], {a: e["status"] for a, e in r["data"]["segmentMembership"]["ups"].items()},
                r["data"]["_export"]["triggers"], r["data"]["_export"]["sequence"]) for r in records]
    assert summary == [
        ("p-1", {"aud-delorean": "realized", "aud-sci-fi": "realized"}, ["consent"], 1),
        ("p-1", {"aud-delorean": "exited"}, ["consent"], 2),
        ("p-2", {"aud-vip-upload": "realized"}, ["consent"], 1),
        ("p-2", {"aud-vip-upload": "exited"}, ["expiry"], 2),
    ]
    optout = records[1]["data"]
    assert list(optout) == ["segmentMembership", "identityMap", "_export"]
    assert optout["segmentMembership"]["ups"]["aud-delorean"]["name"] == "Customer with DeLorean Cars"
    assert records[3]["data"]["segmentMembership"]["ups"]["aud-vip-upload"]["lastQualificationTime"] == EXPIRES
    assert records[0]["data"]["_export"]["id"] == hashlib.sha256(b"p-1/mp-default/1").hexdigest()

    snapshot = tmp_path / "snapshot.parquet"
    pq.write_table(pa.table({
        "profileId": ["s-1", "s-2", "s-3"],
        "timestamp": pa.array([T0] * 3, pa.timestamp("ms", tz="UTC")),
        "identityMap": pa.array([[("email", [{"id": "vip@x"}])]] * 3,
                                pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string())])))),
        "vehicle": [{"make": "DeLorean"}] * 3,
        "person": [{"birthDate": "1980-01-01"}] * 3,
        "consents": [consent("y")["consents"], consent("n")["consents"], None]}), str(snapshot))
    for as_of, members in (("2024-05-02T00:00:00Z", {"aud-delorean", "aud-vip-upload"}),
                           (EXPIRES, {"aud-delorean"})):        # at expires_at the upload has no members
        out = tmp_path / f"backfill-{as_of[:10]}"
        proc = run("pipelines.backfill", "--config", config, "--snapshot", str(snapshot), "--as_of", as_of,
                   "--output", str(out))
        assert proc.returncode == 0, proc.stderr
        got = records_in(out)
        assert [r["partitionKey"] for r in got] == ["s-1"]
        assert {a for a in got[0]["data"]["segmentMembership"]["ups"]} >= members
        assert "aud-vip-upload" in got[0]["data"]["segmentMembership"]["ups"] or members == {"aud-delorean"}
        export = got[0]["data"]["_export"]
        assert export["sequence"] == 0 and export["triggers"] == ["backfill"]
        assert export["id"] == hashlib.sha256(
            f"s-1/mp-default/backfill@{export['at']}".encode()).hexdigest()


@pytest.mark.parametrize("activation,errors", [
    ({"consent": "inSegment(\"aud-delorean\")", "triggers": ["identity", "identity"],
      "data_usage": {"labels": {"personalEmail": ["C2"]}, "forbidden": ["C2"]}},
     ["activation.consent: the consent rule reads attributes only, not inSegment",
      "activation.triggers: audience cannot be left out",
      "activation.triggers[1]: 'identity' is listed twice",
      "mapping.attributes[3]: personalEmail.address carries label C2, which marketing action 'email-targeting' forbids"]),
])
def test_activation_mistakes_are_one_line_each(tmp_path, activation, errors):
    proc = run("pipelines.validate", "--config", full_config(tmp_path, **activation))
    assert proc.returncode == 2
    lines = [line.strip() for line in proc.stderr.strip().splitlines()[1:]]
    assert sorted(lines) == sorted(errors), proc.stderr
