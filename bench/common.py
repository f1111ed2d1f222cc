"""What the benchmarks share: the bench config, a cached snapshot, whole-process timing."""
from __future__ import annotations

import contextlib
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

# values a benchmark hands to the DoFns it runs in this process: a module run as ``__main__`` is
# pickled by value with its DoFns, data and all, and the runner unpickles them per bundle
IN_PROCESS: dict = {}


EVENT_AUDIENCES = [
    ("aud-active", "xEvent[timestamp occurs <= 30 days before now].count() >= 2"),
    # prices are cents: no sum lands within float rounding of this bound, whatever the order
    ("aud-spender", 'xEvent[eventType = "commerce.purchases"].sum(commerce.order.priceTotal) > 1000.005'),
]


def bench_config(path: str, stream: str = "bench", endpoint_url: str = None, audiences=AUDIENCES) -> str:
    """Audiences (default: the three attribute ones) of one merge policy, all mapped, four
    mapped attributes."""
    doc = {
        "destination": {"name": "bench", "region": "us-east-2", "stream": stream,
                        "dead_letter": os.path.join(os.path.dirname(path), "dead-letter")},
        "mapping": {"attributes": ["person.name.firstName", "person.name.lastName", "person.birthDate",
                                   "personalEmail.address"],
                    "audiences": [{"id": a} for a, _ in audiences]},
        "merge_policies": [{"id": "mp-default", "type": "timestamp_ordered", "default": True}],
        "audiences": [{"id": a, "name": a, "rule": r} for a, r in audiences],
    }
    if endpoint_url:
        doc["destination"]["endpoint_url"] = endpoint_url
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def cached_snapshot(n: int) -> str:
    from pipelines.sample_data import write_snapshot
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"snapshot-{n}.parquet")
    if not os.path.exists(path):
        write_snapshot(path, n, seed=7, with_membership=True)
    return path


def cached_events(n_events: int, n_profiles: int) -> str:
    from pipelines.sample_data import write_events
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"events-{n_events}-{n_profiles}.parquet")
    if not os.path.exists(path):
        write_events(path + ".tmp", n_events, n_profiles)
        os.rename(path + ".tmp", path)
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


# A local Kinesis endpoint that acknowledges every record (so it is not what a benchmark
# measures). With a log path it also notes, per record, its arrival minus the record's
# ``bench.sentAt`` (ms): the end-to-end latency.
NULL_ENDPOINT = r'''
import base64, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
log = open(sys.argv[1], "w") if len(sys.argv) > 1 else None
cache = {}
def ack(n):
    if n not in cache:
        cache[n] = json.dumps({"FailedRecordCount": 0, "Records": [
            {"SequenceNumber": "49590338271490256608559692538361571095921575989136588898", "ShardId": "shardId-000000000000"}] * n}).encode()
    return cache[n]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("X-Amz-Target", "").endswith("ListStreams"):
            data = json.dumps({"StreamNames": ["bench"], "HasMoreStreams": False}).encode()
        else:
            if log:
                now = time.time() * 1000
                for r in json.loads(body)["Records"]:
                    log.write(f"{now - json.loads(base64.b64decode(r['Data']))['bench']['sentAt']:.1f}\n")
                log.flush()
            data = ack(body.count(b'"PartitionKey"'))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
'''


@contextlib.contextmanager
def null_endpoint(latency_log: str = None):
    """The endpoint above in its own process; yields its URL and stops it."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    args = [sys.executable, "-c", NULL_ENDPOINT] + ([latency_log] if latency_log else [])
    server = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{server.stdout.readline().strip()}"
    finally:
        server.terminate()
        server.wait(10)
