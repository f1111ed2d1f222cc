"""Typed, immutable configuration of one export (SPEC 3).

The loader (``load_config``) and its validation live below the types. Every object here is a
frozen dataclass so a config can be captured by DoFns, pickled to workers and shared safely.
Times are epoch milliseconds (UTC) because that is what export records carry.

Loader decisions (SPEC 3 leaves them open):

- Every problem is collected and raised at once in one ``ConfigError`` (``field.path: message``,
  list indexes from 0), so a user fixes a config in one round. Rule syntax, ``inSegment``
  references and upload files are checked by ``transforms.audiences.check_audiences``.
- Exactly one merge policy carries ``default: true``; a config with a single policy may leave the
  flag out (that policy is the default). Audiences without ``merge_policy`` get the default's id.
  When the default cannot be determined (an error), the first policy stands in for it so that
  one mistake is not reported again for every audience.
- ``${NAME}`` is expanded in every string value; numbers (``max_retries: ${RETRIES}``) and
  timestamps may come from the environment too. Values under ``credentials`` become ``Secret``
  and are never echoed: messages name only the field and the type.
- Timestamps are ISO-8601 text, YAML timestamps or epoch milliseconds. A mapped audience may be
  a bare id instead of ``{id: ...}``.
- A file that cannot be read or parsed raises ``ConfigFileError``: one line, no field errors.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import List, Mapping as TMapping, Optional, Sequence, Tuple

import yaml

from transforms.errors import UserError
from transforms.timeutil import parse_timestamp_ms


class Secret:
    """A credential value that never prints: ``repr``/``str``/format all give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec) -> str:
        return "***"

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):
        return (Secret, (self._value,))


@dataclasses.dataclass(frozen=True)
class Credentials:
    access_key_id: Secret
    secret_access_key: Secret
    session_token: Optional[Secret] = None


DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
MAX_RECORD_BYTES_RANGE = (1024, 10 * 1024 * 1024)  # what Kinesis Data Streams accepts


@dataclasses.dataclass(frozen=True)
class RetrySettings:
    """``max_retries: 2`` means at most three sends of a record."""
    max_retries: int = 2
    base_delay_ms: int = 100
    max_delay_ms: int = 5000


@dataclasses.dataclass(frozen=True)
class Destination:
    name: str
    region: str
    stream: str
    dead_letter: str  # absolute (resolved against the config file's folder) or a Beam FS URL
    description: Optional[str] = None
    endpoint_url: Optional[str] = None
    credentials: Optional[Credentials] = None  # None: boto3's default credential chain
    include_segment_names: bool = False
    include_segment_timestamps: bool = False
    retry: RetrySettings = RetrySettings()
    # data plus partition key; above 1 MiB only for streams raised with UpdateMaxRecordSize
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    latency_p95_seconds: float = 600.0


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    max_events_per_profile: int = 1000


@dataclasses.dataclass(frozen=True)
class MappedAudience:
    id: str
    mapped_at_ms: Optional[int] = None
    mapping_updated_at_ms: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Mapping:
    attributes: Tuple[str, ...] = ()
    audiences: Tuple[MappedAudience, ...] = ()


@dataclasses.dataclass(frozen=True)
class MergePolicyConfig:
    id: str
    type: str  # "timestamp_ordered" | "dataset_precedence"
    default: bool = False
    datasets: Tuple[str, ...] = ()  # dataset_precedence: highest rank first


@dataclasses.dataclass(frozen=True)
class UploadSource:
    path: str  # resolved against the config file's folder
    column: str
    namespace: str


@dataclasses.dataclass(frozen=True)
class AudienceDefinition:
    id: str
    name: str
    merge_policy: str  # resolved: the default policy's id when the config leaves it out
    rule: Optional[str] = None
    upload: Optional[UploadSource] = None
    description: Optional[str] = None
    created_at_ms: Optional[int] = None
    updated_at_ms: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    destination: Destination
    mapping: Mapping
    merge_policies: Tuple[MergePolicyConfig, ...]
    audiences: Tuple[AudienceDefinition, ...]
    alerts: AlertSettings = AlertSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    source: Optional[str] = None  # the file it was loaded from, for messages

    def audience(self, audience_id: str) -> AudienceDefinition:
        for a in self.audiences:
            if a.id == audience_id:
                return a
        raise KeyError(audience_id)

    def merge_policy(self, policy_id: str) -> MergePolicyConfig:
        for p in self.merge_policies:
            if p.id == policy_id:
                return p
        raise KeyError(policy_id)


