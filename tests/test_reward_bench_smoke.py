"""Smoke tests for benchmarks/reward.py with a tiny budget (--quick): DDS, in process, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reward.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
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


def test_in_process_quick_run_writes_its_own_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# twinloop benchmarks\n\n<!-- other.py start -->\nkeep\n<!-- other.py end -->\n"
    )
    body = tmp_path / "body.md"
    out = bench(
        "--quick", "--no-dds", "--seconds", "2", "--results", str(results), "--body-out", str(body)
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "### a/b." not in out.stdout  # no DDS part
    (row,) = rows(out.stdout, "### c. In process")
    model, frame, cameras, phase, output, p50, p99, in_loop, bare, batch, dropped, _ = row
    back_to_back, paced = (float(x) for x in bare.split(" / "))
    assert (model, frame, cameras, phase) == ("ViT-S-32 @ 64 px", "320x240", "1", "sync")
    assert float(output.removesuffix(" Hz")) > 5.0
    assert 0.0 < float(in_loop) <= float(p99) and 0.0 < float(p50) <= float(p99)
    assert back_to_back > 0.0 and paced > 0.0 and float(batch) == 1.0
    n_dropped, n_frames = (int(x) for x in dropped.split(" / "))
    assert n_frames >= 50 and 0 <= n_dropped <= n_frames
    text = results.read_text()
    assert "keep" in text and text.count("<!-- reward.py cpu start -->") == 1
    assert out.stdout.strip() in text and body.read_text() == out.stdout


@pytest.mark.slow
@pytest.mark.ros
def test_end_to_end_quick_run_over_dds() -> None:
    pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")
    out = bench("--quick", "--no-write")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (row,) = rows(out.stdout, "### a/b.")
    _model, _frame, published, rewards, scored, p50, p99, node_p50, bare, ratio, _ = row
    assert float(published.removesuffix(" Hz")) == pytest.approx(30.0, rel=0.1)
    assert float(rewards.removesuffix(" Hz")) > 5.0  # a loaded CI machine may score fewer
    got, seen = (int(x) for x in scored.split("/"))
    assert got > 0 and seen > 0
    back_to_back, paced = (float(x) for x in bare.split(" / "))
    assert back_to_back > 0.0 and paced > 0.0 and 0.0 < float(node_p50)
    assert 0.0 < float(p50) <= float(p99)
    ratio_b2b, ratio_paced = (float(x.removesuffix("x")) for x in ratio.split(" / "))
    assert ratio_b2b == pytest.approx(float(p50) / back_to_back, rel=0.02)
    assert ratio_paced == pytest.approx(float(p50) / paced, rel=0.02)
    assert re.search(r"\*\*Reading\.\*\* ViT-S-32 @ 64 px at 320x240 ", out.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "ViT-S-32@x"], "a model is NAME or NAME@PIXELS"),
        (["--sizes", "4x4"], "a frame size is WIDTHxHEIGHT of at least 8x8"),
        (["--phases", "late"], "--phases takes sync, spread or both"),
        (["--models", "NoSuchModel", "--no-dds"], "NoSuchModel"),
    ],
)
def test_bad_arguments_are_clear_errors(args: list[str], message: str) -> None:
    out = bench("--quick", "--no-write", *args, timeout=120)
    assert out.returncode == 2, out.stdout[-1000:] + out.stderr[-2000:]
    assert message in out.stderr
    assert "Traceback" not in out.stderr
