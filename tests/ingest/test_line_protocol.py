"""POST /api/v2/write: InfluxDB line protocol, its mapping to readings and
every error path."""

from __future__ import annotations

import time
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from ingest import line_protocol
from ingest.line_protocol import parse, to_ms
from ingest.naming import series_name
from tests.ingest.conftest import json_body
from tests.ingest.helpers import stored

URL = "/api/v2/write"
NS = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def readings(text: str, precision: str = "ns") -> list[tuple[str, float, int]]:
    return [(r.data["name"], r.data["value"], r.data["timestamp"]) for r in parse(text.encode(), precision)]


def test_measurement_and_field_make_the_name_and_tags_the_labels():
    assert readings(f"cpu,host=a,dc=west usage=72.5,idle=3i {NS}") == [
        ("cpu.idle{dc=west,host=a}", 3, 1_700_000_000_123),
        ("cpu.usage{dc=west,host=a}", 72.5, 1_700_000_000_123),
    ]


def test_field_types():
    # Floats, integers (i) and unsigned integers (u) are values; strings and
    # booleans are skipped.
    assert readings(f'm f=1.5,i=-7i,u=18446744073709551615u,e=1e3,s="text",b=true,B=F {NS}') == [
        ("m.e", 1000.0, 1_700_000_000_123),
        ("m.f", 1.5, 1_700_000_000_123),
        ("m.i", -7, 1_700_000_000_123),
        ("m.u", 18446744073709551615, 1_700_000_000_123),
    ]
    assert readings('m s="only a string" 1') == []


def test_escaping_rules():
    text = r'my\ meas,tag\,key=a\ b\=c,t2=x\,y field\ one=1,f\=2=2,f\,3=3,s="q\"uote" 1000000'
    assert readings(text) == [
        ("my meas.f,3{t2=x\\,y,tag\\,key=a b\\=c}", 3, 1),
        ("my meas.f=2{t2=x\\,y,tag\\,key=a b\\=c}", 2, 1),
        ("my meas.field one{t2=x\\,y,tag\\,key=a b\\=c}", 1, 1),
    ]


def test_the_label_form_escapes_what_would_make_it_ambiguous():
    assert series_name("cpu", {}) == "cpu"
    assert series_name("cpu", {"b": "2", "a": "x{y}=,\\z"}) == "cpu{a=x\\{y\\}\\=\\,\\\\z,b=2}"


@pytest.mark.parametrize(
    ("precision", "stamp", "ms"),
    [
        ("ns", NS, 1_700_000_000_123),
        ("us", NS // 1000, 1_700_000_000_123),
        ("ms", 1_700_000_000_123, 1_700_000_000_123),
        ("s", 1_700_000_000, 1_700_000_000_000),
        ("ns", -1_500_000, -2),  # before the epoch: whole ms, rounded down
    ],
)
def test_precision(precision, stamp, ms):
    assert to_ms(stamp, precision) == ms
    assert readings(f"m v=1 {stamp}", precision) == [("m.v", 1, ms)]


def test_comments_blank_lines_crlf_and_no_timestamp():
    before = int(time.time() * 1000)
    got = readings("# a comment\r\n\r\n   \nm v=1\r\nm v=2 5000000\n")
    after = int(time.time() * 1000)
    assert [(n, v) for n, v, _ in got] == [("m.v", 1), ("m.v", 2)]
    assert before <= got[0][2] <= after
    assert got[1][2] == 5


with_db = pytest.mark.django_db


@with_db
def test_a_write_answers_204_and_stores_every_numeric_field(http):
    body = f"cpu,host=a usage=72.5,idle=3i {NS}\nmem,host=a used=1024u {NS}\n"
    response = http.post(URL + "?org=acme&bucket=telegraf&precision=ns", body, content_type="text/plain; charset=utf-8")
    assert (response.status_code, response.content) == (204, b"")
    assert "Content-Type" not in response
    assert stored() == [
        ("cpu.idle{host=a}", 3, "", 1_700_000_000_123),
        ("cpu.usage{host=a}", 72.5, "", 1_700_000_000_123),
        ("mem.used{host=a}", 1024, "", 1_700_000_000_123),
    ]


@with_db
@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_a_write_without_text_plain_is_accepted(http, content_type):
    response = http.post(URL + "?precision=s", "m v=1 2", content_type=content_type)
    assert response.status_code == 204
    assert stored() == [("m.v", 1, "", 2000)]


@with_db
@pytest.mark.parametrize(
    ("body", "line", "text", "reason"),
    [
        ("m v=1\nm v=\nm v=3", 2, "m v=", "Failed to parse value of field"),
        ("m v=1\n\nnofields\n", 3, "nofields", "Failed to parse measurement"),
        ("m v=1 notatime", 1, "m v=1 notatime", "Failed to parse nanoseconds integer timestamp"),
        ("m v=1\nm v=1e400", 2, "m v=1e400", "Failed to parse type of field value"),
        ("m v=1\nm v=99999999999999999999i", 2, "m v=99999999999999999999i", "Failed to parse type of field value"),
        # Subnormal floats are refused by the parser (docs/ingest.md).
        ("m v=1e-320", 1, "m v=1e-320", "Failed to parse type of field value"),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_written(http, body, line, text, reason):
    response = http.post(URL, body, content_type="text/plain")
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": f"Line {line}: {reason}",
        "details": {"line": line, "text": text},
    }
    assert stored() == []


@with_db
def test_a_long_bad_line_is_quoted_shortened(http):
    text = "m,t=" + "x" * 300 + " v=oops"
    response = http.post(URL, text, content_type="text/plain")
    assert response.status_code == 400
    assert json_body(response)["details"] == {"line": 1, "text": text[:200] + "…"}


@with_db
def test_bytes_that_are_not_utf8_or_hold_nul_are_named(http):
    response = http.post(URL, b"m v=1\nm\xff v=2", content_type="text/plain")
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": "Line 2: not valid UTF-8",
        "details": {"line": 2, "text": "m\ufffd v=2"},
    }
    response = http.post(URL, b"m v=1\nm,t=a\x00b v=2", content_type="text/plain")
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": "Line 2: Invalid string: NUL characters (\\u0000) and unpaired surrogates cannot be stored",
        "details": {"line": 2, "text": "m,t=a\\u0000b v=2"},
    }
    assert stored() == []


