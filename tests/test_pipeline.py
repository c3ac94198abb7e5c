"""The whole loop: ``make demo QUICK=1`` end to end, and the report of partial/failed runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from twinloop.errors import TwinloopError
from twinloop.pipeline import STAGE_NAMES, PipelineConfig
from twinloop.report import build_report

REPO = Path(__file__).resolve().parents[1]
DOMAIN_ID = 1 + (os.getpid() + 71) % 100

SECTIONS = ("Stages", "Configuration", "Datasets", "Reward audit", "Learning curves",
            "System identification", "Node rates and latencies")  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "OMP_NUM_THREADS": "1",
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}  # fmt: skip


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twinloop", *args], capture_output=True,
                          text=True, timeout=120, env=_env(), cwd=cwd, check=False)  # fmt: skip


@pytest.mark.slow
def test_make_demo_quick_end_to_end(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = subprocess.run(["make", "-s", "-C", str(REPO), "demo", "QUICK=1", f"RUNS={runs}"],
                         capture_output=True, text=True, timeout=600, env=_env(), check=False)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    (run,) = list(runs.iterdir())
    record = json.loads((run / "run.json").read_text())
    assert [s["name"] for s in record["stages"]] == list(STAGE_NAMES)
    assert all(s["status"] == "ok" for s in record["stages"]), record["stages"]
    for name in STAGE_NAMES:  # a clear line per stage, with its result
        assert re.search(rf"\[pipeline\] stage \d/6 {name} OK \(\d+ s\): \S", text), name

    page = (run / "report.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}" in page, section
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 can spell "n/a"
    assert "FAILED" not in text
    assert 'class="missing"' not in text
    assert "n/a" not in text
    assert page.count("data:image/png;base64,") >= 6  # contact sheets, audits, curve, sysid fit
    assert 'src="http' not in page and "src='http" not in page  # self-contained

    # every section from real measurements of this run
    audit = json.loads((run / "reward" / "audit_classifier" / "summary.json").read_text())
    assert audit["n_frames"] > 100 and audit["frame_flags"]["tp"] + audit["frame_flags"]["fn"] > 0
    pref = json.loads((run / "reward" / "audit_preference" / "summary.json").read_text())
    assert pref["spearman"] is not None and -1.0 <= pref["spearman"] <= 1.0
    back = json.loads(
        (run / "reward" / "audit_classifier_close_drawer" / "summary.json").read_text()
    )
    assert back["n_frames"] > 100 and back["frame_flags"]["tp"] + back["frame_flags"]["fn"] > 0
    fine = json.loads((run / "finetune" / "summary.json").read_text())
    assert fine["online_episodes"] >= 1
    # reset-free with the learned reward: one classifier per task
    assert fine["reward"] == (f"model:open_drawer={run / 'reward' / 'classifier.safetensors'},"
                              f"close_drawer={run / 'reward' / 'classifier_close_drawer.safetensors'}")  # fmt: skip
    assert fine["reset_free"]["tasks"] == ["open_drawer", "close_drawer"]
    assert sum(fine["reset_free"]["episodes"].values()) == fine["online_episodes"]
    assert fine["config"]["reset_free"] is True
    assert all("success_rate_backward" in v for v in fine["versions"])
    # the twin's truth beside every verdict of the learned reward (the online reward audit)
    audit = fine["reward_audit"]
    # (an attempt that ends before the twin's next state has no truth: at 10 Hz, rare)
    assert 1 <= audit["episodes"] <= fine["online_episodes"]
    assert audit["flagged_successes"] <= fine["online_successes"]
    assert (
        audit["false_success"] + audit["missed"] + round(audit["agreement"] * audit["episodes"])
        == audit["episodes"]
    )
    assert "Reset-free online phase" in page and "true successes (twin)" in page
    assert f"agree on {100 * audit['agreement']:.1f}% of {audit['episodes']} episodes" in page
    assert [e["phase"] for e in fine["evals"]].count("online") >= 2
    rates = fine["node_rates"]
    assert 5.0 < rates["policy_rate_hz"] < 15.0, rates  # 10 Hz control
    assert rates["reward_output_hz"] > 0 and rates["reward_latency_p50_ms"] > 0, rates
    assert rates["learner_updates"] > 0
    sysid = json.loads((run / "sysid" / "summary.json").read_text())
    assert abs(sysid["estimate"]["rod.com_offset"]) <= 0.1
    assert f"{sysid['tilt_identified_deg']:.1f} deg" in page
    assert f"{100 * fine['success_offline_end']:.1f}%" in page

    # the report rebuilds from the run directory alone
    (run / "report.html").unlink()
    rebuilt = _cli(["report", str(run)], tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (run / "report.html").read_text().count("<h2>") == page.count("<h2>")


def _fake_run(run: Path, statuses: dict[str, str]) -> None:
    run.mkdir(parents=True)
    stages = [{"name": n, "title": n, "status": statuses.get(n, "pending"), "wall_s": 1.0,
               "commands": [["twinloop", n]], "headline": "boom" if statuses.get(n) == "failed"
               else "", "log": f"logs/{n}.log"} for n in STAGE_NAMES]  # fmt: skip
    (run / "run.json").write_text(json.dumps({"config": {"quick": True, "task": "open_drawer"},
                                              "stages": stages, "wall_s": 3.0}))  # fmt: skip


def test_report_of_a_failed_run_says_what_did_not_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _fake_run(run, {"graph": "ok", "data": "ok", "classifier": "failed"})
    page = build_report(run).read_text()
    assert "FAILED at classifier" in page
    assert "this stage FAILED: boom" in page
    assert "did not run (an earlier stage failed)" in page  # finetune, sysid
    assert "logs/classifier.log" in page
    for section in SECTIONS:
        assert f"<h2>{section}" in page, section


def test_reset_free_table_when_the_backward_task_never_ran() -> None:
    """A quick run whose offline policy never opened the drawer never switched to close_drawer:
    the table shows open_drawer's audit and dashes for close_drawer, never n/a (a fresh-clone
    make test saw it)."""
    from twinloop.policy.finetune_summary import reset_free_summary, reward_audit

    from twinloop.report import _reset_free_block

    rows = [{"kind": "episode", "task": "open_drawer", "success": False, "true_success": False,
             "true_progress": 0.0} for _ in range(6)]  # fmt: skip
    tasks = ("open_drawer", "close_drawer")
    rf = reset_free_summary(tasks, 10, rows, {"runner": {"switches": 0, "resets": 1}})
    audit = reward_audit(rows)
    assert audit is not None and list(audit["per_task"]) == ["open_drawer"]
    older = {k: v for k, v in audit.items() if k != "per_task"}  # summaries before per_task
    for given in (audit, older):
        html = _reset_free_block({"reward_audit": given, "versions": []}, rf)
        assert "n/a" not in html, html
        cells = re.findall(r"<td>(.*?)</td>", html)
        assert cells[:7] == ["<code>open_drawer</code>", "6", "0", "0", "0", "-", "0"], cells
        assert cells[7:14] == ["<code>close_drawer</code>", "0", "0", "-", "-", "-", "-"], cells


def test_report_and_pipeline_bad_input(tmp_path: Path) -> None:
    out = _cli(["report", str(tmp_path)], tmp_path)
    assert out.returncode == 2 and "not a pipeline run directory" in out.stderr
    out = _cli(["pipeline", "--stages", "graph,dance", "--out", str(tmp_path / "r")], tmp_path)
    assert out.returncode == 2 and "unknown stage(s) ['dance']" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()
    with pytest.raises(TwinloopError, match="unknown task 'fly'"):
        PipelineConfig(out=tmp_path, task="fly")
    _fake_run(tmp_path / "old", {"graph": "ok"})
    out = _cli(["pipeline", "--stages", "graph", "--out", str(tmp_path / "old")], tmp_path)
    assert out.returncode == 2 and "already holds a run" in out.stderr
    assert json.loads((tmp_path / "old" / "run.json").read_text())["stages"][0]["status"] == "ok"


def test_reset_free_stages_train_a_classifier_per_task(tmp_path: Path) -> None:
    from twinloop.pipeline import _commands

    cfg = PipelineConfig(out=tmp_path, quick=True)
    assert cfg.backward == "close_drawer" and cfg.to_dict()["reset_free"] is True
    data = _commands("data", cfg)
    assert [c[c.index("--task") + 1] for c in data] == ["open_drawer"] * 2 + ["close_drawer"] * 2
    seeds = [int(c[c.index("--seed") + 1]) for c in data]
    assert len(set(seeds)) == 4  # held-out and training data of both tasks never share seeds
    trained = [
        c[c.index("--out") + 1] for c in _commands("classifier", cfg) if c[1] == "train-classifier"
    ]
    assert [Path(p).name for p in trained] == [
        "classifier.safetensors",
        "classifier_close_drawer.safetensors",
    ]
    (finetune,) = _commands("finetune", cfg)
    assert "--reset-free" in finetune
    assert finetune[finetune.index("--reward") + 1] == (
        f"model:open_drawer={trained[0]},close_drawer={trained[1]}"
    )
    # without reset-free (or for a task without a backward task): one classifier, one task
    for single in (PipelineConfig(out=tmp_path, reset_free=False),
                   PipelineConfig(out=tmp_path, task="push_cube")):  # fmt: skip
        assert single.backward == ""
        assert len(_commands("data", single)) == 2 and len(_commands("classifier", single)) == 2
        (finetune,) = _commands("finetune", single)
        assert "--reset-free" not in finetune
        assert finetune[finetune.index("--reward") + 1].startswith("model:/")
