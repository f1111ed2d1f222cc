"""``python -m pipelines.replay --config CONFIG [--dead_letter PATH]``: send dead-lettered records
again (docs/semantics.md, "Dead letters"), through the sink's own batching, ordering and retry code (``RecordSender``).

Files under ``<PATH>/records/`` are taken oldest first, each read as a stream (at most
``FLUSH_EVERY`` records held). What fails again goes to a new dead-letter file there; then the
file is moved to ``records/replayed/``, so what was delivered is not sent again by a later
replay. Crash safety: a crash before the move sends that one file again on the next replay
(delivered records twice, at least once; never lost), and a crash before the new file is renamed
into place leaves only a hidden ``.tmp`` behind. A plain Python loop, not a Beam pipeline: one
process sending in order is what keeps per-key order across a replay, and dead letters are
small. Beam's filesystem options on the command line apply to the dead-letter path; the other
Beam options are accepted and have nothing to act on. ``--dead_letter`` defaults to the config's
``dead_letter``; a path that does not exist is an error, not an empty replay.
"""
from __future__ import annotations

import base64
import json
import sys
import time
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import ConfigOptions, ProgressOptions, cli_main, load_job_config, parse_command_line, rate
from transforms.dead_letter import BundleFileWriter
from transforms.errors import UserError
from transforms.kinesis import RecordSender, check_stream, dead_letter_line, encode_data

FLUSH_EVERY = 5000


class ReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dead_letter", metavar="PATH",
                            help="the dead-letter root whose records/ to send (default: the config's dead_letter)")


SUMMARY = "Send the records of a dead letter to the configured stream again."
USAGE = "--config CONFIG [--dead_letter PATH] [Beam options]"


def _record(doc: dict):
    data = doc["data"]
    if doc.get("dataEncoding") == "base64":
        return doc["partitionKey"], base64.b64decode(data)
    return doc["partitionKey"], encode_data(data)


def replay(config, root: str, progress_interval_s: float = 10.0) -> dict:
    dest = config.destination
    put_records = check_stream(dest)
    records_dir = FileSystems.join(root, "records")
    replayed_dir = FileSystems.join(records_dir, "replayed")
    found = FileSystems.match([FileSystems.join(records_dir, "*.jsonl")])[0].metadata_list
    totals = {"files": 0, "sent": 0, "failed": 0, "unreadable": 0}
    # one request at a time: dead letters are small
    sender = RecordSender(put_records, dest.retry, max_in_flight=1,
                          max_record_bytes=dest.max_record_bytes)
    started = last_report = time.monotonic()

    def flush(still_failing: BundleFileWriter) -> None:
        nonlocal last_report
        report = sender.flush()
        for failed, _ in report.dead:
            still_failing.write(dead_letter_line(failed, dest.stream))
        totals["sent"] += report.sent
        totals["failed"] += len(report.dead)
        now = time.monotonic()
        if progress_interval_s > 0 and now - last_report >= progress_interval_s:
            last_report = now
            print(f"replay: file {totals['files'] + 1} of {len(found)}, {totals['sent']} records delivered "
                  f"({rate(totals['sent'], now - started)}), {totals['failed']} failed again, {now - started:.0f} s",
                  file=sys.stderr, flush=True)

    for meta in sorted(found, key=lambda m: (m.last_updated_in_seconds, m.path)):
        still_failing = BundleFileWriter(records_dir, "records-replay")
        with FileSystems.open(meta.path) as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    key, data = _record(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    totals["unreadable"] += 1
                    still_failing.write(line if line.endswith(b"\n") else line + b"\n")
                    continue
                oversize = sender.add(key, data)
                if oversize is not None:
                    still_failing.write(dead_letter_line(oversize, dest.stream))
                    totals["failed"] += 1
                if sender.held >= FLUSH_EVERY:
                    flush(still_failing)
        flush(still_failing)
        still_failing.close()
        if not FileSystems.exists(replayed_dir):
            FileSystems.mkdirs(replayed_dir)
        FileSystems.rename([meta.path], [FileSystems.join(replayed_dir, meta.path.rsplit("/", 1)[-1])])
        totals["files"] += 1
    return totals


def _root_exists(root: str) -> bool:
    """A local directory, or on object storage (which has no directories) a prefix with objects."""
    if FileSystems.get_scheme(root) in (None, "file"):
        return FileSystems.exists(root)
    return bool(FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list)


def run(argv: Sequence[str]) -> int:
    parse_command_line(argv, "python -m pipelines.replay", USAGE, SUMMARY,
                       [ConfigOptions, ReplayOptions, ProgressOptions])
    options = PipelineOptions(argv)
    FileSystems.set_options(options)
    config = load_job_config(options)
    root = options.view_as(ReplayOptions).dead_letter or config.destination.dead_letter
    if not _root_exists(root):
        raise UserError(f"--dead_letter {root}: no such directory")
    totals = replay(config, root, progress_interval_s=options.view_as(ProgressOptions).progress_interval_s)
    print(f"replay: {totals['files']} dead-letter files, {totals['sent']} records delivered, "
          f"{totals['failed']} failed again (kept in the dead letter)"
          + (f", {totals['unreadable']} unreadable lines kept" if totals["unreadable"] else ""), file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
