import dataclasses

import pytest

from tests.export_helpers import audience, make_config
from transforms.config import Activation, AudienceDefinition, MappedAudience, MergePolicyConfig, UploadSource
from transforms.export_decision import ExportDecider, ExportPlan

NOW = 1000
# mp-a: mapped A1, A2, unmapped U1; mp-b: mapped B1, unmapped U2
CONFIG = make_config(
    audiences=(audience("A1", "x = 1", "mp-a"), audience("U1", "x = 1", "mp-a"),
               audience("A2", "x = 1", "mp-a"), audience("B1", "x = 1", "mp-b"),
               audience("U2", "x = 1", "mp-b")),
    mapped=(MappedAudience("A1"), MappedAudience("A2"), MappedAudience("B1")),
    policies=(MergePolicyConfig("mp-a", "timestamp_ordered", default=True),
              MergePolicyConfig("mp-b", "dataset_precedence", datasets=("crm",))),
    attributes=("person.name.firstName", "person.name.lastName", "personalEmail.address"))
DECIDER = ExportDecider(CONFIG)


def plan(policy, ups, *triggers):
    return ExportPlan(policy, tuple(ups), triggers)


CASES = [
    # (id, before, after, identities_changed, attribute_written, expected plans)
    ("nothing changed", {"A1": 5}, {"A1": 5}, False, False, ()),
    ("entry", {}, {"A1": NOW}, False, False, (plan("mp-a", [("A1", "realized", NOW)], "audience"),)),
    ("entry carries unmapped members of the policy only",
     {"U1": 3, "U2": 4}, {"A1": NOW, "U1": 3, "U2": 4}, False, False,
     (plan("mp-a", [("A1", "realized", NOW), ("U1", "realized", 3)], "audience"),)),
    ("exit announced with other members", {"A1": 5, "A2": 6}, {"A2": 6}, False, False,
     (plan("mp-a", [("A1", "exited", NOW), ("A2", "realized", 6)], "audience"),)),
    ("unmapped change alone exports nothing", {"A1": 5}, {"A1": 5, "U1": NOW}, False, False, ()),
    ("identity change of a non-member", {"U1": 5}, {"U1": 5}, True, False, ()),
    ("identity change of a member", {"A1": 5}, {"A1": 5}, True, False,
     (plan("mp-a", [("A1", "realized", 5)], "identity"),)),
    ("mapped attribute write of a member, both policies", {"A2": 5, "B1": 6, "U2": 7}, {"A2": 5, "B1": 6, "U2": 7},
     False, True, (plan("mp-a", [("A2", "realized", 5)], "attribute"),
                   plan("mp-b", [("B1", "realized", 6), ("U2", "realized", 7)], "attribute"))),
    # every trigger that holds for a record is listed; identity and attribute hold only for the
    # policies the profile is still realized in after the update (not for the one it exits)
    ("exit in one policy, attribute write in the other", {"A1": 5, "B1": 6}, {"B1": 6}, True, True,
     (plan("mp-a", [("A1", "exited", NOW)], "audience"),
      plan("mp-b", [("B1", "realized", 6)], "identity", "attribute"))),
    ("entry plus identity in the same policy", {}, {"A1": NOW}, True, False,
     (plan("mp-a", [("A1", "realized", NOW)], "audience", "identity"),)),
    ("exit of the last mapped audience with an identity change", {"B1": 5}, {}, True, False,
     (plan("mp-b", [("B1", "exited", NOW)], "audience"),)),
    ("identity change of a member, trigger switched off", {"A1": 5}, {"A1": 5}, True, False, (), ("audience",)),
    ("attribute write of a member, trigger switched off", {"A1": 5}, {"A1": 5}, False, True, (),
     ("audience", "identity")),
    ("exit with switched-off changes lists only the audience", {"A1": 5}, {}, True, True,
     (plan("mp-a", [("A1", "exited", NOW)], "audience"),), ("audience",)),
]


