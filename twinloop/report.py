"""One self-contained HTML report per pipeline run (``<run>/report.html``).

Built only from what the stages wrote (``run.json``, the stages' summaries, stores and PNGs), so
``twinloop report RUN_DIR`` rebuilds it at any time. Figures are embedded as data URIs (the file
can be mailed or attached to a PR alone); the PNGs the report draws itself (the contact sheet) are
also written under ``<run>/report_files/``. A section whose stage did not run or failed says so
instead of showing numbers.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPORT = "report.html"
SHEET_FRAME_WIDTH = 160  # px per frame on a contact sheet (wider frames are subsampled)
FILES = "report_files"

# What each headline number is compared against: our own acceptance tests and benchmarks (full
# budgets; benchmarks/RESULTS.md) and the papers' figures (../shared/DESIGN.md).
REFERENCES = {
    "classifier": "RoboFuME's classifier: FP 1-6%, FN 60-81% (paper). Ours, front camera, 45 "
    "episodes (tests/test_success_classifier.py): held-out frame FP 0.4%, FN 0.8%.",
    "preference": "Ours, 2,000 teacher queries at 20% label noise on 96 episodes "
    "(tests/test_preference.py): Spearman >= 0.9 vs true progress on 18 held-out episodes.",
    "finetune": "Issue target: >= 80% success within 30k online steps without a collapse at the "
    "switch. Our benchmark (Cal-QL, open_drawer, 20 demos, 2k offline updates, true reward): 60% "
    "at the switch, 100% from 2k online env steps (benchmarks/RESULTS.md, finetune.py calql).",
    "sysid": "benchmarks/asid.py (15k exploration steps, 2 mm / 1 deg tracker noise, 10 draws): "
    "rod CoM error median 2.9% of the prior range with ASID vs 21.5% with random exploration; lift "
    "tilt 0.86 deg with the identified twin vs 22.5 deg domain-randomised (ASID paper: 0.0-0.7 "
    "deg vs 1-27 deg for the baselines).",
    "nodes": "Control rate 10 Hz (policy_node's schedule); benchmarks/learner.py: actor period "
    "deviation p99 0.3 ms while a learner trains on this CPU.",
}


# ----- small helpers ---------------------------------------------------------------------------
def _esc(x: Any) -> str:
    return html.escape(str(x))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _img(path: Path, alt: str, width: int | None = None) -> str:
    if not path.exists():
        return f'<p class="missing">figure missing: {_esc(path.name)}</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    style = f' style="max-width:{width}px"' if width else ""
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}"{style}>'


def _fmt(x: Any, spec: str = ".3g", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return f"{x:{spec}}{suffix}"
    return _esc(x)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _compare(key: str) -> str:
    return f'<p class="ref"><b>Compared against:</b> {_esc(REFERENCES[key])}</p>'


def _stage(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next((s for s in run.get("stages", []) if s["name"] == name), {"status": "missing"})


def _not_run(stage: dict[str, Any]) -> str | None:
    status = stage.get("status")
    if status == "ok":
        return None
    why = {"failed": f"this stage FAILED: {stage.get('headline', '')}",
           "skipped": "this stage was not selected for this run (--stages)",
           "pending": "this stage did not run (an earlier stage failed)"}.get(
        str(status), f"no record of this stage ({status})")  # fmt: skip
    log = f" Log: <code>{_esc(stage['log'])}</code>." if stage.get("log") else ""
    return f'<p class="missing">{_esc(why)}.{log}</p>'


# ----- sections --------------------------------------------------------------------------------
def _machine() -> dict[str, str]:
    info = {"host": platform.node(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "cpus": str(os.cpu_count())}  # fmt: skip
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    try:
        import mujoco

        info["mujoco"] = mujoco.__version__
    except ImportError:
        pass
    return info


def _quick_note(run: dict[str, Any]) -> str:
    if not (run.get("config") or {}).get("quick"):
        return ""
    return (
        '<p class="ref"><b>Quick budget</b> (make demo QUICK=1): every stage runs, on budgets '
        "too small to learn or identify well; it shows that the loop works end to end. The full "
        "budget's report (make demo) is in docs/example_report/.</p>"
    )


def _section_summary(run_dir: Path) -> str:
    """The headline numbers, each next to what it is compared against below."""
    from .pipeline import backward_task

    rows = []
    run = _read_json(run_dir / "run.json") or {}
    task, back = (run.get("config") or {}).get("task", ""), backward_task(run_dir)
    for name, label in (("audit_classifier", task), (f"audit_classifier_{back}", back)):
        cls = _read_json(run_dir / "reward" / name / "summary.json") if label else None
        if cls and cls.get("frame_flags"):
            f = cls["frame_flags"]
            rows.append([f"success classifier ({_esc(label)}), held-out frames",
                         f"FP {_pct(f.get('fp_rate'))}, FN {_pct(f.get('fn_rate'))}"])  # fmt: skip
    pref = _read_json(run_dir / "reward" / "audit_preference" / "summary.json")
    if pref:
        rows.append(["preference reward, held-out Spearman vs true progress",
                     _fmt(pref.get("spearman"), ".2f")])  # fmt: skip
    fine = _read_json(run_dir / "finetune" / "summary.json")
    if fine:
        rows.append([f"policy success on {_esc(fine.get('task'))} (true success, fixed-seed "
                     "evaluations)", f"offline end {_pct(fine.get('success_offline_end'))} -> "
                     f"online end {_pct(fine.get('success_online_end'))}"])  # fmt: skip
        last = (fine.get("versions") or [{}])[-1]
        if "success_rate_backward" in last:
            rows.append(["policy success on the backward task (last version)",
                         _pct(last.get("success_rate_backward"))])  # fmt: skip
        audit = fine.get("reward_audit")
        if audit:
            rows.append(["online reward audit: the twin's success vs the reward's verdict",
                         f"agree on {_pct(audit.get('agreement'))} of {audit.get('episodes')} "
                         f"episodes ({audit.get('false_success')} false successes, "
                         f"{audit.get('missed')} missed)"])  # fmt: skip
    sysid = _read_json(run_dir / "sysid" / "summary.json")
    if sysid and sysid.get("estimate"):
        key = "rod.com_offset"
        err = abs(sysid["estimate"][key] - sysid["true"][key])
        rows.append(["ASID rod CoM error", f"{err * 1000:.1f} mm ({err / 0.2 * 100:.1f}% of "
                     f"the prior range)"])  # fmt: skip
        rows.append(["deploy: rod lift tilt, identified twin vs domain randomisation",
                     f"{sysid['tilt_identified_deg']:.1f} deg vs "
                     f"{sysid['tilt_randomized_deg']:.1f} deg"])  # fmt: skip
    if not rows:
        return ""
    return "<h2>Summary</h2>" + _table(["measure", "this run"], rows)


def _section_overview(run: dict[str, Any], run_dir: Path) -> str:
    rows = []
    for s in run.get("stages", []):
        cls = {"ok": "ok", "failed": "bad"}.get(s["status"], "dim")
        cmds = "<br>".join(f"<code>{_esc(' '.join(c))}</code>" for c in s.get("commands", []))
        rows.append([_esc(s["name"]), f'<span class="{cls}">{_esc(s["status"])}</span>',
                     _fmt(s.get("wall_s"), ".0f", " s"), _esc(s.get("headline", "")),
                     f"<details><summary>commands</summary>{cmds}</details>" if cmds else ""])  # fmt: skip
    cfg = run.get("config", {})
    machine = _machine()
    return (
        "<h2>Stages</h2>"
        + _table(["stage", "status", "wall", "result", ""], rows)
        + "<h2>Configuration</h2>"
        + f"<p>Run directory <code>{_esc(run_dir.resolve())}</code>, started "
        f"{_esc(run.get('started', '?'))}, {_fmt(run.get('wall_s'), '.0f', ' s')} in all; "
        f"budget <b>{'quick' if cfg.get('quick') else 'full'}</b>, task "
        f"<code>{_esc(cfg.get('task'))}</code>, seed {_esc(cfg.get('seed'))}. Report built on "
        + ", ".join(f"{k} {_esc(v)}" for k, v in machine.items())
        + ".</p>"
        + f"<details><summary>full configuration (run.json)</summary><pre>"
        f"{_esc(json.dumps(cfg, indent=1))}</pre></details>"
    )


def _store_rows(paths: Sequence[tuple[str, Path]]) -> list[list[str]]:
    from twinloop.datasets.store import EpisodeStore

    rows = []
    for label, path in paths:
        if not path.exists():
            rows.append([_esc(label), '<span class="dim">not recorded</span>', "", "", "", ""])
            continue
        with EpisodeStore.open(path, mode="r") as store:
            metas = [store.episode_meta(i) for i in range(store.n_episodes)]
            cams = [k for k in store.keys if k.startswith("image_")]
            shape = tuple(store.array(cams[0]).shape[1:]) if cams else ()
            n, steps, fps = store.n_episodes, store.n_steps, store.fps
        wins = sum(bool(m.get("success")) for m in metas)
        kinds: dict[str, int] = {}
        for m in metas:
            kinds[str(m.get("kind", "teleop"))] = kinds.get(str(m.get("kind", "teleop")), 0) + 1
        dropped = sum(int(m.get("dropped_steps") or 0) for m in metas)
        rows.append([
            f"{_esc(label)}<br><code>{_esc(path.name)}</code>", str(n), f"{steps} @ {fps:g} Hz",
            f"{wins}/{n}", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())),
            f"{', '.join(cams)} {shape}; dropped steps {dropped}",
        ])  # fmt: skip
    return rows


def _contact_sheet(path: Path, out: Path, episodes: int = 4, frames: int = 6) -> Path | None:
    """First ``episodes`` episodes x ``frames`` frames spread over each, one row per episode."""
    import numpy as np

    from twinloop.datasets.store import EpisodeStore
    from twinloop.sim2real.sheet import contact_sheet

    if not path.exists():
        return None
    with EpisodeStore.open(path, mode="r") as store:
        cams = [k for k in store.keys if k.startswith("image_")]
        if not cams or store.n_episodes == 0:
            return None
        rows = []
        for i in range(min(episodes, store.n_episodes)):
            sl = store.episode_slice(i)
            idx = np.unique(np.linspace(sl.start, sl.stop - 1, frames).round().astype(int))
            picked = store.array(cams[0]).get_orthogonal_selection((idx,))
            step = max(1, -(-picked.shape[2] // SHEET_FRAME_WIDTH))  # keep the report small
            rows.append(list(picked[:, ::step, ::step]))
    width = max(len(r) for r in rows)
    rows = [r + [np.zeros_like(r[0])] * (width - len(r)) for r in rows]
    import matplotlib.image

    out.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(out, contact_sheet(rows))
    return out


def _section_data(run: dict[str, Any], run_dir: Path) -> str:
    from .pipeline import backward_task

    parts = ["<h2>Datasets</h2>"]
    back = backward_task(run_dir)
    stores = [("teleop demos through the ROS 2 graph", run_dir / "graph" / "demos.zarr"),
              ("reward training data", run_dir / "data" / "reward_train.zarr"),
              ("reward held-out data (other seeds)", run_dir / "data" / "reward_heldout.zarr"),
              ("fine-tuning demos (scripted, in the twin)", run_dir / "finetune" / "demos.zarr")]  # fmt: skip
    if back:
        stores[3:3] = [
            (f"reward training data, {back}", run_dir / "data" / f"reward_train_{back}.zarr"),
            (f"reward held-out data, {back}", run_dir / "data" / f"reward_heldout_{back}.zarr"),
        ]
    parts.append(_table(["store", "episodes", "steps", "successes", "kinds", "cameras"],
                        _store_rows(stores)))  # fmt: skip
    for label, store, name in (("teleop demos recorded by the recorder node", stores[0][1], "sheet_graph.png"),
                               ("reward data: expert, stall and noisy episodes", stores[1][1], "sheet_reward.png")):  # fmt: skip
        sheet = _contact_sheet(store, run_dir / FILES / name)
        if sheet is not None:
            parts.append(f"<h3>Contact sheet: {_esc(label)}</h3><p class='dim'>one row per "
                         f"episode, frames spread from first to last</p>{_img(sheet, label)}")  # fmt: skip
    return "".join(parts)


def _audit_block(run_dir: Path, name: str, title: str, *, flags: bool) -> str:
    audit_dir = run_dir / "reward" / f"audit_{name}"
    audit = _read_json(audit_dir / "summary.json")
    if audit is None:
        return f'<h3>{_esc(title)}</h3><p class="missing">no audit summary</p>'
    frame, episode = audit.get("frame_flags") or {}, audit.get("episode_flags") or {}
    rows = [
        ["Pearson vs true progress (all frames)", _fmt(audit.get("pearson"), ".3f")],
        ["Spearman vs true progress (all frames)", _fmt(audit.get("spearman"), ".3f")],
        ["mean per-episode Spearman", _fmt(audit.get("episode_spearman_mean"), ".3f")],
    ]
    if flags and frame:
        rows += [
            ["frame FP rate (flagged success, truly not)",
             f"{_pct(frame.get('fp_rate'))} ({frame.get('fp')}/{frame.get('fp', 0) + frame.get('tn', 0)})"],
            ["frame FN rate (true success, not flagged)",
             f"{_pct(frame.get('fn_rate'))} ({frame.get('fn')}/{frame.get('fn', 0) + frame.get('tp', 0)})"],
        ]  # fmt: skip
    if flags and episode:
        rows += [["episode FP / FN rate",
                  f"{_pct(episode.get('fp_rate'))} / {_pct(episode.get('fn_rate'))}"]]  # fmt: skip
    plots = sorted(audit_dir.glob("*.png"))[:4]
    figs = "".join(_img(p, p.stem, 420) for p in plots)
    return (
        f"<h3>{_esc(title)}</h3><p>Audited on {audit.get('n_episodes')} held-out episodes "
        f"({audit.get('n_frames')} frames) recorded with other seeds than the training data.</p>"
        + _table(["measure", "value"], rows)
        + (
            f'<div class="figs">{figs}</div><p class="dim">reward vs true progress per episode'
            " (the audit's PNGs)</p>"
            if figs
            else ""
        )
    )


def _section_reward(run: dict[str, Any], run_dir: Path) -> str:
    from .pipeline import backward_task

    parts = ["<h2>Reward audit</h2>"]
    task, back = (run.get("config") or {}).get("task", ""), backward_task(run_dir)
    blocks = [("classifier", "classifier", f"Success classifier (RoboFuME), {task}")]
    if back:
        blocks.append(("classifier", f"classifier_{back}", f"Success classifier, {back}"))
    blocks.append(("preference", "preference", "Preference reward (RL-VLM-F, simulated teacher)"))
    for name, stem, title in blocks:
        stage = _stage(run, name)
        note = _not_run(stage)
        if note:
            parts.append(f"<h3>{_esc(title)}</h3>{note}")
            continue
        # a preference reward ranks frames, it does not flag success: no FP/FN for it
        parts.append(_audit_block(run_dir, stem, title, flags=name == "classifier"))
        if name == "classifier":
            rep = _read_json(run_dir / "reward" / f"{stem}.report.json") or {}
            hold = (rep.get("holdout") or {}).get("frame") or {}
            parts.append(
                f"<p>Training: threshold {_fmt(rep.get('threshold'), '.3f')} chosen for a target "
                f"FP rate; its own held-out split: FP {_pct(hold.get('fp_rate'))}, FN "
                f"{_pct(hold.get('fn_rate'))}.</p>"
                + _img(run_dir / "reward" / f"{stem}.report.png", f"{stem} report", 640)
            )
            if stem != "classifier":
                continue  # one comparison box for the classifiers
        else:
            rep = _read_json(run_dir / "reward" / "preference.json") or {}
            shown = {k: rep[k] for k in ("queries", "labeled", "dropped", "spearman_progress",
                                         "teacher") if k in rep}  # fmt: skip
            parts.append(f"<details><summary>labeling report</summary><pre>"
                         f"{_esc(json.dumps(shown, indent=1))}</pre></details>")  # fmt: skip
        parts.append(_compare(name))
    return "".join(parts)


def _section_finetune(run: dict[str, Any], run_dir: Path) -> str:
    parts = ["<h2>Learning curves: offline Cal-QL, then online on the actor/learner nodes</h2>"]
    note = _not_run(_stage(run, "finetune"))
    s = _read_json(run_dir / "finetune" / "summary.json")
    if note or s is None:
        return "".join(parts) + (note or '<p class="missing">no finetune summary</p>')
    rf = s.get("reset_free") or {}
    parts.append(
        f"<p>Task <code>{_esc(s.get('task'))}</code>, algorithm {_esc(s.get('algo'))}, reward "
        f"<code>{_esc(s.get('reward'))}</code> (reward_node runs the learned classifier on the "
        f"camera frames; the learner relabels the offline data with it). Success is the twin's "
        f"true success predicate in evaluation episodes with fixed seeds.</p>"
    )
    audit = s.get("reward_audit") or {}
    if rf:
        parts.append(_reset_free_block(s, rf))
    elif audit:
        parts.append(
            f"<p>Online reward audit (the twin's own success beside the classifier's verdict, "
            f"{audit.get('episodes')} online episodes): {audit.get('flagged_successes')} flagged "
            f"successes, {audit.get('true_successes')} true; {audit.get('false_success')} false "
            f"successes, {audit.get('missed')} missed.</p>"
        )
    rows = [[_esc(e.get("phase")), _fmt(e.get("step"), "d"), _pct(e.get("success_rate")),
             _fmt(e.get("mean_return"), ".2f")] for e in s.get("evals", [])]  # fmt: skip
    parts.append(
        _table(
            ["phase", "step (offline: updates, online: env steps)", "success", "mean return"], rows
        )
        + f"<p>Offline end {_pct(s.get('success_offline_end'))} -> online end "
        f"{_pct(s.get('success_online_end'))}; {s.get('online_episodes')} online episodes "
        f"({s.get('online_successes')} successes by the reward's flags), "
        f"{s.get('versions_published')} policy versions published, {s.get('env_steps')} env "
        f"steps.</p>"
        + _img(run_dir / "finetune" / "learning_curve.png", "learning curve", 720)
        + _compare("finetune")
    )
    return "".join(parts)


def _reset_free_block(s: dict[str, Any], rf: dict[str, Any]) -> str:
    """Reset-free: per-task attempts and the reward's verdicts against the twin's truth."""
    tasks = list(rf.get("tasks") or [])
    audit = s.get("reward_audit") or {}
    attempts = rf.get("episodes") or {}
    per_task = audit.get("per_task")
    if per_task is None:  # the audit of a run where one task had every attempt
        tried = [t for t in tasks if attempts.get(t)]
        per_task = {tried[0]: audit} if audit and len(tried) == 1 else {}
    rows = []
    for t in tasks:
        a = per_task.get(t) or {}
        near = a.get("false_success_progress_median")
        row = [f"<code>{_esc(t)}</code>", _fmt(attempts.get(t), "d"),
               _fmt((rf.get("successes") or {}).get(t), "d")]  # fmt: skip
        if attempts.get(t) == 0:  # never ran (no success switched to it): nothing to audit
            rows.append([*row, "-", "-", "-", "-"])
            continue
        rows.append([*row, _fmt(a.get("true_successes"), "d"), _fmt(a.get("false_success"), "d"),
                     "-" if near is None else _fmt(near, ".2f"), _fmt(a.get("missed"), "d")])  # fmt: skip
    versions = [v for v in s.get("versions") or [] if "success_rate_backward" in v]
    vrows = [[f"v{v['version']}", _fmt(v.get("env_steps"), "d"), _pct(v.get("success_rate")),
              _pct(v.get("success_rate_backward"))] for v in versions]  # fmt: skip
    return (
        f"<h3>Reset-free online phase: {' &harr; '.join(_esc(t) for t in tasks)}</h3>"
        f"<p>A success (the running task's classifier flag) switches the twin to the other task "
        f"without a reset; a failure retries the task; a full reset every "
        f"{_esc(rf.get('reset_every'))} episodes. This run: {_esc(rf.get('switches'))} switches, "
        f"{_esc(rf.get('resets'))} full resets. The twin's own success is recorded beside each "
        f"verdict (the online reward audit).</p>"
        + _table(
            [
                "task",
                "attempts",
                "successes (reward's flag)",
                "true successes (twin)",
                "false successes",
                "twin's task progress at a false success (median; 1 = goal)",
                "missed",
            ],
            rows,
        )
        + (
            "<p>Every evaluated version on both tasks (each from its own reset):</p>"
            + _table(
                [
                    "version",
                    "env steps",
                    tasks[0] if tasks else "forward",
                    tasks[1] if len(tasks) > 1 else "backward",
                ],
                vrows,
            )
            if vrows
            else ""
        )
    )


def _section_sysid(run: dict[str, Any], run_dir: Path) -> str:
    parts = ["<h2>System identification (ASID) and deploy</h2>"]
    note = _not_run(_stage(run, "sysid"))
    s = _read_json(run_dir / "sysid" / "summary.json")
    if note or s is None:
        return "".join(parts) + (note or '<p class="missing">no sysid summary</p>')
    key = "rod.com_offset"
    est, true = s["estimate"][key], s["true"][key]
    rows = [
        ["rod CoM offset: estimate / true", f"{est:+.4f} m / {true:+.4f} m"],
        ["error", f"{abs(est - true) * 1000:.1f} mm = {abs(est - true) / 0.2 * 100:.1f}% of the "
                  "prior range (0.2 m)"],
        ["CEM elite spread", _fmt((s.get("spread") or {}).get(key), ".4f", " m")],
        ["twin parameters version written", _fmt(s.get("version"))],
        ["deploy: rod lift tilt, grasp planned in the identified twin",
         _fmt(s.get("tilt_identified_deg"), ".1f", " deg")],
        ["deploy: rod lift tilt, grasp planned by domain randomisation",
         _fmt(s.get("tilt_randomized_deg"), ".1f", " deg")],
        ["wall", _fmt(s.get("seconds"), ".0f", " s")],
    ]  # fmt: skip
    parts.append(
        "<p>The 'robot' is the twin with a hidden rod centre of mass and a pose tracker's noise; "
        "the exploration policy was trained for Fisher information; CEM fits the CoM to the "
        "recorded rollout; the grasp planned in the identified twin is then executed on the "
        "hidden-parameter twin (deploy).</p>"
        + _table(["measure", "value"], rows)
        + _img(run_dir / "sysid" / "identify" / "fit.png", "sysid fit", 720)
        + _compare("sysid")
    )
    return "".join(parts)


def _section_nodes(run: dict[str, Any], run_dir: Path) -> str:
    parts = ["<h2>Node rates and latencies</h2>"]
    s = _read_json(run_dir / "finetune" / "summary.json") or {}
    rates = s.get("node_rates") or {}
    rows = []
    labels = {
        "policy_rate_hz": ("policy_node control rate", "Hz"),
        "policy_action_rate_hz": ("policy_node actions sent", "Hz"),
        "policy_jitter_ms": ("policy_node period jitter", "ms"),
        "policy_held": ("ticks held (no fresh observation)", ""),
        "policy_swaps": ("policy weight swaps", ""),
        "learner_updates_per_s": ("learner gradient updates, last seconds (0 once idle)", "/s"),
        "learner_busy_updates_per_s": ("learner update throughput while updating", "/s"),
        "learner_updates": ("learner updates in all", ""),
        "reward_input_hz": ("reward_node frames in", "Hz"),
        "reward_output_hz": ("reward_node rewards out", "Hz"),
        "reward_latency_p50_ms": ("reward latency p50 (frame stamp -> reward)", "ms"),
        "reward_latency_p99_ms": ("reward latency p99", "ms"),
        "reward_forward_p50_ms": ("reward model forward p50", "ms"),
        "reward_skipped": ("reward frames skipped (newest frame wins)", ""),
        "reward_failed": ("reward frames failed", ""),
        "safety_counts": ("safety_node counts", ""),
        "safety_estop": ("e-stop latched", ""),
    }
    for key, (label, unit) in labels.items():
        if rates.get(key) is not None:  # a figure the node did not report is left out
            rows.append([_esc(label), f"{_value(rates[key])} {unit}".strip()])
    graph_eps = run_dir / "graph" / "demos.zarr"
    if graph_eps.exists():
        from twinloop.datasets.store import EpisodeStore

        with EpisodeStore.open(graph_eps, mode="r") as store:
            metas = [store.episode_meta(i) for i in range(store.n_episodes)]
            steps = store.n_steps
        dropped = sum(int(m.get("dropped_steps") or 0) for m in metas)
        rows.append(["recorder: steps dropped while recording the teleop demos",
                     f"{dropped} of {steps + dropped}"])  # fmt: skip
    if not rows:
        return (
            "".join(parts) + '<p class="missing">no node figures (the graph stages did not run)</p>'
        )
    return (
        "".join(parts)
        + _table(["measure (fine-tuning graph, final status)", "value"], rows)
        + _compare("nodes")
    )


def _value(v: Any) -> str:
    """A status figure: numbers as numbers, {"p50": .., "p99": ..} and count dicts inline."""
    if isinstance(v, dict):
        flat = {k: x for k, x in v.items() if not isinstance(x, dict)}
        return ", ".join(f"{_esc(k)} {_fmt(x, '.3g')}" for k, x in flat.items())
    return _fmt(v, ".3g")


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{background:#f5f5f5;padding:0 .2em}
.ok{color:#176f2c;font-weight:bold}.bad{color:#b00020;font-weight:bold}.dim{color:#777}
.missing{color:#b00020}.ref{background:#f7f7ff;border-left:3px solid #88a;padding:.4em .7em}
img{max-width:100%;border:1px solid #ddd;margin:.3em}.figs{display:flex;flex-wrap:wrap}
pre{background:#f8f8f8;padding:.5em;overflow:auto}
"""


