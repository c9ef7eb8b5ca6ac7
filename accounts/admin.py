"""Django admin for API tokens: issue (the raw token is shown once), inspect, revoke."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers

from .models import ApiToken
from .roles import known_roles
from .services import token_revoke


class ApiTokenForm(forms.ModelForm):
    # Only known roles (settings), though the column takes any: see roles.py.
    role = forms.ChoiceField(choices=())

    class Meta:
        model = ApiToken
        fields = ["user", "role", "label", "expires_at", "revoked"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        roles = known_roles()
        current = self.instance.role if self.instance.pk else None
        if current and current not in roles:
            roles.append(current)  # a role whose rule was removed stays visible
        role_field = self.fields["role"]
        assert isinstance(role_field, forms.ChoiceField)
        role_field.choices = [(role, role) for role in roles]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = ("shown_prefix", "user", "role", "label", "created_at", "expires_at", "last_used_at", "revoked")
    list_filter = ("role", "revoked")
    search_fields = ("user__username", "label", "prefix")
    ordering = ("-created_at",)
    list_select_related = ("user",)
    actions = ["revoke_selected"]
    readonly_fields = ("shown_prefix", "created_at", "last_used_at", "revoked_at")

    @admin.display(description="token", ordering="prefix")
    def shown_prefix(self, token: ApiToken) -> str:
        return f"{token.prefix}…" if token.prefix else "-"

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        if obj is None:
            return ["user", "role", "label", "expires_at"]
        return [
            "shown_prefix",
            "user",
            "role",
            "label",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked",
            "revoked_at",
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # A token stays with its user; a revocation is final (issue a new token).
        extra = ("user", "revoked") if obj.revoked else ("user",)
        return self.readonly_fields + extra

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if not change:
            # Kept on the instance for response_add only; never saved.
            obj.raw_token = obj.set_secret()
        super().save_model(request, obj, form, change)

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        """Shows the raw token once, on this page only (no message storage,
        which could keep it in a cookie or the session table)."""
        raw = getattr(obj, "raw_token", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "token": obj,
            "raw_token": raw,
            "title": "API token created",
        }
        response = TemplateResponse(request, "admin/accounts/apitoken/token_created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected tokens (ends their live sessions)")
    def revoke_selected(self, request: HttpRequest, queryset: Any) -> None:
        count = 0
        # One by one through the service: a queryset update would skip the
        # signals that end live sessions.
        for token in queryset.filter(revoked=False):
            token_revoke(token=token)
            count += 1
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
