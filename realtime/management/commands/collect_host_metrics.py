"""Samples this machine's CPU, load, memory, disk and network and inserts them
as metrics, one `store.transaction` per sample."""
from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from metrics.durations import positive_duration_argument
from realtime.collector import HostSampler, collect, host_label
from realtime.management.options import add_connection_arguments, make_client, run


class Command(BaseCommand):
    help = (
        "Sends host metrics to the dashboard server every --interval: host.cpu (%), host.load1, "
        "host.memory.used (MB), host.disk.used (%), host.net.rx and host.net.tx (B/s, all interfaces "
        "but loopback). Each sample is one store.transaction, so subscribers see one change per sample. "
        "Needs a token that may write (admin). Ctrl-C stops it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_connection_arguments(parser)
        parser.add_argument("--interval", type=positive_duration_argument, default=5.0, metavar="DURATION",
                            help="time between samples, e.g. 1s, 500ms (default: 5s); CPU and network "
                                 "rates are measured over it")
        parser.add_argument("--once", action="store_true",
                            help="store one sample (measured over one interval) and exit")
        parser.add_argument("--host-label", default="", metavar="LABEL",
                            help="put LABEL in the names (host.LABEL.cpu, ...) so that several machines "
                                 "can report to one server; 'auto' uses this machine's host name "
                                 "(default: no label, names are host.cpu, ...)")
        parser.add_argument("--disk", default="/", metavar="PATH",
                            help="report the filesystem holding PATH (default: /)")

    def handle(self, *args: Any, **options: Any) -> None:
        label = host_label(options["host_label"]) if options["host_label"] else None
        sampler = HostSampler(label=label, disk_path=options["disk"])
        interval = options["interval"]
        verbosity = options["verbosity"]

        def report(metrics: list[dict[str, Any]]) -> None:
            if options["once"] or verbosity >= 2:
                for metric in metrics:
                    self.stdout.write(f"{metric['name']} {metric['value']} {metric['unit']}".rstrip())

        async def main(stop: asyncio.Event) -> int:
            async with make_client(options) as client:
                if not options["once"] and verbosity >= 1:
                    self.stdout.write(f"collecting host metrics every {interval:g} s into {client.url} "
                                      f"(Ctrl-C stops)")
                return await collect(client, sampler, interval=interval, once=options["once"],
                                     stop=stop, on_sample=report)

        stored = run(main)
        if not options["once"] and verbosity >= 1:
            self.stdout.write(f"stopped after {stored} sample(s)")
