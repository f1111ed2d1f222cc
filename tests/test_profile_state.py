"""``ProfileState.apply`` and ``prune_events``: one update on a profile's state, literal cases.

Expectations come from the documented rules: each leaf of ``attributes`` is a write (a ``null``
too, same value included); merge policies decide the views; identities are a union with removals,
where adding an id already held is no change; an event joins the history in event-time order
(its own ``timestamp``, else the update's) when some rule reads events.
"""
import pytest

from transforms.config import MergePolicyConfig
from transforms.merge import MergePolicies
from transforms.model import ProfileUpdate
from transforms.profile_state import ProfileState

POLICIES = MergePolicies([MergePolicyConfig("mp-ts", "timestamp_ordered", default=True),
                          MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm",))])


def u(t, attributes=None, dataset=None, ids=None, removals=None, event=None):
    return ProfileUpdate("p", t, dataset, ids or {}, removals or {}, attributes or {}, event)


def first(name):
    return {"person": {"name": {"firstName": name}}}


def both(view):
    return {"mp-ts": view, "mp-crm": view}


ATTRIBUTE_CASES = [
    # (id, earlier updates, the update, the paths it writes, those that changed a view, those that did not,
    #  views after)
    ("nested leaves are writes, a null too", [],
     u(10, {"person": {"name": {"firstName": "J", "lastName": None}}, "tags": ["a", "b"]}),
     ["person.name.firstName", "person.name.lastName", "tags"],
     {"person.name.firstName", "tags"}, set(),
     both({"person": {"name": {"firstName": "J"}}, "tags": ["a", "b"]})),
    ("the same value again is a write that changes no view", [u(10, first("J"))], u(20, first("J")),
     ["person.name.firstName"], set(), {"person.name.firstName"}, both(first("J"))),
    ("an older write arriving late is a write that overwrites nothing", [u(20, first("New"))], u(10, first("Old")),
     ["person.name.firstName"], set(), {"person.name.firstName"}, both(first("New"))),
    ("a tie goes to the later arrival", [u(10, first("A"), "web")], u(10, first("B"), "other"),
     ["person.name.firstName"], {"person.name.firstName"}, set(), both(first("B"))),
    ("a null deletes the path and everything under it", [u(10, first("J"))], u(20, {"person": None}),
     ["person"], {"person"}, set(), both({})),
    ("a lower-ranked newer write shows only under timestamp order", [u(10, first("C"), "crm")],
     u(20, first("W"), "web"),
     ["person.name.firstName"], {"person.name.firstName"}, set(),
     {"mp-ts": first("W"), "mp-crm": first("C")}),
    ("a listed dataset's null lets a lower value show through", [u(10, first("W"), "web"), u(20, first("C"), "crm")],
     u(30, first(None), "crm"),
     ["person.name.firstName"], {"person.name.firstName"}, set(),
     {"mp-ts": {}, "mp-crm": first("W")}),
    ("an empty object writes nothing", [u(10, first("J"))], u(20, {"person": {}}), [], set(), set(),
     both(first("J"))),
]


@pytest.mark.parametrize("earlier,update,writes,changed,unchanged,views",
                         [c[1:] for c in ATTRIBUTE_CASES], ids=[c[0] for c in ATTRIBUTE_CASES])
def test_attribute_writes(earlier, update, writes, changed, unchanged, views):
    state = ProfileState()
    for e in earlier:
        state.apply(e, POLICIES, False)
    got_writes, got_changed, identities_changed, event_kept = state.apply(update, POLICIES, False)
    assert got_writes == writes
    assert changed <= set(got_changed) and not unchanged & set(got_changed)
    assert (identities_changed, event_kept) == (False, False)
    assert state.views(POLICIES) == views


IDENTITY_CASES = [
    # (id, identities held, added, removed, changed, identities after)
    ("a new namespace", {"email": ("a",)}, {"ecid": ("e",)}, {}, True, {"email": ("a",), "ecid": ("e",)}),
    ("a new id appended, duplicates once", {"email": ("a",)}, {"email": ("b", "a", "b")}, {}, True,
     {"email": ("a", "b")}),
    ("an id already held is no change", {"email": ("a",)}, {"email": ("a",)}, {}, False, {"email": ("a",)}),
    ("a removal", {"email": ("a", "b")}, {}, {"email": ("a",)}, True, {"email": ("b",)}),
    ("the last id of a namespace removed", {"email": ("a",), "ecid": ("e",)}, {}, {"email": ("a",)}, True,
     {"ecid": ("e",)}),
    ("removing an id not held is no change", {"email": ("a",)}, {}, {"email": ("z",), "ecid": ("a",)}, False,
     {"email": ("a",)}),
    ("added and removed by one update is no change", {"email": ("a",)}, {"email": ("b",)}, {"email": ("b",)},
     False, {"email": ("a",)}),
    ("added while another is removed", {"email": ("a",)}, {"email": ("b",)}, {"email": ("a",)}, True,
     {"email": ("b",)}),
]


@pytest.mark.parametrize("held,added,removed,changed,after", [c[1:] for c in IDENTITY_CASES],
                         ids=[c[0] for c in IDENTITY_CASES])
def test_identities(held, added, removed, changed, after):
    state = ProfileState(identities=dict(held))
    _, _, identities_changed, _ = state.apply(u(10, ids=added, removals=removed), POLICIES, False)
    assert identities_changed is changed
    assert state.identities == after
    assert [list(ids) for ids in state.identities.values()] == [list(ids) for ids in after.values()]  # order


def test_events_join_the_history_in_event_time_order():
    state = ProfileState()
    kept = [state.apply(update, POLICIES, True)[3] for update in (
        u(100, event={"eventType": "a"}),                               # the update's time
        u(110, event={"eventType": "b", "timestamp": 50}),              # its own, older
        u(120, event={"eventType": "c", "timestamp": 100}),             # a tie: after the earlier arrival
        u(130, {"x": 1}))]                                              # no event
    assert kept == [True, True, True, False]
    assert state.events == [{"eventType": "b", "timestamp": 50}, {"eventType": "a", "timestamp": 100},
                            {"eventType": "c", "timestamp": 100}]


def test_events_are_not_kept_when_no_rule_reads_them():
    state = ProfileState()
    assert state.apply(u(100, event={"eventType": "a"}), POLICIES, False)[3] is False
    assert state.events == []


@pytest.mark.parametrize("now,retention,max_events,left", [
    (100, None, 10, [10, 50, 90, 100]),          # no window: all kept
    (100, 50, 10, [50, 90, 100]),                # older than now - 50 dropped; at the bound kept
    (100, 50, 2, [90, 100]),                     # then the oldest beyond the bound
    (100, None, 1, [100]),
    (200, 50, 10, []),
])
def test_prune_events(now, retention, max_events, left):
    state = ProfileState(events=[{"timestamp": t} for t in (10, 50, 90, 100)])
    state.prune_events(now, retention, max_events)
    assert [e["timestamp"] for e in state.events] == left
