import datetime
import hashlib
import json

import pytest

from tests.export_helpers import DELOREAN, audience, make_config
from transforms.config import MappedAudience
from transforms.record_format import RecordFormatter
from transforms import timeutil
from transforms.timeutil import format_qualification_time, parse_timestamp_ms

T = parse_timestamp_ms("2024-05-01T10:00:00Z")
VIEW = {"vehicle": {"make": "DeLorean"}, "personalEmail": {"address": "john.doe@acme.com"},
        "person": {"birthDate": "1985-10-26", "name": {"lastName": "Doe", "firstName": "John"}}}
IDENTITIES = {"email": ("john.doe@acme.com",), "ecid": ("1457...",)}

DOCUMENTED_SAMPLE = (
    b'{"person":{"name":{"firstName":"John","lastName":"Doe"},"birthDate":"1985-10-26"},'
    b'"personalEmail":{"address":"john.doe@acme.com"},'
    b'"segmentMembership":{"ups":{'
    b'"aud-delorean":{"lastQualificationTime":"2024-05-01T10:00:00Z","status":"realized",'
    b'"createdAt":1648553325000,"updatedAt":1648553330000,'
    b'"mappingCreatedAt":1713014970000,"mappingUpdatedAt":1713014970000,'
    b'"name":"Customer with DeLorean Cars"}}},'
    b'"identityMap":{"email":[{"id":"john.doe@acme.com"}],"ecid":[{"id":"1457..."}]}}')


def test_spec_sample_record_bytes():
    formatter = RecordFormatter(make_config(names=True, timestamps=True))
    assert formatter.format(VIEW, [("aud-delorean", "realized", T + 999)], IDENTITIES) == DOCUMENTED_SAMPLE


UNMAPPED = audience("aud-fans", "x = 1", name="Science fiction fans")
NO_TIMES = audience("aud-plain", "x = 1", name="Plain")
ALL = (DELOREAN, UNMAPPED, NO_TIMES)
MAPPED = (make_config().mapping.audiences[0], MappedAudience("aud-plain", 5, 6))
UPS = [("aud-delorean", "exited", T), ("aud-fans", "realized", T), ("aud-plain", "realized", T)]
QT = '"lastQualificationTime":"2024-05-01T10:00:00Z"'


@pytest.mark.parametrize("names,timestamps,expected", [
    (False, False, {"aud-delorean": f'{{{QT},"status":"exited"}}',
                    "aud-fans": f'{{{QT},"status":"realized"}}',
                    "aud-plain": f'{{{QT},"status":"realized"}}'}),
    (True, False, {"aud-delorean": f'{{{QT},"status":"exited","name":"Customer with DeLorean Cars"}}',
                   "aud-fans": f'{{{QT},"status":"realized","name":"Science fiction fans"}}',
                   "aud-plain": f'{{{QT},"status":"realized","name":"Plain"}}'}),
    # unmapped: no mapping times; no created_at/updated_at configured: omitted
    (False, True, {"aud-delorean": f'{{{QT},"status":"exited","createdAt":1648553325000,"updatedAt":1648553330000,'
                                   '"mappingCreatedAt":1713014970000,"mappingUpdatedAt":1713014970000}',
                   "aud-fans": f'{{{QT},"status":"realized"}}',
                   "aud-plain": f'{{{QT},"status":"realized","mappingCreatedAt":5,"mappingUpdatedAt":6}}'}),
])
def test_segment_toggles(names, timestamps, expected):
    formatter = RecordFormatter(make_config(audiences=ALL, mapped=MAPPED, names=names, timestamps=timestamps))
    data = formatter.format({}, UPS, {}).decode()
    ups = ",".join(f'"{a}":{v}' for a, v in expected.items())
    assert data == f'{{"segmentMembership":{{"ups":{{{ups}}}}},"identityMap":{{}}}}'


