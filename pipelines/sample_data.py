"""``python -m pipelines.sample_data``: deterministic sample data to try the jobs on.

    python -m pipelines.sample_data --profiles 1000000 --updates 200000 --events 2000000 --out DIR

writes into DIR a Parquet snapshot (``snapshot.parquet``), profile updates (``updates.jsonl``),
experience events (``events.parquet``) and a config whose audiences fit that data
(``config.yaml``), then prints the commands that use them. The formats are those of
docs/semantics.md. The same seed gives the same files. The demo, the tests and the benchmarks use
these functions too.

Columns are built with numpy and pyarrow compute (no per-row Python) so a 1M-profile snapshot takes
one to two seconds.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FIRST = ["John", "Jane", "Marty", "Emmett", "Lorraine", "George", "Biff", "Jennifer", "Zoë", "Ana \"Q\""]
LAST = ["Doe", "McFly", "Brown", "Baines", "Tannen", "Parker", "Smith", "Müller"]
MAKES = ["DeLorean", "Ford", "Toyota", "Tesla", "BMW"]
MODELS = ["DMC-12", "Mustang", "Corolla", "Model 3", "i3"]  # one per make
TIERS = ["bronze", "silver", "gold", "platinum"]
BASE_MS = 1_714_557_600_000  # 2024-05-01T10:00:00Z

IDENTITY_TYPE = pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string())])))


def _masked(values: np.ndarray, rng, null_fraction: float, type_=None) -> pa.Array:
    return pa.array(values, type=type_, mask=rng.random(len(values)) < null_fraction)


def _pick(choices: List[str], rng, n: int, null_fraction: float) -> pa.Array:
    """Random indices into ``choices`` with some nulls (take() builds the strings in C++)."""
    return _masked(rng.integers(0, len(choices), n), rng, null_fraction)


def _numbered(prefix: str, numbers: np.ndarray, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), suffix, "")


def snapshot_table(n: int, seed: int = 7, with_membership: bool = False, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    numbers = np.arange(start, start + n)
    profile_id = _numbered("p-", numbers)
    timestamp = pa.array(BASE_MS - rng.integers(0, 90 * 86_400_000, n), pa.timestamp("ms", tz="UTC"))
    first = pa.array(FIRST).take(_pick(FIRST, rng, n, 0.05))
    last = pa.array(LAST).take(_pick(LAST, rng, n, 0.1))
    birth = _masked(rng.integers(-3650, 12000, n).astype("int32"), rng, 0.1, pa.int32()).cast(pa.date32())
    name = pa.StructArray.from_arrays([first, last], ["firstName", "lastName"])
    person = pa.StructArray.from_arrays([name, birth], ["name", "birthDate"])
    emails = _numbered("user", numbers, "@example.com")
    email = pc.if_else(pa.array(rng.random(n) < 0.2), pa.scalar(None, pa.string()), emails)
    personal_email = pa.StructArray.from_arrays([email], ["address"])
    make_index = _pick(MAKES, rng, n, 0.3)
    vehicle = pa.StructArray.from_arrays([pa.array(MAKES).take(make_index), pa.array(MODELS).take(make_index)],
                                         ["make", "model"])
    points = _masked(rng.integers(0, 10_000, n), rng, 0.2, pa.int64())
    tier = pa.array(TIERS).take(_pick(TIERS, rng, n, 0.2))
    loyalty = pa.StructArray.from_arrays([points, tier], ["points", "tier"])
    # identityMap: every profile an ecid; 80% an email entry too
    has_email = rng.random(n) < 0.8
    map_offsets = np.concatenate([[0], np.cumsum(1 + has_email.astype(np.int32))]).astype(np.int32)
    total = int(map_offsets[-1])
    ecids = _numbered("ecid-", rng.integers(10**9, 10**10, n))
    first_slot = map_offsets[:-1]
    email_slots = first_slot[has_email] + 1
    is_email = np.zeros(total, np.int8)
    is_email[email_slots] = 1
    source = np.empty(total, np.int64)  # index into ecids + emails
    source[first_slot] = np.arange(n)
    source[email_slots] = n + np.flatnonzero(has_email)
    values = pa.concat_arrays([ecids, emails]).take(pa.array(source))
    keys = pa.array(["ecid", "email"]).take(pa.array(is_email))
    id_struct = pa.StructArray.from_arrays([values], ["id"])
    items = pa.ListArray.from_arrays(pa.array(np.arange(total + 1, dtype=np.int32)), id_struct)
    identity = pa.MapArray.from_arrays(pa.array(map_offsets), keys, items)
    columns = {"profileId": profile_id, "timestamp": timestamp, "identityMap": identity}
    if with_membership:
        qualified = pa.array(rng.random(n) < 0.3)
        seconds = pa.array((BASE_MS - rng.integers(0, 30 * 86_400_000, n)) // 1000, pa.timestamp("s"))
        iso = pc.replace_substring(pc.cast(seconds, pa.string()), " ", "T")  # cast: 'YYYY-MM-DD HH:MM:SS'
        text = pc.binary_join_element_wise('{"ups":{"aud-delorean":{"lastQualificationTime":"', iso,
                                           'Z","status":"existing"}}}', "")
        columns["segmentMembership"] = pc.if_else(qualified, text, pa.scalar(None, pa.string()))
    columns.update(person=person, personalEmail=personal_email, vehicle=vehicle, loyalty=loyalty)
    return pa.table(columns)


def write_snapshot(path: str, n_profiles: int, seed: int = 7, with_membership: bool = False,
                   row_group_size: int = 131072) -> str:
    pq.write_table(snapshot_table(n_profiles, seed, with_membership), path, row_group_size=row_group_size)
    return path


def make_updates(n: int, n_profiles: int = 1000, seed: int = 11, start_ms: int = BASE_MS,
                 step_ms: int = 60_000) -> List[dict]:
    """Update documents (JSON, docs/semantics.md) touching ``n_profiles`` profiles in time order: attribute
    writes (mapped and unmapped), identities, and purchase events."""
    rng = np.random.default_rng(seed)
    profiles = rng.integers(0, n_profiles, n)
    kinds = rng.integers(0, 6, n)
    out = []
    for i in range(n):
        pid = f"p-{profiles[i]}"
        doc: Dict = {"profileId": pid, "timestamp": start_ms + i * step_ms}
        k = kinds[i]
        if k == 0:
            doc["attributes"] = {"vehicle": {"make": MAKES[i % len(MAKES)]},
                                 "person": {"birthDate": f"19{60 + i % 40}-0{1 + i % 9}-1{i % 10}"}}
        elif k == 1:
            doc["attributes"] = {"person": {"name": {"firstName": FIRST[i % len(FIRST)]}}}
        elif k == 2:
            doc["identityMap"] = {"email": [{"id": f"{pid}@example.com"}]}
        elif k == 3:
            doc["event"] = {"eventType": "commerce.purchases",
                            "commerce": {"order": {"priceTotal": float(rng.integers(10, 400))}}}
        elif k == 4:
            doc["attributes"] = {"loyalty": {"points": int(rng.integers(0, 1000))}}
        else:
            doc["datasetId"] = "crm"
            doc["attributes"] = {"personalEmail": {"address": f"{pid}@crm.example"}}
        out.append(doc)
    return out


def write_jsonl_updates(path: str, updates: List[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for doc in updates:
            f.write(json.dumps(doc) + "\n")
    return path


def write_avro_updates(path: str, updates: List[dict]) -> str:
    import fastavro
    from schemas import load_schema
    records = [{**doc, "attributes": json.dumps(doc["attributes"]) if "attributes" in doc else None,
                "event": json.dumps(doc["event"]) if "event" in doc else None} for doc in updates]
    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(load_schema("profile_update.avsc")), records)
    return path


EVENT_TYPES = ["commerce.purchases", "web.webpagedetails.pageViews"]


def events_table(n: int, n_profiles: int, seed: int = 13, end_ms: int = BASE_MS, days: int = 60) -> pa.Table:
    """``n`` experience events of ``n_profiles`` profiles over the ``days`` before ``end_ms``, one
    row each: ``profileId``, ``timestamp``, ``eventType`` and, for purchases,
    ``commerce.order.priceTotal``."""
    rng = np.random.default_rng(seed)
    profile_id = _numbered("p-", rng.integers(0, max(n_profiles, 1), n))
    timestamp = pa.array(end_ms - rng.integers(0, days * 86_400_000, n), pa.timestamp("ms", tz="UTC"))
    kind = rng.integers(0, len(EVENT_TYPES), n)
    event_type = pa.array(EVENT_TYPES).take(pa.array(kind))
    price = pa.array(rng.integers(500, 40_000, n) / 100.0, mask=kind != 0)
    order = pa.StructArray.from_arrays([price], ["priceTotal"])
    commerce = pa.StructArray.from_arrays([order], ["order"], mask=pa.array(kind != 0))
    return pa.table({"profileId": profile_id, "timestamp": timestamp, "eventType": event_type,
                     "commerce": commerce})


def write_events(path: str, n: int, n_profiles: int, seed: int = 13, row_group_size: int = 1 << 20) -> str:
    pq.write_table(events_table(n, n_profiles, seed), path, row_group_size=row_group_size)
    return path


def sample_config(stream: str = "profile-exports", region: str = "us-east-2",
                  endpoint_url: Optional[str] = None) -> dict:
    """A config whose audiences fit the generated data: two on attributes (one per merge policy),
    two on events (they need ``--events`` in a backfill)."""
    destination = {"name": "Kinesis - sample data", "region": region, "stream": stream}
    if endpoint_url:
        destination["endpoint_url"] = endpoint_url
    destination.update(include_segment_names=True, dead_letter="./dead-letter")
    return {
        "destination": destination,
        "mapping": {
            "attributes": ["person.name.firstName", "person.name.lastName", "person.birthDate",
                           "personalEmail.address"],
            "audiences": [{"id": a} for a in ("aud-delorean", "aud-gold", "aud-frequent-buyers",
                                               "aud-big-spenders")],
        },
        "merge_policies": [
            {"id": "mp-default", "type": "timestamp_ordered", "default": True},
            {"id": "mp-crm-first", "type": "dataset_precedence", "datasets": ["crm"]},
        ],
        "audiences": [
            {"id": "aud-delorean", "name": "Customer with DeLorean Cars",
             "rule": 'vehicle.make = "DeLorean" and person.birthDate < date("1990-01-01")'},
            {"id": "aud-gold", "name": "Gold and platinum members", "merge_policy": "mp-crm-first",
             "rule": 'loyalty.tier in ["gold", "platinum"] and loyalty.points >= 5000'},
            {"id": "aud-frequent-buyers", "name": "Two purchases or more in 30 days",
             "rule": 'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 30 days before now]'
                     '.count() >= 2'},
            {"id": "aud-big-spenders", "name": "Purchased over 500 in the last 7 days",
             "rule": 'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 7 days before now]'
                     '.sum(commerce.order.priceTotal) > 500'},
        ],
    }


def write_config(path: str, **kwargs) -> str:
    import yaml
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(sample_config(**kwargs), f, sort_keys=False)
    return path


def generate(out: str, profiles: int, updates: int, events: int, seed: int = 7,
             stream: str = "profile-exports", endpoint_url: Optional[str] = None) -> Dict[str, str]:
    """Write the sample files into ``out``; returns their paths by kind."""
    os.makedirs(out, exist_ok=True)
    paths = {"snapshot": write_snapshot(os.path.join(out, "snapshot.parquet"), profiles, seed, with_membership=True),
             "updates": write_jsonl_updates(os.path.join(out, "updates.jsonl"),
                                            make_updates(updates, profiles, seed=seed + 4))}
    if events:
        paths["events"] = write_events(os.path.join(out, "events.parquet"), events, profiles, seed=seed + 6)
    paths["config"] = write_config(os.path.join(out, "config.yaml"), stream=stream, endpoint_url=endpoint_url)
    return paths


class SampleDataOptions:
    """The generator's options (Beam's ``_add_argparse_args`` hook, for the shared strict parser)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--out", metavar="DIR", help="directory to write into, created if needed (required)")
        parser.add_argument("--profiles", type=int, default=10_000, metavar="N", help="profiles in the snapshot")
        parser.add_argument("--updates", type=int, default=10_000, metavar="N", help="lines of profile updates")
        parser.add_argument("--events", type=int, default=20_000, metavar="N",
                            help="experience events (0: no events file)")
        parser.add_argument("--seed", type=int, default=7, metavar="N", help="random seed")
        parser.add_argument("--stream", default="profile-exports", metavar="NAME",
                            help="Kinesis stream named in the config")
        parser.add_argument("--endpoint_url", metavar="URL", help="Kinesis endpoint named in the config (default: AWS)")


