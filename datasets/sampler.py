"""Sequence windows over an episode store for learners (numpy only).

Like diffusion_policy's SequenceSampler: every window holds ``horizon`` consecutive steps of one
episode; with ``pad_before`` / ``pad_after`` a window may start before the episode's first step
or run past its last one, and the missing steps repeat the edge step. Windows never cross
episodes. ``twinloop.datasets.torch_dataset`` wraps it as a torch Dataset / DataLoader.

    sampler = SequenceSampler(store, SamplerConfig(horizon=16, pad_before=1, pad_after=7))
    batch = sampler.sample(64, np.random.default_rng(0))   # {key: (64, 16, ...)}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DatasetError
from .store import EpisodeStore

__all__ = ["SamplerConfig", "SequenceSampler", "split_episodes", "window_indices"]


@dataclass(frozen=True)
class SamplerConfig:
    horizon: int  # steps per window
    pad_before: int = 0  # windows may start up to this many steps before an episode (< horizon)
    pad_after: int = 0  # ... and end up to this many steps after it (< horizon)
    keys: tuple[str, ...] | None = None  # data keys to return; None: all
    # Keys of which only the first k steps of each window are returned (e.g. image observations
    # when the action horizon is longer than the observation horizon): saves reads and memory.
    key_first_k: Mapping[str, int] = field(default_factory=dict)
    episodes: tuple[int, ...] | None = None  # episodes to draw from (train/val split); None: all
    in_memory: bool = True  # load the keys into RAM once (fast); False reads zarr per window

    def __post_init__(self) -> None:
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            msg = f"horizon must be an int >= 1, got {self.horizon!r}"
            raise DatasetError(msg)
        for name in ("pad_before", "pad_after"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < self.horizon:
                msg = f"{name} must be an int in [0, horizon), got {v!r}"
                raise DatasetError(msg)
        for key, k in self.key_first_k.items():
            if not isinstance(k, int) or not 1 <= k <= self.horizon:
                msg = f"key_first_k[{key!r}] must be an int in [1, horizon], got {k!r}"
                raise DatasetError(msg)
        if self.keys is not None and not self.keys:
            msg = "keys must name at least one key (or be None for all)"
            raise DatasetError(msg)


def window_indices(
    episode_ends: np.ndarray,
    horizon: int,
    *,
    pad_before: int = 0,
    pad_after: int = 0,
    episodes: Sequence[int] | None = None,
) -> np.ndarray:
    """All windows as rows (start, episode_start, episode_end) in absolute step indices.

    ``start`` may lie before ``episode_start`` (padding); rows of the window are
    ``clip(start + arange(horizon), episode_start, episode_end - 1)``.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    chosen = range(len(ends)) if episodes is None else episodes
    rows = []
    for i in chosen:
        if not 0 <= i < len(ends):
            msg = f"episode {i} out of range: the store has {len(ends)} episodes"
            raise DatasetError(msg)
        s, e = int(starts[i]), int(ends[i])
        first, last = s - pad_before, e - horizon + pad_after  # inclusive range of window starts
        if last < first:
            continue  # episode shorter than a window (without enough padding)
        w = np.arange(first, last + 1, dtype=np.int64)
        rows.append(np.stack([w, np.full_like(w, s), np.full_like(w, e)], axis=1))
    if not rows:
        return np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(rows)


def split_episodes(
    n_episodes: int, *, val_ratio: float, seed: int = 0
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Seeded train/validation split of episode indices (at least one train episode)."""
    if not 0.0 <= val_ratio < 1.0:
        msg = f"val_ratio must be in [0, 1), got {val_ratio}"
        raise DatasetError(msg)
    if n_episodes < 1:
        msg = "cannot split a store without episodes"
        raise DatasetError(msg)
    n_val = min(n_episodes - 1, round(n_episodes * val_ratio))
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return tuple(sorted(int(i) for i in perm[n_val:])), tuple(sorted(int(i) for i in perm[:n_val]))


class SequenceSampler:
    """Fixed-length windows within episodes; ``sampler[i]`` or seeded random ``sample`` batches."""

    def __init__(self, store: EpisodeStore, config: SamplerConfig) -> None:
        keys = list(config.keys) if config.keys is not None else store.keys
        missing = sorted(set(keys) - set(store.keys))
        if missing:
            msg = f"sampler keys {missing} are not in the store (it has {store.keys})"
            raise DatasetError(msg)
        unknown = sorted(set(config.key_first_k) - set(keys))
        if unknown:
            msg = f"key_first_k names keys the sampler does not return: {unknown}"
            raise DatasetError(msg)
        self.config = config
        self.keys = keys
        self._indices = window_indices(
            store.episode_ends,
            config.horizon,
            pad_before=config.pad_before,
            pad_after=config.pad_after,
            episodes=config.episodes,
        )
        n = store.n_steps
        self._data: dict[str, Any] = {
            k: np.asarray(store.array(k)[:n]) if config.in_memory else store.array(k) for k in keys
        }

    def __len__(self) -> int:
        return len(self._indices)

    def _rows(self, window: np.ndarray, key: str) -> np.ndarray:
        start, s, e = (int(v) for v in window)
        h = self.config.key_first_k.get(key, self.config.horizon)
        return np.clip(np.arange(start, start + h), s, e - 1)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            msg = f"window {i} out of range: the sampler has {len(self)} windows"
            raise IndexError(msg)
        window = self._indices[i]
        out = {}
        for key in self.keys:
            rows = self._rows(window, key)
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            block = np.asarray(self._data[key][lo:hi])  # one contiguous read, then repeat edges
            out[key] = block[rows - lo]
        return out

    def get_batch(self, windows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Windows by index, stacked: {key: (len(windows), horizon or first_k, ...)}."""
        idx = np.asarray(windows, dtype=np.int64)
        if idx.ndim != 1 or not len(idx):
            msg = "get_batch needs a non-empty 1-D list of window indices"
            raise DatasetError(msg)
        if idx.min() < -len(self) or idx.max() >= len(self):
            msg = f"window index out of range: the sampler has {len(self)} windows"
            raise DatasetError(msg)
        if not self.config.in_memory:
            items = [self[int(i)] for i in idx]
            return {k: np.stack([it[k] for it in items]) for k in self.keys}
        win = self._indices[idx]
        out = {}
        for key in self.keys:
            h = self.config.key_first_k.get(key, self.config.horizon)
            rows = np.clip(win[:, :1] + np.arange(h), win[:, 1:2], win[:, 2:3] - 1)
            out[key] = self._data[key][rows]
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """A batch of windows drawn uniformly with replacement from ``rng`` (seeded by you)."""
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise DatasetError(msg)
        if not len(self):
            msg = "no windows: every episode is shorter than the horizon (add padding?)"
            raise DatasetError(msg)
        return self.get_batch(rng.integers(0, len(self), size=batch_size))

    def epoch(
        self, batch_size: int, rng: np.random.Generator, *, drop_last: bool = False
    ) -> Iterator[dict[str, np.ndarray]]:
        """Every window once, shuffled by ``rng``, in batches."""
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise DatasetError(msg)
        perm = rng.permutation(len(self))
        stop = len(perm) - (len(perm) % batch_size if drop_last else 0)
        for b in range(0, stop, batch_size):
            yield self.get_batch(perm[b : b + batch_size])