@pytest.mark.parametrize("attributes,view,expected_prefix", [
    # absent attributes left out, empty objects too
    (("person.name.firstName", "personalEmail.address"), {"person": {"name": {}}, "personalEmail": {"address": None}}, ""),
    # a nested object takes the place of its first mapped path
    (("person.name.firstName", "personalEmail.address", "person.birthDate"),
     {"person": {"birthDate": "1985-10-26", "name": {"firstName": "J"}}, "personalEmail": {"address": "e"}},
     '"person":{"name":{"firstName":"J"},"birthDate":"1985-10-26"},"personalEmail":{"address":"e"},'),
    # any JSON type; a mapped object path exports the whole object (and covers paths under it)
    (("a.n", "a.b", "a.l", "o", "o.x"), {"a": {"n": 1.5, "b": False, "l": [1, "x", None]}, "o": {"x": {"y": 0}, "z": "é"}},
     '"a":{"n":1.5,"b":false,"l":[1,"x",null]},"o":{"x":{"y":0},"z":"é"},'),
    # a mapped leaf whose value is not an object where the tree expects one
    (("person.name.firstName",), {"person": {"name": "John"}}, ""),
    # dates from Parquet seeds as YYYY-MM-DD
    (("person.birthDate",), {"person": {"birthDate": datetime.date(1985, 10, 26)}}, '"person":{"birthDate":"1985-10-26"},'),
])
def test_mapped_attributes(attributes, view, expected_prefix):
    formatter = RecordFormatter(make_config(attributes=attributes))
    data = formatter.format(view, [], {})
    assert data == ("{" + expected_prefix + '"segmentMembership":{"ups":{}},"identityMap":{}}').encode()
    json.loads(data)


def test_unicode_and_escaping_compact_utf8():
    formatter = RecordFormatter(make_config(attributes=("person.name.firstName",)))
    data = formatter.format({"person": {"name": {"firstName": 'Zoë "Z"\n'}}}, [],
                            {"e\"mail": ("ß@x.de", "b")})
    assert data == ('{"person":{"name":{"firstName":"Zoë \\"Z\\"\\n"}},"segmentMembership":{"ups":{}},'
                    '"identityMap":{"e\\"mail":[{"id":"ß@x.de"},{"id":"b"}]}}').encode()
    assert json.loads(data)["identityMap"] == {"e\"mail": [{"id": "ß@x.de"}, {"id": "b"}]}


@pytest.mark.parametrize("profile_id,key", [
    ("p-1", "p-1"),
    ("x" * 256, "x" * 256),
    ("x" * 257, hashlib.sha256(b"x" * 257).hexdigest()),
    ("é" * 257, hashlib.sha256(("é" * 257).encode()).hexdigest()),
])
def test_partition_key(profile_id, key):
    assert RecordFormatter.partition_key(profile_id) == key


@pytest.mark.parametrize("ms,text", [
    (0, "1970-01-01T00:00:00Z"),
    (1_714_557_600_000, "2024-05-01T10:00:00Z"),
    (1_714_557_600_999, "2024-05-01T10:00:00Z"),      # seconds precision: the milliseconds are cut
    (1_714_557_659_000, "2024-05-01T10:00:59Z"),
    (86_399_999, "1970-01-01T23:59:59Z"),
    (951_782_400_000, "2000-02-29T00:00:00Z"),
    (-1, "1969-12-31T23:59:59Z"),                      # before the epoch: the second it falls in
    (-86_400_000, "1969-12-31T00:00:00Z"),
    (253_402_300_799_000, "9999-12-31T23:59:59Z"),
])
def test_qualification_time_text(ms, text):
    assert format_qualification_time(ms) == text


def test_qualification_times_over_more_days_than_the_dates_kept():
    start = datetime.datetime(2024, 5, 1, 11, 2, 3)
    for day in range(timeutil._DATES_KEPT + 10):
        assert (format_qualification_time(T + day * 86_400_000 + 3_723_000)
                == (start + datetime.timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert len(timeutil._DATES) <= timeutil._DATES_KEPT


def test_entries_over_more_qualification_times_than_the_entries_kept():
    """A formatter keeps the entry texts it wrote; past its bound it starts again, same bytes."""
    from transforms import record_format
    formatter = RecordFormatter(make_config())
    start = datetime.datetime(2024, 5, 1, 10, 0, 0)
    for n in range(record_format._ENTRIES_KEPT + 10):
        for status in ("realized", "exited"):
            time_text = (start + datetime.timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert formatter.format({}, [("aud-delorean", status, T + n * 1000)], {}).decode() == (
                f'{{"segmentMembership":{{"ups":{{"aud-delorean":{{"lastQualificationTime":"{time_text}",'
                f'"status":"{status}"}}}}}},"identityMap":{{}}}}')
    assert len(formatter._entries) <= record_format._ENTRIES_KEPT