def run(argv: Sequence[str]) -> int:
    from pipelines.common import parse_command_line, require
    from transforms.errors import UserError
    args, _ = parse_command_line(argv, "python -m pipelines.sample_data", "--out DIR [--profiles N] [--updates N] "
                                 "[--events N]", "Write a sample snapshot, updates, events and a matching config "
                                 "(local files; no Beam options).", [SampleDataOptions], beam_options=False)
    out = require(args.out, "--out")
    for flag in ("profiles", "updates", "events"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag}: must be 0 or more")
    if os.path.isfile(out):
        raise UserError(f"--out {out}: is an existing file; give a directory")
    paths = generate(out, args.profiles, args.updates, args.events, args.seed, args.stream, args.endpoint_url)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    config, snapshot, updates = paths["config"], paths["snapshot"], paths["updates"]
    events = f" --events {paths['events']}" if "events" in paths else ""
    print(f"try:\n  python -m pipelines.backfill --config {config} --snapshot {snapshot}{events} "
          f"--as_of 2024-05-01T10:00:00Z --output {os.path.join(out, 'backfill-records')}\n"
          f"  python -m pipelines.streaming --config {config} --input {updates} --seed_snapshot {snapshot} "
          f"--until 2024-06-01T00:00:00Z --output {os.path.join(out, 'streaming-records')}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pipelines.common import cli_main
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
