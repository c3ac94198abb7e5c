"""Learning in the twin: Cal-QL offline -> online, IQL vs BC on noisy demos, an image-based run.

The experiments issue 5 asks for, state-based unless said otherwise, on this CPU:

* ``calql``: 20 scripted demos of a task -> offline Cal-QL -> online fine-tuning (50/50 mixing,
  -1/0 success reward, true success in the twin) for up to 30k env steps; success rate every
  ``--eval-every`` steps; the dip right after the switch to online is reported (CQL's collapse).
* ``iql_bc``: a noisy-demo dataset (a few expert demos among many noisy failures) -> IQL and BC
  with the same budget; success rates.
* ``image``: 84x84 camera frames (+ proprio, no privileged state) -> IQL offline, then online;
  the curve shows whether it learns at all.

Each writes its run directory (checkpoints, metrics.csv, learning_curve.png) under ``--out`` and
its figures into the ``finetune.py`` section of benchmarks/RESULTS.md. Long: see ``--help``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import cpu_model, git_rev, update_results
from twinloop.policy.base import make_algorithm
from twinloop.policy.buffers import RewardSpec, load_offline
from twinloop.policy.networks import EncoderSpec
from twinloop.policy.obs import ObsSpec, default_state_keys
from twinloop.policy.train import (
    OfflineConfig,
    OnlineConfig,
    plot_learning_curve,
    train_offline,
    train_online,
)
from twinloop.policy.twin_env import PolicyTwinEnv
from twinloop.sim2real.record import RecordConfig, record_twin_dataset
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import TwinConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = "finetune.py"
log = logging.getLogger("bench.finetune")


def record(path: Path, task: str, episodes: int, kinds: tuple[str, ...], *, noise: float,
           size: int, seed: int) -> Path:  # fmt: skip
    if path.exists():
        shutil.rmtree(path)
    camera = CameraConfig(width=size, height=size)
    cfg = RecordConfig(episodes=episodes, kinds=kinds, noise=noise, depth=False, hold_steps=0,
                       seed=seed)  # fmt: skip
    return record_twin_dataset(path, cfg, TwinConfig(task=task, camera=camera))


def run_phases(
    name: str,
    algo_type: str,
    config: Any,
    obs: ObsSpec,
    dataset: Path,
    task: str,
    out: Path,
    *,
    offline_steps: int,
    online_steps: int,
    eval_every_off: int,
    eval_every_on: int,
    eval_episodes: int,
    seed: int,
    image_features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Offline (and, when online_steps > 0, online) training; returns the figures."""
    run = out / name
    if run.exists():
        shutil.rmtree(run)
    gamma = float(getattr(config, "gamma", 0.99))
    buffer = load_offline(dataset, obs, RewardSpec("success"), gamma=gamma, seed=seed)
    env = PolicyTwinEnv(task, obs, reward="success", seed=seed)
    spec = EncoderSpec(state_dim=env.state_dim, image_size=obs.image_size,
                       **(image_features or {}))  # fmt: skip
    algo = make_algorithm(algo_type, spec, config, seed=seed)
    t0 = time.perf_counter()
    off = train_offline(
        algo, buffer, OfflineConfig(steps=offline_steps, eval_every=eval_every_off,
                                    eval_episodes=eval_episodes, checkpoint_every=offline_steps,
                                    seed=seed),
        out_dir=run / "offline", env=env,
    )  # fmt: skip
    t_off = time.perf_counter() - t0
    plot_learning_curve(off.evals, run / "offline" / "learning_curve.png", title=f"{name}: success")
    figures: dict[str, Any] = {
        "name": name,
        "algo": algo_type,
        "transitions": len(buffer),
        "offline_updates": offline_steps,
        "offline_evals": [(e.step, e.success_rate) for e in off.evals],
        "offline_success": off.final_success,
        "offline_s": round(t_off, 1),
    }
    if online_steps > 0:
        t0 = time.perf_counter()
        on = train_online(
            algo, buffer, env,
            OnlineConfig(online_steps=online_steps, eval_every=eval_every_on,
                         eval_episodes=eval_episodes, checkpoint_every=online_steps, seed=seed,
                         offline_fraction=float(getattr(config, "offline_fraction", 0.5))),
            out_dir=run / "online", history=off.evals,
        )  # fmt: skip
        online = [(e.step, e.success_rate) for e in on.evals if e.phase == "online"]
        reached = next((s for s, r in online if r >= 0.8), None)
        early = [r for s, r in online if s <= max(5000, eval_every_on)]
        figures |= {
            "online_evals": online,
            "online_success": on.final_success,
            "best_online": max((r for _, r in online), default=None),
            "first_step_at_80": reached,
            "min_early_online": min(early) if early else None,
            "online_s": round(time.perf_counter() - t0, 1),
            "curve": str(on.curve) if on.curve else None,
        }
    env.close()
    (run / "figures.json").write_text(json.dumps(figures, indent=2))
    log.info("%s: %s", name, {k: v for k, v in figures.items() if not k.endswith("evals")})
    return figures


