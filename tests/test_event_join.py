"""The backfill's event join (transforms/event_join.py): buckets, contributions, bad rows, and
a property test that it agrees with the streaming evaluator on event audiences."""
import json
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.export_helpers import audience, make_config
from transforms.audiences import AudienceSet
from transforms.backfill import ExportSnapshot, SnapshotExporter
from transforms.config import MappedAudience
from transforms.event_join import EventPlan, bucket_of, from_ipc, split_by_bucket
from transforms.profile_state import ProfileState

NOW = 1_714_557_600_000   # 2024-05-01T10:00:00Z
DAY = 86_400_000
RULES = [
    ("busy", "xEvent[timestamp occurs <= 30 days before now].count() >= 2"),
    ("spender", 'xEvent[eventType = "purchase"].sum(amount) > 100'),
    ("recent", 'xEvent[eventType = "view" and timestamp occurs < 2 days before now].exists()'),
    ("idle", "not xEvent.exists()"),
    ("old", "xEvent[timestamp occurs > 10 days before now].count() >= 3 and tier = \"gold\""),
]


def config(max_events=1000):
    return make_config(audiences=tuple(audience(a, r) for a, r in RULES),
                       mapped=tuple(MappedAudience(a) for a, _ in RULES), attributes=("tier",),
                       max_events=max_events)


def test_buckets_are_stable_in_range_and_independent_of_slicing():
    ids = pa.array([f"p-{i}" for i in range(2000)] + ["ü", "x" * 300])
    b = bucket_of(ids, 7)
    assert b.min() >= 0 and b.max() < 7 and len(set(b.tolist())) == 7
    assert bucket_of(ids.slice(1000, 5), 7).tolist() == b[1000:1005].tolist()
    assert bucket_of(pa.array(["p-1", "p-1"]), 13).tolist()[0] == bucket_of(pa.array(["q", "p-1"]), 13).tolist()[1]
    assert np.bincount(b).min() > 200          # spread


def test_split_by_bucket_keeps_every_row_once():
    batch = pa.RecordBatch.from_pydict({"profileId": [f"p-{i}" for i in range(100)], "x": list(range(100))})
    pieces = list(split_by_bucket(batch, 4))
    rows = [r for _, blob in pieces for r in from_ipc(blob).to_pylist()]
    assert sorted(r["x"] for r in rows) == list(range(100))
    for bucket, blob in pieces:
        assert set(bucket_of(from_ipc(blob).column("profileId").combine_chunks(), 4).tolist()) == {bucket}


EVENTS = [  # (profileId, timestamp, eventType, amount)
    ("p-1", NOW - DAY, "purchase", 60.0), ("p-1", NOW - 3 * DAY, "purchase", 50.0), ("p-1", NOW + 1, "purchase", 500.0),
    ("p-2", NOW - 40 * DAY, "view", None), ("p-2", NOW - DAY, "view", None), ("p-3", NOW, "purchase", 7.0),
]


def test_parquet_and_jsonl_events_contribute_alike_and_bad_rows_are_dead_letters():
    plan = EventPlan(AudienceSet.from_config(config()).rules.values(), NOW, 1000)
    rows = [{"profileId": p, "timestamp": t, "eventType": e, "amount": a} for p, t, e, a in EVENTS]
    bad = [{"profileId": None, "timestamp": NOW, "eventType": "view", "amount": None},
           {"profileId": "p-9", "timestamp": None, "eventType": "view", "amount": None}]
    batch = pa.RecordBatch.from_pylist(rows[:3] + bad + rows[3:])
    vectorized, dead = plan.contributions(batch, "e.parquet", 100)
    assert [(d.reason, d.source, d.position) for d in dead] == [
        ("--events: no 'profileId'", "e.parquet", "row 104"), ("--events: no readable 'timestamp'", "e.parquet", "row 105")]
    assert json.loads(dead[0].raw)["eventType"] == "view"
    by_rows, dead_rows = plan.contributions_of_rows([(f"line {i}", r) for i, r in enumerate(rows)], "e.jsonl")
    assert dead_rows == [] and vectorized.to_pylist() == by_rows.to_pylist()
    # the event after NOW is not seen by any rule; the windows reach back 30 days or without bound
    assert "p-1" in vectorized.column("profileId").to_pylist() and NOW + 1 not in vectorized.column("timestamp").to_pylist()


