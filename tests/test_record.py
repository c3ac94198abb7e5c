"""Twin datasets with ground truth: sim2real.record and ``twinloop twin record``."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from twinloop.datasets.store import EpisodeStore
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.record import RecordConfig, record_twin_dataset
from twinloop.sim2real.twin import Twin, TwinConfig


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("rec") / "push.zarr"
    record_twin_dataset(path, RecordConfig(episodes=3, kinds=("expert", "stall", "noisy")))
    return path


def test_keys_and_ground_truth(store_path) -> None:
    with EpisodeStore.open(store_path) as store:
        assert store.n_episodes == 3
        for key in ("image_color", "depth_color", "ee_pose", "action", "success", "progress"):
            assert key in store.keys
        assert "priv_cube_pos" in store.keys and "priv_goal_pos" in store.keys
        expert = store.get_episode(0)
        assert store.episode_meta(0)["kind"] == "expert"
        assert store.episode_meta(0)["success"] is True
        # The expert episode ends on success frames (the final observation is recorded).
        assert expert["success"][-1] and not expert["success"][0]
        assert expert["success"][-4:].all()  # hold_steps=3 rows after the first success
        assert 0.0 <= expert["progress"].min() and expert["progress"].max() <= 1.0
        assert expert["progress"][-1] > expert["progress"][0] + 0.3
        stall = store.get_episode(1, ["success"])
        assert store.episode_meta(1)["kind"] == "stall"
        assert not stall["success"][-1]


def test_camera_pose_projects_the_cube(store_path) -> None:
    with EpisodeStore.open(store_path) as store:
        intr = store.attrs["camera_intrinsics"]["color"]
        cam_to_world = np.array(store.attrs["camera_extrinsics"]["color"])
        ep = store.get_episode(0, ["image_color", "depth_color", "priv_cube_pos"])
    cube = np.r_[ep["priv_cube_pos"][0], 1.0]
    x, y, z = (np.linalg.inv(cam_to_world) @ cube)[:3]
    u = round(intr["fx"] * x / z + intr["ppx"])
    v = round(intr["fy"] * y / z + intr["ppy"])
    r, g, b = ep["image_color"][0][v, u].astype(int)
    assert r > 150 and g < 80 and b < 80  # the red cube is where the pose puts it
    # Depth at that pixel sees the cube's near surface: within 5 cm of its centre's depth.
    assert abs(ep["depth_color"][0][v, u] / 1000.0 - z) < 0.05


def test_camera_pose_is_a_rigid_transform() -> None:
    twin = Twin(TwinConfig(render=False))
    try:
        pose = twin.camera_pose()
    finally:
        twin.close()
    rot = pose[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(pose[:3, 3], TwinConfig().camera.pos, atol=1e-9)


def test_bad_config() -> None:
    with pytest.raises(TwinError, match="unknown episode kinds"):
        RecordConfig(kinds=("expert", "wander"))
    with pytest.raises(TwinError, match="episodes must be"):
        RecordConfig(episodes=0)


def test_refuses_existing_store(store_path) -> None:
    from twinloop.datasets.errors import DatasetError

    with pytest.raises(DatasetError, match="exists"):
        record_twin_dataset(store_path, RecordConfig(episodes=1))


def test_cli_smoke(tmp_path) -> None:
    out = tmp_path / "drawer.zarr"
    cmd = [sys.executable, "-m", "twinloop.cli", "twin", "record", "--out", str(out)]
    cmd += ["--task", "open_drawer", "--episodes", "1", "--kinds", "expert", "--no-depth"]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=120)
    assert "recorded 1 open_drawer episodes (1 successful)" in done.stdout
    with EpisodeStore.open(out) as store:
        assert "depth_color" not in store.keys and "priv_drawer_opening" in store.keys
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_render_then_train_in_one_process() -> None:
    """Software GL loads Mesa's LLVM; a torch optimizer step then imports triton (a second LLVM).

    Without the guard the twin installs after its first render, that process segfaults.
    """
    script = """
import os
from twinloop.sim2real.twin import Twin, TwinConfig
twin = Twin(TwinConfig())
twin.reset(seed=0)
twin.close()
import torch
net = torch.nn.Linear(4, 1)
opt = torch.optim.Adam(net.parameters())
net(torch.ones(2, 4)).sum().backward()
opt.step()
print("trained")
"""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained" in run.stdout


@pytest.mark.parametrize("task", ["open_drawer", "push_cube"])
def test_wrong_goal_episodes_are_competent_failures(tmp_path, task: str) -> None:
    from twinloop.sim2real.scene import CameraConfig

    path = tmp_path / "wrong.zarr"
    cfg = RecordConfig(episodes=2, kinds=("expert", "wrong"), depth=False, hold_steps=0)
    record_twin_dataset(path, cfg, TwinConfig(task=task, camera=CameraConfig(width=32, height=32)))
    store = EpisodeStore.open(path)
    metas = [store.episode_meta(i) for i in range(2)]
    assert [m["kind"] for m in metas] == ["expert", "wrong"]
    assert metas[0]["success"] and not metas[1]["success"]
    wrong = store.get_episode(1)
    moved = np.linalg.norm(np.diff(wrong["ee_pose"][:, :3], axis=0), axis=1).sum()
    assert moved > 0.1  # it acts with purpose (not a stall), towards the wrong goal


def test_wrong_episodes_need_a_task_with_a_wrong_goal(tmp_path) -> None:
    with pytest.raises(TwinError, match="no 'wrong' episodes for task 'lift_rod'"):
        record_twin_dataset(
            tmp_path / "w.zarr",
            RecordConfig(episodes=1, kinds=("wrong",), depth=False),
            TwinConfig(task="lift_rod"),
        )


@pytest.mark.parametrize("task", ["open_drawer", "close_drawer"])
def test_partial_episodes_are_near_misses_between_start_and_goal(tmp_path, task: str) -> None:
    from twinloop.sim2real.record import PARTIAL_RANGE
    from twinloop.sim2real.scene import CameraConfig

    path = tmp_path / "partial.zarr"
    cfg = RecordConfig(episodes=4, kinds=("partial",), depth=False, hold_steps=0, seed=3)
    record_twin_dataset(path, cfg, TwinConfig(task=task, camera=CameraConfig(width=32, height=32)))
    store = EpisodeStore.open(path)
    for i in range(store.n_episodes):
        assert store.episode_meta(i)["kind"] == "partial"
        assert not store.episode_meta(i)["success"]  # a near miss
        episode = store.get_episode(i)
        opening = np.asarray(episode["priv_drawer_opening"]).reshape(-1)
        travel = float(np.asarray(episode["priv_drawer_travel"]).reshape(-1)[0])
        moved = abs(float(opening[-1] - opening[0]))
        assert moved > 0.5 * PARTIAL_RANGE[0] * 0.6 * travel  # it went part of the way
