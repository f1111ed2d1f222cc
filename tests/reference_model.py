"""A slow, independent model of what the streaming export emits for one profile, for tests.

Written from the project's documentation of the export (the README's record, trigger and
merge rules and the decisions it writes down; the rule semantics of ``transforms.rules``), not
from the exporter. It reuses only the rule evaluator (``compile_rule(...).evaluate``); merge policies,
identities, event history, statuses, triggers and record data are rebuilt here, the plainest
way: every view is recomputed from the full list of writes on every evaluation, and every
update is evaluated. So it shares no code with ``ProfileState``, ``merge``, ``export_decision``,
``record_format`` or ``export``, and a bug there cannot hide by being in both.

The rules it implements:

- Merge policies. ``timestamp_ordered``: the view is every attribute write applied in
  timestamp order, ties in arrival order (a leaf sets its path, replacing a leaf above it;
  ``null`` deletes the path and what is under it). ``dataset_precedence``: each listed dataset
  has its own view built that way; updates of unlisted datasets or without ``datasetId`` share
  one more such view, the lowest; the policy's view is the lowest one with every listed
  dataset's leaves laid over it, lowest rank first (so a dataset's ``null`` only removes its
  own value and a lower one shows through).
- Identities: adds, then removals, of each update in arrival order; namespaces and ids keep
  their first-insertion order; an emptied namespace is dropped. The map "changed" when it
  differs after the update from before it.
- Events: every event is kept (its time is its own ``timestamp``, else the update's); a rule
  sees the newest ``max_events_per_profile`` (ties: the later arrival is newer). Dropping
  events older than the longest window, as the product does, changes no result: such an event
  is in no window again, since evaluation time never goes back.
- Evaluation time: an update is evaluated at ``max(its timestamp, the last evaluation time)``.
  Time-window changes: before an update stamped ``T`` (and at the end of input), the profile
  is evaluated at every instant strictly between the last evaluation time and ``T`` at which
  an event enters or leaves a window, never after ``until`` when it is given. With
  ``age = now - t`` for an event at ``t``, ``<= W`` holds for ``0 <= age <= W``: the event
  enters at ``t`` and leaves at ``t + W + 1``; ``< W``: ``t`` and ``t + W``; ``>= W`` enters at
  ``t + W``; ``> W`` at ``t + W + 1``. Rules comparing with ``now`` outside windows get no
  such instants (they are evaluated at updates and at those instants only).
- A seed (a snapshot row) gives the starting writes (at the row's timestamp), identities and
  ``realized`` statuses (``existing`` included) of configured audiences: known members are not
  announced again, their exits are.
- Statuses per audience: ``realized`` (since the evaluation time that made it so), ``exited``
  (at the evaluation time that made it so), or none. Changed: the mapped audiences whose
  status changed. Triggers, with the statuses after the update: (a) a changed mapped audience
  (its policy); (b) the identity map changed, (c) a leaf written at, under or above a mapped
  attribute path: the policies of the mapped audiences the profile is realized in. One record
  per policy so triggered, in config order, naming which of ``audience``, ``identity``,
  ``attribute`` produced it. Its ``ups``: the audiences of the policy, in config order, that
  changed (mapped ones) or are realized.
- Record data: the mapped attributes present on the policy's view (mapping order; a nested
  object where its first mapped path is; a mapped object whole), ``segmentMembership``, the
  whole ``identityMap``. An entry is ``lastQualificationTime`` (UTC, seconds), ``status``,
  then with timestamps ``createdAt``, ``updatedAt`` (when configured), ``mappingCreatedAt``,
  ``mappingUpdatedAt`` (mapped audiences), then with names ``name``.

The activation controls (the README's "Activation controls"):

- Consent: the consent rule is evaluated on each policy's view at every evaluation (updates and
  timers), with no events and no segments; a seed's consent is its rule on the seed's views at
  the row's timestamp; a profile without state consents under no policy. Per policy, in config
  order, comparing consent before and after the evaluation: neither: nothing (a record that
  would have been exported counts as withheld); stops consenting: when realized in mapped
  audiences of the policy before, one record of those as ``exited`` at the evaluation time,
  then the ``identityMap``; starts consenting: when realized in a mapped audience of the policy
  after, one usual record of its realized audiences, the mapped ones with the evaluation time as
  their new ``lastQualificationTime`` (kept in the statuses), the unmapped ones with theirs. Such
  a record is the policy's only one, with the trigger ``consent`` alone.
- Trigger switches: ``identity``/``attribute`` left out of ``activation.triggers`` neither
  trigger nor show.
- Upload expiry: an upload audience has no members at or after its ``expires_at``; the
  profile is evaluated at that instant (a timer, like a window change: after the clock, never
  after ``until``) while it is realized in that audience, a seeded member also before any
  update. A mapped audience's exit at or after
  its ``expires_at`` is the trigger ``expiry``, not ``audience``.
- Export metadata: ``_export`` ends the data: ``id`` (hex SHA-256 of ``profileId/policy/
  sequence``), ``sequence`` (the profile's records of that policy, from 1), ``at`` (the
  evaluation time in ms), ``triggers`` (those of the record, in the order audience, identity,
  attribute, consent, expiry).
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from transforms.config import ExportConfig
from transforms.model import ProfileUpdate, SnapshotProfile
from transforms.rules import compile_rule

_OCCURS = re.compile(r"occurs\s*(<=|<|>=|>)\s*(\d+)\s*(minutes|hours|days)")
_WINDOW_CHANGES = {"<=": lambda w: (0, w + 1), "<": lambda w: (0, w), ">=": lambda w: (w,), ">": lambda w: (w + 1,)}
_UNIT_MS = {"minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}
_TRIGGER_KINDS = ("audience", "identity", "attribute", "expiry")


class ReferenceRecord(NamedTuple):
    partition_key: str
    policy_id: str
    triggers: Tuple[str, ...]
    data: dict


class _Write(NamedTuple):
    timestamp_ms: int
    arrival: int
    bucket: Optional[str]       # the dataset id
    path: Tuple[str, ...]
    value: Any


def _leaves(obj: dict, prefix: Tuple[str, ...] = ()) -> List[Tuple[Tuple[str, ...], Any]]:
    out = []
    for key, value in obj.items():
        if isinstance(value, dict):
            out.extend(_leaves(value, prefix + (key,)))
        else:
            out.append((prefix + (key,), value))
    return out


def _set(view: dict, path: Tuple[str, ...], value: Any) -> None:
    if value is None:
        nodes = [view]
        for key in path[:-1]:
            child = nodes[-1].get(key)
            if not isinstance(child, dict):
                return
            nodes.append(child)
        nodes[-1].pop(path[-1], None)
        for parent, key, node in reversed(list(zip(nodes, path, nodes[1:]))):
            if not node:
                del parent[key]
        return
    node = view
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _build(writes: List[_Write]) -> dict:
    view: dict = {}
    for w in sorted(writes, key=lambda w: (w.timestamp_ms, w.arrival)):
        _set(view, w.path, w.value)
    return view


def _qualification_time(ms: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
            + dt.timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _counts_for(written: Tuple[str, ...], mapped: Tuple[str, ...]) -> bool:
    """A written path counts as a write of a mapped path at, under or above it."""
    n = min(len(written), len(mapped))
    return written[:n] == mapped[:n]


class _NoSegments:
    """The consent rule reads no segments."""

    @staticmethod
    def get(audience_id, default=False):
        return False


class _Segments:
    """What ``inSegment`` reads (``segments.get(id, False)``), answered by evaluating that audience."""

    def __init__(self, member):
        self.get = member


class ReferenceProfile:
    """One profile's export, update by update: ``update`` and ``finish`` return the records."""

    def __init__(self, config: ExportConfig, profile_id: str, until_ms: Optional[int] = None,
                 seed: Optional[SnapshotProfile] = None):
        self.config = config
        self.profile_id = profile_id
        self.until_ms = until_ms
        self.audiences = {a.id: a for a in config.audiences}
        self.rules = {a.id: compile_rule(a.id, a.rule) for a in config.audiences if a.rule is not None}
        self.uploads = {}
        for a in config.audiences:
            if a.rule is None:
                with open(a.upload.path, newline="", encoding="utf-8") as f:
                    values = {row[a.upload.column].strip() for row in csv.DictReader(f)}
                self.uploads[a.id] = (a.upload.namespace, values - {""})
        self.window_changes = {offset for a in config.audiences if a.rule
                               for op, n, unit in _OCCURS.findall(a.rule)
                               for offset in _WINDOW_CHANGES[op](int(n) * _UNIT_MS[unit])}
        self.mapped = {m.id: m for m in config.mapping.audiences}
        self.mapped_paths = [tuple(p.split(".")) for p in config.mapping.attributes]
        self.policies = {p.id: p for p in config.merge_policies}
        self.policy_order = [p.id for p in config.merge_policies
                             if any(a.merge_policy == p.id for a in config.audiences)]
        activation = config.activation
        self.consent_rule = compile_rule("consent", activation.consent) if activation.consent else None
        self.switched_on = set(activation.triggers) | {"audience", "expiry"}
        self.expiries = {a.id: a.upload.expires_at_ms for a in config.audiences
                         if a.upload is not None and a.upload.expires_at_ms is not None}
        self.metadata = config.destination.include_export_metadata
        self.sequences: Dict[str, int] = {}
        self.counts = {"consent_withheld": 0, "consent_opt_outs": 0, "consent_opt_ins": 0}
        self.writes: List[_Write] = []
        self.identities: Dict[str, List[str]] = {}
        self.events: List[Tuple[int, int, dict]] = []    # (event time, arrival, event)
        self.status: Dict[str, Tuple[str, int]] = {}     # audience -> (status, time)
        self.clock: Optional[int] = None
        self.arrivals = 0
        # the policies the profile consents under: without state, none (all without a rule)
        self.consents = set() if self.consent_rule else set(self.policy_order)
        if seed is not None:
            self._start_from(seed)

    def _start_from(self, seed: SnapshotProfile) -> None:
        """A snapshot row: its attributes are writes at its timestamp, its identities held, its
        known memberships of configured audiences (``existing`` is ``realized``) the statuses;
        the evaluation time starts with the first update or the first upload expiry due."""
        self.writes = [_Write(seed.timestamp_ms, 0, None, path, value)
                       for path, value in _leaves(dict(seed.attributes)) if value is not None]
        self._add_identities(seed.identities)
        self.status = {aid: ("realized", s.last_qualification_ms) for aid, s in seed.segment_membership.items()
                       if aid in self.audiences and s.status in ("realized", "existing")}
        self.consents = self.consenting(seed.timestamp_ms)

    # ---- the profile -----------------------------------------------------------------

    def view(self, policy_id: str) -> dict:
        policy = self.policies[policy_id]
        if policy.type == "timestamp_ordered":
            return _build(self.writes)
        listed = list(policy.datasets)
        view = _build([w for w in self.writes if w.bucket not in listed])
        for dataset in reversed(listed):
            for path, value in _leaves(_build([w for w in self.writes if w.bucket == dataset])):
                _set(view, path, value)
        return view

    def visible_events(self) -> List[Tuple[int, int, dict]]:
        """The newest ``max_events_per_profile`` events, oldest first."""
        keep = self.config.evaluation.max_events_per_profile
        return sorted(self.events, key=lambda e: (e[0], e[1]))[-keep:] if keep else []

    def members(self, now: int) -> set:
        """The audiences the profile is realized in at ``now``; ``inSegment`` asks on demand."""
        views = {pid: self.view(pid) for pid in self.policy_order}
        events = [e for _, _, e in self.visible_events()]
        results: Dict[str, bool] = {}

        def member(audience_id: str, default: bool = False) -> bool:
            if audience_id not in results:
                a = self.audiences[audience_id]
                if a.id in self.rules:
                    results[a.id] = bool(self.rules[a.id].evaluate(views[a.merge_policy], events, now, segments))
                elif a.id in self.expiries and now >= self.expiries[a.id]:
                    results[a.id] = False
                else:
                    namespace, values = self.uploads[a.id]
                    results[a.id] = any(i in values for i in self.identities.get(namespace, ()))
            return results[audience_id]

        segments = _Segments(member)
        return {aid for aid in self.audiences if member(aid)}

    def consenting(self, now: int) -> set:
        """The policies whose view the consent rule holds on at ``now`` (all without a rule)."""
        if self.consent_rule is None:
            return set(self.policy_order)
        return {pid for pid in self.policy_order
                if self.consent_rule.evaluate(self.view(pid), [], now, _NoSegments())}

    # ---- time ------------------------------------------------------------------------

    def _instants(self) -> List[int]:
        """Window changes of the visible events, and the expiry of each upload audience the
        profile is realized in."""
        return sorted({t + offset for t, _, _ in self.visible_events() for offset in self.window_changes}
                      | {at for aid, at in self.expiries.items() if self.status.get(aid, ("",))[0] == "realized"})

    def _timers(self, before_ms: Optional[int]) -> List[ReferenceRecord]:
        """Evaluate at every window instant (or upload expiry) after the clock, before ``before_ms`` (None: no
        bound), never after ``until``."""
        out: List[ReferenceRecord] = []
        for at in self._instants():   # no clock yet: a seed's expiries are the only instants
            if (self.clock is not None and at <= self.clock) or (before_ms is not None and at >= before_ms) \
                    or (self.until_ms is not None and at > self.until_ms):
                continue
            self.clock = at
            out.extend(self._evaluate(at, False, False))
        return out

    # ---- updates ---------------------------------------------------------------------

    def update(self, update: ProfileUpdate) -> List[ReferenceRecord]:
        out = self._timers(update.timestamp_ms)
        self.arrivals += 1
        leaves = _leaves(dict(update.attributes))
        for path, value in leaves:
            self.writes.append(_Write(update.timestamp_ms, self.arrivals, update.dataset_id, path, value))
        before = {ns: list(ids) for ns, ids in self.identities.items()}
        self._add_identities(update.identities)
        for ns, ids in update.identity_removals.items():
            held = self.identities.get(ns, [])
            for i in ids:
                if i in held:
                    held.remove(i)
            if ns in self.identities and not held:
                del self.identities[ns]
        if update.event is not None:
            event = dict(update.event)
            event.setdefault("timestamp", update.timestamp_ms)
            self.events.append((event["timestamp"], self.arrivals, event))
        self.clock = update.timestamp_ms if self.clock is None else max(self.clock, update.timestamp_ms)
        attribute_written = any(_counts_for(path, m) for path, _ in leaves for m in self.mapped_paths)
        out.extend(self._evaluate(self.clock, self.identities != before, attribute_written))
        return out

    def _add_identities(self, added) -> None:
        for ns, ids in added.items():
            for i in ids:
                if i not in self.identities.get(ns, []):
                    self.identities.setdefault(ns, []).append(i)

    def finish(self) -> List[ReferenceRecord]:
        """End of input: the window changes due by ``until`` (all of them without it)."""
        return self._timers(None)

    def _evaluate(self, now: int, identities_changed: bool, attribute_written: bool) -> List[ReferenceRecord]:
        members = self.members(now)
        before = dict(self.status)
        for aid in self.audiences:
            old = before.get(aid)
            if aid in members and (old is None or old[0] == "exited"):
                self.status[aid] = ("realized", now)
            elif aid not in members and old is not None and old[0] == "realized":
                self.status[aid] = ("exited", now)
        was, consents = self.consents, self.consenting(now)
        self.consents = consents
        changed = [aid for aid in self.mapped
                   if (before.get(aid) or (None,))[0] != (self.status.get(aid) or (None,))[0]]
        expired = {aid for aid in changed if aid in self.expiries and now >= self.expiries[aid]}
        realized_mapped = [aid for aid in self.mapped if self.status.get(aid, ("",))[0] == "realized"]
        policy_of = {aid: a.merge_policy for aid, a in self.audiences.items()}
        by_kind = {"audience": {policy_of[a] for a in changed if a not in expired},
                   "identity": {policy_of[a] for a in realized_mapped} if identities_changed else set(),
                   "attribute": {policy_of[a] for a in realized_mapped} if attribute_written else set(),
                   "expiry": {policy_of[a] for a in expired}}
        out = []
        for pid in self.policy_order:
            mapped_of_policy = [aid for aid in self.audiences if aid in self.mapped and policy_of[aid] == pid]
            if pid in was and pid not in consents:           # opt-out: what the destination holds exits
                held = [aid for aid in mapped_of_policy if (before.get(aid) or (None,))[0] == "realized"]
                if held:
                    self.counts["consent_opt_outs"] += 1
                    ups = {aid: self.ups_entry(aid, "exited", now) for aid in held}
                    out.append(self._emit(pid, ("consent",), now, {
                        "segmentMembership": {"ups": ups}, "identityMap": self.identity_map()}))
                continue
            if pid not in was and pid in consents:           # opt-in: the mapped members qualify now
                joined = [aid for aid in mapped_of_policy if self.status.get(aid, ("",))[0] == "realized"]
                if joined:
                    self.counts["consent_opt_ins"] += 1
                    for aid in joined:
                        self.status[aid] = ("realized", now)
                    ups = [aid for aid, a in self.audiences.items()
                           if a.merge_policy == pid and self.status.get(aid, ("",))[0] == "realized"]
                    out.append(self._emit(pid, ("consent",), now, self.record(pid, ups)))
                continue
            kinds = tuple(k for k in _TRIGGER_KINDS if pid in by_kind[k] and k in self.switched_on)
            if not kinds:
                continue
            if pid not in consents:
                self.counts["consent_withheld"] += 1
                continue
            ups = [aid for aid, a in self.audiences.items() if a.merge_policy == pid
                   and (aid in changed or self.status.get(aid, ("",))[0] == "realized")]
            out.append(self._emit(pid, kinds, now, self.record(pid, ups)))
        return out

    def _emit(self, policy_id: str, triggers: Tuple[str, ...], now: int, data: dict) -> ReferenceRecord:
        if self.metadata:
            sequence = self.sequences[policy_id] = self.sequences.get(policy_id, 0) + 1
            data["_export"] = {
                "id": hashlib.sha256(f"{self.profile_id}/{policy_id}/{sequence}".encode()).hexdigest(),
                "sequence": sequence, "at": now, "triggers": list(triggers)}
        return ReferenceRecord(self.partition_key(), policy_id, triggers, data)

    # ---- records ---------------------------------------------------------------------

    def partition_key(self) -> str:
        if len(self.profile_id) <= 256:
            return self.profile_id
        return hashlib.sha256(self.profile_id.encode()).hexdigest()

    def record(self, policy_id: str, ups: List[str]) -> dict:
        data = self.mapped_attributes(self.view(policy_id))
        data["segmentMembership"] = {"ups": {aid: self.ups_entry(aid, *self.status[aid]) for aid in ups}}
        data["identityMap"] = self.identity_map()
        return data

    def identity_map(self) -> dict:
        return {ns: [{"id": i} for i in ids] for ns, ids in self.identities.items()}

    def mapped_attributes(self, view: dict) -> dict:
        # the key skeleton in mapping order; ``None`` marks a mapped path exported whole
        skeleton: dict = {}
        for path in self.mapped_paths:
            node = skeleton
            for key in path[:-1]:
                if node.get(key, {}) is None:
                    break                              # under a mapped path: covered by it
                node = node.setdefault(key, {})
            else:
                node[path[-1]] = None

        def fill(value, shape):
            out = {}
            for key, sub in shape.items():
                v = value.get(key) if isinstance(value, dict) else None
                if sub is None and v is not None:
                    out[key] = v
                elif sub is not None and isinstance(v, dict):
                    picked = fill(v, sub)
                    if picked:
                        out[key] = picked
            return out
        return fill(view, skeleton)

    def ups_entry(self, audience_id: str, status: str, at: int) -> dict:
        entry: Dict[str, Any] = {"lastQualificationTime": _qualification_time(at), "status": status}
        destination = self.config.destination
        if destination.include_segment_timestamps:
            a, m = self.audiences[audience_id], self.mapped.get(audience_id)
            for key, value in (("createdAt", a.created_at_ms), ("updatedAt", a.updated_at_ms),
                               ("mappingCreatedAt", m and m.mapped_at_ms),
                               ("mappingUpdatedAt", m and m.mapping_updated_at_ms)):
                if value is not None:
                    entry[key] = value
        if destination.include_segment_names:
            entry["name"] = self.audiences[audience_id].name
        return entry
