"""The one exception class of twinloop.datasets."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """Bad dataset input or a store that breaks its invariants (the message says which)."""
