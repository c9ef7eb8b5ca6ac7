"""The client-based management commands' one Django part: dashboard_client's
command-line failures reported as CommandError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError, OutputWrapper

from dashboard_client.cli import CommandFailed, Write


@contextmanager
def command_errors() -> Iterator[None]:
    try:
        yield
    except CommandFailed as error:
        raise CommandError(str(error)) from None


def line_writer(stdout: OutputWrapper) -> Write:
    """Writes and flushes each line: a command's output is read as it comes."""

    def write(line: str) -> None:
        stdout.write(line)
        stdout.flush()

    return write
