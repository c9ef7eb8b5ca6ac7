"""App config for API tokens: connects the receivers that end revoked sessions."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Access"

    def ready(self) -> None:
        # Dependencies: accounts -> realtime, never the other way. accounts
        # implements realtime's token-validator interface (it returns
        # realtime.auth.Session) and sends its `sessions_revoked` signal when
        # sessions must end; realtime knows accounts only as a dotted path in
        # settings, and metrics knows neither. The receivers are connected
        # here, so importing accounts' models (a migration, the admin) pulls
        # in nothing of realtime but its auth interface.
        from . import signals

        signals.connect()
