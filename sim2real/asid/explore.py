"""ASID's exploration policy: SAC in the twin on the Fisher-information reward, and baselines.

The exploration environment randomises the identified parameters over their prior at every
reset (so the policy learns actions that are informative whatever the true values are), steps the
twin with the task's action space (metric EE deltas, normalised to [-1, 1] by
``TWIN_ACTION_SCALE``) and pays the Fisher reward of :mod:`.fisher` per step. Observations: the
proprio (EE position, sin/cos yaw, gripper), the tracked object's pose, the object position
relative to the hand, and the episode phase t / T.

Explorers map that observation to a normalised action: :class:`PolicyExplorer` (a trained SAC
checkpoint, deterministic), :class:`RandomExplorer` (uniform actions, the same action budget).
:func:`collect_rollout` runs one on a twin (the robot's stand-in, with hidden parameters) and
returns the :class:`~.rollout.SysIdRollout` identification uses. Both start with the scripted
:func:`approach` to a pre-contact pose beside the object (recorded in the rollout too).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mujoco
import numpy as np
from twinloop.policy.obs import TWIN_ACTION_SCALE
from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.twin import ACTION_NAMES, Twin, TwinConfig

from .fisher import FisherConfig, FisherReward
from .rollout import (
    SysIdRollout,
    arm_name,
    ee_pose,
    object_body,
    object_pose,
    route_mujoco_warnings,
)

__all__ = [
    "OBS_DIM",
    "ApproachController",
    "ExplorationEnv",
    "ExploreConfig",
    "Explorer",
    "PolicyExplorer",
    "RandomExplorer",
    "collect_rollout",
    "observation_from",
    "to_twin_action",
    "train_exploration",
]

log = logging.getLogger(__name__)

OBS_DIM = 6 + 7 + 3 + 1  # proprio, object pose, object - hand, phase
ACTION_SCALE = np.asarray(TWIN_ACTION_SCALE, dtype=np.float64)  # metric action / scale
HELD = np.array([0.0, 0.0, 0.0, 0.0, 1.0])  # normalised values of the dimensions not explored
ALL_DIMS = tuple(ACTION_NAMES)


def check_dims(dims: Sequence[str]) -> tuple[str, ...]:
    dims = tuple(dims)
    bad = [d for d in dims if d not in ACTION_NAMES]
    if not dims or bad or len(set(dims)) != len(dims):
        msg = f"exploration action_dims must be distinct names from {ACTION_NAMES}, got {dims}"
        raise TwinError(msg)
    return dims


def to_twin_action(action: np.ndarray, dims: Sequence[str]) -> np.ndarray:
    """A normalised action over ``dims`` in [-1, 1] -> the twin's metric 5-D action."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (len(dims),):
        msg = (
            f"an exploration action over {tuple(dims)} must have {len(dims)} values, got {a.shape}"
        )
        raise TwinError(msg)
    full = HELD.copy()
    full[[ACTION_NAMES.index(d) for d in dims]] = np.clip(a, -1.0, 1.0)
    return full * ACTION_SCALE


@dataclass(frozen=True)
class ExploreConfig:
    """Exploration policy training: task, parameters, episode length, SAC budget."""

    task: str = "lift_rod"
    params: tuple[str, ...] = ("rod.com_offset",)
    prior: Mapping[str, tuple[float, float]] | None = None  # default: the parameters' ranges
    episode_steps: int = 30  # control steps per exploration rollout (3 s at 10 Hz)
    total_steps: int = 15_000  # env steps of SAC training
    random_steps: int = 1_500  # uniform-random actions before the policy acts
    batch_size: int = 256
    updates_per_step: int = 1
    init_temperature: float = 0.1
    rel_delta: float = 0.02  # Fisher finite-difference step, fraction of the prior's width
    # Which of the task's action dimensions (ACTION_NAMES) the policy moves; the others are held
    # (dz, dyaw 0; gripper closed). Default: planar pushes at contact height (see docs/sysid.md).
    action_dims: tuple[str, ...] = ("dx", "dy")
    # SAC sees reward * reward_scale. None: 1 / the 90th percentile of the random phase's
    # non-zero rewards. Measured on the rod (10k steps): 1.0 gave the better policy (Fisher
    # return 24 vs 21 per rollout, contact in 95% vs 75% of rollouts).
    reward_scale: float | None = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.params:
            msg = "ExploreConfig.params is empty: name the parameters to identify"
            raise TwinError(msg)
        check_dims(self.action_dims)
        for name, value, low in (
            ("episode_steps", self.episode_steps, 1),
            ("total_steps", self.total_steps, 1),
            ("random_steps", self.random_steps, 0),
            ("batch_size", self.batch_size, 2),
            ("updates_per_step", self.updates_per_step, 1),
        ):
            if value < low:
                msg = f"ExploreConfig.{name} must be >= {low}, got {value}"
                raise TwinError(msg)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = list(self.params)
        d["action_dims"] = list(self.action_dims)
        d["prior"] = None if self.prior is None else {k: list(v) for k, v in self.prior.items()}
        return d


