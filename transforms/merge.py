"""Merge policies (docs/semantics.md#profiles-and-audiences): the attribute writes of one profile turned into one view per policy.

Each policy keeps only what it needs, in stores the profile state owns (``view``, ``stamps``,
``datasets``) and hands to ``MergePolicies``:

- ``timestamp_ordered``: the view itself, maintained in place, plus ``stamps``, the timestamp
  of the latest write (or delete) per dotted path. A write older than the stamp of its path or
  of a path above it is superseded: out-of-order arrivals never overwrite newer values, and a
  timestamp tie goes to the later arrival. Policies of this type share the one view, and the
  record of a write says whether it changed, so unchanged views skip re-evaluation.
- ``dataset_precedence``: ``datasets``, the latest ``(timestamp, seq, value)`` per path for
  each listed dataset (all other writes share the bucket ``None``), and the view is built from
  them on demand: the value from the highest listed dataset that has one; unlisted datasets and
  updates without ``datasetId`` rank below, in timestamp order (``seq``, the arrival counter,
  breaks ties there). A ``null`` from dataset D is a delete of D's value (and D's values under
  that path): a lower-ranked value then shows through. Among the unlisted, a delete removes the
  path from that lowest layer.

``null`` deletes a path and everything under it. Paths overlap (``person.name`` written as a
leaf or deleted, ``person.name.firstName`` written): the result is the writes applied in
timestamp order. Paths are dotted strings (rule paths are dotted too); a leaf is any non-dict
value (lists included); an empty object writes nothing.
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from transforms.config import MergePolicyConfig

TIMESTAMP_ORDERED = "timestamp_ordered"
DATASET_PRECEDENCE = "dataset_precedence"

Entry = Tuple[int, int, Any]                        # (timestamp_ms, seq, value; None = deleted)
Datasets = Dict[Optional[str], Dict[str, Entry]]    # bucket -> dotted path -> entry

_ORDER = itemgetter(0, 1)
_MISSING = object()


def attribute_leaves(attributes: Mapping[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    """The ``(dotted path, value)`` writes of a partial nested attributes object."""
    out: List[Tuple[str, Any]] = []
    _collect(attributes, prefix, out)
    return out


def _collect(obj, prefix, out):
    for key, value in obj.items():
        if type(value) is dict:
            _collect(value, prefix + key + ".", out)
        else:
            out.append((prefix + key, value))


def _get(view: dict, path: str) -> Any:
    node: Any = view
    for key in path.split("."):
        if type(node) is not dict:
            return _MISSING
        node = node.get(key, _MISSING)
    return node


def _apply(view: dict, path: str, value: Any) -> Any:
    """Set ``path`` to ``value`` in a nested view (``None``: delete it, pruning emptied
    parents); returns the value it replaced (``_MISSING`` when absent)."""
    parts = path.split(".")
    node = view
    if value is None:
        trail = []
        for key in parts[:-1]:
            child = node.get(key)
            if type(child) is not dict:
                return _MISSING
            trail.append((node, key))
            node = child
        old = node.pop(parts[-1], _MISSING)
        while trail and not node:
            parent, key = trail.pop()
            del parent[key]
            node = parent
        return old
    for key in parts[:-1]:
        child = node.get(key)
        if type(child) is not dict:
            child = node[key] = {}
        node = child
    old = node.get(parts[-1], _MISSING)
    node[parts[-1]] = value
    return old


def _newer_at_or_above(stamps: Dict[str, int], path: str, ts: int) -> bool:
    stamp = stamps.get(path)
    if stamp is not None and stamp > ts:
        return True
    cut = path.rfind(".")
    while cut > 0:
        stamp = stamps.get(path[:cut])
        if stamp is not None and stamp > ts:
            return True
        cut = path.rfind(".", 0, cut)
    return False


def write_timestamp_view(view: dict, stamps: Dict[str, int], path: str, ts: int, value: Any,
                         in_order: bool = False) -> bool:
    """Apply one write to a ``timestamp_ordered`` view in place; True when the view changed.
    ``in_order``: the caller knows no stamp is newer than ``ts``."""
    if not in_order and _newer_at_or_above(stamps, path, ts):
        return False
    if value is not None:               # the common case: a leaf set where its parents are objects or missing
        *parents, leaf = path.split(".")
        node = view
        for key in parents:
            child = node.get(key)
            if child is None:           # nothing at or under this path yet (a value is never None)
                child = node[key] = {}
            elif type(child) is not dict:
                break
            node = child
        else:
            old = node.get(leaf, _MISSING)
            if type(old) is not dict:
                node[leaf] = value
                stamps[path] = ts
                return old != value or type(old) is not type(value)
    newer_below = ()
    if type(_get(view, path)) is dict:   # an object is replaced: keep what was written after
        under = path + "."
        below = [p for p in stamps if p.startswith(under)]
        newer_below = [(p, _get(view, p)) for p in below if stamps[p] > ts]
        for p in below:
            if stamps[p] <= ts:
                del stamps[p]
    old = _apply(view, path, value)
    stamps[path] = ts
    for p, kept in newer_below:
        if kept is not _MISSING:
            _apply(view, p, kept)
    return bool(newer_below) or (old is not _MISSING if value is None
                                 else old != value or type(old) is not type(value))


def _write_in_order(node: dict, stamps: Dict[str, int], attributes: Mapping[str, Any], prefix: str, ts: int,
                    written: List[str], changed: List[str], deferred: List[Tuple[str, Any]]) -> None:
    """``MergePolicies.write``'s walk: sets the leaves whose parents are objects or missing and
    whose old value is not an object (``write_timestamp_view``'s fast path), defers the others."""
    for key, value in attributes.items():
        path = prefix + key
        if type(value) is dict:
            child = node.get(key)
            if child is None:               # nothing here yet: kept only if something is written
                child = node[key] = {}
                _write_in_order(child, stamps, value, path + ".", ts, written, changed, deferred)
                if not child:
                    del node[key]
            elif type(child) is dict:
                _write_in_order(child, stamps, value, path + ".", ts, written, changed, deferred)
            else:                           # an object replaces a leaf
                below = attribute_leaves(value, path + ".")
                written += [p for p, _ in below]
                deferred += below
            continue
        written.append(path)
        if value is not None:
            old = node.get(key, _MISSING)
            if type(old) is not dict:
                node[key] = value
                stamps[path] = ts
                if old != value or type(old) is not type(value):
                    changed.append(path)
                continue
        deferred.append((path, value))


def _store(paths: Dict[str, Entry], path: str, entry: Entry) -> bool:
    """Store a ``dataset_precedence`` entry unless a newer entry at or above it wins; drops
    the older entries under it and an older leaf above it. True when the view may have changed:
    a new value, an entry dropped, or the same value at a newer time where an entry above or
    below it is layered in time order with it."""
    ts = entry[0]
    old = paths.get(path)
    if old is not None and old[0] > ts:
        return False
    dropped = False
    cut = path.rfind(".")
    while cut > 0:
        above = paths.get(path[:cut])
        if above is not None:
            if above[0] > ts:
                return False
            if above[2] is not None:        # an older leaf is replaced by this subtree
                del paths[path[:cut]]
                dropped = True
        cut = path.rfind(".", 0, cut)
    under = path + "."
    if old is None or old[2] is None:       # entries under a path live beside a delete of it
        stale = [p for p, e in paths.items() if e[0] <= ts and p.startswith(under)]
        for p in stale:
            del paths[p]
        dropped = dropped or bool(stale)
    if old is not None:
        del paths[path]                     # re-inserted last: dict order is arrival order
    paths[path] = entry
    if old is None or old[2] != entry[2] or dropped:
        return True
    return any(p.startswith(under) or path.startswith(p + ".") for p in paths)


def _layer(view: dict, buckets: Iterable[Dict[str, Entry]], deletes: bool) -> None:
    entries = [(e[0], e[1], path, e[2]) for paths in buckets for path, e in paths.items()]
    entries.sort(key=_ORDER)
    for _, _, path, value in entries:
        if value is not None or deletes:
            _apply(view, path, value)


class MergePolicy:
    """One merge policy of the config."""

    __slots__ = ("id", "type", "datasets")

    def __init__(self, config: MergePolicyConfig):
        if config.type not in (TIMESTAMP_ORDERED, DATASET_PRECEDENCE):
            raise ValueError(f"unknown merge policy type {config.type!r}")
        self.id = config.id
        self.type = config.type
        self.datasets = tuple(config.datasets) if config.type == DATASET_PRECEDENCE else ()

    def precedence_view(self, datasets: Datasets) -> dict:
        """The ``dataset_precedence`` view: unlisted datasets first (timestamp order, deletes
        applied), then listed datasets from the lowest rank to the highest."""
        view: dict = {}
        listed = self.datasets
        _layer(view, (paths for b, paths in datasets.items() if b not in listed), deletes=True)
        for dataset in reversed(listed):
            paths = datasets.get(dataset)
            if paths:
                _layer(view, (paths,), deletes=False)
        return view


class MergePolicies:
    """The merge policies in use: stores writes in a profile's attribute stores (the
    ``timestamp_ordered`` view and its stamps, the ``dataset_precedence`` entries; the profile
    state owns them) and gives each policy's view."""

    def __init__(self, configs: Iterable[MergePolicyConfig]):
        policies = [MergePolicy(c) for c in configs]
        self.timestamp_ids = tuple(p.id for p in policies if p.type == TIMESTAMP_ORDERED)
        self.precedence = tuple(p for p in policies if p.type == DATASET_PRECEDENCE)
        self._bucketed = frozenset(d for p in self.precedence for d in p.datasets)

    def record(self, view: dict, stamps: Dict[str, int], datasets: Datasets, leaves: List[Tuple[str, Any]],
               dataset_id: Optional[str], timestamp_ms: int, seq: int,
               changed_paths: Optional[List[str]] = None) -> bool:
        """Store leaf writes ``(path, value)``; True when some policy's view may have changed.
        ``changed_paths``, when given, receives the paths of the writes that may have."""
        changed = False
        if self.timestamp_ids:
            in_order = not stamps or max(stamps.values()) <= timestamp_ms
            for path, value in leaves:
                if write_timestamp_view(view, stamps, path, timestamp_ms, value, in_order):
                    changed = True
                    if changed_paths is not None:
                        changed_paths.append(path)
        if self.precedence:
            bucket = dataset_id if dataset_id in self._bucketed else None
            paths = datasets.get(bucket)
            if paths is None:
                paths = datasets[bucket] = {}
            for path, value in leaves:
                if _store(paths, path, (timestamp_ms, seq, value)):
                    changed = True
                    if changed_paths is not None:
                        changed_paths.append(path)
        return changed

    def write(self, view: dict, stamps: Dict[str, int], datasets: Datasets, attributes: Mapping[str, Any],
              dataset_id: Optional[str], timestamp_ms: int, seq: int,
              changed_paths: List[str]) -> List[str]:
        """``record`` for an update's partial nested attributes; returns the paths of its leaf
        writes. With only ``timestamp_ordered`` policies and no newer stamp (the
        common case in a stream), the view is written while the attributes are walked, without
        a dotted path split per leaf; the writes this fast path does not cover (deletes, an
        object replacing a leaf or a leaf an object) follow in order, as ``record`` does them.
        The paths one update writes never overlap, so only dict order can tell the two apart."""
        if self.precedence or (stamps and max(stamps.values()) > timestamp_ms):
            leaves = attribute_leaves(attributes)
            self.record(view, stamps, datasets, leaves, dataset_id, timestamp_ms, seq, changed_paths)
            return [path for path, _ in leaves]
        written, deferred = [], []
        _write_in_order(view, stamps, attributes, "", timestamp_ms, written, changed_paths, deferred)
        for path, value in deferred:
            if write_timestamp_view(view, stamps, path, timestamp_ms, value, True):
                changed_paths.append(path)
        return written

    def views(self, view: dict, datasets: Datasets) -> Dict[str, dict]:
        """One view per policy in use; the timestamp-ordered policies share ``view``."""
        views = dict.fromkeys(self.timestamp_ids, view)
        for policy in self.precedence:
            views[policy.id] = policy.precedence_view(datasets)
        return views


def merge_identities(identities: Dict[str, Tuple[str, ...]], added: Mapping[str, Iterable[str]],
                     removed: Mapping[str, Iterable[str]]) -> bool:
    """Union ``added`` into ``identities`` and take ``removed`` out, in place; True when the
    identity map changed (adding an id already held is no change, nor adding one that the same
    update removes). Identities are a union over all datasets under every policy, applied in
    arrival order: an update's additions, then its removals."""
    before = dict(identities) if added and removed else None
    changed = False
    for ns, ids in added.items():
        held = identities.get(ns, ())
        new = tuple([i for i in dict.fromkeys(ids) if i not in held])
        if new:
            identities[ns] = held + new
            changed = True
    for ns, ids in removed.items():
        held = identities.get(ns)
        if held:
            drop = set(ids)
            kept = tuple(i for i in held if i not in drop)
            if len(kept) != len(held):
                changed = True
                if kept:
                    identities[ns] = kept
                else:
                    del identities[ns]
    return changed if before is None else identities != before
