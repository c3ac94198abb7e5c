"""Training data of the success classifier: frame labels, episode splits, calibration, frames.

:func:`classifier_labels` turns episode outcomes (the ``success`` flag in each episode's metadata)
into labelled store rows: the last ``k_last`` frames of a successful episode are positives, the
frames in the first ``early_fraction`` of a successful episode and every frame of a failed
episode are negatives, the rest are not used. :func:`split_episodes` draws a train/holdout split
stratified by outcome, and :func:`calibrate_threshold` picks the decision threshold from the
held-out negatives' probabilities. :func:`open_image_store` opens a store with camera frames;
the private helpers read the chosen rows into uint8 tensors at the backbone's input size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .cnn import to_tensor
from .errors import RewardError

if TYPE_CHECKING:
    from twinloop.datasets.store import EpisodeStore

__all__ = [
    "calibrate_threshold",
    "classifier_labels",
    "open_image_store",
    "split_episodes",
]

log = logging.getLogger(__name__)

_READ_ROWS = 64  # store rows read per block while caching frames


# ----- labels, splits, calibration ------------------------------------------------------------
def _episode_success(store: EpisodeStore, i: int) -> bool | None:
    value = store.episode_meta(i).get("success")
    return None if value is None else bool(value)


def classifier_labels(
    store: EpisodeStore, episodes: Iterable[int], k_last: int, early_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Global store rows and their labels (bool, True = success) for training.

    A successful episode (metadata ``success`` true) of n frames gives its last ``min(k_last, n)``
    frames as positives and its first ``min(floor(early_fraction * n), n - k_last)`` frames as
    negatives; the frames in between are left out (their label is unknown). Every frame of a
    failed episode is a negative. Episodes whose success is unknown (None) are skipped with a
    warning. Rows come sorted by episode, then time.
    """
    if k_last < 1 or not 0.0 <= early_fraction < 1.0:
        msg = f"need k_last >= 1 and early_fraction in [0, 1), got {k_last}, {early_fraction}"
        raise RewardError(msg)
    rows: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for i in episodes:
        sl = store.episode_slice(int(i))
        n = sl.stop - sl.start
        success = _episode_success(store, int(i))
        if success is None:
            log.warning("episode %d has no success flag; left out of the classifier data", i)
            continue
        if not success:
            rows.append(np.arange(sl.start, sl.stop))
            labels.append(np.zeros(n, dtype=bool))
            continue
        n_pos = min(k_last, n)
        n_neg = max(0, min(math.floor(early_fraction * n), n - n_pos))
        rows += [np.arange(sl.start, sl.start + n_neg), np.arange(sl.stop - n_pos, sl.stop)]
        labels += [np.zeros(n_neg, dtype=bool), np.ones(n_pos, dtype=bool)]
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(rows).astype(np.int64), np.concatenate(labels)


