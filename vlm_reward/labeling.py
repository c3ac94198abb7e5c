"""RL-VLM-F labeling: sample frame pairs, ask a VLM which is better, train, relabel.

Offline (the real-world variant of RL-VLM-F): :func:`sample_pairs` draws random row pairs from
an EpisodeStore, :func:`ask_pairs` asks the VLM about each pair with the two-stage prompt
(:func:`~.prompts.ask_preference`, several pairs in flight at once) and drops ``-1`` and
failed or unparseable answers, counting them; :func:`fit_preference` trains the Bradley-Terry
ensemble on the kept pairs and :func:`relabel_store` writes the learned reward for every row,
by default into a new store (nothing saved is ever lost).

Online: :class:`OnlinePreferenceLoop` holds the frames an agent collects; every
``query_every`` frames it asks the VLM about ``queries_per_round`` new pairs from its buffer,
retrains the ensemble on all labels so far (warm start) and relabels the whole buffer.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .base import RewardBatch, RewardModel, check_frames
from .errors import RewardError
from .preference import (
    PreferenceConfig,
    PreferenceReward,
    TrainLog,
    resize_frames,
    train_preference,
)

if TYPE_CHECKING:
    from twinloop.datasets.store import EpisodeStore

    from .prompts import PreferenceAnswer
    from .vlm_client import VLMClient

__all__ = [
    "OnlineConfig",
    "OnlinePreferenceLoop",
    "PairLabels",
    "ask_pairs",
    "compute_rewards",
    "default_relabel_path",
    "fit_preference",
    "pair_goals",
    "read_frames",
    "relabel_store",
    "sample_pairs",
]

log = logging.getLogger(__name__)

AskFn = Callable[[Any, str, np.ndarray, np.ndarray], "PreferenceAnswer"]


class FrameSource(Protocol):
    """Anything that returns one (H, W, 3) uint8 frame by row index (numpy or zarr arrays)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: Any) -> Any: ...


# ----- pairs ---------------------------------------------------------------------------------
def _store(store: str | os.PathLike[str] | EpisodeStore) -> tuple[EpisodeStore, bool]:
    from twinloop.datasets.errors import DatasetError
    from twinloop.datasets.store import EpisodeStore

    if isinstance(store, EpisodeStore):
        return store, False
    try:
        return EpisodeStore.open(store, mode="r"), True
    except DatasetError as err:
        raise RewardError(str(err)) from err


def sample_pairs(
    store: str | os.PathLike[str] | EpisodeStore,
    n_pairs: int,
    *,
    seed: int = 0,
    episodes: Sequence[int] | None = None,
    same_task: bool = False,
) -> np.ndarray:
    """(n_pairs, 2) int64 global row indices of random distinct row pairs.

    ``episodes``: draw only from these episodes (keep held-out episodes out of the labels).
    ``same_task``: both rows of a pair come from episodes with the same task text (multi-task
    stores); a task is picked in proportion to its rows. Seeded: same inputs, same pairs.
    """
    if n_pairs < 1:
        msg = f"n_pairs must be >= 1, got {n_pairs}"
        raise RewardError(msg)
    st, owned = _store(store)
    try:
        chosen = range(st.n_episodes) if episodes is None else list(episodes)
        groups: dict[str, list[np.ndarray]] = {}
        for i in chosen:
            if not 0 <= int(i) < st.n_episodes:
                msg = f"episode {i} out of range: {st.path} has {st.n_episodes} episodes"
                raise RewardError(msg)
            sl = st.episode_slice(int(i))
            task = str(st.episode_meta(int(i)).get("task", "")) if same_task else ""
            groups.setdefault(task, []).append(np.arange(sl.start, sl.stop))
    finally:
        if owned:
            st.close()
    pools = [np.concatenate(rows) for rows in groups.values()]
    pools = [p for p in pools if len(p) >= 2]
    if not pools:
        msg = "need at least two rows (of one task, with same_task) to sample pairs from"
        raise RewardError(msg)
    rng = np.random.default_rng(seed)
    sizes = np.array([len(p) for p in pools], dtype=float)
    which = rng.choice(len(pools), size=n_pairs, p=sizes / sizes.sum())
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for g, pool in enumerate(pools):
        mask = which == g
        k = int(mask.sum())
        first = rng.integers(0, len(pool), k)
        second = (first + rng.integers(1, len(pool), k)) % len(pool)  # never the same row
        out[mask] = np.stack([pool[first], pool[second]], axis=1)
    return out


