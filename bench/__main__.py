"""``python -m bench [--quick]`` (or ``./run_local.sh bench``): every benchmark, each
against its reference measured in the same run, written to BENCHMARKS.md.

Each benchmark runs in its own process (clean memory figures, no state shared between them)
and prints one JSON line; this harness collects them and writes the document.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional

from bench.common import OUT, machine, timed_process
from transforms.core_build import PURE_ENV

FULL = {"rules": ["--profiles", "200000"], "backfill": [1_000_000], "scaling": [100_000, 300_000],
        "backfill_large": ["--profiles", "10000000", "--repeat", "2"],
        "backfill_events": ["--profiles", "1000000", "--events", "10000000", "--repeat", "2"],
        "streaming": ["--updates", "50000", "--profiles", "10000", "--repeat", "5"],
        "memory": [100_000, 300_000, 1_000_000], "latency": [(200, 20), (2000, 10), (4000, 15), (5000, 15)], "sink": ["--records", "100000", "--shards", "4,16,64", "--seconds", "10"]}
QUICK = {"rules": ["--profiles", "50000", "--repeat", "1"], "backfill": [200_000], "scaling": [100_000],
         "backfill_large": ["--profiles", "500000", "--repeat", "1"],
         "backfill_events": ["--profiles", "100000", "--events", "1000000", "--repeat", "1"],
         "streaming": ["--updates", "10000", "--profiles", "2000", "--repeat", "1"],
         "memory": [20_000, 50_000], "latency": [(200, 5), (2000, 3), (4000, 3)], "sink": ["--records", "20000", "--repeat", "1", "--capacity_repeat", "1", "--shards", "4,16,64", "--seconds", "3"]}


def run_module(module: str, *args, env: Optional[dict] = None) -> list:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]


def streaming_memory_run(profiles: int) -> dict:
    _, rss_mb, proc = timed_process([sys.executable, "-m", "bench.streaming_bench", "--memory", str(profiles)])
    row = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")][-1]
    return {**row, "peak_rss_mb": rss_mb}


def fmt(value, unit=""):
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = round(value, 2)
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def streaming_verdict(s: dict) -> str:
    """Where a streaming update's time goes, from the split the benchmark measured."""
    us = s.get("us_per_update") or {}
    ratio, cpu_ratio = s.get("ratio") or 0, s.get("cpu_ratio") or 0
    head = (f"Goal met (ratio {fmt(ratio)}, {fmt(cpu_ratio)} in CPU seconds)." if ratio >= 0.7 else
            f"Goal missed by {fmt(round(0.7 - ratio, 2))} (ratio {fmt(ratio)} for 0.7; {fmt(cpu_ratio)} in CPU "
            "seconds, which the other work on this shared machine disturbs less).")
    gc_us = s.get("us_garbage_collector") or {}
    one, distinct = s.get("one_update_per_group") or {}, s.get("distinct_profiles") or {}
    bare = (us.get("source") or 0) + (us.get("runner_keyed_state") or 0)
    added = (us.get("export_logic_in_pipeline") or 0) + (us.get("runner_timers_and_outputs") or 0)
    in_pipeline = us.get("export_logic_in_pipeline") or 0
    target = max(0.0, bare / 0.7 - bare - (us.get("runner_timers_and_outputs") or 0))  # logic µs that would give 0.7
    quiet = us.get("export_logic_in_pipeline_without_collector")
    needed = (
        f"For 0.7 the logic inside the pipeline would have to cost about {fmt(round(target, 1))} µs per update, "
        f"{fmt(round(100 * target / in_pipeline) if in_pipeline > 0 else None)}% of what it costs there now, "
        "which is why the goal stays open." if target > 0 else
        "In this run even a logic that cost nothing would not reach 0.7: what the runner charges for the "
        "export's grouping, state bytes, timer and records leaves no room for it, which is why the goal stays open.")
    return (
        f"{head} The export applies a bundle's updates of one profile together (`GroupUpdatesByProfile`, "
        f"`--max_grouped_updates`): one state read, decode, encode and write, and one element of the stateful "
        f"step, per profile per bundle. The benchmark's input reaches it as one bundle, {fmt(s.get('updates_per_group'))} "
        f"updates per profile (`updates_per_group`). The same export applying every update on its own "
        f"(`--max_grouped_updates 1`, `one_update_per_group`) runs at {fmt(one.get('export_updates_per_s'))} "
        f"updates/s, ratio {fmt(one.get('ratio'))}. Where no profile has two updates in a bundle "
        f"(`distinct_profiles`: {fmt(distinct.get('updates'))} updates over as many profiles, the bare DoFn then "
        f"paying its per-key price for each), grouping has nothing to gain: ratio "
        f"{fmt(distinct.get('ratio'))} ({fmt(distinct.get('export_updates_per_s'))} against "
        f"{fmt(distinct.get('count_per_key_updates_per_s'))} updates/s), against {fmt(distinct.get('ratio_one_update_per_group'))} "
        "with `--max_grouped_updates 1` (each update keyed and passed on as it comes, no grouping step)"
        + ("." if (distinct.get("ratio") or 0) >= (distinct.get("ratio_one_update_per_group") or 0) else
           ": there the grouping step is a cost.") + "\n\n"
        f"Where an update's CPU time goes (µs, `us_per_update`): the generating source {fmt(us.get('source'))}, the "
        f"runner's keyed-state dispatch {fmt(us.get('runner_keyed_state'))} (the bare DoFn is those two), the export "
        f"logic itself {fmt(us.get('export_logic'))} (no Beam; a profile's updates applied together against one state, "
        "encoded once after them and kept encoded as the runner keeps them; `pure_updates_per_s`), what the runner "
        "charges the export beyond counting (the grouping step with its encoding of each group and the decoding, "
        "the timer parameter, records out and the step "
        "discarding them, the collector's passes: the twin below, fewer elements in the stateful step than the "
        f"bare DoFn's) {fmt(us.get('runner_timers_and_outputs'))}, and the logic as it costs inside the pipeline "
        f"{fmt(us.get('export_logic_in_pipeline'))}. For 0.7 the export may add at most 0.43 of the bare DoFn's "
        f"{fmt(round(bare, 1))} µs, about {fmt(round(bare * 0.43, 1))} µs; it adds {fmt(round(added, 1))} µs. "
        f"The garbage collector took {fmt(gc_us.get('count_per_key'))} µs per update in the bare DoFn's run, "
        f"{fmt(gc_us.get('twin'))} in the twin's and {fmt(gc_us.get('export'))} in the export's "
        "(`us_garbage_collector`): its full passes walk every object the run keeps alive, mostly the runner's "
        "bundles held in memory (what the process held before the run is frozen out of them). The grouping step "
        "hands each profile's updates on as one bytes value (`model.encode_updates`, a marshal of their fields), so "
        "once it has run the runner holds one flat value per profile instead of the updates' object graphs, and the "
        "passes during the stateful step walk far less than the bare DoFn's, whose keyed input holds every update. "
        "Before that change the grouped updates travelled as objects: on the same machine the collector then took "
        "9.7-11.3 µs per update in the export's run against 3.7-4.6 in the bare DoFn's, and the ratio was "
        "0.60-0.62 (0.69-0.75 after it, three runs each).\n\n"
        "The compiled core (`transforms/core_build.py`: the per-update modules compiled by Cython 3 at install, "
        "their classes declared as extension types in `.pxd` files beside them) spends less CPU on the logic than "
        "its Python source (the table above: `export_logic`). How the logic alone came down: from 16-17.8 to "
        "14.9-15.4 µs per update (timestamp-ordered writes walk the nested update and the view together; only the "
        "audiences to evaluate are looped over; the state decode fills the slots directly), to about 8 with "
        "grouping (a state decode and encode per profile per bundle instead of per update), then to about 6.5 with "
        "the extension types (attributes read as slots, direct calls between the compiled modules), the mapped "
        "attributes written as JSON while their key tree is walked, and qualification times formatted by day "
        "and table, then to about 6 (attribute writes return their paths alone, records and plans built without "
        "their NamedTuple's Python constructor, the text of each `ups` entry kept once written). The grouping "
        "step in front of it reads only the update in the global window, the jobs' windowing (a DoFn that asks "
        "for an element's timestamp or windows is invoked per window, about 1.5-2 µs per update more on this "
        "runner): a group is stamped with its updates' latest `timestamp_ms`, which the readers stamp each "
        "update with.\n\n"
        f"The ceiling, measured directly: `ExportRunnerTwin` deals with the runner exactly as the export does "
        f"(the same grouping step, each group's updates decoded, the same state cell holding the export's own "
        f"state bytes, the same timer "
        f"declared, the export's records emitted, then discarded) but looks its results up instead of computing "
        f"them. Against the bare DoFn it costs {fmt(us.get('runner_timers_and_outputs'))} µs more per update "
        f"(declaring the event-time timer alone costs the bare DoFn {fmt(s.get('us_timer_parameter'))}: "
        "`us_timer_parameter`; the benchmark's config has an event window, so the export declares it), so with the "
        f"logic free the ratio would be {fmt(s.get('cpu_ratio_with_free_logic'))} in CPU seconds. The logic costs "
        f"{fmt(us.get('export_logic_in_pipeline'))} µs per update inside the pipeline (the export against the twin) "
        f"against {fmt(us.get('export_logic'))} alone; {fmt(quiet)} µs with the collector off in both runs "
        "(`export_logic_in_pipeline_without_collector`; runs on this machine do not split that difference "
        "reliably between the collector and colder caches)." + ("" if ratio >= 0.7 else f" {needed}"))


