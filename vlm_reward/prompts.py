"""Prompts sent to a VLM and tolerant parsers for what comes back.

Two prompt families live here, shared by the reward methods and by the simulated teacher:

* RL-VLM-F preferences, asked in two turns of one conversation. Turn 1 (analysis) shows both
  images and asks what each one shows and whether they differ in how far the goal is achieved;
  turn 2 (labeling) asks for a single number: ``0`` if image 1 is better, ``1`` if image 2 is
  better, ``-1`` if the model cannot tell. :func:`ask_preference` runs both turns,
  :func:`ask_preferences` runs them for many pairs through :meth:`VLMClient.ask_many`.
* KAGI keypoints: one camera image with numbered marks drawn on it; the model names the
  affordance keypoint mark(s) and an ordered waypoint sequence of marks, ending its reply with a
  JSON object ``{"keypoints": [..], "waypoints": [..]}``.

Real models answer loosely ("**1**", "Answer: 1", "Image 2 is better, so 1", code fences,
trailing explanations); the parsers accept those and raise :class:`RewardError` with an excerpt
of the reply when the answer is missing, out of range or contradicts itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RewardError

if TYPE_CHECKING:
    from .vlm_client import VLMClient

__all__ = [
    "KeypointAnswer",
    "KeypointPrompt",
    "PreferenceAnswer",
    "ask_preference",
    "ask_preferences",
    "goal_from_prompt",
    "is_keypoint_prompt",
    "is_preference_prompt",
    "keypoint_prompt",
    "parse_keypoint_prompt",
    "parse_keypoint_reply",
    "parse_preference_label",
    "preference_analysis_prompt",
    "preference_label_prompt",
    "preference_stage",
]

# Fixed phrases the teacher (and tests) use to recognise our prompts; keep them in the texts.
_ANALYSIS_MARK = "Compare two camera images of a robot"
_LABEL_MARK = "Which image shows the goal better achieved?"
_KEYPOINT_MARK = "numbered marks drawn on it"
_GOAL_RE = re.compile(r'The goal is: "(.*?)"\.', re.DOTALL)
LABELS = (-1, 0, 1)  # unsure, image 1 better, image 2 better


# ----- preferences (RL-VLM-F) ------------------------------------------------------------------
def _check_goal(goal: str) -> str:
    goal = " ".join(str(goal).split())
    if not goal:
        msg = "the goal sentence of a preference prompt is empty"
        raise RewardError(msg)
    return goal


def preference_analysis_prompt(goal: str) -> str:
    """Turn 1: describe image 1 and image 2 and say whether they differ in achieving ``goal``."""
    goal = _check_goal(goal)
    return (
        f"{_ANALYSIS_MARK}, given in order: image 1 first, then image 2. "
        f'The goal is: "{goal}".\n'
        "1. Say briefly what is shown in image 1.\n"
        "2. Say briefly what is shown in image 2.\n"
        f"3. Is there a difference between image 1 and image 2 in how far the goal ({goal}) "
        "has been achieved? Explain in a few sentences."
    )


def preference_label_prompt(goal: str) -> str:
    """Turn 2: one number, 0 (image 1 better), 1 (image 2 better) or -1 (cannot tell)."""
    goal = _check_goal(goal)
    return (
        f'{_LABEL_MARK} The goal is: "{goal}".\n'
        "Building on your comparison, reply with one number only:\n"
        "0 if image 1 achieves the goal better,\n"
        "1 if image 2 achieves the goal better,\n"
        "-1 if there is no clear difference or you are not sure."
    )


def preference_stage(text: str) -> int | None:
    """1 for our analysis prompt, 2 for our label prompt, None for anything else."""
    if _LABEL_MARK in text:
        return 2
    if _ANALYSIS_MARK in text:
        return 1
    return None


def is_preference_prompt(text: str) -> bool:
    """True for either turn of our preference prompt."""
    return preference_stage(text) is not None


def goal_from_prompt(text: str) -> str | None:
    """The goal sentence quoted in one of our preference prompts (None if absent)."""
    match = _GOAL_RE.search(text)
    return match.group(1) if match else None


def _excerpt(reply: str, limit: int = 160) -> str:
    flat = " ".join(str(reply).split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _clean_reply(reply: str) -> str:
    text = re.sub(r"```[a-zA-Z]*", " ", reply)  # code fences, with or without a language tag
    return text.replace("`", " ").replace("*", " ").replace("_", " ")


# A standalone number: not inside a word, a decimal, or a hyphenated name like "image-1".
_NUMBER = r"(?<![\w.\-])(-?\d+(?:\.\d+)?)(?!\w|\.\d)"
_NUMBER_RE = re.compile(_NUMBER)
_MARKED_RE = re.compile(
    r"\b(?:final\s+answer|answer|label|output|result|choice|preference|verdict)s?\b"
    r"[\"']?\s*(?:is|would\s+be|:|=)?\s*[\"']?\s*[\(\[]?\s*" + _NUMBER,
    re.IGNORECASE,
)
# Numbers that name an image ("image 2", "Image #1", "images 1") are not labels.
_IMAGE_REF_RE = re.compile(
    r"(?:image|img|picture|frame|photo|view)s?\s*(?:#|no\.?|number)?\s*[\(\[]?\s*$", re.IGNORECASE
)


def _as_label(token: str, reply: str) -> int:
    try:
        value = int(token)
    except ValueError:
        value = None
    if value not in LABELS:
        msg = f"VLM preference label {token!r} is not one of -1, 0, 1 in reply {_excerpt(reply)}"
        raise RewardError(msg)
    return int(token)


def _one_label(values: list[int], reply: str) -> int:
    distinct = sorted(set(values))
    if len(distinct) > 1:
        msg = f"VLM reply gives conflicting preference labels {distinct}: {_excerpt(reply)}"
        raise RewardError(msg)
    return distinct[0]


def parse_preference_label(reply: str) -> int:
    """The label in a VLM reply: 0 (image 1 better), 1 (image 2 better), -1 (unsure).

    Explicitly marked answers ("Answer: 1", ``{"label": 0}``) win; otherwise the standalone
    numbers of the reply that do not name an image ("image 2") are the candidates, and they must
    agree. RewardError when there is no label, a number other than -1/0/1, or a contradiction.
    """
    if not isinstance(reply, str):
        msg = f"VLM reply must be text, got {type(reply).__name__}"
        raise RewardError(msg)
    text = _clean_reply(reply)
    marked = [m.group(1) for m in _MARKED_RE.finditer(text)]
    if marked:
        return _one_label([_as_label(t, reply) for t in marked], reply)
    candidates: list[str] = []
    for match in _NUMBER_RE.finditer(text):
        if _IMAGE_REF_RE.search(text[max(0, match.start() - 16) : match.start()]):
            continue
        candidates.append(match.group(1))
    if not candidates:
        msg = f"no preference label (-1, 0 or 1) in VLM reply {_excerpt(reply)}"
        raise RewardError(msg)
    labels = [int(t) for t in candidates if t.lstrip("-").isdigit() and int(t) in LABELS]
    if not labels:
        return _as_label(candidates[0], reply)  # raises, naming the out-of-range number
    return _one_label(labels, reply)


@dataclass(frozen=True)
class PreferenceAnswer:
    """One two-turn preference query: the parsed label and both replies."""

    label: int  # 0: image 1 better, 1: image 2 better, -1: unsure
    analysis: str  # the model's reply to the analysis turn
    reply: str  # the model's reply to the label turn (what ``label`` was parsed from)


def ask_preference(
    client: VLMClient, goal: str, image_a: np.ndarray, image_b: np.ndarray
) -> PreferenceAnswer:
    """Ask which of two frames better achieves ``goal`` (image_a is image 1, image_b image 2)."""
    first = preference_analysis_prompt(goal)
    images = (image_a, image_b)
    analysis = client.ask(first, images)
    reply = client.ask(preference_label_prompt(goal), images, history=[(first, analysis)])
    return PreferenceAnswer(parse_preference_label(reply), analysis, reply)


def ask_preferences(
    client: VLMClient,
    goal: str,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    progress: bool = False,
) -> list[PreferenceAnswer | RewardError]:
    """:func:`ask_preference` for many pairs, each turn batched through ``client.ask_many``.

    The result keeps the order of ``pairs``; a pair whose request or reply failed holds the
    RewardError saying why (the caller decides whether to drop it).
    """
    from .vlm_client import VLMRequest

    first = preference_analysis_prompt(goal)
    second = preference_label_prompt(goal)
    analyses = client.ask_many([VLMRequest(first, (a, b)) for a, b in pairs], progress=progress)
    out: list[PreferenceAnswer | RewardError] = [
        a if isinstance(a, RewardError) else RewardError("not asked") for a in analyses
    ]
    todo = [i for i, a in enumerate(analyses) if isinstance(a, str)]
    requests = [VLMRequest(second, pairs[i], ((first, str(analyses[i])),)) for i in todo]
    for i, reply in zip(todo, client.ask_many(requests, progress=progress), strict=True):
        if isinstance(reply, RewardError):
            out[i] = reply
            continue
        try:
            out[i] = PreferenceAnswer(parse_preference_label(reply), str(analyses[i]), reply)
        except RewardError as err:
            out[i] = err
    return out


# ----- keypoints (KAGI) ------------------------------------------------------------------------
@dataclass(frozen=True)
class KeypointAnswer:
    """The marks a VLM chose: affordance keypoint(s) and the ordered waypoint sequence."""

    keypoints: tuple[int, ...]  # mark numbers where the robot should act on the object
    waypoints: tuple[int, ...]  # mark numbers to pass through, in order
    reply: str  # the raw reply they were parsed from


@dataclass(frozen=True)
class KeypointPrompt:
    """What :func:`keypoint_prompt` put into a prompt, read back by :func:`parse_keypoint_prompt`."""

    task: str  # the task sentence
    marks: tuple[tuple[int, float, float], ...]  # (number, u, v) pixel positions of the marks
    n_keypoints: int  # how many keypoint marks were asked for
    max_waypoints: int  # the longest waypoint sequence allowed


_MARK_LINE_RE = re.compile(r"^\s*mark (\d+): \(u=(-?[\d.]+), v=(-?[\d.]+)\)\s*$", re.MULTILINE)
_KP_TASK_RE = re.compile(r'^Task: "(.*?)"$', re.MULTILINE)
_KP_COUNTS_RE = re.compile(r"exactly (\d+) keypoint mark.*?at most (\d+) waypoint marks", re.DOTALL)


def keypoint_prompt(
    task: str, marks: Sequence[tuple[int, float, float]], n_keypoints: int, max_waypoints: int
) -> str:
    """The KAGI visual prompt for one marked-up camera image.

    ``marks``: (number, u, v) of each numbered mark drawn on the image (u to the right, v down,
    pixels from the top-left corner).
    """
    task = " ".join(str(task).split())
    if not task:
        msg = "the task sentence of a keypoint prompt is empty"
        raise RewardError(msg)
    if not marks:
        msg = "a keypoint prompt needs at least one mark"
        raise RewardError(msg)
    numbers = [int(m[0]) for m in marks]
    if len(set(numbers)) != len(numbers):
        msg = f"mark numbers must be unique, got {numbers}"
        raise RewardError(msg)
    if n_keypoints < 1 or max_waypoints < 1:
        msg = f"n_keypoints and max_waypoints must be >= 1, got {n_keypoints}, {max_waypoints}"
        raise RewardError(msg)
    listing = "\n".join(f"  mark {int(n)}: (u={u:.0f}, v={v:.0f})" for n, u, v in marks)
    return (
        f"The image is a robot's camera view of its workspace with {_KEYPOINT_MARK}. "
        "Each mark is a number at a pixel position (u to the right, v down from the top-left "
        "corner):\n"
        f"{listing}\n"
        f'Task: "{task}"\n'
        f"Pick exactly {n_keypoints} keypoint mark(s): where the robot's gripper should touch "
        f"or grasp the object to do the task. Then give at most {max_waypoints} waypoint marks, "
        "in order: the points the gripper and the object it moves should pass through, the last "
        "one where the task is complete. Use only the mark numbers listed above. Think briefly, "
        "then end your reply with one JSON object on its own line, in this form:\n"
        '{"keypoints": [<mark number>, ...], "waypoints": [<mark number>, ...]}'
    )


def is_keypoint_prompt(text: str) -> bool:
    """True for a prompt made by :func:`keypoint_prompt`."""
    return _KEYPOINT_MARK in text and '"keypoints"' in text


def parse_keypoint_prompt(text: str) -> KeypointPrompt:
    """Read task, marks and counts back from a :func:`keypoint_prompt` text (for the teacher)."""
    task = _KP_TASK_RE.search(text)
    counts = _KP_COUNTS_RE.search(text)
    marks = tuple((int(n), float(u), float(v)) for n, u, v in _MARK_LINE_RE.findall(text))
    if not is_keypoint_prompt(text) or task is None or counts is None or not marks:
        msg = f"not a keypoint prompt: {_excerpt(text)}"
        raise RewardError(msg)
    return KeypointPrompt(task.group(1), marks, int(counts.group(1)), int(counts.group(2)))


def _json_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for start in [m.start() for m in re.finditer(r"\{", text)]:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append({str(k).lower(): v for k, v in value.items()})
    return found


def _mark_list(value: Any, field: str, reply: str) -> tuple[int, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    out: list[int] = []
    for item in items:
        token = str(item).strip().lstrip("#").strip()
        if isinstance(item, bool) or not token.isdigit():
            msg = f"{field} entry {item!r} is not a mark number in VLM reply {_excerpt(reply)}"
            raise RewardError(msg)
        out.append(int(token))
    return tuple(out)


_LIST_RE = r"\s*[:=]\s*\[?\s*((?:#?\d+\s*(?:,|\band\b|\s)\s*)*#?\d+)"
_KEYPOINTS_RE = re.compile(r"\bkey\s*points?\b" + _LIST_RE, re.IGNORECASE)
_WAYPOINTS_RE = re.compile(r"\bway\s*points?\b" + _LIST_RE, re.IGNORECASE)


def _fallback_lists(text: str) -> tuple[str, str] | None:
    keys = _KEYPOINTS_RE.findall(text)
    ways = _WAYPOINTS_RE.findall(text)
    if not keys or not ways:
        return None
    return keys[-1], ways[-1]


def parse_keypoint_reply(reply: str, valid_marks: Sequence[int]) -> KeypointAnswer:
    """Keypoint and waypoint mark numbers from a VLM reply.

    Takes the last JSON object with ``keypoints`` and ``waypoints`` (code fences and text around
    it are fine), else a plain ``keypoints: 3, 5 waypoints: 3, 9`` form. Both lists must be
    non-empty and use only ``valid_marks``; anything else is a RewardError quoting the reply.
    """
    if not isinstance(reply, str):
        msg = f"VLM reply must be text, got {type(reply).__name__}"
        raise RewardError(msg)
    text = re.sub(r"```[a-zA-Z]*", " ", reply).replace("`", " ").replace("*", " ")
    objects = [o for o in _json_objects(text) if "keypoints" in o and "waypoints" in o]
    if objects:
        keypoints = _mark_list(objects[-1]["keypoints"], "keypoints", reply)
        waypoints = _mark_list(objects[-1]["waypoints"], "waypoints", reply)
    else:
        lists = _fallback_lists(text)
        if lists is None:
            msg = f"no keypoints/waypoints answer in VLM reply {_excerpt(reply)}"
            raise RewardError(msg)
        keypoints, waypoints = (tuple(int(n) for n in re.findall(r"\d+", s)) for s in lists)
    if not keypoints or not waypoints:
        msg = f"VLM reply names no keypoint or no waypoint mark: {_excerpt(reply)}"
        raise RewardError(msg)
    valid = {int(m) for m in valid_marks}
    unknown = sorted({m for m in keypoints + waypoints if m not in valid})
    if unknown:
        msg = f"VLM reply uses unknown marks {unknown} (valid: {sorted(valid)}): {_excerpt(reply)}"
        raise RewardError(msg)
    return KeypointAnswer(keypoints, waypoints, reply)
