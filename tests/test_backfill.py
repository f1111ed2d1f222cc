"""The vectorized backfill formatter against the streaming ``RecordFormatter`` (byte for byte),
its pieces table-driven, and ``ExportSnapshot`` into ``WriteRecordFiles`` on the DirectRunner."""
import glob
import hashlib
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from transforms import backfill as B
from transforms.config import (AudienceDefinition, Destination, ExportConfig, Mapping, MappedAudience,
                               MergePolicyConfig)
from transforms.record_format import RecordFormatter
from transforms.snapshot import snapshot_profiles

T0 = 1_714_557_600_000  # 2024-05-01T10:00:00Z
IDENTITY = pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string())])))


def make_config(attributes=("person.name.firstName",), names=False, timestamps=False, policies=None):
    """Audiences a, b, c (mapped: a, b) on mp-1; d (mapped) on mp-2."""
    policies = policies or {"a": "mp-1", "b": "mp-1", "c": "mp-1", "d": "mp-2"}
    return ExportConfig(
        destination=Destination(name="t", region="us-east-2", stream="s", dead_letter="/tmp/dl",
                                include_segment_names=names, include_segment_timestamps=timestamps),
        mapping=Mapping(attributes=tuple(attributes),
                        audiences=tuple(MappedAudience(a, T0 + 1, T0 + 2) for a in "abd")),
        merge_policies=(MergePolicyConfig("mp-1", "timestamp_ordered", default=True),
                        MergePolicyConfig("mp-2", "dataset_precedence", datasets=("crm",))),
        audiences=tuple(AudienceDefinition(a, f"Audience {a.upper()}", policies[a], rule="x.y = 1",
                                           created_at_ms=T0 - 10 if a != "b" else None, updated_at_ms=T0 - 5)
                        for a in "abcd"))


class FixedMembers:
    """Stands in for ``AudienceSet``: membership columns given by the test."""

    def __init__(self, members):
        self.members = {a: pa.array(v, pa.bool_()) for a, v in members.items()}

    def evaluate_batch(self, batch, now_ms, event_aggregates=None):
        return self.members


def export(config, batch, members, selected=("a", "b", "d")):
    exporter = B.SnapshotExporter(config, FixedMembers(members), list(selected), T0)
    records, _ = exporter.export(batch)
    return {r.policy_id: list(zip(r.partition_keys.to_pylist(), r.data().to_pylist())) for r in records}


def reference(config, batch, members, selected=("a", "b", "d")):
    """What streaming's formatter makes of the same profiles (docs/semantics.md#exports "Backfill")."""
    formatter = RecordFormatter(config)
    out = {}
    for i, p in enumerate(snapshot_profiles(batch)):
        for policy in config.merge_policies:
            ids = [a.id for a in config.audiences if a.merge_policy == policy.id]
            if any(members[a][i] for a in ids if a in selected):
                ups = [(a, "realized", p.segment_membership[a].last_qualification_ms if a in p.segment_membership
                        else p.timestamp_ms) for a in ids if members[a][i]]
                out.setdefault(policy.id, []).append(
                    (formatter.partition_key(p.profile_id), formatter.format(p.attributes, ups, p.identities).decode()))
    return out


def batch_of(n, identity=None, membership=None, timestamps=None, ids=None, **attributes):
    columns = {"profileId": pa.array(ids or [f"p-{i}" for i in range(n)], pa.string()),
               "timestamp": pa.array(timestamps or [T0 + i for i in range(n)], pa.timestamp("ms", tz="UTC")),
               "identityMap": pa.array(identity or [[("ecid", [{"id": f"e{i}"}])] for i in range(n)], IDENTITY)}
    if membership is not None:
        columns["segmentMembership"] = pa.array(membership, pa.string())
    columns.update(attributes)
    return pa.RecordBatch.from_pydict(columns)


# ------------------------------------------------------------------ pieces

@pytest.mark.parametrize("text", ["plain", 'say "hi"', "back\\slash", "tab\there", "nl\nx\r", "\x00\x1f",
                                  "Zoë ✓ \u2028", "", '\\"', "\x7f"])
def test_json_escaped_is_json_escaping(text):
    values = pa.array(["ok", text, None])
    got = B.json_escaped(values).to_pylist()
    assert got == ["ok", json.dumps(text, ensure_ascii=False)[1:-1], None]


def test_json_floats_match_python():
    values = [0.0, -0.0, 1.0, 1.5, 0.1, 1e-4, 1e-5, 1.2345e-7, 12345.678, 9_999_999_999.5, 1e10, 1e15, 1e16,
              1.2345678901234568e17, 5e-324, float("nan"), float("inf"), -float("inf"), None]
    got = B.json_member(",", pa.array(values, pa.float64())).to_pylist()
    assert got == [None if v is None else "," + json.dumps(v) for v in values]
    f32 = B.json_member("", pa.array([0.1, 2.5], pa.float32())).to_pylist()
    assert f32 == [json.dumps(v) for v in pa.array([0.1, 2.5], pa.float32()).to_pylist()]


