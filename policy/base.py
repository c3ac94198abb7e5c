"""The algorithm interface, the registry keyed by ``type``, and checkpoints.

Every algorithm is a class built as ``Algo(spec, config, device=...)`` from an
:class:`~twinloop.policy.networks.EncoderSpec` and a frozen config dataclass whose class attribute
``type`` keys :data:`REGISTRY` (imports are lazy). It offers ``update(batch) -> dict[str, float]``,
``act(obs, deterministic)`` and ``state_dict() / load_state_dict()`` covering networks, target
networks, optimisers and step counters, so a checkpoint resumes training exactly.

Checkpoints are one safetensors file: tensors flat under their path in the nested state, and a
JSON skeleton in the metadata holding the non-tensor leaves (optimiser hyper-parameters, steps,
RNG states), the algorithm type, the encoder spec and the config.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from .common import Batch, Obs
from .errors import PolicyError
from .networks import EncoderSpec

__all__ = [
    "REGISTRY",
    "Algorithm",
    "AlgorithmConfig",
    "config_from_dict",
    "flatten_state",
    "load_checkpoint",
    "make_algorithm",
    "read_checkpoint_header",
    "save_checkpoint",
    "unflatten_state",
]

FORMAT = "twinloop.policy/1"

REGISTRY: dict[str, str] = {  # type -> "module:ConfigClass:AlgorithmClass"
    "bc": "twinloop.policy.bc:BCConfig:BC",
    "iql": "twinloop.policy.iql:IQLConfig:IQL",
    "calql": "twinloop.policy.calql:CalQLConfig:CalQL",
    "sac": "twinloop.policy.sac:SACConfig:SAC",
}


class AlgorithmConfig(Protocol):
    type: ClassVar[str]
    gamma: float
    batch_size: int


@runtime_checkable
class Algorithm(Protocol):
    spec: EncoderSpec
    config: Any
    device: torch.device

    def update(self, batch: Batch) -> dict[str, float]: ...
    def act(self, obs: Obs, *, deterministic: bool = True) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def _entry(type_: str) -> tuple[type, type]:
    try:
        module_name, config_name, algo_name = REGISTRY[type_].split(":")
    except KeyError:
        msg = f"unknown algorithm {type_!r}. Available: {sorted(REGISTRY)}"
        raise PolicyError(msg) from None
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, algo_name)


def config_from_dict(type_: str, values: Mapping[str, Any]) -> Any:
    """Build the config of algorithm ``type_`` from plain values (JSON/CLI), naming bad keys."""
    config_cls, _ = _entry(type_)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        msg = f"unknown {type_} config keys {unknown}. Available: {sorted(names)}"
        raise PolicyError(msg)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return config_cls(**kwargs)
    except TypeError as err:
        raise PolicyError(f"bad {type_} config: {err}") from err


def make_algorithm(
    type_: str,
    spec: EncoderSpec,
    config: Any | None = None,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Algorithm:
    """The algorithm ``type_`` with ``config`` (defaults if None) on ``device``, seeded."""
    config_cls, algo_cls = _entry(type_)
    if config is None:
        config = config_cls()
    elif not isinstance(config, config_cls):
        msg = f"{type_} needs a {config_cls.__name__}, got {type(config).__name__}"
        raise PolicyError(msg)
    torch.manual_seed(seed)
    algo: Algorithm = algo_cls(spec, config, device=torch.device(device))
    return algo


# ----- nested state <-> flat tensors + JSON skeleton ------------------------------------------
_TENSOR = "__tensor__"


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tensors, numbers, strings) into flat tensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {_TENSOR: path}
        if isinstance(value, np.ndarray):
            tensors[path] = torch.from_numpy(np.ascontiguousarray(value))
            return {_TENSOR: path, "numpy": True}
        if isinstance(value, Mapping):
            return {"__dict__": [[_key(k), walk(v, f"{path}/{k}")] for k, v in value.items()]}
        if isinstance(value, tuple):  # kept a tuple (optimiser betas compare equal after load)
            return {"__tuple__": [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        msg = f"cannot checkpoint {type(value).__name__} at {path or '/'}"
        raise PolicyError(msg)

    skeleton = walk(state, prefix)
    return tensors, skeleton


def _key(k: Any) -> Any:
    return {"int": k} if isinstance(k, int) else k  # optimiser states are keyed by int


def unflatten_state(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict) and _TENSOR in node:
            tensor = tensors[node[_TENSOR]]
            return tensor.numpy() if node.get("numpy") else tensor
        if isinstance(node, dict) and "__dict__" in node:
            return {(k["int"] if isinstance(k, dict) else k): walk(v) for k, v in node["__dict__"]}
        if isinstance(node, dict) and "__tuple__" in node:
            return tuple(walk(v) for v in node["__tuple__"])
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(skeleton)


def save_checkpoint(
    algo: Algorithm, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write the algorithm (and ``extra`` state: step, RNGs, sampler) to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors, skeleton = flatten_state({"algo": algo.state_dict(), "extra": dict(extra or {})})
    metadata = {
        "format": FORMAT,
        "type": str(algo.config.type),
        "spec": json.dumps(dataclasses.asdict(algo.spec)),
        "config": json.dumps(dataclasses.asdict(algo.config)),
        "state": json.dumps(skeleton),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # the policy node never reads half a file
    path.with_suffix(".json").write_text(
        json.dumps({k: metadata[k] if k in ("format", "type") else json.loads(metadata[k])
                    for k in ("format", "type", "spec", "config")}, indent=2)
    )  # fmt: skip
    return path


def read_checkpoint_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata of a policy checkpoint; PolicyError if it is missing or not ours."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        msg = f"policy checkpoint {path} does not exist"
        raise PolicyError(msg)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign files
        msg = f"{path} is not a safetensors file: {err}"
        raise PolicyError(msg) from err
    if meta.get("format") != FORMAT:
        msg = f"{path} is not a twinloop policy checkpoint (format {meta.get('format')!r})"
        raise PolicyError(msg)
    return meta


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    expect_type: str | None = None,
    expect_spec: EncoderSpec | None = None,
) -> tuple[Algorithm, dict[str, Any]]:
    """Rebuild the algorithm saved at ``path``; returns it and the ``extra`` state saved with it.

    ``expect_type`` / ``expect_spec``: refuse a checkpoint of another algorithm or of other
    observation/action shapes, naming what differs.
    """
    from safetensors.torch import load as load_bytes

    meta = read_checkpoint_header(path)
    type_ = meta["type"]
    if expect_type is not None and type_ != expect_type:
        msg = f"{path} holds a {type_!r} policy, expected {expect_type!r}"
        raise PolicyError(msg)
    spec = EncoderSpec(**json.loads(meta["spec"]))
    if expect_spec is not None and spec != expect_spec:
        diff = {
            f.name: (getattr(spec, f.name), getattr(expect_spec, f.name))
            for f in dataclasses.fields(spec)
            if getattr(spec, f.name) != getattr(expect_spec, f.name)
        }
        msg = f"{path} was trained for another observation/action spec: (saved, expected) {diff}"
        raise PolicyError(msg)
    config = config_from_dict(type_, json.loads(meta["config"]))
    algo = make_algorithm(type_, spec, config, device=device)
    tensors = load_bytes(Path(path).read_bytes())  # bytes, not mmap: safe under a rewrite
    state = unflatten_state(tensors, json.loads(meta["state"]))
    try:
        algo.load_state_dict(state["algo"])
    except (RuntimeError, KeyError, ValueError) as err:
        msg = f"{path}: weights do not fit the {type_} policy of its own config: {err}"
        raise PolicyError(msg) from err
    return algo, state["extra"]
