"""Activation controls, pure and table-driven: consent per merge policy (opt-out and opt-in
records, withheld records, seeds), trigger switches, upload expiry, export metadata, in the
streaming exporter and the backfill; the consent rule agrees between both evaluators."""
import copy
import dataclasses
import hashlib
import json
import random

import pyarrow as pa
import pytest

from tests.export_helpers import audience, make_config
from tests.test_vectorized import per_profile
from transforms import backfill as B
from transforms.audiences import AudienceSet, compile_consent
from transforms.config import (Activation, AudienceDefinition, DataUsage, MappedAudience, MergePolicyConfig,
                               UploadSource, forbidden_labels)
from transforms.exporter import ProfileExporter
from transforms.export_decision import ExportDecider, ExportPlan
from transforms.model import ProfileUpdate, SegmentStatus, SnapshotProfile
from transforms.profile_state import ProfileState, decode, encode
from transforms.record_format import RecordFormatter
from transforms.rules import RuleError
from transforms.timeutil import format_qualification_time as qt

T0 = 1_714_557_600_000     # 2024-05-01T10:00:00Z
H = 3_600_000
EXPIRES = T0 + 10 * H
CONSENT = 'consents.marketing.email.val in ["y", "dy"]'
R, X = "realized", "exited"

Y = {"consents": {"marketing": {"email": {"val": "y"}}}}
N = {"consents": {"marketing": {"email": {"val": "n"}}}}
DELOREAN = {"vehicle": {"make": "DeLorean"}}
TESLA = {"vehicle": {"make": "Tesla"}}
SCIFI = {"interests": {"scifi": True}}
GOLD = {"tier": "gold"}
VIP = {"email": ("a@x.io",)}


def name(n):
    return {"name": n}


def merged(*objs):
    out = {}
    for o in objs:
        out.update(o)
    return out


def config(upload_path, consent=CONSENT, triggers=("audience", "identity", "attribute"), metadata=False):
    """make, fans (unmapped), vip (upload, expires) on mp-default; gold on mp-crm (crm first)."""
    cfg = make_config(
        audiences=(audience("make", 'vehicle.make = "DeLorean"'), audience("fans", "interests.scifi = true"),
                   AudienceDefinition("vip", "vip", "mp-default",
                                      upload=UploadSource(str(upload_path), "email", "email", EXPIRES)),
                   audience("gold", 'tier = "gold"', "mp-crm")),
        mapped=(MappedAudience("make"), MappedAudience("vip"), MappedAudience("gold")),
        policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),
                  MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm",))),
        attributes=("name",))
    return dataclasses.replace(
        cfg, activation=Activation("email-targeting", consent, tuple(triggers)),
        destination=dataclasses.replace(cfg.destination, include_export_metadata=metadata))


@pytest.fixture
def upload(tmp_path):
    path = tmp_path / "vip.csv"
    path.write_text("email\na@x.io\n")
    return path


def u(t, attributes=None, dataset=None, ids=None):
    return ProfileUpdate("p", t, dataset, ids or {}, {}, attributes or {}, None)


def exporter(cfg, until=None):
    return ProfileExporter(cfg, AudienceSet.from_config(cfg), until)


def run(ex, updates, state=None):
    state = ProfileState() if state is None else state
    out = []
    for update in updates:
        out.extend((json.loads(r.data), plan) for r, plan in ex.update("p", state, update))
    return out, state


def rec(attributes, ups, identities=None):
    return {**attributes, "segmentMembership": {"ups": {a: {"lastQualificationTime": qt(t), "status": s}
                                                        for a, (s, t) in ups.items()}},
            "identityMap": identities or {}}


EMAIL = {"email": [{"id": "a@x.io"}]}

