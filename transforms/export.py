"""``ExportProfileChanges``: profile updates in, export records out (docs/semantics.md#profiles-and-audiences), over keyed state.

One stateful DoFn keyed by profileId with one ``ReadModifyWriteState`` cell (the whole
``ProfileState``, ``ProfileStateCoder``) and, only when some rule reads events or an upload
expires, one event-time timer: each state cell or timer costs the DirectRunner a per-key, per-bundle price (docs/DEVELOPING.md).
A record keeps the element timestamp of what produced it: its update (the readers stamp each
update with its own time) or its timer; a time-window change caught up by a later update goes
out with that update's timestamp. (Re-stamping each record with its ``event_time_ms`` cost the
DirectRunner ~10% of streaming throughput.) Metrics (namespace ``export``): ``updates``, ``records``, ``exports_audience``
/ ``_identity`` / ``_attribute`` / ``_consent`` / ``_expiry`` (records by trigger), ``exits``,
``timers_fired``, ``consent_withheld`` / ``consent_opt_outs`` / ``consent_opt_ins``, and the
``state_bytes`` distribution (one state write in ``STATE_BYTES_SAMPLE``).

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

Seeding: ``seed`` (``PCollection[SnapshotProfile]``) is a side input, ``AsMultiMap`` by profile
id (the newest row of a profile wins), consulted when a key has no state yet, so a seed always
takes effect before the profile's first update, in batch and streaming alike. Portable runners
(Dataflow, Flink) look a multimap side input up per key from its materialization; the
DirectRunner holds the whole seed in memory. A seeded member of an upload audience that expires
(by ``until_ms``) must exit at ``expires_at`` even if its profile never gets an update, so the
ids of those profiles (only those: the others need no state before an update) also enter the
DoFn as keyed elements ``(profile id, None)``: whichever of that element and the profile's first
update comes first seeds the state from the side input, which holds the expiry as its due time
either way, so the records do not depend on which came first.
"""
from __future__ import annotations

import collections
import operator
from typing import Any, FrozenSet, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp

from transforms import profile_state, progress
from transforms.audiences import AudienceSet, compile_consent
from transforms.config import ExportConfig
from transforms.export_decision import (ATTRIBUTE, AUDIENCE, CONSENT, EXITED, EXPIRY, IDENTITY, ExportDecider,
                                        ExportPlan, PathMatcher)
from transforms.merge import MergePolicies
from transforms.model import ExportRecord, ProfileUpdate, SnapshotProfile
from transforms.profile_state import ProfileState, seeded_members
from transforms.record_format import RecordFormatter

STATE_BYTES_SAMPLE = 16  # the state-bytes metric encodes one state write in 16 a second time


class ProfileStateCoder(coders.Coder):
    """``ProfileState`` as compact bytes (see ``profile_state.encode``).

    Every read decodes afresh. (Keeping recently written states to hand back on their next read
    saved the decode but kept thousands of live objects per worker: the garbage collector's
    passes over them cost more than the decodes, ~10% of the export's CPU.)"""

    # the functions themselves, not methods calling them: one Python frame less per read and write
    encode = staticmethod(profile_state.encode)
    decode = staticmethod(profile_state.decode)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return ProfileState

    def __reduce__(self):
        return ProfileStateCoder, ()

    def __eq__(self, other):
        return type(other) is ProfileStateCoder

    def __hash__(self):
        return hash(ProfileStateCoder)


