"""Samples this machine's CPU, load, memory, disk and network and inserts them
as metrics: `dashboard-collect` (dashboard_client.cli) as a management command."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from dashboard_client.cli import COLLECT_HELP, add_collect_arguments, collect_host_metrics
from realtime.management.options import command_errors, line_writer


class Command(BaseCommand):
    help = COLLECT_HELP

    def add_arguments(self, parser: CommandParser) -> None:
        add_collect_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            collect_host_metrics(options, line_writer(self.stdout))
