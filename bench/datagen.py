"""Deterministic sample data: Parquet snapshots, profile updates, events (tests, demo, benchmarks).

Columns are built with numpy and pyarrow compute (no per-row Python) so a 1M-profile snapshot takes
one to two seconds.
"""
from __future__ import annotations

import json
from typing import Dict, List

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


EVENT_TYPES = ["commerce.purchases", "web.visit", "web.search"]


def write_events(path: str, n_events: int, n_profiles: int, seed: int = 13, days: int = 60,
                 row_group_size: int = 262144) -> str:
    """Experience events (SPEC 4 ``--events``, Parquet) for ``p-0 .. p-(n_profiles-1)`` in
    random profile order: ``timestamp`` within ``days`` before BASE_MS, ``eventType``, and an
    ``amount`` on purchases; written a row group at a time (bounded memory at any size)."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("profileId", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
                        ("eventType", pa.string()), ("amount", pa.float64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n_events, row_group_size):
            n = min(row_group_size, n_events - start)
            kind = rng.integers(0, len(EVENT_TYPES), n)
            amount = rng.integers(5, 400, n).astype(np.float64)   # whole amounts: exact sums in any order
            writer.write_table(pa.table({
                "profileId": _numbered("p-", rng.integers(0, n_profiles, n)),
                "timestamp": pa.array(BASE_MS - rng.integers(0, days * 86_400_000, n), pa.timestamp("ms", tz="UTC")),
                "eventType": pa.array(EVENT_TYPES).take(pa.array(kind)),
                "amount": pa.array(amount, mask=kind != 0)}, schema=schema))
    return path


def make_updates(n: int, n_profiles: int = 1000, seed: int = 11, start_ms: int = BASE_MS,
                 step_ms: int = 60_000) -> List[dict]:
    """Update documents (SPEC 4 JSON) touching ``n_profiles`` profiles in time order: attribute
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