@pytest.mark.parametrize("before,after,ids,attrs,expected,triggers",
                         [c[1:] + (("audience", "identity", "attribute"),) * (len(c) == 6) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_decide(before, after, ids, attrs, expected, triggers):
    decider = ExportDecider(dataclasses.replace(CONFIG, activation=Activation(triggers=triggers)))
    assert decider.decide(before, after, NOW, ids, attrs) == expected


def test_an_upload_exit_at_its_expiry_is_an_expiry():
    upload = UploadSource("vip.csv", "email", "email", expires_at_ms=NOW)
    config = make_config(audiences=(AudienceDefinition("V", "V", "mp-a", upload=upload), audience("A1", "x = 1", "mp-a")),
                         mapped=(MappedAudience("V"), MappedAudience("A1")),
                         policies=(MergePolicyConfig("mp-a", "timestamp_ordered", default=True),))
    decider = ExportDecider(config)
    assert decider.decide({"V": 5, "A1": 5}, {}, NOW) == (
        plan("mp-a", [("V", "exited", NOW), ("A1", "exited", NOW)], "audience", "expiry"),)
    assert decider.decide({"V": 5}, {}, NOW - 1) == (plan("mp-a", [("V", "exited", NOW - 1)], "audience"),)


@pytest.mark.parametrize("paths,written", [
    (["person.name.firstName"], True),
    (["person.name"], True),                      # leaf or delete above mapped paths
    (["person"], True),
    (["person.name.middleName"], False),
    (["person.nameSuffix"], False),
    (["personalEmail.address.domain"], True),     # under a mapped path
    (["loyalty.points", "personalEmail.address"], True),
    (["loyalty.points"], False),
    ([], False),
])
def test_attribute_written(paths, written):
    assert DECIDER.mapped_attributes.any(paths) is written


AFTER_CASES = [
    # (id, before, after, identities_changed, attribute_written, expected plans): the identity and
    # attribute triggers look at the statuses after the update; ups in config order, records in
    # merge-policy order
    ("identity trigger: policies realized after, not before", {"A1": 5}, {"B1": NOW}, True, False,
     (plan("mp-a", [("A1", "exited", NOW)], "audience"),
      plan("mp-b", [("B1", "realized", NOW)], "audience", "identity"))),
    ("attribute trigger: policies realized after, not before", {"B1": 5}, {"A1": NOW, "B1": 5}, False, True,
     (plan("mp-a", [("A1", "realized", NOW)], "audience", "attribute"),
      plan("mp-b", [("B1", "realized", 5)], "attribute"))),
    ("exit of the last mapped audience of a policy, unmapped member kept", {"A1": 5, "U1": 3}, {"U1": 3},
     True, True, (plan("mp-a", [("A1", "exited", NOW), ("U1", "realized", 3)], "audience"),)),
    ("attribute write of a profile realized in unmapped audiences only", {"U1": 3, "U2": 4}, {"U1": 3, "U2": 4},
     True, True, ()),
    ("unmapped exit alone exports nothing", {"A1": 5, "U1": 3}, {"A1": 5}, False, False, ()),
    ("ups in config order, realized keep their time", {"U1": 2}, {"A2": NOW, "A1": 7, "U1": 2}, False, False,
     (plan("mp-a", [("A1", "realized", 7), ("U1", "realized", 2), ("A2", "realized", NOW)], "audience"),)),
    ("records in merge-policy order", {}, {"B1": NOW, "A2": NOW}, False, False,
     (plan("mp-a", [("A2", "realized", NOW)], "audience"), plan("mp-b", [("B1", "realized", NOW)], "audience"))),
    ("two exits of one policy in one record", {"A1": 1, "A2": 2, "B1": 3}, {"B1": 3}, False, False,
     (plan("mp-a", [("A1", "exited", NOW), ("A2", "exited", NOW)], "audience"),)),
]


@pytest.mark.parametrize("before,after,ids,attrs,expected", [c[1:] for c in AFTER_CASES],
                         ids=[c[0] for c in AFTER_CASES])
def test_decide_on_statuses_after(before, after, ids, attrs, expected):
    assert DECIDER.decide(before, after, NOW, ids, attrs) == expected


def test_the_exporter_counts_its_records_by_trigger_and_the_exits_they_announce():
    """The ``exports_*`` and ``exits`` metrics: one count per trigger a record lists, one per
    exited entry it carries."""
    from tests.export_helpers import DELOREAN
    from transforms.audiences import AudienceSet
    from transforms.exporter import ProfileExporter
    from transforms.model import ProfileUpdate
    from transforms.profile_state import ProfileState

    config = make_config(audiences=(DELOREAN,))
    exporter = ProfileExporter(config, AudienceSet.from_config(config))
    state = ProfileState()
    updates = [
        ({"vehicle": {"make": "DeLorean"}, "person": {"birthDate": "1985-10-26"}}, {}),   # enters, mapped write
        ({"person": {"name": {"firstName": "John"}}}, {}),                               # mapped write
        ({}, {"email": ("john@acme.com",)}),                                              # identity added
        ({"vehicle": {"make": "Tesla"}}, {}),                                             # exits
    ]
    triggers = [plan.triggers for t, (attributes, ids) in enumerate(updates, start=1)
                for _, plan in exporter.update("p", state, ProfileUpdate("p", t * 1000, None, ids, {}, attributes))]
    assert triggers == [("audience", "attribute"), ("attribute",), ("identity",), ("audience",)]
    assert exporter.counts == {"exports_audience": 2, "exports_attribute": 2, "exports_identity": 1, "exits": 1}
