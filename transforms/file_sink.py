"""``--output PATH``: the export records as JSON lines ``{"partitionKey": ..., "data": {...}}``
in ``PATH/records-*.jsonl`` (docs/semantics.md#command-lines), for dry runs.

Lines are built by byte concatenation (the data is already compact JSON: no re-parse). Accepts
``ExportRecord`` elements (streaming) and ``RecordLines`` blobs of whole lines (backfill
batches). One file per bundle under a unique name, written under a temporary name and renamed
when the bundle finishes, so it works unwindowed in streaming as in batch and a reader never
sees a half-written file.
"""
from __future__ import annotations

from json.encoder import encode_basestring
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.dead_letter import BundleFileWriter


class RecordLines(NamedTuple):
    """Pre-joined record lines (a backfill batch) and how many."""
    lines: bytes
    count: int


def record_line(partition_key: str, data: bytes) -> bytes:
    """One line; the key escaped as the records are (``ensure_ascii=False``)."""
    return b'{"partitionKey":' + encode_basestring(partition_key).encode() + b',"data":' + data + b"}\n"


class _WriteRecordFilesFn(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory
        self._written = Metrics.counter("file_sink", "records_written")

    def start_bundle(self):
        self._writer = BundleFileWriter(self._directory, "records")

    def process(self, element):
        if isinstance(element, RecordLines):
            self._writer.write(element.lines)
            self._written.inc(element.count)
        else:
            self._writer.write(record_line(element[0], element[1]))
            self._written.inc()

    def finish_bundle(self):
        self._writer.close()


class WriteRecordFiles(beam.PTransform):
    """``ExportRecord`` elements or ``RecordLines`` blobs -> ``<directory>/records-*.jsonl``."""

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, records):
        return records | "WriteRecordLines" >> beam.ParDo(_WriteRecordFilesFn(self._directory))
