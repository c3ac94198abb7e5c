"""torch views of the sequence sampler: a map-style Dataset and a seeded DataLoader.

Images stay uint8 (the learner normalises on its device, where it is cheap); everything else
becomes a tensor of the stored dtype.

    loader = window_loader("demos.zarr", SamplerConfig(horizon=16), batch_size=64, seed=0)
    for batch in loader:            # {key: (64, 16, ...) tensors}
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import DatasetError
from .sampler import SamplerConfig, SequenceSampler
from .store import EpisodeStore

__all__ = ["WindowDataset", "window_loader"]

Transform = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class WindowDataset(Dataset[dict[str, torch.Tensor]]):
    """``dataset[i]`` is window ``i`` of a :class:`SequenceSampler` as tensors."""

    def __init__(self, sampler: SequenceSampler, *, transform: Transform | None = None) -> None:
        self.sampler = sampler
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.sampler[i].items()}
        return self.transform(item) if self.transform is not None else item


class _BatchSampler(Sampler[list[int]]):
    """Shuffled window indices in batches; the order depends only on ``seed`` and the epoch."""

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last = drop_last
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        self.epoch += 1
        stop = self.n - (self.n % self.batch_size if self.drop_last else 0)
        for b in range(0, stop, self.batch_size):
            yield order[b : b + self.batch_size].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)


def window_loader(
    store: str | Path | EpisodeStore,
    config: SamplerConfig,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    transform: Transform | None = None,
) -> DataLoader[dict[str, torch.Tensor]]:
    """A DataLoader of window batches ({key: (batch, horizon, ...)}); same seed, same batches."""
    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise DatasetError(msg)
    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store, mode="r")
    dataset = WindowDataset(SequenceSampler(store, config), transform=transform)
    if not len(dataset):
        msg = "no windows: every episode is shorter than the horizon (add padding?)"
        raise DatasetError(msg)
    batches = _BatchSampler(
        len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
