"""ProfileExporter skips re-evaluation when no rule input changed; this shows, on random update
streams (out of order, nested writes above and below rule paths, deletes, identities, events,
uploads, both merge policies, with and without ``until``), that the records and the final state
are exactly those of an exporter that re-evaluates on every update; also with the activation
controls on (consent, trigger switches, an expiring upload, export metadata)."""
import copy
import dataclasses
import random

import pytest

from tests.export_helpers import audience, make_config
from transforms.audiences import AudienceSet
from transforms.config import Activation, AudienceDefinition, MappedAudience, MergePolicyConfig, UploadSource
from transforms.exporter import ProfileExporter
from transforms.model import ProfileUpdate
from transforms.profile_state import ProfileState

D = 86_400_000
T0 = 1_714_557_600_000


def config(tmp_path, activation=None):
    """``activation``: a random generator that switches on consent, some triggers, an upload
    expiry and export metadata."""
    upload = tmp_path / "vip.csv"
    upload.write_text("email\na@x.io\nb@x.io\n")
    expires = None if activation is None else T0 + activation.randint(0, 40) * D
    cfg = make_config(
        audiences=(audience("make", 'vehicle.make = "DeLorean"'),
                   audience("deep", "a.b.c > 2 and not a.d.isNull()"),
                   audience("fans", 'interests.scifi = true or name.startsWith("Z")'),
                   audience("nested", 'inSegment("make") and x in [1, 2]'),
                   audience("buyers", 'xEvent[timestamp occurs <= 3 days before now].count() >= 2'),
                   audience("crm", 'tier = "gold" and a.b.c >= 1', "mp-crm"),
                   AudienceDefinition("vip", "vip", "mp-default",
                                      upload=UploadSource(str(upload), "email", "email", expires))),
        mapped=(MappedAudience("make"), MappedAudience("deep"), MappedAudience("buyers"),
                MappedAudience("crm"), MappedAudience("vip")),
        policies=(MergePolicyConfig("mp-default", "timestamp_ordered", default=True),
                  MergePolicyConfig("mp-crm", "dataset_precedence", datasets=("crm", "web"))),
        attributes=("name", "a.d", "other.mapped"))
    if activation is None:
        return cfg
    triggers = ("audience",) + tuple(t for t in ("identity", "attribute") if activation.random() < 0.6)
    return dataclasses.replace(
        cfg, activation=Activation("email", 'consent.email in ["y", "dy"] or a.d = "x"', triggers),
        destination=dataclasses.replace(cfg.destination, include_export_metadata=True))


VALUES = {"vehicle": [{"make": "DeLorean"}, {"make": "Tesla"}, {"make": None}, None, 3, {"year": 1985}],
          "a": [{"b": {"c": 3}}, {"b": {"c": 1}}, {"d": "x"}, {"d": None}, {"b": None}, {"b": 7}, None,
                {"b": {"c": 5}, "d": 1}],
          "interests": [{"scifi": True}, {"scifi": False}, None],
          "name": ["Zed", "Amy", None],
          "x": [1, 3, None],
          "tier": ["gold", "silver"],
          "other": [{"mapped": 1}, {"unmapped": 2}, None],
          "consent": [{"email": "y"}, {"email": "n"}, {"email": "dy"}, None],
          "unread": [1, 2, {"deep": 3}]}


def random_update(rng: random.Random, t: int) -> ProfileUpdate:
    attributes = {k: rng.choice(VALUES[k]) for k in rng.sample(sorted(VALUES), rng.randint(0, 3))}
    ids = {"email": (rng.choice(["a@x.io", "c@x.io"]),)} if rng.random() < 0.15 else {}
    removals = {"email": ("a@x.io",)} if rng.random() < 0.05 else {}
    event = {"eventType": "commerce.purchases", "timestamp": t - rng.randint(0, 2 * D)} \
        if rng.random() < 0.2 else None
    return ProfileUpdate("p", t, rng.choice([None, "crm", "web", "other"]), ids, removals, attributes, event)


def run(exporter, updates):
    state, out = ProfileState(), []
    for update in updates:
        out.extend(record for record, _ in exporter.update("p", state, update))
    return out, state


@pytest.mark.parametrize("activation", [False, True], ids=["plain", "activation"])
@pytest.mark.parametrize("seed", range(100))
def test_skipping_evaluation_changes_nothing(tmp_path, seed, activation):
    rng = random.Random(seed)
    cfg = config(tmp_path, random.Random(-seed) if activation else None)
    until = T0 + 20 * D if seed % 2 else None
    t, updates = T0, []
    for _ in range(60):
        t += rng.choice([-D, -3_600_000, 0, 1, 3_600_000, D, 2 * D])   # out of order and ties too
        updates.append(random_update(rng, t))
    fast = ProfileExporter(cfg, AudienceSet.from_config(cfg), until)
    reference = ProfileExporter(cfg, AudienceSet.from_config(cfg), until)
    reference.reads_now = True          # a rule reading `now`: every update re-evaluates
    fast_out, fast_state = run(fast, copy.deepcopy(updates))
    ref_out, ref_state = run(reference, copy.deepcopy(updates))
    assert fast_out == ref_out
    assert fast_state.realized == ref_state.realized and fast_state.timer_ms == ref_state.timer_ms
    assert fast_state.evaluated_ms == ref_state.evaluated_ms and fast_state.events == ref_state.events
    assert fast_state.consents == ref_state.consents and fast_state.sequences == ref_state.sequences
