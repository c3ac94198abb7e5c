"""``twinloop reward audit``: judge a reward against a recorded twin dataset's ground truth.

Three reward sources, one of them required:

* ``--checkpoint M``: a reward model saved by ``save_reward_model`` (any type);
* ``--key reward``: rewards already stored in the dataset under that key;
* ``--clip-goal ... --clip-baseline ...``: a zero-shot VLM-RMs CLIP reward built from flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "cmd_audit", "main"]

log = logging.getLogger(__name__)


def _out(text: str) -> None:
    """User-facing output of the CLI (library code logs instead)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _clip_model(args: argparse.Namespace) -> Any:
    from .clip_reward import ClipReward, ClipRewardConfig

    config = ClipRewardConfig(
        goal_prompts=tuple(args.clip_goal),
        baseline_prompts=tuple(args.clip_baseline),
        alpha=args.clip_alpha,
        model_name=args.clip_model,
        pretrained=args.clip_pretrained,
        checkpoint=args.clip_weights,
        model_config=args.clip_model_config,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
    )
    return ClipReward(config)


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the audit the flags describe; prints the markdown summary (or JSON)."""
    from .audit import AuditConfig, run_audit
    from .base import load_reward_model
    from .errors import RewardError

    if args.clip_baseline and not args.clip_goal:
        msg = "--clip-baseline needs --clip-goal"
        raise RewardError(msg)
    if args.clip_goal and not args.clip_baseline:
        msg = "--clip-goal needs at least one --clip-baseline prompt"
        raise RewardError(msg)
    model = None
    source = ""
    if args.checkpoint:
        model = load_reward_model(args.checkpoint)
        source = f"{model.config.type} checkpoint {args.checkpoint}"
    elif args.clip_goal:
        model = _clip_model(args)
        source = f"clip zero-shot {tuple(args.clip_goal)} vs {tuple(args.clip_baseline)}"
    config = AuditConfig(
        reward_key=args.key or "",
        success_key=args.success_key,
        success_threshold=args.success_threshold,
        batch_size=args.batch_size,
        plots=not args.no_plots,
        max_plots=args.max_plots,
    )
    report = run_audit(
        args.dataset, args.out, model=model, config=config, source=source, progress=True
    )
    if args.json:
        _out(json.dumps(report.to_dict(), indent=2))
    else:
        _out((Path(args.out) / "summary.md").read_text())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``audit`` to a ``twinloop reward`` sub-command group."""
    p = sub.add_parser(
        "audit",
        help="correlate a reward with a twin dataset's true progress and success",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="episode store recorded from the twin")
    p.add_argument("--out", required=True, type=Path, help="folder for summary.json/.md and PNGs")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="reward model file (save_reward_model)")
    src.add_argument("--key", help="audit the rewards stored under this dataset key")
    src.add_argument(
        "--clip-goal", action="append", default=[], help="CLIP goal prompt (repeatable)"
    )
    p.add_argument(
        "--clip-baseline", action="append", default=[], help="CLIP baseline prompt (repeatable)"
    )
    p.add_argument("--clip-alpha", type=float, default=0.5, help="goal-baseline weight in [0, 1]")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture")
    p.add_argument("--clip-pretrained", default="", help="open_clip pretrained tag (network once)")
    p.add_argument("--clip-weights", default="", help="local open_clip weight file")
    p.add_argument("--clip-model-config", default="", help="model-config JSON (custom arch)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (CLIP only)")
    p.add_argument("--precision", default="auto", help="auto, fp32, fp16 or bf16 (CLIP only)")
    p.add_argument("--success-key", default="", help="stored success flags going with --key")
    p.add_argument(
        "--success-threshold",
        type=float,
        default=None,
        help="flag success where reward >= this (replaces the model's own flags)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="frames per reward-model call")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--max-plots", type=int, default=50, help="episode PNGs for the first N")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_audit)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (the same command as under ``twinloop reward``)."""
    from .cli import run_standalone

    return run_standalone(add_commands, argv, description="reward tools")


if __name__ == "__main__":
    raise SystemExit(main())
