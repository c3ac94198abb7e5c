"""Tiny reward checkpoints for tests (no training, no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from twinloop.vlm_reward.base import save_reward_model
from twinloop.vlm_reward.success_classifier import ClassifierConfig, SuccessClassifier


def constant_classifier(path: Path, *, success: bool, seed: int = 0) -> Path:
    """A tiny CNN success classifier whose output does not depend on the frame: threshold 0 with
    0/1 rewards (always reward 1, success) or threshold 1 with -1/0 rewards (always -1, failure;
    a random CNN's sigmoid never reaches 1.0)."""
    torch.manual_seed(seed)
    config = ClassifierConfig(
        size=16,
        channels=(4, 8),
        feature_dim=8,
        head_hidden=8,
        device="cpu",
        threshold=0.0 if success else 1.0,
        reward_mode="zero_one" if success else "neg_one_zero",
    )
    return save_reward_model(SuccessClassifier(config), path)