@with_db
def test_an_unknown_precision_is_400(http):
    response = http.post(URL + "?precision=h", "m v=1", content_type="text/plain")
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": 'Invalid "precision": expected one of ns, us, ms, s',
    }
    assert stored() == []


@with_db
def test_json_is_415(http):
    response = http.post(URL, '{"m": 1}', content_type="application/json")
    assert response.status_code == 415
    assert json_body(response)["message"] == (
        'Unsupported Content-Type "application/json": expected text/plain, application/octet-stream'
    )


@with_db
def test_auth_method_size_and_count_limits(http, limits):
    response = http.post(URL, "m v=1", content_type="text/plain", token=None)
    assert (response.status_code, response["WWW-Authenticate"]) == (401, 'Bearer realm="dashboard"')
    assert http.post(URL, "m v=1", content_type="text/plain", token="viewer-token").status_code == 403
    assert http.client.get(URL, HTTP_AUTHORIZATION="Token admin-token").status_code == 405

    limits(MAX_TRANSACTION_OPERATIONS=3)
    # Two lines of two fields: four readings.
    response = http.post(URL, "m a=1,b=2\nm a=3,b=4", content_type="text/plain")
    assert (response.status_code, json_body(response)["message"]) == (413, "Too many readings: at most 3 per request")
    limits(MAX_FRAME_BYTES=16)
    response = http.post(URL, "m v=1\n" * 3, content_type="text/plain")
    assert (response.status_code, json_body(response)["message"]) == (413, "Request body too large: at most 16 bytes")
    assert stored() == []


@with_db
def test_over_the_request_rate_is_429(http, limits):
    limits(REQUEST_RATE=1, REQUEST_RATE_WINDOW_SECONDS=10)
    assert http.post(URL, "m v=1", content_type="text/plain").status_code == 204
    response = http.post(URL, "m v=2", content_type="text/plain")
    assert response.status_code == 429
    assert response["Retry-After"] == "10"
    assert json_body(response)["code"] == "RATE_LIMITED"
    assert [v for _, v, *_ in stored()] == [1]


@pytest.mark.django_db(transaction=True)
async def test_a_write_is_one_push_to_a_subscribed_viewer(connect, http):
    viewer = await connect("viewer-token")
    count = await viewer.ok("store.subscribe", query="metric-count")
    body = "\n".join(f"cpu,core={i} usage={i}.5,idle={i}i {NS}" for i in range(10))
    response = await sync_to_async(http.post)(URL, body, content_type="text/plain")
    assert response.status_code == 204
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": count["subscriptionId"],
        "data": 20,
    }
    assert await viewer.nothing()


# Names with the characters line protocol escapes, as the official client
# writes them (influxdb-client's Point), read back into the documented form.
# Backslashes are left out: line protocol does not escape them, so one
# before an escaped character is ambiguous in any parser.
_TEXT = st.text(alphabet="ab Z09,=\"'._-{}", min_size=1, max_size=12).filter(lambda t: not t.startswith("#"))


@settings(max_examples=300, deadline=None)
@given(
    measurement=_TEXT,
    tags=st.dictionaries(_TEXT, _TEXT, max_size=3),
    field=_TEXT,
    value=st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False),
)
def test_what_the_official_client_writes_reads_back(measurement, tags, field, value):
    point = Point(measurement).field(field, value).time(NS, WritePrecision.NS)
    for key, tag_value in tags.items():
        point = point.tag(key, tag_value)
    assert readings(point.to_line_protocol()) == [
        (series_name(f"{measurement}.{field}", tags), value, 1_700_000_000_123)
    ]


@with_db
def test_a_line_of_many_fields_is_refused_at_the_reading_past_the_limit(http, monkeypatch):
    # One 600 KB line of 60,000 fields: the 413 comes at reading 1,001, not
    # once the whole line's readings are built.
    body = "m,host=a " + ",".join(f"f{i}=1" for i in range(60_000))
    assert 500_000 < len(body) < 1_048_576
    names = mock.Mock(wraps=line_protocol.series_name)
    monkeypatch.setattr(line_protocol, "series_name", names)
    response = http.post(URL, body, content_type="text/plain")
    assert response.status_code == 413
    assert json_body(response) == {"code": "VALIDATION_ERROR", "message": "Too many readings: at most 1000 per request"}
    assert names.call_count == 1001
    assert stored() == []
