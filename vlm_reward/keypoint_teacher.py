"""The simulated teacher's answers to KAGI keypoint prompts, from the twin's privileged state.

:class:`KeypointAnswerer` plugs into :class:`.teacher.SimulatedTeacher` (``answerers=``). For a
keypoint prompt it finds the camera frame among the conversation's images in the
:class:`.teacher.FrameIndex`, takes the true object positions recorded with that frame, projects
the task's keypoint and waypoints through the store's camera (``camera_intrinsics`` /
``camera_extrinsics`` attrs) and answers with the marks nearest to them, in the JSON form the
prompt asks for. With ``error_rate`` it picks a wrong mark for one entry of the answer, the
kind of slip a real VLM makes.

Its marks follow the lifting conventions of :data:`.keypoints.TWIN_PRESETS`: a ``"depth"``
waypoint is answered with the mark on the surface under it (the table spot behind the cube,
the goal disc, the top of the rod), a ``"plane"`` waypoint with the mark where the point itself
appears (the drawer handle pulled out, at the handle's height).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RewardError
from .keypoints import project_points
from .prompts import is_keypoint_prompt, parse_keypoint_prompt

if TYPE_CHECKING:
    from .teacher import FrameIndex

__all__ = ["TASK_TARGETS", "KeypointAnswerer", "task_targets"]

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
Targets = tuple[np.ndarray, np.ndarray, str]  # keypoints (n, 3), waypoints (K, 3), description

BEHIND = 0.035  # m between the cube's back face and the push start (as the scripted expert)


def _get(row: Row, key: str) -> np.ndarray:
    if key not in row:
        msg = f"the recorded frame has no {key!r} (has {sorted(row)}); record with the twin"
        raise RewardError(msg)
    return np.asarray(row[key], dtype=float)


def _push_cube(row: Row) -> Targets:
    from twinloop.sim2real.scene import CUBE_HALF

    cube, goal = _get(row, "priv_cube_pos"), _get(row, "priv_goal_pos")
    push = goal[:2] - cube[:2]
    push /= max(float(np.linalg.norm(push)), 1e-9)
    behind = cube[:2] - push * (CUBE_HALF + BEHIND)
    waypoints = np.array([[*behind, 0.0], [*goal[:2], 0.0]])  # spots on the table ("depth")
    return cube[None], waypoints, "the cube, the table behind it on the push line, the goal"


def _drawer(row: Row, *, opening: bool) -> Targets:
    from twinloop.sim2real.tasks import CloseDrawer, OpenDrawer

    handle = _get(row, "priv_handle_pos")
    now, travel = float(_get(row, "priv_drawer_opening")), float(_get(row, "priv_drawer_travel"))
    # the drawer slides along -x when it opens (scene.py); points at the handle's height ("plane")
    if opening:
        move = max(0.0, OpenDrawer.open_fraction * travel - now)
    else:
        move = -max(0.0, now - CloseDrawer.closed_below / 2)
    moved = handle - np.array([move, 0.0, 0.0])
    return handle[None], np.stack([handle, moved]), "the handle, then the handle moved"


def _lift_rod(row: Row) -> Targets:
    from twinloop.sim2real.scene import ROD_RADIUS

    top = _get(row, "priv_rod_com") + np.array([0.0, 0.0, ROD_RADIUS])  # seen from above
    return top[None], np.stack([top, top]), "the rod at its centre of mass, then above it"


TASK_TARGETS: dict[str, Callable[[Row], Targets]] = {
    "push_cube": _push_cube,
    "open_drawer": lambda row: _drawer(row, opening=True),
    "close_drawer": lambda row: _drawer(row, opening=False),
    "lift_rod": _lift_rod,
}


def task_targets(task: str, row: Row) -> Targets:
    """True keypoints and waypoints (world, m) of ``task`` in the recorded ``row``."""
    if task not in TASK_TARGETS:
        msg = f"the keypoint teacher knows no task {task!r}. Available: {sorted(TASK_TARGETS)}"
        raise RewardError(msg)
    return TASK_TARGETS[task](row)


def _twin_task(attrs: Mapping[str, Any], sentence: str) -> str:
    task = attrs.get("twin_task")
    if isinstance(task, str) and task:
        return task
    from twinloop.sim2real.tasks import TASKS

    for name, cls in TASKS.items():
        if getattr(cls, "text", None) == sentence:
            return name
    msg = f"cannot tell the twin task: no 'twin_task' attr and no task says {sentence!r}"
    raise RewardError(msg)


def _camera(attrs: Mapping[str, Any]) -> tuple[Any, np.ndarray]:
    try:
        intr = attrs["camera_intrinsics"]["color"]
        pose = np.asarray(attrs["camera_extrinsics"]["color"], dtype=float)
    except (KeyError, TypeError) as err:
        msg = "the teacher's dataset has no color camera_intrinsics/camera_extrinsics attrs"
        raise RewardError(msg) from err
    return intr, pose


class KeypointAnswerer:
    """Answers keypoint prompts with the marks nearest to the true keypoint and waypoints."""

    def __init__(self, *, error_rate: float = 0.0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            msg = f"error_rate must be in [0, 1], got {error_rate}"
            raise RewardError(msg)
        self.error_rate = error_rate  # probability that one answered mark is a wrong one
        self.stats = {"answers": 0, "errors_injected": 0}

    def matches(self, prompt: str) -> bool:
        return is_keypoint_prompt(prompt)

    def answer(
        self, prompt: str, images: list[np.ndarray], frames: FrameIndex, rng: np.random.Generator
    ) -> str:
        asked = parse_keypoint_prompt(prompt)
        row = next((r for r in (frames.lookup(im) for im in images) if r is not None), None)
        if row is None:
            msg = f"the keypoint teacher does not know any of the {len(images)} image(s)"
            raise RewardError(msg)
        task = _twin_task(frames.attrs, asked.task)
        keypoints, waypoints, what = task_targets(task, row)
        intr, pose = _camera(frames.attrs)
        numbers = np.array([m[0] for m in asked.marks])
        pixels = np.array([m[1:] for m in asked.marks], dtype=float)
        # the prompt lists marks in the marked image (the last one), maybe an upscaled frame
        scale = images[-1].shape[1] / float(intr["width"])

        def project(points: np.ndarray) -> np.ndarray:
            return project_points(points, intr, pose) * scale + (scale - 1) / 2

        def nearest(points: np.ndarray) -> list[int]:
            uv = project(points)
            d2 = ((uv[:, None, :] - pixels[None]) ** 2).sum(-1)
            return [int(numbers[j]) for j in d2.argmin(axis=1)]

        keys = nearest(keypoints)
        if asked.n_keypoints > len(keys):  # more asked: the next-nearest marks to the first
            uv = project(keypoints[:1])[0]
            order = np.argsort(((pixels - uv) ** 2).sum(-1))
            extra = [int(numbers[j]) for j in order if int(numbers[j]) not in keys]
            keys += extra[: asked.n_keypoints - len(keys)]
        keys = keys[: asked.n_keypoints]
        ways = nearest(waypoints)[-asked.max_waypoints :]  # the goal matters most: keep the end
        if self.error_rate and rng.random() < self.error_rate and len(numbers) > 1:
            slot = int(rng.integers(len(keys) + len(ways)))
            chosen = keys if slot < len(keys) else ways
            i = slot if slot < len(keys) else slot - len(keys)
            wrong = [int(n) for n in numbers if int(n) != chosen[i]]
            chosen[i] = wrong[int(rng.integers(len(wrong)))]
            self.stats["errors_injected"] += 1
        self.stats["answers"] += 1
        log.debug("keypoint answer for %s: keypoints %s, waypoints %s", task, keys, ways)
        return (
            f"I look for {what}. The keypoint is mark {keys[0]}; the waypoints in order are "
            f"marks {', '.join(map(str, ways))}.\n"
            + json.dumps({"keypoints": keys, "waypoints": ways})
        )
