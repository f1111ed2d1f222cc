"""The vectorized evaluator: type care, upload membership, and parity with the per-profile one."""
import datetime as dt
import math
import random

import pyarrow as pa
import pytest

from tests import test_rules
from tests.export_helpers import audience, make_config
from transforms.audiences import AudienceSet
from transforms.config import AudienceDefinition, UploadSource
from transforms.event_join import EventPlan
from transforms.rules import compile_rule
from transforms.vectorized import identity_membership

UTC = dt.timezone.utc
DAY = 86_400_000
NOW = test_rules.NOW


def strip_nulls(value):
    """A snapshot row as a streaming view: null fields are absent keys."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def event_aggregates(rules, batch, events_by_profile, now=NOW, max_events=10 ** 9):
    """What the backfill's event join (``transforms.event_join``) gives the rules for the
    batch's profiles, from the events as an Arrow batch."""
    if not events_by_profile:
        return None
    plan = EventPlan(rules, now, max_events)
    rows = [{"profileId": pid, **e} for pid, evs in events_by_profile.items() for e in evs]
    table, dead = plan.contributions(pa.RecordBatch.from_pylist(rows), "events", 0)
    assert dead == []
    return plan.lookup(plan.aggregate([table]), batch.column("profileId"))


def seen_at(events, now=NOW):
    """The events a backfill at ``now`` sees: none stamped after it."""
    return [e for e in events if e["timestamp"] <= now]


def per_profile(rule, batch, now=NOW, segments=None, events_by_profile=None):
    events_by_profile = events_by_profile or {}
    segments = segments or {}
    seg_rows = {aid: arr.to_pylist() for aid, arr in segments.items()}
    return [rule.evaluate(strip_nulls(row), seen_at(events_by_profile.get(row.get("profileId"), ()), now), now,
                          {aid: rows[i] for aid, rows in seg_rows.items()})
            for i, row in enumerate(batch.to_pylist())]


def assert_parity(rule_text, batch, now=NOW, segments=None, events_by_profile=None):
    rule = compile_rule("a", rule_text)
    got = rule.vectorized(batch, now, segments or {}, event_aggregates([rule], batch, events_by_profile, now))
    assert got.type == pa.bool_() and got.null_count == 0 and len(got) == batch.num_rows
    assert got.to_pylist() == per_profile(rule, batch, now, segments, events_by_profile), rule_text
    return got.to_pylist()


# ---- the per-profile tables, on a batch holding the same values ------------------------------

def view_batch():
    view = {k: v for k, v in test_rules.VIEW.items() if k != "nul"}
    view["dec"] = float(view["dec"])   # decimals are exact per profile only (module docstring)
    return pa.RecordBatch.from_pylist([view, {}, {"s": None, "person": {"name": None}}])


@pytest.mark.parametrize("rule", test_rules.TRUE_RULES + test_rules.FALSE_RULES
                         + [f.format(p=p) for f in test_rules.ABSENT_FORMS for p in ("missing", "person.name.lastName", "s.deeper")])
def test_rule_tables_agree(rule):
    result = assert_parity(rule, view_batch())
    if rule in test_rules.TRUE_RULES and "isNull" not in rule and not rule.startswith("not"):
        assert result[0] is True


# ---- type care ------------------------------------------------------------------------------

def typed_batch():
    ts = [dt.datetime(2024, 4, 30, 23, 59, 59, 999999, tzinfo=UTC), dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC), None]
    cols = {
        "d32": pa.array([dt.date(1985, 10, 26), dt.date(1969, 12, 31), None], pa.date32()),
        "d64": pa.array([dt.date(1985, 10, 26), dt.date(1969, 12, 31), None], pa.date64()),
        "dtext": pa.array(["1985-10-26", "1985-10-26T23:00:00+05:00", "26/10/1985"]),
        "big": pa.array(["1985-10-27", None, "x"], pa.large_string()),
        "i8": pa.array([1, -2, None], pa.int8()),
        "u32": pa.array([1, 2, None], pa.uint32()),
        "u64": pa.array([1, 2 ** 64 - 1, None], pa.uint64()),
        "f32": pa.array([0.5, float("nan"), None], pa.float32()),
        "f16": pa.array([0.5, 2.0, None], pa.float16()),
        "flag": pa.array([True, False, None]),
        "dict": pa.array(["gold", "silver", None]).dictionary_encode(),
        "nothing": pa.nulls(3),
        "lst": pa.array([[1], [], None], pa.list_(pa.int64())),
        "bin": pa.array([b"x", b"", None]),
        "seen": pa.array(["2024-05-01T09:00:00Z", "2024-05-01T12:00:00+02:00", "1714557600000"]),
    }
    for unit in ("s", "ms", "us", "ns"):
        cols[f"ts_{unit}"] = pa.array(ts, pa.timestamp("us", tz="UTC")).cast(pa.timestamp(unit, tz="UTC"), safe=False)
    cols["ts_naive"] = pa.array([t and t.replace(tzinfo=None) for t in ts], pa.timestamp("ms"))
    cols["ts_ny"] = pa.array(ts, pa.timestamp("ms", tz="America/New_York"))
    return pa.RecordBatch.from_pydict(cols)


