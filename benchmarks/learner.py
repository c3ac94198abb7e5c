"""Benchmark the RL learner: gradient updates/s of IQL, Cal-QL and SAC vs a plain reference.

Measures, side by side in one run on this machine:

1. Gradient updates per second at batch ``--batch`` (256) for every algorithm and input kind:
   *state* (state_dim 20, action 5) and *image* (84x84 RGB uint8 + the state, the small CNN
   encoder with DrQ random shifts). *Ours*: ``twinloop.policy.make_algorithm(type, spec)`` and
   its ``update(batch)``. *Reference*: a straightforward single-file implementation written
   for the benchmark in the CORL style (benchmarks/learner_reference.py) (separate ``nn.Linear`` critics looped over in Python, one module per
   critic, the same widths, number of critics, sampled actions and image CNN shape). Both run on
   the same fixed batch (sampling is not timed), interleaved in rounds (ours, ref / ref, ours,
   order flipped every round); the table shows the median over rounds of each one's rate and of
   the per-round ratio. UTD at 10 Hz = ours updates/s / 10: the update-to-data ratio the device
   sustains while a robot produces 10 transitions per second.
2. The actor's control-loop jitter at 10 Hz: a loop calls ``algo.act()`` on a fresh obs
   (state + image, batch 1) every 100 ms, while a learner (another process, or a thread with
   ``--learner thread``) trains the image policy and saves a checkpoint every ~2 s with
   ``save_checkpoint``; a loader thread in the actor's process loads it (``load_checkpoint``)
   and swaps it in by a reference assignment. Reported: period p50/p99/max deviation from
   100 ms, the ``act`` time and the number of weight swaps; once with no learner as a baseline.

``--device cuda`` puts the batches and networks on the GPU and synchronises around each timed
window. Results go to benchmarks/RESULTS.md, into this script's own section per device
(rewritten in place); ``--results FILE`` writes elsewhere, ``--no-write`` prints only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import cpu_model, git_rev, update_results
from learner_reference import make_reference
from twinloop.policy.base import load_checkpoint, make_algorithm, save_checkpoint
from twinloop.policy.buffers import MixedSampler, ReplayBuffer
from twinloop.policy.common import Batch
from twinloop.policy.networks import EncoderSpec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
ALGOS = ("iql", "calql", "sac")
INPUTS = ("state", "image")
STATE_DIM, ACTION_DIM, IMAGE_SIZE = 20, 5, 84
CONTROL_HZ = 10.0
TARGET_RATIO = 1.0  # ours / reference updates per second, from the issue
TARGET_UTD = 4.0  # updates per transition at 10 Hz with images, on a GPU (the issue)


def log(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- data ------------------------------------------------------------------------------------
def make_spec(kind: str) -> EncoderSpec:
    return EncoderSpec(STATE_DIM, ACTION_DIM, image_size=IMAGE_SIZE if kind == "image" else 0)


def random_obs(spec: EncoderSpec, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    obs = {"state": torch.randn(n, spec.state_dim, generator=gen)}
    if spec.uses_image:
        size = (n, 3, spec.image_size, spec.image_size)
        obs["image"] = torch.randint(0, 256, size, generator=gen, dtype=torch.uint8)
    return obs


def random_batch(spec: EncoderSpec, n: int, device: torch.device, seed: int = 0) -> Batch:
    """A fixed batch on ``device`` (GPU-resident on cuda): sampling is not what is timed."""
    gen = torch.Generator().manual_seed(seed)
    batch = Batch(
        obs=random_obs(spec, n, gen),
        action=torch.rand(n, spec.action_dim, generator=gen) * 2 - 1,
        reward=-(torch.rand(n, generator=gen) < 0.9).float(),
        next_obs=random_obs(spec, n, gen),
        done=(torch.rand(n, generator=gen) < 0.1).float(),
        mc_return=-torch.rand(n, generator=gen) * 50,
    )
    return batch.to(device)


# ----- 1. updates per second -------------------------------------------------------------------
def rate(update: Callable[[], object], seconds: float, device: torch.device) -> float:
    """Updates per second over a window of at least ``seconds`` and at least one update."""
    sync(device)
    t0 = time.perf_counter()
    n = 0
    while True:
        update()
        n += 1
        if time.perf_counter() - t0 >= seconds:
            break
    sync(device)
    return n / (time.perf_counter() - t0)


@dataclass
class UpdateCase:
    algo: str
    kind: str
    ours: list[float] = field(default_factory=list)  # updates/s per round
    ref: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [o / r for o, r in zip(self.ours, self.ref, strict=True)]


def run_updates(args: argparse.Namespace) -> list[UpdateCase]:
    cases = []
    contenders: list[tuple[UpdateCase, Callable[[], object], Callable[[], object]]] = []
    for kind in args.inputs:
        spec = make_spec(kind)
        batch = random_batch(spec, args.batch, args.device)
        for algo in args.algos:
            ours = make_algorithm(algo, spec, device=args.device, seed=0)
            torch.manual_seed(0)
            ref = make_reference(algo, spec, args.device)
            case = UpdateCase(algo, kind)
            cases.append(case)
            contenders.append(
                (case, functools.partial(ours.update, batch), functools.partial(ref.update, batch))
            )
            for fn in (contenders[-1][1], contenders[-1][2]):  # warm-up (allocator, kernels)
                fn()
    for rnd in range(args.rounds):
        log(f"round {rnd + 1}/{args.rounds}")
        for case, ours_fn, ref_fn in contenders:
            order = [("ours", ours_fn), ("ref", ref_fn)]
            for who, fn in order if rnd % 2 == 0 else order[::-1]:
                getattr(case, who).append(rate(fn, args.seconds, args.device))
    return cases


def filled_buffer(spec: EncoderSpec, size: int, device: torch.device, seed: int) -> ReplayBuffer:
    """A replay buffer on ``device`` holding ``size`` transitions in 100-step random episodes."""
    buf = ReplayBuffer(size, spec.state_dim, spec.action_dim, spec.image_size, device=device)
    rng = np.random.default_rng(seed)
    for _ in range(max(1, size // 100)):
        t = 100
        images = None
        if spec.uses_image:
            shape = (t + 1, 3, spec.image_size, spec.image_size)
            images = rng.integers(0, 256, shape, dtype=np.uint8)
        buf.add_episode(
            rng.standard_normal((t + 1, spec.state_dim)).astype(np.float32),
            rng.uniform(-1, 1, (t, spec.action_dim)).astype(np.float32),
            -(rng.random(t) < 0.9).astype(np.float32),
            terminated=bool(rng.random() < 0.5),
            images=images,
        )
    return buf


@dataclass
class EndToEndCase:
    algo: str
    kind: str
    rates: list[float] = field(default_factory=list)


def run_end_to_end(args: argparse.Namespace) -> list[EndToEndCase]:
    """Ours as the learner node runs it: a 50/50 MixedSampler batch from two replay buffers on
    the device (offline + online), then ``update``; sampling is timed here."""
    cases = []
    for kind in args.inputs:
        spec = make_spec(kind)
        sampler = MixedSampler(
            filled_buffer(spec, args.buffer, args.device, 1),
            filled_buffer(spec, args.buffer, args.device, 2),
            0.5,
        )
        for algo in args.algos:
            ours = make_algorithm(algo, spec, device=args.device, seed=0)

            def step(ours: Any = ours, sampler: MixedSampler = sampler) -> None:
                ours.update(sampler.sample(args.batch))

            step()
            case = EndToEndCase(algo, kind)
            for _ in range(args.rounds):
                case.rates.append(rate(step, args.seconds, args.device))
            cases.append(case)
            log(f"end to end {algo}/{kind}: {med(case.rates):.1f} upd/s")
    return cases


# ----- 2. control-loop jitter while a learner trains ------------------------------------------
@dataclass
class JitterResult:
    learner: str  # "none", "process" or "thread"
    periods_ms: list[float] = field(default_factory=list)
    act_ms: list[float] = field(default_factory=list)
    swaps: int = 0
    load_ms: list[float] = field(default_factory=list)
    learner_updates: int = 0
    checkpoints: int = 0

    def deviation(self, q: float) -> float:
        dev = [abs(p - 1e3 / CONTROL_HZ) for p in self.periods_ms]
        return float(np.percentile(dev, q)) if dev else float("nan")


def learner_loop(
    path: str,
    algo: str,
    batch_size: int,
    device: str,
    threads: int,
    save_every: float,
    stop: Any,
    counters: Any,
) -> None:
    """Train ``algo`` on image inputs; save a checkpoint every ``save_every`` s until ``stop``."""
    if threads:  # 0: a thread in the actor's process shares its torch threads
        torch.set_num_threads(threads)
    spec = make_spec("image")
    learner = make_algorithm(algo, spec, device=device, seed=1)
    batch = random_batch(spec, batch_size, torch.device(device), seed=1)
    last = time.monotonic()
    while not stop.is_set():
        learner.update(batch)
        counters[0] += 1
        if time.monotonic() - last >= save_every:
            save_checkpoint(learner, path, extra={"updates": counters[0]})
            counters[1] += 1
            last = time.monotonic()


class PolicyHolder:
    """The actor's current policy; a loader thread replaces it when a new checkpoint appears."""

    def __init__(self, algo: Any, path: Path, device: torch.device) -> None:
        self.algo = algo
        self.type = str(algo.config.type)
        self.spec = algo.spec
        self.path = path
        self.device = device
        self.swaps = 0
        self.load_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="policy-loader", daemon=True)

    def _watch(self) -> None:
        seen = 0
        while not self._stop.wait(0.05):
            try:
                stamp = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if stamp == seen:
                continue
            seen = stamp
            t0 = time.perf_counter()
            algo, _ = load_checkpoint(
                self.path, device=self.device, expect_type=self.type, expect_spec=self.spec
            )
            self.load_ms.append(1e3 * (time.perf_counter() - t0))
            self.algo = algo  # the swap: one reference assignment
            self.swaps += 1

    def __enter__(self) -> PolicyHolder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def control_loop(holder: PolicyHolder, seconds: float, device: torch.device) -> JitterResult:
    """Every 100 ms (absolute schedule, like a ROS timer): fresh obs -> ``act``; periods."""
    result = JitterResult("")
    spec = make_spec("image")
    rng = np.random.default_rng(0)
    period = 1.0 / CONTROL_HZ
    t0 = time.perf_counter() + period
    last = None
    k = 0
    while True:
        due = t0 + k * period
        if due - t0 >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        start = time.perf_counter()
        if last is not None:
            result.periods_ms.append(1e3 * (start - last))
        last = start
        obs = {
            "state": torch.from_numpy(rng.standard_normal((1, spec.state_dim), dtype=np.float32)),
            "image": torch.from_numpy(
                rng.integers(0, 256, (1, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            ),
        }
        holder.algo.act(obs)
        sync(device)
        result.act_ms.append(1e3 * (time.perf_counter() - start))
        k += 1
    return result


def run_jitter(args: argparse.Namespace, mode: str, workdir: Path) -> JitterResult:
    """The 10 Hz actor loop with ``mode`` = none (baseline), process or thread learner."""
    spec = make_spec("image")
    algo = args.jitter_algo
    path = workdir / f"policy-{mode}.safetensors"
    actor = make_algorithm(algo, spec, device=args.device, seed=0)
    learner_args = (path, algo, args.batch, str(args.device), args.threads, args.save_every)
    worker: Any = None
    stop: Any = None
    counters: Any = [0, 0]
    if mode == "process":
        ctx = mp.get_context("spawn")
        stop, counters = ctx.Event(), ctx.Array("q", 2, lock=False)
        worker = ctx.Process(target=learner_loop, args=(*learner_args, stop, counters))
    elif mode == "thread":  # one process: torch's intra-op threads are shared with the actor
        torch.set_num_threads(args.threads)
        stop = threading.Event()
        learner_args = (*learner_args[:4], 0, args.save_every)
        worker = threading.Thread(target=learner_loop, args=(*learner_args, stop, counters))
    if worker is not None:
        worker.start()
        deadline = time.monotonic() + 120
        while counters[0] == 0 and time.monotonic() < deadline:  # learner up and training
            time.sleep(0.05)
    try:
        with PolicyHolder(actor, path, args.device) as holder:
            result = control_loop(holder, args.jitter_seconds, args.device)
    finally:
        if worker is not None:
            stop.set()
            worker.join(timeout=120)
        torch.set_num_threads(1)
    result.learner = mode
    result.swaps, result.load_ms = holder.swaps, holder.load_ms
    result.learner_updates, result.checkpoints = int(counters[0]), int(counters[1])
    return result


# ----- report ------------------------------------------------------------------------------------
def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def machine(args: argparse.Namespace, load: tuple[float, float]) -> list[str]:
    lines = [
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; commit {git_rev()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
    ]
    if args.device.type == "cuda":
        lines.append(
            f"- GPU: {torch.cuda.get_device_name(args.device)}, CUDA {torch.version.cuda}, fp32"
        )
    lines += [
        f"- Python {platform.python_version()}, torch {torch.__version__} ({args.threads} CPU "
        f"thread{'s' if args.threads > 1 else ''} for the learner), numpy {np.__version__}",
        f"- Machine load (shared with other work): load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after (1 min)",
    ]
    return lines


def verdict(ok: bool) -> str:
    return "meets target" if ok else "**misses target**"


def report(
    args: argparse.Namespace,
    cases: list[UpdateCase],
    jitter: list[JitterResult],
    elapsed: float,
    load: tuple[float, float],
    e2e: Sequence[EndToEndCase] = (),
) -> str:
    mode = "quick run (--quick)" if args.quick else "full run"
    cmd = " ".join(["python", "benchmarks/learner.py", *sys.argv[1:]])
    lines = [
        f"## benchmarks/learner.py ({args.device.type}): learner updates/s and actor jitter",
        "",
        f"`{cmd}` ({mode}, {elapsed:.0f} s).",
        "",
        *machine(args, load),
        "",
        "### 1. Gradient updates per second, ours vs a plain reference",
        "",
        f"Batch {args.batch}; *state*: state_dim {STATE_DIM}, action {ACTION_DIM}; *image*: "
        f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB uint8 + the state, the small CNN (4 conv x 32, then "
        "Linear 50 + LayerNorm + tanh) trained through the critic with DrQ shifts (pad 4) on "
        "obs and next obs. One update = every network's gradient step and the target update. "
        "*Ours*: `make_algorithm(type, spec).update(batch)` with the default configs (IQL 2 "
        "critics; Cal-QL 2 critics, 10 sampled actions per kind, alpha 5; SAC 2 critics, UTD 1), "
        "critics as one batched ensemble. *Reference*: plain PyTorch written for the benchmark (benchmarks/learner_reference.py), "
        "CORL style: one `nn.Sequential` of `nn.Linear` per critic, looped over in Python, "
        "the same widths (256, 256), critics, sampled actions and CNN; it returns its losses "
        "with one device sync as ours does. Same fixed batch for both, "
        f"{args.rounds} rounds of >= {args.seconds:g} s each, alternating (order flipped every "
        "round); figures are medians over rounds, *range* is the per-round ratios. "
        f"UTD @ {CONTROL_HZ:g} Hz = ours updates/s / {CONTROL_HZ:g}.",
        "",
        "| algo | input | ours (upd/s) | reference (upd/s) | ratio | range | "
        f"UTD @ {CONTROL_HZ:g} Hz | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in cases:
        ratio = med(c.ratios)
        lines.append(
            f"| {c.algo} | {c.kind} | {med(c.ours):.2f} | {med(c.ref):.2f} | {ratio:.2f}x | "
            f"{min(c.ratios):.2f}-{max(c.ratios):.2f} | {med(c.ours) / CONTROL_HZ:.2f} | "
            f">= {TARGET_RATIO:g}x: {verdict(ratio >= TARGET_RATIO)} |"
        )
    if e2e:
        lines += [
            "",
            "### 1b. The learner's loop: sampling + update (ours)",
            "",
            f"`MixedSampler.sample({args.batch})`, 50/50 from two `ReplayBuffer`s on the "
            f"{args.device.type} ({args.buffer} transitions each, 100-step episodes, frames "
            "stored once), then `update`: what `learner_node` does per gradient step. "
            f"{args.rounds} windows of >= {args.seconds:g} s; median.",
            "",
            f"| algo | input | upd/s | UTD @ {CONTROL_HZ:g} Hz |",
            "|---|---|---:|---:|",
        ]
        for e in e2e:
            lines.append(
                f"| {e.algo} | {e.kind} | {med(e.rates):.2f} | {med(e.rates) / CONTROL_HZ:.2f} |"
            )
    if jitter:
        lines += [
            "",
            f"### 2. Actor control loop at {CONTROL_HZ:g} Hz while the learner trains",
            "",
            f"The actor ({args.device.type}, 1 torch thread in the main process) wakes on an "
            f"absolute {1e3 / CONTROL_HZ:.0f} ms schedule, builds a fresh obs (state + "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} image, batch 1) and calls `{args.jitter_algo}.act()`; "
            f"period = time between two wake-ups, deviation = |period - {1e3 / CONTROL_HZ:.0f} "
            f"ms|. The learner trains {args.jitter_algo} on images (batch {args.batch}, "
            f"{args.threads} thread(s)) and saves `save_checkpoint` every >= {args.save_every:g} s; "
            "a loader thread in the actor's process sees the new file, `load_checkpoint`s it "
            "and swaps the policy in (a reference assignment). "
            f"{args.jitter_seconds:g} s per row.",
            "",
            "| learner | ticks | period p50 (ms) | deviation p50 / p99 / max (ms) | "
            "act p50 / p99 (ms) | learner updates | checkpoints | weight swaps | load p50 (ms) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for j in jitter:
            lines.append(
                f"| {j.learner} | {len(j.periods_ms)} | {pct(j.periods_ms, 50):.1f} | "
                f"{j.deviation(50):.1f} / {j.deviation(99):.1f} / {j.deviation(100):.1f} | "
                f"{pct(j.act_ms, 50):.1f} / {pct(j.act_ms, 99):.1f} | {j.learner_updates} | "
                f"{j.checkpoints} | {j.swaps} | {pct(j.load_ms, 50):.0f} |"
            )
    lines += ["", "**Reading.** " + reading(args, cases, jitter, e2e)]
    return "\n".join(lines).rstrip() + "\n"


def reading(
    args: argparse.Namespace,
    cases: list[UpdateCase],
    jitter: list[JitterResult],
    e2e: Sequence[EndToEndCase] = (),
) -> str:
    parts = []
    for kind in args.inputs:
        kc = [c for c in cases if c.kind == kind]
        if not kc:
            continue
        text = ", ".join(
            f"{c.algo} {med(c.ratios):.2f}x ({med(c.ours):.1f} vs {med(c.ref):.1f} upd/s)"
            for c in kc
        )
        misses = [c.algo for c in kc if med(c.ratios) < TARGET_RATIO]
        parts.append(
            f"With {kind} inputs ours vs the reference: {text}; "
            + (
                f"below {TARGET_RATIO:g}x: {', '.join(misses)}."
                if misses
                else "all meet the target."
            )
        )
    image = [c for c in cases if c.kind == "image"]
    if image:
        best = max(image, key=lambda c: med(c.ours))
        parts.append(
            f"With images this {args.device.type} sustains UTD "
            + ", ".join(f"{med(c.ours) / CONTROL_HZ:.2f} ({c.algo})" for c in image)
            + f" at {CONTROL_HZ:g} Hz (best {best.algo}: {med(best.ours):.1f} upd/s)."
        )
    e2e_image = [e for e in e2e if e.kind == "image"]
    if e2e_image:
        worst = min(e2e_image, key=lambda e: med(e.rates))
        utd = med(worst.rates) / CONTROL_HZ
        parts.append(
            "Sampling from the replay buffers included, the slowest image learner "
            f"({worst.algo}) sustains UTD {utd:.2f} at {CONTROL_HZ:g} Hz ("
            + (
                f"target >= {TARGET_UTD:g}: {verdict(utd >= TARGET_UTD)})."
                if args.device.type == "cuda"
                else f"the >= {TARGET_UTD:g} target is for a GPU)."
            )
        )
    base = next((j for j in jitter if j.learner == "none"), None)
    for j in jitter:
        if j.learner == "none":
            continue
        text = (
            f"With a {j.learner} learner ({j.learner_updates} updates, {j.swaps} weight swaps) "
            f"the actor's period deviated p50 {j.deviation(50):.1f} ms, p99 "
            f"{j.deviation(99):.1f} ms, max {j.deviation(100):.1f} ms from {1e3 / CONTROL_HZ:.0f} ms"
        )
        if base is not None:
            text += (
                f" (no learner: p99 {base.deviation(99):.1f} ms, max {base.deviation(100):.1f} ms)"
            )
        parts.append(text + ".")
    return " ".join(parts) if parts else "nothing was measured."


# ----- main ----------------------------------------------------------------------------------------
def _names(
    text: str, allowed: Sequence[str], option: str, parser: argparse.ArgumentParser
) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        parser.error(
            f"{option} takes a comma-separated subset of {','.join(allowed)}, got {text!r}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Full CPU run: ~6 min on 2 cores; --quick: ~20 s. GPU: --device cuda.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test, CI)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--algos", default=",".join(ALGOS), help="subset of iql,calql,sac")
    parser.add_argument("--inputs", default=",".join(INPUTS), help="subset of state,image")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per measurement (default 4, quick 0.2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating rounds (default 5, quick 2)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size (default 256, quick 16)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default all cores)"
    )
    parser.add_argument(
        "--learner",
        default="process",
        choices=("process", "thread", "none"),
        help="where the learner of the jitter test runs (none: skip the jitter test)",
    )
    parser.add_argument(
        "--jitter-seconds",
        type=float,
        default=None,
        help="seconds per jitter row (default 20, quick 2)",
    )
    parser.add_argument(
        "--save-every",
        type=float,
        default=None,
        help="learner checkpoint period, s (default 2, quick 0.5)",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="also time sampling + update from replay buffers on the device (section 1b)",
    )
    parser.add_argument(
        "--buffer",
        type=int,
        default=None,
        help="transitions per replay buffer for --end-to-end (default 10000, quick 400)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file to update")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    args.device = torch.device(args.device)
    args.algos = _names(args.algos, ALGOS, "--algos", parser)
    args.inputs = _names(args.inputs, INPUTS, "--inputs", parser)
    quick = args.quick
    args.seconds = args.seconds if args.seconds is not None else (0.2 if quick else 4.0)
    args.rounds = args.rounds or (2 if quick else 5)
    args.batch = args.batch or (16 if quick else 256)
    args.jitter_seconds = args.jitter_seconds or (2.0 if quick else 20.0)
    args.save_every = args.save_every or (0.5 if quick else 2.0)
    args.buffer = args.buffer or (400 if quick else 10_000)
    args.jitter_algo = args.algos[0]
    if args.seconds <= 0 or args.rounds < 1 or args.batch < 2 or args.threads < 1:
        parser.error("--seconds, --rounds, --batch (>= 2) and --threads must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    cases = run_updates(args)
    e2e = run_end_to_end(args) if args.end_to_end else []
    jitter: list[JitterResult] = []
    if args.learner != "none":
        torch.set_num_threads(1)  # the actor's process: one thread, as a policy node would
        with tempfile.TemporaryDirectory(prefix="twinloop-bench-learner-") as tmp:
            for mode in ("none", args.learner):
                log(f"jitter: 10 Hz actor, learner {mode}, {args.jitter_seconds:g} s")
                jitter.append(run_jitter(args, mode, Path(tmp)))
    load = (load_before, os.getloadavg()[0])
    body = report(args, cases, jitter, time.monotonic() - t0, load, e2e)
    sys.stdout.write(body)
    if not args.no_write:
        update_results(args.results, f"learner.py {args.device.type}", body)
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
