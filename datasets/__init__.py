"""twinloop.datasets: the zarr episode store, its sampler, recorder core, imports and exports.

``from twinloop.datasets import EpisodeStore`` works; the names load lazily so that
``twinloop --help`` does not import numpy and zarr.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "DatasetError",
    "EpisodeStore",
    "EpisodeWriter",
    "SamplerConfig",
    "SequenceSampler",
    "check_store",
]

_LAZY = {
    "DatasetError": ".errors",
    "EpisodeStore": ".store",
    "EpisodeWriter": ".store",
    "SamplerConfig": ".sampler",
    "SequenceSampler": ".sampler",
    "check_store": ".check",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
