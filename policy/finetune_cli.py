"""The ``twinloop finetune`` command: arguments, the quick budget of ``make demo``, exit codes.

The pipeline itself is :func:`twinloop.policy.finetune.run_finetune`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .finetune import ALGOS, FinetuneConfig, run_finetune, say

__all__ = ["QUICK", "add_command", "cmd_finetune", "config_from_args"]

QUICK = {"demos": 3, "offline_steps": 200, "online_episodes": 4, "eval_episodes": 3,
         "offline_evals": 2, "batch_size": 128, "min_online": 10}  # fmt: skip


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    values: dict[str, Any] = {}
    defaults = QUICK if args.quick else {}
    for name in ("demos", "offline_steps", "online_episodes", "eval_episodes"):
        given = getattr(args, name)
        if given is not None:
            values[name] = given
        elif name in defaults:
            values[name] = defaults[name]
    for name in ("offline_evals", "batch_size", "min_online"):
        if name in defaults:
            values[name] = defaults[name]
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / (time.strftime("%Y%m%d-%H%M%S") + "_finetune")
    )
    return FinetuneConfig(
        out=out,
        task=args.task,
        profile=args.profile,
        algo=args.algo,
        reward=args.reward,
        utd=args.utd,
        realtime=args.realtime,
        seed=args.seed,
        timeout_s=args.timeout,
        overrides=tuple(args.set),
        progress=not args.no_progress,
        reset_free=args.reset_free,
        reset_every=args.reset_every,
        success_frames=args.success_frames,
        **values,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    summary = run_finetune(config_from_args(args))
    graph = summary["graph"]
    if graph["exit_code"] != 0:
        say(f"[finetune] FAILED: the online graph ended with {graph['exit_code']} "
             f"({graph['ended_by']}); see the logs")  # fmt: skip
        return 1
    if not summary["versions"]:
        say("[finetune] FAILED: the learner published no weights (too few online steps?)")
        return 1
    return 0


def add_command(sub: Any) -> None:
    """Add ``finetune`` to the ``twinloop`` sub-commands."""
    p = sub.add_parser(
        "finetune",
        help="scripted demos -> offline pre-training -> online fine-tuning on the twin graph",
        description="Scripted demos -> offline pre-training -> online fine-tuning on the twin graph. Writes <out>/learning_curve.png and summary.json.",
        epilog="--quick (make demo): 3 demos, 200 offline updates, 4 online episodes, 3 eval "
        "episodes: about 45 s on a 2-core CPU. Bad input: one error line, exit 2.",
    )
    p.add_argument(
        "--profile",
        default="sim",
        help="graph profile: graph_finetune_<profile>.yaml (default: sim)",
    )
    p.add_argument("--task", default="open_drawer", help="twin task (default: open_drawer)")
    p.add_argument("--demos", type=int, default=None, help="scripted demos (default 20; quick 3)")
    p.add_argument("--offline-steps", type=int, default=None,
                   help="offline gradient updates (default 5000; quick 200)")  # fmt: skip
    p.add_argument("--online-episodes", type=int, default=None,
                   help="episodes on the graph (default 20; quick 4)")  # fmt: skip
    p.add_argument("--algo", default="calql", help=f"one of {', '.join(ALGOS)} (default: calql)")
    p.add_argument("--reward", default="true",
                   help="true: the twin's success (-1/0); model:PATH: a twinloop.vlm_reward "
                   "checkpoint run by reward_node; with --reset-free one per task: "
                   "model:open_drawer=A.safetensors,close_drawer=B.safetensors (default: true)")  # fmt: skip
    p.add_argument("--success-frames", type=int, default=3,
                   help="with a learned reward: success flags in a row that end an online "
                   "episode (default 3: 0.3 s at 10 Hz; docs/finetune.md has the measurement)")  # fmt: skip
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="episodes per evaluation, fixed seeds (default 10; quick 3)")  # fmt: skip
    p.add_argument(
        "--utd", type=float, default=1.0, help="learner updates per env step (default 1)"
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<timestamp>_finetune)")
    p.add_argument("--quick", action="store_true", help="the small budget of make demo")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True,
                   help="the twin in real time at 10 Hz (default; --no-realtime is refused: "
                   "see docs/finetune.md)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of demos, training and episodes")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up on the graph after N s")
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    p.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                   help="override a graph node parameter, e.g. learner.utd=2.0 (repeatable)")  # fmt: skip
    p.add_argument("--reset-free", action="store_true",
                   help="RoboFuME reset-free: the task and its backward task (TASK_PAIRS) take "
                   "turns on success, one policy conditioned on task_onehot; with a learned "
                   "reward, give one model per task in --reward")  # fmt: skip
    p.add_argument("--reset-every", type=int, default=10,
                   help="--reset-free: a full twin reset every N online episodes (default 10; "
                   "0 = only the first)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_finetune)