def collector(s: dict) -> str:
    gc_us = s.get("us_garbage_collector") or {}
    return " / ".join(fmt(gc_us.get(key)) for key in ("count_per_key", "twin", "export"))


def streaming_builds(s: dict, pure: Optional[dict]) -> list:
    """The compiled and the pure-Python core side by side (each run in its own process)."""
    if not pure:
        return []
    rows = [("export updates/s", "export_updates_per_s"), ("bare counting DoFn updates/s", "count_per_key_updates_per_s"),
            ("ratio (goal ≥ 0.7)", "ratio"), ("ratio in CPU seconds", "cpu_ratio"),
            ("ratio in CPU seconds if the logic cost nothing", "cpu_ratio_with_free_logic"),
            ("export logic alone, updates/s", "pure_updates_per_s"), ("updates per group", "updates_per_group")]
    split = [("source", "source"), ("runner keyed state", "runner_keyed_state"), ("export logic", "export_logic"),
             ("runner: grouping, timer, outputs, extra GC", "runner_timers_and_outputs"),
             ("export logic inside the pipeline", "export_logic_in_pipeline"),
             ("the same, collector off", "export_logic_in_pipeline_without_collector")]
    lines = ["| per update | compiled core | pure-Python core |", "|---|---|---|"]
    lines += [f"| {label} | {fmt(s.get(key))} | {fmt(pure.get(key))} |" for label, key in rows]
    for label, part, key in (("ratio, every update on its own", "one_update_per_group", "ratio"),
                             ("ratio, distinct profiles", "distinct_profiles", "ratio"),
                             ("ratio, distinct profiles, every update on its own", "distinct_profiles",
                              "ratio_one_update_per_group")):
        lines.append(f"| {label} | {fmt((s.get(part) or {}).get(key))} | {fmt((pure.get(part) or {}).get(key))} |")
    lines += [f"| CPU µs: {label} | {fmt((s.get('us_per_update') or {}).get(key))} | "
              f"{fmt((pure.get('us_per_update') or {}).get(key))} |" for label, key in split]
    lines += [f"| CPU µs: timer parameter alone | {fmt(s.get('us_timer_parameter'))} | {fmt(pure.get('us_timer_parameter'))} |",
              f"| CPU µs: garbage collector, bare / twin / export | {collector(s)} | {collector(pure)} |",
              f"| records | {fmt(s.get('records'))} | {fmt(pure.get('records'))} |"]
    return ["The two builds of the per-update core (`transforms/core_build.py`), each benchmark in its own "
            "process: the compiled one above (`core`: compiled), the same run with `KINESIS_EXPORT_PURE_PYTHON=1`.",
            "", *lines, ""]


