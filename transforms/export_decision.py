"""When a profile is exported and which records it gets (docs/semantics.md#exports points 1-4, and the activation
controls: trigger switches, upload expiry, consent opt-out and opt-in records).

Given the memberships before and after an update (or timer), whether the identity map changed
and whether a mapped attribute was written, ``ExportDecider.decide`` names the records to emit:
one per merge policy involved, each with its ``segmentMembership.ups`` entries.

A written path counts for a mapped path when it is the same path, lies under it (a write to
``person.name.firstName`` when ``person.name`` is mapped) or above it (``person.name`` written
as a leaf or deleted replaces the mapped ``person.name.firstName``); paths compare by whole
dotted segments (``person.nameSuffix`` is not under ``person.name``).
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

from transforms.config import ExportConfig, upload_expiries

REALIZED, EXITED = "realized", "exited"
AUDIENCE, IDENTITY, ATTRIBUTE, CONSENT, EXPIRY = "audience", "identity", "attribute", "consent", "expiry"
# builds a NamedTuple without its generated ``__new__``, a Python function: a frame less per plan
_new_tuple = tuple.__new__


class ExportPlan(NamedTuple):
    """One record to emit: its merge policy, its ``ups`` entries as ``(audience_id, status,
    lastQualificationTime ms)`` in config order, every trigger that holds for it (in the order
    audience, identity, attribute, consent, expiry: a record a mapped audience's change causes
    also lists an identity change or a mapped attribute write of the same update) and whether it carries the mapped
    attributes (an opt-out record does not)."""
    policy_id: str
    ups: Tuple[Tuple[str, str, int], ...]
    triggers: Tuple[str, ...]
    attributes: bool = True


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
    """Section 6's triggers and records, with the activation controls: triggers switched off
    (``activation.triggers``) never export nor show; an exit of an upload audience at its
    ``expires_at`` is an ``expiry``, not an ``audience`` change; ``opt_out``/``opt_in`` give
    the consent records."""

    def __init__(self, config: ExportConfig):
        self._mapped = tuple(m.id for m in config.mapping.audiences)
        self._policy_audiences: Dict[str, Tuple[str, ...]] = {}
        for a in config.audiences:
            self._policy_audiences[a.merge_policy] = self._policy_audiences.get(a.merge_policy, ()) + (a.id,)
        self._policy_mapped = {pid: tuple(a for a in ids if a in self._mapped)
                               for pid, ids in self._policy_audiences.items()}
        order = {p.id: i for i, p in enumerate(config.merge_policies)}
        # the merge policies of the audiences, in config order
        self.policy_ids: Tuple[str, ...] = tuple(sorted(self._policy_audiences, key=order.__getitem__))
        self._identity_on = IDENTITY in config.activation.triggers
        self._attribute_on = ATTRIBUTE in config.activation.triggers
        self._expiries = upload_expiries(config.audiences)
        # whether a written path is at, under or above a mapped attribute path
        self.mapped_attributes = PathMatcher(config.mapping.attributes)
        # prepared once: (policy, its audiences, its mapped audiences) in policy order, and the
        # triggers an identity change / attribute write adds
        self._policies = tuple((pid, self._policy_audiences[pid], self._policy_mapped[pid])
                               for pid in self.policy_ids)
        self._touched_kinds = {(i, w): tuple(k for k, on in ((IDENTITY, i), (ATTRIBUTE, w)) if on)
                               for i in (False, True) for w in (False, True)}

    def decide(self, before: Mapping[str, int], after: Mapping[str, int], now_ms: int,
               identities_changed: bool = False, attribute_written: bool = False
               ) -> Tuple[ExportPlan, ...]:
        """``before``/``after``: ``{audience_id: lastQualificationTime ms}`` of the audiences the
        profile is realized in; an exit is stamped ``now_ms``."""
        identities_changed = identities_changed and self._identity_on
        attribute_written = attribute_written and self._attribute_on
        touched = identities_changed or attribute_written
        if before is after and not touched:
            return ()
        touched_kinds = self._touched_kinds[identities_changed, attribute_written]
        expiries = self._expiries
        plans = []
        for pid, audiences, mapped in self._policies:
            # (a) a mapped audience of the policy entered or exited; (b), (c) only while the
            # profile is realized in one of them after the update
            changed = [] if before is after else [a for a in mapped if (a in before) != (a in after)]
            touching = touched and not after.keys().isdisjoint(mapped)
            if not changed and not touching:
                continue
            ups = tuple([(a, REALIZED, after[a]) if a in after else (a, EXITED, now_ms)
                         for a in audiences if a in after or a in changed])
            if changed:
                expired = [bool(expiries) and a in expiries and now_ms >= expiries[a] for a in changed]
                triggers = (((AUDIENCE,) if not all(expired) else ()) + (touched_kinds if touching else ())
                            + ((EXPIRY,) if any(expired) else ()))
            else:
                triggers = touched_kinds
            plans.append(_new_tuple(ExportPlan, (pid, ups, triggers, True)))
        return tuple(plans)

    def opt_out(self, before: Mapping[str, int], policy_id: str, now_ms: int) -> Optional[ExportPlan]:
        """The record of a profile that stops consenting under a policy: the mapped audiences
        of the policy it was realized in before, as exited at ``now_ms``, no attributes; None
        when there were none (the destination holds nothing of it)."""
        ups = tuple((a, EXITED, now_ms) for a in self._policy_mapped.get(policy_id, ()) if a in before)
        return ExportPlan(policy_id, ups, (CONSENT,), False) if ups else None

    def opt_in(self, after: Mapping[str, int], policy_id: str, now_ms: int) -> Optional[ExportPlan]:
        """The record of a profile that starts consenting under a policy: its mapped audiences
        of the policy as realized at ``now_ms``, its unmapped ones with their own times; None
        when it is in no mapped audience of the policy."""
        mapped = self._policy_mapped.get(policy_id, ())
        if not any(a in after for a in mapped):
            return None
        ups = tuple((a, REALIZED, now_ms if a in mapped else after[a])
                    for a in self._policy_audiences[policy_id] if a in after)
        return ExportPlan(policy_id, ups, (CONSENT,))
