"""Input dead letters: JSON lines under ``<dead_letter>/input/`` (docs/semantics.md#inputs).

One file per bundle, written under a temporary name and renamed when the bundle finishes, so
it works unwindowed in streaming as in batch and a reader never sees a half-written file.
"""
from __future__ import annotations

import json
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.model import DeadLetter
from transforms.timeutil import format_iso_ms, now_ms


class BundleFileWriter:
    """Lines to ``<directory>/<prefix>-<uuid>.jsonl`` (via ``.tmp``), created on first line."""

    def __init__(self, directory: str, prefix: str):
        self.directory, self.prefix = directory, prefix
        self._file = None

    def write(self, line: bytes) -> None:
        if self._file is None:
            _ensure_directory(self.directory)
            name = f"{self.prefix}-{uuid.uuid4().hex}.jsonl"
            self._final = FileSystems.join(self.directory, name)
            self._temp = FileSystems.join(self.directory, "." + name + ".tmp")
            self._file = FileSystems.create(self._temp)
        self._file.write(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            FileSystems.rename([self._temp], [self._final])
            self._file = None


def _ensure_directory(directory: str) -> None:
    """mkdirs that tolerates another bundle creating the directory at the same moment (object
    stores have no directories: their mkdirs does nothing)."""
    if FileSystems.exists(directory):
        return
    try:
        FileSystems.mkdirs(directory)
    except IOError:
        if not FileSystems.exists(directory):
            raise


def dead_letter_line(item: DeadLetter) -> bytes:
    return json.dumps({"reason": item.reason, "source": item.source, "position": item.position,
                       "raw": item.raw, "time": format_iso_ms(now_ms())}, ensure_ascii=False).encode() + b"\n"


class _WriteDeadLettersFn(beam.DoFn):
    def __init__(self, directory: str):
        self._directory = directory
        self._count = Metrics.counter("dead_letter", "input_dead_letters_written")

    def start_bundle(self):
        self._writer = BundleFileWriter(self._directory, "input")

    def process(self, item: DeadLetter):
        self._writer.write(dead_letter_line(item))
        self._count.inc()

    def finish_bundle(self):
        self._writer.close()


class WriteDeadLetters(beam.PTransform):
    """``PCollection[DeadLetter]`` -> JSON lines ``{reason, source, position, raw, time}`` in
    ``<root>/input/input-<uuid>.jsonl``, one file per bundle (batch and unwindowed streaming)."""

    def __init__(self, root: str):
        super().__init__()
        self._directory = FileSystems.join(root, "input")

    def expand(self, dead_letters):
        return dead_letters | "WriteInputDeadLetters" >> beam.ParDo(_WriteDeadLettersFn(self._directory))
