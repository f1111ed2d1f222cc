"""``ProfileExporter``: one profile's updates and due time changes in, export records out
(docs/semantics.md#profiles-and-audiences), without Beam: ``export`` runs it in a stateful DoFn and
the tests run it directly. It is part of the compiled core (``transforms/core_build.py``).

Activation controls (``config.activation``, ``include_export_metadata``, ``expires_at``), all
decided when the exporter is built, so a config without them runs the code it always did:
- consent: the consent rule is evaluated with the audiences, on each policy's view, and its
  result kept in the state (``consents``); a record of a policy the profile consents to neither
  before nor after is withheld (counted), a change of consent exports only the opt-out or opt-in
  record of that policy (``ExportDecider.opt_out``/``opt_in``). The consent rule's paths join the
  rule inputs, so a write that may change consent is always evaluated;
- upload expiry: the expiry instant of an upload audience the profile is in is one more due
  time of the timer (capped by ``until_ms`` like window changes);
- export metadata: the per-policy ``sequence`` lives in the state, so a retried bundle (its state
  rolled back) produces the same ``_export.id`` again.

Event time, per profile:
- an update is evaluated at its timestamp, but never before the profile's last evaluation time:
  an update arriving out of order is evaluated at that time (its writes still merge by their own
  timestamps and never overwrite newer values; its event joins the history at its own time);
- time-window changes and upload expiries are due at ``AudienceSet.next_change_ms``; the timer
  is set only when that instant changes, and only when some rule reads events or an upload expires. Changes due strictly before an
  update are acted on first, inline, at their own instants (a bounded input is read before any
  timer fires, docs/semantics.md#command-lines), so the timer only ever catches a profile that stays quiet;
- with ``until_ms`` (bounded replay) nothing due after it is acted on: the watermark jumps to
  +inf at the end of a bounded input and would fire everything. (The DirectRunner holds no
  watermark for timers, so records of timers that fire only at that +inf are late for a
  downstream GroupByKey there; Dataflow and Flink hold the watermark.)
"""
from __future__ import annotations

import collections
from typing import FrozenSet, List, Optional, Sequence, Tuple

from transforms.audiences import AudienceSet, compile_consent
from transforms.config import ExportConfig
from transforms.export_decision import (ATTRIBUTE, AUDIENCE, CONSENT, EXITED, EXPIRY, IDENTITY, ExportDecider,
                                        ExportPlan, PathMatcher)
from transforms.merge import MergePolicies
from transforms.model import ExportRecord, ProfileUpdate, SnapshotProfile
from transforms.profile_state import ProfileState
from transforms.record_format import RecordFormatter

EXPORTS_BY_TRIGGER = {kind: "exports_" + kind for kind in (AUDIENCE, IDENTITY, ATTRIBUTE, CONSENT, EXPIRY)}
_NO_SEGMENTS: dict = {}
_NO_ATTRIBUTES: dict = {}
_NO_POLICIES: FrozenSet[str] = frozenset()
_NO_AUDIENCES: FrozenSet[str] = frozenset()
# builds a NamedTuple without its generated ``__new__``, a Python function: a frame less per record
_new_tuple = tuple.__new__


