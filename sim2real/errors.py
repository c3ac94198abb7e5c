"""The one exception class of twinloop.sim2real."""

from __future__ import annotations

__all__ = ["TwinError"]


class TwinError(ValueError):
    """Bad input to the twin: unknown parameter, out-of-range value, bad action, bad model."""
