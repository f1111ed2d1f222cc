"""Rule evaluation over a pyarrow ``RecordBatch`` of a snapshot (backfill), one row per profile.

``compile_vectorized`` turns the AST of ``transforms.rules`` (the same parse as the per-profile
closures) into a function ``(batch, now_ms, segments, events_by_profile) -> BooleanArray``.
Attribute parts are pyarrow.compute kernels, no Python per row; the semantics are those of the
rules module docstring, kind by kind (``_comparable`` is the vectorized twin of
``rules.CONVERT``): a path is a column, then struct fields (a missing column or field, or a
non-struct on the way, is absent); nulls are absent; every result is a null-free boolean array.

Where an exact match with Python semantics matters more than a kernel, the work is done per
distinct value, not per row: ``.matches`` (Python ``re``, not RE2), ``now`` against strings
(``parse_timestamp_ms``), and case-insensitive functions on non-ASCII columns (``str.lower``).
Event parts run the per-profile closure for the profiles that have events and once for all
those that have none. Known limits: ints beyond 2**53 against floats, and decimals against
float literals, compare as doubles here but exactly per profile.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.rules import (And, Compare, Events, InList, InSegment, IsNull, Lit, Not, Occurs, Or, StringFn,
                              as_ms, compile_node)

BatchEvaluator = Callable[[pa.RecordBatch, int, Mapping[str, pa.BooleanArray],
                           Optional[Mapping[Events, pa.Array]]], pa.BooleanArray]

DAY_MS = 86_400_000
_KERNELS = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
            ">": pc.greater, ">=": pc.greater_equal}
_PER_MS = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}
_DATE_PREFIX = "^[0-9]{4}-[0-9]{2}-[0-9]{2}"   # rules.as_date_text's prefix, in RE2
_INT64 = (-2 ** 63, 2 ** 63)
_EPOCH_DAY = dt.date(1970, 1, 1)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


class _Batch:
    """One batch being evaluated: its columns resolved once per path."""

    def __init__(self, batch: pa.RecordBatch, now_ms: int, segments, event_aggregates):
        self.batch = batch
        self.n = batch.num_rows
        self.now = now_ms
        self.segments = segments
        self.events = event_aggregates
        self._paths: Dict[Tuple[str, ...], Optional[pa.Array]] = {}

    def column(self, path: Tuple[str, ...]) -> Optional[pa.Array]:
        """The values at ``path`` (nulls where absent), or None when the schema has no such path."""
        if path in self._paths:
            return self._paths[path]
        arr = None
        if path[0] in self.batch.schema.names:
            arr = self.batch.column(path[0])
            for name in path[1:]:
                if not pa.types.is_struct(arr.type) or arr.type.get_field_index(name) < 0:
                    arr = None
                    break
                arr = pc.struct_field(arr, name)     # parent nulls carry over
        if arr is not None:
            arr = _normalize(arr)
        self._paths[path] = arr
        return arr

    def const(self, value: bool) -> pa.BooleanArray:
        return pa.array(np.full(self.n, value))


def _normalize(arr: pa.Array) -> Optional[pa.Array]:
    """The types the kernels below compare exactly (None for an all-null type)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _normalize(arr.dictionary_decode())
    if pa.types.is_null(t):
        return None
    if pa.types.is_string_view(t):
        return arr.cast(pa.large_string())
    if pa.types.is_uint64(t):                     # exact, and comparable with int64 literals
        return arr.cast(pa.decimal128(20, 0))
    if pa.types.is_float16(t):                    # no compare kernels for half floats
        return arr.cast(pa.float32())
    return arr


def _map_distinct(arr: pa.Array, fn, type_: pa.DataType) -> pa.Array:
    """``fn`` applied once per distinct value (nulls stay null)."""
    enc = pc.dictionary_encode(arr)
    return pa.array([fn(v) for v in enc.dictionary.to_pylist()], type=type_).take(enc.indices)


def _floor_div(values: pa.Array, d: int) -> pa.Array:
    q = pc.divide(values, d)                                    # truncates towards zero
    inexact_negative = pc.and_(pc.less(values, 0), pc.not_equal(pc.multiply(q, d), values))
    return pc.subtract(q, pc.cast(inexact_negative, pa.int64()))


def timestamp_ms(arr: pa.Array) -> pa.Array:
    """Epoch ms (floored) of a timestamp array, whatever its unit and zone."""
    values = arr.view(pa.int64())
    per_ms = _PER_MS[arr.type.unit]
    if per_ms is None:
        return pc.multiply(values, 1000)
    return values if per_ms == 1 else _floor_div(values, per_ms)


