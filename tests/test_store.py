"""The episode store: round trips, validation, crash safety, rewriting, the sampler."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from twinloop.datasets.check import check_store
from twinloop.datasets.errors import DatasetError
from twinloop.datasets.sampler import (
    SamplerConfig,
    SequenceSampler,
    split_episodes,
    window_indices,
)
from twinloop.datasets.store import (
    CHUNK_BYTES,
    SCHEMA_VERSION,
    EpisodeStore,
    chunk_rows,
)

H, W = 24, 32  # small frames keep the tests fast; chunking is tested on 640x480 separately


def make_episode(seed: int, n: int = 12, *, joints: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image_color": rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
        "depth_color": rng.integers(0, 4000, (n, H, W), dtype=np.uint16),
        "joint_pos": rng.normal(size=(n, joints)).astype(np.float32),
        "ee_pose": rng.normal(size=(n, 7)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 5)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "success": np.arange(n) == n - 1 if seed % 2 == 0 else np.zeros(n, bool),
        "timestamp": 1.7e9 + seed * 100 + np.arange(n) / 10.0,
    }


def assert_episode_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.asarray(want[k]).dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "demo.zarr"


INTR = {"color": {"width": W, "height": H, "fx": 30.0, "fy": 30.0, "ppx": 16.0, "ppy": 12.0,
                  "model": "plumb_bob", "coeffs": [0.0] * 5}}  # fmt: skip


# ----- round trips -----------------------------------------------------------------------------
def test_add_and_read_back(store_path: Path) -> None:
    eps = [make_episode(i, n=10 + i) for i in range(3)]
    with EpisodeStore.create(
        store_path, fps=10, task="push the cube", robot_profile="panda", camera_intrinsics=INTR
    ) as store:
        for i, ep in enumerate(eps):
            assert store.add_episode(ep, meta={"operator": "ana", "dropped_steps": i}) == i
    with EpisodeStore.open(store_path) as store:
        assert store.n_episodes == 3
        assert store.n_steps == 10 + 11 + 12
        np.testing.assert_array_equal(store.episode_ends, [10, 21, 33])
        assert store.keys == sorted(eps[0])
        for i, ep in enumerate(eps):
            assert_episode_equal(store.get_episode(i), ep)
            meta = store.episode_meta(i)
            assert meta["n_steps"] == len(ep["action"])
            assert meta["operator"] == "ana" and meta["dropped_steps"] == i
            assert meta["task"] == "push the cube"
            assert meta["success"] is (i % 2 == 0)  # from the success array
            assert meta["duration_s"] == pytest.approx(len(ep["action"]) / 10.0)
            assert meta["started"].startswith("2023-11-14")  # from timestamp[0] (1.7e9 s)
        assert store.episode_slice(-1) == slice(21, 33)
        assert store.get_episode(1, keys=["action"]).keys() == {"action"}
        attrs = store.attrs
        assert attrs["schema_version"] == SCHEMA_VERSION
        assert attrs["fps"] == 10.0 and attrs["robot_profile"] == "panda"
        assert attrs["camera_intrinsics"] == INTR
        assert len(attrs["episodes"]) == 3
    # diffusion_policy ReplayBuffer layout, readable with plain zarr
    import zarr

    root = zarr.open_group(str(store_path), mode="r")
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [10, 21, 33])
    assert root["data/image_color"].shape == (33, H, W, 3)
    assert root["data/image_color"].dtype == np.uint8


def test_streaming_writer_matches_add_episode(store_path: Path) -> None:
    ep = make_episode(4, n=23)
    with EpisodeStore.create(store_path, fps=10) as store:
        writer = store.begin_episode()
        for t in range(23):
            writer.append({k: v[t] for k, v in ep.items()})
        assert writer.n_steps == 23
        assert store.n_episodes == 0  # invisible until committed
        assert writer.commit(meta={"operator": "bo", "note": {"x": [1, 2]}}) == 0
        assert not writer.is_open
        assert_episode_equal(store.get_episode(0), ep)
        assert store.episode_meta(0)["note"] == {"x": [1, 2]}
        with pytest.raises(DatasetError, match="closed"):
            writer.append({k: v[0] for k, v in ep.items()})


def test_writer_flushes_whole_chunks_and_keeps_memory_bounded(store_path: Path) -> None:
    """640x480 frames: 2 per chunk; the writer holds at most one chunk per key in memory."""
    frame = np.zeros((480, 640, 3), np.uint8)
    assert chunk_rows(frame.shape, frame.dtype) == CHUNK_BYTES // frame.nbytes == 2
    assert chunk_rows((9,), np.dtype(np.float32)) == 10_000
    assert chunk_rows((480, 640), np.dtype(np.uint16)) == 3
    with EpisodeStore.create(store_path, fps=30) as store:
        writer = store.begin_episode()
        for t in range(7):
            writer.append({"image_color": frame + t, "timestamp": np.float64(t)})
            buffered = sum(len(b) for b in writer._buffers["image_color"])
            assert buffered <= 1  # flushed at every chunk boundary
        arr = store.array("image_color")
        assert arr.chunks[0] == 2
        np.testing.assert_array_equal(arr[5], frame + 5)  # on disk before the commit
        assert store.n_steps == 0
        writer.commit()
        assert store.array("image_color").shape[0] == 7  # grown ahead, trimmed at commit
        np.testing.assert_array_equal(store.get_episode(0)["image_color"][6], frame + 6)


def test_discard_rolls_back_and_next_episode_reuses_the_rows(store_path: Path) -> None:
    a, b, c = make_episode(0), make_episode(1, n=30), make_episode(2, n=5)
    with EpisodeStore.create(store_path, fps=10) as store:
        store.add_episode(a)
        with store.begin_episode() as writer:
            for t in range(30):
                writer.append({k: v[t] for k, v in b.items()})
            writer.discard()
        assert store.n_episodes == 1
        assert all(store.array(k).shape[0] == 12 for k in store.keys)
        store.add_episode(c)
        assert_episode_equal(store.get_episode(1), c)
        # a writer left without commit discards itself
        with store.begin_episode() as writer:
            writer.append({k: v[0] for k, v in c.items()})
        assert store.n_episodes == 2 and store.array("action").shape[0] == 17


def test_first_episode_discarded_lets_the_next_choose_other_keys(store_path: Path) -> None:
    with EpisodeStore.create(store_path, fps=10) as store:
        w = store.begin_episode()
        w.append({"action": np.zeros(5, np.float32), "extra": np.zeros(3)})
        w.discard()
        store.add_episode({"action": np.zeros((4, 5), np.float32)})
        assert store.keys == ["action"]


def test_one_writer_at_a_time_and_empty_commit(store_path: Path) -> None:
    with EpisodeStore.create(store_path, fps=10) as store:
        w = store.begin_episode()
        with pytest.raises(DatasetError, match="already open"):
            store.begin_episode()
        with pytest.raises(DatasetError, match="writer is open"):
            store.add_episode(make_episode(0))
        with pytest.raises(DatasetError, match="empty episode"):
            w.commit()
        w.append({k: v[0] for k, v in make_episode(0).items()})
        assert w.commit() == 0  # the writer stayed usable after the refused commit


def test_close_discards_an_open_writer(store_path: Path) -> None:
    store = EpisodeStore.create(store_path, fps=10)
    store.add_episode(make_episode(0))
    w = store.begin_episode()
    w.append({k: v[0] for k, v in make_episode(1).items()})
    store.close()
    with EpisodeStore.open(store_path) as store:
        assert store.n_episodes == 1
        assert store.array("action").shape[0] == 12


# ----- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda e: e.update(action=e["action"][:-1]), "same length"),
        (lambda e: e.update(image_color=e["image_color"].astype(np.float32)), "cannot be stored"),
        (lambda e: e.update(action=np.zeros((12, 4), np.float32)), "shape"),
        (lambda e: e["joint_pos"].__setitem__((3, 2), np.nan), "NaN"),
        (lambda e: e["reward"].__setitem__(0, np.inf), "NaN or inf"),
        (lambda e: e.update(image_color=np.zeros((12, H, W, 4), np.uint8)), "shape"),
        (lambda e: e.update(depth_color=np.full((12, H, W), -1, np.int32)), "range"),
        (lambda e: e.update(reward=np.array(["a"] * 12)), "not a number"),
        (lambda e: e.update({"a/b": np.zeros(12)}), "bad data key"),
    ],
)
def test_bad_episodes_are_refused_and_nothing_is_written(store_path, change, match) -> None:
    with EpisodeStore.create(store_path, fps=10, camera_intrinsics=INTR) as store:
        store.add_episode(make_episode(0))
        before = {k: store.array(k).shape for k in store.keys}
        bad = make_episode(1)
        change(bad)
        with pytest.raises(DatasetError, match=match):
            store.add_episode(bad)
        assert store.n_episodes == 1
        assert {k: store.array(k).shape for k in store.keys} == before


def test_frames_must_match_the_camera_intrinsics(store_path: Path) -> None:
    with EpisodeStore.create(store_path, fps=10, camera_intrinsics=INTR) as store:
        ep = make_episode(0)
        ep["image_color"] = np.zeros((12, H + 2, W, 3), np.uint8)
        with pytest.raises(DatasetError, match="intrinsics say 32x24"):
            store.add_episode(ep)
        assert store.keys == []


def test_episodes_must_match_the_store(store_path: Path) -> None:
    with EpisodeStore.create(store_path, fps=10) as store:
        store.add_episode(make_episode(0))
        missing = make_episode(1)
        del missing["reward"]
        with pytest.raises(DatasetError, match=r"missing \['reward'\]"):
            store.add_episode(missing)
        with pytest.raises(DatasetError, match="store holds"):
            store.add_episode(make_episode(1, joints=9))  # joint count fixed by episode 0
        with pytest.raises(DatasetError, match="at least one step"):
            store.add_episode({k: v[:0] for k, v in make_episode(1).items()})
        with pytest.raises(DatasetError, match="JSON"):
            store.add_episode(make_episode(1), meta={"bad": object()})
        with pytest.raises(DatasetError, match="dropped_steps"):
            store.add_episode(make_episode(1), meta={"dropped_steps": -1})
        # float64 data is cast to the stored float32; extras keep a consistent dtype
        ep = make_episode(1)
        ep["joint_pos"] = ep["joint_pos"].astype(np.float64)
        store.add_episode(ep)
        assert store.get_episode(1)["joint_pos"].dtype == np.float32
        assert store.n_episodes == 2
        writer = store.begin_episode()
        step = {k: v[0] for k, v in make_episode(2).items()}
        step["action"] = np.zeros(6, np.float32)
        with pytest.raises(DatasetError, match="shape"):
            writer.append(step)
        writer.discard()


def test_extra_keys_and_nan_keys(store_path: Path) -> None:
    with EpisodeStore.create(store_path, fps=10, nan_keys=["force"]) as store:
        force = np.full((5, 6), np.nan)
        contact = np.zeros(5, bool)
        store.add_episode(
            {"action": np.zeros((5, 5), np.float32), "force": force, "contact": contact}
        )
        assert store.array("force").dtype == np.float64
        assert store.array("contact").dtype == np.bool_
        with pytest.raises(DatasetError, match="cannot be stored as bool"):
            store.add_episode(
                {"action": np.zeros((5, 5), np.float32), "force": force, "contact": np.zeros(5)}
            )
        with pytest.raises(DatasetError, match="store holds"):
            store.add_episode(
                {"action": np.zeros((5, 5), np.float32), "force": force[:, :2], "contact": contact}
            )
        with pytest.raises(DatasetError, match="NaN"):
            store.add_episode(
                {"action": np.full((5, 5), np.nan, np.float32), "force": force, "contact": contact}
            )
    assert check_store(store_path).ok


# ----- files and modes -------------------------------------------------------------------------
def test_create_refuses_to_overwrite(store_path: Path, tmp_path: Path) -> None:
    EpisodeStore.create(store_path, fps=10).close()
    with pytest.raises(DatasetError, match="exists"):
        EpisodeStore.create(store_path, fps=10)
    with EpisodeStore.create(store_path, fps=15, overwrite=True) as store:
        assert store.fps == 15
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="not a zarr store"):
        EpisodeStore.create(other, fps=10, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"
    with pytest.raises(DatasetError, match="fps"):
        EpisodeStore.create(tmp_path / "x.zarr", fps=0)
    with pytest.raises(DatasetError, match="lacks"):
        EpisodeStore.create(tmp_path / "y.zarr", fps=10, camera_intrinsics={"color": {"width": 3}})


def test_read_only_and_single_appender(store_path: Path) -> None:
    EpisodeStore.create(store_path, fps=10).close()
    with EpisodeStore.open(store_path, mode="r") as store:
        with pytest.raises(DatasetError, match="read-only"):
            store.add_episode(make_episode(0))
    with EpisodeStore.open(store_path, mode="a"):
        with pytest.raises(DatasetError, match="another process"):
            EpisodeStore.open(store_path, mode="a")
        EpisodeStore.open(store_path, mode="r").close()  # readers are fine
    with pytest.raises(DatasetError, match="not an episode store"):
        EpisodeStore.open(store_path.parent / "nothing.zarr")
    with pytest.raises(DatasetError, match="mode"):
        EpisodeStore.open(store_path, mode="w")  # type: ignore[arg-type]


def test_newer_schema_is_refused(store_path: Path) -> None:
    EpisodeStore.create(store_path, fps=10).close()
    meta_file = store_path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match=rf"schema_version {SCHEMA_VERSION + 1}.*supports \({SCHEMA_VERSION}\)"
    ):
        EpisodeStore.open(store_path)
    report = check_store(store_path)
    assert not report.ok and "newer" in report.problems[0]


def test_update_attrs(store_path: Path) -> None:
    with EpisodeStore.create(store_path, fps=10) as store:
        store.update_attrs(camera_intrinsics=INTR, task="open the drawer", site="lab 2")
        store.update_attrs(fps=30)
        store.add_episode(make_episode(0))
        with pytest.raises(DatasetError, match="fps cannot change"):
            store.update_attrs(fps=15)
        with pytest.raises(DatasetError, match="managed by the store"):
            store.update_attrs(episodes=[])
    with EpisodeStore.open(store_path) as store:
        assert store.attrs["site"] == "lab 2" and store.fps == 30
        assert store.episode_meta(0)["task"] == "open the drawer"


# ----- crash safety ----------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from test_store import make_episode
    from twinloop.datasets.store import EpisodeStore

    path, point, n_pre = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def hang():
        print("HANG", flush=True)
        time.sleep(120)

    store = EpisodeStore.create(path, fps=10, task="t")
    for i in range(n_pre):
        store.add_episode(make_episode(i), meta={"operator": f"op{i}"})
        print("COMMITTED", i, flush=True)
    if point == "data":  # rows of a new episode on disk, no end index
        w = store.begin_episode()
        ep = make_episode(n_pre, n=9)
        for t in range(9):
            w.append({k: v[t] for k, v in ep.items()})
        hang()
    elif point == "ends":  # end index appended (shape grown) but its value never written
        import zarr
        orig = zarr.Array.__setitem__
        def patched(self, sel, value):
            if self.path.endswith("episode_ends"):
                hang()
            return orig(self, sel, value)
        zarr.Array.__setitem__ = patched
        store.add_episode(make_episode(n_pre))
    elif point == "meta":  # committed, metadata not yet written
        import zarr
        def patched_attrs(self, new):
            if "episodes" in new:
                hang()
        zarr.Group.update_attributes = patched_attrs
        store.add_episode(make_episode(n_pre))
    elif point == "random":  # stream episodes until killed
        i = n_pre
        while True:
            ep = make_episode(i, n=11)
            w = store.begin_episode()
            for t in range(11):
                w.append({k: v[t] for k, v in ep.items()})
            w.commit(meta={"operator": f"op{i}"})
            print("COMMITTED", i, flush=True)
            i += 1
    """
)


