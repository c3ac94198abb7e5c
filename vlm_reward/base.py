"""One interface for every reward model: frames (+ state, task text) in, rewards and success out.

A reward model is built from a frozen config dataclass whose class attribute ``type`` keys the
registry (LeRobot style); :func:`make_reward_model` imports the implementing module lazily.
:func:`save_reward_model` / :func:`load_reward_model` keep the weights in a safetensors file whose
metadata holds the type and the config, so a file from another model is refused by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .errors import RewardError

__all__ = [
    "REGISTRY",
    "RewardBatch",
    "RewardConfig",
    "RewardModel",
    "RewardOutput",
    "check_frames",
    "config_from_dict",
    "load_reward_model",
    "make_reward_model",
    "read_checkpoint_header",
    "register",
    "save_reward_model",
]

FORMAT = "twinloop.reward/1"  # safetensors metadata "format"; bump on an incompatible change


@dataclass(frozen=True)
class RewardBatch:
    """What a reward model sees: a batch of frames and, optionally, state and the task sentence.

    ``frames``: (B, H, W, 3) uint8 RGB. ``state``: named (B, ...) arrays such as ``ee_pose``
    (B, 7), ``depth`` (B, H, W) uint16 mm, or the twin's privileged ``priv_*`` keys.
    """

    frames: np.ndarray
    state: Mapping[str, np.ndarray] = field(default_factory=dict)
    task: str = ""

    def __post_init__(self) -> None:
        check_frames(self.frames)
        n = len(self.frames)
        for key, value in self.state.items():
            if len(value) != n:
                msg = f"state {key!r} has {len(value)} rows for {n} frames"
                raise RewardError(msg)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class RewardOutput:
    """Per-frame rewards (float32, (B,)), success flags (bool, (B,)) and extra per-batch info."""

    rewards: np.ndarray
    success: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class RewardModel(Protocol):
    """The interface of every reward method (clip, success_classifier, preference, keypoints)."""

    config: Any

    def __call__(self, batch: RewardBatch) -> RewardOutput: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class RewardConfig(Protocol):
    type: ClassVar[str]


# type -> "module:ConfigClass:ModelClass" inside twinloop.vlm_reward, imported on first use.
REGISTRY: dict[str, str] = {}


def register(type_name: str, target: str) -> None:
    """Register ``type_name`` -> ``"module:ConfigClass:ModelClass"`` (module relative to here)."""
    if type_name in REGISTRY and REGISTRY[type_name] != target:
        msg = f"reward type {type_name!r} is already registered to {REGISTRY[type_name]}"
        raise RewardError(msg)
    REGISTRY[type_name] = target


register("clip", "clip_reward:ClipRewardConfig:ClipReward")
register("success_classifier", "success_classifier:ClassifierConfig:SuccessClassifier")
register("preference", "preference:PreferenceConfig:PreferenceReward")
register("keypoints", "keypoints:KeypointConfig:KeypointReward")


def _resolve(type_name: str) -> tuple[type, type]:
    if type_name not in REGISTRY:
        msg = f"unknown reward type {type_name!r}. Available: {sorted(REGISTRY)}"
        raise RewardError(msg)
    module, config_cls, model_cls = REGISTRY[type_name].split(":")
    mod = importlib.import_module(f"{__package__}.{module}")
    return getattr(mod, config_cls), getattr(mod, model_cls)


def config_from_dict(type_name: str, values: Mapping[str, Any]) -> Any:
    """Build the frozen config of ``type_name`` from plain values (YAML, ROS parameters, JSON).

    Unknown keys are an error naming them; tuples arrive as lists and are converted back.
    """
    config_cls, _ = _resolve(type_name)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        msg = f"unknown {type_name} config keys {unknown}. Available: {sorted(fields)}"
        raise RewardError(msg)
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return config_cls(**clean)
    except (TypeError, ValueError) as err:
        msg = f"bad {type_name} config: {err}"
        raise RewardError(msg) from err


def make_reward_model(config: Any, **kwargs: Any) -> RewardModel:
    """Build the model of ``config`` (its class attribute ``type`` picks the implementation)."""
    type_name = getattr(config, "type", None)
    if not isinstance(type_name, str):
        msg = f"{type(config).__name__} has no reward ``type``"
        raise RewardError(msg)
    _, model_cls = _resolve(type_name)
    model: RewardModel = model_cls(config, **kwargs)
    return model


def check_frames(frames: Any, *, name: str = "frames") -> np.ndarray:
    """Check a (B, H, W, 3) uint8 batch; a clear RewardError for anything else."""
    if not isinstance(frames, np.ndarray):
        msg = f"{name} must be a numpy array, got {type(frames).__name__}"
        raise RewardError(msg)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        msg = f"{name} must be (B, H, W, 3) RGB, got shape {frames.shape}"
        raise RewardError(msg)
    if frames.dtype != np.uint8:
        msg = f"{name} must be uint8, got {frames.dtype}"
        raise RewardError(msg)
    if min(frames.shape[1:3]) < 8:
        msg = f"{name} are too small ({frames.shape[2]}x{frames.shape[1]}); need at least 8x8"
        raise RewardError(msg)
    return frames


def _jsonable_config(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def save_reward_model(model: RewardModel, path: str | os.PathLike[str]) -> Path:
    """Write the model's tensors and its type + config to a safetensors file (atomic replace)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        tensors[key] = tensor.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "type": str(model.config.type),
        "config": _jsonable_config(model.config),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # a reader never sees half a file (hot swap in the reward node)
    return path


def read_checkpoint_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a reward checkpoint; RewardError if it is missing or not ours."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        msg = f"reward checkpoint {path} does not exist"
        raise RewardError(msg)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        msg = f"{path} is not a safetensors file: {err}"
        raise RewardError(msg) from err
    if meta.get("format") != FORMAT or "type" not in meta or "config" not in meta:
        msg = f"{path} is not a twinloop reward checkpoint (metadata {sorted(meta)})"
        raise RewardError(msg)
    return meta


def load_reward_model(
    path: str | os.PathLike[str], *, expect_type: str | None = None, **kwargs: Any
) -> RewardModel:
    """Rebuild a model saved by :func:`save_reward_model` (config from the file, then weights).

    ``expect_type``: refuse a file holding another reward type (say, a classifier where a
    preference net was asked for), naming both.
    """
    from safetensors.torch import load as load_bytes

    meta = read_checkpoint_header(path)
    if expect_type is not None and meta["type"] != expect_type:
        msg = f"{path} holds a {meta['type']!r} reward model, expected {expect_type!r}"
        raise RewardError(msg)
    config = config_from_dict(meta["type"], json.loads(meta["config"]))
    model = make_reward_model(config, **kwargs)
    # From the bytes, not memory-mapped: a file rewritten in place (a retrained model saved over
    # the old one) must not change, or crash, a model already loaded from it.
    try:
        state = load_bytes(Path(path).read_bytes())
    except OSError as err:
        msg = f"could not read reward checkpoint {path}: {err}"
        raise RewardError(msg) from err
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        msg = f"{path}: weights do not fit the {meta['type']} model of its own config: {err}"
        raise RewardError(msg) from err
    return model
