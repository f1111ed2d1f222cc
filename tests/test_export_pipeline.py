"""ExportProfileChanges on the DirectRunner: the docs/semantics.md#exports cases, many profiles per pipeline.

One bounded pipeline (TestPipeline) runs every scenario on its own profile ids; a TestStream
pipeline on the BundleBasedDirectRunner checks timers driven by the watermark.
"""
import dataclasses
import datetime
import hashlib
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import FixedWindows, GlobalWindow, IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from tests.export_helpers import audience, make_config
from transforms.audiences import AudienceSet
from transforms.config import Activation, AudienceDefinition, MappedAudience, MergePolicyConfig, UploadSource
from transforms.export import (ExportProfileChanges, GroupUpdatesByProfile, GroupUpdatesByProfileAndWindow,
                               ProfileStateCoder)
from transforms.merge import MergePolicies
from transforms.model import ProfileUpdate, SegmentStatus, SnapshotProfile
from transforms.profile_state import ProfileState
from transforms.timeutil import format_qualification_time, parse_timestamp_ms

T0 = parse_timestamp_ms("2024-05-01T10:00:00Z")
H, D = 3_600_000, 86_400_000
UNTIL = T0 + 30 * D
WEEK = 'xEvent[timestamp occurs <= 7 days before now].exists()'

CONFIG = make_config(
    audiences=(audience("aud-delorean", 'vehicle.make = "DeLorean"'),
               audience("aud-fans", "interests.scifi = true"),
               audience("aud-buyers", WEEK),
               audience("aud-gold", 'loyalty.tier = "gold"', "mp-crm"),
               audience("aud-crm-fans", "interests.scifi = true", "mp-crm")),
    mapped=(MappedAudience("aud-delorean", 1, 2), MappedAudience("aud-buyers"), MappedAudience("aud-gold")),
    policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),
              MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm", "loyalty"))),
    attributes=("person.name.firstName", "person.name.lastName", "personalEmail.address"))
TOGGLES = make_config(audiences=(audience("aud-delorean", 'vehicle.make = "DeLorean"', created_at_ms=10,
                                          updated_at_ms=20, name="Customer with DeLorean Cars"),),
                      mapped=(MappedAudience("aud-delorean", 30, 40),), names=True, timestamps=True)

DELOREAN = {"vehicle": {"make": "DeLorean"}}
TESLA = {"vehicle": {"make": "Tesla"}}
SCIFI = {"interests": {"scifi": True}}
PURCHASE = {"eventType": "commerce.purchases"}


def u(pid, t, attributes=None, dataset=None, ids=None, removals=None, event=None):
    return ProfileUpdate(pid, t, dataset, ids or {}, removals or {}, attributes or {}, event)


def first(name):
    return {"person": {"name": {"firstName": name}}}


def merged(*objs):
    out = {}
    for o in objs:
        for k, v in o.items():
            out[k] = merged(out[k], v) if isinstance(v, dict) and k in out else v
    return out


def qt(ms):
    return format_qualification_time(ms)


def ups(**statuses):
    """Expected ups: audience (``_`` for ``-``) -> (status, lastQualificationTime ms)."""
    return {k.replace("_", "-"): {"lastQualificationTime": qt(t), "status": s} for k, (s, t) in statuses.items()}


def rec(t, attributes, segment_ups, identities=None):
    """Expected record: (update/timer time, full record data)."""
    return (t, {**attributes, "segmentMembership": {"ups": segment_ups}, "identityMap": identities or {}})


R = "realized"
X = "exited"

SEED_MEMBERS = [f"p-m{i:03d}" for i in range(100)]
NEW_MEMBERS = [f"p-new{i}" for i in range(5)]

SEEDS = [SnapshotProfile(pid, T0 - D, {"email": (pid + "@x",)}, DELOREAN,
                         {"aud-delorean": SegmentStatus(R, T0 - 2 * D), "aud-unknown": SegmentStatus(R, 1)})
         for pid in SEED_MEMBERS] + [
    SnapshotProfile("p-m000", T0 - 3 * D, {}, TESLA, {})]   # an older row of the same profile: the newest wins

