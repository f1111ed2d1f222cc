"""What the job command lines share: strict options and help, config loading, the output
sink and its directory checks, error handling.

Every job accepts all of Beam's pipeline options; only the job's own flags are declared here and
in each pipeline module (``PipelineOptions`` subclasses, flags never declared twice, since Beam
parses every direct subclass's flags together). Beam itself warns about a flag it does not know
and drops it; ``parse_command_line`` makes such a flag an error instead (exit 2, one line, "did
you mean" when a known flag is close), before any pipeline is built.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from transforms import core_build, progress
from transforms.config import ExportConfig, load_config
from transforms.errors import UserError
from transforms.timeutil import parse_timestamp_ms

KINESIS = "kinesis"


class ConfigOptions(PipelineOptions):
    """The flag every job takes."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--config", metavar="CONFIG", help="export config, YAML or JSON (required)")


class ExportJobOptions(PipelineOptions):
    """Flags of the jobs that produce records (backfill, streaming)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--output", default=KINESIS, metavar="kinesis|DIR",
                            help="the configured stream (default), or a directory for a dry run: "
                                 "DIR/records-*.jsonl")
        parser.add_argument("--overwrite", action="store_true",
                            help="remove the records-* files of an earlier run in --output DIR first")


class ProgressOptions(PipelineOptions):
    """How often a running job says how far it is."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--progress_interval_s", type=float, default=10.0, metavar="S",
                            help="seconds between progress lines on stderr (0: none)")


class _OptionNames(argparse.ArgumentParser):
    """Parses with the options it is given and keeps them (``options``) for the help and the
    hints; Beam's value-provider (template) options are registered as plain ones."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.options: List[argparse.Action] = []

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.options.append(action)
        return action

    def add_value_provider_argument(self, *args, **kwargs):
        if args and not args[0].startswith("-") and kwargs.get("nargs") is None:
            kwargs["nargs"] = "?"
        self.add_argument(*args, **kwargs)

    def error(self, message):
        raise UserError(message)


def _parser(option_classes: Iterable[type]) -> _OptionNames:
    parser = _OptionNames(add_help=False, allow_abbrev=False)
    for cls in option_classes:
        cls._add_argparse_args(parser)  # the hook every PipelineOptions subclass implements
    return parser


def _beam_option_classes(argv: Sequence[str] = ()) -> List[type]:
    """Beam's own option classes (each once, as Beam dedupes them), not other jobs' ones. Those
    of a runner Beam loads only on demand are there when the command line names it."""
    if any(a.endswith("DaskRunner") for a in argv):
        import pipelines.dask_runner  # noqa: F401  Beam's DaskOptions: --dask_client_address, ...
    classes = {}
    for cls in PipelineOptions.__subclasses__():
        if cls.__module__.startswith("apache_beam."):
            classes.setdefault(str(cls), cls)
    return list(classes.values())


def _long_names(parser: _OptionNames) -> List[str]:
    return [name for action in parser.options for name in action.option_strings if name.startswith("--")]


def help_text(prog: str, usage: str, summary: str, parser: _OptionNames, beam_options: bool) -> str:
    """Usage, then the job's own options, one line each."""
    lines = [f"usage: {prog} {usage}", "", summary, "", "options:"]
    for action in parser.options:
        flag = ", ".join(action.option_strings)
        if action.nargs != 0:
            flag += " " + (action.metavar or action.dest.upper())
        default = ""
        if action.default not in (None, False) and "default" not in (action.help or ""):
            default = f" (default: {action.default})"
        lines.append(f"  {flag:<30} {action.help or ''}{default}")
    lines.append(f"  {'-h, --help':<30} show this help and exit")
    if beam_options:
        lines += ["", "Beam's pipeline options are accepted too (--runner, --streaming, --setup_file, Flink, Dataflow",
                  "and filesystem options)."]
    lines.append("Inputs, outputs and what is exported: docs/semantics.md.")
    return "\n".join(lines)


def _did_you_mean(name: str, own: Sequence[str], beam_names: Sequence[str]) -> str:
    normalized = "--" + name.lstrip("-").replace("-", "_")
    for candidates in (own, beam_names):
        if normalized in candidates:
            return f" (did you mean {normalized}?)"
        close = difflib.get_close_matches(normalized, candidates, n=1, cutoff=0.75)
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


def parse_command_line(argv: Sequence[str], prog: str, usage: str, summary: str,
                       option_classes: Sequence[type], beam_options: bool = True
                       ) -> Tuple[argparse.Namespace, List[str]]:
    """Check ``argv`` strictly against the job's ``option_classes`` (classes with Beam's
    ``_add_argparse_args`` hook) and Beam's options when ``beam_options``; ``--help`` prints
    the help and exits 0. Raises ``UserError`` naming the first unknown option or bad value;
    returns the job's own options and the rest of ``argv`` (Beam's options)."""
    own = _parser(option_classes)
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(prog, usage, summary, own, beam_options))
        raise SystemExit(0)
    beam_classes = _beam_option_classes(argv) if beam_options else []
    _, unknown = _parser(list(option_classes) + beam_classes).parse_known_args(argv)
    for arg in unknown:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            hint = _did_you_mean(name, _long_names(own), _long_names(_parser(beam_classes)))
            raise UserError(f"unknown option {name}{hint}; see {prog} --help")
    if unknown:
        raise UserError(f"unexpected argument {unknown[0]!r}; options are written --name VALUE, see {prog} --help")
    return own.parse_known_args(argv)


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


# runners Beam knows only by their class path; ours applies the job's filesystem options on Dask workers
RUNNER_CLASSES = {"DaskRunner": "pipelines.dask_runner.DaskRunner"}


