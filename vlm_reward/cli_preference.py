"""``twinloop reward label``: RL-VLM-F offline — VLM preference labels, a reward ensemble, relabel.

Samples random frame pairs from a dataset, asks a VLM (any OpenAI-compatible API, or
``--teacher``: the simulated teacher answering from the dataset's own ground truth) which frame
better achieves the dataset's task, trains the Bradley-Terry ensemble on the answers, saves it,
and writes its reward for every row into a new dataset (``--in-place``: into the source, adding
or replacing only the reward key). A JSON report says how many queries were asked and dropped
and how well the ensemble fits its labels (and, where the dataset records the twin's
``progress``, the Spearman correlation of the learned reward with it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RewardError

__all__ = ["add_commands", "main"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _vlm(args: argparse.Namespace) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The VLM client (and the teacher behind it with ``--teacher``); yields (client, info)."""
    from .vlm_client import VLMClient, VLMClientConfig

    info: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if args.teacher:
            from .teacher import FrameIndex, SimulatedTeacher

            frames = FrameIndex.from_store(args.dataset, progress=True)
            teacher = stack.enter_context(
                SimulatedTeacher(frames, error_rate=args.error_rate, seed=args.seed)
            )
            base_url, model, key_env = teacher.base_url, teacher.model, ""
            info["teacher"] = teacher
        else:
            if not args.base_url or not args.model:
                msg = "give --base-url and --model of a VLM, or --teacher for the simulated one"
                raise RewardError(msg)
            base_url, model, key_env = args.base_url, args.model, args.api_key_env
        config = VLMClientConfig(
            base_url=base_url,
            model=model,
            api_key_env=key_env,
            max_concurrency=args.concurrency,
            cache_dir=str(args.cache_dir or ""),
            timeout_s=args.timeout_s,
        )
        client = stack.enter_context(VLMClient(config))
        yield client, info


