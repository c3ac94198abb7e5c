"""A simulated VLM teacher: a real OpenAI-compatible HTTP server that answers from ground truth.

Reward methods that query a VLM (RL-VLM-F preferences, KAGI keypoints) are tested end to end
against this server instead of a paid API: the same :class:`VLMClient`, the same HTTP requests,
the same prompts. The teacher recognises each image by the hash of its raw pixels
(:class:`FrameIndex`, built from a recorded twin dataset that holds the privileged state) and
answers from that state:

* preference analysis turn: a short description of each image from its progress;
* preference label turn: the image with higher true progress is better, ``-1`` when the progress
  differs by less than ``tie_threshold`` or an image is unknown, and the label flipped with
  probability ``error_rate`` (a seeded generator, like a noisy human or VLM labeler).

More answerers (the keypoint answerer) are passed in ``answerers=`` and asked first. For client
tests the teacher can demand an API key (HTTP 401 without it) and inject faults: HTTP status
codes, ``"garbage"`` (a 200 that is not JSON), ``"timeout"`` (no answer for ``fault_delay_s``)
and ``"drop"`` (the connection closes without a response), one per incoming request.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from .answer_cache import image_digest
from .errors import RewardError
from .prompts import goal_from_prompt, preference_stage

__all__ = [
    "FAULTS",
    "Answerer",
    "FrameIndex",
    "PreferenceAnswerer",
    "SimulatedTeacher",
    "decode_data_url",
]

log = logging.getLogger(__name__)

FAULTS = ("garbage", "timeout", "drop")  # fault names besides plain HTTP status codes


# ----- frames --------------------------------------------------------------------------------
class FrameIndex:
    """Ground truth by image: raw-pixel hash -> the recorded row (progress, success, priv_*...)."""

    def __init__(self, attrs: Mapping[str, Any] | None = None) -> None:
        self.attrs: dict[str, Any] = dict(attrs or {})  # store attrs (camera pose, task...)
        self._rows: dict[str, dict[str, Any]] = {}
        self.duplicates = 0  # frames whose pixels were already indexed (first row kept)

    @classmethod
    def from_store(
        cls,
        path: str | os.PathLike[str],
        *,
        image_key: str = "image_color",
        progress: bool = False,
    ) -> FrameIndex:
        """Index every frame of a recorded EpisodeStore (needs its ``progress`` ground truth)."""
        from tqdm.auto import tqdm
        from twinloop.datasets.store import EpisodeStore

        if not Path(path).exists():
            msg = f"dataset {path} does not exist (record one with record_twin_dataset)"
            raise RewardError(msg)
        with EpisodeStore.open(path) as store:
            missing = [k for k in (image_key, "progress") if k not in store.keys]
            if missing:
                msg = f"dataset {path} lacks {missing}; the teacher needs a recorded twin dataset"
                raise RewardError(msg)
            keys = [image_key, "progress"] + [
                k for k in store.keys if k == "success" or k == "ee_pose" or k.startswith("priv_")
            ]
            index = cls(store.attrs)
            for ep in tqdm(range(store.n_episodes), desc="indexing frames", disable=not progress):
                data = store.get_episode(ep, keys)
                for t, image in enumerate(data[image_key]):
                    row: dict[str, Any] = {"episode": ep, "step": t}
                    for key in keys[1:]:
                        value = data[key][t]
                        row[key] = value.item() if np.ndim(value) == 0 else np.asarray(value)
                    index.add(image, row)
        log.info("indexed %d distinct frames of %s", len(index), path)
        return index

    def add(self, image: np.ndarray, row: Mapping[str, Any]) -> str:
        """Index ``row`` under the pixels of ``image``; returns the digest (first row wins)."""
        digest = image_digest(np.asarray(image))
        if digest in self._rows:
            self.duplicates += 1
        else:
            self._rows[digest] = dict(row)
        return digest

    def lookup(self, image: np.ndarray) -> dict[str, Any] | None:
        """The row recorded with exactly these pixels, or None."""
        return self._rows.get(image_digest(np.asarray(image)))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, image: object) -> bool:
        return isinstance(image, np.ndarray) and self.lookup(image) is not None


# ----- answerers -----------------------------------------------------------------------------
@runtime_checkable
class Answerer(Protocol):
    """Answers one kind of prompt. ``prompt``: text of the last user turn; ``images``: every
    image of the conversation, in order. Called under the teacher's lock (``rng`` is shared)."""

    def matches(self, prompt: str) -> bool: ...

    def answer(
        self, prompt: str, images: list[np.ndarray], frames: FrameIndex, rng: np.random.Generator
    ) -> str: ...


def _progress_words(progress: float) -> str:
    if progress < 0.05:
        return "has barely started"
    if progress < 0.35:
        return "is at an early stage"
    if progress < 0.65:
        return "is about half done"
    if progress < 0.9:
        return "is mostly done"
    return "looks complete"