UPDATES = (
    # incremental over 100 seeded members: unmapped writes export nothing, 5 new members do
    [u(pid, T0 + H, {"loyalty": {"points": 5}}) for pid in SEED_MEMBERS]
    + [u(pid, T0 + H, DELOREAN) for pid in NEW_MEMBERS]
    + [u("p-m000", T0 + 2 * H, TESLA),                          # a seeded member's exit is announced
       u("p-m001", T0 + 2 * H, first("Ann"))]                   # mapped write: seeded lqt kept
    # same-value overwrite of a mapped attribute, then its null delete
    + [u("p-overwrite", T0, merged(DELOREAN, first("John")), ids={"email": ("j@x",)}),
       u("p-overwrite", T0 + H, first("John")),
       u("p-overwrite", T0 + 2 * H, first(None))]
    # unmapped writes and an unmapped audience entry
    + [u("p-unmapped", T0, DELOREAN), u("p-unmapped", T0 + H, {"loyalty": {"points": 1}}),
       u("p-unmapped", T0 + 2 * H, SCIFI)]
    # identities: member and non-member
    + [u("p-idmember", T0, DELOREAN, ids={"email": ("a@x",)}),
       u("p-idmember", T0 + H, ids={"ecid": ("e1",)}),
       u("p-idmember", T0 + 2 * H, ids={"email": ("a@x",)}),  # already held: no change
       u("p-idmember", T0 + 3 * H, removals={"ecid": ("e1",)}),
       u("p-idnon", T0, SCIFI, ids={"email": ("n@x",)}),
       u("p-idnon", T0 + H, ids={"ecid": ("e2",)})]
    # exit announced once; re-entry
    + [u("p-exit", T0, merged(DELOREAN, SCIFI)), u("p-exit", T0 + H, TESLA),
       u("p-exit", T0 + 2 * H, first("Z"), ids={"email": ("z@x",)}), u("p-exit", T0 + 3 * H, DELOREAN)]
    + [u("p-exit2", T0, DELOREAN, event=PURCHASE), u("p-exit2", T0 + H, TESLA),
       u("p-exit2", T0 + 2 * H, first("Y"))]
    # merge-policy grouping, mapped and unmapped audiences, dataset precedence
    + [u("p-group", T0, merged(DELOREAN, SCIFI, first("John"), {"loyalty": {"tier": "gold"}}), "crm"),
       u("p-group", T0 + H, first("Johnny"), "web"),
       u("p-group", T0 + 2 * H, {"loyalty": {"tier": "silver"}}, "crm")]
    # time windows: exit at the right instant, inline before a later update, none after until
    + [u("p-window", T0, event=PURCHASE),
       u("p-window-inline", T0, event=PURCHASE), u("p-window-inline", T0 + 9 * D, first("Late")),
       u("p-window-late", UNTIL - D, event=PURCHASE)]
    # out of order: an older write never overwrites a newer value
    + [u("p-ooo", T0 + 2 * H, merged(DELOREAN, first("New"))),
       u("p-ooo", T0, {"person": {"name": {"firstName": "Old", "lastName": "Doe"}}}),
       u("p-ooo", T0 + H, TESLA)]
)

WEEK_END = T0 + 7 * D + 1