def pair_goals(
    store: str | os.PathLike[str] | EpisodeStore, pairs: np.ndarray, default: str = ""
) -> list[str]:
    """The goal sentence of every pair: its first row's episode task (else the store task)."""
    st, owned = _store(store)
    try:
        fallback = default or str(st.attrs.get("task", ""))
        tasks = [str(st.episode_meta(i).get("task") or fallback) for i in range(st.n_episodes)]
        episode = np.searchsorted(st.episode_ends, np.asarray(pairs)[:, 0], side="right")
    finally:
        if owned:
            st.close()
    return [tasks[int(e)] for e in episode]


# ----- asking --------------------------------------------------------------------------------
@dataclass
class PairLabels:
    """The VLM's answers about pairs of rows: the kept pairs and what was dropped."""

    pairs: np.ndarray  # (N, 2) int64 rows of the kept pairs
    labels: np.ndarray  # (N,) int64: 0 first row better, 1 second row better
    asked: int = 0  # pairs asked
    unsure: int = 0  # dropped: the VLM answered -1
    failed: int = 0  # dropped: the request failed or the reply had no usable label
    errors: list[str] = field(default_factory=list)  # the first few failure messages

    @property
    def dropped(self) -> int:
        return self.unsure + self.failed

    def stats(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "kept": len(self.labels),
            "unsure": self.unsure,
            "failed": self.failed,
            "dropped": self.dropped,
        }


def _default_ask(client: Any, goal: str, image_a: np.ndarray, image_b: np.ndarray) -> Any:
    from .prompts import ask_preference

    return ask_preference(client, goal, image_a, image_b)


def ask_pairs(
    client: VLMClient | Any,
    goals: str | Sequence[str],
    frames: FrameSource,
    pairs: np.ndarray,
    *,
    concurrency: int = 8,
    progress: bool = False,
    ask: AskFn | None = None,
) -> PairLabels:
    """Ask which frame of every pair better achieves its goal; drop ``-1`` and failures.

    ``goals``: one goal sentence, or one per pair. ``frames[i]``: the (H, W, 3) uint8 frame of
    row ``i`` (read lazily, one pair at a time, so memory stays small). ``ask``: the query
    function (default :func:`~.prompts.ask_preference`, the two-stage RL-VLM-F prompt);
    ``concurrency`` pairs are in flight at once (the client may bound requests further).
    """
    from tqdm.auto import tqdm

    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        msg = f"pairs must be (N, 2) row indices, got shape {pairs.shape}"
        raise RewardError(msg)
    n_rows = int(frames.shape[0])
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n_rows):
        msg = f"pair rows must be in [0, {n_rows}), got {pairs.min()}..{pairs.max()}"
        raise RewardError(msg)
    goal_list = [goals] * len(pairs) if isinstance(goals, str) else list(goals)
    if len(goal_list) != len(pairs):
        msg = f"got {len(goal_list)} goals for {len(pairs)} pairs"
        raise RewardError(msg)
    if concurrency < 1:
        msg = f"concurrency must be >= 1, got {concurrency}"
        raise RewardError(msg)
    query = ask or _default_ask
    read_lock = threading.Lock()  # zarr arrays: one reader at a time

    def one(k: int) -> int | RewardError:
        i, j = (int(v) for v in pairs[k])
        with read_lock:
            image_a = np.asarray(frames[i])
            image_b = np.asarray(frames[j])
        try:
            return int(query(client, goal_list[k], image_a, image_b).label)
        except RewardError as err:
            return err

    labels = np.full(len(pairs), -1, dtype=np.int64)
    result = PairLabels(pairs=pairs[:0], labels=labels[:0], asked=len(pairs))
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="preference") as pool:
        answers = pool.map(one, range(len(pairs)))
        bar = tqdm(answers, total=len(pairs), desc="VLM preferences", disable=not progress)
        for k, answer in enumerate(bar):
            if isinstance(answer, RewardError):
                result.failed += 1
                if len(result.errors) < 5:
                    result.errors.append(str(answer))
            elif answer == -1:
                result.unsure += 1
            else:
                labels[k] = answer
            bar.set_postfix(unsure=result.unsure, failed=result.failed)
    keep = labels >= 0
    result.pairs, result.labels = pairs[keep], labels[keep]
    if result.failed:
        log.warning(
            "%d of %d preference queries failed (first: %s)",
            result.failed,
            len(pairs),
            result.errors[0],
        )
    log.info("preference labels: %s", result.stats())
    return result


