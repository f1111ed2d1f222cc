import random

import pytest

from transforms.config import MergePolicyConfig
from transforms.merge import MergePolicies, attribute_leaves, merge_identities
from transforms.profile_state import ProfileState

TS = MergePolicyConfig("mp-ts", "timestamp_ordered", default=True)
CRM_FIRST = MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm", "loyalty"))


def views(writes_in_arrival_order, configs=(TS, CRM_FIRST)):
    """Apply ``(timestamp, dataset, attributes)`` writes in order; the view of every policy."""
    policies = MergePolicies(configs)
    state = ProfileState()
    for seq, (ts, dataset, attributes) in enumerate(writes_in_arrival_order, 1):
        policies.record(state.view, state.stamps, state.datasets, attribute_leaves(attributes), dataset, ts, seq)
    return state.views(policies)


def name(first):
    return {"person": {"name": {"firstName": first}}}


CASES = [
    # (id, writes in arrival order, expected timestamp_ordered view, expected crm-first view)
    ("latest wins", [(1, "web", name("A")), (2, "web", name("B"))],
     name("B"), name("B")),
    ("out of order never overwrites newer", [(2, "web", name("B")), (1, "web", name("A"))],
     name("B"), name("B")),
    ("tie goes to later arrival", [(5, "web", name("A")), (5, None, name("B"))],
     name("B"), name("B")),
    ("tie across datasets, later arrival", [(5, "crm", name("A")), (5, "loyalty", name("B"))],
     name("B"), name("A")),
    ("precedence beats newer lower dataset", [(1, "crm", name("C")), (9, "loyalty", name("L")), (10, "web", name("W"))],
     name("W"), name("C")),
    ("unlisted rank below in timestamp order", [(3, "web", name("W3")), (2, None, name("N2"))],
     name("W3"), name("W3")),
    ("unlisted only, out of order", [(3, None, name("N3")), (2, "web", name("W2"))],
     name("N3"), name("N3")),
    ("delete removes the path", [(1, "crm", name("A")), (2, "crm", name(None))],
     {}, {}),
    ("late write older than delete stays deleted", [(2, "crm", name(None)), (1, "crm", name("A"))],
     {}, {}),
    ("delete from D removes only D's value", [(1, "loyalty", name("L")), (2, "crm", name("C")), (3, "crm", name(None))],
     {}, name("L")),
    ("delete of an object deletes its leaves", [(1, "crm", name("A")), (2, "crm", {"person": {"name": None}})],
     {}, {}),
    ("late leaf under a newer deleted object is dropped",
     [(2, "crm", {"person": {"name": None}}), (1, "crm", name("A"))], {}, {}),
    ("newer leaf under an older deleted object shows",
     [(1, "crm", {"person": {"name": None}}), (2, "crm", name("A"))], name("A"), name("A")),
    ("leaf replaces object, then object replaces leaf",
     [(1, None, name("A")), (2, None, {"person": {"name": "X"}}), (3, None, name("B"))],
     name("B"), name("B")),
    ("lower dataset deletes an object, higher keeps its leaf",
     [(1, "crm", name("C")), (2, "loyalty", {"person": {"name": None}})], {}, name("C")),
    ("late leaf above newer leaves keeps them",
     [(3, None, name("B")), (1, None, {"person": {"name": "X"}})], name("B"), name("B")),
    ("late delete above newer leaves keeps them",
     [(1, None, {"person": {"name": {"firstName": "A", "lastName": "L"}}}), (3, None, name("B")),
      (2, None, {"person": {"name": None}})], name("B"), name("B")),
    ("siblings merge, lists are leaves", [(1, None, {"a": {"x": 1}}), (2, None, {"a": {"y": [1, 2]}})],
     {"a": {"x": 1, "y": [1, 2]}}, {"a": {"x": 1, "y": [1, 2]}}),
    ("empty object writes nothing", [(1, None, {"a": {"x": 1}}), (2, None, {"a": {}})],
     {"a": {"x": 1}}, {"a": {"x": 1}}),
    ("a newer delete removes a dataset's leaves under an older, late delete",
     [(1, "loyalty", name("L")), (2, "crm", name("C")), (1, "crm", {"person": {"name": None}}),
      (3, "crm", {"person": {"name": None}})], {}, name("L")),
]


