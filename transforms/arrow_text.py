"""JSON text built by pyarrow string kernels over whole arrays (the backfill's records, the file
sink's lines): concatenation, JSON string escaping, and the rare values that go through Python."""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SPECIAL = r'[\x00-\x1f"\\]'


def concat(*parts) -> pa.Array:
    """Element-wise concatenation of string (or binary) arrays and scalars; null if any part is null."""
    return pc.binary_join_element_wise(*parts, "")


def python_where(values: pa.Array, mask: pa.Array, fn) -> Optional[pa.Array]:
    """``fn`` of just the masked values (the rare ones Arrow cannot format), as a string
    array to put back with ``replace_with_mask``; None when no value is masked."""
    if not pc.any(mask).as_py():
        return None
    return pa.array([fn(v) for v in values.filter(mask).to_pylist()], pa.string())


def json_escaped(values: pa.Array) -> pa.Array:
    """The JSON text between the quotes of string values (``json`` escaping with
    ensure_ascii=False). Only the values holding a quote, backslash or control character are
    touched; control characters (rare) are escaped by ``json`` itself. Text without any such
    byte (the common case) is returned as it is after one scan of its bytes."""
    if not _may_need_escaping(values):
        return values
    special = pc.fill_null(pc.match_substring_regex(values, _SPECIAL), False)
    if not pc.any(special).as_py():
        return values
    odd = values.filter(special)
    fixed = pc.replace_substring(pc.replace_substring(odd, "\\", "\\\\"), '"', '\\"')
    control = pc.match_substring_regex(odd, r"[\x00-\x1f]")
    by_json = python_where(odd, control, lambda v: json.dumps(v, ensure_ascii=False)[1:-1])
    if by_json is not None:
        fixed = pc.replace_with_mask(fixed, control, by_json)
    return pc.replace_with_mask(values, special, fixed)


def _may_need_escaping(values: pa.Array) -> bool:
    """Whether the bytes of a string array (nulls' bytes included) hold a quote, backslash
    or control character: three vectorized compares over the bytes, ~10x faster than a regex
    per value."""
    if not isinstance(values, pa.Array) or values.type not in (pa.string(), pa.large_string()):
        return True
    data = values.buffers()[2]
    if data is None or len(values) == 0:
        return False
    offsets = np.frombuffer(values.buffers()[1], np.int32 if values.type == pa.string() else np.int64)
    start, end = offsets[values.offset], offsets[values.offset + len(values)]
    text = np.frombuffer(data, np.uint8, end - start, start)
    return bool(np.count_nonzero(text < 0x20) or np.count_nonzero(text == ord('"'))
                or np.count_nonzero(text == ord("\\")))


def joined_bytes(lines: pa.Array) -> memoryview:
    """The values of a string/binary array back to back, as one bytes-like view of the array's
    data (no copy at all: files take it as they take bytes)."""
    if len(lines) == 0:
        return memoryview(b"")
    o = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    start, end = o[lines.offset], o[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2].slice(start, end - start)).cast("B")
