"""Merge policies (SPEC 5): the attribute writes of one profile turned into one view per policy.

Writes are kept per *bucket* and per dotted path as ``(timestamp_ms, seq, value)``; ``seq`` is
the profile's arrival counter (a timestamp tie goes to the later arrival) and ``value`` ``None``
is a delete (a tombstone: it is kept so that an older write arriving late cannot revive the
path). A dataset listed by some ``dataset_precedence`` policy has a bucket of its own; all other
writes (unlisted datasets, no ``datasetId``) share the bucket ``None``. A ``timestamp_ordered``
view only needs the latest write per path, which is the latest over all buckets, so a config
without ``dataset_precedence`` keeps a single bucket and one entry per path.

Paths overlap (``person.name`` written as a leaf or deleted, ``person.name.firstName`` written
as a leaf): inside a bucket a write drops the older entries under it and an older leaf above it,
and is itself dropped when an entry above it is newer. Views apply entries in (timestamp, seq)
order, so across buckets the latest write wins for overlapping paths too.

Deletes under ``dataset_precedence``: a ``null`` from dataset D removes D's value (and D's
values under that path); a lower-ranked dataset's value then shows through. Among the unlisted
datasets, which rank below in timestamp order, a delete removes the path from that lowest layer.

Paths are dotted strings (rule paths are dotted too, so keys containing ``.`` are not
addressable anyway). A leaf is any non-dict value (lists included); an empty object writes
nothing.
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from transforms.config import MergePolicyConfig

Entry = Tuple[int, int, Any]                      # (timestamp_ms, seq, value; None = deleted)
Writes = Dict[Optional[str], Dict[str, Entry]]    # bucket -> dotted path -> entry

TIMESTAMP_ORDERED = "timestamp_ordered"
DATASET_PRECEDENCE = "dataset_precedence"

_ORDER = itemgetter(0, 1)


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


def _apply(view: dict, path: str, value: Any, deletes: bool) -> None:
    """Set ``path`` to ``value`` in a nested view; ``None`` deletes it (pruning empty parents)
    when ``deletes``, else is skipped."""
    parts = path.split(".")
    if value is None:
        if not deletes:
            return
        trail = []
        node = view
        for key in parts[:-1]:
            child = node.get(key)
            if type(child) is not dict:
                return
            trail.append((node, key))
            node = child
        node.pop(parts[-1], None)
        while trail and not node:
            parent, key = trail.pop()
            del parent[key]
            node = parent
        return
    node = view
    for key in parts[:-1]:
        child = node.get(key)
        if type(child) is not dict:
            child = node[key] = {}
        node = child
    node[parts[-1]] = value


def _layer(view: dict, buckets: Iterable[Dict[str, Entry]], deletes: bool) -> None:
    entries = [(e[0], e[1], path, e[2]) for paths in buckets for path, e in paths.items()]
    if len(entries) > 1:
        entries.sort(key=_ORDER)
    for _, _, path, value in entries:
        _apply(view, path, value, deletes)


class MergePolicy:
    """One merge policy: builds its view from the shared per-bucket writes."""

    __slots__ = ("id", "type", "datasets")

    def __init__(self, config: MergePolicyConfig):
        if config.type not in (TIMESTAMP_ORDERED, DATASET_PRECEDENCE):
            raise ValueError(f"unknown merge policy type {config.type!r}")
        self.id = config.id
        self.type = config.type
        self.datasets = tuple(config.datasets) if config.type == DATASET_PRECEDENCE else ()

    def view(self, writes: Writes) -> dict:
        view: dict = {}
        if self.type == TIMESTAMP_ORDERED:
            _layer(view, writes.values(), deletes=True)
            return view
        listed = self.datasets
        _layer(view, (paths for b, paths in writes.items() if b not in listed), deletes=True)
        for dataset in reversed(listed):          # lowest rank first, the highest is applied last
            paths = writes.get(dataset)
            if paths:
                _layer(view, (paths,), deletes=False)
        return view


class MergePolicies:
    """The merge policies in use: where a write is stored, and the views over the writes."""

    def __init__(self, configs: Iterable[MergePolicyConfig]):
        self.policies = {c.id: MergePolicy(c) for c in configs}
        self._bucketed = frozenset(d for p in self.policies.values() for d in p.datasets)
        # policies with the same semantics share one view
        self._signature = {pid: (p.type, p.datasets) for pid, p in self.policies.items()}

    def bucket(self, dataset_id: Optional[str]) -> Optional[str]:
        return dataset_id if dataset_id in self._bucketed else None

    def record(self, writes: Writes, attributes: Mapping[str, Any], dataset_id: Optional[str],
               timestamp_ms: int, seq: int) -> List[str]:
        """Store the leaf writes of ``attributes``; returns every written path (kept or
        superseded: a write is a write for SPEC 6 even when a newer value wins)."""
        leaves = attribute_leaves(attributes)
        if not leaves:
            return []
        bucket = self.bucket(dataset_id)
        paths = writes.get(bucket)
        if paths is None:
            paths = writes[bucket] = {}
        for path, value in leaves:
            self._store(paths, path, (timestamp_ms, seq, value))
        return [path for path, _ in leaves]

    @staticmethod
    def _store(paths: Dict[str, Entry], path: str, entry: Entry) -> None:
        """Store ``entry`` at ``path`` unless a newer entry at or above it wins."""
        ts = entry[0]
        old = paths.get(path)
        if old is not None and old[0] > ts:
            return
        cut = path.rfind(".")
        while cut > 0:
            above = path[:cut]
            old = paths.get(above)
            if old is not None:
                if old[0] > ts:
                    return
                if old[2] is not None:       # an older leaf is replaced by this subtree
                    del paths[above]
            cut = path.rfind(".", 0, cut)
        if paths:
            under = path + "."
            for stale in [p for p, e in paths.items() if e[0] <= ts and p.startswith(under)]:
                del paths[stale]
        paths[path] = entry

    def views(self, writes: Writes, policy_ids: Iterable[str]) -> Dict[str, dict]:
        """One view per policy id; policies of the same type and datasets share a view."""
        views: Dict[str, dict] = {}
        built: Dict[tuple, dict] = {}
        for pid in policy_ids:
            sig = self._signature[pid]
            view = built.get(sig)
            if view is None:
                view = built[sig] = self.policies[pid].view(writes)
            views[pid] = view
        return views


def merge_identities(identities: Dict[str, Tuple[str, ...]], added: Mapping[str, Iterable[str]],
                     removed: Mapping[str, Iterable[str]]) -> bool:
    """Union ``added`` into ``identities`` and take ``removed`` out, in place; True when the
    identity map changed (adding an id already held is no change). Identities are a union over
    all datasets under every policy, applied in arrival order."""
    changed = False
    for ns, ids in added.items():
        held = identities.get(ns, ())
        new = tuple(i for i in dict.fromkeys(ids) if i not in held)
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
    return changed