EXPECTED = {
    **{pid: [rec(T0 + H, {}, ups(aud_delorean=(R, T0 + H)))] for pid in NEW_MEMBERS},
    "p-m000": [rec(T0 + 2 * H, {}, ups(aud_delorean=(X, T0 + 2 * H)), {"email": [{"id": "p-m000@x"}]})],
    "p-m001": [rec(T0 + 2 * H, first("Ann"), ups(aud_delorean=(R, T0 - 2 * D)), {"email": [{"id": "p-m001@x"}]})],
    "p-overwrite": [rec(t, name, ups(aud_delorean=(R, T0)), {"email": [{"id": "j@x"}]})
                    for t, name in ((T0, first("John")), (T0 + H, first("John")), (T0 + 2 * H, {}))],
    "p-unmapped": [rec(T0, {}, ups(aud_delorean=(R, T0)))],
    "p-idmember": [rec(T0, {}, ups(aud_delorean=(R, T0)), {"email": [{"id": "a@x"}]}),
                   rec(T0 + H, {}, ups(aud_delorean=(R, T0)), {"email": [{"id": "a@x"}], "ecid": [{"id": "e1"}]}),
                   rec(T0 + 3 * H, {}, ups(aud_delorean=(R, T0)), {"email": [{"id": "a@x"}]})],
    "p-exit": [rec(T0, {}, ups(aud_delorean=(R, T0), aud_fans=(R, T0))),
               rec(T0 + H, {}, ups(aud_delorean=(X, T0 + H), aud_fans=(R, T0))),
               rec(T0 + 3 * H, first("Z"), ups(aud_delorean=(R, T0 + 3 * H), aud_fans=(R, T0)),
                   {"email": [{"id": "z@x"}]})],
    "p-exit2": [rec(T0, {}, ups(aud_delorean=(R, T0), aud_buyers=(R, T0))),
                rec(T0 + H, {}, ups(aud_delorean=(X, T0 + H), aud_buyers=(R, T0))),
                rec(T0 + 2 * H, first("Y"), ups(aud_buyers=(R, T0))),
                rec(WEEK_END, first("Y"), ups(aud_buyers=(X, WEEK_END)))],
    "p-group": [rec(T0, first("John"), ups(aud_delorean=(R, T0), aud_fans=(R, T0))),
                rec(T0, first("John"), ups(aud_gold=(R, T0), aud_crm_fans=(R, T0))),
                rec(T0 + H, first("Johnny"), ups(aud_delorean=(R, T0), aud_fans=(R, T0))),
                rec(T0 + H, first("John"), ups(aud_gold=(R, T0), aud_crm_fans=(R, T0))),
                rec(T0 + 2 * H, first("John"), ups(aud_gold=(X, T0 + 2 * H), aud_crm_fans=(R, T0)))],
    "p-window": [rec(T0, {}, ups(aud_buyers=(R, T0))), rec(WEEK_END, {}, ups(aud_buyers=(X, WEEK_END)))],
    "p-window-inline": [rec(T0, {}, ups(aud_buyers=(R, T0))), rec(WEEK_END, {}, ups(aud_buyers=(X, WEEK_END)))],
    "p-window-late": [rec(UNTIL - D, {}, ups(aud_buyers=(R, UNTIL - D)))],
    "p-ooo": [rec(T0 + 2 * H, first("New"), ups(aud_delorean=(R, T0 + 2 * H))),
              rec(T0, {"person": {"name": {"firstName": "New", "lastName": "Doe"}}},
                  ups(aud_delorean=(R, T0 + 2 * H)))],
    "p-toggle": [rec(T0, {}, {"aud-delorean": {"lastQualificationTime": qt(T0), "status": R, "createdAt": 10,
                                               "updatedAt": 20, "mappingCreatedAt": 30, "mappingUpdatedAt": 40,
                                               "name": "Customer with DeLorean Cars"}})],
}


def by_profile(expected):
    """Matcher: records grouped by partition key, each profile's in (time, data) order."""
    def order(items):
        return sorted(items, key=lambda r: (r[0], json.dumps(r[1])))

    def check(actual):
        got = {}
        for pk, t, data in actual:
            assert not data.startswith(b"{\n") and b": " not in data, data  # compact JSON
            got.setdefault(pk, []).append((t, json.loads(data)))
        got = {pk: order(v) for pk, v in got.items()}
        want = {pk: order(v) for pk, v in expected.items()}
        for pk in sorted(set(got) | set(want)):
            assert got.get(pk) == want.get(pk), f"{pk}: got {got.get(pk)} want {want.get(pk)}"
        # records are stamped with the update's/timer's time; key order as docs/semantics.md#exports
        for pk, t, data in actual:
            keys = [k for k in json.loads(data) if k != "_export"]
            assert keys[-2:] == ["segmentMembership", "identityMap"]
    return check


class _Stamp(beam.DoFn):
    """An element is one profile's records, none of them stamped before what produced it: the
    update (stamped with its own time, as the readers do; a bundle's updates of a profile share
    the latest of their times; a time-window change caught up by a later update is stamped with
    that update's) or the timer."""
    def process(self, records, ts=beam.DoFn.TimestampParam):
        assert type(records) is list and len({record.partition_key for record in records}) == 1, records
        for record in records:
            assert ts >= Timestamp(micros=record.event_time_ms * 1000), (record, ts)
            yield record.partition_key, record.event_time_ms, record.data


def stamped(updates):
    return [TimestampedValue(x, x.timestamp_ms / 1000) for x in updates]


# activation controls: consent on mp-default, identity trigger off, an expiring upload, metadata
EXPIRES = T0 + 5 * D
YES, NO = {"consents": {"email": "y"}}, {"consents": {"email": "n"}}
VIP_ID = {"email": ("vip@x",)}