def test_nested_attributes_in_mapping_order_with_absent_and_empty_objects():
    name = pa.StructArray.from_arrays([pa.array(["Jo", None, None, 'Q"']), pa.array(["Doe", None, None, None])],
                                      ["firstName", "lastName"])
    person = pa.StructArray.from_arrays([name, pa.array([1, None, None, 2], pa.date32()),
                                         pa.array([True, None, False, None])], ["name", "birthDate", "vip"],
                                        mask=pa.array([False, False, True, False]))
    email = pa.StructArray.from_arrays([pa.array(["a@x", None, "c@x", None])], ["address"])
    batch = batch_of(4, person=person, personalEmail=email, other=pa.array([1, 2, 3, 4]))
    config = make_config(["personalEmail.address", "person.name.firstName", "person.vip", "person.birthDate",
                          "person.name.lastName", "missing.path", "other"])
    got = export(config, batch, {a: [True] * 4 for a in "abcd"}, selected="a")["mp-1"]
    attributes = [json.loads(data) for _, data in got]
    assert [list(a) for a in attributes] == [
        ["personalEmail", "person", "other", "segmentMembership", "identityMap"],
        ["other", "segmentMembership", "identityMap"],
        ["personalEmail", "other", "segmentMembership", "identityMap"],
        ["person", "other", "segmentMembership", "identityMap"]]
    assert got[0][1].startswith('{"personalEmail":{"address":"a@x"},"person":{"name":{"firstName":"Jo",'
                                '"lastName":"Doe"},"vip":true,"birthDate":"1970-01-02"},"other":1,')
    assert got[3][1].startswith('{"person":{"name":{"firstName":"Q\\""},"birthDate":"1970-01-03"},"other":4,')
    assert got == reference(config, batch, {a: [True] * 4 for a in "abcd"}, selected="a")["mp-1"]


def test_struct_mapped_whole_and_no_attributes_at_all():
    loyalty = pa.StructArray.from_arrays(
        [pa.array([1, None]), pa.StructArray.from_arrays([pa.array([None, None], pa.string())], ["tier"])],
        ["points", "level"])
    batch = batch_of(2, loyalty=loyalty)
    config = make_config(["loyalty"])
    members = {a: [True, True] for a in "abcd"}
    got = export(config, batch, members, selected="a")["mp-1"]
    assert got[0][1].startswith('{"loyalty":{"points":1},"segmentMembership"')
    assert got[1][1].startswith('{"segmentMembership"')
    assert got == reference(config, batch, members, selected="a")["mp-1"]


@pytest.mark.parametrize("identity", [
    [[("email", [{"id": 'j"o@x'}, {"id": "b\\c"}]), ("ecid", [{"id": "1"}])], []],          # vectorized
    [[("email", []), ("ecid", [{"id": "1"}])], None],                                         # per row
    [[("email", [{"id": None}, {"id": ""}, {"id": "z"}])], [("ecid", [{"id": "\n"}])]],     # per row
])
def test_identity_map(identity):
    batch = batch_of(2, identity=identity)
    config = make_config()
    members = {a: [True, True] for a in "abcd"}
    got = export(config, batch, members)
    assert got == reference(config, batch, members)
    assert json.loads(got["mp-1"][0][1])["identityMap"] == {
        ns: [{"id": i["id"]} for i in items if i["id"]] for ns, items in identity[0] if any(i["id"] for i in items)}


@pytest.mark.parametrize("names,timestamps", [(False, False), (True, False), (False, True), (True, True)])
def test_ups_per_policy_with_toggles(names, timestamps):
    config = make_config(names=names, timestamps=timestamps)
    batch = batch_of(4)
    members = {"a": [True, False, False, False], "b": [False, True, False, True], "c": [True, True, True, False],
               "d": [False, False, True, True]}
    got = export(config, batch, members)
    # row 2 is in c (not selected) and d: one record, on mp-2 only; row 3 on both policies
    assert [k for k, _ in got["mp-1"]] == ["p-0", "p-1", "p-3"] and [k for k, _ in got["mp-2"]] == ["p-2", "p-3"]
    ups = json.loads(got["mp-1"][0][1])["segmentMembership"]["ups"]
    assert list(ups) == ["a", "c"]
    a = ups["a"]
    assert a["status"] == "realized" and a["lastQualificationTime"] == "2024-05-01T10:00:00Z"
    assert ("name" in a) == names and ("createdAt" in a) == timestamps and ("mappingCreatedAt" in a) == timestamps
    assert "mappingCreatedAt" not in ups["c"]
    assert got == reference(config, batch, members)


