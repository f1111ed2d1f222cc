"""Event audiences in the backfill: experience events joined with their profiles inside the
pipeline, vectorized, with memory bounded by the join's buckets rather than by the events.

How the join works (``ExportSnapshot`` wires it when a rule reads events and ``--events`` is
given):

1. Workers read the events (Parquet row groups with only the columns the event conditions
   read, or JSONL files) and turn each batch into its *contributions*: per event, for every
   ``xEvent[...]`` part of the rules, 1 when its condition holds (``count``/``exists``) or the
   summed value (``sum``). Conditions and ``occurs`` windows are evaluated by the same
   vectorized compiler as attribute rules, over the event batch at ``--as_of``. Events stamped
   after ``--as_of`` and events older than the longest window (when every event part has one)
   are dropped there, as the streaming job prunes them. A row without ``profileId`` or a
   readable ``timestamp`` goes to the input dead letter with its file and row (JSONL: line);
   the backfill goes on.
2. Contributions (profile id, time and one number per event part: a few dozen bytes per
   event) and the snapshot's rows (projected columns) are both split by a hash of
   ``profileId`` into ``buckets`` and shipped as (uncompressed) Arrow IPC blobs keyed by bucket;
   ``CoGroupByKey`` brings a bucket's two sides together. No keyed state: any batch runner.
3. Per bucket, contributions are summed per profile (Arrow ``group_by``). Where a profile has
   more events than ``evaluation.max_events_per_profile``, only its newest ones count (sorted
   by profile and time, ranked by offsets), as the streaming job keeps them. The snapshot's
   rows look their profile up (``index_in``, once per bucket) and the rules read the
   aggregates instead of the events; rows without events get the rule's result over no events.

Threads (``ExportSnapshot(threads=N)``, ``--join_threads``): a row group's event batches
become pieces, and a bucket's snapshot rows are formatted in batches of ``batch_size / N``
rows, N at a time on a thread pool (the work is pyarrow kernels, which release the GIL); results
are taken in order and Beam's metrics counted on the DoFn's own thread. For runners that run
one DoFn at a time on one thread (the BundleBasedDirectRunner); 1 elsewhere.

Memory: a bucket holds its share of the contributions and N output batches of snapshot rows;
the number of buckets grows with the inputs' size (``default_buckets``: one per 32 MiB of
input files, from the listing), so a worker's memory does not grow with the number of events.

Exactness: sums are float64 (exact for integers below 2**53; float sums may differ from the
streaming job's in the last bits, added in another order); of events with equal timestamps at
the ``max_events_per_profile`` boundary, which ones count is unspecified.
"""
from __future__ import annotations

import json
import math
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.audiences import AudienceSet
from transforms.model import DeadLetter
from transforms.rules import AudienceRule, Events, as_number, compile_node, event_retention_ms, path_getter, walk
from transforms.snapshot import (DEAD_LETTER, ReadParquetRowGroups, drop_nulls, read_row_group, split_dead_letters,
                                 times_ms)
from transforms.timeutil import parse_timestamp_ms
from transforms.vectorized import compile_vectorized

BUCKET_INPUT_BYTES = 32 << 20
_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)
_WORD_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)   # the low n bytes of a word


def default_buckets(input_bytes: int) -> int:
    """One bucket per ``BUCKET_INPUT_BYTES`` of input files, between 4 and 4096."""
    return max(4, min(4096, math.ceil(input_bytes / BUCKET_INPUT_BYTES)))


def bucket_of(profile_ids: pa.Array, buckets: int) -> np.ndarray:
    """A stable hash of each (non-null) id's UTF-8 bytes, scaled to ``buckets``; the same on
    every worker and side. The bytes are read 8 at a time as little-endian words (an
    unaligned ``uint64`` view of the string data), each word mixed into the hash: a few
    vectorized passes over the ids rather than work per byte."""
    ids = profile_ids.cast(pa.string())
    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64)
    offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset:ids.offset + n + 1].astype(np.int64)
    lengths = np.diff(offsets)
    starts = offsets[:-1] - offsets[0]
    data = ids.buffers()[2]
    raw = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    padded = np.concatenate([raw, np.zeros(8, np.uint8)])
    words = np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    h = lengths.astype(np.uint64) * _MULTIPLIER
    with np.errstate(over="ignore"):
        for k in range(0, int(lengths.max()), 8):
            if k:   # ids longer than k bytes (the first word of every id without indexing)
                live = np.flatnonzero(lengths > k)
                word = words[starts[live] + k] & _WORD_MASKS[np.minimum(lengths[live] - k, 8)]
                x = (h[live] ^ word) * _MULTIPLIER
                h[live] = x ^ (x >> np.uint64(29))
            else:
                x = (h ^ (words[starts] & _WORD_MASKS[np.minimum(lengths, 8)])) * _MULTIPLIER
                h = x ^ (x >> np.uint64(29))
        h ^= h >> np.uint64(32)
        h *= _MULTIPLIER
        h ^= h >> np.uint64(29)
        # the high 32 bits scaled to [0, buckets): a multiply instead of a 64-bit modulo
        return ((h >> np.uint64(32)) * np.uint64(buckets) >> np.uint64(32)).astype(np.int64)


