"""CI runs the HTTP ingest benchmark (bench/ingest.py) at a small size on SQLite, for
correctness only: every request answered as documented, every reading stored. (Timings are
for bench/, never asserted here.)"""

from __future__ import annotations

import re
import sys

import pytest

from .runner import run_benchmark

pytestmark = pytest.mark.multiprocess


def test_benchmark_ingest_stores_every_reading_it_sends():
    output = run_benchmark(
        [sys.executable, "bench/ingest.py", "--databases", "sqlite", "--readings", "50", "--requests", "4"], 300
    )
    rows = output.splitlines()[1:]
    assert [re.sub(r":.*", "", row).split() for row in rows] == [
        ["sqlite", "line", "protocol", "2", "requests", "of", "50"],
        ["sqlite", "JSON", "2", "requests", "of", "50"],
        ["sqlite", "server", "CPU", "per", "reading", "over", "all", "requests"],
    ], rows
