"""End-to-end export latency at a fixed offered rate: goal p95 under 2 s.

``python -m bench.latency_bench [--rate R --seconds S]``: updates are offered at R per second
(a pacing step stamps each with the wall clock as it enters the pipeline), go through
``ExportProfileChanges`` and ``KinesisWrite`` (its default requests in flight) on the
BundleBasedDirectRunner, and reach ``bench.shard_endpoint`` (a separate process behaving like a
provisioned stream of 16 shards, every reply 30 ms late, as a round trip to AWS), which notes
when each record arrives. Every update writes a mapped attribute of a member, so each one is
exported; its ``bench.sentAt`` attribute carries the update time, and the endpoint's arrival time
minus it is the latency.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream

from bench.common import emit
from bench.shard_endpoint import shard_endpoint

SHARDS = 16  # 16,000 records/s: room above the highest rate measured

class Pace(beam.DoFn):
    """Releases ticket i at start + i / rate and stamps its update with the wall clock."""

    def __init__(self, rate: float, profiles: int):
        self._rate, self._profiles = rate, profiles
        self._start = None

    def process(self, ticket: int):
        from transforms.model import ProfileUpdate
        if self._start is None:
            self._start = time.time() - ticket / self._rate
        delay = self._start + ticket / self._rate - time.time()
        if delay > 0:
            time.sleep(delay)
        now = int(time.time() * 1000)
        yield ProfileUpdate(f"p-{ticket % self._profiles}", now, None, {}, {},
                            {"bench": {"member": True, "sentAt": now}}, None)


def config(endpoint: str):
    from transforms.config import (AudienceDefinition, Destination, ExportConfig, MappedAudience, Mapping,
                                   MergePolicyConfig)
    return ExportConfig(
        destination=Destination("bench", "us-east-2", "bench", tempfile.mkdtemp(), endpoint_url=endpoint),
        mapping=Mapping(("bench.sentAt",), (MappedAudience("aud-bench"),)),
        merge_policies=(MergePolicyConfig("mp", "timestamp_ordered", True),),
        audiences=(AudienceDefinition("aud-bench", "bench", "mp", "bench.member = true"),))


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else None


def run(rate: float, seconds: float, bundle: Optional[int] = None) -> dict:
    from transforms.export import ExportProfileChanges
    from transforms.kinesis import KinesisWrite
    log = tempfile.NamedTemporaryFile(suffix=".log", delete=False).name
    try:
        with shard_endpoint(SHARDS, latency_log=log) as url:
            cfg = config(url)
            n = int(rate * seconds)
            # a tenth of a second of updates per bundle, as a source's poll delivers them: the DirectRunner
            # pays a lot per bundle (it scans every key's state for due timers once per bundle)
            bundle = bundle or max(50, int(rate / 10))
            stream = TestStream()
            for start in range(0, n, bundle):
                stream = stream.add_elements(list(range(start, min(n, start + bundle))))
            stream = stream.advance_watermark_to_infinity()
            options = PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])
            with beam.Pipeline(options=options) as p:
                _ = (p | stream | "Pace" >> beam.ParDo(Pace(rate, max(1, n // 4)))
                     | ExportProfileChanges(cfg) | KinesisWrite(cfg.destination, alerts=None, max_delay_ms=100,
                                                               check=False))
        latencies = [float(line) for line in open(log)]
    finally:
        os.unlink(log)
    return emit({"benchmark": "latency", "offered_rate_per_s": rate, "updates": n, "records": len(latencies),
                 "p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95),
                 "p99_ms": percentile(latencies, 0.99), "goal": "p95 < 2000 ms"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    run(args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
