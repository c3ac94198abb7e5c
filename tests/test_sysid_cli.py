"""Subprocess tests of ``twinloop sysid``: help, run -> identify -> apply end to end with tiny
budgets, and one-line errors (exit code 2, like every twinloop command) for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
BAD_INPUT = 2  # twinloop.cli.main: a ValueError (TwinloopError, TwinError) exits 2


def twinloop(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twinloop", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env=ENV,
        cwd=cwd,
    )


def error_line(res: subprocess.CompletedProcess[str]) -> str:
    """The one ERROR line a refused command logs (not an argparse usage error, also exit 2)."""
    assert res.returncode == BAD_INPUT, res.stderr
    assert "usage:" not in res.stderr and "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, res.stderr
    return errors[0]


@pytest.mark.parametrize(
    "sub",
    [[], ["explore"], ["run"], ["identify"], ["apply"], ["round"]],
    ids=lambda s: "-".join(s) or "sysid",
)
def test_help(sub: list[str]) -> None:
    out = twinloop("sysid", *sub, "--help").stdout
    assert out.startswith(f"usage: twinloop sysid {' '.join(sub)}".rstrip())
    if not sub:
        for name in ("explore", "run", "identify", "apply", "round"):
            assert name in out


@pytest.fixture(scope="module")
def rollout_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sysid") / "R.zarr"
    res = twinloop(
        "sysid", "run", "--task", "lift_rod", "--true", "rod.com_offset=0.05",
        "--steps", "20", "--out", str(out),
    )  # fmt: skip
    assert f"random rollout on lift_rod into {out}" in res.stdout
    return out


def test_run_identify_apply(rollout_path: Path, tmp_path: Path) -> None:
    from twinloop.sim2real.asid.apply import load_params_file, load_twin_params
    from twinloop.sim2real.asid.rollout import load_rollout

    rollout = load_rollout(rollout_path)
    assert rollout.meta["explorer"] == "random"
    assert rollout.meta["true_params"]["rod.com_offset"] == 0.05
    assert rollout.steps == rollout.meta["approach_steps"] + 20

    ident = tmp_path / "ID"
    res = twinloop(
        "sysid", "identify", str(rollout_path), "--population", "12", "--elites", "3",
        "--iterations", "3", "--out", str(ident),
    )  # fmt: skip
    assert res.stdout.startswith("estimate: rod.com_offset=")
    result = json.loads((ident / "result.json").read_text())
    assert result["task"] == "lift_rod" and result["params"] == ["rod.com_offset"]
    assert result["prior"] == {"rod.com_offset": [-0.1, 0.1]}  # the documented range
    assert -0.1 <= result["estimate"]["rod.com_offset"] <= 0.1
    assert result["spread"]["rod.com_offset"] >= 0
    assert 1 <= len(result["iterations"]) <= 3
    assert result["evaluations"] == 12 * len(result["iterations"])
    assert result["true_params"]["rod.com_offset"] == 0.05
    assert result["rollout"] == str(rollout_path.resolve())
    assert (ident / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    params = tmp_path / "P.json"
    res = twinloop("sysid", "apply", str(ident / "result.json"), "--file", str(params))
    assert "version 1 is current" in res.stdout
    assert load_twin_params(params) == result["estimate"]
    res = twinloop("sysid", "apply", str(ident / "result.json"), "--file", str(params))
    assert "version 2 is current" in res.stdout
    data = load_params_file(params)
    assert data["current"] == 2 and [v["version"] for v in data["versions"]] == [1, 2]
    provenance = data["versions"][0]["provenance"]
    assert provenance["method"] == "asid"
    assert provenance["result"] == str((ident / "result.json").resolve())
    assert provenance["spread"] == result["spread"]


def test_unknown_true_parameter(tmp_path: Path) -> None:
    out = tmp_path / "X.zarr"
    res = twinloop(
        "sysid", "run", "--true", "nosuch.param=1", "--steps", "5", "--out", str(out),
        check=False,
    )  # fmt: skip
    assert "unknown twin parameter 'nosuch.param'" in error_line(res)
    assert not out.exists()
    res = twinloop("sysid", "run", "--true", "rod.com_offset", "--out", str(out), check=False)
    assert "--true takes NAME=VALUE" in error_line(res)


def test_run_with_tracker_noise(rollout_path: Path, tmp_path: Path) -> None:
    from twinloop.sim2real.asid.rollout import load_rollout

    out = tmp_path / "N.zarr"
    twinloop(
        "sysid", "run", "--task", "lift_rod", "--true", "rod.com_offset=0.05", "--steps", "20",
        "--pose-noise-mm", "2", "--pose-noise-deg", "1", "--out", str(out),
    )  # fmt: skip
    exact, noisy = load_rollout(rollout_path), load_rollout(out)  # same seed, same actions
    assert np.array_equal(noisy.actions, exact.actions)
    assert np.array_equal(noisy.object_pose[0], exact.object_pose[0])
    dp = noisy.object_pose[1:, :3] - exact.object_pose[1:, :3]
    assert 0.0005 < float(np.std(dp)) < 0.005
    assert noisy.meta["pose_noise"] == [0.002, 1.0]
    bad = tmp_path / "B.zarr"
    res = twinloop("sysid", "run", "--pose-noise-mm", "-1", "--out", str(bad), check=False)
    assert "--pose-noise-mm and --pose-noise-deg must be finite values >= 0" in error_line(res)
    assert not bad.exists()


def test_identify_unknown_parameter(rollout_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ID"
    res = twinloop(
        "sysid", "identify", str(rollout_path), "--params", "nosuch", "--out", str(out),
        check=False,
    )  # fmt: skip
    assert "has no parameters ['nosuch']" in error_line(res)
    assert not out.exists()


def test_apply_without_estimate_leaves_the_file(tmp_path: Path) -> None:
    from twinloop.sim2real.asid.apply import apply_params

    params = tmp_path / "P.json"
    apply_params(params, "lift_rod", {"rod.com_offset": 0.02}, {"method": "test"})
    before = params.read_bytes()
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"task": "lift_rod", "spread": {"rod.com_offset": 0.01}}))
    res = twinloop("sysid", "apply", str(bad), "--file", str(params), check=False)
    line = error_line(res)
    assert "is not a finished identification result" in line and "'estimate'" in line
    assert params.read_bytes() == before


def test_run_refuses_to_overwrite(rollout_path: Path) -> None:
    before = sorted(p.relative_to(rollout_path) for p in rollout_path.rglob("*"))
    res = twinloop("sysid", "run", "--steps", "5", "--out", str(rollout_path), check=False)
    assert f"{rollout_path} exists; pass --overwrite to replace it" in error_line(res)
    assert sorted(p.relative_to(rollout_path) for p in rollout_path.rglob("*")) == before


@pytest.mark.slow
def test_round_quick_runs_every_stage(tmp_path: Path) -> None:
    """What `make demo` ends with: explore -> run -> identify -> apply -> the rod lift (~25 s)."""
    out = tmp_path / "round"
    res = twinloop("sysid", "round", "--quick", "--out", str(out))
    for stage in ("sysid 1/4", "sysid 2/4", "sysid 3/4", "sysid 4/4"):
        assert stage in res.stdout, res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["true"] == {"rod.com_offset": 0.06}
    assert -0.1 <= summary["estimate"]["rod.com_offset"] <= 0.1
    assert 0.0 <= summary["tilt_identified_deg"] <= 90.0
    assert summary["version"] == 1
    assert json.loads((out / "twin_params.json").read_text())["current"] == 1
    assert (out / "identify" / "fit.png").stat().st_size > 10_000
    assert (out / "rollout.zarr").is_dir() and (out / "explore" / "policy.safetensors").is_file()
    from twinloop.sim2real.asid.rollout import load_rollout

    assert load_rollout(out / "rollout.zarr").meta["pose_noise"] == [0.002, 1.0]  # a tracker's
    assert "tracker noise 2 mm / 1 deg" in res.stdout
