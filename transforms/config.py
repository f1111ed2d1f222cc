"""Typed, immutable configuration of one export (SPEC 3).

The loader (``load_config``) and its validation live below the types. Every object here is a
frozen dataclass so a config can be captured by DoFns, pickled to workers and shared safely.
Times are epoch milliseconds (UTC) because that is what export records carry.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


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


class ConfigError(ValueError):
    """All validation errors of one config, each ``field.path: message``."""

    def __init__(self, errors, source: Optional[str] = None):
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.errors))
