"""Prompt texts and the tolerant parsers of VLM replies (preferences and keypoints)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.prompts import (
    PreferenceAnswer,
    ask_preference,
    ask_preferences,
    goal_from_prompt,
    is_keypoint_prompt,
    is_preference_prompt,
    keypoint_prompt,
    parse_keypoint_prompt,
    parse_keypoint_reply,
    parse_preference_label,
    preference_analysis_prompt,
    preference_label_prompt,
    preference_stage,
)
from twinloop.vlm_reward.vlm_client import VLMClient, VLMClientConfig

GOAL = "push the red cube onto the green target"


# ----- preference prompts ----------------------------------------------------------------------
def test_preference_prompts_carry_goal_and_stage() -> None:
    first, second = preference_analysis_prompt(GOAL), preference_label_prompt(GOAL)
    assert "image 1" in first and "image 2" in first and GOAL in first
    assert all(s in second for s in ("0 if image 1", "1 if image 2", "-1 if"))
    assert (preference_stage(first), preference_stage(second)) == (1, 2)
    assert goal_from_prompt(first) == GOAL == goal_from_prompt(second)
    assert is_preference_prompt(first) and is_preference_prompt(second)
    assert not is_preference_prompt("describe this image")
    assert preference_stage("describe this image") is None
    assert not is_keypoint_prompt(first)


def test_empty_goal_is_refused() -> None:
    with pytest.raises(RewardError, match="goal sentence"):
        preference_analysis_prompt("   ")


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("0", 0),
        ("1", 1),
        ("-1", -1),
        ("1\n", 1),
        ("Answer: 1", 1),
        ("**1**", 1),
        ("The answer is -1.", -1),
        ("Image 2 is better, so 1", 1),
        ("```\n0\n```", 0),
        ('```json\n{"label": 1}\n```', 1),
        ("0\n\nImage 1 shows the cube already on the green target, image 2 does not.", 0),
        ("Label: 0 (image 1 is closer to the goal)", 0),
        ("Final answer: **-1** - I cannot see a difference between image 1 and image 2.", -1),
        ("Comparing image 1 and image 2, image 2 shows more progress.\n\n1", 1),
        ("I would say 1.", 1),
        ("Answer: 1 (not 0)", 1),
        ("Output = 0", 0),
        ("-1 (unsure)", -1),
        ("Images 1 and 2 look the same to me, so -1", -1),
    ],
)
def test_parse_preference_label_accepts_real_replies(reply: str, label: int) -> None:
    assert parse_preference_label(reply) == label


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ("", "no preference label"),
        ("I cannot tell which image is better.", "no preference label"),
        ("Image 1 is better.", "no preference label"),
        ("2", "'2' is not one of"),
        ("Answer: 2", "'2' is not one of"),
        ("0 or 1", "conflicting"),
        ("Answer: 0. Answer: 1.", "conflicting"),
        ("0.5", "'0.5' is not one of"),
        ("10", "'10' is not one of"),
    ],
)
def test_parse_preference_label_rejects_malformed_replies(reply: str, match: str) -> None:
    with pytest.raises(RewardError, match=match):
        parse_preference_label(reply)


def test_label_error_quotes_the_reply() -> None:
    with pytest.raises(RewardError, match="maybe the left one"):
        parse_preference_label("maybe the left one")


# ----- ask_preference (two turns) --------------------------------------------------------------
class RecordingClient:
    """Stands in for VLMClient: records the calls, answers like a model would."""

    def __init__(self, replies: Sequence[str]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, tuple[np.ndarray, ...], tuple[tuple[str, str], ...]]] = []

    def ask(self, prompt: str, images: Sequence[np.ndarray] = (), *, history: Sequence = ()) -> str:
        self.calls.append((prompt, tuple(images), tuple(history)))
        return self.replies.pop(0)


def test_ask_preference_runs_two_turns_with_history() -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    b = np.full((16, 16, 3), 200, np.uint8)
    client = RecordingClient(["Image 1 is empty; image 2 is bright.", "Answer: 1"])
    answer = ask_preference(client, GOAL, a, b)  # duck-typed stand-in for VLMClient
    assert answer == PreferenceAnswer(1, "Image 1 is empty; image 2 is bright.", "Answer: 1")
    (p1, im1, h1), (p2, im2, h2) = client.calls
    assert preference_stage(p1) == 1 and h1 == ()
    assert preference_stage(p2) == 2 and h2 == ((p1, "Image 1 is empty; image 2 is bright."),)
    # images stay those of the first turn, in order a, b
    assert im1[0] is a and im1[1] is b and im2[0] is a and im2[1] is b


def test_ask_preferences_batches_and_keeps_failures_in_place() -> None:
    pairs = [(np.full((8, 8, 3), i, np.uint8), np.full((8, 8, 3), 9, np.uint8)) for i in range(4)]

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        last = body["messages"][-1]["content"][0]["text"]
        stage = preference_stage(last)
        if stage == 1:
            return httpx.Response(200, json=_reply("Image 1 and image 2 differ."))
        n_images = sum(len(m["content"]) - 1 for m in body["messages"] if m["role"] == "user")
        assert n_images == 2  # the images ride in the first user turn only
        assert body["messages"][1]["role"] == "assistant"
        return httpx.Response(200, json=_reply(replies.pop(0)))

    replies = ["0", "garbage without a label", "1", "-1"]
    config = VLMClientConfig("http://vlm.test/v1", "m", max_concurrency=1, backoff_s=0.0)
    with VLMClient(config, transport=httpx.MockTransport(handler)) as client:
        out = ask_preferences(client, GOAL, pairs)
    assert [a.label if isinstance(a, PreferenceAnswer) else None for a in out] == [0, None, 1, -1]
    assert isinstance(out[1], RewardError) and "garbage without a label" in str(out[1])


def _reply(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


# ----- keypoint prompts ------------------------------------------------------------------------
MARKS = [(1, 40.0, 60.0), (2, 120.5, 80.0), (3, 200.0, 150.0), (5, 10.0, 230.0)]


def test_keypoint_prompt_lists_marks_and_round_trips() -> None:
    text = keypoint_prompt("open the drawer", MARKS, n_keypoints=1, max_waypoints=3)
    assert is_keypoint_prompt(text) and not is_preference_prompt(text)
    assert "mark 2: (u=120, v=80)" in text and '"keypoints"' in text and '"waypoints"' in text
    parsed = parse_keypoint_prompt(text)
    assert parsed.task == "open the drawer"
    assert [m[0] for m in parsed.marks] == [1, 2, 3, 5]
    assert parsed.marks[2][1:] == (200.0, 150.0)
    assert (parsed.n_keypoints, parsed.max_waypoints) == (1, 3)


def test_keypoint_prompt_refuses_bad_marks() -> None:
    with pytest.raises(RewardError, match="unique"):
        keypoint_prompt("t", [(1, 0, 0), (1, 5, 5)], 1, 2)
    with pytest.raises(RewardError, match="at least one mark"):
        keypoint_prompt("t", [], 1, 2)
    with pytest.raises(RewardError, match="not a keypoint prompt"):
        parse_keypoint_prompt(preference_label_prompt(GOAL))


@pytest.mark.parametrize(
    ("reply", "keypoints", "waypoints"),
    [
        ('{"keypoints": [3], "waypoints": [3, 5]}', (3,), (3, 5)),
        ('```json\n{"keypoints": [2], "waypoints": [2, 1, 5]}\n```', (2,), (2, 1, 5)),
        (
            "The handle is mark 2 and the drawer opens towards mark 5.\n"
            '{"keypoints": [2], "waypoints": [2, 5]}\nHope this helps.',
            (2,),
            (2, 5),
        ),
        (
            'Draft: {"keypoints": [1], "waypoints": [1]}\nFinal: {"keypoints": [3], "waypoints": [5]}',
            (3,),
            (5,),
        ),
        ('{"Keypoints": ["#3", "5"], "Waypoints": [3, "1"]}', (3, 5), (3, 1)),
        ("keypoints: 3, 5 waypoints: 3, 1", (3, 5), (3, 1)),
        ("**Keypoints:** [2]\n**Waypoints:** [2, 3, 5]", (2,), (2, 3, 5)),
        ('{"keypoints": 3, "waypoints": [3, 5]}', (3,), (3, 5)),
    ],
)
def test_parse_keypoint_reply(reply: str, keypoints: tuple, waypoints: tuple) -> None:
    answer = parse_keypoint_reply(reply, [m[0] for m in MARKS])
    assert (answer.keypoints, answer.waypoints, answer.reply) == (keypoints, waypoints, reply)


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ('{"keypoints": [4], "waypoints": [4, 5]}', r"unknown marks \[4\]"),
        ("keypoints: 3 waypoints: 3, 7", r"unknown marks \[7\]"),
        ("I think the handle is the best place to grab.", "no keypoints/waypoints"),
        ('{"keypoints": [], "waypoints": [1]}', "no keypoint or no waypoint"),
        ('{"keypoints": ["handle"], "waypoints": [1]}', "not a mark number"),
        ('{"keypoints": [1]}', "no keypoints/waypoints"),
    ],
)
def test_parse_keypoint_reply_rejects(reply: str, match: str) -> None:
    with pytest.raises(RewardError, match=match):
        parse_keypoint_reply(reply, [m[0] for m in MARKS])
