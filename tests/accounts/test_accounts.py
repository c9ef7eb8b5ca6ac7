"""API tokens: hashing, validation, the services and the management commands."""

from __future__ import annotations

import hmac
import io
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from accounts import tokens
from accounts.hashing import PREFIX_LENGTH, new_raw_token, token_digest
from accounts.management.commands.create_token import parse_duration
from accounts.models import ApiToken
from accounts.roles import known_roles
from accounts.services import demo_tokens_seed, token_create, token_revoke
from accounts.tokens import validate_token
from realtime.auth import Session, TokenExpired

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def alice():
    return User.objects.create_user(username="alice")


def now_ms() -> int:
    return int(time.time() * 1000)


def database_text() -> str:
    """Every row of every table, as text: what an attacker with a copy of the
    database would have."""
    dump = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            dump.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(dump)


# --- hashing ---------------------------------------------------------------------------


def test_the_raw_token_is_not_stored_only_its_digest(alice):
    token, raw = token_create(user=alice, role="viewer")
    assert len(raw) == 43  # secrets.token_urlsafe(32): 256 bits
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.digest == token_digest(raw) != raw
    assert stored.prefix == raw[:PREFIX_LENGTH]
    assert raw not in database_text()
    assert raw not in str(stored)


def test_issued_tokens_are_random(alice):
    raws = {token_create(user=alice, role="viewer")[1] for _ in range(20)}
    assert len(raws) == 20
    assert new_raw_token() not in raws


def test_validation_compares_digests_in_constant_time(alice, monkeypatch):
    token, raw = token_create(user=alice, role="viewer")
    calls = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    assert validate_token(raw).token_id == str(token.pk)
    assert calls == [(token.digest, token_digest(raw))]

    # Same prefix, different secret: found by prefix, refused by the digest.
    calls.clear()
    forged = raw[:PREFIX_LENGTH] + ("A" if raw[PREFIX_LENGTH] != "A" else "B") + raw[PREFIX_LENGTH + 1 :]
    assert validate_token(forged) is None
    assert calls == [(token.digest, token_digest(forged))]


def test_every_candidate_with_the_prefix_is_compared(alice, monkeypatch):
    first, raw = token_create(user=alice, role="viewer", raw="samepref-one")
    second, _ = token_create(user=alice, role="admin", raw="samepref-two")
    compared = []
    monkeypatch.setattr(tokens.hmac, "compare_digest", lambda a, b: compared.append(a) or a == b)
    assert validate_token(raw).roles == ("viewer",)
    assert sorted(compared) == sorted([first.digest, second.digest])


# --- validation ---------------------------------------------------------------------


def test_valid_token_gives_a_session_named_by_username(alice):
    expires_at = timezone.now().replace(microsecond=0) + timedelta(days=30)
    token, raw = token_create(user=alice, role="admin", expires_at=expires_at)
    session = validate_token(raw)
    assert session == Session(user_id="alice", roles=("admin",), expires_at=int(expires_at.timestamp() * 1000))
    assert session.token_id == str(token.pk)
    assert session.as_login_result() == {
        "userId": "alice",
        "roles": ["admin"],
        "expiresAt": int(expires_at.timestamp() * 1000),
    }


@pytest.mark.parametrize("raw", ["", "x", "nope-nope-nope", "a" * 43, "\x00" * 10, "\ud800abc", "é" * 20, "a" * 5000])
def test_unknown_or_malformed_tokens_are_invalid(alice, raw):
    token_create(user=alice, role="viewer")
    assert validate_token(raw) is None


def test_expired_token_raises_token_expired(alice):
    _, raw = token_create(user=alice, role="viewer", expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TokenExpired):
        validate_token(raw)


def test_revoked_token_is_invalid(alice):
    token, raw = token_create(user=alice, role="viewer")
    token_revoke(token=token)
    token.refresh_from_db()
    assert token.revoked and token.revoked_at is not None
    assert validate_token(raw) is None


def test_inactive_user_tokens_are_invalid(alice):
    _, raw = token_create(user=alice, role="viewer")
    alice.is_active = False
    alice.save()
    assert validate_token(raw) is None
    alice.is_active = True
    alice.save()
    assert validate_token(raw) is not None


def test_last_used_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    token, raw = token_create(user=alice, role="viewer")
    assert token.last_used_at is None
    with django_assert_num_queries(2):  # the lookup, the update
        validate_token(raw)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    with django_assert_num_queries(1):  # the lookup only
        validate_token(raw)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    validate_token(raw)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first - timedelta(minutes=2)


