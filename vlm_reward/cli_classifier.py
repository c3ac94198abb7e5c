"""``twinloop reward train-classifier``: train a RoboFuME success classifier on an episode store.

Writes the checkpoint (``--out``, safetensors via :func:`~twinloop.vlm_reward.base.save_reward_model`),
a report JSON next to it (``<out stem>.report.json``: loss curve, calibrated threshold, held-out
frame- and episode-level FP/FN) and a PNG of the loss and the held-out probabilities
(``<out stem>.report.png``). Heavy imports stay inside the command so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "cmd_train_classifier", "main", "report_paths", "save_report_plot"]

log = logging.getLogger(__name__)


def _out(text: str) -> None:
    """User-facing output of the CLI (library code logs instead)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def report_paths(out: Path) -> tuple[Path, Path]:
    """The report JSON and PNG written next to the checkpoint ``out``."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.report.json"), out.with_name(f"{stem}.report.png")


def _config(args: argparse.Namespace) -> Any:
    from .success_classifier import ClassifierConfig

    return ClassifierConfig(
        backbone=args.backbone,
        model_name=args.model_name,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        model_config=args.model_config,
        device=args.device,
        precision=args.precision,
        finetune_last_blocks=args.finetune_last_blocks,
        size=args.size,
        k_last=args.k_last,
        early_fraction=args.early_fraction,
        augment=not args.no_augment,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        target_fpr=args.target_fpr,
        min_threshold=args.min_threshold,
        reward_mode=args.reward_mode,
    )


def _fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from .base import save_reward_model
    from .classifier_data import open_image_store, split_episodes
    from .errors import RewardError
    from .success_classifier import train_classifier

    try:
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            msg = f"{out} exists; pass --overwrite to replace it"
            raise RewardError(msg)
        config = _config(args)
        with open_image_store(args.dataset) as store:
            train_eps, hold_eps = split_episodes(store, args.holdout_fraction, args.seed)
        _out(f"episodes: {len(train_eps)} train, {len(hold_eps)} held out ({args.dataset})")
        model, report = train_classifier(
            args.dataset,
            config,
            train_episodes=train_eps,
            holdout_episodes=hold_eps,
            progress=not args.quiet,
            negatives=args.negatives,
        )
        save_reward_model(model, out)
        json_path, png_path = report_paths(out)
        json_path.write_text(json.dumps(report, indent=1))
        save_report_plot(report, png_path)
    except RewardError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    frame = report["holdout"]["frame"] or {}
    episode = report["holdout"]["episode"] or {}
    _out(f"threshold    {report['threshold']:.4f} (target FP rate {config.target_fpr:g})")
    _out(
        f"held out     frames: FP {_fmt_rate(frame.get('fp_rate'))} "
        f"FN {_fmt_rate(frame.get('fn_rate'))}   episodes: FP {_fmt_rate(episode.get('fp_rate'))} "
        f"FN {_fmt_rate(episode.get('fn_rate'))}"
    )
    if args.negatives:
        _out(f"negatives    {report['train']['hard_negatives']} goal frames of "
             f"{', '.join(args.negatives)}")  # fmt: skip
    _out(f"checkpoint   {out}")
    _out(f"report       {json_path} , {png_path}")
    return 0


def save_report_plot(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """PNG: the training loss curve and the held-out probabilities per episode vs the truth."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_loss, ax_prob) = plt.subplots(2, 1, figsize=(11, 7))
    try:
        curve = np.asarray(report["train"]["loss_curve"], dtype=float).reshape(-1, 2)
        ax_loss.plot(curve[:, 0], curve[:, 1])
        ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("BCE loss")
        ax_loss.set_title("training loss")
        offset = 0
        for entry in report["holdout_probs"]:
            probs = np.asarray(entry["prob"], dtype=float)
            xs = offset + np.arange(len(probs))
            color = "tab:green" if entry["success"] else "tab:red"
            ax_prob.plot(xs, probs, color=color, lw=1)
            if "truth" in entry:
                truth = np.asarray(entry["truth"], dtype=bool)
                ax_prob.fill_between(xs, 0, 1, where=truth, color="tab:green", alpha=0.15, lw=0)
            ax_prob.axvline(offset - 0.5, color="0.8", lw=0.5)
            offset += len(probs)
        ax_prob.axhline(float(report["threshold"]), color="k", ls="--", lw=1, label="threshold")
        ax_prob.set_ylim(-0.02, 1.02)
        ax_prob.set_xlabel("held-out frame (episodes concatenated; shaded: true success)")
        ax_prob.set_ylabel("success probability")
        ax_prob.set_title("held-out episodes (green: successful, red: failed)")
        ax_prob.legend(loc="upper left")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train-classifier`` to a subparsers object (``twinloop reward ...``)."""
    from .success_classifier import BACKBONES, REWARD_MODES, ClassifierConfig

    d = ClassifierConfig()
    p = sub.add_parser(
        "train-classifier",
        help="train a RoboFuME success classifier on an episode store",
        description=(
            "Train a success classifier: the last --k-last frames of successful episodes are "
            "positives, failed episodes and the early frames of successful ones negatives. "
            "The threshold is calibrated on held-out episodes to --target-fpr."
        ),
    )
    p.add_argument("--dataset", required=True, help="episode store (zarr) with image_color")
    p.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.25,
        help="fraction of episodes held out for calibration and the report (default 0.25)",
    )
    p.add_argument("--backbone", choices=BACKBONES, default=d.backbone)
    p.add_argument("--model-name", default=d.model_name, help="open_clip architecture")
    p.add_argument("--pretrained", default="", help="open_clip pretrained tag (needs network)")
    p.add_argument("--checkpoint", default="", help="local open_clip weight file")
    p.add_argument("--model-config", default="", help="open_clip model-config JSON")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default=d.precision, help="auto, fp32, fp16, bf16 (open_clip)")
    p.add_argument(
        "--finetune-last-blocks",
        type=int,
        default=d.finetune_last_blocks,
        help="open_clip: also train the last N transformer blocks (0: head only)",
    )
    p.add_argument("--size", type=int, default=d.size, help="cnn input size in pixels")
    p.add_argument("--k-last", type=int, default=d.k_last, help="positive frames per success")
    p.add_argument("--early-fraction", type=float, default=d.early_fraction)
    p.add_argument("--negatives", action="append", default=[], metavar="STORE",
                   help="another episode store whose successful episodes' last --k-last frames "
                   "are negatives (repeatable). Reset-free: the partner task's data, whose goal "
                   "is this task's start")  # fmt: skip
    p.add_argument("--no-augment", action="store_true", help="no shift/jitter augmentation")
    p.add_argument("--steps", type=int, default=d.steps, help="gradient steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--target-fpr", type=float, default=d.target_fpr)
    p.add_argument("--min-threshold", type=float, default=d.min_threshold)
    p.add_argument("--reward-mode", choices=REWARD_MODES, default=d.reward_mode)
    p.add_argument("--seed", type=int, default=0, help="split, initial weights and sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_classifier)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (the same command as under ``twinloop reward``)."""
    from .cli import run_standalone

    return run_standalone(add_commands, argv, description=__doc__ or "", level=logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
