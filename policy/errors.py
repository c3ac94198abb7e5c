"""The one exception class of twinloop.policy."""

from __future__ import annotations

__all__ = ["PolicyError"]


class PolicyError(ValueError):
    """Bad policy input, config, dataset, checkpoint or observation (the message says which)."""