CONSENT_CASES = [  # (name, updates, expected records, their triggers)
    ("a first update that consents and qualifies exports the opt-in record",
     [u(T0, merged(DELOREAN, Y, name("Ann")))],
     [rec(name("Ann"), {"make": (R, T0)})], [("consent",)]),
    ("a member without consent is withheld; the opt-in carries its time, and later records keep it",
     [u(T0, merged(DELOREAN, name("Ann"))), u(T0 + H, Y), u(T0 + 2 * H, name("Bo"))],
     [rec(name("Ann"), {"make": (R, T0 + H)}), rec(name("Bo"), {"make": (R, T0 + H)})],
     [("consent",), ("attribute",)]),
    ("opt-out: mapped audiences exited at the update's time, identityMap, no attributes, no unmapped",
     [u(T0, merged(DELOREAN, SCIFI, Y, name("Ann")), ids=VIP), u(T0 + H, N)],
     [rec(name("Ann"), {"make": (R, T0), "fans": (R, T0), "vip": (R, T0)}, EMAIL),
      rec({}, {"make": (X, T0 + H), "vip": (X, T0 + H)}, EMAIL)], [("consent",), ("consent",)]),
    ("consent and status changing together export only the opt-out",
     [u(T0, merged(DELOREAN, Y)), u(T0 + H, merged(TESLA, N))],
     [rec({}, {"make": (R, T0)}), rec({}, {"make": (X, T0 + H)})], [("consent",), ("consent",)]),
    ("opt-in and unmapped audiences with their own times",
     [u(T0, SCIFI), u(T0 + H, DELOREAN), u(T0 + 2 * H, Y)],
     [rec({}, {"make": (R, T0 + 2 * H), "fans": (R, T0)})], [("consent",)]),
    ("no mapped audience before: no opt-out record; none after: no opt-in record",
     [u(T0, merged(SCIFI, Y)), u(T0 + H, N), u(T0 + 2 * H, Y)], [], []),
    ("deleting the consent attribute opts out (absent compares false)",
     [u(T0, merged(DELOREAN, Y)), u(T0 + H, {"consents": None})],
     [rec({}, {"make": (R, T0)}), rec({}, {"make": (X, T0 + H)})], [("consent",), ("consent",)]),
    ("never consenting: nothing, exits included",
     [u(T0, merged(DELOREAN, N), ids=VIP), u(T0 + H, TESLA), u(T0 + 2 * H, name("Z"))], [], []),
    ("consent is per merge policy view: crm's value outranks web's under mp-crm",
     [u(T0, merged(GOLD, DELOREAN, Y), "crm"), u(T0 + H, N, "web"), u(T0 + 2 * H, {"tier": "silver"}, "crm")],
     [rec({}, {"make": (R, T0)}), rec({}, {"gold": (R, T0)}), rec({}, {"make": (X, T0 + H)}),
      rec({}, {"gold": (X, T0 + 2 * H)})],
     [("consent",), ("consent",), ("consent",), ("audience",)]),
]


@pytest.mark.parametrize("updates,expected,triggers", [c[1:] for c in CONSENT_CASES], ids=[c[0] for c in CONSENT_CASES])
def test_consent(upload, updates, expected, triggers):
    out, _ = run(exporter(config(upload)), updates)
    assert [data for data, _ in out] == expected
    assert [plan.triggers for _, plan in out] == triggers


def test_consent_metrics(upload):
    ex = exporter(config(upload))
    run(ex, [u(T0, DELOREAN), u(T0 + H, name("A")), u(T0 + 2 * H, Y), u(T0 + 3 * H, N), u(T0 + 4 * H, TESLA)])
    consent = {name: n for name, n in ex.counts.items() if name.startswith("consent_")}
    assert consent == {"consent_withheld": 3, "consent_opt_ins": 1, "consent_opt_outs": 1}


@pytest.mark.parametrize("consents,updates,expected", [
    # a seeded member that consents was announced: no opt-in, its seeded time is kept
    (Y, [u(T0, name("Ann"))], [rec(name("Ann"), {"make": (R, T0 - 5 * H)})]),
    # a seeded member that does not consent counts as announced as exited
    (N, [u(T0, TESLA)], []),
    (N, [u(T0, Y)], [rec({}, {"make": (R, T0)})]),
], ids=["consenting", "not consenting exits quietly", "not consenting opts in"])
def test_seeded_members_and_consent(upload, consents, updates, expected):
    ex = exporter(config(upload))
    seed = SnapshotProfile("p", T0 - H, {}, merged(DELOREAN, consents), {"make": SegmentStatus(R, T0 - 5 * H)})
    out, _ = run(ex, updates, ex.seed(seed))
    assert [data for data, _ in out] == expected


