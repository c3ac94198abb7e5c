"""What ``twinloop finetune`` writes about its online phase into ``summary.json``.

Read from the episode runner's results file (JSON lines: episodes, weight announcements, the
nodes' final status): which published versions to evaluate, the reset-free tally per task, the
learned reward's verdicts against the twin's own success, and the nodes' rates and counters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["node_rates", "pick_versions", "read_records", "reset_free_summary", "reward_audit"]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of the runner's results file so far (a line still being written ends it)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line still being written
    return out


def pick_versions(versions: Sequence[int], most: int) -> list[int]:
    """At most ``most`` versions evenly spaced over ``versions`` (sorted), always with the last."""
    ordered = sorted(set(versions))
    if len(ordered) <= most + 1:
        return ordered
    idx = {round(i * (len(ordered) - 1) / most) for i in range(most)}
    return sorted({ordered[i] for i in idx} | {ordered[-1]})


def reset_free_summary(
    tasks: Sequence[str],
    reset_every: int,
    episodes: list[dict[str, Any]],
    final: dict[str, Any] | None,
) -> dict[str, Any]:
    """Per-task episodes and successes, switches and full resets of a reset-free run."""
    runner = (final or {}).get("runner") or {}
    return {
        "tasks": list(tasks),
        "reset_every": reset_every,
        "episodes": {t: sum(r.get("task") == t for r in episodes) for t in tasks},
        "successes": {
            t: sum(bool(r["success"]) and r.get("task") == t for r in episodes) for t in tasks
        },
        "switches": runner.get("switches"),
        "resets": runner.get("resets"),
    }


def reward_audit(episodes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The learned reward's verdicts on the online episodes against the twin's own success
    (episodes whose record has ``true_success``), overall and per task; None without any."""
    known = [r for r in episodes if "true_success" in r]
    if not known:
        return None

    def counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
        flagged = sum(bool(r["success"]) for r in rows)
        true = sum(bool(r["true_success"]) for r in rows)
        # how far the twin's task progress (0..1) was when the reward wrongly called success
        near = sorted(float(r["true_progress"]) for r in rows
                      if r["success"] and not r["true_success"] and "true_progress" in r)  # fmt: skip
        return {
            "episodes": len(rows),
            "flagged_successes": flagged,
            "true_successes": true,
            "false_success": sum(bool(r["success"]) and not r["true_success"] for r in rows),
            "missed": sum(bool(r["true_success"]) and not r["success"] for r in rows),
            "agreement": round(
                sum(bool(r["success"]) == bool(r["true_success"]) for r in rows) / len(rows), 4
            ),
            "false_success_progress_median": round(near[len(near) // 2], 3) if near else None,
        }

    tasks = sorted({str(r.get("task", "")) for r in known} - {""})
    out = counts(known)
    if tasks:
        out["per_task"] = {t: counts([r for r in known if r.get("task") == t]) for t in tasks}
    return out


def node_rates(final: dict[str, Any] | None) -> dict[str, Any]:
    if not final:
        return {}
    policy, learner = final.get("policy") or {}, final.get("learner") or {}
    return {
        "policy_rate_hz": policy.get("rate_hz"),
        "policy_action_rate_hz": policy.get("action_rate_hz"),
        "policy_jitter_ms": policy.get("jitter_ms"),
        "policy_held": policy.get("held"),
        "policy_swaps": policy.get("swaps"),
        "learner_updates_per_s": learner.get("updates_per_s"),
        "learner_busy_updates_per_s": learner.get("busy_updates_per_s"),
        "learner_updates": learner.get("updates"),
        "learner_env_steps": learner.get("env_steps"),
        **_reward_rates(final.get("reward")),
        **_safety_counts(final.get("safety")),
    }


def _reward_rates(reward: dict[str, Any] | None) -> dict[str, Any]:
    """reward_node's rates and latency (frame stamp -> reward published), when it ran."""
    if not reward:
        return {}
    latency, forward = reward.get("latency_ms") or {}, reward.get("forward_ms") or {}
    return {
        "reward_input_hz": reward.get("input_hz"),
        "reward_output_hz": reward.get("output_hz"),
        "reward_latency_p50_ms": latency.get("p50"),
        "reward_latency_p99_ms": latency.get("p99"),
        "reward_forward_p50_ms": forward.get("p50"),
        "reward_frames": reward.get("received"),
        "reward_skipped": reward.get("skipped"),
        "reward_failed": reward.get("failed"),
    }


def _safety_counts(safety: dict[str, Any] | None) -> dict[str, Any]:
    """safety_node's counters (actions passed, clipped, refused) and whether an e-stop latched."""
    if not safety:
        return {}
    return {"safety_counts": safety.get("counts"), "safety_estop": safety.get("estop_latched")}
