"""The ``twinloop`` command: one entry point, a subcommand per job, ``--help`` everywhere."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import TwinloopError

__all__ = ["main"]

log = logging.getLogger("twinloop")


def _out(text: str) -> None:
    """User-facing output of the CLI (library code logs instead)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _setup_env() -> None:
    # Headless rendering unless the user chose a backend.
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def _run_dir(root: str) -> Path:
    path = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----- twin ------------------------------------------------------------------------------------
def _twin_config(args: argparse.Namespace):
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import TwinConfig

    return TwinConfig(
        task=args.task,
        camera=CameraConfig(width=args.width, height=args.height),
        render=bool(getattr(args, "frames", 0)),
    )


def _params_arg(items: Sequence[str]) -> dict[str, float]:
    params: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            msg = f"--param expects NAME=VALUE, got {item!r}"
            raise TwinloopError(msg)
        try:
            params[name] = float(value)
        except ValueError:
            msg = f"--param {name}: {value!r} is not a number"
            raise TwinloopError(msg) from None
    return params


def cmd_twin_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from twinloop.sim2real.rollout import run_expert_episodes
    from twinloop.sim2real.twin import Twin

    twin = Twin(_twin_config(args), params=_params_arg(args.param))
    bar = tqdm(total=args.episodes * twin.task.max_steps, unit="step", desc=args.task)
    results = []
    try:
        for res in run_expert_episodes(
            twin,
            args.episodes,
            seed=args.seed,
            noise=args.noise,
            keep_frames=args.frames,
            on_step=lambda _ep, _step: bar.update(1),
        ):
            bar.update(twin.task.max_steps - res.steps)  # the budget an early success saved
            results.append(res)
            tqdm.write(
                f"episode {res.episode} seed {res.seed}: "
                f"{'success' if res.success else 'failure'} in {res.steps} steps, "
                f"return {res.ret:.2f}"
            )
    finally:
        bar.close()
        twin.close()
    rate = sum(r.success for r in results) / max(len(results), 1)
    _out(f"{args.task}: success {rate:.0%} over {len(results)} episodes")
    if args.frames and args.out:
        from twinloop.sim2real.sheet import save_contact_sheet

        path = save_contact_sheet([r.frames for r in results], Path(args.out))
        _out(f"contact sheet: {path}")
    return 0


def cmd_twin_params(args: argparse.Namespace) -> int:
    from twinloop.sim2real.params import PARAM_SPECS
    from twinloop.sim2real.tasks import make_task

    objects = make_task(args.task).objects if args.task else None
    _out(f"{'name':<18} {'default':>8} {'low':>8} {'high':>8}  unit    meaning")
    for p in PARAM_SPECS:
        if objects is None or p.obj in objects:
            _out(f"{p.name:<18} {p.default:>8g} {p.low:>8g} {p.high:>8g}  {p.unit:<7} {p.doc}")
    return 0


def cmd_twin_info(args: argparse.Namespace) -> int:
    from twinloop.sim2real.tasks import TASK_PAIRS, TASKS
    from twinloop.sim2real.twin import Twin

    twin = Twin(_twin_config(args))
    k = twin.intrinsics
    info = {
        "task": twin.task.name,
        "text": twin.task.text,
        "tasks": sorted(TASKS),
        "reset_free_pairs": TASK_PAIRS,
        "joints": list(twin.physics.joint_names),
        "camera": {
            "width": k.width,
            "height": k.height,
            "fx": k.fx,
            "fy": k.fy,
            "ppx": k.ppx,
            "ppy": k.ppy,
        },
        "control_hz": twin.config.control_hz,
        "physics_substeps": twin.n_substeps,
        "params": twin.get_params(),
    }
    twin.close()
    _out(json.dumps(info, indent=2))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from .topics import ACTION_NAMES, TOPICS

    for t in TOPICS.values():
        qos = "sensor (best effort)" if t.sensor else "reliable"
        _out(f"{t.name:<50} {t.msg_type:<28} {qos:<21} {t.doc}")
    _out(f"action layout (JointState names): {', '.join(ACTION_NAMES)}")
    return 0


