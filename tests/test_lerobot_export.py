"""EpisodeStore -> LeRobot v3.0: a store recorded in the twin, exported, re-read with pyarrow + PyAV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.lerobot_export import LeRobotExportConfig, export_lerobot
from twinloop.datasets.store import EpisodeStore
from twinloop.sim2real.experts import make_expert
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import Twin, TwinConfig

from twinloop.topics import ACTION_NAMES

W, H = 64, 48
STEPS = (18, 14, 16)  # steps of the three recorded episodes


def record_episode(twin: Twin, expert: Any, steps: int) -> dict[str, np.ndarray]:
    """Observation before the action, then the action and what it earned (reward, success)."""
    phys = twin.physics
    obs = twin.observe()
    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "image_color",
            "joint_pos",
            "joint_vel",
            "ee_pose",
            "action",
            "reward",
            "success",
            "timestamp",
        )
    }
    for _ in range(steps):
        action = np.asarray(expert.act(twin.privileged_state()), dtype=np.float32)
        rows["image_color"].append(obs.image)
        rows["joint_pos"].append(phys.joint_positions().astype(np.float32))
        rows["joint_vel"].append(phys.joint_velocities().astype(np.float32))
        rows["ee_pose"].append(np.concatenate([phys.ee_pos(), phys.ee_quat()]).astype(np.float32))
        rows["timestamp"].append(obs.time)
        result = twin.step(action)
        rows["action"].append(action)
        rows["reward"].append(np.float32(result.reward))
        rows["success"].append(result.success)
        obs = result.observation
    return {k: np.stack(v) for k, v in rows.items()}


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """open_drawer, then close_drawer reset-free, then open_drawer again: two tasks."""
    path = tmp_path_factory.mktemp("twin") / "drawer.zarr"
    twin = Twin(TwinConfig(task="open_drawer", camera=CameraConfig(width=W, height=H)))
    k = twin.intrinsics
    intr = {
        "color": {
            "width": k.width,
            "height": k.height,
            "fx": k.fx,
            "fy": k.fy,
            "ppx": k.ppx,
            "ppy": k.ppy,
            "model": k.model,
            "coeffs": list(k.coeffs),
        }
    }
    store = EpisodeStore.create(
        path, fps=twin.config.control_hz, robot_profile="twin", camera_intrinsics=intr
    )
    try:
        for i, (task, steps) in enumerate(
            zip(("open_drawer", "close_drawer", "open_drawer"), STEPS, strict=True)
        ):
            twin.switch_task(task)  # close_drawer goes on from the opened drawer
            if task == "open_drawer":
                twin.reset(seed=i)
            ep = record_episode(twin, make_expert(twin, seed=i), steps)
            store.add_episode(
                ep, meta={"task": twin.task.text, "joint_names": list(twin.physics.joint_names)}
            )
    finally:
        store.close()
        twin.close()
    yield path


def read_frames(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        return [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def test_export_round_trip(twin_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "lerobot"
    report = export_lerobot(twin_store, out, LeRobotExportConfig(repo_id="me/drawer"))
    total = sum(STEPS)
    assert (report.episodes, report.frames) == (3, total)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, total, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert (
        info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    )
    assert info["splits"] == {"train": "0:3"} and info["robot_type"] == "twin"
    feats = info["features"]
    assert feats["observation.images.color"]["dtype"] == "video"
    assert feats["observation.images.color"]["shape"] == [H, W, 3]
    assert (
        feats["observation.state"]["shape"] == [16]
        and feats["observation.state"]["dtype"] == "float32"
    )
    assert feats["observation.state"]["names"][:2] == ["joint1", "joint2"]
    assert feats["observation.state"]["names"][-4:] == ["ee_qw", "ee_qx", "ee_qy", "ee_qz"]
    assert feats["action"]["names"] == list(ACTION_NAMES)
    for key in (
        "timestamp",
        "frame_index",
        "episode_index",
        "index",
        "task_index",
        "next.reward",
        "next.done",
    ):
        assert feats[key]["shape"] == [1]

    with EpisodeStore.open(twin_store) as store:
        eps = [store.get_episode(i) for i in range(3)]
        tasks = [store.episode_meta(i)["task"] for i in range(3)]

    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet").to_pydict()
    assert len(data["index"]) == total and data["index"] == list(range(total))
    state = np.array(data["observation.state"], dtype=np.float32)
    want_state = np.concatenate([np.concatenate([e["joint_pos"], e["ee_pose"]], 1) for e in eps])
    assert np.array_equal(state, want_state)
    assert np.array_equal(
        np.array(data["action"], dtype=np.float32), np.concatenate([e["action"] for e in eps])
    )
    assert np.array_equal(
        np.array(data["next.reward"], dtype=np.float32), np.concatenate([e["reward"] for e in eps])
    )
    assert np.array_equal(
        np.array(data["next.success"]), np.concatenate([e["success"] for e in eps])
    )
    assert np.array_equal(
        np.array(data["observation.joint_vel"], dtype=np.float32),
        np.concatenate([e["joint_vel"] for e in eps]),
    )
    ends = np.cumsum(STEPS)
    assert np.flatnonzero(data["next.done"]).tolist() == (ends - 1).tolist()
    assert data["episode_index"] == [i for i, n in enumerate(STEPS) for _ in range(n)]
    assert data["frame_index"] == [f for n in STEPS for f in range(n)]
    assert np.allclose(data["timestamp"], np.array(data["frame_index"]) / 10.0)
    assert data["task_index"] == [0] * 18 + [1] * 14 + [0] * 16

    task_table = pq.read_table(out / "meta" / "tasks.parquet").to_pydict()
    assert task_table == {"task_index": [0, 1], "task": [tasks[0], tasks[1]]}
    assert json.loads(pq.read_schema(out / "meta" / "tasks.parquet").metadata[b"pandas"])[
        "index_columns"
    ] == ["task"]

    episodes = pq.read_table(
        out / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    ).to_pylist()
    assert [e["length"] for e in episodes] == list(STEPS)
    assert [e["dataset_from_index"] for e in episodes] == [0, 18, 32]
    assert [e["dataset_to_index"] for e in episodes] == [18, 32, 48]
    assert [e["tasks"] for e in episodes] == [[tasks[0]], [tasks[1]], [tasks[2]]]
    assert episodes[1]["videos/observation.images.color/from_timestamp"] == pytest.approx(1.8)
    assert episodes[2]["videos/observation.images.color/to_timestamp"] == pytest.approx(4.8)
    assert episodes[0]["stats/observation.state/count"] == [18]

    # video: exact frame count, frames where the episode rows say, close to the store's images
    frames = read_frames(out / "videos" / "observation.images.color" / "chunk-000" / "file-000.mp4")
    assert len(frames) == total
    by_time = {round(t * 10): img for t, img in frames}
    errors = []
    for e, ep_row in enumerate(episodes):
        t0 = ep_row["videos/observation.images.color/from_timestamp"]
        for f in range(ep_row["length"]):
            img = by_time[round((t0 + f / 10.0) * 10)]
            errors.append(np.abs(img.astype(int) - eps[e]["image_color"][f].astype(int)).mean())
    assert max(errors) < 6.0, f"mean abs error per frame up to {max(errors):.2f}"
    # frames differ between steps by much more than the coding error (the check can fail)
    assert np.abs(
        eps[0]["image_color"][0].astype(int) - eps[1]["image_color"][-1].astype(int)
    ).mean() > max(errors)

    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["observation.state"]["count"] == [total]
    assert np.allclose(stats["observation.state"]["mean"], want_state.mean(0), atol=1e-5)
    assert np.allclose(stats["observation.state"]["std"], want_state.std(0), atol=1e-5)
    assert np.allclose(stats["action"]["min"], np.concatenate([e["action"] for e in eps]).min(0))
    img_stats = stats["observation.images.color"]
    assert np.array(img_stats["mean"]).shape == (3, 1, 1)
    all_px = np.concatenate([e["image_color"] for e in eps]).reshape(-1, 3) / 255.0
    assert np.allclose(np.array(img_stats["mean"]).ravel(), all_px.mean(0), atol=1e-6)
    assert {"q01", "q50", "q99"} <= set(stats["observation.state"])


def test_small_file_limits_roll_over_into_new_files(twin_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "rolled"
    cfg = LeRobotExportConfig(
        data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-4, chunks_size=2
    )
    report = export_lerobot(twin_store, out, cfg)
    assert report.data_files == 3 and report.videos == {"observation.images.color": 3}
    episodes = pq.read_table(
        out / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    ).to_pylist()
    assert [(e["data/chunk_index"], e["data/file_index"]) for e in episodes] == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    key = "videos/observation.images.color"
    assert [(e[f"{key}/chunk_index"], e[f"{key}/file_index"]) for e in episodes] == [
        (0, 0),
        (0, 1),
        (1, 0),
    ]
    assert all(e[f"{key}/from_timestamp"] == 0.0 for e in episodes)
    last = out / "videos" / "observation.images.color" / "chunk-001" / "file-000.mp4"
    assert len(read_frames(last)) == STEPS[2]
    rows = pq.read_table(out / "data" / "chunk-001" / "file-000.parquet").to_pydict()
    assert rows["index"] == list(range(32, 48)) and set(rows["episode_index"]) == {2}


def test_episode_subset_state_keys_and_refusals(twin_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset"
    cfg = LeRobotExportConfig(episodes=(2, 0), state_keys=("joint_pos",), vcodec="libx264", crf=30)
    export_lerobot(twin_store, out, cfg)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["total_frames"] == STEPS[2] + STEPS[0]
    assert info["features"]["observation.state"]["shape"] == [9]
    assert "observation.ee_pose" in info["features"]  # not in the state: exported on its own
    with pytest.raises(DatasetError, match="exists"):
        export_lerobot(twin_store, out, cfg)
    export_lerobot(twin_store, out, cfg, overwrite=True)  # replaces a LeRobot dataset
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a LeRobot dataset"):
        export_lerobot(twin_store, other, cfg, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="not in the store"):
        export_lerobot(twin_store, tmp_path / "x", LeRobotExportConfig(state_keys=("gripper",)))
    with pytest.raises(DatasetError, match="out of range"):
        export_lerobot(twin_store, tmp_path / "y", LeRobotExportConfig(episodes=(7,)))
    with pytest.raises(DatasetError, match="encode video"):
        export_lerobot(twin_store, tmp_path / "z", LeRobotExportConfig(vcodec="no_such_codec"))
    assert not (tmp_path / "z").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # temp dirs cleaned up
    with pytest.raises(DatasetError, match="repo_id"):
        LeRobotExportConfig(repo_id="has space")


def test_store_without_images_or_action(tmp_path: Path) -> None:
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=15.0, task="wave")
    n = 5
    store.add_episode(
        {
            "joint_pos": np.ones((n, 3), np.float32),
            "timestamp": np.arange(n) / 15.0,
            "gripper": np.zeros(n, np.float32),
        }
    )
    store.close()
    export_lerobot(tmp_path / "s.zarr", tmp_path / "out")
    info = json.loads((tmp_path / "out" / "meta" / "info.json").read_text())
    assert info["video_path"] is None and "action" not in info["features"]
    assert info["features"]["observation.gripper"] == {
        "dtype": "float32",
        "shape": [1],
        "names": None,
    }
    data = pq.read_table(tmp_path / "out" / "data" / "chunk-000" / "file-000.parquet")
    assert data.num_rows == n and data.column("observation.gripper").type == "float"


def twinloop(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [sys.executable, "-m", "twinloop", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )


def test_cli_export(twin_store: Path, tmp_path: Path) -> None:
    assert (
        "usage: twinloop dataset export-lerobot"
        in twinloop("dataset", "export-lerobot", "--help").stdout
    )
    out = tmp_path / "cli"
    proc = twinloop(
        "dataset",
        "export-lerobot",
        str(twin_store),
        "--out",
        str(out),
        "--repo-id",
        "me/drawer",
        "--episodes",
        "1",
    )
    assert "1 episodes, 14 frames" in proc.stdout
    assert pq.read_metadata(out / "data" / "chunk-000" / "file-000.parquet").num_rows == 14
