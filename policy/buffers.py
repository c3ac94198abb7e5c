"""Replay buffers for offline-to-online RL: episodic storage, offline loading, 50/50 mixing.

A :class:`ReplayBuffer` stores every observation row once (row t is the next observation of
transition t - 1 and the observation of transition t) in ring storage on its device (GPU-resident
batches when the device is CUDA). Capacity counts transitions; when it is reached, whole oldest
episodes are evicted. :func:`load_offline` reads an :class:`~twinloop.datasets.store.EpisodeStore`
and labels rewards per a :class:`RewardSpec`; :class:`MixedSampler` draws an exact share of every
batch from the offline buffer (Cal-QL / RLPD symmetric sampling).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .common import Batch, mc_returns
from .errors import PolicyError
from .obs import ObsSpec, images_from_rows, normalize_action, state_from_rows

__all__ = [
    "EpisodeLabels",
    "MixedSampler",
    "ReplayBuffer",
    "RewardSpec",
    "label_episode",
    "load_offline",
]

log = logging.getLogger(__name__)

_SOURCES = ("success", "success01")  # the plain sources; "key:<name>" and "model:<path>" too


@dataclass(frozen=True)
class RewardSpec:
    # "success": -1 per step, 0 + terminal at the first success row (RoboFuME; the episode is
    # cut there); "success01": 0/1 + terminal; "key:<name>": a dataset column as the reward
    # (dense, no terminal unless terminal_on_success); "model:<checkpoint>": relabel frames with a
    # twinloop.vlm_reward checkpoint, reward = RewardOutput.rewards, its success flag terminates;
    # "model:TASK=PATH,TASK=PATH": one checkpoint per task, chosen by each episode's twin_task
    # (reset-free stores of merge_task_stores)
    source: str = "success"
    scale: float = 1.0  # reward = scale * r + shift
    shift: float = 0.0  # added after scaling
    terminal_on_success: bool = True  # for key:/model: sources: end the episode at first success

    def __post_init__(self) -> None:
        kind, _, arg = self.source.partition(":")
        if not (self.source in _SOURCES or (kind in ("key", "model") and arg)):
            msg = (
                f"unknown reward source {self.source!r}. Available: 'success', 'success01', "
                "'key:<dataset key>', 'model:<reward checkpoint>'"
            )
            raise PolicyError(msg)
        for name in ("scale", "shift"):
            value = getattr(self, name)
            if not math.isfinite(value):
                msg = f"reward {name} must be finite, got {value!r}"
                raise PolicyError(msg)

    @property
    def kind(self) -> str:
        """ "success", "success01", "key" or "model"."""
        return self.source.partition(":")[0]

    @property
    def argument(self) -> str:
        """The key name or checkpoint path of key:/model: sources ("" otherwise)."""
        return self.source.partition(":")[2]


# ----- the buffer ------------------------------------------------------------------------------
@dataclass
class _Episode:
    tr_start: int  # first transition slot (ring index)
    length: int  # transitions
    row_start: int  # first row slot (ring index); the episode has length + 1 rows


class ReplayBuffer:
    """Frames stored once (obs row t and its next row t+1 share storage); capacity in transitions;
    whole oldest episodes are evicted first.

    Storage is torch tensors on ``device``; ``sample`` draws indices with the buffer's own seeded
    ``np.random.Generator`` (saved in :meth:`state_dict`, so a resumed run samples the same next
    batches). Row storage grows on demand (short episodes need more rows per transition), up to
    ``2 * capacity`` rows; ``rows`` sets the initial row slots.
    """

    def __init__(
        self,
        capacity: int,
        state_dim: int,
        action_dim: int,
        image_size: int = 0,
        *,
        device: str | torch.device = "cpu",
        seed: int = 0,
        rows: int | None = None,
    ) -> None:
        for name, value, low in (
            ("capacity", capacity, 1),
            ("state_dim", state_dim, 0),
            ("action_dim", action_dim, 1),
            ("image_size", image_size, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                msg = f"replay buffer {name} must be an int >= {low}, got {value!r}"
                raise PolicyError(msg)
        if state_dim == 0 and image_size == 0:
            msg = "a replay buffer needs state_dim > 0, image_size > 0, or both"
            raise PolicyError(msg)
        self.capacity = capacity
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.image_size = image_size
        self.device = torch.device(device)
        self._rng = np.random.default_rng(seed)
        default_rows = capacity + capacity // 8 + 1
        self._row_cap = min(max(rows or default_rows, capacity + 1), 2 * capacity)
        self._alloc_transitions()
        self._states, self._images = self._alloc_rows(self._row_cap)
        self._reset_pointers()

    # ----- storage -----------------------------------------------------------------------------
    def _alloc_transitions(self) -> None:
        n, dev = self.capacity, self.device
        self._actions = torch.zeros((n, self.action_dim), dtype=torch.float32, device=dev)
        self._rewards = torch.zeros(n, dtype=torch.float32, device=dev)
        self._dones = torch.zeros(n, dtype=torch.float32, device=dev)
        self._mc = torch.zeros(n, dtype=torch.float32, device=dev)
        self._obs_idx = torch.zeros(n, dtype=torch.long, device=dev)
        self._next_idx = torch.zeros(n, dtype=torch.long, device=dev)

    def _alloc_rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        states = torch.zeros((n, self.state_dim), dtype=torch.float32, device=self.device)
        images = None
        if self.image_size:
            shape = (n, 3, self.image_size, self.image_size)
            images = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        return states, images

    def _reset_pointers(self) -> None:
        self._episodes: deque[_Episode] = deque()
        self._size = 0  # live transitions
        self._rows_used = 0  # live rows
        self._tr_head = 0  # next transition slot
        self._row_head = 0  # next row slot

    def __len__(self) -> int:
        return self._size

    @property
    def n_episodes(self) -> int:
        return len(self._episodes)

    @property
    def episode_lengths(self) -> list[int]:
        """Transitions of every held episode, oldest first."""
        return [e.length for e in self._episodes]

    def _ring(self, start: int, n: int, cap: int) -> torch.Tensor:
        return (torch.arange(n, device=self.device) + start) % cap

    # ----- adding ------------------------------------------------------------------------------
    def add_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        *,
        terminated: bool,
        images: np.ndarray | None = None,
        mc_returns: np.ndarray | None = None,
        gamma: float = 0.99,
    ) -> None:
        """Add one episode: T transitions over T + 1 observation rows (the last is the final obs).

        ``terminated``: the last transition is a terminal (done = 1); otherwise the episode was
        truncated and keeps bootstrapping. ``mc_returns`` default: computed with ``gamma``.
        """
        s, a, r, img = self._check_episode(states, actions, rewards, images)
        t = len(a)
        if mc_returns is None:
            mc = _episode_returns(r, gamma, terminated)
        else:
            mc = np.asarray(mc_returns, dtype=np.float32).reshape(-1)
            if mc.shape != (t,):
                msg = f"mc_returns must have shape ({t},), got {np.shape(mc_returns)}"
                raise PolicyError(msg)
        done = np.zeros(t, dtype=np.float32)
        done[-1] = float(bool(terminated))
        while self._size + t > self.capacity:
            self._evict_oldest()
        if self._rows_used + t + 1 > self._row_cap:
            self._grow_rows(self._rows_used + t + 1)
        rows = self._ring(self._row_head, t + 1, self._row_cap)
        slots = self._ring(self._tr_head, t, self.capacity)
        self._write_rows(rows, s, img)
        self._actions[slots] = self._tensor(a)
        self._rewards[slots] = self._tensor(r)
        self._dones[slots] = self._tensor(done)
        self._mc[slots] = self._tensor(mc)
        self._obs_idx[slots] = rows[:-1]
        self._next_idx[slots] = rows[1:]
        self._episodes.append(_Episode(self._tr_head, t, self._row_head))
        self._size += t
        self._rows_used += t + 1
        self._tr_head = (self._tr_head + t) % self.capacity
        self._row_head = (self._row_head + t + 1) % self._row_cap

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def _write_rows(
        self, rows: torch.Tensor, states: np.ndarray, images: np.ndarray | None
    ) -> None:
        self._states[rows] = self._tensor(states)
        if self._images is not None and images is not None:
            self._images[rows] = self._tensor(images)

    def _check_episode(
        self,
        states: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        images: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        a = np.asarray(actions, dtype=np.float32)
        t = len(a)
        s = np.asarray(states, dtype=np.float32)
        r = np.asarray(rewards, dtype=np.float32)
        problem = ""
        if a.ndim != 2 or a.shape[1] != self.action_dim or t < 1:
            problem = f"actions must be (T >= 1, {self.action_dim}), got {a.shape}"
        elif t > self.capacity:
            problem = f"an episode of {t} transitions does not fit capacity {self.capacity}"
        elif s.shape != (t + 1, self.state_dim):
            problem = f"states must be (T + 1, S) = ({t + 1}, {self.state_dim}), got {s.shape}"
        elif r.shape != (t,):
            problem = f"rewards must have shape ({t},), got {r.shape}"
        elif not (np.isfinite(s).all() and np.isfinite(a).all() and np.isfinite(r).all()):
            problem = "states, actions and rewards must be finite (found NaN or inf)"
        elif np.abs(a).max() > 1.0 + 1e-5:
            problem = f"actions must be normalised to [-1, 1], found {np.abs(a).max():.4g}"
        if problem:
            raise PolicyError(problem)
        img = self._check_images(images, t + 1)
        return s, np.clip(a, -1.0, 1.0), r, img

    def _check_images(self, images: np.ndarray | None, n: int) -> np.ndarray | None:
        if not self.image_size:
            if images is not None:
                msg = "images given to a buffer with image_size 0"
                raise PolicyError(msg)
            return None
        shape = (n, 3, self.image_size, self.image_size)
        if images is None or images.shape != shape or images.dtype != np.uint8:
            got = None if images is None else f"{images.shape} {images.dtype}"
            msg = f"images must be {shape} uint8, got {got}"
            raise PolicyError(msg)
        return images

    def _evict_oldest(self) -> None:
        ep = self._episodes.popleft()
        self._size -= ep.length
        self._rows_used -= ep.length + 1

    def _grow_rows(self, needed: int) -> None:
        """Reallocate row storage (live rows copied to the front, indices remapped)."""
        new_cap = min(max(needed, self._row_cap * 3 // 2), 2 * self.capacity)
        states, images = self._alloc_rows(new_cap)
        first = self._episodes[0].row_start if self._episodes else 0
        src = self._ring(first, self._rows_used, self._row_cap)
        states[: self._rows_used] = self._states[src]
        if images is not None and self._images is not None:
            images[: self._rows_used] = self._images[src]
        if self._size:
            slots = self._ring(self._episodes[0].tr_start, self._size, self.capacity)
            self._obs_idx[slots] = (self._obs_idx[slots] - first) % self._row_cap
            self._next_idx[slots] = (self._next_idx[slots] - first) % self._row_cap
        for ep in self._episodes:
            ep.row_start = (ep.row_start - first) % self._row_cap
        self._states, self._images = states, images
        self._row_cap = new_cap
        self._row_head = self._rows_used
        log.debug("replay buffer rows grown to %d", new_cap)

    # ----- sampling ----------------------------------------------------------------------------
    def sample(self, n: int) -> Batch:
        """``n`` transitions drawn uniformly (with replacement), as a Batch on ``self.device``."""
        if n < 1:
            msg = f"sample size must be >= 1, got {n}"
            raise PolicyError(msg)
        if self._size == 0:
            msg = "cannot sample from an empty replay buffer"
            raise PolicyError(msg)
        offsets = self._rng.integers(0, self._size, size=n)
        start = self._episodes[0].tr_start
        idx = self._tensor((offsets + start) % self.capacity)
        return self.gather(idx)

    def gather(self, slots: torch.Tensor) -> Batch:
        """The transitions at ring ``slots`` (a long tensor on the device) as a Batch."""
        take = torch.index_select  # ~7x faster than x[idx] for image rows on the CPU
        obs_rows, next_rows = take(self._obs_idx, 0, slots), take(self._next_idx, 0, slots)
        obs = {"state": take(self._states, 0, obs_rows)}
        next_obs = {"state": take(self._states, 0, next_rows)}
        if self._images is not None:
            obs["image"] = take(self._images, 0, obs_rows)
            next_obs["image"] = take(self._images, 0, next_rows)
        return Batch(
            obs=obs,
            action=take(self._actions, 0, slots),
            reward=take(self._rewards, 0, slots),
            next_obs=next_obs,
            done=take(self._dones, 0, slots),
            mc_return=take(self._mc, 0, slots),
        )

    def state_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of obs["state"] over the held transitions (for state normalisation)."""
        if self._size == 0:
            msg = "cannot compute state statistics of an empty replay buffer"
            raise PolicyError(msg)
        start = self._episodes[0].tr_start
        slots = self._ring(start, self._size, self.capacity)
        states = torch.index_select(self._states, 0, torch.index_select(self._obs_idx, 0, slots))
        return states.mean(0).cpu(), states.std(0, unbiased=False).cpu()

    # ----- state -------------------------------------------------------------------------------
    def rng_state(self) -> str:
        """The sampling RNG's state as a JSON string."""
        return json.dumps(self._rng.bit_generator.state)

    def set_rng_state(self, state: str) -> None:
        try:
            self._rng.bit_generator.state = json.loads(state)
        except (TypeError, ValueError, KeyError) as err:
            msg = f"bad replay buffer RNG state: {err}"
            raise PolicyError(msg) from err

    def state_dict(self) -> dict[str, Any]:
        """Contents (live rows and transitions, oldest first, on the CPU) + RNG state."""
        oldest = self._episodes[0] if self._episodes else _Episode(0, 0, 0)
        rows = self._ring(oldest.row_start, self._rows_used, self._row_cap)
        slots = self._ring(oldest.tr_start, self._size, self.capacity)
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "image_size": self.image_size,
            "episode_lengths": torch.tensor(self.episode_lengths, dtype=torch.long),
            "states": self._states[rows].cpu(),
            "actions": self._actions[slots].cpu(),
            "rewards": self._rewards[slots].cpu(),
            "dones": self._dones[slots].cpu(),
            "mc_returns": self._mc[slots].cpu(),
            "rng": self.rng_state(),
        }
        if self._images is not None:
            state["images"] = self._images[rows].cpu()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same capacity and dims), RNG included."""
        for name in ("capacity", "state_dim", "action_dim", "image_size"):
            if name not in state or int(state[name]) != getattr(self, name):
                msg = (
                    f"replay buffer state has {name}={state.get(name)!r}, "
                    f"this buffer has {getattr(self, name)}"
                )
                raise PolicyError(msg)
        lengths = [int(x) for x in torch.as_tensor(state["episode_lengths"]).tolist()]
        n_tr, n_rows = sum(lengths), sum(lengths) + len(lengths)
        names = ["states", "actions", "rewards", "dones", "mc_returns"]
        names += ["images"] if self.image_size else []
        missing = sorted(set(names) - set(state))
        if missing:
            msg = f"replay buffer state lacks {missing}"
            raise PolicyError(msg)
        tensors = {k: torch.as_tensor(state[k]) for k in names}
        rows_of = {"states": n_rows, "images": n_rows}
        for key, value in tensors.items():
            if len(value) != rows_of.get(key, n_tr):
                msg = f"replay buffer state {key!r} has {len(value)} rows, expected {rows_of.get(key, n_tr)}"
                raise PolicyError(msg)
        self._reset_pointers()
        if n_rows > self._row_cap:
            self._row_cap = min(max(n_rows, self._row_cap), 2 * self.capacity)
            self._states, self._images = self._alloc_rows(self._row_cap)
        dev = self.device
        self._states[:n_rows] = tensors["states"].to(dev)
        if self._images is not None:
            self._images[:n_rows] = tensors["images"].to(dev)
        self._actions[:n_tr] = tensors["actions"].to(dev)
        self._rewards[:n_tr] = tensors["rewards"].to(dev)
        self._dones[:n_tr] = tensors["dones"].to(dev)
        self._mc[:n_tr] = tensors["mc_returns"].to(dev)
        tr, row = 0, 0
        for length in lengths:
            rows = torch.arange(row, row + length + 1, device=dev)
            self._obs_idx[tr : tr + length] = rows[:-1]
            self._next_idx[tr : tr + length] = rows[1:]
            self._episodes.append(_Episode(tr, length, row))
            tr, row = tr + length, row + length + 1
        self._size, self._rows_used = n_tr, n_rows
        self._tr_head, self._row_head = n_tr % self.capacity, n_rows % self._row_cap
        self.set_rng_state(str(state["rng"]))


def _episode_returns(rewards: np.ndarray, gamma: float, terminated: bool) -> np.ndarray:
    ends = np.array([len(rewards)], dtype=np.int64)
    return mc_returns(rewards, ends, gamma, terminated=np.array([terminated]))


# ----- reward labelling ------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeLabels:
    rewards: np.ndarray  # (T,) float32, after scale/shift
    terminated: bool  # the last transition is a terminal
    succeeded: bool  # the episode reached success (truth or model flag)


def _first_success(flags: np.ndarray) -> int:
    """Index (>= 1) of the first success row among rows 1.., or -1."""
    hits = np.flatnonzero(np.asarray(flags, dtype=bool)[1:])
    return int(hits[0]) + 1 if len(hits) else -1


def label_episode(
    rows: Mapping[str, np.ndarray],
    reward: RewardSpec,
    *,
    episode: int,
    model_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> EpisodeLabels:
    """Rewards of the T - 1 transitions of an episode of T rows (cut at the first success when
    the source terminates there). ``model_out``: (rewards, success) of rows 1.. from a model.
    """
    n = len(rows["action"])
    kind = reward.kind
    success = rows.get("success")
    needs_truth = kind in ("success", "success01") or (kind == "key" and reward.terminal_on_success)
    if success is None and needs_truth:
        msg = f"reward source {reward.source!r} needs the dataset key 'success' (episode {episode})"
        raise PolicyError(msg)
    if kind == "model":
        if model_out is None:
            msg = "model rewards were not computed"
            raise PolicyError(msg)
        raw = np.asarray(model_out[0], dtype=np.float64)
        flags = np.concatenate([[False], np.asarray(model_out[1], dtype=bool)])
    elif kind == "key":
        raw = _key_column(rows, reward.argument, episode)[1:]
        flags = np.asarray(success if success is not None else np.zeros(n), dtype=bool)
    else:
        flags = np.asarray(success, dtype=bool).reshape(-1)
        base = -1.0 if kind == "success" else 0.0
        raw = np.where(flags[1:], base + 1.0, base)
    cut = _first_success(flags)
    terminates = kind in ("success", "success01") or reward.terminal_on_success
    terminated = terminates and cut > 0
    length = cut if terminated else n - 1
    values = reward.scale * raw[:length] + reward.shift
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        msg = f"reward {reward.source!r} is NaN or inf at row {bad + 1} of episode {episode}"
        raise PolicyError(msg)
    truth = np.asarray(success, dtype=bool).any() if success is not None else cut > 0
    return EpisodeLabels(values.astype(np.float32), terminated, bool(truth))


def _key_column(rows: Mapping[str, np.ndarray], key: str, episode: int) -> np.ndarray:
    if key not in rows:
        msg = f"reward key {key!r} is missing from episode {episode} (have {sorted(rows)})"
        raise PolicyError(msg)
    value = np.asarray(rows[key], dtype=np.float64)
    if value.ndim > 1 and value.shape[1:] != (1,) * (value.ndim - 1):
        msg = f"reward key {key!r} must hold one number per row, got shape {value.shape}"
        raise PolicyError(msg)
    return value.reshape(len(value))


def _frames_key(keys: Sequence[str], obs: ObsSpec) -> str:
    if obs.image_key:
        return obs.image_key
    images = sorted(k for k in keys if k.startswith("image_"))
    if not images:
        msg = f"model rewards need camera frames: the store has no image_* key (have {keys})"
        raise PolicyError(msg)
    return images[0]


def _score(
    model: Any, rows: Mapping[str, np.ndarray], frames_key: str, task: str, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Model rewards and success flags of rows 1.. of an episode, ``batch`` frames at a time."""
    from twinloop.vlm_reward.base import RewardBatch

    frames = np.asarray(rows[frames_key])
    state = {k: np.asarray(v) for k, v in rows.items() if k not in (frames_key, "action")}
    rewards, flags = [], []
    for start in range(1, len(frames), batch):
        stop = min(len(frames), start + batch)
        part = {k: v[start:stop] for k, v in state.items()}
        out = model(RewardBatch(frames=frames[start:stop], state=part, task=task))
        rewards.append(np.asarray(out.rewards, dtype=np.float64).reshape(-1))
        flags.append(np.asarray(out.success, dtype=bool).reshape(-1))
    return np.concatenate(rewards), np.concatenate(flags)


