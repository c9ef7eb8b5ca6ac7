"""The permission rule: one function over (session, operation, resource).

`settings.DASHBOARD["PERMISSION_CHECK"]` names the function in force; the
default is the seed's rule, and `check_with_role_rules` is a ready-made
alternative with per-bucket rules from settings. The resource is the query
name for store.subscribe, the subscription id for store.unsubscribe, the
bucket for other store operations and "*" otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from django.conf import settings
from django.utils.module_loading import import_string

from .auth import Session

# The seed lists insert/update/delete/clear/transaction; any other operation
# that writes or changes the schema is refused to viewers as well.
WRITE_OPERATIONS = frozenset(
    {
        "store.insert",
        "store.update",
        "store.delete",
        "store.clear",
        "store.transaction",
        "store.defineBucket",
        "store.dropBucket",
        "store.defineQuery",
    }
)

PermissionCheck = Callable[[Session, str, str], bool]


def check(session: Session, operation: str, resource: str) -> bool:
    """The seed's rule: admins may do everything; everyone else only reads."""
    if "admin" in session.roles:
        return True
    return operation not in WRITE_OPERATIONS


def check_with_role_rules(session: Session, operation: str, resource: str) -> bool:
    """Per-role, per-bucket rules from DASHBOARD["ROLE_RULES"], e.g.

        {"metrics-reader": {"read": ["metrics"], "subscribe": ["all-metrics", "metric-count"]}}

    "read" and "write" list buckets, "subscribe" lists queries; "*" (alone or
    in a list) means all. A session may do what any of its roles may.
    Operations that name no bucket (store.buckets, store.stats, a transaction)
    need "*". Unsubscribing is always allowed: it only ends one's own
    subscriptions. Operations outside store.* are left to routing.
    """
    if not operation.startswith("store.") or operation == "store.unsubscribe":
        return True
    if operation == "store.subscribe":
        kind = "subscribe"
    elif operation in WRITE_OPERATIONS:
        kind = "write"
    else:
        kind = "read"
    rules = settings.DASHBOARD.get("ROLE_RULES", {})
    for role in session.roles:
        allowed = rules.get(role, {}).get(kind, ())
        if isinstance(allowed, str):
            allowed = (allowed,)  # never a substring test
        if "*" in allowed or (resource != "*" and resource in allowed):
            return True
    return False


@cache
def _check_function(path: str) -> PermissionCheck:
    return import_string(path)


def is_allowed(session: Session, operation: str, resource: str) -> bool:
    return bool(_check_function(settings.DASHBOARD["PERMISSION_CHECK"])(session, operation, resource))
