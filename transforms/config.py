"""Typed, immutable configuration of one export, and its loader.

The loader (``load_config``) and its validation live below the types. Every object here is a
frozen dataclass so a config can be captured by DoFns, pickled to workers and shared safely.
Times are epoch milliseconds (UTC) because that is what export records carry.

Validation:

- ``schemas/config.schema.json`` is the one description of the config's structure (types,
  required and unknown keys, enums, ranges, "exactly one default policy", "a rule or an
  upload"); the document is checked against it with ``jsonschema`` after ``${NAME}`` expansion.
  Each schema error becomes one ``field.path: message`` line; the schema's ``x-messages`` give the
  message of a keyword where the default one would not help (``audience cannot be left out``).
- By hand, only what a schema cannot say: unique ids, references between sections (merge
  policies, mapped audiences), timestamps, ``retry.max_delay_ms >= base_delay_ms``, data usage
  labels against the marketing action, and (``transforms.audiences``) rule syntax, ``inSegment``,
  the consent rule and upload files.
- Every problem is collected and raised at once in one ``ConfigError`` (list indexes from 0), so
  a user fixes a config in one round: a value the schema rejects is left out (its default or
  nothing is used) and the remaining checks still run.

Loader decisions:

- Exactly one merge policy carries ``default: true``; a config with a single policy may leave the
  flag out (that policy is the default). Audiences without ``merge_policy`` get the default's id.
  When the default cannot be determined (an error), the first policy stands in for it so that
  one mistake is not reported again for every audience.
- ``${NAME}`` is expanded in every string value; a value that is exactly one ``${NAME}`` gives a
  number where the schema wants one (``max_retries: ${RETRIES}``). Values under ``credentials``
  become ``Secret`` and are never echoed: messages name only the field and the type.
- Timestamps are ISO-8601 text, YAML timestamps or epoch milliseconds. A mapped audience may be
  a bare id instead of ``{id: ...}``.
- A file that cannot be read or parsed raises ``ConfigFileError``: one line, no field errors.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import posixpath
import re
from typing import Dict, Iterable, List, Mapping as TMapping, Optional, Tuple

import yaml

from transforms.errors import UserError, io_reason
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
    include_export_metadata: bool = False   # records end with ``_export`` (id, sequence, at, triggers)
    max_record_bytes: int = 1048576         # data plus partition key, 1 KiB..10 MiB
    max_requests_in_flight: int = 8         # PutRecords requests one sink instance has out at once


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
    expires_at_ms: Optional[int] = None  # no members from this instant on


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


TRIGGERS = ("audience", "identity", "attribute")   # the record triggers, in their listing order


@dataclasses.dataclass(frozen=True)
class DataUsage:
    labels: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()   # (attribute path, labels), config order
    forbidden: Tuple[str, ...] = ()                        # labels the marketing action may not export


@dataclasses.dataclass(frozen=True)
class Activation:
    """Consent, trigger switches and data usage labels; the defaults change nothing."""
    marketing_action: Optional[str] = None
    consent: Optional[str] = None            # a rule on attributes; None: every profile consents
    triggers: Tuple[str, ...] = TRIGGERS     # ``audience`` is always among them
    data_usage: DataUsage = DataUsage()


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    destination: Destination
    mapping: Mapping
    merge_policies: Tuple[MergePolicyConfig, ...]
    audiences: Tuple[AudienceDefinition, ...]
    alerts: AlertSettings = AlertSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    activation: Activation = Activation()
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


def upload_expiries(audiences: Iterable[AudienceDefinition]) -> Dict[str, int]:
    """The upload audiences with ``expires_at``: no members from that epoch-ms instant on."""
    return {a.id: a.upload.expires_at_ms for a in audiences
            if a.upload is not None and a.upload.expires_at_ms is not None}


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
_NUMBER = re.compile(r"^\s*-?\d+(\.\d*)?([eE][-+]?\d+)?\s*$")
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "an object", "null": "null"}
# errors that reject a value itself: the value is left out before the config is built
_VALUE_ERRORS = frozenset(("type", "pattern", "enum", "const", "minimum", "maximum", "exclusiveMinimum",
                           "exclusiveMaximum", "minLength", "maxLength", "propertyNames"))
_validator = None


def _schema_validator():
    """The validator of ``schemas/config.schema.json``, built once per process."""
    global _validator
    if _validator is None:
        import jsonschema
        from schemas import load_schema
        _validator = jsonschema.Draft202012Validator(load_schema("config.schema.json"))
    return _validator


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _path_text(path) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, str(part))
    return out


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _resolve(path: str, base_dir: str) -> str:
    """``path`` relative to the config's folder, a local directory or a URL (``s3://b/cfg``:
    ``../vip.csv`` is ``s3://b/vip.csv``; a URL's bucket is never left)."""
    if _URL.match(path) or os.path.isabs(path):
        return path
    if _URL.match(base_dir):
        scheme, rest = base_dir.split("://", 1)
        bucket, _, folder = rest.partition("/")
        return f"{scheme}://{bucket}{posixpath.normpath(posixpath.join('/', folder, path))}"
    return os.path.normpath(os.path.join(base_dir, path))


