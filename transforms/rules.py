"""The audience rule language (docs/semantics.md#profiles-and-audiences): parser, and a per-profile evaluator compiled to closures.

``compile_rule`` parses once into a small AST (the NamedTuples below) and compiles it into
closures over pre-split paths, pre-compiled regexes and pre-parsed dates, so evaluating a
profile never walks the AST. ``transforms.vectorized`` compiles the same AST to pyarrow
kernels (``AudienceRule.vectorized``): both evaluators come from one parse.

Semantics, shared by both evaluators:

- A path is looked up through nested dicts; absent and ``None`` are the same. An absent value
  makes every comparison false (``!=`` and ``notIn`` included); ``.isNull()`` is true on it.
- A literal's kind decides which values compare with it; any other value compares false,
  ``!=`` included (never an exception):
  ``"text"``: strings (ordered by code point); numbers: ints, floats, decimals (not booleans);
  ``true``/``false``: booleans (``=``/``!=`` only: ordering them is a rule error);
  ``date("YYYY-MM-DD")``: dates, datetimes (their UTC date) and strings starting with
  ``YYYY-MM-DD``; ``now`` (the evaluation time, epoch ms): numbers (as epoch ms), datetimes
  (naive = UTC), dates (their midnight UTC) and strings ``parse_timestamp_ms`` reads (ISO-8601,
  epoch-ms digits).
- ``in [..]`` is true when some element equals the value; ``notIn [..]`` when the value
  compares with some element and equals none.
- String functions apply to strings only; ``.matches`` must match the whole string (Python
  ``re``); a ``false`` flag makes ``equals``/``startsWith``/``endsWith``/``contains``
  case-insensitive (both sides ``str.lower()``).
- ``xEvent[cond].exists()`` / ``.count() op N`` / ``.sum(path) op N``: over the events for which
  ``cond`` holds (paths inside the brackets are event fields; ``.sum`` adds the numeric values).
  ``timestamp occurs <op> N unit before now`` holds for an event at ``t`` when, with
  ``age = now - t``: ``<=``: ``0 <= age <= N*unit``; ``<``: ``0 <= age < N*unit``;
  ``>``: ``age > N*unit``; ``>=``: ``age >= N*unit``. A future event (``t > now``) is not
  "before now", so it is in no ``<``/``<=`` window; ``age == 0`` is.
- Time: ``next_change_ms`` covers event windows only (an event enters a ``<``/``<=`` window at
  ``t`` and leaves it at ``t+W`` / ``t+W+1``; it enters ``>=`` / ``>`` at ``t+W`` / ``t+W+1``).
  Comparisons of attributes (or event fields) with ``now`` get no timers: ``reads_now`` tells
  the caller such a rule must be re-evaluated at every update instead.
"""
from __future__ import annotations

import datetime as _dt
import operator
import re
from decimal import Decimal
from typing import Any, Callable, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from transforms.timeutil import UNIT_MS, parse_timestamp_ms


class RuleError(ValueError):
    """A rule that does not parse; ``str(e)`` is ``"<message> at column <n>"`` (from 1)."""

    def __init__(self, message: str, column: Optional[int] = None):
        self.message = message
        self.column = column
        super().__init__(message if column is None else f"{message} at column {column}")


# ---- AST -------------------------------------------------------------------------------------

class Lit(NamedTuple):
    kind: str   # "str" | "num" | "bool" | "date" (value: 'YYYY-MM-DD' text) | "now" (value None)
    value: Any


class And(NamedTuple):
    left: Any
    right: Any


class Or(NamedTuple):
    left: Any
    right: Any


class Not(NamedTuple):
    operand: Any


class Compare(NamedTuple):
    path: Tuple[str, ...]
    op: str
    lit: Lit


class InList(NamedTuple):
    path: Tuple[str, ...]
    lits: Tuple[Lit, ...]
    negated: bool   # notIn


class StringFn(NamedTuple):
    path: Tuple[str, ...]
    name: str        # startsWith | endsWith | contains | equals | matches
    arg: str
    case_sensitive: bool


class IsNull(NamedTuple):
    path: Tuple[str, ...]
    null: bool       # isNull (True) or isNotNull (False)


class InSegment(NamedTuple):
    audience_id: str


class Occurs(NamedTuple):
    """``<path> occurs <op> N unit before now`` (only inside ``xEvent[...]``)."""
    path: Tuple[str, ...]
    op: str
    window_ms: int


