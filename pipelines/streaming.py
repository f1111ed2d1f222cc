"""``python -m pipelines.streaming``: profile updates in, export records to Kinesis.

    python -m pipelines.streaming --config CONFIG --input SOURCE [--seed_snapshot GLOB]
                                  [--until ISO8601] [--output kinesis|DIR] [Beam options]

SOURCE is a JSONL/Avro path or glob (bounded replay: the job ends when the input is consumed),
``watch:DIR`` (new files read as they land) or ``kinesis:STREAM`` (every shard of an input
stream). Without ``--runner``, a bounded replay runs on the ``BundleBasedDirectRunner`` (keyed
state is several times faster there than on the FnApiRunner, docs/DEVELOPING.md), and an unbounded source on
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

from pipelines.common import (ConfigOptions, ExportJobOptions, ProgressOptions, check_output, cli_main,
                              default_runner, job_counts, load_job_config, parse_command_line,
                              parse_time_option, rate, require, run_pipeline, uncounted, where_records_went,
                              write_output)
from transforms import progress
from transforms.config import ExportConfig
from transforms.dead_letter import WriteDeadLetters
from transforms.errors import UserError
from transforms.export import DEFAULT_MAX_GROUPED_UPDATES, ExportProfileChanges
from transforms.timeutil import now_ms

WATCH = "watch:"
KINESIS_INPUT = "kinesis:"


class StreamingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", metavar="SOURCE",
                            help="update files (path, glob or directory), watch:DIR or kinesis:STREAM (required)")
        parser.add_argument("--seed_snapshot", metavar="GLOB", help="Parquet snapshot of the state already known")
        parser.add_argument("--until", metavar="ISO8601",
                            help="bounded input: evaluation time at its end (default: now)")
        parser.add_argument("--poll_interval_s", type=float, default=5.0, metavar="S",
                            help="watch: and kinesis: sources: seconds between polls")
        parser.add_argument("--stop_after_s", type=float, default=None, metavar="S",
                            help="watch: and kinesis: sources: stop after S seconds (kinesis: S idle)")
        parser.add_argument("--max_grouped_updates", type=int, default=DEFAULT_MAX_GROUPED_UPDATES, metavar="N",
                            help="updates a worker holds per bundle to apply a profile's updates together "
                                 f"(default {DEFAULT_MAX_GROUPED_UPDATES:,}; 1: none held)")


SUMMARY = "Read profile updates, evaluate the audiences and export each change of a profile."
USAGE = ("--config CONFIG --input SOURCE [--seed_snapshot GLOB] [--until ISO8601] [--max_grouped_updates N] "
         "[--output kinesis|DIR [--overwrite]] [Beam options]")


def is_unbounded(source: str) -> bool:
    return source.startswith((WATCH, KINESIS_INPUT))


def read_updates(pipeline: beam.Pipeline, source: str, config: ExportConfig, options: StreamingOptions):
    """The ``--input`` source (docs/semantics.md#inputs), as tagged outputs ``updates`` and ``dead_letter``."""
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
    records = read.updates | "ExportProfileChanges" >> ExportProfileChanges(
        config, seed=seed, until_ms=until_ms, max_grouped_updates=streaming.max_grouped_updates)
    write_output(records, config, job.output, live=is_unbounded(source))


def run(argv: Sequence[str]) -> int:
    parse_command_line(argv, "python -m pipelines.streaming", USAGE, SUMMARY,
                       [ConfigOptions, ExportJobOptions, StreamingOptions, ProgressOptions])
    options = PipelineOptions(argv)
    streaming = options.view_as(StreamingOptions)
    require(streaming.input, "--input")
    if streaming.max_grouped_updates < 1:
        raise UserError(f"--max_grouped_updates must be 1 or more, not {streaming.max_grouped_updates}")
    config = load_job_config(options)
    job = options.view_as(ExportJobOptions)
    check_output(config, job.output, job.overwrite)
    default_runner(options, "DirectRunner" if is_unbounded(streaming.input) else "BundleBasedDirectRunner")
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, options)
    result = run_pipeline(pipeline, options, report_progress)
    counts = job_counts(result, COUNTS)
    where = where_records_went(config, job.output)
    print(summary(counts, where) if counts is not None else uncounted("streaming", options, where), file=sys.stderr)
    return 0


COUNTS = (progress.UPDATES, progress.INPUTS_DEAD_LETTERED, progress.RECORDS, progress.RECORDS_DEAD_LETTERED)


def report_progress(counts, elapsed_s: float) -> None:
    seed = counts.get(progress.SEED_PROFILES)
    evaluated = counts.get(progress.UPDATES_EVALUATED, 0)
    print(f"streaming: " + (f"{seed} seed profiles read, " if seed else "")
          + f"{counts.get(progress.UPDATES, 0)} updates read, {counts.get(progress.INPUTS_DEAD_LETTERED, 0)} "
          f"inputs dead-lettered, {evaluated} updates evaluated ({rate(evaluated, elapsed_s)}), "
          f"{counts.get(progress.RECORDS, 0)} records out, {elapsed_s:.0f} s", file=sys.stderr, flush=True)


def summary(counts, where: str) -> str:
    """The closing line: exact counts of what was read, written or sent, and dead-lettered."""
    records, dead = counts[progress.RECORDS], counts[progress.RECORDS_DEAD_LETTERED]
    updates, bad = counts[progress.UPDATES], counts[progress.INPUTS_DEAD_LETTERED]
    return (f"streaming: {updates + bad} inputs read: {updates} updates, {bad} dead-lettered; {records - dead} records {where}, "
            f"{dead} records dead-lettered")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(main())
