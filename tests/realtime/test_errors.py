"""Every error path of the wire protocol (/work/shared/protocol.md), through the
real ASGI application.

Each test asserts the whole error frame, then proves the connection is still
usable with a valid request on the same connection.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from accounts.tokens import validate_token
from metrics import selectors, services
from realtime import auth
from realtime.auth import Session, TokenExpired
from tests.conftest import TIMEOUT, Client, metric

pytestmark = pytest.mark.django_db(transaction=True)

THIS_MODULE = __name__  # the token validator below is named by dotted path


# --- helpers ------------------------------------------------------------------


def error(request_id: Any, code: str, message: str, details: Any = None) -> dict[str, Any]:
    frame = {"id": request_id, "type": "error", "code": code, "message": message}
    if details is not None:
        frame["details"] = details
    return frame


def invalid(field: str, expected: str) -> str:
    return f'Missing or invalid "{field}": expected {expected}'


def validation_failed(bucket: str, *issues: tuple[str, str, str]) -> tuple[str, list[dict[str, str]]]:
    """The message and details of a record validation failure."""
    summary = "; ".join(f"{field}: {message}" for field, message, _ in issues)
    details = [{"field": field, "message": message, "code": code} for field, message, code in issues]
    return f'Validation failed for bucket "{bucket}": {summary}', details


REQUIRED = "Field is required"


def expected_type(json_type: str, got: str) -> str:
    return f'Expected type "{json_type}", got {got}'


async def send_raw(client: Client, text: str) -> None:
    # send_to refuses an empty string, so the ASGI message is sent directly.
    await client.communicator.send_input({"type": "websocket.receive", "text": text})


async def receive_raw(client: Client) -> str:
    return await client.communicator.receive_from(timeout=TIMEOUT)


async def assert_usable(client: Client, count: int = 0) -> None:
    """A valid store request on the same connection succeeds (admin or viewer)."""
    request_id = next(client.ids)
    await client.send({"id": request_id, "type": "store.count", "bucket": "metrics"})
    assert await client.reply_to(request_id) == {"id": request_id, "type": "result", "data": count}


async def assert_signed_out_but_usable(client: Client) -> None:
    assert await client.ok("auth.whoami") == {"authenticated": False}
    await client.login("admin-token")
    await assert_usable(client)


def now_ms() -> int:
    return int(time.time() * 1000)


# --- parsing (errors carry id 0) ----------------------------------------------

INVALID_JSON = ("PARSE_ERROR", "Invalid JSON")
NOT_OBJECT = ("PARSE_ERROR", "Message must be a JSON object")
BAD_TYPE = ("INVALID_REQUEST", 'Message must include non-empty string "type"')
BAD_PONG = ("INVALID_REQUEST", 'Pong must include finite numeric "timestamp"')
BAD_ID = ("INVALID_REQUEST", 'Request must include finite numeric "id"')

PARSE_CASES = [
    ("", INVALID_JSON),
    ("not json", INVALID_JSON),
    ("{", INVALID_JSON),
    ("{'id': 1, 'type': 'auth.whoami'}", INVALID_JSON),
    ('{"id":1,"type":"auth.whoami",}', INVALID_JSON),
    ('{"id":1,"type":"auth.whoami"} {}', INVALID_JSON),
    ("NaN", INVALID_JSON),
    ('{"id":NaN,"type":"auth.whoami"}', INVALID_JSON),
    ('{"id":Infinity,"type":"auth.whoami"}', INVALID_JSON),
    ('{"id":-Infinity,"type":"auth.whoami"}', INVALID_JSON),
    ('{"id":1,"type":"auth.whoami","x":NaN}', INVALID_JSON),
    ('{"type":"pong","timestamp":NaN}', INVALID_JSON),
    # A lone surrogate ("\\ud800") is valid JSON: a request carrying one is refused
    # with its own id (tests/realtime/test_unstorable.py).
    ("[]", NOT_OBJECT),
    ('[{"id":1,"type":"auth.whoami"}]', NOT_OBJECT),
    ('"auth.whoami"', NOT_OBJECT),
    ("42", NOT_OBJECT),
    ("1.5", NOT_OBJECT),
    ("null", NOT_OBJECT),
    ("true", NOT_OBJECT),
    ('{"id":1}', BAD_TYPE),
    ('{"id":1,"type":""}', BAD_TYPE),
    ('{"id":1,"type":5}', BAD_TYPE),
    ('{"id":1,"type":null}', BAD_TYPE),
    ('{"id":1,"type":true}', BAD_TYPE),
    ('{"id":1,"type":["auth.whoami"]}', BAD_TYPE),
    ('{"id":1,"type":{}}', BAD_TYPE),
    ('{"id":"x"}', BAD_TYPE),  # type is checked before id
    ('{"type":"pong"}', BAD_PONG),
    ('{"type":"pong","timestamp":"1"}', BAD_PONG),
    ('{"type":"pong","timestamp":null}', BAD_PONG),
    ('{"type":"pong","timestamp":true}', BAD_PONG),
    ('{"type":"pong","timestamp":[1]}', BAD_PONG),
    ('{"type":"pong","timestamp":1e400}', BAD_PONG),
    ('{"type":"pong","id":"x"}', BAD_PONG),  # pong is checked before id
    ('{"type":"auth.whoami"}', BAD_ID),
    ('{"id":"1","type":"auth.whoami"}', BAD_ID),
    ('{"id":true,"type":"auth.whoami"}', BAD_ID),
    ('{"id":false,"type":"auth.whoami"}', BAD_ID),
    ('{"id":null,"type":"auth.whoami"}', BAD_ID),
    ('{"id":[1],"type":"auth.whoami"}', BAD_ID),
    ('{"id":{},"type":"auth.whoami"}', BAD_ID),
    ('{"id":1e400,"type":"auth.whoami"}', BAD_ID),
    ('{"id":-1e400,"type":"auth.whoami"}', BAD_ID),
    ('{"id":1' + "0" * 400 + ',"type":"auth.whoami"}', BAD_ID),  # a JavaScript client reads Infinity
    ('{"id":"1","type":"store.insert","bucket":"metrics","data":{}}', BAD_ID),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES, ids=[text[:60] for text, _ in PARSE_CASES])
async def test_parse_errors_carry_id_zero(connect, text, expected):
    client = await connect("admin-token")
    await send_raw(client, text)
    assert await client.receive() == error(0, *expected)
    await assert_usable(client)


@pytest.mark.parametrize("timestamp", ["0", "1706745600000", "1.5", "-1"])
async def test_valid_pong_gets_no_reply(connect, timestamp):
    client = await connect("admin-token")
    await send_raw(client, '{"type":"pong","timestamp":' + timestamp + "}")
    assert await client.communicator.receive_nothing(timeout=0.3)
    await assert_usable(client)


ID_ECHOES = [("7", 7), ("7.0", 7), ("7.5", 7.5), ("0", 0), ("-3", -3), ("1e3", 1000), ("2.5e-1", 0.25)]


@pytest.mark.parametrize(("literal", "echoed"), ID_ECHOES, ids=[literal for literal, _ in ID_ECHOES])
async def test_request_id_is_echoed_as_a_javascript_number(connect, literal, echoed):
    client = await connect()
    await send_raw(client, '{"id":' + literal + ',"type":"auth.whoami"}')
    reply = json.loads(await receive_raw(client))
    assert reply == {"id": echoed, "type": "result", "data": {"authenticated": False}}
    assert type(reply["id"]) is type(echoed)
    await send_raw(client, '{"id":' + literal + ',"type":"store.all","bucket":"metrics"}')
    reply = json.loads(await receive_raw(client))
    assert reply == error(echoed, "UNAUTHORIZED", "Authentication required")
    assert type(reply["id"]) is type(echoed)
    await assert_signed_out_but_usable(client)


# --- authentication and routing -----------------------------------------------------

UNAUTHENTICATED_REQUESTS = [
    ("store.all", {"bucket": "metrics"}),
    ("store.get", {"bucket": "metrics", "key": "k1"}),
    ("store.insert", {"bucket": "metrics", "data": metric()}),
    ("store.clear", {"bucket": "metrics"}),
    ("store.insert", {}),  # auth before field checks
    ("store.count", {"bucket": "nope"}),  # auth before bucket lookup
    ("store.transaction", {"operations": [{"op": "insert", "bucket": "metrics", "data": metric()}]}),
    ("store.buckets", {}),
    ("store.stats", {}),
    ("store.subscribe", {"query": "all-metrics"}),
    ("store.unsubscribe", {"subscriptionId": "sub-1"}),
    ("store.nope", {}),  # auth before routing: no operation names leak
    ("foo.bar", {}),
    ("x", {}),
]


@pytest.mark.parametrize(
    ("type", "fields"), UNAUTHENTICATED_REQUESTS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(UNAUTHENTICATED_REQUESTS)]
)
async def test_operations_need_a_session(connect, type, fields):
    client = await connect()
    assert await client.request(type, **fields) == error(1, "UNAUTHORIZED", "Authentication required")
    await assert_signed_out_but_usable(client)  # and nothing was written


UNKNOWN_OPERATIONS = [
    (None, "auth.nope", 'Unknown auth operation "auth.nope"'),
    ("admin-token", "auth.nope", 'Unknown auth operation "auth.nope"'),
    ("admin-token", "foo.bar", 'Unknown operation "foo.bar"'),
    ("admin-token", "store.nope", 'Unknown store operation "store.nope"'),
    ("admin-token", "store", 'Unknown operation "store"'),
    ("admin-token", "Store.all", 'Unknown operation "Store.all"'),
    ("admin-token", "store.defineBucket", 'Unknown store operation "store.defineBucket"'),
    ("viewer-token", "store.nope", 'Unknown store operation "store.nope"'),
    ("viewer-token", "foo.bar", 'Unknown operation "foo.bar"'),
]


@pytest.mark.parametrize(("token", "type", "message"), UNKNOWN_OPERATIONS)
async def test_unknown_operations(connect, token, type, message):
    client = await connect(token)
    reply = await client.request(type, bucket="metrics")
    assert reply == error(reply["id"], "UNKNOWN_OPERATION", message)
    assert reply["id"] == (1 if token is None else 2)
    if token is None:
        await assert_signed_out_but_usable(client)
    else:
        await assert_usable(client)


BAD_TOKENS = [
    ({}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": ""}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": None}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": 5}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": True}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": ["admin-token"]}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": {"token": "admin-token"}}, "VALIDATION_ERROR", invalid("token", "non-empty string")),
    ({"token": "nope"}, "UNAUTHORIZED", "Invalid token"),
    ({"token": "ADMIN-TOKEN"}, "UNAUTHORIZED", "Invalid token"),
    ({"token": "admin-token "}, "UNAUTHORIZED", "Invalid token"),
]


@pytest.mark.parametrize("existing", [None, "viewer-token"])
@pytest.mark.parametrize(("fields", "code", "message"), BAD_TOKENS)
async def test_failed_login_keeps_the_current_session(connect, existing, fields, code, message):
    client = await connect(existing)
    first_id = 1 if existing is None else 2
    assert await client.request("auth.login", **fields) == error(first_id, code, message)
    if existing is None:
        await assert_signed_out_but_usable(client)
    else:
        assert await client.ok("auth.whoami") == {
            "authenticated": True,
            "userId": "viewer-1",
            "roles": ["viewer"],
            "expiresAt": None,
        }
        await assert_usable(client)


@pytest.mark.no_demo_tokens
async def test_demo_tokens_are_invalid_unless_seeded(connect):
    client = await connect()
    assert await client.request("auth.login", token="admin-token") == error(1, "UNAUTHORIZED", "Invalid token")
    assert await client.ok("auth.whoami") == {"authenticated": False}


# Token validators for the expiry tests (named by dotted path in settings).
SHORT_LIFE_MS = 1000


def expiring_tokens(token: str) -> Session | None:
    if token == "expired-token":
        return Session(user_id="temp-1", roles=("admin",), expires_at=now_ms() - 1000)
    if token == "raises-expired-token":
        raise TokenExpired()
    if token == "short-lived-token":
        return Session(user_id="temp-1", roles=("admin",), expires_at=now_ms() + SHORT_LIFE_MS)
    return validate_token(token)


@pytest.fixture
def expiring_validator(settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "TOKEN_VALIDATOR": f"{THIS_MODULE}.expiring_tokens"}


@pytest.mark.parametrize("token", ["expired-token", "raises-expired-token"])
@pytest.mark.parametrize("existing", [None, "admin-token"])
async def test_expired_token_is_refused(connect, expiring_validator, token, existing):
    client = await connect(existing)
    first_id = 1 if existing is None else 2
    assert await client.request("auth.login", token=token) == error(first_id, "UNAUTHORIZED", "Token has expired")
    if existing is None:
        await assert_signed_out_but_usable(client)
    else:
        assert (await client.ok("auth.whoami"))["userId"] == "admin-1"
        await assert_usable(client)


class LaterClock(auth.Clock):
    """The real clock until moved: then that moment on."""

    def __init__(self) -> None:
        self.at: int | None = None

    def move_to(self, moment_ms: int) -> None:
        self.at = moment_ms

    def now_ms(self) -> int:
        return self.at if self.at is not None else super().now_ms()


@pytest.fixture
def later(monkeypatch):
    clock = LaterClock()
    monkeypatch.setattr(auth, "clock", clock)
    return clock


async def test_session_expires_on_its_next_request(connect, expiring_validator, later):
    client = await connect()
    before = now_ms()
    login = await client.request("auth.login", token="short-lived-token")
    expires_at = login["data"]["expiresAt"]
    assert login == {
        "id": 1,
        "type": "result",
        "data": {"userId": "temp-1", "roles": ["admin"], "expiresAt": expires_at},
    }
    assert before + SHORT_LIFE_MS <= expires_at <= now_ms() + SHORT_LIFE_MS
    await assert_usable(client)

    later.move_to(expires_at)  # the session's clock reaches its expiry
    assert await client.request("store.count", bucket="metrics") == error(3, "UNAUTHORIZED", "Session expired")
    assert await client.request("store.count", bucket="metrics") == error(4, "UNAUTHORIZED", "Authentication required")
    await assert_signed_out_but_usable(client)


async def test_whoami_reports_an_expired_session_as_signed_out(connect, expiring_validator, later):
    client = await connect()
    expires_at = (await client.login("short-lived-token"))["expiresAt"]
    assert await client.ok("auth.whoami") == {
        "authenticated": True,
        "userId": "temp-1",
        "roles": ["admin"],
        "expiresAt": expires_at,
    }
    later.move_to(expires_at)
    assert await client.ok("auth.whoami") == {"authenticated": False}
    assert await client.request("store.count", bucket="metrics") == error(4, "UNAUTHORIZED", "Authentication required")
    await assert_signed_out_but_usable(client)


async def test_logout_and_whoami(connect):
    client = await connect()
    assert await client.request("auth.whoami") == {"id": 1, "type": "result", "data": {"authenticated": False}}
    assert await client.request("auth.logout") == {"id": 2, "type": "result", "data": {"loggedOut": True}}
    await client.login("admin-token")
    assert await client.request("auth.whoami") == {
        "id": 4,
        "type": "result",
        "data": {"authenticated": True, "userId": "admin-1", "roles": ["admin"], "expiresAt": None},
    }
    assert await client.request("auth.logout") == {"id": 5, "type": "result", "data": {"loggedOut": True}}
    assert await client.request("auth.logout") == {"id": 6, "type": "result", "data": {"loggedOut": True}}
    assert await client.request("auth.whoami") == {"id": 7, "type": "result", "data": {"authenticated": False}}
    assert await client.request("store.count", bucket="metrics") == error(8, "UNAUTHORIZED", "Authentication required")
    await assert_signed_out_but_usable(client)


async def test_logging_in_again_replaces_the_session(connect):
    client = await connect("admin-token")
    await client.login("viewer-token")
    assert await client.request("store.insert", bucket="metrics", data=metric()) == error(
        3, "FORBIDDEN", "No permission for store.insert on metrics"
    )
    await assert_usable(client)


# --- permissions ----------------------------------------------------------------------

VIEWER_DENIED = [
    ("store.insert", {"bucket": "metrics", "data": metric()}, "store.insert on metrics"),
    (
        "store.insert",
        {"bucket": "alerts", "data": {"metric": "cpu", "threshold": 1, "timestamp": 1}},
        "store.insert on alerts",
    ),
    ("store.update", {"bucket": "metrics", "key": "k1", "data": {"value": 1}}, "store.update on metrics"),
    ("store.delete", {"bucket": "metrics", "key": "k1"}, "store.delete on metrics"),
    ("store.clear", {"bucket": "metrics"}, "store.clear on metrics"),
    (
        "store.transaction",
        {"operations": [{"op": "delete", "bucket": "metrics", "key": "k1"}]},
        "store.transaction on *",
    ),
    # Permission comes before field checks: the resource is "*" without a bucket.
    ("store.insert", {"data": metric()}, "store.insert on *"),
    ("store.insert", {"bucket": 5, "data": metric()}, "store.insert on *"),
    ("store.insert", {"bucket": "metrics", "data": "not an object"}, "store.insert on metrics"),
    ("store.clear", {"bucket": "nope"}, "store.clear on nope"),
    ("store.transaction", {}, "store.transaction on *"),
    ("store.defineBucket", {"name": "x"}, "store.defineBucket on *"),  # ours
]


@pytest.mark.parametrize(
    ("type", "fields", "denied"), VIEWER_DENIED, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(VIEWER_DENIED)]
)
async def test_viewer_may_not_write(connect, type, fields, denied):
    admin = await connect("admin-token")
    record = await admin.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    viewer = await connect("viewer-token")
    assert await viewer.request(type, **fields) == error(2, "FORBIDDEN", f"No permission for {denied}")
    assert await viewer.ok("store.all", bucket="metrics") == [record]  # nothing changed
    await assert_usable(viewer, count=1)


async def test_viewer_may_read(connect):
    admin = await connect("admin-token")
    record = await admin.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    viewer = await connect("viewer-token")
    assert await viewer.ok("store.all", bucket="metrics") == [record]
    assert await viewer.ok("store.get", bucket="metrics", key="k1") == record
    assert await viewer.ok("store.where", bucket="metrics", filter={"name": "cpu"}) == [record]
    assert await viewer.ok("store.findOne", bucket="metrics", filter={"name": "cpu"}) == record
    assert await viewer.ok("store.count", bucket="metrics") == 1
    assert await viewer.ok("store.first", bucket="metrics", n=1) == [record]
    assert await viewer.ok("store.last", bucket="metrics", n=1) == [record]
    assert await viewer.ok("store.paginate", bucket="metrics", limit=1) == {
        "records": [record],
        "hasMore": False,
        "nextCursor": "k1",
    }
    assert await viewer.ok("store.sum", bucket="metrics", field="value") == 72.5
    assert await viewer.ok("store.buckets") == {"count": 2, "names": ["metrics", "alerts"]}
    assert (await viewer.ok("store.stats"))["records"]["total"] == 1
    subscription = await viewer.ok("store.subscribe", query="metric-count")
    assert subscription["data"] == 1
    assert await viewer.ok("store.unsubscribe", subscriptionId=subscription["subscriptionId"]) == {"unsubscribed": True}


# --- store field checks (as admin) -------------------------------------------------------

# Every store operation that takes a bucket, with its other fields valid.
BUCKET_OPERATIONS = [
    ("store.insert", {"data": metric()}),
    ("store.get", {"key": "k1"}),
    ("store.update", {"key": "k1", "data": {"value": 1}}),
    ("store.delete", {"key": "k1"}),
    ("store.clear", {}),
    ("store.all", {}),
    ("store.where", {"filter": {}}),
    ("store.findOne", {"filter": {}}),
    ("store.count", {}),
    ("store.first", {"n": 1}),
    ("store.last", {"n": 1}),
    ("store.paginate", {"limit": 1}),
    ("store.sum", {"field": "value"}),
    ("store.avg", {"field": "value"}),
    ("store.min", {"field": "value"}),
    ("store.max", {"field": "value"}),
]
BAD_BUCKETS = [
    ({}, "VALIDATION_ERROR", invalid("bucket", "non-empty string")),
    ({"bucket": ""}, "VALIDATION_ERROR", invalid("bucket", "non-empty string")),
    ({"bucket": None}, "VALIDATION_ERROR", invalid("bucket", "non-empty string")),
    ({"bucket": 5}, "VALIDATION_ERROR", invalid("bucket", "non-empty string")),
    ({"bucket": ["metrics"]}, "VALIDATION_ERROR", invalid("bucket", "non-empty string")),
    ({"bucket": "nope"}, "BUCKET_NOT_DEFINED", 'Bucket "nope" is not defined'),
    ({"bucket": "Metrics"}, "BUCKET_NOT_DEFINED", 'Bucket "Metrics" is not defined'),
]


@pytest.mark.parametrize(("type", "fields"), BUCKET_OPERATIONS, ids=[t for t, _ in BUCKET_OPERATIONS])
async def test_bucket_is_checked(connect, type, fields):
    client = await connect("admin-token")
    record = await client.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    for bucket, code, message in BAD_BUCKETS:
        reply = await client.request(type, **fields, **bucket)
        assert reply == error(reply["id"], code, message), bucket
        await assert_usable(client, count=1)
    assert await client.ok("store.all", bucket="metrics") == [record]


FIELD_CASES = [
    ("store.insert", {}, invalid("data", "object")),
    ("store.insert", {"data": None}, invalid("data", "object")),
    ("store.insert", {"data": [metric()]}, invalid("data", "object")),
    ("store.insert", {"data": "x"}, invalid("data", "object")),
    ("store.update", {"key": "k1"}, invalid("data", "object")),
    ("store.update", {"key": "k1", "data": []}, invalid("data", "object")),
    ("store.update", {"data": {"value": 1}}, 'Missing "key": expected non-null value'),
    ("store.update", {"key": None, "data": {"value": 1}}, 'Missing "key": expected non-null value'),
    ("store.get", {}, 'Missing "key": expected non-null value'),
    ("store.get", {"key": None}, 'Missing "key": expected non-null value'),
    ("store.delete", {}, 'Missing "key": expected non-null value'),
    ("store.where", {}, invalid("filter", "object")),
    ("store.where", {"filter": None}, invalid("filter", "object")),
    ("store.where", {"filter": []}, invalid("filter", "object")),
    ("store.where", {"filter": "name"}, invalid("filter", "object")),
    ("store.findOne", {}, invalid("filter", "object")),
    ("store.findOne", {"filter": 5}, invalid("filter", "object")),
    ("store.count", {"filter": "x"}, invalid("filter", "object")),
    ("store.count", {"filter": []}, invalid("filter", "object")),
    ("store.sum", {"field": "value", "filter": "x"}, invalid("filter", "object")),
    ("store.first", {}, invalid("n", "positive integer")),
    ("store.first", {"n": None}, invalid("n", "positive integer")),
    ("store.first", {"n": 0}, invalid("n", "positive integer")),
    ("store.first", {"n": -1}, invalid("n", "positive integer")),
    ("store.first", {"n": 1.5}, invalid("n", "positive integer")),
    ("store.first", {"n": "3"}, invalid("n", "positive integer")),
    ("store.first", {"n": True}, invalid("n", "positive integer")),
    ("store.first", {"n": [3]}, invalid("n", "positive integer")),
    ("store.last", {}, invalid("n", "positive integer")),
    ("store.last", {"n": 0}, invalid("n", "positive integer")),
    ("store.last", {"n": -1}, invalid("n", "positive integer")),
    ("store.last", {"n": 1.5}, invalid("n", "positive integer")),
    ("store.last", {"n": "3"}, invalid("n", "positive integer")),
    ("store.last", {"n": True}, invalid("n", "positive integer")),
    ("store.paginate", {}, invalid("limit", "positive integer")),
    ("store.paginate", {"limit": 0}, invalid("limit", "positive integer")),
    ("store.paginate", {"limit": -1}, invalid("limit", "positive integer")),
    ("store.paginate", {"limit": 1.5}, invalid("limit", "positive integer")),
    ("store.paginate", {"limit": "3"}, invalid("limit", "positive integer")),
    ("store.paginate", {"limit": True}, invalid("limit", "positive integer")),
    ("store.paginate", {"limit": 1, "after": 5}, invalid("after", "string")),
    ("store.sum", {}, invalid("field", "non-empty string")),
    ("store.sum", {"field": ""}, invalid("field", "non-empty string")),
    ("store.sum", {"field": 5}, invalid("field", "non-empty string")),
    ("store.avg", {}, invalid("field", "non-empty string")),
    ("store.min", {"field": None}, invalid("field", "non-empty string")),
    ("store.max", {"field": ["value"]}, invalid("field", "non-empty string")),
]


@pytest.mark.parametrize(
    ("type", "fields", "message"), FIELD_CASES, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(FIELD_CASES)]
)
async def test_field_checks(connect, type, fields, message):
    client = await connect("admin-token")
    record = await client.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    assert await client.request(type, bucket="metrics", **fields) == error(3, "VALIDATION_ERROR", message)
    assert await client.ok("store.all", bucket="metrics") == [record]
    await assert_usable(client, count=1)


SUBSCRIBE_FIELD_CASES = [
    ({}, "VALIDATION_ERROR", invalid("query", "non-empty string")),
    ({"query": ""}, "VALIDATION_ERROR", invalid("query", "non-empty string")),
    ({"query": 5}, "VALIDATION_ERROR", invalid("query", "non-empty string")),
    ({"query": None}, "VALIDATION_ERROR", invalid("query", "non-empty string")),
    ({"query": "nope"}, "QUERY_NOT_DEFINED", 'Query "nope" is not defined'),
    ({"query": "All-Metrics"}, "QUERY_NOT_DEFINED", 'Query "All-Metrics" is not defined'),
    ({"query": "all-metrics", "params": []}, "VALIDATION_ERROR", invalid("params", "object")),
    ({"query": "all-metrics", "params": "x"}, "VALIDATION_ERROR", invalid("params", "object")),
    ({"query": "metrics-by-name"}, "VALIDATION_ERROR", invalid("name", "non-empty string")),
    ({"query": "metrics-by-name", "params": {}}, "VALIDATION_ERROR", invalid("name", "non-empty string")),
    ({"query": "metrics-by-name", "params": {"name": ""}}, "VALIDATION_ERROR", invalid("name", "non-empty string")),
    ({"query": "metrics-by-name", "params": {"name": 5}}, "VALIDATION_ERROR", invalid("name", "non-empty string")),
    ({"query": "latest-metrics"}, "VALIDATION_ERROR", invalid("n", "positive integer")),
    ({"query": "latest-metrics", "params": {"n": 0}}, "VALIDATION_ERROR", invalid("n", "positive integer")),
    ({"query": "latest-metrics", "params": {"n": -1}}, "VALIDATION_ERROR", invalid("n", "positive integer")),
    ({"query": "latest-metrics", "params": {"n": 1.5}}, "VALIDATION_ERROR", invalid("n", "positive integer")),
    ({"query": "latest-metrics", "params": {"n": "3"}}, "VALIDATION_ERROR", invalid("n", "positive integer")),
]


@pytest.mark.parametrize("token", ["admin-token", "viewer-token"])
@pytest.mark.parametrize(("fields", "code", "message"), SUBSCRIBE_FIELD_CASES)
async def test_subscribe_errors_create_no_subscription(connect, token, fields, code, message):
    client = await connect(token)
    assert await client.request("store.subscribe", **fields) == error(2, code, message)
    assert (await client.ok("store.stats"))["queries"]["activeSubscriptions"] == 0
    subscription = await client.ok("store.subscribe", query="metric-count")
    assert subscription == {"subscriptionId": subscription["subscriptionId"], "data": 0}


# --- record validation --------------------------------------------------------------

VALID = {"name": "cpu", "value": 1, "timestamp": 1}

INSERT_VALIDATION = [
    (
        "metrics",
        {},
        [("name", REQUIRED, "required"), ("value", REQUIRED, "required"), ("timestamp", REQUIRED, "required")],
    ),
    ("metrics", {**VALID, "value": "high"}, [("value", expected_type("number", "string"), "type")]),
    ("metrics", {**VALID, "value": True}, [("value", expected_type("number", "boolean"), "type")]),
    ("metrics", {**VALID, "value": None}, [("value", REQUIRED, "required")]),
    ("metrics", {**VALID, "value": [1]}, [("value", expected_type("number", "array"), "type")]),
    ("metrics", {**VALID, "value": {"v": 1}}, [("value", expected_type("number", "object"), "type")]),
    ("metrics", {**VALID, "name": 5}, [("name", expected_type("string", "number"), "type")]),
    ("metrics", {**VALID, "name": False}, [("name", expected_type("string", "boolean"), "type")]),
    ("metrics", {**VALID, "unit": 5}, [("unit", expected_type("string", "number"), "type")]),
    ("metrics", {**VALID, "timestamp": "now"}, [("timestamp", expected_type("number", "string"), "type")]),
    ("metrics", {**VALID, "id": 5}, [("id", expected_type("string", "number"), "type")]),
    ("metrics", {**VALID, "id": "k" * 256}, [("id", "Key must be 1 to 255 characters", "max")]),
    ("metrics", {**VALID, "colour": "red"}, [("colour", "Unknown field", "unknown")]),
    # Issues in the schema's field order, unknown fields last.
    (
        "metrics",
        {"colour": "red", "value": "x", "name": 5},
        [
            ("name", expected_type("string", "number"), "type"),
            ("value", expected_type("number", "string"), "type"),
            ("timestamp", REQUIRED, "required"),
            ("colour", "Unknown field", "unknown"),
        ],
    ),
    (
        "alerts",
        {},
        [("metric", REQUIRED, "required"), ("threshold", REQUIRED, "required"), ("timestamp", REQUIRED, "required")],
    ),
    (
        "alerts",
        {"metric": "cpu", "threshold": 90, "severity": "urgent", "timestamp": 1},
        [("severity", "Value must be one of: low, medium, high", "enum")],
    ),
    (
        "alerts",
        {"metric": "cpu", "threshold": 90, "severity": "HIGH", "timestamp": 1},
        [("severity", "Value must be one of: low, medium, high", "enum")],
    ),
    (
        "alerts",
        {"metric": "cpu", "threshold": 90, "severity": 3, "timestamp": 1},
        [("severity", expected_type("string", "number"), "type")],
    ),
]


@pytest.mark.parametrize(("bucket", "data", "issues"), INSERT_VALIDATION)
async def test_insert_validation(connect, bucket, data, issues):
    client = await connect("admin-token")
    message, details = validation_failed(bucket, *issues)
    assert await client.request("store.insert", bucket=bucket, data=data) == error(
        2, "VALIDATION_ERROR", message, details
    )
    assert await client.ok("store.count", bucket=bucket) == 0
    await assert_usable(client)


async def test_insert_of_an_infinite_number_is_refused(connect):
    client = await connect("admin-token")
    await send_raw(
        client,
        '{"id":2,"type":"store.insert","bucket":"metrics","data":{"name":"cpu","value":1e400,"timestamp":1}}',
    )
    message, details = validation_failed("metrics", ("value", "Expected a finite number", "type"))
    assert await client.reply_to(2) == error(2, "VALIDATION_ERROR", message, details)
    await assert_usable(client)


UPDATE_VALIDATION = [
    ({"value": "x"}, [("value", expected_type("number", "string"), "type")]),
    ({"name": None}, [("name", REQUIRED, "required")]),
    ({"timestamp": True}, [("timestamp", expected_type("number", "boolean"), "type")]),
    ({"colour": "red"}, [("colour", "Unknown field", "unknown")]),
]


@pytest.mark.parametrize(("data", "issues"), UPDATE_VALIDATION)
async def test_update_validation(connect, data, issues):
    client = await connect("admin-token")
    record = await client.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    message, details = validation_failed("metrics", *issues)
    assert await client.request("store.update", bucket="metrics", key="k1", data=data) == error(
        3, "VALIDATION_ERROR", message, details
    )
    assert await client.ok("store.get", bucket="metrics", key="k1") == record
    await assert_usable(client, count=1)


@pytest.mark.parametrize(("key", "shown"), [("nope", "nope"), ("K1", "K1"), (5, "5")])
async def test_update_of_a_missing_key_is_not_found(connect, key, shown):
    client = await connect("admin-token")
    record = await client.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    assert await client.request("store.update", bucket="metrics", key=key, data={"value": 1}) == error(
        3, "NOT_FOUND", f'Record with key "{shown}" not found in bucket "metrics"'
    )
    assert await client.ok("store.all", bucket="metrics") == [record]
    await assert_usable(client, count=1)


async def test_insert_of_an_existing_key_is_a_conflict(connect):
    client = await connect("admin-token")
    record = await client.ok("store.insert", bucket="metrics", data={**metric(), "id": "k1"})
    assert await client.request("store.insert", bucket="metrics", data={**metric("memory", 1), "id": "k1"}) == error(
        3,
        "CONFLICT",
        'Record with key "k1" already exists in bucket "metrics"',
        {"bucket": "metrics", "key": "k1"},
    )
    assert await client.ok("store.get", bucket="metrics", key="k1") == record  # never overwritten
    await assert_usable(client, count=1)
    # The same key in another bucket is no conflict.
    alert = await client.ok(
        "store.insert", bucket="alerts", data={"id": "k1", "metric": "cpu", "threshold": 1, "timestamp": 1}
    )
    assert alert["id"] == "k1"


# --- subscriptions -------------------------------------------------------------------


async def test_subscription_limit_per_connection(connect, settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "MAX_SUBSCRIPTIONS_PER_CONNECTION": 3}
    client = await connect("viewer-token")
    ids = [(await client.ok("store.subscribe", query="metric-count"))["subscriptionId"] for _ in range(3)]
    limit = error(5, "RATE_LIMITED", "Subscription limit reached (max 3 per connection)")
    assert await client.request("store.subscribe", query="all-metrics") == limit
    assert (await client.ok("store.stats"))["queries"]["activeSubscriptions"] == 3
    # The limit is per connection, and unsubscribing frees a slot.
    other = await connect("viewer-token")
    assert (await other.ok("store.subscribe", query="metric-count"))["data"] == 0
    await client.ok("store.unsubscribe", subscriptionId=ids[0])
    assert (await client.ok("store.subscribe", query="all-metrics"))["data"] == []
    assert await client.request("store.subscribe", query="all-metrics") == error(
        9, "RATE_LIMITED", "Subscription limit reached (max 3 per connection)"
    )
    await assert_usable(client)


async def test_unsubscribe_errors(connect):
    admin = await connect("admin-token")
    client = await connect("viewer-token")
    other = await connect("viewer-token")
    mine = (await client.ok("store.subscribe", query="metric-count"))["subscriptionId"]
    theirs = (await other.ok("store.subscribe", query="metric-count"))["subscriptionId"]

    assert await client.request("store.unsubscribe", subscriptionId="sub-999") == error(
        3, "NOT_FOUND", 'Subscription "sub-999" not found'
    )
    assert await client.request("store.unsubscribe", subscriptionId=theirs) == error(
        4, "NOT_FOUND", f'Subscription "{theirs}" not found'
    )
    assert await client.request("store.unsubscribe") == error(
        5, "VALIDATION_ERROR", invalid("subscriptionId", "non-empty string")
    )
    assert await client.request("store.unsubscribe", subscriptionId=mine) == {
        "id": 6,
        "type": "result",
        "data": {"unsubscribed": True},
    }
    assert await client.request("store.unsubscribe", subscriptionId=mine) == error(
        7, "NOT_FOUND", f'Subscription "{mine}" not found'
    )

    # The other connection's subscription survived; this one's is gone.
    await admin.ok("store.insert", bucket="metrics", data=metric())
    assert await other.push() == {"type": "push", "channel": "subscription", "subscriptionId": theirs, "data": 1}
    assert await client.nothing()
    await assert_usable(client, count=1)


# --- transactions --------------------------------------------------------------------

OPS = "get, insert, update, delete, where, findOne, count"
INSERT = {"op": "insert", "bucket": "metrics", "data": metric("memory", 1)}

TRANSACTION_SHAPE_CASES = [
    ({}, invalid("operations", "array")),
    ({"operations": None}, invalid("operations", "array")),
    ({"operations": "x"}, invalid("operations", "array")),
    ({"operations": {"0": INSERT}}, invalid("operations", "array")),
    ({"operations": []}, '"operations" must contain at least one operation'),
    ({"operations": [5]}, "operations[0]: expected object"),
    ({"operations": [INSERT, [INSERT]]}, "operations[1]: expected object"),
    ({"operations": [{"bucket": "metrics", "data": {}}]}, f'operations[0]: invalid "op" — expected one of: {OPS}'),
    ({"operations": [{"op": "clear", "bucket": "metrics"}]}, f'operations[0]: invalid "op" — expected one of: {OPS}'),
    ({"operations": [{"op": "Insert", "bucket": "metrics"}]}, f'operations[0]: invalid "op" — expected one of: {OPS}'),
    ({"operations": [{"op": 5, "bucket": "metrics"}]}, f'operations[0]: invalid "op" — expected one of: {OPS}'),
    ({"operations": [INSERT, {"op": "get", "key": "k0"}]}, 'operations[1]: missing or invalid "bucket"'),
    ({"operations": [{"op": "get", "bucket": "", "key": "k0"}]}, 'operations[0]: missing or invalid "bucket"'),
    ({"operations": [{"op": "get", "bucket": 5, "key": "k0"}]}, 'operations[0]: missing or invalid "bucket"'),
    ({"operations": [{"op": "get", "bucket": "metrics"}]}, 'operations[0]: "get" requires "key"'),
    ({"operations": [{"op": "delete", "bucket": "metrics", "key": None}]}, 'operations[0]: "delete" requires "key"'),
    ({"operations": [{"op": "update", "bucket": "metrics", "data": {}}]}, 'operations[0]: "update" requires "key"'),
    (
        {"operations": [{"op": "update", "bucket": "metrics", "key": "k0"}]},
        'operations[0]: "update" requires "data" object',
    ),
    ({"operations": [{"op": "insert", "bucket": "metrics"}]}, 'operations[0]: "insert" requires "data" object'),
    (
        {"operations": [{"op": "insert", "bucket": "metrics", "data": [metric()]}]},
        'operations[0]: "insert" requires "data" object',
    ),
    ({"operations": [{"op": "where", "bucket": "metrics"}]}, 'operations[0]: "where" requires "filter" object'),
    (
        {"operations": [{"op": "findOne", "bucket": "metrics", "filter": "x"}]},
        'operations[0]: "findOne" requires "filter" object',
    ),
    ({"operations": [{"op": "count", "bucket": "metrics", "filter": "x"}]}, invalid("filter", "object")),
]


@pytest.mark.parametrize(("fields", "message"), TRANSACTION_SHAPE_CASES, ids=[m for _, m in TRANSACTION_SHAPE_CASES])
async def test_transaction_shape_errors(connect, fields, message):
    client = await connect("admin-token")
    record = await client.ok("store.insert", bucket="metrics", data={**metric(), "id": "k0"})
    assert await client.request("store.transaction", **fields) == error(3, "VALIDATION_ERROR", message)
    assert await client.ok("store.all", bucket="metrics") == [record]
    await assert_usable(client, count=1)


async def test_transaction_with_an_unknown_bucket(connect):
    client = await connect("admin-token")
    operations = [INSERT, {"op": "count", "bucket": "nope"}]
    assert await client.request("store.transaction", operations=operations) == error(
        2, "BUCKET_NOT_DEFINED", 'Bucket "nope" is not defined'
    )
    await assert_usable(client)


UPDATE_K0 = {"op": "update", "bucket": "metrics", "key": "k0", "data": {"value": 99}}
DELETE_K0 = {"op": "delete", "bucket": "metrics", "key": "k0"}
_missing_fields = validation_failed("metrics", ("value", REQUIRED, "required"), ("timestamp", REQUIRED, "required"))

TRANSACTION_FAILURES = [
    (
        [INSERT, {"op": "update", "bucket": "metrics", "key": "nope", "data": {"value": 1}}],
        ("NOT_FOUND", 'Record with key "nope" not found in bucket "metrics"'),
    ),
    (
        [INSERT, UPDATE_K0, {"op": "update", "bucket": "metrics", "key": "nope", "data": {"value": 1}}],
        ("NOT_FOUND", 'Record with key "nope" not found in bucket "metrics"'),
    ),
    ([DELETE_K0, {"op": "insert", "bucket": "metrics", "data": {"name": "x"}}], ("VALIDATION_ERROR", *_missing_fields)),
    (
        [UPDATE_K0, {"op": "insert", "bucket": "metrics", "data": {**metric(), "id": "k0"}}],
        ("CONFLICT", 'Record with key "k0" already exists in bucket "metrics"', {"bucket": "metrics", "key": "k0"}),
    ),
    (
        [{**INSERT, "data": {**metric(), "id": "k1"}}, {**INSERT, "data": {**metric(), "id": "k1"}}],
        ("CONFLICT", 'Record with key "k1" already exists in bucket "metrics"', {"bucket": "metrics", "key": "k1"}),
    ),
    (
        [
            INSERT,
            {
                "op": "insert",
                "bucket": "alerts",
                "data": {"metric": "cpu", "threshold": 1, "severity": "x", "timestamp": 1},
            },
        ],
        (
            "VALIDATION_ERROR",
            *validation_failed("alerts", ("severity", "Value must be one of: low, medium, high", "enum")),
        ),
    ),
]


@pytest.mark.parametrize(
    ("operations", "expected"), TRANSACTION_FAILURES, ids=[f"{len(ops)}-ops-{e[0]}" for ops, e in TRANSACTION_FAILURES]
)
async def test_failing_transaction_writes_nothing(connect, operations, expected):
    admin = await connect("admin-token")
    record = await admin.ok("store.insert", bucket="metrics", data={**metric(), "id": "k0"})
    viewer = await connect("viewer-token")
    subscription = await viewer.ok("store.subscribe", query="all-metrics")
    assert subscription["data"] == [record]

    assert await admin.request("store.transaction", operations=operations) == error(3, *expected)
    assert await admin.ok("store.all", bucket="metrics") == [record]
    assert await admin.ok("store.count", bucket="alerts") == 0
    assert await viewer.nothing()  # nothing committed, so nothing pushed
    await assert_usable(admin, count=1)


# --- unexpected failures ---------------------------------------------------------------


def explode(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("secret detail")


@pytest.mark.parametrize(
    ("module", "name", "type", "fields"),
    [
        (services, "record_insert_each", "store.insert", {"bucket": "metrics", "data": metric()}),
        (selectors, "record_all", "store.all", {"bucket": "metrics"}),
        (services, "transaction_run", "store.transaction", {"operations": [INSERT]}),
    ],
)
async def test_unexpected_failures_are_internal_errors(connect, monkeypatch, caplog, module, name, type, fields):
    client = await connect("admin-token")
    monkeypatch.setattr(module, name, explode)
    with caplog.at_level(logging.ERROR):
        await client.send({"id": 2, "type": type, **fields})
        text = await receive_raw(client)
    assert json.loads(text) == {"id": 2, "type": "error", "code": "INTERNAL_ERROR", "message": "Internal server error"}
    assert "secret" not in text
    # The details are logged instead.
    assert any(r.exc_info and str(r.exc_info[1]) == "secret detail" for r in caplog.records)
    monkeypatch.undo()
    await assert_usable(client)


# --- transport -------------------------------------------------------------------------


async def test_binary_frame_closes_with_1003(connect):
    client = await connect("admin-token")
    await assert_usable(client)
    await client.communicator.send_to(bytes_data=b'{"id":3,"type":"store.count","bucket":"metrics"}')
    assert await client.communicator.receive_output(timeout=TIMEOUT) == {
        "type": "websocket.close",
        "code": 1003,
        "reason": "binary_not_supported",
    }
    await client.send({"id": 4, "type": "auth.whoami"})
    assert await client.communicator.receive_nothing(timeout=0.3)


def frame_of_size(size: int, filler: str = "a") -> str:
    """A valid auth.whoami request of exactly `size` UTF-8 bytes."""
    head, tail = '{"id":2,"type":"auth.whoami","pad":"', '"}'
    room = size - len((head + tail).encode())
    count, rest = divmod(room, len(filler.encode()))
    text = head + filler * count + "a" * rest + tail
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("filler", ["a", "é", "€"])
async def test_oversized_frame_closes_with_1009(connect, settings, filler):
    settings.DASHBOARD = {**settings.DASHBOARD, "MAX_FRAME_BYTES": 1000}
    client = await connect("admin-token")
    # A frame of exactly the limit is fine; the limit counts bytes, not characters.
    await send_raw(client, frame_of_size(1000, filler))
    assert await client.reply_to(2) == {
        "id": 2,
        "type": "result",
        "data": {"authenticated": True, "userId": "admin-1", "roles": ["admin"], "expiresAt": None},
    }
    await send_raw(client, frame_of_size(1001, filler))
    closed = await client.communicator.receive_output(timeout=TIMEOUT)
    assert {k: v for k, v in closed.items() if k != "reason"} == {"type": "websocket.close", "code": 1009}
    await client.send({"id": 4, "type": "auth.whoami"})
    assert await client.communicator.receive_nothing(timeout=0.3)


@pytest.mark.parametrize("path", ["/", "/ws/"])
async def test_both_paths_speak_the_protocol(connect, path):
    client = await connect(path=path)
    assert client.welcome["type"] == "welcome"
    await send_raw(client, "not json")
    assert await client.receive() == error(0, "PARSE_ERROR", "Invalid JSON")
    assert await client.request("store.count", bucket="metrics") == error(1, "UNAUTHORIZED", "Authentication required")
    await assert_signed_out_but_usable(client)