def to_ipc(data) -> bytes:
    """A record batch or table as an uncompressed Arrow IPC stream (what crosses the shuffle):
    LZ4 took six times as long to write, for 18% fewer bytes of contributions and half of
    snapshot rows, and a runner's shuffle may compress on its own."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write(data)
    return sink.getvalue().to_pybytes()


def from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(blob).read_all()


def split_by_bucket(data: pa.RecordBatch, buckets: int) -> Iterator[Tuple[int, bytes]]:
    """``(bucket, IPC blob)`` pieces of a batch, by the bucket of its ``profileId``."""
    if data.num_rows == 0:
        return
    of = bucket_of(data.column("profileId"), buckets)
    # small integers sort by radix: ten times faster than int64
    order = np.argsort(of.astype(np.int16) if buckets <= 2 ** 15 else of, kind="stable")
    counts = np.bincount(of, minlength=buckets)
    grouped = data.take(pa.array(order))
    start = 0
    for bucket in np.flatnonzero(counts):
        yield int(bucket), to_ipc(grouped.slice(start, int(counts[bucket])))
        start += int(counts[bucket])


def in_order(fn, items: Iterable, pool: Optional[Executor], ahead: int) -> Iterator:
    """``fn`` of each item, in order; with a pool, up to ``ahead`` items computed at once."""
    if pool is None:
        yield from map(fn, items)
        return
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class EventPlan:
    """The event parts (``Events`` nodes) of every rule, and how events turn into per-profile
    aggregates for them at ``as_of`` (module docstring)."""

    def __init__(self, rules: Iterable[AudienceRule], as_of_ms: int, max_events: int):
        rules = [rule for rule in rules if rule.uses_events]
        self.nodes: Tuple[Events, ...] = tuple(dict.fromkeys(
            n for rule in rules for n in walk(rule.node) if type(n) is Events))
        self.as_of_ms, self.max_events = as_of_ms, max_events
        retention = event_retention_ms(rules)
        self.oldest_ms = as_of_ms - retention if retention else None   # None: every event counts
        paths = [n.path for node in self.nodes if node.cond is not None for n in walk(node.cond) if hasattr(n, "path")]
        paths += [node.sum_path for node in self.nodes if node.sum_path]
        self.columns = list(dict.fromkeys(["profileId", "timestamp"] + [p[0] for p in paths]))
        self.names = [f"e{k}" for k in range(len(self.nodes))]
        self.schema = pa.schema([("profileId", pa.string()), ("timestamp", pa.int64())] + [
            (name, pa.float64() if node.agg == "sum" else pa.int8()) for name, node in zip(self.names, self.nodes)])
        self._conds = [None if n.cond is None else compile_vectorized(n.cond) for n in self.nodes]
        self._py = [(None if n.cond is None else compile_node(n.cond),
                     None if n.sum_path is None else path_getter(n.sum_path)) for n in self.nodes]

    # ---- 1. contributions of the events ----------------------------------------------------------

    def contributions(self, batch: pa.RecordBatch, source: str, first_row: int) -> Tuple[pa.Table, List[DeadLetter]]:
        """A Parquet batch of events (its first row is ``first_row`` of the file, from 0) ->
        contributions, and dead letters for rows without ``profileId`` or ``timestamp``."""
        ids = batch.column("profileId").cast(pa.string())
        times = times_ms(batch.column("timestamp"))
        good = pc.and_(pc.fill_null(pc.greater(pc.binary_length(ids), 0), False), times.is_valid())
        dead = []
        if not pc.all(good).as_py():
            bad = np.flatnonzero(~good.to_numpy(zero_copy_only=False))
            rows = batch.take(pa.array(bad)).to_pylist()
            for i, row in zip(bad, rows):
                reason = "no 'profileId'" if not row.get("profileId") else "no readable 'timestamp'"
                dead.append(DeadLetter(f"--events: {reason}", source, f"row {first_row + int(i) + 1}",
                                       json.dumps(row, default=str, ensure_ascii=False)))
        keep = pc.and_(good, pc.fill_null(pc.less_equal(times, self.as_of_ms), False))
        if self.oldest_ms is not None:
            keep = pc.and_(keep, pc.fill_null(pc.greater_equal(times, self.oldest_ms), False))
        others = [n for n in batch.schema.names if n not in ("profileId", "timestamp")]
        events = pa.RecordBatch.from_arrays([ids, times] + [batch.column(n) for n in others],
                                            ["profileId", "timestamp"] + others)
        # conditions over every row, then the few output columns filtered (not the event's)
        columns = [ids, times]
        for node, cond in zip(self.nodes, self._conds):
            hit = cond(events, self.as_of_ms) if cond is not None else pa.array(np.ones(events.num_rows, bool))
            if node.agg == "sum":
                values = _numbers_at(events, node.sum_path)
                columns.append(pc.if_else(hit, values, 0.0))
            else:
                columns.append(pc.cast(hit, pa.int8()))
        return pa.Table.from_arrays(columns, schema=self.schema).filter(keep), dead

    def contributions_of_rows(self, rows: Sequence[Tuple[str, dict]], source: str) -> Tuple[pa.Table, List[DeadLetter]]:
        """JSONL events, ``(position, object)`` each, through the per-profile closures."""
        out: List[list] = [[] for _ in range(2 + len(self.nodes))]
        dead = []
        for position, row in rows:
            profile_id = row.get("profileId")
            if not isinstance(profile_id, str) or not profile_id:
                dead.append(DeadLetter("--events: no 'profileId'", source, position, json.dumps(row, ensure_ascii=False)))
                continue
            try:
                t = parse_timestamp_ms(row["timestamp"])
            except (KeyError, ValueError, TypeError, OverflowError):
                dead.append(DeadLetter("--events: no readable 'timestamp'", source, position,
                                       json.dumps(row, ensure_ascii=False)))
                continue
            if t > self.as_of_ms or (self.oldest_ms is not None and t < self.oldest_ms):
                continue
            event = drop_nulls({k: v for k, v in row.items() if k != "profileId"})
            event["timestamp"] = t
            out[0].append(profile_id)
            out[1].append(t)
            for k, (cond, get) in enumerate(self._py):
                hit = cond is None or cond(event, None, self.as_of_ms, {})
                if get is None:
                    out[2 + k].append(int(hit))
                else:
                    value = as_number(get(event)) if hit else None
                    out[2 + k].append(0.0 if value is None else float(value))
        return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(out, self.schema)], schema=self.schema), dead

    # ---- 3. aggregates per profile, and the lookup ------------------------------------------------

    def aggregate(self, contributions: Sequence[pa.Table]) -> Optional[pa.Table]:
        """``profileId`` and one aggregate column per event part (same names), over each
        profile's newest ``max_events`` events; None when there are none."""
        tables = [t for t in contributions if t.num_rows]
        if not tables:
            return None
        table = pa.concat_tables(tables)
        sums = [(name, "sum") for name in self.names]
        agg = table.group_by("profileId", use_threads=False).aggregate([("timestamp", "count")] + sums)
        if pc.max(agg.column("timestamp_count")).as_py() > self.max_events:
            agg = self._newest(table).group_by("profileId", use_threads=False).aggregate(sums)
        return pa.table([agg.column("profileId")] + [agg.column(name + "_sum") for name in self.names],
                        names=["profileId"] + self.names)

    def _newest(self, table: pa.Table) -> pa.Table:
        table = table.take(pc.sort_indices(table, [("profileId", "ascending"), ("timestamp", "descending")]))
        ids = table.column("profileId").combine_chunks()
        n = len(ids)
        first = np.ones(n, bool)
        if n > 1:
            first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        starts = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        return table.filter(pa.array(np.arange(n) - starts < self.max_events))

    def lookup(self, aggregates: Optional[pa.Table], profile_ids: pa.Array) -> Optional[Dict[Events, pa.Array]]:
        """The aggregates of each snapshot row's profile (0 where it has no events)."""
        if aggregates is None:
            return None
        at = pc.index_in(profile_ids, value_set=aggregates.column("profileId").combine_chunks())
        return {node: pc.fill_null(aggregates.column(name).combine_chunks().take(at), 0)
                for node, name in zip(self.nodes, self.names)}


