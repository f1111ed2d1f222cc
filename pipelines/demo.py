"""The local demo behind ``./run_local.sh``: a moto Kinesis server on a free loopback port,
sample data, a backfill and a streaming replay on the DirectRunner, the stream read back and a
summary. The demo's config turns on consent (an opt-out model) and export metadata, and one
scripted member opts out of email marketing and back in. Everything it writes goes under
``demo-output/`` (``--out``); it stops what it started. Beam options on its command line go to
both jobs. It fails when the jobs' closing counts differ from what the stream holds."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Optional

import yaml

from pipelines.sample_data import BASE_MS, make_updates, write_jsonl_updates, write_snapshot
from pipelines.local_kinesis import LocalKinesis

DAY_MS = 86_400_000
CONSENTING = "p-jennifer"
# an opt-out model: a profile consents unless it said no (the sample snapshot has no consents)
ACTIVATION = {"marketing_action": "email-targeting", "consent": 'not consents.marketing.email.val = "n"'}


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_job(module: str, *args: str) -> int:
    """Run a job; returns the records it reports sent to the stream."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if line.startswith(("backfill", "streaming", "error", "ALERT")) or "ALERT" in line:
            print("   " + line)
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    print(f"   ({time.time() - started:.1f} s)")
    sent = re.findall(r"(\d+) records sent to stream", proc.stderr)
    return int(sent[-1]) if sent else 0


def sample_updates(n_profiles: int) -> list:
    """Generated updates, plus scripted ones that show each kind of export."""
    updates = make_updates(1500, n_profiles)
    last = updates[-1]["timestamp"]
    scripted = [
        {"profileId": "p-1", "timestamp": last + 1, "attributes": {"vehicle": {"make": "DeLorean"},
                                                                    "person": {"birthDate": "1968-06-12"}}},
        {"profileId": "p-1", "timestamp": last + 2, "event": {"eventType": "commerce.purchases",
                                                               "commerce": {"order": {"priceTotal": 950.0}}}},
        {"profileId": "p-2", "timestamp": last + 3, "identityMap": {"email": [{"id": "marty@hillvalley.example"}]}},
        {"profileId": "p-1", "timestamp": last + 4 * DAY_MS, "attributes": {"vehicle": {"make": "Tesla"}}},
        # a consenting member opts out of email marketing and back in
        {"profileId": CONSENTING, "timestamp": last + 5 * DAY_MS,
         "identityMap": {"email": [{"id": "jennifer@hillvalley.example"}]},
         "attributes": {"vehicle": {"make": "DeLorean"}, "person": {"birthDate": "1968-10-26",
                                                                     "name": {"firstName": "Jennifer"}},
                        "consents": {"marketing": {"email": {"val": "y"}}}}},
        {"profileId": CONSENTING, "timestamp": last + 6 * DAY_MS,
         "attributes": {"consents": {"marketing": {"email": {"val": "n"}}}}},
        {"profileId": CONSENTING, "timestamp": last + 7 * DAY_MS,
         "attributes": {"consents": {"marketing": {"email": {"val": "y"}}}}},
    ]
    return updates + scripted


RECORD_KEYS = ("segmentMembership", "identityMap", "_export")


def summarize(records, title: str) -> None:
    by_audience = collections.Counter()
    for _, data in records:
        for audience, entry in json.loads(data)["segmentMembership"]["ups"].items():
            by_audience[audience, entry["status"]] += 1
    print(f"   {title}: {len(records)} records")
    for (audience, status), n in sorted(by_audience.items()):
        print(f"     {audience:<18} {status:<9} {n}")


class DemoOptions:
    """The demo's options (Beam's ``_add_argparse_args`` hook, for the shared strict parser)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--profiles", type=int, default=3000, metavar="N", help="profiles in the sample snapshot")
        parser.add_argument("--out", default="demo-output", metavar="DIR",
                            help="where the sample data, config and dead letters go (emptied first)")


def describe(previous: Optional[dict], ups: dict) -> str:
    """What changed in a profile's record against its previous one (``None``: the first)."""
    changes = [f"{a} {e['status']}" for a, e in ups.items() if (previous or {}).get(a) != e["status"]]
    text = ", ".join(changes) or "attributes or identities"
    return text if previous is not None else "first record: " + text


