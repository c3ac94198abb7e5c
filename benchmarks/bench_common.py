"""Pieces the newer benchmark scripts share: machine description and the RESULTS.md writer.

Imported by scripts run as ``python benchmarks/<name>.py`` (their folder is on sys.path).
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

__all__ = ["HERE", "cpu_model", "git_rev", "update_results"]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_rev() -> str:
    """Short commit of the checkout, marked when the working tree has uncommitted changes."""

    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        return rev + (" (uncommitted changes)" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def update_results(path: Path, section: str, body: str) -> None:
    """benchmarks/twin.py owns the RESULTS.md layout: its writer, loaded only to write."""
    spec = importlib.util.spec_from_file_location("bench_twin", HERE / "twin.py")
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/twin.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.update_results(path, section, body)
