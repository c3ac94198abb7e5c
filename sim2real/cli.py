"""``twinloop twin record``: twin episodes with ground truth into an episode store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_commands", "cmd_record"]


def cmd_record(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .errors import TwinError
    from .record import RecordConfig, record_twin_dataset
    from .scene import CameraConfig
    from .twin import TwinConfig

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    config = RecordConfig(
        episodes=args.episodes,
        kinds=kinds,
        noise=args.noise,
        failure_noise=args.failure_noise,
        hold_steps=args.hold_steps,
        seed=args.seed,
        depth=not args.no_depth,
    )
    twin_config = TwinConfig(
        task=args.task, camera=CameraConfig(width=args.width, height=args.height)
    )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        msg = f"{out} exists; pass --overwrite to replace it"
        raise TwinError(msg)
    successes = 0
    with tqdm(total=config.episodes, desc=f"recording {args.task}", unit="ep") as bar:

        def on_episode(i: int, success: bool, steps: int) -> None:
            nonlocal successes
            successes += int(success)
            bar.set_postfix(success=f"{successes}/{i + 1}", steps=steps)
            bar.update(1)

        record_twin_dataset(
            out, config, twin_config, overwrite=args.overwrite, on_episode=on_episode
        )
    sys.stdout.write(
        f"recorded {config.episodes} {args.task} episodes ({successes} successful) into {out}\n"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record twin episodes with ground truth (success, progress, privileged state)",
        description="Record scripted-expert and failure episodes into a zarr episode store, "
        "with the ground truth reward audits and the simulated VLM teacher use.",
    )
    p.add_argument("--out", required=True, help="path of the new store (.zarr)")
    p.add_argument("--task", default="push_cube", help="task name (default: push_cube)")
    p.add_argument("--episodes", type=int, default=10, help="number of episodes (default: 10)")
    p.add_argument(
        "--kinds",
        default="expert,stall,noisy",
        help="comma-separated episode kinds, cycled: expert, stall, noisy, wrong (the partner "
        "task's or a mirrored goal), partial (a near miss that stops part of the way) "
        "(default: expert,stall,noisy)",
    )
    p.add_argument("--noise", type=float, default=0.0, help="expert action noise")
    p.add_argument("--failure-noise", type=float, default=1.0, help="noise of 'noisy' episodes")
    p.add_argument("--hold-steps", type=int, default=3, help="rows recorded after success")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    p.add_argument("--width", type=int, default=320, help="camera width, px")
    p.add_argument("--height", type=int, default=240, help="camera height, px")
    p.add_argument("--no-depth", action="store_true", help="do not record aligned depth")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_record)
