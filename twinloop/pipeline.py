"""The whole loop as one command (``twinloop pipeline``, what ``make demo`` runs).

Stages, each an existing ``twinloop`` command run as a child process (so every stage is also a
command a user can run alone, and one stage's crash cannot take the others' results with it):

1. ``graph``: the sim graph (twin, safety, scripted teleop, recorder) records teleop demos to zarr.
2. ``data``: scripted successes and failures (expert, stall, noisy) for the reward models, and a
   separate held-out set (other seeds) for the audits; reset-free, the same for the backward task.
3. ``classifier``: the RoboFuME success classifier, trained, then audited on the held-out set;
   reset-free, one for each task.
4. ``preference``: RL-VLM-F preference labels from the simulated teacher over HTTP, the
   Bradley-Terry ensemble, audited on the held-out set.
5. ``finetune``: offline Cal-QL, then online fine-tuning through the actor/learner nodes with the
   learned success classifiers as the reward (reward_node), reset-free forward/backward (the task
   and its partner in ``TASK_PAIRS``: a success switches task instead of resetting), every
   published version evaluated; the twin's own success is recorded beside the reward's verdict.
6. ``sysid``: an ASID round on the rod (explore, identify the hidden CoM, update the twin) and the
   deploy step: the lift planned in the identified twin, executed on the hidden-parameter twin.

Every stage writes under ``<run>/<stage>/``, its console output to ``<run>/logs/<stage>.log``;
``<run>/run.json`` records the config and each stage's status, wall time and headline; at the end
(also after a failed stage) :func:`twinloop.report.build_report` writes ``<run>/report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TwinloopError

RUN_FILE = "run.json"


@dataclass(frozen=True)
class Budget:
    """How much work each stage does; :data:`QUICK` (CI, < 3 min) and :data:`FULL` (8-11 min)."""

    graph_episodes: int
    train_episodes: int  # reward training data (expert/stall/noisy cycled)
    heldout_episodes: int  # audit data, other seeds
    classifier_steps: int
    preference_queries: int
    preference_epochs: int
    finetune_demos: int
    offline_steps: int
    online_episodes: int
    eval_episodes: int
    sysid_steps: int  # exploration policy training steps


QUICK = Budget(graph_episodes=2, train_episodes=12, heldout_episodes=6, classifier_steps=150,
               preference_queries=150, preference_epochs=5, finetune_demos=3, offline_steps=200,
               online_episodes=6, eval_episodes=3, sysid_steps=1500)  # fmt: skip
FULL = Budget(graph_episodes=4, train_episodes=36, heldout_episodes=12, classifier_steps=600,
              preference_queries=1000, preference_epochs=20, finetune_demos=20,
              offline_steps=1500, online_episodes=60, eval_episodes=10, sysid_steps=6000)  # fmt: skip

# Frames for the reward models and the reward node: the twin's default camera at half size
# (the finetune graph's twin renders 64x48 for a state policy; the classifier needs more).
IMAGE_SIZE = (160, 120)


@dataclass(frozen=True)
class PipelineConfig:
    out: Path
    quick: bool = False
    task: str = "open_drawer"  # the fine-tuning task (and the reward models' task)
    seed: int = 0
    stages: tuple[str, ...] = ()  # empty: all, in order
    reset_free: bool = True  # forward/backward online (when the task has a backward task)

    def __post_init__(self) -> None:
        from twinloop.sim2real.tasks import TASKS

        if self.task not in TASKS:
            msg = f"unknown task {self.task!r}. Available: {sorted(TASKS)}"
            raise TwinloopError(msg)
        unknown = sorted(set(self.stages) - set(STAGE_NAMES))
        if unknown:
            msg = f"unknown stage(s) {unknown}. Available: {', '.join(STAGE_NAMES)}"
            raise TwinloopError(msg)

    @property
    def budget(self) -> Budget:
        return QUICK if self.quick else FULL

    @property
    def backward(self) -> str:
        """The backward task of a reset-free run ("" when not reset-free)."""
        from twinloop.sim2real.tasks import TASK_PAIRS

        return TASK_PAIRS.get(self.task, "") if self.reset_free else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "quick": self.quick, "task": self.task, "seed": self.seed,
            "stages": list(self.stages) or list(STAGE_NAMES),
            "budget": dataclasses.asdict(self.budget), "image_size": list(IMAGE_SIZE),
            "reset_free": bool(self.backward), "backward_task": self.backward,
        }  # fmt: skip


@dataclass
class StageResult:
    name: str
    title: str
    status: str = "pending"  # pending | ok | failed | skipped
    wall_s: float = 0.0
    commands: list[list[str]] = field(default_factory=list)
    headline: str = ""
    log: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----- the stages ------------------------------------------------------------------------------
def _paths(run: Path, backward: str = "") -> dict[str, Path]:
    """The forward task's files; with ``backward``, its own ``*_b`` ones (``<name>_<task>``)."""
    out = {
        "train": run / "data" / "reward_train.zarr",
        "heldout": run / "data" / "reward_heldout.zarr",
        "classifier": run / "reward" / "classifier.safetensors",
        "preference": run / "reward" / "preference.safetensors",
        "audit_classifier": run / "reward" / "audit_classifier",
        "audit_preference": run / "reward" / "audit_preference",
    }
    if backward:
        out |= {
            "train_b": run / "data" / f"reward_train_{backward}.zarr",
            "heldout_b": run / "data" / f"reward_heldout_{backward}.zarr",
            "classifier_b": run / "reward" / f"classifier_{backward}.safetensors",
            "audit_classifier_b": run / "reward" / f"audit_classifier_{backward}",
        }
    return out


