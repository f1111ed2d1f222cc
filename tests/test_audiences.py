"""AudienceSet: compilation, inSegment order, upload audiences, per-policy evaluation, times."""
import pytest

from tests import export_helpers
from tests.export_helpers import make_config
from transforms.audiences import AudienceSet, check_audiences
from transforms.config import AudienceDefinition, MergePolicyConfig, UploadSource

DAY = 86_400_000
NOW = 1_714_557_600_000
POLICIES = (MergePolicyConfig("mp-a", "timestamp_ordered", default=True),
            MergePolicyConfig("mp-b", "dataset_precedence", datasets=("crm",)))


def audience(aud_id, rule, policy="mp-a"):
    return export_helpers.audience(aud_id, rule, policy)


def upload(aud_id, path, column="email", namespace="email", policy="mp-a"):
    return AudienceDefinition(id=aud_id, name=aud_id, merge_policy=policy,
                              upload=UploadSource(str(path), column, namespace))


def audience_set(*audiences):
    return AudienceSet.from_config(make_config(audiences=audiences, mapped=(), policies=POLICIES))


@pytest.fixture
def vip_csv(tmp_path):
    path = tmp_path / "vip.csv"
    path.write_text("\ufeffname, email \nJohn, john@acme.com \nNo mail,\nJane,jane@acme.com\nshort\n", encoding="utf-8")
    return path


def test_in_segment_dependencies_come_first():
    auds = audience_set(audience("c", 'inSegment("b") and inSegment("a")', "mp-a"), audience("x", "x = 1", "mp-b"),
                        audience("b", 'inSegment("a")', "mp-a"), audience("a", "n > 1", "mp-a"))
    assert [a.id for a in auds.ordered] == ["a", "b", "c", "x"]
    assert auds.policy_ids == ("mp-a", "mp-b")
    assert auds.evaluate({"mp-a": {"n": 2}}, {}, [], NOW) == frozenset({"a", "b", "c"})
    assert auds.evaluate({"mp-a": {"n": 0}, "mp-b": {"x": 1}}, {}, [], NOW) == frozenset({"x"})


@pytest.mark.parametrize("dirty, members, view, expected", [
    # only the audiences named are evaluated; the others keep being in ``members`` or not, and an
    # audience reading one evaluated reads its new result
    ({"a", "b", "c"}, {"x": 1}, {"n": 2}, {"a", "b", "c", "x"}),
    ({"a", "b", "c"}, {"a": 1, "b": 1, "c": 1}, {"n": 0}, set()),
    ({"x"}, {"a": 1, "b": 1}, {"n": 0}, {"a", "b"}),
    (set(), {"a": 1, "gone": 1}, {"n": 0}, {"a"}),     # a member no longer configured leaves
])
def test_only_the_audiences_named_are_evaluated(dirty, members, view, expected):
    auds = audience_set(audience("c", 'inSegment("b")', "mp-a"), audience("x", "x = 1", "mp-b"),
                        audience("b", 'inSegment("a")', "mp-a"), audience("a", "n > 1", "mp-a"))
    assert auds.evaluate({"mp-a": view, "mp-b": {}}, {}, [], NOW, frozenset(dirty), members) == expected


@pytest.mark.parametrize("audiences, error, config_error", [
    ((audience("a", 'inSegment("b")'), audience("b", 'inSegment("a")')), "inSegment cycle: a -> b -> a",
     "audiences[0].rule: inSegment cycle: a -> b -> a"),
    ((audience("a", 'inSegment("a")'),), "inSegment cycle: a -> a", "audiences[0].rule: inSegment cycle: a -> a"),
    ((audience("a", 'inSegment("b")', "mp-a"), audience("b", "x = 1", "mp-b")),
     "audience 'a' (merge policy 'mp-a'): inSegment of 'b' of another merge policy ('mp-b')",
     "audiences[0].rule: inSegment('b') names an audience of merge policy 'mp-b', not 'mp-a'"),
    ((audience("a", 'inSegment("zz")'),), "audience 'a': inSegment of unknown audience 'zz'",
     "audiences[0].rule: inSegment references unknown audience 'zz'"),
])
def test_bad_references_raise(audiences, error, config_error):
    with pytest.raises(ValueError, match="^" + __import__("re").escape(error) + "$"):
        audience_set(*audiences)
    assert check_audiences(make_config(audiences=audiences, mapped=(), policies=POLICIES)) == [config_error]


