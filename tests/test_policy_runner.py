"""The episode runner core (twinloop.policy.runner) driven by a fake clock and success stream."""

from __future__ import annotations

import pytest
from twinloop.policy.errors import PolicyError
from twinloop.policy.runner import Command, EpisodeRunner, RunnerConfig

S = 1_000_000_000  # ns per second


def kinds(commands: list[Command]) -> list[str]:
    return [c.kind if c.kind != "event" else c.payload["event"] for c in commands]


def test_start_success_next_then_exit_after_n() -> None:
    runner = EpisodeRunner(RunnerConfig(episodes=2, max_steps=50, control_hz=10.0))
    assert kinds(runner.tick(0)) == ["reset"]
    assert runner.tick(1) == []  # waiting for the answer
    out = runner.on_reset_done(True, {"episode": 1, "task": "open_drawer"}, 2 * S)
    assert kinds(out) == ["start"] and out[0].payload == {
        "event": "start", "episode": 0, "task": "open_drawer", "stamp_ns": 2 * S
    }  # fmt: skip
    # a success state of the previous cell episode (in flight during the reset) is ignored
    assert runner.on_success(True, 3 * S, episode=0) == []
    assert runner.on_success(False, 3 * S, episode=1) == []
    out = runner.on_success(True, 4 * S, episode=1)
    assert kinds(out) == ["success", "reset"]
    assert out[0].payload["episode"] == 0 and out[0].payload["duration_s"] == pytest.approx(2.0)
    assert kinds(runner.on_reset_done(True, {"episode": 2}, 5 * S)) == ["start"]
    assert runner.status()["running"] == 1
    out = runner.on_success(True, 6 * S, episode=2)
    assert kinds(out) == ["success", "exit"] and out[-1].payload == {"code": 0}
    assert runner.done and runner.exit_code == 0
    assert [r.success for r in runner.results] == [True, True]
    assert runner.status()["episodes"] == 2 and runner.status()["success_rate"] == 1.0
    assert runner.tick(100 * S) == [] and runner.on_success(True, 101 * S) == []


def test_timeout_is_a_failure() -> None:
    runner = EpisodeRunner(RunnerConfig(episodes=1, max_steps=30, control_hz=10.0))  # 3 s
    runner.tick(0)
    runner.on_reset_done(True, {"episode": 1}, 0)
    assert runner.tick(2 * S) == []
    assert runner.tick(int(2.99 * S)) == []
    out = runner.tick(3 * S)
    assert kinds(out) == ["failure", "exit"]
    assert out[0].payload["episode"] == 0
    assert runner.results[0].success is False
    assert runner.results[0].duration_s == pytest.approx(3.0)
    assert runner.status()["success_rate"] == 0.0


def test_reset_failures_and_silent_reset() -> None:
    runner = EpisodeRunner(RunnerConfig(episodes=1, max_reset_failures=2, reset_timeout_s=5.0))
    runner.tick(0)
    assert kinds(runner.on_reset_done(False, {"message": "boom"}, S)) == ["reset"]
    assert kinds(runner.on_reset_done(False, None, 2 * S)) == ["exit"]
    assert runner.exit_code == 1

    silent = EpisodeRunner(RunnerConfig(episodes=1, reset_timeout_s=5.0))
    silent.tick(0)
    assert silent.tick(5 * S) == []
    assert kinds(silent.tick(6 * S)) == ["exit"] and silent.exit_code == 1


def test_settle_then_start() -> None:
    runner = EpisodeRunner(RunnerConfig(episodes=1, settle_s=0.5))
    runner.tick(0)
    assert runner.on_reset_done(True, {"episode": 1}, S) == []
    assert runner.phase == "settling" and runner.tick(int(1.4 * S)) == []
    assert kinds(runner.tick(int(1.5 * S))) == ["start"]
    # the timeout counts from the start, not from the reset
    assert runner.tick(int(1.5 * S) + runner.config.timeout_ns - 1) == []


def test_operator_start_without_reset_service() -> None:
    runner = EpisodeRunner(RunnerConfig(episodes=1, use_reset=False), task="push_cube")
    assert runner.tick(0) == [] and runner.phase == "operator"
    assert runner.on_success(True, S) == []  # no episode yet
    assert runner.on_operator_start(2 * S) == []  # the operator announced it already
    out = runner.on_success(True, 3 * S)  # reward-model success has no cell episode id
    assert kinds(out) == ["success", "exit"] and out[0].payload["task"] == "push_cube"


def test_drain_waits_for_the_learner() -> None:
    runner = EpisodeRunner(RunnerConfig(episodes=1, drain_s=10.0))
    runner.tick(0)
    runner.on_reset_done(True, {"episode": 1}, 0)
    assert kinds(runner.on_success(True, S, episode=1)) == ["success"]
    assert runner.phase == "draining"
    runner.on_learner_status(episodes=1, env_steps=12)
    assert runner.tick(2 * S) == []  # weights of those 12 steps not announced yet
    runner.on_weights(env_steps=8)
    assert runner.tick(3 * S) == []
    runner.on_weights(env_steps=12)
    assert kinds(runner.tick(4 * S)) == ["exit"] and runner.exit_code == 0

    late = EpisodeRunner(RunnerConfig(episodes=1, drain_s=10.0))
    late.tick(0)
    late.on_reset_done(True, {"episode": 1}, 0)
    late.on_success(True, S, episode=1)
    assert late.tick(10 * S) == []
    assert kinds(late.tick(11 * S)) == ["exit"] and late.exit_code == 0  # gave up waiting