def streaming_memory(rows: list, s: dict) -> list:
    """The streaming memory scaling table, and the growth per profile between its ends."""
    lines = [
        "Scaling of streaming memory: `python -m bench.streaming_bench --memory N` (N updates over N "
        "profile ids, one whole process; the DirectRunner keeps keyed state in process memory):",
        "",
        "| profiles updated | profiles with state | records | wall s | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {fmt(row['profiles'])} | {fmt(row['profiles_with_state'])} | {fmt(row['records'])} | "
                     f"{fmt(row['wall_s'])} | {fmt(row['peak_rss_mb'])} |")
    first, last = rows[0], rows[-1]
    held = last["profiles_with_state"] - first["profiles_with_state"]
    if held > 0:
        per_profile = round((last["peak_rss_mb"] - first["peak_rss_mb"]) * 2**20 / held)
        lines += ["", f"Growth from the smallest to the largest run: {fmt(per_profile)} bytes of process memory "
                      f"per profile held on the DirectRunner, which keeps each key's state encoded "
                      f"({fmt(s.get('state_bytes_per_profile_mean'))} bytes per profile, what Flink's RocksDB "
                      "or Dataflow store too) inside its own per-key tables of Python objects."]
    return lines


def capacity_met(c: dict) -> bool:
    return (c["ratio"] >= 0.9 and c["cpu_us_per_record"] <= 10 and not c["out_of_order"] and not c["lost"]
            and not c["dead_lettered"])


