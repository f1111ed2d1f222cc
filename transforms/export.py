"""``ExportProfileChanges``: profile updates in, export records out (docs/semantics.md#profiles-and-audiences), over keyed state.

``GroupUpdatesByProfile`` keys the updates by profileId, a bundle's updates of one profile
together, for one stateful DoFn with one ``ReadModifyWriteState`` cell (the whole
``ProfileState``, ``ProfileStateCoder``) and, only when some rule reads events or an upload
expires, one event-time timer: each state cell or timer costs the DirectRunner a per-key,
per-bundle price (docs/DEVELOPING.md), and each element a per-element one, which the grouping
pays once per profile per bundle. The records of such a step leave together, as one element (a
list, in order), for the same reason: each element costs the runner, and a sink's DoFn, its
per-element price again. A record is stamped no earlier than what produced it: with the
latest time of its profile's updates in the bundle (their ``timestamp_ms``, the time the readers
stamp each update with; under a windowing other than the global window, the latest of the
elements' own timestamps), or with its timer's; a time-window change caught up by a later update
goes out with that update's group. (Re-stamping each record with its ``event_time_ms`` cost the DirectRunner
~10% of streaming throughput.)

Metrics (namespace ``export``): ``updates``, ``update_groups`` (the stateful step's elements),
``records``, ``exports_audience`` / ``_identity`` / ``_attribute`` / ``_consent`` / ``_expiry``
(records by trigger), ``exits``, ``timers_fired``, ``consent_withheld`` / ``consent_opt_outs``
/ ``consent_opt_ins``, and the ``state_bytes`` distribution (one state write in
``STATE_BYTES_SAMPLE``).

The per-profile logic (activation controls, event time) is ``exporter.ProfileExporter``.

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
from typing import Any, FrozenSet, Iterable, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms import core_build, profile_state, progress
from transforms.audiences import AudienceSet
from transforms.config import ExportConfig
from transforms.exporter import ProfileExporter
from transforms.model import ProfileUpdate, SnapshotProfile, decode_updates, encode_updates
from transforms.profile_state import ProfileState, seeded_members

DEFAULT_MAX_GROUPED_UPDATES = 100_000  # updates held per bundle to group them by profile (about 1 KB each)
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


class _ExportProfileChangesFn(beam.DoFn):
    """The stateful DoFn for configs whose rules read no events: no timer to declare (a
    declared timer alone costs the DirectRunner about a third of its keyed throughput)."""
    PROFILE = ReadModifyWriteStateSpec("profile", ProfileStateCoder())

    def __init__(self, config: ExportConfig, until_ms: Optional[int]):
        self._config = config
        self._until_ms = until_ms
        self._state_bytes = Metrics.distribution("export", "state_bytes")

    def setup(self):
        core_build.warn_if_pure()   # a worker whose install could not compile the core says so
        self._exporter = ProfileExporter(self._config, AudienceSet.from_config(self._config), self._until_ms)
        self._writes = 0
        self._evaluated = progress.Tally(progress.UPDATES_EVALUATED)  # live progress lines

    def start_bundle(self):
        self._counts = collections.Counter()  # counted here, reported once per bundle
        self._updates = self._groups = 0

    def finish_bundle(self):
        self._counts.update(self._exporter.counts)
        if self._updates:
            self._counts["updates"] += self._updates
            self._counts["update_groups"] += self._groups
        self._exporter.counts.clear()
        for name, n in self._counts.items():
            Metrics.counter("export", name).inc(n)
        self._evaluated.flush()

    def process(self, element: Tuple[str, ProfileUpdate], profile=beam.DoFn.StateParam(PROFILE),
                seeds=None) -> Iterable[Any]:
        return self._on_update(element, profile, None, seeds)

    def _on_update(self, element, profile, time_change, seeds):
        """A bundle's updates of one profile (``GroupUpdatesByProfile``), each applied and
        evaluated in turn against one state read and written once."""
        key, updates = element[0], GroupUpdatesByProfile.updates_of(element[1])
        n = len(updates)
        self._updates += n
        self._groups += 1
        self._evaluated.inc(n)
        state = profile.read()
        if state is None:
            armed = None
            found = list(seeds[key]) if seeds is not None else ()
            state = self._exporter.seed(newest_row(found)) if found else ProfileState()
        else:
            armed = state.timer_ms
        return self._finish(state, armed, self._exporter.update_all(key, state, updates), profile, time_change)

    def _finish(self, state, armed, records, profile, time_change):
        if state.timer_ms != armed:
            if state.timer_ms is None:
                time_change.clear()
            else:
                time_change.set(Timestamp(micros=state.timer_ms * 1000))
        profile.write(state)
        self._writes += 1
        if self._writes % STATE_BYTES_SAMPLE == 1:
            self._state_bytes.update(len(profile_state.encode(state)))
        if not records:
            return ()
        self._counts["records"] += len(records)   # by trigger and exits: counted by the exporter
        return (records,)   # one element: the runner and the sink pay per element, not per record


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
        records = [record for record, _ in self._exporter.catch_up(key, state, fired_ms + 1)]
        return self._finish(state, None, records, profile, time_change)


class GroupUpdatesByProfile(beam.DoFn):
    """Keys updates by profile id, a bundle's updates of one profile together in arrival order:
    the stateful step then reads, decodes, encodes and writes a profile's state, and pays the
    runner's per-element price for keyed state and its timer, once per profile per bundle instead
    of once per update (mini-batching, as Flink's SQL engine does for keyed aggregates). Each
    update is still evaluated and diffed on its own, so the records are the same. A group leaves
    as one bytes value (``model.encode_updates``): a runner that holds a step's output in memory
    (the DirectRunner holds whole bundles) holds one flat object per profile, not the updates'
    object graphs, which the garbage collector's passes would walk again and again (they took
    about 40% of what the export cost beyond a bare keyed DoFn on the BundleBasedDirectRunner);
    a runner that shuffles between the steps (Dataflow, Flink) copies bytes instead of pickling
    each update (4x slower to encode, 1.7x larger). At most
    ``max_updates`` are held: past that the groups go on at once, so a large bundle that a runner
    streams through (a batch worker) is not also held here.

    This one is for updates in the global window (the jobs' windowing; ``ExportProfileChanges``
    checks where it is applied): a group is stamped with the latest ``timestamp_ms`` of its
    updates, the time the readers stamp each update with, so that no record is stamped before
    what produced it. It reads nothing of the element but the update: a DoFn that asks for an
    element's timestamp or windows is invoked per window, which costs the DirectRunner about
    2 µs per update. ``GroupUpdatesByProfileAndWindow`` groups other windowings."""

    _GLOBAL = (GlobalWindow(),)

    def __init__(self, max_updates: int = DEFAULT_MAX_GROUPED_UPDATES):
        if max_updates < 1:
            raise ValueError(f"max_grouped_updates must be 1 or more, not {max_updates}")
        self._max_updates = max_updates

    def start_bundle(self):
        # windows -> profile id -> (the latest of their timestamps, the update or a list of them):
        # a lone update, the common case in small bundles, gets no list of its own
        self._groups: dict = {}
        self._held = 0

    def process(self, update: ProfileUpdate):
        return self._hold(update, self._GLOBAL, update.timestamp_ms * 1000)

    def _hold(self, update: ProfileUpdate, windows: tuple, micros: int):
        profiles = self._groups.get(windows)
        if profiles is None:
            profiles = self._groups[windows] = {}
        group = profiles.get(update.profile_id)
        if group is None:
            profiles[update.profile_id] = (micros, update)
        else:
            updates = group[1]
            if type(updates) is not list:
                updates = [updates]
            updates.append(update)
            profiles[update.profile_id] = (max(group[0], micros), updates)
        self._held += 1
        return self.finish_bundle() if self._held >= self._max_updates else ()

    def finish_bundle(self):
        groups, self._groups, self._held = self._groups, {}, 0
        return [WindowedValue((profile_id, encode_updates(updates if type(updates) is list else (updates,))),
                              Timestamp(micros=micros), windows)
                for windows, profiles in groups.items() for profile_id, (micros, updates) in profiles.items()]

    @staticmethod
    def updates_of(grouped) -> Sequence[ProfileUpdate]:
        """The updates of one emitted group (bytes), or the one update keyed without grouping."""
        return decode_updates(grouped) if type(grouped) is bytes else (grouped,)


class GroupUpdatesByProfileAndWindow(GroupUpdatesByProfile):
    """``GroupUpdatesByProfile`` for any windowing: one group per profile and window, stamped with
    the latest of its elements' own timestamps."""

    def process(self, update: ProfileUpdate, element=beam.DoFn.WindowedValueParam):
        # (a tuple already, as a rule: then the same object); the time in microseconds: a
        # WindowedValue builds its ``timestamp`` object on each read
        return self._hold(update, tuple(element.windows), element.timestamp_micros)


