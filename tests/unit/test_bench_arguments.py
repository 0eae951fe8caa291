"""The benchmarks refuse counts and numbers they would divide by zero with (or loop zero times over) in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script, argv, message", [
    ("bench_matching.py", ["--objects", "0"], "argument --objects: must be at least 1, got 0"),
    ("bench_matching.py", ["--runs", "0"], "argument --runs: must be at least 1, got 0"),
    ("bench_cost.py", ["--max-objects", "0"], "argument --max-objects: must be at least 1, got 0"),
    ("bench_cost.py", ["--window", "0"], "argument --window: must be more than 0, got 0"),
    ("bench_cost.py", ["--polls-batched", "-1"], "argument --polls-batched: must be a number of at least 0, got -1"),
    ("bench_reconcile.py", ["--objects", "0"], "argument --objects: must be at least 1, got 0"),
    ("bench_reconcile.py", ["--new", "-5"], "argument --new: must be at least 1, got -5"),
    ("bench_cost.py", ["--max-objects", "200000"], "max_objects must be between 1 and 100000, got 200000"),
])
def test_a_value_the_benchmark_cannot_use_is_a_usage_error(script, argv, message):
    run = subprocess.run([sys.executable, str(BENCH / script), *argv], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""
