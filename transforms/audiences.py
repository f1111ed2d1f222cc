"""``AudienceSet``: every audience of a config, compiled once and ordered for evaluation.

Rule audiences are compiled by ``transforms.rules``; ``inSegment`` dependencies come first so
one pass evaluates them all. Custom upload audiences (docs/semantics.md#profiles-and-audiences) are a set of identity values of
one namespace read from a CSV (values stripped, empty cells skipped, matched exactly); a
profile is a member while its identity map holds one of them, and never from the upload's
``expires_at`` on (its members exit then, by the exporter's event-time timer).

Upload CSVs are read through Beam's FileSystems (``gs://``, ``s3://``, local) where the work
runs: ``AudienceSet`` reads them on first use, in a DoFn's ``setup`` on the worker, so a
launcher that only plans the pipeline (which audiences use events, how long events are kept)
never reads or ships their contents; config validation (``check_audiences``) opens each file
and reads only its header.
"""
from __future__ import annotations

import csv
import io
from typing import Collection, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from transforms.config import AudienceDefinition, ExportConfig, UploadSource, upload_expiries
from transforms.errors import io_reason
from transforms.export_decision import PathMatcher
from transforms.rules import AudienceRule, RuleError, compile_rule, event_retention_ms
from transforms.vectorized import identity_membership

_EMPTY: dict = {}


class _NoColumn(ValueError):
    pass