def _read_text(path: str) -> str:
    if not _URL.match(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    from apache_beam.io.filesystems import FileSystems  # gs://, s3://: Beam's filesystems
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def _editor_position(text: str, mark) -> Tuple[int, int]:
    """A YAML error's (line, column) from 1, as an editor shows them. PyYAML marks an error
    found at the end of the text (an unclosed bracket or quote) after the final line break, one
    line below the last one; that is the end of the last non-blank line."""
    if text[mark.index:].strip():
        return mark.line + 1, mark.column + 1
    end = len(text.rstrip())
    return text.count("\n", 0, end) + 1, end - text.rfind("\n", 0, end)


def load_config(path: str, environ: Optional[TMapping[str, str]] = None) -> ExportConfig:
    """Read, expand and validate a YAML or JSON config file; ``ConfigError`` lists every problem."""
    try:
        text = _read_text(path)
    except Exception as e:  # any filesystem's "cannot open" becomes one line
        raise ConfigFileError([f"cannot read config file: {io_reason(e)}"], path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = " at line {}, column {}".format(*_editor_position(text, mark)) if mark else ""
        raise ConfigFileError([f"not valid YAML or JSON{where}: {getattr(e, 'problem', None) or e}"], path) from None
    base_dir = path.rsplit("/", 1)[0] if _URL.match(path) else os.path.dirname(os.path.abspath(path))
    return config_from_dict(data, base_dir, os.environ if environ is None else environ, source=path)


class _Document:
    """The parsed document, ``${NAME}``-expanded and checked against the schema. Every error is
    kept with its field path; a value the schema rejects is left out, so the config can still
    be built and checked further (one round finds every mistake)."""

    def __init__(self, data: dict, environ: TMapping[str, str]):
        self.errors: List[str] = []
        self._whole_refs: set = set()   # paths of values that were exactly one ${NAME}
        self._unset: set = set()        # paths whose ${NAME} is not set (reported once)
        self.data = self._expand(data, (), environ)
        self._check()

    def _expand(self, value, path, environ):
        if isinstance(value, dict):
            return {k: self._expand(v, path + (k,), environ) for k, v in value.items()}
        if isinstance(value, list):
            return [self._expand(v, path + (i,), environ) for i, v in enumerate(value)]
        if isinstance(value, (_dt.date, _dt.datetime)):   # YAML timestamps: the text they were
            return value.isoformat()
        if not isinstance(value, str) or "${" not in value:
            return value
        missing = [m.group(1) for m in _ENV_REF.finditer(value) if m.group(1) not in environ]
        for name in missing:
            self.errors.append(f"{_path_text(path)}: environment variable {name} is not set")
        if missing:
            self._unset.add(path)
            return value
        if _ENV_REF.fullmatch(value):
            self._whole_refs.add(path)
        return _ENV_REF.sub(lambda m: environ[m.group(1)], value)

    def _check(self) -> None:
        validator = _schema_validator()
        errors = list(validator.iter_errors(self.data))
        # a whole ${NAME} in a numeric field gives a number: convert, then check again
        coerced = False
        for e in errors:
            path = tuple(e.absolute_path)
            if (e.validator == "type" and path in self._whole_refs and isinstance(e.instance, str)
                    and {"integer", "number"} & set(_as_list(e.validator_value)) and _NUMBER.match(e.instance)):
                number = float(e.instance)
                self._set(path, int(number) if number.is_integer() and "integer" in _as_list(e.validator_value)
                          else number)
                coerced = True
        if coerced:
            errors = list(validator.iter_errors(self.data))
        found = []
        for e in errors:
            found.extend(_render(e))
        for path, message, _ in found:
            if any(path[:len(u)] == u for u in self._unset):
                continue                       # its missing variable is the error
            self.errors.append(f"{_path_text(path)}: {message}" if path else message)
        for path, _, prune in sorted(found, key=lambda f: -len(f[0])):
            if prune:
                self._set(path, None)

    def _set(self, path, value) -> None:
        """Replace the value at ``path`` (``None`` in a dict: leave the key out)."""
        node = self.data
        try:
            for part in path[:-1]:
                node = node[part]
            if isinstance(node, dict) and value is None:
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass                               # a parent was left out already


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _render(error) -> List[Tuple[tuple, str, bool]]:
    """One schema error as ``(field path, message, leave the value out)`` entries; the schema's
    ``x-messages`` (``{keyword: text}``, ``{got}``/``{value}`` filled in) override the defaults.
    Values are never echoed except enum values (credentials have none)."""
    path = tuple(error.absolute_path)
    kind, instance, schema = error.validator, error.instance, error.schema
    custom = schema.get("x-messages", {}).get(kind) if isinstance(schema, dict) else None
    if kind in ("oneOf", "anyOf"):
        matching = _matching_branches(error)
        if len(matching) == 1:                 # the form this value's type takes: its own errors
            return [r for sub in matching[0] for r in _render(sub)]
        prune = not matching and not custom
        if custom is None:
            custom = f"expected {_expected(error.validator_value)}, got {{got}}"
        return [(path, custom.format(got=_type_name(instance), value=repr(instance)), prune)]
    if custom is not None and kind not in ("required", "dependentRequired", "additionalProperties"):
        return [(path, custom.format(got=_type_name(instance), value=repr(instance)), kind in _VALUE_ERRORS)]
    if kind == "type":
        return [(path, f"expected {' or '.join(_TYPE_NAMES[t] for t in _as_list(error.validator_value))}, "
                       f"got {_type_name(instance)}", True)]
    if kind == "required":
        return [(path + (key,), custom or "required field missing", False)
                for key in error.validator_value if key not in instance]
    if kind == "dependentRequired":
        return [(path + (need,), f"required with {key}", False)
                for key, needs in error.validator_value.items() if key in instance
                for need in needs if need not in instance]
    if kind == "additionalProperties":
        known = schema.get("properties", {})
        return [(path + (key,), "unknown key", True) for key in instance if key not in known]
    if kind in ("minimum", "maximum"):
        return [(path, f"must be at {'least' if kind == 'minimum' else 'most'} {error.validator_value}, "
                       f"got {instance}", True)]
    if kind == "enum":
        allowed = [str(v) for v in error.validator_value]
        return [(path, f"unknown value {instance!r} (expected {', '.join(allowed[:-1])} or {allowed[-1]})", True)]
    if kind == "uniqueItems":
        seen = []
        for i, item in enumerate(instance):
            if item in seen:
                return [(path + (i,), f"{item!r} is listed twice", False)]
            seen.append(item)
    if kind == "minItems":
        return [(path, f"needs at least {error.validator_value} item(s)", False)]
    return [(path, f"not allowed here ({kind})", kind in _VALUE_ERRORS)]


def _matching_branches(error) -> List[list]:
    """The sub-errors of each ``oneOf``/``anyOf`` branch whose type the value has."""
    branches: dict = {i: [] for i in range(len(error.validator_value))}
    for sub in error.context:
        branches[sub.relative_schema_path[0]].append(sub)
    return [subs for subs in branches.values()
            if not any(s.validator == "type" and len(s.relative_schema_path) == 2 for s in subs)]


def _expected(branches) -> str:
    names = []
    for b in branches:
        kind = b.get("type", "string" if "$ref" in b else None)
        for t in _as_list(kind):
            if t and _TYPE_NAMES[t] not in names:
                names.append(_TYPE_NAMES[t])
    return " or ".join(names) or "another form"


def config_from_dict(data, base_dir: str, environ: TMapping[str, str], source: Optional[str] = None) -> ExportConfig:
    """Validate a parsed document; relative paths resolve against ``base_dir`` (the file's folder)."""
    if not isinstance(data, dict):
        raise ConfigError([f"config: expected an object with destination, mapping, merge_policies and audiences, "
                           f"got {_type_name(data)}"], source)
    doc = _Document(data, environ)
    errors = doc.errors
    top = doc.data
    policies = _merge_policies(top.get("merge_policies") or [], errors)
    audiences = _audiences(top.get("audiences") or [], policies, base_dir, errors)
    activation = _activation(top.get("activation") or {})
    mapping = _mapping(top.get("mapping") or {}, audiences, activation, errors)
    alerts, evaluation = top.get("alerts") or {}, top.get("evaluation") or {}
    config = ExportConfig(
        destination=_destination(top.get("destination") or {}, base_dir, errors),
        mapping=mapping, merge_policies=policies, audiences=audiences,
        alerts=AlertSettings(float(alerts.get("latency_p95_seconds", 600.0))),
        evaluation=EvaluationSettings(evaluation.get("max_events_per_profile", 1000)),
        activation=activation, source=source)
    from transforms.audiences import check_audiences, check_consent  # the rule language imports this module
    errors += check_audiences(config) + check_consent(config)
    if errors:
        raise ConfigError(errors, source)
    return config


def _time_ms(obj: dict, key: str, where: str, errors: List[str]) -> Optional[int]:
    value = obj.get(key)
    if value is None:
        return None
    try:
        return parse_timestamp_ms(value)
    except ValueError as e:
        errors.append(f"{where}.{key}: {e}")
        return None


def _destination(d: dict, base_dir: str, errors: List[str]) -> Destination:
    c = d.get("credentials")
    credentials = None
    if c is not None:
        credentials = Credentials(*(Secret(c[k]) if c.get(k) is not None else None
                                    for k in ("access_key_id", "secret_access_key", "session_token")))
    r = d.get("retry") or {}
    retry = RetrySettings(r.get("max_retries", 2), r.get("base_delay_ms", 100), r.get("max_delay_ms", 5000))
    if retry.max_delay_ms < retry.base_delay_ms:
        errors.append(f"destination.retry.max_delay_ms: must be at least base_delay_ms ({retry.base_delay_ms})")
    return Destination(
        name=d.get("name"), region=d.get("region"), stream=d.get("stream"),
        dead_letter=_resolve(d.get("dead_letter", "dead-letter"), base_dir),
        description=d.get("description"), endpoint_url=d.get("endpoint_url"), credentials=credentials,
        include_segment_names=d.get("include_segment_names", False),
        include_segment_timestamps=d.get("include_segment_timestamps", False), retry=retry,
        include_export_metadata=d.get("include_export_metadata", False),
        max_record_bytes=d.get("max_record_bytes", 1048576),
        max_requests_in_flight=d.get("max_requests_in_flight", 8))


def _merge_policies(raw: list, errors: List[str]) -> Tuple[MergePolicyConfig, ...]:
    policies, seen = [], set()
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            continue
        pid = p.get("id")
        if pid is not None and pid in seen:
            errors.append(f"merge_policies[{i}].id: duplicate merge policy id {pid!r}")
        seen.add(pid)
        policies.append(MergePolicyConfig(pid, p.get("type"), p.get("default", False), tuple(
            d for d in p.get("datasets", ()) if d is not None)))
    if len(policies) == 1 and not policies[0].default:   # a single policy is the default
        policies[0] = dataclasses.replace(policies[0], default=True)
    return tuple(policies)


def _audiences(raw: list, policies, base_dir: str, errors: List[str]) -> Tuple[AudienceDefinition, ...]:
    policy_ids = {p.id for p in policies}
    # without a single default (reported), the first policy stands in: see the module docstring
    default = next((p.id for p in policies if p.default and p.id), None) or next((p.id for p in policies if p.id), None)
    audiences, seen = [], set()
    for i, a in enumerate(raw):
        if not isinstance(a, dict):
            continue
        where = f"audiences[{i}]"
        aid = a.get("id")
        if aid is not None and aid in seen:
            errors.append(f"{where}.id: duplicate audience id {aid!r}")
        seen.add(aid)
        policy = a.get("merge_policy", default)
        if a.get("merge_policy") is not None and policy not in policy_ids:
            errors.append(f"{where}.merge_policy: unknown merge policy {policy!r}")
        u, upload = a.get("upload"), None
        if isinstance(u, dict) and "rule" not in a and all(u.get(k) for k in ("path", "column", "namespace")):
            upload = UploadSource(_resolve(u["path"], base_dir), u["column"], u["namespace"],
                                  _time_ms(u, "expires_at", f"{where}.upload", errors))
        audiences.append(AudienceDefinition(
            id=aid, name=a.get("name"), merge_policy=policy, rule=a.get("rule"), upload=upload,
            description=a.get("description"),
            created_at_ms=_time_ms(a, "created_at", where, errors), updated_at_ms=_time_ms(a, "updated_at", where, errors)))
    return tuple(audiences)


def _activation(a: dict) -> Activation:
    usage = a.get("data_usage") or {}
    labels = tuple((path, tuple(x for x in found if x is not None))
                   for path, found in (usage.get("labels") or {}).items() if found is not None)
    return Activation(
        marketing_action=a.get("marketing_action"), consent=a.get("consent"),
        triggers=tuple(t for t in TRIGGERS if t in (a.get("triggers") or TRIGGERS)),
        data_usage=DataUsage(labels, tuple(x for x in usage.get("forbidden", ()) if x is not None)))


def forbidden_labels(attribute: str, data_usage: DataUsage) -> List[str]:
    """The forbidden labels a mapped attribute carries: on its own path, a parent path or a path
    below it (a mapped object exports its children); in ``forbidden`` order."""
    carried = set()
    for path, labels in data_usage.labels:
        if path == attribute or attribute.startswith(path + ".") or path.startswith(attribute + "."):
            carried.update(labels)
    return [label for label in data_usage.forbidden if label in carried]


def _mapping(m: dict, audiences, activation: Activation, errors: List[str]) -> Mapping:
    defined = {a.id for a in audiences}
    mapped, seen = [], set()
    for i, item in enumerate(m.get("audiences") or ()):
        if isinstance(item, str):  # a bare id is accepted too
            item = {"id": item}
        if not isinstance(item, dict):
            continue
        where = f"mapping.audiences[{i}]"
        aid = item.get("id")
        if aid is not None and aid in seen:
            errors.append(f"{where}.id: audience {aid!r} is mapped twice")
        elif aid is not None and aid not in defined:
            errors.append(f"{where}.id: mapped audience {aid!r} is not defined in audiences")
        seen.add(aid)
        mapped.append(MappedAudience(aid, _time_ms(item, "mapped_at", where, errors),
                                     _time_ms(item, "mapping_updated_at", where, errors)))
    attributes = tuple(m.get("attributes") or ())
    for i, attribute in enumerate(attributes):
        if attribute is None:
            continue
        for label in forbidden_labels(attribute, activation.data_usage):
            errors.append(f"mapping.attributes[{i}]: {attribute} carries label {label}, which marketing action "
                          f"{activation.marketing_action!r} forbids")
    return Mapping(attributes=tuple(a for a in attributes if a is not None), audiences=tuple(mapped))
