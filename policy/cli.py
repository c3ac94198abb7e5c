"""``twinloop train offline|online``: pre-train on a dataset, fine-tune in the twin.

Bad input (a missing dataset or key, an unknown algorithm, a checkpoint of another architecture)
is one logged line and exit code 2. ``python -m twinloop.policy.cli ...`` runs the group alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "main", "parse_overrides"]

log = logging.getLogger("twinloop.policy")

OFFLINE_ALGOS = ("calql", "iql", "bc")
ONLINE_ALGOS = ("sac", "calql")
OBS_SPEC_FILE = "obs_spec.json"


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ----- argument helpers ------------------------------------------------------------------------
def _parse_value(name: str, text: str, default: Any) -> Any:
    from .errors import PolicyError

    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
            kind = type(default[0]) if default else int
            return tuple(kind(t.strip()) for t in items)
        if default is None:  # Optional fields: try a number, else keep the text
            for kind in (int, float):
                try:
                    return kind(text)
                except ValueError:
                    pass
            return None if text.lower() == "none" else text
    except ValueError:
        msg = f"--set {name}={text!r}: not a valid {type(default).__name__} (like {default!r})"
        raise PolicyError(msg) from None
    return text


def parse_overrides(algo: str, items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> config values parsed to each field's type (PolicyError if bad)."""
    from .base import config_from_dict
    from .errors import PolicyError

    defaults = config_from_dict(algo, {})
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            msg = f"--set expects KEY=VALUE, got {item!r}"
            raise PolicyError(msg)
        if name not in fields:
            msg = f"unknown {algo} config key {name!r}. Available: {sorted(fields)}"
            raise PolicyError(msg)
        values[name] = _parse_value(name, text, getattr(defaults, name))
    return values


def _obs_spec(args: argparse.Namespace) -> Any:
    from .obs import ObsSpec, default_state_keys

    if args.state_keys:
        keys = tuple(k.strip() for k in args.state_keys.split(",") if k.strip())
    else:
        keys = default_state_keys(args.task, privileged=args.privileged)
    image_key = args.image_key if args.image_size else ""
    return ObsSpec(state_keys=keys, image_key=image_key, image_size=args.image_size)


def _spec_to_json(obs: Any) -> dict[str, Any]:
    return dataclasses.asdict(obs)


def _spec_from_json(values: dict[str, Any]) -> Any:
    from .obs import ObsSpec

    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return ObsSpec(**kwargs)


def _device(name: str) -> str:
    import torch

    from .errors import PolicyError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        msg = f"--device {name}: no CUDA device is available"
        raise PolicyError(msg)
    return name


def _dataset(path: str) -> Path:
    from .errors import PolicyError

    p = Path(path)
    if not p.exists():
        msg = f"dataset {p} does not exist"
        raise PolicyError(msg)
    return p


def _encoder_spec(args: argparse.Namespace, state_dim: int, obs: Any) -> Any:
    from .networks import EncoderSpec

    return EncoderSpec(
        state_dim=state_dim,
        action_dim=obs.action_dim,
        image_size=obs.image_size,
        encoder=args.encoder,
        backbone=args.backbone,
    )


def _config_json(args: argparse.Namespace, algo: Any, obs: Any) -> dict[str, Any]:
    cli = {k: v for k, v in vars(args).items() if k != "func"}
    return {
        "cli": cli,
        "algo": {"type": algo.config.type, **dataclasses.asdict(algo.config)},
        "encoder": dataclasses.asdict(algo.spec),
        "obs": _spec_to_json(obs),
    }


def _report(out: Path, train_log: Any, t_total: float) -> None:
    final = train_log.final_success
    rate = "n/a" if final is None else f"{final:.0%}"
    _out(
        f"{train_log.phase}: {train_log.steps} steps, {train_log.updates} updates in "
        f"{t_total:.1f} s; final success {rate}; checkpoint {train_log.checkpoint}"
    )
    if train_log.curve is not None:
        _out(f"learning curve: {train_log.curve}")
    _out(f"summary: {out / 'summary.json'}")


