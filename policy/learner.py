"""The learner half of the actor/learner split, ROS-free: streams in, episodes, updates, weights.

:class:`TransitionAssembler` turns the message streams of a running cell (observation ticks,
applied actions, stamped rewards, episode events) into whole episodes in the
:meth:`~twinloop.policy.buffers.ReplayBuffer.add_episode` layout. :class:`Learner` adds them to
its online buffer, keeps ``updates ~= utd * env steps``, publishes versioned weight files
(``policy_v{N}.safetensors``, written atomically) and saves itself (algorithm + online buffer +
counters) to ``learner.safetensors`` so a restarted learner resumes where it stopped.

Assembly rules (docs/actor_learner.md):

- an episode holds the actions received between its ``start`` event and its end event
  (``success`` / ``failure``); ``discard`` and ``quit`` drop it; a ``start`` while one is open
  drops the open one. It is assembled ``wait_s`` after its end event, so late observations and
  rewards (a VLM reward comes hundreds of ms after its frame) are in;
- each action is paired with the newest observation tick stamped no later than the action's stamp
  + ``match_tolerance_s`` (the policy stamps an action with its observation's stamp; a teleop with
  the time it sent it). When two actions pair with the same tick, the later one counts (it is the
  one the arm applied). Step t's next observation is the tick of step t + 1; the last step's is the
  first tick after its own (a last step without one is dropped);
- rewards: ``reward_source="success"``: -1 per step, 0 on the last step of a ``success`` episode
  (RoboFuME). ``"topic"``: the /twinloop/reward value whose frame stamp is nearest to the step's
  next observation (within ``reward_tolerance_s``); a step without one falls back to the success
  rule (counted in :attr:`TransitionAssembler.counts` as ``reward_fallback``); a reward scored
  for another task than the episode's (``task`` of :meth:`TransitionAssembler.on_reward`) is not
  used (``reward_other_task``);
- ``terminated`` is True exactly for episodes that end with ``success``; ``failure`` episodes are
  time-limit truncations (they keep bootstrapping);
- reset-free (``task_onehot`` in the state keys): every row of an episode gets the one-hot of the
  task its ``start`` event names (its index in ``tasks``), whatever the ticks were taken under; an
  episode whose start event names no known task is dropped (``dropped_unknown_task``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .base import Algorithm, load_checkpoint, save_checkpoint
from .buffers import MixedSampler, ReplayBuffer
from .common import Batch
from .errors import PolicyError
from .obs import ObsSpec, images_from_rows, normalize_action, state_from_rows
from .reset_free import TASK_KEY, check_tasks, task_onehot

__all__ = [
    "LEARNER_CHECKPOINT",
    "REWARD_SOURCES",
    "AssembledEpisode",
    "Learner",
    "LearnerConfig",
    "TransitionAssembler",
]

log = logging.getLogger(__name__)

LEARNER_CHECKPOINT = "learner.safetensors"
REWARD_SOURCES = ("success", "topic")
_END_EVENTS = ("success", "failure")
_DROP_EVENTS = ("discard", "quit")


@dataclass(frozen=True)
class AssembledEpisode:
    states: np.ndarray  # (T + 1, S) float32
    actions: np.ndarray  # (T, A) normalised to [-1, 1]
    rewards: np.ndarray  # (T,) float32
    terminated: bool  # the last transition is a terminal (the episode ended in success)
    images: np.ndarray | None  # (T + 1, 3, s, s) uint8 for image policies
    episode: int  # the events' episode number
    success: bool  # ended with a success event
    matched_rewards: int  # steps whose reward came from /twinloop/reward
    task: str = ""  # the task its start event named ("" when none)

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class _Open:
    episode: int
    start_ns: int
    ticks: list[tuple[int, np.ndarray, np.ndarray | None]]  # (stamp, state, image)
    actions: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (stamp, metric)
    rewards: list[tuple[int, float]] = field(default_factory=list)  # (frame stamp, value)
    end: str = ""  # "success" / "failure" once ended
    end_ns: int = 0  # when the end event came (receiver clock)
    task: int | None = None  # index in the assembler's tasks (reset-free), None = unknown
    task_name: str = ""  # the task the start event named


class TransitionAssembler:
    """Message streams in, :class:`AssembledEpisode` out (rules in the module docstring)."""

    def __init__(
        self,
        obs: ObsSpec,
        control_hz: float,
        *,
        reward_source: str = "success",
        match_tolerance_s: float | None = None,
        reward_tolerance_s: float | None = None,
        wait_s: float = 0.5,
        keep_ticks_s: float = 1.0,
        tasks: Sequence[str] = (),
    ) -> None:
        if not (math.isfinite(control_hz) and control_hz > 0):
            msg = f"control_hz must be > 0, got {control_hz}"
            raise PolicyError(msg)
        if reward_source not in REWARD_SOURCES:
            msg = f"unknown reward_source {reward_source!r}. Available: {list(REWARD_SOURCES)}"
            raise PolicyError(msg)
        self.tasks = tuple(tasks)  # task i of a start event -> task_onehot i (reset-free)
        check_tasks(obs.state_keys, self.tasks)
        half = 0.5 / control_hz
        self.spec = obs
        # ticks carry no task (it is the episode's, set at assembly): the rows on_tick expects
        keys = tuple(k for k in obs.state_keys if k != TASK_KEY)
        self.tick_spec = (
            dataclasses.replace(obs, state_keys=keys) if keys != obs.state_keys else obs
        )
        self._task_at: int | None = None  # offset of the task_onehot columns in the state
        self.control_hz = control_hz
        self.reward_source = reward_source
        self.match_tol_ns = int((half if match_tolerance_s is None else match_tolerance_s) * 1e9)
        self.reward_tol_ns = int((half if reward_tolerance_s is None else reward_tolerance_s) * 1e9)
        self.wait_ns = int(wait_s * 1e9)
        self.keep_ns = int(keep_ticks_s * 1e9)
        self._recent: deque[tuple[int, np.ndarray, np.ndarray | None]] = deque()
        self._open: _Open | None = None
        self._closing: list[_Open] = []
        self._state_dim: int | None = None
        self.counts: Counter[str] = Counter()  # episodes, steps, drops by reason

    # ----- inputs ---------------------------------------------------------------------------------
    def on_tick(self, rows: Mapping[str, np.ndarray], stamp_ns: int) -> None:
        """One observation (unbatched dataset-layout rows) at ``stamp_ns``."""
        batch = {k: np.asarray(v)[None] for k, v in rows.items()}
        if self.tick_spec is not self.spec:  # a placeholder, set per episode at assembly
            batch[TASK_KEY] = np.zeros((1, len(self.tasks)), dtype=np.float32)
            if self._task_at is None:
                before = self.spec.state_keys[: self.spec.state_keys.index(TASK_KEY)]
                self._task_at = (
                    state_from_rows(batch, dataclasses.replace(self.spec, state_keys=before)).shape[
                        1
                    ]
                    if before
                    else 0
                )
        state = state_from_rows(batch, self.spec)[0]
        if self._state_dim is None:
            self._state_dim = len(state)
        elif len(state) != self._state_dim:
            msg = f"observation state changed size mid-run: {self._state_dim} -> {len(state)}"
            raise PolicyError(msg)
        image = images_from_rows(batch, self.spec)[0] if self.spec.image_key else None
        tick = (int(stamp_ns), state, image)
        self._recent.append(tick)
        while self._recent and self._recent[0][0] < stamp_ns - self.keep_ns:
            self._recent.popleft()
        for ep in (self._open, *self._closing):
            if ep is not None:
                ep.ticks.append(tick)

    def on_action(self, action: np.ndarray, stamp_ns: int) -> None:
        """An applied metric action (what /twinloop/safe_action carried)."""
        a = np.asarray(action, dtype=np.float32).ravel()
        if len(a) != self.spec.action_dim:
            msg = f"action has {len(a)} values, the ObsSpec's action_scale {self.spec.action_dim}"
            raise PolicyError(msg)
        if self._open is None:
            self.counts["action_outside_episode"] += 1
            return
        self._open.actions.append((int(stamp_ns), a))

    def on_reward(self, value: float, frame_stamp_ns: int, *, task: str = "") -> None:
        """A /twinloop/reward value; ``task``: the task whose model scored it (one model per
        task, reset-free): an episode of another task does not take it."""
        if not math.isfinite(value):
            msg = f"reward must be finite, got {value}"
            raise PolicyError(msg)
        for ep in (self._open, *self._closing):
            if ep is None:
                continue
            if task and ep.task_name and task != ep.task_name:
                self.counts["reward_other_task"] += 1
                continue
            ep.rewards.append((int(frame_stamp_ns), float(value)))

    def on_event(self, event: Mapping[str, Any], now_ns: int) -> None:
        """An /twinloop/episode event (``{"event": ..., "episode": n, ...}``) received at now_ns."""
        kind = str(event.get("event"))
        episode = int(event.get("episode", -1))
        if kind == "start":
            if self._open is not None:
                self.counts["dropped_unended"] += 1
            # the reset observation may have come just before the start event
            ticks = [t for t in self._recent if t[0] >= now_ns - self.match_tol_ns * 4]
            task = event.get("task")
            index = self.tasks.index(task) if isinstance(task, str) and task in self.tasks else None
            name = task if isinstance(task, str) else ""
            self._open = _Open(episode, int(now_ns), list(ticks), task=index, task_name=name)
        elif kind in _END_EVENTS:
            if self._open is None:
                self.counts["end_without_start"] += 1
                return
            self._open.end, self._open.end_ns = kind, int(now_ns)
            self._closing.append(self._open)
            self._open = None
        elif kind in _DROP_EVENTS:
            if self._open is not None:
                self.counts[f"dropped_{kind}"] += 1
            self._open = None

    def poll(self, now_ns: int) -> list[AssembledEpisode]:
        """Episodes whose end event is at least ``wait_s`` old, assembled (empty ones dropped)."""
        ready = [ep for ep in self._closing if now_ns - ep.end_ns >= self.wait_ns]
        self._closing = [ep for ep in self._closing if now_ns - ep.end_ns < self.wait_ns]
        out = []
        for ep in ready:
            if self.tick_spec is not self.spec and ep.task is None:
                self.counts["dropped_unknown_task"] += 1
                continue
            assembled = self._assemble(ep)
            if assembled is None:
                self.counts["dropped_empty"] += 1
            else:
                self.counts["episodes"] += 1
                self.counts["steps"] += len(assembled)
                out.append(assembled)
        return out

    @property
    def in_episode(self) -> bool:
        return self._open is not None

    # ----- assembly -------------------------------------------------------------------------------
    def _pair(self, ep: _Open) -> tuple[list[int], dict[int, np.ndarray]]:
        """Tick stamps (sorted, unique) and, per tick index, the action applied on it."""
        ticks = sorted({t[0]: t for t in ep.ticks}.values(), key=lambda t: t[0])
        ep.ticks = ticks
        stamps = [t[0] for t in ticks]
        by_tick: dict[int, np.ndarray] = {}
        for stamp, action in sorted(ep.actions, key=lambda x: x[0]):
            i = int(np.searchsorted(stamps, stamp + self.match_tol_ns, side="right")) - 1
            if i < 0:
                self.counts["action_without_obs"] += 1
                continue
            if i in by_tick:
                self.counts["action_replaced"] += 1
            by_tick[i] = action
        return stamps, by_tick

    def _assemble(self, ep: _Open) -> AssembledEpisode | None:
        stamps, by_tick = self._pair(ep)
        steps = sorted(by_tick)
        if steps and steps[-1] + 1 >= len(stamps):  # the last action's outcome was never seen
            self.counts["last_step_without_next_obs"] += 1
            steps = steps[:-1]
        if not steps:
            return None
        rows = [*steps, steps[-1] + 1]
        states = np.stack([ep.ticks[i][1] for i in rows]).astype(np.float32)
        if ep.task is not None and self._task_at is not None:
            at, n = self._task_at, len(self.tasks)
            states[:, at : at + n] = task_onehot(ep.task, n)
        images = None
        if self.spec.image_key:
            images = np.stack([ep.ticks[i][2] for i in rows])  # type: ignore[misc]
        actions = normalize_action(np.stack([by_tick[i] for i in steps]), self.spec.action_scale)
        success = ep.end == "success"
        rewards, matched = self._rewards(ep, [stamps[i] for i in rows[1:]], success)
        return AssembledEpisode(
            states=states,
            actions=actions.astype(np.float32),
            rewards=rewards,
            terminated=success,
            images=images,
            episode=ep.episode,
            success=success,
            matched_rewards=matched,
            task=ep.task_name,
        )

    def _rewards(self, ep: _Open, next_stamps: list[int], success: bool) -> tuple[np.ndarray, int]:
        t = len(next_stamps)
        rewards = np.full(t, -1.0, dtype=np.float32)
        if success:
            rewards[-1] = 0.0
        if self.reward_source != "topic":
            return rewards, 0
        got = sorted(ep.rewards)
        r_stamps = np.array([s for s, _ in got], dtype=np.int64)
        matched = 0
        for i, stamp in enumerate(next_stamps):
            if not len(r_stamps):
                break
            j = int(np.argmin(np.abs(r_stamps - stamp)))
            if abs(int(r_stamps[j]) - stamp) <= self.reward_tol_ns:
                rewards[i] = got[j][1]
                matched += 1
        self.counts["reward_fallback"] += t - matched
        return rewards, matched


# ----- the learner ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LearnerConfig:
    utd: float = 1.0  # gradient updates per environment step (RLPD: up to 20)
    min_online: int = 100  # online transitions before the first update
    publish_every_s: float = 10.0  # announce new weights at most this often (after new updates)
    offline_fraction: float = 0.5  # share of each batch from the offline buffer (if there is one)
    capacity: int = 200_000  # online replay capacity, transitions
    keep_versions: int = 3  # weight files kept in out_dir (older ones are deleted)
    seed: int = 0  # sampling seed of the online buffer and the mixer

    def __post_init__(self) -> None:
        if not (math.isfinite(self.utd) and self.utd > 0):
            msg = f"utd must be > 0, got {self.utd}"
            raise PolicyError(msg)
        if self.min_online < 1 or self.capacity < 1 or self.keep_versions < 1:
            msg = (
                f"min_online, capacity and keep_versions must be >= 1, got {self.min_online}, "
                f"{self.capacity}, {self.keep_versions}"
            )
            raise PolicyError(msg)
        if not (math.isfinite(self.publish_every_s) and self.publish_every_s >= 0):
            msg = f"publish_every_s must be >= 0, got {self.publish_every_s}"
            raise PolicyError(msg)
        if not 0.0 <= self.offline_fraction <= 1.0:
            msg = f"offline_fraction must be in [0, 1], got {self.offline_fraction}"
            raise PolicyError(msg)


class Learner:
    """Online buffer + algorithm + counters; not thread-safe (the node serialises calls)."""

    def __init__(
        self,
        algo: Algorithm,
        config: LearnerConfig,
        out_dir: str | os.PathLike[str],
        *,
        offline: ReplayBuffer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.algo = algo
        self.config = config
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spec = algo.spec
        self.online = ReplayBuffer(
            config.capacity,
            int(spec.state_dim),
            int(spec.action_dim),
            int(spec.image_size),
            device=algo.device,
            seed=config.seed,
        )
        self.offline = offline
        self._mixer = (
            MixedSampler(offline, self.online, config.offline_fraction, seed=config.seed)
            if offline is not None and config.offline_fraction > 0
            else None
        )
        self.gamma = float(algo.config.gamma)
        self.batch_size = int(algo.config.batch_size)
        # SAC/RLPD do ``config.utd`` critic steps per update() call on utd * batch_size rows
        self.steps_per_call = int(getattr(algo.config, "utd", 1) or 1)
        self.version = 0
        self.env_steps = 0
        self.updates = 0  # gradient (critic) steps
        self.episodes = 0
        self._published_updates = 0
        self._last_publish = clock()
        self._clock = clock
        self.metrics: dict[str, float] = {}
        set_online = getattr(algo, "set_online", None)
        if callable(set_online):
            set_online(True)

    # ----- data -----------------------------------------------------------------------------------
    def on_episode(self, ep: AssembledEpisode) -> None:
        self.online.add_episode(
            ep.states,
            ep.actions,
            ep.rewards,
            terminated=ep.terminated,
            images=ep.images,
            gamma=self.gamma,
        )
        self.env_steps += len(ep)
        self.episodes += 1

    def _sample(self, n: int) -> Batch:
        if self._mixer is not None:
            return self._mixer.sample(n)
        return self.online.sample(n)

    # ----- training -------------------------------------------------------------------------------
    def due_updates(self, env_steps_seen: int | None = None) -> int:
        """Gradient steps still owed to keep ``updates ~= utd * env steps`` (0 before min_online)."""
        if len(self.online) < self.config.min_online:
            return 0
        steps = self.env_steps if env_steps_seen is None else env_steps_seen
        return max(0, math.floor(self.config.utd * steps) - self.updates)

    def train_for(self, env_steps_seen: int | None = None, *, max_calls: int | None = None) -> int:
        """Run the updates owed (at most ``max_calls`` update() calls); gradient steps run."""
        done = 0
        calls = 0
        while self.due_updates(env_steps_seen) > 0 and (max_calls is None or calls < max_calls):
            batch = self._sample(self.steps_per_call * self.batch_size).to(self.algo.device)
            self.metrics = self.algo.update(batch)
            self.updates += self.steps_per_call
            done += self.steps_per_call
            calls += 1
        return done

    # ----- weights --------------------------------------------------------------------------------
    def should_publish(self) -> bool:
        fresh = self.updates > self._published_updates
        return fresh and self._clock() - self._last_publish >= self.config.publish_every_s

    def publish(self) -> tuple[int, Path]:
        """Write ``policy_v{N}.safetensors`` (N = last version + 1) atomically; (N, path)."""
        version = self.version + 1
        path = self.out_dir / f"policy_v{version}.safetensors"
        save_checkpoint(self.algo, path, extra={"version": version, "updates": self.updates})
        self.version = version
        self._published_updates = self.updates
        self._last_publish = self._clock()
        self._prune()
        return version, path

    def _prune(self) -> None:
        old = self.version - self.config.keep_versions
        for v in range(max(1, old - 10), old + 1):
            for suffix in (".safetensors", ".json"):
                (self.out_dir / f"policy_v{v}{suffix}").unlink(missing_ok=True)

    def latest(self) -> tuple[int, Path] | None:
        """The newest published (version, path), if any."""
        if not self.version:
            return None
        return self.version, self.out_dir / f"policy_v{self.version}.safetensors"

    # ----- learner checkpoint -----------------------------------------------------------------------
    def save(self) -> Path:
        """``out_dir/learner.safetensors``: algorithm, online buffer, counters, sampler RNGs."""
        extra: dict[str, Any] = {
            "version": self.version,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "published_updates": self._published_updates,
            "online": self.online.state_dict(),
            "config": dataclasses.asdict(self.config),
        }
        if self._mixer is not None:
            extra["mixer"] = self._mixer.state_dict()
        return save_checkpoint(self.algo, self.out_dir / LEARNER_CHECKPOINT, extra=extra)

    @classmethod
    def resume(
        cls,
        out_dir: str | os.PathLike[str],
        config: LearnerConfig,
        *,
        offline: ReplayBuffer | None = None,
        device: str = "cpu",
        clock: Callable[[], float] = time.monotonic,
    ) -> Learner | None:
        """The learner saved in ``out_dir`` (None when there is none)."""
        path = Path(out_dir) / LEARNER_CHECKPOINT
        if not path.exists():
            return None
        algo, extra = load_checkpoint(path, device=device)
        saved_capacity = int(extra["online"]["capacity"])
        if saved_capacity != config.capacity:
            log.warning("resuming with the saved online capacity %d", saved_capacity)
            config = dataclasses.replace(config, capacity=saved_capacity)
        learner = cls(algo, config, out_dir, offline=offline, clock=clock)
        learner.online.load_state_dict(extra["online"])
        if learner._mixer is not None and "mixer" in extra:
            learner._mixer.load_state_dict(extra["mixer"])
        learner.version = int(extra["version"])
        learner.env_steps = int(extra["env_steps"])
        learner.updates = int(extra["updates"])
        learner.episodes = int(extra["episodes"])
        learner._published_updates = int(extra["published_updates"])
        return learner

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "episodes": self.episodes,
            "online_transitions": len(self.online),
            "offline_transitions": len(self.offline) if self.offline is not None else 0,
            "algo": str(self.algo.config.type),
            "metrics": {k: round(float(v), 5) for k, v in self.metrics.items()},
        }