# ----- offline loading -------------------------------------------------------------------------
def _read_keys(store_keys: Sequence[str], obs: ObsSpec, reward: RewardSpec) -> list[str]:
    """Dataset keys to read per episode; PolicyError naming the first missing one."""
    have = set(store_keys)
    keys = {"action"}
    for key in obs.state_keys:
        if key == "proprio" and key not in have:
            keys |= {"ee_pose", "joint_pos"}
        else:
            keys.add(key)
    if obs.image_key:
        keys.add(obs.image_key)
    if reward.kind == "key":
        keys.add(reward.argument)
    if reward.kind == "model":
        keys = have.copy()  # the reward model may read any state (ee_pose, depth, priv_*)
    if "success" in have:
        keys.add("success")
    missing = sorted(keys - have)
    if missing:
        needs = "the ObsSpec/RewardSpec" if missing[0] != "action" else "learning"
        msg = f"dataset key {missing[0]!r} is missing (store keys {sorted(have)}; {needs} needs it)"
        raise PolicyError(msg)
    return sorted(keys)


def load_offline(
    path: str | os.PathLike[str],
    obs: ObsSpec,
    reward: RewardSpec,
    *,
    gamma: float = 0.99,
    episodes: Sequence[int] | None = None,
    capacity: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    reward_batch: int = 64,
) -> ReplayBuffer:
    """An offline buffer from an episode store: each stored episode of T rows gives T - 1
    transitions (row t -> row t + 1 with the action of row t), rewards labelled per ``reward``.

    PolicyError naming the key when the store lacks a key the ObsSpec/RewardSpec needs, when a
    reward is NaN/inf, or when actions do not match ``obs.action_scale``'s length.
    """
    from twinloop.datasets.store import EpisodeStore

    if reward_batch < 1:
        msg = f"reward_batch must be >= 1, got {reward_batch}"
        raise PolicyError(msg)
    models: dict[str, Any] = {}
    if reward.kind == "model":
        from twinloop.vlm_reward.errors import RewardError
        from twinloop.vlm_reward.routing import load_task_models, parse_task_checkpoints

        try:
            models = load_task_models(parse_task_checkpoints(reward.argument))
        except RewardError as err:
            raise PolicyError(f"reward {reward.source!r}: {err}") from err
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, EpisodeLabels]] = []
    with EpisodeStore.open(path) as store:
        keys = _read_keys(store.keys, obs, reward)
        task = str(store.attrs.get("task", ""))
        chosen = range(store.n_episodes) if episodes is None else episodes
        for i in chosen:
            rows = store.get_episode(int(i), keys=keys)
            if len(rows["action"]) < 2:
                log.warning("episode %d of %s has < 2 rows; skipped", i, path)
                continue
            out = None
            if models:
                model = _episode_model(models, store, int(i))
                out = _score(model, rows, _frames_key(keys, obs), task, reward_batch)
            labels = label_episode(rows, reward, episode=int(i), model_out=out)
            t = len(labels.rewards)
            states = state_from_rows(rows, obs)[: t + 1]
            actions = normalize_action(rows["action"], obs.action_scale)[:t]
            images = images_from_rows(rows, obs)[: t + 1] if obs.image_key else None
            parts.append((states, actions, labels.rewards, images, labels))
    if not parts:
        msg = f"{path}: no episode with at least 2 rows to learn from"
        raise PolicyError(msg)
    total = sum(len(p[2]) for p in parts)
    buffer = ReplayBuffer(
        capacity or total,
        parts[0][0].shape[1],
        obs.action_dim,
        obs.image_size,
        device=device,
        seed=seed,
        rows=total + len(parts),
    )
    for states, actions, rewards, images, labels in parts:
        buffer.add_episode(
            states, actions, rewards, terminated=labels.terminated, images=images, gamma=gamma
        )
    _log_summary(path, parts, buffer)
    return buffer


