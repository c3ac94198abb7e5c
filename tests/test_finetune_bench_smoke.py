"""Smoke test for benchmarks/finetune.py (--quick): every experiment runs and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "finetune.py"


@pytest.mark.slow
def test_quick_run_reports_every_experiment(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(
        "# twinloop benchmarks\n\n<!-- other.py start -->\nkeep\n<!-- other.py end -->\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "runs"),
         "--results", str(results)],
        cwd=ROOT, env=env, timeout=400, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "<!-- other.py start -->\nkeep" in text  # other sections are kept
    section = text.split("<!-- finetune.py calql+iql_bc+image start -->", 1)[1]
    for heading in ("### Cal-QL", "### IQL vs BC", "### Image-based IQL"):
        assert heading in section
    figures = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert figures["calql"]["offline_updates"] == 30
    assert len(figures["calql"]["online_evals"]) >= 2  # step 0 and the end
    assert (
        figures["iql_bc"]["iql"]["transitions"] > 0 and figures["iql_bc"]["bc"]["transitions"] > 0
    )
    assert (tmp_path / "runs" / "calql" / "online" / "learning_curve.png").is_file()
    assert (tmp_path / "runs" / "image_iql" / "offline" / "learning_curve.png").is_file()


def test_unknown_experiment_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--experiments", "ppo", "--out", str(tmp_path),
         "--no-results"],
        cwd=ROOT, timeout=120, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown experiments ['ppo']" in proc.stderr
