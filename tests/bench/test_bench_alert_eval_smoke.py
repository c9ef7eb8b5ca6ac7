"""bench/alert_eval.py at smoke size, for correctness only: it runs, prints
its figures and finds the watched alert's state right. (Timings are for
bench/, never asserted here.)"""

from __future__ import annotations

import json
import sys

from .runner import run_benchmark


def test_alert_eval_benchmark_runs_and_checks_the_state():
    output = run_benchmark(
        [sys.executable, "bench/alert_eval.py", "--rounds", "1", "--inserts", "20", "--alerts", "5"], 300
    )
    [line] = [line for line in output.splitlines() if line.startswith("BENCH_JSON ")]
    figures = json.loads(line.removeprefix("BENCH_JSON "))
    assert figures["ok"] is True and figures["database"] == "sqlite"
    assert all(figures[key] > 0 for key in ("insert_unwatched_on", "insert_unwatched_off", "eval_unwatched"))