class PreferenceAnswerer:
    """The built-in RL-VLM-F answerer: higher true progress is better, with label noise."""

    def __init__(self, *, error_rate: float = 0.2, tie_threshold: float = 0.02) -> None:
        if not 0.0 <= error_rate <= 1.0:
            msg = f"error_rate must be in [0, 1], got {error_rate}"
            raise RewardError(msg)
        if tie_threshold < 0:
            msg = f"tie_threshold must be >= 0, got {tie_threshold}"
            raise RewardError(msg)
        self.error_rate = error_rate  # probability that a 0/1 label is flipped
        self.tie_threshold = tie_threshold  # |progress difference| below this answers -1
        self.stats = {"analyses": 0, "labels": 0, "flips": 0, "unsure": 0, "unknown_frames": 0}

    def matches(self, prompt: str) -> bool:
        return preference_stage(prompt) is not None

    def answer(
        self, prompt: str, images: list[np.ndarray], frames: FrameIndex, rng: np.random.Generator
    ) -> str:
        if len(images) != 2:
            msg = f"a preference question needs exactly 2 images, got {len(images)}"
            raise RewardError(msg)
        rows = [frames.lookup(image) for image in images]
        self.stats["unknown_frames"] += sum(r is None for r in rows)
        if preference_stage(prompt) == 1:
            self.stats["analyses"] += 1
            return self._analysis(prompt, rows)
        self.stats["labels"] += 1
        if rows[0] is None or rows[1] is None:
            self.stats["unsure"] += 1
            return "-1"
        delta = float(rows[1]["progress"]) - float(rows[0]["progress"])
        if abs(delta) < self.tie_threshold:
            self.stats["unsure"] += 1
            return "-1"
        label = int(delta > 0)
        if rng.random() < self.error_rate:
            label = 1 - label
            self.stats["flips"] += 1
        return str(label)

    @staticmethod
    def _analysis(prompt: str, rows: list[dict[str, Any] | None]) -> str:
        goal = goal_from_prompt(prompt) or "the task"
        lines = []
        for i, row in enumerate(rows, start=1):
            if row is None:
                lines.append(f"Image {i}: I cannot make out the scene clearly.")
                continue
            p = float(row["progress"])
            done = " The goal appears to be reached." if row.get("success") else ""
            lines.append(
                f"Image {i}: the robot working on '{goal}'; the task {_progress_words(p)} "
                f"(about {round(100 * p)} percent).{done}"
            )
        known = [float(r["progress"]) for r in rows if r is not None]
        if len(known) < 2:
            lines.append("I cannot compare the two images reliably.")
        elif abs(known[1] - known[0]) < 0.02:
            lines.append("There is no clear difference in how far the goal is achieved.")
        else:
            ahead = 2 if known[1] > known[0] else 1
            lines.append(f"Image {ahead} is further along in achieving the goal.")
        return "\n".join(lines)


