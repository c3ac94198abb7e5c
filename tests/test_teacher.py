"""The simulated teacher: a real HTTP server on localhost, queried through the real client."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from twinloop.datasets.store import EpisodeStore
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.prompts import (
    ask_preference,
    ask_preferences,
    is_keypoint_prompt,
    keypoint_prompt,
    parse_keypoint_reply,
    preference_label_prompt,
)
from twinloop.vlm_reward.teacher import FrameIndex, SimulatedTeacher, decode_data_url
from twinloop.vlm_reward.vlm_client import VLMClient, VLMClientConfig, encode_png_data_url

GOAL = "push the red cube onto the green target"
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.twin import TwinConfig

    path = tmp_path_factory.mktemp("teacher") / "push.zarr"
    config = RecordConfig(episodes=3, kinds=("expert", "stall", "noisy"), depth=False, seed=3)
    return record_twin_dataset(path, config, TwinConfig(task="push_cube"))


@pytest.fixture(scope="module")
def frames(store_path: Path) -> FrameIndex:
    return FrameIndex.from_store(store_path)


@pytest.fixture(scope="module")
def recorded(store_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with EpisodeStore.open(store_path) as store:
        return store.array("image_color")[:], store.array("progress")[:]


def client_for(url: str, **overrides: object) -> VLMClient:
    values: dict = {"base_url": url, "model": "twinloop-teacher", "backoff_s": 0.0}
    values.update(overrides)
    return VLMClient(VLMClientConfig(**values))


def test_frame_index_matches_pixels(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray]
) -> None:
    images, progress = recorded
    assert len(frames) + frames.duplicates == len(images)
    assert frames.attrs["twin_task"] == "push_cube"
    row = frames.lookup(images[17])
    assert row is not None and row["progress"] == pytest.approx(float(progress[17]))
    assert {"success", "ee_pose", "priv_cube_pos", "priv_goal_pos"} <= set(row)
    altered = images[17].copy()
    altered[5, 5, 1] ^= 1
    assert frames.lookup(altered) is None
    # the PNG data URL the client sends decodes back to the very same pixels
    assert frames.lookup(decode_data_url(encode_png_data_url(images[17]))) == row


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RewardError, match="does not exist"):
        FrameIndex.from_store(tmp_path / "nope.zarr")


def test_preference_end_to_end_without_noise(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray]
) -> None:
    images, progress = recorded
    lo, hi = int(np.argmin(progress)), int(np.argmax(progress))
    with SimulatedTeacher(frames, error_rate=0.0) as teacher, client_for(teacher.base_url) as c:
        better_second = ask_preference(c, GOAL, images[lo], images[hi])
        better_first = ask_preference(c, GOAL, images[hi], images[lo])
        same = ask_preference(c, GOAL, images[lo], images[lo])
        stats = teacher.stats
    assert (better_second.label, better_first.label, same.label) == (1, 0, -1)
    assert "Image 2 is further along" in better_second.analysis and GOAL in better_second.analysis
    assert stats["queries"] == 6 and stats["labels"] == 3 and stats["flips"] == 0


def test_label_accuracy_matches_error_rate(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray]
) -> None:
    images, progress = recorded
    rng = np.random.default_rng(0)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < 300:  # pairs whose progress clearly differs (no ties)
        i, j = rng.integers(0, len(images), 2)
        if abs(progress[i] - progress[j]) > 0.05:
            pairs.append((int(i), int(j)))
    error_rate = 0.25
    with SimulatedTeacher(frames, error_rate=error_rate, seed=1) as teacher:
        with client_for(teacher.base_url, max_concurrency=4) as c:
            answers = ask_preferences(c, GOAL, [(images[i], images[j]) for i, j in pairs])
        stats = teacher.stats
    labels = np.array([getattr(a, "label", None) for a in answers])
    truth = np.array([int(progress[j] > progress[i]) for i, j in pairs])
    accuracy = float(np.mean(labels == truth))
    tolerance = 4 * np.sqrt(error_rate * (1 - error_rate) / len(pairs))  # 4 binomial sd = 0.1
    assert abs(accuracy - (1 - error_rate)) < tolerance, accuracy
    assert stats["labels"] == 300 and stats["unsure"] == 0
    assert stats["flips"] == int(np.sum(labels != truth))


def test_api_key_is_required_when_set(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    images, _ = recorded
    monkeypatch.delenv("TEACHER_TEST_KEY", raising=False)
    with SimulatedTeacher(frames, error_rate=0.0, api_key="local-secret") as teacher:
        with client_for(teacher.base_url, api_key_env="TEACHER_TEST_KEY") as anonymous:
            with pytest.raises(RewardError, match="HTTP 401"):
                ask_preference(anonymous, GOAL, images[0], images[-1])
            assert anonymous.stats["requests"] == 1  # 401 is not retried
        monkeypatch.setenv("TEACHER_TEST_KEY", "local-secret")
        with client_for(teacher.base_url, api_key_env="TEACHER_TEST_KEY") as c:
            assert ask_preference(c, GOAL, images[0], images[0]).label == -1
        assert httpx.get(teacher.base_url + "/models").status_code == 401
        assert teacher.stats["unauthorized"] == 2


def test_faults_are_retried_then_succeed(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray]
) -> None:
    images, progress = recorded
    lo, hi = int(np.argmin(progress)), int(np.argmax(progress))
    faults = [503, 429, "drop", 500, "timeout"]
    with SimulatedTeacher(frames, error_rate=0.0, faults=faults, fault_delay_s=2.0) as teacher:
        with client_for(teacher.base_url, timeout_s=0.5, max_retries=5) as c:
            answer = ask_preference(c, GOAL, images[lo], images[hi])
            assert answer.label == 1
            assert c.stats["retries"] == 5 and c.stats["requests"] == 7
        assert teacher.stats["faults"] == 5
        teacher.add_faults("garbage")
        with client_for(teacher.base_url) as c, pytest.raises(RewardError, match="non-JSON"):
            c.ask(preference_label_prompt(GOAL), [images[lo], images[hi]])
        with pytest.raises(RewardError, match="unknown fault"):
            teacher.add_faults(200)


def test_unknown_frames_and_unknown_prompts(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = recorded
    noise = np.random.default_rng(0).integers(0, 256, images[0].shape, dtype=np.uint8)
    with SimulatedTeacher(frames, error_rate=0.0) as teacher, client_for(teacher.base_url) as c:
        answer = ask_preference(c, GOAL, images[0], noise)
        assert answer.label == -1 and "cannot make out" in answer.analysis
        assert teacher.stats["unknown_frames"] == 2  # once per turn
        with pytest.raises(RewardError, match=r"HTTP 400.*only answers"):
            c.ask("what is the weather like?")
        with pytest.raises(RewardError, match=r"HTTP 400.*exactly 2 images"):
            c.ask(preference_label_prompt(GOAL), [images[0]])


class CountingKeypointAnswerer:
    """A stand-in for the keypoint answerer: always the first and last listed mark."""

    def __init__(self) -> None:
        self.images_seen: list[int] = []

    def matches(self, prompt: str) -> bool:
        return is_keypoint_prompt(prompt)

    def answer(
        self, prompt: str, images: list[np.ndarray], frames: FrameIndex, rng: np.random.Generator
    ) -> str:
        self.images_seen.append(len(images))
        row = frames.lookup(images[0])
        step = -1 if row is None else row["step"]
        return f'The marks fit. {{"keypoints": [1], "waypoints": [1, 7]}} (step {step})'


def test_extra_answerers_are_consulted(
    frames: FrameIndex, recorded: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = recorded
    marks = [(1, 10.0, 20.0), (7, 200.0, 100.0)]
    extra = CountingKeypointAnswerer()
    with SimulatedTeacher(frames, answerers=[extra]) as teacher, client_for(teacher.base_url) as c:
        reply = c.ask(keypoint_prompt(GOAL, marks, 1, 4), [images[4]])
        models = httpx.get(teacher.base_url + "/models").json()
    assert parse_keypoint_reply(reply, [1, 7]).waypoints == (1, 7)
    assert "(step 4)" in reply and extra.images_seen == [1]
    assert models["data"][0]["id"] == "twinloop-teacher"


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            break
    return ""


def test_cli_serves_until_terminated(store_path: Path) -> None:
    cmd = [sys.executable, "-m", "twinloop.vlm_reward.cli_teacher"]
    help_text = subprocess.run(
        [*cmd, "teacher", "--help"], capture_output=True, text=True, check=True
    )
    assert "--error-rate" in help_text.stdout
    proc = subprocess.Popen(
        [*cmd, "teacher", "--dataset", str(store_path), "--error-rate", "0.1", "--seed", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        url = _read_line(proc, timeout=60)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), url
        models = httpx.get(url + "/models", timeout=10).json()
        assert models["data"][0]["id"] == "twinloop-teacher"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "teacher stats" in err


def test_cli_bad_dataset_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twinloop.vlm_reward.cli_teacher",
            "teacher",
            "--dataset",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