def backward_task(run: Path) -> str:
    """The backward task a run recorded (run.json), "" for a run that was not reset-free."""
    data = _read_json(run / RUN_FILE) or {}
    return str((data.get("config") or {}).get("backward_task") or "")


def _commands(name: str, cfg: PipelineConfig) -> list[list[str]]:
    """The ``twinloop`` argument lists a stage runs, in order."""
    b, run, back = cfg.budget, cfg.out, cfg.backward
    p = _paths(run, back)
    w, h = IMAGE_SIZE
    if name == "graph":
        return [["demo", "--episodes", str(b.graph_episodes), "--task", cfg.task,
                 "--out", str(run / "graph")]]  # fmt: skip
    if name == "data":
        out = []
        for task, sfx, offset in ((cfg.task, "", 0), (back, "_b", 20_000)):
            if not task:
                continue
            record = ["twin", "record", "--task", task, "--kinds", "expert,stall,noisy,partial",
                      "--width", str(w), "--height", str(h), "--no-depth", "--overwrite"]  # fmt: skip
            out += [
                [*record, "--episodes", str(b.train_episodes), "--seed", str(cfg.seed + offset),
                 "--out", str(p["train" + sfx])],
                [*record, "--episodes", str(b.heldout_episodes),
                 "--seed", str(cfg.seed + offset + 10_000), "--out", str(p["heldout" + sfx])],
            ]  # fmt: skip
        return out
    if name == "classifier":
        out = []
        for sfx in ("", "_b") if back else ("",):
            # reset-free: the partner task's goal frames are hard negatives (its goal is this
            # task's start: the arm at the handle, the drawer in the other state)
            partner = ["--negatives", str(p["train_b" if sfx == "" else "train"])] if back else []
            out += [
                ["reward", "train-classifier", "--dataset", str(p["train" + sfx]), "--out",
                 str(p["classifier" + sfx]), "--overwrite", "--steps", str(b.classifier_steps),
                 "--seed", str(cfg.seed), *partner],
                ["reward", "audit", "--dataset", str(p["heldout" + sfx]), "--checkpoint",
                 str(p["classifier" + sfx]), "--out", str(p["audit_classifier" + sfx]),
                 "--max-plots", "4"],
            ]  # fmt: skip
        return out
    if name == "preference":
        return [
            ["reward", "label", "--teacher", "--dataset", str(p["train"]), "--out-model",
             str(p["preference"]), "--out-dataset", str(run / "data" / "reward_train_pref.zarr"),
             "--overwrite", "--queries", str(b.preference_queries), "--epochs",
             str(b.preference_epochs), "--error-rate", "0.1", "--seed", str(cfg.seed)],
            ["reward", "audit", "--dataset", str(p["heldout"]), "--checkpoint",
             str(p["preference"]), "--out", str(p["audit_preference"]), "--max-plots", "4"],
        ]  # fmt: skip
    if name == "finetune":
        reward = f"model:{p['classifier']}"
        if back:  # one classifier per task, reset-free
            reward = f"model:{cfg.task}={p['classifier']},{back}={p['classifier_b']}"
        args = ["finetune", "--task", cfg.task, "--reward", reward,
                *(["--reset-free"] if back else []),
                "--out", str(run / "finetune"), "--seed", str(cfg.seed),
                "--demos", str(b.finetune_demos), "--offline-steps", str(b.offline_steps),
                "--online-episodes", str(b.online_episodes),
                "--eval-episodes", str(b.eval_episodes),
                "--set", f"twin.image_width={w}", "--set", f"twin.image_height={h}"]  # fmt: skip
        return [[*args, "--quick"] if cfg.quick else args]
    if name == "sysid":
        args = ["sysid", "round", "--out", str(run / "sysid"), "--seed", str(cfg.seed)]
        return [[*args, "--quick"] if cfg.quick else [*args, "--steps", str(b.sysid_steps)]]
    msg = f"unknown stage {name!r}"
    raise TwinloopError(msg)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.0f}%"


