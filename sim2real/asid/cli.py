"""``twinloop sysid explore|run|identify|apply|round``: ASID from the command line.

- ``explore``: train the exploration policy (SAC on the Fisher reward) in the twin.
- ``run``: one exploration rollout on a twin started with hidden "true" parameters (the robot's
  stand-in), recorded to a rollout store.
- ``identify``: CEM estimate of the parameters from a rollout; result.json + fit plot.
- ``apply``: write an identification result into the twin's versioned parameter file.
- ``round``: all four in one run directory, then the rod-lifting check (what ``make demo`` runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinloop.sim2real.errors import TwinError

__all__ = ["add_command"]

log = logging.getLogger(__name__)

DEFAULT_PARAMS = {"lift_rod": "rod.com_offset", "push_cube": "cube.friction,cube.mass"}


def _names(text: str | None, task: str) -> tuple[str, ...]:
    text = text or DEFAULT_PARAMS.get(task, "")
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        msg = f"name the parameters to identify with --params (task {task} has no default)"
        raise TwinError(msg)
    return names


def _values(items: list[str], what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            msg = f"{what} takes NAME=VALUE (e.g. rod.com_offset=0.05), got {item!r}"
            raise TwinError(msg) from None
    return out


def _prior(items: list[str], names: tuple[str, ...], task: str) -> dict[str, tuple[float, float]]:
    """--prior NAME=LOW:HIGH; parameters without one use their documented range (logged)."""
    from twinloop.sim2real.twin import Twin, TwinConfig

    from .explore import prior_of

    twin = Twin(TwinConfig(task=task, render=False))
    prior = prior_of(names, twin)
    twin.close()
    for item in items:
        name, _, bounds = item.partition("=")
        low, sep, high = bounds.partition(":")
        try:
            prior[name.strip()] = (float(low), float(high))
        except ValueError:
            sep = ""
        if not sep:
            msg = f"--prior takes NAME=LOW:HIGH (e.g. rod.com_offset=-0.1:0.1), got {item!r}"
            raise TwinError(msg) from None
    given = {i.partition("=")[0].strip() for i in items}
    for name in names:
        if name not in given:
            log.info("prior of %s: its documented range %s", name, prior[name])
    return prior


def _progress_bar(total: int, desc: str, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


# ----- explore ---------------------------------------------------------------------------------------
def cmd_explore(args: argparse.Namespace) -> int:
    from .explore import ExploreConfig, train_exploration

    names = _names(args.params, args.task)
    config = ExploreConfig(
        task=args.task,
        params=names,
        prior=_prior(args.prior, names, args.task),
        episode_steps=args.episode_steps,
        total_steps=args.steps,
        random_steps=min(args.random_steps, args.steps),
        seed=args.seed,
    )
    out = Path(args.out)
    with _progress_bar(config.total_steps, f"exploration policy ({args.task})", "step") as bar:
        done = 0

        def progress(step: int, logs: Mapping[str, float]) -> None:
            nonlocal done
            bar.update(step - done)
            done = step
            bar.set_postfix(ret=f"{logs['return']:.3g}")

        result = train_exploration(config, out, progress=progress)
    _plot_returns(result.episode_returns, out / "returns.png", args.task)
    sys.stdout.write(
        f"exploration policy: {result.checkpoint} ({config.total_steps} steps, "
        f"{result.seconds:.0f} s: env {result.env_seconds:.0f} s, updates "
        f"{result.update_seconds:.0f} s); last 10 episode returns "
        f"{_mean(result.episode_returns[-10:]):.3g} vs first 10 {_mean(result.episode_returns[:10]):.3g}\n"
    )
    return 0


def _mean(x: list[float]) -> float:
    return sum(x) / max(1, len(x))


def _plot_returns(returns: list[float], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3))
    r = np.asarray(returns)
    ax.plot(r, ".", ms=2, alpha=0.4, label="episode")
    if len(r) >= 10:
        k = max(5, len(r) // 20)
        ax.plot(
            np.arange(k - 1, len(r)), np.convolve(r, np.ones(k) / k, "valid"), label=f"mean of {k}"
        )
    ax.set_xlabel("episode")
    ax.set_ylabel("Fisher return")
    ax.set_title(f"exploration policy training ({task})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----- run ---------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from twinloop.sim2real.twin import Twin, TwinConfig

    from .explore import PolicyExplorer, RandomExplorer, collect_rollout
    from .rollout import load_rollout, save_rollout, with_pose_noise

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        msg = f"{out} exists; pass --overwrite to replace it"
        raise TwinError(msg)
    true = _values(args.true, "--true")
    noise = _noise(args)
    if args.graph:
        code = _run_on_graph(args, true, out)
        if any(noise):  # the twin node publishes exact poses: the tracker's noise goes on after
            noisy = with_pose_noise(load_rollout(out), *noise, seed=args.seed)
            save_rollout(noisy, out, overwrite=True)
        return code
    explorer = RandomExplorer(args.seed) if args.policy is None else PolicyExplorer(args.policy)
    twin = Twin(TwinConfig(task=args.task, render=False), params=true)
    rollout = collect_rollout(
        twin, explorer, args.steps, seed=args.seed, meta={"true_params": twin.get_params()}
    )
    twin.close()
    if any(noise):
        rollout = with_pose_noise(rollout, *noise, seed=args.seed)
    save_rollout(rollout, out, overwrite=args.overwrite)
    moved = float(((rollout.object_pose[-1, :3] - rollout.object_pose[0, :3]) ** 2).sum() ** 0.5)
    sys.stdout.write(
        f"recorded a {rollout.steps}-step {explorer.name} rollout on {args.task} into {out} "
        f"(object moved {moved * 100:.1f} cm)\n"
    )
    return 0


def _noise(args: argparse.Namespace) -> tuple[float, float]:
    """(position std in m, rotation std in deg) from --pose-noise-mm / --pose-noise-deg."""
    noise = (args.pose_noise_mm / 1000.0, args.pose_noise_deg)
    if min(noise) < 0 or not all(map(math.isfinite, noise)):
        msg = (
            "--pose-noise-mm and --pose-noise-deg must be finite values >= 0, got "
            f"{args.pose_noise_mm} and {args.pose_noise_deg}"
        )
        raise TwinError(msg)
    return noise


def _noise_options(p: argparse.ArgumentParser, mm: float, deg: float) -> None:
    p.add_argument(
        "--pose-noise-mm", type=float, default=mm,
        help="noise on the recorded object positions, std per axis in mm, as a pose tracker on "
        f"the robot would report them (the twin's are exact; default {mm:g})",
    )  # fmt: skip
    p.add_argument(
        "--pose-noise-deg", type=float, default=deg,
        help=f"noise on the recorded object orientations, std per axis in deg (default {deg:g})",
    )  # fmt: skip


def _run_on_graph(args: argparse.Namespace, true: Mapping[str, float], out: Path) -> int:
    """The rollout through the ROS 2 graph: twin_node (lockstep, with the hidden parameters) +
    safety_node + sysid_node, as processes; every action goes through the safety layer."""
    from twinloop.graph import Graph, GraphProcesses, NodeSpec, load_graph

    from .rollout import load_rollout

    sim = load_graph("sim")
    twin = {"task": args.task, "realtime": False, "action_timeout_s": 60.0,
            "image_width": 64, "image_height": 48, "camera_fps": 2.0,
            **{f"params.{k}": v for k, v in true.items()}}  # fmt: skip
    sysid = {"task": args.task, "policy": args.policy or "", "steps": args.steps,
             "seed": args.seed, "out": str(out), "overwrite": bool(args.overwrite)}  # fmt: skip
    graph = Graph(
        "sysid",
        (
            sim.node("twin").with_parameters(twin),
            sim.node("safety").with_parameters({"watchdog_ms": 60_000.0}),
            NodeSpec("sysid", "twinloop_ros", "sysid_node", sysid, required=True),
        ),
    )
    sys.stdout.write("running the exploration rollout on the graph: twin, safety, sysid\n")
    with GraphProcesses(graph) as procs:
        code = procs.wait(timeout=args.timeout)
        codes = procs.stop()
    if code != 0 or codes.get("sysid") != 0 or not out.exists():
        msg = f"the graph rollout failed (sysid_node exit {codes.get('sysid')}); see the node log above"
        raise TwinError(msg)
    rollout = load_rollout(out)
    sys.stdout.write(
        f"recorded a {rollout.steps}-step rollout through the graph into {out} "
        f"({rollout.meta.get('clipped_steps', 0)} actions limited by the safety layer)\n"
    )
    return 0


# ----- identify ------------------------------------------------------------------------------------
def cmd_identify(args: argparse.Namespace) -> int:
    from twinloop.sim2real.twin import TwinConfig

    from .cem import CEMConfig
    from .identify import identify, plot_fit
    from .rollout import load_rollout

    rollout = load_rollout(args.rollout)
    names = _names(args.params, rollout.task)
    prior = _prior(args.prior, names, rollout.task)
    out = Path(args.out)
    config = CEMConfig(
        population=args.population, elites=args.elites, iterations=args.iterations,
        init_std=args.init_std, seed=args.seed,
    )  # fmt: skip
    twin_config = TwinConfig(task=rollout.task, control_hz=rollout.control_hz, render=False)
    with _progress_bar(config.iterations, "CEM", "it") as bar:

        def progress(i: int, it: Any) -> None:
            bar.update(1)
            bar.set_postfix(best=f"{it.best_value:.3g}")

        estimate, ident = identify(
            rollout, twin_config, names, prior, cem_config=config, workers=args.workers,
            backend=args.backend, horizon=_horizon(rollout, args.horizon), progress=progress,
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "task": rollout.task,
        "rollout": str(Path(args.rollout).resolve()),
        "explorer": rollout.meta.get("explorer"),
        "true_params": rollout.meta.get("true_params"),
        **ident.to_dict(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    centre = {n: (lo + hi) / 2 for n, (lo, hi) in prior.items()}
    plot_fit(
        rollout, twin_config, {"estimate": estimate, "prior centre": centre}, out / "fit.png",
        title=f"sysid fit: {rollout.task}",
    )  # fmt: skip
    text = ", ".join(f"{n}={v:.4g} +- {ident.spread[n]:.2g}" for n, v in estimate.items())
    sys.stdout.write(
        f"estimate: {text} (mismatch {ident.mismatch:.3g} vs {ident.prior_mismatch:.3g} at the "
        f"prior centre; {ident.evaluations} replays in {ident.seconds:.1f} s, {args.workers} "
        f"worker(s)); wrote {out / 'result.json'} and {out / 'fit.png'}\n"
    )
    return 0


# Exploration steps after the approach that identification compares by default (0: all), per
# task; measured with tracker noise 2 mm / 1 deg (docs/sysid.md, "Horizon"): the rod's CoM shows
# once the pushed rod turns, late in a rollout; the cube's friction in the first strike, and the
# tumbling after it adds local minima.
DEFAULT_HORIZON = {"lift_rod": 0, "push_cube": 10}


def _horizon(rollout: Any, after_approach: int | None) -> int | None:
    """Steps to compare: the recorded approach + ``after_approach`` (0: the whole rollout;
    None: the task's DEFAULT_HORIZON)."""
    if after_approach is None:
        after_approach = DEFAULT_HORIZON.get(rollout.task, 0)
    if after_approach <= 0:
        return None
    return int(rollout.meta.get("approach_steps", 0)) + after_approach


# ----- apply -----------------------------------------------------------------------------------------
def cmd_apply(args: argparse.Namespace) -> int:
    from .apply import apply_params

    path = Path(args.result)
    try:
        result = json.loads(path.read_text())
        estimate, task = result["estimate"], result["task"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        msg = f"{path} is not a finished identification result (result.json): {err}"
        raise TwinError(msg) from err
    provenance = {
        "method": "asid",
        "result": str(path.resolve()),
        "rollout": result.get("rollout"),
        "explorer": result.get("explorer"),
        "spread": result.get("spread"),
        "mismatch": result.get("mismatch"),
        "prior": result.get("prior"),
    }
    version = apply_params(args.file, task, estimate, provenance)
    sys.stdout.write(f"{args.file}: version {version} is current ({estimate})\n")
    return 0


# ----- round -----------------------------------------------------------------------------------------
def cmd_round(args: argparse.Namespace) -> int:
    """explore -> run (hidden true CoM) -> identify -> apply -> lift the rod with the estimate."""
    from twinloop.sim2real.twin import Twin, TwinConfig

    from .apply import apply_params, load_twin_params
    from .cem import CEMConfig
    from .explore import ExploreConfig, PolicyExplorer, collect_rollout, train_exploration
    from .identify import identify, plot_fit
    from .rod import lift_tilt, tune_grasp, tune_grasp_randomized
    from .rollout import save_rollout, with_pose_noise

    noise = _noise(args)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "rod.com_offset"
    prior = {name: (-0.1, 0.1)}
    quick = args.quick
    steps = 1500 if quick else args.steps
    config = ExploreConfig(total_steps=steps, random_steps=min(1000, steps), seed=args.seed)
    with _progress_bar(steps, "sysid 1/4 exploration policy", "step") as bar:
        done = 0

        def progress(step: int, logs: Mapping[str, float]) -> None:
            nonlocal done
            bar.update(step - done)
            done = step

        trained = train_exploration(config, out / "explore", progress=progress)
    sys.stdout.write(
        f"sysid 1/4: exploration policy {trained.checkpoint} ({trained.seconds:.0f} s)\n"
    )
    true = {name: args.true_com}
    twin = Twin(TwinConfig(task="lift_rod", render=False), params=true)
    rollout = collect_rollout(
        twin, PolicyExplorer(trained.checkpoint), config.episode_steps, seed=args.seed,
        meta={"true_params": twin.get_params()},
    )  # fmt: skip
    if any(noise):
        rollout = with_pose_noise(rollout, *noise, seed=args.seed)
    save_rollout(rollout, out / "rollout.zarr", overwrite=True)
    sys.stdout.write(
        f"sysid 2/4: exploration rollout on the twin with a hidden CoM offset "
        f"({rollout.steps} steps, tracker noise {args.pose_noise_mm:g} mm / "
        f"{args.pose_noise_deg:g} deg) -> {out / 'rollout.zarr'}\n"
    )
    cem_cfg = CEMConfig(population=24 if quick else 64, elites=6 if quick else 8,
                        iterations=5 if quick else 12, init_std=1.0, seed=args.seed)  # fmt: skip
    twin_config = TwinConfig(task="lift_rod", render=False)
    estimate, ident = identify(
        rollout, twin_config, (name,), prior, cem_config=cem_cfg, workers=args.workers,
        horizon=_horizon(rollout, None),
    )  # fmt: skip
    (out / "identify").mkdir(exist_ok=True)
    (out / "identify" / "result.json").write_text(
        json.dumps({"task": "lift_rod", "true_params": true, **ident.to_dict()}, indent=1)
    )
    plot_fit(rollout, twin_config, {"estimate": estimate, "prior centre": {name: 0.0}},
             out / "identify" / "fit.png", title="sysid fit: lift_rod")  # fmt: skip
    err = abs(estimate[name] - true[name])
    sys.stdout.write(
        f"sysid 3/4: estimate {name}={estimate[name]:+.4f} m (true {true[name]:+.4f}, error "
        f"{err * 1000:.1f} mm = {err / 0.2 * 100:.1f}% of the prior range) in {ident.seconds:.1f} s\n"
    )
    params_file = out / "twin_params.json"
    version = apply_params(params_file, "lift_rod", estimate, {"method": "asid", "round": str(out)})
    identified = load_twin_params(params_file)
    grasp_id = tune_grasp(identified, refine=1 if quick else 2)
    grasp_dr = tune_grasp_randomized(prior, draws=4 if quick else 8)
    real = Twin(TwinConfig(task="lift_rod", render=False), params=true)
    tilt_id, tilt_dr = lift_tilt(real, grasp_id), lift_tilt(real, grasp_dr)
    real.close()
    summary = {
        "true": true, "estimate": estimate, "spread": ident.spread, "version": version,
        "grasp_identified": grasp_id, "grasp_randomized": grasp_dr,
        "tilt_identified_deg": tilt_id, "tilt_randomized_deg": tilt_dr,
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    sys.stdout.write(
        f"sysid 4/4: twin parameters v{version} -> {params_file}; rod lift tilt with the "
        f"identified twin {tilt_id:.1f} deg vs domain-randomised {tilt_dr:.1f} deg "
        f"({summary['seconds']:.0f} s in all)\n"
    )
    if quick:
        sys.stdout.write(
            f"sysid: --quick trains the exploration policy for only {steps} steps, which shows "
            "the loop runs, not that it identifies; 15,000 steps (the default) identify the "
            "rod's CoM to a median 2.9% with 2 mm / 1 deg tracker noise (benchmarks/asid.py, "
            "docs/sysid.md)\n"
        )
    return 0


# ----- parser ----------------------------------------------------------------------------------------
def add_command(sub: argparse._SubParsersAction) -> None:
    sysid = sub.add_parser(
        "sysid",
        help="ASID system identification: explore, run, identify, apply, round",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    s = sysid.add_subparsers(dest="sysid_command", required=True, metavar="SYSID_COMMAND")

    p = s.add_parser("explore", help="train the exploration policy (SAC, Fisher reward)")
    p.add_argument("--task", default="lift_rod", help="lift_rod (default) or push_cube")
    p.add_argument("--params", default=None, help="comma-separated parameters (task default)")
    p.add_argument("--prior", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="prior bounds (default: the parameter's range); repeatable")  # fmt: skip
    p.add_argument("--steps", type=int, default=15_000, help="env steps of training")
    p.add_argument("--random-steps", type=int, default=1_500, help="random steps first")
    p.add_argument("--episode-steps", type=int, default=30, help="steps per rollout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (policy.safetensors, returns)")
    p.set_defaults(func=cmd_explore)

    p = s.add_parser("run", help="one exploration rollout on a twin with hidden true parameters")
    p.add_argument("--task", default="lift_rod")
    p.add_argument("--policy", default=None, help="exploration policy (default: random actions)")
    p.add_argument("--true", action="append", default=[], metavar="NAME=VALUE",
                   help="the hidden true parameters of the robot's stand-in; repeatable")  # fmt: skip
    p.add_argument("--steps", type=int, default=30, help="actions in the rollout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="rollout store (.zarr)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--graph", action="store_true",
                   help="run through the ROS 2 graph (twin_node + safety_node + sysid_node)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0, help="graph run limit, s")
    _noise_options(p, 0.0, 0.0)
    p.set_defaults(func=cmd_run)

    p = s.add_parser("identify", help="CEM estimate of the parameters from a rollout")
    p.add_argument("rollout", help="rollout store from `sysid run`")
    p.add_argument("--params", default=None, help="comma-separated parameters (task default)")
    p.add_argument("--prior", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="search bounds (default: the parameter's range); repeatable")  # fmt: skip
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--elites", type=int, default=8)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--init-std", type=float, default=1.0,
                   help="initial CEM std as a fraction of each prior width (default 1.0)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="parallel replay workers")
    p.add_argument("--backend", default="process", help="process (default) or ray")
    p.add_argument("--horizon", type=int, default=None,
                   help="compare the approach + this many exploration steps (0: all; default: "
                   "all for lift_rod, 10 for push_cube)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (result.json, fit.png)")
    p.set_defaults(func=cmd_identify)

    p = s.add_parser("apply", help="write an identification result into the twin's parameters")
    p.add_argument("result", help="result.json from `sysid identify`")
    p.add_argument("--file", default="twin_params.json", help="the versioned parameter file")
    p.set_defaults(func=cmd_apply)

    p = s.add_parser("round", help="explore, run, identify, apply and lift the rod (lift_rod)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--true-com", type=float, default=0.06, help="hidden true rod.com_offset, m")
    p.add_argument("--steps", type=int, default=15_000, help="exploration training steps")
    p.add_argument("--workers", type=int, default=2, help="parallel replay workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small budget (make demo)")
    _noise_options(p, 2.0, 1.0)
    p.set_defaults(func=cmd_round)
