"""CI runs benchmark S5 (bench/s5.py, issue 12's history benchmark) at smoke size on SQLite,
for correctness only: 10,000 readings preloaded by SQL and `rebuild_aggregates`, one page's
subscriptions, 5 s of collector-like writes; every result equals a recomputation from the raw
table, every write reaches every subscription it affects. (Timings are for bench/, never
asserted here.)"""

from __future__ import annotations

import json

import pytest

from .runner import run_benchmark

pytestmark = pytest.mark.multiprocess


def test_benchmark_s5_passes_its_checks_at_smoke_size():
    output = run_benchmark(["bash", "bench/run_s5.sh", "--smoke", "--databases", "sqlite"], 600)
    [line] = [line for line in output.splitlines() if line.startswith("BENCH_JSON ")]
    case = json.loads(line.removeprefix("BENCH_JSON "))
    assert case["ok"] and case["size"] == 10_000, case["failures"]
    # Every query of the page was measured and got every write's push (none skipped for an error).
    assert len(case["pushes"]) == 8 and len(case["first_results_ms"]) == 9, case
    for label, pushes in case["pushes"].items():
        assert pushes["missing"] == 0 and pushes["samples"] == pushes["writes"], (label, pushes)