@pytest.mark.parametrize("rule, expected", [
    ('d32 = date("1985-10-26")', [True, False, False]), ('d64 < date("1970-01-01")', [False, True, False]),
    ('dtext = date("1985-10-26")', [True, True, False]), ('big > date("1985-10-26")', [True, False, False]),
    ('dtext != date("2000-01-01")', [True, True, False]),
    ('ts_ms = date("2024-04-30")', [True, False, False]), ('ts_ms < date("1970-01-01")', [False, True, False]),
    ('ts_us >= date("2024-04-30")', [True, False, False]), ('ts_ns = date("1969-12-31")', [False, True, False]),
    ('ts_s = date("2024-04-30")', [True, False, False]), ('ts_ny = date("2024-04-30")', [True, False, False]),
    ('ts_naive = date("2024-04-30")', [True, False, False]),
    ("ts_ms < now", [True, True, False]), ("ts_us > now", [False, False, False]), ("ts_ns <= now", [True, True, False]),
    ("d32 < now", [True, True, False]), ("d64 < now", [True, True, False]),
    ("seen < now", [True, False, False]), ("seen = now", [False, True, True]), ("flag < now", [False, False, False]),
    ("i8 = 1", [True, False, False]), ("i8 < 0.5", [False, True, False]), ("u32 > -1", [True, True, False]),
    ("u64 > -1", [True, True, False]), ("u64 != 1", [False, True, False]), ("i8 < 99999999999999999999", [True, True, False]),
    ("f32 = 0.5", [True, False, False]), ("f32 != 0.5", [False, True, False]), ("f32 notIn [1]", [True, True, False]),
    ("f16 < 1", [True, False, False]), ("f16 in [2]", [False, True, False]),
    ('i8 = "1"', [False] * 3), ('i8 != "1"', [False] * 3), ("dtext = 1", [False] * 3), ("dtext != 1", [False] * 3),
    ("flag = true", [True, False, False]), ("flag != true", [False, True, False]), ("flag = 1", [False] * 3),
    ('dict = "gold"', [True, False, False]), ('dict.startsWith("S", false)', [False, True, False]),
    ('dict notIn ["gold"]', [False, True, False]),
    ("nothing.isNull()", [True] * 3), ("nothing = 1", [False] * 3), ("nothing.x.isNull()", [True] * 3),
    ("lst.isNotNull()", [True, True, False]), ("lst = 1", [False] * 3), ('bin = "x"', [False] * 3),
    ('bin.startsWith("x")', [False] * 3), ('lst.x.isNull()', [True] * 3), ('i8.x = 1', [False] * 3),
])
def test_types(rule, expected):
    assert assert_parity(rule, typed_batch()) == expected


def test_sliced_and_empty_batches():
    batch = pa.RecordBatch.from_pylist([{"p": {"a": i, "s": f"x{i}"}} if i % 3 else {"p": None} for i in range(10)])
    for part in (batch.slice(4, 5), batch.slice(0, 0)):
        for rule in ("p.a > 5", 'p.s.matches("x[0-9]")', "p.isNull()", 'p.s.equals("X7", false)'):
            assert_parity(rule, part)


# ---- upload membership ----------------------------------------------------------------------

IDENTITY_MAP = pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string())])))


def identity_batch():
    maps = [[("email", [{"id": "a@x"}, {"id": "b@x"}]), ("ecid", [{"id": "1"}])],
            [("ecid", [{"id": "a@x"}])],
            None,
            [("email", [])],
            [("email", [None, {"id": None}, {"id": "c@x"}])],
            [("email", None), ("email", [{"id": "b@x"}])],
            []]
    return pa.RecordBatch.from_pydict({"profileId": [f"p{i}" for i in range(len(maps))],
                                       "identityMap": pa.array(maps, IDENTITY_MAP)})


def test_identity_membership():
    batch, values = identity_batch(), pa.array(["b@x", "c@x"])
    assert identity_membership(batch, "email", values).to_pylist() == [True, False, False, False, True, True, False]
    assert identity_membership(batch, "ecid", pa.array(["1"])).to_pylist() == [True] + [False] * 6
    assert identity_membership(batch.slice(3, 3), "email", values).to_pylist() == [False, True, True]
    assert identity_membership(batch.drop_columns(["identityMap"]), "email", values).to_pylist() == [False] * 7