TRIGGER_UPDATES = [u(T0, merged(DELOREAN, name("A"))), u(T0 + H, name("B")), u(T0 + 2 * H, ids={"ecid": ("e",)}),
                   u(T0 + 3 * H, merged(name("C"), TESLA), ids={"ecid": ("f",)})]
ECID = {"ecid": [{"id": "e"}, {"id": "f"}]}


@pytest.mark.parametrize("triggers,expected", [
    (("audience", "identity", "attribute"), [("A", {"make": (R, T0)}, {}, ("audience", "attribute")),
                                            ("B", {"make": (R, T0)}, {}, ("attribute",)),
                                            ("B", {"make": (R, T0)}, {"ecid": [{"id": "e"}]}, ("identity",)),
                                            ("C", {"make": (X, T0 + 3 * H)}, ECID, ("audience",))]),
    (("audience", "identity"), [("A", {"make": (R, T0)}, {}, ("audience",)),
                                ("B", {"make": (R, T0)}, {"ecid": [{"id": "e"}]}, ("identity",)),
                                ("C", {"make": (X, T0 + 3 * H)}, ECID, ("audience",))]),
    (("attribute", "audience"), [("A", {"make": (R, T0)}, {}, ("audience", "attribute")),
                                 ("B", {"make": (R, T0)}, {}, ("attribute",)),
                                 ("C", {"make": (X, T0 + 3 * H)}, ECID, ("audience",))]),
    (("audience",), [("A", {"make": (R, T0)}, {}, ("audience",)),
                     ("C", {"make": (X, T0 + 3 * H)}, ECID, ("audience",))]),
])
def test_triggers_switched_off_export_nothing_on_their_own(upload, triggers, expected):
    cfg = config(upload, consent=None, triggers=[t for t in ("audience", "identity", "attribute") if t in triggers])
    out, _ = run(exporter(cfg), TRIGGER_UPDATES)
    assert [(d, p.triggers) for d, p in out] == [(rec(name(n), ups, ids), t) for n, ups, ids, t in expected]


def test_an_upload_audience_expires_by_timer(upload):
    ex = exporter(config(upload, consent=None, metadata=True))
    out, state = run(ex, [u(T0, ids=VIP)])
    assert [d["segmentMembership"]["ups"]["vip"]["status"] for d, _ in out] == [R] and state.timer_ms == EXPIRES
    fired = [(json.loads(r.data), p.triggers) for r, p in ex.catch_up("p", state, EXPIRES + 1)]
    assert fired == [({**rec({}, {"vip": (X, EXPIRES)}, EMAIL), "_export": fired[0][0]["_export"]}, ("expiry",))]
    assert fired[0][0]["_export"]["triggers"] == ["expiry"] and fired[0][0]["_export"]["at"] == EXPIRES
    assert state.timer_ms is None
    later, _ = run(ex, [u(EXPIRES + H, ids={"email": ("a@x.io", "b@x.io")})], state)   # never a member again
    assert later == []


def test_expiry_caught_up_by_a_later_update_and_capped_by_until(upload):
    out, _ = run(exporter(config(upload, consent=None)), [u(T0, merged(DELOREAN, name("A")), ids=VIP),
                                                           u(EXPIRES + H, TESLA)])
    assert [(d["segmentMembership"]["ups"], p.triggers) for d, p in out][1:] == [
        ({"make": {"lastQualificationTime": qt(T0), "status": R}, "vip": {"lastQualificationTime": qt(EXPIRES), "status": X}},
         ("expiry",)),
        ({"make": {"lastQualificationTime": qt(EXPIRES + H), "status": X}}, ("audience",))]
    _, state = run(exporter(config(upload, consent=None), until=EXPIRES - 1), [u(T0, ids=VIP)])
    assert state.timer_ms is None              # --until before expires_at: nothing is due