def activation_cost(s: dict) -> list:
    """What the activation controls cost the streaming export (the ``consent`` and ``activation`` variants)."""
    c, a = s.get("consent"), s.get("activation")
    if not c:
        return []

    def cost(variant: dict) -> str:
        more = variant.get("us_per_update_more") or 0
        return (f"{fmt(more)} CPU µs more per update" if more > 0 else
                f"no cost this run can measure: {fmt(more)} CPU µs per update, within the noise between runs")

    text = (f"With `activation.consent` on (`--variant consent`: the same updates, one in twenty also writing the "
            f"consent attribute, so profiles opt out and back in): {fmt(c['export_updates_per_s'])} updates/s, "
            f"{fmt(c['relative_to_export'])} of the export without it in the same run "
            f"({cost(c)}; "
            f"{fmt(c['consent_opt_outs'])} opt-out and {fmt(c['consent_opt_ins'])} opt-in records, "
            f"{fmt(c['consent_withheld'])} records withheld). The consent rule is one more compiled rule per "
            "evaluation and reads attributes only, so no timer or event history is added.")
    if a:
        text += (f" With every control that acts per update on (`--variant activation`: that consent, the identity "
                 f"trigger switched off, export metadata on every record): {fmt(a['export_updates_per_s'])} "
                 f"updates/s, {fmt(a['relative_to_export'])} of the export without them ({cost(a)}; "
                 f"{fmt(a['records'])} records against {fmt(s.get('records'))}). The state then holds "
                 f"{fmt(a['state_bytes_per_profile_mean'])} bytes per profile on average "
                 f"({fmt(c['state_bytes_per_profile_mean'])} with consent alone, "
                 f"{fmt(s.get('state_bytes_per_profile_mean'))} without either): the consent attribute written, the "
                 "policies the profile consents under and, with metadata, a record sequence per policy. The other "
                 "controls cost no update anything: data-usage labels are checked against the mapping when the job "
                 "starts, and an expiring upload is one more due time of the event-time timer (a config whose rules "
                 "read no events declares that timer for it alone, at the price `us_timer_parameter` gives per "
                 "element of the stateful step).")
    return [text, ""]