def run(argv) -> int:
    from pipelines.common import parse_command_line
    args, beam_args = parse_command_line(argv, "./run_local.sh", "[--profiles N] [--out DIR] [Beam options]",
                                         "Run the local demo: a Kinesis endpoint, sample data, a backfill and a "
                                         "streaming replay; Beam options go to both jobs.", [DemoOptions])
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    step("Starting a local Kinesis endpoint (moto server)")
    with LocalKinesis() as kinesis:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        stream = kinesis.create_stream("profile-exports")
        print(f"   {kinesis.url}, stream {stream}")

        step(f"Generating sample data in {out}")
        snapshot = write_snapshot(os.path.join(out, "snapshot.parquet"), args.profiles, with_membership=True)
        updates = write_jsonl_updates(os.path.join(out, "updates.jsonl"), sample_updates(args.profiles))
        with open(updates, "a") as f:
            f.write('{"profileId": "p-bad", "timestamp": "not a time"}\n')
        shutil.copy("examples/vip.csv", os.path.join(out, "vip.csv"))
        config = yaml.safe_load(open("examples/config.yaml"))
        config["destination"].update(endpoint_url=kinesis.url, stream=stream, include_segment_names=True,
                                     include_export_metadata=True, dead_letter="./dead-letter",
                                     max_requests_in_flight=1)   # moto loses records under concurrent writes
        config["activation"] = ACTIVATION
        config_path = os.path.join(out, "config.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        print(f"   snapshot: {args.profiles} profiles; updates: {sum(1 for _ in open(updates))} lines "
              f"(one malformed); audiences on attributes, events and an uploaded list")

        step("Backfill of the snapshot (python -m pipelines.backfill)")
        as_of = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_MS / 1000))
        reported = run_job("pipelines.backfill", "--config", config_path, "--snapshot", snapshot, "--as_of", as_of,
                           *beam_args)
        backfilled = kinesis.read_stream(stream)

        step("Streaming replay of the updates, seeded with the snapshot (python -m pipelines.streaming)")
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((BASE_MS + 60 * DAY_MS) / 1000))
        reported += run_job("pipelines.streaming", "--config", config_path, "--input", updates,
                            "--seed_snapshot", snapshot, "--until", until, *beam_args)
        streamed = kinesis.read_stream(stream)[len(backfilled):]

        step("The stream read back")
        summarize(backfilled, "backfill")
        summarize(streamed, "streaming")
        p1 = [json.loads(d) for k, d in streamed if k == "p-1"]
        print("   profile p-1 over time, each record and what changed in it:")
        previous: Optional[dict] = None
        for record in p1:
            ups = record["segmentMembership"]["ups"]
            print(f"     {describe(previous, ups)}:")
            print("       " + json.dumps({a: (e["status"], e["lastQualificationTime"]) for a, e in ups.items()}))
            previous = {a: e["status"] for a, e in ups.items()}
        print(f"   profile {CONSENTING} (qualifies with consent, opts out of email marketing, opts back in):")
        for key, data in streamed:
            if key == CONSENTING:
                record = json.loads(data)
                print("     " + json.dumps({"ups": {a: (e["status"], e["lastQualificationTime"])
                                                    for a, e in record["segmentMembership"]["ups"].items()},
                                            "attributes": sorted(k for k in record if k not in RECORD_KEYS),
                                            "triggers": record["_export"]["triggers"]}))
        if streamed:
            print("   one record in full:")
            print("     " + json.dumps(json.loads(streamed[0][1]), indent=2, ensure_ascii=False).replace("\n", "\n     "))
        print(f"\n   dead letters and alerts: {os.path.join(out, 'dead-letter')}")
        on_stream = len(backfilled) + len(streamed)
        if on_stream != reported:
            raise SystemExit(f"error: the jobs reported {reported} records sent, the stream holds {on_stream}")
        print(f"   the stream holds {on_stream} records, as the jobs reported")
    print("Local Kinesis endpoint stopped. Done.")
    return 0


def main(argv=None) -> int:
    from pipelines.common import cli_main
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
