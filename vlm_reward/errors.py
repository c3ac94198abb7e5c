"""The one exception class of twinloop.vlm_reward."""

from __future__ import annotations

__all__ = ["RewardError"]


class RewardError(ValueError):
    """Bad reward input, config, checkpoint or VLM answer (the message says which)."""
