"""Benchmark the recorder: 2 cameras 640x480 @ 30 Hz + joint states @ 100 Hz over real DDS.

A light synthetic cell (``python -m twinloop_ros.synthetic_sensors``, its own process) publishes
two rgb8 cameras with camera_info, /joint_states and /twinloop/ee_pose at 100 Hz, actions at
30 Hz and back-to-back episodes; ``recorder_node`` (its own process, the shipped Fast DDS profile)
records them at 30 steps per second into a fresh episode store. Measured:

- steps recorded / steps expected (episode duration x fps), and dropped steps by reason;
- recorder CPU (psutil, % of one core, sampled every second) and peak memory (RSS);
- MB/s written to disk (the store's size over the recording time) and the raw data rate;
- end-to-end lag: step sample time minus each source's stamp (from the stored ``stamp_*``
  arrays), and commit latency (end event -> episode committed on disk, from the recorder log);
- the machine's load while it ran (the machine is shared).

Results go to benchmarks/RESULTS.md, into this script's own section (rewritten in place).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from twinloop.datasets.store import EpisodeStore

from twinloop.graph import Graph, GraphProcesses, NodeSpec, fastdds_profile

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = "recording.py"
CAMERAS = ("color", "wrist")
SYNTHETIC = "twinloop_ros.synthetic_sensors"  # rclpy stays inside robot_ws/


def log(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()


def _twin_bench() -> Any:
    """benchmarks/twin.py, for its machine description and RESULTS.md section writer."""
    spec = importlib.util.spec_from_file_location("bench_twin", HERE / "twin.py")
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/twin.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----- running it --------------------------------------------------------------------------------
@dataclass
class Sampler:
    """psutil samples of a process (and the whole machine) once a second, on a thread."""

    pid: int
    cpu: list[float] = field(default_factory=list)  # % of one core
    rss_mb: list[float] = field(default_factory=list)
    machine_cpu: list[float] = field(default_factory=list)  # % of all cores
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        proc = psutil.Process(self.pid)
        proc.cpu_percent(None)
        psutil.cpu_percent(None)
        while not self._stop.wait(1.0):
            try:
                self.cpu.append(proc.cpu_percent(None))
                self.rss_mb.append(proc.memory_info().rss / 1e6)
                self.machine_cpu.append(psutil.cpu_percent(None))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Run:
    args: argparse.Namespace
    store: Path
    episodes_announced: int = 0
    synthetic: dict[str, Any] = field(default_factory=dict)
    recorder_cpu: list[float] = field(default_factory=list)
    recorder_rss_mb: list[float] = field(default_factory=list)
    machine_cpu: list[float] = field(default_factory=list)
    synthetic_cpu: list[float] = field(default_factory=list)
    commit_latency_s: list[float] = field(default_factory=list)
    recorder_log: list[str] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    store_bytes: int = 0
    write_bytes: int | None = None  # recorder process I/O counter, if the OS has it


def ros_env(domain_id: int, log_dir: str) -> dict[str, str]:
    env = {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": log_dir,
        "PYTHONUNBUFFERED": "1",
    }
    profile = fastdds_profile()
    if profile is not None:  # 8 MiB shared-memory segments: 640x480 frames fit
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def recorder_graph(args: argparse.Namespace, store: Path) -> Graph:
    from twinloop_ros.synthetic_sensors import camera_topics

    topics = [camera_topics(name, i) for i, name in enumerate(CAMERAS)]
    params: dict[str, Any] = {
        "store_path": str(store),
        "fps": float(args.fps),
        "task": "benchmark",
        "robot_profile": "synthetic",
        "cameras": list(CAMERAS),
        "image_topics": [t["image"] for t in topics],
        "info_topics": [t["info"] for t in topics],
        "depth_topics": [""],
    }
    return Graph("bench", (NodeSpec("recorder", "twinloop_ros", "recorder_node", params),))


def wait_for(
    lines: list[str], pattern: str, count: int, timeout: float, procs: GraphProcesses
) -> bool:
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for line in list(lines) if rx.search(line)) >= count:
            return True
        if procs.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def run_benchmark(args: argparse.Namespace, store: Path) -> Run:
    run = Run(args, store)
    cycle = args.episode_s + args.gap_s
    n_episodes = max(1, int(args.duration // cycle))
    with tempfile.TemporaryDirectory(prefix="twinloop-bench-rec-") as log_dir:
        env = ros_env(args.ros_domain_id, log_dir)
        lines: list[str] = []
        procs = GraphProcesses(
            recorder_graph(args, store),
            env=env,
            output=lambda _n, line: lines.append(line),
        )
        run.load_before = os.getloadavg()
        with procs:
            if not wait_for(lines, r"waiting for episode events", 1, 60, procs):
                raise RuntimeError("the recorder did not start:\n" + "\n".join(lines[-20:]))
            recorder = Sampler(procs.pids["recorder"])
            recorder.start()
            cmd = [
                sys.executable,
                "-m",
                SYNTHETIC,
                "--cameras",
                *CAMERAS,
                f"--width={args.width}",
                f"--height={args.height}",
                f"--camera-hz={args.camera_hz}",
                f"--joint-hz={args.joint_hz}",
                f"--action-hz={args.fps}",
                f"--episodes={n_episodes}",
                f"--episode-s={args.episode_s}",
                f"--gap-s={args.gap_s}",
                "--all-success",
            ]
            log(
                f"recording {n_episodes} episodes of {args.episode_s:g} s ({n_episodes * cycle:.0f} s)"
            )
            syn = subprocess.Popen(
                cmd,
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            synthetic = Sampler(syn.pid)
            synthetic.start()
            try:
                out, err = syn.communicate(timeout=n_episodes * cycle + 120)
            except subprocess.TimeoutExpired:
                syn.kill()
                out, err = syn.communicate()
            synthetic.stop()
            if syn.returncode != 0 or not out.strip():
                raise RuntimeError(f"the synthetic publisher failed: {err[-2000:]}")
            run.synthetic = json.loads(out.strip().splitlines()[-1])
            run.episodes_announced = len(run.synthetic["episodes"])
            wait_for(
                lines, r"committed episode|episode discarded", run.episodes_announced, 60, procs
            )
            try:
                io = psutil.Process(procs.pids["recorder"]).io_counters()
                run.write_bytes = int(io.write_bytes)
            except (psutil.Error, AttributeError):
                run.write_bytes = None
            recorder.stop()
        run.load_after = os.getloadavg()
    run.recorder_cpu, run.recorder_rss_mb = recorder.cpu, recorder.rss_mb
    run.machine_cpu, run.synthetic_cpu = recorder.machine_cpu, synthetic.cpu
    run.recorder_log = lines
    for line in lines:
        if m := re.search(r"committed episode .* ([0-9.]+) s after its end", line):
            run.commit_latency_s.append(float(m[1]))
    run.store_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    return run


# ----- report --------------------------------------------------------------------------------------
def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def analyse(run: Run) -> dict[str, Any]:
    args = run.args
    with EpisodeStore.open(run.store, mode="r") as store:
        metas = [store.episode_meta(i) for i in range(store.n_episodes)]
        lags: dict[str, list[np.ndarray]] = {}
        unique_frames = 0
        for i in range(store.n_episodes):
            keys = ["timestamp"] + [k for k in store.keys if k.startswith("stamp_")]
            ep = store.get_episode(i, keys=keys)
            for k in keys[1:]:
                lags.setdefault(k.removeprefix("stamp_"), []).append(ep["timestamp"] - ep[k])
            unique_frames += len(np.unique(ep["stamp_image_color"]))
        n_steps = store.n_steps
    # duration x fps: the steps an episode should have (the grid phase makes each +-1)
    nominal = sum(float(m["duration_s"]) * args.fps for m in metas)
    grid = sum(int(m.get("steps_expected", m["n_steps"])) for m in metas)
    drops: dict[str, int] = {}
    for m in metas:
        for reason, n in (m.get("dropped_by_reason") or {}).items():
            drops[reason] = drops.get(reason, 0) + int(n)
    frame_bytes = args.width * args.height * 3
    return {
        "episodes": len(metas),
        "announced": run.episodes_announced,
        "steps": n_steps,
        "nominal": nominal,
        "grid": grid,
        "dropped_steps": sum(int(m.get("dropped_steps", 0)) for m in metas),
        "drops": drops,
        "unique_frames": unique_frames,
        "lag_ms": {
            src: {
                "p50": 1e3 * pct(np.concatenate(v), 50),
                "p99": 1e3 * pct(np.abs(np.concatenate(v)), 99),
                "max": 1e3 * float(np.abs(np.concatenate(v)).max()),
            }
            for src, v in sorted(lags.items())
        },
        "raw_mb_s": len(CAMERAS) * frame_bytes * args.fps / 1e6,
        "recorded_s": sum(float(m["duration_s"]) for m in metas),
        "disk_mb_s": run.store_bytes / 1e6 / max(sum(float(m["duration_s"]) for m in metas), 1e-9),
        "io_mb_s": None
        if run.write_bytes is None
        else run.write_bytes / 1e6 / max(sum(float(m["duration_s"]) for m in metas), 1e-9),
    }


def report(run: Run, res: dict[str, Any], elapsed: float, bench: Any) -> str:
    args = run.args
    mode = "quick run (--quick)" if args.quick else "full run"
    cmd = " ".join(["python", "benchmarks/recording.py", *sys.argv[1:]])
    share = res["steps"] / max(res["grid"], 1)
    cpu, rss = run.recorder_cpu, run.recorder_rss_mb
    syn = run.synthetic
    lat = run.commit_latency_s
    lines = [
        "## benchmarks/recording.py: the recorder, 2 cameras 640x480 @ 30 Hz + joints @ 100 Hz over DDS",
        "",
        f"`{cmd}` ({mode}, {elapsed:.0f} s).",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit {bench.git_rev()}",
        f"- CPU: {bench.cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, zarr {bench._version('zarr')}, "
        f"numcodecs {bench._version('numcodecs')}; rclpy {bench._version('ros-jazzy-rclpy')}, "
        f"Fast DDS {bench._version('ros-fastrtps')} with the shipped profile (`config/fastdds.xml`)",
        f"- Machine load (shared with other work): load average {run.load_before[0]:.2f} before, "
        f"{run.load_after[0]:.2f} after (1 min); whole-machine CPU during the run "
        f"{statistics.mean(run.machine_cpu or [float('nan')]):.0f}% of {os.cpu_count()} cores",
        "",
        f"Setup: `twinloop_ros.synthetic_sensors` (one process) publishes 2 rgb8 cameras "
        f"{args.width}x{args.height} at {args.camera_hz:g} Hz with camera_info, /joint_states and "
        f"/twinloop/ee_pose at {args.joint_hz:g} Hz, actions at {args.fps:g} Hz, and "
        f"{res['announced']} episodes of {args.episode_s:g} s ({args.gap_s:g} s apart); "
        f"`recorder_node` (another process, single-threaded executor + one writer thread) records "
        f"at {args.fps:g} steps/s into a fresh store on the local disk. Tolerance 0.75/fps = "
        f"{750 / args.fps:.0f} ms, wait 100 ms. Publisher achieved: "
        + ", ".join(f"{k} {v:.1f} Hz" for k, v in syn.get("rates_hz", {}).items())
        + f"; its camera timer ran late by p99 {syn.get('camera_timer_lag_ms', {}).get('p99', float('nan')):.1f} ms.",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| episodes committed | {res['episodes']} / {res['announced']} | all |",
        f"| steps recorded / expected (sample times in the episodes; duration x fps = "
        f"{res['nominal']:.1f}) | {res['steps']} / {res['grid']} (**{share:.2%}**) | 100% |",
        f"| dropped steps | {res['dropped_steps']} "
        f"{'(' + ', '.join(f'{k}: {v}' for k, v in sorted(res['drops'].items())) + ')' if res['drops'] else ''} | 0 |",
        f"| distinct colour frames in the steps | {res['unique_frames']} of {res['steps']} steps | |",
        f"| recorder CPU, % of one core (mean / p95 / max) | {statistics.mean(cpu or [float('nan')]):.0f} / "
        f"{pct(cpu, 95):.0f} / {max(cpu or [float('nan')]):.0f} | |",
        f"| publisher CPU, % of one core (mean) | {statistics.mean(run.synthetic_cpu or [float('nan')]):.0f} | |",
        f"| recorder memory, RSS (mean / max) | {statistics.mean(rss or [float('nan')]):.0f} / "
        f"{max(rss or [float('nan')]):.0f} MB | bounded |",
        f"| raw camera data | {res['raw_mb_s']:.1f} MB/s | |",
        f"| written to disk (store size / recorded time) | {res['disk_mb_s']:.1f} MB/s "
        f"({run.store_bytes / 1e6:.0f} MB in {res['recorded_s']:.0f} s, lz4 ratio "
        f"{res['raw_mb_s'] / max(res['disk_mb_s'], 1e-9):.2f}) | |",
        "| written by the recorder process (I/O counter) | "
        + ("n/a" if res["io_mb_s"] is None else f"{res['io_mb_s']:.1f} MB/s")
        + " | |",
        f"| commit latency, end event -> on disk (mean / max) | "
        f"{1e3 * statistics.mean(lat or [float('nan')]):.0f} / {1e3 * max(lat or [float('nan')]):.0f} ms | |",
        "",
        "End-to-end lag per source: step sample time minus the stamp of the message it used "
        "(positive: the message is older than the sample time; p99 and max of the absolute value).",
        "",
        "| source | p50 (ms) | p99 abs (ms) | max abs (ms) |",
        "|---|---:|---:|---:|",
    ]
    for src, v in res["lag_ms"].items():
        lines.append(f"| {src} | {v['p50']:+.1f} | {v['p99']:.1f} | {v['max']:.1f} |")
    gaps = syn.get("max_gap_ms", {})
    if gaps:
        lines += [
            "",
            "Largest interval between two publications of the synthetic publisher, per stream "
            "(nominal: "
            f"{1e3 / args.camera_hz:.0f} ms cameras, {1e3 / args.joint_hz:.0f} ms joints, "
            f"{1e3 / args.fps:.0f} ms actions): "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(gaps.items()))
            + ". A gap longer than twice the tolerance leaves a step without that source.",
        ]
    dropped_lines = [
        line.split("]: ", 1)[-1] for line in run.recorder_log if "dropped the step" in line
    ]
    if dropped_lines:
        lines += ["", "The recorder's own log of the dropped steps (throttled):", ""]
        lines += [f"- `{line}`" for line in dropped_lines[:5]]
    ok = res["steps"] == res["grid"] and res["episodes"] == res["announced"]
    backlog = res["drops"].get("writer:backlog", 0)
    reading = (
        f"Every expected step was recorded ({res['steps']}/{res['grid']}, no drops)"
        if ok
        else f"{share:.2%} of the expected steps were recorded ({res['dropped_steps']} dropped: "
        + ", ".join(f"{k} {v}" for k, v in sorted(res["drops"].items()))
        + "; each a step whose input had a gap, counted and never filled)"
    )
    lines += [
        "",
        f"**Reading.** {reading}, with the recorder at "
        f"{statistics.mean(cpu or [float('nan')]):.0f}% of one core and "
        f"{max(rss or [float('nan')]):.0f} MB peak RSS; "
        + (
            "no step waited too long for the disk (no writer backlog drops). "
            if not backlog
            else f"{backlog} steps were dropped because the disk writer fell behind. "
        )
        + "Frames are kept raw in the ring buffers and converted and compressed on the writer "
        "thread only for the steps that use them; the sampling grid catches up after a late "
        "timer, so a busy moment delays steps instead of losing them.",
    ]
    return "\n".join(lines).rstrip() + "\n"


# ----- main ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full run: 5 minutes of recording; --quick: ~20 s.",
    )
    parser.add_argument("--quick", action="store_true", help="~20 s of recording (smoke test, CI)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds of recording (default 300)"
    )
    parser.add_argument(
        "--episode-s", type=float, default=None, help="episode length, s (default 28, quick 8)"
    )
    parser.add_argument("--gap-s", type=float, default=2.0, help="pause between episodes, s")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--camera-hz", type=float, default=30.0)
    parser.add_argument("--joint-hz", type=float, default=100.0)
    parser.add_argument("--fps", type=float, default=30.0, help="recorder steps per second")
    parser.add_argument(
        "--store", type=Path, default=None, help="keep the store here (default: a temp dir)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file to update")
    parser.add_argument(
        "--ros-domain-id",
        type=int,
        default=100 + os.getpid() % 100,
        help="dedicated ROS_DOMAIN_ID (default: 100-199 from the pid)",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (20.0 if args.quick else 300.0)
    args.episode_s = args.episode_s or (8.0 if args.quick else 28.0)
    if args.duration < args.episode_s + args.gap_s:
        parser.error("--duration must hold at least one episode (--episode-s + --gap-s)")
    if min(args.width, args.height) < 1 or min(args.camera_hz, args.joint_hz, args.fps) <= 0:
        parser.error("sizes and rates must be positive")
    if not 0 <= args.ros_domain_id <= 232:
        parser.error("--ros-domain-id must be in 0..232")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    tmp = None
    if args.store is None:
        tmp = tempfile.mkdtemp(prefix="twinloop-bench-store-")
        store = Path(tmp) / "bench.zarr"
    else:
        store = args.store
        if store.exists():
            log(f"{store} exists: refusing to overwrite it")
            return 2
    try:
        run = run_benchmark(args, store)
        res = analyse(run)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    bench = _twin_bench()
    body = report(run, res, time.monotonic() - t0, bench)
    sys.stdout.write(body)
    if not args.no_write:
        bench.update_results(args.results, SECTION, body)
        log(f"wrote {args.results}")
    return 0 if res["episodes"] == res["announced"] else 1


if __name__ == "__main__":
    sys.exit(main())