def _numbers_at(events: pa.RecordBatch, path: Tuple[str, ...]) -> pa.Array:
    """The numbers at ``path`` as float64 (0 where absent or not a number: ``sum`` adds numbers only)."""
    arr = events.column(path[0]) if path[0] in events.schema.names else None
    for name in path[1:]:
        if arr is None or not pa.types.is_struct(arr.type) or arr.type.get_field_index(name) < 0:
            arr = None
            break
        arr = pc.struct_field(arr, name)
    if arr is None or not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)
                           or pa.types.is_decimal(arr.type)):
        return pa.array(np.zeros(events.num_rows))
    return pc.fill_null(arr.cast(pa.float64()), 0.0)


class _EventContributionsFn(beam.DoFn):
    """An events work item (Parquet row group, or a whole JSONL file) -> ``(bucket, IPC blob)``
    contributions; bad rows and unreadable files as ``DeadLetter`` elements. A row group's
    batches are turned into pieces ``threads`` at a time (pyarrow kernels release the GIL)."""

    def __init__(self, plan_args: tuple, buckets: int, batch_size: int, threads: int = 1):
        self._plan_args, self._buckets, self._batch_size, self._threads = plan_args, buckets, batch_size, threads
        self._read = Metrics.counter("backfill", "events_read")

    def setup(self):
        config, as_of_ms = self._plan_args
        self._plan = EventPlan(AudienceSet.from_config(config).rules.values(), as_of_ms,
                               config.evaluation.max_events_per_profile)
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None

    def teardown(self):
        if self._pool is not None:
            self._pool.shutdown()

    def process(self, item):
        path, row_group, first = item
        try:
            if row_group is None:
                chunks = map(self._pieces, self._json_chunks(path))
            else:
                chunks = in_order(lambda batch: self._pieces(self._plan.contributions(*batch)),
                                  self._parquet_batches(path, row_group, first), self._pool, self._threads)
            for read, dead, pieces in chunks:
                self._read.inc(read)
                yield from dead
                yield from pieces
        except (OSError, ValueError, pa.ArrowException) as e:
            where = "" if row_group is None else f"row group {row_group}"
            yield DeadLetter(f"--events: cannot read: {e}", path, where or None, "")

    def _pieces(self, chunk: Tuple[pa.Table, List[DeadLetter]]) -> Tuple[int, List[DeadLetter], list]:
        """Contributions and their dead letters -> (events read, dead letters, pieces)."""
        table, dead = chunk
        return (table.num_rows + len(dead), dead,
                [piece for batch in table.to_batches() for piece in split_by_bucket(batch, self._buckets)])

    def _parquet_batches(self, path, row_group, first):
        """``(batch, path, first row)`` of the row group's batches."""
        for batch in read_row_group(path, row_group, self._plan.columns, self._batch_size):
            yield batch, path, first
            first += batch.num_rows

    def _json_chunks(self, path):
        rows, dead = [], []
        with FileSystems.open(path) as f:
            for n, line in enumerate(iter(f.readline, b""), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    reason = None if isinstance(row, dict) else "--events: not a JSON object"
                except ValueError:
                    reason = "--events: not valid JSON"
                if reason:
                    dead.append(DeadLetter(reason, path, f"line {n}", line.decode("utf-8", "replace").rstrip("\n")))
                    continue
                rows.append((f"line {n}", row))
                if len(rows) >= self._batch_size:
                    table, bad = self._plan.contributions_of_rows(rows, path)
                    yield table, dead + bad
                    rows, dead = [], []
        table, bad = self._plan.contributions_of_rows(rows, path)
        yield table, dead + bad


class EventContributions(beam.PTransform):
    """An events glob -> ``{"pieces": (bucket, IPC blob) contributions, "dead_letter": ...}``:
    files and row groups expanded by the workers, each read with the columns the event
    conditions need."""

    def __init__(self, config, pattern: str, as_of_ms: int, buckets: int, batch_size: int, threads: int = 1):
        super().__init__()
        self._fn = _EventContributionsFn((config, as_of_ms), buckets, batch_size, threads)
        self._pattern = pattern

    def expand(self, pbegin):
        files = pbegin | "EventFiles" >> ReadParquetRowGroups(self._pattern, "--events")
        out = split_dead_letters(files["work"]
                                 | "SpreadEventGroups" >> beam.Reshuffle()
                                 | "Contributions" >> beam.ParDo(self._fn), "pieces")
        return {"pieces": out["pieces"],
                DEAD_LETTER: (files[DEAD_LETTER], out[DEAD_LETTER]) | "EventDeadLetters" >> beam.Flatten()}
