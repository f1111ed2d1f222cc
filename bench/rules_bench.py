"""Rule evaluation micro-benchmark: profiles per second of the per-profile and the vectorized
evaluators on three typical rules over a generated snapshot.

    python -m bench.rules_bench [--profiles N] [--repeat R]

Prints one JSON line per (rule, evaluator), best of R runs, plus the vectorized/per-profile
ratio. The per-profile evaluator runs on ready-made view dicts (as streaming holds them); the
vectorized one on 65,536-row record batches, with event rules falling back per profile.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa

from transforms.rules import compile_rule

NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z
DAY = 86_400_000
BATCH_ROWS = 65_536

RULES = {
    "attribute_equality_date": 'vehicle.make = "DeLorean" and person.birthDate < date("1990-01-01")',
    "string_function_in": 'personalEmail.address.endsWith("@acme.com", false) and homeAddress.city in ["Paris", "Berlin", "Rome"]',
    "event_count_window": 'xEvent[eventType = "commerce.purchases" and timestamp occurs <= 7 days before now].count() >= 2',
}


def generate(n: int, seed: int = 7):
    """A snapshot table of ``n`` profiles (vectorized, a few % nulls) and events for a third."""
    rng = np.random.default_rng(seed)

    def pick(values, p_null=0.05):
        arr = np.asarray(values, dtype=object)[rng.integers(0, len(values), n)]
        return pa.array(arr, mask=rng.random(n) < p_null)

    days = rng.integers(-20 * 365, 40 * 365, n).astype("int32")
    birth = pa.array(days, pa.int32(), mask=rng.random(n) < 0.05).view(pa.date32())
    first = pick(["John", "Jane", "Marty", "Emmett", "Lorraine", "Biff"])
    emails = pa.array([f"user{i}@{d}" for i, d in enumerate(np.array(["acme.com", "ACME.com", "mail.org"])[rng.integers(0, 3, n)])])
    table = pa.table({
        "profileId": pa.array([f"p-{i}" for i in range(n)]),
        "person": pa.StructArray.from_arrays([pa.StructArray.from_arrays([first], ["firstName"]), birth], ["name", "birthDate"]),
        "vehicle": pa.StructArray.from_arrays([pick(["DeLorean", "Ford", "Toyota", "Tesla"])], ["make"]),
        "personalEmail": pa.StructArray.from_arrays([emails], ["address"]),
        "homeAddress": pa.StructArray.from_arrays([pick(["Paris", "Berlin", "Rome", "Hill Valley", "Madrid"])], ["city"]),
    })
    events = {}
    kinds = ("commerce.purchases", "web.pageViews")
    for i in range(0, n, 3):
        k = int(rng.integers(1, 6))
        ages = rng.integers(0, 14 * DAY, k)
        events[f"p-{i}"] = sorted(({"timestamp": NOW - int(a), "eventType": kinds[int(a) % 2]} for a in ages),
                                  key=lambda e: e["timestamp"])
    return table, events


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    table, events = generate(args.profiles)
    batches = table.to_batches(max_chunksize=BATCH_ROWS)
    views = table.to_pylist()
    no_events = ()
    for name, text in RULES.items():
        rule = compile_rule(name, text)
        evaluate, vectorized = rule.evaluate, rule.vectorized

        def per_profile():
            get = events.get
            for view in views:
                evaluate(view, get(view["profileId"], no_events), NOW, {})

        def batched():
            for batch in batches:
                vectorized(batch, NOW, {}, events)

        rates = {}
        for evaluator, fn in (("per_profile", per_profile), ("vectorized", batched)):
            seconds = best_of(args.repeat, fn)
            rates[evaluator] = args.profiles / seconds
            print(json.dumps({"bench": "rules", "rule": name, "evaluator": evaluator, "profiles": args.profiles,
                              "seconds": round(seconds, 4), "profiles_per_s": round(rates[evaluator])}), flush=True)
        print(json.dumps({"bench": "rules", "rule": name, "vectorized_over_per_profile":
                          round(rates["vectorized"] / rates["per_profile"], 2)}), flush=True)


if __name__ == "__main__":
    main()
