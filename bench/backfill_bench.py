"""Backfill wall time vs DuckDB on the same files: 3x or less at 1M profiles, 1.25x or less at
10M; with event audiences 2.5x or less and under 2 GiB.

``python -m bench.backfill_bench [--profiles N] [--events M]``: a generated snapshot
(deterministic seed, cached under bench/out/) and three attribute audiences; with ``--events``,
M generated Parquet events over the N profiles and two event audiences instead (a
``count() >= 2`` over a 30-day window and a ``sum(commerce.order.priceTotal) > 1000.005``), the launcher reading no
event. The project's backfill to the file sink as a whole process, and DuckDB as a whole
process running the same predicates (with events: the same join and windowed aggregates) and
writing the same JSON records from the same files. Both outputs are checked to hold the same set of records
(parsed JSON, absent values dropped). The two run alternately ``--repeat`` times and the best
wall time of each counts (the machine is shared; noise only ever adds time). Prints one JSON
line; peak RSS is that of the best run's process.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

from bench.common import AUDIENCES, EVENT_AUDIENCES, OUT, bench_config, cached_events, cached_snapshot, emit, timed_process

AS_OF = "2024-05-01T00:00:00Z"

# The same three rules and record shape in SQL (ups entries null when not a member).
DUCKDB_SCRIPT = r'''
import duckdb, sys
src, out = sys.argv[1], sys.argv[2]
def lqt(aud):
    return (f"coalesce(nullif(regexp_extract(segmentMembership, '\"{aud}\"\\s*:\\s*\\{{[^{{}}]*\"lastQualificationTime\"\\s*:\\s*\"([^\"]+)\"', 1), ''), "
            "strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ'))")
rules = {
  "aud-delorean": "(vehicle.make = 'DeLorean' AND person.birthDate < DATE '1990-01-01')",
  "aud-gold": "(loyalty.tier IN ('gold', 'platinum') AND loyalty.points >= 5000)",
  "aud-johns": "(starts_with(person.name.firstName, 'J') AND personalEmail.address IS NOT NULL)",
}
ups = ", ".join(f"'{a}', CASE WHEN coalesce({r}, false) THEN json_object('lastQualificationTime', {lqt(a)}, 'status', 'realized') END"
                for a, r in rules.items())
where = " OR ".join(f"coalesce({r}, false)" for r in rules.values())
duckdb.sql(f"""
COPY (SELECT profileId AS partitionKey,
  json_object('person', json_object('name', json_object('firstName', person.name.firstName, 'lastName', person.name.lastName),
                                    'birthDate', strftime(person.birthDate, '%Y-%m-%d')),
              'personalEmail', json_object('address', personalEmail.address),
              'segmentMembership', json_object('ups', json_object({ups})),
              'identityMap', to_json(identityMap)) AS data
FROM read_parquet('{src}') WHERE {where}) TO '{out}' (FORMAT JSON)
""")
'''

# The two event audiences: per-profile aggregates of the events up to as_of, joined to the
# snapshot, and the same record shape.
DUCKDB_EVENTS_SCRIPT = r'''
import duckdb, sys
src, events, out, as_of = sys.argv[1:5]
def lqt(aud):
    return (f"coalesce(nullif(regexp_extract(segmentMembership, '\"{aud}\"\\s*:\\s*\\{{[^{{}}]*\"lastQualificationTime\"\\s*:\\s*\"([^\"]+)\"', 1), ''), "
            "strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%SZ'))")
entry = lambda aud, cond: f"CASE WHEN {cond} THEN json_object('lastQualificationTime', {lqt(aud)}, 'status', 'realized') END"
duckdb.sql(f"""
COPY (
WITH agg AS (
  SELECT profileId,
         count(*) FILTER (WHERE timestamp >= TIMESTAMPTZ '{as_of}' - INTERVAL 30 DAY) AS recent,
         coalesce(sum(commerce.order.priceTotal) FILTER (WHERE eventType = 'commerce.purchases'), 0) AS spent
  FROM read_parquet('{events}') WHERE timestamp <= TIMESTAMPTZ '{as_of}' GROUP BY profileId),
j AS (SELECT s.*, coalesce(a.recent, 0) >= 2 AS active, coalesce(a.spent, 0) > 1000.005 AS spender
      FROM read_parquet('{src}') s LEFT JOIN agg a USING (profileId))
SELECT profileId AS partitionKey,
  json_object('person', json_object('name', json_object('firstName', person.name.firstName, 'lastName', person.name.lastName),
                                    'birthDate', strftime(person.birthDate, '%Y-%m-%d')),
              'personalEmail', json_object('address', personalEmail.address),
              'segmentMembership', json_object('ups', json_object('aud-active', {entry('aud-active', 'active')},
                                                                  'aud-spender', {entry('aud-spender', 'spender')})),
              'identityMap', to_json(identityMap)) AS data
FROM j WHERE active OR spender) TO '{out}' (FORMAT JSON)
""")
'''


def _normal(value):
    if isinstance(value, dict):
        out = {k: _normal(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def record_set(lines):
    return {json.dumps(_normal(json.loads(l)), sort_keys=True) for l in lines if l.strip()}


def goal(profiles: int, events: int) -> float:
    return 2.5 if events else (1.25 if profiles >= 10_000_000 else 3)


def run(profiles: int, repeat: int = 3, events: int = 0) -> dict:
    snapshot = cached_snapshot(profiles)
    events_path = cached_events(events, profiles) if events else None
    work = os.path.join(OUT, "backfill-events" if events else "backfill")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    audiences = EVENT_AUDIENCES if events else AUDIENCES
    config = bench_config(os.path.join(work, "config.yaml"), audiences=audiences)
    ours_dir = os.path.join(work, "ours")
    duck_out = os.path.join(work, "duckdb.jsonl")
    ours_args = [sys.executable, "-m", "pipelines.backfill", "--config", config, "--snapshot", snapshot,
                 "--as_of", AS_OF, "--output", ours_dir] + (["--events", events_path] if events else [])
    duck_args = ([sys.executable, "-c", DUCKDB_EVENTS_SCRIPT, snapshot, events_path, duck_out, AS_OF] if events
                 else [sys.executable, "-c", DUCKDB_SCRIPT, snapshot, duck_out])
    ours_runs, duck_runs = [], []
    for _ in range(repeat):
        shutil.rmtree(ours_dir, ignore_errors=True)
        ours_runs.append(timed_process(ours_args)[:2])
        duck_runs.append(timed_process(duck_args)[:2])
    (ours_s, ours_mb), (duck_s, duck_mb) = min(ours_runs), min(duck_runs)
    ours = record_set(l for f in glob.glob(os.path.join(ours_dir, "records-*.jsonl")) for l in open(f, encoding="utf-8"))
    theirs = record_set(open(duck_out, encoding="utf-8"))
    return emit({"benchmark": "backfill-events" if events else "backfill", "profiles": profiles, "events": events,
                 "audiences": len(audiences), "records": len(ours),
                 "wall_s": round(ours_s, 2), "duckdb_wall_s": round(duck_s, 2), "ratio": round(ours_s / duck_s, 2),
                 "goal": f"<= {goal(profiles, events)}", "met": ours_s / duck_s <= goal(profiles, events),
                 "profiles_per_s": round(profiles / ours_s), "peak_rss_mb": ours_mb,
                 "duckdb_peak_rss_mb": duck_mb, "same_records": ours == theirs,
                 "only_ours": len(ours - theirs), "only_duckdb": len(theirs - ours),
                 "runs_s": [round(w, 2) for w, _ in ours_runs], "duckdb_runs_s": [round(w, 2) for w, _ in duck_runs]})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=0, help="generated Parquet events (0: attribute audiences)")
    parser.add_argument("--repeat", type=int, default=3, help="alternate runs of each; the best counts")
    args = parser.parse_args(argv)
    run(args.profiles, args.repeat, args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