# ----- the server ----------------------------------------------------------------------------
def decode_data_url(url: str) -> np.ndarray:
    """Pixels of a ``data:image/...;base64,`` URL as (H, W, 3) uint8 RGB (lossless for PNG)."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        msg = f"the teacher only accepts base64 image data URLs, got {url[:40]!r}..."
        raise RewardError(msg)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        msg = f"bad base64 image data: {err}"
        raise RewardError(msg) from err
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        msg = "image data could not be decoded"
        raise RewardError(msg)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _parse_chat(body: Any) -> tuple[str, list[np.ndarray]]:
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        msg = "request has no 'messages' list"
        raise RewardError(msg)
    images: list[np.ndarray] = []
    prompt: str | None = None
    for message in messages:
        if not isinstance(message, dict):
            msg = "every message must be an object"
            raise RewardError(msg)
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        texts: list[str] = []
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                ref = part.get("image_url")
                images.append(
                    decode_data_url(str(ref.get("url", "") if isinstance(ref, dict) else ref))
                )
        if message.get("role") == "user":
            prompt = "\n".join(texts)
    if prompt is None:
        msg = "request has no user message"
        raise RewardError(msg)
    return prompt, images


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    teacher: SimulatedTeacher


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.teacher._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.teacher._handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("teacher %s: " + format, self.address_string(), *args)


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: Any,
    headers: Mapping[str, str] | None = None,
) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    is_json = not isinstance(payload, bytes)
    handler.send_header("Content-Type", "application/json" if is_json else "text/html")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}


class SimulatedTeacher:
    """An OpenAI-compatible chat-completions server on localhost answering from a FrameIndex.

    ``error_rate``: probability of flipping a preference label. ``seed``: the label noise.
    ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get HTTP 401.
    ``answerers``: extra answerers, consulted (``matches``) before the built-in preference one.
    ``port``: 0 picks a free port. ``faults``: how to answer the next chat requests (HTTP status
    codes, "garbage", "timeout", "drop"); more can be queued with :meth:`add_faults`.
    """

    def __init__(
        self,
        frames: FrameIndex,
        *,
        error_rate: float = 0.2,
        seed: int = 0,
        api_key: str | None = None,
        answerers: Sequence[Answerer] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "twinloop-teacher",
        tie_threshold: float = 0.02,
        faults: Iterable[int | str] = (),
        fault_delay_s: float = 5.0,
    ) -> None:
        self.frames = frames
        self.model = model
        self.host = host
        self.port = port
        self.preferences = PreferenceAnswerer(error_rate=error_rate, tie_threshold=tie_threshold)
        self.answerers: tuple[Answerer, ...] = (*answerers, self.preferences)
        self.fault_delay_s = fault_delay_s  # how long a "timeout" fault keeps the client waiting
        self._api_key = api_key or None
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._faults: deque[int | str] = deque()
        self.add_faults(*faults)
        self._counts = {"queries": 0, "faults": 0, "unauthorized": 0, "errors": 0}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ----- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        """Start serving in a daemon thread; returns the base URL ``http://HOST:PORT/v1``."""
        if self._server is not None:
            return self.base_url
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as err:
            msg = f"the teacher cannot listen on {self.host}:{self.port}: {err}"
            raise RewardError(msg) from err
        server.teacher = self
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, name="vlm-teacher", daemon=True
        )
        self._thread.start()
        log.info("simulated teacher serving at %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> SimulatedTeacher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            msg = "the teacher is not running; call start() first"
            raise RewardError(msg)
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def stats(self) -> dict[str, int]:
        """queries, faults, unauthorized, errors + the preference answerer's counters."""
        with self._lock:
            return {**self._counts, **self.preferences.stats}

    def add_faults(self, *faults: int | str) -> None:
        """Answer the next chat requests with these faults, one per request, in order."""
        for fault in faults:
            if not (isinstance(fault, int) and 400 <= fault <= 599) and fault not in FAULTS:
                msg = f"unknown fault {fault!r}: use an HTTP error status or one of {FAULTS}"
                raise RewardError(msg)
        with self._lock:
            self._faults.extend(faults)

    # ----- requests ----------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        path = handler.path.split("?")[0].rstrip("/")
        if self._api_key is not None and not self._authorized(handler):
            with self._lock:
                self._counts["unauthorized"] += 1
            _send(handler, 401, _error(401, "missing or incorrect API key", "invalid_api_key"))
            return
        if method == "GET" and path == "/v1/models":
            created = int(time.time())
            models = [
                {"id": self.model, "object": "model", "created": created, "owned_by": "twinloop"}
            ]
            _send(handler, 200, {"object": "list", "data": models})
            return
        if method != "POST" or path != "/v1/chat/completions":
            _send(handler, 404, _error(404, f"no route {method} {handler.path}", "not_found"))
            return
        if self._fault(handler):
            return
        try:
            status, payload = 200, self._complete(json.loads(raw or b"null"))
        except (RewardError, ValueError) as err:
            status, payload = 400, _error(400, str(err))
        except Exception as err:  # an answerer bug: answer 500 like a real server, keep serving
            log.exception("teacher answerer failed")
            status, payload = 500, _error(500, f"internal error: {err}", "server_error")
        if status != 200:
            with self._lock:
                self._counts["errors"] += 1
        _send(handler, status, payload)

    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        given = handler.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self._api_key}".encode())

    def _fault(self, handler: BaseHTTPRequestHandler) -> bool:
        with self._lock:
            if not self._faults:
                return False
            fault = self._faults.popleft()
            self._counts["faults"] += 1
        log.debug("teacher injects fault %r", fault)
        if fault == "garbage":
            _send(handler, 200, b"<html><body>upstream hiccup</body></html>")
        elif fault == "timeout":
            self._stopping.wait(self.fault_delay_s)
            handler.close_connection = True
        elif fault == "drop":
            handler.close_connection = True
        else:
            headers = {"Retry-After": "0"} if fault in (429, 503) else None
            _send(handler, int(fault), _error(int(fault), f"injected fault {fault}"), headers)
        return True

    def _complete(self, body: Any) -> dict[str, Any]:
        prompt, images = _parse_chat(body)
        with self._lock:
            self._counts["queries"] += 1
            answerer = next((a for a in self.answerers if a.matches(prompt)), None)
            if answerer is None:
                msg = "the simulated teacher only answers preference and keypoint prompts"
                raise RewardError(msg)
            reply = answerer.answer(prompt, images, self.frames, self._rng)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": max(1, len(reply) // 4),
                "total_tokens": len(prompt) // 4 + max(1, len(reply) // 4),
            },
        }
