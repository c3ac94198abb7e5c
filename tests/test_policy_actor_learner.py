"""The ROS-free cores of the actor/learner split: PolicyRunner, TransitionAssembler, Learner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from twinloop.policy.actor import PolicyRunner, needed_sources
from twinloop.policy.base import Algorithm, load_checkpoint, make_algorithm, save_checkpoint
from twinloop.policy.errors import PolicyError
from twinloop.policy.learner import (
    LEARNER_CHECKPOINT,
    AssembledEpisode,
    Learner,
    LearnerConfig,
    TransitionAssembler,
)
from twinloop.policy.networks import EncoderSpec
from twinloop.policy.obs import TWIN_ACTION_SCALE, ObsSpec
from twinloop.policy.sac import SACConfig

torch.set_num_threads(1)

OBS = ObsSpec(state_keys=("proprio", "priv_cube_pos"))
STATE_DIM = 6 + 3  # proprio (xyz, sin/cos yaw, gripper) + cube position
MS = 1_000_000  # ns
SEC = 1_000_000_000


def sac(state_dim: int = STATE_DIM, seed: int = 0, utd: int = 1) -> Algorithm:
    config = SACConfig(hidden=(32, 32), batch_size=8, utd=utd)
    return make_algorithm("sac", EncoderSpec(state_dim=state_dim), config, seed=seed)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(sac(), tmp_path / "policy_v0.safetensors")


def feed(runner: PolicyRunner, stamp: int, x: float = 0.5) -> None:
    obs = runner.observations
    obs.update_ee_pose(np.array([x, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0]), stamp)
    obs.update_joints(np.zeros(9), np.zeros(9), stamp)
    obs.update_privileged({"cube_pos": np.array([0.5, 0.1, 0.02])}, stamp + 2 * MS)


# ----- actor -----------------------------------------------------------------------------------
def test_needed_sources_and_unknown_keys() -> None:
    assert needed_sources(OBS) == ("ee_pose", "joints", "priv")
    spec = ObsSpec(state_keys=("proprio",), image_key="image_color", image_size=64)
    assert needed_sources(spec) == ("ee_pose", "joints", "image")
    with pytest.raises(PolicyError, match="state key 'progress' has no live source"):
        needed_sources(ObsSpec(state_keys=("proprio", "progress")))


def test_runner_acts_only_on_fresh_changed_observations(ckpt: Path) -> None:
    runner = PolicyRunner(ckpt, OBS, max_obs_age_s=0.3)
    t0 = 10 * SEC
    assert runner.act(t0) is None
    assert runner.held["missing"] == 1 and "no ['ee_pose', 'joints', 'priv']" in runner.last_hold
    feed(runner, t0)
    action = runner.act(t0 + 50 * MS)
    assert action is not None and action.stamp_ns == t0 and action.version == 0
    assert action.metric.shape == (5,)
    assert np.all(np.abs(action.metric) <= np.asarray(TWIN_ACTION_SCALE) + 1e-6)
    np.testing.assert_allclose(action.metric, action.normalized * np.asarray(TWIN_ACTION_SCALE))
    assert runner.act(t0 + 60 * MS) is None  # nothing new since that action
    assert runner.held["unchanged"] == 1
    runner.observations.update_ee_pose(np.array([0.6, 0, 0.2, 1, 0, 0, 0]), t0 + 100 * MS)
    assert runner.act(t0 + 110 * MS) is None  # joints and priv are still the ones used
    assert runner.held["unchanged"] == 2
    feed(runner, t0 + 200 * MS)
    assert runner.act(t0 + 600 * MS) is None  # 400 ms old > 300 ms
    assert runner.held["stale"] == 1 and "ages" in runner.last_hold
    assert runner.act(t0 + 250 * MS) is not None
    assert runner.acted == 2
    assert runner.status()["held"] == {
        "missing": 1,
        "stale": 1,
        "unchanged": 2,
        "unsynced": 0,
        "error": 0,
    }


def test_asking_whether_an_action_is_ready_counts_no_hold(ckpt: Path) -> None:
    """policy_node asks on every arrival while a slot is open (count_hold=False); only a slot
    that ends without an action is counted, with its reason."""
    runner = PolicyRunner(ckpt, OBS, max_obs_age_s=0.3)
    t0 = 10 * SEC
    assert runner.act(t0, count_hold=False) is None
    assert sum(runner.held.values()) == 0 and runner.last_hold == ""
    feed(runner, t0)
    assert runner.act(t0 + 5 * MS, count_hold=False) is not None
    assert runner.act(t0 + 10 * MS, count_hold=False) is None  # the same observations
    assert sum(runner.held.values()) == 0
    assert runner.act(t0 + 100 * MS) is None and runner.held["unchanged"] == 1
    assert "not new since the last action" in runner.last_hold


def test_a_mix_of_two_states_waits_for_the_rest_of_the_new_one(ckpt: Path) -> None:
    """The twin publishes joints, pose and privileged state of one step a millisecond apart. An
    action on the new joints and pose with the previous step's privileged state would be one
    state late, and every later one too (the actor locks into that phase): with max_spread_s
    the actor waits for the new privileged state."""
    runner = PolicyRunner(ckpt, OBS, max_obs_age_s=0.3, max_spread_s=0.05)
    obs, t0 = runner.observations, 10 * SEC
    feed(runner, t0)
    assert runner.act(t0 + 5 * MS) is not None
    priv = {"cube_pos": np.array([0.5, 0.1, 0.02])}
    obs.update_privileged(priv, t0 + 100 * MS)  # step k+1 arrives: privileged state first
    obs.update_ee_pose(np.array([0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0]), t0 + 200 * MS)  # k+2 ...
    obs.update_joints(np.zeros(9), np.zeros(9), t0 + 200 * MS)
    assert runner.act(t0 + 201 * MS) is None  # all new, but priv is one step behind
    assert runner.held["unsynced"] == 1 and "'priv': 0.1" in runner.last_hold
    obs.update_privileged(priv, t0 + 200 * MS)  # ... and the rest of step k+2
    action = runner.act(t0 + 202 * MS)
    assert action is not None and action.stamp_ns == t0 + 200 * MS
    with pytest.raises(PolicyError, match="max_spread_s"):
        PolicyRunner(ckpt, OBS, max_spread_s=-1.0)


def test_a_tick_waits_for_the_next_state_rather_than_act_on_one_a_period_old(
    ckpt: Path,
) -> None:
    """policy_node's tick asks with max_age_s = half a period: a tick just before the next state
    would act on a state almost a period old, late at the robot, in every later period too. It
    waits for the arrival; if none comes, the end of the slot acts on what is fresh enough."""
    runner = PolicyRunner(ckpt, OBS, max_obs_age_s=0.3, max_spread_s=0.05)
    t0 = 10 * SEC
    feed(runner, t0)
    assert runner.act(t0 + 95 * MS, count_hold=False, max_age_s=0.05) is None  # tick: 95 ms old
    assert sum(runner.held.values()) == 0 and runner.last_hold == ""
    feed(runner, t0 + 100 * MS)  # the next state arrives: acted on at once
    action = runner.act(t0 + 101 * MS, count_hold=False)
    assert action is not None and action.stamp_ns == t0 + 100 * MS
    feed(runner, t0 + 200 * MS)
    assert runner.act(t0 + 260 * MS, count_hold=False, max_age_s=0.05) is None
    action = runner.act(t0 + 360 * MS)  # no arrival in the slot: its end acts (160 ms < 300 ms)
    assert action is not None and action.stamp_ns == t0 + 200 * MS
    assert sum(runner.held.values()) == 0


def test_shape_change_mid_run_is_an_error_naming_the_key(ckpt: Path) -> None:
    runner = PolicyRunner(ckpt, OBS)
    feed(runner, SEC)
    with pytest.raises(PolicyError, match=r"'joint_pos' changed shape mid-run: \(9,\) -> \(7,\)"):
        runner.observations.update_joints(np.zeros(7), None, 2 * SEC)
    with pytest.raises(PolicyError, match=r"'priv' changed keys mid-run"):
        runner.observations.update_privileged({"rod_pos": np.zeros(3)}, 2 * SEC)
    # a policy for another state width than the observation gives: counted and raised
    other = save_checkpoint(sac(state_dim=12), ckpt.with_name("wide.safetensors"))
    wide = PolicyRunner(other, OBS)
    feed(wide, SEC)
    with pytest.raises(PolicyError, match=r"observation state has 9 values .* expects 12"):
        wide.act(SEC)
    assert wide.held["error"] == 1


def test_swap_refuses_another_spec_and_keeps_the_old_weights(ckpt: Path) -> None:
    runner = PolicyRunner(ckpt, OBS)
    feed(runner, SEC)
    before = runner.act(SEC)
    assert before is not None
    other = save_checkpoint(sac(state_dim=12), ckpt.with_name("wide.safetensors"))
    with pytest.raises(
        PolicyError, match=r"another observation/action spec.*'state_dim': \(12, 9\)"
    ):
        runner.swap(other, 1)
    assert runner.version == 0 and runner.swap_failures == 1
    feed(runner, 2 * SEC)
    same = runner.act(2 * SEC)
    assert same is not None
    np.testing.assert_allclose(same.normalized, before.normalized)  # same obs, same weights
    new = save_checkpoint(sac(seed=7), ckpt.with_name("policy_v1.safetensors"))
    assert runner.swap_in_background(new, 1).result(timeout=30) == 1
    assert runner.version == 1 and runner.swaps == 1
    with pytest.raises(PolicyError, match="version 1 is not newer than the running version 1"):
        runner.swap(new, 1)
    feed(runner, 3 * SEC)
    after = runner.act(3 * SEC)
    assert after is not None and after.version == 1
    assert not np.allclose(after.normalized, before.normalized)
    runner.close()


# ----- assembler -------------------------------------------------------------------------------
def rows_at(i: int) -> dict[str, np.ndarray]:
    return {
        "ee_pose": np.array([0.4 + 0.01 * i, 0, 0.2, 1, 0, 0, 0], dtype=np.float32),
        "joint_pos": np.zeros(9, dtype=np.float32),
        "priv_cube_pos": np.array([0.5, 0.0, 0.02], dtype=np.float32),
    }


def run_episode(
    asm: TransitionAssembler, t0: int, n: int, end: str, *, rewards: dict[int, float] | None = None
) -> int:
    """Ticks every 100 ms; the action on tick i is stamped with it (as policy_node does)."""
    asm.on_tick(rows_at(0), t0)  # the reset observation, before the start event
    asm.on_event({"event": "start", "episode": 3}, t0 + 5 * MS)
    for i in range(n):
        stamp = t0 + i * 100 * MS
        if i:
            asm.on_tick(rows_at(i), stamp)
        asm.on_action(np.array([0.03, -0.015, 0.0, 0.1, 1.0]) * (i % 2 * 2 - 1), stamp + 2 * MS)
    last = t0 + n * 100 * MS
    asm.on_event({"event": end, "episode": 3}, last - 10 * MS)  # before the final obs arrives
    asm.on_tick(rows_at(n), last)
    for i, value in (rewards or {}).items():  # rewards come late, keyed to their frame
        asm.on_reward(value, t0 + i * 100 * MS + 3 * MS)
    return last


def test_assembler_builds_a_success_episode_with_a_terminal() -> None:
    asm = TransitionAssembler(OBS, 10.0, wait_s=0.5)
    last = run_episode(asm, 100 * SEC, 6, "success")
    assert asm.poll(last + 100 * MS) == []  # still waiting for late messages
    (ep,) = asm.poll(last + 600 * MS)
    assert isinstance(ep, AssembledEpisode) and ep.episode == 3
    assert ep.states.shape == (7, STATE_DIM) and ep.actions.shape == (6, 5)
    np.testing.assert_allclose(ep.states[:, 0], 0.4 + 0.01 * np.arange(7), atol=1e-6)
    np.testing.assert_allclose(ep.actions[0], [-1, 0.5, 0, -0.5, -1], atol=1e-6)  # normalised
    np.testing.assert_allclose(ep.actions[1], [1, -0.5, 0, 0.5, 1], atol=1e-6)
    np.testing.assert_array_equal(ep.rewards, [-1, -1, -1, -1, -1, 0])
    assert ep.terminated and ep.success and ep.images is None
    assert asm.counts["episodes"] == 1 and asm.counts["steps"] == 6


def test_assembler_matches_topic_rewards_by_frame_stamp_else_falls_back() -> None:
    asm = TransitionAssembler(OBS, 10.0, reward_source="topic", wait_s=0.5)
    # step t's reward is the one of its next observation (tick t + 1); tick 3 has none
    rewards = {1: 0.1, 2: 0.2, 4: 0.4, 5: 0.5}
    last = run_episode(asm, 200 * SEC, 5, "failure", rewards=rewards)
    asm.on_reward(9.0, 200 * SEC + 300 * MS + 80 * MS)  # 80 ms off tick 3: beyond 50 ms
    (ep,) = asm.poll(last + SEC)
    np.testing.assert_allclose(ep.rewards, [0.1, 0.2, -1.0, 0.4, 0.5])
    assert not ep.terminated and ep.matched_rewards == 4
    assert asm.counts["reward_fallback"] == 1


def test_assembler_drops_discarded_and_pairs_two_actions_on_one_tick() -> None:
    asm = TransitionAssembler(OBS, 10.0, wait_s=0.1)
    t0 = 300 * SEC
    asm.on_event({"event": "start", "episode": 0}, t0)
    asm.on_tick(rows_at(0), t0)
    asm.on_action(np.zeros(5), t0 + MS)
    asm.on_event({"event": "discard", "episode": 0}, t0 + 50 * MS)
    assert asm.poll(t0 + SEC) == [] and asm.counts["dropped_discard"] == 1
    asm.on_action(np.zeros(5), t0 + 60 * MS)
    assert asm.counts["action_outside_episode"] == 1
    t1 = 400 * SEC
    asm.on_tick(rows_at(0), t1)
    asm.on_event({"event": "start", "episode": 1}, t1 + MS)
    asm.on_action(np.full(5, 0.01), t1 + 2 * MS)
    asm.on_action(np.array([0.0, 0.0, 0.0, 0.0, -1.0]), t1 + 40 * MS)  # the one applied
    asm.on_tick(rows_at(1), t1 + 100 * MS)
    asm.on_event({"event": "success", "episode": 1}, t1 + 110 * MS)
    (ep,) = asm.poll(t1 + SEC)
    np.testing.assert_allclose(ep.actions, [[0, 0, 0, 0, -1]])
    np.testing.assert_array_equal(ep.rewards, [0.0])
    assert asm.counts["action_replaced"] == 1


# ----- learner ---------------------------------------------------------------------------------
def episode(n: int, seed: int, success: bool = False) -> AssembledEpisode:
    rng = np.random.default_rng(seed)
    rewards = -np.ones(n, dtype=np.float32)
    if success:
        rewards[-1] = 0
    return AssembledEpisode(
        states=rng.normal(size=(n + 1, STATE_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, 5)).astype(np.float32),
        rewards=rewards,
        terminated=success,
        images=None,
        episode=seed,
        success=success,
        matched_rewards=0,
    )


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_learner_keeps_updates_at_utd_times_env_steps(tmp_path: Path) -> None:
    config = LearnerConfig(utd=2, min_online=15, publish_every_s=5.0)
    learner = Learner(sac(utd=2), config, tmp_path)
    assert learner.steps_per_call == 2
    learner.on_episode(episode(10, seed=1))
    assert learner.due_updates() == 0 and learner.train_for() == 0  # 10 < min_online
    learner.on_episode(episode(10, seed=2, success=True))
    assert learner.due_updates() == 40
    assert learner.train_for(max_calls=5) == 10 and learner.updates == 10
    assert learner.train_for() == 30 and learner.updates == 40 == 2 * learner.env_steps
    assert learner.algo.total_updates == 20  # 20 update() calls of 2 critic steps each
    assert set(learner.metrics) and all(np.isfinite(list(learner.metrics.values())))


def test_publish_versions_increase_and_load(tmp_path: Path) -> None:
    clock = FakeClock()
    config = LearnerConfig(utd=1, min_online=5, publish_every_s=5.0, keep_versions=2)
    learner = Learner(sac(), config, tmp_path, clock=clock)
    assert not learner.should_publish()  # no updates yet
    learner.on_episode(episode(8, seed=1))
    learner.train_for()
    assert not learner.should_publish()  # too soon
    versions = []
    for _ in range(3):
        clock.t += 6.0
        assert learner.should_publish()
        versions.append(learner.publish())
        assert not learner.should_publish()  # nothing new since
        learner.on_episode(episode(4, seed=len(versions) + 1))
        learner.train_for()
    assert [v for v, _ in versions] == [1, 2, 3]
    assert [p.name for _, p in versions][-1] == "policy_v3.safetensors"
    assert not (tmp_path / "policy_v1.safetensors").exists()  # keep_versions=2
    algo, extra = load_checkpoint(versions[-1][1], expect_spec=EncoderSpec(state_dim=STATE_DIM))
    assert extra["version"] == 3 and algo.config.type == "sac"


def test_learner_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    config = LearnerConfig(utd=1, min_online=5, publish_every_s=0.0)
    learner = Learner(sac(), config, tmp_path)
    learner.on_episode(episode(8, seed=1))
    learner.on_episode(episode(6, seed=2, success=True))
    learner.train_for()
    learner.publish()
    assert learner.save() == tmp_path / LEARNER_CHECKPOINT
    resumed = Learner.resume(tmp_path, config)
    assert resumed is not None
    assert (resumed.version, resumed.env_steps, resumed.updates, resumed.episodes) == (1, 14, 14, 2)
    assert len(resumed.online) == 14 and resumed.online.episode_lengths == [8, 6]
    a, b = learner.online.sample(16), resumed.online.sample(16)  # same RNG state: same batch
    torch.testing.assert_close(a.obs["state"], b.obs["state"])
    torch.testing.assert_close(a.reward, b.reward)
    for (name, p), (_, q) in zip(
        learner.algo.actor.named_parameters(), resumed.algo.actor.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)
    resumed.on_episode(episode(5, seed=3))
    assert resumed.due_updates() == 5
    assert resumed.publish()[0] == 2
    assert Learner.resume(tmp_path / "empty", config) is None


def test_image_policy_acts_on_resized_frames_and_refuses_a_new_resolution(tmp_path: Path) -> None:
    obs = ObsSpec(state_keys=("proprio",), image_key="image_color", image_size=32)
    spec = EncoderSpec(state_dim=6, image_size=32, features=8, channels=4)
    config = SACConfig(hidden=(16, 16), batch_size=4)
    path = save_checkpoint(make_algorithm("sac", spec, config), tmp_path / "img.safetensors")
    runner = PolicyRunner(path, obs)
    assert runner.observations.sources == ("ee_pose", "joints", "image")
    rng = np.random.default_rng(0)
    runner.observations.update_ee_pose(np.array([0.5, 0, 0.2, 1, 0, 0, 0]), SEC)
    runner.observations.update_joints(np.zeros(9), None, SEC)
    runner.observations.update_image(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), SEC)
    action = runner.act(SEC + 10 * MS)
    assert action is not None and np.isfinite(action.metric).all()
    with pytest.raises(PolicyError, match=r"'image_color' changed shape mid-run: \(48, 64, 3\)"):
        runner.observations.update_image(np.zeros((96, 128, 3), np.uint8), 2 * SEC)
    with pytest.raises(PolicyError, match="image must be"):
        runner.observations.update_image(np.zeros((48, 64), np.uint8), 2 * SEC)


def test_learner_mixes_an_offline_buffer(tmp_path: Path) -> None:
    from twinloop.policy.buffers import ReplayBuffer

    offline = ReplayBuffer(100, STATE_DIM, 5, seed=1)
    for seed in range(3):
        ep = episode(10, seed=10 + seed, success=True)
        offline.add_episode(ep.states, ep.actions, ep.rewards, terminated=True)
    config = LearnerConfig(utd=1, min_online=4, offline_fraction=0.5)
    learner = Learner(sac(), config, tmp_path, offline=offline)
    learner.on_episode(episode(6, seed=1))
    batch = learner._sample(8)  # 4 offline rows first (all success episodes), then 4 online
    assert len(batch) == 8 and batch.reward[4:].tolist() == [-1.0] * 4
    offline_states = offline.state_dict()["states"]
    assert all((offline_states == row).all(1).any() for row in batch.obs["state"][:4])
    assert learner.train_for() == 6
    assert learner.status()["offline_transitions"] == 30


# ----- reset-free: the task one-hot from episode start events -------------------------------------
TASKS = ("open_drawer", "close_drawer")
TASK_OBS = ObsSpec(state_keys=("proprio", "task_onehot", "priv_cube_pos"))


def test_actor_takes_the_task_onehot_from_the_latest_start_event(tmp_path: Path) -> None:
    path = save_checkpoint(sac(state_dim=STATE_DIM + 2), tmp_path / "rf.safetensors")
    with pytest.raises(PolicyError, match="'task_onehot' needs tasks"):
        PolicyRunner(path, TASK_OBS)
    runner = PolicyRunner(path, TASK_OBS, tasks=TASKS)
    assert runner.observations.sources == ("ee_pose", "joints", "task", "priv")
    feed(runner, SEC)
    assert runner.act(SEC + 10 * MS) is None  # no episode yet: hold still, counted
    assert runner.held["missing"] == 1 and "no episode start event" in runner.last_hold
    runner.on_event({"event": "start", "episode": 0, "task": "open_drawer"}, SEC)
    forward = runner.act(SEC + 20 * MS)
    assert forward is not None and forward.stamp_ns == SEC  # the task's stamp does not count
    rows, _ = runner.observations.snapshot()
    state = runner.observe(rows)["state"][0].numpy()
    np.testing.assert_array_equal(state[6:8], [1.0, 0.0])  # between proprio and the cube
    runner.on_event({"event": "success", "episode": 0, "task": "open_drawer"}, 2 * SEC)
    runner.on_event({"event": "start", "episode": 1, "task": "close_drawer"}, 2 * SEC)
    assert runner.task == "close_drawer"
    feed(runner, 2 * SEC)  # same observation values, other task: another action
    backward = runner.act(2 * SEC + 10 * MS)
    assert backward is not None
    assert not np.allclose(backward.normalized, forward.normalized)
    rows, _ = runner.observations.snapshot()
    np.testing.assert_array_equal(runner.observe(rows)["state"][0, 6:8].numpy(), [0.0, 1.0])
    # the task never goes stale (it holds until the next start) while sensors must be fresh
    feed(runner, 30 * SEC)
    assert runner.act(30 * SEC + 10 * MS) is not None
    with pytest.raises(PolicyError, match="names task 'push_cube'; the policy knows"):
        runner.on_event({"event": "start", "episode": 2, "task": "push_cube"}, 31 * SEC)
    feed(runner, 31 * SEC)
    assert runner.act(31 * SEC + 10 * MS) is None and runner.held["missing"] == 2
    assert runner.status()["task"] == ""


def test_assembler_adds_the_episode_task_column_from_its_start_event() -> None:
    with pytest.raises(PolicyError, match="'task_onehot' needs tasks"):
        TransitionAssembler(TASK_OBS, 10.0, tasks=("open_drawer", "open_drawer"))
    asm = TransitionAssembler(TASK_OBS, 10.0, wait_s=0.1, tasks=TASKS)
    assert "task_onehot" not in asm.tick_spec.state_keys  # ticks carry no task
    t0 = 100 * SEC
    for episode, task in enumerate(("open_drawer", "close_drawer", "lift_rod")):
        start = t0 + episode * 10 * SEC
        asm.on_tick(rows_at(0), start)
        asm.on_event({"event": "start", "episode": episode, "task": task}, start + MS)
        for i in range(3):
            if i:
                asm.on_tick(rows_at(i), start + i * 100 * MS)
            asm.on_action(np.zeros(5), start + i * 100 * MS + 2 * MS)
        asm.on_event({"event": "success", "episode": episode}, start + 290 * MS)
        asm.on_tick(rows_at(3), start + 300 * MS)
    episodes = asm.poll(t0 + 60 * SEC)
    assert [ep.task for ep in episodes] == ["open_drawer", "close_drawer"]
    assert asm.counts["dropped_unknown_task"] == 1  # lift_rod is not one of the tasks
    forward, backward = episodes
    assert forward.states.shape == (4, STATE_DIM + 2)
    np.testing.assert_array_equal(forward.states[:, 6:8], [[1.0, 0.0]] * 4)
    np.testing.assert_array_equal(backward.states[:, 6:8], [[0.0, 1.0]] * 4)
    # the other columns are those of a task-less spec, in the spec's order
    np.testing.assert_allclose(forward.states[:, 0], 0.4 + 0.01 * np.arange(4), atol=1e-6)
    np.testing.assert_allclose(forward.states[:, 8:], [[0.5, 0.0, 0.02]] * 4, atol=1e-6)


def test_assembler_ignores_rewards_scored_for_another_task() -> None:
    asm = TransitionAssembler(OBS, 10.0, reward_source="topic", wait_s=0.1)
    t0 = 500 * SEC

    def episode(number: int, start: int, task: str | None) -> int:
        event = {"event": "start", "episode": number} | ({"task": task} if task else {})
        asm.on_tick(rows_at(0), start)
        asm.on_event(event, start + MS)
        for i in range(5):
            if i:
                asm.on_tick(rows_at(i), start + i * 100 * MS)
            if i < 4:
                asm.on_action(np.zeros(5), start + i * 100 * MS + 2 * MS)
        asm.on_event({"event": "failure", "episode": number}, start + 390 * MS)
        return start + 400 * MS

    end = episode(0, t0, "close_drawer")
    # late rewards of the next observations (ticks 1..4), some scored by the other task's model;
    # an open_drawer reward is nearer to tick 1 than the close_drawer one and still not taken
    asm.on_reward(9.0, t0 + 100 * MS + MS, task="open_drawer")
    asm.on_reward(0.1, t0 + 100 * MS + 3 * MS, task="close_drawer")
    asm.on_reward(9.0, t0 + 200 * MS, task="open_drawer")  # tick 2 has only this one
    asm.on_reward(0.3, t0 + 300 * MS)  # no task named: any episode takes it
    asm.on_reward(0.4, t0 + 400 * MS, task="close_drawer")
    (ep,) = asm.poll(end + SEC)
    assert ep.task == "close_drawer"
    np.testing.assert_allclose(ep.rewards, [0.1, -1.0, 0.3, 0.4])
    assert ep.matched_rewards == 3
    assert asm.counts["reward_other_task"] == 2 and asm.counts["reward_fallback"] == 1
    # an episode whose start event names no task takes a reward of any task
    t1 = 600 * SEC
    end = episode(1, t1, None)
    for i in range(1, 5):
        asm.on_reward(0.5 + i, t1 + i * 100 * MS, task="open_drawer")
    (ep,) = asm.poll(end + SEC)
    np.testing.assert_allclose(ep.rewards, [1.5, 2.5, 3.5, 4.5])
    assert asm.counts["reward_other_task"] == 2