beam.coders.registry.register_coder(ProfileState, ProfileStateCoder)
_SNAPSHOT_TIME = operator.attrgetter("timestamp_ms")
_NO_SEGMENTS: dict = {}
_NO_ATTRIBUTES: dict = {}
_NO_POLICIES: FrozenSet[str] = frozenset()
_NO_AUDIENCES: FrozenSet[str] = frozenset()
_EXPORTS_BY_TRIGGER = {kind: "exports_" + kind for kind in (AUDIENCE, IDENTITY, ATTRIBUTE, CONSENT, EXPIRY)}


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
        self.consent = compile_consent(config.activation.consent) if config.activation.consent else None
        rules = list(audiences.rules.values()) + ([self.consent] if self.consent else [])
        self.reads_now = any(rule.reads_now for rule in rules)   # every update evaluates every rule
        self.consent_inputs = PathMatcher(self.consent.view_paths) if self.consent else None
        self.mapped_attributes = self.decider.mapped_attributes
        self.max_events = config.evaluation.max_events_per_profile
        self.metadata = config.destination.include_export_metadata
        self.counts: collections.Counter = collections.Counter()   # consent metrics, read by the DoFn

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

    def update(self, key: str, state: ProfileState, update: ProfileUpdate) -> List[Tuple[ExportRecord, ExportPlan]]:
        """Apply one update (after the changes due before it) and evaluate."""
        out: List[Tuple[ExportRecord, ExportPlan]] = []
        now = update.timestamp_ms
        timer = state.timer_ms
        if timer is not None and timer < now:
            self.catch_up(key, state, now, out)
            timer = state.timer_ms
        leaves, changed, identities_changed, event_added = state.apply(update, self.policies, self.keeps_events)
        attribute_written = bool(leaves) and self.mapped_attributes.any([p for p, _ in leaves])
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
                    and (state.events or dirty or consent_read
                         or any(due <= now and a in state.realized for a, due in audiences.expiries.items()))):
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
        # the next time change moves only with the events, the time or the memberships (upload
        # expiries); otherwise the pending one is still the next
        if self.timed and (dirty is None or after is not before or not dirty.isdisjoint(self.audiences.time_readers)):
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
        for plan in plans:
            view = views[plan.policy_id] if plan.attributes else _NO_ATTRIBUTES
            metadata = self._metadata(key, state, plan, now) if self.metadata else ""
            data = self.formatter.format(view, plan.ups, state.identities, metadata)
            out.append((ExportRecord(partition_key, data, event_time_ms), plan))

    def _metadata(self, key, state, plan, now) -> str:
        """The ``_export`` member; the sequence of the profile and policy lives in its state."""
        return self.formatter.export_metadata(key, plan.policy_id, state.next_sequence(plan.policy_id), now,
                                              plan.triggers)


class _ExportProfileChangesFn(beam.DoFn):
    """The stateful DoFn for configs whose rules read no events: no timer to declare (a
    declared timer alone costs the DirectRunner about a third of its keyed throughput)."""
    PROFILE = ReadModifyWriteStateSpec("profile", ProfileStateCoder())

    def __init__(self, config: ExportConfig, until_ms: Optional[int]):
        self._config = config
        self._until_ms = until_ms
        self._state_bytes = Metrics.distribution("export", "state_bytes")

    def setup(self):
        self._exporter = ProfileExporter(self._config, AudienceSet.from_config(self._config), self._until_ms)
        self._writes = 0
        self._evaluated = progress.Tally(progress.UPDATES_EVALUATED)  # live progress lines

    def start_bundle(self):
        self._counts = collections.Counter()  # counted here, reported once per bundle
        self._updates = 0

    def finish_bundle(self):
        self._counts.update(self._exporter.counts)
        if self._updates:
            self._counts["updates"] += self._updates
        self._exporter.counts.clear()
        for name, n in self._counts.items():
            Metrics.counter("export", name).inc(n)
        self._evaluated.flush()

    def process(self, element: Tuple[str, ProfileUpdate], profile=beam.DoFn.StateParam(PROFILE),
                seeds=None) -> Iterable[Any]:
        return self._on_update(element, profile, None, seeds)

    def _on_update(self, element, profile, time_change, seeds):
        key, update = element
        self._updates += 1
        self._evaluated.inc()
        state = profile.read()
        if state is None:
            armed = None
            found = list(seeds[key]) if seeds is not None else ()
            state = self._exporter.seed(newest_row(found)) if found else ProfileState()
        else:
            armed = state.timer_ms
        out = self._exporter.update(key, state, update)
        return self._finish(state, armed, out, profile, time_change)

    def _finish(self, state, armed, out, profile, time_change):
        if state.timer_ms != armed:
            if state.timer_ms is None:
                time_change.clear()
            else:
                time_change.set(Timestamp(micros=state.timer_ms * 1000))
        profile.write(state)
        self._writes += 1
        if self._writes % STATE_BYTES_SAMPLE == 1:
            self._state_bytes.update(len(profile_state.encode(state)))
        if not out:
            return ()
        counts = self._counts
        counts["records"] += len(out)
        for _, plan in out:
            for kind in plan.triggers:
                counts[_EXPORTS_BY_TRIGGER[kind]] += 1
            for _, status, _ in plan.ups:
                if status == EXITED:
                    counts["exits"] += 1
        return [record for record, _ in out]


