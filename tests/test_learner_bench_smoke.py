"""Smoke test for benchmarks/learner.py with a tiny budget (--quick): every row, positive rates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "learner.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bench(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=ENV,
        timeout=timeout,
        capture_output=True,
        text=True,
        check=False,
    )


def rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, as cells."""
    section = text.split(heading, 1)[1]
    table = [line for line in section.split("\n\n")[2].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]


def test_quick_run_has_every_row_and_writes_its_own_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# twinloop benchmarks\n\n<!-- other.py start -->\nkeep\n<!-- other.py end -->\n"
    )
    out = bench("--quick", "--seconds", "0.05", "--threads", "1", "--results", str(results))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    table = rows(out.stdout, "### 1. Gradient updates per second")
    got = [(r[0], r[1]) for r in table]
    assert got == [(a, i) for i in ("state", "image") for a in ("iql", "calql", "sac")]
    for algo, _input, ours, ref, ratio, rng, utd, target in table:
        assert float(ours) > 0.0 and float(ref) > 0.0, algo
        low, high = (float(x) for x in rng.split("-"))
        assert 0.0 < low <= float(ratio.removesuffix("x")) <= high  # median of per-round ratios
        assert float(utd) == pytest.approx(float(ours) / 10.0, abs=0.01)
        assert target.startswith(">= 1x: ")
    jitter = rows(out.stdout, "### 2. Actor control loop")
    assert [r[0] for r in jitter] == ["none", "process"]
    for learner, ticks, period, deviation, act, updates, checkpoints, swaps, _load in jitter:
        assert int(ticks) >= 15 and 80.0 < float(period) < 150.0
        assert all(float(x) >= 0.0 for x in deviation.split(" / "))
        assert all(float(x) > 0.0 for x in act.split(" / "))
        if learner == "process":
            assert int(updates) > 0 and int(checkpoints) >= 1 and 1 <= int(swaps)
    assert "**Reading.** With state inputs" in out.stdout
    text = results.read_text()
    assert "keep" in text and text.count("<!-- learner.py cpu start -->") == 1
    assert out.stdout.strip() in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algos", "ppo"], "--algos takes a comma-separated subset of iql,calql,sac"),
        (["--inputs", "depth"], "--inputs takes a comma-separated subset of state,image"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
        (["--batch", "1"], "--batch (>= 2)"),
    ],
)
def test_bad_arguments_are_clear_errors(args: list[str], message: str) -> None:
    out = bench("--quick", "--no-write", *args, timeout=60)
    assert out.returncode == 2, out.stdout[-1000:] + out.stderr[-2000:]
    assert message in out.stderr
    assert "Traceback" not in out.stderr
