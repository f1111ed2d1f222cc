"""Parquet snapshots (docs/semantics.md#inputs): rows to profile states, the seed transform, events, one-line errors."""
import datetime as dt
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.sample_data import snapshot_table, write_snapshot
from transforms.errors import UserError
from transforms.model import SegmentStatus
from transforms.snapshot import (ReadSnapshotProfiles, iter_snapshot_batches, parse_membership,
                                 snapshot_profiles)

MAY_1 = 1714557600000  # 2024-05-01T10:00:00Z


def test_generated_snapshot_rows_become_profiles(tmp_path):
    path = write_snapshot(str(tmp_path / "s.parquet"), 3000, with_membership=True, row_group_size=1000)
    batches = list(iter_snapshot_batches(str(tmp_path / "*.parquet"), batch_size=512))
    assert sum(b.num_rows for b in batches) == 3000
    profiles = [p for b in batches for p in snapshot_profiles(b)]
    rows = pq.read_table(path).to_pylist()
    for p, row in zip(profiles, rows):
        assert p.profile_id == row["profileId"]
        assert p.timestamp_ms == int(row["timestamp"].timestamp() * 1000)
        assert p.identities == {ns: tuple(i["id"] for i in items) for ns, items in row["identityMap"]}
        assert all(v is not None for v in _leaves(p.attributes))
    with_birth = next(p for p in profiles if "birthDate" in p.attributes.get("person", {}))
    assert isinstance(with_birth.attributes["person"]["birthDate"], dt.date)
    members = [p for p in profiles if p.segment_membership]
    assert members and all(p.segment_membership["aud-delorean"].status == "realized" for p in members)  # 'existing'
    assert any("vehicle" not in p.attributes for p in profiles)  # an all-null struct is absent, not {}


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


def test_membership_statuses_and_unreadable_entries():
    text = json.dumps({"ups": {
        "a": {"status": "realized", "lastQualificationTime": "2024-05-01T10:00:00Z"},
        "b": {"status": "existing", "lastQualificationTime": "2024-05-01T10:00:00+0000"},
        "c": {"status": "exited", "lastQualificationTime": "2024-05-01T10:00:00Z"},
        "d": {"status": "realized"}, "e": {"status": "maybe", "lastQualificationTime": "2024-05-01T10:00:00Z"}}})
    assert parse_membership(text) == {"a": SegmentStatus("realized", MAY_1), "b": SegmentStatus("realized", MAY_1),
                                      "c": SegmentStatus("exited", MAY_1)}
    assert parse_membership(None) == parse_membership("not json") == parse_membership("[1]") == {}


def test_timestamp_units_null_rows_and_string_dates():
    table = pa.table({
        "profileId": ["p-1", None, "p-3"],
        "timestamp": pa.array([MAY_1 * 1000 + 999, 0, None], pa.timestamp("us")),  # naive: UTC; us truncated
        "identityMap": pa.array([[("email", [{"id": "a@b.c"}, {"id": ""}])], None, [("ecid", [])]],
                                pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string())])))),
        "person": pa.array([{"birthDate": "1985-10-26", "name": None}, None, None],
                           pa.struct([("birthDate", pa.string()), ("name", pa.struct([("firstName", pa.string())]))])),
    })
    [p1, p3] = snapshot_profiles(table.to_batches()[0])
    assert (p1.profile_id, p1.timestamp_ms, p1.identities, p1.attributes) == (
        "p-1", MAY_1, {"email": ("a@b.c",)}, {"person": {"birthDate": "1985-10-26"}})
    assert (p3.timestamp_ms, p3.identities, p3.attributes, p3.segment_membership) == (0, {}, {}, {})


def write_table(path, **columns):
    pq.write_table(pa.table(columns), str(path))
    return str(path)


BAD_SNAPSHOTS = [
    ("nothing.parquet", None, "--snapshot matches no files: {dir}/nothing.parquet"),
    ("text.parquet", b"not parquet", "--snapshot {dir}/text.parquet: not a readable Parquet file ("),
    ("noid.parquet", {"timestamp": [1]}, "--snapshot {dir}/noid.parquet: no 'profileId' column"),
    ("nots.parquet", {"profileId": ["p"]}, "--snapshot {dir}/nots.parquet: no 'timestamp' column"),
    ("bool.parquet", {"profileId": ["p"], "timestamp": [True]},
     "--snapshot {dir}/bool.parquet: column 'timestamp' is bool, expected a Parquet timestamp"),
]


@pytest.mark.parametrize("name,content,message", BAD_SNAPSHOTS)
def test_bad_snapshots_are_one_line_errors_at_the_call(tmp_path, name, content, message):
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        write_table(tmp_path / name, **content)
    with pytest.raises(UserError) as e:
        iter_snapshot_batches(str(tmp_path / name))  # no iteration needed
    assert str(e.value).startswith(message.format(dir=tmp_path)) and "\n" not in str(e.value)
    if content is not None:
        with pytest.raises(UserError, match="^--seed_snapshot"):
            ReadSnapshotProfiles(str(tmp_path / name))


def test_seed_transform_reads_every_file(tmp_path):
    for i in range(3):
        pq.write_table(snapshot_table(50, seed=i, start=i * 50, with_membership=True), str(tmp_path / f"s-{i}.parquet"))
    with TestPipeline() as p:
        profiles = p | ReadSnapshotProfiles(str(tmp_path / "s-*.parquet"))
        assert_that(profiles | beam.Map(lambda s: s.profile_id), equal_to([f"p-{i}" for i in range(150)]))
