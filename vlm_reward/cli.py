"""``twinloop reward``: the reward tools, one sub-command module each.

train-classifier (RoboFuME), label (RL-VLM-F), audit, teacher (the simulated VLM for the twin).
Each module adds its own sub-command; this one only gathers them.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["COMMAND_MODULES", "add_commands"]

COMMAND_MODULES = ("cli_classifier", "cli_preference", "cli_audit", "cli_teacher")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add every reward sub-command to ``sub`` (the ``twinloop reward`` group)."""
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.add_commands(sub)