def _ms_of_text(v: str):
    ms = as_ms(v)
    return ms if ms is not None and _INT64[0] <= ms < _INT64[1] else None


def _comparable(arr: Optional[pa.Array], lit: Lit, now_ms: int):
    """``(values, rhs)``: the values of ``arr`` that compare with ``lit`` (null elsewhere) and
    the right-hand side, or None when no value of this column type compares with it."""
    if arr is None:
        return None
    t, kind = arr.type, lit.kind
    if kind == "str":
        return (arr, lit.value) if _is_text(t) else None
    if kind == "bool":
        return (arr, lit.value) if pa.types.is_boolean(t) else None
    if kind == "num":
        return (arr, lit.value) if _is_number(t) else None
    if kind == "date":
        if _is_text(t):
            dated = pc.match_substring_regex(arr, _DATE_PREFIX)
            return pc.if_else(dated, pc.utf8_slice_codeunits(arr, 0, 10), None), lit.value
        days = (dt.date.fromisoformat(lit.value) - _EPOCH_DAY).days
        if pa.types.is_date32(t):
            return arr.view(pa.int32()), days
        if pa.types.is_date64(t):
            return _floor_div(arr.view(pa.int64()), DAY_MS), days
        if pa.types.is_timestamp(t):
            return _floor_div(timestamp_ms(arr), DAY_MS), days
        return None
    # kind == "now": epoch ms
    if _is_number(t):
        return arr, now_ms
    if pa.types.is_timestamp(t):
        return timestamp_ms(arr), now_ms
    if pa.types.is_date32(t):
        return pc.multiply(pc.cast(arr.view(pa.int32()), pa.int64()), DAY_MS), now_ms
    if pa.types.is_date64(t):
        return arr.view(pa.int64()), now_ms
    if _is_text(t):
        return _map_distinct(arr, _ms_of_text, pa.int64()), now_ms
    return None


def _compare(ctx: _Batch, arr, op: str, lit: Lit) -> pa.BooleanArray:
    c = _comparable(arr, lit, ctx.now)
    if c is None:
        return ctx.const(False)
    return pc.fill_null(_KERNELS[op](c[0], c[1]), False)


def _in_list(ctx: _Batch, arr, lits: Tuple[Lit, ...], negated: bool) -> pa.BooleanArray:
    hit, comparable = ctx.const(False), ctx.const(False)
    for lit in lits:
        c = _comparable(arr, lit, ctx.now)
        if c is not None:
            hit = pc.or_(hit, pc.fill_null(pc.equal(c[0], c[1]), False))
            comparable = pc.or_(comparable, pc.is_valid(c[0]))
    return pc.and_not(comparable, hit) if negated else hit


def _lower(arr: pa.Array) -> pa.Array:
    """``str.lower`` of every value: the ASCII kernel when it is exact, else per distinct value."""
    if pc.all(pc.string_is_ascii(arr)).as_py() is not False:
        return pc.ascii_lower(arr)
    return _map_distinct(arr, str.lower, arr.type)


def _string_fn(ctx: _Batch, arr, node: StringFn, match) -> pa.BooleanArray:
    if arr is None or not _is_text(arr.type):
        return ctx.const(False)
    if match is not None:
        return pc.fill_null(_map_distinct(arr, lambda s: match(s) is not None, pa.bool_()), False)
    arg = node.arg
    if not node.case_sensitive:
        arr, arg = _lower(arr), arg.lower()
    if node.name == "equals":
        result = pc.equal(arr, arg)
    elif node.name == "contains":
        result = pc.match_substring(arr, arg)
    else:
        result = (pc.starts_with if node.name == "startsWith" else pc.ends_with)(arr, arg)
    return pc.fill_null(result, False)


def _events(node: Events):
    """An event part from its per-profile aggregate (``event_aggregates[node]``: each row's
    count of events meeting the condition, or their sum), computed from the events by
    ``transforms.event_join``; rows without events (or no aggregates at all) get the rule's
    result over no events."""
    none = compile_node(node)(None, (), 0, {})
    kernel = _KERNELS[node.op] if node.op else None

    def ev(ctx: _Batch) -> pa.BooleanArray:
        agg = ctx.events.get(node) if ctx.events else None
        if agg is None:
            return ctx.const(none)
        if node.agg == "exists":
            return pc.fill_null(pc.greater(agg, 0), False)
        return pc.fill_null(kernel(pc.fill_null(agg, 0), node.number.value), False)
    return ev


