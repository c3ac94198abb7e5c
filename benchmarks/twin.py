"""Benchmark the MuJoCo twin against raw MuJoCo, and image transport over ROS 2 DDS.

Measures, side by side in one run on this machine:

1. Twin overhead vs raw MuJoCo on the same compiled scene:
   a. a control step without rendering (``Twin.step``: IK + 50 physics substeps) vs 50 x
      ``mj_step`` on a fresh ``MjData`` with fixed ctrl; the IK (``Twin.apply_action``) and the
      twin's own physics (``Twin.advance``) are timed separately as well;
   b. rendering (``Physics.render``) vs a plain ``mujoco.Renderer`` on the same model and camera;
   c. a full observe step (step + render) vs 50 x ``mj_step`` + render.
   Ours and raw alternate in rounds (order flipped every round) and the figures are medians,
   because the machine is shared and noisy.
2. The twin's ms per control step for every task, with and without rendering.
3. Camera-frame latency between two processes over ROS 2 (rclpy, Fast DDS, same host): a
   publisher process and a subscriber process (twinloop_ros.dds_peer), receive time minus
   header stamp.

Results go to benchmarks/RESULTS.md, into this script's own section (rewritten in place).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
from twinloop.sim2real.experts import make_expert
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import Twin, TwinConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PEER_MODULE = "twinloop_ros.dds_peer"  # rclpy stays inside robot_ws/
SHM_PROFILE = HERE.parent / "robot_ws" / "src" / "twinloop_ros" / "config" / "fastdds.xml"
SECTION = "twin.py"
RESULTS_HEADER = """# twinloop benchmarks

Measured figures, each with the machine and date it was measured on. Every benchmark script owns
one section between `<!-- <script> start -->` and `<!-- <script> end -->` markers and rewrites
only that section when rerun (`make bench`); other sections are kept.
"""
TARGET_OVERHEAD = 1.3  # twin / raw MuJoCo, from the issue
TARGET_P99_MS = 10.0  # image transport p99 latency, from the issue
RESOLUTIONS = ((320, 240), (640, 480))
TASKS = ("push_cube", "open_drawer", "lift_rod")


def log(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()


# ----- timing helpers ------------------------------------------------------------------------
def time_calls(fn: Callable[[int], object], n: int) -> list[float]:
    """Seconds taken by each of ``n`` calls ``fn(i)``."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


@dataclass
class Paired:
    """Per-round medians (s) of two contenders measured in alternating order."""

    ours: list[float]
    raw: list[float]

    @property
    def ours_s(self) -> float:
        return statistics.median(self.ours)

    @property
    def raw_s(self) -> float:
        return statistics.median(self.raw)

    @property
    def ratios(self) -> list[float]:
        return [o / r for o, r in zip(self.ours, self.raw, strict=True)]

    @property
    def spread(self) -> str:
        """Range of the per-round ratios, to show the noise."""
        return f"{min(self.ratios):.2f}-{max(self.ratios):.2f}"

    @property
    def ratio(self) -> float:
        """Median over rounds of ours/raw (pairs measured back to back share the noise)."""
        return statistics.median(self.ratios)


def interleave(
    rounds: int,
    ours: Callable[[], list[float]],
    raw: Callable[[], list[float]],
) -> Paired:
    """Run both contenders ``rounds`` times, flipping which goes first; keep round medians."""
    result = Paired([], [])
    for r in range(rounds):
        order = (("ours", ours), ("raw", raw)) if r % 2 == 0 else (("raw", raw), ("ours", ours))
        for name, fn in order:
            gc.collect()
            getattr(result, name).append(statistics.median(fn()))
    return result


