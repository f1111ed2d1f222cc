"""Configs for the export tests, built from the config types directly (no loader, no files)."""
from __future__ import annotations

from transforms.config import (AudienceDefinition, Destination, EvaluationSettings, ExportConfig,
                               MappedAudience, Mapping, MergePolicyConfig)
from transforms.timeutil import parse_timestamp_ms

MAPPED_ATTRIBUTES = ("person.name.firstName", "person.name.lastName", "person.birthDate",
                     "personalEmail.address")

DELOREAN = AudienceDefinition(
    id="aud-delorean", name="Customer with DeLorean Cars", merge_policy="mp-default",
    rule='vehicle.make = "DeLorean" and person.birthDate < date("1990-01-01")',
    created_at_ms=parse_timestamp_ms("2022-03-29T11:28:45Z"),
    updated_at_ms=parse_timestamp_ms("2022-03-29T11:28:50Z"))
MAPPED_DELOREAN = MappedAudience("aud-delorean", parse_timestamp_ms("2024-04-13T13:29:30Z"),
                                 parse_timestamp_ms("2024-04-13T13:29:30Z"))


def make_config(audiences=(DELOREAN,), mapped=(MAPPED_DELOREAN,), attributes=MAPPED_ATTRIBUTES,
                policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),),
                names=False, timestamps=False, max_events=1000) -> ExportConfig:
    return ExportConfig(
        destination=Destination(name="Kinesis - test", region="us-east-2", stream="s",
                                dead_letter="/tmp/dl", include_segment_names=names,
                                include_segment_timestamps=timestamps),
        mapping=Mapping(attributes=tuple(attributes), audiences=tuple(mapped)),
        merge_policies=tuple(policies),
        audiences=tuple(audiences),
        evaluation=EvaluationSettings(max_events_per_profile=max_events))


def audience(aud_id, rule, policy="mp-default", **kw) -> AudienceDefinition:
    return AudienceDefinition(id=aud_id, name=kw.pop("name", aud_id), merge_policy=policy, rule=rule, **kw)
