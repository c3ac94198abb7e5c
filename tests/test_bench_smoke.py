"""Smoke test for benchmarks/twin.py, and its in-place update of RESULTS.md."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "twin.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_twin", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_twin_benchmark_quick_run() -> None:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-write"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert "### 1a. Control step without rendering" in result.stdout
    assert "### 3. Camera frames" in result.stdout


def test_results_section_is_replaced_in_place(tmp_path: Path) -> None:
    bench = _load_bench()
    path = tmp_path / "RESULTS.md"
    bench.update_results(path, "twin.py", "first run")
    assert path.read_text().startswith("# twinloop benchmarks")
    path.write_text(
        path.read_text() + "\n<!-- other.py start -->\nkeep me\n<!-- other.py end -->\n"
    )
    bench.update_results(path, "twin.py", "second run")
    text = path.read_text()
    assert "second run" in text
    assert "first run" not in text
    assert "keep me" in text
    assert text.count("<!-- twin.py start -->") == 1
    assert text.index("<!-- twin.py start -->") < text.index("<!-- other.py start -->")