class ProfileExporter:
    """Per-profile processing without Beam: one update or time instant in, records out.

    Only the audiences an input of which may have changed are evaluated (with the audiences
    naming them in ``inSegment``): those whose rule reads an attribute path at, under or above a
    written path that changed a view (``view_paths``); on an event or a time change due by the
    update's time (window changes, upload expiries), those reading events and the expiring
    uploads; on an identity change, the uploads. The others keep their result. Every audience
    is evaluated for a profile never evaluated (a fresh seed) and, when a rule (or the consent
    rule) reads ``now`` outside windows, on every update. With nothing to evaluate the profile's
    evaluation time still moves on as if it had been evaluated, and the update can still export
    through a mapped attribute write or an identity change. (Past ``until_ms`` time changes
    are not timed, so there the audiences reading events and the expiring uploads are evaluated
    with any other evaluation, and on every update of a profile with events or still in an
    upload audience that has expired.)"""

    def __init__(self, config: ExportConfig, audiences: AudienceSet, until_ms: Optional[int] = None):
        self.audiences = audiences
        self.until_ms = until_ms
        self.policies = MergePolicies(config.merge_policy(pid) for pid in audiences.policy_ids)
        self.audience_ids = frozenset(a.id for a in audiences.ordered)
        self.decider = ExportDecider(config)
        self.formatter = RecordFormatter(config)
        self.retention_ms = audiences.event_retention_ms
        self.keeps_events = self.retention_ms != 0   # some rule reads events
        self.timed = audiences.timed                 # events leave windows, or uploads expire
        self.expiring = bool(audiences.expiries)     # uploads expire
        self.consent = compile_consent(config.activation.consent) if config.activation.consent else None
        rules = list(audiences.rules.values()) + ([self.consent] if self.consent else [])
        self.reads_now = any(rule.reads_now for rule in rules)   # every update evaluates every rule
        self.consent_inputs = PathMatcher(self.consent.view_paths) if self.consent else None
        self.mapped_attributes = self.decider.mapped_attributes
        self.max_events = config.evaluation.max_events_per_profile
        self.metadata = config.destination.include_export_metadata
        # metrics, read by the DoFn: records by trigger (``EXPORTS_BY_TRIGGER``), ``exits`` (exited
        # entries) and the consent counts
        self.counts: collections.Counter = collections.Counter()

    def seed(self, snapshot: SnapshotProfile) -> ProfileState:
        """A seeded profile's state; with consent, the seed's consent is where it starts from (a
        seeded member that does not consent counts as announced as exited)."""
        state = ProfileState.from_snapshot(snapshot, self.policies, self.audience_ids)
        if self.consent is not None:
            state.consenting(self._consents(state.views(self.policies), snapshot.timestamp_ms))
        due = min((at for aid, at in self.audiences.expiries.items() if aid in state.realized), default=None)
        if due is not None and (self.until_ms is None or due <= self.until_ms):
            state.schedule(due)   # a seeded member's upload expiry is due with or without an update
        return state

    def catch_up(self, key: str, state: ProfileState, before_ms: int,
                 out: Optional[List[Tuple[ExportRecord, ExportPlan]]] = None) -> List[Tuple[ExportRecord, ExportPlan]]:
        """Act on the time changes (window changes, upload expiries) due strictly before
        ``before_ms`` (a timer's own instant: ``before_ms = due + 1``), each at its instant."""
        if out is None:
            out = []
        # a fresh seed has never been evaluated: its first evaluation evaluates every audience
        dirty = None if self.reads_now or state.evaluated_ms is None else self.audiences.time_readers
        while state.timer_ms is not None and state.timer_ms < before_ms:
            now = state.timer_ms
            self._evaluate(key, state, now, now, False, False, out, dirty)
        return out

    def update_all(self, key: str, state: ProfileState, updates: Sequence[ProfileUpdate]) -> List[ExportRecord]:
        """``update`` with each of a profile's updates in turn (a bundle's, in arrival order); the
        records alone (``counts`` has their triggers)."""
        out: List[Tuple[ExportRecord, ExportPlan]] = []
        for update in updates:
            self.update(key, state, update, out)
        return [record for record, _ in out]

    def update(self, key: str, state: ProfileState, update: ProfileUpdate,
               out: Optional[List[Tuple[ExportRecord, ExportPlan]]] = None) -> List[Tuple[ExportRecord, ExportPlan]]:
        """Apply one update (after the changes due before it) and evaluate; the records are
        appended to ``out`` (a new list when None), which is returned."""
        if out is None:
            out = []
        now = update.timestamp_ms
        timer = state.timer_ms
        if timer is not None and timer < now:
            self.catch_up(key, state, now, out)
            timer = state.timer_ms
        written, changed, identities_changed, event_added = state.apply(update, self.policies, self.keeps_events)
        attribute_written = bool(written) and self.mapped_attributes.any(written)
        evaluated = state.evaluated_ms
        dirty = None                                  # the audiences to evaluate (None: all)
        consent_read = bool(changed) and self.consent_inputs is not None and self.consent_inputs.any(changed)
        if evaluated is not None and not self.reads_now:
            audiences = self.audiences
            dirty = audiences.path_readers(changed) if changed else _NO_AUDIENCES
            if identities_changed:
                dirty = dirty | audiences.identity_readers
            # past ``until_ms`` time changes are not timed: whatever is evaluated catches them up
            if event_added or (timer is not None and timer <= now) or (
                    self.until_ms is not None and now > self.until_ms
                    and (state.events or dirty or consent_read or audiences.holds_expired(state.realized, now))):
                dirty = dirty | audiences.time_readers
        if dirty is None or dirty or consent_read:
            if evaluated is not None and evaluated > now:
                now = evaluated
            self._evaluate(key, state, now, update.timestamp_ms, identities_changed, attribute_written, out, dirty)
            return out
        if evaluated > now:                           # no rule input changed: results stand
            now = evaluated
        state.evaluated(now)
        if self.keeps_events:
            state.prune_events(now, self.retention_ms, self.max_events)
        if (attribute_written or identities_changed) and state.realized:
            realized = state.realized
            plans = self.decider.decide(realized, realized, now, identities_changed, attribute_written)
            if plans and self.consent is not None:     # consent did not change: no rule input did
                consents = state.consents or _NO_POLICIES
                plans = self._consenting(plans, consents, consents)
            if plans:
                self._format(key, state, state.views(self.policies), plans, now, update.timestamp_ms, out)
        return out

    def _evaluate(self, key, state, now, event_time_ms, identities_changed, attribute_written, out, dirty):
        if self.keeps_events:
            state.prune_events(now, self.retention_ms, self.max_events)
        views = state.views(self.policies)
        members = self.audiences.evaluate(views, state.identities, state.events, now, dirty, state.realized)
        before, after = state.evaluated(now, members)
        # the next time change moves only with the events, the time or, with expiring uploads, the
        # memberships; otherwise the pending one is still the next (nothing is due before it)
        if self.timed and (dirty is None or (after is not before and self.expiring)
                           or not dirty.isdisjoint(self.audiences.time_readers)):
            due = self.audiences.next_change_ms(state.events, now, members)
            state.schedule(None if due is None or due <= now or (self.until_ms is not None and due > self.until_ms)
                           else due)
        if self.consent is not None:
            self._evaluate_consent(key, state, views, before, after, now, event_time_ms,
                                   identities_changed, attribute_written, out)
            return
        if after is before and not ((identities_changed or attribute_written) and after):
            return
        plans = self.decider.decide(before, after, now, identities_changed, attribute_written)
        if plans:
            self._format(key, state, views, plans, now, event_time_ms, out)

    def _consents(self, views, now) -> FrozenSet[str]:
        consent = self.consent.evaluate
        return frozenset(pid for pid, view in views.items() if consent(view, (), now, _NO_SEGMENTS))

    def _evaluate_consent(self, key, state, views, before, after, now, event_time_ms,
                          identities_changed, attribute_written, out):
        """Consent per merge policy: nothing is exported for a policy while the profile does not
        consent; a change of consent exports the opt-out or opt-in record alone."""
        consents = self._consents(views, now)
        was = state.consenting(consents)
        plans = []
        if was != consents:
            decider = self.decider
            for pid in decider.policy_ids:
                if (pid in was) == (pid in consents):
                    continue
                if pid in consents:
                    plan = decider.opt_in(after, pid, now)
                    if plan is not None:
                        after = state.requalified(plan.ups)   # the destination's qualification times
                        self.counts["consent_opt_ins"] += 1
                else:
                    plan = decider.opt_out(before, pid, now)
                    if plan is not None:
                        self.counts["consent_opt_outs"] += 1
                if plan is not None:
                    plans.append(plan)
        if after is not before or ((identities_changed or attribute_written) and after):
            plans += self._consenting(self.decider.decide(before, after, now, identities_changed, attribute_written),
                                      was, consents)
        if plans:
            order = self.decider.policy_ids
            plans.sort(key=lambda p: order.index(p.policy_id))
            self._format(key, state, views, plans, now, event_time_ms, out)

    def _consenting(self, plans, was, consents) -> list:
        """The plans of the policies consented to before and after; those of policies consented
        to neither before nor after are withheld (a change of consent has its own record)."""
        kept = []
        for plan in plans:
            if plan.policy_id in consents:
                if plan.policy_id in was:
                    kept.append(plan)
            elif plan.policy_id not in was:
                self.counts["consent_withheld"] += 1
        return kept

    def _format(self, key, state, views, plans, now, event_time_ms, out):
        partition_key = self.formatter.partition_key(key)
        counts = self.counts
        for plan in plans:
            view = views[plan.policy_id] if plan.attributes else _NO_ATTRIBUTES
            metadata = self._metadata(key, state, plan, now) if self.metadata else ""
            data = self.formatter.format(view, plan.ups, state.identities, metadata)
            out.append((_new_tuple(ExportRecord, (partition_key, data, event_time_ms)), plan))
            for kind in plan.triggers:
                counts[EXPORTS_BY_TRIGGER[kind]] += 1
            for _, status, _ in plan.ups:
                if status == EXITED:
                    counts["exits"] += 1

    def _metadata(self, key, state, plan, now) -> str:
        """The ``_export`` member; the sequence of the profile and policy lives in its state."""
        return self.formatter.export_metadata(key, plan.policy_id, state.next_sequence(plan.policy_id), now,
                                              plan.triggers)