def _headline(name: str, run: Path) -> str:
    """One line of the stage's result, read from what it wrote."""
    back = backward_task(run)
    p = _paths(run, back)
    if name == "graph":
        lines = (run / "graph" / "episodes.jsonl").read_text().splitlines()
        eps = [json.loads(x) for x in lines if x.strip()]
        wins = sum(bool(e.get("success")) for e in eps)
        return f"{len(eps)} teleop episodes through the ROS 2 graph, {wins} successes, recorded to graph/demos.zarr"
    if name == "data":
        from twinloop.datasets.store import EpisodeStore

        counts = []
        keys = ("train", "heldout", "train_b", "heldout_b") if back else ("train", "heldout")
        for key in keys:
            with EpisodeStore.open(p[key], mode="r") as store:
                metas = [store.episode_meta(i) for i in range(store.n_episodes)]
            wins = sum(bool(m.get("success")) for m in metas)
            label = key.removesuffix("_b") + (f" {back}" if key.endswith("_b") else "")
            counts.append(f"{label} {len(metas)} episodes ({wins} successes)")
        return "; ".join(counts)
    if name == "preference":
        audit = _read_json(p["audit_preference"] / "summary.json") or {}
        return f"held-out Spearman vs progress {audit.get('spearman', float('nan')):.2f}"
    if name == "classifier":  # a preference reward ranks, only the classifier flags success
        parts = []
        audits = ["audit_classifier", "audit_classifier_b"] if back else ["audit_classifier"]
        for key in audits:
            audit = _read_json(p[key] / "summary.json") or {}
            frame = audit.get("frame_flags") or {}
            text = f"held-out Spearman vs progress {audit.get('spearman', float('nan')):.2f}"
            if frame:
                text += f", frame FP {_pct(frame.get('fp_rate'))} FN {_pct(frame.get('fn_rate'))}"
            parts.append((f"{back}: " if key.endswith("_b") else "") + text)
        return "; ".join(parts)
    if name == "finetune":
        s = _read_json(run / "finetune" / "summary.json") or {}
        text = (f"success offline {_pct(s.get('success_offline_end'))} -> online "
                f"{_pct(s.get('success_online_end'))} ({s.get('online_episodes')} online episodes, "
                f"{s.get('versions_published')} policy versions)")  # fmt: skip
        rf, audit = s.get("reset_free") or {}, s.get("reward_audit") or {}
        if rf:
            text += f"; reset-free: {rf.get('switches')} switches, {rf.get('resets')} resets"
        if audit:
            text += (
                f"; the twin agrees with the reward on {_pct(audit.get('agreement'))} of episodes"
            )
        return text
    if name == "sysid":
        s = _read_json(run / "sysid" / "summary.json") or {}
        key = "rod.com_offset"
        est, true = (s.get("estimate") or {}).get(key), (s.get("true") or {}).get(key)
        if est is None or true is None:
            return "no summary"
        return (f"CoM offset {est:+.3f} m (true {true:+.3f}); lift tilt identified twin "
                f"{s['tilt_identified_deg']:.1f} deg vs domain-randomised "
                f"{s['tilt_randomized_deg']:.1f} deg")  # fmt: skip
    return ""