def test_evaluate_batch_in_segment_order_and_uploads(tmp_path):
    csv = tmp_path / "vip.csv"
    csv.write_text("email\nb@x\n c@x \n")
    vip = AudienceDefinition(id="vip", name="vip", merge_policy="mp-default", upload=UploadSource(str(csv), "email", "email"))
    auds = AudienceSet.from_config(make_config(audiences=(
        audience("vip-gold", 'inSegment("vip") and tier = "gold"'), vip, audience("gold", 'tier = "gold"'),
        audience("busy", "xEvent[timestamp occurs <= 1 day before now].count() >= 2")), mapped=()))
    batch = identity_batch()
    batch = batch.append_column("tier", pa.array(["gold", "gold", None, "x", "gold", "silver", "gold"]))
    events = {"p0": [{"timestamp": NOW}, {"timestamp": NOW - DAY}], "p1": [{"timestamp": NOW}], "zz": []}
    got = {k: v.to_pylist() for k, v in auds.evaluate_batch(
        batch, NOW, event_aggregates(auds.rules.values(), batch, events)).items()}
    assert list(got) == ["vip", "vip-gold", "gold", "busy"]
    assert got["vip"] == [True, False, False, False, True, True, False]
    assert got["vip-gold"] == [True, False, False, False, True, False, False]
    assert got["busy"] == [True] + [False] * 6
    assert auds.evaluate_batch(batch, NOW)["busy"] == pa.array([False] * 7)
    for i, row in enumerate(batch.to_pylist()):  # the streaming evaluator agrees, row by row
        identities = {ns: tuple(e["id"] for e in ids or () if e and e["id"]) for ns, ids in row["identityMap"] or ()}
        members = auds.evaluate({"mp-default": strip_nulls({"tier": row["tier"]})}, identities,
                                seen_at(events.get(row["profileId"], ())), NOW)
        assert members == {aid for aid, rows in got.items() if rows[i]}


# ---- property test: 10k generated profiles, every rule form, both evaluators ------------------

SCHEMA = pa.schema([
    ("profileId", pa.string()),
    ("person", pa.struct([
        ("name", pa.struct([("firstName", pa.string()), ("lastName", pa.string())])),
        ("birthDate", pa.date32()), ("birthText", pa.string()), ("age", pa.int64()), ("score", pa.float64()),
        ("vip", pa.bool_()), ("lastSeen", pa.timestamp("ms", tz="UTC")), ("seenText", pa.string())])),
    ("loyalty", pa.struct([("points", pa.int32()), ("tier", pa.dictionary(pa.int8(), pa.string()))])),
    ("city", pa.string()), ("visits", pa.int64()), ("mixed", pa.string()),
])
NAMES = ["John", "john", "JOHN", "Jöhn", "Émile", "", "Ann-Marie", "joHn smith", "Zoë", "İlker", "Doe", "dOE"]


def generate(n, seed=20240501):
    rnd = random.Random(seed)

    def maybe(value, p=0.15):
        return None if rnd.random() < p else value

    def date_value():
        return dt.date(1950, 1, 1) + dt.timedelta(days=rnd.randrange(60 * 365)) if rnd.random() > 0.1 else dt.date(1985, 6, 15)

    def seen_ms():
        return NOW + rnd.randrange(-30 * DAY, 5 * DAY) if rnd.random() > 0.05 else NOW

    def text_date():
        d = date_value()
        return rnd.choice([d.isoformat(), f"{d.isoformat()}T10:00:00Z", d.strftime("%d/%m/%Y"), "garbage"])

    def seen_text():
        t = dt.datetime.fromtimestamp(seen_ms() / 1000, UTC)
        return rnd.choice([t.isoformat().replace("+00:00", "Z"), t.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat(),
                           str(seen_ms()), "soon"])

    rows = []
    for i in range(n):
        person = maybe({
            "name": maybe({"firstName": maybe(rnd.choice(NAMES)), "lastName": maybe(rnd.choice(NAMES))}),
            "birthDate": maybe(date_value()), "birthText": maybe(text_date()), "age": maybe(rnd.randrange(0, 100)),
            "score": maybe(rnd.choice([rnd.uniform(0, 100), 50.0, math.nan])), "vip": maybe(rnd.random() < 0.3),
            "lastSeen": maybe(dt.datetime.fromtimestamp(seen_ms() / 1000, UTC)), "seenText": maybe(seen_text())}, 0.1)
        loyalty = maybe({"points": maybe(rnd.randrange(0, 6)), "tier": maybe(rnd.choice(["gold", "silver", "Gold"]))}, 0.2)
        rows.append({"profileId": f"p-{i}", "person": person, "loyalty": loyalty,
                     "city": maybe(rnd.choice(["Paris", "Berlin", "Rome", "paris"])), "visits": maybe(rnd.randrange(15)),
                     "mixed": maybe(rnd.choice(["5", "five", "2024-01-01"]))})
    batch = pa.RecordBatch.from_pylist(rows, schema=SCHEMA)
    kinds = ["purchase", "view", "Purchase"]
    events = {f"p-{i}": [{"timestamp": NOW - rnd.choice([rnd.randrange(-DAY, 10 * DAY), 7 * DAY, 7 * DAY + 1, 0]),
                          "eventType": rnd.choice(kinds), "price": rnd.choice([rnd.uniform(0, 80), None, 9])}
                         for _ in range(rnd.randrange(1, 5))]
              for i in range(0, n, 3)}
    return batch, events


