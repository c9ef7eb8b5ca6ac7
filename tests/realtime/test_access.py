"""Access over the protocol: stored tokens, revocation, per-bucket rules, the
login rate limit, and the Django admin (tokens, and bucket edits that push)."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client as HttpClient
from django.utils import timezone

from accounts.models import ApiToken
from accounts.services import token_create, token_revoke
from metrics.models import Alert, Metric
from realtime import permissions
from realtime.auth import Session
from realtime.hub import get_hub
from realtime.login_failures import WINDOW_SECONDS, FailureWindow, login_failures
from tests.conftest import Client, metric

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
db = database_sync_to_async


def error(request_id: int, code: str, message: str, details: Any = None) -> dict[str, Any]:
    frame = {"id": request_id, "type": "error", "code": code, "message": message}
    if details is not None:
        frame["details"] = details
    return frame


@db
def issue(username: str, role: str = "viewer", **fields: Any) -> tuple[ApiToken, str]:
    user, _ = User.objects.get_or_create(username=username)
    return token_create(user=user, role=role, **fields)


async def assert_revoked(client: Client, reason: str) -> None:
    """The session_revoked frame, then close 4002, and nothing in between."""
    assert await client.receive() == {"type": "system", "event": "session_revoked", "reason": reason}
    assert await client.communicator.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4002,
        "reason": "session_revoked",
    }


@pytest.fixture
async def admin_http():
    """A Django test client signed in to the admin as a superuser."""
    root = await db(User.objects.create_superuser)("root", "root@example.com", "root-password-8271")
    http = HttpClient()
    await sync_to_async(http.force_login)(root)
    return http


# --- login with stored tokens ---------------------------------------------------------


async def test_login_with_an_issued_token(connect):
    expires_at = timezone.now().replace(microsecond=0) + timedelta(hours=1)
    token, raw = await issue("alice", "admin", expires_at=expires_at)
    client = await connect()
    expires_ms = int(expires_at.timestamp() * 1000)
    assert await client.request("auth.login", token=raw) == {
        "id": 1,
        "type": "result",
        "data": {"userId": "alice", "roles": ["admin"], "expiresAt": expires_ms},
    }
    assert await client.ok("auth.whoami") == {
        "authenticated": True,
        "userId": "alice",
        "roles": ["admin"],
        "expiresAt": expires_ms,
    }
    # What revocation matches on.
    [consumer] = list(get_hub().connections)
    assert consumer.session.token_id == str(token.pk)


async def test_demo_tokens_are_stored_tokens(connect):
    client = await connect()
    assert await client.login("admin-token") == {"userId": "admin-1", "roles": ["admin"], "expiresAt": None}
    assert await client.login("viewer-token") == {"userId": "viewer-1", "roles": ["viewer"], "expiresAt": None}


async def test_expired_token_is_refused(connect):
    _, raw = await issue("alice", expires_at=timezone.now() - timedelta(seconds=1))
    client = await connect()
    assert await client.request("auth.login", token=raw) == error(1, "UNAUTHORIZED", "Token has expired")
    assert await client.ok("auth.whoami") == {"authenticated": False}


# --- revocation -------------------------------------------------------------------------


async def test_revoking_a_token_ends_its_live_sessions(connect):
    token, raw = await issue("alice")
    _, other = await issue("bob")
    first = await connect(raw)
    second = await connect(raw)
    bystander = await connect(other)
    await first.ok("store.subscribe", query="metric-count")
    # From a worker thread, as the admin or a shell would.
    await db(token_revoke)(token=token)
    await assert_revoked(first, "token revoked")
    await assert_revoked(second, "token revoked")
    assert (await bystander.ok("auth.whoami"))["userId"] == "bob"
    again = await connect()
    assert await again.request("auth.login", token=raw) == error(1, "UNAUTHORIZED", "Invalid token")


async def test_a_rolled_back_revocation_ends_nothing(connect):
    token, raw = await issue("alice")
    client = await connect(raw)

    @db
    def revoke_then_fail() -> None:
        with transaction.atomic():
            token_revoke(token=ApiToken.objects.get(pk=token.pk))
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await revoke_then_fail()
    assert await client.nothing()
    assert (await client.ok("auth.whoami"))["userId"] == "alice"


async def test_deactivating_the_user_ends_the_sessions_of_all_its_tokens(connect):
    _, raw1 = await issue("alice", "admin")
    _, raw2 = await issue("alice", "viewer")
    _, other = await issue("bob")
    clients = [await connect(raw1), await connect(raw2)]
    bystander = await connect(other)

    @db
    def deactivate() -> None:
        alice = User.objects.get(username="alice")
        alice.is_active = False
        alice.save()

    await deactivate()
    for client in clients:
        await assert_revoked(client, "user deactivated")
    assert await bystander.nothing()
    again = await connect()
    assert await again.request("auth.login", token=raw1) == error(1, "UNAUTHORIZED", "Invalid token")


async def test_deleting_a_token_or_its_user_ends_its_sessions(connect):
    token, raw = await issue("alice")
    _, raw_bob = await issue("bob")
    alice, bob = await connect(raw), await connect(raw_bob)
    await db(token.delete)()
    await assert_revoked(alice, "token deleted")
    await db(User.objects.filter(username="bob").delete)()
    await assert_revoked(bob, "token deleted")


async def test_changing_role_or_expiry_ends_sessions_but_a_label_does_not(connect):
    token, raw = await issue("alice", "admin")
    client = await connect(raw)

    @db
    def change(**fields: Any) -> None:
        stored = ApiToken.objects.get(pk=token.pk)
        for name, value in fields.items():
            setattr(stored, name, value)
        stored.save()

    await change(label="wallboard")
    assert await client.nothing()
    await change(role="viewer")
    await assert_revoked(client, "token changed")
    client = await connect(raw)
    assert (await client.ok("auth.whoami"))["roles"] == ["viewer"]
    await change(expires_at=timezone.now() + timedelta(days=1))
    await assert_revoked(client, "token changed")


async def test_saving_the_admin_form_unchanged_ends_nothing(connect, admin_http):
    token, raw = await issue("alice", expires_at=timezone.now() + timedelta(days=1, microseconds=1))
    client = await connect(raw)
    expires_at = token.expires_at
    response = await sync_to_async(admin_http.post)(
        f"/admin/accounts/apitoken/{token.pk}/change/",
        {
            "role": "viewer",
            "label": "renamed",
            "expires_at_0": expires_at.strftime("%Y-%m-%d"),
            "expires_at_1": expires_at.strftime("%H:%M:%S"),
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert (await db(ApiToken.objects.get)(pk=token.pk)).label == "renamed"
    assert await client.nothing()


async def test_revoking_in_the_admin_change_form_ends_the_session(connect, admin_http):
    token, raw = await issue("alice")
    client = await connect(raw)
    response = await sync_to_async(admin_http.post)(
        f"/admin/accounts/apitoken/{token.pk}/change/",
        {"role": "viewer", "label": "", "expires_at_0": "", "expires_at_1": "", "revoked": "on", "_save": "Save"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    await assert_revoked(client, "token revoked")
    stored = await db(ApiToken.objects.get)(pk=token.pk)
    assert stored.revoked and stored.revoked_at is not None


async def test_revoke_action_in_the_admin_list_ends_sessions(connect, admin_http):
    token1, raw1 = await issue("alice")
    token2, raw2 = await issue("bob")
    _, raw3 = await issue("carol")
    clients = [await connect(raw1), await connect(raw2)]
    bystander = await connect(raw3)
    response = await sync_to_async(admin_http.post)(
        "/admin/accounts/apitoken/",
        {"action": "revoke_selected", "_selected_action": [token1.pk, token2.pk]},
    )
    assert response.status_code == 302
    for client in clients:
        await assert_revoked(client, "token revoked")
    assert await bystander.nothing()


# --- per-bucket rules --------------------------------------------------------------------

METRIC_QUERIES = ["all-metrics", "metrics-by-name", "metric-count", "latest-metrics"]


@pytest.fixture
def role_rules(settings):
    settings.DASHBOARD = {
        **settings.DASHBOARD,
        "PERMISSION_CHECK": "realtime.permissions.check_with_role_rules",
        "ROLE_RULES": {
            **settings.DASHBOARD["ROLE_RULES"],
            "metrics-reader": {"read": ["metrics"], "subscribe": METRIC_QUERIES},
        },
    }


async def test_a_role_may_read_metrics_but_not_alerts(connect, role_rules):
    _, raw = await issue("reader", "metrics-reader")
    reader = await connect(raw)
    admin = await connect("admin-token")
    assert await reader.ok("store.all", bucket="metrics") == []
    assert await reader.ok("store.count", bucket="metrics") == 0
    sub = await reader.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    assert await reader.request("store.subscribe", query="active-alerts") == error(
        5, "FORBIDDEN", "No permission for store.subscribe on active-alerts"
    )
    assert await reader.request("store.all", bucket="alerts") == error(
        6, "FORBIDDEN", "No permission for store.all on alerts"
    )
    assert await reader.request("store.insert", bucket="metrics", data=metric()) == error(
        7, "FORBIDDEN", "No permission for store.insert on metrics"
    )
    assert await reader.request("store.stats") == error(8, "FORBIDDEN", "No permission for store.stats on *")
    # Its permitted subscription is delivered.
    record = await admin.ok("store.insert", bucket="metrics", data=metric())
    assert await reader.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub["subscriptionId"],
        "data": [record],
    }
    assert await reader.ok("store.unsubscribe", subscriptionId=sub["subscriptionId"]) == {"unsubscribed": True}


async def test_role_rules_keep_the_seed_rule_for_admins_and_viewers(connect, role_rules):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    record = await admin.ok("store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 90, "timestamp": 1})
    assert await viewer.ok("store.all", bucket="alerts") == [record]
    assert (await viewer.ok("store.subscribe", query="active-alerts"))["data"] == [record]
    assert await viewer.request("store.delete", bucket="alerts", key=record["id"]) == error(
        4, "FORBIDDEN", "No permission for store.delete on alerts"
    )
    assert (await viewer.ok("store.stats"))["records"]["total"] == 1


def rules_check(settings, roles: tuple[str, ...], operation: str, resource: str) -> bool:
    return permissions.check_with_role_rules(Session(user_id="u", roles=roles), operation, resource)


@pytest.mark.parametrize(
    ("roles", "operation", "resource", "allowed"),
    [
        (("reader",), "store.get", "metrics", True),
        (("reader",), "store.get", "met", False),  # a rule given as a string is not a substring test
        (("reader",), "store.get", "alerts", False),
        (("reader",), "store.update", "metrics", False),
        (("reader",), "store.transaction", "*", False),
        (("reader",), "store.unsubscribe", "sub-1", True),
        (("reader",), "auth.whoami", "*", True),
        (("writer",), "store.update", "metrics", True),
        (("writer",), "store.transaction", "*", False),
        (("reader", "writer"), "store.get", "alerts", False),
        (("nobody",), "store.get", "metrics", False),
        (("admin",), "store.transaction", "*", True),
    ],
)
def test_role_rules(settings, roles, operation, resource, allowed):
    settings.DASHBOARD = {
        **settings.DASHBOARD,
        "ROLE_RULES": {
            "admin": {"read": "*", "write": "*", "subscribe": "*"},
            "reader": {"read": "metrics"},
            "writer": {"write": ["metrics"]},
        },
    }
    assert rules_check(settings, roles, operation, resource) is allowed


# --- login rate limit --------------------------------------------------------------------


async def test_failed_logins_are_rate_limited_per_address(connect, settings, caplog):
    settings.DASHBOARD = {**settings.DASHBOARD, "LOGIN_ATTEMPTS_PER_MINUTE": 3}
    guesser = await connect(address="203.0.113.7")
    with caplog.at_level(logging.WARNING, logger="realtime.actions"):
        for i in range(1, 4):
            assert await guesser.request("auth.login", token=f"guess-{i}") == error(i, "UNAUTHORIZED", "Invalid token")
    reply = await guesser.request("auth.login", token="admin-token")
    retry = reply.get("details", {}).get("retryAfterMs")
    assert isinstance(retry, int) and 0 < retry <= 60_000, reply
    assert reply == error(4, "RATE_LIMITED", f"Rate limit exceeded. Retry after {retry}ms", {"retryAfterMs": retry})
    assert await guesser.ok("auth.whoami") == {"authenticated": False}

    # Another connection from the same address is limited too; another address is not.
    same = await connect(address="203.0.113.7")
    assert (await same.request("auth.login", token="viewer-token"))["code"] == "RATE_LIMITED"
    other = await connect(address="198.51.100.2")
    assert (await other.login("viewer-token"))["userId"] == "viewer-1"

    # Logged with the address, never the token.
    failures = [r.getMessage() for r in caplog.records if "auth.login failed" in r.getMessage()]
    assert len(failures) == 3
    assert all("203.0.113.7" in line and "guess-" not in line for line in failures)
    assert "now rate limited" in failures[-1]


async def test_the_limit_lifts_when_failures_leave_the_window(connect, settings, monkeypatch):
    settings.DASHBOARD = {**settings.DASHBOARD, "LOGIN_ATTEMPTS_PER_MINUTE": 2}
    now = [1000.0]
    monkeypatch.setattr(login_failures, "clock", lambda: now[0])
    client = await connect(address="203.0.113.9")
    await client.request("auth.login", token="wrong")
    now[0] += 30
    await client.request("auth.login", token="wrong")
    assert (await client.request("auth.login", token="viewer-token"))["details"] == {"retryAfterMs": 30_000}
    now[0] += 30  # the first failure has left the window
    assert (await client.login("viewer-token"))["userId"] == "viewer-1"


async def test_successful_logins_are_not_limited(connect, settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "LOGIN_ATTEMPTS_PER_MINUTE": 2}
    client = await connect(address="203.0.113.10")
    for _ in range(10):
        assert (await client.login("viewer-token"))["userId"] == "viewer-1"


async def test_missing_token_is_a_validation_error_not_a_failure(connect, settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "LOGIN_ATTEMPTS_PER_MINUTE": 1}
    client = await connect(address="203.0.113.11")
    for _i in range(1, 4):
        assert (await client.request("auth.login", token=""))["code"] == "VALIDATION_ERROR"
    assert (await client.login("viewer-token"))["userId"] == "viewer-1"


def test_failure_window_forgets_idle_addresses():
    now = [0.0]
    window = FailureWindow(clock=lambda: now[0])
    for i in range(5):
        window.add(f"10.0.0.{i}", limit=3)
    assert window.retry_after_ms("10.0.0.1", limit=1) == WINDOW_SECONDS * 1000
    now[0] += WINDOW_SECONDS
    assert window.retry_after_ms("10.0.0.1", limit=1) == 0
    assert "10.0.0.1" not in window.failures


# --- Django admin --------------------------------------------------------------------------


@pytest.mark.django_db
def test_admin_issues_a_token_and_shows_it_once(admin_client):
    alice = User.objects.create_user(username="alice")
    response = admin_client.post(
        "/admin/accounts/apitoken/add/",
        {"user": alice.pk, "role": "viewer", "label": "wallboard", "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    raw = re.search(r'id="raw-token"[^>]*>([^<]+)<', response.content.decode()).group(1)
    token = ApiToken.objects.get(user=alice)
    assert (token.role, token.label, token.prefix) == ("viewer", "wallboard", raw[:8])
    from accounts.tokens import validate_token
    from tests.accounts.test_accounts import database_text

    assert validate_token(raw).user_id == "alice"
    assert raw not in database_text()
    # The change page shows the prefix only.
    page = admin_client.get(f"/admin/accounts/apitoken/{token.pk}/change/").content.decode()
    assert raw not in page and raw[:8] in page


@pytest.mark.django_db
def test_admin_offers_roles_from_the_rules(admin_client, settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "ROLE_RULES": {"metrics-reader": {"read": ["metrics"]}}}
    page = admin_client.get("/admin/accounts/apitoken/add/").content.decode()
    assert re.findall(r'<option value="([a-z-]+)"', page.split('name="role"')[1].split("</select>")[0]) == [
        "admin",
        "viewer",
        "metrics-reader",
    ]


@pytest.mark.django_db
def test_admin_bucket_lists_filter_search_and_order(admin_client):
    Metric.objects.create(name="cpu", value=1, unit="%", timestamp=3)
    Metric.objects.create(name="cpu", value=2, unit="%", timestamp=1)
    Metric.objects.create(name="disk", value=3, unit="GB", timestamp=2)
    Alert.objects.create(metric="cpu", threshold=90, severity="high", timestamp=1)
    Alert.objects.create(metric="disk", threshold=80, severity="low", timestamp=2)

    def listed(url: str) -> list:
        response = admin_client.get(url)
        assert response.status_code == 200
        return list(response.context["cl"].result_list)

    # Newest first by insertion order (sorting 10 million readings by time
    # would sort the whole table: metrics/admin.py).
    assert [m.timestamp for m in listed("/admin/metrics/metric/")] == [2, 1, 3]
    assert [m.value for m in listed("/admin/metrics/metric/?name=cpu")] == [2, 1]
    assert [m.name for m in listed("/admin/metrics/metric/?unit=GB")] == ["disk"]
    assert [m.name for m in listed("/admin/metrics/metric/?q=DISK")] == ["disk"]  # exact name, any case
    assert listed("/admin/metrics/metric/?q=dis") == []
    assert [a.metric for a in listed("/admin/metrics/alert/?severity__exact=high")] == ["cpu"]


async def test_admin_edits_and_deletes_push_to_a_live_subscriber(connect, admin_http):
    viewer = await connect("viewer-token")
    admin = await connect("admin-token")
    record = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 50))
    sub = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    assert sub["data"] == [record]
    seq = (await db(Metric.objects.get)(key=record["id"])).seq

    response = await sync_to_async(admin_http.post)(
        f"/admin/metrics/metric/{seq}/change/",
        {"name": "cpu", "value": "99.5", "unit": "%", "timestamp": "1706745600000", "_save": "Save"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    edited = await viewer.ok("store.get", bucket="metrics", key=record["id"])
    assert (edited["value"], edited["_version"]) == (99.5, 2)
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub["subscriptionId"],
        "data": [edited],
    }

    response = await sync_to_async(admin_http.post)(f"/admin/metrics/metric/{seq}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub["subscriptionId"],
        "data": [],
    }
    assert await viewer.nothing()
