"""The actor half of the actor/learner split, ROS-free: fresh observations in, metric actions out.

:class:`LatestObservations` keeps the newest message-derived value of every observation source
(``ee_pose``, ``joints``, ``priv`` (the twin's privileged state), ``image``) with its stamp and
refuses a value whose shape differs from the first one seen (a camera that changes resolution, a
joint state with other joints). :class:`PolicyRunner` turns them into a policy observation with the
same :class:`~twinloop.policy.obs.ObsSpec` helpers the offline buffers use and runs the policy.

The actor never sends an action it did not compute from fresh observations: ``act(now_ns)``
returns None, and counts the reason, when a needed source has no value yet (``missing``), its
newest value is older than ``max_obs_age_s`` (``stale``), has not changed since the last action
(``unchanged``), or, with ``max_spread_s``, the sources' stamps lie further apart than that
(``unsynced``: a mix of two states, e.g. the twin's new joint state with its previous
privileged state, while the rest of the new state is a millisecond away). A reset-free policy (``task_onehot`` in its state keys) takes the one-hot of
the task named by the newest episode ``start`` event (:meth:`PolicyRunner.on_event`); until one
came it holds still (``missing``: no ``task``). The task does not go stale: it holds until the
next start event. New weights are loaded with :meth:`PolicyRunner.swap` on a background thread
(:meth:`PolicyRunner.swap_in_background`); the control path only reads one reference, so an
action is computed with either the old or the new weights, never a mix, and never waits.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import Algorithm, load_checkpoint
from .errors import PolicyError
from .obs import ObsSpec, images_from_rows, state_from_rows, unnormalize_action
from .reset_free import TASK_KEY, check_tasks, task_onehot

__all__ = [
    "HELD_SOURCES",
    "HOLD_REASONS",
    "SOURCES",
    "LatestObservations",
    "PolicyAction",
    "PolicyRunner",
    "needed_sources",
]

log = logging.getLogger(__name__)

# Observation sources a live policy reads: /twinloop/ee_pose (7: xyz + quaternion wxyz),
# /joint_states (rows joint_pos, joint_vel), the twin's /twinloop/sim/state privileged state
# (rows priv_<name>), the camera (rows <image_key>, (H, W, 3) uint8) and, for reset-free
# policies, the task of the running episode (rows task_onehot, from /twinloop/episode).
SOURCES: tuple[str, ...] = ("ee_pose", "joints", "priv", "image", "task")
# Sources that hold until replaced: never stale, and need not be new for the next action.
HELD_SOURCES: tuple[str, ...] = ("task",)
# Why ``act`` held still instead of acting.
HOLD_REASONS: tuple[str, ...] = ("missing", "stale", "unchanged", "unsynced", "error")


def needed_sources(obs: ObsSpec) -> tuple[str, ...]:
    """The sources an ObsSpec reads; PolicyError naming a state key no live source provides."""
    needed: list[str] = []
    for key in obs.state_keys:
        if key == "proprio":
            wants = ["ee_pose", "joints"]
        elif key == "ee_pose":
            wants = ["ee_pose"]
        elif key in ("joint_pos", "joint_vel"):
            wants = ["joints"]
        elif key.startswith("priv_"):
            wants = ["priv"]
        elif key == TASK_KEY:
            wants = ["task"]
        else:
            msg = (
                f"state key {key!r} has no live source; live keys are proprio, ee_pose, "
                f"joint_pos, joint_vel, priv_<name> (the twin's privileged state) and {TASK_KEY}"
            )
            raise PolicyError(msg)
        needed += [w for w in wants if w not in needed]
    if obs.image_key:
        needed.append("image")
    return tuple(needed)


class LatestObservations:
    """The newest value (as dataset-layout rows) and stamp of every source; shapes stay fixed.

    Thread-safe: message callbacks update it while the control timer reads it.
    """

    def __init__(self, obs: ObsSpec) -> None:
        self.spec = obs
        self.sources = needed_sources(obs)
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        self._stamps: dict[str, int] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def _check_shapes(self, rows: Mapping[str, np.ndarray]) -> None:
        for key, value in rows.items():
            shape = tuple(np.shape(value))
            first = self._shapes.setdefault(key, shape)
            if shape != first:
                msg = f"observation {key!r} changed shape mid-run: {first} -> {shape}"
                raise PolicyError(msg)

    def _put(self, source: str, rows: dict[str, np.ndarray], stamp_ns: int) -> None:
        with self._lock:
            known = self._rows.get(source)
            if known is not None and set(known) != set(rows):
                msg = f"observation source {source!r} changed keys mid-run: {sorted(known)} -> {sorted(rows)}"
                raise PolicyError(msg)
            self._check_shapes(rows)
            self._rows[source] = rows
            self._stamps[source] = int(stamp_ns)

    def update_ee_pose(self, pose: np.ndarray, stamp_ns: int) -> None:
        """``(7,)`` EE position + quaternion (w, x, y, z)."""
        self._put("ee_pose", {"ee_pose": np.asarray(pose, dtype=np.float32).ravel()}, stamp_ns)

    def update_joints(
        self, positions: np.ndarray, velocities: np.ndarray | None, stamp_ns: int
    ) -> None:
        rows = {"joint_pos": np.asarray(positions, dtype=np.float32).ravel()}
        if "joint_vel" in self.spec.state_keys:  # only then: drivers may leave velocity empty
            if velocities is None or not np.size(velocities):
                msg = "state key 'joint_vel' is needed but the joint state has no velocities"
                raise PolicyError(msg)
            rows["joint_vel"] = np.asarray(velocities, dtype=np.float32).ravel()
        self._put("joints", rows, stamp_ns)

    def update_privileged(self, state: Mapping[str, np.ndarray], stamp_ns: int) -> None:
        """The twin's privileged state (``{"cube_pos": ...}`` -> rows ``priv_cube_pos``)."""
        rows = {f"priv_{k}": np.asarray(v, dtype=np.float32).ravel() for k, v in state.items()}
        self._put("priv", rows, stamp_ns)

    def update_image(self, rgb: np.ndarray, stamp_ns: int) -> None:
        img = np.asarray(rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            msg = f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}"
            raise PolicyError(msg)
        self._put("image", {self.spec.image_key or "image": img}, stamp_ns)

    def update_task(self, onehot: np.ndarray, stamp_ns: int) -> None:
        """The running episode's task one-hot (rows ``task_onehot``)."""
        self._put("task", {TASK_KEY: np.asarray(onehot, dtype=np.float32).ravel()}, stamp_ns)

    def forget(self, source: str) -> None:
        """Drop a source's value (the actor holds still until a new one comes)."""
        with self._lock:
            self._rows.pop(source, None)
            self._stamps.pop(source, None)

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """(rows of every source merged, stamp per source), copied under the lock."""
        with self._lock:
            rows: dict[str, np.ndarray] = {}
            for source_rows in self._rows.values():
                rows.update(source_rows)
            return rows, dict(self._stamps)