def _read_upload(upload: UploadSource, header_only: bool = False) -> FrozenSet[str]:
    """The stripped, non-empty values of the CSV's ``column`` (none with ``header_only``: the
    file is opened and its header checked); one-line ValueError naming the file."""
    from apache_beam.io.filesystems import FileSystems
    try:
        with io.TextIOWrapper(FileSystems.open(upload.path), encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if upload.column not in header:
                raise _NoColumn(f"{upload.path}: no column {upload.column!r} (columns: {', '.join(header) or 'none'})")
            if header_only:
                return frozenset()
            i = header.index(upload.column)
            return frozenset(v for row in reader if len(row) > i and (v := row[i].strip()))
    except _NoColumn:
        raise
    except Exception as e:  # any filesystem's "cannot open" (OSError, BeamIOError, S3 client errors), bad text
        raise ValueError(f"{upload.path}: cannot read upload file: {io_reason(e)}") from None


def _order(audiences: Sequence[AudienceDefinition], refs: Mapping[str, FrozenSet[str]]) -> List[AudienceDefinition]:
    """Config order, except that an audience comes after those its rule names in ``inSegment``.
    Raises ValueError on unknown references, references across merge policies and cycles."""
    by_id = {a.id: a for a in audiences}
    done: Dict[str, bool] = {}   # id -> finished (False: on the current path)
    out: List[AudienceDefinition] = []

    def visit(a: AudienceDefinition, path: Tuple[str, ...]):
        state = done.get(a.id)
        if state is False:
            cycle = path[path.index(a.id):] + (a.id,)
            raise ValueError(f"inSegment cycle: {' -> '.join(cycle)}")
        if state:
            return
        done[a.id] = False
        for ref in sorted(refs.get(a.id, ())):
            other = by_id.get(ref)
            if other is None:
                raise ValueError(f"audience {a.id!r}: inSegment of unknown audience {ref!r}")
            if other.merge_policy != a.merge_policy:
                raise ValueError(f"audience {a.id!r} (merge policy {a.merge_policy!r}): inSegment of {ref!r} "
                                 f"of another merge policy ({other.merge_policy!r})")
            visit(other, path + (a.id,))
        done[a.id] = True
        out.append(a)

    for a in audiences:
        visit(a, ())
    return out


class AudienceSet:
    """All audiences of one config; see the module docstring."""

    def __init__(self, ordered: Sequence[AudienceDefinition], rules: Mapping[str, AudienceRule]):
        self.ordered: Tuple[AudienceDefinition, ...] = tuple(ordered)
        self.rules = dict(rules)
        self._uploads: Optional[Dict[str, FrozenSet[str]]] = None  # read on first use (module docstring)
        self.policy_ids: Tuple[str, ...] = tuple(dict.fromkeys(a.merge_policy for a in self.ordered))
        self._ids = frozenset(a.id for a in self.ordered)
        event_rules = [r for r in self.rules.values() if r.uses_events]
        self.event_retention_ms: Optional[int] = event_retention_ms(event_rules)
        # a rule comparing with ``now`` outside event windows can change on any update
        self.reads_now = any(rule.reads_now for rule in self.rules.values())
        self._event_rules = tuple(event_rules)
        self.expiries: Dict[str, int] = upload_expiries(self.ordered)
        # a profile needs an event-time timer when events leave windows or uploads expire
        self.timed = self.event_retention_ms != 0 or bool(self.expiries)
        self._upload_values = None   # the upload sets as pyarrow arrays, built by the first batch
        self._plan = None            # per-profile evaluation plan, built on first use
        # what can change an audience's result, for evaluating only the audiences whose inputs
        # changed (each set holds the audiences naming it in ``inSegment`` too): a written path
        # its rule reads, the event history or time (window changes, upload expiries), the
        # identity map (uploads)
        self._readers = {aid: PathMatcher(rule.view_paths) for aid, rule in self.rules.items() if rule.view_paths}
        self._path_readers: Dict[str, FrozenSet[str]] = {}
        self.time_readers = self._with_dependents(
            {aid for aid, rule in self.rules.items() if rule.uses_events} | set(self.expiries))
        self.identity_readers = self._with_dependents(
            {a.id for a in self.ordered if a.id not in self.rules and a.upload})

    @classmethod
    def from_config(cls, config: ExportConfig) -> "AudienceSet":
        """Compiles every rule (``RuleError`` otherwise); upload CSVs are read on first use."""
        rules = {a.id: compile_rule(a.id, a.rule) for a in config.audiences if a.rule is not None}
        ordered = _order(config.audiences, {aid: r.segment_refs for aid, r in rules.items()})
        return cls(ordered, rules)

    @property
    def uploads(self) -> Dict[str, FrozenSet[str]]:
        """Upload audience id -> its identity values, read from the CSVs at the first access
        (ValueError naming the file when one cannot be read)."""
        if self._uploads is None:
            self._uploads = {a.id: _read_upload(a.upload) for a in self.ordered if a.id not in self.rules and a.upload}
        return self._uploads

    def _evaluation_plan(self):
        """One tuple per audience: (id, policy, rule closure or None,
        (namespace, values, expires_at ms or None) or None)."""
        uploads = self.uploads
        self._plan = tuple(
            (a.id, a.merge_policy, self.rules[a.id].evaluate if a.id in self.rules else None,
             (a.upload.namespace, uploads[a.id], self.expiries.get(a.id)) if a.id in uploads else None)
            for a in self.ordered)
        return self._plan

    def _with_dependents(self, ids) -> FrozenSet[str]:
        """``ids`` and every audience whose rule names one of them in ``inSegment``, transitively
        (evaluation order puts an audience after those it names)."""
        found = set(ids)
        for a in self.ordered:
            if a.id in self.rules and self.rules[a.id].segment_refs & found:
                found.add(a.id)
        return frozenset(found)

    def path_readers(self, paths: Iterable[str]) -> FrozenSet[str]:
        """The audiences a write at these dotted paths can change (at, under or above a path
        their rules read)."""
        found: FrozenSet[str] = frozenset()
        memo = self._path_readers
        for path in paths:
            readers = memo.get(path)
            if readers is None:
                readers = self._with_dependents({aid for aid, m in self._readers.items() if m.matches(path)})
                if len(memo) < PathMatcher.MEMO:
                    memo[path] = readers
            if readers:
                found = found | readers
        return found

    def evaluate(self, views: Mapping[str, Mapping], identities: Mapping[str, Sequence[str]],
                 events: Sequence[Mapping], now_ms: int, dirty: Optional[Collection[str]] = None,
                 members: Collection[str] = ()) -> FrozenSet[str]:
        """The ids of the audiences the profile is realized in, each on its own policy's view.
        ``dirty``: the audiences to evaluate (None: all); the others keep their result, being in
        ``members`` or not."""
        # ``seg``: the results so far, starting from ``members`` when only some are evaluated
        # (an ``inSegment`` reference reads it; evaluation order puts it after those it names)
        seg: Dict[str, bool] = {} if dirty is None else dict.fromkeys(members, True)
        for aid, policy, rule, upload in self._plan or self._evaluation_plan():
            if dirty is not None and aid not in dirty:
                continue
            if rule is not None:
                seg[aid] = rule(views.get(policy, _EMPTY), events, now_ms, seg)
            elif upload is not None:
                seg[aid] = (not upload[1].isdisjoint(identities.get(upload[0], ()))
                            and (upload[2] is None or now_ms < upload[2]))
        known = self._ids   # a member no longer configured (state from an earlier config) leaves
        return frozenset([aid for aid, ok in seg.items() if ok and aid in known])

    def next_change_ms(self, events: Sequence[Mapping], now_ms: int,
                       members: Collection[str] = ()) -> Optional[int]:
        """The earliest instant > ``now_ms`` at which some event rule can change with time alone,
        or an upload audience of ``members`` expires."""
        best = None
        for rule in self._event_rules:
            due = rule.next_change_ms(events, now_ms)
            if due is not None and (best is None or due < best):
                best = due
        for aid, due in self.expiries.items():
            if due > now_ms and aid in members and (best is None or due < best):
                best = due
        return best

    def holds_expired(self, realized: Collection[str], now_ms: int) -> bool:
        """Whether the profile is still in an upload audience that has expired by ``now_ms``."""
        return any(due <= now_ms and aid in realized for aid, due in self.expiries.items())

    def evaluate_batch(self, batch, now_ms: int, event_aggregates=None) -> Dict[str, pa.BooleanArray]:
        """Backfill: one boolean array per audience over a snapshot batch (one merged view per
        row, so every policy reads the same columns); rules vectorized, uploads over
        ``identityMap``. ``event_aggregates``: per-row aggregates of the rules' event parts
        (``transforms.event_join``; None: no events)."""
        if self._upload_values is None:
            self._upload_values = {aid: pa.array(sorted(values), pa.string()) for aid, values in self.uploads.items()}
        out: Dict[str, pa.BooleanArray] = {}
        for a in self.ordered:
            if a.id in self.rules:
                out[a.id] = self.rules[a.id].vectorized(batch, now_ms, out, event_aggregates)
            elif a.id in self.uploads:
                if a.id in self.expiries and now_ms >= self.expiries[a.id]:
                    out[a.id] = pa.array(np.zeros(batch.num_rows, dtype=bool))
                else:
                    out[a.id] = identity_membership(batch, a.upload.namespace, self._upload_values[a.id])
        return out


def check_audiences(config: ExportConfig) -> List[str]:
    """Config errors of the audiences, each ``audiences[i].field: message`` (for the loader),
    all of them: rule syntax, unreadable uploads, inSegment references to unknown audiences or
    to another merge policy, and inSegment cycles."""
    errors, refs = [], {}
    index = {}
    for i, a in enumerate(config.audiences):
        index.setdefault(a.id, i)
    policy = {a.id: a.merge_policy for a in config.audiences}
    for i, a in enumerate(config.audiences):
        if a.rule is not None:
            try:
                named = compile_rule(a.id, a.rule).segment_refs
            except RuleError as e:
                errors.append(f"audiences[{i}].rule: {e}")
                continue
            valid = set()
            for ref in sorted(named):
                if ref not in policy:
                    errors.append(f"audiences[{i}].rule: inSegment references unknown audience {ref!r}")
                elif policy[ref] != a.merge_policy:
                    errors.append(f"audiences[{i}].rule: inSegment({ref!r}) names an audience of merge policy "
                                  f"{policy[ref]!r}, not {a.merge_policy!r}")
                else:
                    valid.add(ref)
            refs[a.id] = frozenset(valid)
        elif a.upload is not None:
            try:
                _read_upload(a.upload, header_only=True)
            except ValueError as e:
                errors.append(f"audiences[{i}].upload: {e}")
    try:
        _order(config.audiences, refs)
    except ValueError as e:  # only cycles remain: the references themselves are valid
        cycle_start = str(e).rsplit(": ", 1)[-1].split(" -> ")[0]
        errors.append(f"audiences[{index.get(cycle_start, 0)}].rule: {e}")
    return errors


def compile_consent(text: str) -> AudienceRule:
    """The consent rule (``activation.consent``): attributes only, so ``inSegment`` and event
    forms are rule errors."""
    rule = compile_rule("activation.consent", text)
    if rule.segment_refs:
        raise RuleError("the consent rule reads attributes only, not inSegment")
    if rule.uses_events:
        raise RuleError("the consent rule reads attributes only, not xEvent")
    return rule


def check_consent(config: ExportConfig) -> List[str]:
    """The config error of the consent rule, as ``activation.consent: message``."""
    if config.activation.consent is None:
        return []
    try:
        compile_consent(config.activation.consent)
    except RuleError as e:
        return [f"activation.consent: {e}"]
    return []