def exp_calql(args: argparse.Namespace) -> dict[str, Any]:
    from twinloop.policy.calql import CalQLConfig

    data = record(args.out / "calql_demos.zarr", args.task, args.demos, ("expert",),
                  noise=args.demo_noise, size=64, seed=args.seed)  # fmt: skip
    obs = ObsSpec(state_keys=default_state_keys(args.task, privileged=True))
    cfg = CalQLConfig(
        cql_n_actions=args.cql_actions,
        batch_size=args.batch_size,
        cql_alpha=args.cql_alpha,
        bc_steps=args.bc_steps,
        actor_lr=args.actor_lr,
        init_temperature=args.init_temperature,
        temperature_lr=args.temperature_lr,
        enable_calql=not args.cql,
    )
    return run_phases(
        "cql" if args.cql else "calql", "calql", cfg, obs, data, args.task, args.out,
        offline_steps=args.offline_steps, online_steps=args.online_steps,
        eval_every_off=max(1, args.offline_steps // 4), eval_every_on=args.eval_every,
        eval_episodes=args.eval_episodes, seed=args.seed,
    )  # fmt: skip


def exp_iql_bc(args: argparse.Namespace) -> dict[str, Any]:
    from twinloop.policy.bc import BCConfig
    from twinloop.policy.iql import IQLConfig

    # kinds cycle (--noisy-kinds): "wrong" = a competent demo of the wrong thing, "noisy" = the
    # expert with noise 1.0, "stall" = the expert stopping half way (see sim2real/record.py)
    kinds = tuple(k.strip() for k in args.noisy_kinds.split(",") if k.strip())
    data = record(args.out / "noisy_demos.zarr", args.task, args.noisy_episodes, kinds,
                  noise=0.1, size=64, seed=args.seed + 500)  # fmt: skip
    obs = ObsSpec(state_keys=default_state_keys(args.task, privileged=True))
    out = {}
    for algo_type, cfg in (("iql", IQLConfig(batch_size=args.batch_size)),
                           ("bc", BCConfig(batch_size=args.batch_size))):  # fmt: skip
        out[algo_type] = run_phases(
            f"noisy_{algo_type}", algo_type, cfg, obs, data, args.task, args.out,
            offline_steps=args.iql_steps, online_steps=0,
            eval_every_off=max(1, args.iql_steps // 4), eval_every_on=0,
            eval_episodes=args.eval_episodes, seed=args.seed,
        )  # fmt: skip
    return out


def exp_image(args: argparse.Namespace) -> dict[str, Any]:
    from twinloop.policy.iql import IQLConfig

    size = args.image_size
    data = record(args.out / "image_demos.zarr", args.task, args.demos, ("expert",),
                  noise=args.demo_noise, size=2 * size, seed=args.seed)  # fmt: skip
    obs = ObsSpec(state_keys=("proprio",), image_key="image_color", image_size=size)
    return run_phases(
        "image_iql", "iql", IQLConfig(batch_size=args.image_batch), obs, data, args.task,
        args.out, offline_steps=args.image_steps, online_steps=args.image_online_steps,
        eval_every_off=max(1, args.image_steps // 4), eval_every_on=args.eval_every,
        eval_episodes=args.eval_episodes, seed=args.seed,
    )  # fmt: skip


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0%}" if 0.0 <= value <= 1.0 else f"{value:.1f}"
    return str(value)


def _curve(evals: Sequence[tuple[int, float]]) -> str:
    return ", ".join(f"{s}: {r:.0%}" for s, r in evals)


def report(args: argparse.Namespace, results: dict[str, Any], load: tuple[float, float]) -> str:
    lines = [
        f"## benchmarks/finetune.py {', '.join(results)}: learning in the twin ({args.task})",
        "",
        f"`python benchmarks/finetune.py {' '.join(args.argv)}`".replace("  ", " "),
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"commit {git_rev()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); Python {platform.python_version()}",
        f"- Machine load: {load[0]:.2f} before, {load[1]:.2f} after (1 min load average)",
        "- Success = the twin's true success predicate; evaluation: "
        f"{args.eval_episodes} episodes with fixed seeds, deterministic actions.",
        "",
    ]
    if "calql" in results:
        r = results["calql"]
        lines += [
            f"### {'CQL (no calibration)' if args.cql else 'Cal-QL'}, {args.demos} scripted demos, state-based (proprio + privileged object "
            f"state), -1/0 success reward; cql_alpha {args.cql_alpha}, {args.cql_actions} sampled "
            f"actions, BC warm-up {args.bc_steps} updates, actor lr {args.actor_lr}, initial "
            f"alpha {args.init_temperature}",
            "",
            "| phase | budget | success (last eval) | curve (step: success) | wall |",
            "|---|---|---:|---|---:|",
            f"| offline | {r['offline_updates']} updates | {_fmt(r['offline_success'])} | "
            f"{_curve(r['offline_evals'])} | {r['offline_s']} s |",
        ]
        if "online_evals" in r:
            lines.append(
                f"| online | {args.online_steps} env steps, UTD 1, 50/50 mixing | "
                f"{_fmt(r['online_success'])} | {_curve(r['online_evals'])} | {r['online_s']} s |"
            )
            lines += [
                "",
                f"First evaluation at >= 80%: {_fmt(r['first_step_at_80'])} env steps; best "
                f"online {_fmt(r['best_online'])}. Lowest success in the first 5k online steps: "
                f"{_fmt(r['min_early_online'])} (offline end: {_fmt(r['offline_success'])}): "
                "a collapse would show here.",
            ]
        lines.append("")
    if "iql_bc" in results:
        iql, bc = results["iql_bc"]["iql"], results["iql_bc"]["bc"]
        lines += [
            f"### IQL vs BC on mixed demos ({args.noisy_episodes} episodes cycling through kinds "
            f"{args.noisy_kinds}; 'wrong' = the expert of the wrong goal, 'noisy' = the expert "
            "with noise 1.0; both fail)",
            "",
            "| algorithm | updates | success (last eval) | curve | wall |",
            "|---|---:|---:|---|---:|",
            f"| IQL | {iql['offline_updates']} | {_fmt(iql['offline_success'])} | "
            f"{_curve(iql['offline_evals'])} | {iql['offline_s']} s |",
            f"| BC | {bc['offline_updates']} | {_fmt(bc['offline_success'])} | "
            f"{_curve(bc['offline_evals'])} | {bc['offline_s']} s |",
            "",
        ]
    if "image" in results:
        r = results["image"]
        lines += [
            f"### Image-based IQL ({args.image_size}x{args.image_size} frames + proprio, small CNN "
            f"with DrQ shifts), {args.demos} demos",
            "",
            "| phase | budget | success (last eval) | curve | wall |",
            "|---|---|---:|---|---:|",
            f"| offline | {r['offline_updates']} updates | {_fmt(r['offline_success'])} | "
            f"{_curve(r['offline_evals'])} | {r['offline_s']} s |",
        ]
        if "online_evals" in r:
            lines.append(
                f"| online | {args.image_online_steps} env steps | {_fmt(r['online_success'])} | "
                f"{_curve(r['online_evals'])} | {r['online_s']} s |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full run on a 2-core CPU: about an hour (Cal-QL online dominates); --quick: "
        "about a minute.",
    )
    p.add_argument("--experiments", default="calql,iql_bc,image",
                   help="comma-separated: calql, iql_bc, image (default: all)")  # fmt: skip
    p.add_argument("--task", default="open_drawer", help="twin task (default: open_drawer)")
    p.add_argument("--demos", type=int, default=20, help="scripted demos (default 20)")
    p.add_argument("--demo-noise", type=float, default=0.1, help="expert action noise of demos")
    p.add_argument("--offline-steps", type=int, default=5000, help="Cal-QL offline updates")
    p.add_argument("--online-steps", type=int, default=30000, help="Cal-QL online env steps")
    p.add_argument("--cql-actions", type=int, default=4, help="Cal-QL sampled actions (CORL 10)")
    p.add_argument("--cql", action="store_true",
                   help="plain CQL (no Monte-Carlo lower bound): the collapse baseline")  # fmt: skip
    p.add_argument("--cql-alpha", type=float, default=1.0, help="Cal-QL conservative weight")
    p.add_argument("--bc-steps", type=int, default=1000, help="Cal-QL behaviour-cloning warm-up")
    p.add_argument("--actor-lr", type=float, default=3e-4, help="Cal-QL actor learning rate")
    p.add_argument("--init-temperature", type=float, default=0.05, help="Cal-QL initial alpha")
    p.add_argument("--temperature-lr", type=float, default=3e-4, help="Cal-QL alpha learning rate")
    p.add_argument("--noisy-episodes", type=int, default=40, help="episodes of the noisy set")
    p.add_argument("--noisy-kinds", default="expert,wrong",
                   help="episode kinds of the IQL/BC dataset, cycled (default expert,wrong)")  # fmt: skip
    p.add_argument("--iql-steps", type=int, default=10000, help="IQL/BC updates")
    p.add_argument("--image-size", type=int, default=84, help="image side (84 or 100)")
    p.add_argument("--image-steps", type=int, default=3000, help="image IQL offline updates")
    p.add_argument("--image-online-steps", type=int, default=0, help="image online env steps")
    p.add_argument("--image-batch", type=int, default=128, help="image batch size")
    p.add_argument("--batch-size", type=int, default=256, help="state batch size")
    p.add_argument("--eval-every", type=int, default=2500, help="online eval period, env steps")
    p.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and evaluation")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_finetune"), help="run dirs")
    p.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    p.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    p.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.quick:
        args.demos, args.offline_steps, args.online_steps = 3, 30, 200
        args.noisy_episodes, args.iql_steps, args.image_steps = 4, 30, 20
        args.image_size, args.image_batch, args.batch_size = 32, 16, 32
        args.eval_every, args.eval_episodes = 100, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [e.strip() for e in args.experiments.split(",") if e.strip()]
    runners = {"calql": exp_calql, "iql_bc": exp_iql_bc, "image": exp_image}
    unknown = sorted(set(chosen) - set(runners))
    if unknown:
        log.error("unknown experiments %s. Available: %s", unknown, sorted(runners))
        return 2
    load0 = os.getloadavg()[0]
    results = {name: runners[name](args) for name in chosen}
    body = report(args, results, (load0, os.getloadavg()[0]))
    (args.out / "report.md").write_text(body + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if not args.no_results:
        # one section per experiment set, so runs of different experiments do not overwrite
        update_results(args.results, f"{SECTION} {'+'.join(results)}", body)
    log.info("wrote %s", args.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
