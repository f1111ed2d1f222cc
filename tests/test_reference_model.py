"""The exporter against an independent reference model of the export rules (tests/reference_model.py).

First, literal scenarios: records written out by hand from the documented rules, which both the
reference and the product must produce. Then a property test: random update streams (out of
order and tied times, writes above and below rule paths, deletes, identities added and removed,
events in and out of windows, an upload audience, both merge policies, with and without
``until``, some starting from a seed snapshot) go through the product's per-profile exporter and
through the reference; the records (partition key, merge policy, triggers, data with its key
order) must be identical. At the end of input both act on the window changes due by ``until``
(all of them without it), as the runner's timers do when a bounded input ends.

The activation controls get their own literal scenarios (opt-out, opt-in, consent and statuses
changing together, a first update that consents and qualifies, consent per merge policy view,
seeded members with and without consent, triggers switched off, upload expiry by timer, at an
update, at and after ``until``, export metadata), and half the random streams run with them on
(export metadata, an expiring upload, random trigger switches and consent); there the consent
metrics (withheld, opt-outs, opt-ins) must match too.
"""
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import random
from typing import NamedTuple, Optional, Tuple

import pytest

from tests.export_helpers import audience, make_config
from tests.reference_model import ReferenceProfile
from transforms.audiences import AudienceSet
from transforms.config import Activation, AudienceDefinition, MappedAudience, MergePolicyConfig, UploadSource
from transforms.exporter import ProfileExporter
from transforms.model import ProfileUpdate, SegmentStatus, SnapshotProfile
from transforms.profile_state import ProfileState

H, D = 3_600_000, 86_400_000
T0 = 1_714_557_600_000                      # 2024-05-01T10:00:00Z
END_OF_TIME = 2 ** 62


class _Object(list):
    """A JSON object as its (key, value) pairs, in order (duplicates kept)."""


def canonical(value):
    """JSON data with key order and value types made comparable (``1`` is not ``true``)."""
    if isinstance(value, dict):
        value = _Object(value.items())
    if isinstance(value, _Object):
        return "object", [(k, canonical(v)) for k, v in value]
    if isinstance(value, list):
        return "array", [canonical(v) for v in value]
    return type(value).__name__, value


CONSENT_METRICS = ("consent_withheld", "consent_opt_outs", "consent_opt_ins")


def product_run(config, profile_id, updates, until=None, seed=None):
    """``(records, consent metrics)`` of the product, end of input included; a record is
    ``(partition key, policy, triggers, canonical data)``."""
    exporter = ProfileExporter(config, AudienceSet.from_config(config), until)
    state, out = (ProfileState() if seed is None else exporter.seed(seed)), []
    for update in copy.deepcopy(updates):
        out.extend(exporter.update(profile_id, state, update))
    out.extend(exporter.catch_up(profile_id, state, END_OF_TIME if until is None else until + 1))
    return ([(record.partition_key, plan.policy_id, tuple(plan.triggers),
              canonical(json.loads(record.data, object_pairs_hook=_Object))) for record, plan in out],
            {name: exporter.counts[name] for name in CONSENT_METRICS})


def reference_run(config, profile_id, updates, until=None, seed=None):
    reference = ReferenceProfile(config, profile_id, until, seed)
    out = []
    for update in copy.deepcopy(updates):
        out.extend(reference.update(update))
    out.extend(reference.finish())
    return ([(r.partition_key, r.policy_id, r.triggers, canonical(r.data)) for r in out],
            {name: reference.counts[name] for name in CONSENT_METRICS})


def product_records(config, profile_id, updates, until=None, seed=None):
    return product_run(config, profile_id, updates, until, seed)[0]


def reference_records(config, profile_id, updates, until=None, seed=None):
    return reference_run(config, profile_id, updates, until, seed)[0]


# ---- literal scenarios ------------------------------------------------------------------------

SCENARIO_CONFIG = make_config(
    audiences=(audience("delorean", 'vehicle.make = "DeLorean"'),
               audience("fans", "interests.scifi = true"),
               audience("buyers", "xEvent[timestamp occurs <= 7 days before now].exists()"),
               audience("gold", 'tier = "gold"', "mp-crm")),
    mapped=(MappedAudience("delorean"), MappedAudience("buyers"), MappedAudience("gold")),
    policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),
              MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm", "loyalty"))),
    attributes=("person.name.firstName", "personalEmail.address", "person.birthDate"))