def test_expiry_in_the_backfill(upload):
    audiences = AudienceSet.from_config(config(upload))
    batch = pa.RecordBatch.from_pydict({
        "profileId": pa.array(["p"]), "timestamp": pa.array([T0], pa.timestamp("ms", tz="UTC")),
        "identityMap": pa.array([[("email", [{"id": "a@x.io"}])]], pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string())]))))})
    assert audiences.evaluate_batch(batch, EXPIRES - 1)["vip"].to_pylist() == [True]
    assert audiences.evaluate_batch(batch, EXPIRES)["vip"].to_pylist() == [False]


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_export_metadata_sequence_id_at_and_triggers(upload):
    ex = exporter(config(upload, metadata=True))
    updates = [u(T0, merged(DELOREAN, Y, GOLD), "crm"), u(T0 + 2 * H, name("A"), ids={"ecid": ("e",)}),
               u(T0 + H, name("B")),                                         # out of order: at T0+2H
               u(T0 + 3 * H, TESLA, ids={"ecid": ("f",)})]
    state = ProfileState()
    retried = None
    out = []
    for i, update in enumerate(updates):
        if i == 2:
            retried = copy.deepcopy(state)
        out.extend(json.loads(r.data)["_export"] for r, _ in ex.update("p", state, update))
    assert out == [
        {"id": sha("p/mp-default/1"), "sequence": 1, "at": T0, "triggers": ["consent"]},
        {"id": sha("p/mp-crm/1"), "sequence": 1, "at": T0, "triggers": ["consent"]},
        {"id": sha("p/mp-default/2"), "sequence": 2, "at": T0 + 2 * H, "triggers": ["identity", "attribute"]},
        {"id": sha("p/mp-crm/2"), "sequence": 2, "at": T0 + 2 * H, "triggers": ["identity", "attribute"]},
        {"id": sha("p/mp-default/3"), "sequence": 3, "at": T0 + 2 * H, "triggers": ["attribute"]},
        {"id": sha("p/mp-crm/3"), "sequence": 3, "at": T0 + 2 * H, "triggers": ["attribute"]},
        {"id": sha("p/mp-default/4"), "sequence": 4, "at": T0 + 3 * H, "triggers": ["audience"]},   # exits: no (b)
        {"id": sha("p/mp-crm/4"), "sequence": 4, "at": T0 + 3 * H, "triggers": ["identity"]},
    ]
    assert list(json.loads(ex.update("p", state, u(T0 + 4 * H, name("Z")))[0][0].data))[-3:] == \
        ["segmentMembership", "identityMap", "_export"]
    # a retried bundle starts from the same state: the same records, ids included
    first = [r.data for r, _ in ex.update("p", copy.deepcopy(retried), updates[2])]
    assert first == [r.data for r, _ in ex.update("p", retried, updates[2])]


def test_export_metadata_member_text():
    assert RecordFormatter.export_metadata("p-1", "mp", 7, 123, ("audience", "expiry")) == \
        ',"_export":{"id":"' + sha("p-1/mp/7") + '","sequence":7,"at":123,"triggers":["audience","expiry"]}'


def test_state_with_consents_and_sequences_round_trips():
    state = ProfileState(realized={"a": 1}, consents=frozenset({"mp"}), sequences={"mp": 3})
    again = decode(encode(state))
    assert (again.consents, again.sequences, again.realized) == (frozenset({"mp"}), {"mp": 3}, {"a": 1})
    plain = decode(encode(ProfileState(realized={"a": 1})))
    assert plain.consents is None and plain.sequences is None
    assert len(encode(ProfileState())) < len(encode(ProfileState(consents=frozenset())))   # unchanged without


@pytest.mark.parametrize("before,after,policy,expected", [
    ({"make": 1, "fans": 2, "vip": 3}, None, "mp-default", ExportPlan("mp-default", (("make", X, 9), ("vip", X, 9)), ("consent",), False)),
    ({"fans": 2}, None, "mp-default", None),
    (None, {"make": 1, "fans": 2}, "mp-default", ExportPlan("mp-default", (("make", R, 9), ("fans", R, 2)), ("consent",))),
    (None, {"fans": 2, "gold": 4}, "mp-default", None),
    (None, {"fans": 2, "gold": 4}, "mp-crm", ExportPlan("mp-crm", (("gold", R, 9),), ("consent",))),
])
def test_opt_out_and_opt_in_plans(upload, before, after, policy, expected):
    decider = ExportDecider(config(upload))
    got = decider.opt_out(before, policy, 9) if after is None else decider.opt_in(after, policy, 9)
    assert got == expected


