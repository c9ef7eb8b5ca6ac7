"""What alert evaluation adds to the write path (issue 15), measured in-process.

    .venv/bin/python bench/alert_eval.py                     # a fresh SQLite file
    .venv/bin/python bench/alert_eval.py --postgres          # a fresh PostgreSQL database (dropped after)
    .venv/bin/python bench/alert_eval.py --rounds 2 --inserts 50   # smoke size

With --alerts alerts on other names (and one on `watched`), it times `record_insert` of one
reading, in rounds that alternate the alerting receivers connected and disconnected (so both
see the same machine load): a name no alert watches (the common case: one indexed query), and
the watched name (value changes, no change of state). Also the evaluation alone
(`readings_changed` for one name, inside one transaction). Prints medians over the rounds in
ms per reading and one BENCH_JSON line. Checks that the watched alert's state is right after
the run (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import POSTGRES_URL, create_database, database_url, drop_database


def _setup(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    # DEBUG off, as a server runs: no per-query bookkeeping in the figures.
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard_project.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def _measure(args: argparse.Namespace) -> dict:
    from django.db import transaction
    from django.db.models.signals import post_delete, post_save, pre_save

    from alerting import evaluation, receivers
    from alerting.models import AlertStatus
    from metrics import services
    from metrics.models import Metric
    from metrics.schema import get_bucket

    metrics, alerts = get_bucket("metrics"), get_bucket("alerts")
    for i in range(args.alerts):
        services.record_insert(bucket=alerts, data={"metric": f"other{i}", "threshold": 50, "timestamp": 1})
    services.record_insert(bucket=alerts, data={"id": "w", "metric": "watched", "threshold": 1e9, "timestamp": 1})

    counter = iter(range(10**9))

    def inserts(name: str) -> float:
        started = time.perf_counter()
        for _ in range(args.inserts):
            i = next(counter)
            services.record_insert(bucket=metrics, data={"name": name, "value": i % 100, "timestamp": i})
        return (time.perf_counter() - started) / args.inserts * 1000

    def evaluations(name: str) -> float:
        with transaction.atomic():
            started = time.perf_counter()
            for _ in range(args.inserts):
                evaluation.readings_changed([name])
            return (time.perf_counter() - started) / args.inserts * 1000

    def disconnect() -> None:
        pre_save.disconnect(sender=Metric, dispatch_uid="alerting-metric-before-save")
        post_save.disconnect(sender=Metric, dispatch_uid="alerting-metric-saved")
        post_delete.disconnect(sender=Metric, dispatch_uid="alerting-metric-deleted")

    figures: dict[str, list[float]] = {
        k: []
        for k in ("insert_unwatched_on", "insert_unwatched_off", "insert_watched_on", "eval_unwatched", "eval_watched")
    }
    inserts("warm-up")
    for _ in range(args.rounds):
        receivers.connect()
        figures["insert_unwatched_on"].append(inserts("unwatched"))
        figures["insert_watched_on"].append(inserts("watched"))
        figures["eval_unwatched"].append(evaluations("unwatched"))
        figures["eval_watched"].append(evaluations("watched"))
        disconnect()
        figures["insert_unwatched_off"].append(inserts("unwatched"))
    receivers.connect()
    inserts("watched")
    status = AlertStatus.objects.get(alert__key="w")
    newest = Metric.objects.filter(name="watched").order_by("-seq").values_list("value", flat=True).first()
    ok = (status.state, status.value) == ("ok", newest)
    return {"ok": ok, **{k: round(statistics.median(v), 4) for k, v in figures.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="a fresh database on TEST_POSTGRES_URL's server")
    parser.add_argument("--alerts", type=int, default=100, help="alerts on other names (default 100)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inserts", type=int, default=500, help="readings per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.postgres:
            name = f"bench_alerts_{secrets.token_hex(4)}"
            admin = database_url("postgres", POSTGRES_URL)
            create_database(admin, name)
            url = database_url(name, POSTGRES_URL)
        else:
            url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        try:
            _setup(url)
            result = _measure(args)
        finally:
            if args.postgres:
                from django.db import connections

                connections.close_all()
                drop_database(admin, name)
    vendor = "postgresql" if args.postgres else "sqlite"
    print(f"{vendor}, {args.alerts + 1} alerts, medians of {args.rounds} rounds, ms per reading:")
    for key, value in result.items():
        print(f"  {key}: {value}")
    print("BENCH_JSON " + json.dumps({"bench": "alert_eval", "database": vendor, **result}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