def test_qualification_time_from_segment_membership_else_row_timestamp():
    membership = ['{"ups":{"a":{"lastQualificationTime":"2024-04-01T08:00:00Z","status":"existing"}}}',
                  '{"ups": {"a": {"status": "realized", "lastQualificationTime": "2024-04-01T08:00:00.999+02:00"}}}',
                  '{"ups":{"b":{"lastQualificationTime":"2024-04-02T08:00:00Z","status":"realized"}}}',
                  '{"ups":{"a":{"lastQualificationTime":"yesterday","status":"realized"}}}',
                  '{"ups":{"a":{"lastQualificationTime":"2023-12-31T23:00:00-0130","status":"exited"}}}',
                  None]
    batch = batch_of(6, membership=membership, timestamps=[T0 - 1500] * 6)
    config = make_config()
    members = {"a": [True] * 6, "b": [False] * 6, "c": [False] * 6, "d": [False] * 6}
    got = export(config, batch, members)["mp-1"]
    times = [json.loads(d)["segmentMembership"]["ups"]["a"]["lastQualificationTime"] for _, d in got]
    assert times == ["2024-04-01T08:00:00Z", "2024-04-01T06:00:00Z", "2024-05-01T09:59:58Z",
                     "2024-05-01T09:59:58Z", "2024-01-01T00:30:00Z", "2024-05-01T09:59:58Z"]
    assert got == reference(config, batch, members)["mp-1"]


def test_long_profile_ids_get_their_sha256_as_partition_key():
    long_id = "p" * 257
    batch = batch_of(3, ids=["p-1", long_id, "x" * 256])
    got = export(make_config(), batch, {a: [True] * 3 for a in "abcd"})["mp-1"]
    assert [k for k, _ in got] == ["p-1", hashlib.sha256(long_id.encode()).hexdigest(), "x" * 256]


def test_no_qualifying_row_no_record():
    assert export(make_config(), batch_of(2), {a: [False, False] for a in "abcd"}) == {}


def test_record_batches_are_the_records_kinesis_and_the_file_sink_take():
    from transforms.file_sink import record_lines
    from transforms.model import ExportRecord, ExportRecordBatch
    records = ExportRecordBatch("mp-1", pa.array(['k"1', "ü"]), ("{", pa.array(['"x":1}', '"y":"ü"}'])))
    assert records.records() == [ExportRecord('k"1', b'{"x":1}'), ExportRecord("ü", '{"y":"ü"}'.encode())]
    assert record_lines(records.partition_keys, records.parts) == (
        '{"partitionKey":"k\\"1","data":{"x":1}}\n{"partitionKey":"ü","data":{"y":"ü"}}\n').encode()


# ------------------------------------------------------------------ property: same bytes as streaming

NASTY = ["Jo", 'Q"uote', "back\\slash", "new\nline", "Zoë", "", "tab\t", "\x01ctl", "✓ \u2028"]
TIMES = ["2024-04-01T08:00:00Z", "2024-04-01T08:00:00.5Z", "2024-04-01T10:00:00+02:00", "2024-04-01T08:00:00+0000",
         "1999-12-31T23:59:59-05:30", "garbage"]


def random_batch(rng, n, odd_identities):
    def one(values):
        return values[rng.integers(len(values))]

    def pick(values, null=0.2):
        return [None if rng.random() < null else one(values) for _ in range(n)]

    def identity(i):
        if not odd_identities:
            return [(ns, [{"id": f"{ns}-{i}-{j}" + one(NASTY)[:3]} for j in range(rng.integers(1, 3))])
                    for ns in ("email", 'we"ird')[:rng.integers(0, 3)]]
        if rng.random() < 0.1:
            return None
        return [(ns, [{"id": one(NASTY + [None])} for _ in range(rng.integers(0, 3))]) for ns in ("email", "ecid")]

    def membership():
        if rng.random() < 0.3:
            return None
        ups = {a: {"lastQualificationTime": one(TIMES), "status": one(["realized", "existing", "exited"])}
               for a in "abcd" if rng.random() < 0.5}
        return json.dumps({"ups": ups}, separators=(",", ":") if rng.random() < 0.5 else (", ", ": "))

    name = pa.StructArray.from_arrays([pa.array(pick(NASTY)), pa.array(pick(NASTY), pa.large_string())],
                                      ["firstName", "lastName"], mask=pa.array(rng.random(n) < 0.1))
    person = pa.StructArray.from_arrays(
        [name, pa.array(pick([-400, 0, 7000, 19000]), pa.date32()), pa.array(pick([True, False])),
         pa.array(pick([["a"], [], ["b", None]]), pa.list_(pa.string()))], ["name", "birthDate", "vip", "tags"])
    loyalty = pa.StructArray.from_arrays(
        [pa.array(pick([0, -3, 2 ** 40])), pa.array(pick([0.5, 1.0, 1e-7, 3e15, math.inf, 123.456])),
         pa.array(pick(["gold", 'pla"tinum'])).dictionary_encode()], ["points", "score", "tier"])
    columns = dict(
        person=person, loyalty=loyalty,
        personalEmail=pa.StructArray.from_arrays([pa.array(pick(["a@x.com", "ü@x"]))], ["address"]),
        updatedAt=pa.array(pick([T0, T0 + 123, -1]), pa.timestamp("ms", tz="UTC")),
        note=pa.array(pick(NASTY), pa.string()))
    ids = [f"p-{i}" if rng.random() < 0.95 else f"long-{i}-" + "x" * 260 for i in range(n)]
    return batch_of(n, ids=ids, identity=[identity(i) for i in range(n)], membership=[membership() for _ in range(n)],
                    timestamps=[int(t) for t in T0 + rng.integers(-10 ** 11, 10 ** 9, n)], **columns)