def test_each_audience_sees_the_view_of_its_own_policy():
    auds = audience_set(audience("a", 'tier = "gold"', "mp-a"), audience("b", 'tier = "gold"', "mp-b"))
    assert auds.evaluate({"mp-a": {"tier": "gold"}, "mp-b": {"tier": "silver"}}, {}, [], NOW) == {"a"}
    assert auds.evaluate({"mp-b": {"tier": "gold"}}, {}, [], NOW) == {"b"}


def test_upload_membership(vip_csv):
    auds = audience_set(upload("vip", vip_csv), audience("r", 'inSegment("vip") and n = 1'))
    assert auds.uploads["vip"] == frozenset({"john@acme.com", "jane@acme.com"})
    assert auds.evaluate({}, {"email": ("x@y", "john@acme.com")}, [], NOW) == {"vip"}
    assert auds.evaluate({"mp-a": {"n": 1}}, {"email": ("jane@acme.com",)}, [], NOW) == {"vip", "r"}
    assert auds.evaluate({}, {"ecid": ("john@acme.com",)}, [], NOW) == frozenset()
    assert auds.evaluate({}, {"email": (" john@acme.com",)}, [], NOW) == frozenset()
    assert auds.evaluate({}, {}, [], NOW) == frozenset()
    assert [a.id for a in auds.ordered] == ["vip", "r"]


def test_upload_errors(tmp_path, vip_csv):
    missing = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match=f"^{missing}: cannot read upload file: No such file or directory$"):
        audience_set(upload("vip", missing)).uploads
    with pytest.raises(ValueError, match=rf"^{vip_csv}: no column 'mail' \(columns: name, email\)$"):
        audience_set(upload("vip", vip_csv, column="mail")).uploads
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"email\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=f"^{binary}: cannot read upload file"):
        audience_set(upload("vip", binary)).uploads
    config = make_config(audiences=(upload("vip", missing), audience("r", "a = ")), mapped=(), policies=POLICIES)
    assert check_audiences(config) == [
        f"audiences[0].upload: {missing}: cannot read upload file: No such file or directory",
        "audiences[1].rule: unexpected end of rule at column 5"]


@pytest.mark.parametrize("rules, retention", [
    (["a = 1"], 0),
    (["a = 1", "xEvent[timestamp occurs <= 2 days before now].exists()",
      "xEvent[timestamp occurs < 7 days before now].count() > 2"], 7 * DAY),
    (["xEvent[timestamp occurs <= 2 days before now].exists()", "xEvent.exists()"], None),
])
def test_event_retention(rules, retention):
    auds = audience_set(*(audience(f"r{i}", r) for i, r in enumerate(rules)))
    assert auds.event_retention_ms == retention


def test_events_and_next_change():
    auds = audience_set(audience("week", "xEvent[timestamp occurs <= 7 days before now].exists()"),
                        audience("day", "xEvent[timestamp occurs < 1 day before now].exists()", "mp-b"),
                        audience("plain", "a = 1"))
    events = [{"timestamp": NOW - 2 * DAY}, {"timestamp": NOW - DAY // 2}]
    assert auds.evaluate({"mp-a": {"a": 1}}, {}, events, NOW) == {"week", "day", "plain"}
    assert auds.next_change_ms(events, NOW) == NOW + DAY // 2          # leaves the 1-day window
    assert auds.evaluate({}, {}, events, NOW + DAY // 2) == {"week"}
    assert auds.next_change_ms(events, NOW + DAY // 2) == NOW + 5 * DAY + 1
    assert auds.next_change_ms([], NOW) is None
    assert audience_set(audience("plain", "a = 1")).next_change_ms(events, NOW) is None


def test_uploads_are_read_on_first_use_and_validation_reads_only_the_header(tmp_path):
    """The launcher plans with an ``AudienceSet`` and validates the config; neither reads an
    upload's values (workers do, in ``setup``), so its contents never travel in the pipeline."""
    missing = tmp_path / "later.csv"
    auds = audience_set(upload("vip", missing), audience("r", "n = 1"))
    assert auds.event_retention_ms == 0 and [a.id for a in auds.ordered] == ["vip", "r"]
    with pytest.raises(ValueError, match="cannot read upload file"):
        auds.evaluate({}, {}, [], NOW)
    body_unreadable = tmp_path / "big.csv"
    body_unreadable.write_bytes(b"email\n" + b"ok@x.io\n" * 20_000 + b"\xff\xfe\n")  # past the first read
    config = make_config(audiences=(upload("vip", body_unreadable),), mapped=(), policies=POLICIES)
    assert check_audiences(config) == []
    with pytest.raises(ValueError, match=f"^{body_unreadable}: cannot read upload file"):
        AudienceSet.from_config(config).uploads
