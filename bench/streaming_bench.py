"""Streaming evaluation, diff and formatting throughput (BENCHMARKS.md), against a bare counting DoFn.

``python -m bench.streaming_bench [--updates N --profiles K]`` runs, in the same process and on
the same runner (``BundleBasedDirectRunner``, the fastest local runner for keyed state), the
same generated updates through ``ExportProfileChanges`` and through a stateful DoFn that only
counts per key, and prints JSON: updates/s for both, their ratio (goal >= 0.7), the records
emitted, and the state bytes per profile. The machine is noisy: runs alternate ``--repeat``
times and the best of each counts; ``cpu_ratio`` is the same ratio in CPU seconds of the process
(every runner thread), which other work on a shared machine disturbs far less than wall time, and
the split ``us_per_update`` is in CPU µs too. ``pure_updates_per_s`` is the per-profile logic alone
(no Beam, with a state decode and encode per update and the states kept encoded, as the runner
keeps them; CPU time), the ceiling the DoFn can approach;
``us_per_update`` splits an update's time between the source, the runner's keyed state
(bare DoFn minus source), that logic, what the runner charges the export beyond counting
(``ExportRunnerTwin``, the export's state bytes, timer and records without its logic, minus the
bare DoFn: the timer parameter, records out and the step after them, the collector's passes over
them) and the logic as it costs inside the pipeline (the export minus the twin; also with the
collector off in both runs, ``export_logic_in_pipeline_without_collector``);
``cpu_ratio_with_free_logic`` (the bare DoFn against the twin) is the most the export's ratio could
be on this runner whatever its logic;
``us_timer_parameter`` is what declaring an event-time timer alone costs the bare DoFn;
``updates_per_group`` how many updates of one profile the export's grouping step
(``GroupUpdatesByProfile``) handed the stateful step together (the generated input arrives as one
bundle); ``one_update_per_group`` the same export applying every update on its own
(``max_grouped_updates=1``); ``distinct_profiles`` the bare DoFn and both exports on half as many
updates over as many profiles (no profile twice in a bundle: what grouping costs where it gains
nothing);
``us_garbage_collector`` the CPU the collector's passes took per update in the bare DoFn's run,
the twin's and the export's (``gc.callbacks``), a large share of both on this runner, which holds each
step's whole input in memory. What the process holds before a run (modules, what earlier runs
left in Beam's caches) is frozen out of the collector's passes (``gc.freeze``) during it, so a
run's figure does not depend on how many pipelines ran before it.

The per-update core runs as this process imported it (``core`` in the report): compiled when the
package was installed with Cython, its Python source with ``KINESIS_EXPORT_PURE_PYTHON=1``;
``python -m bench`` runs this benchmark once for each.

``--variant consent`` also runs, alternating with the others, the same export with
``activation.consent`` on (a consent attribute written by one update in twenty, so profiles opt
out and back in) and reports its throughput and its ratio to the export without it: what
consent costs. ``--variant activation`` does the same with every activation control that acts
per update on: consent as above, the identity trigger switched off and export metadata on every
record (an ``_export`` id hashed per record, a sequence per merge policy in the state); its
report also gives the state bytes per profile, which the sequences add to. (The other controls
cost no update anything: data-usage labels are checked against the mapping when the job starts,
and an expiring upload is one more due time of the event-time timer, which a config whose rules
read no events declares for it alone: ``us_timer_parameter`` gives that price.)
Give both to measure both.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import time
from typing import Any, Iterator, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import BytesCoder, VarIntCoder
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from bench import common
from transforms import core_build, profile_state
from transforms.audiences import AudienceSet
from transforms.config import (Activation, AudienceDefinition, Destination, ExportConfig, MappedAudience,
                               Mapping, MergePolicyConfig)
from transforms.export import DEFAULT_MAX_GROUPED_UPDATES, ExportProfileChanges, GroupUpdatesByProfile
from transforms.exporter import ProfileExporter
from transforms.model import ProfileUpdate
from transforms.profile_state import ProfileState

T0 = 1_714_557_600_000  # 2024-05-01T10:00:00Z
CHUNK = 1000

CONFIG = ExportConfig(
    destination=Destination(name="bench", region="us-east-2", stream="bench", dead_letter="/tmp/dl",
                            include_segment_names=True, include_segment_timestamps=True),
    mapping=Mapping(attributes=("person.name.firstName", "person.name.lastName", "person.birthDate",
                                "personalEmail.address"),
                    audiences=(MappedAudience("aud-delorean", T0, T0), MappedAudience("aud-gold", T0, T0),
                               MappedAudience("aud-buyers", T0, T0))),
    merge_policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),),
    audiences=(
        AudienceDefinition("aud-delorean", "Customer with DeLorean Cars", "mp-default",
                           'vehicle.make = "DeLorean" and person.birthDate < date("1990-01-01")',
                           created_at_ms=T0, updated_at_ms=T0),
        AudienceDefinition("aud-gold", "Gold members", "mp-default", 'loyalty.tier = "gold"'),
        AudienceDefinition("aud-fans", "Science fiction fans", "mp-default", "interests.scifi = true"),
        AudienceDefinition("aud-buyers", "Recent buyers", "mp-default",
                           "xEvent[timestamp occurs <= 7 days before now].exists()"),
    ))


# consent by default (an absent value is not "n"); the variants' updates flip it
CONSENT_CONFIG = dataclasses.replace(CONFIG, activation=Activation(
    "email-targeting", 'not consents.marketing.email.val = "n"'))
VARIANTS = {
    "consent": CONSENT_CONFIG,
    # every activation control that acts per update
    "activation": dataclasses.replace(
        CONSENT_CONFIG, destination=dataclasses.replace(CONFIG.destination, include_export_metadata=True),
        activation=dataclasses.replace(CONSENT_CONFIG.activation, triggers=("audience", "attribute"))),
}


def generate(chunk: int, updates: int, profiles: int, consent: bool = False) -> Iterator[ProfileUpdate]:
    """Deterministic updates ``chunk*CHUNK ..``: mostly attribute writes (a third mapped),
    some identity additions and purchase events; time moves one second per update. ``consent``:
    one update in twenty also writes the consent attribute (``y`` or ``n``)."""
    rng = random.Random(chunk)
    flips = random.Random(-chunk - 1)
    for n in range(chunk * CHUNK, min((chunk + 1) * CHUNK, updates)):
        pid = f"profile-{rng.randrange(profiles):07d}"
        roll = rng.random()
        attributes: dict = {}
        identities: dict = {}
        event = None
        if roll < 0.3:
            attributes = {"person": {"name": {"firstName": rng.choice(("John", "Ann", "Zoë")),
                                              "lastName": "Doe"}, "birthDate": "1985-10-26"}}
        elif roll < 0.5:
            attributes = {"vehicle": {"make": rng.choice(("DeLorean", "Tesla"))}}
        elif roll < 0.65:
            attributes = {"loyalty": {"tier": rng.choice(("gold", "silver")), "points": rng.randrange(1000)}}
        elif roll < 0.8:
            attributes = {"interests": {"scifi": rng.random() < 0.5}, "web": {"visits": n}}
        elif roll < 0.9:
            identities = {"email": (f"{pid}@acme.com",), "ecid": (str(rng.randrange(10 ** 12)),)}
        else:
            event = {"eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 120.5}}}
        if consent and flips.random() < 0.05:
            attributes = {**attributes, "consents": {"marketing": {"email": {"val": flips.choice("yn")}}}}
        yield ProfileUpdate(pid, T0 + n * 1000, None, identities, {}, attributes, event)


class CountPerKey(beam.DoFn):
    """The reference: a stateful DoFn that only counts per key."""
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())

    def process(self, element, count=beam.DoFn.StateParam(COUNT)):
        count.write((count.read() or 0) + 1)
        return ()


class CountPerKeyTimed(CountPerKey):
    """The reference with an event-time timer declared (never set): what the timer parameter alone
    costs the runner per update (the export declares one when some rule reads events)."""
    TICK = TimerSpec("tick", TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(CountPerKey.COUNT), tick=beam.DoFn.TimerParam(TICK)):
        count.write((count.read() or 0) + 1)
        return ()

    @on_timer(TICK)
    def on_tick(self):
        return ()



class ExportRunnerTwin(beam.DoFn):
    """The export's dealings with the runner without its logic: the same grouping step before it
    (a bundle's updates of a profile together, as bytes, decoded here as the export decodes them),
    the same state cell (bytes the runner passes through), the same timer declared, the export's
    own state bytes written and its records emitted for each group (as one element), looked up
    instead of computed. Against the bare DoFn it is what the runner charges the export beyond
    counting; against the export, what its logic costs inside the pipeline; alone, the ratio the
    export would have if its logic cost nothing."""
    PROFILE = ReadModifyWriteStateSpec("profile", BytesCoder())
    TIME_CHANGE = TimerSpec("time_change", TimeDomain.WATERMARK)

    def setup(self):
        # what the export gives each update (its records; after the last of a group, its state
        # bytes), by update timestamp (unique per update), handed over by ``main`` in this process
        self._results = common.IN_PROCESS["export_results"]   # the module, not the dict: pickled by name

    def process(self, element, profile=beam.DoFn.StateParam(PROFILE), time_change=beam.DoFn.TimerParam(TIME_CHANGE)):
        profile.read()
        results = self._results
        updates = GroupUpdatesByProfile.updates_of(element[1])
        records = [record for update in updates for record in results[update.timestamp_ms][1]]
        profile.write(results[updates[-1].timestamp_ms][0])
        return (records,) if records else ()   # as the export: a group's records as one element

    @on_timer(TIME_CHANGE)
    def on_time_change(self):
        return ()


def run_logic(exporter: ProfileExporter, updates, results: Optional[dict] = None) -> dict:
    """The per-profile logic alone over ``updates``, as the pipeline applies it to the
    benchmark's one bundle: a profile's updates together (in arrival order) against one state,
    encoded once after them, states kept encoded as the runner keeps them (live states would load
    the collector); returns the final states. ``results``: also filled with what each update gave, by
    update timestamp (unique per update): its records and, for the last of a profile's updates,
    the state bytes after it, for ``ExportRunnerTwin``."""
    groups: dict = {}
    for update in updates:
        groups.setdefault(update.profile_id, []).append(update)
    states = {}
    for profile_id, group in groups.items():
        state = ProfileState()
        if results is None:
            exporter.update_all(profile_id, state, group)
        else:
            for update in group:
                results[update.timestamp_ms] = None, [record for record, _ in exporter.update(profile_id, state, update)]
        encoded = states[profile_id] = profile_state.encode(state)
        if results is not None:
            results[group[-1].timestamp_ms] = encoded, results[group[-1].timestamp_ms][1]
    return states


def _source(p, updates: int, profiles: int, consent: bool = False):
    chunks = range((updates + CHUNK - 1) // CHUNK)
    return (p | "Chunks" >> beam.Create(list(chunks), reshuffle=False)
            | "Generate" >> beam.FlatMap(generate, updates, profiles, consent))


def _run(build, collector_on: bool = True) -> Tuple[float, float, float, Any]:
    """Wall and CPU seconds (all threads of this process) of one pipeline run, the CPU seconds the
    garbage collector's passes took in it, and its result. ``collector_on=False``: no collection
    during the run (what the logic costs inside the pipeline apart from the collector's passes)."""
    p = beam.Pipeline(options=PipelineOptions(runner="BundleBasedDirectRunner"))
    build(p)
    gc.collect()   # the runs before leave garbage of their own: not this run's to collect
    gc.freeze()    # nor what they left alive (Beam's caches grow with each pipeline built): not this run's to walk
    collector = _CollectorTime()
    gc.callbacks.append(collector)
    if not collector_on:
        gc.disable()
    try:
        start, cpu = time.perf_counter(), time.process_time()
        result = p.run()
        result.wait_until_finish()
        return time.perf_counter() - start, time.process_time() - cpu, collector.seconds, result
    finally:
        gc.enable()
        gc.callbacks.remove(collector)
        gc.unfreeze()


class _CollectorTime:
    """A ``gc.callbacks`` entry summing the CPU time of the collections (each runs on one thread)."""

    def __init__(self):
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase, info):
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._started


def memory_run(profiles: int) -> dict:
    """One export pipeline over ``profiles`` updates spread over as many profile ids, for a
    parent that measures this process's peak RSS (``--memory``): how the runner's keyed state
    grows with the number of profiles."""
    seconds, _, _, result = _run(lambda p: _source(p, profiles, profiles)
                           | ExportProfileChanges(CONFIG, until_ms=T0 + profiles * 1000)
                           | "Discard" >> beam.Map(lambda r: None))
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    with_state = len({u.profile_id for chunk in range((profiles + CHUNK - 1) // CHUNK)
                      for u in generate(chunk, profiles, profiles)})
    return {"profiles": profiles, "updates": profiles, "profiles_with_state": with_state,
            "records": counters.get("records"), "wall_s": round(seconds, 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50_000)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs; the best of each counts")
    parser.add_argument("--variant", choices=tuple(VARIANTS), action="append", default=[],
                        help="also measure the export with these controls on (repeat for more than one)")
    parser.add_argument("--memory", type=int, metavar="PROFILES",
                        help="only the export pipeline over PROFILES updates and profile ids (peak RSS is "
                             "measured by the caller)")
    args = parser.parse_args(argv)
    if args.memory:
        report = memory_run(args.memory)
        print(json.dumps(report))
        return report
    n, k = args.updates, args.profiles

    updates = [u for chunk in range((n + CHUNK - 1) // CHUNK) for u in generate(chunk, n, k)]
    exporter = ProfileExporter(CONFIG, AudienceSet.from_config(CONFIG), until_ms=T0 + n * 1000)
    run_logic(exporter, updates, common.IN_PROCESS.setdefault("export_results", {}))
    inf = float("inf")
    baseline_s = export_s = source_s = inf
    baseline_cpu = export_cpu = source_cpu = timed_cpu = twin_cpu = inf
    baseline_gc = export_gc = twin_gc = inf
    twin_quiet_cpu = export_quiet_cpu = inf   # the collector off
    ungrouped_s = ungrouped_cpu = inf         # every update applied on its own (max_grouped_updates=1)

    def twin(p):
        return (_source(p, n, k)
                | "Group" >> beam.ParDo(GroupUpdatesByProfile()).with_output_types(Tuple[str, Any])
                | "Twin" >> beam.ParDo(ExportRunnerTwin())
                | "Discard" >> beam.Map(lambda r: None))

    def export(p, held: int = DEFAULT_MAX_GROUPED_UPDATES, updates: int = n, profiles: int = k):
        return (_source(p, updates, profiles)
                | ExportProfileChanges(CONFIG, until_ms=T0 + updates * 1000, max_grouped_updates=held)
                | "Discard" >> beam.Map(lambda r: None))

    def count(p, updates: int = n, profiles: int = k, counter=CountPerKey):
        return (_source(p, updates, profiles)
                | "Key" >> beam.Map(lambda u: (u.profile_id, u)).with_output_types(Tuple[str, Any])
                | "Count" >> beam.ParDo(counter()))

    # updates over as many profiles, no two of one profile in a bundle: what grouping costs where it gains nothing
    distinct_n, distinct_k = n // 2, n * 1000
    distinct = {"bare": (inf, inf), "grouped": (inf, inf), "one": (inf, inf)}   # least wall and CPU seconds

    variants = {name: [inf, inf, None] for name in args.variant}   # least wall and CPU seconds, a result
    for _ in range(args.repeat):
        for name, best in variants.items():
            seconds, cpu, _, best[2] = _run(lambda p, config=VARIANTS[name]: _source(p, n, k, consent=True)
                                            | ExportProfileChanges(config, until_ms=T0 + n * 1000)
                                            | "Discard" >> beam.Map(lambda r: None))
            best[0], best[1] = min(best[0], seconds), min(best[1], cpu)
        seconds, cpu, _, _ = _run(lambda p: _source(p, n, k))
        source_s, source_cpu = min(source_s, seconds), min(source_cpu, cpu)
        seconds, cpu, collected, _ = _run(count)
        baseline_s, baseline_cpu, baseline_gc = min(baseline_s, seconds), min(baseline_cpu, cpu), min(baseline_gc, collected)
        _, cpu, _, _ = _run(lambda p: count(p, counter=CountPerKeyTimed))
        timed_cpu = min(timed_cpu, cpu)
        _, cpu, collected, _ = _run(twin)
        twin_cpu, twin_gc = min(twin_cpu, cpu), min(twin_gc, collected)
        seconds, cpu, collected, result = _run(export)
        export_s, export_cpu, export_gc = min(export_s, seconds), min(export_cpu, cpu), min(export_gc, collected)
        seconds, cpu, _, _ = _run(lambda p: export(p, held=1))
        ungrouped_s, ungrouped_cpu = min(ungrouped_s, seconds), min(ungrouped_cpu, cpu)
        for name, build in (("bare", lambda p: count(p, distinct_n, distinct_k)),
                            ("grouped", lambda p: export(p, updates=distinct_n, profiles=distinct_k)),
                            ("one", lambda p: export(p, 1, distinct_n, distinct_k))):
            seconds, cpu, _, _ = _run(build)
            distinct[name] = min(distinct[name][0], seconds), min(distinct[name][1], cpu)
        twin_quiet_cpu = min(twin_quiet_cpu, _run(twin, collector_on=False)[1])
        export_quiet_cpu = min(export_quiet_cpu, _run(export, collector_on=False)[1])
    counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}

    # the per-profile logic alone (generation excluded), and the final state sizes
    pure_cpu = inf
    for _ in range(args.repeat):
        cpu = time.process_time()
        states = run_logic(exporter, updates)
        pure_cpu = min(pure_cpu, time.process_time() - cpu)
    sizes = [len(s) for s in states.values()]

    builds = set(core_build.builds().values())
    report = {
        "runner": "BundleBasedDirectRunner",
        # the per-update core as this process imported it (KINESIS_EXPORT_PURE_PYTHON=1: its Python source)
        "core": builds.pop() if len(builds) == 1 else "mixed",
        "updates": n,
        "profiles": k,
        "export_updates_per_s": round(n / export_s),
        "count_per_key_updates_per_s": round(n / baseline_s),
        "ratio": round(baseline_s / export_s, 3),
        # the same ratio in CPU seconds: what other work on a shared machine disturbs least
        "cpu_ratio": round(baseline_cpu / export_cpu, 3),
        # the CPU ratio the export would have if its logic cost nothing (ExportRunnerTwin)
        "cpu_ratio_with_free_logic": round(baseline_cpu / twin_cpu, 3),
        "pure_updates_per_s": round(n / pure_cpu),
        # the same export applying every update on its own (--max_grouped_updates 1), as when no
        # profile has two updates in one bundle
        "one_update_per_group": {"export_updates_per_s": round(n / ungrouped_s),
                                 "ratio": round(baseline_s / ungrouped_s, 3),
                                 "cpu_ratio": round(baseline_cpu / ungrouped_cpu, 3)},
        "distinct_profiles": {"updates": distinct_n,
                              "export_updates_per_s": round(distinct_n / distinct["grouped"][0]),
                              "count_per_key_updates_per_s": round(distinct_n / distinct["bare"][0]),
                              "ratio": round(distinct["bare"][0] / distinct["grouped"][0], 3),
                              "cpu_ratio": round(distinct["bare"][1] / distinct["grouped"][1], 3),
                              "ratio_one_update_per_group": round(distinct["bare"][0] / distinct["one"][0], 3),
                              "cpu_ratio_one_update_per_group": round(distinct["bare"][1] / distinct["one"][1], 3)},
        # updates per element of the stateful step: a bundle's updates of one profile
        "updates_per_group": round(n / counters["update_groups"], 2),
        "records": counters.get("records"),
        "exports_by_trigger": {kind: counters.get(f"exports_{kind}") for kind in ("audience", "identity", "attribute")},
        # where an update's time goes, from the runs above (CPU µs per update)
        "us_per_update": {"source": round(source_cpu / n * 1e6, 1),
                          "runner_keyed_state": round((baseline_cpu - source_cpu) / n * 1e6, 1),
                          "export_logic": round(pure_cpu / n * 1e6, 1),
                          # the twin beyond the bare DoFn, and the export beyond the twin
                          "runner_timers_and_outputs": round((twin_cpu - baseline_cpu) / n * 1e6, 1),
                          "export_logic_in_pipeline": round((export_cpu - twin_cpu) / n * 1e6, 1),
                          # the same with the collector off in both runs: the logic apart from its passes
                          "export_logic_in_pipeline_without_collector": round((export_quiet_cpu - twin_quiet_cpu) / n * 1e6, 1)},
        # of which the timer parameter alone (the bare DoFn declaring a timer it never sets)
        "us_timer_parameter": round((timed_cpu - baseline_cpu) / n * 1e6, 1),
        # of the CPU time above, the garbage collector's passes (least of the runs), mostly over
        # the runner's bundles held in memory, in every pipeline
        "us_garbage_collector": {"count_per_key": round(baseline_gc / n * 1e6, 1),
                                 "twin": round(twin_gc / n * 1e6, 1),
                                 "export": round(export_gc / n * 1e6, 1)},
        "state_bytes_per_profile_mean": round(sum(sizes) / len(sizes)),
        "state_bytes_per_profile_max": max(sizes),
    }
    if variants:
        flipping = [u for chunk in range((n + CHUNK - 1) // CHUNK) for u in generate(chunk, n, k, consent=True)]
    for name, (seconds, cpu, result) in variants.items():
        found = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
        config = VARIANTS[name]
        variant_sizes = [len(s) for s in run_logic(ProfileExporter(config, AudienceSet.from_config(config),
                                                                   T0 + n * 1000), flipping).values()]
        report[name] = {
            "export_updates_per_s": round(n / seconds),
            "relative_to_export": round(export_s / seconds, 3),
            "cpu_relative_to_export": round(export_cpu / cpu, 3),
            "us_per_update_more": round((cpu - export_cpu) / n * 1e6, 1),
            "records": found.get("records"),
            "state_bytes_per_profile_mean": round(sum(variant_sizes) / len(variant_sizes)),
            **{counter: found.get(counter, 0) for counter in ("consent_withheld", "consent_opt_outs", "consent_opt_ins")}}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