# ----- training from a store -----------------------------------------------------------------
def read_frames(
    frames: FrameSource, rows: np.ndarray, size: int, *, batch: int = 256
) -> np.ndarray:
    """Frames of ``rows`` resized to (len(rows), size, size, 3) uint8, read ``batch`` at a time.

    Rows are read in sorted order; a dense run of rows is read as one slice (zarr decodes each
    chunk once instead of once per row).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    order = np.argsort(rows, kind="stable")
    for start in range(0, len(rows), batch):
        sel = order[start : start + batch]
        want = rows[sel]
        lo, hi = int(want[0]), int(want[-1]) + 1
        if hi - lo <= 4 * len(want):
            block = np.asarray(frames[lo:hi])[want - lo]
        else:
            block = np.stack([np.asarray(frames[int(r)]) for r in want])
        out[sel] = resize_frames(check_frames(block), size)
    return out


def fit_preference(
    frames: FrameSource,
    labels: PairLabels,
    config: PreferenceConfig | None = None,
    *,
    model: PreferenceReward | None = None,
    progress: bool = False,
) -> tuple[PreferenceReward, TrainLog]:
    """Train the Bradley-Terry ensemble on the kept pairs of ``labels`` over ``frames``.

    Each distinct row is read and resized once, so 2,000 pairs of camera frames need only a
    few megabytes.
    """
    if len(labels.labels) == 0:
        first = f"; first error: {labels.errors[0]}" if labels.errors else ""
        msg = f"no usable preference labels to train on ({labels.stats()}{first})"
        raise RewardError(msg)
    size = (model.config if model is not None else config or PreferenceConfig()).size
    rows, inverse = np.unique(labels.pairs, return_inverse=True)
    small = read_frames(frames, rows, size)
    inverse = inverse.reshape(labels.pairs.shape)
    return train_preference(
        small[inverse[:, 0]],
        small[inverse[:, 1]],
        labels.labels,
        None if model is not None else config,
        model=model,
        progress=progress,
    )


# ----- relabeling ----------------------------------------------------------------------------
def default_relabel_path(store_path: str | os.PathLike[str], key: str = "reward") -> Path:
    """Where :func:`relabel_store` writes by default: ``<name>_<key>`` beside the source."""
    path = Path(store_path)
    return path.with_name(f"{path.stem}_{key}{path.suffix}")


def compute_rewards(
    store: EpisodeStore,
    model: RewardModel,
    *,
    image_key: str = "image_color",
    state_keys: Sequence[str] = (),
    batch_size: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """The model's reward for every row of ``store`` (float32, episodes concatenated)."""
    from tqdm.auto import tqdm

    if image_key not in store.keys:
        msg = f"{store.path} has no {image_key!r} frames (keys: {store.keys})"
        raise RewardError(msg)
    rewards = np.empty(store.n_steps, dtype=np.float32)
    task = str(store.attrs.get("task", ""))
    with tqdm(total=store.n_steps, desc="relabel", unit="row", disable=not progress) as bar:
        for i in range(store.n_episodes):
            sl = store.episode_slice(i)
            episode_task = str(store.episode_meta(i).get("task") or task)
            for start in range(sl.start, sl.stop, batch_size):
                stop = min(sl.stop, start + batch_size)
                state = {k: np.asarray(store.array(k)[start:stop]) for k in state_keys}
                frames = np.asarray(store.array(image_key)[start:stop])
                out = model(RewardBatch(frames, state, episode_task))
                rewards[start:stop] = out.rewards
                bar.update(stop - start)
    return rewards