@pytest.mark.parametrize("odd_identities,names,timestamps", [(False, False, False), (True, True, True)])
def test_vectorized_records_are_byte_identical_to_the_streaming_formatter(odd_identities, names, timestamps):
    rng = np.random.default_rng(5)
    n = 2000
    batch = random_batch(rng, n, odd_identities)
    config = make_config(["personalEmail.address", "person.name.firstName", "loyalty", "person.birthDate",
                          "person.vip", "note", "person.name.lastName", "person.tags", "updatedAt", "nope.x"],
                         names=names, timestamps=timestamps)
    members = {a: list(rng.random(n) < p) for a, p in zip("abcd", (0.3, 0.2, 0.5, 0.3))}
    got = export(config, batch, members)
    assert got == reference(config, batch, members)
    assert sum(len(v) for v in got.values()) > n // 2


# ------------------------------------------------------------------ Beam: snapshot files to the file sink

def test_export_snapshot_to_file_sink_and_records(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.sample_data import write_snapshot
    from transforms.audiences import AudienceSet
    from transforms.config import load_config
    from transforms.file_sink import WriteRecordFiles
    import yaml

    snapshot = write_snapshot(str(tmp_path / "snap.parquet"), 3000, seed=3, with_membership=True, row_group_size=1000)
    doc = {"destination": {"name": "t", "region": "us-east-2", "stream": "s", "dead_letter": str(tmp_path / "dl")},
           "mapping": {"attributes": ["person.name.firstName", "person.birthDate", "personalEmail.address"],
                       "audiences": [{"id": "aud-delorean"}, {"id": "aud-gold"}]},
           "merge_policies": [{"id": "mp", "type": "timestamp_ordered", "default": True}],
           "audiences": [{"id": "aud-delorean", "name": "D", "rule": 'vehicle.make = "DeLorean"'},
                         {"id": "aud-gold", "name": "G", "rule": 'loyalty.tier = "gold"'},
                         {"id": "aud-rich", "name": "R", "rule": "loyalty.points > 9000"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(str(tmp_path / "c.yaml"))
    selected = ["aud-delorean", "aud-gold"]
    expected = []
    exporter = B.SnapshotExporter(config, AudienceSet.from_config(config), selected, T0)
    for b in pq.ParquetFile(snapshot).iter_batches(batch_size=700):
        records, _ = exporter.export(b)
        expected += [{"partitionKey": k, "data": json.loads(d)}
                     for r in records for k, d in zip(r.partition_keys.to_pylist(), r.data().to_pylist())]
    out = tmp_path / "out"
    with TestPipeline() as p:
        export = p | B.ExportSnapshot(config, str(tmp_path / "*.parquet"), selected, T0, batch_size=700)
        export["records"] | WriteRecordFiles(str(out))
        assert_that(export["records"] | beam.FlatMap(lambda b: b.records())
                    | beam.Map(lambda r: (r.partition_key, json.loads(r.data))),
                    equal_to([(e["partitionKey"], e["data"]) for e in expected]), label="Records")
        assert_that(export["dead_letter"], equal_to([]), label="NoDeadLetters")
    lines = [json.loads(line) for f in glob.glob(str(out / "records-*.jsonl")) for line in open(f, encoding="utf-8")]
    assert sorted(lines, key=json.dumps) == sorted(expected, key=json.dumps)
    assert not glob.glob(str(out / ".*.tmp"))
    rich = [e for e in expected if "aud-rich" in e["data"]["segmentMembership"]["ups"]]
    assert 500 < len(expected) < 3000 and rich   # unselected audiences ride along, none exported alone
    assert all(set(e["data"]["segmentMembership"]["ups"]) & set(selected) for e in expected)