# ----- commands --------------------------------------------------------------------------------
def cmd_offline(args: argparse.Namespace) -> int:
    import torch

    from .base import config_from_dict, make_algorithm
    from .buffers import RewardSpec, load_offline
    from .train import OfflineConfig, train_offline, write_summary
    from .twin_env import PolicyTwinEnv

    torch.set_num_threads(max(1, args.threads)) if args.threads else None
    t0 = time.perf_counter()
    obs = _obs_spec(args)
    overrides = parse_overrides(args.algo, args.set)
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    config = config_from_dict(args.algo, overrides)
    cfg = OfflineConfig(
        steps=args.steps,
        eval_every=args.eval_every,
        eval_episodes=max(args.eval_episodes, 1),
        checkpoint_every=args.checkpoint_every or args.steps,
        log_every=args.log_every,
        seed=args.seed,
        progress=not args.no_progress,
    )
    device = _device(args.device)
    buffer = load_offline(
        _dataset(args.dataset),
        obs,
        RewardSpec(source=args.reward),
        gamma=float(config.gamma),
        device=device,
        seed=args.seed,
    )
    state_dim = int(buffer.state_dim)
    algo = make_algorithm(
        args.algo, _encoder_spec(args, state_dim, obs), config, device=device, seed=args.seed
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OBS_SPEC_FILE).write_text(json.dumps(_spec_to_json(obs), indent=2))
    env = None
    if args.eval_episodes > 0:
        env = PolicyTwinEnv(args.task, obs, reward=_env_reward(args.reward), seed=args.seed)
    try:
        train_log = train_offline(algo, buffer, cfg, out_dir=out, env=env, resume=args.resume)
    finally:
        if env is not None:
            env.close()
    write_summary(
        out, train_log, _config_json(args, algo, obs) | {"train": dataclasses.asdict(cfg)}
    )
    _report(out, train_log, time.perf_counter() - t0)
    return 0


def _env_reward(source: str) -> str:
    """The twin's reward for a dataset reward source (model/key rewards: success in the twin)."""
    from .errors import PolicyError

    if source in ("success", "success01", "dense"):
        return source
    if source == "key:progress":
        return "dense"
    if source.startswith(("key:", "model:")):
        return "success"
    msg = f"unknown reward {source!r}. Available: success, success01, key:NAME, model:PATH"
    raise PolicyError(msg)


def cmd_online(args: argparse.Namespace) -> int:
    import torch

    from .base import config_from_dict, load_checkpoint, make_algorithm
    from .buffers import RewardSpec, load_offline
    from .errors import PolicyError
    from .train import OnlineConfig, load_evals, normalize_states, train_online, write_summary
    from .twin_env import PolicyTwinEnv

    torch.set_num_threads(max(1, args.threads)) if args.threads else None
    t0 = time.perf_counter()
    device = _device(args.device)
    overrides = parse_overrides(args.algo, args.set)
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    history = []
    explicit_obs = args.state_keys or args.privileged or args.image_size
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        saved_spec = ckpt.parent / OBS_SPEC_FILE
        obs = (
            _spec_from_json(json.loads(saved_spec.read_text()))
            if saved_spec.exists() and not explicit_obs
            else _obs_spec(args)
        )
        saved, _ = load_checkpoint(ckpt, device=device)
        if saved.config.type != args.algo:
            msg = f"{ckpt} holds a {saved.config.type!r} policy; --algo is {args.algo!r}"
            raise PolicyError(msg)
        if "utd" in {f.name for f in dataclasses.fields(saved.config)}:
            overrides.setdefault("utd", args.utd)
        values = dataclasses.asdict(saved.config) | overrides
        config = config_from_dict(args.algo, values)
        env = PolicyTwinEnv(args.task, obs, reward=_env_reward(args.reward), seed=args.seed)
        if env.state_dim != saved.spec.state_dim or obs.image_size != saved.spec.image_size:
            env.close()
            msg = (
                f"{ckpt} was trained on state_dim={saved.spec.state_dim}, "
                f"image_size={saved.spec.image_size}; the observation spec gives "
                f"state_dim={env.state_dim}, image_size={obs.image_size}"
            )
            raise PolicyError(msg)
        algo = make_algorithm(args.algo, saved.spec, config, device=device, seed=args.seed)
        algo.load_state_dict(saved.state_dict())
        history = [e for e in load_evals(ckpt.parent) if e.phase == "offline"]
    else:
        obs = _obs_spec(args)
        probe = config_from_dict(args.algo, {})
        if "utd" in {f.name for f in dataclasses.fields(probe)}:
            overrides.setdefault("utd", args.utd)
        config = config_from_dict(args.algo, overrides)
        env = PolicyTwinEnv(args.task, obs, reward=_env_reward(args.reward), seed=args.seed)
        algo = make_algorithm(
            args.algo, _encoder_spec(args, env.state_dim, obs), config, device=device,
            seed=args.seed,
        )  # fmt: skip
    cfg = OnlineConfig(
        online_steps=args.online_steps,
        utd=int(getattr(config, "utd", args.utd)),
        offline_fraction=(
            args.offline_fraction
            if args.offline_fraction is not None
            else float(getattr(config, "offline_fraction", 0.5))
        ),
        start_after=args.start_after,
        warmup="policy" if args.checkpoint else "random",
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        checkpoint_every=args.checkpoint_every or args.online_steps,
        log_every=args.log_every,
        seed=args.seed,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OBS_SPEC_FILE).write_text(json.dumps(_spec_to_json(obs), indent=2))
    try:
        offline = None
        if args.dataset:
            offline = load_offline(
                _dataset(args.dataset),
                obs,
                RewardSpec(source=args.reward if args.reward != "dense" else "key:progress"),
                gamma=float(config.gamma),
                device=device,
                seed=args.seed,
            )
            if not args.checkpoint:  # a checkpoint carries its own statistics
                normalize_states(algo, offline)
        train_log = train_online(algo, offline, env, cfg, out_dir=out, history=history)
    finally:
        env.close()
    write_summary(
        out, train_log, _config_json(args, algo, obs) | {"train": dataclasses.asdict(cfg)}
    )
    _report(out, train_log, time.perf_counter() - t0)
    return 0


