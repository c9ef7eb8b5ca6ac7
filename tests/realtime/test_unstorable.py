"""Strings no database can hold (NUL, which PostgreSQL refuses, and unpaired
surrogates, which no driver can encode) get the same answer on every
database: VALIDATION_ERROR with the request's id, nothing written, and the
connection still usable. Run on SQLite and on PostgreSQL (./dev test).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client as HttpClient

from metrics.models import Metric
from tests.conftest import Client, metric

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGE = "Invalid string: NUL characters (\\u0000) and unpaired surrogates cannot be stored"
KEY = "k1"
STORED = {**metric(), "id": KEY}

# What a client's JSON encoder sends: "\u0000" and "\ud800" are escapes in the text.
UNSTORABLE = {
    "nul": "a\u0000b",
    "nul-alone": "\u0000",
    "high-surrogate": "a\ud800b",
    "low-surrogate": "\udfff",
    "reversed-pair": "\ude00\ud83d",
}

# Each place a client string can reach the database; X marks the string.
PLACES: dict[str, dict[str, Any]] = {
    "insert value": {"type": "store.insert", "bucket": "metrics", "data": {**metric(), "name": "X"}},
    "insert unit": {"type": "store.insert", "bucket": "metrics", "data": {**metric(), "unit": "X"}},
    "insert data key": {"type": "store.insert", "bucket": "metrics", "data": {**metric(), "X": 1}},
    "insert id": {"type": "store.insert", "bucket": "metrics", "data": {**metric(), "id": "X"}},
    "insert alert": {
        "type": "store.insert",
        "bucket": "alerts",
        "data": {"metric": "cpu", "threshold": 1, "severity": "X", "timestamp": 1},
    },
    "update value": {"type": "store.update", "bucket": "metrics", "key": KEY, "data": {"unit": "X"}},
    "update data key": {"type": "store.update", "bucket": "metrics", "key": KEY, "data": {"X": "%"}},
    "update key": {"type": "store.update", "bucket": "metrics", "key": "X", "data": {"unit": "%"}},
    "get key": {"type": "store.get", "bucket": "metrics", "key": "X"},
    "delete key": {"type": "store.delete", "bucket": "metrics", "key": "X"},
    "where value": {"type": "store.where", "bucket": "metrics", "filter": {"name": "X"}},
    "where operator": {"type": "store.where", "bucket": "metrics", "filter": {"name": {"$startsWith": "X"}}},
    "where $in": {"type": "store.where", "bucket": "metrics", "filter": {"name": {"$in": ["cpu", "X"]}}},
    "where $or": {"type": "store.where", "bucket": "metrics", "filter": {"$or": [{"unit": "%"}, {"unit": "X"}]}},
    "where field": {"type": "store.where", "bucket": "metrics", "filter": {"X": 1}},
    "findOne": {"type": "store.findOne", "bucket": "metrics", "filter": {"unit": {"$contains": "X"}}},
    "count": {"type": "store.count", "bucket": "metrics", "filter": {"name": {"$neq": "X"}}},
    "sum": {"type": "store.sum", "bucket": "metrics", "field": "value", "filter": {"name": "X"}},
    "max field": {"type": "store.max", "bucket": "metrics", "field": "X"},
    "paginate after": {"type": "store.paginate", "bucket": "metrics", "limit": 5, "after": "X"},
    "subscribe param": {"type": "store.subscribe", "query": "metrics-by-name", "params": {"name": "X"}},
    "subscribe param key": {"type": "store.subscribe", "query": "all-metrics", "params": {"X": 1}},
    "subscribe query": {"type": "store.subscribe", "query": "X"},
    "transaction insert": {
        "type": "store.transaction",
        "operations": [
            {"op": "insert", "bucket": "metrics", "data": metric(name="fine")},
            {"op": "insert", "bucket": "metrics", "data": metric(name="X")},
        ],
    },
    "transaction update": {
        "type": "store.transaction",
        "operations": [{"op": "update", "bucket": "metrics", "key": KEY, "data": {"unit": "X"}}],
    },
    "transaction get": {"type": "store.transaction", "operations": [{"op": "get", "bucket": "metrics", "key": "X"}]},
    "transaction where": {
        "type": "store.transaction",
        "operations": [{"op": "where", "bucket": "metrics", "filter": {"name": "X"}}],
    },
    "bucket": {"type": "store.all", "bucket": "X"},
    "operation": {"type": "X"},
    "unknown field": {"type": "auth.whoami", "note": "X"},
    "login token": {"type": "auth.login", "token": "X"},
}


def with_string(template: dict[str, Any], request_id: int, value: str) -> str:
    """The request's JSON text, as json.dumps (ensure_ascii) sends it, with X replaced."""
    text = json.dumps({"id": request_id, **template})
    assert text.count('"X"') == 1, template
    return text.replace('"X"', json.dumps(value))


def refused(request_id: Any) -> dict[str, Any]:
    return {"id": request_id, "type": "error", "code": "VALIDATION_ERROR", "message": MESSAGE}


async def records(client: Client, bucket: str = "metrics") -> list[dict[str, Any]]:
    return await client.ok("store.all", bucket=bucket)


async def assert_nothing_changed(client: Client, before: dict[str, list]) -> None:
    """The store as it was, no subscription made, and the connection answering."""
    assert {bucket: await records(client, bucket) for bucket in before} == before
    stats = await client.ok("store.stats")
    assert stats["queries"]["activeSubscriptions"] == 0


@pytest.fixture
async def admin(connect) -> tuple[Client, dict[str, list]]:
    client = await connect("admin-token")
    await client.ok("store.insert", bucket="metrics", data=STORED)
    before = {"metrics": await records(client), "alerts": await records(client, "alerts")}
    return client, before


