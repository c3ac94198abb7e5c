"""``twinloop reward``: the reward tools, one sub-command module each.

train-classifier (RoboFuME), label (RL-VLM-F), audit, teacher (the simulated VLM for the twin).
Each module adds its own sub-command; this one only gathers them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Callable, Sequence

__all__ = ["COMMAND_MODULES", "add_commands", "run_standalone"]

COMMAND_MODULES = ("cli_classifier", "cli_preference", "cli_audit", "cli_teacher")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add every reward sub-command to ``sub`` (the ``twinloop reward`` group)."""
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        module.add_commands(sub)


def run_standalone(
    add: Callable[[argparse._SubParsersAction], None],
    argv: Sequence[str] | None,
    *,
    description: str,
    level: int = logging.INFO,
) -> int:
    """``python -m twinloop.vlm_reward.cli_<name> ...``: one module's commands without the rest.

    Bad input (RewardError, DatasetError: ValueErrors) is one logged line and exit code 2.
    """
    parser = argparse.ArgumentParser(prog="twinloop reward", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="reward_command", required=True, metavar="COMMAND")
    add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        logging.getLogger("twinloop.vlm_reward").error("%s", err)
        return 2
    except KeyboardInterrupt:
        return 130