def streaming_members(audiences, rows, events, as_of, max_events):
    """What the streaming job's evaluator says at ``as_of``: its event history pruned as
    ``ProfileState`` prunes it, none stamped after ``as_of``."""
    out = []
    for row in rows:
        state = ProfileState(events=sorted((dict(e) for e in events.get(row["profileId"], ()) if e["timestamp"] <= as_of),
                                           key=lambda e: e["timestamp"]))
        state.prune_events(as_of, audiences.event_retention_ms, max_events)
        view = {"tier": row["tier"]} if row["tier"] else {}
        out.append(audiences.evaluate({"mp-default": view}, {}, state.events, as_of))
    return out


def random_case(rnd, n_profiles):
    rows = [{"profileId": f"p-{i}", "tier": rnd.choice(["gold", None])} for i in range(n_profiles)]
    events = {}
    for i in range(n_profiles):
        if rnd.random() < 0.2:
            continue
        evs = []
        for _ in range(rnd.choice([1, 2, 3, 5, 8])):
            t = NOW - rnd.choice([rnd.randrange(-DAY, 45 * DAY), 30 * DAY, 30 * DAY + 1, 2 * DAY, 10 * DAY, 0])
            evs.append({"timestamp": t, "eventType": rnd.choice(["purchase", "view"]),
                        "amount": rnd.choice([None, 10.0, 25.5, 40.0, 60.25])})
        # distinct times per profile: which of equal times count at the cap is unspecified
        events[f"p-{i}"] = list({e["timestamp"]: e for e in evs}.values())
    return rows, events


@pytest.mark.parametrize("seed,max_events", [(1, 1000), (2, 3), (3, 2)])
def test_property_backfill_and_streaming_agree_on_event_audiences(seed, max_events):
    rnd = random.Random(seed)
    rows, events = random_case(rnd, 600)
    audiences = AudienceSet.from_config(config(max_events))
    plan = EventPlan(audiences.rules.values(), NOW, max_events)
    # events in a few batches (as row groups would come), split into buckets and joined back
    flat = [{"profileId": p, **e} for p, evs in events.items() for e in evs]
    rnd.shuffle(flat)
    buckets = 3
    pieces = {b: [] for b in range(buckets)}
    for start in range(0, len(flat), 500):
        table, dead = plan.contributions(pa.RecordBatch.from_pylist(flat[start:start + 500]), "e", start)
        assert dead == []
        for batch in table.to_batches():
            for b, blob in split_by_bucket(batch, buckets):
                pieces[b].append(from_ipc(blob))
    snapshot = pa.RecordBatch.from_pylist(rows)
    expected = streaming_members(audiences, rows, events, NOW, max_events)
    got = [set() for _ in rows]
    index = {r["profileId"]: i for i, r in enumerate(rows)}
    for b, snapshot_blob in split_by_bucket(snapshot, buckets):
        part = from_ipc(snapshot_blob).to_batches()[0]
        members = audiences.evaluate_batch(part, NOW, plan.lookup(plan.aggregate(pieces[b]), part.column("profileId")))
        for aid, column in members.items():
            for pid, hit in zip(part.column("profileId").to_pylist(), column.to_pylist()):
                if hit:
                    got[index[pid]].add(aid)
    assert got == [set(m) for m in expected]
    for aid, _ in RULES:   # the data exercises every audience (fewer than 3 events count to 3 for none)
        if aid == "old" and max_events < 3:
            continue
        assert 0 < sum(aid in m for m in expected) < len(rows), aid