# ----- graph -----------------------------------------------------------------------------------
def cmd_launch(args: argparse.Namespace) -> int:
    from .graph import GraphProcesses, load_graph

    graph = load_graph(args.graph or args.profile, overrides=args.set)
    _out(f"launching {graph.profile}: {', '.join(n.name for n in graph.nodes)} (Ctrl-C stops all)")
    with GraphProcesses(graph) as procs:
        try:
            code = procs.wait(timeout=args.duration)
        except KeyboardInterrupt:
            code = 0
    return code if code is not None else 0  # None: --duration ran out with all nodes up


def cmd_demo(args: argparse.Namespace) -> int:
    """Sim graph + scripted teleop episodes, recorded into runs/<ts>/demos.zarr."""
    import contextlib
    import math
    import re

    from tqdm import tqdm

    from .graph import GraphProcesses, load_graph

    if args.out:
        run = Path(args.out)
        if (run / "episodes.jsonl").exists() or (run / "demos.zarr").exists():
            msg = f"{run} already holds a demo run; choose a new --out"
            raise TwinloopError(msg)
        run.mkdir(parents=True, exist_ok=True)
    else:
        run = _run_dir(args.runs)
    results_path = run / "episodes.jsonl"
    store_path = (run / "demos.zarr").resolve()
    overrides = [
        f"twin.task={args.task}",
        f"scripted_teleop.task={args.task}",
        f"scripted_teleop.episodes={args.episodes}",
        f"scripted_teleop.results_path={results_path}",
        f"twin.realtime={str(args.realtime).lower()}",
    ]
    if args.record and not args.realtime:
        msg = (
            "--record needs --realtime: in lockstep (--no-realtime) the twin stamps with "
            "simulation time and the teleop with the wall clock, so steps cannot be aligned"
        )
        raise TwinloopError(msg)
    graph = load_graph(args.profile, overrides=overrides)
    record = (args.realtime if args.record is None else args.record) and "recorder" in graph.names
    if record:
        from twinloop.sim2real.tasks import make_task

        # The store's task sentence is what a VLM reward is later asked about.
        extra = [f"recorder.store_path={store_path}", f"recorder.task={make_task(args.task).text}"]
        hz = graph.node("twin").parameters.get("control_hz") if "twin" in graph.names else None
        if isinstance(hz, int | float) and not isinstance(hz, bool):  # one step per control step
            extra.append(f"recorder.fps={float(hz)}")
        if "scripted_teleop" in graph.names:
            # DDS matches each topic on its own: before the first reset, the teleop waits until
            # the recorder hears "start" and has the twin's camera and states.
            extra.append("scripted_teleop.min_event_readers=1")
            extra.append("scripted_teleop.recorder_status_topic=/twinloop/recorder/status")
        graph = graph.with_overrides(extra)
    graph = graph.with_overrides(args.set)
    _out(f"[demo] run dir {run}")
    _out(
        f"[demo] stage 1/1: sim graph ({', '.join(n.name for n in graph.nodes)}), "
        f"scripted teleop, {args.episodes} x {args.task}"
        + (f", recorded into {store_path.name}" if record else "")
    )
    seen: list[dict] = []
    recorder_lines: list[str] = []  # appended by the output thread, read here
    recorded = re.compile(r"committed episode (\d+) \((\w+), (\d+) steps, (\d+) dropped")
    unrecorded = re.compile(r"episode discarded|could not be written")

    def watch(node: str, line: str) -> None:
        if node == "recorder":
            recorder_lines.append(line)

    deadline = time.monotonic() + args.timeout
    code = 1
    # Node output goes to runs/<ts>/logs/<node>.log; the console keeps the progress bar.
    logs = run / "logs"
    # With a recorder, the twin starts last: the teleop waits for the twin's reset service before
    # its first episode, and by then DDS has matched its episode events with the recorder (new
    # participants can take seconds to be discovered; a start event sent before is lost).
    later = [n for n in ("twin",) if n in graph.names and record]
    with contextlib.ExitStack() as stack:
        groups = [
            stack.enter_context(GraphProcesses(graph.without(*later), log_dir=logs, output=watch))
        ]
        if later:
            ready = ["waiting for episode events"]
            if "scripted_teleop" in graph.names:
                ready.append("episode events: 1 publisher")
            while not all(any(r in line for line in recorder_lines) for r in ready):
                if groups[0].poll() is not None or time.monotonic() > deadline:
                    ended = {n: c for n, c in groups[0].returncodes().items() if c is not None}
                    _out(f"[demo] FAILED: the graph did not come up (exited: {ended}); see {logs}")
                    return groups[0].poll() or 1
                time.sleep(0.1)
            groups.append(
                stack.enter_context(GraphProcesses(graph.only(*later), log_dir=logs, output=watch))
            )
        bar = tqdm(total=args.episodes, unit="episode", desc="episodes")
        done_lines = 0  # recorder lines read so far
        finished = 0  # episodes the recorder committed or discarded
        grace_until = math.inf  # after the last episode: how long to wait for the recorder
        while time.monotonic() < deadline:
            for rec_ in _read_new(results_path, len(seen)):
                seen.append(rec_)
                bar.update(1)
                tqdm.write(
                    f"[demo] episode {rec_['episode']}: {'success' if rec_['success'] else 'failure'} "
                    f"in {rec_['steps']} steps"
                )
            for line in recorder_lines[done_lines:]:
                done_lines += 1
                if m := recorded.search(line):
                    finished += 1
                    tqdm.write(f"[demo] recorded episode {m[1]}: {m[3]} steps, {m[4]} dropped")
                elif unrecorded.search(line):
                    finished += 1
                    tqdm.write(f"[demo] recorder: {line.split(']: ')[-1]}")
            if len(seen) >= args.episodes:
                grace_until = min(grace_until, time.monotonic() + 20.0)
                if not record or finished >= len(seen) or time.monotonic() > grace_until:
                    code = 0  # the summary below says what was recorded
                    break
            elif (
                status := next((c for g in groups if (c := g.poll()) is not None), None)
            ) is not None:
                if len(_read_new(results_path, len(seen))) + len(seen) < args.episodes:
                    code = status or 1  # a node failed, or the graph ended early
                    break
            time.sleep(0.2)
        else:
            log.error("demo timed out after %.0f s", args.timeout)
        bar.close()
    rate = sum(r["success"] for r in seen) / max(len(seen), 1)
    _out(
        f"[demo] push through the ROS 2 graph: success {rate:.0%} "
        f"({sum(r['success'] for r in seen)}/{len(seen)} episodes); results {results_path}"
    )
    if len(seen) < args.episodes:
        _out(
            f"[demo] FAILED: {len(seen)} of {args.episodes} episodes finished; logs in {run / 'logs'}"
        )
        return code or 1
    if record:
        from twinloop.datasets.store import EpisodeStore

        if not store_path.exists():
            _out(f"[demo] FAILED: nothing was recorded; see {logs / 'recorder.log'}")
            return 1
        with EpisodeStore.open(store_path, mode="r") as store:
            metas = [store.episode_meta(i) for i in range(store.n_episodes)]
            n, steps = store.n_episodes, store.n_steps
        wins = sum(bool(m.get("success")) for m in metas)
        dropped = sum(int(m.get("dropped_steps") or 0) for m in metas)
        _out(
            f"[demo] recorded {n} episodes ({steps} steps, success {wins / max(n, 1):.0%}, "
            f"{dropped} dropped steps) into {store_path}"
        )
        if n < len(seen):
            _out(
                f"[demo] FAILED: {len(seen) - n} episodes were not recorded; see {logs / 'recorder.log'}"
            )
            return 1
    return code