class Explorer(Protocol):
    name: str
    dims: tuple[str, ...]  # the action dimensions it moves

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...  # (OBS_DIM,) -> (len(dims),) in [-1, 1]


class ExplorationEnv:
    """The twin with parameters drawn from the prior at every reset and a Fisher reward."""

    def __init__(self, config: ExploreConfig, *, twin: Twin | None = None) -> None:
        self.config = config
        self.twin = twin or Twin(TwinConfig(task=config.task, render=False))
        if self.twin.config.task != config.task:
            msg = f"exploration config is for {config.task!r}, the twin runs {self.twin.config.task!r}"
            raise TwinError(msg)
        self.body = object_body(self.twin)
        route_mujoco_warnings()
        fisher_cfg = FisherConfig(params=tuple(config.params), rel_delta=config.rel_delta)
        self.fisher = FisherReward(self.twin, fisher_cfg, config.prior)
        self.prior = {n: self.fisher.prior[n] for n in config.params}
        self.rng = np.random.default_rng(config.seed)
        self.t = 0

    def sample_params(self) -> dict[str, float]:
        return {n: float(self.rng.uniform(lo, hi)) for n, (lo, hi) in self.prior.items()}

    def reset(
        self, params: Mapping[str, float] | None = None, seed: int | None = None
    ) -> np.ndarray:
        self.twin.set_params(params if params is not None else self.sample_params())
        self.twin.reset(seed=int(self.rng.integers(2**31)) if seed is None else seed)
        approach(self.twin, self.body, self.rng)
        self.t = 0
        return self.observe()

    def observe(self) -> np.ndarray:
        return observation(self.twin, self.body, self.t, self.config.episode_steps)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Normalised action -> (obs, Fisher reward, episode over)."""
        a = to_twin_action(action, self.config.action_dims)
        self.twin.apply_action(a)
        reward = self.fisher()
        self.twin.advance(self.twin.n_substeps)
        self.t += 1
        return self.observe(), reward, self.t >= self.config.episode_steps


APPROACH_HEIGHT = 0.12  # m, the hand passes over the object at this height
CONTACT_Z = 0.025  # m, hand height for pushing (the cube's centre; the rod lies lower)
STANDOFF = 0.07  # m, from the object's centre (or long axis) to the pre-contact pose
APPROACH_STEPS = 30  # most control steps the approach may take


def pre_contact_pose(body: str, pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand position beside the object, from its observed pose (position + wxyz quaternion):
    at pushing height, STANDOFF from it on a random side (and, for the rod, at a random point
    along its length)."""
    pose = np.asarray(pose, dtype=np.float64)
    pos = pose[:3]
    if body == "rod":
        xmat = np.empty(9)
        mujoco.mju_quat2Mat(xmat, pose[3:7])  # the body's xmat, as mj_kinematics computes it
        axis = xmat.reshape(3, 3)[:, 1]
        along = axis[:2] / max(float(np.linalg.norm(axis[:2])), 1e-9)
        side = np.array([-along[1], along[0]]) * rng.choice([-1.0, 1.0])
        xy = pos[:2] + rng.uniform(-0.1, 0.1) * along + STANDOFF * side
    else:
        angle = rng.uniform(-np.pi, np.pi)
        xy = pos[:2] + STANDOFF * np.array([np.cos(angle), np.sin(angle)])
    return np.array([xy[0], xy[1], CONTACT_Z])


class ApproachController:
    """The scripted approach as a pure controller: EE position in, metric action out.

    Over the top to :func:`pre_contact_pose` (computed once, from the object pose it is built
    with), then down; gripper closed; at most APPROACH_STEPS // 2 steps per leg, a leg ends
    within 1 cm of its goal. ``None`` once both legs are done. Driven by observations only, so
    the in-process twin and the ROS graph (where the pose comes from the tracker or the twin's
    state) run the same approach."""

    def __init__(self, body: str, object_pose: np.ndarray, rng: np.random.Generator) -> None:
        target = pre_contact_pose(body, object_pose, rng)
        self.goals = (np.array([target[0], target[1], APPROACH_HEIGHT]), target)
        self._leg = 0
        self._taken = 0  # steps on the current leg

    @property
    def done(self) -> bool:
        return self._leg >= len(self.goals)

    def __call__(self, ee_pos: np.ndarray) -> np.ndarray | None:
        while self._leg < len(self.goals):
            if self._taken >= APPROACH_STEPS // 2:
                self._leg, self._taken = self._leg + 1, 0
                continue
            err = self.goals[self._leg] - np.asarray(ee_pos, dtype=np.float64)
            if np.linalg.norm(err) < 0.01:
                self._leg, self._taken = self._leg + 1, 0
                continue
            self._taken += 1
            step = err * min(1.0, ACTION_SCALE[0] / float(np.linalg.norm(err)))
            return np.array([*step, 0.0, 1.0])
        return None