def _episode_model(models: Mapping[str, Any], store: Any, episode: int) -> Any:
    """The reward model of an episode: the only one, or the one of its ``twin_task``."""
    if "" in models:
        return models[""]
    meta = store.episode_meta(episode)
    if not meta.get("twin_task") and len(store.attrs.get("tasks") or ()) > 1:
        msg = (
            f"episode {episode} of a store of tasks {list(store.attrs['tasks'])} has no "
            "'twin_task' in its metadata: its reward model cannot be chosen"
        )
        raise PolicyError(msg)
    task = str(meta.get("twin_task") or store.attrs.get("twin_task", ""))
    if task not in models:
        msg = (
            f"episode {episode} is of task {task!r}, which has no reward model "
            f"(models for {sorted(models)})"
        )
        raise PolicyError(msg)
    return models[task]


def _log_summary(path: Any, parts: Sequence[tuple[Any, ...]], buffer: ReplayBuffer) -> None:
    rewards = np.concatenate([p[2] for p in parts])
    log.info(
        "offline data %s: %d episodes, %d transitions (%d held), %d success episodes, "
        "reward range [%.4g, %.4g]",
        path,
        len(parts),
        len(rewards),
        len(buffer),
        sum(p[4].succeeded for p in parts),
        float(rewards.min()),
        float(rewards.max()),
    )


