"""A local Kinesis endpoint that behaves like a provisioned stream of S shards, for the sink's
capacity and latency benchmarks.

``python -m bench.shard_endpoint --shards S [--delay_ms 30] [--latency_log PATH]`` prints its
port, then serves ListStreams and PutRecords for any stream name:
- partition keys map to shards by the MD5 of the key over equal hash-key ranges, as Kinesis
  does; each shard takes 1,000 records/s and 1 MiB/s (token buckets holding one second, full
  when the first record arrives, as an idle stream's second is), and a record over that gets a
  per-record ``ProvisionedThroughputExceededException``;
- every reply is held back ``delay_ms`` (a round trip to AWS);
- it checks what arrives: records carry their sequence in their first 9 data bytes (ASCII
  digits), and a record of a key whose sequence is not above the last one accepted for that key
  counts as out of order. ``GET /stats`` answers the counts as JSON;
- with ``--latency_log`` it notes, per accepted record, its arrival minus the record's
  ``bench.sentAt`` (ms): the end-to-end latency of ``bench.latency_bench``.
"""
from __future__ import annotations

import argparse
import base64
import bisect
from binascii import a2b_base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDS_PER_SHARD_S = 1000
BYTES_PER_SHARD_S = 1024 * 1024
_OK = b'{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ShardId":"shardId-000000000000"}'
# A record as KinesisWrite and the raw reference write it; any other body is parsed as JSON.
_RECORD = re.compile(rb'\{"Data":"([^"]*)","PartitionKey":"([^"\\]*)"\}')
_THROTTLED = (b'{"ErrorCode":"ProvisionedThroughputExceededException",'
              b'"ErrorMessage":"Rate exceeded for shard in stream bench."}')


class ProvisionedStream:
    """Token buckets per shard and the per-key order check. Thread-safe."""

    def __init__(self, shards: int, sequence_in_data: bool = True):
        self.shards = shards
        self.starts = [(2 ** 128 * i) // shards for i in range(shards)]  # hash-key range starts
        self.records = [float(RECORDS_PER_SHARD_S)] * shards  # full: an idle stream's second
        self.bytes = [float(BYTES_PER_SHARD_S)] * shards
        self.updated = [None] * shards  # refills count from the first record sent
        self.last_seq = {}
        self._shards = {}  # key -> shard: the MD5 once per key
        self.sequence_in_data = sequence_in_data
        self.stats = {"requests": 0, "accepted": 0, "throttled": 0, "out_of_order": 0, "repeated": 0,
                      "first_accept": None, "last_accept": None}
        self.lock = threading.Lock()

    def shard_of(self, key: bytes) -> int:
        shard = self._shards.get(key)
        if shard is None:
            shard = self._shards[key] = self._hash_shard(key)
        return shard

    def _hash_shard(self, key: bytes) -> int:
        return bisect.bisect_right(self.starts, int.from_bytes(hashlib.md5(key).digest(), "big")) - 1

    def put(self, records) -> list:
        """``records``: (partition key, base64 data) pairs of bytes. Per record: accepted (True) or
        throttled (False). (Written for little CPU: the endpoint shares the client's cores.)"""
        out = []
        now = time.monotonic()
        known = self._shards.get
        shards = [known(key) for key, _ in records]
        if None in shards:
            shards = [self.shard_of(key) for key, _ in records]
        check_order = self.sequence_in_data
        with self.lock:
            tokens, room, updated, last_seq, stats = self.records, self.bytes, self.updated, self.last_seq, self.stats
            for shard in set(shards):
                elapsed = now - (updated[shard] or now)
                updated[shard] = now
                tokens[shard] = min(RECORDS_PER_SHARD_S, tokens[shard] + elapsed * RECORDS_PER_SHARD_S)
                room[shard] = min(BYTES_PER_SHARD_S, room[shard] + elapsed * BYTES_PER_SHARD_S)
            for (key, data), shard in zip(records, shards):
                size = len(key) + len(data) * 3 // 4
                if tokens[shard] < 1 or room[shard] < size:
                    out.append(False)
                    continue
                tokens[shard] -= 1
                room[shard] -= size
                out.append(True)
                if check_order:
                    seq = int(a2b_base64(data[:12]))
                    previous = last_seq.get(key, -1)
                    if seq > previous:
                        last_seq[key] = seq
                    elif seq == previous:
                        stats["repeated"] += 1
                    else:
                        stats["out_of_order"] += 1
            accepted = sum(out)
            stats["requests"] += 1
            stats["accepted"] += accepted
            stats["throttled"] += len(out) - accepted
            if accepted:
                stats["first_accept"] = stats["first_accept"] or time.time()
                stats["last_accept"] = time.time()
        return out


def parse_records(body: bytes) -> list:
    """(partition key, base64 data) as bytes, of each record of a PutRecords body. A regex over the body
    costs a fraction of ``json.loads`` (the endpoint shares the client's cores); a body it
    does not read whole (escaped keys, other field order) is parsed as JSON."""
    found = _RECORD.findall(body)
    if len(found) == body.count(b'"PartitionKey"'):
        return [(key, data) for data, key in found]
    return [(r["PartitionKey"].encode(), r["Data"].encode()) for r in json.loads(body)["Records"]]


def serve(shards: int, delay_s: float, latency_log=None) -> ThreadingHTTPServer:
    stream = ProvisionedStream(shards, sequence_in_data=latency_log is None)
    log = open(latency_log, "w") if latency_log else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_GET(self):
            self._answer(json.dumps(dict(stream.stats, distinct_keys=len(stream.last_seq),
                                          cpu_s=time.process_time())).encode())

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            target = self.headers.get("X-Amz-Target", "")
            if target.endswith(".ListStreams"):
                data = b'{"StreamNames":["bench"],"HasMoreStreams":false}'
            elif target.endswith(".PutRecords"):
                records = parse_records(body)
                results = stream.put(records)
                if log is not None:
                    now = time.time() * 1000
                    log.write("".join(f"{now - json.loads(base64.b64decode(data))['bench']['sentAt']:.1f}\n"
                                      for (_, data), ok in zip(records, results) if ok))
                    log.flush()
                failed = results.count(False)
                data = b'{"FailedRecordCount":%d,"Records":[%s]}' % (
                    failed, b",".join(_OK if ok else _THROTTLED for ok in results))
            else:
                self._answer(b'{"__type":"UnknownOperationException"}', 400)
                return
            time.sleep(delay_s)
            self._answer(data)

        def _answer(self, data: bytes, status: int = 200):
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer.daemon_threads = True
    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@contextlib.contextmanager
def shard_endpoint(shards: int, delay_ms: float = 30, latency_log: str = None):
    """The endpoint in its own process (its CPU is not the client's); yields its URL."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    args = [sys.executable, "-m", "bench.shard_endpoint", "--shards", str(shards), "--delay_ms", str(delay_ms)]
    server = subprocess.Popen(args + (["--latency_log", latency_log] if latency_log else []),
                              stdout=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{server.stdout.readline().strip()}"
    finally:
        server.terminate()
        server.wait(10)


def stats(url: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(url + "/stats") as response:
        return json.loads(response.read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--delay_ms", type=float, default=30)
    parser.add_argument("--latency_log")
    args = parser.parse_args(argv)
    server = serve(args.shards, args.delay_ms / 1000.0, args.latency_log)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
