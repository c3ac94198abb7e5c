"""The one exception class of the twinloop core."""

from __future__ import annotations

__all__ = ["TwinloopError"]


class TwinloopError(ValueError):
    """Bad input to the core: graph files, configs, safety limits, CLI arguments."""
