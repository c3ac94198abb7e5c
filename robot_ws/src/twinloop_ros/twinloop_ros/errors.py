"""The one exception class of twinloop_ros."""

from __future__ import annotations

__all__ = ["RosAdapterError"]


class RosAdapterError(ValueError):
    """A message or a node parameter that cannot be converted: names the field and the problem."""