def approach(
    twin: Twin, body: str, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Scripted move to :func:`pre_contact_pose` (over the top, then down), gripper closed.

    Exploration starts here, on the robot as in the twin (the object pose comes from the
    tracker): from the home pose a 30-step rollout would spend half its budget reaching the
    object, and SAC would never see a non-zero Fisher reward. Returns (action, EE pose, object
    pose) per step, for the rollout record."""
    controller = ApproachController(body, object_pose(twin, body), rng)
    out = []
    while (action := controller(twin.physics.ee_pos())) is not None:
        twin.step(action)
        out.append((action, ee_pose(twin), object_pose(twin, body)))
    return out


def observation(twin: Twin, body: str, t: int, horizon: int) -> np.ndarray:
    return observation_from(
        twin.proprio(), object_pose(twin, body), twin.physics.ee_pos(), t, horizon
    )


def observation_from(
    proprio: np.ndarray, object_pose: np.ndarray, ee_pos: np.ndarray, t: int, horizon: int
) -> np.ndarray:
    """The explorer's observation from raw values: proprio as ``Twin.proprio()`` builds it, the
    object pose (position + wxyz quaternion), the EE position, step t of ``horizon``."""
    pose = np.asarray(object_pose, dtype=np.float64)
    rel = pose[:3] - np.asarray(ee_pos, dtype=np.float64)
    return np.concatenate([proprio, pose, rel, [t / horizon]]).astype(np.float32)


# ----- explorers -------------------------------------------------------------------------------------
@dataclass
class RandomExplorer:
    """Uniform random actions in [-1, 1]: the baseline with the same action budget."""

    seed: int = 0
    dims: tuple[str, ...] = ("dx", "dy")
    name: str = "random"
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.dims = check_dims(self.dims)
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, len(self.dims))


class PolicyExplorer:
    """A trained exploration policy (a twinloop.policy checkpoint), deterministic."""

    name = "asid"

    def __init__(self, path: str | Path) -> None:
        import torch
        from twinloop.policy.base import load_checkpoint
        from twinloop.policy.errors import PolicyError

        try:
            self.algo, extra = load_checkpoint(path, expect_type="sac")
        except PolicyError as err:
            msg = f"cannot load the exploration policy {path}: {err}"
            raise TwinError(msg) from err
        raw = extra.get("explore", "{}")
        self.explore_config: dict[str, Any] = json.loads(raw) if isinstance(raw, str) else {}
        self.dims = check_dims(self.explore_config.get("action_dims", ALL_DIMS))
        spec = self.algo.spec
        if spec.state_dim != OBS_DIM or spec.action_dim != len(self.dims):
            msg = (
                f"{path} is not an exploration policy: it takes {spec.state_dim} state values "
                f"and {spec.action_dim} actions, ASID needs {OBS_DIM} and {len(self.dims)} "
                f"({', '.join(self.dims)})"
            )
            raise TwinError(msg)
        self._torch = torch

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = self._torch.as_tensor(obs, dtype=self._torch.float32)[None]
        return self.algo.act({"state": x}).cpu().numpy()[0].astype(np.float64)


def collect_rollout(
    twin: Twin,
    explorer: Explorer,
    steps: int,
    *,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> SysIdRollout:
    """One exploration rollout of ``steps`` actions on ``twin`` (its parameters as they are)."""
    if steps < 1:
        msg = f"a rollout needs steps >= 1, got {steps}"
        raise TwinError(msg)
    body = object_body(twin)
    twin.reset(seed=seed)
    ees, objs, actions = [ee_pose(twin)], [object_pose(twin, body)], []
    for action, ee, obj in approach(twin, body, np.random.default_rng(seed)):
        actions.append(action)
        ees.append(ee)
        objs.append(obj)
    start = len(actions)
    for t in range(steps):
        a = to_twin_action(explorer(observation(twin, body, t, steps)), explorer.dims)
        twin.step(a)
        actions.append(a)
        ees.append(ee_pose(twin))
        objs.append(object_pose(twin, body))
    info = {"explorer": explorer.name, "seed": seed, "approach_steps": start, **dict(meta or {})}
    return SysIdRollout(
        task=twin.config.task,
        control_hz=twin.config.control_hz,
        robot_profile=arm_name(twin.config.arm),
        actions=np.asarray(actions),
        ee_pose=np.asarray(ees),
        object_pose=np.asarray(objs),
        meta=info,
    )


# ----- training ----------------------------------------------------------------------------------------
@dataclass
class ExploreResult:
    checkpoint: Path
    episode_returns: list[float]
    seconds: float
    env_seconds: float
    update_seconds: float


def train_exploration(
    config: ExploreConfig,
    out: str | Path,
    *,
    progress: Callable[[int, Mapping[str, float]], None] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
) -> ExploreResult:
    """Train the exploration policy with SAC on the Fisher reward; save it to ``out``/policy.safetensors
    (with the exploration config in its extra state) and the per-episode returns to returns.json."""
    import torch
    from twinloop.policy.base import make_algorithm, save_checkpoint
    from twinloop.policy.buffers import ReplayBuffer
    from twinloop.policy.networks import EncoderSpec
    from twinloop.policy.sac import SACConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads is not None:  # small MLPs: one thread is fastest, and never oversubscribes
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    env = ExplorationEnv(config)
    n_act = len(config.action_dims)
    spec = EncoderSpec(state_dim=OBS_DIM, action_dim=n_act)
    sac = make_algorithm(
        "sac",
        spec,
        SACConfig(batch_size=config.batch_size, init_temperature=config.init_temperature),
        device=device,
        seed=config.seed,
    )
    buffer = ReplayBuffer(max(config.total_steps, 1), OBS_DIM, n_act, seed=config.seed)
    random_explorer = RandomExplorer(config.seed, config.action_dims)
    returns: list[float] = []
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # episodes before the scale
    scale = config.reward_scale
    t0 = time.perf_counter()
    env_s = upd_s = 0.0
    step = diverged = 0
    while step < config.total_steps:
        te = time.perf_counter()
        obs = [env.reset()]
        acts, rews = [], []
        done = False
        while not done:
            if step < config.random_steps:
                a = random_explorer(obs[-1])
            else:
                x = torch.as_tensor(obs[-1])[None]
                a = sac.act({"state": x}, deterministic=False).cpu().numpy()[0]
            try:
                o, r, done = env.step(a)
            except TwinError as err:  # a diverged simulation ends the episode, not the training
                log.warning("exploration episode ended early: %s", err)
                diverged += 1
                break
            obs.append(o)
            acts.append(a)
            rews.append(r)
            step += 1
        env_s += time.perf_counter() - te
        if not acts:
            continue
        returns.append(float(np.sum(rews)))
        pending.append((np.asarray(obs), np.asarray(acts, dtype=np.float32), np.asarray(rews)))
        if scale is None and step >= config.random_steps:
            scale = auto_reward_scale([r for _, _, r in pending])
            log.info("exploration reward scale %.4g (from the random phase)", scale)
        if scale is not None:
            for o_ep, a_ep, r_ep in pending:
                buffer.add_episode(o_ep, a_ep, (r_ep * scale).astype(np.float32), terminated=False)
            pending.clear()
        logs: dict[str, float] = {}
        if step >= config.random_steps and len(buffer) >= config.batch_size:
            tu = time.perf_counter()
            for _ in range(config.updates_per_step * len(acts)):
                logs = sac.update(buffer.sample(config.batch_size))
            upd_s += time.perf_counter() - tu
        if progress is not None:
            progress(step, {"return": returns[-1], **logs})
    extra = {"explore": json.dumps({**config.to_dict(), "reward_scale": scale})}
    path = save_checkpoint(sac, out / "policy.safetensors", extra=extra)
    (out / "returns.json").write_text(json.dumps({"episode_returns": returns}, indent=1))
    seconds = time.perf_counter() - t0
    log.info("exploration policy: %d steps in %.0f s -> %s", step, seconds, path)
    return ExploreResult(path, returns, seconds, env_s, upd_s)


def auto_reward_scale(rewards: Sequence[np.ndarray]) -> float:
    """1 / the 90th percentile of the non-zero rewards (1 when there are none), at most 1e6."""
    r = np.concatenate([np.ravel(x) for x in rewards]) if rewards else np.zeros(0)
    r = r[r > 1e-6]
    if not len(r):
        return 1.0
    return float(min(1e6, 1.0 / max(float(np.percentile(r, 90)), 1e-6)))


def prior_of(params: Sequence[str], twin: Twin) -> dict[str, tuple[float, float]]:
    """The parameters' full ranges (the default prior)."""
    specs = twin.params.specs
    unknown = [p for p in params if p not in specs]
    if unknown:
        msg = f"the {twin.config.task} twin has no parameters {unknown}. Available: {sorted(specs)}"
        raise TwinError(msg)
    return {p: (specs[p].low, specs[p].high) for p in params}
