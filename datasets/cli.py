"""CLI subcommands of ``twinloop dataset`` (filled in by the dataset work)."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this module's ``twinloop dataset ...`` subcommands on ``sub``."""
