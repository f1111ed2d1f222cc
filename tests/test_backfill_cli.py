"""``python -m pipelines.backfill`` as a subprocess on a generated snapshot: the records under
``--output PATH`` are those the per-profile path (``AudienceSet.evaluate`` + ``RecordFormatter``)
makes of the same rows; audience selection, events, and one-line errors."""
import glob
import json
import os
import subprocess
import sys

import pytest
import yaml

from pipelines.sample_data import write_snapshot
from transforms.audiences import AudienceSet
from transforms.config import load_config
from transforms.record_format import RecordFormatter
from transforms.snapshot import iter_snapshot_batches, snapshot_profiles
from transforms.timeutil import parse_timestamp_ms

AS_OF = "2024-05-01T00:00:00Z"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "pipelines.backfill", *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A snapshot (2 row groups), events for some profiles, and a two-policy config."""
    d = tmp_path_factory.mktemp("backfill")
    snapshot = write_snapshot(str(d / "snap.parquet"), 2500, seed=5, with_membership=True, row_group_size=1500)
    with open(d / "events.jsonl", "w") as f:
        for i in range(0, 2500, 7):
            f.write(json.dumps({"profileId": f"p-{i}", "timestamp": "2024-04-20T10:00:00Z",
                                "eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 10}}}) + "\n")
    doc = {"destination": {"name": "t", "region": "us-east-2", "stream": "s", "dead_letter": str(d / "dl"),
                           "include_segment_names": True, "include_segment_timestamps": True},
           "mapping": {"attributes": ["person.name.firstName", "person.birthDate", "personalEmail.address"],
                       "audiences": [{"id": a, "mapped_at": "2024-04-13T13:29:30Z"}
                                     for a in ("aud-delorean", "aud-gold", "aud-buyers")]},
           "merge_policies": [{"id": "mp-default", "type": "timestamp_ordered", "default": True},
                              {"id": "mp-crm", "type": "dataset_precedence", "datasets": ["crm"]}],
           "audiences": [
               {"id": "aud-delorean", "name": "DeLorean", "created_at": "2022-03-29T11:28:45Z",
                "rule": 'vehicle.make = "DeLorean" and person.birthDate < date("1990-01-01")'},
               {"id": "aud-gold", "name": "Gold", "merge_policy": "mp-crm", "rule": 'loyalty.tier = "gold"'},
               {"id": "aud-rich", "name": "Rich", "rule": "loyalty.points > 8000"},
               {"id": "aud-buyers", "name": "Buyers", "rule": 'xEvent[eventType = "commerce.purchases"].exists()'}]}
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    return d, snapshot


def read_events(path, as_of_ms):
    """JSONL events by profile as the streaming evaluator holds them at ``as_of_ms`` (in time
    order, none after it); unreadable lines skipped."""
    events = {}
    for line in open(path, encoding="utf-8"):
        try:
            row = json.loads(line)
            t = parse_timestamp_ms(row.pop("timestamp"))
        except (ValueError, KeyError, AttributeError, TypeError):
            continue
        if isinstance(row.get("profileId"), str) and t <= as_of_ms:
            events.setdefault(row.pop("profileId"), []).append({**row, "timestamp": t})
    return {p: sorted(evs, key=lambda e: e["timestamp"]) for p, evs in events.items()}


def expected_records(config_path, snapshot, selected, events_path=None):
    """The per-profile path: rules on the row, then the streaming formatter (docs/semantics.md#exports "Backfill")."""
    config = load_config(config_path)
    audiences, formatter = AudienceSet.from_config(config), RecordFormatter(config)
    now = parse_timestamp_ms(AS_OF)
    events = read_events(events_path, now) if events_path else {}
    out = set()
    for batch in iter_snapshot_batches(snapshot):
        for p in snapshot_profiles(batch):
            realized = audiences.evaluate({pol.id: p.attributes for pol in config.merge_policies}, p.identities,
                                          events.get(p.profile_id, []), now)
            for policy in config.merge_policies:
                ids = [a.id for a in config.audiences if a.merge_policy == policy.id]
                if realized & set(selected) & set(ids):
                    ups = [(a, "realized", p.segment_membership[a].last_qualification_ms if a in p.segment_membership
                            else p.timestamp_ms) for a in ids if a in realized]
                    out.add((formatter.partition_key(p.profile_id), formatter.format(p.attributes, ups, p.identities)))
    return out


def records_in(directory):
    out = []
    for f in glob.glob(os.path.join(directory, "records-*.jsonl")):
        with open(f, "rb") as lines:
            for line in lines:
                assert line.startswith(b'{"partitionKey":"') and line.endswith(b"}\n")
                key, data = line.split(b'","data":', 1)
                out.append((json.loads(key + b'"}')["partitionKey"], data[:-2]))
    return out


def test_backfill_to_files_matches_the_per_profile_path(job):
    d, snapshot = job
    out = d / "out-all"
    proc = run("--config", str(d / "config.yaml"), "--snapshot", snapshot, "--as_of", AS_OF, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipping audiences whose rules need events (give --events): aud-buyers" in proc.stderr
    got = records_in(out)
    expected = expected_records(str(d / "config.yaml"), snapshot, ["aud-delorean", "aud-gold"])
    assert len(got) == len(set(got)) == len(expected) > 500
    assert set(got) == expected
    summary = proc.stderr.strip().splitlines()[-1]
    crm = sum(b'"aud-gold"' in data for _, data in got)   # each record is of one policy
    assert summary == (f"backfill as of 2024-05-01T00:00:00Z: 2500 profiles read; members aud-delorean: "
                       f"{len(got) - crm}, aud-gold: {crm}; records mp-default: {len(got) - crm}, mp-crm: {crm}; "
                       f"{len(got)} records written to {out}, 0 records dead-lettered; "
                       "0 bad input rows or files dead-lettered")
    assert not glob.glob(str(out / ".*"))


def test_backfill_with_events_and_selected_audiences(job):
    """Bad event rows are dead-lettered with their line, the backfill goes on; an event
    stamped after --as_of counts for no rule."""
    d, snapshot = job
    out = d / "out-events"
    events = d / "events-all.jsonl"
    bad = ['[1]', json.dumps({"timestamp": "2024-04-20T10:00:00Z", "eventType": "commerce.purchases"}),
           json.dumps({"profileId": "p-1", "timestamp": "later", "eventType": "commerce.purchases"})]
    later = json.dumps({"profileId": "p-1", "timestamp": "2024-05-02T00:00:00Z", "eventType": "commerce.purchases"})
    events.write_text((d / "events.jsonl").read_text() + "\n".join(bad + [later]) + "\n")
    proc = run("--config", str(d / "config.yaml"), "--snapshot", snapshot, "--events", str(events),
               "--audiences", "aud-buyers,aud-gold", "--as_of", AS_OF, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipping" not in proc.stderr
    got = records_in(out)
    assert set(got) == expected_records(str(d / "config.yaml"), snapshot, ["aud-buyers", "aud-gold"], str(events))
    buyers = [k for k, data in got if b'"aud-buyers"' in data]
    assert len(buyers) == len(range(0, 2500, 7))
    assert proc.stderr.strip().endswith("; 3 bad input rows or files dead-lettered")
    n = len((d / "events.jsonl").read_text().splitlines())
    letters = [json.loads(line) for f in glob.glob(str(d / "dl" / "input" / "*.jsonl")) for line in open(f)]
    assert sorted((x["position"], x["reason"], x["source"]) for x in letters) == sorted([
        (f"line {n + 1}", "--events: not a JSON object", str(events)),
        (f"line {n + 2}", "--events: no 'profileId'", str(events)),
        (f"line {n + 3}", "--events: no readable 'timestamp'", str(events))])
    assert letters[0]["raw"]


@pytest.mark.parametrize("args,message", [
    (["--config", "BAD"], "destination.region: required field missing"),
    (["--snapshot", "/nonexistent/*.parquet"], "--snapshot matches no files: /nonexistent/*.parquet"),
    (["--audiences", "aud-delorean,aud-rich"], "--audiences: not mapped in the config: aud-rich"),
    (["--audiences", "aud-buyers"], "no audience left to export (their rules need --events)"),
    (["--snapshot", "TEXT"], "not a readable Parquet file"),
    (["--events", "/nonexistent/*.jsonl"], "--events matches no files: /nonexistent/*.jsonl"),
])
def test_errors_are_one_line_and_non_zero(job, args, message):
    d, snapshot = job
    (d / "bad.yaml").write_text("destination: {name: x, stream: s}\nmapping: {}\n")
    (d / "text.jsonl").write_text("not json\n")
    files = {"BAD": str(d / "bad.yaml"), "TEXT": str(d / "text.jsonl")}
    argv = {"--config": str(d / "config.yaml"), "--snapshot": snapshot, "--output": str(d / "never")}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = files.get(value, value)
    proc = run(*[x for kv in argv.items() for x in kv])
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("backfill: skipping")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not os.path.exists(d / "never")
