"""CI runs each benchmark scenario at smoke size, for correctness only: every
viewer ends with the final result and the push counts follow the rules.
(Timings are for bench/, never asserted here.)"""

from __future__ import annotations

import subprocess

import pytest

from .runner import run_benchmark

pytestmark = pytest.mark.multiprocess


def test_benchmark_scenarios_pass_their_checks_at_smoke_size():
    output = run_benchmark(["bash", "bench/run.sh", "uvicorn", "S1,S2,S3,S4", "--smoke", "--runs", "1"], 600)
    assert output.count('"ok":true') == 4, output[-4000:]


def test_the_quiet_machine_check_names_a_busy_process_and_skips_excluded_ones():
    import os
    import sys

    from bench.loadclient import busy_processes

    spinner = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"]
    )
    try:
        busy = busy_processes({os.getpid()}, window_s=0.5)
        # "pid command-line (cut at 60 characters) share": the spinner uses about a core.
        assert any(
            line.startswith(f"{spinner.pid} {sys.executable[:40]}")
            and line.endswith("%")
            and int(line.rsplit(" ", 1)[1][:-1]) >= 10
            for line in busy
        ), busy
        assert not any(line.startswith(f"{os.getpid()} ") for line in busy)
    finally:
        spinner.kill()
        spinner.wait()
