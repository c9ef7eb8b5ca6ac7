"""CI runs benchmark S5 (bench/s5.py, issue 12's history benchmark) at smoke size on SQLite,
for correctness only: 10,000 readings preloaded by SQL and `rebuild_aggregates`, one page's
subscriptions, 5 s of collector-like writes; every result equals a recomputation from the raw
table, every write reaches every subscription it affects. (Timings are for bench/, never
asserted here.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

PROJECT = Path(__file__).resolve().parents[2]


def test_benchmark_s5_passes_its_checks_at_smoke_size():
    result = subprocess.run(
        ["bash", "bench/run_s5.sh", "--smoke", "--databases", "sqlite"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    case = json.loads(line.removeprefix("BENCH_JSON "))
    assert case["ok"] and case["size"] == 10_000, case["failures"]
    # Every query of the page was measured and got every write's push (none skipped for an error).
    assert len(case["pushes"]) == 8 and len(case["first_results_ms"]) == 9, case
    for label, pushes in case["pushes"].items():
        assert pushes["missing"] == 0 and pushes["samples"] == pushes["writes"], (label, pushes)
