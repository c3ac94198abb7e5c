"""torch views of the episode store: windows as tensors, seeded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from twinloop.datasets.errors import DatasetError  # noqa: E402
from twinloop.datasets.sampler import SamplerConfig, SequenceSampler  # noqa: E402
from twinloop.datasets.store import EpisodeStore  # noqa: E402
from twinloop.datasets.torch_dataset import WindowDataset, window_loader  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    s = EpisodeStore.create(tmp_path / "s.zarr", fps=10.0)
    for length, offset in ((12, 0), (9, 100)):
        t = np.arange(length)
        s.add_episode(
            {
                "image_color": np.full((length, 8, 8, 3), offset % 256, np.uint8)
                + t[:, None, None, None].astype(np.uint8),
                "action": np.stack([t + offset] * 5, axis=1).astype(np.float32),
                "timestamp": (t / 10.0).astype(np.float64),
            }
        )
    return s


def test_dataset_items_are_the_sampler_windows_as_tensors(store: EpisodeStore) -> None:
    sampler = SequenceSampler(store, SamplerConfig(horizon=4, pad_after=2))
    ds = WindowDataset(sampler)
    assert len(ds) == len(sampler)
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["image_color"].dtype == torch.uint8 and item["action"].dtype == torch.float32
        for key, value in sampler[i].items():
            np.testing.assert_array_equal(item[key].numpy(), value)


def test_loader_batches_cover_every_window_once_and_repeat_with_the_seed(
    store: EpisodeStore,
) -> None:
    config = SamplerConfig(horizon=4, keys=("action",))
    loader = window_loader(store, config, batch_size=3, seed=7)
    batches = list(loader)
    firsts = torch.cat([b["action"][:, 0, 0] for b in batches]).tolist()
    n = len(SequenceSampler(store, config))
    assert len(firsts) == n and len(set(firsts)) == n  # each window once per epoch
    assert all(b["action"].shape[1:] == (4, 5) for b in batches)
    again = [b["action"] for b in window_loader(store, config, batch_size=3, seed=7)]
    assert all(torch.equal(a["action"], b) for a, b in zip(batches, again, strict=True))
    second_epoch = [b["action"][:, 0, 0] for b in loader]  # a new order each epoch
    assert torch.cat(second_epoch).tolist() != firsts
    # windows never mix episodes: steps inside a window are consecutive
    for b in batches:
        diffs = torch.diff(b["action"][:, :, 0], dim=1)
        assert torch.all(diffs == 1)


def test_loader_rejects_bad_options(store: EpisodeStore) -> None:
    with pytest.raises(DatasetError, match="batch_size"):
        window_loader(store, SamplerConfig(horizon=2), batch_size=0)
    with pytest.raises(DatasetError, match="shorter than the horizon"):
        window_loader(store, SamplerConfig(horizon=50), batch_size=2)
