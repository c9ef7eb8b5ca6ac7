"""The text `/metrics` answers: this process's registry, or in multiprocess
mode (`PROMETHEUS_MULTIPROC_DIR`) every worker's files summed."""

from __future__ import annotations

import glob
import os

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder

from . import instruments


def render(accept: str) -> tuple[bytes, str]:
    """(body, content type) of a scrape, in the format the `Accept` header
    asks for (Prometheus asks for OpenMetrics; others get the text format 0.0.4)."""
    encoder, content_type = choose_encoder(accept)
    if not instruments.MULTIPROCESS:
        return encoder(REGISTRY), content_type
    forget_dead_processes(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return encoder(registry), content_type


def forget_dead_processes(directory: str) -> None:
    """Drops the `live*` gauge files of workers that have exited.

    prometheus-client expects a server hook to call `mark_process_dead` when a
    worker exits (gunicorn has one; uvicorn does not), so a restarted worker's
    old connections would be counted for ever. Their counters stay: a counter
    summed over dead workers still only goes up."""
    pids: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        suffix = os.path.basename(path)[: -len(".db")].rsplit("_", 1)[-1]
        if suffix.isdigit():
            pids.add(int(suffix))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