@pytest.mark.parametrize("writes,ts_view,crm_view", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_policies(writes, ts_view, crm_view):
    got = views(writes)
    assert got == {"mp-ts": ts_view, "mp-crm": crm_view}


def test_only_what_the_policies_in_use_need():
    state = ProfileState()
    MergePolicies([TS]).record(state.view, state.stamps, state.datasets, [("person.name.firstName", "A"), ("x", None)], "crm", 1, 1)
    assert (state.view, state.stamps, state.datasets) == (name("A"), {"person.name.firstName": 1, "x": 1}, {})
    state = ProfileState()
    MergePolicies([CRM_FIRST]).record(state.view, state.stamps, state.datasets, [("x", 1)], "web", 2, 1)
    assert (state.view, state.stamps, state.datasets) == ({}, {}, {None: {"x": (2, 1, 1)}})


@pytest.mark.parametrize("writes,changed", [
    ([(1, "A")], True),
    ([(1, "A"), (2, "A")], False),          # same value overwrite
    ([(1, "A"), (0, "B")], False),          # superseded
    ([(1, 1), (2, True)], True),            # equal in Python, not in JSON
    ([(1, None)], False),                   # delete of an absent path
    ([(1, "A"), (2, None)], True),
])
def test_record_reports_view_changes(writes, changed):
    policies = MergePolicies([TS])
    state = ProfileState()
    results = [policies.record(state.view, state.stamps, state.datasets, [("a.b", v)], None, ts, seq) for seq, (ts, v) in enumerate(writes)]
    assert results[-1] is changed


def test_timestamp_policies_share_one_view():
    other = MergePolicyConfig("mp-ts2", "timestamp_ordered")
    got = views([(1, None, name("A"))], configs=(TS, other))
    assert got["mp-ts"] is got["mp-ts2"]


@pytest.mark.parametrize("held,added,removed,changed,after", [
    ({}, {"email": ("a",)}, {}, True, {"email": ("a",)}),
    ({"email": ("a",)}, {"email": ("a",)}, {}, False, {"email": ("a",)}),
    ({"email": ("a",)}, {"email": ("b", "b")}, {}, True, {"email": ("a", "b")}),
    ({"email": ("a", "b")}, {}, {"email": ("a",)}, True, {"email": ("b",)}),
    ({"email": ("a",)}, {}, {"email": ("a",)}, True, {}),
    ({"email": ("a",)}, {}, {"ecid": ("x",)}, False, {"email": ("a",)}),
    ({"email": ("a",)}, {"email": ("b",)}, {"email": ("b",)}, False, {"email": ("a",)}),  # added, then removed
    ({}, {"email": ("a",)}, {"email": ("a",)}, False, {}),
])
def test_identity_union(held, added, removed, changed, after):
    assert merge_identities(held, added, removed) is changed
    assert held == after


def _random_attributes(rng, depth=0):
    """A partial nested attributes object over a few overlapping keys: leaves, nulls, lists,
    empty objects and sub-objects."""
    out = {}
    for key in rng.sample("abcd", rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.35 and depth < 2:
            out[key] = _random_attributes(rng, depth + 1)
        elif roll < 0.5:
            out[key] = None
        elif roll < 0.55:
            out[key] = {}
        elif roll < 0.6:
            out[key] = [rng.randint(0, 2)]
        else:
            out[key] = rng.choice([1, 2, True, "x"])
    return out


@pytest.mark.parametrize("seed", range(40))
def test_write_matches_record_leaf_by_leaf(seed):
    """``write`` (walking the nested update) ends where ``record`` of its leaves does: the same
    view, stamps, written paths and changed paths, in and out of order."""
    rng = random.Random(seed)
    policies = MergePolicies([TS])
    walked, by_leaf = ProfileState(), ProfileState()
    for seq in range(1, 30):
        ts = rng.randint(1, 12) * 10
        attributes = _random_attributes(rng)
        changed_walked, changed_by_leaf = [], []
        leaves = policies.write(walked.view, walked.stamps, walked.datasets, attributes, None, ts, seq, changed_walked)
        expected = attribute_leaves(attributes)
        policies.record(by_leaf.view, by_leaf.stamps, by_leaf.datasets, expected, None, ts, seq, changed_by_leaf)
        assert leaves == [path for path, _ in expected]
        assert sorted(changed_walked) == sorted(changed_by_leaf)
        assert (walked.view, walked.stamps) == (by_leaf.view, by_leaf.stamps)
