"""One reward model per task: reset-free RoboFuME scores the forward and the backward task with
their own success classifiers.

- :func:`parse_task_checkpoints` reads the ``TASK=PATH[,TASK=PATH]`` text used by
  ``RewardSpec("model:...")``, ``twinloop finetune --reward`` and reward_node's
  ``task_checkpoints`` parameter (a plain ``PATH`` is one model for every task, key ``""``);
- :class:`TaskRoutedReward` is a :class:`~twinloop.vlm_reward.base.RewardModel` that hands each
  batch to the model of ``batch.task`` (the task *name*, e.g. ``close_drawer``; the runtime groups
  frames by task, so a batch never mixes two). A task without a model is refused with a
  RewardError naming the tasks it has.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .base import RewardBatch, RewardModel, RewardOutput, load_reward_model
from .errors import RewardError

__all__ = ["TASK_NAME", "TaskRoutedReward", "load_task_models", "parse_task_checkpoints"]

TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what a task name looks like (open_drawer)


def parse_task_checkpoints(text: str | Iterable[str]) -> dict[str, Path]:
    """``"open_drawer=a.safetensors,close_drawer=b.safetensors"`` (or a list of ``TASK=PATH``
    items) -> {task: path}; a single item without ``=`` is one model for any task (key ``""``).

    RewardError for an empty text, an item with an empty task or path, a task named twice, or a
    mix of plain and ``TASK=`` items. Files are not checked here (:func:`load_task_models` does).
    """
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    items = [s for s in items if s]
    if not items:
        msg = "no reward checkpoint given: expected PATH or TASK=PATH[,TASK=PATH]"
        raise RewardError(msg)
    head, sep, _ = items[0].partition("=")
    if len(items) == 1 and (not sep or "/" in head or os.sep in head):
        return {"": Path(items[0])}  # a plain path (one with "=" in a folder name too)
    out: dict[str, Path] = {}
    for item in items:
        task, sep, path = item.partition("=")
        task, path = task.strip(), path.strip()
        if not sep or not TASK_NAME.fullmatch(task) or not path:
            msg = f"reward checkpoint item {item!r} is not TASK=PATH (in {list(items)})"
            raise RewardError(msg)
        if task in out:
            msg = f"task {task!r} has two reward checkpoints: {out[task]} and {path}"
            raise RewardError(msg)
        out[task] = Path(path)
    return out


def load_task_models(
    paths: Mapping[str, str | os.PathLike[str]], *, expect_type: str | None = None, **kwargs: Any
) -> dict[str, RewardModel]:
    """{task: model} from {task: checkpoint}; RewardError naming the task of a file that is
    missing or not a reward checkpoint (of ``expect_type``, when given)."""
    out: dict[str, RewardModel] = {}
    for task, path in paths.items():
        try:
            out[task] = load_reward_model(path, expect_type=expect_type, **kwargs)
        except RewardError as err:
            msg = f"reward model of task {task!r}: {err}" if task else str(err)
            raise RewardError(msg) from err
    return out


@dataclass(frozen=True)
class TaskRoutedConfig:
    type: ClassVar[str] = "task_routed"
    tasks: tuple[str, ...] = ()
    types: tuple[str, ...] = ()  # the reward type of each task's model


class TaskRoutedReward:
    """A RewardModel that scores each batch with the model of ``batch.task`` (see the module
    docstring). Not saved as one file: each task keeps its own checkpoint."""

    def __init__(self, models: Mapping[str, RewardModel]) -> None:
        if not models or "" in models:
            msg = f"a task-routed reward needs named tasks, got {sorted(models)}"
            raise RewardError(msg)
        self.models = dict(models)
        types = tuple(str(getattr(m.config, "type", type(m).__name__)) for m in models.values())
        self.config = TaskRoutedConfig(tasks=tuple(models), types=types)

    def model_for(self, task: str) -> RewardModel:
        try:
            return self.models[task]
        except KeyError:
            msg = f"no reward model for task {task!r}. Available: {sorted(self.models)}"
            raise RewardError(msg) from None

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        return self.model_for(batch.task)(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            f"{task}/{key}": value
            for task, model in self.models.items()
            for key, value in model.state_dict().items()
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for task, model in self.models.items():
            prefix = f"{task}/"
            model.load_state_dict(
                {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            )
