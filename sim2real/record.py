"""Record twin episodes, with the ground truth reward methods are judged by, into an EpisodeStore.

Each row is one observation and the action taken from it: ``image_color`` (and ``depth_color``),
``joint_pos``, ``ee_pose``, ``action``, ``success`` (of that observation), ``progress`` (the
task's privileged dense reward in [0, 1]) and the task's privileged state as ``priv_<name>``.
The final observation of an episode is recorded too (with a hold action), so a successful episode
ends on frames that show success. Store attrs carry the camera intrinsics and the camera pose
(``camera_extrinsics``: camera-to-world 4x4, OpenCV axes) that keypoint rewards need.

Episode kinds: ``expert`` (the scripted expert with ``noise``) and two kinds of failure,
``stall`` (the expert for part of the budget, then small random motions) and ``noisy`` (the
expert drowned in action noise). Randomness comes from ``seed`` only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TwinError
from .experts import EXPERTS, ScriptedExpert, make_expert
from .tasks import TASK_PAIRS
from .twin import Observation, Twin, TwinConfig

__all__ = [
    "EPISODE_KINDS",
    "RecordConfig",
    "observation_row",
    "record_twin_dataset",
]

log = logging.getLogger(__name__)

EPISODE_KINDS = ("expert", "stall", "noisy", "wrong", "partial")
# "partial": the expert stops once the task's progress (Task.reward, 0..1) passes a random
# fraction of the way to success (PARTIAL_RANGE), then makes small random motions: a near miss
# whose last frames lie between start and goal (a drawer half shut). A classifier trained without
# such failures can put its boundary anywhere between the two (RoboFuME collects failed attempts).
# A push that carries the drawer on past the goal makes the episode a success (labelled so).
PARTIAL_RANGE = (0.35, 0.8)
# "wrong": a competent demo of the wrong thing (the paired drawer task's expert; push_cube's
# expert towards the goal mirrored through the cube): multimodal data where averaging the
# demonstrated actions (behaviour cloning) fails and reward-aware methods (IQL) can choose.


@dataclass(frozen=True)
class RecordConfig:
    episodes: int = 10  # how many episodes to record
    kinds: tuple[str, ...] = ("expert",)  # episode i uses kinds[i % len(kinds)]
    noise: float = 0.0  # expert action noise for "expert" episodes
    failure_noise: float = 1.0  # expert action noise for "noisy" episodes
    hold_steps: int = 3  # rows recorded after success with a hold action (more success frames)
    seed: int = 0  # episode i resets the twin with seed + i
    depth: bool = True  # record aligned depth (keypoint rewards need it)

    def __post_init__(self) -> None:
        if self.episodes < 1:
            msg = f"episodes must be >= 1, got {self.episodes}"
            raise TwinError(msg)
        bad = [k for k in self.kinds if k not in EPISODE_KINDS]
        if not self.kinds or bad:
            msg = f"unknown episode kinds {bad or '(none given)'}. Available: {list(EPISODE_KINDS)}"
            raise TwinError(msg)
        if self.noise < 0 or self.failure_noise < 0 or self.hold_steps < 0:
            msg = "noise, failure_noise and hold_steps must be >= 0"
            raise TwinError(msg)


def observation_row(
    twin: Twin, image: np.ndarray | None, depth: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """One dataset row of the twin's current state (the keys a recorded store holds).

    ``proprio`` is the twin's own proprio (policies derive the same from ee_pose + joint_pos);
    ``image``/``depth`` are included when given.
    """
    phys = twin.physics
    row: dict[str, np.ndarray] = {
        "proprio": twin.proprio(),
        "joint_pos": phys.joint_positions().astype(np.float32),
        "ee_pose": np.concatenate([phys.ee_pos(), phys.ee_quat()]).astype(np.float32),
        "success": np.array(twin.success(), dtype=np.bool_),
        "progress": np.array(twin.task.reward(phys), dtype=np.float32),
    }
    if image is not None:
        row["image_color"] = image
    if depth is not None:
        row["depth_color"] = depth
    for key, value in twin.privileged_state().items():
        row[f"priv_{key}"] = np.asarray(value, dtype=np.float32)
    return row


def _frames(obs: Observation) -> tuple[np.ndarray, np.ndarray | None]:
    if obs.image is None:
        msg = "the twin returned no camera image; recording needs TwinConfig.render=True"
        raise TwinError(msg)
    return obs.image, obs.depth


def _wrong_expert(twin: Twin, noise: float, seed: int) -> ScriptedExpert:
    task = twin.task.name
    if task in TASK_PAIRS:
        return EXPERTS[TASK_PAIRS[task]](twin.config, noise=noise, seed=seed)
    if task == "push_cube":
        return make_expert(twin, noise=noise, seed=seed)
    msg = f"no 'wrong' episodes for task {task!r} (drawer tasks and push_cube have them)"
    raise TwinError(msg)


def _wrong_goal(twin: Twin, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if twin.task.name != "push_cube":
        return state
    cube, goal = state["cube_pos"], state["goal_pos"]
    mirrored = goal.copy()
    mirrored[:2] = 2 * cube[:2] - goal[:2]
    return state | {"goal_pos": mirrored}


def _episode(
    twin: Twin, kind: str, seed: int, cfg: RecordConfig
) -> tuple[dict[str, np.ndarray], bool]:
    rng = np.random.default_rng(seed)
    obs = twin.reset(seed=seed)
    noise = cfg.failure_noise if kind == "noisy" else cfg.noise
    expert = make_expert(twin, noise=noise, seed=seed)
    decoy = _wrong_goal if kind == "wrong" else None
    if kind == "wrong":
        expert = _wrong_expert(twin, noise, seed)
    max_steps = twin.task.max_steps
    stall_at = int(rng.uniform(0.15, 0.7) * max_steps) if kind == "stall" else max_steps
    start = twin.task.reward(twin.physics)
    # partial: stop at this progress, a fraction of the way from the start to success (1.0)
    stop_at = start + rng.uniform(*PARTIAL_RANGE) * (1.0 - start) if kind == "partial" else 2.0
    rows: list[dict[str, np.ndarray]] = []
    action = np.zeros(5)
    image, depth = _frames(obs)
    for step in range(max_steps):
        progress = twin.task.reward(twin.physics)
        if step < stall_at and progress >= stop_at:
            stall_at = step  # partial: far enough, stop here
        if step < stall_at:
            state = twin.privileged_state()
            action = expert.act(decoy(twin, state) if decoy else state)
            if kind == "partial" and progress > start + 0.3 * (stop_at - start):  # slow down
                action = np.concatenate([0.25 * action[:4], action[4:]])
        else:  # small random motions that do not finish the task (partial: barely moving)
            jitter = 0.001 if kind == "partial" else 0.005
            action = np.concatenate([rng.normal(0, jitter, 3), [0.0], [action[4]]])
        rows.append(observation_row(twin, image, depth) | {"action": action.astype(np.float32)})
        result = twin.step(action)
        image, depth = _frames(result.observation)
        if result.success and kind == "expert":
            break
    hold = np.array([0.0, 0.0, 0.0, 0.0, action[4]], dtype=np.float32)
    for _ in range(1 + (cfg.hold_steps if twin.success() else 0)):
        rows.append(observation_row(twin, image, depth) | {"action": hold})
        image, depth = _frames(twin.step(hold).observation)
    episode = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return episode, bool(episode["success"][-1])


def record_twin_dataset(
    path: str | os.PathLike[str],
    config: RecordConfig,
    twin_config: TwinConfig | None = None,
    *,
    overwrite: bool = False,
    on_episode: Callable[[int, bool, int], None] | None = None,
) -> Path:
    """Record ``config.episodes`` twin episodes into a new store at ``path``; returns the path.

    ``on_episode(i, success, steps)`` is called after each committed episode (progress bars).
    """
    from twinloop.datasets.store import EpisodeStore

    tcfg = twin_config or TwinConfig()
    if not tcfg.render:
        msg = "record_twin_dataset needs a rendering twin (TwinConfig.render=True)"
        raise TwinError(msg)
    if tcfg.depth != config.depth:
        from dataclasses import replace

        tcfg = replace(tcfg, depth=config.depth)
    twin = Twin(tcfg)
    try:
        intr = twin.intrinsics
        store = EpisodeStore.create(
            path,
            fps=tcfg.control_hz,
            task=twin.task.text,
            robot_profile="twin",
            camera_intrinsics={"color": _intrinsics_dict(intr)},
            overwrite=overwrite,
            extra_attrs={
                "twin_task": tcfg.task,
                "camera_extrinsics": {"color": twin.camera_pose().round(6).tolist()},
                "ground_truth": ["success", "progress"],
            },
        )
        with store:
            for i in range(config.episodes):
                kind = config.kinds[i % len(config.kinds)]
                episode, success = _episode(twin, kind, config.seed + i, config)
                store.add_episode(
                    episode, meta={"success": success, "kind": kind, "seed": config.seed + i}
                )
                log.debug(
                    "episode %d (%s): success %s, %d rows", i, kind, success, len(episode["action"])
                )
                if on_episode is not None:
                    on_episode(i, success, len(episode["action"]))
    finally:
        twin.close()
    return Path(path)


def _intrinsics_dict(intr: object) -> dict[str, object]:
    fields: Sequence[str] = ("width", "height", "fx", "fy", "ppx", "ppy", "model", "coeffs")
    return {f: getattr(intr, f) if f != "coeffs" else list(getattr(intr, f)) for f in fields}
