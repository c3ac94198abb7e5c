"""``twinloop pipeline`` (the whole loop, ``make demo``) and ``twinloop report RUN_DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .errors import TwinloopError


def cmd_pipeline(args: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig, run_pipeline

    out = Path(args.out) if args.out else Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    stages = tuple(s for s in (args.stages or "").split(",") if s)
    cfg = PipelineConfig(out=out, quick=args.quick, task=args.task, seed=args.seed, stages=stages,
                         reset_free=args.reset_free)  # fmt: skip
    code, _ = run_pipeline(cfg)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    run = Path(args.run_dir)
    if not (run / "run.json").exists():
        msg = f"{run} is not a pipeline run directory (no run.json)"
        raise TwinloopError(msg)
    path = build_report(run)
    sys.stdout.write(f"report {path}\n")
    return 0


def add_commands(sub: Any) -> None:
    from .pipeline import STAGE_NAMES

    p = sub.add_parser(
        "pipeline",
        help="the whole loop on the twin: demos, rewards, Cal-QL fine-tuning, ASID, report",
        description="The whole loop on the twin (what `make demo` runs): the sim graph records "
        "teleop demos -> reward data -> success classifier and preference reward, each audited "
        "-> offline Cal-QL -> online fine-tuning on the actor/learner nodes with the learned "
        "reward, reset-free forward/backward -> an ASID round on the rod and the deploy of the identified twin's lift -> "
        "<run>/report.html.",
        epilog="--quick: about 3 minutes on a 2-core CPU (CI); the full budget about 10 minutes (8 min measured). "
        f"Stages: {', '.join(STAGE_NAMES)}. Bad input: one error line, exit 2.",
    )
    p.add_argument("--quick", action="store_true", help="the small budget (make demo QUICK=1)")
    p.add_argument("--task", default="open_drawer", help="fine-tuning task (default: open_drawer)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and episodes")
    p.add_argument("--reset-free", action=argparse.BooleanOptionalAction, default=True,
                   help="online fine-tuning reset-free, forward/backward with one classifier "
                   "per task (default; needs a task with a backward task, else it runs the task "
                   "alone)")  # fmt: skip
    p.add_argument("--runs", default="runs", help="where run directories go (default: runs/)")
    p.add_argument("--out", default=None, help="run directory (default: <runs>/<timestamp>)")
    p.add_argument(
        "--stages", default=None, help=f"comma-separated subset of {','.join(STAGE_NAMES)}"
    )
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser(
        "report",
        help="(re)build <run>/report.html from a pipeline run directory",
        description="Rebuild the self-contained HTML report of a `twinloop pipeline` run from "
        "what its stages wrote (run.json, summaries, PNGs).",
    )
    p.add_argument("run_dir", help="the pipeline's run directory (holds run.json)")
    p.set_defaults(func=cmd_report)