def activation_config(upload_path):
    return dataclasses.replace(
        CONFIG, audiences=CONFIG.audiences + (
            AudienceDefinition("aud-vip", "VIP", "mp-default", upload=UploadSource(upload_path, "email", "email", EXPIRES)),),
        mapping=dataclasses.replace(CONFIG.mapping, audiences=CONFIG.mapping.audiences + (MappedAudience("aud-vip"),)),
        activation=Activation("email-targeting", 'consents.email = "y"', ("audience", "attribute")),
        destination=dataclasses.replace(CONFIG.destination, include_export_metadata=True))


ACTIVATION_SEEDS = [SnapshotProfile("a-seed", T0 - D, {}, merged(DELOREAN, NO), {"aud-delorean": SegmentStatus(R, T0 - D)}),
                    # a seeded member of the expiring upload that never gets an update
                    SnapshotProfile("a-seed-vip", T0 - D, VIP_ID, YES, {"aud-vip": SegmentStatus("existing", T0 - D)})]
ACTIVATION_UPDATES = [
    u("a-optin", T0, DELOREAN), u("a-optin", T0 + H, YES),                       # withheld, then opt-in
    u("a-optout", T0, merged(DELOREAN, YES, first("Ann"))), u("a-optout", T0 + H, NO, ids={"ecid": ("e",)}),
    u("a-ids", T0, merged(DELOREAN, YES)), u("a-ids", T0 + H, ids={"ecid": ("e",)}),   # identity trigger off
    u("a-vip", T0, YES, ids=VIP_ID),                                             # expires by timer
    u("a-seed", T0, TESLA),                                                      # seeded, not consenting: quiet
]


def meta(pid, policy, sequence, at, *triggers):
    return {"_export": {"id": hashlib.sha256(f"{pid}/{policy}/{sequence}".encode()).hexdigest(),
                        "sequence": sequence, "at": at, "triggers": list(triggers)}}


def with_meta(record, metadata):
    return (record[0], {**record[1], **metadata})


VIP_IDS = {"email": [{"id": "vip@x"}]}
ACTIVATION_EXPECTED = {
    "a-optin": [with_meta(rec(T0 + H, {}, ups(aud_delorean=(R, T0 + H))), meta("a-optin", "mp-default", 1, T0 + H, "consent"))],
    "a-optout": [with_meta(rec(T0, first("Ann"), ups(aud_delorean=(R, T0))), meta("a-optout", "mp-default", 1, T0, "consent")),
                 with_meta(rec(T0 + H, {}, ups(aud_delorean=(X, T0 + H)), {"ecid": [{"id": "e"}]}),
                           meta("a-optout", "mp-default", 2, T0 + H, "consent"))],
    "a-ids": [with_meta(rec(T0, {}, ups(aud_delorean=(R, T0))), meta("a-ids", "mp-default", 1, T0, "consent"))],
    "a-vip": [with_meta(rec(T0, {}, ups(aud_vip=(R, T0)), VIP_IDS), meta("a-vip", "mp-default", 1, T0, "consent")),
              with_meta(rec(EXPIRES, {}, ups(aud_vip=(X, EXPIRES)), VIP_IDS),
                        meta("a-vip", "mp-default", 2, EXPIRES, "expiry"))],
    "a-seed-vip": [with_meta(rec(EXPIRES, {}, ups(aud_vip=(X, EXPIRES)), VIP_IDS),
                             meta("a-seed-vip", "mp-default", 1, EXPIRES, "expiry"))],
}