class ConfigError(UserError, ValueError):
    """All validation errors of one config, each ``field.path: message``."""

    def __init__(self, errors, source: Optional[str] = None):
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.errors))


class ConfigFileError(ConfigError):
    """The file could not be read or is not YAML/JSON: a single message, no field paths."""


# --------------------------------------------------------------------------- loading

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
MERGE_POLICY_TYPES = ("timestamp_ordered", "dataset_precedence")


class _Reader:
    """Walks the raw document, collecting every error with its field path instead of stopping
    at the first one. Values under ``credentials`` are never echoed into a message."""

    def __init__(self, environ: TMapping[str, str]):
        self.environ = environ
        self.errors: List[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def obj(self, value, path: str, required: Sequence[str], optional: Sequence[str]) -> Optional[dict]:
        if not isinstance(value, dict):
            self.error(path, f"expected an object, got {_type_name(value)}")
            return None
        for key in value:
            if key not in required and key not in optional:
                self.error(_join(path, key), "unknown key")
        for key in required:
            if value.get(key) is None:
                self.error(_join(path, key), "required field missing")
            elif isinstance(value[key], str) and not value[key].strip():
                self.error(_join(path, key), "must not be empty")
        return value

    def text(self, obj: Optional[dict], key: str, path: str, default=None, secret=False):
        value = None if obj is None else obj.get(key)
        where = _join(path, key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(where, f"expected a string, got {_type_name(value)}")
            return default
        expanded = self.expand(value, where)
        if expanded is None:
            return default
        return Secret(expanded) if secret else expanded

    def expand(self, value: str, where: str) -> Optional[str]:
        missing = [m.group(1) for m in _ENV_REF.finditer(value) if m.group(1) not in self.environ]
        for name in missing:
            self.error(where, f"environment variable {name} is not set")
        if missing:
            return None
        return _ENV_REF.sub(lambda m: self.environ[m.group(1)], value)

    def number(self, obj, key, path, default, kind=int, minimum=None):
        value = None if obj is None else obj.get(key)
        where = _join(path, key)
        if value is None:
            return default
        if isinstance(value, str) and _ENV_REF.search(value):  # a number from the environment
            value = self.expand(value, where)
            if value is None:
                return default
            try:
                value = kind(value)
            except ValueError:
                self.error(where, f"expected {'an integer' if kind is int else 'a number'}, got a string")
                return default
        ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            self.error(where, f"expected {'an integer' if kind is int else 'a number'}, got {_type_name(value)}")
            return default
        if minimum is not None and value < minimum:
            self.error(where, f"must be at least {minimum}, got {value}")
            return default
        return kind(value)

    def flag(self, obj, key, path, default=False) -> bool:
        value = None if obj is None else obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(_join(path, key), f"expected true or false, got {_type_name(value)}")
            return default
        return value

    def time_ms(self, obj, key, path) -> Optional[int]:
        value = None if obj is None else obj.get(key)
        if isinstance(value, str):
            value = self.expand(value, _join(path, key))
        if value is None:
            return None
        try:
            return parse_timestamp_ms(value)
        except ValueError as e:
            self.error(_join(path, key), str(e))
            return None

    def items(self, obj, key, path) -> List[Tuple[str, object]]:
        """``(path, item)`` of a list field; absent is empty (required lists are checked by ``obj``)."""
        value = None if obj is None else obj.get(key)
        where = _join(path, key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(where, f"expected a list, got {_type_name(value)}")
            return []
        return [(f"{where}[{i}]", v) for i, v in enumerate(value)]

    def strings(self, obj, key, path) -> Tuple[str, ...]:
        out = []
        for where, v in self.items(obj, key, path):
            if isinstance(v, str) and v.strip():
                out.append(self.expand(v, where) or v)
            else:
                self.error(where, f"expected a non-empty string, got {_type_name(v)}")
        return tuple(out)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _resolve(path: str, base_dir: str) -> str:
    if _URL.match(path) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _read_text(path: str) -> str:
    if not _URL.match(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    from apache_beam.io.filesystems import FileSystems  # gs://, s3://: Beam's filesystems
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def load_config(path: str, environ: Optional[TMapping[str, str]] = None) -> ExportConfig:
    """Read, expand and validate a YAML or JSON config file; ``ConfigError`` lists every problem."""
    try:
        text = _read_text(path)
    except Exception as e:  # any filesystem's "cannot open" becomes one line
        raise ConfigFileError([f"cannot read config file: {getattr(e, 'strerror', None) or e}"], path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigFileError([f"not valid YAML or JSON{where}: {getattr(e, 'problem', None) or e}"], path) from None
    base_dir = path.rsplit("/", 1)[0] if _URL.match(path) else os.path.dirname(os.path.abspath(path))
    return config_from_dict(data, base_dir, os.environ if environ is None else environ, source=path)


def config_from_dict(data, base_dir: str, environ: TMapping[str, str], source: Optional[str] = None) -> ExportConfig:
    """Validate a parsed document; relative paths resolve against ``base_dir`` (the file's folder)."""
    if not isinstance(data, dict):
        raise ConfigError([f"config: expected an object with destination, mapping, merge_policies and audiences, "
                           f"got {_type_name(data)}"], source)
    r = _Reader(environ)
    top = r.obj(data, "", ("destination", "mapping", "merge_policies", "audiences"),
                ("alerts", "evaluation"))
    destination = _destination(r, top.get("destination"), base_dir)
    alerts = r.obj(top.get("alerts", {}), "alerts", (), ("latency_p95_seconds",))
    evaluation = r.obj(top.get("evaluation", {}), "evaluation", (), ("max_events_per_profile",))
    policies = _merge_policies(r, top)
    audiences = _audiences(r, top, policies, base_dir)
    mapping = _mapping(r, top.get("mapping"), audiences)
    config = ExportConfig(
        destination=destination, mapping=mapping, merge_policies=policies, audiences=audiences,
        alerts=AlertSettings(r.number(alerts, "latency_p95_seconds", "alerts", 600.0, float, 0)),
        evaluation=EvaluationSettings(r.number(evaluation, "max_events_per_profile", "evaluation", 1000, int, 1)),
        source=source)
    from transforms.audiences import check_audiences  # the rule language imports this module
    errors = r.errors + check_audiences(config)
    if errors:
        raise ConfigError(errors, source)
    return config


def _destination(r: _Reader, raw, base_dir: str) -> Optional[Destination]:
    path = "destination"
    if raw is None:  # reported as a missing required field
        return None
    d = r.obj(raw, path, ("name", "region", "stream"),
              ("description", "endpoint_url", "credentials", "include_segment_names",
               "include_segment_timestamps", "retry", "dead_letter", "max_record_bytes"))
    if d is None:
        return None
    credentials = None
    if d.get("credentials") is not None:
        c = r.obj(d["credentials"], f"{path}.credentials", ("access_key_id", "secret_access_key"),
                  ("session_token",))
        if c is not None:
            where = f"{path}.credentials"
            credentials = Credentials(r.text(c, "access_key_id", where, secret=True),
                                      r.text(c, "secret_access_key", where, secret=True),
                                      r.text(c, "session_token", where, secret=True))
    retry = RetrySettings()
    if d.get("retry") is not None:
        where = f"{path}.retry"
        raw_retry = r.obj(d["retry"], where, (), ("max_retries", "base_delay_ms", "max_delay_ms"))
        retry = RetrySettings(r.number(raw_retry, "max_retries", where, 2, int, 0),
                              r.number(raw_retry, "base_delay_ms", where, 100, int, 0),
                              r.number(raw_retry, "max_delay_ms", where, 5000, int, 0))
        if retry.max_delay_ms < retry.base_delay_ms:
            r.error(f"{where}.max_delay_ms", f"must be at least base_delay_ms ({retry.base_delay_ms})")
    low, high = MAX_RECORD_BYTES_RANGE
    max_record_bytes = r.number(d, "max_record_bytes", path, DEFAULT_MAX_RECORD_BYTES, int, low)
    if max_record_bytes > high:
        r.error(f"{path}.max_record_bytes", f"must be at most {high} (10 MiB), got {max_record_bytes}")
        max_record_bytes = DEFAULT_MAX_RECORD_BYTES
    return Destination(
        name=r.text(d, "name", path), region=r.text(d, "region", path), stream=r.text(d, "stream", path),
        dead_letter=_resolve(r.text(d, "dead_letter", path, "dead-letter"), base_dir),
        description=r.text(d, "description", path), endpoint_url=r.text(d, "endpoint_url", path),
        credentials=credentials,
        include_segment_names=r.flag(d, "include_segment_names", path),
        include_segment_timestamps=r.flag(d, "include_segment_timestamps", path), retry=retry,
        max_record_bytes=max_record_bytes)


def _merge_policies(r: _Reader, top) -> Tuple[MergePolicyConfig, ...]:
    policies, seen = [], set()
    if top.get("merge_policies") == []:
        r.error("merge_policies", "at least one merge policy is needed")
    for where, raw in r.items(top, "merge_policies", ""):
        p = r.obj(raw, where, ("id", "type"), ("default", "datasets"))
        if p is None:
            continue
        pid, kind = r.text(p, "id", where), r.text(p, "type", where)
        if pid in seen:
            r.error(f"{where}.id", f"duplicate merge policy id {pid!r}")
        seen.add(pid)
        if kind is not None and kind not in MERGE_POLICY_TYPES:
            r.error(f"{where}.type", f"unknown merge policy type {kind!r} (expected {' or '.join(MERGE_POLICY_TYPES)})")
        datasets = r.strings(p, "datasets", where)
        if kind == "dataset_precedence" and not datasets:
            r.error(f"{where}.datasets", "dataset_precedence needs the datasets in precedence order")
        policies.append(MergePolicyConfig(pid, kind, r.flag(p, "default", where), datasets))
    defaults = [p.id for p in policies if p.default]
    if len(policies) == 1 and not defaults:  # a single policy is the default
        policies[0] = dataclasses.replace(policies[0], default=True)
    elif policies and len(defaults) != 1:
        r.error("merge_policies", f"exactly one policy must have default: true, found {len(defaults)}")
    return tuple(policies)


def _audiences(r: _Reader, top, policies, base_dir) -> Tuple[AudienceDefinition, ...]:
    policy_ids = {p.id for p in policies}
    # without a single default (reported), the first policy stands in: see the module docstring
    default = next((p.id for p in policies if p.default and p.id), None) or next((p.id for p in policies if p.id), None)
    audiences, seen = [], set()
    for where, raw in r.items(top, "audiences", ""):
        a = r.obj(raw, where, ("id", "name"), ("description", "created_at", "updated_at",
                                               "merge_policy", "rule", "upload"))
        if a is None:
            continue
        aid = r.text(a, "id", where)
        if aid in seen:
            r.error(f"{where}.id", f"duplicate audience id {aid!r}")
        seen.add(aid)
        policy = r.text(a, "merge_policy", where, default)
        if a.get("merge_policy") is not None and policy not in policy_ids:
            r.error(f"{where}.merge_policy", f"unknown merge policy {policy!r}")
        has_rule, has_upload = a.get("rule") is not None, a.get("upload") is not None
        if has_rule == has_upload:
            r.error(where, "has both a rule and an upload; give one" if has_rule else "needs a rule or an upload")
        upload = None
        if has_upload:
            u = r.obj(a["upload"], f"{where}.upload", ("path", "column", "namespace"), ())
            fields = [r.text(u, k, f"{where}.upload") for k in ("path", "column", "namespace")]
            if None not in fields:  # incomplete uploads are reported above and not read
                upload = UploadSource(_resolve(fields[0], base_dir), fields[1], fields[2])
        rule = r.text(a, "rule", where)
        audiences.append(AudienceDefinition(
            id=aid, name=r.text(a, "name", where), merge_policy=policy, rule=rule, upload=upload,
            description=r.text(a, "description", where),
            created_at_ms=r.time_ms(a, "created_at", where), updated_at_ms=r.time_ms(a, "updated_at", where)))
    return tuple(audiences)


def _mapping(r: _Reader, raw, audiences) -> Mapping:
    m = None if raw is None else r.obj(raw, "mapping", (), ("attributes", "audiences"))
    defined = {a.id for a in audiences}
    mapped, seen = [], set()
    for where, item in r.items(m, "audiences", "mapping"):
        if isinstance(item, str):  # a bare id is accepted too
            item = {"id": item}
        e = r.obj(item, where, ("id",), ("mapped_at", "mapping_updated_at"))
        if e is None:
            continue
        aid = r.text(e, "id", where)
        if aid in seen:
            r.error(f"{where}.id", f"audience {aid!r} is mapped twice")
        elif aid is not None and aid not in defined:
            r.error(f"{where}.id", f"mapped audience {aid!r} is not defined in audiences")
        seen.add(aid)
        mapped.append(MappedAudience(aid, r.time_ms(e, "mapped_at", where), r.time_ms(e, "mapping_updated_at", where)))
    return Mapping(attributes=r.strings(m, "attributes", "mapping"), audiences=tuple(mapped))
