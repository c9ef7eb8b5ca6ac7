"""Prints a subscription's results as they arrive, a terminal view of a query:
`dashboard-watch` (dashboard_client.cli) as a management command."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from dashboard_client.cli import WATCH_HELP, add_watch_arguments, watch_query
from realtime.management.options import command_errors, line_writer


class Command(BaseCommand):
    help = WATCH_HELP

    def add_arguments(self, parser: CommandParser) -> None:
        add_watch_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            watch_query(options, line_writer(self.stdout))
