"""The permission rule: one function over (session, operation, resource).

`settings.DASHBOARD["PERMISSION_CHECK"]` names the function in force; the
default is the seed's rule. The resource is the query name for
store.subscribe, the subscription id for store.unsubscribe, the bucket for
other store operations and "*" otherwise.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

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


@lru_cache(maxsize=None)
def _check_function(path: str) -> PermissionCheck:
    return import_string(path)


def is_allowed(session: Session, operation: str, resource: str) -> bool:
    return bool(_check_function(settings.DASHBOARD["PERMISSION_CHECK"])(session, operation, resource))
