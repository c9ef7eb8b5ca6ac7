"""Runs a benchmark from the project's root as CI does: its output, once it has
exited 0 (otherwise the test fails with the output's tail)."""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def run_benchmark(argv: list[str], timeout: float) -> str:
    result = subprocess.run(
        argv, cwd=PROJECT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout
