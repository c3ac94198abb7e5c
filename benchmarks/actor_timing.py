"""Benchmark the actor's timing on the twin: is each action computed from the newest state?

The twin (real time, 10 Hz) publishes each step's joint state, EE pose and privileged state a
millisecond apart, and counts for every action it applies how many states it published after the
one the action was computed from (``action timing (states late)``, logged when it stops: 0 = the
newest state, 1 = one control step old). policy_node (an untrained state-based SAC on push_cube
with privileged keys) acts through safety_node, as in tests/test_policy_nodes.py.

Two rules, side by side on fresh graphs (a fresh graph is a fresh phase between the policy's
timer and the twin's steps), interleaved and the order flipped every round:

- *ours*: policy_node's default ``max_spread_s`` (half a control period): the action waits until
  the sources' stamps agree, and a tick does not act on a state older than that but waits for
  the next one;
- *any new samples*: ``max_spread_s`` 10 s, i.e. act as soon as every source has some sample
  newer than the last action's, which can mix the new joint state with the previous
  privileged state, or act at a tick just before the next state on one almost a period old.

Per rule: the share of applied actions computed from the newest state (median and worst over
graphs), the graphs where most actions were late, and the time from a state's stamp to the safe
action computed from it arriving at the twin (median over graphs of each graph's median).
Results go to benchmarks/RESULTS.md, into this script's own section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch
from bench_common import HERE, cpu_model, git_rev, update_results
from sensor_msgs.msg import JointState
from tqdm import tqdm
from twinloop.policy.base import make_algorithm, save_checkpoint
from twinloop.policy.networks import EncoderSpec
from twinloop.policy.obs import ObsSpec, default_state_keys, state_from_rows
from twinloop.policy.sac import SACConfig
from twinloop.sim2real.record import observation_row
from twinloop.sim2real.twin import Twin, TwinConfig
from twinloop_ros.conversions import stamp_to_ns
from twinloop_ros.node_utils import COMMAND_QOS
from twinloop_ros.probe import GraphProbe, ros_env

from twinloop.graph import Graph, GraphProcesses, NodeSpec, load_graph

SECTION = "actor_timing.py"
TASK = "push_cube"
DOMAIN_ID = 1 + (os.getpid() + 53) % 100
RULES = {"ours": -1.0, "any new samples": 10.0}  # policy_node max_spread_s


def init_checkpoint(out: Path) -> tuple[Path, list[str]]:
    keys = default_state_keys(TASK, privileged=True)
    twin = Twin(TwinConfig(task=TASK, render=False))
    try:
        twin.reset(seed=0)
        row = {k: np.asarray(v)[None] for k, v in observation_row(twin, None).items()}
        dim = int(state_from_rows(row, ObsSpec(state_keys=keys)).shape[1])
    finally:
        twin.close()
    torch.manual_seed(0)
    algo = make_algorithm("sac", EncoderSpec(state_dim=dim), SACConfig(hidden=(64, 64)), seed=0)
    return save_checkpoint(algo, out / "init.safetensors"), list(keys)


def make_graph(checkpoint: Path, keys: list[str], spread_s: float) -> Graph:
    sim = load_graph("sim").only("twin", "safety")
    twin = sim.node("twin").with_parameters(
        {"task": TASK, "image_width": 64, "image_height": 48, "camera_fps": 5.0}
    )
    policy = NodeSpec(
        "policy",
        "twinloop_ros",
        "policy_node",
        {
            "checkpoint": str(checkpoint),
            "state_keys": keys,
            "threads": 1,
            "max_spread_s": spread_s,
        },
    )
    return Graph("actor_timing", (twin, sim.node("safety"), policy))


def run_graph(graph: Graph, probe: GraphProbe, seconds: float) -> dict[str, Any]:
    """One fresh graph for ``seconds``: the twin's states-late counts and the loop latency."""
    lines: list[str] = []
    safe: list[tuple[int, int]] = []  # (stamp, arrival) in ns
    env = {**ros_env(DOMAIN_ID), "OMP_NUM_THREADS": "1"}
    sub = probe.node.create_subscription(
        JointState,
        "/twinloop/safe_action",
        lambda m: safe.append((stamp_to_ns(m.header.stamp), time.time_ns())),
        COMMAND_QOS,
    )
    try:
        with GraphProcesses(graph, env=env, output=lambda n, ln: lines.append(f"[{n}] {ln}")) as g:
            probe.spin_until(lambda: len(safe) >= 5, 60.0, "the first safe actions")
            start = len(safe)
            probe.spin_for(seconds)
            measured = safe[start:]
            codes = g.stop()
    finally:
        probe.node.destroy_subscription(sub)
    timing = [ln for ln in lines if "action timing (states late)" in ln]
    if not timing or any(codes.values()):
        msg = f"the graph failed ({codes}):\n" + "\n".join(lines[-30:])
        raise RuntimeError(msg)
    counts = json.loads(timing[-1].split("late): ")[1].replace("'", '"'))
    applied = sum(v for k, v in counts.items() if k != "hold")
    latency = [(arrival - stamp) / 1e6 for stamp, arrival in measured if stamp > 0]
    return {
        "counts": counts,
        "on_time": counts.get("0", 0) / applied if applied else 0.0,
        "latency_ms": statistics.median(latency) if latency else float("nan"),
        "actions": len(measured),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    on_time = [r["on_time"] for r in runs]
    return {
        "graphs": len(runs),
        "on_time_median": statistics.median(on_time),
        "on_time_worst": min(on_time),
        "late_graphs": sum(v < 0.5 for v in on_time),
        "latency_ms": statistics.median(r["latency_ms"] for r in runs),
        "latency_range": (min(r["latency_ms"] for r in runs), max(r["latency_ms"] for r in runs)),
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, wall_s: float) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "## benchmarks/actor_timing.py: does each action come from the newest state?",
        "",
        f"Measured {when} on {cpu_model()} ({os.cpu_count()} cores), commit {git_rev()}, "
        f"{args.graphs} fresh graphs per rule (twin 10 Hz real time + safety_node + "
        f"policy_node), {args.seconds:g} s each, rules interleaved; {wall_s:.0f} s in all.",
        "",
        "| rule | actions from the newest state, median (worst) | graphs with most actions late "
        "| state stamp -> safe action at the twin, median ms (range over graphs) |",
        "|---|---|---|---|",
    ]
    for rule, s in results.items():
        lo, hi = s["latency_range"]
        out.append(
            f"| {rule} | {s['on_time_median']:.0%} ({s['on_time_worst']:.0%}) | "
            f"{s['late_graphs']} of {s['graphs']} | {s['latency_ms']:.0f} ({lo:.0f}-{hi:.0f}) |"
        )
    out += [
        "",
        "Late = the twin had published a newer state than the one the action was computed from "
        "when it applied the action (its `action timing (states late)` count). The latency "
        "depends on the phase between the policy's timer and the twin's steps: with *ours* an "
        "action is computed at the tick when a state younger than half a period is there, else "
        "when the next state arrives; with *any new samples* at the tick on whatever is new.",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--graphs", type=int, default=6, help="fresh graphs per rule (default 6)")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per graph")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {rule: [] for rule in RULES}
    for key, value in ros_env(DOMAIN_ID).items():
        os.environ[key] = value
    with (
        tempfile.TemporaryDirectory() as tmp,
        GraphProbe.open("actor_timing", domain_id=DOMAIN_ID) as probe,
    ):
        checkpoint, keys = init_checkpoint(Path(tmp))
        bar = tqdm(total=args.graphs * len(RULES), desc="graphs", unit="graph")
        for i in range(args.graphs):
            order = list(RULES) if i % 2 == 0 else list(reversed(RULES))
            for rule in order:
                result = run_graph(make_graph(checkpoint, keys, RULES[rule]), probe, args.seconds)
                runs[rule].append(result)
                bar.set_postfix(rule=rule, late=result["counts"])
                bar.update(1)
        bar.close()
    text = report({rule: summarize(r) for rule, r in runs.items()}, args, time.perf_counter() - t0)
    sys.stdout.write(text)
    if not args.no_write:
        update_results(args.results, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
