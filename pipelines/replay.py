"""``python -m pipelines.replay --config CONFIG --dead_letter PATH``: send dead-lettered records
again, through the sink's own batching, ordering and retry code (``RecordSender``).

Files under ``<PATH>/records/`` are taken oldest first, each read as a stream (at most
``FLUSH_EVERY`` records held). What fails again goes to a new dead-letter file there; then the
file is moved to ``records/replayed/``, so what was delivered is not sent again by a later
replay. Crash safety: a crash before the move sends that one file again on the next replay
(delivered records twice, at least once; never lost), and a crash before the new file is renamed
into place leaves only a hidden ``.tmp`` behind. A plain Python loop, not a Beam pipeline: one
process sending in order is what keeps per-key order across a replay, and dead letters are
small. Beam options on the command line are accepted and ignored.
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
from transforms.kinesis import PutRecords, RecordSender, check_stream, dead_letter_line, encode_data

FLUSH_EVERY = 5000


class ReplayOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--dead_letter", help="the dead-letter root (the config's dead_letter)")


def _record(doc: dict):
    data = doc["data"]
    if doc.get("dataEncoding") == "base64":
        return doc["partitionKey"], base64.b64decode(data)
    return doc["partitionKey"], encode_data(data)


def replay(config, root: str, transport=None) -> dict:
    dest = config.destination
    check_stream(dest)
    records_dir = FileSystems.join(root, "records")
    replayed_dir = FileSystems.join(records_dir, "replayed")
    found = FileSystems.match([FileSystems.join(records_dir, "*.jsonl")])[0].metadata_list
    totals = {"files": 0, "sent": 0, "failed": 0, "unreadable": 0}
    # one request at a time: dead letters are small
    sender = RecordSender(PutRecords.for_destination(dest, transport), dest.retry, max_in_flight=1,
                          max_record_bytes=dest.max_record_bytes)

    def flush(still_failing: BundleFileWriter) -> None:
        report = sender.flush()
        for failed, _ in report.dead:
            still_failing.write(dead_letter_line(failed, dest.stream))
        totals["sent"] += report.sent
        totals["failed"] += len(report.dead)

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