def test_pipeline_joins_events_from_files_and_dead_letters_bad_rows(tmp_path):
    """ExportSnapshot on the DirectRunner: two event files (Parquet and JSONL), a bad row in
    each, several buckets; the records are those of the per-batch exporter with the streaming
    evaluator's memberships, on one thread and on three (batches of 33 rows, three at a time)."""
    rnd = random.Random(9)
    rows, events = random_case(rnd, 400)
    cfg = config(3)
    snapshot = pa.table({"profileId": [r["profileId"] for r in rows],
                         "timestamp": pa.array([NOW - DAY] * len(rows), pa.timestamp("ms", tz="UTC")),
                         "tier": [r["tier"] for r in rows], "unused": list(range(len(rows)))})
    pq.write_table(snapshot, str(tmp_path / "snap.parquet"), row_group_size=150)
    flat = [{"profileId": p, **e} for p, evs in events.items() for e in evs]
    half = len(flat) // 2
    parquet_rows = flat[:half] + [{"profileId": "", "timestamp": NOW, "eventType": "view", "amount": None}]
    table = pa.Table.from_pylist(parquet_rows)
    table = table.set_column(1, "timestamp", pa.array(table.column("timestamp").to_pylist(), pa.int64())
                             .cast(pa.timestamp("ms", tz="UTC")))
    pq.write_table(table, str(tmp_path / "events-1.parquet"), row_group_size=200)
    with open(tmp_path / "events-2.jsonl", "w") as f:
        for e in flat[half:]:
            f.write(json.dumps(e) + "\n")
        f.write('{"profileId": "p-1", "timestamp": "soon"}\n{oops\n')
    audiences = AudienceSet.from_config(cfg)
    memberships = streaming_members(audiences, rows, events, NOW, 3)
    selected = [a for a, _ in RULES]
    expected = []
    for batch in snapshot.to_batches():
        fixed = {a: pa.array([a in m for m in memberships]) for a in audiences.rules}
        stub = type("Fixed", (), {"evaluate_batch": lambda self, *args: fixed})()
        records, _ = SnapshotExporter(cfg, stub, selected, NOW).export(batch)
        expected += [(k, json.loads(d)) for r in records for k, d in zip(r.partition_keys.to_pylist(), r.data().to_pylist())]
    assert len(expected) > 100
    with TestPipeline() as p:
        out = p | ExportSnapshot(cfg, str(tmp_path / "snap.parquet"), selected, NOW,
                                 events=str(tmp_path / "events-*"), batch_size=100, buckets=5)
        assert_that(out["records"] | beam.FlatMap(lambda b: b.records())
                    | beam.Map(lambda r: (r.partition_key, json.loads(r.data))), equal_to(expected), label="Records")
        threaded = p | "Threaded" >> ExportSnapshot(cfg, str(tmp_path / "snap.parquet"), selected, NOW,
                                                    events=str(tmp_path / "events-*"), batch_size=100, buckets=5,
                                                    threads=3)
        assert_that(threaded["records"] | "ThreadedRecords" >> beam.FlatMap(lambda b: b.records())
                    | "ThreadedParsed" >> beam.Map(lambda r: (r.partition_key, json.loads(r.data))), equal_to(expected),
                    label="RecordsOnThreads")
        assert_that(out["dead_letter"] | beam.Map(lambda d: (d.reason, d.source.rsplit("/", 1)[-1], d.position)),
                    equal_to([("--events: no 'profileId'", "events-1.parquet", f"row {half + 1}"),
                              ("--events: no readable 'timestamp'", "events-2.jsonl", f"line {len(flat) - half + 1}"),
                              ("--events: not valid JSON", "events-2.jsonl", f"line {len(flat) - half + 2}")]),
                    label="DeadLetters")


def test_in_order_yields_results_in_item_order_whatever_finishes_first():
    import time
    from concurrent.futures import ThreadPoolExecutor
    from transforms.event_join import in_order

    def slow_first(x):
        time.sleep(0.02 if x % 3 == 0 else 0)
        return x * x
    with ThreadPoolExecutor(3) as pool:
        for ahead in (1, 2, 3, 5):
            assert list(in_order(slow_first, range(10), pool, ahead)) == [x * x for x in range(10)]
    assert list(in_order(slow_first, iter(range(4)), None, 3)) == [0, 1, 4, 9]
