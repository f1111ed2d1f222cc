"""The rule language: parsing, errors, per-profile semantics, windows and next_change_ms."""
import datetime as dt
import pickle
from decimal import Decimal

import pytest

from transforms.rules import RuleError, compile_rule

UTC = dt.timezone.utc
DAY, HOUR, MINUTE = 86_400_000, 3_600_000, 60_000
NOW = 1_714_557_600_000  # 2024-05-01T10:00:00Z

VIEW = {
    "s": "Hello", "n": 5, "f": 2.5, "b": True, "no": False, "dec": Decimal("1.5"),
    "d": dt.date(1985, 10, 26), "dt": dt.datetime(2024, 1, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2))),
    "ds": "1985-10-26", "dts": "2024-01-31T10:00:00Z", "bad": "not a date", "ms": NOW - 1, "nul": None,
    "lst": [1, 2], "person": {"name": {"firstName": "John", "lastName": None}}, "uni": "ÉCOLE",
}


def ev(rule, view=VIEW, events=(), now=NOW, segments=None):
    return compile_rule("a", rule).evaluate(view, events, now, segments or {})


TRUE_RULES = [
    # strings
    's = "Hello"', 's != "hello"', 's < "Hellp"', 's <= "Hello"', 's > "Hell"', 's >= "Hello"',
    'person.name.firstName = "John"', '"John" = person.name.firstName', '"Z" > s',
    # numbers: int, float, decimal, across int/float
    'n = 5', 'n = 5.0', 'n != 4', 'n < 5.5', 'n <= 5', 'n > -1', 'n >= 5', 'f = 2.5', 'f < 3',
    'dec > 1', 'dec = 1.5', 'n = 5e0',
    # booleans
    'b = true', 'b != false', 'no = false', 'true = b',
    # dates: date, datetime (UTC date), strings with a date prefix
    'd = date("1985-10-26")', 'd < date("1990-01-01")', 'd >= date("1985-10-26")', 'd != date("1985-10-27")',
    'ds = date("1985-10-26")', 'ds < date("1985-10-27")', 'dts = date("2024-01-31")', 'dts > date("2024-01-30")',
    'dt = date("2024-02-01")', 'dt > date("2024-01-31")',
    # now: epoch ms, dates, datetimes, ISO strings
    'ms < now', 'ms <= now', 'ms != now', 'd < now', 'ds < now', 'dts < now', 'dt < now', 'now > ms',
    # lists
    's in ["a", "Hello"]', 'n in [1, 5]', 'n in ["5", 5]', 'd in [date("1985-10-26")]', 'b in [true]',
    's notIn ["a", "b"]', 'n notIn [1, 2]', 'ds notIn [date("2000-01-01")]', 'n notIn ["x", 6]',
    # string functions
    's.startsWith("He")', 's.endsWith("llo")', 's.contains("ell")', 's.matches("H.*o")', 's.matches("[A-Z][a-z]+")',
    's.equals("Hello")', 's.equals("HELLO", false)', 's.equals("Hello", true)', 's.startsWith("he", false)',
    's.endsWith("LLO", false)', 's.contains("ELL", false)', 'uni.equals("école", false)',
    # null tests
    'missing.isNull()', 'nul.isNull()', 'person.name.lastName.isNull()', 'person.name.firstName.isNotNull()',
    's.x.isNull()', 'person.isNotNull()', 'lst.isNotNull()',
    # logic and precedence
    'n = 5 and s = "Hello"', 'n = 4 or s = "Hello"', 'not n = 4', 'not (n = 4 or s = "x")',
    'n = 4 and s = "x" or b = true', 'n = 4 or s = "Hello" and b = true', 'not not n = 5',
    'n = 5 and (s = "x" or s = "Hello")',
]

FALSE_RULES = [
    's = "hello"', 's != "Hello"', 's > "Hello"', 's = 5', 's != 5', 's < 5', 'n = "5"', 'n != "5"',
    'b = 1', 'b != 1', 'n = true', 'n != true', 'f > 2.5', 'n < 5', 'dec > 1.5',
    'bad = date("2024-01-01")', 'bad != date("2024-01-01")', 'n = date("2024-01-01")', 'b < now', 'bad < now',
    'd > now', 'lst = 1', 'lst != 1', 'person = "x"', 'person != "x"',
    's in ["a", "b"]', 's notIn ["Hello"]', 'n in [1, 2]', 'n notIn [5]', 's notIn [1, 2]', 'n in ["5"]',
    'b notIn [true]', 's.startsWith("he")', 's.endsWith("LLO")', 's.contains("x")', 's.matches("Hell")',
    's.matches("ello")', 's.equals("HELLO")', 'n.startsWith("5")', 'n.matches(".*")', 'd.contains("1985")',
    'person.isNull()', 's.isNull()', 'missing.isNotNull()', 'nul.isNotNull()', 'person.name.lastName.isNotNull()',
    'n = 5 and s = "x"', 'not n = 5', 'n = 4 or s = "x"',
]