def test_bounded_scenarios(tmp_path):
    upload = tmp_path / "vip.csv"
    upload.write_text("email\nvip@x\n")
    with TestPipeline() as p:
        seeds = p | "Seeds" >> beam.Create(SEEDS, reshuffle=False)
        updates = p | "Updates" >> beam.Create(stamped(UPDATES), reshuffle=False)
        main = updates | ExportProfileChanges(CONFIG, seed=seeds, until_ms=UNTIL)
        # the same records whether a bundle's updates of a profile are applied together or not
        # (each from an input of its own: on this runner (FnApiRunner, Beam 2.77) only one of several
        # timer-setting stateful steps that read one PCollection gets its timers fired)
        main_expected = {pid: records for pid, records in EXPECTED.items() if pid in {x.profile_id for x in UPDATES}}
        for held in (1, 2):
            assert_that(p | f"Updates{held}" >> beam.Create(stamped(UPDATES), reshuffle=False)
                        | f"Held{held}" >> ExportProfileChanges(CONFIG, seed=seeds, until_ms=UNTIL, max_grouped_updates=held)
                        | f"Stamp{held}" >> beam.ParDo(_Stamp()), by_profile(main_expected), label=f"CheckHeld{held}")
        toggled = (p | "ToggleUpdates" >> beam.Create(stamped([u("p-toggle", T0, DELOREAN)]))
                   | "Toggled" >> ExportProfileChanges(TOGGLES, until_ms=UNTIL))
        activated = (p | "ActivationUpdates" >> beam.Create(stamped(ACTIVATION_UPDATES))
                     | "Activated" >> ExportProfileChanges(
                         activation_config(str(upload)), until_ms=UNTIL,
                         seed=p | "ActivationSeeds" >> beam.Create(ACTIVATION_SEEDS, reshuffle=False)))
        assert_that((main, toggled, activated) | beam.Flatten() | beam.ParDo(_Stamp()),
                    by_profile({**EXPECTED, **ACTIVATION_EXPECTED}))


def test_watermark_driven_timers_on_streaming_input(tmp_path):
    upload = tmp_path / "vip.csv"
    upload.write_text("email\nvip@x\n")
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    stream = (TestStream()
              .advance_watermark_to(Timestamp(micros=T0 * 1000))
              .add_elements(stamped([u("s-1", T0, event=PURCHASE), u("s-2", T0 + 5 * H, DELOREAN),
                                     u("s-vip", T0, YES, ids=VIP_ID)]))     # expires by the watermark
              .advance_watermark_to(Timestamp(micros=(T0 + 3 * D) * 1000))
              .add_elements(stamped([u("s-1", T0 + 3 * D, first("Ann")),
                                     u("s-2", T0 + 4 * H, merged(TESLA, first("Old")))]))  # late and older
              .advance_watermark_to(Timestamp(micros=(T0 + 8 * D) * 1000))
              .add_elements(stamped([u("s-1", T0 + 8 * D, event=PURCHASE)]))
              # the DirectRunner holds no watermark for timers: output of a timer firing only
              # at +inf would be late for the assert's GroupByKey
              .advance_watermark_to(Timestamp(micros=(T0 + 16 * D) * 1000))
              .advance_watermark_to_infinity())
    expected = {
        "s-1": [rec(T0, {}, ups(aud_buyers=(R, T0))),
                rec(T0 + 3 * D, first("Ann"), ups(aud_buyers=(R, T0))),
                rec(WEEK_END, first("Ann"), ups(aud_buyers=(X, WEEK_END))),
                rec(T0 + 8 * D, first("Ann"), ups(aud_buyers=(R, T0 + 8 * D))),
                rec(T0 + 15 * D + 1, first("Ann"), ups(aud_buyers=(X, T0 + 15 * D + 1)))],
        "s-2": [rec(T0 + 5 * H, {}, ups(aud_delorean=(R, T0 + 5 * H))),
                rec(T0 + 4 * H, first("Old"), ups(aud_delorean=(R, T0 + 5 * H)))],
        # the activation config (consent on): only s-vip consents; its upload expires
        "s-vip": [with_meta(rec(T0, {}, ups(aud_vip=(R, T0)), VIP_IDS), meta("s-vip", "mp-default", 1, T0, "consent")),
                  with_meta(rec(EXPIRES, {}, ups(aud_vip=(X, EXPIRES)), VIP_IDS),
                            meta("s-vip", "mp-default", 2, EXPIRES, "expiry"))],
        **{"a-seed-vip": ACTIVATION_EXPECTED["a-seed-vip"]},    # seeded, no update: exits by the watermark
    }
    with beam.Pipeline(options=options) as p:
        updates = p | stream
        seeds = p | "Seeds" >> beam.Create(ACTIVATION_SEEDS[1:])   # bounded beside the unbounded updates
        records = (updates | ExportProfileChanges(CONFIG),
                   updates | "Activated" >> ExportProfileChanges(activation_config(str(upload)), seed=seeds))
        assert_that(records | beam.Flatten() | beam.ParDo(_Stamp()), by_profile(expected))