def test_reset_free_switches_task_on_success() -> None:
    cfg = RunnerConfig(episodes=5, reset_free=True, tasks=("open_drawer", "close_drawer"),
                       reset_every=3)  # fmt: skip
    runner = EpisodeRunner(cfg)
    assert kinds(runner.tick(0)) == ["reset"]
    out = runner.on_reset_done(True, {"episode": 1}, 0)
    assert out[0].payload["task"] == "open_drawer"
    out = runner.on_success(True, S)  # forward done: switch to backward, no reset
    assert kinds(out) == ["success", "switch", "start"]
    assert out[1].payload == {"task": "close_drawer"} and out[2].payload["task"] == "close_drawer"
    out = runner.tick(S + cfg.timeout_ns)  # backward failed: retry backward, no reset
    assert kinds(out) == ["failure", "switch", "start"]
    assert out[1].payload == {"task": "close_drawer"}
    out = runner.on_success(True, 20 * S)  # 3 episodes since the reset: a full reset is due
    assert kinds(out) == ["success", "reset"]
    out = runner.on_reset_done(True, {"episode": 2}, 21 * S)
    assert out[0].payload["task"] == "open_drawer"
    assert runner.switches == 1 and runner.resets == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"episodes": 0}, "episodes and max_steps"),
        ({"control_hz": 0.0}, "control_hz"),
        ({"success_source": "magic"}, "unknown success_source 'magic'"),
        ({"drain_s": -1.0}, "drain_s"),
        ({"reset_free": True, "tasks": ("open_drawer",)}, "reset_free needs tasks"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        RunnerConfig(**kwargs)


def test_reward_flags_before_the_start_or_of_the_other_task_are_ignored() -> None:
    cfg = RunnerConfig(episodes=3, max_steps=50, success_source="reward", reset_free=True,
                       tasks=("open_drawer", "close_drawer"), success_frames=2)  # fmt: skip
    runner = EpisodeRunner(cfg)
    runner.tick(0)
    out = runner.on_reset_done(True, {"episode": 1}, 10 * S)
    assert out[0].payload["stamp_ns"] == 10 * S and out[0].payload["task"] == "open_drawer"
    # a flag of a frame stamped before the start (in flight across the reset) is ignored
    assert runner.on_success(True, 11 * S, stamp_ns=9 * S) == []
    # one flag is not enough with success_frames=2; a non-success flag restarts the count
    assert runner.on_success(True, 11 * S, stamp_ns=11 * S) == []
    assert runner.on_success(False, 11 * S, stamp_ns=11 * S) == []
    assert runner.on_success(True, 12 * S, stamp_ns=12 * S) == []
    runner.on_truth(True, task="open_drawer", stamp_ns=12 * S)
    out = runner.on_success(True, 12 * S, stamp_ns=12 * S)
    assert kinds(out) == ["success", "switch", "start"]
    assert runner.results[-1].true_success is True and runner.task == "close_drawer"
    start = out[-1].payload
    assert start["task"] == "close_drawer" and start["stamp_ns"] == 12 * S
    # the forward model's flags (a frame in flight across the switch) cannot end the backward try
    assert runner.on_success(True, 13 * S, stamp_ns=13 * S, task="open_drawer") == []
    assert runner.on_success(True, 13 * S, stamp_ns=13 * S, task="open_drawer") == []
    runner.on_truth(True, task="open_drawer", stamp_ns=13 * S)  # the other task's truth: ignored
    runner.on_truth(False, task="close_drawer", stamp_ns=13 * S, progress=0.7)
    runner.on_truth(False, task="close_drawer", stamp_ns=13 * S, progress=0.8)
    assert runner.on_success(True, 13 * S, stamp_ns=13 * S, task="close_drawer") == []
    out = runner.on_success(True, 14 * S, stamp_ns=14 * S, task="close_drawer")
    assert kinds(out) == ["success", "switch", "start"]
    # the reward said success, the twin never did: a false success in the audit
    assert runner.results[-1].true_success is False
    assert runner.results[-1].true_progress == 0.8  # the last one before the end
    # the twin reached success, the reward never flagged it: missed
    runner.on_truth(True, task="open_drawer", stamp_ns=15 * S)
    assert kinds(runner.tick(20 * S)) == ["failure", "exit"]
    assert runner.results[-1].true_success is True
    assert runner.audit() == {"episodes": 3, "agree": 1, "false_success": 1, "missed": 1,
                              "true_successes": 2}  # fmt: skip
    assert runner.status()["audit"]["episodes"] == 3


def test_success_frames_must_be_positive() -> None:
    with pytest.raises(PolicyError, match="success_frames"):
        RunnerConfig(success_frames=0)
