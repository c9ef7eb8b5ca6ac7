"""The roles a token may carry: the seed's two, plus any the deployment's rules name."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator

ADMIN = "admin"
VIEWER = "viewer"
BUILT_IN_ROLES = (ADMIN, VIEWER)

# Roles travel in login results and rule tables: keep them plain identifiers.
ROLE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}\Z"
validate_role_name = RegexValidator(ROLE_PATTERN, "Use lowercase letters, digits, '.', '_' and '-'.")


def known_roles() -> list[str]:
    """admin and viewer, then the roles named in DASHBOARD["ROLE_RULES"].

    The model stores any role name, so a new role needs a rule in settings and
    no migration; the admin form and create_token offer only known roles, so a
    typo cannot mint a token that silently has no permissions.
    """
    extra = sorted(set(settings.DASHBOARD.get("ROLE_RULES", {})) - set(BUILT_IN_ROLES))
    return [*BUILT_IN_ROLES, *extra]