def relabel_store(
    store_path: str | os.PathLike[str],
    model: RewardModel,
    *,
    key: str = "reward",
    image_key: str = "image_color",
    state_keys: Sequence[str] = (),
    batch_size: int = 256,
    out_path: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Path, np.ndarray]:
    """Write ``model``'s reward of every row as data key ``key``; returns (store path, rewards).

    By default a new store is written (``out_path``, or :func:`default_relabel_path`): a copy
    of the source with ``key`` added or replaced; the source is not touched. ``in_place=True``
    adds/replaces only ``key`` in the source itself. ``overwrite``: replace an existing
    ``out_path`` store.
    """
    from twinloop.datasets.columns import copy_with_column, set_column
    from twinloop.datasets.errors import DatasetError
    from twinloop.datasets.store import EpisodeStore

    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise RewardError(msg)
    if in_place and out_path is not None:
        msg = "give out_path or in_place=True, not both"
        raise RewardError(msg)
    source = Path(store_path)
    target = source if in_place else Path(out_path or default_relabel_path(source, key))
    provenance = {
        f"{key}_model": {"type": str(getattr(model.config, "type", "")), "image_key": image_key}
    }
    try:
        with EpisodeStore.open(source, mode="a" if in_place else "r") as store:
            if not in_place and target.exists() and not overwrite:
                msg = f"{target} exists; pass overwrite=True or another out_path"
                raise RewardError(msg)
            rewards = compute_rewards(
                store,
                model,
                image_key=image_key,
                state_keys=state_keys,
                batch_size=batch_size,
                progress=progress,
            )
            if in_place:
                set_column(store, key, rewards, attrs=provenance)
            else:
                copy_with_column(
                    store,
                    target,
                    key,
                    rewards,
                    attrs=provenance,
                    overwrite=overwrite,
                    progress=progress,
                )
    except DatasetError as err:
        raise RewardError(str(err)) from err
    log.info("relabeled %d rows of %s into %s[%r]", len(rewards), source, target, key)
    return target, rewards


# ----- online --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnlineConfig:
    query_every: int = 5000  # frames appended between reward updates
    queries_per_round: int = 100  # pairs asked per update
    capacity: int = 10_000  # frames kept in the buffer, oldest dropped first (640x480: 9 GB)
    concurrency: int = 8  # pairs in flight at once
    seed: int = 0  # pair sampling and retraining order

    def __post_init__(self) -> None:
        for name in ("query_every", "queries_per_round", "capacity", "concurrency"):
            if getattr(self, name) < 1:
                msg = f"{name} must be >= 1, got {getattr(self, name)}"
                raise RewardError(msg)