@pytest.mark.parametrize("rule", TRUE_RULES)
def test_true_rules(rule):
    assert ev(rule) is True


@pytest.mark.parametrize("rule", FALSE_RULES)
def test_false_rules(rule):
    assert ev(rule) is False


ABSENT_FORMS = ['{p} = "x"', '{p} != "x"', '{p} < "x"', '{p} <= 5', '{p} > 5', '{p} >= 5.5', '{p} = true',
                '{p} != false', '{p} = date("2024-01-01")', '{p} != date("2024-01-01")', '{p} < now',
                '{p} != now', '{p} in ["x", 1]', '{p} notIn ["x", 1]', '{p}.startsWith("x")',
                '{p}.endsWith("x")', '{p}.contains("")', '{p}.matches(".*")', '{p}.equals("x", false)',
                '{p}.isNotNull()']


@pytest.mark.parametrize("form", ABSENT_FORMS)
@pytest.mark.parametrize("path", ["missing", "nul", "person.name.lastName", "person.middle.name", "s.deeper"])
def test_absent_and_null_compare_false(form, path):
    assert ev(form.format(p=path)) is False
    assert ev(f"not {form.format(p=path)}") is True
    assert ev(f"{path}.isNull()") is True


def test_literals_escapes_and_numbers():
    view = {"q": 'say "hi"\n\\ é/', "neg": -3, "big": 1e21, "quote": "it's"}
    assert ev(r'q = "say \"hi\"\n\\ \u00e9\/"', view)
    assert ev("quote = 'it\\'s'", view)
    assert ev('neg < -2.5 and neg = -3 and big > 1E20', view)
    assert ev('big >= 1e+21', view)


@pytest.mark.parametrize("rule, error", [
    ('vehicle.make = "DeLorean" adn x = 1', "unexpected token 'adn' at column 27"),
    ("(a = 1", "expected ')' at column 7"),
    ("(a = 1 or (b = 2)", "expected ')' at column 18"),
    ("a.foo()", "unknown function 'foo' at column 3"),
    ("foo(1)", "unknown function 'foo' at column 1"),
    ("xEvent.foo() > 1", "unknown function 'foo' at column 8"),
    ('x = "abc', "unterminated string at column 5"),
    ('x = "abc\\', "unterminated string at column 5"),
    ('x = "a\\qb"', "invalid escape '\\q' at column 7"),
    ('x < date("2024-13-01")', "invalid date '2024-13-01' at column 10"),
    ('x < date("2024-1-01")', "invalid date '2024-1-01' at column 10"),
    ('x < date(5)', "expected a string at column 10"),
    ('x.matches("(")', "invalid regex '(' (missing ), unterminated subpattern) at column 11"),
    ("", "unexpected end of rule at column 1"),
    ("a = ", "unexpected end of rule at column 5"),
    ("a = b", "unexpected token 'b' at column 5"),
    ("a", "unexpected end of rule at column 2"),
    ("a == 1", "unexpected token '=' at column 4"),
    ("a = 1 #", "unexpected character '#' at column 7"),
    ("a < true", "booleans compare only with '=' or '!=', not '<' at column 5"),
    ("a in [1, ]", "unexpected token ']' at column 10"),
    ("a in 1", "expected '[' at column 6"),
    ('a.equals("x", 1)', "expected true or false at column 15"),
    ("timestamp occurs <= 7 days before now", "'occurs' is only allowed inside xEvent[...] at column 11"),
    ("xEvent[timestamp occurs <= 7 weeks before now].exists()", "expected minutes, hours or days at column 30"),
    ("xEvent[timestamp occurs = 7 days before now].exists()", "expected '<', '<=', '>' or '>=' at column 25"),
    ("xEvent[timestamp occurs <= 1.5 days before now].exists()", "expected a whole number at column 28"),
    ("xEvent[timestamp occurs <= 7 days after now].exists()", "expected 'before' at column 35"),
    ('xEvent[inSegment("a")].exists()', "'inSegment' is not allowed inside xEvent[...] at column 8"),
    ("xEvent[a = 1].count() > x", "expected a number at column 25"),
    ("xEvent[a = 1].count()", "expected a comparison at column 22"),
    ("xEvent[a = 1.exists()", "expected ']' at column 13"),
    ("inSegment(a)", "expected a string at column 11"),
    ("a = 1 and", "unexpected end of rule at column 10"),
    ("and a = 1", "unexpected token 'and' at column 1"),
])
def test_errors(rule, error):
    with pytest.raises(RuleError) as info:
        compile_rule("a", rule)
    assert str(info.value) == error
    assert info.value.column == int(error.rsplit(" ", 1)[1])