def split_episodes(
    store: EpisodeStore, holdout_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(train, holdout) episode indices, stratified by episode success and seeded.

    ``round(holdout_fraction * n)`` episodes of each class (successes, failures; at least one when
    the fraction is > 0 and the class has two or more) go to the holdout. Episodes without a
    success flag are left out of both.
    """
    if not 0.0 <= holdout_fraction < 1.0:
        msg = f"holdout_fraction must be in [0, 1), got {holdout_fraction}"
        raise RewardError(msg)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    holdout: list[int] = []
    for flag in (True, False):
        group = [i for i in range(store.n_episodes) if _episode_success(store, i) is flag]
        group = [group[j] for j in rng.permutation(len(group))]
        k = round(holdout_fraction * len(group))
        if holdout_fraction > 0 and k == 0 and len(group) >= 2:
            k = 1
        holdout += group[:k]
        train += group[k:]
    return sorted(train), sorted(holdout)


def calibrate_threshold(
    negative_probs: np.ndarray, target_fpr: float, min_threshold: float = 0.0
) -> float:
    """The lowest threshold whose false-positive rate on ``negative_probs`` is <= ``target_fpr``.

    With N negatives, m = floor(target_fpr * N) of them may be called successes. Sorting the
    negative probabilities in decreasing order p(1) >= p(2) >= ... >= p(N), the threshold is the
    smallest float64 strictly above p(m+1): then only negatives above p(m+1) (at most m, ties at
    p(m+1) included in none) satisfy prob >= threshold, and any lower threshold would call at
    least m + 1 negatives successes. The result is raised to ``min_threshold`` if below it (with
    easy negatives the rule alone would put the threshold in the noise near p = 0, where frames
    unlike any calibration negative pass it). A p(m+1) saturated at 1.0 cannot be excluded; the
    threshold is then 1.0 (warned).
    """
    probs = np.asarray(negative_probs, dtype=np.float64).reshape(-1)
    if probs.size == 0:
        msg = "cannot calibrate a threshold without negative frames"
        raise RewardError(msg)
    if not 0.0 < target_fpr < 1.0:
        msg = f"target_fpr must be in (0, 1), got {target_fpr}"
        raise RewardError(msg)
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0 or probs.max() > 1.0:
        msg = "negative_probs must be probabilities in [0, 1]"
        raise RewardError(msg)
    m = math.floor(target_fpr * probs.size)
    pivot = np.sort(probs)[::-1][m]
    threshold = float(np.nextafter(pivot, np.inf))
    if threshold > 1.0:
        log.warning("held-out negatives are saturated at p=1.0: the FP target is unreachable")
        threshold = 1.0
    return max(threshold, float(min_threshold))


# ----- stores and frames ----------------------------------------------------------------------
def _check_episodes(store: EpisodeStore, episodes: Sequence[int], name: str) -> list[int]:
    out = [int(i) for i in episodes]
    bad = [i for i in out if not 0 <= i < store.n_episodes]
    if bad:
        msg = f"{name} episodes {bad} out of range: the store has {store.n_episodes} episodes"
        raise RewardError(msg)
    if len(set(out)) != len(out):
        msg = f"{name} episodes {out} name an episode twice"
        raise RewardError(msg)
    return sorted(out)


def open_image_store(path: str | os.PathLike[str]) -> EpisodeStore:
    """Open an episode store read-only; RewardError if it cannot be opened or has no frames."""
    from twinloop.datasets.errors import DatasetError
    from twinloop.datasets.store import EpisodeStore

    try:
        store = EpisodeStore.open(path, mode="r")
    except DatasetError as err:
        msg = f"cannot open dataset {path}: {err}"
        raise RewardError(msg) from err
    if "image_color" not in store.keys:
        store.close()
        msg = f"dataset {path} has no image_color frames (keys {store.keys})"
        raise RewardError(msg)
    return store


def _cache_frames(
    store: EpisodeStore,
    rows: np.ndarray,
    size: int,
    device: torch.device,
    bar: Any,
) -> torch.Tensor:
    """Store rows (sorted) -> (N, 3, size, size) uint8 on ``device``, read in contiguous blocks."""
    images = store.array("image_color")
    out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8, device=device)
    start = 0
    while start < len(rows):
        # a block: rows within _READ_ROWS of the first one (one zarr read)
        lo = int(rows[start])
        stop = int(np.searchsorted(rows, lo + _READ_ROWS, side="left"))
        block = np.asarray(images[lo : int(rows[stop - 1]) + 1])
        picked = block[rows[start:stop] - lo]
        x = to_tensor(picked, size, device)
        out[start:stop] = x.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
        if bar is not None:
            bar.update(stop - start)
        start = stop
    return out


def _goal_frames(
    path: str | os.PathLike[str],
    k_last: int,
    size: int,
    device: torch.device,
    progress: bool,
) -> torch.Tensor:
    """The last ``k_last`` frames of every successful episode of the store at ``path``.

    As :func:`_cache_frames` gives them: (N, 3, size, size) uint8 on ``device``.
    """
    with open_image_store(path) as store:
        rows, labels = classifier_labels(store, range(store.n_episodes), k_last, 0.0)
        rows = rows[labels]
        if not len(rows):
            msg = f"negatives store {path} has no successful episode to take goal frames from"
            raise RewardError(msg)
        bar = _progress(len(rows), f"reading hard negatives ({Path(path).name})", progress)
        try:
            return _cache_frames(store, rows, size, device, bar)
        finally:
            if bar is not None:
                bar.close()


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame" if "frames" in desc else "step")