def _spearman(rewards: np.ndarray, truth: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(rewards) < 2 or np.ptp(truth) == 0 or np.ptp(rewards) == 0:
        return float("nan")
    return float(spearmanr(rewards, truth)[0])


def _label(args: argparse.Namespace) -> int:
    from twinloop.datasets.cli import parse_episodes
    from twinloop.datasets.errors import DatasetError
    from twinloop.datasets.store import EpisodeStore

    from .base import save_reward_model
    from .labeling import (
        ask_pairs,
        default_relabel_path,
        fit_preference,
        pair_goals,
        relabel_store,
    )
    from .labeling import sample_pairs as sample
    from .preference import PreferenceConfig

    started = time.monotonic()
    if args.in_place and args.out_dataset:
        msg = "give --out-dataset or --in-place, not both"
        raise RewardError(msg)
    out_model = Path(args.out_model)
    if out_model.exists() and not args.overwrite:
        msg = f"{out_model} exists; pass --overwrite to replace it"
        raise RewardError(msg)
    out_dataset = (
        Path(args.dataset)
        if args.in_place
        else Path(args.out_dataset or default_relabel_path(args.dataset, args.key))
    )
    if not args.in_place and out_dataset.exists() and not args.overwrite:
        msg = f"{out_dataset} exists; pass --overwrite, another --out-dataset or --in-place"
        raise RewardError(msg)
    given = {
        "ensemble_size": args.ensemble,
        "size": args.size,
        "max_epochs": args.epochs,
        "lr": args.lr,
        "label_noise": args.label_noise,
    }
    config = PreferenceConfig(
        seed=args.seed,
        device=args.device,
        **{k: v for k, v in given.items() if v is not None},
    )
    try:
        episodes = parse_episodes(args.episodes) if args.episodes else None
        store = EpisodeStore.open(args.dataset, mode="r")
    except DatasetError as err:
        raise RewardError(str(err)) from err
    with store:
        if args.image_key not in store.keys:
            msg = f"{args.dataset} has no {args.image_key!r} frames (keys: {store.keys})"
            raise RewardError(msg)
        goal = args.goal or str(store.attrs.get("task", ""))
        if not goal.strip():
            msg = f"{args.dataset} has no task sentence; give the goal with --goal"
            raise RewardError(msg)
        pairs = sample(
            store, args.queries, seed=args.seed, episodes=episodes, same_task=args.same_task
        )
        goals = pair_goals(store, pairs, args.goal or "") if args.same_task else goal
        with _vlm(args) as (client, info):
            labels = ask_pairs(
                client,
                goals,
                store.array(args.image_key),
                pairs,
                concurrency=args.concurrency,
                progress=True,
            )
            teacher_stats = info["teacher"].stats if "teacher" in info else None
        if len(labels.labels) == 0:
            msg = f"the VLM gave no usable labels ({labels.stats()}; first errors: {labels.errors})"
            raise RewardError(msg)
        model, train_log = fit_preference(
            store.array(args.image_key), labels, config, progress=True
        )
        has_progress = "progress" in store.keys
    save_reward_model(model, out_model)
    target, rewards = relabel_store(
        args.dataset,
        model,
        key=args.key,
        image_key=args.image_key,
        out_path=None if args.in_place else out_dataset,
        in_place=args.in_place,
        overwrite=args.overwrite,
        progress=True,
    )
    report: dict[str, Any] = {
        "dataset": str(args.dataset),
        "goal": goal,
        "queries": labels.asked,
        **{k: v for k, v in labels.stats().items() if k != "asked"},
        "errors": labels.errors,
        "accuracy": round(train_log.ensemble_accuracy, 4),
        "epochs": train_log.epochs,
        "member_accuracy": [round(a, 4) for a in train_log.accuracy],
        "loss": train_log.as_dict()["loss"],
        "model": str(out_model),
        "out_dataset": str(target),
        "key": args.key,
        "seconds": round(time.monotonic() - started, 1),
    }
    if teacher_stats is not None:
        report["teacher"] = teacher_stats
    if has_progress:
        with EpisodeStore.open(target, mode="r") as relabeled:
            truth = np.asarray(relabeled.array("progress")[: relabeled.n_steps])
        report["spearman_progress"] = round(_spearman(rewards, truth), 4)
    report_path = Path(args.report) if args.report else out_model.with_suffix(".json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "asked %d pairs, kept %d (unsure %d, failed %d); ensemble accuracy %.3f; "
        "model %s, rewards in %s[%r], report %s",
        labels.asked,
        len(labels.labels),
        labels.unsure,
        labels.failed,
        train_log.ensemble_accuracy,
        out_model,
        target,
        args.key,
        report_path,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``label`` to a ``twinloop reward`` subparser group."""
    from .preference import PreferenceConfig

    p = sub.add_parser(
        "label",
        help="RL-VLM-F: VLM preference labels -> reward ensemble -> relabeled dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, help="EpisodeStore (zarr) to label and relabel")
    p.add_argument("--out-model", required=True, help="where to save the ensemble (.safetensors)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--out-dataset", help="new dataset with the learned reward (default: <dataset>_<key>)"
    )
    where.add_argument(
        "--in-place",
        action="store_true",
        help="add/replace only the reward key in --dataset itself (other keys untouched)",
    )
    p.add_argument("--key", default="reward", help="data key of the learned reward")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    vlm = p.add_argument_group("VLM")
    vlm.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    vlm.add_argument("--model", help="VLM name, e.g. gpt-4o")
    vlm.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var with the API key")
    vlm.add_argument("--cache-dir", help="answer cache directory (never pay twice for a query)")
    vlm.add_argument("--concurrency", type=int, default=8, help="pairs in flight at once")
    vlm.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout")
    vlm.add_argument(
        "--teacher",
        action="store_true",
        help="ask the simulated teacher answering from --dataset's ground truth (twin/demo)",
    )
    vlm.add_argument("--error-rate", type=float, default=0.2, help="teacher label flip rate")
    p.add_argument("--goal", help="goal sentence to ask about (default: the dataset's task)")
    p.add_argument("--queries", type=int, default=2000, help="pairs to ask about")
    p.add_argument("--episodes", help="sample pairs only from these episodes, e.g. 0-19,25")
    p.add_argument(
        "--same-task",
        action="store_true",
        help="pair only frames of episodes with the same task (multi-task datasets)",
    )
    p.add_argument("--image-key", default="image_color", help="data key of the frames")
    p.add_argument("--seed", type=int, default=0, help="pairs, training and teacher noise")
    net = p.add_argument_group("reward ensemble")
    default = PreferenceConfig()
    net.add_argument("--ensemble", type=int, help=f"nets (default {default.ensemble_size})")
    net.add_argument("--size", type=int, help=f"input size in pixels (default {default.size})")
    net.add_argument(
        "--epochs", type=int, help=f"most epochs per net (default {default.max_epochs})"
    )
    net.add_argument("--lr", type=float, help=f"learning rate (default {default.lr:g})")
    net.add_argument(
        "--label-noise",
        type=float,
        help="expected flip rate of the VLM's labels, for the robust BT loss "
        f"(default {default.label_noise:g}: plain Bradley-Terry)",
    )
    net.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--report", help="report JSON path (default: <out-model>.json)")
    p.set_defaults(func=_label)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (the same command as under ``twinloop reward``)."""
    from .cli import run_standalone

    return run_standalone(add_commands, argv, description="RL-VLM-F labeling")


if __name__ == "__main__":
    raise SystemExit(main())
