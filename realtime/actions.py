"""The action table: every operation a client may request, and nothing else.

The consumer looks a request's `type` up in ACTIONS (never `getattr` on a
client-chosen name), checks auth and permission, and awaits the handler. A
handler returns the result's data; store work runs in the database thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings

from metrics import selectors, services
from metrics.errors import VALIDATION_ERROR
from metrics.schema import BUCKETS

from . import fields
from .auth import TokenExpired, validate_token
from .errors import NOT_FOUND, RATE_LIMITED, UNAUTHORIZED, ProtocolError, StoreError
from .fanout import get_hub
from .queries import QUERIES, get_query

if TYPE_CHECKING:
    from .consumer import DashboardConsumer


@dataclass
class Context:
    consumer: "DashboardConsumer"
    operation: str
    body: dict[str, Any]


Handler = Callable[[Context], Awaitable[Any]]


@dataclass(frozen=True)
class Action:
    handler: Handler
    # Which request field names the resource for the permission check.
    resource_field: str | None = "bucket"
    needs_session: bool = True


def db(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    return database_sync_to_async(function)


# --- auth -------------------------------------------------------------------


async def auth_login(ctx: Context) -> Any:
    token = fields.non_empty_string(ctx.body, "token")
    # The validator may read the database (stored tokens).
    session = await sync_to_async(validate_token, thread_sensitive=True)(token)
    if session is None:
        raise ProtocolError(UNAUTHORIZED, "Invalid token")
    if session.expired():
        raise TokenExpired()
    ctx.consumer.session = session
    return session.as_login_result()


async def auth_logout(ctx: Context) -> Any:
    ctx.consumer.session = None
    return {"loggedOut": True}


async def auth_whoami(ctx: Context) -> Any:
    session = ctx.consumer.session
    if session is None:
        return {"authenticated": False}
    return {"authenticated": True, **session.as_login_result()}


# --- store reads and writes ---------------------------------------------------


async def store_insert(ctx: Context) -> Any:
    bucket = fields.bucket(ctx.body)
    return await db(services.record_insert)(bucket=bucket, data=fields.obj(ctx.body, "data"))


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
    records = await db(selectors.bucket_record_counts)()
    hub = get_hub()
    return {
        "buckets": {"count": len(BUCKETS), "names": list(BUCKETS)},
        "records": records,
        "queries": {"defined": len(QUERIES), "live": len(hub.live)},
        "subscriptions": {"active": sum(len(live.subscriptions) for live in hub.live.values())},
    }


# --- transactions --------------------------------------------------------------

TRANSACTION_FIELDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "get": lambda op: {"key": fields.key(op)},
    "insert": lambda op: {"data": fields.obj(op, "data")},
    "update": lambda op: {"key": fields.key(op), "data": fields.obj(op, "data")},
    "delete": lambda op: {"key": fields.key(op)},
    "where": lambda op: {"filter": fields.obj(op, "filter")},
    "findOne": lambda op: {"filter": fields.obj(op, "filter")},
    "count": lambda op: {"filter": fields.optional_obj(op, "filter")},
}


def _transaction_operations(body: dict[str, Any]) -> list[services.Operation]:
    operations = body.get("operations")
    if not isinstance(operations, list) or not operations:
        raise StoreError(VALIDATION_ERROR, 'Missing or invalid "operations": expected non-empty array')
    limit = settings.DASHBOARD["MAX_TRANSACTION_OPERATIONS"]
    if len(operations) > limit:
        raise StoreError(VALIDATION_ERROR, f'Invalid "operations": at most {limit} operations')
    parsed = []
    for index, operation in enumerate(operations):
        if not isinstance(operation, dict):
            raise StoreError(VALIDATION_ERROR, f"Operation at index {index} must be an object")
        op = operation.get("op")
        extract = TRANSACTION_FIELDS.get(op) if isinstance(op, str) else None
        if extract is None:
            raise StoreError(
                VALIDATION_ERROR,
                f'Invalid "op" at index {index}: expected one of {", ".join(TRANSACTION_FIELDS)}',
            )
        parsed.append(services.Operation(op=op, bucket=fields.bucket(operation), args=extract(operation)))
    return parsed


async def store_transaction(ctx: Context) -> Any:
    operations = _transaction_operations(ctx.body)
    return await db(services.transaction_run)(operations=operations)


# --- subscriptions ---------------------------------------------------------------


async def store_subscribe(ctx: Context) -> Any:
    query = get_query(fields.non_empty_string(ctx.body, "query"))
    params = fields.optional_obj(ctx.body, "params") or {}
    consumer = ctx.consumer
    limit = settings.DASHBOARD["MAX_SUBSCRIPTIONS_PER_CONNECTION"]
    if len(consumer.subscriptions) >= limit:
        raise ProtocolError(RATE_LIMITED, f"Subscription limit reached (max {limit} per connection)")
    subscription_id = consumer.next_subscription_id()
    subscription, initial = await consumer.hub.subscribe(consumer, subscription_id, query, params)
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


ACTIONS: dict[str, Action] = {
    "auth.login": Action(auth_login, resource_field=None, needs_session=False),
    "auth.logout": Action(auth_logout, resource_field=None, needs_session=False),
    "auth.whoami": Action(auth_whoami, resource_field=None, needs_session=False),
    "store.insert": Action(store_insert),
    "store.get": Action(store_get),
    "store.update": Action(store_update),
    "store.delete": Action(store_delete),
    "store.clear": Action(store_clear),
    "store.all": Action(store_all),
    "store.where": Action(store_where),
    "store.findOne": Action(store_find_one),
    "store.count": Action(store_count),
    "store.first": Action(store_first),
    "store.last": Action(store_last),
    "store.paginate": Action(store_paginate),
    "store.sum": Action(aggregate("sum")),
    "store.avg": Action(aggregate("avg")),
    "store.min": Action(aggregate("min")),
    "store.max": Action(aggregate("max")),
    "store.buckets": Action(store_buckets, resource_field=None),
    "store.stats": Action(store_stats, resource_field=None),
    "store.transaction": Action(store_transaction, resource_field=None),
    "store.subscribe": Action(store_subscribe, resource_field="query"),
    "store.unsubscribe": Action(store_unsubscribe, resource_field="subscriptionId"),
}