PROPERTY_RULES = [
    'person.name.firstName = "John"', 'person.name.firstName != "John"', 'person.name.lastName < "M"',
    'person.name.lastName >= "john"', "person.age < 30", "person.age <= 30.5", "person.score > 50",
    "person.score >= 50 and person.age > 20", "person.score = 50", "person.score != 50", "person.vip = true",
    "person.vip != true", 'person.birthDate < date("1990-01-01")', 'person.birthDate != date("1985-06-15")',
    'person.birthText >= date("1990-01-01")', 'person.birthText = date("1985-06-15")',
    'person.lastSeen <= date("2024-04-20")', "person.lastSeen > now", "person.lastSeen = now", "person.seenText < now",
    "person.seenText >= now", "person.birthDate < now", "person.birthText < now", "person.age < now",
    'city in ["Paris", "Berlin"]', 'city notIn ["Paris", "Berlin"]', 'loyalty.points in [1, 2, 3.0, "4"]',
    "loyalty.points notIn [1, 2]", 'person.birthDate in [date("1985-06-15"), date("1990-01-01")]',
    'mixed in [5, "five", date("2024-01-01")]', 'mixed notIn [date("2024-01-01"), "five"]',
    'person.name.firstName.startsWith("J")', 'person.name.firstName.endsWith("n")',
    'person.name.firstName.contains("oh")', 'person.name.firstName.matches("[A-Z][a-z]+")',
    'person.name.firstName.matches("\\\\w+")', 'person.name.firstName.equals("john", false)',
    'person.name.lastName.startsWith("d", false)', 'person.name.firstName.contains("İ", false)',
    'person.name.firstName.equals("İLKER", false)', 'loyalty.tier.equals("GOLD", false)', 'loyalty.tier = "gold"',
    "person.name.isNull()", "person.name.firstName.isNotNull()", "person.isNull()", "missing.path.isNull()",
    "nocolumn = 1", "person.nofield != 1", "not (person.age > 40 or city = \"Paris\")", "mixed = 5", 'person.age = "5"',
    'person.seenText.contains("T") and not person.vip = false', "visits > 3 and visits < 10 or visits = 0",
    'loyalty.tier = "gold" and inSegment("seg-young")', 'not inSegment("seg-young") and not inSegment("nope")',
    'xEvent[eventType = "purchase" and timestamp occurs <= 7 days before now].count() >= 2',
    'xEvent[eventType.equals("purchase", false) and timestamp occurs < 7 days before now].exists()',
    "xEvent[timestamp occurs > 7 days before now].exists() or person.vip = true",
    "xEvent[timestamp occurs >= 1 day before now].sum(price) > 40", "not xEvent.exists()",
]

CONSTANT = {"nocolumn = 1", "mixed = 5", 'person.age = "5"', "missing.path.isNull()", "person.nofield != 1"}


def test_property_parity_on_10k_profiles():
    batch, events = generate(10_000)
    young = compile_rule("seg-young", "person.age < 25")
    segments = {"seg-young": young.vectorized(batch, NOW, {})}
    assert len(PROPERTY_RULES) >= 25
    views = [strip_nulls(row) for row in batch.to_pylist()]
    seg_rows = segments["seg-young"].to_pylist()
    for text in PROPERTY_RULES:
        rule = compile_rule("a", text)
        got = rule.vectorized(batch, NOW, segments, event_aggregates([rule], batch, events))
        assert got.null_count == 0
        expected = [rule.evaluate(view, seen_at(events.get(view["profileId"], ())), NOW, {"seg-young": seg})
                    for view, seg in zip(views, seg_rows)]
        assert got.to_pylist() == expected, text
        assert (0 < sum(expected) < len(expected)) != (text in CONSTANT), text  # the data exercises the rule