class OnlinePreferenceLoop:
    """RL-VLM-F online: buffer frames, ask the VLM every ``query_every`` frames, retrain, relabel.

    ``model``: a PreferenceReward to continue, or a PreferenceConfig for a new one (built at the
    first update). Labeled pairs are kept (as small resized frames) for all later retraining,
    even once their frames leave the buffer. :meth:`append` returns the relabeled rewards of the
    whole buffer when an update ran, else None.
    """

    def __init__(
        self,
        model: PreferenceReward | PreferenceConfig,
        client: VLMClient | Any,
        goal: str,
        config: OnlineConfig | None = None,
        *,
        ask: AskFn | None = None,
    ) -> None:
        self.config = config or OnlineConfig()
        self.model: PreferenceReward | None = None
        self._model_config = model.config if isinstance(model, PreferenceReward) else model
        if isinstance(model, PreferenceReward):
            self.model = model
        self.client = client
        self.goal = goal
        self._ask = ask
        self._rng = np.random.default_rng(self.config.seed)
        self._chunks: list[np.ndarray] = []
        self._size = 0
        self._since_update = 0
        self._small_a: list[np.ndarray] = []
        self._small_b: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.rewards: np.ndarray | None = None  # last relabeled rewards of the buffer
        self.last_log: TrainLog | None = None
        self.stats: dict[str, Any] = {
            "frames_seen": 0,
            "updates": 0,
            "asked": 0,
            "kept": 0,
            "unsure": 0,
            "failed": 0,
            "accuracy": math.nan,
        }

    def __len__(self) -> int:
        return self._size

    @property
    def n_labels(self) -> int:
        return int(sum(len(y) for y in self._labels))

    def buffer(self) -> np.ndarray:
        """All buffered frames, oldest first, (N, H, W, 3) uint8."""
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        if not self._chunks:
            msg = "the buffer is empty"
            raise RewardError(msg)
        return self._chunks[0]

    def append(self, frames: np.ndarray) -> np.ndarray | None:
        """Add frames; run an update (and return the buffer's new rewards) when one is due."""
        check_frames(frames)
        if self._chunks and self._chunks[0].shape[1:] != frames.shape[1:]:
            msg = f"frames are {frames.shape[1:]}, the buffer holds {self._chunks[0].shape[1:]}"
            raise RewardError(msg)
        self._chunks.append(np.array(frames, copy=True))
        self._size += len(frames)
        self.stats["frames_seen"] += len(frames)
        excess = self._size - self.config.capacity
        while excess > 0:  # drop the oldest frames, whole chunks first
            head = self._chunks[0]
            if len(head) <= excess:
                self._chunks.pop(0)
                cut = len(head)
            else:
                self._chunks[0] = head[excess:]
                cut = excess
            self._size -= cut
            excess -= cut
        self._since_update += len(frames)
        if self._since_update >= self.config.query_every:
            return self.update()
        return None

    def update(self) -> np.ndarray:
        """Ask ``queries_per_round`` pairs, retrain on every label so far, relabel the buffer."""
        frames = self.buffer()
        self._since_update = 0
        if len(frames) < 2:
            msg = "need at least two buffered frames to ask about a pair"
            raise RewardError(msg)
        n = self.config.queries_per_round
        first = self._rng.integers(0, len(frames), n)
        pairs = np.stack([first, (first + self._rng.integers(1, len(frames), n)) % len(frames)], 1)
        answers = ask_pairs(
            self.client,
            self.goal,
            frames,
            pairs,
            concurrency=self.config.concurrency,
            ask=self._ask,
        )
        for name, value in answers.stats().items():
            if name in self.stats:
                self.stats[name] += value
        if len(answers.labels):
            size = self._model_config.size
            self._small_a.append(resize_frames(frames[answers.pairs[:, 0]], size))
            self._small_b.append(resize_frames(frames[answers.pairs[:, 1]], size))
            self._labels.append(answers.labels)
        if not self._labels:
            log.warning("online preference update: no usable labels yet (%s)", answers.stats())
            self.rewards = np.zeros(len(frames), dtype=np.float32)
            return self.rewards
        self.model, self.last_log = train_preference(
            np.concatenate(self._small_a),
            np.concatenate(self._small_b),
            np.concatenate(self._labels),
            None if self.model is not None else self._model_config,
            model=self.model,
            seed=self._model_config.seed + self.stats["updates"],
        )
        self.stats["updates"] += 1
        self.stats["accuracy"] = self.last_log.ensemble_accuracy
        self.rewards = self.model(RewardBatch(frames, task=self.goal)).rewards
        return self.rewards