class _TimedExportProfileChangesFn(_ExportProfileChangesFn):
    """Adds the event-time timer that exports changes caused by time alone."""
    TIME_CHANGE = TimerSpec("time_change", TimeDomain.WATERMARK)

    def process(self, element: Tuple[str, Any],
                profile=beam.DoFn.StateParam(_ExportProfileChangesFn.PROFILE),
                time_change=beam.DoFn.TimerParam(TIME_CHANGE), seeds=None) -> Iterable[Any]:
        if element[1] is None:
            return self._on_seeded(element[0], profile, time_change, seeds)
        return self._on_update(element, profile, time_change, seeds)

    def _on_seeded(self, key, profile, time_change, seeds):
        """A seeded member of an expiring upload: its state is seeded now unless its first update
        came first (from the same rows), so that its expiry is due without an update."""
        if profile.read() is not None:
            return ()
        return self._finish(self._exporter.seed(newest_row(seeds[key])), None, [], profile, time_change)

    @on_timer(TIME_CHANGE)
    def on_time_change(self, key=beam.DoFn.KeyParam, fired=beam.DoFn.TimestampParam,
                       profile=beam.DoFn.StateParam(_ExportProfileChangesFn.PROFILE),
                       time_change=beam.DoFn.TimerParam(TIME_CHANGE)) -> Iterable[Any]:
        state = profile.read()
        fired_ms = fired.micros // 1000
        if state is None or state.timer_ms is None or state.timer_ms > fired_ms:
            return ()  # superseded: the state already moved past this instant
        self._counts["timers_fired"] += 1
        out = self._exporter.catch_up(key, state, fired_ms + 1)
        return self._finish(state, None, out, profile, time_change)


def newest_row(rows: Iterable[SnapshotProfile]) -> SnapshotProfile:
    """Of a profile's seed rows, the newest wins."""
    return max(rows, key=_SNAPSHOT_TIME)


def holds_expiring_upload(snapshot: SnapshotProfile, expiring: FrozenSet[str]) -> bool:
    return any(aid in expiring for aid in seeded_members(snapshot))


class ExportProfileChanges(beam.PTransform):
    """``PCollection[ProfileUpdate]`` -> ``PCollection[ExportRecord]`` (docs/semantics.md#exports), optionally
    seeded from ``PCollection[SnapshotProfile]``; ``until_ms`` caps time-window changes in a
    bounded replay."""

    def __init__(self, config: ExportConfig, seed: Optional[beam.PCollection] = None,
                 until_ms: Optional[int] = None):
        super().__init__()
        self._config = config
        self._seed = seed
        self._until_ms = until_ms

    def expand(self, updates):
        keyed = updates | "KeyByProfile" >> beam.Map(lambda u: (u.profile_id, u)).with_output_types(Tuple[str, Any])
        side = {}
        if self._seed is not None:
            # a multimap side input is looked up per key on portable runners (AsDict would
            # load the whole snapshot into every worker)
            side["seeds"] = beam.pvalue.AsMultiMap(
                self._seed | "KeySeedByProfile" >> beam.Map(lambda s: (s.profile_id, s)).with_output_types(Tuple[str, Any]))
        audiences = AudienceSet.from_config(self._config)
        expiring = frozenset(aid for aid, at in audiences.expiries.items()
                             if self._until_ms is None or at <= self._until_ms)
        if self._seed is not None and expiring:
            seeded = (self._seed
                      | "SeedsWithExpiringUploads" >> beam.Filter(holds_expiring_upload, expiring)
                      | "KeySeededProfiles" >> beam.Map(lambda s: (s.profile_id, None)).with_output_types(Tuple[str, Any]))
            keyed = (keyed, seeded) | "WithSeededProfiles" >> beam.Flatten()
        fn = (_TimedExportProfileChangesFn if audiences.timed else _ExportProfileChangesFn)(self._config, self._until_ms)
        return keyed | "EvaluateAndDiff" >> beam.ParDo(fn, **side)
