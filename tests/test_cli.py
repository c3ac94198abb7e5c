"""Subprocess smoke tests of every CLI subcommand (cleanrl style: tiny budgets, check=True)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def twinloop(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twinloop", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["twin"],
        ["twin", "run"],
        ["twin", "params"],
        ["twin", "info"],
        ["topics"],
        ["launch"],
        ["demo"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    out = twinloop(*args, "--help").stdout
    assert "usage: twinloop" in out


def test_twin_run_with_contact_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    out = twinloop(
        "twin",
        "run",
        "--task",
        "lift_rod",
        "--episodes",
        "2",
        "--frames",
        "4",
        "--out",
        str(sheet),
        "--width",
        "64",
        "--height",
        "48",
    ).stdout
    assert "episode 0 seed 0: success" in out
    assert "lift_rod: success 100% over 2 episodes" in out
    assert sheet.stat().st_size > 1000


def test_twin_run_bad_param_is_a_clear_error() -> None:
    res = twinloop("twin", "run", "--param", "cube.mass=7", check=False)
    assert res.returncode == 2
    assert "cube.mass=7.0 is outside [0.02, 1.0] kg" in res.stderr
    res = twinloop("twin", "run", "--param", "cube.mass", check=False)
    assert res.returncode == 2 and "NAME=VALUE" in res.stderr
    res = twinloop("twin", "run", "--task", "juggle", check=False)
    assert res.returncode == 2 and "unknown task 'juggle'" in res.stderr


def test_twin_params_lists_ranges() -> None:
    out = twinloop("twin", "params", "--task", "lift_rod").stdout
    assert "rod.com_offset" in out and "cube.mass" not in out


def test_twin_info_is_json() -> None:
    info = json.loads(twinloop("twin", "info", "--task", "open_drawer").stdout)
    assert info["joints"][:7] == [f"joint{i}" for i in range(1, 8)]
    assert info["camera"]["width"] == 320 and info["camera"]["fx"] > 0
    assert info["reset_free_pairs"]["open_drawer"] == "close_drawer"
    assert "drawer.damping" in info["params"]


def test_topics_lists_the_contract() -> None:
    out = twinloop("topics").stdout
    assert "/camera/camera/color/image_raw" in out and "/twinloop/safe_action" in out


@pytest.mark.ros
def test_launch_runs_the_graph_for_a_duration_and_stops_cleanly() -> None:
    res = twinloop(
        "launch",
        "--profile",
        "sim",
        "--duration",
        "4",
        "--set",
        "scripted_teleop.episodes=50",
        timeout=60,
    )
    assert "launching sim: twin, safety, scripted_teleop" in res.stdout


@pytest.mark.ros
def test_demo_runs_episodes_through_the_graph(tmp_path: Path) -> None:
    res = twinloop(
        "demo",
        "--episodes",
        "2",
        "--task",
        "lift_rod",
        "--no-realtime",
        "--runs",
        str(tmp_path),
        timeout=120,
    )
    assert "[demo] episode 1: success" in res.stdout
    lines = next(tmp_path.glob("*/episodes.jsonl")).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["episode"] for r in records] == [0, 1]
    assert all(r["success"] and r["task"] == "lift_rod" for r in records)
    assert {p.name for p in next(tmp_path.glob("*/logs")).iterdir()} >= {"twin.log", "safety.log"}


@pytest.mark.ros
def test_demo_with_a_bad_parameter_fails_with_the_reason(tmp_path: Path) -> None:
    res = twinloop(
        "demo",
        "--episodes",
        "1",
        "--set",
        "twin.params.cube.mass=9",
        "--runs",
        str(tmp_path),
        check=False,
        timeout=60,
    )
    assert res.returncode != 0
    assert "cube.mass=9.0 is outside" in res.stdout + res.stderr


def test_reward_group_lists_every_reward_command() -> None:
    out = twinloop("reward", "--help").stdout
    for command in ("train-classifier", "label", "audit", "teacher"):
        assert command in out
        assert "usage: twinloop reward " + command in twinloop("reward", command, "--help").stdout


def test_reward_bad_dataset_is_a_clear_error(tmp_path) -> None:
    run = twinloop(
        "reward",
        "audit",
        "--dataset",
        str(tmp_path / "missing.zarr"),
        "--key",
        "reward",
        "--out",
        str(tmp_path / "audit"),
        check=False,
    )
    assert run.returncode == 2
    assert "missing.zarr" in run.stderr and "Traceback" not in run.stderr