def u(t, attributes=None, dataset=None, ids=None, removals=None, event=None):
    return ProfileUpdate("p", t, dataset, ids or {}, removals or {}, attributes or {}, event)


def rec(policy, triggers, record_data):
    return ("p", policy, tuple(triggers.split()), canonical(record_data))


def entry(status, ms):
    return {"lastQualificationTime": ISO[ms], "status": status}


def data(attributes, ups, identities=None):
    return {**attributes, "segmentMembership": {"ups": ups}, "identityMap": identities or {}}


DELOREAN = {"vehicle": {"make": "DeLorean"}}
TESLA = {"vehicle": {"make": "Tesla"}}
R, X = "realized", "exited"
ISO = {T0: "2024-05-01T10:00:00Z", T0 + H: "2024-05-01T11:00:00Z", T0 + 2 * H: "2024-05-01T12:00:00Z",
       T0 + 3 * H: "2024-05-01T13:00:00Z", T0 + 7 * D + 1: "2024-05-08T10:00:00Z"}

SCENARIOS = [
    ("identity removal shows in the next record and is itself a change",
     [u(T0, DELOREAN, ids={"email": ("a@x",), "ecid": ("e1",)}),
      u(T0 + H, removals={"ecid": ("e1",)}),
      u(T0 + 2 * H, removals={"ecid": ("e1",)}),                      # not held: no change
      u(T0 + 3 * H, ids={"email": ("a@x",)})],                         # already held: no change
     None,
     [rec("mp-default", "audience identity",
          data({}, {"delorean": entry(R, T0)}, {"email": [{"id": "a@x"}], "ecid": [{"id": "e1"}]})),
      rec("mp-default", "identity", data({}, {"delorean": entry(R, T0)}, {"email": [{"id": "a@x"}]}))]),
    ("identity and attribute triggers look at the statuses after the update",
     [u(T0, {"interests": {"scifi": True}}),              # unmapped member only: nothing
      u(T0 + H, DELOREAN, ids={"email": ("a@x",)}),                    # entry + identity, one record
      u(T0 + 2 * H, {**TESLA, "person": {"name": {"firstName": "Jo"}}}, ids={"ecid": ("e",)})],
     None,
     [rec("mp-default", "audience identity",
          data({}, {"delorean": entry(R, T0 + H), "fans": entry(R, T0)}, {"email": [{"id": "a@x"}]})),
      rec("mp-default", "audience",                                    # exit: no longer a mapped member
          data({"person": {"name": {"firstName": "Jo"}}}, {"delorean": entry(X, T0 + 2 * H), "fans": entry(R, T0)},
               {"email": [{"id": "a@x"}], "ecid": [{"id": "e"}]}))]),
    ("a timestamp tie goes to the later arrival",
     [u(T0, {"tier": "silver"}, "web"), u(T0, {"tier": "gold"}, "other"),       # unlisted datasets
      u(T0, {"tier": "silver"}, "crm"), u(T0, {"tier": "gold"}, "crm"),         # one listed dataset
      u(T0 + H, DELOREAN), u(T0 + H, TESLA)],                                   # timestamp_ordered
     None,
     [rec("mp-crm", "audience", data({}, {"gold": entry(R, T0)})),
      rec("mp-crm", "audience", data({}, {"gold": entry(X, T0)})),
      rec("mp-crm", "audience", data({}, {"gold": entry(R, T0)})),
      rec("mp-default", "audience", data({}, {"delorean": entry(R, T0 + H)})),
      rec("mp-default", "audience", data({}, {"delorean": entry(X, T0 + H)}))]),
    ("out of order: evaluated at the latest time, older writes never overwrite newer ones",
     [u(T0 + 2 * H, {**DELOREAN, "person": {"name": {"firstName": "New"}}}),
      u(T0, {"person": {"name": {"firstName": "Old"}, "birthDate": "1985-10-26"}, **TESLA})],
     None,
     [rec("mp-default", "audience attribute",
          data({"person": {"name": {"firstName": "New"}}}, {"delorean": entry(R, T0 + 2 * H)})),
      rec("mp-default", "attribute",
          data({"person": {"name": {"firstName": "New"}, "birthDate": "1985-10-26"}},
               {"delorean": entry(R, T0 + 2 * H)}))]),
    ("a status changed by a late update carries the profile's latest evaluation time",
     [u(T0 + 2 * H, {"tier": "gold"}, "web"), u(T0 + H, {"tier": "silver"}, "crm")],
     None,
     [rec("mp-crm", "audience", data({}, {"gold": entry(R, T0 + 2 * H)})),
      rec("mp-crm", "audience", data({}, {"gold": entry(X, T0 + 2 * H)}))]),
    ("attribute key order: a nested object where its first mapped path is, present or not",
     [u(T0, {**DELOREAN, "personalEmail": {"address": "j@x"}, "person": {"birthDate": "1985-10-26"}})],
     None,
     [rec("mp-default", "audience attribute",
          data({"person": {"birthDate": "1985-10-26"}, "personalEmail": {"address": "j@x"}},
               {"delorean": entry(R, T0)}))]),
    ("a null delete of a mapped attribute is a write; an unmapped write is not",
     [u(T0, {**DELOREAN, "personalEmail": {"address": "j@x"}}),
      u(T0 + H, {"loyalty": {"points": 3}}),
      u(T0 + 2 * H, {"personalEmail": None})],
     None,
     [rec("mp-default", "audience attribute",
          data({"personalEmail": {"address": "j@x"}}, {"delorean": entry(R, T0)})),
      rec("mp-default", "attribute", data({}, {"delorean": entry(R, T0)}))]),
    ("a window exit acts before an update stamped after it, at its own instant",
     [u(T0, event={"eventType": "x"}), u(T0 + 9 * D, {"person": {"name": {"firstName": "Late"}}})],
     None,
     [rec("mp-default", "audience", data({}, {"buyers": entry(R, T0)})),
      rec("mp-default", "audience", data({}, {"buyers": entry(X, T0 + 7 * D + 1)}))]),
    ("with until, exits due after it are not emitted",
     [u(T0, event={"eventType": "x"})],
     T0 + 7 * D,
     [rec("mp-default", "audience", data({}, {"buyers": entry(R, T0)}))]),
    ("exited is announced once; a re-entry is realized again with its new time",
     [u(T0, DELOREAN), u(T0 + H, TESLA), u(T0 + 2 * H, {"person": {"name": {"firstName": "Z"}}}),
      u(T0 + 3 * H, DELOREAN)],
     None,
     [rec("mp-default", "audience", data({}, {"delorean": entry(R, T0)})),
      rec("mp-default", "audience", data({}, {"delorean": entry(X, T0 + H)})),
      rec("mp-default", "audience",
          data({"person": {"name": {"firstName": "Z"}}}, {"delorean": entry(R, T0 + 3 * H)}))]),
]


