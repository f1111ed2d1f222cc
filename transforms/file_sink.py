"""``--output PATH``: the export records as JSON lines ``{"partitionKey": ..., "data": {...}}``
in ``PATH/records-*.jsonl`` (SPEC 2), for dry runs.

Lines are built by byte concatenation (the data is already compact JSON: no re-parse). Accepts
``ExportRecord`` elements (streaming) and pre-joined ``bytes`` blobs of whole lines (backfill
batches). One file per bundle, renamed into place when the bundle finishes.
"""
from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.dead_letter import BundleFileWriter


def record_line(partition_key: str, data: bytes) -> bytes:
    return b'{"partitionKey":' + json.dumps(partition_key).encode() + b',"data":' + data + b"}\n"


class _WriteRecordFilesFn(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory
        self._written = Metrics.counter("file_sink", "records_written")

    def start_bundle(self):
        self._writer = BundleFileWriter(self._directory, "records")

    def process(self, element):
        if isinstance(element, bytes):  # a blob of whole lines
            self._writer.write(element)
            self._written.inc(element.count(b"\n"))
        else:
            self._writer.write(record_line(element[0], element[1]))
            self._written.inc()

    def finish_bundle(self):
        self._writer.close()


class WriteRecordFiles(beam.PTransform):
    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, records):
        return records | "WriteRecordLines" >> beam.ParDo(_WriteRecordFilesFn(self._directory))
