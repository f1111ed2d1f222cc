"""When a profile is exported and which records it gets (docs/semantics.md#exports points 1-4).

Given the memberships before and after an update (or timer), whether the identity map changed
and whether a mapped attribute was written, ``ExportDecider.decide`` names the records to emit:
one per merge policy involved, each with its ``segmentMembership.ups`` entries.

A written path counts for a mapped path when it is the same path, lies under it (a write to
``person.name.firstName`` when ``person.name`` is mapped) or above it (``person.name`` written
as a leaf or deleted replaces the mapped ``person.name.firstName``); paths compare by whole
dotted segments (``person.nameSuffix`` is not under ``person.name``).
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, NamedTuple, Tuple

from transforms.config import ExportConfig

REALIZED, EXITED = "realized", "exited"
AUDIENCE, IDENTITY, ATTRIBUTE = "audience", "identity", "attribute"


class ExportPlan(NamedTuple):
    """One record to emit: its merge policy, its ``ups`` entries as ``(audience_id, status,
    lastQualificationTime ms)`` in config order, and the trigger kinds that produced it."""
    policy_id: str
    ups: Tuple[Tuple[str, str, int], ...]
    triggers: Tuple[str, ...]


class PathMatcher:
    """Whether written dotted paths count for a set of paths (at, under or above one of them, by
    whole segments). Answers are remembered per path: a config's data has few distinct paths."""

    MEMO = 10_000

    def __init__(self, paths: Iterable[str]):
        paths = tuple(paths)
        self._paths = frozenset(paths)
        self._at_or_above = frozenset(p[:i] for p in paths for i in range(len(p) + 1)
                                      if i == len(p) or p[i] == ".") - {""}
        self._memo: Dict[str, bool] = {}

    def matches(self, path: str) -> bool:
        hit = self._memo.get(path)
        if hit is None:
            hit = path in self._at_or_above
            cut = path.rfind(".")
            while not hit and cut > 0:
                hit = path[:cut] in self._paths
                cut = path.rfind(".", 0, cut)
            if len(self._memo) < self.MEMO:
                self._memo[path] = hit
        return hit

    def any(self, paths: Iterable[str]) -> bool:
        memo = self._memo
        for path in paths:
            hit = memo.get(path)
            if hit or (hit is None and self.matches(path)):
                return True
        return False


class ExportDecider:
    def __init__(self, config: ExportConfig):
        self._policy_of = {a.id: a.merge_policy for a in config.audiences}
        self._mapped = tuple(m.id for m in config.mapping.audiences)
        self._policy_audiences: Dict[str, Tuple[str, ...]] = {}
        for a in config.audiences:
            self._policy_audiences[a.merge_policy] = self._policy_audiences.get(a.merge_policy, ()) + (a.id,)
        self._policy_order = {p.id: i for i, p in enumerate(config.merge_policies)}
        # whether a written path is at, under or above a mapped attribute path
        self.mapped_attributes = PathMatcher(config.mapping.attributes)

    def decide(self, before: Mapping[str, int], after: Mapping[str, int], now_ms: int,
               identities_changed: bool = False, attribute_written: bool = False
               ) -> Tuple[ExportPlan, ...]:
        """``before``/``after``: ``{audience_id: lastQualificationTime ms}`` of the audiences the
        profile is realized in; an exit is stamped ``now_ms``."""
        policy_of = self._policy_of
        changed = [] if before is after else [a for a in self._mapped if (a in before) != (a in after)]
        touched = identities_changed or attribute_written
        if not changed and not touched:
            return ()
        triggers: Dict[str, list] = {}
        for a in changed:
            triggers.setdefault(policy_of[a], [AUDIENCE])
        if touched:
            kinds = [k for k, on in ((IDENTITY, identities_changed), (ATTRIBUTE, attribute_written)) if on]
            for a in self._mapped:
                if a in after:
                    pid = policy_of[a]
                    have = triggers.setdefault(pid, [])
                    if kinds[0] not in have:
                        have.extend(kinds)
        if not triggers:
            return ()
        exited = {a for a in changed if a not in after}
        plans = []
        for pid in sorted(triggers, key=self._policy_order.__getitem__):
            ups = tuple((a, REALIZED, after[a]) if a in after else (a, EXITED, now_ms)
                        for a in self._policy_audiences[pid] if a in after or a in exited)
            plans.append(ExportPlan(pid, ups, tuple(triggers[pid])))
        return tuple(plans)
