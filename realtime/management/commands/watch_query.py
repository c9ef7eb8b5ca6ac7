"""Prints a subscription's results as they arrive: a terminal view of a query."""
from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime, timezone
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from realtime.management.options import add_connection_arguments, make_client, run


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


class Command(BaseCommand):
    help = (
        "Subscribes to QUERY and prints one line per result as it arrives: the time (UTC), "
        "'initial' or 'push', the subscription id and the result as JSON. After a reconnect the "
        "subscription is made again and its fresh initial result is printed, with its new id. "
        "Ctrl-C stops it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("query", help="a query name, e.g. metric-count, metrics-by-name")
        parser.add_argument("--params", type=json_object, default=None, metavar="JSON",
                            help='the query\'s params as a JSON object, e.g. \'{"name": "host.cpu"}\'')
        add_connection_arguments(parser)
        parser.add_argument("--count", type=int, default=None, metavar="N",
                            help="exit after N pushes (initial results do not count)")
        parser.add_argument("--pretty", action="store_true", help="indent the JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["count"]
        if count is not None and count < 1:
            raise CommandError("--count must be a positive integer")
        indent = 2 if options["pretty"] else None

        async def main(stop: asyncio.Event) -> None:
            pushes = 0
            enough = asyncio.Event()
            async with make_client(options) as client:

                def show(data: Any) -> None:
                    nonlocal pushes
                    # The only subscription; the callback also runs before
                    # subscribe() returns, so it is looked up, not captured.
                    subscription = client.subscriptions[0]
                    when = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                    kind = "initial" if subscription.initial else "push"
                    text = json.dumps(data, indent=indent, ensure_ascii=False)
                    self.stdout.write(f"{when} {kind} {subscription.id} {text}")
                    self.stdout.flush()
                    if kind == "push":
                        pushes += 1
                        if count is not None and pushes >= count:
                            enough.set()

                subscription = await client.subscribe(options["query"], options["params"], show)
                waits = [asyncio.create_task(stop.wait()), asyncio.create_task(enough.wait()),
                         # These two end only in failure: the client gave up
                         # (revoked session), or the server refused the
                         # subscription when it was made again.
                         asyncio.create_task(client.wait_closed()),
                         asyncio.create_task(subscription.wait_for(lambda _: False))]
                try:
                    finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in waits:
                        task.cancel()
                for task in finished:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()

        run(main)
