"""POST /api/metrics: JSON readings, stored as one transaction, every error path."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.services import token_create
from tests.conftest import metric
from tests.ingest.conftest import json_body
from tests.ingest.helpers import records, stored

pytestmark = pytest.mark.django_db

URL = "/api/metrics"
UNAUTHORIZED_HEADER = 'Bearer realm="dashboard"'
INVALID_TOKEN_HEADER = 'Bearer realm="dashboard", error="invalid_token"'


def post_json(http, value, **options):
    return http.post(URL, json.dumps(value), **options)


def test_one_reading_answers_its_stored_record(http):
    response = post_json(http, metric("cpu", 72.5, "%", 1706745600000))
    assert response.status_code == 201
    [record] = records()
    assert json_body(response) == record
    assert set(record) == {"id", "name", "value", "unit", "timestamp", "_version", "_createdAt", "_updatedAt"}
    assert (record["name"], record["value"], record["unit"], record["timestamp"], record["_version"]) == (
        "cpu",
        72.5,
        "%",
        1706745600000,
        1,
    )


def test_an_array_answers_the_records_in_order_and_applies_defaults(http):
    body = [metric("cpu", 1), {"name": "mem", "value": 2, "timestamp": 5, "id": "mine"}, metric("cpu", 3)]
    response = post_json(http, body)
    assert response.status_code == 201
    assert json_body(response) == records()
    assert stored() == [("cpu", 1, "%", 1706745600000), ("mem", 2, "", 5), ("cpu", 3, "%", 1706745600000)]
    assert records()[1]["id"] == "mine"


def test_an_empty_array_stores_nothing(http):
    response = post_json(http, [])
    assert (response.status_code, json_body(response)) == (201, [])
    assert stored() == []


def test_one_invalid_reading_is_the_protocols_error(http):
    response = post_json(http, {"name": "cpu", "value": "high", "timestamp": 1, "junk": 1})
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": 'Validation failed for bucket "metrics": value: Expected type "number", got string; junk: Unknown field',
        "details": [
            {"field": "value", "message": 'Expected type "number", got string', "code": "type"},
            {"field": "junk", "message": "Unknown field", "code": "unknown"},
        ],
    }
    assert stored() == []


def test_an_invalid_reading_in_an_array_is_named_and_nothing_is_written(http):
    response = post_json(http, [metric("cpu", 1), metric("cpu", 2), {"name": "cpu", "timestamp": 1}])
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": 'Reading 2: Validation failed for bucket "metrics": value: Field is required',
        "details": {"index": 2, "issues": [{"field": "value", "message": "Field is required", "code": "required"}]},
    }
    assert stored() == []


def test_an_existing_id_is_a_conflict_and_nothing_is_written(http):
    assert post_json(http, {**metric(), "id": "taken"}).status_code == 201
    response = post_json(http, [metric("new", 1), {**metric(), "id": "taken"}])
    assert response.status_code == 409
    assert json_body(response) == {
        "code": "CONFLICT",
        "message": 'Reading 1: Record with key "taken" already exists in bucket "metrics"',
        "details": {"index": 1, "bucket": "metrics", "key": "taken"},
    }
    assert [name for name, *_ in stored()] == ["cpu"]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"{", "PARSE_ERROR", "Invalid JSON"),
        (b'{"name": "cpu", "value": NaN, "timestamp": 1}', "PARSE_ERROR", "Invalid JSON"),
        (b"\xff\xfe", "PARSE_ERROR", "Invalid JSON"),
        (b"42", "VALIDATION_ERROR", "Body must be a reading (JSON object) or an array of readings"),
        (b'[{"name": "cpu", "value": 1, "timestamp": 1}, 7]', "VALIDATION_ERROR", "Reading 1: expected object"),
    ],
)
def test_malformed_bodies(http, body, code, message):
    response = http.post(URL, body)
    assert response.status_code == 400
    expected = {"code": code, "message": message}
    if message.startswith("Reading 1"):
        expected["details"] = {"index": 1}
    assert json_body(response) == expected
    assert stored() == []


def test_strings_no_database_can_store_are_refused_everywhere_alike(http):
    response = http.post(
        URL, '[{"name": "ok", "value": 1, "timestamp": 1}, {"name": "a\\u0000b", "value": 1, "timestamp": 1}]'
    )
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": "Reading 1: Invalid string: NUL characters (\\u0000) and unpaired surrogates cannot be stored",
        "details": {"index": 1},
    }
    assert stored() == []


def test_no_token_is_401_with_a_challenge(http):
    response = post_json(http, metric(), token=None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == UNAUTHORIZED_HEADER
    assert json_body(response) == {"code": "UNAUTHORIZED", "message": "Authentication required"}
    assert stored() == []


@pytest.mark.parametrize(("scheme", "token"), [("Bearer", "nope"), ("Bearer", "x" * 600), ("Basic", "admin-token")])
def test_an_unknown_token_or_scheme_is_401(http, scheme, token):
    response = post_json(http, metric(), token=token, scheme=scheme)
    assert response.status_code == 401
    if scheme == "Basic":
        assert json_body(response) == {"code": "UNAUTHORIZED", "message": "Authentication required"}
        assert response["WWW-Authenticate"] == UNAUTHORIZED_HEADER
    else:
        assert json_body(response) == {"code": "UNAUTHORIZED", "message": "Invalid token"}
        assert response["WWW-Authenticate"] == INVALID_TOKEN_HEADER
    assert stored() == []


def test_an_expired_token_is_401(http):
    user = get_user_model().objects.create(username="old")
    _, raw = token_create(user=user, role="admin", expires_at=timezone.now() - timedelta(seconds=1))
    response = post_json(http, metric(), token=raw)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == INVALID_TOKEN_HEADER
    assert json_body(response) == {"code": "UNAUTHORIZED", "message": "Token has expired"}
    assert stored() == []


def test_the_influxdb_token_scheme_is_accepted(http):
    assert post_json(http, metric(), scheme="Token").status_code == 201


def test_a_viewer_is_403(http):
    response = post_json(http, metric(), token="viewer-token")
    assert response.status_code == 403
    assert json_body(response) == {"code": "FORBIDDEN", "message": "No permission for store.insert on metrics"}
    assert stored() == []


def test_the_role_rules_decide_as_on_the_websocket(http, settings):
    settings.DASHBOARD = {
        **settings.DASHBOARD,
        "PERMISSION_CHECK": "realtime.permissions.check_with_role_rules",
        "ROLE_RULES": {"admin": {"read": "*"}, "viewer": {"write": ["metrics"]}},
    }
    assert post_json(http, metric(), token="admin-token").status_code == 403
    assert post_json(http, metric(), token="viewer-token").status_code == 201


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_other_methods_are_405(http, method):
    response = getattr(http.client, method)(URL, HTTP_AUTHORIZATION="Bearer admin-token")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert json_body(response) == {
        "code": "INVALID_REQUEST",
        "message": f"Method {method.upper()} not allowed: use POST",
    }


def test_another_content_type_is_415(http):
    response = http.post(URL, json.dumps(metric()), content_type="text/plain")
    assert response.status_code == 415
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": 'Unsupported Content-Type "text/plain": expected application/json',
        "details": {"accepted": "application/json"},
    }
    assert stored() == []


def test_a_body_over_the_limit_is_413(http, limits):
    limits(MAX_FRAME_BYTES=200)
    body = json.dumps([metric("x" * 50, 1), metric("y" * 50, 2)])
    assert len(body) > 200
    response = http.post(URL, body)
    assert response.status_code == 413
    assert json_body(response) == {"code": "VALIDATION_ERROR", "message": "Request body too large: at most 200 bytes"}
    assert stored() == []


def test_too_many_readings_is_413(http, limits):
    limits(MAX_TRANSACTION_OPERATIONS=2)
    response = post_json(http, [metric(value=i) for i in range(3)])
    assert response.status_code == 413
    assert json_body(response) == {"code": "VALIDATION_ERROR", "message": "Too many readings: at most 2 per request"}
    assert stored() == []
    assert post_json(http, [metric(value=i) for i in range(2)]).status_code == 201


def test_gzip_bodies_are_inflated_within_the_limit(http, limits):
    response = http.post(URL, gzip.compress(json.dumps([metric()]).encode()), **{"Content-Encoding": "gzip"})
    assert response.status_code == 201
    assert stored() == [("cpu", 72.5, "%", 1706745600000)]

    limits(MAX_FRAME_BYTES=10_000)
    bomb = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    assert len(bomb) < 10_000
    response = http.post(URL, bomb, **{"Content-Encoding": "gzip"})
    assert (response.status_code, json_body(response)["message"]) == (
        413,
        "Request body too large: at most 10000 bytes",
    )

    response = http.post(URL, b"not gzip", **{"Content-Encoding": "gzip"})
    assert (response.status_code, json_body(response)) == (
        400,
        {"code": "VALIDATION_ERROR", "message": "Invalid gzip body"},
    )
    response = http.post(URL, b"[]", **{"Content-Encoding": "br"})
    assert response.status_code == 415
    assert json_body(response)["message"] == 'Unsupported Content-Encoding "br": expected gzip or identity'
    assert len(stored()) == 1


def test_over_the_request_rate_is_429_with_retry_after(http, limits):
    limits(REQUEST_RATE=1, REQUEST_RATE_WINDOW_SECONDS=60)
    assert post_json(http, metric(value=1)).status_code == 201
    response = post_json(http, metric(value=2))
    assert response.status_code == 429
    body = json_body(response)
    wait_ms = body["details"]["retryAfterMs"]
    assert 59_000 < wait_ms <= 60_000
    assert body == {
        "code": "RATE_LIMITED",
        "message": f"Rate limit exceeded. Retry after {wait_ms}ms",
        "details": {"retryAfterMs": wait_ms},
    }
    assert response["Retry-After"] == "60"
    assert stored() == [("cpu", 1, "%", 1706745600000)]
    # Counted per user: another admin still writes.
    user = get_user_model().objects.create(username="other")
    _, raw = token_create(user=user, role="admin")
    assert post_json(http, metric(value=3), token=raw).status_code == 201


@pytest.mark.django_db(transaction=True)
async def test_a_batch_is_one_push_to_a_subscribed_viewer(connect, http):
    viewer = await connect("viewer-token")
    count = await viewer.ok("store.subscribe", query="metric-count")
    cpu = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    response = await sync_to_async(post_json)(http, [metric("cpu", 1), metric("mem", 2), metric("cpu", 3)])
    assert response.status_code == 201
    created = json.loads(response.content)
    pushes = {}
    for _ in range(2):
        frame = await viewer.push()
        pushes[frame["subscriptionId"]] = frame["data"]
    assert pushes == {count["subscriptionId"]: 3, cpu["subscriptionId"]: [created[0], created[2]]}
    assert await viewer.nothing()

    # A refused batch pushes nothing.
    response = await sync_to_async(post_json)(http, [metric("cpu", 4), {"name": "cpu"}])
    assert response.status_code == 400
    assert await viewer.nothing()