def _read_new(path: Path, skip: int) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines[skip:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written
    return out


# ----- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinloop",
        description="twinloop: real-robot learning stack with a MuJoCo twin (see README.md).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def twin_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--task", default="push_cube", help="task name (default: push_cube)")
        p.add_argument("--width", type=int, default=320, help="camera width, px")
        p.add_argument("--height", type=int, default=240, help="camera height, px")

    twin = sub.add_parser("twin", help="the MuJoCo twin without ROS: run, record, params, info")
    twin_sub = twin.add_subparsers(dest="twin_command", required=True, metavar="TWIN_COMMAND")
    p = twin_sub.add_parser("run", help="run scripted-expert episodes in the twin")
    twin_args(p)
    p.add_argument("--episodes", type=int, default=3, help="number of episodes")
    p.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    p.add_argument("--noise", type=float, default=0.0, help="expert noise, fraction of a step")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a physical parameter, e.g. cube.mass=0.3 (repeatable)",
    )
    p.add_argument(
        "--frames", type=int, default=0, help="keep N frames per episode for a contact sheet"
    )
    p.add_argument("--out", default=None, help="PNG path of the contact sheet (with --frames)")
    p.set_defaults(func=cmd_twin_run)
    p = twin_sub.add_parser("params", help="list the named physical parameters and their ranges")
    p.add_argument("--task", default=None, help="only the parameters of this task's objects")
    p.set_defaults(func=cmd_twin_params)
    p = twin_sub.add_parser("info", help="print joints, camera intrinsics and parameters as JSON")
    twin_args(p)
    p.set_defaults(func=cmd_twin_info)
    from twinloop.sim2real.cli import add_commands as add_twin_commands

    add_twin_commands(twin_sub)

    ds = sub.add_parser("dataset", help="zarr episode stores: info, check, view, import, export")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True, metavar="DATASET_COMMAND")
    from twinloop.datasets.cli import add_commands as add_store_commands
    from twinloop.datasets.convert_cli import add_commands as add_convert_commands

    add_store_commands(ds_sub)
    add_convert_commands(ds_sub)

    rw = sub.add_parser("reward", help="VLM rewards: train-classifier, label, audit, teacher")
    rw_sub = rw.add_subparsers(dest="reward_command", required=True, metavar="REWARD_COMMAND")
    from twinloop.vlm_reward.cli import add_commands as add_reward_commands

    add_reward_commands(rw_sub)

    tr = sub.add_parser("train", help="policy learning: offline pre-training, online fine-tuning")
    tr_sub = tr.add_subparsers(dest="train_command", required=True, metavar="TRAIN_COMMAND")
    from twinloop.policy.cli import add_commands as add_train_commands

    add_train_commands(tr_sub)

    from twinloop.policy.finetune_cli import add_command as add_finetune_command

    add_finetune_command(sub)

    from twinloop.sim2real.asid.cli import add_command as add_sysid_command

    add_sysid_command(sub)

    from .calibrate_cli import add_calibrate_parser

    add_calibrate_parser(sub)

    from .pipeline_cli import add_commands as add_pipeline_commands

    add_pipeline_commands(sub)

    p = sub.add_parser("topics", help="print the ROS 2 topic contract")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser(
        "launch", help="start a node graph (config/graph_<profile>.yaml) as processes"
    )
    p.add_argument("--profile", default="sim", help="graph profile: sim or robot (default: sim)")
    p.add_argument("--graph", default=None, help="path to a graph YAML instead of a profile")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter, e.g. twin.task=open_drawer (repeatable)",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "demo", help="the main job on the twin: sim graph + scripted teleop episodes"
    )
    p.add_argument("--episodes", type=int, default=3, help="episodes to run (default: 3)")
    p.add_argument("--task", default="push_cube", help="task (default: push_cube)")
    p.add_argument("--profile", default="sim", help="graph profile (default: sim)")
    p.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the twin in real time (default) or as fast as possible",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NODE.PARAM=VALUE",
        help="override a node parameter (repeatable)",
    )
    p.add_argument("--runs", default="runs", help="where run directories go (default: runs/)")
    p.add_argument("--out", default=None, help="run directory (default: <runs>/<timestamp>)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="record the episodes into <run>/demos.zarr with the recorder node "
        "(default: with --realtime)",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("OpenGL", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _setup_env()
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # TwinloopError, TwinError and friends: bad input, said plainly
        if args.verbose:
            log.exception("%s", err)
        else:
            log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