def test_rule_error_without_column():
    assert str(RuleError("bad")) == "bad" and RuleError("bad").column is None


def test_in_segment_and_refs():
    rule = compile_rule("c", 'inSegment("a") and not inSegment("b")')
    assert rule.segment_refs == frozenset({"a", "b"})
    assert rule.evaluate({}, (), NOW, {"a": True, "b": False})
    assert not rule.evaluate({}, (), NOW, {"a": True, "b": True})
    assert not rule.evaluate({}, (), NOW, {})
    assert not rule.uses_events and rule.window_ms == 0 and not rule.reads_now


def test_rule_attributes():
    assert compile_rule("x", "a < now").reads_now
    assert compile_rule("x", "a in [now]").reads_now
    assert not compile_rule("x", "xEvent[timestamp occurs < 1 days before now].exists()").reads_now
    assert compile_rule("x", "xEvent[t > now].exists()").reads_now
    rule = pickle.loads(pickle.dumps(compile_rule("x", 'a = "y"')))
    assert rule.audience_id == "x" and rule.evaluate({"a": "y"}, (), NOW, {})


def test_view_paths_are_the_attributes_read_outside_events():
    rule = compile_rule("x", 'a.b = 1 and (not c in [1] or d.e.startsWith("x")) and f.isNull() '
                             'and inSegment("s") and xEvent[g = 1 and timestamp occurs < 1 days before now]'
                             '.sum(h.i) > 2 and j < now')
    assert rule.view_paths == frozenset({"a.b", "c", "d.e", "f", "j"})
    assert compile_rule("x", "xEvent.exists()").view_paths == frozenset()


# ---- events ----------------------------------------------------------------------------------

def event(age_ms, kind="commerce.purchases", price=None, **fields):
    e = {"timestamp": NOW - age_ms, "eventType": kind, **fields}
    if price is not None:
        e["commerce"] = {"order": {"priceTotal": price}}
    return e


EVENTS = [event(10 * DAY, price=400), event(3 * DAY, price=100.5), event(HOUR, kind="web.view"),
          event(2 * DAY, price="12"), event(-HOUR, price=1000)]


@pytest.mark.parametrize("rule, expected", [
    ('xEvent[eventType = "commerce.purchases"].exists()', True),
    ('xEvent[eventType = "nope"].exists()', False),
    ("xEvent.count() = 5", True),
    ('xEvent[eventType = "commerce.purchases"].count() >= 4', True),
    ('xEvent[eventType = "commerce.purchases"].count() > 4', False),
    ('xEvent[eventType = "commerce.purchases" and timestamp occurs <= 7 days before now].count() = 2', True),
    ('xEvent[timestamp occurs < 1 day before now].count() = 1', True),
    ('xEvent[timestamp occurs > 7 days before now].count() = 1', True),
    ('xEvent[timestamp occurs >= 48 hours before now].count() = 3', True),
    ('xEvent[timestamp occurs <= 90 minutes before now or eventType = "x"].count() = 1', True),
    ('xEvent[not timestamp occurs <= 7 days before now].count() = 2', True),  # the old and the future one
    ("xEvent.sum(commerce.order.priceTotal) = 1500.5", True),  # "12" is not a number
    ("xEvent[timestamp occurs <= 7 days before now].sum(commerce.order.priceTotal) > 100", True),
    ("xEvent[timestamp occurs <= 7 days before now].sum(commerce.order.priceTotal) > 100.5", False),
    ('xEvent[commerce.order.priceTotal > 150].count() != 2', False),
    ('xEvent[eventType.startsWith("web")].exists() and s = "Hello"', True),
])
def test_event_rules(rule, expected):
    assert ev(rule, events=EVENTS) is expected
    assert compile_rule("a", rule).uses_events


