"""``twinloop reward teacher``: serve the simulated VLM teacher over a recorded twin dataset.

It answers RL-VLM-F preference prompts and KAGI keypoint prompts from the dataset's ground truth.

Prints the base URL (one line on stdout) and serves until Ctrl-C or SIGTERM; point a
:class:`VLMClient` (or any OpenAI-compatible tool) at that URL.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .errors import RewardError

__all__ = ["add_commands", "main"]

log = logging.getLogger(__name__)


def _serve(args: argparse.Namespace) -> int:
    from .keypoint_teacher import KeypointAnswerer
    from .teacher import FrameIndex, SimulatedTeacher

    api_key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
    if args.api_key_env and not api_key:
        msg = f"--api-key-env {args.api_key_env} is set but that environment variable is empty"
        raise RewardError(msg)
    frames = FrameIndex.from_store(args.dataset, progress=True)
    if len(frames) == 0:
        msg = f"dataset {args.dataset} holds no frames"
        raise RewardError(msg)
    teacher = SimulatedTeacher(
        frames,
        error_rate=args.error_rate,
        seed=args.seed,
        api_key=api_key or None,
        host=args.host,
        port=args.port,
        model=args.model,
        tie_threshold=args.tie_threshold,
        answerers=[KeypointAnswerer(error_rate=args.keypoint_error_rate)],
    )
    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        with teacher:
            sys.stdout.write(teacher.base_url + "\n")
            sys.stdout.flush()
            log.info(
                "%d frames indexed, error rate %.2f; Ctrl-C stops", len(frames), args.error_rate
            )
            try:
                while not done.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
            log.info("teacher stats: %s", teacher.stats)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``teacher`` to a ``twinloop reward`` subparser group."""
    p = sub.add_parser(
        "teacher",
        help="serve a simulated VLM (OpenAI-compatible) that answers from a twin dataset's truth",
        description=__doc__,
    )
    p.add_argument("--dataset", required=True, help="recorded twin EpisodeStore (zarr) to index")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0 = a free one, printed)")
    p.add_argument("--error-rate", type=float, default=0.2, help="preference label flip rate")
    p.add_argument("--tie-threshold", type=float, default=0.02, help="|Δprogress| answered -1")
    p.add_argument(
        "--keypoint-error-rate",
        type=float,
        default=0.0,
        help="probability that a keypoint answer names a wrong mark",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the label noise")
    p.add_argument("--model", default="twinloop-teacher", help="model name the server reports")
    p.add_argument(
        "--api-key-env",
        default="",
        help="demand the key held in this environment variable (default: no key needed)",
    )
    p.set_defaults(func=_serve)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (the same command as under ``twinloop reward``)."""
    from .cli import run_standalone

    return run_standalone(add_commands, argv, description="VLM teacher server")


if __name__ == "__main__":
    raise SystemExit(main())
