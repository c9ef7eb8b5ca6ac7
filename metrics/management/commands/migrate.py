"""`migrate`, one run at a time per PostgreSQL database.

Two hosts deploying at once on a fresh database both try to create
`django_migrations` and the tables, and the second fails half-way
("relation ... already exists"). Django's own command is wrapped so that
every caller (`./dev migrate`, `./dev run`, the test runner) takes a
session-level advisory lock first: the second run waits, then finds nothing
left to apply. SQLite serializes writers by itself.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import connections

# Names "this project's migrations" among the database's advisory locks.
LOCK_KEY = int.from_bytes(b"dashmigr", "big")
WAIT_STEP_SECONDS = 0.2


class Command(DjangoMigrate):
    help = DjangoMigrate.help + " Runs one at a time per PostgreSQL database (advisory lock)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--lock-timeout",
            type=float,
            default=600.0,
            help="Seconds to wait for another migrate run on the same database (default 600).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            super().handle(*args, **options)
            return
        with connection.cursor() as cursor:
            self._acquire(cursor, options["lock_timeout"], options["verbosity"])
            try:
                super().handle(*args, **options)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])

    def _acquire(self, cursor: Any, timeout: float, verbosity: int) -> None:
        # pg_try_advisory_lock in a loop rather than pg_advisory_lock: the wait
        # is bounded and says once that it is waiting.
        deadline = time.monotonic() + timeout
        said = False
        while True:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
            if cursor.fetchone()[0]:
                return
            if not said and verbosity > 0:
                self.stdout.write("Another migrate run holds the lock on this database; waiting for it.")
                said = True
            if time.monotonic() > deadline:
                raise CommandError(f"Another migrate run held the lock for more than {timeout:g} s.")
            time.sleep(WAIT_STEP_SECONDS)