def action_sequence(n: int) -> np.ndarray:
    """A fixed, smooth EE-delta trajectory: circles in xy, bobbing in z, gripper toggling."""
    k = np.arange(n)
    return np.stack(
        [
            0.02 * np.cos(0.3 * k),
            0.02 * np.sin(0.3 * k),
            0.01 * np.sin(0.1 * k),
            0.05 * np.sin(0.2 * k),
            np.where((k // 10) % 2 == 0, -1.0, 1.0),
        ],
        axis=1,
    )


# ----- 1. twin vs raw MuJoCo ---------------------------------------------------------------
def raw_data(twin: Twin) -> mujoco.MjData:
    """A fresh MjData on the twin's compiled model, in the twin's current state and ctrl."""
    model = twin.physics.model
    data = mujoco.MjData(model)
    data.qpos[:] = twin.physics.data.qpos  # arm at home, objects where the task put them
    data.ctrl[:] = twin.physics.data.ctrl  # arm held at home, gripper open; never changed
    mujoco.mj_forward(model, data)
    return data


@dataclass
class ControlResult:
    pair: Paired
    ik_s: float  # Twin.apply_action, median
    advance_s: float  # Twin.advance(n_substeps), median
    n_substeps: int


def bench_control(rounds: int, steps: int) -> ControlResult:
    """1a: Twin.step (no render) vs 50 raw mj_step, plus IK and the twin's own physics."""
    twin = Twin(TwinConfig(task="push_cube", render=False))
    model = twin.physics.model
    n_sub = twin.n_substeps
    actions = action_sequence(steps)
    ik: list[float] = []
    adv: list[float] = []

    def ours() -> list[float]:
        twin.reset(seed=0)
        return time_calls(lambda i: twin.step(actions[i]), steps)

    def raw() -> list[float]:
        twin.reset(seed=0)
        data = raw_data(twin)

        def block(_: int) -> None:
            for _ in range(n_sub):
                mujoco.mj_step(model, data)

        return time_calls(block, steps)

    def split() -> None:  # Twin.step = apply_action (IK) + advance (physics) + observe/reward
        twin.reset(seed=0)
        a_t, p_t = [], []
        for i in range(steps):
            t0 = time.perf_counter()
            twin.apply_action(actions[i])
            t1 = time.perf_counter()
            twin.advance(n_sub)
            p_t.append(time.perf_counter() - t1)
            a_t.append(t1 - t0)
        ik.append(statistics.median(a_t))
        adv.append(statistics.median(p_t))

    pair = interleave(rounds, ours, raw)
    for _ in range(rounds):
        split()
    twin.close()
    return ControlResult(pair, statistics.median(ik), statistics.median(adv), n_sub)


def raw_renderer(twin: Twin) -> mujoco.Renderer:
    cam = twin.config.camera
    return mujoco.Renderer(twin.physics.model, cam.height, cam.width)


def make_twin(width: int, height: int, *, render: bool = True, task: str = "push_cube") -> Twin:
    cfg = TwinConfig(task=task, render=render, camera=CameraConfig(width=width, height=height))
    twin = Twin(cfg)
    twin.reset(seed=0)
    return twin


def bench_render(rounds: int, frames: int) -> dict[tuple[int, int], Paired]:
    """1b: Physics.render vs mujoco.Renderer on the same model, camera and state."""
    out = {}
    for w, h in RESOLUTIONS:
        twin = make_twin(w, h)
        renderer = raw_renderer(twin)
        data = twin.physics.data

        def ours(twin: Twin = twin) -> list[float]:
            return time_calls(lambda _: twin.physics.render(), frames)

        def raw(renderer: mujoco.Renderer = renderer, data: mujoco.MjData = data) -> list[float]:
            def one(_: int) -> None:
                renderer.update_scene(data, camera="camera")
                renderer.render()

            return time_calls(one, frames)

        ours(), raw()  # warm up both GL contexts
        out[(w, h)] = interleave(rounds, ours, raw)
        renderer.close()
        twin.close()
    return out


def bench_observe(rounds: int, steps: int) -> dict[tuple[int, int], Paired]:
    """1c: Twin.step with rendering vs 50 raw mj_step + render."""
    out = {}
    actions = action_sequence(steps)
    for w, h in RESOLUTIONS:
        twin = make_twin(w, h)
        renderer = raw_renderer(twin)
        model = twin.physics.model

        def ours(twin: Twin = twin) -> list[float]:
            twin.reset(seed=0)
            return time_calls(lambda i: twin.step(actions[i]), steps)

        def raw(
            twin: Twin = twin, renderer: mujoco.Renderer = renderer, model: mujoco.MjModel = model
        ) -> list[float]:
            twin.reset(seed=0)
            data = raw_data(twin)

            def one(_: int) -> None:
                for _ in range(twin.n_substeps):
                    mujoco.mj_step(model, data)
                renderer.update_scene(data, camera="camera")
                renderer.render()

            return time_calls(one, steps)

        out[(w, h)] = interleave(rounds, ours, raw)
        renderer.close()
        twin.close()
    return out


# ----- 2. per task ---------------------------------------------------------------------------
def bench_tasks(rounds: int, steps: int) -> dict[str, Paired]:
    """Twin.step for each task driven by its scripted expert; 'ours' renders, 'raw' does not."""
    out = {}
    for task in TASKS:
        twins = {r: make_twin(320, 240, render=r, task=task) for r in (True, False)}

        def run(render: bool, task: str = task, twins: dict[bool, Twin] = twins) -> list[float]:
            twin = twins[render]
            twin.reset(seed=0)
            expert = make_expert(twin, seed=0)
            times = []
            for _ in range(steps):
                action = expert.act(twin.privileged_state())
                t0 = time.perf_counter()
                result = twin.step(action)
                times.append(time.perf_counter() - t0)
                if result.success or result.truncated:
                    twin.reset(seed=0)
                    expert.reset()
            return times

        out[task] = interleave(rounds, lambda run=run: run(True), lambda run=run: run(False))
        for t in twins.values():
            t.close()
    return out


# ----- 3. DDS image transport ----------------------------------------------------------------
@dataclass
class DdsCase:
    width: int
    height: int
    qos: str  # "sensor" or "reliable"
    profile: str  # "defaults" or "shm_8mb"


@dataclass
class DdsResult:
    case: DdsCase
    latencies_ms: list[float]
    expected: int
    error: str = ""

    @property
    def received(self) -> int:
        return len(self.latencies_ms)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def peer_env(domain_id: int, profile: str, log_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in (
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        "FASTDDS_DEFAULT_PROFILES_FILE",
        "FASTDDS_BUILTIN_TRANSPORTS",
        "RMW_FASTRTPS_USE_QOS_FROM_XML",
        "ROS_LOCALHOST_ONLY",
        "ROS_STATIC_PEERS",
    ):
        env.pop(var, None)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        ROS_LOG_DIR=log_dir,
        PYTHONUNBUFFERED="1",
    )
    if profile == "shm_8mb":
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    return env


def stop(proc: subprocess.Popen[str]) -> None:
    """End a peer we started (by its own handle), politely first."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


def run_dds_case(case: DdsCase, count: int, domain_id: int, log_dir: str) -> DdsResult:
    env = peer_env(domain_id, case.profile, log_dir)
    warmup = 15
    timeout = 20.0 + (count + warmup) / 30.0
    common = [
        f"--width={case.width}",
        f"--height={case.height}",
        f"--qos={case.qos}",
        f"--count={count}",
        f"--warmup={warmup}",
        f"--timeout={timeout:.0f}",
    ]
    procs: list[subprocess.Popen[str]] = []
    try:
        sub = subprocess.Popen(
            [sys.executable, "-m", PEER_MODULE, "sub", *common],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(sub)
        pub = subprocess.Popen(
            [sys.executable, "-m", PEER_MODULE, "pub", *common],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(pub)
        pub_out, pub_err = pub.communicate(timeout=timeout + 10)
        sub_out, sub_err = sub.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return DdsResult(case, [], count, "timed out")
    finally:
        for p in procs:
            stop(p)
    if sub.returncode != 0 or not sub_out.strip():
        return DdsResult(case, [], count, f"subscriber failed: {sub_err.strip()[-300:]}")
    if pub.returncode != 0:
        detail = pub_out.strip() or pub_err.strip()[-300:]
        return DdsResult(case, [], count, f"publisher failed: {detail}")
    data = json.loads(sub_out.strip().splitlines()[-1])
    return DdsResult(case, [x / 1e6 for x in data["latencies_ns"]], count)


def bench_dds(cases: Sequence[DdsCase], count: int, domain_id: int) -> list[DdsResult]:
    missing = [m for m in ("rclpy", "sensor_msgs", "twinloop_ros") if find_spec(m) is None]
    if missing:
        log(f"skipping DDS transport: not importable: {', '.join(missing)}")
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="twinloop-bench-ros-") as log_dir:
        for case in cases:
            log(f"  dds {case.width}x{case.height} qos={case.qos} profile={case.profile}")
            out.append(run_dds_case(case, count, domain_id, log_dir))
    return out


# ----- machine description and report --------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gl_renderer() -> str:
    try:
        ctx = mujoco.GLContext(16, 16)
        ctx.make_current()
        from OpenGL import GL

        name = GL.glGetString(GL.GL_RENDERER).decode()
        ctx.free()
        return name
    except Exception as err:  # any GL trouble: say so in the report, do not fail the run
        return f"unknown ({type(err).__name__})"


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


def machine(gl: str) -> list[str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit {git_rev()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable), "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, mujoco {mujoco.__version__}, numpy {np.__version__}, "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL')} on {gl}",
        f"- ROS 2: rclpy {_version('ros-jazzy-rclpy')}, rmw_fastrtps_cpp {_version('ros-rmw-fastrtps-cpp')}, "
        f"Fast DDS {_version('ros-fastrtps')}",
    ]


def ms(s: float) -> str:
    return f"{s * 1e3:.2f}"


def fps(s: float) -> str:
    return f"{1.0 / s:.0f}"


def verdict(ok: bool) -> str:
    return "meets target" if ok else "**misses target**"


def report(
    args: argparse.Namespace,
    control: ControlResult,
    render: dict[tuple[int, int], Paired],
    observe: dict[tuple[int, int], Paired],
    tasks: dict[str, Paired],
    dds: list[DdsResult],
    domain_id: int,
    elapsed: float,
) -> str:
    pair, ik_s, adv_s = control.pair, control.ik_s, control.advance_s
    gl = gl_renderer()
    gl_kind = "software (llvmpipe)" if "llvmpipe" in gl else gl
    mode = "quick run (--quick): fewer rounds and samples" if args.quick else "full run"
    lines = [
        "## benchmarks/twin.py: MuJoCo twin vs raw MuJoCo, and camera frames over ROS 2 DDS",
        "",
        f"`{' '.join(['python', 'benchmarks/twin.py', *sys.argv[1:]])}` ({mode}, {elapsed:.0f} s).",
        "",
        *machine(gl),
        "",
        f"These are noisy numbers from a shared {os.cpu_count()}-core CPU machine with {gl_kind} "
        "rendering: absolute times hold only on this hardware; the ratios are what carries over. "
        f"Each contender is timed per call; a round's figure is the median over its calls, and the "
        f"table shows the median over {args.rounds} rounds in which ours and raw alternate (order "
        "flipped every round). Ratio = median over rounds of ours/raw; the range column shows the "
        "per-round ratios.",
        "",
        "### 1a. Control step without rendering (push_cube)",
        "",
        f"Ours: `Twin.step(action)` at 10 Hz = DLS IK + {control.n_substeps} x `mj_step` + "
        "proprio/reward/success. Raw: the same compiled model (`twin.physics.model`), a fresh "
        f"`MjData` with the arm at home and ctrl fixed, {control.n_substeps} x `mj_step` in a "
        f"Python loop. {args.steps} control steps per round.",
        "",
        "| per control step | twinloop (ms) | raw MuJoCo (ms) | ratio | range | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| Twin.step, no render | {ms(pair.ours_s)} | {ms(pair.raw_s)} | {pair.ratio:.2f}x | "
        f"{pair.spread} | "
        f"<= {TARGET_OVERHEAD}x: {verdict(pair.ratio <= TARGET_OVERHEAD)} |",
        "",
        "Where the twin's time goes (separate pass, same actions):",
        "",
        "| part of Twin.step | ms | share of Twin.step |",
        "|---|---:|---:|",
        f"| `apply_action`: DLS IK (warm-started, at most 6 iterations) + limits | {ms(ik_s)} | {ik_s / pair.ours_s:.0%} |",
        f"| `advance({control.n_substeps})`: physics only | {ms(adv_s)} | {adv_s / pair.ours_s:.0%} |",
        f"| rest (proprio, reward, success, result) | {ms(max(pair.ours_s - ik_s - adv_s, 0.0))} | "
        f"{max(pair.ours_s - ik_s - adv_s, 0.0) / pair.ours_s:.0%} |",
        "",
        f"The twin's physics alone is {adv_s / pair.raw_s:.2f}x the raw loop (the arm moves and "
        "touches things in the twin; the raw arm holds still); the rest of the overhead is the "
        "IK and the per-step bookkeeping above.",
        "",
        "### 1b. Rendering",
        "",
        f"Ours: `twin.physics.render()`. Raw: `mujoco.Renderer(model, h, w)` + `update_scene(data, "
        f'camera="camera")` + `render()` on the same model, camera and state. {args.frames} '
        "frames per round.",
        "",
        "| resolution | twinloop (fps) | raw MuJoCo (fps) | ours/raw time | range | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for (w, h), p in render.items():
        lines.append(
            f"| {w}x{h} | {fps(p.ours_s)} | {fps(p.raw_s)} | {p.ratio:.2f}x | {p.spread} | "
            f"{verdict(p.ratio <= TARGET_OVERHEAD)} |"
        )
    lines += [
        "",
        "### 1c. Full observe step (step + render)",
        "",
        "Ours: `Twin.step(action)` with the camera image. Raw: 50 x `mj_step` + render as in 1b.",
        "",
        "| resolution | twinloop (ms) | twinloop (steps/s) | raw (ms) | raw (steps/s) | ratio | range | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (w, h), p in observe.items():
        lines.append(
            f"| {w}x{h} | {ms(p.ours_s)} | {fps(p.ours_s)} | {ms(p.raw_s)} | {fps(p.raw_s)} | "
            f"{p.ratio:.2f}x | {p.spread} | {verdict(p.ratio <= TARGET_OVERHEAD)} |"
        )
    lines += [
        "",
        "### 2. Twin ms per control step, per task",
        "",
        "`Twin.step` driven by the task's scripted expert (expert time not counted), camera "
        "320x240; episodes restart (untimed) on success or truncation. Real time at 10 Hz needs "
        "< 100 ms.",
        "",
        "| task | no render (ms) | with render (ms) | with render (steps/s) |",
        "|---|---:|---:|---:|",
    ]
    for task, p in tasks.items():
        lines.append(f"| {task} | {ms(p.raw_s)} | {ms(p.ours_s)} | {fps(p.ours_s)} |")
    lines += [
        "",
        "### 3. Camera frames between two processes over ROS 2 DDS",
        "",
        "A publisher process sends `sensor_msgs/Image` rgb8 at 30 Hz (`msg.data = "
        "array.array('B', img.tobytes())`, `header.stamp = now` just before `publish`); a "
        "subscriber process (rclpy, single-threaded executor) takes `receive_time - stamp` at the "
        "top of its callback, so the figure includes serialisation, transport and the Python "
        "message conversion. Same host, Fast DDS, `ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`, "
        f"`ROS_DOMAIN_ID={domain_id}`, {args.dds_count} frames measured after 15 warm-up "
        "frames. QoS: *sensor* = `qos_profile_sensor_data` (best effort, keep last 5) on both "
        "sides, as the stack's sensor subscriptions use; *reliable* = reliable, keep last 5 on "
        "both sides. Transport: *defaults* = Fast DDS built-in transports (shared memory with "
        "512 KiB segments + UDPv4); *shm_8mb* = `robot_ws/src/twinloop_ros/config/fastdds.xml` "
        "(`FASTRTPS_DEFAULT_PROFILES_FILE`, shared memory with 8 MiB segments + UDPv4).",
        "",
    ]
    if not dds:
        lines.append("Skipped: the ROS 2 Jazzy wheels are not importable here.")
    else:
        lines += [
            "| frame | QoS | transport | received | p50 (ms) | p99 (ms) | max (ms) | p99 < 10 ms |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for r in dds:
            c = r.case
            if r.error:
                lines.append(
                    f"| {c.width}x{c.height} | {c.qos} | {c.profile} | failed: {r.error} | | | | |"
                )
                continue
            lost = r.expected - r.received
            got = f"{r.received}/{r.expected}" + (
                f" (**{lost / r.expected:.0%} lost**)" if lost else ""
            )
            ok = r.received > 0 and r.pct(99) < TARGET_P99_MS
            lines.append(
                f"| {c.width}x{c.height} | {c.qos} | {c.profile} | {got} | {r.pct(50):.2f} | "
                f"{r.pct(99):.2f} | {max(r.latencies_ms) if r.latencies_ms else float('nan'):.2f} | "
                f"{'yes' if ok and not lost else ('yes, but frames lost' if ok else '**no**')} |"
            )
    lines += ["", *findings(pair, ik_s, observe, dds)]
    return "\n".join(lines).rstrip() + "\n"


def findings(
    pair: Paired,
    ik_s: float,
    observe: dict[tuple[int, int], Paired],
    dds: list[DdsResult],
) -> list[str]:
    """Plain-language reading of the figures, computed from them."""
    out = ["**Reading.**", ""]
    without_ik = (pair.ours_s - ik_s) / pair.raw_s
    out.append(
        f"- Control step: the twin is {pair.ratio:.1f}x raw MuJoCo without rendering "
        f"(target {TARGET_OVERHEAD}x); without the IK it would be {without_ik:.1f}x. "
        "The rest is the damped-least-squares IK (warm-started, 2-3 iterations of ~40 us in "
        "Python), work raw MuJoCo does not do; a raw loop with its own IK would pay it too."
    )
    obs = ", ".join(f"{w}x{h} {p.ratio:.2f}x" for (w, h), p in observe.items())
    above = [f"{w}x{h}" for (w, h), p in observe.items() if p.ratio > TARGET_OVERHEAD]
    tail = (
        f"above the {TARGET_OVERHEAD}x target at {', '.join(above)}" if above else "within target"
    )
    out.append(f"- With the camera image the same IK cost is a smaller share: {obs} ({tail}).")
    by = {(r.case.width, r.case.qos, r.case.profile): r for r in dds if not r.error}

    def ok(r: DdsResult) -> bool:
        return r.received == r.expected and r.pct(99) < TARGET_P99_MS

    default_be = by.get((640, "sensor", "defaults"))
    if default_be is not None and default_be.received < default_be.expected:
        lost = 1 - default_be.received / default_be.expected
        text = (
            f"- With Fast DDS defaults a best-effort (sensor QoS) subscriber lost {lost:.0%} of "
            "the 640x480 frames (a 921,600-byte frame does not fit the default 512 KiB "
            "shared-memory segment)"
        )
        reliable = by.get((640, "reliable", "defaults"))
        if reliable is not None:
            text += (
                f"; a reliable one received {reliable.received}/{reliable.expected} with p99 "
                f"{reliable.pct(99):.1f} ms"
            )
        text += "."
        shm = [r for r in dds if r.case.profile == "shm_8mb" and not r.error]
        if shm and all(ok(r) for r in shm):
            worst = max(r.pct(99) for r in shm)
            text += (
                " With 8 MiB segments (`robot_ws/src/twinloop_ros/config/fastdds.xml`) every case received "
                f"every frame with p99 <= {worst:.1f} ms; `twinloop launch` sets this profile "
                "(FASTRTPS_DEFAULT_PROFILES_FILE) for every node unless the user set one."
            )
        out.append(text)
    elif dds:
        good = sum(ok(r) for r in dds if not r.error)
        out.append(f"- DDS: {good}/{len(dds)} cases received every frame with p99 < 10 ms.")
    return out


def update_results(path: Path, section: str, body: str) -> None:
    """Replace this script's section between its markers; create the file or append if absent."""
    start, end = f"<!-- {section} start -->", f"<!-- {section} end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else RESULTS_HEADER
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i] + block + text[j + len(end) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


# ----- main ----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full run: ~2 min on a 2-core CPU; --quick: ~10 s.",
    )
    parser.add_argument("--quick", action="store_true", help="short run (smoke test, CI)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file to update")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, quick 2)")
    parser.add_argument("--steps", type=int, help="control steps per round (default 60, quick 10)")
    parser.add_argument(
        "--frames", type=int, help="rendered frames per round (default 100, quick 5)"
    )
    parser.add_argument(
        "--dds-count", type=int, help="frames measured per DDS case (default 300, quick 30)"
    )
    parser.add_argument("--no-dds", action="store_true", help="skip the DDS transport part")
    parser.add_argument(
        "--ros-domain-id",
        type=int,
        default=100 + os.getpid() % 100,
        help="dedicated ROS_DOMAIN_ID for the DDS peers (default: 100-199 from the pid)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 5)
    args.steps = args.steps or (10 if quick else 60)
    args.frames = args.frames or (5 if quick else 100)
    args.dds_count = args.dds_count or (30 if quick else 300)
    for name in ("rounds", "steps", "frames", "dds_count"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.ros_domain_id <= 232:
        parser.error("--ros-domain-id must be in 0..232")
    return args


def dds_cases(quick: bool) -> list[DdsCase]:
    if quick:
        return [DdsCase(640, 480, "sensor", "shm_8mb"), DdsCase(320, 240, "sensor", "defaults")]
    return [
        DdsCase(w, h, qos, profile)
        for profile in ("defaults", "shm_8mb")
        for w, h in ((640, 480), (320, 240))
        for qos in ("sensor", "reliable")
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    log(f"1a control step ({args.rounds} rounds x {args.steps} steps)")
    control = bench_control(args.rounds, args.steps)
    log(f"1b render ({args.rounds} rounds x {args.frames} frames per resolution)")
    render = bench_render(args.rounds, args.frames)
    log("1c observe step")
    observe = bench_observe(args.rounds, max(args.frames, 5))
    log("2 per-task step times")
    tasks = bench_tasks(max(args.rounds - 2, 1), args.steps)
    dds: list[DdsResult] = []
    if not args.no_dds:
        log(f"3 DDS image transport ({args.dds_count} frames per case)")
        dds = bench_dds(dds_cases(args.quick), args.dds_count, args.ros_domain_id)
    body = report(
        args, control, render, observe, tasks, dds, args.ros_domain_id, time.monotonic() - t0
    )
    sys.stdout.write(body)
    if not args.no_write:
        update_results(args.results, SECTION, body)
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
