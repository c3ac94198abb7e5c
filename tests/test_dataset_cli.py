"""Subprocess smoke tests of ``twinloop dataset info|check|view|merge|drop-episodes``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from twinloop.datasets.cli import parse_episodes
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.store import EpisodeStore

H, W = 48, 64


def _make_store(path: Path, n_episodes: int = 3, *, task: str = "push", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    intr = {"color": {"width": W, "height": H, "fx": 50.0, "fy": 50.0, "ppx": 32.0, "ppy": 24.0,
                      "model": "plumb_bob", "coeffs": [0.0] * 5}}  # fmt: skip
    with EpisodeStore.create(path, fps=10, task=task, camera_intrinsics=intr) as store:
        for i in range(n_episodes):
            n = 6 + i
            # a moving gradient, so the frames differ and compress like images
            x = np.linspace(0, 255, W)[None, None, :, None] + 20 * np.arange(n)[:, None, None, None]
            img = np.broadcast_to(x % 256, (n, H, W, 3)).astype(np.uint8)
            store.add_episode(
                {
                    "image_color": img,
                    "depth_color": rng.integers(300, 900, (n, H, W), dtype=np.uint16),
                    "action": rng.uniform(-1, 1, (n, 5)).astype(np.float32),
                    "success": np.arange(n) == n - 1 if i != 1 else np.zeros(n, bool),
                    "timestamp": np.arange(n) / 10.0,
                },
                meta={"dropped_steps": i},
            )
    return path


def twinloop(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    return subprocess.run(
        [sys.executable, "-m", "twinloop", "dataset", *args],
        check=check,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_help_lists_the_store_commands() -> None:
    out = twinloop("--help").stdout
    for cmd in ("info", "check", "view", "merge", "drop-episodes"):
        assert cmd in out
    assert "--mp4" in twinloop("view", "--help").stdout


def test_info(tmp_path: Path) -> None:
    store = _make_store(tmp_path / "a.zarr")
    info = json.loads(twinloop("info", str(store), "--json").stdout)
    assert info["episodes"] == 3 and info["steps"] == 6 + 7 + 8
    assert info["success_rate"] == pytest.approx(2 / 3)
    assert info["dropped_steps"] == 0 + 1 + 2
    assert info["keys"]["image_color"]["shape"] == [21, H, W, 3]
    assert info["keys"]["image_color"]["compression_ratio"] > 1.0
    assert info["cameras"] == ["color"] and info["fps"] == 10.0
    text = twinloop("info", str(store)).stdout
    assert "67% (2/3 judged episodes)" in text and "image_color" in text


def test_check_ok_and_broken(tmp_path: Path) -> None:
    store = _make_store(tmp_path / "a.zarr")
    assert "ok:" in twinloop("check", str(store)).stdout
    import zarr

    zarr.open_group(str(store), mode="r+")["data/action"][2, 1] = np.nan
    res = twinloop("check", str(store), "--quick", check=False)
    assert res.returncode == 1
    assert "PROBLEM: data/action has NaN/inf in 1 steps" in res.stdout
    res = twinloop("check", str(tmp_path / "missing.zarr"), check=False)
    assert res.returncode == 1 and "not a zarr store" in res.stdout


def test_view_writes_sheets_and_videos(tmp_path: Path) -> None:
    store = _make_store(tmp_path / "a.zarr")
    out = tmp_path / "view"
    twinloop("view", str(store), "--episodes", "0,2", "--frames", "4", "--mp4", "--out", str(out))
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "episode_0000.png",
        "episode_0000_depth_color.mp4",
        "episode_0000_image_color.mp4",
        "episode_0002.png",
        "episode_0002_depth_color.mp4",
        "episode_0002_image_color.mp4",
    ]
    import av
    import matplotlib.image

    sheet = matplotlib.image.imread(out / "episode_0000.png")
    pad = 2
    assert sheet.shape[:2] == (2 * (H + pad) + pad, 4 * (W + pad) + pad)  # 2 cameras x 4 frames
    with av.open(str(out / "episode_0002_image_color.mp4")) as video:
        frames = list(video.decode(video=0))
    assert len(frames) == 8 and (frames[0].width, frames[0].height) == (W, H)
    res = twinloop("view", str(store), "--episodes", "7", "--out", str(out), check=False)
    assert res.returncode == 2 and "out of range" in res.stderr


def test_merge_and_drop(tmp_path: Path) -> None:
    a = _make_store(tmp_path / "a.zarr", 3)
    b = _make_store(tmp_path / "b.zarr", 2, task="open", seed=1)
    merged = tmp_path / "m.zarr"
    twinloop("merge", str(a), str(b), "--out", str(merged))
    with EpisodeStore.open(merged) as store:
        assert store.n_episodes == 5
        assert [store.episode_meta(i)["task"] for i in range(5)] == ["push"] * 3 + ["open"] * 2
    kept = tmp_path / "kept.zarr"
    twinloop("drop-episodes", str(merged), "--episodes", "0,3-4", "--out", str(kept))
    twinloop("drop-episodes", str(merged), "--episodes", "1")
    with EpisodeStore.open(kept) as k, EpisodeStore.open(merged) as m, EpisodeStore.open(a) as src:
        assert k.n_episodes == 2 and m.n_episodes == 4
        np.testing.assert_array_equal(k.get_episode(0)["action"], src.get_episode(1)["action"])
        np.testing.assert_array_equal(m.get_episode(1)["action"], src.get_episode(2)["action"])
    res = twinloop("drop-episodes", str(merged), "--episodes", ",", check=False)
    assert res.returncode == 2 and "names no episodes" in res.stderr
    with EpisodeStore.open(merged) as m:
        assert m.n_episodes == 4  # a bad list never drops anything


def test_cli_codec_choices_match_the_store() -> None:
    from twinloop.datasets.store import IMAGE_CODECS

    from twinloop.cli import build_parser

    for codec in IMAGE_CODECS:
        args = build_parser().parse_args(
            ["dataset", "merge", "a", "--out", "b", "--image-codec", codec]
        )
        assert args.image_codec == codec
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dataset", "merge", "a", "--out", "b", "--image-codec", "png"])


def test_parse_episodes() -> None:
    assert parse_episodes("1,3,5-7") == [1, 3, 5, 6, 7]
    assert parse_episodes(" 2 ") == [2]
    for bad in ("", "a", "3-1", "1-"):
        with pytest.raises(DatasetError):
            parse_episodes(bad)


def test_bench_store_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "twinloop.datasets.bench_store", "--synthetic", "--steps", "6",
         "--width", "64", "--height", "48", "--dir", str(tmp_path), "--json", str(out)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    results = json.loads(out.read_text())
    assert [r["cameras"] for r in results["stream"]] == [1, 2]
    assert all(
        r["write_MB_per_s"] > 0 and r["rgb_compression_ratio"] > 0 for r in results["stream"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # cleaned up