@pytest.mark.parametrize("attribute,labels,expected", [
    ("personalEmail.address", {"personalEmail.address": ("C2",)}, ["C2"]),          # own path
    ("personalEmail.address", {"personalEmail": ("C2", "C9")}, ["C2"]),             # parent path
    ("personalEmail", {"personalEmail.address": ("C2",)}, ["C2"]),                  # a path below
    ("personalEmailX", {"personalEmail": ("C2",)}, []),                             # whole segments
    ("person.name", {"person.birthDate": ("C2",)}, []),                             # a sibling
    ("person", {"person.name": ("C1",), "person.birthDate": ("C5", "C2")}, ["C2", "C5"]),
])
def test_forbidden_labels(attribute, labels, expected):
    assert forbidden_labels(attribute, DataUsage(tuple(labels.items()), ("C2", "C5"))) == expected


@pytest.mark.parametrize("rule,message", [
    ('inSegment("a") and x = 1', "the consent rule reads attributes only, not inSegment"),
    ("xEvent[eventType = \"x\"].exists()", "the consent rule reads attributes only, not xEvent"),
    ("x = ", "unexpected end of rule"),
])
def test_consent_rule_reads_attributes_only(rule, message):
    with pytest.raises(RuleError) as info:
        compile_consent(rule)
    assert message in str(info.value)


CONSENT_VALUES = [None, "y", "dy", "n", "Y", "", 1, True]


@pytest.mark.parametrize("rule", [CONSENT, 'consents.marketing.email.val = "y" and not consents.marketing.email.val.isNull()',
                                  'consents.marketing.email.val != "n"',
                                  'consents.marketing.email.val in ["y"] or consents.until > now'])
def test_backfill_and_streaming_agree_on_consent(rule):
    rng = random.Random(rule)
    rows = []
    for i in range(200):
        value = rng.choice(CONSENT_VALUES)
        email = None if rng.random() < 0.1 else {"val": value if not isinstance(value, (int, bool)) else str(value)}
        rows.append({"profileId": f"p-{i}", "consents": None if rng.random() < 0.1 else {
            "marketing": None if email is None and rng.random() < 0.5 else {"email": email},
            "until": rng.choice([None, T0 - 1, T0 + 1])}})
    batch = pa.RecordBatch.from_pylist(rows)
    consent = compile_consent(rule)
    got = consent.vectorized(batch, T0)
    assert got.to_pylist() == per_profile(consent, batch, T0)


def test_backfill_exports_only_consenting_profiles_with_metadata(upload):
    cfg = config(upload, metadata=True)
    batch = pa.RecordBatch.from_pylist([
        {"profileId": "p-yes", "timestamp": T0, "vehicle": {"make": "DeLorean"}, "consents": {"marketing": {"email": {"val": "y"}}}},
        {"profileId": "p-no", "timestamp": T0, "vehicle": {"make": "DeLorean"}, "consents": {"marketing": {"email": {"val": "n"}}}},
        {"profileId": "p-absent", "timestamp": T0, "vehicle": {"make": "DeLorean"}, "consents": None}])
    batch = batch.set_column(1, "timestamp", batch.column("timestamp").cast(pa.timestamp("ms", tz="UTC")))
    as_of = T0 + H
    exporter_ = B.SnapshotExporter(cfg, AudienceSet.from_config(cfg), ["make", "vip", "gold"], as_of)
    records, _ = exporter_.export(batch)
    got = [(r.policy_id, k, json.loads(d)) for r in records for k, d in zip(r.partition_keys.to_pylist(), r.data().to_pylist())]
    assert got == [("mp-default", "p-yes", {
        **rec({}, {"make": (R, T0)}),
        "_export": {"id": sha(f"p-yes/mp-default/backfill@{as_of}"), "sequence": 0, "at": as_of, "triggers": ["backfill"]}})]
    assert exporter_.withheld == 2