@pytest.mark.parametrize("op, age, expected", [
    ("<=", 7 * DAY, True), ("<=", 7 * DAY - 1, True), ("<=", 7 * DAY + 1, False), ("<=", 0, True), ("<=", -1, False),
    ("<", 7 * DAY, False), ("<", 7 * DAY - 1, True), ("<", 7 * DAY + 1, False), ("<", 0, True), ("<", -1, False),
    (">", 7 * DAY, False), (">", 7 * DAY - 1, False), (">", 7 * DAY + 1, True), (">", -1, False),
    (">=", 7 * DAY, True), (">=", 7 * DAY - 1, False), (">=", 7 * DAY + 1, True), (">=", -1, False),
])
def test_window_boundaries(op, age, expected):
    rule = f"xEvent[timestamp occurs {op} 7 days before now].exists()"
    assert ev(rule, events=[event(age)]) is expected


@pytest.mark.parametrize("unit, ms", [("minute", MINUTE), ("minutes", MINUTE), ("hour", HOUR), ("hours", HOUR),
                                      ("day", DAY), ("days", DAY)])
def test_units(unit, ms):
    rule = compile_rule("a", f"xEvent[timestamp occurs <= 3 {unit} before now].exists()")
    assert rule.window_ms == 3 * ms
    assert rule.evaluate({}, [event(3 * ms)], NOW, {}) and not rule.evaluate({}, [event(3 * ms + 1)], NOW, {})


def test_event_timestamps_of_other_types():
    rule = compile_rule("a", "xEvent[timestamp occurs <= 1 day before now].count() = 2")
    events = [{"timestamp": "2024-05-01T00:00:00Z"}, {"timestamp": dt.datetime(2024, 4, 30, 12, tzinfo=UTC)},
              {"timestamp": "garbage"}, {}]
    assert rule.evaluate({}, events, NOW, {})
    assert rule.next_change_ms(events, NOW) == NOW + 2 * HOUR + 1  # the 22-hour-old one leaves first


@pytest.mark.parametrize("rule, window", [
    ("xEvent[timestamp occurs <= 7 days before now].exists()", 7 * DAY),
    ('xEvent[timestamp occurs < 2 days before now and a = 1].exists() or xEvent[timestamp occurs <= 3 days before now].exists()', 3 * DAY),
    ("xEvent[timestamp occurs <= 7 days before now and timestamp occurs < 1 day before now].exists()", DAY),
    ("xEvent[timestamp occurs <= 7 days before now or a = 1].exists()", None),
    ("xEvent[timestamp occurs <= 7 days before now or timestamp occurs < 1 hour before now].exists()", 7 * DAY),
    ("xEvent[timestamp occurs > 7 days before now].exists()", None),
    ("xEvent[not timestamp occurs <= 7 days before now].exists()", None),
    ("xEvent.count() > 1", None),
    ("xEvent[timestamp occurs <= 7 days before now].exists() and xEvent[a = 1].exists()", None),
    ("a = 1", 0),
])
def test_window_ms(rule, window):
    assert compile_rule("a", rule).window_ms == window


@pytest.mark.parametrize("op, age, due", [
    # t = NOW - age; <= leaves at t + W + 1, < at t + W; > enters at t + W + 1, >= at t + W; future events enter at t
    ("<=", DAY, NOW + 6 * DAY + 1), ("<=", 7 * DAY, NOW + 1), ("<=", 7 * DAY + 1, None), ("<=", -HOUR, NOW + HOUR),
    ("<", DAY, NOW + 6 * DAY), ("<", 7 * DAY - 1, NOW + 1), ("<", 7 * DAY, None), ("<", -HOUR, NOW + HOUR),
    (">", DAY, NOW + 6 * DAY + 1), (">", 7 * DAY, NOW + 1), (">", 7 * DAY + 1, None),
    (">=", DAY, NOW + 6 * DAY), (">=", 7 * DAY - 1, NOW + 1), (">=", 7 * DAY, None),
])
def test_next_change_ms(op, age, due):
    rule = compile_rule("a", f"xEvent[timestamp occurs {op} 7 days before now].exists()")
    events = [event(age)]
    assert rule.next_change_ms(events, NOW) == due
    if due is not None:  # the result really flips at `due` and not one ms before
        assert rule.evaluate({}, events, due - 1, {}) != rule.evaluate({}, events, due, {})


def test_next_change_ms_takes_the_earliest_and_none_without_windows():
    rule = compile_rule("a", "xEvent[timestamp occurs <= 7 days before now].count() >= 2")
    assert rule.next_change_ms([event(2 * DAY), event(5 * DAY), event(8 * DAY)], NOW) == NOW + 2 * DAY + 1
    assert rule.next_change_ms([], NOW) is None
    assert compile_rule("a", "xEvent.exists()").next_change_ms(EVENTS, NOW) is None
    assert compile_rule("a", "a < now").next_change_ms(EVENTS, NOW) is None
