"""``python -m pipelines.replay --config CONFIG --dead_letter PATH``: send dead-lettered records
again (SPEC 7), through the sink's own batching, ordering and retry code.

For each file under ``<PATH>/records/``: its records are sent; those that fail again are written
to a new dead-letter file; then the file is moved to ``records/replayed/``, so what was delivered
is not sent again by a later replay. A crash between sending and moving re-sends that one file on
the next replay (at least once, never silently lost). A plain Python loop: one process sending
sequentially is what keeps per-key order across replays, and dead letters are small.
"""
from __future__ import annotations

import base64
import json
import sys
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import cli_main, load_job_config, require
from transforms.dead_letter import BundleFileWriter
from transforms.kinesis import RecordSender, check_stream, dead_letter_line, make_client


class ReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dead_letter", help="the dead-letter root (the config's dead_letter)")


def _record(doc: dict):
    data = doc["data"]
    if doc.get("dataEncoding") == "base64":
        return doc["partitionKey"], base64.b64decode(data)
    return doc["partitionKey"], json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def replay(config, root: str, client=None) -> dict:
    dest = config.destination
    client = client or make_client(dest)
    check_stream(dest, client)
    records_dir = FileSystems.join(root, "records")
    files = [m.path for m in FileSystems.match([FileSystems.join(records_dir, "*.jsonl")])[0].metadata_list]
    totals = {"files": 0, "sent": 0, "failed": 0, "unreadable": 0}
    replayed_dir = FileSystems.join(records_dir, "replayed")
    for path in sorted(files):
        sender = RecordSender(client, dest.stream, dest.retry)
        still_failing = BundleFileWriter(records_dir, "records-replay")
        with FileSystems.open(path) as f:
            for n, line in enumerate(f, 1):
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
                    still_failing.write(dead_letter_line(oversize, "RecordTooLarge", "over 1 MiB with its key", dest.stream))
                    totals["failed"] += 1
        report = sender.flush()
        for record, code, message in report.dead:
            still_failing.write(dead_letter_line(record, code, message, dest.stream))
        still_failing.close()
        if not FileSystems.exists(replayed_dir):
            FileSystems.mkdirs(replayed_dir)
        FileSystems.rename([path], [FileSystems.join(replayed_dir, path.rsplit("/", 1)[-1])])
        totals["files"] += 1
        totals["sent"] += report.sent
        totals["failed"] += len(report.dead)
    return totals


def run(argv: Sequence[str]) -> int:
    options = PipelineOptions(argv)
    root = require(options.view_as(ReplayOptions).dead_letter, "--dead_letter")
    config = load_job_config(options)
    totals = replay(config, root)
    print(f"replay: {totals['files']} dead-letter files, {totals['sent']} records delivered, "
          f"{totals['failed']} failed again (kept in the dead letter)"
          + (f", {totals['unreadable']} unreadable lines kept" if totals["unreadable"] else ""), file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