# ----- parser ----------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task", default="push_cube", help="twin task for evaluation (default: push_cube)"
    )
    p.add_argument("--out", required=True, help="output directory (checkpoint, metrics, summary)")
    p.add_argument(
        "--reward",
        default="success",
        help="success (-1/0, terminal), success01, key:NAME (dataset column), model:PATH "
        "(reward-model checkpoint); default: success",
    )
    p.add_argument("--image-size", type=int, default=0, help="image side, px (0: state only)")
    p.add_argument("--image-key", default="image_color", help="dataset image key")
    p.add_argument(
        "--state-keys",
        default="",
        help="comma-separated dataset keys for the state (default: proprio [+ privileged])",
    )
    p.add_argument(
        "--privileged",
        action="store_true",
        help="add the task's true object state (state-based runs in the twin)",
    )
    p.add_argument("--encoder", default="cnn", help="image encoder: cnn, resnet18, clip")
    p.add_argument("--backbone", default="", help="pretrained backbone weights (resnet18/clip)")
    p.add_argument("--eval-every", type=int, default=5000, help="evaluate every N steps")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation")
    p.add_argument("--checkpoint-every", type=int, default=0, help="0: only at the end")
    p.add_argument("--log-every", type=int, default=100, help="log losses every N steps")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (config)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="algorithm config override, e.g. alpha=5.0 or hidden=256,256 (repeatable)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``offline`` and ``online`` to ``sub`` (the ``twinloop train`` group)."""
    p = sub.add_parser(
        "offline",
        help="pre-train a policy on a dataset (Cal-QL, IQL or BC)",
        description="Offline RL / BC on a zarr dataset, evaluated in the twin.",
    )
    p.add_argument("--algo", required=True, choices=OFFLINE_ALGOS, help="algorithm")
    p.add_argument("--dataset", required=True, help="zarr episode store")
    p.add_argument("--steps", type=int, default=100_000, help="gradient updates")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    _common(p)
    p.set_defaults(func=cmd_offline)

    p = sub.add_parser(
        "online",
        help="fine-tune a policy online in the twin (SAC/RLPD or Cal-QL)",
        description="Online RL in the twin, from an offline checkpoint or from scratch, "
        "optionally mixing in a dataset (50/50 by default).",
    )
    p.add_argument("--algo", required=True, choices=ONLINE_ALGOS, help="algorithm")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--checkpoint", default=None, help="offline checkpoint to start from")
    start.add_argument("--from-scratch", action="store_true", help="start from random weights")
    p.add_argument("--dataset", default=None, help="offline data mixed into every batch")
    p.add_argument("--online-steps", type=int, default=30_000, help="environment steps")
    p.add_argument("--utd", type=int, default=1, help="updates per env step")
    p.add_argument(
        "--offline-fraction",
        type=float,
        default=None,
        help="offline share of a batch (default: the algorithm config's, 0.5)",
    )
    p.add_argument("--start-after", type=int, default=0, help="warm-up env steps, no updates")
    _common(p)
    p.set_defaults(func=cmd_online)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m twinloop.policy.cli offline|online ...`` (same as ``twinloop train``)."""
    parser = argparse.ArgumentParser(prog="twinloop train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="train_command", required=True, metavar="COMMAND")
    add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # PolicyError, DatasetError, TwinError: bad input
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