def _occurs(node: Occurs):
    """``path occurs op N unit before now`` over an events batch (``timestamp`` in epoch ms)."""
    w = node.window_ms

    def ev(ctx: _Batch) -> pa.BooleanArray:
        c = _comparable(ctx.column(node.path), Lit("now", None), ctx.now)
        if c is None:
            return ctx.const(False)
        age = pc.subtract(ctx.now, c[0])
        if node.op in ("<=", "<"):
            within = pc.and_(pc.greater_equal(age, 0), (pc.less_equal if node.op == "<=" else pc.less)(age, w))
        else:
            within = _KERNELS[node.op](age, w)
        return pc.fill_null(within, False)
    return ev


def _compile(node) -> Callable[[_Batch], pa.BooleanArray]:
    t = type(node)
    if t is And or t is Or:
        a, b = _compile(node.left), _compile(node.right)
        kernel = pc.and_ if t is And else pc.or_
        return lambda ctx: kernel(a(ctx), b(ctx))
    if t is Not:
        a = _compile(node.operand)
        return lambda ctx: pc.invert(a(ctx))
    if t is Compare:
        return lambda ctx: _compare(ctx, ctx.column(node.path), node.op, node.lit)
    if t is InList:
        return lambda ctx: _in_list(ctx, ctx.column(node.path), node.lits, node.negated)
    if t is StringFn:
        match = re.compile(node.arg).fullmatch if node.name == "matches" else None
        return lambda ctx: _string_fn(ctx, ctx.column(node.path), node, match)
    if t is IsNull:
        def is_null(ctx):
            arr = ctx.column(node.path)
            if arr is None:
                return ctx.const(node.null)
            return pc.is_null(arr) if node.null else pc.is_valid(arr)
        return is_null
    if t is InSegment:
        aid = node.audience_id
        return lambda ctx: ctx.segments[aid] if aid in ctx.segments else ctx.const(False)
    if t is Events:
        return _events(node)
    if t is Occurs:
        return _occurs(node)
    raise TypeError(f"not a rule node: {node!r}")


def compile_vectorized(node) -> BatchEvaluator:
    """The batch evaluator of a rule AST: ``(batch, now_ms, segments, event_aggregates)``
    to one boolean per row; ``segments`` maps audience ids to their arrays for ``inSegment``,
    ``event_aggregates`` maps the rule's ``Events`` nodes to per-row aggregates (None: no
    profile has events). Also evaluates event conditions over a batch of events."""
    root = _compile(node)

    def evaluate(batch: pa.RecordBatch, now_ms: int, segments: Mapping[str, pa.BooleanArray] = None,
                 event_aggregates: Optional[Mapping[Events, pa.Array]] = None) -> pa.BooleanArray:
        return root(_Batch(batch, now_ms, segments or {}, event_aggregates))
    return evaluate


def identity_membership(batch: pa.RecordBatch, namespace: str, values: pa.Array) -> pa.BooleanArray:
    """Rows whose ``identityMap`` (map<string, list<struct<id>>>) holds one of ``values`` in
    ``namespace``: entries flattened, matched with ``is_in`` and scattered back by offsets,
    never a row in Python. (Map arrays have no ``list_flatten`` kernel, and ``.keys``/``.items``
    are the unsliced children, hence the offsets.)"""
    n = batch.num_rows
    hits = np.zeros(n, dtype=bool)
    if "identityMap" not in batch.schema.names:
        return pa.array(hits)
    imap = batch.column("identityMap")
    offsets = imap.offsets.to_numpy()
    first, count = int(offsets[0]), int(offsets[-1] - offsets[0])
    entry_rows = np.repeat(np.arange(n), np.diff(offsets))
    in_namespace = pc.fill_null(pc.equal(imap.keys.slice(first, count), namespace), False).to_numpy(zero_copy_only=False)
    if imap.null_count:                                   # a null map's entries do not count
        in_namespace &= imap.is_valid().to_numpy(zero_copy_only=False)[entry_rows]
    ids_lists = imap.items.slice(first, count).filter(pa.array(in_namespace))
    items = pc.list_flatten(ids_lists)
    if not pa.types.is_struct(items.type) or items.type.get_field_index("id") < 0:
        return pa.array(hits)
    matched = pc.fill_null(pc.is_in(pc.struct_field(items, "id"), value_set=values), False).to_numpy(zero_copy_only=False)
    item_rows = entry_rows[in_namespace][pc.list_parent_indices(ids_lists).to_numpy()]
    hits[item_rows[matched]] = True
    return pa.array(hits)