def _run_child(path: Path, point: str, n_pre: int, *, until: str, delay: float = 0.0) -> int:
    """Run the writer child, SIGKILL it once ``until`` appears (+ delay); return COMMITTED count."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), point, str(n_pre), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    committed = 0
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            committed += line.startswith("COMMITTED")
            if line.startswith(until) and (until != "COMMITTED" or committed >= n_pre + 2):
                break
            assert time.monotonic() < deadline, "child did not reach the kill point"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        committed += sum(line.startswith("COMMITTED") for line in proc.stdout)  # printed since
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return committed


@pytest.mark.parametrize("point", ["data", "ends", "meta"])
def test_sigkill_mid_append_keeps_committed_episodes(store_path: Path, point: str, caplog) -> None:
    n_pre = 2
    _run_child(store_path, point, n_pre, until="HANG")
    survivors = n_pre + (point == "meta")  # "meta": the end index made it, so it is committed
    torn_rows = {k: a.shape for k, a in zip(*_raw_shapes(store_path), strict=True)}
    # read mode sees the committed episodes and leaves the files alone
    with EpisodeStore.open(store_path, mode="r") as store:
        assert store.n_episodes == survivors
        for i in range(n_pre):
            assert_episode_equal(store.get_episode(i), make_episode(i))
            assert store.episode_meta(i)["operator"] == f"op{i}"
    assert {k: a.shape for k, a in zip(*_raw_shapes(store_path), strict=True)} == torn_rows
    # append mode rolls the torn rows back; the store is clean and takes new episodes
    with EpisodeStore.open(store_path, mode="a") as store:
        assert store.n_episodes == survivors
        assert all(store.array(k).shape[0] == store.n_steps for k in store.keys)
        if point == "meta":
            meta = store.episode_meta(n_pre)
            assert meta["meta_recovered"] is True and meta["n_steps"] == 12
            assert_episode_equal(store.get_episode(n_pre), make_episode(n_pre))
        assert store.add_episode(make_episode(7)) == survivors
    report = check_store(store_path)
    assert report.ok and not report.notes, (report.problems, report.notes)
    with EpisodeStore.open(store_path) as store:
        assert_episode_equal(store.get_episode(-1), make_episode(7))
        assert store.n_episodes == survivors + 1


def _raw_shapes(path: Path) -> tuple[list[str], list]:
    import zarr

    root = zarr.open_group(str(path), mode="r")
    arrays = dict(root["data"].arrays())
    arrays["episode_ends"] = root["meta/episode_ends"]
    return list(arrays), list(arrays.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_moment_while_streaming(store_path: Path, seed: int) -> None:
    delay = random.Random(seed).uniform(0.0, 0.15)
    printed = _run_child(store_path, "random", 1, until="COMMITTED", delay=delay)
    with EpisodeStore.open(store_path, mode="a") as store:
        n = store.n_episodes
        assert printed <= n <= printed + 1  # one more if it committed before the kill landed
        for i in range(n):
            want = make_episode(i) if i == 0 else make_episode(i, n=11)
            assert_episode_equal(store.get_episode(i), want)
            meta = store.episode_meta(i)
            # killed between the commit and the metadata write: rebuilt, operator unknown
            assert meta["operator"] == f"op{i}" or (i == n - 1 and meta["meta_recovered"])
        store.add_episode(make_episode(99))
    assert check_store(store_path).ok


# ----- full disk -------------------------------------------------------------------------------
def _fill_disk(monkeypatch, *, when=lambda path: True) -> list[str]:
    import zarr.storage._local as local

    real, hits = local._put, []

    def put(path, value, exclusive=False):
        if when(str(path)):
            hits.append(str(path))
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", put)
    return hits


@pytest.mark.parametrize(
    ("where", "committed"),
    [
        ("/data/", False),  # frames cannot be written
        ("episode_ends", False),  # the commit itself fails (growing episode_ends)
        ("episode_ends/c/", False),  # ... or writing the end value after growing it
        ("demo.zarr/zarr.json", True),  # the metadata after the commit fails
    ],
)
def test_full_disk_keeps_committed_episodes(store_path, monkeypatch, where, committed) -> None:
    store = EpisodeStore.create(store_path, fps=10)
    store.add_episode(make_episode(0))
    hits = _fill_disk(monkeypatch, when=lambda p: where in p)
    with pytest.raises(DatasetError, match="No space left on device") as err:
        store.add_episode(make_episode(1))
    assert hits
    assert ("committed but its metadata" in str(err.value)) is committed
    assert store.n_episodes == 1 + committed
    monkeypatch.undo()
    store.close()
    with EpisodeStore.open(store_path, mode="a") as store:
        assert store.n_episodes == 1 + committed
        assert_episode_equal(store.get_episode(0), make_episode(0))
        store.add_episode(make_episode(2))
        assert_episode_equal(store.get_episode(-1), make_episode(2))
    assert check_store(store_path).ok


def test_full_disk_while_streaming(store_path: Path, monkeypatch) -> None:
    frame = np.zeros((480, 640, 3), np.uint8)  # 2 frames per chunk: writes while streaming
    step = lambda t: {"image_color": frame + t, "timestamp": np.float64(t)}  # noqa: E731
    with EpisodeStore.create(store_path, fps=10) as store:
        writer = store.begin_episode()
        for t in range(3):
            writer.append(step(t))
        writer.commit()
        writer = store.begin_episode()
        for t in range(5):
            writer.append(step(t))
        _fill_disk(monkeypatch, when=lambda p: "/data/image_color/c/" in p)
        with pytest.raises(DatasetError, match=r"No space left.*1 committed episodes are intact"):
            for t in range(5, 40):
                writer.append(step(t))
        assert not writer.is_open
        monkeypatch.undo()
        writer.discard()  # harmless after the failure
        assert store.array("image_color").shape[0] == 3  # partial rows rolled back
        store.add_episode({"image_color": frame[None] + 7, "timestamp": np.zeros(1)})
    with EpisodeStore.open(store_path) as store:
        assert store.n_episodes == 2
        np.testing.assert_array_equal(store.get_episode(1)["image_color"][0], frame + 7)
        np.testing.assert_array_equal(store.get_episode(0)["image_color"][2], frame + 2)


# ----- drop / merge ----------------------------------------------------------------------------
def _three(store_path: Path) -> list[dict[str, np.ndarray]]:
    eps = [make_episode(i, n=8 + i) for i in range(3)]
    with EpisodeStore.create(store_path, fps=10, task="t", camera_intrinsics=INTR) as store:
        for i, ep in enumerate(eps):
            store.add_episode(ep, meta={"operator": f"op{i}"})
    return eps


@pytest.mark.parametrize(
    ("indices", "match"),
    [([], "at least one"), ([3], "out of range"), ([1, 1], "duplicate"), ([0, 1, 2], "all 3"),
     (["1"], "must be an int")],
)  # fmt: skip
def test_drop_episodes_refuses_bad_lists(store_path: Path, indices, match) -> None:
    eps = _three(store_path)
    with EpisodeStore.open(store_path, mode="a") as store:
        with pytest.raises(DatasetError, match=match):
            store.drop_episodes(indices)
        assert store.n_episodes == 3
    with EpisodeStore.open(store_path) as store:
        for i, ep in enumerate(eps):
            assert_episode_equal(store.get_episode(i), ep)


def test_drop_episodes_rewrites_and_swaps(store_path: Path) -> None:
    eps = _three(store_path)
    with EpisodeStore.open(store_path, mode="a") as store:
        assert store.drop_episodes([-2]) is store
        assert store.n_episodes == 2
        assert_episode_equal(store.get_episode(1), eps[2])
        assert store.episode_meta(1)["operator"] == "op2"
        assert store.attrs["camera_intrinsics"] == INTR
        store.add_episode(eps[1], meta={"operator": "op1"})  # still appendable after the swap
    assert sorted(p.name for p in store_path.parent.iterdir()) == ["demo.zarr"]  # no leftovers
    with EpisodeStore.open(store_path) as store:
        assert [store.episode_meta(i)["operator"] for i in range(3)] == ["op0", "op2", "op1"]
    assert check_store(store_path).ok


def test_drop_episodes_to_a_new_store(store_path: Path, tmp_path: Path) -> None:
    eps = _three(store_path)
    with EpisodeStore.open(store_path) as store:
        with store.drop_episodes([0], out=tmp_path / "kept.zarr") as kept:
            assert kept.n_episodes == 2
            assert_episode_equal(kept.get_episode(0), eps[1])
        assert store.n_episodes == 3
        with pytest.raises(DatasetError, match="never overwrites"):
            store.drop_episodes([0], out=tmp_path / "kept.zarr")


def test_merge(store_path: Path, tmp_path: Path) -> None:
    eps = _three(store_path)
    other = tmp_path / "other.zarr"
    with EpisodeStore.create(other, fps=10, task="u") as store:
        store.add_episode(make_episode(5), meta={"operator": "zed"})
    with EpisodeStore.merge([store_path, other], tmp_path / "all.zarr") as merged:
        assert merged.n_episodes == 4
        assert_episode_equal(merged.get_episode(3), make_episode(5))
        assert_episode_equal(merged.get_episode(1), eps[1])
        assert [merged.episode_meta(i)["task"] for i in range(4)] == ["t", "t", "t", "u"]
        assert merged.attrs["task"] == ""  # tasks differ: per-episode only
        assert merged.attrs["camera_intrinsics"] == INTR
    with EpisodeStore.merge([store_path], tmp_path / "small.zarr", image_codec="zstd") as small:
        assert small.attrs["image_codec"] == "zstd"
        assert_episode_equal(small.get_episode(2), eps[2])
        blosc = small.array("image_color").metadata.codecs[-1].to_dict()["configuration"]
        assert (blosc["cname"], blosc["shuffle"]) == ("zstd", "bitshuffle")
    with pytest.raises(DatasetError, match="unknown image_codec 'png'"):
        EpisodeStore.create(tmp_path / "png.zarr", fps=10, image_codec="png")
    slow = tmp_path / "slow.zarr"
    EpisodeStore.create(slow, fps=5).close()
    with pytest.raises(DatasetError, match="different fps"):
        EpisodeStore.merge([store_path, slow], tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()
    with pytest.raises(DatasetError, match="exists"):
        EpisodeStore.merge([store_path], other)


# ----- check -----------------------------------------------------------------------------------
def test_check_finds_broken_invariants(store_path: Path) -> None:
    _three(store_path)
    assert check_store(store_path).ok
    import zarr

    root = zarr.open_group(str(store_path), mode="r+")
    root["meta/episode_ends"][1] = 5  # not increasing
    root["data/reward"][0] = np.nan
    attrs = root.attrs.asdict()
    attrs["episodes"][0]["n_steps"] = 99
    root.update_attributes({"episodes": attrs["episodes"]})
    report = check_store(store_path)
    text = "\n".join(report.problems)
    assert "not increasing" in text and "NaN" in text and "n_steps=99" in text
    with pytest.raises(DatasetError, match="corrupt"):
        EpisodeStore.open(store_path)


# ----- sampler ---------------------------------------------------------------------------------
def _ramp_store(path: Path, lengths: list[int]) -> EpisodeStore:
    store = EpisodeStore.create(path, fps=10)
    t0 = 0
    for n in lengths:
        t = np.arange(t0, t0 + n)
        store.add_episode(
            {
                "timestamp": t.astype(np.float64),
                "image_color": np.zeros((n, 4, 4, 3), np.uint8)
                + (t % 256)[:, None, None, None].astype(np.uint8),
            }
        )
        t0 += n
    return store


def test_window_indices_like_diffusion_policy() -> None:
    w = window_indices(np.array([5, 8]), 4, pad_before=1, pad_after=2)
    # episode 0 (0..5): starts -1..3; episode 1 (5..8): starts 4..6
    np.testing.assert_array_equal(w[:, 0], [-1, 0, 1, 2, 3, 4, 5, 6])
    assert len(window_indices(np.array([3]), 4)) == 0  # too short without padding


@pytest.mark.parametrize("in_memory", [True, False])
def test_sampler_windows_stay_in_episodes_and_pad_edges(store_path: Path, in_memory) -> None:
    store = _ramp_store(store_path, [5, 3, 9])
    cfg = SamplerConfig(horizon=4, pad_before=1, pad_after=3, in_memory=in_memory,
                        key_first_k={"image_color": 2})  # fmt: skip
    sampler = SequenceSampler(store, cfg)
    ends = store.episode_ends
    for i in range(len(sampler)):
        item = sampler[i]
        ts = item["timestamp"]
        assert ts.shape == (4,) and item["image_color"].shape == (2, 4, 4, 3)
        ep = int(np.searchsorted(ends, ts[0], side="right"))
        lo, hi = (ends[ep - 1] if ep else 0), ends[ep]
        assert np.all((ts >= lo) & (ts < hi))  # never crosses an episode
        assert np.all(np.diff(ts) >= 0) and np.all(np.diff(ts) <= 1)  # edges repeat
        np.testing.assert_array_equal(item["image_color"][:, 0, 0, 0], ts[:2])
    batch = sampler.get_batch(np.arange(len(sampler)))
    np.testing.assert_array_equal(
        batch["timestamp"], np.stack([sampler[i]["timestamp"] for i in range(len(sampler))])
    )
    b1 = sampler.sample(16, np.random.default_rng(3))
    b2 = sampler.sample(16, np.random.default_rng(3))
    np.testing.assert_array_equal(b1["timestamp"], b2["timestamp"])  # seeded
    assert b1["timestamp"].shape == (16, 4)
    seen = np.concatenate(
        [b["timestamp"][:, 0] for b in sampler.epoch(5, np.random.default_rng(0))]
    )
    assert len(seen) == len(sampler)
    store.close()


def test_sampler_config_and_split(store_path: Path) -> None:
    with pytest.raises(DatasetError, match="horizon"):
        SamplerConfig(horizon=0)
    with pytest.raises(DatasetError, match="pad_before"):
        SamplerConfig(horizon=4, pad_before=4)
    store = _ramp_store(store_path, [6, 6, 6, 6])
    with pytest.raises(DatasetError, match="not in the store"):
        SequenceSampler(store, SamplerConfig(horizon=2, keys=("action",)))
    train, val = split_episodes(4, val_ratio=0.25, seed=1)
    assert len(train) == 3 and len(val) == 1 and not set(train) & set(val)
    assert split_episodes(4, val_ratio=0.25, seed=1) == (train, val)
    s = SequenceSampler(store, SamplerConfig(horizon=6, episodes=val))
    assert len(s) == 1
    assert s[0]["timestamp"][0] == 6 * val[0]
    store.close()


def test_layout_on_disk(store_path: Path) -> None:
    """Nothing but the zarr layout (no lock or side files)."""
    EpisodeStore.create(store_path, fps=10).close()
    assert sorted(os.listdir(store_path)) == ["data", "meta", "zarr.json"]
