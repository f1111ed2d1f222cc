"""``python -m pipelines.backfill``: export a Parquet snapshot's qualified profiles
(docs/semantics.md, "Backfill").

    python -m pipelines.backfill --config CONFIG --snapshot GLOB [--events GLOB]
                                 [--audiences ID,ID] [--as_of ISO8601] [--output kinesis|DIR]

Without ``--runner`` the job runs on the DirectRunner's FnApiRunner in ``multi_threading`` mode
with one worker thread per core: the pipeline is one fused stage over row groups whose work is
pyarrow kernels, which release the GIL, so threads format row groups in parallel without the
start-up of worker processes (``multi_processing``) or copying blobs between them. Measured on
2 cores, 1M profiles: ~3.0 s against ~3.6 s with one worker, for ~150 MiB more memory. The
BundleBasedDirectRunner is faster only for keyed state, which a backfill has none of. Given
``--direct_num_workers`` or ``--direct_running_mode`` are kept as they are.

Locally the work runs in this process, so the launcher also picks its Arrow allocator
(``local_allocator``): jemalloc keeping freed pages for 10 s. The default pool (mimalloc) hands
freed pages back to the OS within milliseconds, and the next batch faults fresh ones in, each
zeroed by the kernel: with events that was ~1 s of system time in a ~7 s run (measured: 1.3-1.7 s
against 2.3-2.8 s of system time, 5.6-6.0 s against 6.1-6.7 s wall); without events it is
neutral.

With ``--events`` the local default is the BundleBasedDirectRunner instead: the event join
shuffles Arrow blobs of a few MiB through ``CoGroupByKey``, which the FnApiRunner copies several
times (measured: 650 MiB of blobs took 20 s and 3.3 GiB in ``in_memory`` mode, 4.7 s and
0.8 GiB on the BundleBasedDirectRunner) and, in ``multi_threading`` mode, lost some of (Beam
2.77: 409 of 420 1-MiB values arrived). That runner runs one step at a time on one thread, so
the join's two heavy steps (events to contributions, a bucket's formatting) use
``--join_threads`` threads, one per core unless given (measured on 2 cores, 1M profiles and 10M
events: ~7.0 s against ~8.7 s with one). On other runners it is 1: their workers already run
a thread or process per core.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines.common import (ConfigOptions, ExportJobOptions, ProgressOptions, check_output, cli_main,
                              count, default_runner, job_counts, load_job_config, metric_total, parse_command_line,
                              parse_time_option, rate, require, run_pipeline, uncounted, where_records_went,
                              write_output)
from transforms import progress
from transforms.audiences import AudienceSet
from transforms.backfill import ExportSnapshot
from transforms.config import ExportConfig
from transforms.dead_letter import WriteDeadLetters
from transforms.errors import UserError
from transforms.snapshot import match_files, open_parquet
from transforms.timeutil import format_qualification_time, now_ms


class BackfillOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--snapshot", metavar="GLOB", help="Parquet snapshot files, one row per profile (required)")
        parser.add_argument("--events", metavar="GLOB", help="experience events (Parquet or JSONL) for event rules")
        parser.add_argument("--audiences", metavar="ID,ID", help="mapped audiences to export (default: all mapped)")
        parser.add_argument("--as_of", metavar="ISO8601", help="evaluation time (default: now)")
        parser.add_argument("--batch_size", type=int, default=131072, metavar="ROWS", help="rows per record batch")
        parser.add_argument("--join_buckets", type=int, default=None, metavar="N",
                            help="hash buckets of the event join (default: one per 32 MiB of input files)")
        parser.add_argument("--join_threads", type=int, default=None, metavar="N",
                            help="threads of each event join step (events to contributions, a bucket's "
                                 "formatting; default: 1, without --runner: one per core)")


SUMMARY = "Export the profiles of a Parquet snapshot that qualify for the mapped audiences, as of one time."
USAGE = ("--config CONFIG --snapshot GLOB [--events GLOB] [--audiences ID,ID] [--as_of ISO8601] "
         "[--output kinesis|DIR [--overwrite]] [Beam options]")


def select_audiences(config: ExportConfig, requested: Optional[str], has_events: bool) -> Tuple[List[str], List[str]]:
    """The mapped audiences to export, and those skipped: event-rule audiences without ``--events``."""
    mapped = [m.id for m in config.mapping.audiences]
    selected = mapped
    if requested:
        selected = list(dict.fromkeys(a.strip() for a in requested.split(",") if a.strip()))
        unknown = [a for a in selected if a not in mapped]
        if unknown:
            raise UserError(f"--audiences: not mapped in the config: {', '.join(unknown)} "
                            f"(mapped: {', '.join(mapped) or 'none'})")
    skipped = []
    if not has_events:
        audiences = AudienceSet.from_config(config)
        skipped = [a for a in selected if a in audiences.rules and audiences.rules[a].uses_events]
        selected = [a for a in selected if a not in skipped]
    if not selected:
        raise UserError("no audience left to export" + (" (their rules need --events)" if skipped else ""))
    return selected, skipped


def build(pipeline: beam.Pipeline, config: ExportConfig, options: PipelineOptions) -> Tuple[List[str], int]:
    """Wire the backfill; returns the selected audiences and ``as_of``. User errors are raised
    here, before anything runs."""
    opts = options.view_as(BackfillOptions)
    job = options.view_as(ExportJobOptions)
    output = job.output
    as_of_ms = parse_time_option(opts.as_of, "--as_of")
    as_of_ms = now_ms() if as_of_ms is None else as_of_ms
    selected, skipped = select_audiences(config, opts.audiences, bool(opts.events))
    export = ExportSnapshot(config, require(opts.snapshot, "--snapshot"), selected, as_of_ms, opts.events,
                            batch_size=opts.batch_size, buckets=opts.join_buckets, threads=opts.join_threads or 1)
    check_output(config, output, job.overwrite)
    if skipped:
        print(f"backfill: skipping audiences whose rules need events (give --events): {', '.join(skipped)}",
              file=sys.stderr)
    out = pipeline | "ExportSnapshot" >> export
    written = write_output(out["records"], config, output, live=False)
    dead_lettered = (count(out["dead_letter"], progress.INPUTS_DEAD_LETTERED)
                     | "InputDeadLetters" >> WriteDeadLetters(config.destination.dead_letter))
    # one leaf that depends on both writes: Beam's DaskRunner computes only the last step's graph
    (written, dead_lettered) | "Done" >> beam.Flatten()
    return selected, as_of_ms


def local_defaults(options: PipelineOptions, argv: Sequence[str]) -> None:
    """Without ``--runner``: the DirectRunner, one worker thread per core; with ``--events``
    the BundleBasedDirectRunner, and one join thread per core; and the local allocator (module
    docstring)."""
    if options.view_as(StandardOptions).runner:
        return
    local_allocator()
    backfill = options.view_as(BackfillOptions)
    if backfill.events:
        default_runner(options, "BundleBasedDirectRunner")
        if backfill.join_threads is None:
            backfill.join_threads = os.cpu_count() or 1
        return
    default_runner(options, "DirectRunner")
    if not any(a.startswith(("--direct_num_workers", "--direct_running_mode")) for a in argv):
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = os.cpu_count() or 1
        direct.direct_running_mode = "multi_threading"


def local_allocator(retain_ms: int = 10_000) -> None:
    """Arrow's jemalloc pool, keeping freed pages ``retain_ms`` for the next batches, as this
    process's default pool (module docstring); nothing changes where jemalloc is not built in."""
    if "jemalloc" in pa.supported_memory_backends():
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(retain_ms)