@pytest.mark.parametrize("value", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
@pytest.mark.parametrize("place", list(PLACES))
async def test_refused_with_the_requests_id_and_nothing_written(admin, place, value):
    client, before = admin
    await client.send_text(with_string(PLACES[place], 41, value))
    assert await client.receive() == refused(41)
    await assert_nothing_changed(client, before)


@pytest.mark.parametrize("place", ["insert value", "get key", "subscribe param"])
async def test_refused_for_a_viewer_and_before_login_too(connect, place):
    """The check is the frame's, made before authentication: no database is
    asked, and nothing unencodable is ever echoed in a later error message."""
    viewer = await connect("viewer-token")
    await viewer.send_text(with_string(PLACES[place], 5, "\u0000"))
    assert await viewer.receive() == refused(5)
    anonymous = await connect()
    await anonymous.send_text(with_string(PLACES[place], 6, "\ud800"))
    assert await anonymous.receive() == refused(6)
    assert await anonymous.request("store.count", bucket="metrics") == {
        "id": 1,
        "type": "error",
        "code": "UNAUTHORIZED",
        "message": "Authentication required",
    }
    assert await viewer.ok("store.count", bucket="metrics") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Before the id is known the parsing order of the protocol decides, with id 0.
        (
            '{"type":"\\u0000"}',
            {
                "id": 0,
                "type": "error",
                "code": "INVALID_REQUEST",
                "message": 'Request must include finite numeric "id"',
            },
        ),
        (
            '{"id":"\\ud800","type":"store.all","bucket":"metrics"}',
            {
                "id": 0,
                "type": "error",
                "code": "INVALID_REQUEST",
                "message": 'Request must include finite numeric "id"',
            },
        ),
        ('"\\u0000"', {"id": 0, "type": "error", "code": "PARSE_ERROR", "message": "Message must be a JSON object"}),
        ('["\\ud800"]', {"id": 0, "type": "error", "code": "PARSE_ERROR", "message": "Message must be a JSON object"}),
        (
            '{"id":1,"type":"store.all","bucket":"\u0000"}',  # a raw control character is not JSON
            {"id": 0, "type": "error", "code": "PARSE_ERROR", "message": "Invalid JSON"},
        ),
        # Upper-case escapes and a fractional id (echoed as sent).
        ('{"id":2.5,"type":"store.get","bucket":"metrics","key":"\\uDBFF"}', refused(2.5)),
    ],
)
async def test_before_the_id_is_known_the_parsing_order_decides(admin, text, expected):
    client, before = admin
    await client.send_text(text)
    assert await client.receive() == expected
    await assert_nothing_changed(client, before)


async def test_a_pong_with_an_unstorable_string_is_still_a_pong(admin):
    client, before = admin
    await client.send_text('{"type":"pong","timestamp":1,"note":"\\u0000\\ud800"}')
    assert await client.nothing()
    await assert_nothing_changed(client, before)


async def test_look_alikes_are_stored_and_read_back(admin):
    """An escaped backslash before "u0000", a surrogate pair (an emoji, as
    json.dumps escapes it) and other control characters are ordinary text."""
    client, _ = admin
    for name in ("\\u0000", "\U0001f600", "tab\tnew\nline\u0001\u001f", "\\ud800"):
        text = json.dumps({"id": 90, "type": "store.insert", "bucket": "metrics", "data": metric(name=name)})
        await client.send_text(text)
        reply = await client.reply_to(90)
        assert reply["type"] == "result" and reply["data"]["name"] == name, reply
        assert [r["name"] for r in await client.ok("store.where", bucket="metrics", filter={"name": name})] == [name]
        subscription = await client.ok("store.subscribe", query="metrics-by-name", params={"name": name})
        assert [r["name"] for r in subscription["data"]] == [name]


async def test_pipelined_requests_keep_their_order_around_a_refused_one(admin, connect):
    """Pipelined inserts are answered in one batch: a refusal among them is
    answered in its turn and the others are stored, each pushed once."""
    client, before = admin
    watcher = await connect("viewer-token")
    subscription = await watcher.ok("store.subscribe", query="metric-count")
    assert subscription["data"] == 1
    texts = [
        json.dumps({"id": 11, "type": "store.insert", "bucket": "metrics", "data": metric(name="one")}),
        with_string(PLACES["insert value"], 12, "\u0000"),
        json.dumps({"id": 13, "type": "store.insert", "bucket": "metrics", "data": metric(name="two")}),
        with_string(PLACES["get key"], 14, "\udc00"),
        json.dumps({"id": 15, "type": "store.count", "bucket": "metrics"}),
    ]
    for text in texts:
        await client.send_text(text)
    replies = [await client.receive() for _ in texts]
    assert [reply["id"] for reply in replies] == [11, 12, 13, 14, 15]
    assert [replies[0]["type"], replies[2]["type"]] == ["result", "result"]
    assert [replies[1], replies[3], replies[4]] == [refused(12), refused(14), {"id": 15, "type": "result", "data": 3}]
    assert [r["name"] for r in await records(client)] == [before["metrics"][0]["name"], "one", "two"]
    # Latest state: the two inserts may reach the watcher as one push or two.
    count = (await watcher.push())["data"]
    if count == 2:
        count = (await watcher.push())["data"]
    assert count == 3 and await watcher.nothing()


def test_the_admin_answers_nul_with_its_own_form_error(django_user_model):
    """The admin is another way in: Django's forms refuse NUL on every database."""
    http = HttpClient()
    http.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "unused"))
    response = http.post("/admin/metrics/metric/add/", {"name": "a\u0000b", "value": "1", "unit": "", "timestamp": "1"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"name": ["Null characters are not allowed."]}
    assert not Metric.objects.exists()