# ----- mixing ----------------------------------------------------------------------------------
class MixedSampler:
    """Batches with exactly ``round(n * offline_fraction)`` rows from ``offline`` and the rest from
    ``online`` (all from offline while online is empty, all from online if offline is empty).

    ``state_dict`` holds the RNG states of both buffers (the offline buffer is rebuilt from its
    dataset on resume, so only its sampling RNG needs saving) and the sampler's own RNG.
    """

    def __init__(
        self,
        offline: ReplayBuffer,
        online: ReplayBuffer,
        offline_fraction: float = 0.5,
        *,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= offline_fraction <= 1.0:
            msg = f"offline_fraction must be in [0, 1], got {offline_fraction!r}"
            raise PolicyError(msg)
        for name in ("state_dim", "action_dim", "image_size"):
            if getattr(offline, name) != getattr(online, name):
                msg = (
                    f"offline and online buffers differ in {name}: "
                    f"{getattr(offline, name)} vs {getattr(online, name)}"
                )
                raise PolicyError(msg)
        if offline.device != online.device:
            msg = f"offline and online buffers live on {offline.device} and {online.device}"
            raise PolicyError(msg)
        self.offline = offline
        self.online = online
        self.offline_fraction = offline_fraction
        self._rng = np.random.default_rng(seed)

    def counts(self, n: int) -> tuple[int, int]:
        """(offline rows, online rows) of a batch of ``n``."""
        if not len(self.online):
            return n, 0
        if not len(self.offline):
            return 0, n
        n_off = round(n * self.offline_fraction)
        return n_off, n - n_off

    def sample(self, n: int) -> Batch:
        n_off, n_on = self.counts(n)
        if n_on == 0:
            return self.offline.sample(n)
        if n_off == 0:
            return self.online.sample(n)
        return _concat(self.offline.sample(n_off), self.online.sample(n_on))

    def state_dict(self) -> dict[str, Any]:
        return {
            "offline_fraction": self.offline_fraction,
            "rng": json.dumps(self._rng.bit_generator.state),
            "offline_rng": self.offline.rng_state(),
            "online_rng": self.online.rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = sorted({"rng", "offline_rng", "online_rng"} - set(state))
        if missing:
            msg = f"mixed sampler state lacks {missing}"
            raise PolicyError(msg)
        self._rng.bit_generator.state = json.loads(str(state["rng"]))
        self.offline.set_rng_state(str(state["offline_rng"]))
        self.online.set_rng_state(str(state["online_rng"]))


def _concat(a: Batch, b: Batch) -> Batch:
    return Batch(
        obs={k: torch.cat([a.obs[k], b.obs[k]]) for k in a.obs},
        action=torch.cat([a.action, b.action]),
        reward=torch.cat([a.reward, b.reward]),
        next_obs={k: torch.cat([a.next_obs[k], b.next_obs[k]]) for k in a.next_obs},
        done=torch.cat([a.done, b.done]),
        mc_return=torch.cat([a.mc_return, b.mc_return]),
    )