def newest_row(rows: Iterable[SnapshotProfile]) -> SnapshotProfile:
    """Of a profile's seed rows, the newest wins."""
    return max(rows, key=_SNAPSHOT_TIME)


def holds_expiring_upload(snapshot: SnapshotProfile, expiring: FrozenSet[str]) -> bool:
    return any(aid in expiring for aid in seeded_members(snapshot))


class ExportProfileChanges(beam.PTransform):
    """``PCollection[ProfileUpdate]`` -> ``PCollection[List[ExportRecord]]`` (docs/semantics.md#exports):
    each element is one profile's records from one step (a bundle's updates of the profile, or a
    timer), in order; ``KinesisWrite`` and ``WriteRecordFiles`` take such lists as they come
    (``beam.FlatMap(iter)`` makes single records of them). Optionally seeded from
    ``PCollection[SnapshotProfile]``; ``until_ms`` caps time-window changes in a bounded replay."""

    def __init__(self, config: ExportConfig, seed: Optional[beam.PCollection] = None,
                 until_ms: Optional[int] = None, max_grouped_updates: int = DEFAULT_MAX_GROUPED_UPDATES):
        super().__init__()
        self._config = config
        self._seed = seed
        self._until_ms = until_ms
        self._max_grouped_updates = max_grouped_updates

    def expand(self, updates):
        # one update held is none: each goes on keyed as it comes, without the grouping step's price
        grouping = (GroupUpdatesByProfile if isinstance(updates.windowing.windowfn, GlobalWindows)
                    else GroupUpdatesByProfileAndWindow)
        key_by_profile = (beam.Map(lambda u: (u.profile_id, u)) if self._max_grouped_updates == 1
                          else beam.ParDo(grouping(self._max_grouped_updates)))
        keyed = updates | "KeyByProfile" >> key_by_profile.with_output_types(Tuple[str, Any])
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
