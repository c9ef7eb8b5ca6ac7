"""bench/alert_eval.py at smoke size, for correctness only: it runs, prints
its figures and finds the watched alert's state right. (Timings are for
bench/, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_alert_eval_benchmark_runs_and_checks_the_state():
    result = subprocess.run(
        [sys.executable, "bench/alert_eval.py", "--rounds", "1", "--inserts", "20", "--alerts", "5"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    figures = json.loads(line.removeprefix("BENCH_JSON "))
    assert figures["ok"] is True and figures["database"] == "sqlite"
    assert all(figures[key] > 0 for key in ("insert_unwatched_on", "insert_unwatched_off", "eval_unwatched"))
