"""What the benchmarks share: the bench config, a cached snapshot, whole-process timing."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from typing import List, Tuple

import yaml

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")

AUDIENCES = [
    ("aud-delorean", 'vehicle.make = "DeLorean" and person.birthDate < date("1990-01-01")'),
    ("aud-gold", 'loyalty.tier in ["gold", "platinum"] and loyalty.points >= 5000'),
    ("aud-johns", 'person.name.firstName.startsWith("J") and personalEmail.address.isNotNull()'),
]


def bench_config(path: str, stream: str = "bench", endpoint_url: str = None) -> str:
    """Three attribute audiences of one merge policy, all mapped, four mapped attributes."""
    doc = {
        "destination": {"name": "bench", "region": "us-east-2", "stream": stream,
                        "dead_letter": os.path.join(os.path.dirname(path), "dead-letter")},
        "mapping": {"attributes": ["person.name.firstName", "person.name.lastName", "person.birthDate",
                                   "personalEmail.address"],
                    "audiences": [{"id": a} for a, _ in AUDIENCES]},
        "merge_policies": [{"id": "mp-default", "type": "timestamp_ordered", "default": True}],
        "audiences": [{"id": a, "name": a, "rule": r} for a, r in AUDIENCES],
    }
    if endpoint_url:
        doc["destination"]["endpoint_url"] = endpoint_url
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def cached_snapshot(n: int) -> str:
    from bench.datagen import write_snapshot
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"snapshot-{n}.parquet")
    if not os.path.exists(path):
        write_snapshot(path, n, seed=7, with_membership=True)
    return path


def timed_process(args: List[str], **kwargs) -> Tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MiB, result) of one whole child process (GNU time reports the
    peak of that process alone)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", *args], capture_output=True, text=True, **kwargs)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed: {proc.stderr[-1500:]}")
    rss_kb = int(proc.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    return wall, rss_kb // 1024, proc


def machine() -> dict:
    import apache_beam
    import pyarrow
    return {"cores": os.cpu_count(), "python": platform.python_version(), "beam": apache_beam.__version__,
            "pyarrow": pyarrow.__version__, "platform": platform.platform()}


def emit(result: dict) -> dict:
    print(json.dumps(result), flush=True)
    return result
