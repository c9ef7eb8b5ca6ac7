"""The action table: every operation a client may request, and nothing else.

The consumer checks auth and permission, looks the request's `type` up in
ACTIONS (never `getattr` on a client-chosen name) and awaits the handler. A
handler returns the result's data; store work runs in the database thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from metrics import selectors, services
from metrics.errors import VALIDATION_ERROR
from metrics.schema import BUCKETS, get_bucket
from telemetry import instruments

from . import fields
from .auth import Session, TokenExpired, validate_token
from .errors import NOT_FOUND, RATE_LIMITED, UNAUTHORIZED, ProtocolError, StoreError
from .frames import encode
from .hub import Hub
from .live import Subscription
from .login_failures import login_failures
from .queries import QUERIES, get_query

logger = logging.getLogger(__name__)


class Requester(Protocol):
    """What the actions need of the connection a request came on (the
    consumer), so that this table never imports the consumer that uses it."""

    scope: dict[str, Any]
    session: Session | None
    hub: Hub
    subscriptions: dict[str, Subscription]

    def deliver_push(self, subscription: Subscription, body: tuple[str, ...], body_utf8: tuple[bytes, ...]) -> bool: ...

    def start_session(self, session: Session) -> None: ...

    def end_session(self) -> None: ...

    def next_subscription_id(self) -> str: ...

    def register(self, subscription: Subscription) -> None: ...

    def unsubscribe(self, subscription_id: str) -> bool: ...


@dataclass
class Context:
    consumer: Requester
    operation: str
    body: dict[str, Any]


Handler = Callable[[Context], Awaitable[Any]]


def db(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    return database_sync_to_async(function)


# --- auth -------------------------------------------------------------------


async def auth_login(ctx: Context) -> Any:
    address = client_address(ctx.consumer.scope)
    limit = settings.DASHBOARD["LOGIN_ATTEMPTS_PER_MINUTE"]
    retry_ms = login_failures.retry_after_ms(address, limit)
    if retry_ms:
        instruments.LOGIN_FAILURES.inc()
        raise ProtocolError(RATE_LIMITED, f"Rate limit exceeded. Retry after {retry_ms}ms", {"retryAfterMs": retry_ms})
    token = fields.non_empty_string(ctx.body, "token")
    try:
        # The validator may read the database (stored tokens).
        session = await db(validate_token)(token)
        if session is None:
            raise ProtocolError(UNAUTHORIZED, "Invalid token")
        if session.expired():
            raise TokenExpired()
    except ProtocolError as error:
        instruments.LOGIN_FAILURES.inc()
        failures = login_failures.add(address, limit)
        # The address and the outcome, never the token: a log must not hold credentials.
        logger.warning(
            "auth.login failed from %s: %s (%d failure(s) in the last minute%s)",
            address,
            error.message,
            failures,
            ", now rate limited" if 0 < limit <= failures else "",
        )
        raise
    ctx.consumer.start_session(session)
    instruments.LOGINS.inc()
    return session.as_login_result()


def client_address(scope: dict[str, Any]) -> str:
    # Behind a proxy this is the proxy's address unless the server trusts its
    # forwarding headers (./dev serve passes --proxy-headers).
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def auth_logout(ctx: Context) -> Any:
    ctx.consumer.end_session()
    return {"loggedOut": True}


async def auth_whoami(ctx: Context) -> Any:
    session = ctx.consumer.session
    if session is not None and session.expired():
        ctx.consumer.session = session = None
    if session is None:
        return {"authenticated": False}
    return {"authenticated": True, **session.as_login_result()}


# --- store reads and writes ---------------------------------------------------


async def store_insert_batch(contexts: list[Context]) -> list[Any]:
    """Pipelined inserts of one connection: one database hop for all of them,
    each still its own transaction. Returns a record or an error for each."""
    items: list[tuple[Any, Any] | StoreError] = []
    for ctx in contexts:
        try:
            items.append((fields.bucket(ctx.body), fields.obj(ctx.body, "data")))
        except StoreError as error:
            items.append(error)
    valid = [item for item in items if not isinstance(item, StoreError)]
    inserted = iter(await db(services.record_insert_each)(items=valid) if valid else [])
    return [item if isinstance(item, StoreError) else next(inserted) for item in items]


async def store_insert(ctx: Context) -> Any:
    [outcome] = await store_insert_batch([ctx])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def store_get(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(selectors.record_get)(bucket=bucket, key=fields.key(ctx.body))


async def store_update(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    key = fields.key(ctx.body)
    return await db(services.record_update)(bucket=bucket, key=key, data=fields.obj(ctx.body, "data"))


async def store_delete(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(services.record_delete)(bucket=bucket, key=fields.key(ctx.body))


async def store_clear(ctx: Context) -> Any:
    return await db(services.bucket_clear)(bucket=fields.bucket(ctx.body))


async def store_all(ctx: Context) -> Any:
    return await db(selectors.record_all)(bucket=fields.bucket(ctx.body))


async def store_where(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(selectors.record_where)(bucket=bucket, filter=fields.obj(ctx.body, "filter"))


async def store_find_one(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(selectors.record_find_one)(bucket=bucket, filter=fields.obj(ctx.body, "filter"))


async def store_count(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(selectors.record_count)(bucket=bucket, filter=fields.optional_obj(ctx.body, "filter"))


async def store_first(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(selectors.record_first)(bucket=bucket, n=fields.positive_int(ctx.body, "n"))


async def store_last(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(selectors.record_last)(bucket=bucket, n=fields.positive_int(ctx.body, "n"))


async def store_paginate(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    limit = fields.positive_int(ctx.body, "limit")
    after = ctx.body.get("after")
    if after is not None and not isinstance(after, str):
        raise fields.invalid_field("after", "string")
    return await db(selectors.record_paginate)(bucket=bucket, limit=limit, after=after)


def aggregate(op: str) -> Handler:
    async def store_aggregate(ctx: Context) -> Any:
        bucket = fields.bucket(ctx.body)
        field = fields.non_empty_string(ctx.body, "field")
        filter_spec = fields.optional_obj(ctx.body, "filter")
        return await db(selectors.record_aggregate)(bucket=bucket, op=op, field=field, filter=filter_spec)

    return store_aggregate


async def store_buckets(ctx: Context) -> Any:
    return selectors.bucket_names()


async def store_stats(ctx: Context) -> Any:
    """The reference's stats shape; subscriptions are this process's."""
    per_bucket = await db(selectors.bucket_record_counts)()
    hub = ctx.consumer.hub
    indexes = {name: len(bucket.indexed_fields) for name, bucket in BUCKETS.items()}
    return {
        "name": "dashboard",
        "buckets": selectors.bucket_names(),
        "records": {"total": sum(per_bucket.values()), "perBucket": per_bucket},
        "indexes": {"total": sum(indexes.values()), "perBucket": indexes},
        "queries": {
            "defined": len(QUERIES),
            "activeSubscriptions": sum(len(live.subscriptions) for live in hub.queries.live.values()),
        },
        "persistence": {"enabled": True},
        "ttl": {"enabled": False, "checkIntervalMs": 0},
    }


# --- transactions --------------------------------------------------------------

# What each transaction operation needs besides "bucket" (the reference's
# checks and messages).
TRANSACTION_FIELDS: dict[str, tuple[str, ...]] = {
    "get": ("key",),
    "insert": ("data",),
    "update": ("key", "data"),
    "delete": ("key",),
    "where": ("filter",),
    "findOne": ("filter",),
    "count": (),
}


def _invalid(message: str) -> StoreError:
    return StoreError(VALIDATION_ERROR, message)


def _transaction_operation(index: int, operation: Any) -> services.Operation:
    where = f"operations[{index}]"
    if not isinstance(operation, dict):
        raise _invalid(f"{where}: expected object")
    op = operation.get("op")
    needed = TRANSACTION_FIELDS.get(op) if isinstance(op, str) else None
    if needed is None or not isinstance(op, str):
        raise _invalid(f'{where}: invalid "op" — expected one of: {", ".join(TRANSACTION_FIELDS)}')
    name = operation.get("bucket")
    if not isinstance(name, str) or not name:
        raise _invalid(f'{where}: missing or invalid "bucket"')
    bucket = get_bucket(name)
    args: dict[str, Any] = {}
    for field in needed:
        value = operation.get(field)
        if field == "key" and value is None:
            raise _invalid(f'{where}: "{op}" requires "key"')
        if field in ("data", "filter") and not isinstance(value, dict):
            raise _invalid(f'{where}: "{op}" requires "{field}" object')
        args[field] = value
    if op == "count":
        args["filter"] = fields.optional_obj(operation, "filter")
    return services.Operation(op=op, bucket=bucket, args=args)


def _transaction_operations(body: dict[str, Any]) -> list[services.Operation]:
    operations = body.get("operations")
    if not isinstance(operations, list):
        raise _invalid('Missing or invalid "operations": expected array')
    if not operations:
        raise _invalid('"operations" must contain at least one operation')
    limit = settings.DASHBOARD["MAX_TRANSACTION_OPERATIONS"]
    if len(operations) > limit:
        raise _invalid(f'"operations" may contain at most {limit} operations')
    return [_transaction_operation(i, operation) for i, operation in enumerate(operations)]


async def store_transaction(ctx: Context) -> Any:
    operations = _transaction_operations(ctx.body)
    return await db(services.transaction_run)(operations=operations)


# --- subscriptions ---------------------------------------------------------------


async def store_subscribe(ctx: Context) -> Any:
    consumer = ctx.consumer
    limit = settings.DASHBOARD["MAX_SUBSCRIPTIONS_PER_CONNECTION"]
    if len(consumer.subscriptions) >= limit:
        raise ProtocolError(RATE_LIMITED, f"Subscription limit reached (max {limit} per connection)")
    total = settings.DASHBOARD["MAX_SUBSCRIPTIONS_TOTAL"]
    if consumer.hub.queries.subscription_count >= total:
        raise ProtocolError(RATE_LIMITED, f"Subscription limit reached (max {total} in total)")
    query = get_query(fields.non_empty_string(ctx.body, "query"))
    params = fields.optional_obj(ctx.body, "params") or {}
    max_params = settings.DASHBOARD["MAX_PARAMS_BYTES"]
    if len(encode(params)) > max_params:
        raise StoreError(VALIDATION_ERROR, f'Invalid "params": at most {max_params} bytes')
    query.check_params(params)
    subscription_id = consumer.next_subscription_id()
    subscription, initial = await consumer.hub.queries.subscribe(consumer, subscription_id, query, params)
    # No await from here to the reply, so the reply precedes every push.
    consumer.register(subscription)
    return Encoded('{"subscriptionId":"' + subscription_id + '","data":' + initial + "}")


async def store_unsubscribe(ctx: Context) -> Any:
    subscription_id = fields.non_empty_string(ctx.body, "subscriptionId")
    if not ctx.consumer.unsubscribe(subscription_id):
        raise ProtocolError(NOT_FOUND, f'Subscription "{subscription_id}" not found')
    return {"unsubscribed": True}


class Encoded(str):
    """A result already encoded as JSON."""


# Operations whose pipelined requests the consumer answers in one batch.
BATCHED: dict[str, Callable[[list[Context]], Awaitable[list[Any]]]] = {
    "store.insert": store_insert_batch,
}

ACTIONS: dict[str, Handler] = {
    "auth.login": auth_login,
    "auth.logout": auth_logout,
    "auth.whoami": auth_whoami,
    "store.insert": store_insert,
    "store.get": store_get,
    "store.update": store_update,
    "store.delete": store_delete,
    "store.clear": store_clear,
    "store.all": store_all,
    "store.where": store_where,
    "store.findOne": store_find_one,
    "store.count": store_count,
    "store.first": store_first,
    "store.last": store_last,
    "store.paginate": store_paginate,
    "store.sum": aggregate("sum"),
    "store.avg": aggregate("avg"),
    "store.min": aggregate("min"),
    "store.max": aggregate("max"),
    "store.buckets": store_buckets,
    "store.stats": store_stats,
    "store.transaction": store_transaction,
    "store.subscribe": store_subscribe,
    "store.unsubscribe": store_unsubscribe,
}