class Events(NamedTuple):
    cond: Any                 # None: every event
    agg: str                  # exists | count | sum
    sum_path: Optional[Tuple[str, ...]]
    op: Optional[str]
    number: Optional[Lit]


FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_STRING_FNS = ("startsWith", "endsWith", "contains", "equals", "matches")
_UNITS = {u: ms for name, ms in UNIT_MS.items() for u in (name, name[:-1])}


# ---- lexer -----------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(?![A-Za-z_])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|=|<|>)
  | (?P<punct>[()\[\],.])
  | (?P<str>["'])
""", re.VERBOSE)
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


class Tok(NamedTuple):
    kind: str    # num | ident | op | punct | str | end
    text: str    # as written (the decoded value for strings)
    col: int


def _lex(text: str) -> List[Tok]:
    toks, i, n = [], 0, len(text)
    while i < n:
        m = _TOKEN.match(text, i)
        if m is None:
            raise RuleError(f"unexpected character {text[i]!r}", i + 1)
        kind = m.lastgroup
        if kind == "str":
            quote, j, out = m.group(), m.end(), []
            while True:
                if j >= n:
                    raise RuleError("unterminated string", i + 1)
                c = text[j]
                if c == quote:
                    break
                if c == "\\":
                    e = text[j + 1:j + 2]
                    if e in _ESCAPES:
                        out.append(_ESCAPES[e])
                        j += 2
                        continue
                    if e == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[j + 2:j + 6]):
                        out.append(chr(int(text[j + 2:j + 6], 16)))
                        j += 6
                        continue
                    if not e:
                        raise RuleError("unterminated string", i + 1)
                    raise RuleError(f"invalid escape '\\{e}'", j + 1)
                out.append(c)
                j += 1
            toks.append(Tok("str", "".join(out), i + 1))
            i = j + 1
            continue
        if kind != "ws":
            toks.append(Tok(kind, m.group(), i + 1))
        i = m.end()
    toks.append(Tok("end", "", n + 1))
    return toks


# ---- parser ----------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str):
        self.toks = _lex(text)
        self.i = 0

    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def ahead(self, punct: str, k: int = 1) -> bool:
        t = self.peek(k)
        return t.kind == "punct" and t.text == punct

    def is_(self, kind: str, text: Optional[str] = None) -> bool:
        t = self.tok
        return t.kind == kind and (text is None or t.text == text)

    def unexpected(self, t: Optional[Tok] = None) -> RuleError:
        t = t or self.tok
        if t.kind == "end":
            return RuleError("unexpected end of rule", t.col)
        return RuleError(f"unexpected token '{t.text}'" if t.kind != "str" else "unexpected string", t.col)

    def expect(self, kind: str, text: str) -> Tok:
        if not self.is_(kind, text):
            raise RuleError(f"expected '{text}'", self.tok.col)
        return self.next()

    def parse(self):
        node = self.or_(False)
        if self.tok.kind != "end":
            raise self.unexpected()
        return node

    def or_(self, in_event: bool):
        node = self.and_(in_event)
        while self.is_("ident", "or"):
            self.next()
            node = Or(node, self.and_(in_event))
        return node

    def and_(self, in_event: bool):
        node = self.not_(in_event)
        while self.is_("ident", "and"):
            self.next()
            node = And(node, self.not_(in_event))
        return node

    def not_(self, in_event: bool):
        if self.is_("ident", "not"):
            self.next()
            return Not(self.not_(in_event))
        return self.primary(in_event)

    def primary(self, in_event: bool):
        t = self.tok
        if self.is_("punct", "("):
            self.next()
            node = self.or_(in_event)
            self.expect("punct", ")")
            return node
        if t.kind == "ident" and t.text in ("inSegment", "xEvent") and in_event:
            raise RuleError(f"'{t.text}' is not allowed inside xEvent[...]", t.col)
        if t.kind == "ident" and t.text == "inSegment" and self.ahead("("):
            self.next()
            self.next()
            arg = self.string_arg()
            self.expect("punct", ")")
            return InSegment(arg)
        if t.kind == "ident" and t.text == "xEvent" and (self.ahead("[") or self.ahead(".")):
            return self.events()
        lit = self.literal(required=False)
        if lit is not None:                      # literal op path: flipped
            if not self.is_("op"):
                raise self.unexpected()
            op = self.next().text
            path = self.path(in_event)
            if self.tok.kind == "punct" and self.tok.text in (".", "["):
                raise self.unexpected()
            return self.compare(path, FLIP[op], lit, t)
        if t.kind != "ident" or t.text in ("and", "or", "in", "notIn", "occurs", "before"):
            raise self.unexpected()
        path = self.path(in_event)
        t = self.tok
        if t.kind == "op":
            self.next()
            return self.compare(path, t.text, self.literal(), self.toks[self.i - 1])
        if t.kind == "ident" and t.text in ("in", "notIn"):
            self.next()
            return InList(path, self.literal_list(), t.text == "notIn")
        if t.kind == "ident" and t.text == "occurs":
            if not in_event:
                raise RuleError("'occurs' is only allowed inside xEvent[...]", t.col)
            return self.occurs(path)
        if t.kind == "punct" and t.text == ".":
            return self.method(path)
        raise self.unexpected()

    def compare(self, path, op: str, lit: Lit, at: Tok):
        if lit.kind == "bool" and op not in ("=", "!="):
            raise RuleError(f"booleans compare only with '=' or '!=', not '{op}'", at.col)
        return Compare(path, op, lit)

    def path(self, in_event: bool) -> Tuple[str, ...]:
        """A dotted path; stops before ``.name(`` (a method call)."""
        t = self.tok
        if t.kind != "ident":
            raise self.unexpected()
        if self.ahead("("):
            raise RuleError(f"unknown function '{t.text}'", t.col)
        parts = [self.next().text]
        while self.is_("punct", ".") and self.peek().kind == "ident" and not self.ahead("(", 2):
            self.next()
            parts.append(self.next().text)
        if self.is_("punct", "."):
            if self.peek().kind != "ident":
                raise self.unexpected(self.peek())
        return tuple(parts)

    def method(self, path):
        self.next()                               # '.'
        name = self.next()                         # ident followed by '('
        self.next()                                # '('
        if name.text in ("isNull", "isNotNull"):
            self.expect("punct", ")")
            return IsNull(path, name.text == "isNull")
        if name.text not in _STRING_FNS:
            raise RuleError(f"unknown function '{name.text}'", name.col)
        arg_tok = self.tok
        arg = self.string_arg()
        case_sensitive = True
        if name.text != "matches" and self.is_("punct", ","):
            self.next()
            flag = self.literal()
            if flag.kind != "bool":
                raise RuleError("expected true or false", self.toks[self.i - 1].col)
            case_sensitive = flag.value
        self.expect("punct", ")")
        if name.text == "matches":
            try:
                re.compile(arg)
            except re.error as e:
                raise RuleError(f"invalid regex {arg!r} ({e.msg})", arg_tok.col) from None
        return StringFn(path, name.text, arg, case_sensitive)

    def string_arg(self) -> str:
        if self.tok.kind != "str":
            raise RuleError("expected a string", self.tok.col)
        return self.next().text

    def literal(self, required: bool = True) -> Optional[Lit]:
        t = self.tok
        if t.kind == "str":
            self.next()
            return Lit("str", t.text)
        if t.kind == "num":
            self.next()
            value = int(t.text) if re.fullmatch(r"-?[0-9]+", t.text) else float(t.text)
            return Lit("num", value if -2 ** 63 <= value < 2 ** 63 else float(value))  # Arrow holds int64
        if t.kind == "ident" and t.text in ("true", "false") and not self.ahead("."):
            self.next()
            return Lit("bool", t.text == "true")
        if t.kind == "ident" and t.text == "now" and not self.ahead("."):
            self.next()
            return Lit("now", None)
        if t.kind == "ident" and t.text == "date" and self.ahead("("):
            self.next()
            self.next()
            s = self.tok
            text = self.string_arg()
            try:
                if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
                    raise ValueError
                _dt.date.fromisoformat(text)
            except ValueError:
                raise RuleError(f"invalid date {text!r}", s.col) from None
            self.expect("punct", ")")
            return Lit("date", text)
        if required:
            raise self.unexpected()
        return None

    def literal_list(self) -> Tuple[Lit, ...]:
        self.expect("punct", "[")
        lits = [self.literal()]
        while self.is_("punct", ","):
            self.next()
            lits.append(self.literal())
        self.expect("punct", "]")
        return tuple(lits)

    def number(self) -> Lit:
        if self.tok.kind != "num":
            raise RuleError("expected a number", self.tok.col)
        return self.literal()

    def occurs(self, path) -> Occurs:
        self.next()
        if not self.is_("op") or self.tok.text in ("=", "!="):
            raise RuleError("expected '<', '<=', '>' or '>='", self.tok.col)
        op = self.next().text
        n = self.tok
        if n.kind != "num" or not n.text.isdigit():
            raise RuleError("expected a whole number", n.col)
        self.next()
        unit = self.tok
        if unit.kind != "ident" or unit.text not in _UNITS:
            raise RuleError("expected minutes, hours or days", unit.col)
        self.next()
        self.expect("ident", "before")
        self.expect("ident", "now")
        return Occurs(path, op, int(n.text) * _UNITS[unit.text])

    def events(self) -> Events:
        self.next()                                # xEvent
        cond = None
        if self.is_("punct", "["):
            self.next()
            cond = self.or_(True)
            self.expect("punct", "]")
        self.expect("punct", ".")
        name = self.tok
        if name.kind != "ident" or not self.ahead("("):
            raise self.unexpected()
        self.next()
        self.next()
        if name.text == "exists":
            self.expect("punct", ")")
            return Events(cond, "exists", None, None, None)
        if name.text not in ("count", "sum"):
            raise RuleError(f"unknown function '{name.text}'", name.col)
        sum_path = self.path(True) if name.text == "sum" else None
        self.expect("punct", ")")
        if not self.is_("op"):
            raise RuleError("expected a comparison", self.tok.col)
        op = self.next().text
        return Events(cond, name.text, sum_path, op, self.number())


def parse_rule(text: str):
    """The AST of a rule; raises ``RuleError``."""
    return _Parser(text).parse()


# ---- value conversions (the semantics of each literal kind) ----------------------------------

_NUMBER_TYPES = (int, float, Decimal)
_DATE_PREFIX = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UTC = _dt.timezone.utc


def as_text(v):
    return v if type(v) is str else None


def as_number(v):
    return v if type(v) in _NUMBER_TYPES else None


def as_bool(v):
    return v if type(v) is bool else None


def as_date_text(v) -> Optional[str]:
    """'YYYY-MM-DD' of a date, a datetime (UTC) or a string starting with one."""
    if isinstance(v, str):
        return v[:10] if _DATE_PREFIX.match(v) else None
    if isinstance(v, _dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(_UTC)
        return v.date().isoformat()
    if isinstance(v, _dt.date):
        return v.isoformat()
    return None


def as_ms(v) -> Optional[int]:
    """Epoch ms of a number, a datetime, a date or an ISO-8601 string (for ``now``)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, _NUMBER_TYPES):
        return v
    if isinstance(v, (str, _dt.date)):
        try:
            return parse_timestamp_ms(v)
        except (ValueError, OverflowError):
            return None
    return None


CONVERT = {"str": as_text, "num": as_number, "bool": as_bool, "date": as_date_text, "now": as_ms}
_OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


# ---- per-profile compiler --------------------------------------------------------------------

Evaluator = Callable[[Any, Sequence[Mapping], int, Mapping[str, bool]], bool]


def path_getter(path: Tuple[str, ...]) -> Callable[[Any], Any]:
    """The value at a dotted ``path`` of a nested dict (None where a step is absent or not a dict)."""
    if len(path) == 1:
        (a,) = path

        def get(view):
            return view.get(a) if type(view) is dict else None
        return get
    if len(path) == 2:
        a, b = path

        def get(view):
            v = view.get(a) if type(view) is dict else None
            return v.get(b) if type(v) is dict else None
        return get

    def get(view):
        for key in path:
            if type(view) is not dict:
                return None
            view = view.get(key)
        return view
    return get


def _compile_compare(get, op: str, lit: Lit) -> Evaluator:
    f = _OPS[op]
    conv = CONVERT[lit.kind]
    if lit.kind == "now":
        def ev(view, events, now, seg):
            v = get(view)
            return v is not None and (v := as_ms(v)) is not None and f(v, now)
        return ev
    rhs = lit.value
    if lit.kind == "str" and op == "=":
        return lambda view, events, now, seg: get(view) == rhs
    if lit.kind == "bool" and op == "=":
        return lambda view, events, now, seg: get(view) is rhs

    def ev(view, events, now, seg):
        v = get(view)
        return v is not None and (v := conv(v)) is not None and f(v, rhs)
    return ev


def _compile_in(get, lits: Tuple[Lit, ...], negated: bool) -> Evaluator:
    kinds = {}
    for lit in lits:
        kinds.setdefault(lit.kind, set()).add(lit.value)
    tests = tuple((CONVERT[k], None if k == "now" else frozenset(vals)) for k, vals in kinds.items())

    def ev(view, events, now, seg):
        v = get(view)
        if v is None:
            return False
        comparable = False
        for conv, values in tests:
            c = conv(v)
            if c is not None:
                if (c == now) if values is None else (c in values):
                    return not negated
                comparable = True
        return negated and comparable
    return ev


def _compile_string_fn(get, node: StringFn) -> Evaluator:
    arg = node.arg if node.case_sensitive else node.arg.lower()
    if node.name == "matches":
        test = re.compile(node.arg).fullmatch
    elif node.name == "equals":
        test = arg.__eq__
    elif node.name == "contains":
        test = lambda s: arg in s  # noqa: E731
    else:
        method = getattr(str, node.name.lower())
        test = lambda s: method(s, arg)  # noqa: E731
    if node.case_sensitive:
        return lambda view, events, now, seg: type(v := get(view)) is str and bool(test(v))
    return lambda view, events, now, seg: type(v := get(view)) is str and bool(test(v.lower()))


def _compile_occurs(node: Occurs) -> Evaluator:
    get, w = path_getter(node.path), node.window_ms
    within = {"<=": lambda age: 0 <= age <= w, "<": lambda age: 0 <= age < w,
             ">": lambda age: age > w, ">=": lambda age: age >= w}[node.op]

    def ev(event, events, now, seg):
        t = get(event)
        if type(t) is not int:
            t = None if t is None else as_ms(t)
            if t is None:
                return False
        return within(now - t)
    return ev


def _compile_events(node: Events) -> Evaluator:
    cond = compile_node(node.cond) if node.cond is not None else (lambda e, events, now, seg: True)
    if node.agg == "exists":
        def ev(view, events, now, seg):
            for e in events:
                if cond(e, None, now, seg):
                    return True
            return False
        return ev
    f, n = _OPS[node.op], node.number.value
    if node.agg == "count":
        return lambda view, events, now, seg: f(sum(1 for e in events if cond(e, None, now, seg)), n)
    get = path_getter(node.sum_path)

    def ev(view, events, now, seg):
        total = 0
        for e in events:
            if cond(e, None, now, seg):
                v = as_number(get(e))
                if v is not None:
                    total += v
        return f(total, n)
    return ev


def compile_node(node) -> Evaluator:
    """A closure ``(view, events, now_ms, segments) -> bool`` for an AST node."""
    t = type(node)
    if t is And:
        a, b = compile_node(node.left), compile_node(node.right)
        return lambda view, events, now, seg: a(view, events, now, seg) and b(view, events, now, seg)
    if t is Or:
        a, b = compile_node(node.left), compile_node(node.right)
        return lambda view, events, now, seg: a(view, events, now, seg) or b(view, events, now, seg)
    if t is Not:
        a = compile_node(node.operand)
        return lambda view, events, now, seg: not a(view, events, now, seg)
    if t is Compare:
        return _compile_compare(path_getter(node.path), node.op, node.lit)
    if t is InList:
        return _compile_in(path_getter(node.path), node.lits, node.negated)
    if t is StringFn:
        return _compile_string_fn(path_getter(node.path), node)
    if t is IsNull:
        get = path_getter(node.path)
        if node.null:
            return lambda view, events, now, seg: get(view) is None
        return lambda view, events, now, seg: get(view) is not None
    if t is InSegment:
        aid = node.audience_id
        return lambda view, events, now, seg: bool(seg.get(aid, False))
    if t is Occurs:
        return _compile_occurs(node)
    if t is Events:
        return _compile_events(node)
    raise TypeError(f"not a rule node: {node!r}")


# ---- analysis --------------------------------------------------------------------------------

def walk(node, into_events: bool = True):
    """Every node of a tree, depth first (``into_events=False``: not inside event conditions,
    whose paths are event fields)."""
    yield node
    if isinstance(node, (And, Or)):
        yield from walk(node.left, into_events)
        yield from walk(node.right, into_events)
    elif isinstance(node, Not):
        yield from walk(node.operand, into_events)
    elif into_events and isinstance(node, Events) and node.cond is not None:
        yield from walk(node.cond)


def _event_window(cond) -> Optional[int]:
    """How far back events can still satisfy ``cond`` (None: any age)."""
    t = type(cond)
    if t is Occurs:
        return cond.window_ms if cond.op in ("<", "<=") else None
    if t is And:
        bounds = [b for b in (_event_window(cond.left), _event_window(cond.right)) if b is not None]
        return min(bounds) if bounds else None
    if t is Or:
        a, b = _event_window(cond.left), _event_window(cond.right)
        return None if a is None or b is None else max(a, b)
    return None


def _reads_now(node) -> bool:
    """Whether ``now`` is compared outside ``occurs`` windows (no timers cover that)."""
    return any((type(n) is Compare and n.lit.kind == "now")
               or (type(n) is InList and any(lit.kind == "now" for lit in n.lits)) for n in walk(node))


# ---- the compiled rule -----------------------------------------------------------------------

class AudienceRule:
    """One audience's compiled rule. ``evaluate(view, events, now_ms, segments)`` is the compiled
    closure itself (no method dispatch, no AST walk); pickles as its text, recompiled.
    ``window_ms``: how long events matter (0: the rule reads no events; None: some event part
    keeps events of any age, e.g. no ``occurs <``/``<=`` bound, or one under ``or``/``not``).
    ``reads_now``: ``now`` is compared outside ``occurs`` (no timers for that).
    ``view_paths``: the dotted attribute paths the rule reads from the view (a write elsewhere
    cannot change its result)."""

    __slots__ = ("audience_id", "text", "node", "segment_refs", "uses_events", "window_ms",
                 "reads_now", "view_paths", "evaluate", "_windows", "_vectorized")

    def __init__(self, audience_id: str, text: str, node):
        self.audience_id = audience_id
        self.text = text
        self.node = node
        nodes = list(walk(node))
        self.segment_refs = frozenset(n.audience_id for n in nodes if type(n) is InSegment)
        event_nodes = [n for n in nodes if type(n) is Events]
        self.uses_events = bool(event_nodes)
        # 0: no event is needed; None: some event part keeps events of any age.
        windows = [_event_window(n.cond) if n.cond is not None else None for n in event_nodes]
        self.window_ms = 0 if not windows else (None if None in windows else max(windows))
        self.reads_now = _reads_now(node)
        self.view_paths = frozenset(".".join(n.path) for n in walk(node, into_events=False)
                                    if type(n) in (Compare, InList, StringFn, IsNull))
        # (time getter, entering/leaving offsets from t) of each `occurs` condition
        self._windows = tuple((path_getter(n.path), _CHANGE_OFFSETS[n.op](n.window_ms))
                              for n in nodes if type(n) is Occurs)
        self.evaluate: Evaluator = compile_node(node)
        self._vectorized = None

    def next_change_ms(self, events: Sequence[Mapping], now_ms: int) -> Optional[int]:
        """The earliest instant > ``now_ms`` at which an event enters or leaves one of the
        rule's windows (the result can change then with time alone); None when none is left."""
        best = None
        for get, offsets in self._windows:
            for e in events:
                t = get(e)
                if type(t) is not int:
                    t = None if t is None else as_ms(t)
                    if t is None:
                        continue
                for off in offsets:
                    at = t + off
                    if at > now_ms and (best is None or at < best):
                        best = at
        return best

    @property
    def vectorized(self):
        """The pyarrow evaluator of the same AST (``transforms.vectorized``), built once."""
        if self._vectorized is None:
            from transforms.vectorized import compile_vectorized
            self._vectorized = compile_vectorized(self.node)
        return self._vectorized

    def __reduce__(self):
        return compile_rule, (self.audience_id, self.text)

    def __repr__(self):
        return f"AudienceRule({self.audience_id!r}, {self.text!r})"


# the instants, relative to an event's time t, at which `age op W` flips (see module doc)
_CHANGE_OFFSETS = {"<=": lambda w: (0, w + 1), "<": lambda w: (0, w),
                   ">": lambda w: (w + 1,), ">=": lambda w: (w,)}


def compile_rule(audience_id: str, text: str) -> AudienceRule:
    """Parse and compile a rule once; raises ``RuleError``."""
    return AudienceRule(audience_id, text, parse_rule(text))


def event_retention_ms(rules: Iterable["AudienceRule"]) -> Optional[int]:
    """How long events matter to ``rules``: 0 when none reads events, ``None`` when one reads
    them without a window (all history), else the longest window."""
    windows = [rule.window_ms for rule in rules if rule.uses_events]
    return 0 if not windows else (None if None in windows else max(windows))
