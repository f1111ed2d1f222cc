"""``--output PATH``: the export records as JSON lines ``{"partitionKey": ..., "data": {...}}``
in ``PATH/records-*.jsonl`` (docs/semantics.md#command-lines), for dry runs.

One line builder for every path: ``record_lines`` concatenates escaped keys and data with
pyarrow kernels (the data is already compact JSON: no re-parse). ``ExportRecordBatch``
elements (backfill) go through it as they come; ``ExportRecord`` elements and lists of them
(streaming, replay: a profile's records together) are buffered and go through it ``_FLUSH_RECORDS`` at a time and when the bundle finishes. One
file per bundle under a unique name, written under a temporary name and renamed when the
bundle finishes, so it works unwindowed in streaming as in batch and a reader never sees a
half-written file.
"""
from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.arrow_text import concat, joined_bytes, json_escaped
from transforms.dead_letter import BundleFileWriter
from transforms.model import ExportRecordBatch

_FLUSH_RECORDS = 1024


def record_lines(partition_keys: pa.Array, data_parts: Sequence[object]) -> memoryview:
    """The lines of records whose data is the concatenation of ``data_parts`` (string or
    binary arrays and constants), keys escaped as the records are (``ensure_ascii=False``)."""
    lines = concat('{"partitionKey":"', json_escaped(partition_keys), '","data":', *data_parts, "}\n")
    return joined_bytes(lines)


class _WriteRecordFilesFn(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory
        self._written = Metrics.counter("file_sink", "records_written")

    def start_bundle(self):
        self._writer = BundleFileWriter(self._directory, "records")
        self._keys, self._data = [], []

    def process(self, element):
        if isinstance(element, ExportRecordBatch):
            self._writer.write(record_lines(element.partition_keys, element.parts))
            self._written.inc(element.size)
            return
        if type(element) is list:   # a profile's records, in order (``ExportProfileChanges``)
            self._keys += [record[0] for record in element]
            self._data += [record[1] for record in element]
        else:
            self._keys.append(element[0])
            self._data.append(element[1])
        if len(self._keys) >= _FLUSH_RECORDS:
            self._flush()

    def _flush(self):
        if self._keys:
            self._writer.write(record_lines(pa.array(self._keys, pa.string()),
                                            [pa.array(self._data, pa.binary()).cast(pa.string())]))
            self._written.inc(len(self._keys))
            self._keys, self._data = [], []

    def finish_bundle(self):
        self._flush()
        self._writer.close()


class WriteRecordFiles(beam.PTransform):
    """``ExportRecord`` elements, lists of them or ``ExportRecordBatch`` elements ->
    ``<directory>/records-*.jsonl``."""

    def __init__(self, directory: str):
        super().__init__()
        self._directory = directory

    def expand(self, records):
        return records | "WriteRecordLines" >> beam.ParDo(_WriteRecordFilesFn(self._directory))