def document(results: dict, quick: bool, seconds: float) -> str:
    m = machine()
    b, s, k = results["backfill"], results["streaming"], results["sink"][0]
    latencies, capacity = results["latency"], results["sink"][1:]
    big, ev = results["backfill_large"], results["backfill_events"]
    pure_rules = {(r["rule"], r["evaluator"]): r["profiles_per_s"] for r in results.get("rules_pure", ())}
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench{' --quick' if quick else ''}` (`./run_local.sh bench`) in {seconds:.0f} s on "
        f"{m['cores']} cores, Python {m['python']}, Beam {m['beam']}, pyarrow {m['pyarrow']} ({m['platform']}). "
        "Every figure is measured in the same run as its reference; the machine is shared, so small "
        "differences between runs are noise.",
        "",
        "| benchmark | figure | reference (same run) | ratio | goal | met |",
        "|---|---|---|---|---|---|",
        f"| backfill, {fmt(b['profiles'])} profiles, 3 audiences, file sink | {fmt(b['wall_s'])} s wall | DuckDB {fmt(b['duckdb_wall_s'])} s | "
        f"{fmt(b['ratio'])}x | ≤ 3x | {'yes' if b['ratio'] <= 3 else 'no'} |",
        f"| backfill, {fmt(big['profiles'])} profiles, 3 audiences, file sink | {fmt(big['wall_s'])} s wall, peak RSS "
        f"{fmt(big['peak_rss_mb'])} MiB | DuckDB {fmt(big['duckdb_wall_s'])} s | {fmt(big['ratio'])}x | {big['goal'].replace('<=', '≤')}x | "
        f"{'yes' if big['met'] else 'no'} |",
        f"| backfill with event audiences, {fmt(ev['profiles'])} profiles, {fmt(ev['events'])} events | {fmt(ev['wall_s'])} s "
        f"wall, peak RSS {fmt(ev['peak_rss_mb'])} MiB | DuckDB {fmt(ev['duckdb_wall_s'])} s | {fmt(ev['ratio'])}x | "
        f"{ev['goal'].replace('<=', '≤')}x, < 2 GiB | {'yes' if ev['met'] and ev['peak_rss_mb'] < 2048 else 'no'} |",
        f"| streaming evaluate + diff + format | {fmt(s.get('export_updates_per_s'))} updates/s | bare counting DoFn "
        f"{fmt(s.get('count_per_key_updates_per_s'))} updates/s | {fmt(s.get('ratio'))} | ≥ 0.7 | {'yes' if (s.get('ratio') or 0) >= 0.7 else 'no'} |",
        *[f"| end-to-end latency at {fmt(l['offered_rate_per_s'])} updates/s | p95 {fmt(l['p95_ms'])} ms | seeds' promise 600 s | | "
          f"p95 < 2 s | {'yes' if (l['p95_ms'] or 1e9) < 2000 else 'no'} |" for l in latencies],
        f"| sink raw efficiency, {fmt(k['records'])} records to {k['endpoint']} | {fmt(k['sink_records_per_s'])} records/s, "
        f"{fmt(k['sink_cpu_us_per_record'])} µs CPU/record | raw pre-built requests {fmt(k['raw_records_per_s'])} records/s | "
        f"{fmt(k['ratio'])} | ≥ 0.9 at ≤ 30 µs | {'yes' if k['ratio'] >= 0.9 and k['sink_cpu_us_per_record'] <= 30 else 'no'} |",
        *[f"| sink shard capacity, {c['shards']} shards | {fmt(c['delivered_records_per_s'])} records/s, "
          f"{fmt(c['cpu_us_per_record'])} µs CPU/record | {fmt(c['capacity_records_per_s'])} records/s | {fmt(c['ratio'])} | "
          f"≥ 0.9, order kept, nothing lost, ≤ 10 µs | {'yes' if capacity_met(c) else 'no'} |" for c in capacity],
        "",
        "## Backfill",
        "",
        f"Project: `python -m pipelines.backfill` to `--output DIR`, as a whole process; DuckDB: a whole `python -c` process "
        f"running the same three predicates and writing the same JSON records from the same Parquet file. "
        f"Same set of records: **{b['same_records']}** ({fmt(b['records'])} records). {fmt(b['profiles_per_s'])} profiles/s; "
        f"peak RSS {fmt(b['peak_rss_mb'])} MiB (DuckDB {fmt(b['duckdb_peak_rss_mb'])} MiB).",
        "",
        "Where the time goes: about 2 s is the Beam process itself (imports, pipeline construction, "
        "runner start-up) and the rest is vectorized evaluation and string building over record "
        "batches; there is no Python object per record or attribute on the file path.",
        "",
        "Scaling of the backfill:",
        "",
        "| profiles | backfill wall s | DuckDB s | ratio | backfill peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for row in sorted(results["scaling"] + [b, big], key=lambda r: r["profiles"]):
        lines.append(f"| {fmt(row['profiles'])} | {fmt(row['wall_s'])} | {fmt(row['duckdb_wall_s'])} | {fmt(row['ratio'])} | "
                     f"{fmt(row['peak_rss_mb'])} |")
    lines += [
        "",
        "Peak memory does not grow with the snapshot: workers read one row group at a time (projected "
        "columns) and the records of a batch go to the sink before the next batch is read.",
        "",
        *streaming_memory(results["memory"], s),
        "",
        "### Backfill with event audiences",
        "",
        f"`python -m bench.backfill_bench --profiles {ev['profiles']} --events {ev['events']}`: generated Parquet "
        "events (random profile order, 60 days) and two mapped event audiences, "
        "`xEvent[timestamp occurs <= 30 days before now].count() >= 2` and "
        "`xEvent[eventType = \"commerce.purchases\"].sum(commerce.order.priceTotal) > 1000.005`; DuckDB aggregates the events up to "
        "`--as_of` per profile, joins them to the snapshot and writes the same JSON records. The launcher reads "
        f"no event: workers compute per-event contributions, the bucket join brings them to their profiles "
        f"(`transforms/event_join.py`), both steps on a thread per core (`--join_threads`: the local runner "
        f"runs one step at a time on one thread). Same set of records: **{ev['same_records']}** ({fmt(ev['records'])} records); "
        f"peak RSS {fmt(ev['peak_rss_mb'])} MiB (DuckDB {fmt(ev['duckdb_peak_rss_mb'])} MiB).",
    ]
    lines += [
        "",
        "## Streaming",
        "",
        "`python -m bench.streaming_bench`: the same generated updates through `ExportProfileChanges` and "
        "through a stateful DoFn that only counts per key, both on the BundleBasedDirectRunner.",
        "",
        "```json",
        json.dumps(s, indent=1),
        "```",
        "",
        *streaming_builds(s, results.get("streaming_pure")),
        streaming_verdict(s),
        "",
        *activation_cost(s),
        "## End-to-end latency",
        "",
        "`python -m bench.latency_bench`: updates offered at a fixed rate (stamped with the wall clock as they "
        "enter), through `ExportProfileChanges` and `KinesisWrite` (several requests in flight) to a local endpoint "
        "that behaves like a provisioned stream of 16 shards, answers 30 ms late like a round trip to AWS, and "
        "notes each record's arrival.",
        "",
        "```json",
        *[json.dumps(l) for l in latencies],
        "```",
        "",
        "## Sink",
        "",
        "`python -m bench.sink_bench`, two parts. Raw efficiency: kinesalite (an independent Kinesis "
        "implementation, installed with npm into `bench/out/`; moto server without npm) receives the same records "
        "through `KinesisWrite`'s DoFn (bodies built and signed per request, per-key order, retry bookkeeping, "
        "requests in flight) and as raw PutRecords requests built and signed before timing, sent over as many "
        "keep-alive connections. Both share the machine with the endpoint, so the sink's own CPU shows in its rate.",
        "",
        "```json",
        json.dumps(k),
        "```",
        "",
        "Shard capacity: `bench.shard_endpoint` behaves like a provisioned stream of S shards (MD5 hash-key ranges, "
        "1,000 records/s and 1 MiB/s per shard in token buckets of one second, full at the first record like an idle "
        "stream's, per-record "
        "`ProvisionedThroughputExceededException` above that, every reply 30 ms late). One `KinesisWrite` "
        "instance, driven in bundles of one second of the stream's capacity, sends S x 1,000 records/s' worth over "
        "keys of four records each; the endpoint checks each key's order on what it accepted. The rate leaves the "
        "idle stream's free first second out: (delivered - S x 1,000) / wall time. Each stream size runs twice "
        "against a fresh endpoint: the best rate and the least CPU count, order and losses over both runs. Client CPU is the benchmark "
        "process's CPU time (all threads) per record, what it held before timing (modules, prepared records) frozen "
        "out of Python's full garbage collections (`gc.freeze`).",
        "",
        "| shards | delivered records/s | capacity | ratio | client µs CPU/record | requests | throttled records | "
        "out of order | dead-lettered | lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {c['shards']} | {fmt(c['delivered_records_per_s'])} | {fmt(c['capacity_records_per_s'])} | {fmt(c['ratio'])} | "
          f"{fmt(c['cpu_us_per_record'])} | {fmt(c['requests'])} | {fmt(c['throttled_records'])} | {fmt(c['out_of_order'])} | "
          f"{fmt(c['dead_lettered'])} | {fmt(c['lost'])} |" for c in capacity],
        "",
        "## Rule evaluators",
        "",
        "`python -m bench.rules_bench`: profiles per second of the per-profile (streaming) and vectorized "
        "(backfill) evaluators on three typical rules over a generated snapshot, with the compiled core and "
        "with its Python source (`KINESIS_EXPORT_PURE_PYTHON=1`; the vectorized evaluator is pyarrow either way).",
        "",
        "| rule | evaluator | profiles/s, compiled core | profiles/s, pure-Python core |",
        "|---|---|---|---|",
        *[f"| {r['rule']} | {r['evaluator']} | {fmt(r['profiles_per_s'])} | "
          f"{fmt(pure_rules.get((r['rule'], r['evaluator'])))} |" for r in results["rules"]],
        "",
        "## Reproduce",
        "",
        "```",
        f"python -m bench{' --quick' if quick else ''}          # this document",
        "python -m bench.backfill_bench --profiles 1000000",
        "python -m bench.backfill_bench --profiles 10000000 --repeat 2",
        "python -m bench.backfill_bench --profiles 1000000 --events 10000000 --repeat 2",
        "python -m bench.streaming_bench",
        "python -m bench.streaming_bench --memory 1000000   # under /usr/bin/time -f %M for the peak RSS",
        "python -m bench.latency_bench --rate 200 --seconds 20",
        "python -m bench.latency_bench --rate 2000 --seconds 10",
        "python -m bench.latency_bench --rate 4000 --seconds 15",
        "python -m bench.latency_bench --rate 5000 --seconds 15",
        "python -m bench.sink_bench --records 100000 --shards 4,16,64 --seconds 10",
        "python -m bench.rules_bench          # rule evaluators, per profile and vectorized",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs; finishes in a few minutes")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--document", metavar="RESULTS_JSON",
                        help="only write the document again from a run's saved results (bench/out/results.json)")
    args = parser.parse_args(argv)
    if args.document:
        with open(args.document) as f:
            saved = json.load(f)
        with open(args.output, "w") as f:
            f.write(document(saved["results"], saved["quick"], saved["seconds"]))
        return 0
    plan = QUICK if args.quick else FULL
    started = time.time()
    results = {}
    print("backfill ...", file=sys.stderr, flush=True)
    results["backfill"] = run_module("bench.backfill_bench", "--profiles", plan["backfill"][0])[-1]
    results["scaling"] = [run_module("bench.backfill_bench", "--profiles", n)[-1] for n in plan["scaling"]]
    results["backfill_large"] = run_module("bench.backfill_bench", *plan["backfill_large"])[-1]
    print("backfill with events ...", file=sys.stderr, flush=True)
    results["backfill_events"] = run_module("bench.backfill_bench", *plan["backfill_events"])[-1]
    print("streaming ...", file=sys.stderr, flush=True)
    results["streaming"] = run_module("bench.streaming_bench", *plan["streaming"], "--variant", "consent",
                                      "--variant", "activation")[-1]
    results["streaming_pure"] = run_module("bench.streaming_bench", *plan["streaming"], env={PURE_ENV: "1"})[-1]
    results["memory"] = [streaming_memory_run(n) for n in plan["memory"]]
    print("latency ...", file=sys.stderr, flush=True)
    results["latency"] = [run_module("bench.latency_bench", "--rate", rate, "--seconds", seconds)[-1]
                          for rate, seconds in plan["latency"]]
    print("sink ...", file=sys.stderr, flush=True)
    results["sink"] = run_module("bench.sink_bench", *plan["sink"])  # raw efficiency, then one row per shard count
    print("rules ...", file=sys.stderr, flush=True)
    results["rules"] = [r for r in run_module("bench.rules_bench", *plan["rules"]) if "profiles_per_s" in r]
    results["rules_pure"] = [r for r in run_module("bench.rules_bench", *plan["rules"], env={PURE_ENV: "1"})
                             if "profiles_per_s" in r]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "results.json"), "w") as f:   # what --document writes the document from
        json.dump({"results": results, "quick": args.quick, "seconds": time.time() - started}, f)
    with open(args.output, "w") as f:
        f.write(document(results, args.quick, time.time() - started))
    print(f"wrote {args.output} in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
