"""policy/finetune_summary: what the online phase's records turn into in summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from twinloop.policy.finetune_summary import (
    node_rates,
    pick_versions,
    read_records,
    reset_free_summary,
    reward_audit,
)


def episode(task: str, success: bool, true: bool | None = None, progress: float = 0.0) -> dict:
    rec = {"kind": "episode", "task": task, "success": success}
    if true is not None:
        rec |= {"true_success": true, "true_progress": progress}
    return rec


def test_read_records_stops_at_a_line_still_being_written(tmp_path: Path) -> None:
    path = tmp_path / "runner.jsonl"
    assert read_records(path) == []
    path.write_text(json.dumps({"kind": "episode"}) + "\n" + '{"kind": "wei')
    assert read_records(path) == [{"kind": "episode"}]


def test_pick_versions_spreads_and_keeps_the_last() -> None:
    assert pick_versions([3, 1, 2], 5) == [1, 2, 3]
    chosen = pick_versions(list(range(1, 21)), 4)
    assert chosen[0] == 1 and chosen[-1] == 20 and len(chosen) <= 5


def test_reward_audit_counts_false_successes_and_misses_per_task() -> None:
    assert reward_audit([episode("open_drawer", True)]) is None  # no twin truth recorded
    rows = [
        episode("open_drawer", True, True, 1.0),
        episode("open_drawer", True, False, 0.4),  # a false success at 40% progress
        episode("open_drawer", True, False, 0.6),
        episode("close_drawer", False, True, 1.0),  # missed
        episode("close_drawer", False, False, 0.1),
    ]
    audit = reward_audit(rows)
    assert audit is not None
    assert audit["episodes"] == 5 and audit["flagged_successes"] == 3
    assert audit["true_successes"] == 2 and audit["false_success"] == 2 and audit["missed"] == 1
    assert audit["agreement"] == 0.4
    assert audit["false_success_progress_median"] == 0.6  # upper median of [0.4, 0.6]
    per = audit["per_task"]
    assert per["open_drawer"]["false_success"] == 2 and per["open_drawer"]["missed"] == 0
    assert per["close_drawer"]["missed"] == 1 and per["close_drawer"]["agreement"] == 0.5
    assert per["close_drawer"]["false_success_progress_median"] is None


def test_reset_free_summary_tallies_each_task() -> None:
    rows = [episode("open_drawer", True), episode("close_drawer", True),
            episode("open_drawer", False)]  # fmt: skip
    final = {"runner": {"switches": 2, "resets": 1}}
    out = reset_free_summary(("open_drawer", "close_drawer"), 10, rows, final)
    assert out["episodes"] == {"open_drawer": 2, "close_drawer": 1}
    assert out["successes"] == {"open_drawer": 1, "close_drawer": 1}
    assert out["switches"] == 2 and out["resets"] == 1 and out["reset_every"] == 10


def test_node_rates_reads_each_nodes_status_and_skips_absent_ones() -> None:
    assert node_rates(None) == {}
    final = {
        "policy": {"rate_hz": 10.0, "held": {"stale": 1}},
        "learner": {"updates_per_s": 5.0, "busy_updates_per_s": 40.0},
        "reward": {"latency_ms": {"p50": 2.0, "p99": 9.0}, "input_hz": 10.0},
    }
    rates = node_rates(final)
    assert rates["policy_rate_hz"] == 10.0 and rates["policy_held"] == {"stale": 1}
    assert rates["learner_busy_updates_per_s"] == 40.0
    assert rates["reward_latency_p50_ms"] == 2.0 and rates["reward_input_hz"] == 10.0
    assert "safety_counts" not in rates  # safety_node did not report
