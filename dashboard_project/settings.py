"""Settings for the dashboard server, read from the environment once at start-up.

Development defaults are safe to run on a laptop (SQLite file, in-memory channel
layer); a deployment sets DJANGO_SECRET_KEY, DJANGO_DEBUG=0,
DJANGO_ALLOWED_HOSTS, DATABASE_URL and REDIS_URL. See `.env.example`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from dashboard_client.durations import parse_duration
from dashboard_project.logformat import log_format

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def env_retention(name: str, default: str) -> float | None:
    """A duration such as `7d` in seconds, or None for `forever`."""
    raw = (os.environ.get(name) or default).strip()
    if raw.lower() == "forever":
        return None
    try:
        return parse_duration(raw)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}: {error} (or 'forever')") from None


def env_json(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    return json.loads(raw) if raw else default


DEBUG = env_bool("DJANGO_DEBUG", True)
_DEV_SECRET = "dev-only-insecure-secret-key-change-me-in-production-0123456789"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _DEV_SECRET
if not DEBUG and SECRET_KEY == _DEV_SECRET:
    raise RuntimeError("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")

INSTALLED_APPS = [
    # daphne first: its `runserver` serves the ASGI application.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "metrics.apps.MetricsConfig",
    # After metrics: its receivers run after the derived tables' (docs/alerts.md).
    "alerting.apps.AlertingConfig",
    "realtime.apps.RealtimeConfig",
    "accounts.apps.AccountsConfig",
    "telemetry.apps.TelemetryConfig",
]

MIDDLEWARE = [
    # /healthz, /readyz and /metrics, answered over plain HTTP and whatever
    # the Host (load balancers and Prometheus reach a process by its IP):
    # before SecurityMiddleware's TLS redirect (docs/operations.md).
    "telemetry.endpoints.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the dashboard's static files from the app itself, so a single
    # `./dev serve` works without a proxy (nginx can still take them over).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "dashboard_project.urls"
ASGI_APPLICATION = "dashboard_project.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
# Connections are kept open: reconnecting on every thread hop cost a third of
# the insert throughput in our measurements (docs/fanout.md).
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        # Several processes may write one file: take the write lock at BEGIN and
        # wait for it instead of failing with "database is locked".
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    _db["TEST"] = {"NAME": os.environ.get("DJANGO_TEST_SQLITE_NAME") or None}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------
# Group membership is refreshed by the fan-out hub, and the expiry is raised so
# that a long-running server never silently leaves its change group.
REDIS_URL = os.environ.get("REDIS_URL", "")
CHANNEL_GROUP_EXPIRY = 7 * 24 * 3600
CHANNEL_CAPACITY = env_int("DASHBOARD_CHANNEL_CAPACITY", 10_000)
# Which Redis layer: "pubsub" (default, see README "Running in production,
# on several processes") or "core".
REDIS_LAYER = os.environ.get("DASHBOARD_REDIS_LAYER", "pubsub")
# Redis pub/sub channels ignore the database number: deployments (and test
# runs) sharing one Redis keep apart by prefix.
CHANNEL_PREFIX = os.environ.get("DASHBOARD_CHANNEL_PREFIX", "dashboard")
if REDIS_URL and REDIS_LAYER == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # socket_timeout None: redis-py 8 otherwise drops idle blocking
                # receives every few seconds (channels_redis issue 422).
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": CHANNEL_PREFIX,
                "group_expiry": CHANNEL_GROUP_EXPIRY,
                "capacity": CHANNEL_CAPACITY,
                "expiry": 60,
            },
        }
    }
elif REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None}], "prefix": CHANNEL_PREFIX},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"group_expiry": CHANNEL_GROUP_EXPIRY, "capacity": CHANNEL_CAPACITY},
        }
    }

# Daphne's limit applies to outgoing frames too (a 10,000-metric result is
# ~1.8 MB), so the transport limit is high and the protocol's incoming limit
# is enforced by the consumer (DASHBOARD["MAX_FRAME_BYTES"]).
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = 256 * 1024 * 1024

# --- Dashboard protocol ---------------------------------------------------
DASHBOARD = {
    # Dotted paths, so a deployment can replace token validation and the
    # permission rule without touching the consumer.
    # Tokens are stored hashed (accounts app): there are no built-in tokens;
    # `manage.py seed_demo` stores the seed's demo tokens in development.
    "TOKEN_VALIDATOR": os.environ.get("DASHBOARD_TOKEN_VALIDATOR", "accounts.tokens.validate_token"),
    "PERMISSION_CHECK": os.environ.get("DASHBOARD_PERMISSION_CHECK", "realtime.permissions.check"),
    # Used by realtime.permissions.check_with_role_rules (when named above):
    # per role, which buckets it may read and write and which queries it may
    # subscribe to ("*": all). Roles named here are offered for new tokens.
    "ROLE_RULES": env_json(
        "DASHBOARD_ROLE_RULES",
        {
            "admin": {"read": "*", "write": "*", "subscribe": "*"},
            "viewer": {"read": "*", "subscribe": "*"},
        },
    ),
    # Failed auth.login attempts per client address per minute, counted in
    # each server process (0: no limit).
    # Generous by default: every client behind one proxy or NAT shares an
    # address, and tokens are 256-bit random, so this limits abuse, not guessing.
    "LOGIN_ATTEMPTS_PER_MINUTE": env_int("DASHBOARD_LOGIN_ATTEMPTS_PER_MINUTE", 100),
    "MAX_FRAME_BYTES": env_int("DASHBOARD_MAX_FRAME_BYTES", 1024 * 1024),
    "HEARTBEAT_SECONDS": float(os.environ.get("DASHBOARD_HEARTBEAT_SECONDS", "30")),
    "MAX_SUBSCRIPTIONS_PER_CONNECTION": env_int("DASHBOARD_MAX_SUBSCRIPTIONS", 100),
    # Per server process.
    "MAX_SUBSCRIPTIONS_TOTAL": env_int("DASHBOARD_MAX_SUBSCRIPTIONS_TOTAL", 100_000),
    "MAX_CONNECTIONS_PER_ADDRESS": env_int("DASHBOARD_MAX_CONNECTIONS_PER_ADDRESS", 5000),
    # Requests per user and process: a burst of RATE, RATE per WINDOW on average.
    # Off (0) by default, as in the reference server: one process serves a
    # few thousand requests a second, and a collector or load test from one
    # user must not be cut off. Set it where users must not crowd each other out.
    "REQUEST_RATE": env_int("DASHBOARD_REQUEST_RATE", 0),
    "REQUEST_RATE_WINDOW_SECONDS": float(os.environ.get("DASHBOARD_REQUEST_RATE_WINDOW_SECONDS", "10")),
    "MAX_PARAMS_BYTES": env_int("DASHBOARD_MAX_PARAMS_BYTES", 4096),
    # Filters (store.where/count/findOne/aggregates, transactions): nesting
    # levels (objects and lists), conditions and values in all, and values
    # in one $in/$nin. Larger ones are a VALIDATION_ERROR.
    "MAX_FILTER_DEPTH": env_int("DASHBOARD_MAX_FILTER_DEPTH", 12),
    "MAX_FILTER_ITEMS": env_int("DASHBOARD_MAX_FILTER_ITEMS", 1000),
    "MAX_FILTER_IN_ITEMS": env_int("DASHBOARD_MAX_FILTER_IN_ITEMS", 500),
    # Distinct live queries (query and params) one user's subscriptions may
    # hold in a process, and all users' together; subscribing to a query that
    # is already live costs nothing and is always allowed.
    "MAX_LIVE_QUERIES_PER_USER": env_int("DASHBOARD_MAX_LIVE_QUERIES_PER_USER", 32),
    "MAX_LIVE_QUERIES": env_int("DASHBOARD_MAX_LIVE_QUERIES", 1000),
    # Compiled filters kept for reuse: only filters whose JSON is at most
    # this long are kept, so the cache stays under MAX_COMPILED x this.
    "MAX_CACHED_FILTER_CHARS": env_int("DASHBOARD_MAX_CACHED_FILTER_CHARS", 2048),
    # Frames waiting for a slow reader (pushes are coalesced per subscription
    # first); past this the connection is closed with 1008.
    "MAX_OUTBOX_BYTES": env_int("DASHBOARD_MAX_OUTBOX_BYTES", 64 * 1024 * 1024),
    # The same, for all of one user's connections and for all connections of
    # a process: past them the connections that have made no progress for
    # the longest are closed (1008) until the rest fit (0: no limit).
    "MAX_OUTBOX_BYTES_PER_USER": env_int("DASHBOARD_MAX_OUTBOX_BYTES_PER_USER", 64 * 1024 * 1024),
    "MAX_OUTBOX_BYTES_TOTAL": env_int("DASHBOARD_MAX_OUTBOX_BYTES_TOTAL", 256 * 1024 * 1024),
    # A connection that has not logged in this long after connecting is
    # closed (4004 login_timeout); at most this many such connections per
    # client address and process (4003 above; 0: no limit).
    "LOGIN_DEADLINE_SECONDS": float(os.environ.get("DASHBOARD_LOGIN_DEADLINE_SECONDS", "10")),
    "MAX_UNAUTHENTICATED_PER_ADDRESS": env_int("DASHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS", 64),
    # Dotted path of a function (token ids -> {id: reason} of those no longer
    # valid) that live sessions are checked against every heartbeat, so a
    # revocation by any path ends them; empty: not checked.
    # The default checks tokens of the default validator only (realtime/
    # connections.py skips it under another validator, whose ids mean
    # nothing to it).
    "TOKEN_RECHECK": os.environ.get("DASHBOARD_TOKEN_RECHECK", "accounts.tokens.invalid_among"),
    # Largest `n` / `limit` a request may ask for.
    "MAX_RESULT_LIMIT": env_int("DASHBOARD_MAX_RESULT_LIMIT", 100_000),
    # Largest `n` of `alert-events`: each transition is a bigger entry than
    # a reading, and the query is pushed again on every transition.
    "MAX_ALERT_EVENTS": env_int("DASHBOARD_MAX_ALERT_EVENTS", 1000),
    "MAX_TRANSACTION_OPERATIONS": env_int("DASHBOARD_MAX_TRANSACTION_OPERATIONS", 1000),
    # How often each process checks that its channel-layer messages arrive.
    "LAYER_PROBE_SECONDS": float(os.environ.get("DASHBOARD_LAYER_PROBE_SECONDS", "2")),
    # One process on SQLite without Redis: how often to look for writes made
    # by other processes (a shell, prune_metrics); 0 turns it off.
    "EXTERNAL_WRITES_POLL_SECONDS": float(os.environ.get("DASHBOARD_EXTERNAL_WRITES_POLL_SECONDS", "1")),
    # After each fan-out round the hub may rest this many times the round's
    # duration, trading push count for write throughput. Off by default:
    # pipelined writes already coalesce while a round waits for the database.
    "FANOUT_REST_RATIO": float(os.environ.get("DASHBOARD_FANOUT_REST_RATIO", "0")),
    "SHUTDOWN_GRACE_MS": env_int("DASHBOARD_SHUTDOWN_GRACE_MS", 1000),
    # The admin's CSV export of readings: more matching rows than this is
    # refused with a message to narrow the filter (the export is streamed).
    "ADMIN_EXPORT_MAX_ROWS": env_int("DASHBOARD_ADMIN_EXPORT_MAX_ROWS", 1_000_000),
    # A bearer token /metrics asks for; empty: /metrics is open (docs/operations.md).
    "METRICS_TOKEN": os.environ.get("DASHBOARD_METRICS_TOKEN", ""),
    # SQLite only: a server process checkpoints the write-ahead log from a
    # thread this often instead of inside a commit (metrics/checkpoint.py);
    # 0 leaves it to SQLite's automatic checkpoint.
    "SQLITE_CHECKPOINT_SECONDS": float(os.environ.get("DASHBOARD_SQLITE_CHECKPOINT_SECONDS", "2")),
    # How long `prune_metrics` keeps each level of history, in seconds (None:
    # for ever): raw readings, then each time-bucket tier (metrics.derived).
    # Coarse tiers outlive raw readings, so old ranges stay chartable.
    "RETENTION": {
        level: env_retention(f"DASHBOARD_RETENTION_{level.upper()}", default)
        for level, default in (
            ("raw", "7d"),
            ("10s", "7d"),
            ("1m", "90d"),
            ("10m", "365d"),
            ("1h", "forever"),
            ("1d", "forever"),
        )
    },
    # metric-series: a step finer than the finest tier (10 s) is computed
    # from raw readings only while the range holds at most this many times
    # `points` readings; otherwise the step grows to a tier's.
    "SERIES_RAW_READINGS_PER_POINT": env_int("DASHBOARD_SERIES_RAW_READINGS_PER_POINT", 5),
    # Alert webhook (docs/alerts.md): each alert transition is POSTed here
    # as JSON, in order, retried with exponential backoff (from BACKOFF up to
    # BACKOFF_MAX seconds) until delivered or GIVE_UP seconds old (0: never).
    # Empty: transitions are recorded but not queued.
    "ALERT_WEBHOOK_URL": os.environ.get("DASHBOARD_ALERT_WEBHOOK_URL", ""),
    "ALERT_WEBHOOK_TIMEOUT_SECONDS": float(os.environ.get("DASHBOARD_ALERT_WEBHOOK_TIMEOUT_SECONDS", "5")),
    "ALERT_WEBHOOK_BACKOFF_SECONDS": float(os.environ.get("DASHBOARD_ALERT_WEBHOOK_BACKOFF_SECONDS", "1")),
    "ALERT_WEBHOOK_BACKOFF_MAX_SECONDS": float(os.environ.get("DASHBOARD_ALERT_WEBHOOK_BACKOFF_MAX_SECONDS", "60")),
    "ALERT_WEBHOOK_GIVE_UP_SECONDS": float(os.environ.get("DASHBOARD_ALERT_WEBHOOK_GIVE_UP_SECONDS", "86400")),
    # How often each server process looks at the queue (its own transitions
    # wake it at once), and how long the lease of the one sending lasts
    # without renewal (at least TIMEOUT + max(2 x TIMEOUT, 5 s): a shorter
    # one is lengthened, with a warning). TIMEOUT bounds a whole POST.
    "ALERT_WEBHOOK_POLL_SECONDS": float(os.environ.get("DASHBOARD_ALERT_WEBHOOK_POLL_SECONDS", "1")),
    "ALERT_WEBHOOK_LEASE_SECONDS": float(os.environ.get("DASHBOARD_ALERT_WEBHOOK_LEASE_SECONDS", "30")),
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The admin shows times (readings' timestamps, created/updated) in this zone.
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE") or "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Files are served from the app and static directories directly, so no
# collectstatic step is needed before `./dev serve`.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise's file responses are synchronous iterators, which Django's ASGI
# handler reads in a thread and warns about on the first static file. Our
# static files are a few small scripts and styles, so the warning says
# nothing useful (WhiteNoise has no ASGI support yet).
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

# --- Production security (Django's check --deploy) ---------------------------
if not DEBUG:
    # TLS ends at the proxy (docs/deploy.md), which sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000)
    # Off unless asked for: both bind every subdomain of the host's domain
    # (a company's other sites too), and preload lists are slow to leave.
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
    # check --deploy warns about each while it is off; off is our choice.
    SILENCED_SYSTEM_CHECKS = [
        check
        for check, on in (("security.W005", SECURE_HSTS_INCLUDE_SUBDOMAINS), ("security.W021", SECURE_HSTS_PRELOAD))
        if not on
    ]
    CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

try:
    log_format()  # checked here, so a typo stops the start with its name
except ValueError as error:
    raise ImproperlyConfigured(str(error)) from None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # DJANGO_LOG_FORMAT: plain (default) or json, one object per line.
    "formatters": {"plain": {"()": "dashboard_project.logformat.from_environment"}},
    # channels-redis repeats a traceback every second while Redis is down;
    # an ingest request's traceback (ingest.views) repeats for every request
    # while the database is down: once a minute each, with a count.
    # Probes, scrapes and /favicon.ico: no WARNING/ERROR line per request.
    "filters": {
        "repeats": {"()": "dashboard_project.logfilters.RepeatFilter", "loggers": ["channels_redis", "ingest.views"]},
        "quiet_probes": {"()": "telemetry.logfilters.QuietProbes"},
        # Refused ingest requests (4xx): counted in /metrics, not one line each.
        "quiet_ingest_refusals": {"()": "ingest.logfilters.QuietRefusals"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["repeats", "quiet_probes", "quiet_ingest_refusals"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}