def load_job_config(options: PipelineOptions) -> ExportConfig:
    """The config, read after the job's options apply: filesystem options (``--s3_endpoint_url``,
    credentials, GCS project) first, so ``--config s3://...`` reads like every other path of the
    job; ``--runner DaskRunner`` becomes ``pipelines.dask_runner.DaskRunner``."""
    FileSystems.set_options(options)
    standard = options.view_as(StandardOptions)
    standard.runner = RUNNER_CLASSES.get(standard.runner, standard.runner)
    return load_config(require(options.view_as(ConfigOptions).config, "--config"))


def default_runner(options: PipelineOptions, runner: str) -> None:
    """Pick the local runner on purpose when the user names none (docs/DEVELOPING.md: keyed
    state is several times faster on the BundleBasedDirectRunner)."""
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = runner


def write_output(records: beam.PCollection, config: ExportConfig, output: str, live: bool = True):
    """``--output kinesis`` (checked with ListStreams before the pipeline starts) or a directory.
    ``live=False`` (replays, backfills): update times are history, so no latency alerts. Counts
    ``records`` going out and, for Kinesis, ``records_dead_lettered`` (sent = the difference)."""
    records = count(records, progress.RECORDS, record_count)
    if output == KINESIS:
        from transforms.kinesis import KinesisWrite
        failed = records | "WriteToKinesis" >> KinesisWrite(config.destination, alerts=config.alerts if live else None,
                                                            check=False)  # check_output ran it once
        return count(failed, progress.RECORDS_DEAD_LETTERED)
    from transforms.file_sink import WriteRecordFiles
    return records | "WriteRecordFiles" >> WriteRecordFiles(output)


def check_output(config: ExportConfig, output: str, overwrite: bool = False) -> None:
    """Before anything runs: the stream exists, or the output directory is fit for a dry run."""
    if output == KINESIS:
        if overwrite:
            raise UserError("--overwrite applies to --output DIR only (a stream is never overwritten)")
        from transforms.kinesis import check_stream
        check_stream(config.destination)
    else:
        prepare_output_directory(output, overwrite)


RECORD_FILES = ("records-*", ".records-*.tmp")
FILE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".gz", ".txt")


def prepare_output_directory(path: str, overwrite: bool) -> None:
    """``--output PATH`` is a directory: not an existing file, not a file-like name (``out.jsonl``
    would otherwise become a directory of that name), and without the records of an earlier run
    unless ``overwrite``, which removes them (a dry run never mixes two runs)."""
    local = FileSystems.get_scheme(path) is None
    exists_as_file = (os.path.isfile(path) if local
                      else any(m.path == path for m in FileSystems.match([path])[0].metadata_list))
    if exists_as_file:
        raise UserError(f"--output {path}: is an existing file; give a directory (records go to DIR/records-*.jsonl)")
    if path.rstrip("/").lower().endswith(FILE_SUFFIXES) and not (local and os.path.isdir(path)):
        raise UserError(f"--output {path}: looks like a file name; give a directory (records go to "
                        f"DIR/records-*.jsonl)")
    earlier = [m.path for pattern in RECORD_FILES
               for m in FileSystems.match([FileSystems.join(path, pattern)])[0].metadata_list]
    if earlier and not overwrite:
        raise UserError(f"--output {path}: holds {len(earlier)} records-* file(s) of an earlier run; "
                        f"give --overwrite to replace them, or another directory")
    if earlier:
        FileSystems.delete(earlier)


def count(pcoll: beam.PCollection, name: str, size: Optional[Callable[[object], int]] = None) -> beam.PCollection:
    """``pcoll`` unchanged, its elements counted as ``name`` (transforms/progress.py)."""
    label = "Count" + "".join(part.title() for part in name.split("_"))
    return pcoll | label >> beam.ParDo(progress.CountElements(name, size))


def record_count(element) -> int:
    """Records in an output element: a backfill's ``ExportRecordBatch`` holds many, as does a
    list of a profile's records (the streaming export's)."""
    from transforms.model import ExportRecordBatch
    if type(element) is list:
        return len(element)
    return element.size if isinstance(element, ExportRecordBatch) else 1


def run_pipeline(pipeline: beam.Pipeline, options: PipelineOptions, report: Callable[[Dict[str, int], float], None]):
    """Run to the end, calling ``report`` every ``--progress_interval_s`` meanwhile."""
    progress.reset()
    with progress.ProgressReporter(report, options.view_as(ProgressOptions).progress_interval_s):
        result = pipeline.run()
        result.wait_until_finish()
    return result


def job_counts(result, names: Sequence[str]) -> Optional[Dict[str, int]]:
    """The exact counts of a finished job: the in-process tally when the work ran in this
    process (the local runners), else the runner's counters of the same steps; ``None`` when
    the runner keeps no metrics (Beam's DaskRunner): no count rather than a false 0."""
    tally = progress.counts()
    if tally:
        return {name: tally.get(name, 0) for name in names}
    try:
        result.metrics()
    except NotImplementedError:
        return None
    return {name: metric_total(result, name, progress.NAMESPACE) for name in names}


def where_records_went(config, output: str) -> str:
    """For closing lines: the stream the records were sent to, or the directory they were written to."""
    return f"sent to stream {config.destination.stream}" if output == KINESIS else f"written to {output}"


def uncounted(job: str, options: PipelineOptions, where: str) -> str:
    """The closing line of a job whose runner keeps no metrics."""
    runner = str(options.view_as(StandardOptions).runner).rsplit(".", 1)[-1]
    return (f"{job}: finished on {runner}, which reports no counts; "
            f"the records were {where}")


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s" if seconds > 0 else "-"


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
    core_build.warn_if_pure()
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # --help
        return e.code or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