# --- a bundle's updates of one profile, grouped (pure, fast: the DoFn's methods called as a runner would) ---

def grouped(fn, bundle):
    """What ``fn`` emits for one bundle of (update, timestamp s, window): as (profile id, update
    times, timestamp s, window), in emission order. (The global-window grouping is handed the
    update alone, as the runner does.)"""
    fn.start_bundle()
    windowed = isinstance(fn, GroupUpdatesByProfileAndWindow)
    out = [wv for update, ts, window in bundle
           for wv in (fn.process(update, WindowedValue(update, Timestamp(ts), (window,))) if windowed
                      else fn.process(update))]
    out += fn.finish_bundle()
    return [(wv.value[0], [x.timestamp_ms for x in GroupUpdatesByProfile.updates_of(wv.value[1])],
             wv.timestamp.micros // 10 ** 6, wv.windows) for wv in out]


G, W1, W2 = GlobalWindow(), IntervalWindow(0, 60), IntervalWindow(60, 120)


@pytest.mark.parametrize("held,bundle,expected", [
    # a profile's updates together, in arrival order, stamped with the latest of their timestamps
    (100, [(u("a", 1), 5, G), (u("b", 2), 6, G), (u("a", 3), 9, G), (u("a", 0), 7, G)],
     [("a", [1, 3, 0], 9, (G,)), ("b", [2], 6, (G,))]),
    # one group per window
    (100, [(u("a", 1), 5, W1), (u("a", 2), 65, W2), (u("a", 3), 6, W1)],
     [("a", [1, 3], 6, (W1,)), ("a", [2], 65, (W2,))]),
    # at most ``held`` updates are held: the groups go on when that many are, the rest at the end
    (2, [(u("a", 1), 1, G), (u("b", 2), 2, G), (u("a", 3), 3, G), (u("a", 4), 4, G), (u("b", 5), 5, G)],
     [("a", [1], 1, (G,)), ("b", [2], 2, (G,)), ("a", [3, 4], 4, (G,)), ("b", [5], 5, (G,))]),
    # one held: every update on its own
    (1, [(u("a", 1), 1, G), (u("a", 2), 2, G)], [("a", [1], 1, (G,)), ("a", [2], 2, (G,))]),
])
def test_a_bundles_updates_of_a_profile_go_on_together(held, bundle, expected):
    fn = GroupUpdatesByProfileAndWindow(held)
    assert grouped(fn, bundle) == expected
    update, ts, window = bundle[0]
    assert grouped(fn, [bundle[0]]) == [(update.profile_id, [update.timestamp_ms], ts, (window,))]  # nothing left over


@pytest.mark.parametrize("updates", [
    [u("a", 1)],
    [u("a", 1, {"person": {"name": {"firstName": "Zoë"}, "tags": ["x", None]}, "score": 1.5}, dataset="crm",
       ids={"email": ("a@x.com", "b@x.com")}, removals={"ecid": ("1",)}),
     u("a", 2, {"person": None}, event={"eventType": "web", "timestamp": 2, "nested": {"n": [1, {"k": True}]}})],
    # values marshal cannot hold (a date, a datetime, as Avro decodes them) come back too
    [u("a", 3, {"birth": datetime.date(1985, 10, 26)}, event={"at": datetime.datetime(2024, 5, 1, 10, 0)})],
])
def test_a_group_hands_its_updates_on_whole(updates):
    fn = GroupUpdatesByProfile()
    fn.start_bundle()
    for update in updates:
        assert fn.process(update) == ()
    (group,) = fn.finish_bundle()
    profile_id, carried = group.value
    assert profile_id == "a" and type(carried) is bytes   # one flat value per profile, not object graphs
    back = GroupUpdatesByProfile.updates_of(carried)
    assert list(back) == updates and all(type(update) is ProfileUpdate for update in back)
    assert all(type(update.identities) is dict and type(update.attributes) is dict for update in back)


S = 1000  # ms


@pytest.mark.parametrize("held,bundle,expected", [
    # in the global window a group is stamped with the latest time of its updates (not the
    # elements' timestamps, which the readers make the same)
    (100, [(u("a", 1 * S), 5, G), (u("b", 2 * S), 6, G), (u("a", 9 * S), 1, G), (u("a", 7 * S), 7, G)],
     [("a", [1 * S, 9 * S, 7 * S], 9, (G,)), ("b", [2 * S], 2, (G,))]),
    (2, [(u("a", 1 * S), 1, G), (u("b", 2 * S), 2, G), (u("a", 3 * S), 3, G), (u("a", 4 * S), 4, G)],
     [("a", [1 * S], 1, (G,)), ("b", [2 * S], 2, (G,)), ("a", [3 * S, 4 * S], 4, (G,))]),
])
def test_in_the_global_window_a_group_is_stamped_with_its_latest_update_time(held, bundle, expected):
    assert grouped(GroupUpdatesByProfile(held), bundle) == expected


@pytest.mark.parametrize("windowing,grouping", [
    (None, GroupUpdatesByProfile),
    (FixedWindows(60), GroupUpdatesByProfileAndWindow),
])
def test_the_export_groups_per_window_only_when_the_updates_are_windowed(windowing, grouping):
    p = beam.Pipeline()   # built, not run
    updates = p | beam.Create(stamped([u("p-1", T0, DELOREAN)]))
    if windowing is not None:
        updates = updates | beam.WindowInto(windowing)
    updates | ExportProfileChanges(CONFIG)
    found = []
    p.visit(_DoFnsFound(found))
    assert [type(fn) for fn in found if isinstance(fn, GroupUpdatesByProfile)] == [grouping]


class _DoFnsFound(beam.pipeline.PipelineVisitor):
    def __init__(self, found):
        self.found = found

    def visit_transform(self, node):
        if isinstance(node.transform, beam.ParDo):
            self.found.append(node.transform.fn)


def test_holding_no_update_is_refused():
    with pytest.raises(ValueError, match="max_grouped_updates must be 1 or more, not 0"):
        GroupUpdatesByProfile(0)


# --- the state the DoFn keeps, and its coder (pure, fast) ---

def test_state_coder_round_trip():
    coder = ProfileStateCoder()
    state = ProfileState(seq=3, view={"person": {"birthDate": datetime.date(1985, 10, 26)}},  # pickle fallback
                         stamps={"person.birthDate": T0}, identities={"email": ("a@x",)},
                         events=[{"timestamp": T0}], realized={"aud-delorean": T0}, evaluated_ms=T0, timer_ms=T0 + D)
    data = coder.encode(state)
    for again in (coder.decode(data), coder.decode(data)):   # read twice (a retried bundle): the same state
        assert again is not state
        assert [getattr(again, f) for f in ProfileState.__slots__] == [getattr(state, f) for f in ProfileState.__slots__]
    assert coder == ProfileStateCoder() and len(ProfileState().__slots__) == 11


def test_event_history_is_pruned_by_window_then_count():
    state = ProfileState(events=[{"timestamp": t} for t in (1, 5, 6, 7, 9)])
    state.prune_events(now_ms=10, retention_ms=4, max_events=1000)
    assert [e["timestamp"] for e in state.events] == [6, 7, 9]
    state.prune_events(now_ms=10, retention_ms=None, max_events=2)
    assert [e["timestamp"] for e in state.events] == [7, 9]


def test_seeding_keeps_known_memberships_of_configured_audiences():
    snapshot = SnapshotProfile("p", T0, {"email": ("a", "a")}, {"person": {"name": {"firstName": "A", "lastName": None}}},
                               {"aud-delorean": SegmentStatus(R, 5), "aud-fans": SegmentStatus(X, 6),
                                "aud-unknown": SegmentStatus(R, 7)})
    state = ProfileState.from_snapshot(snapshot, MergePolicies(CONFIG.merge_policies), {"aud-delorean", "aud-fans"})
    assert state.realized == {"aud-delorean": 5}
    assert state.view == first("A") and state.identities == {"email": ("a",)}
    assert state.evaluated_ms is None                    # evaluated at the first update


@pytest.mark.parametrize("rule,reads_now", [
    ('vehicle.make = "DeLorean"', False),
    (WEEK, False),
    ("xEvent[timestamp occurs < 2 hours before now].count() >= 2", False),
    ("membership.expires > now", True),
    ("xEvent[timestamp occurs <= 7 days before now].exists() and person.birthDate < now", True),
])
def test_rules_reading_now_outside_windows_are_always_evaluated(rule, reads_now):
    assert AudienceSet.from_config(make_config(audiences=(audience("a", rule),), mapped=())).reads_now is reads_now