def build_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``<run_dir>/report.html`` from what the run's stages left there; returns its path."""
    run_dir = Path(run_dir)
    run = _read_json(run_dir / "run.json") or {"stages": [], "config": {}}
    failed = [s["name"] for s in run.get("stages", []) if s["status"] == "failed"]
    status = f"FAILED at {', '.join(failed)}" if failed else "completed"
    body = "".join([
        f"<h1>twinloop run {_esc(run_dir.name)}: {_esc(status)}</h1>",
        "<p>The whole loop on the MuJoCo twin: teleop demos through the ROS 2 graph, reward "
        "models trained and audited, offline Cal-QL and online fine-tuning on the actor/learner "
        "nodes with the learned reward, an ASID round and its deploy. Every number below is read "
        "from this run's own files; the boxes say what each is compared against.</p>",
        _quick_note(run),
        _section_summary(run_dir),
        _section_overview(run, run_dir),
        _section_data(run, run_dir),
        _section_reward(run, run_dir),
        _section_finetune(run, run_dir),
        _section_sysid(run, run_dir),
        _section_nodes(run, run_dir),
        f"<p class='dim'>Built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by twinloop report.</p>",
    ])  # fmt: skip
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>twinloop run "
            f"{_esc(run_dir.name)}</title><style>{CSS}</style></head><body>{body}</body></html>")  # fmt: skip
    out = run_dir / REPORT
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page)
    os.replace(tmp, out)
    return out
