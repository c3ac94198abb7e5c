"""One reward model per task: parsing TASK=PATH, loading per-task checkpoints, routing batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from helpers_reward import constant_classifier
from twinloop.vlm_reward.base import RewardBatch, RewardOutput
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.routing import (
    TaskRoutedReward,
    load_task_models,
    parse_task_checkpoints,
)

torch.set_num_threads(1)


@dataclass(frozen=True)
class ConstConfig:
    type: ClassVar[str] = "test_const"
    value: float = 0.0


class ConstReward:
    """A fake reward model: ``value`` for every frame; it records the tasks it was called with."""

    def __init__(self, value: float) -> None:
        self.config = ConstConfig(value)
        self.tasks: list[str] = []

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        self.tasks.append(batch.task)
        n = len(batch)
        return RewardOutput(np.full(n, self.config.value, np.float32), np.zeros(n, bool))

    def state_dict(self) -> dict[str, Any]:
        return {"value": torch.tensor([self.config.value])}

    def load_state_dict(self, state: Any) -> None:
        self.config = ConstConfig(float(state["value"][0]))


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)


# ----- parse_task_checkpoints --------------------------------------------------------------------
def test_parse_task_checkpoints_text_and_list() -> None:
    want = {"open_drawer": Path("a.safetensors"), "close_drawer": Path("/x/b.safetensors")}
    assert parse_task_checkpoints("open_drawer=a.safetensors,close_drawer=/x/b.safetensors") == want
    assert (
        parse_task_checkpoints(" open_drawer = a.safetensors , close_drawer=/x/b.safetensors ,")
        == want
    )
    assert (
        parse_task_checkpoints(["open_drawer=a.safetensors", "close_drawer=/x/b.safetensors"])
        == want
    )
    assert list(parse_task_checkpoints("b=1,a=2")) == ["b", "a"]  # the order is kept
    assert parse_task_checkpoints("runs/clf.safetensors") == {"": Path("runs/clf.safetensors")}
    assert parse_task_checkpoints(["clf.safetensors"]) == {"": Path("clf.safetensors")}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no reward checkpoint given"),
        (" , ", "no reward checkpoint given"),
        ([], "no reward checkpoint given"),
        ("open_drawer=", r"item 'open_drawer=' is not TASK=PATH"),
        ("=a.safetensors", r"item '=a.safetensors' is not TASK=PATH"),
        ("a=x,a=y", r"task 'a' has two reward checkpoints: x and y"),
        ("open_drawer=a.safetensors,b.safetensors", r"item 'b.safetensors' is not TASK=PATH"),
        ("a.safetensors,b.safetensors", r"item 'a.safetensors' is not TASK=PATH"),
    ],
)
def test_parse_task_checkpoints_errors(text: Any, match: str) -> None:
    with pytest.raises(RewardError, match=match):
        parse_task_checkpoints(text)


# ----- TaskRoutedReward -----------------------------------------------------------------------------
def test_each_batch_goes_to_the_model_of_its_task() -> None:
    forward, backward = ConstReward(1.0), ConstReward(-1.0)
    routed = TaskRoutedReward({"open_drawer": forward, "close_drawer": backward})
    assert routed.config.tasks == ("open_drawer", "close_drawer")
    assert routed.config.types == ("test_const", "test_const")
    out = routed(RewardBatch(frames=frames(3), task="close_drawer"))
    np.testing.assert_array_equal(out.rewards, [-1.0, -1.0, -1.0])
    out = routed(RewardBatch(frames=frames(2), task="open_drawer"))
    np.testing.assert_array_equal(out.rewards, [1.0, 1.0])
    assert backward.tasks == ["close_drawer"] and forward.tasks == ["open_drawer"]
    assert routed.model_for("close_drawer") is backward


def test_unknown_task_and_bad_model_sets_are_refused() -> None:
    routed = TaskRoutedReward({"open_drawer": ConstReward(1.0), "close_drawer": ConstReward(0.0)})
    available = r"Available: \['close_drawer', 'open_drawer'\]"
    with pytest.raises(RewardError, match=f"no reward model for task 'lift_rod'. {available}"):
        routed(RewardBatch(frames=frames(1), task="lift_rod"))
    with pytest.raises(RewardError, match="no reward model for task ''"):
        routed(RewardBatch(frames=frames(1)))  # a batch without a task is not guessed
    with pytest.raises(RewardError, match="needs named tasks, got"):
        TaskRoutedReward({})
    with pytest.raises(RewardError, match=r"needs named tasks, got \['', 'a'\]"):
        TaskRoutedReward({"": ConstReward(0.0), "a": ConstReward(1.0)})


def test_state_dict_round_trip_keeps_each_task_apart() -> None:
    source = TaskRoutedReward({"a": ConstReward(2.0), "b": ConstReward(3.0)})
    state = source.state_dict()
    assert sorted(state) == ["a/value", "b/value"]
    target = TaskRoutedReward({"a": ConstReward(0.0), "b": ConstReward(0.0)})
    target.load_state_dict(state)
    assert target.model_for("a").config.value == 2.0 and target.model_for("b").config.value == 3.0


# ----- real checkpoints ------------------------------------------------------------------------------
def test_load_task_models_routes_to_real_classifiers(tmp_path: Path) -> None:
    paths = parse_task_checkpoints(
        f"open_drawer={constant_classifier(tmp_path / 'o.st', success=True)},"
        f"close_drawer={constant_classifier(tmp_path / 'c.st', success=False, seed=1)}"
    )
    models = load_task_models(paths, expect_type="success_classifier")
    assert list(models) == ["open_drawer", "close_drawer"]
    routed = TaskRoutedReward(models)
    batch = frames(4, seed=3)
    opened = routed(RewardBatch(frames=batch, task="open_drawer"))
    closed = routed(RewardBatch(frames=batch, task="close_drawer"))
    np.testing.assert_array_equal(opened.rewards, [1.0] * 4)
    assert opened.success.all()
    np.testing.assert_array_equal(closed.rewards, [-1.0] * 4)
    assert not closed.success.any()
    assert routed.config.types == ("success_classifier", "success_classifier")


def test_load_task_models_errors_name_the_task(tmp_path: Path) -> None:
    good = constant_classifier(tmp_path / "good.st", success=True)
    missing = tmp_path / "missing.st"
    with pytest.raises(
        RewardError, match=rf"reward model of task 'close_drawer': .*{missing.name}"
    ):
        load_task_models({"open_drawer": good, "close_drawer": missing})
    junk = tmp_path / "junk.st"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(
        RewardError, match=r"reward model of task 'open_drawer': .*not a safetensors"
    ):
        load_task_models({"open_drawer": junk})
    with pytest.raises(
        RewardError, match=r"reward model of task 'open_drawer': .*expected 'preference'"
    ):
        load_task_models({"open_drawer": good}, expect_type="preference")
    # one model for any task: the plain loader's message, no task named
    with pytest.raises(RewardError, match="does not exist") as err:
        load_task_models({"": missing})
    assert "of task" not in str(err.value)


def test_a_plain_path_with_equals_in_a_folder_name_is_one_model() -> None:
    assert parse_task_checkpoints("runs/lr=3e-4/clf.safetensors") == {
        "": Path("runs/lr=3e-4/clf.safetensors")
    }
    with pytest.raises(RewardError, match="is not TASK=PATH"):
        parse_task_checkpoints("open_drawer=a.st,runs/lr=3e-4/b.st")
