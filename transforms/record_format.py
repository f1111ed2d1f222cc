"""Export record bytes (docs/semantics.md#exports point 4) and partition keys; the per-record hot path.

Everything that depends only on the config is prepared once: the mapped attribute paths as a
nested key tree in output order (attributes in mapping order, a nested object where its first
mapped path is; a mapped path under another mapped path is covered by it), and per audience the
JSON text around ``lastQualificationTime`` for each status. A record is then the mapped values
present written as JSON along that tree (its keys' text prepared too), string joins, and the
identity map. The text of each ``ups`` entry is kept once written (a bounded number): a profile's
records carry the same entries while its memberships last.
"""
from __future__ import annotations

import datetime as _dt
import decimal
import hashlib
import json
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from transforms.config import ExportConfig
from transforms.timeutil import format_iso_ms, format_qualification_time

MAX_PARTITION_KEY_CHARS = 256

_quote = json.encoder.encode_basestring  # ensure_ascii=False escaping, as the records use
_ID_SEPARATOR = '},{"id":'               # between the ids of one namespace in ``identityMap``
_ENTRIES_KEPT = 4096                     # ``ups`` entry texts kept by a formatter


def _json_default(value: Any) -> Any:
    """Non-JSON values from Parquet seeds or Avro: dates as ``YYYY-MM-DD`` text."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return format_iso_ms(int(value.timestamp() * 1000))
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _compact_json():
    """Compact JSON as the records carry it (also the backfill fallback for values Arrow cannot
    format): the C encoder built once (``JSONEncoder.encode`` builds one per call)."""
    make = json.encoder.c_make_encoder
    if make is None:
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False,
                                default=_json_default).encode
    chunks, join = make(None, _json_default, _quote, None, ":", ",", False, False, True), "".join
    return lambda value: join(chunks(value, 0))


encode_json = _compact_json()


def _mapped_tree(paths: Sequence[str]) -> Dict[str, Optional[dict]]:
    """Nested dict of mapped keys in output order; ``None`` marks an exported (whole) value."""
    tree: Dict[str, Optional[dict]] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            child = node.setdefault(key, {})
            if child is None:               # covered by a mapped path above
                break
            node = child
        else:
            node[leaf] = None
    return tree


def _mapped_members(tree: Dict[str, Optional[dict]]) -> Tuple[Tuple[str, str, Optional[tuple]], ...]:
    """The key tree as ``(key, its JSON text and a colon, subtree or None)``, for ``_members``."""
    return tuple((key, _quote(key) + ":", None if sub is None else _mapped_members(sub)) for key, sub in tree.items())


def _members(view: Mapping[str, Any], tree: Tuple[Tuple[str, str, Optional[tuple]], ...]) -> str:
    """The JSON object members (no braces; ``""`` for none) of the mapped values present on
    ``view``, written while the tree is walked: an object no mapped value is under is left out, as
    are empty objects."""
    members = []
    for key, head, sub in tree:
        value = view.get(key)
        if value is None:
            continue
        if sub is None:
            if type(value) is str:
                members.append(head + _quote(value))
            elif value != {}:
                members.append(head + encode_json(value))
        elif type(value) is dict:
            inner = _members(value, sub)
            if inner:
                members.append(head + "{" + inner + "}")
    return ",".join(members)


def export_id(profile_id: str, policy_id: str, part: str) -> str:
    """The ``_export.id`` of a record: lower-case hex SHA-256 of ``profileId/policy/part``."""
    return hashlib.sha256(f"{profile_id}/{policy_id}/{part}".encode()).hexdigest()


class RecordFormatter:
    def __init__(self, config: ExportConfig):
        dest = config.destination
        self._tree = _mapped_tree(config.mapping.attributes)
        self._member_tree = _mapped_members(self._tree)
        mapping = {m.id: m for m in config.mapping.audiences}
        self._head: Dict[str, str] = {}
        self._tail: Dict[Tuple[str, str], str] = {}
        self._entries: Dict[Tuple[str, str, int], str] = {}   # ``ups`` entry -> its text (``_entry``)
        for aud in config.audiences:
            extra = []
            if dest.include_segment_timestamps:
                m = mapping.get(aud.id)
                extra += [("createdAt", aud.created_at_ms), ("updatedAt", aud.updated_at_ms)]
                if m is not None:
                    extra += [("mappingCreatedAt", m.mapped_at_ms),
                              ("mappingUpdatedAt", m.mapping_updated_at_ms)]
            if dest.include_segment_names:
                extra.append(("name", aud.name))
            static = "".join(f",{_quote(k)}:{encode_json(v)}" for k, v in extra if v is not None)
            self._head[aud.id] = _quote(aud.id) + ':{"lastQualificationTime":"'
            for status in ("realized", "exited"):
                self._tail[aud.id, status] = f'","status":"{status}"{static}}}'

    def _entry(self, entry: Tuple[str, str, int]) -> str:
        """An entry's JSON text, kept (``_ENTRIES_KEPT`` at most): the records of one profile
        carry the same entries again while its memberships last."""
        audience_id, status, ms = entry
        text = self._head[audience_id] + format_qualification_time(ms) + self._tail[audience_id, status]
        if len(self._entries) >= _ENTRIES_KEPT:
            self._entries.clear()
        self._entries[entry] = text
        return text

    def ups_entry_parts(self, audience_id: str, status: str) -> Tuple[str, str]:
        """The JSON text before and after an entry's ``lastQualificationTime`` value (the
        vectorized backfill builds the same entries from them)."""
        return self._head[audience_id], self._tail[audience_id, status]

    @property
    def mapped_tree(self) -> Dict[str, Optional[dict]]:
        return self._tree

    def format(self, view: Mapping[str, Any], ups: Iterable[Tuple[str, str, int]],
               identities: Mapping[str, Sequence[str]], metadata: str = "") -> bytes:
        """Compact UTF-8 JSON: mapped attributes present on ``view``, ``segmentMembership``
        with ``ups`` as ``(audience_id, status, lastQualificationTime ms)``, the identity map,
        then ``metadata`` (``export_metadata``'s member, or nothing)."""
        entries = self._entries
        texts = []
        for entry in ups:
            text = entries.get(entry)
            if text is None:
                text = self._entry(entry)
            texts.append(text)
        attributes = _members(view, self._member_tree)
        ups = ",".join(texts)
        ids = ",".join([_quote(ns) + (':[{"id":' + _ID_SEPARATOR.join(map(_quote, values)) + "}]" if values else ":[]")
                        for ns, values in identities.items()]) if identities else ""
        start = "{" + attributes + "," if attributes else "{"
        return f'{start}"segmentMembership":{{"ups":{{{ups}}}}},"identityMap":{{{ids}}}{metadata}}}'.encode()

    @staticmethod
    def export_metadata(profile_id: str, policy_id: str, sequence: int, at_ms: int,
                        triggers: Iterable[str], id_part: Optional[str] = None) -> str:
        """``,"_export":{...}``: ``id`` is the hex SHA-256 of ``profileId/policy/<sequence or
        id_part>``, so a record sent twice carries the same id."""
        before_id, after_id = RecordFormatter.export_metadata_around_id(sequence, at_ms, triggers)
        return before_id + export_id(profile_id, policy_id, str(sequence) if id_part is None else id_part) + after_id

    @staticmethod
    def export_metadata_around_id(sequence: int, at_ms: int, triggers: Iterable[str]) -> Tuple[str, str]:
        """The ``_export`` text before and after its id (the backfill puts a column of ids between)."""
        return (',"_export":{"id":"',
                f'","sequence":{sequence},"at":{at_ms},"triggers":[' + ",".join(f'"{t}"' for t in triggers) + "]}")

    @staticmethod
    def partition_key(profile_id: str) -> str:
        """The profile id, or its hex SHA-256 when longer than Kinesis' 256 characters."""
        if len(profile_id) <= MAX_PARTITION_KEY_CHARS:
            return profile_id
        return hashlib.sha256(profile_id.encode()).hexdigest()
