"""``python -m pipelines.streaming``: profile updates in, export records to Kinesis (SPEC 2).

    python -m pipelines.streaming --config CONFIG --input SOURCE [--seed_snapshot GLOB]
                                  [--until ISO8601] [--output kinesis|PATH] [Beam options]

SOURCE is a JSONL/Avro path or glob (bounded replay: the job ends when the input is consumed),
``watch:DIR`` (new files read as they land) or ``kinesis:STREAM`` (every shard of an input
stream). Without ``--runner``, a bounded replay runs on the ``BundleBasedDirectRunner`` (keyed
state is several times faster there than on the FnApiRunner, SPEC 9), and an unbounded source on
the ``DirectRunner``, the local runner that executes splittable sources: on Prism (when it can be
downloaded) records stream as they come; on its offline fallback, the batch engine, they reach the
export when the source stops (``--stop_after_s``). Flink and Dataflow stream them as they come.
"""
from __future__ import annotations

import logging
import math
import sys
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import (ExportJobOptions, check_output, cli_main, default_runner,
                              load_job_config, metric_total, parse_time_option, require,
                              write_output)
from transforms.config import ExportConfig
from transforms.dead_letter import WriteDeadLetters
from transforms.errors import UserError
from transforms.export import ExportProfileChanges
from transforms.timeutil import now_ms

WATCH = "watch:"
KINESIS_INPUT = "kinesis:"


class StreamingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", help="JSONL/Avro glob, watch:DIR or kinesis:STREAM")
        parser.add_argument("--seed_snapshot", help="Parquet snapshot glob of the state already known")
        parser.add_argument("--until", help="bounded replay: evaluation time at the end of input "
                                            "(ISO-8601; default: the wall clock)")
        parser.add_argument("--poll_interval_s", type=float, default=5.0,
                            help="watch:DIR and kinesis:STREAM poll interval in seconds")
        parser.add_argument("--stop_after_s", type=float, default=None,
                            help="unbounded sources: stop watching after this many seconds "
                                 "(kinesis: after this long without new records); for demos and tests")


def is_unbounded(source: str) -> bool:
    return source.startswith((WATCH, KINESIS_INPUT))


def read_updates(pipeline: beam.Pipeline, source: str, config: ExportConfig, options: StreamingOptions):
    """The source of SPEC 2, as tagged outputs ``updates`` and ``dead_letter``."""
    from transforms import inputs
    interval, stop = options.poll_interval_s, options.stop_after_s
    if source.startswith(WATCH):
        return pipeline | "WatchUpdates" >> inputs.WatchProfileUpdates(
            source[len(WATCH):], interval_s=interval, stop_after_s=stop)
    if source.startswith(KINESIS_INPUT):
        dest = config.destination
        return pipeline | "ReadKinesisUpdates" >> inputs.ReadKinesisUpdates(
            source[len(KINESIS_INPUT):], region=dest.region, endpoint_url=dest.endpoint_url,
            credentials=dest.credentials, poll_interval_s=interval,
            max_idle_polls=None if stop is None else max(1, math.ceil(stop / interval)))
    return pipeline | "ReadUpdates" >> inputs.ReadProfileUpdates(source)


def build(pipeline: beam.Pipeline, config: ExportConfig, options: PipelineOptions) -> None:
    job = options.view_as(ExportJobOptions)
    streaming = options.view_as(StreamingOptions)
    source = streaming.input
    until_ms: Optional[int] = None
    if not is_unbounded(source):
        until_ms = parse_time_option(streaming.until, "--until")
        if until_ms is None:
            until_ms = now_ms()
    elif streaming.until:
        raise UserError("--until applies to a bounded replay only, not to " + source)
    read = read_updates(pipeline, source, config, streaming)
    read.dead_letter | "InputDeadLetters" >> WriteDeadLetters(config.destination.dead_letter)
    seed = None
    if streaming.seed_snapshot:
        from transforms.snapshot import ReadSnapshotProfiles
        seed = pipeline | "ReadSeed" >> ReadSnapshotProfiles(streaming.seed_snapshot)
    records = read.updates | "ExportProfileChanges" >> ExportProfileChanges(config, seed=seed, until_ms=until_ms)
    write_output(records, config, job.output, live=is_unbounded(source))


def run(argv: Sequence[str]) -> int:
    options = PipelineOptions(argv)
    streaming = options.view_as(StreamingOptions)
    require(streaming.input, "--input")
    config = load_job_config(options)
    output = options.view_as(ExportJobOptions).output
    check_output(config, output)
    default_runner(options, "DirectRunner" if is_unbounded(streaming.input) else "BundleBasedDirectRunner")
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, options)
    result = pipeline.run()
    result.wait_until_finish()
    print(summary(result), file=sys.stderr)
    return 0


def summary(result) -> str:
    updates = metric_total(result, "updates", "export")
    exported = metric_total(result, "records_sent") or metric_total(result, "records_written")
    input_dl = metric_total(result, "input_dead_letters")
    record_dl = metric_total(result, "records_dead_lettered")
    return (f"streaming: {updates} updates, {exported} records exported, "
            f"{input_dl} inputs and {record_dl} records dead-lettered")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(main())
