"""What the job command lines share: options, config loading, the output sink, error handling.

Every CLI accepts all standard Beam options; only the job's own flags are declared here and in
each pipeline module (one ``PipelineOptions`` subclass each, flags never declared twice, since
Beam parses every direct subclass's flags together).
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from transforms.config import ExportConfig, load_config
from transforms.errors import UserError
from transforms.timeutil import parse_timestamp_ms

KINESIS = "kinesis"


class ExportJobOptions(PipelineOptions):
    """Flags every export job takes."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--config", help="export config, YAML or JSON (SPEC 3)")
        parser.add_argument("--output", default=KINESIS,
                            help="'kinesis' (default): the configured stream; or a directory for "
                                 "JSON-lines dry runs (records-*.jsonl)")


def require(value, flag: str):
    if not value:
        raise UserError(f"missing required option {flag}")
    return value


def parse_time_option(value: Optional[str], flag: str) -> Optional[int]:
    if value is None:
        return None
    try:
        return parse_timestamp_ms(value)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def load_job_config(options: PipelineOptions) -> ExportConfig:
    return load_config(require(options.view_as(ExportJobOptions).config, "--config"))


def default_runner(options: PipelineOptions, runner: str) -> None:
    """Pick the local runner on purpose when the user names none (SPEC 9)."""
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = runner


def write_output(records: beam.PCollection, config: ExportConfig, output: str, live: bool = True):
    """``--output kinesis`` (checked with ListStreams before the pipeline starts) or a directory.
    ``live=False`` (replays, backfills): update times are history, so no latency alerts."""
    if output == KINESIS:
        from transforms.kinesis import KinesisWrite
        return records | "WriteToKinesis" >> KinesisWrite(config.destination, alerts=config.alerts if live else None,
                                                          check=False)  # check_output ran it once
    from transforms.file_sink import WriteRecordFiles
    return records | "WriteRecordFiles" >> WriteRecordFiles(output)


def check_output(config: ExportConfig, output: str) -> None:
    if output == KINESIS:
        from transforms.kinesis import check_stream
        check_stream(config.destination)


def metric_total(result, name: str, namespace: Optional[str] = None) -> int:
    """Sum of a counter over all steps of a finished pipeline (0 when the runner has none)."""
    from apache_beam.metrics.metric import MetricsFilter
    flt = MetricsFilter().with_name(name)
    if namespace:
        flt = flt.with_namespace(namespace)
    try:
        counters = result.metrics().query(flt)["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        return 0
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)


def cli_main(run: Callable[[Sequence[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a job; a user error (bad config, unreadable input, missing stream or permission)
    becomes one line on stderr and a non-zero exit, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
