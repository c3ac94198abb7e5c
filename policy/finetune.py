"""``twinloop finetune``: scripted demos -> offline pre-training -> online fine-tuning on the graph.

The whole offline-to-online loop of RoboFuME/SERL on the twin, with the online phase run by the
same ROS 2 nodes that run on the robot:

1. **demos**: ``demos`` scripted expert episodes recorded in-process (``record_twin_dataset``,
   a small camera) into ``<out>/demos.zarr``;
2. **offline**: ``train_offline`` on them (state-based: proprio + the task's privileged object
   state), evaluated in the twin, checkpoint in ``<out>/offline``;
3. **online**: the node graph ``graph_finetune_<profile>.yaml`` (twin, safety, policy, learner,
   episode runner, and reward_node for ``--reward model:PATH``) started with the launcher of
   ``twinloop launch``; the policy starts from the offline checkpoint, the learner mixes the demos
   50/50 into its batches and writes ``<out>/online/policy_v{N}.safetensors``; the episode runner
   runs ``online_episodes`` episodes and ends the graph;
4. **eval**: the published versions (at most ``max_versions`` evenly spaced, and the last) are
   evaluated in-process in the twin with fixed seeds (the seeds of the offline evaluations);
5. **report**: ``<out>/learning_curve.png`` (offline evaluations, then online evaluations against
   env steps) and ``<out>/summary.json``.

Reset-free (``reset_free``, RoboFuME): the task and its partner in
``twinloop.sim2real.tasks.TASK_PAIRS`` are the forward and backward tasks; demos of both are
recorded and merged into one store with a ``task_onehot`` column, one policy conditioned on it is
trained offline, and on the graph the episode runner switches the twin's task on success instead
of resetting (a full reset every ``reset_every`` episodes). Evaluations run each task from its own
reset; the curve shows the forward task. With a learned reward, reset-free takes one reward model
per task (``--reward model:open_drawer=A,close_drawer=B``): the demos are relabelled per task,
reward_node switches models on the runner's start events, and the runner ends each attempt on
the running task's success flag, with the twin's own success recorded beside it (the online
reward audit in ``summary.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PolicyError
from .finetune_summary import (
    node_rates,
    pick_versions,
    read_records,
    reset_free_summary,
    reward_audit,
)

__all__ = [
    "ALGOS",
    "FinetuneConfig",
    "merge_task_stores",
    "pick_versions",
    "reward_audit",
    "run_finetune",
    "twin_camera_size",
]

log = logging.getLogger(__name__)

ALGOS = ("calql", "sac", "iql")  # algorithms that train offline and keep learning online
GRAPH_PREFIX = "finetune_"  # profile "sim" -> graph_finetune_sim.yaml
SUMMARY = "summary.json"
CURVE = "learning_curve.png"
RESULTS = "runner.jsonl"


def say(text: str) -> None:
    """User-facing stage lines (the CLI's output; library callers get them logged too)."""
    log.debug("%s", text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class FinetuneConfig:
    out: Path  # run directory (demos, offline, online, logs, curve, summary)
    task: str = "open_drawer"  # twin task (twinloop.sim2real.tasks.TASKS)
    profile: str = "sim"  # graph profile: graph_finetune_<profile>.yaml
    demos: int = 20  # scripted demos recorded for offline pre-training
    demo_noise: float = 0.1  # expert action noise of the demos (fraction of a step)
    offline_steps: int = 5_000  # offline gradient updates
    offline_evals: int = 4  # evaluations during offline training (the last at the end)
    online_episodes: int = 20  # episodes the runner drives on the graph
    algo: str = "calql"  # one of ALGOS
    reward: str = "true"  # "true": the twin's success (-1/0); "model:PATH": a reward checkpoint
    eval_episodes: int = 10  # episodes per evaluation (fixed seeds)
    eval_seed: int = 1_000_000  # episode i of every evaluation uses eval_seed + i
    max_versions: int = 6  # evenly spaced published versions evaluated (plus the last)
    batch_size: int = 256  # minibatch size offline and online
    hidden: tuple[int, ...] = (256, 256)  # MLP widths of actor and critics
    utd: float = 1.0  # learner gradient steps per env step
    min_online: int = 50  # online transitions before the learner's first update
    publish_every_s: float = 2.0  # the learner announces new weights at most this often
    realtime: bool = True  # the twin in real time (10 Hz); lockstep is not supported on the graph
    seed: int = 0  # seed of demos, training and the twin's episodes
    timeout_s: float = 1800.0  # give up on the online graph after this long
    overrides: tuple[str, ...] = ()  # node.param=value for the graph (like twinloop launch --set)
    progress: bool = True  # progress bars
    reset_free: bool = False  # forward (task) / backward (TASK_PAIRS[task]) switched on success
    reset_every: int = 10  # reset_free: a full reset of the twin every N online episodes (0: never)
    success_frames: int = 3  # learned reward: success flags in a row that end an online episode

    def __post_init__(self) -> None:
        from twinloop.sim2real.tasks import TASK_PAIRS, TASKS

        if self.task not in TASKS:
            msg = f"unknown task {self.task!r}. Available: {sorted(TASKS)}"
            raise PolicyError(msg)
        if self.reset_free and self.task not in TASK_PAIRS:
            msg = f"--reset-free needs a task with a backward task; {self.task!r} has none. Available: {sorted(TASK_PAIRS)}"
            raise PolicyError(msg)
        if self.reset_every < 0:
            msg = f"reset_every must be >= 0 (0 = never), got {self.reset_every}"
            raise PolicyError(msg)
        if self.algo not in ALGOS:
            msg = f"unknown algo {self.algo!r}. Available: {list(ALGOS)}"
            raise PolicyError(msg)
        if self.reward != "true" and not self.reward.startswith("model:"):
            msg = (
                f"unknown reward {self.reward!r}. Available: true, model:PATH, model:TASK=PATH,..."
            )
            raise PolicyError(msg)
        if self.reward != "true":
            models = self.reward_models  # PolicyError for a bad TASK=PATH list
            missing = [t for t in self.tasks if t not in models and "" not in models]
            if self.reset_free and "" in models:
                msg = (
                    "--reset-free with a learned reward needs one model per task: --reward "
                    f"model:{self.tasks[0]}=PATH,{self.tasks[1]}=PATH"
                )
                raise PolicyError(msg)
            if missing:
                msg = f"--reward {self.reward}: no reward model for task(s) {missing}"
                raise PolicyError(msg)
        if self.success_frames < 1:
            msg = f"success_frames must be >= 1, got {self.success_frames}"
            raise PolicyError(msg)
        for name in ("demos", "offline_steps", "offline_evals", "online_episodes",
                     "eval_episodes", "max_versions", "batch_size", "min_online"):  # fmt: skip
            if getattr(self, name) < 1:
                msg = f"{name} must be >= 1, got {getattr(self, name)}"
                raise PolicyError(msg)
        for name in ("utd", "timeout_s", "publish_every_s", "demo_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name != "demo_noise" and value == 0):
                msg = f"{name} must be a positive number, got {value}"
                raise PolicyError(msg)
        if not self.realtime:
            msg = (
                "--no-realtime is not supported on the graph: in lockstep the twin stamps with "
                "simulation time and the policy's freshness check (max_obs_age_s) uses the wall "
                "clock; run with --realtime (the default)"
            )
            raise PolicyError(msg)

    @property
    def tasks(self) -> tuple[str, ...]:
        """(forward, backward) with ``reset_free``, else (task,): the task_onehot order."""
        from twinloop.sim2real.tasks import TASK_PAIRS

        return (self.task, TASK_PAIRS[self.task]) if self.reset_free else (self.task,)

    @property
    def reward_model(self) -> str:
        """The reward checkpoint text after ``model:`` ("" for the twin's true success)."""
        return self.reward.partition(":")[2] if self.reward.startswith("model:") else ""

    @property
    def reward_models(self) -> dict[str, Path]:
        """{task: checkpoint} of the tasks run (key "" for one model); {} for the true reward."""
        from twinloop.vlm_reward.errors import RewardError
        from twinloop.vlm_reward.routing import parse_task_checkpoints

        if not self.reward_model:
            return {}
        try:
            models = parse_task_checkpoints(self.reward_model)
        except RewardError as err:
            raise PolicyError(f"--reward {self.reward}: {err}") from None
        if "" in models:
            return models
        return {t: models[t] for t in self.tasks if t in models}

    def reward_source(self) -> str:
        """The RewardSpec source of the demos: success, or model:[TASK=]PATH (absolute)."""
        models = self.reward_models
        if not models:
            return "success"
        if "" in models:
            return f"model:{models[''].resolve()}"
        if not self.reset_free:
            return f"model:{models[self.task].resolve()}"
        return "model:" + ",".join(f"{t}={p.resolve()}" for t, p in models.items())


# ----- stages ----------------------------------------------------------------------------------
def _check_reward_model(cfg: FinetuneConfig) -> str:
    """The reward models' type (one for all tasks); PolicyError when a file is missing or not a
    reward checkpoint, or two tasks' models are of different types."""
    from twinloop.vlm_reward.base import read_checkpoint_header
    from twinloop.vlm_reward.errors import RewardError

    types: dict[str, str] = {}
    for task, path in cfg.reward_models.items():
        name = f"--reward model:{path}" + (f" (task {task})" if task else "")
        if not path.is_file():
            msg = f"{name}: the reward checkpoint does not exist"
            raise PolicyError(msg)
        try:
            types[task] = read_checkpoint_header(path)["type"]
        except RewardError as err:
            msg = f"{name}: {err}"
            raise PolicyError(msg) from err
    if len(set(types.values())) > 1:
        msg = f"--reward: the tasks' reward models must be of one type, got {types}"
        raise PolicyError(msg)
    return next(iter(types.values()))


def _record_task(
    cfg: FinetuneConfig, task: str, path: Path, seed: int, size: tuple[int, int]
) -> Path:
    from twinloop.sim2real.record import RecordConfig, record_twin_dataset
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import TwinConfig

    record = RecordConfig(episodes=cfg.demos, kinds=("expert",), noise=cfg.demo_noise,
                          hold_steps=0, seed=seed, depth=False)  # fmt: skip
    twin = TwinConfig(task=task, camera=CameraConfig(width=size[0], height=size[1]))
    return record_twin_dataset(path, record, twin)


def twin_camera_size(graph: Any) -> tuple[int, int]:
    """(width, height) of the graph twin's camera: the demos are recorded with the same frames,
    so a reward model relabels the offline data from what reward_node sees online."""
    params = graph.node("twin").parameters if "twin" in graph.names else {}
    size = (params.get("image_width", 64), params.get("image_height", 64))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        msg = f"twin.image_width/image_height must be positive integers, got {size}"
        raise PolicyError(msg)
    return int(size[0]), int(size[1])


def merge_task_stores(parts: Sequence[Path], dest: Path) -> Path:
    """One store from per-task stores: every row of part i gets ``task_onehot`` i (reset-free).

    The parts must share fps and cameras (recorded the same way); each episode keeps its meta and
    gains ``"task"`` (the part's ``twin_task`` attr).
    """
    from twinloop.datasets.store import EpisodeStore

    from .reset_free import add_task_column

    stores = [EpisodeStore.open(p) for p in parts]
    try:
        first = stores[0].attrs
        tasks = [str(s.attrs.get("twin_task", s.attrs.get("task", ""))) for s in stores]
        extra = {"twin_task": tasks[0], "tasks": tasks, "ground_truth": ["success", "progress"]}
        if "camera_extrinsics" in first:
            extra["camera_extrinsics"] = first["camera_extrinsics"]
        texts = {str(s.attrs.get("task", "")) for s in stores}
        with EpisodeStore.create(dest, fps=stores[0].fps,
                                 task=texts.pop() if len(texts) == 1 else "",
                                 robot_profile=str(first.get("robot_profile", "")),
                                 camera_intrinsics=first.get("camera_intrinsics") or None,
                                 nan_keys=tuple(first.get("nan_keys", ())),
                                 image_codec=stores[0].image_codec,
                                 extra_attrs=extra) as out:  # fmt: skip
            for index, store in enumerate(stores):
                for i in range(store.n_episodes):
                    rows = add_task_column(store.get_episode(i), index, len(stores))
                    meta = {k: v for k, v in store.episode_meta(i).items()
                            if k in ("task", "success", "kind", "seed")}  # fmt: skip
                    out.add_episode(rows, meta=meta | {"twin_task": tasks[index]})
    finally:
        for store in stores:
            store.close()
    return dest


def _record_demos(cfg: FinetuneConfig, path: Path, size: tuple[int, int]) -> dict[str, Any]:
    from twinloop.datasets.store import EpisodeStore

    if cfg.reset_free:  # both tasks, then one store with the task_onehot column
        parts = [_record_task(cfg, task, path.parent / "demo_parts" / f"{task}.zarr",
                              cfg.seed + 10_000 * k, size) for k, task in enumerate(cfg.tasks)]  # fmt: skip
        merge_task_stores(parts, path)
    else:
        _record_task(cfg, cfg.task, path, cfg.seed, size)
    with EpisodeStore.open(path, mode="r") as store:
        metas = [store.episode_meta(i) for i in range(store.n_episodes)]
        steps = int(store.n_steps)
    wins = sum(bool(m.get("success")) for m in metas)
    return {"episodes": len(metas), "steps": steps, "success_rate": wins / max(len(metas), 1)}


def _algo_config(cfg: FinetuneConfig) -> Any:
    from .base import config_from_dict

    values: dict[str, Any] = {"batch_size": cfg.batch_size, "hidden": cfg.hidden}
    if cfg.algo == "calql":
        # The recipe measured in the twin (benchmarks/finetune.py, docs/policy.md): CORL's
        # defaults with a BC warm-up, a weaker conservative term and a small initial alpha;
        # 4 sampled actions (CORL: 10) keep an update ~2.5x cheaper on a CPU.
        values |= {
            "cql_n_actions": 4,
            "cql_alpha": 1.0,
            "bc_steps": min(1000, cfg.offline_steps // 2),
            "actor_lr": 3e-4,
            "init_temperature": 0.05,
            "temperature_lr": 3e-4,
        }
    return config_from_dict(cfg.algo, values)


def eval_env(cfg: FinetuneConfig, obs: Any, index: int = 0) -> Any:
    """A twin env of task ``cfg.tasks[index]`` from its own reset; with ``reset_free`` its rows
    carry that task's ``task_onehot`` (the policy is told which task it runs)."""
    from .reset_free import TASK_KEY, task_onehot
    from .twin_env import PolicyTwinEnv

    task = cfg.tasks[index]
    if not cfg.reset_free:
        return PolicyTwinEnv(task, obs, reward="success", seed=cfg.seed)
    onehot = task_onehot(index, len(cfg.tasks))

    class TaskTwinEnv(PolicyTwinEnv):
        def _make_row(self, image: Any) -> dict[str, Any]:
            row = super()._make_row(image)
            row[TASK_KEY] = onehot
            return row

    return TaskTwinEnv(task, obs, reward="success", seed=cfg.seed)


def _offline(cfg: FinetuneConfig, dataset: Path, obs: Any, out: Path) -> tuple[Any, Any]:
    """(TrainLog, the offline checkpoint path)."""
    from .base import make_algorithm
    from .buffers import RewardSpec, load_offline
    from .networks import EncoderSpec
    from .train import OfflineConfig, train_offline

    config = _algo_config(cfg)
    source = cfg.reward_source()
    buffer = load_offline(dataset, obs, RewardSpec(source=source), gamma=float(config.gamma),
                          seed=cfg.seed)  # fmt: skip
    spec = EncoderSpec(state_dim=int(buffer.state_dim), action_dim=obs.action_dim)
    algo = make_algorithm(cfg.algo, spec, config, seed=cfg.seed)
    train = OfflineConfig(
        steps=cfg.offline_steps,
        eval_every=max(1, cfg.offline_steps // cfg.offline_evals),
        eval_episodes=cfg.eval_episodes,
        eval_seed=cfg.eval_seed,
        checkpoint_every=cfg.offline_steps,
        log_every=max(1, min(100, cfg.offline_steps // 10)),
        seed=cfg.seed,
        progress=cfg.progress,
    )
    with eval_env(cfg, obs) as env:  # the forward task
        result = train_offline(algo, buffer, train, out_dir=out, env=env)
    return result, result.checkpoint


def build_graph(
    cfg: FinetuneConfig,
    *,
    obs: Any,
    checkpoint: Path,
    dataset: Path,
    online_dir: Path,
    results: Path,
    reward_type: str = "",
) -> Any:
    """The online graph of ``cfg.profile`` with the run's paths and observation keys filled in."""
    from twinloop.sim2real.tasks import make_task

    from twinloop.graph import load_graph

    task = make_task(cfg.task)
    max_steps = max(int(make_task(t).max_steps) for t in cfg.tasks)
    keys = "[" + ", ".join(obs.state_keys) + "]"
    tasks = "[" + ", ".join(cfg.tasks) + "]"
    overrides = [
        f"twin.task={cfg.task}",
        f"twin.seed={cfg.seed + 100}",
        f"policy.checkpoint={checkpoint.resolve()}",
        f"policy.state_keys={keys}",
        f"learner.checkpoint={checkpoint.resolve()}",
        f"learner.dataset={dataset.resolve()}",
        f"learner.out_dir={online_dir.resolve()}",
        f"learner.state_keys={keys}",
        f"learner.utd={float(cfg.utd)}",
        f"learner.min_online={cfg.min_online}",
        f"learner.publish_every_s={float(cfg.publish_every_s)}",
        f"learner.seed={cfg.seed}",
        f"episode_runner.episodes={cfg.online_episodes}",
        f"episode_runner.max_steps={max_steps}",
        f"episode_runner.results_path={results.resolve()}",
    ]
    if cfg.reset_free:
        overrides += [
            f"policy.tasks={tasks}",
            f"learner.tasks={tasks}",
            "episode_runner.reset_free=true",
            f"episode_runner.tasks={tasks}",
            f"episode_runner.reset_every={cfg.reset_every}",
            "episode_runner.min_event_readers=2",  # learner and policy hear every start
        ]
    if cfg.reward_model:
        models = cfg.reward_models
        overrides += [
            "learner.reward_source=topic",
            f"learner.offline_reward={cfg.reward_source()}",
            "episode_runner.success_source=reward",
            f"episode_runner.success_frames={cfg.success_frames}",
            f"reward.reward_type={reward_type}",
            "twin.camera_fps=10.0",
        ]
        if cfg.reset_free:  # one model per task, switched by the runner's start events
            items = ", ".join(f"{t}={models[t].resolve()}" for t in cfg.tasks)
            overrides += ["reward.checkpoint=", f"reward.task_checkpoints=[{items}]"]
        else:
            path = models.get("", models.get(cfg.task))
            overrides.append(f"reward.checkpoint={Path(str(path)).resolve()}")
    if "twin" not in load_graph(GRAPH_PREFIX + cfg.profile).names:
        msg = (
            f"profile {GRAPH_PREFIX + cfg.profile} has no twin: `twinloop finetune` records demos "
            "and evaluates in the twin. On a robot: `twinloop launch --profile finetune_robot` "
            "(docs/robot.md, section 6.6)"
        )
        raise PolicyError(msg)
    graph = load_graph(GRAPH_PREFIX + cfg.profile, overrides=overrides)
    if not cfg.reward_model and "reward" in graph.names:
        graph = graph.without("reward")
    if cfg.reward_model:
        graph = graph.with_overrides([f"reward.task={task.text}"])
    return graph.with_overrides(cfg.overrides)


def _online(cfg: FinetuneConfig, graph: Any, results: Path, logs: Path) -> dict[str, Any]:
    """Run the graph until the runner ends it; the episode records, exit codes and wall time."""
    from tqdm import tqdm

    from twinloop.graph import GraphProcesses

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.online_episodes, unit="episode", desc="online episodes",
               disable=not cfg.progress)  # fmt: skip
    shown = 0
    code: int | None = None
    with GraphProcesses(graph, log_dir=logs, output=lambda _node, _line: None) as procs:
        deadline = time.monotonic() + cfg.timeout_s
        while code is None and time.monotonic() < deadline:
            code = procs.wait(timeout=0.5)
            episodes = [r for r in read_records(results) if r.get("kind") == "episode"]
            for rec in episodes[shown:]:
                bar.update(1)
                wins = sum(r["success"] for r in episodes[: episodes.index(rec) + 1])
                bar.set_postfix(success=f"{wins}/{episodes.index(rec) + 1}")
            shown = len(episodes)
        bar.close()
        ended = procs.ended
        codes = procs.stop()
    if code is None:
        log.error("the online graph timed out after %.0f s; logs in %s", cfg.timeout_s, logs)
    return {
        "exit_code": code,
        "ended_by": ended.name if ended is not None else None,
        "returncodes": codes,
        "wall_s": time.perf_counter() - t0,
    }


def _evaluate_versions(
    cfg: FinetuneConfig, obs: Any, online_dir: Path, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Evaluate the chosen published versions; one dict per version (env steps, success)."""
    from .base import load_checkpoint
    from .evaluate import evaluate

    announced = {int(r["version"]): r for r in records if r.get("kind") == "weights"}
    files = {int(p.stem.removeprefix("policy_v")): p
             for p in online_dir.glob("policy_v*.safetensors")}  # fmt: skip
    chosen = pick_versions(list(files), cfg.max_versions)
    out: list[dict[str, Any]] = []
    envs = [eval_env(cfg, obs, i) for i in range(len(cfg.tasks))]
    env = envs[0]
    try:
        for version in chosen:
            algo, extra = load_checkpoint(files[version])
            updates = int(extra.get("updates", 0))
            if version in announced:
                env_steps = int(announced[version].get("env_steps", 0))
            else:  # not heard by the runner: the learner keeps updates ~= utd * env steps
                env_steps = round(updates / cfg.utd)
            result = evaluate(algo, env, cfg.eval_episodes, seed=cfg.eval_seed)
            out.append({"version": version, "env_steps": env_steps, "updates": updates,
                        "success_rate": result.success_rate, "mean_return": result.mean_return,
                        "mean_length": result.mean_length})  # fmt: skip
            text = f"success {result.success_rate:.0%}"
            if len(envs) > 1:
                back = evaluate(algo, envs[1], cfg.eval_episodes, seed=cfg.eval_seed)
                out[-1]["success_rate_backward"] = back.success_rate
                text = (f"{cfg.tasks[0]} success {result.success_rate:.0%}, {cfg.tasks[1]} "
                        f"success {back.success_rate:.0%}")  # fmt: skip
            say(f"[finetune]   v{version} ({env_steps} env steps, {updates} updates): {text}")
    finally:
        for e in envs:
            e.close()
    return out


# ----- the pipeline ----------------------------------------------------------------------------
def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run the five stages; returns the summary (also written to ``<out>/summary.json``).

    PolicyError (and the TwinloopError of a bad profile or override) for bad input before any
    work starts; a failed graph is reported in the summary (``graph.exit_code`` != 0).
    """
    from .obs import ObsSpec, default_state_keys
    from .reset_free import TASK_KEY
    from .train import EvalPoint, plot_learning_curve

    reward_type = _check_reward_model(cfg) if cfg.reward_model else ""
    keys = default_state_keys(cfg.task, privileged=True)
    obs = ObsSpec(state_keys=(*keys, TASK_KEY) if cfg.reset_free else keys)
    out = cfg.out
    paths = {"demos": out / "demos.zarr", "offline": out / "offline", "online": out / "online",
             "logs": out / "logs", "results": out / RESULTS}  # fmt: skip
    # a bad profile or override fails here, before minutes of work (the checkpoint is not there yet)
    first = build_graph(cfg, obs=obs, checkpoint=paths["offline"] / "checkpoint.safetensors",
                        dataset=paths["demos"], online_dir=paths["online"],
                        results=paths["results"], reward_type=reward_type)  # fmt: skip
    twin_camera_size(first)  # a bad size fails before any work too
    if paths["online"].exists() and any(paths["online"].iterdir()):
        msg = f"{paths['online']} is not empty: choose a new --out"
        raise PolicyError(msg)
    out.mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t_all = time.perf_counter()

    say(f"[finetune] run dir {out}")
    t0 = time.perf_counter()
    demos = _record_demos(cfg, paths["demos"], twin_camera_size(first))
    walls["demos"] = time.perf_counter() - t0
    say(f"[finetune] stage 1/5 demos: {demos['episodes']} scripted {' + '.join(cfg.tasks)} episodes, "
         f"{demos['steps']} steps, success {demos['success_rate']:.0%} ({walls['demos']:.1f} s)")  # fmt: skip

    t0 = time.perf_counter()
    offline, checkpoint = _offline(cfg, paths["demos"], obs, paths["offline"])
    walls["offline"] = time.perf_counter() - t0
    say(f"[finetune] stage 2/5 offline {cfg.algo}: {cfg.offline_steps} updates, success "
         f"{offline.final_success:.0%} ({walls['offline']:.1f} s)")  # fmt: skip

    graph = build_graph(cfg, obs=obs, checkpoint=checkpoint, dataset=paths["demos"],
                        online_dir=paths["online"], results=paths["results"],
                        reward_type=reward_type)  # fmt: skip
    say(f"[finetune] stage 3/5 online on the graph ({', '.join(graph.names)}): "
         f"{cfg.online_episodes} episodes, logs in {paths['logs']}")  # fmt: skip
    online = _online(cfg, graph, paths["results"], paths["logs"])
    walls["online"] = online["wall_s"]
    records = read_records(paths["results"])
    episodes = [r for r in records if r.get("kind") == "episode"]
    final = next((r for r in reversed(records) if r.get("kind") == "final"), None)
    wins = sum(bool(r["success"]) for r in episodes)
    say(f"[finetune]   online: {len(episodes)} episodes, {wins} successes, graph exit "
         f"{online['exit_code']} ({walls['online']:.1f} s)")  # fmt: skip
    audit = reward_audit(episodes)
    if audit:
        say(f"[finetune]   reward audit: the twin agrees on {audit['agreement']:.0%} of "
             f"{audit['episodes']} online episodes ({audit['false_success']} false successes, "
             f"{audit['missed']} missed)")  # fmt: skip

    t0 = time.perf_counter()
    versions = _evaluate_versions(cfg, obs, paths["online"], records)
    walls["eval"] = time.perf_counter() - t0
    last = versions[-1] if versions else None
    say(f"[finetune] stage 4/5 eval: {len(versions)} published versions, last "
         + (f"v{last['version']} success {last['success_rate']:.0%}" if last else "none")
         + f" ({walls['eval']:.1f} s)")  # fmt: skip

    offline_end = offline.evals[-1]
    evals = list(offline.evals) + [dataclasses.replace(offline_end, step=0, phase="online")]
    evals += [EvalPoint(v["env_steps"], "online", v["success_rate"], v["mean_return"],
                        v["mean_length"]) for v in versions]  # fmt: skip
    curve = plot_learning_curve(
        evals, out / CURVE, title=f"{cfg.algo} on {cfg.task}: offline, then online on the graph"
    )
    walls["total"] = time.perf_counter() - t_all
    summary = {
        "task": cfg.task,
        "algo": cfg.algo,
        "reward": cfg.reward,
        "demos": demos,
        "success_offline_end": offline.final_success,
        "success_online_end": last["success_rate"] if last else None,
        "online_episodes": len(episodes),
        "online_successes": wins,
        "env_steps": (final or {}).get("learner", {}).get("env_steps")
        if final and final.get("learner")
        else (last["env_steps"] if last else 0),
        "versions_published": len(list(paths["online"].glob("policy_v*.safetensors"))),
        "versions": versions,
        "evals": [dataclasses.asdict(e) for e in evals],
        "graph": {k: v for k, v in online.items() if k != "wall_s"},
        "node_rates": node_rates(final),
        "reset_free": (
            reset_free_summary(cfg.tasks, cfg.reset_every, episodes, final)
            if cfg.reset_free
            else None
        ),
        "reward_audit": reward_audit(episodes),
        "wall_s": {k: round(v, 2) for k, v in walls.items()},
        "learning_curve": str(curve),
        "offline_checkpoint": str(checkpoint),
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()
        },
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    say(f"[finetune] stage 5/5 report: success offline {offline.final_success:.0%} -> online "
         + (f"{last['success_rate']:.0%}" if last else "n/a")
         + f"; curve {curve}; summary {out / SUMMARY} ({walls['total']:.0f} s in all)")  # fmt: skip
    return summary