TITLES = {
    "graph": "sim graph: scripted teleop demos recorded to zarr",
    "data": "reward data: successes and failures, and a held-out set",
    "classifier": "success classifier (RoboFuME): train + audit",
    "preference": "preference reward (RL-VLM-F, simulated teacher over HTTP): label + audit",
    "finetune": "offline Cal-QL -> online on the actor/learner nodes, learned reward, reset-free",
    "sysid": "ASID round on the rod -> deploy the lift planned in the identified twin",
}
STAGE_NAMES: tuple[str, ...] = tuple(TITLES)


# ----- running ---------------------------------------------------------------------------------
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run_child(argv: Sequence[str], log_path: Path, echo: Callable[[bytes], None]) -> int:
    """Run ``python -m twinloop ARGV``; its output goes to ``log_path`` and through ``echo``."""
    cmd = [sys.executable, "-m", "twinloop", *argv]
    with log_path.open("ab") as log:
        log.write(("$ twinloop " + " ".join(argv) + "\n").encode())
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env()
        )
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
                log.write(chunk)
                echo(chunk)
        except BaseException:
            proc.kill()
            raise
        return proc.wait()


def _echo(chunk: bytes) -> None:
    sys.stderr.buffer.write(chunk)
    sys.stderr.buffer.flush()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _write_run(path: Path, cfg: PipelineConfig, results: Sequence[StageResult], t0: float) -> None:
    data = {
        "config": cfg.to_dict(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t0)),
        "wall_s": round(time.time() - t0, 1),
        "stages": [r.to_dict() for r in results],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    echo: Callable[[bytes], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> tuple[int, list[StageResult]]:
    """Run the stages in order, stop at the first failure, then write the report.

    Returns (exit code, stage results). ``echo`` gets the children's raw output (progress bars);
    ``say`` one line per stage.
    """
    from .report import build_report

    echo = echo or _echo
    say = say or _say
    run = cfg.out
    if (run / RUN_FILE).exists():
        msg = f"{run} already holds a run ({RUN_FILE}); choose a new --out"
        raise TwinloopError(msg)
    (run / "logs").mkdir(parents=True, exist_ok=True)
    names = [n for n in STAGE_NAMES if not cfg.stages or n in cfg.stages]
    results = [StageResult(n, TITLES[n]) for n in STAGE_NAMES]
    for r in results:
        if r.name not in names:
            r.status = "skipped"
    t0 = time.time()
    _write_run(run / RUN_FILE, cfg, results, t0)
    code = 0
    for i, name in enumerate(names, 1):
        result = next(r for r in results if r.name == name)
        result.log = f"logs/{name}.log"
        say(f"[pipeline] stage {i}/{len(names)} {name}: {TITLES[name]}")
        start = time.perf_counter()
        for argv in _commands(name, cfg):
            result.commands.append(["twinloop", *argv])
            rc = _run_child(argv, run / result.log, echo)
            if rc != 0:
                result.status = "failed"
                result.headline = f"`twinloop {' '.join(argv[:2])}` exited {rc}; see {result.log}"
                break
        result.wall_s = round(time.perf_counter() - start, 1)
        if result.status != "failed":
            result.status = "ok"
            try:
                result.headline = _headline(name, run)
            except (OSError, ValueError, KeyError, TypeError) as err:
                result.status, result.headline = "failed", f"its results could not be read: {err}"
        _write_run(run / RUN_FILE, cfg, results, t0)
        say(f"[pipeline] stage {i}/{len(names)} {name} {result.status.upper()} "
            f"({result.wall_s:.0f} s): {result.headline}")  # fmt: skip
        if result.status == "failed":
            code = 1
            break
    report = build_report(run)
    say(f"[pipeline] report {report} ({time.time() - t0:.0f} s in all)")
    return code, results