def run(argv: Sequence[str]) -> int:
    parse_command_line(argv, "python -m pipelines.backfill", USAGE, SUMMARY,
                       [ConfigOptions, ExportJobOptions, BackfillOptions, ProgressOptions])
    options = PipelineOptions(argv)
    require(options.view_as(BackfillOptions).snapshot, "--snapshot")
    config = load_job_config(options)
    local_defaults(options, argv)
    pipeline = beam.Pipeline(options=options)
    selected, as_of_ms = build(pipeline, config, options)
    total = snapshot_rows(options.view_as(BackfillOptions).snapshot)
    result = run_pipeline(pipeline, options, lambda counts, elapsed: report_progress(counts, elapsed, total))
    counts = job_counts(result, (progress.RECORDS, progress.RECORDS_DEAD_LETTERED, progress.INPUTS_DEAD_LETTERED))
    output = options.view_as(ExportJobOptions).output
    where = where_records_went(config, output)
    if counts is None:
        print(uncounted(f"backfill as of {format_qualification_time(as_of_ms)}", options, where), file=sys.stderr)
        return 0
    profiles = progress.counts().get(progress.PROFILES) or metric_total(result, "profiles", "backfill")
    per_audience = ", ".join(f"{a}: {metric_total(result, 'members_' + a, 'backfill')}" for a in selected)
    per_policy = ", ".join(f"{p.id}: {metric_total(result, 'records_' + p.id, 'backfill')}"
                           for p in config.merge_policies)
    dead = counts[progress.RECORDS_DEAD_LETTERED]
    print(f"backfill as of {format_qualification_time(as_of_ms)}: {profiles} profiles read; members {per_audience}; "
          f"records {per_policy}; {counts[progress.RECORDS] - dead} records {where}, {dead} records dead-lettered; "
          f"{counts[progress.INPUTS_DEAD_LETTERED]} bad input rows or files dead-lettered",
          file=sys.stderr)
    return 0


def snapshot_rows(pattern: str, max_files: int = 16) -> Optional[int]:
    """Rows in the snapshot from the Parquet footers, for the share done; None when unknown or
    when the glob has more than ``max_files`` files (the workers list and read the footers; the
    launcher does not open thousands of them)."""
    try:
        paths = match_files(pattern)
        if len(paths) > max_files:
            return None
        return sum(open_parquet(path).metadata.num_rows for path in paths)
    except (UserError, OSError):
        return None


def report_progress(counts, elapsed_s: float, total: Optional[int]) -> None:
    profiles = counts.get(progress.PROFILES, 0)
    share = f" of {total} ({100 * profiles / total:.0f}%)" if total else ""
    print(f"backfill: {profiles}{share} profiles read ({rate(profiles, elapsed_s)}), "
          f"{counts.get(progress.RECORDS, 0)} records out, {elapsed_s:.0f} s", file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