@dataclass(frozen=True)
class PolicyAction:
    metric: np.ndarray  # (A,) metric action (m, rad, gripper in [-1, 1]) for /twinloop/action
    normalized: np.ndarray  # (A,) the policy's output in [-1, 1]
    stamp_ns: int  # the oldest stamp among the observations it was computed from
    version: int  # weights version that computed it


@dataclass(frozen=True)
class _Weights:
    algo: Algorithm
    version: int
    path: str


class PolicyRunner:
    """Runs a policy checkpoint on the newest observations; hot-swaps its weights.

    ``act(now_ns)`` computes one action from the observation rows held in :attr:`observations`
    when all needed sources are present, fresh (not older than ``max_obs_age_s``), new since
    the last action and, with ``max_spread_s``, stamped within that of each other; otherwise it
    returns None and counts the reason in :attr:`held`.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike[str],
        obs: ObsSpec,
        *,
        device: str | torch.device = "cpu",
        max_obs_age_s: float = 0.3,
        max_spread_s: float | None = None,
        deterministic: bool = True,
        version: int = 0,
        tasks: Sequence[str] = (),
    ) -> None:
        if not (math.isfinite(max_obs_age_s) and max_obs_age_s > 0):
            msg = f"max_obs_age_s must be a positive number of seconds, got {max_obs_age_s}"
            raise PolicyError(msg)
        if max_spread_s is not None and not (math.isfinite(max_spread_s) and max_spread_s >= 0):
            msg = f"max_spread_s must be >= 0 seconds or None, got {max_spread_s}"
            raise PolicyError(msg)
        self.tasks = tuple(tasks)  # task i of a start event -> one-hot i (reset-free policies)
        check_tasks(obs.state_keys, self.tasks)
        self.task = ""  # the task of the newest start event ("" = none yet)
        self.spec = obs
        self.device = torch.device(device)
        self.max_obs_age_ns = int(max_obs_age_s * 1e9)
        self.max_spread_ns = None if max_spread_s is None else int(max_spread_s * 1e9)
        self.deterministic = deterministic
        self.observations = LatestObservations(obs)
        algo, _ = load_checkpoint(checkpoint_path, device=self.device)
        if algo.spec.action_dim != obs.action_dim or algo.spec.image_size != obs.image_size:
            msg = (
                f"{checkpoint_path}: the policy acts in {algo.spec.action_dim} dims on images of "
                f"{algo.spec.image_size} px; the ObsSpec has {obs.action_dim} action values and "
                f"image_size {obs.image_size}"
            )
            raise PolicyError(msg)
        self._weights = _Weights(algo, version, str(checkpoint_path))  # read once per act()
        self._used: dict[str, int] = {}  # source stamps of the last action
        self.held: Counter[str] = Counter()  # hold reason -> count
        self.acted = 0
        self.last_hold = ""  # the last hold's detail
        self.swaps = 0
        self.swap_failures = 0
        self.last_swap_error = ""
        self._swapper: ThreadPoolExecutor | None = None

    # ----- weights -------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._weights.version

    @property
    def checkpoint(self) -> str:
        return self._weights.path

    def swap(self, path: str | os.PathLike[str], version: int) -> int:
        """Load ``path`` and make it the policy; PolicyError (old weights kept) when it is of
        another observation/action spec, unreadable, or not newer than the current version."""
        current = self._weights
        if version <= current.version:
            msg = (
                f"weights version {version} is not newer than the running version {current.version}"
            )
            raise PolicyError(msg)
        try:
            algo, _ = load_checkpoint(path, device=self.device, expect_spec=current.algo.spec)
        except PolicyError:
            self.swap_failures += 1
            raise
        self._weights = _Weights(algo, int(version), str(path))  # one reference assignment
        self.swaps += 1
        log.info("policy weights v%d from %s", version, path)
        return int(version)

    def swap_in_background(self, path: str | os.PathLike[str], version: int) -> Future[int]:
        """:meth:`swap` on the runner's loader thread (one at a time, in order of requests)."""
        if self._swapper is None:
            self._swapper = ThreadPoolExecutor(1, thread_name_prefix="policy-swap")

        def run() -> int:
            try:
                return self.swap(path, version)
            except PolicyError as err:
                self.last_swap_error = str(err)
                raise

        return self._swapper.submit(run)

    def close(self) -> None:
        if self._swapper is not None:
            self._swapper.shutdown(wait=True)
            self._swapper = None

    # ----- the task (reset-free) ------------------------------------------------------------------
    def on_event(self, event: Mapping[str, object], now_ns: int) -> None:
        """An /twinloop/episode event: a ``start`` sets the task one-hot (reset-free policies).

        PolicyError for a start event whose task is not one of :attr:`tasks`; the actor then
        holds still until a start event with a known task comes.
        """
        if TASK_KEY not in self.spec.state_keys or event.get("event") != "start":
            return
        task = event.get("task")
        if not isinstance(task, str) or task not in self.tasks:
            self.task = ""
            self.observations.forget("task")
            msg = f"episode start event names task {task!r}; the policy knows {list(self.tasks)}"
            raise PolicyError(msg)
        self.task = task
        self.observations.update_task(task_onehot(self.tasks.index(task), len(self.tasks)), now_ns)

    # ----- acting --------------------------------------------------------------------------------
    def _hold(self, reason: str, detail: str) -> None:
        self.held[reason] += 1
        self.last_hold = f"{reason}: {detail}"

    def _not_fresh(
        self, stamps: Mapping[str, int], now_ns: int, max_age_ns: int
    ) -> tuple[str, str] | None:
        """Why the observations cannot give an action now (reason, detail), or None."""
        sources = self.observations.sources
        missing = [s for s in sources if s not in stamps]
        if missing:
            why = " (no episode start event with a known task)" if "task" in missing else ""
            return "missing", f"no {missing} yet{why}"
        sources = tuple(s for s in sources if s not in HELD_SOURCES)
        stale = [s for s in sources if abs(now_ns - stamps[s]) > max_age_ns]
        if stale:
            ages = {s: round((now_ns - stamps[s]) / 1e9, 3) for s in stale}
            return "stale", f"ages {ages} s > {max_age_ns / 1e9} s"
        same = [s for s in sources if self._used.get(s) == stamps[s]]
        if same:
            return "unchanged", f"{same} not new since the last action"
        if self.max_spread_ns is not None and sources:
            newest = max(stamps[s] for s in sources)
            behind = [s for s in sources if newest - stamps[s] > self.max_spread_ns]
            if behind:
                lags = {s: round((newest - stamps[s]) / 1e9, 3) for s in behind}
                return (
                    "unsynced",
                    f"{lags} s behind the newest source > {self.max_spread_ns / 1e9} s",
                )
        return None

    def observe(self, rows: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Batched policy observation (batch 1) from merged rows; PolicyError on bad rows."""
        batch = {k: np.asarray(v)[None] for k, v in rows.items()}
        state = state_from_rows(batch, self.spec)
        obs = {"state": torch.as_tensor(state, device=self.device)}
        if self.spec.image_key:
            obs["image"] = torch.as_tensor(images_from_rows(batch, self.spec), device=self.device)
        return obs

    def act(
        self, now_ns: int, *, count_hold: bool = True, max_age_s: float | None = None
    ) -> PolicyAction | None:
        """An action from fresh observations, or None (the reason is counted in :attr:`held`
        unless ``count_hold`` is false: a caller that only asks whether an action is ready yet).

        ``max_age_s`` tightens ``max_obs_age_s`` for this call: a caller that would rather wait
        for the next sample than act on one this old.

        PolicyError when the observation does not fit the policy (the caller logs it and holds
        still; it is counted as ``error``).
        """
        rows, stamps = self.observations.snapshot()
        max_age_ns = self.max_obs_age_ns
        if max_age_s is not None:
            max_age_ns = min(max_age_ns, int(max_age_s * 1e9))
        why = self._not_fresh(stamps, now_ns, max_age_ns)
        if why is not None:
            if count_hold:
                self._hold(*why)
            return None
        weights = self._weights  # the only read of the weights on the control path
        try:
            obs = self.observe(rows)
            state_dim = int(obs["state"].shape[1])
            if state_dim != weights.algo.spec.state_dim:
                msg = (
                    f"observation state has {state_dim} values from {list(self.spec.state_keys)}, "
                    f"the policy (v{weights.version}) expects {weights.algo.spec.state_dim}"
                )
                raise PolicyError(msg)
        except PolicyError as err:
            self._hold("error", str(err))
            raise
        normalized = weights.algo.act(obs, deterministic=self.deterministic)[0]
        a = normalized.detach().cpu().numpy().astype(np.float32)
        used = {s: stamps[s] for s in self.observations.sources if s not in HELD_SOURCES}
        self._used = used
        self.acted += 1
        return PolicyAction(
            metric=unnormalize_action(np.clip(a, -1.0, 1.0), self.spec.action_scale),
            normalized=a,
            stamp_ns=min(used.values()) if used else int(now_ns),
            version=weights.version,
        )

    def status(self) -> dict[str, object]:
        return {
            "version": self.version,
            "checkpoint": Path(self.checkpoint).name,
            "task": self.task,
            "acted": self.acted,
            "held": {r: int(self.held.get(r, 0)) for r in HOLD_REASONS},
            "last_hold": self.last_hold,
            "swaps": self.swaps,
            "swap_failures": self.swap_failures,
            "last_swap_error": self.last_swap_error,
        }