def test_role_names_are_checked(alice):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        token_create(user=alice, role="Bad Role!")
    assert not ApiToken.objects.filter(user=alice).exists()


# --- seed_demo ------------------------------------------------------------------------


@pytest.mark.no_demo_tokens
def test_seed_demo_stores_the_seed_tokens_idempotently(settings):
    settings.DEBUG = True  # the test runner turns it off
    assert validate_token("admin-token") is None
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert out.getvalue() == "admin-token: user admin-1, role admin\nviewer-token: user viewer-1, role viewer\n"
    call_command("seed_demo", "-v0", stdout=io.StringIO())
    assert ApiToken.objects.count() == 2
    assert User.objects.filter(username__in=["admin-1", "viewer-1"]).count() == 2
    assert validate_token("admin-token") == Session(user_id="admin-1", roles=("admin",))
    assert validate_token("viewer-token") == Session(user_id="viewer-1", roles=("viewer",))
    # Token-only accounts: no password to sign in to the Django admin with.
    assert not User.objects.get(username="admin-1").has_usable_password()
    assert "admin-token" not in database_text()


def test_seed_demo_restores_a_revoked_demo_token():
    token = ApiToken.objects.get(digest=token_digest("viewer-token"))
    token_revoke(token=token)
    assert validate_token("viewer-token") is None
    demo_tokens_seed()
    assert validate_token("viewer-token") == Session(user_id="viewer-1", roles=("viewer",))
    assert ApiToken.objects.count() == 2


@pytest.mark.no_demo_tokens
def test_seed_demo_refuses_with_debug_off_unless_forced(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG is off"):
        call_command("seed_demo", stdout=io.StringIO())
    assert not ApiToken.objects.exists()
    call_command("seed_demo", "--force", stdout=io.StringIO())
    assert validate_token("admin-token") is not None


def test_settings_have_no_built_in_tokens(settings):
    assert settings.DASHBOARD["TOKEN_VALIDATOR"] == "accounts.tokens.validate_token"
    assert "DEMO_TOKENS" not in settings.DASHBOARD


# --- create_token ---------------------------------------------------------------------


def create_token(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_token", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_token_prints_the_token_once(alice):
    out, err = create_token("--user", "alice", "--role", "viewer", "--expires", "30d", "--label", "wallboard")
    raw = out.strip()
    assert out == raw + "\n"
    assert raw not in err and "role viewer" in err
    token = ApiToken.objects.get(user=alice)
    assert (token.user, token.role, token.label) == (alice, "viewer", "wallboard")
    assert raw not in database_text()
    session = validate_token(raw)
    assert (session.user_id, session.roles) == ("alice", ("viewer",))
    thirty_days = 30 * 24 * 3600 * 1000
    assert now_ms() + thirty_days - 5000 <= session.expires_at <= now_ms() + thirty_days


def test_create_token_without_expiry_never_expires(alice):
    raw = create_token("--user", "alice", "--role", "admin")[0].strip()
    assert validate_token(raw) == Session(user_id="alice", roles=("admin",), expires_at=None)


def test_create_token_can_create_the_user():
    with pytest.raises(CommandError, match="no user 'bob'"):
        create_token("--user", "bob", "--role", "viewer")
    raw = create_token("--user", "bob", "--role", "viewer", "--create-user")[0].strip()
    assert validate_token(raw).user_id == "bob"
    assert not User.objects.get(username="bob").has_usable_password()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "superuser"], "unknown role 'superuser'"),
        (["--role", "viewer", "--expires", "30"], "invalid duration"),
        (["--role", "viewer", "--expires", "0d"], "invalid duration"),
        (["--role", "viewer", "--expires", "soon"], "invalid duration"),
    ],
)
def test_create_token_refuses_bad_arguments(alice, args, message):
    with pytest.raises(CommandError, match=message):
        create_token("--user", "alice", *args)
    assert not ApiToken.objects.filter(user=alice).exists()


def test_create_token_refuses_an_inactive_user(alice):
    alice.is_active = False
    alice.save()
    with pytest.raises(CommandError, match="inactive"):
        create_token("--user", "alice", "--role", "viewer")


def test_create_token_accepts_roles_named_in_the_rules(alice, settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "ROLE_RULES": {"metrics-reader": {"read": ["metrics"]}}}
    assert known_roles() == ["admin", "viewer", "metrics-reader"]
    raw = create_token("--user", "alice", "--role", "metrics-reader")[0].strip()
    assert validate_token(raw).roles == ("metrics-reader",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected
