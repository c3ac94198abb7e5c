"""Benchmark the reward node: camera frames -> VLM-RMs CLIP rewards, over DDS and in process.

Measures, in one run on this machine (open_clip models with random weights: nothing is
downloaded; the timings do not depend on the weights):

a. End to end over real DDS: a publisher process (``twinloop_ros.synthetic_sensors``) sends rgb8
   frames at ``--rate`` Hz; ``reward_node`` (its own process, clip reward) scores them; this
   process (a GraphProbe) takes frame stamp -> reward receive latency (p50/p99) and the sustained
   reward rate over ``--seconds`` s, after a warm-up.
b. The bare model forward (``ClipReward.__call__``: preprocess + encode + reward) on frames of the
   same size, same batch size (1 per camera) and torch threads, in this process with nothing
   else running. Overhead = (a) p50 / (b) p50; target <= 1.25x.
c. In process, no DDS: ``RewardRuntime`` fed at ``--rate`` Hz x ``--cameras`` cameras by a
   feeder thread: latency (submit -> result) p50/p99, output rate, dropped frames (replaced
   while waiting, or failed).

``--device cuda`` (the GPU machine; no ROS needed) runs (b) and (c) only, e.g.
``--device cuda --models ViT-B-32,ViT-L-14 --cameras 2``: target p99 <= 15 ms and no dropped
frames at 30 Hz x 2 cameras. A model written ``NAME@PX`` is the open_clip architecture NAME with
a PX-pixel input (a smaller model for a CPU that cannot keep up with NAME's own input).

Results go to benchmarks/RESULTS.md, into this script's own section per device (rewritten in
place); ``--body-out FILE`` also writes the section text to FILE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import update_results
from tqdm import tqdm
from twinloop.vlm_reward.base import RewardBatch, RewardModel, config_from_dict, make_reward_model
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.runtime import RewardRuntime

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SYNTHETIC = "twinloop_ros.synthetic_sensors"  # rclpy stays inside robot_ws/
GOAL = "a red cube on the green target mark"
BASELINE = "a robot arm above a table"
TARGET_OVERHEAD = 1.25  # end-to-end p50 / bare forward p50, from the issue
TARGET_P99_MS = 15.0  # GPU, 30 Hz x 2 cameras, from the issue
REWARD_TOPIC = "/twinloop/reward"
STATUS_TOPIC = "/twinloop/reward/status"


def log(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()


# ----- models ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    name: str  # open_clip architecture
    image_size: int = 0  # input side in pixels; 0 = the architecture's own

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, _, px = text.strip().partition("@")
        if not name or (px and not px.isdigit()):
            msg = f"a model is NAME or NAME@PIXELS (e.g. ViT-S-32@160), got {text!r}"
            raise RewardError(msg)
        return cls(name, int(px or 0))

    @property
    def label(self) -> str:
        return f"{self.name} @ {self.image_size} px" if self.image_size else self.name


def clip_values(spec: ModelSpec, device: str, workdir: Path) -> dict[str, Any]:
    """The ClipRewardConfig fields of ``spec`` (JSON-ready: the node gets them as its config)."""
    values: dict[str, Any] = {
        "goal_prompts": [GOAL],
        "baseline_prompts": [BASELINE],
        "model_name": spec.name,
        "device": device,
        "precision": "fp32" if device == "cpu" else "fp16",
    }
    if spec.image_size:
        import open_clip

        cfg = open_clip.get_model_config(spec.name)
        if cfg is None:
            msg = f"unknown open_clip model {spec.name!r}"
            raise RewardError(msg)
        cfg = json.loads(json.dumps(cfg))
        cfg["vision_cfg"]["image_size"] = spec.image_size
        name = f"{spec.name}-{spec.image_size}px"
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(cfg))
        values.update(model_name=name, model_config=str(path))
    return values


def build_model(values: dict[str, Any]) -> RewardModel:
    return make_reward_model(config_from_dict("clip", values))


def make_frames(width: int, height: int, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# ----- (b) the bare forward ------------------------------------------------------------------------
def time_forward(
    model: RewardModel,
    frames: list[np.ndarray],
    batch: int,
    n: int,
    warmup: int,
    device: str,
    *,
    pace_s: float = 0.0,
) -> list[float]:
    """Seconds per ``model(batch)`` call on stacks of ``batch`` frames.

    ``pace_s``: start one call every ``pace_s`` seconds (the device idles in between, as it does
    at a camera rate) instead of back to back.
    """
    out = []
    next_start = time.perf_counter()
    for i in range(warmup + n):
        stack = np.stack([frames[(i + k) % len(frames)] for k in range(batch)])
        delay = next_start - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sync(device)
        t0 = time.perf_counter()
        next_start = t0 + pace_s
        model(RewardBatch(frames=stack))
        sync(device)
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


# ----- (c) in process ------------------------------------------------------------------------------
@dataclass
class InProcessResult:
    cameras: int
    phase: str
    frames: int  # submitted in the measured window
    results: int
    skipped: int
    failed: int
    latency_ms: list[float]
    output_hz: float
    forward_ms_p50: float
    batch_mean: float


def run_inprocess(
    model: RewardModel,
    frames: list[np.ndarray],
    *,
    cameras: int,
    rate: float,
    seconds: float,
    warmup: float,
    phase: str,
) -> InProcessResult:
    """Feed ``cameras`` cameras at ``rate`` Hz; ``sync``: all on one tick, ``spread``: offset."""
    names = [f"cam{i}" for i in range(cameras)]
    latencies: list[float] = []
    measuring = threading.Event()

    def on_result(camera: str, stamp: int, reward: float, success: bool, lat: float) -> None:
        if measuring.is_set():
            latencies.append(lat * 1e3)

    offsets = [0.0 if phase == "sync" else c / (cameras * rate) for c in range(cameras)]
    with RewardRuntime(model, cameras=names, max_batch=cameras, on_result=on_result) as rt:
        t0 = time.monotonic() + 0.05
        k = 0
        submitted = 0
        t_measure = t0 + warmup
        t_end = t_measure + seconds
        while True:
            tick = t0 + k / rate
            if tick >= t_end:
                break
            if tick >= t_measure and not measuring.is_set():
                rt.reset_stats()
                measuring.set()
            for c, name in enumerate(names):
                due = tick + offsets[c]
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                rt.submit(name, frames[(k + c) % len(frames)], stamp=k)
                submitted += measuring.is_set()
            k += 1
        elapsed = time.monotonic() - t_measure
        rt.wait_idle(30.0)
        stats = rt.stats()
    return InProcessResult(
        cameras=cameras,
        phase=phase,
        frames=submitted,
        results=int(stats["results"]),
        skipped=int(stats["skipped"]),
        failed=int(stats["failed"]),
        latency_ms=latencies,
        output_hz=stats["results"] / max(elapsed, 1e-9),
        forward_ms_p50=float(stats["forward_ms"]["p50"] or float("nan")),
        batch_mean=float(stats["batch_size_mean"] or float("nan")),
    )


# ----- (a) end to end over DDS ---------------------------------------------------------------------
@dataclass
class DdsResult:
    latency_ms: list[float] = field(default_factory=list)  # frame stamp -> reward received
    published_hz: float = float("nan")
    frames_in_window: int = 0  # frames the probe saw published in the window
    output_hz: float = float("nan")
    status: dict[str, Any] = field(default_factory=dict)  # the node's last status
    error: str = ""


def ros_env(domain_id: int, log_dir: str, threads: int) -> dict[str, str]:
    from twinloop.graph import fastdds_profile

    env = {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": log_dir,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    profile = fastdds_profile()
    if profile is not None:  # 8 MiB shared-memory segments: 640x480 frames fit
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def wait_line(lines: list[str], pattern: str, timeout: float, procs: Any) -> bool:
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(rx.search(line) for line in list(lines)):
            return True
        if procs.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def run_dds(
    values: dict[str, Any], size: tuple[int, int], args: argparse.Namespace, log_dir: str
) -> DdsResult:
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String
    from twinloop_ros.conversions import stamp_to_ns
    from twinloop_ros.node_utils import COMMAND_QOS
    from twinloop_ros.probe import GraphProbe

    from twinloop.graph import Graph, GraphProcesses, NodeSpec

    env = ros_env(args.ros_domain_id, log_dir, args.threads)
    params = {
        "reward_type": "clip",
        "config": json.dumps(values),
        "threads": args.threads,
        "status_period_s": 0.5,
    }
    graph = Graph("bench", (NodeSpec("reward", "twinloop_ros", "reward_node", params),))
    lines: list[str] = []
    result = DdsResult()
    width, height = size
    with GraphProcesses(graph, env=env, output=lambda _n, line: lines.append(line)) as procs:
        if not wait_line(lines, r"scoring \{", 180, procs):
            result.error = "the reward node did not start: " + " | ".join(lines[-5:])
            return result
        os.environ.update({k: v for k, v in env.items() if k != "OMP_NUM_THREADS"})
        with GraphProbe.open("reward_bench", domain_id=args.ros_domain_id) as probe:
            rewards: list[tuple[int, int]] = []  # (received ns, stamp ns)
            statuses: list[dict[str, Any]] = []

            def on_reward(msg: JointState) -> None:
                rewards.append((time.time_ns(), stamp_to_ns(msg.header.stamp)))

            def on_status(msg: String) -> None:
                statuses.append(json.loads(msg.data))

            probe.node.create_subscription(JointState, REWARD_TOPIC, on_reward, COMMAND_QOS)
            probe.node.create_subscription(String, STATUS_TOPIC, on_status, COMMAND_QOS)
            probe.spin_for(0.5)
            duration = args.warmup + args.seconds
            cmd = [sys.executable, "-m", SYNTHETIC, "--cameras", "color"]
            cmd += [f"--width={width}", f"--height={height}", f"--camera-hz={args.rate}"]
            cmd += ["--joint-hz=1", "--action-hz=1", "--wait-subscribers=0"]
            cmd += [f"--duration={duration}"]
            t_start, t_mono = time.time_ns(), time.monotonic()
            pub = subprocess.Popen(
                cmd,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + duration + 60
            while pub.poll() is None and time.monotonic() < deadline:
                probe.executor.spin_once(timeout_sec=0.01)
            if pub.poll() is None:
                pub.kill()
            out, err = pub.communicate()
            probe.spin_for(1.5)  # the rewards of the last frames
        if pub.returncode != 0 or not out.strip():
            result.error = f"the publisher failed: {err[-500:]}"
            return result
        summary = json.loads(out.strip().splitlines()[-1])
    lo = t_start + int(args.warmup * 1e9)
    hi = lo + int(args.seconds * 1e9)
    result.latency_ms = [(r - s) / 1e6 for r, s in rewards if lo <= s < hi]
    result.output_hz = len(result.latency_ms) / args.seconds
    lo_m = t_mono + args.warmup
    seen = probe.image_times  # time.monotonic() of every frame the probe received
    result.frames_in_window = sum(1 for t in seen if lo_m <= t < lo_m + args.seconds)
    result.published_hz = float(summary["rates_hz"].get("image_color", float("nan")))
    result.status = statuses[-1] if statuses else {}
    return result


# ----- one case: a model and a frame size ----------------------------------------------------------
@dataclass
class Case:
    spec: ModelSpec
    size: tuple[int, int]
    dds: DdsResult | None = None
    forward_ms: list[float] = field(default_factory=list)  # bare, batch = cameras (c)
    paced_ms: list[float] = field(default_factory=list)  # the same, one call per frame period
    forward1_ms: list[float] = field(default_factory=list)  # bare, batch 1 (a)
    paced1_ms: list[float] = field(default_factory=list)  # bare, batch 1, paced (a)
    inprocess: list[InProcessResult] = field(default_factory=list)


def run_case(
    spec: ModelSpec, size: tuple[int, int], args: argparse.Namespace, workdir: Path
) -> Case:
    case = Case(spec, size)
    values = clip_values(spec, args.device, workdir)
    if args.dds:
        log(f"(a) {spec.label} {size[0]}x{size[1]}: reward_node over DDS, {args.seconds:g} s")
        case.dds = run_dds(values, size, args, str(workdir))
        if case.dds.error:
            log(f"    {case.dds.error}")
    log(f"(b) {spec.label} {size[0]}x{size[1]}: bare forward")
    model = build_model(values)
    frames = make_frames(*size)
    case.forward1_ms = [
        1e3 * t for t in time_forward(model, frames, 1, args.forward_iters, 3, args.device)
    ]
    if args.cameras > 1:
        case.forward_ms = [
            1e3 * t
            for t in time_forward(model, frames, args.cameras, args.forward_iters, 3, args.device)
        ]
    else:
        case.forward_ms = case.forward1_ms
    case.paced_ms = [
        1e3 * t
        for t in time_forward(
            model, frames, args.cameras, args.forward_iters, 3, args.device, pace_s=1 / args.rate
        )
    ]
    case.paced1_ms = case.paced_ms
    if args.cameras > 1 and args.dds:
        case.paced1_ms = [
            1e3 * t
            for t in time_forward(
                model, frames, 1, args.forward_iters, 3, args.device, pace_s=1 / args.rate
            )
        ]
    for phase in args.phases:
        log(
            f"(c) {spec.label} {size[0]}x{size[1]}: in process, {args.cameras} x {args.rate:g} Hz {phase}"
        )
        case.inprocess.append(
            run_inprocess(
                model,
                frames,
                cameras=args.cameras,
                rate=args.rate,
                seconds=args.seconds,
                warmup=args.warmup,
                phase=phase,
            )
        )
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return case


# ----- report ------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _open_clip_version() -> str:
    try:
        import open_clip

        return str(open_clip.__version__)
    except ImportError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        return rev + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(args: argparse.Namespace, load: tuple[float, float]) -> list[str]:
    lines = [
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit {git_rev()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
    ]
    if args.device.startswith("cuda"):
        lines.append(
            f"- GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, "
            f"precision fp16 (the clip reward's default on cuda)"
        )
    lines += [
        f"- Python {platform.python_version()}, torch {torch.__version__} "
        f"({args.threads} CPU thread{'s' if args.threads > 1 else ''} for the model), "
        f"open_clip {_open_clip_version()}, numpy {np.__version__}"
        + (
            f"; rclpy {_version('ros-jazzy-rclpy')}, Fast DDS {_version('ros-fastrtps')} with "
            "the shipped profile (`config/fastdds.xml`)"
            if args.dds
            else ""
        ),
        f"- Machine load (shared with other work): load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after (1 min)",
    ]
    return lines


def verdict(ok: bool) -> str:
    return "meets target" if ok else "**misses target**"


def report(
    args: argparse.Namespace, cases: list[Case], elapsed: float, load: tuple[float, float]
) -> str:
    mode = "quick run (--quick)" if args.quick else "full run"
    cmd = " ".join(["python", "benchmarks/reward.py", *sys.argv[1:]])
    lines = [
        f"## benchmarks/reward.py ({args.device}): camera frames -> CLIP rewards at {args.rate:g} Hz",
        "",
        f"`{cmd}` ({mode}, {elapsed:.0f} s).",
        "",
        *machine(args, load),
        "",
        "Model: the VLM-RMs CLIP reward (`reward_type: clip`, one goal and one baseline prompt, "
        "alpha 0.5) on open_clip architectures with random weights (no download; the timings do "
        "not depend on the weights). `NAME @ PX px` is that architecture with a PX-pixel input. "
        f"Each measurement: {args.warmup:g} s warm-up, then {args.seconds:g} s measured.",
    ]
    dds_cases = [c for c in cases if c.dds is not None]
    if dds_cases:
        lines += [
            "",
            "### a/b. End to end over DDS vs the bare model forward",
            "",
            f"`twinloop_ros.synthetic_sensors` (one process) publishes one rgb8 camera at "
            f"{args.rate:g} Hz, stamped just before publishing; `reward_node` (another process, "
            f"{args.threads} torch thread(s), sensor QoS depth 1) scores each frame it gets; this "
            "process receives `/twinloop/reward` and takes receive time minus the frame stamp "
            "(same host clock). Bare forward: `ClipReward.__call__` (uint8 frame -> preprocess -> "
            "encode -> reward) at batch 1, same threads, this process, nothing else running, "
            "back to back and paced at one call per frame period (as the node calls it). "
            "*Node-internal*: the node's own figure from its status (frame received -> reward "
            "ready, so without DDS). The target applies to e2e / back-to-back bare.",
            "",
            "| model | frame | published | rewards | scored | e2e p50 (ms) | e2e p99 (ms) | "
            "node-internal p50 (ms) | bare forward p50, back to back / paced (ms) | "
            "e2e / bare, back to back / paced | target |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c, d in ((c, c.dds) for c in dds_cases if c.dds is not None):
            w, h = c.size
            if d.error:
                lines.append(f"| {c.spec.label} | {w}x{h} | failed: {d.error} | | | | | | | | |")
                continue
            bare, paced = pct(c.forward1_ms, 50), pct(c.paced1_ms, 50)
            ratio = pct(d.latency_ms, 50) / bare
            keeps_up = d.output_hz >= 0.95 * args.rate
            node_p50 = (d.status.get("latency_ms") or {}).get("p50")
            target = (
                verdict(ratio <= TARGET_OVERHEAD)
                if keeps_up
                else "n/a: cannot keep up (scores the newest frames)"
            )
            lines.append(
                f"| {c.spec.label} | {w}x{h} | {d.published_hz:.1f} Hz | {d.output_hz:.1f} Hz | "
                f"{len(d.latency_ms)}/{d.frames_in_window} | {pct(d.latency_ms, 50):.1f} | "
                f"{pct(d.latency_ms, 99):.1f} | "
                f"{'n/a' if node_p50 is None else f'{node_p50:.1f}'} | {bare:.1f} / {paced:.1f} | "
                f"{ratio:.2f}x / {pct(d.latency_ms, 50) / paced:.2f}x | {target} |"
            )
    lines += [
        "",
        f"### c. In process (RewardRuntime, no DDS), {args.cameras} camera(s) x {args.rate:g} Hz",
        "",
        "A feeder thread submits frames on a fixed schedule (*sync*: every camera on the same tick, "
        "as one synchronized rig or the twin publishes them; *spread*: the cameras evenly out of "
        "phase); the worker takes the newest frame of every camera, batches them and runs the "
        "model. Latency: submit -> result. *Forward in the loop*: the model call inside the runtime. "
        f"*Bare forward*: batch {args.cameras} in this thread, back to back, and paced at one call "
        f"per frame period ({1e3 / args.rate:.1f} ms; the device idles in between, as in the "
        "loop). Dropped: frames replaced while waiting (the model was busy) or failed.",
        "",
        "| model | frame | cameras | phase | output | latency p50 (ms) | latency p99 (ms) | "
        "forward in the loop p50 (ms) | bare forward p50, back to back / paced (ms) | "
        "mean batch | dropped / frames | target |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cases:
        w, h = c.size
        for r in c.inprocess:
            dropped = r.skipped + r.failed
            if args.device.startswith("cuda"):
                ok = pct(r.latency_ms, 99) <= TARGET_P99_MS and dropped == 0
                target = f"p99 <= {TARGET_P99_MS:g} ms, no drops: {verdict(ok)}"
            else:
                target = "keeps up" if dropped == 0 else "newest frames only"
            lines.append(
                f"| {c.spec.label} | {w}x{h} | {r.cameras} | {r.phase} | {r.output_hz:.1f} Hz | "
                f"{pct(r.latency_ms, 50):.1f} | {pct(r.latency_ms, 99):.1f} | "
                f"{r.forward_ms_p50:.1f} | {pct(c.forward_ms, 50):.1f} / {pct(c.paced_ms, 50):.1f} | "
                f"{r.batch_mean:.2f} | {dropped} / {r.frames} | {target} |"
            )
    lines += ["", "**Reading.** " + reading(args, cases)]
    return "\n".join(lines).rstrip() + "\n"


def reading(args: argparse.Namespace, cases: list[Case]) -> str:
    parts = []
    for c in cases:
        d = c.dds
        if d is None or d.error or not d.latency_ms:
            continue
        bare = pct(c.forward1_ms, 50)
        ratio = pct(d.latency_ms, 50) / bare
        w, h = c.size
        if d.output_hz >= 0.95 * args.rate:
            parts.append(
                f"{c.spec.label} at {w}x{h} keeps up with {args.rate:g} Hz: rewards arrive "
                f"{pct(d.latency_ms, 50):.1f} ms after the frame (p50), {ratio:.2f}x the bare "
                f"forward back to back ({verdict(ratio <= TARGET_OVERHEAD)} of "
                f"{TARGET_OVERHEAD}x) and {pct(d.latency_ms, 50) / pct(c.paced1_ms, 50):.2f}x the "
                "bare forward paced at the frame rate."
            )
        else:
            parts.append(
                f"{c.spec.label} at {w}x{h} needs {bare:.0f} ms a frame here, so it scores "
                f"{d.output_hz:.1f} of {args.rate:g} frames/s, always the newest one: a reward "
                f"comes {pct(d.latency_ms, 50):.0f} ms after its frame (p50, {ratio:.2f}x the "
                "forward: a frame that arrives while the model is busy waits for the running "
                "call), and nothing queues up."
            )
    cuda = args.device.startswith("cuda")
    for c in cases:
        w, h = c.size
        for r in c.inprocess:
            p50, p99 = pct(r.latency_ms, 50), pct(r.latency_ms, 99)
            dropped = r.skipped + r.failed
            text = (
                f"In process, {c.spec.label} at {w}x{h}, {r.cameras} camera(s) {r.phase}: "
                f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, {dropped} of {r.frames} frames dropped"
            )
            if cuda:
                ok = p99 <= TARGET_P99_MS and dropped == 0
                text += f" ({verdict(ok)}: p99 <= {TARGET_P99_MS:g} ms, no drops)"
            parts.append(text + ".")
    first = next((c for c in cases if c.inprocess), None)
    if first is not None:
        r = first.inprocess[0]
        waits = r.skipped > 0
        parts.append(
            f"The model call in the loop took {r.forward_ms_p50:.1f} ms at p50 ({first.spec.label}; "
            f"bare: {pct(first.forward_ms, 50):.1f} ms back to back, "
            f"{pct(first.paced_ms, 50):.1f} ms paced at one call per frame period"
            + (
                ": a device that idles between calls starts the next one slower"
                if pct(first.paced_ms, 50) > 1.2 * pct(first.forward_ms, 50)
                else ""
            )
            + "); latency p50 minus that call: "
            f"{pct(r.latency_ms, 50) - r.forward_ms_p50:.1f} ms (slot hand-over, batching, the "
            "result callback"
            + (
                ", and the wait for the running call: frames come faster than the model)"
                if waits
                else ")"
            )
            + "."
        )
    if not parts:
        return "no case produced a result."
    return " ".join(parts)


# ----- main ----------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if m is None or min(int(m[1]), int(m[2])) < 8:
        msg = f"a frame size is WIDTHxHEIGHT of at least 8x8, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(m[1]), int(m[2])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full CPU run: ~5 min; --quick: ~30 s. GPU: --device cuda --models "
        "ViT-B-32,ViT-L-14 --cameras 2.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test, CI)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: in process only)")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated open_clip models, NAME or NAME@PIXELS "
        "(default cpu: ViT-B-32,ViT-S-32@160; cuda: ViT-B-32,ViT-L-14)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="frame sizes, e.g. 320x240,640x480 (default both; quick 320x240)",
    )
    parser.add_argument(
        "--cameras", type=int, default=None, help="cameras in (c) (default cpu 1, cuda 2)"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second per camera")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="measured seconds per case (default 20, quick 3)",
    )
    parser.add_argument(
        "--warmup", type=float, default=None, help="warm-up seconds per case (default 3, quick 1)"
    )
    parser.add_argument(
        "--forward-iters", type=int, default=None, help="timed bare forwards (default 30, quick 5)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the model")
    parser.add_argument(
        "--phases", default="sync", help="camera phases in (c): sync, spread or sync,spread"
    )
    parser.add_argument("--no-dds", action="store_true", help="skip (a), the DDS part")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file to update")
    parser.add_argument("--body-out", type=Path, default=None, help="also write the section here")
    parser.add_argument(
        "--ros-domain-id",
        type=int,
        default=100 + os.getpid() % 100,
        help="dedicated ROS_DOMAIN_ID (default: 100-199 from the pid)",
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    if args.device != "cpu" and not cuda:
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    quick = args.quick
    default_models = (
        "ViT-B-32,ViT-L-14" if cuda else ("ViT-S-32@64" if quick else "ViT-B-32,ViT-S-32@160")
    )
    try:
        args.specs = [ModelSpec.parse(m) for m in (args.models or default_models).split(",") if m]
    except RewardError as err:
        parser.error(str(err))
    sizes = args.sizes or ("640x480" if cuda else ("320x240" if quick else "320x240,640x480"))
    try:
        args.size_list = [_size(s) for s in sizes.split(",") if s]
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    args.cameras = args.cameras or (2 if cuda else 1)
    args.seconds = args.seconds or (3.0 if quick else 20.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 3.0)
    args.forward_iters = args.forward_iters or (5 if quick else 30)
    args.phases = [p for p in args.phases.split(",") if p]
    if not args.phases or any(p not in ("sync", "spread") for p in args.phases):
        parser.error("--phases takes sync, spread or both")
    if args.cameras < 1 or args.rate <= 0 or args.seconds <= 0 or args.threads < 1:
        parser.error("--cameras, --rate, --seconds and --threads must be positive")
    if not 0 <= args.ros_domain_id <= 232:
        parser.error("--ros-domain-id must be in 0..232")
    missing = [m for m in ("rclpy", "sensor_msgs", "twinloop_ros") if find_spec(m) is None]
    args.dds = not (args.no_dds or cuda or missing)
    if not args.no_dds and not cuda and missing:
        log(f"skipping (a), the DDS part: not importable: {', '.join(missing)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    cases = []
    with tempfile.TemporaryDirectory(prefix="twinloop-bench-reward-") as tmp:
        jobs = [(spec, size) for spec in args.specs for size in args.size_list]
        for spec, size in tqdm(jobs, desc="cases", disable=len(jobs) < 2):
            try:
                cases.append(run_case(spec, size, args, Path(tmp)))
            except RewardError as err:
                log(f"error: {err}")
                return 2
    body = report(args, cases, time.monotonic() - t0, (load_before, os.getloadavg()[0]))
    sys.stdout.write(body)
    if args.body_out is not None:
        args.body_out.write_text(body)
    if not args.no_write:
        update_results(args.results, f"reward.py {args.device}", body)
        log(f"wrote {args.results}")
    failed = [c for c in cases if c.dds is not None and c.dds.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
