"""Live counts of a running job, for its progress lines and its closing summary.

Beam metrics are what remote runners report, but the local BundleBasedDirectRunner drops the
metric updates of the bundles it runs after the input is exhausted (the records of timers firing
at the end of a bounded replay: a summary said 502 records where 507 were written). So the jobs
also count, in their readers and with ``CountElements`` steps at their boundaries, into a
process-wide tally (``Tally``) that the launching process reads: exact on the local runners, where the work runs in the
launcher's process. When the work runs elsewhere (a remote runner, ``multi_processing``) the
tally stays empty and the summary falls back to the Beam counters the same steps keep.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

NAMESPACE = "progress"
# the counts the jobs report (readers and wiring use these names)
UPDATES = "updates"
INPUTS_DEAD_LETTERED = "inputs_dead_lettered"
RECORDS = "records"
RECORDS_DEAD_LETTERED = "records_dead_lettered"
UPDATES_EVALUATED = "updates_evaluated"
SEED_PROFILES = "seed_profiles"
PROFILES = "profiles"

_lock = threading.Lock()
_tally: Dict[str, int] = {}


def add(name: str, n: int) -> None:
    with _lock:
        _tally[name] = _tally.get(name, 0) + n


def counts() -> Dict[str, int]:
    with _lock:
        return dict(_tally)


def reset() -> None:
    """Start a new job in this process (the tally is per process, one job at a time)."""
    with _lock:
        _tally.clear()


class Tally:
    """A count kept by one DoFn instance: added to the process-wide tally and the Beam counter
    ``progress/<name>`` once ``FLUSH_EVERY`` are pending, and on ``flush()`` (call it in
    ``finish_bundle``), so progress moves during long bundles at little cost per element."""

    FLUSH_EVERY = 256

    def __init__(self, name: str):
        self.name = name
        self._counter = Metrics.counter(NAMESPACE, name)
        self._pending = 0

    def inc(self, n: int = 1) -> None:
        self._pending += n
        if self._pending >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            add(self.name, self._pending)
            self._counter.inc(self._pending)
            self._pending = 0


class CountElements(beam.DoFn):
    """Passes elements through unchanged, counting them (``size(element)`` each, default 1)
    as ``name`` (``Tally``)."""

    def __init__(self, name: str, size: Optional[Callable[[object], int]] = None):
        self._name = name
        self._size = size

    def setup(self):
        self._tally = Tally(self._name)

    def process(self, element):
        self._tally.inc(1 if self._size is None else self._size(element))
        yield element

    def finish_bundle(self):
        self._tally.flush()


class ProgressReporter:
    """A daemon thread that calls ``report(counts, elapsed_s)`` every ``interval_s`` while a job
    runs (nothing for a job shorter than that); a context manager."""

    def __init__(self, report: Callable[[Dict[str, int], float], None], interval_s: float = 10.0):
        self._report, self._interval = report, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self):
        self._started = time.monotonic()
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self):
        while not self._stop.wait(self._interval):
            self._report(counts(), time.monotonic() - self._started)