@pytest.mark.parametrize("updates,until,expected", [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenarios(updates, until, expected):
    assert reference_records(SCENARIO_CONFIG, "p", updates, until) == expected
    assert product_records(SCENARIO_CONFIG, "p", updates, until) == expected


def test_documented_sample_record():
    """The record of the project's documentation, segment names and timestamps on."""
    config = make_config(names=True, timestamps=True)
    update = ProfileUpdate(
        "p", T0, "crm", {"email": ("john.doe@acme.com",), "ecid": ("1457",)}, {},
        {"vehicle": {"make": "DeLorean"}, "loyalty": {"points": 3},
         "personalEmail": {"address": "john.doe@acme.com"},
         "person": {"birthDate": "1985-10-26", "name": {"lastName": "Doe", "firstName": "John"}}})
    sample = json.loads("""
        {"person": {"name": {"firstName": "John", "lastName": "Doe"}, "birthDate": "1985-10-26"},
         "personalEmail": {"address": "john.doe@acme.com"},
         "segmentMembership": {"ups": {
           "aud-delorean": {"lastQualificationTime": "2024-05-01T10:00:00Z", "status": "realized",
                            "createdAt": 1648553325000, "updatedAt": 1648553330000,
                            "mappingCreatedAt": 1713014970000, "mappingUpdatedAt": 1713014970000,
                            "name": "Customer with DeLorean Cars"}}},
         "identityMap": {"email": [{"id": "john.doe@acme.com"}], "ecid": [{"id": "1457"}]}}""")
    expected = [("p", "mp-default", ("audience", "identity", "attribute"), canonical(sample))]
    assert reference_records(config, "p", [update]) == expected
    assert product_records(config, "p", [update]) == expected


# ---- activation controls: consent, trigger switches, upload expiry, export metadata --------------

CONSENT = 'consents.email in ["y", "dy"]'
YES, NO = {"consents": {"email": "y"}}, {"consents": {"email": "n"}}
JO = {"person": {"name": {"firstName": "Jo"}}}
J = {"email": [{"id": "j@x"}]}
VIP_ID = {"email": ("vip@x",)}
ALL_TRIGGERS = ("audience", "identity", "attribute")


def activation_config(tmp_path, consent=None, triggers=ALL_TRIGGERS, metadata=False, expires_at=None):
    """The scenario config plus a mapped upload audience ``vip`` (members: email ``vip@x``)."""
    upload = tmp_path / "vip.csv"
    upload.write_text("email\nvip@x\n")
    vip = AudienceDefinition("vip", "vip", "mp-default", upload=UploadSource(str(upload), "email", "email", expires_at))
    config = make_config(audiences=SCENARIO_CONFIG.audiences + (vip,),
                         mapped=SCENARIO_CONFIG.mapping.audiences + (MappedAudience("vip"),),
                         policies=SCENARIO_CONFIG.merge_policies, attributes=SCENARIO_CONFIG.mapping.attributes)
    return dataclasses.replace(
        config, activation=Activation("email-targeting", consent, triggers),
        destination=dataclasses.replace(config.destination, include_export_metadata=metadata))


def iso(ms):
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def at(status, ms):
    return {"lastQualificationTime": iso(ms), "status": status}


def mrec(policy, triggers, sequence, at_ms, record_data):
    """A record with ``_export`` metadata: id from ``p/policy/sequence``, the record's triggers."""
    export = {"id": hashlib.sha256(f"p/{policy}/{sequence}".encode()).hexdigest(), "sequence": sequence,
              "at": at_ms, "triggers": triggers.split()}
    return rec(policy, triggers, {**record_data, "_export": export})


def seed_row(consents, since):
    return SnapshotProfile("p", T0, {"email": ("j@x",)}, {**DELOREAN, "consents": {"email": consents}},
                           {"delorean": SegmentStatus("existing", since)})


class Case(NamedTuple):
    name: str
    updates: list
    expected: list
    config: dict = {}
    until: Optional[int] = None
    seed: Optional[SnapshotProfile] = None
    metrics: Tuple[int, int, int] = (0, 0, 0)      # consent withheld, opt-outs, opt-ins


ACTIVATION_SCENARIOS = [
    Case("opt-in: mapped members at the opt-in time (kept until they change), unmapped with their own",
         [u(T0, {**DELOREAN, "interests": {"scifi": True}, **JO}, ids={"email": ("j@x",)}),   # no state: no consent
          u(T0 + H, YES),
          u(T0 + 2 * H, ids={"ecid": ("e1",)}),
          u(T0 + 3 * H, TESLA)],
         [rec("mp-default", "consent", data(JO, {"delorean": at(R, T0 + H), "fans": at(R, T0)}, J)),
          rec("mp-default", "identity", data(JO, {"delorean": at(R, T0 + H), "fans": at(R, T0)},
                                             {**J, "ecid": [{"id": "e1"}]})),
          rec("mp-default", "audience", data(JO, {"delorean": at(X, T0 + 3 * H), "fans": at(R, T0)},
                                             {**J, "ecid": [{"id": "e1"}]}))],
         {"consent": CONSENT}, metrics=(1, 0, 1)),
    Case("opt-out: the mapped audiences held, exited at the update's time, then identityMap only",
         [u(T0, {**DELOREAN, "interests": {"scifi": True}, **JO, **YES}, ids={"email": ("j@x",)}),
          u(T0 + H, {**NO, "person": {"name": {"firstName": "Al"}}}),
          u(T0 + 2 * H, {"person": {"name": {"firstName": "Bo"}}}),     # withheld (no rule reads it)
          u(T0 + 3 * H, TESLA, ids={"ecid": ("e1",)}),                  # withheld
          u(T0 + 4 * H, YES),                                # consents again, in no mapped audience: nothing
          u(T0 + 5 * H, DELOREAN)],
         [rec("mp-default", "consent", data(JO, {"delorean": at(R, T0), "fans": at(R, T0)}, J)),
          rec("mp-default", "consent", {"segmentMembership": {"ups": {"delorean": at(X, T0 + H)}}, "identityMap": J}),
          rec("mp-default", "audience",
              data({"person": {"name": {"firstName": "Bo"}}}, {"delorean": at(R, T0 + 5 * H), "fans": at(R, T0)},
                   {**J, "ecid": [{"id": "e1"}]}))],
         {"consent": CONSENT}, metrics=(2, 1, 1)),
    Case("consent and statuses changing in one update export only the consent record",
         [u(T0, {**DELOREAN, **YES}), u(T0 + H, {**TESLA, **NO}), u(T0 + 2 * H, {**DELOREAN, "consents": {"email": "dy"}}),
          u(T0 + 3 * H, {**TESLA, **JO})],
         [mrec("mp-default", "consent", 1, T0, data({}, {"delorean": at(R, T0)})),
          mrec("mp-default", "consent", 2, T0 + H, data({}, {"delorean": at(X, T0 + H)})),
          mrec("mp-default", "consent", 3, T0 + 2 * H, data({}, {"delorean": at(R, T0 + 2 * H)})),
          mrec("mp-default", "audience", 4, T0 + 3 * H, data(JO, {"delorean": at(X, T0 + 3 * H)}))],
         {"consent": CONSENT, "metadata": True}, metrics=(0, 1, 2)),
    Case("consent is decided on each merge policy's view",
         [u(T0, {**DELOREAN, "tier": "gold", **YES}, "crm"),
          u(T0 + H, NO, "web"),                  # the latest write for mp-default; below crm for mp-crm
          u(T0 + 2 * H, {"tier": "silver"}, "crm")],
         [rec("mp-default", "consent", data({}, {"delorean": at(R, T0)})),
          rec("mp-crm", "consent", data({}, {"gold": at(R, T0)})),
          rec("mp-default", "consent", data({}, {"delorean": at(X, T0 + H)})),
          rec("mp-crm", "audience", data({}, {"gold": at(X, T0 + 2 * H)}))],
         {"consent": CONSENT}, metrics=(0, 1, 2)),
    Case("a seeded member that does not consent counts as exited: its opt-in is announced",
         [u(T0 + H, JO), u(T0 + 2 * H, YES)],
         [rec("mp-default", "consent", data(JO, {"delorean": at(R, T0 + 2 * H)}, J))],
         {"consent": CONSENT}, seed=seed_row("n", T0 - D), metrics=(1, 0, 1)),
    Case("a seeded member that consents keeps its time and opts out",
         [u(T0 + H, JO), u(T0 + 2 * H, NO)],
         [rec("mp-default", "attribute", data(JO, {"delorean": at(R, T0 - D)}, J)),
          rec("mp-default", "consent", data({}, {"delorean": at(X, T0 + 2 * H)}, J))],
         {"consent": CONSENT}, seed=seed_row("y", T0 - D), metrics=(0, 1, 0)),
    Case("identity switched off: it neither exports nor shows; the change is in the next record",
         [u(T0, DELOREAN, ids={"email": ("j@x",)}), u(T0 + H, ids={"ecid": ("e1",)}), u(T0 + 2 * H, JO)],
         [rec("mp-default", "audience", data({}, {"delorean": at(R, T0)}, J)),
          rec("mp-default", "attribute", data(JO, {"delorean": at(R, T0)}, {**J, "ecid": [{"id": "e1"}]}))],
         {"triggers": ("audience", "attribute")}),
    Case("attribute switched off: it neither exports nor shows; the change is in the next record",
         [u(T0, {**DELOREAN, **JO}), u(T0 + H, {"person": {"birthDate": "1985-10-26"}}), u(T0 + 2 * H, ids={"ecid": ("e1",)})],
         [rec("mp-default", "audience", data(JO, {"delorean": at(R, T0)})),
          rec("mp-default", "identity", data({"person": {"name": {"firstName": "Jo"}, "birthDate": "1985-10-26"}},
                                             {"delorean": at(R, T0)}, {"ecid": [{"id": "e1"}]}))],
         {"triggers": ("audience", "identity")}),
    Case("an upload expires by a timer at expires_at (metadata at that instant); no re-entry after",
         [u(T0, ids=VIP_ID), u(T0 + 3 * D, DELOREAN), u(T0 + 4 * D, removals=VIP_ID), u(T0 + 5 * D, ids=VIP_ID)],
         [mrec("mp-default", "audience identity", 1, T0, data({}, {"vip": at(R, T0)}, {"email": [{"id": "vip@x"}]})),
          mrec("mp-default", "expiry", 2, T0 + 2 * D, data({}, {"vip": at(X, T0 + 2 * D)}, {"email": [{"id": "vip@x"}]})),
          mrec("mp-default", "audience", 3, T0 + 3 * D, data({}, {"delorean": at(R, T0 + 3 * D)},
                                                             {"email": [{"id": "vip@x"}]})),
          mrec("mp-default", "identity", 4, T0 + 4 * D, data({}, {"delorean": at(R, T0 + 3 * D)})),
          mrec("mp-default", "identity", 5, T0 + 5 * D, data({}, {"delorean": at(R, T0 + 3 * D)},
                                                             {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D, "metadata": True}),
    Case("an update stamped at expires_at exits the member itself: an expiry, listed after its write",
         [u(T0, DELOREAN, ids=VIP_ID), u(T0 + 2 * D, JO)],
         [rec("mp-default", "audience identity", data({}, {"delorean": at(R, T0), "vip": at(R, T0)},
                                                      {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "attribute expiry", data(JO, {"delorean": at(R, T0), "vip": at(X, T0 + 2 * D)},
                                                     {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D}),
    Case("an expiry due at until is acted on at the end of input",
         [u(T0, ids=VIP_ID)],
         [rec("mp-default", "audience identity", data({}, {"vip": at(R, T0)}, {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "expiry", data({}, {"vip": at(X, T0 + 2 * D)}, {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D}, until=T0 + 2 * D),
    Case("a seeded member of an expiring upload exits at expires_at without any update",
         [],
         [rec("mp-default", "expiry", data({}, {"vip": at(X, T0 + 2 * D)}, {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D}, seed=SnapshotProfile("p", T0, VIP_ID, {}, {"vip": SegmentStatus("realized", T0 - D)})),
    Case("a seeded member's expiry comes before its first update after expires_at",
         [u(T0 + 3 * D, DELOREAN)],
         [rec("mp-default", "expiry", data({}, {"vip": at(X, T0 + 2 * D)}, {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "audience", data({}, {"delorean": at(R, T0 + 3 * D)}, {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D}, seed=SnapshotProfile("p", T0, VIP_ID, {}, {"vip": SegmentStatus("existing", T0 - D)})),
    Case("a seeded member's expiry after until is not acted on",
         [],
         [],
         {"expires_at": T0 + 2 * D}, until=T0 + D,
         seed=SnapshotProfile("p", T0, VIP_ID, {}, {"vip": SegmentStatus("realized", T0 - D)})),
    Case("an expiry due after until is not",
         [u(T0, ids=VIP_ID)],
         [rec("mp-default", "audience identity", data({}, {"vip": at(R, T0)}, {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D}, until=T0 + 2 * D - 1),
    Case("past an until before expires_at, an update after it still finds no member: an expiry",
         [u(T0, DELOREAN, ids=VIP_ID), u(T0 + 3 * D, {"loyalty": {"points": 1}}), u(T0 + 4 * D, JO)],
         [rec("mp-default", "audience identity", data({}, {"delorean": at(R, T0), "vip": at(R, T0)},
                                                      {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "expiry", data({}, {"delorean": at(R, T0), "vip": at(X, T0 + 3 * D)},
                                           {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "attribute", data(JO, {"delorean": at(R, T0)}, {"email": [{"id": "vip@x"}]}))],
         {"expires_at": T0 + 2 * D}, until=T0 + D),
    Case("an expiry while not consenting is withheld; the opt-in then holds no upload membership",
         [u(T0, {**DELOREAN, **YES}, ids=VIP_ID), u(T0 + H, NO), u(T0 + 3 * D, YES)],
         [rec("mp-default", "consent", data({}, {"delorean": at(R, T0), "vip": at(R, T0)}, {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "consent", data({}, {"delorean": at(X, T0 + H), "vip": at(X, T0 + H)},
                                            {"email": [{"id": "vip@x"}]})),
          rec("mp-default", "consent", data({}, {"delorean": at(R, T0 + 3 * D)}, {"email": [{"id": "vip@x"}]}))],
         {"consent": CONSENT, "expires_at": T0 + 2 * D}, metrics=(1, 1, 2)),
    Case("metadata: a sequence per profile and merge policy, at the evaluation time (a late update's too)",
         [u(T0, {**DELOREAN, "tier": "gold"}, "crm"), u(T0 + H, {"tier": "silver"}, "crm"), u(T0 + 2 * H, TESLA),
          u(T0 + 3 * H, DELOREAN), u(T0 + 2 * H, JO)],
         [mrec("mp-default", "audience", 1, T0, data({}, {"delorean": at(R, T0)})),
          mrec("mp-crm", "audience", 1, T0, data({}, {"gold": at(R, T0)})),
          mrec("mp-crm", "audience", 2, T0 + H, data({}, {"gold": at(X, T0 + H)})),
          mrec("mp-default", "audience", 2, T0 + 2 * H, data({}, {"delorean": at(X, T0 + 2 * H)})),
          mrec("mp-default", "audience", 3, T0 + 3 * H, data({}, {"delorean": at(R, T0 + 3 * H)})),
          mrec("mp-default", "attribute", 4, T0 + 3 * H, data(JO, {"delorean": at(R, T0 + 3 * H)}))],
         {"metadata": True}),
]


@pytest.mark.parametrize("case", ACTIVATION_SCENARIOS, ids=[c.name for c in ACTIVATION_SCENARIOS])
def test_activation_scenarios(tmp_path, case):
    config = activation_config(tmp_path, **case.config)
    metrics = dict(zip(CONSENT_METRICS, case.metrics))
    assert reference_run(config, "p", case.updates, case.until, case.seed) == (case.expected, metrics)
    assert product_run(config, "p", case.updates, case.until, case.seed) == (case.expected, metrics)


def test_export_metadata_literal(tmp_path):
    """The ``_export`` member written out: the id is the hex SHA-256 of ``p/mp-default/1``."""
    config = activation_config(tmp_path, metadata=True)
    export = {"id": "9039b3b793faba290ec740c02daa249bf0502b9d1f030b8cacb96f3dbadaf422", "sequence": 1,
              "at": T0, "triggers": ["audience"]}
    expected = [rec("mp-default", "audience", {**data({}, {"delorean": at(R, T0)}), "_export": export})]
    assert reference_records(config, "p", [u(T0, DELOREAN)]) == expected
    assert product_records(config, "p", [u(T0, DELOREAN)]) == expected


# ---- random update streams --------------------------------------------------------------------

VALUES = {"vehicle": [{"make": "DeLorean"}, {"make": "Tesla"}, {"make": None}, None, 3, {"year": 1985}],
          "a": [{"b": {"c": 3}}, {"b": {"c": 1}}, {"d": "x"}, {"d": None}, {"b": None}, {"b": 7}, None,
                {"b": {"c": 5}, "d": 1}],
          "interests": [{"scifi": True}, {"scifi": False}, None],
          "name": ["Zed", "Amy", None],
          "x": [1, 3, None],
          "tier": ["gold", "silver", None],
          "other": [{"mapped": 1}, {"unmapped": 2}, {"mapped": {"deep": [1, "z"]}}, None],
          "person": [{"name": {"lastName": "Doe"}}, {"birthDate": "1985-10-26"}, {"name": None}, None],
          "unread": [1, 2, {"deep": 3}],
          "seen": ["2024-05-03T00:00:00Z", "2024-05-09T12:00:00Z", T0 + 5 * D, None],
          "consents": [{"email": "y"}, {"email": "n"}, {"email": "dy"}, {"email": None}, {"until": T0 + 6 * D},
                       None]}
CONSENT_OR_UNTIL = CONSENT + " or consents.until > now"     # a consent rule reading `now`
TRIGGER_CHOICES = (ALL_TRIGGERS, ("audience",), ("audience", "identity"), ("audience", "attribute"))


def activated(seed):
    """Half the streams run with the activation controls: export metadata, the upload expiring
    (before, around or after ``until``, or after the last update), trigger switches, and consent
    (reading ``now`` or not) in all but a few. A quarter of those (``seed % 8 == 5``, all with
    ``until``) have no events, so nothing but the expiry makes their time matter."""
    return seed % 8 in (0, 3, 5, 6)


def stream_config(tmp_path, seed):
    upload = tmp_path / "vip.csv"
    upload.write_text("email\na@x.io\n b@x.io \n")
    expires_at = T0 + (3, 10, 13, 16, 30)[(seed // 5) % 5] * D if activated(seed) else None
    config = make_config(
        audiences=(audience("make", 'vehicle.make = "DeLorean"'),
                   audience("deep", "a.b.c > 2 and not a.d.isNull()", created_at_ms=5, updated_at_ms=6),
                   audience("fans", 'interests.scifi = true or name.startsWith("Z")'),
                   audience("nested", 'inSegment("make") and x in [1, 2]'),
                   audience("buyers", "xEvent[timestamp occurs <= 3 days before now].count() >= 2"),
                   audience("crm", 'tier = "gold" and a.b.c >= 1', "mp-crm"),
                   audience("recent", 'xEvent[eventType = "buy" and timestamp occurs < 1 days before now].exists()',
                            "mp-crm"),
                   audience("crm-fans", "interests.scifi = true", "mp-crm"),
                   AudienceDefinition("vip", "vip", "mp-default",
                                      upload=UploadSource(str(upload), "email", "email", expires_at)))
        # a rule reading `now` outside windows (evaluated on every update) in some streams only
        + ((audience("fresh", "seen > now"),) if seed % 5 == 0 else ()),
        mapped=(MappedAudience("make", 1, 2), MappedAudience("deep"), MappedAudience("buyers"),
                MappedAudience("crm"), MappedAudience("recent", 3), MappedAudience("vip"))
        + ((MappedAudience("fresh"),) if seed % 5 == 0 else ()),
        policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),
                  MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm", "web"))),
        attributes=("person.name.firstName", "name", "a.d", "other.mapped", "person.birthDate",
                    "person.name.lastName"),
        names=seed % 3 == 0, timestamps=seed % 4 == 1, max_events=(1000, 2, 3)[seed % 3])
    if not activated(seed):
        return config
    consent = None if seed % 16 == 6 else CONSENT_OR_UNTIL if seed % 3 == 0 else CONSENT
    return dataclasses.replace(
        config, activation=Activation("email-targeting", consent, TRIGGER_CHOICES[(seed // 8) % 4]),
        destination=dataclasses.replace(config.destination, include_export_metadata=True))


def random_update(rng, profile_id, t, events=True):
    attributes = {k: rng.choice(VALUES[k]) for k in rng.sample(sorted(VALUES), rng.randint(0, 3))}
    ids, removals = {}, {}
    if rng.random() < 0.2:
        ids = {rng.choice(["email", "ecid"]): tuple(rng.sample(["a@x.io", "b@x.io", "c@x.io"], rng.randint(1, 2)))}
    if rng.random() < 0.1:
        removals = {rng.choice(["email", "ecid"]): (rng.choice(["a@x.io", "b@x.io"]),)}
    event = None
    if rng.random() < 0.25 and events:
        event = {"eventType": rng.choice(["buy", "view"])}
        if rng.random() < 0.7:
            event["timestamp"] = t - rng.randint(0, 2 * D)
    return ProfileUpdate(profile_id, t, rng.choice([None, "crm", "web", "other"]), ids, removals, attributes, event)


def random_snapshot(rng, profile_id):
    """A seed row: attributes (nulls are absent values), identities and known memberships."""
    attributes = {k: rng.choice(VALUES[k]) for k in rng.sample(sorted(VALUES), rng.randint(1, 4))}
    statuses = {"make": "realized", "vip": "existing", "crm": "realized", "deep": "exited",
                "recent": "realized", "not-configured": "realized"}
    membership = {aud: SegmentStatus(status, T0 - rng.randint(1, 5) * D)
                  for aud, status in statuses.items() if rng.random() < 0.5}
    return SnapshotProfile(profile_id, T0 + rng.choice([-D, 0, H]), {"email": ("a@x.io", "c@x.io")},
                           attributes, membership)


@pytest.mark.parametrize("seed", range(100))
def test_exporter_matches_reference(tmp_path, seed):
    rng = random.Random(seed)
    cfg = stream_config(tmp_path, seed)
    profile_id = "p" * 300 if seed % 10 == 7 else "p-1"
    until = T0 + 12 * D if seed % 2 else None
    snapshot = random_snapshot(rng, profile_id) if seed % 4 == 3 else None
    t, updates = T0, []
    for _ in range(60):
        t += rng.choice([-D, -H, 0, 0, 1, H, D, 2 * D])        # out of order and ties too
        updates.append(random_update(rng, profile_id, t, events=seed % 8 != 5))
    want, want_metrics = reference_run(cfg, profile_id, updates, until, snapshot)
    got, got_metrics = product_run(cfg, profile_id, updates, until, snapshot)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"record {i}"
    assert len(got) == len(want)
    assert got_metrics == want_metrics
