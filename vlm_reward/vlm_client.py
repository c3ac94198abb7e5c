"""A client for OpenAI-compatible chat-completions APIs that accept images (VLMs).

One request is one user turn (text + images as ``data:image/png;base64,...`` parts), optionally
after earlier turns of the same conversation; the images always ride in the first user turn.
Base URLs that work (the client appends ``/chat/completions``):

* OpenAI (GPT-4o class): ``https://api.openai.com/v1``, key in ``OPENAI_API_KEY``.
* Google Gemini, OpenAI-compatible endpoint:
  ``https://generativelanguage.googleapis.com/v1beta/openai/``, key in e.g. ``GEMINI_API_KEY``
  (set ``api_key_env="GEMINI_API_KEY"``), model e.g. ``gemini-2.0-flash``.
* vLLM (``vllm serve Qwen/Qwen2.5-VL-7B-Instruct``): ``http://localhost:8000/v1``.
* Ollama (``ollama serve``, a vision model such as ``llava`` or ``qwen2.5vl``):
  ``http://localhost:11434/v1``.
* The simulated teacher of :mod:`twinloop.vlm_reward.teacher`: the URL its ``start()`` returns.

Local servers need no key: when the environment variable named by ``api_key_env`` is unset the
client sends no ``Authorization`` header and says so once in the log. The key itself is never
logged, cached or put into an exception message (every such text passes through a redactor).

Transient failures (timeouts, connection errors, HTTP 429/500/502/503/504) are retried with
exponential backoff and jitter, waiting at least what a ``Retry-After`` header asks; other HTTP
errors and malformed responses raise :class:`RewardError` at once. With ``cache_dir`` set,
answers are looked up in an :class:`AnswerCache` before any request and stored after a success.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import httpx
import numpy as np

from .answer_cache import AnswerCache, cache_key, image_digest
from .errors import RewardError

__all__ = ["RETRY_STATUS", "VLMClient", "VLMClientConfig", "VLMRequest", "encode_png_data_url"]

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # HTTP statuses worth another try


@dataclass(frozen=True)
class VLMClientConfig:
    base_url: str  # API root, e.g. "https://api.openai.com/v1" (see the module docstring)
    model: str  # model name sent with every request, e.g. "gpt-4o" or "gemini-2.0-flash"
    api_key_env: str = "OPENAI_API_KEY"  # env var holding the key; unset = no Authorization
    timeout_s: float = 60.0  # per-request timeout (connect, read, write)
    max_retries: int = 4  # extra attempts after a transient failure (0 = try once)
    backoff_s: float = 1.0  # first retry waits about this long; doubles each retry (+ jitter)
    max_wait_s: float = 60.0  # cap on any single wait between retries (backoff or Retry-After)
    max_concurrency: int = 4  # most requests in flight at once (ask_many threads, any caller)
    cache_dir: str = ""  # directory of the on-disk answer cache; "" = no cache
    temperature: float = 0.0  # sampling temperature (0 = as deterministic as the server allows)
    max_tokens: int = 512  # longest reply, in tokens

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            msg = f"base_url must start with http:// or https://, got {self.base_url!r}"
            raise RewardError(msg)
        if not self.model.strip():
            msg = "model must name the VLM to ask (e.g. 'gpt-4o')"
            raise RewardError(msg)
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_wait_s < 0:
            msg = (
                "timeout_s must be > 0 and backoff_s, max_wait_s >= 0, got "
                f"{self.timeout_s}, {self.backoff_s}, {self.max_wait_s}"
            )
            raise RewardError(msg)
        if self.max_retries < 0 or self.max_concurrency < 1 or self.max_tokens < 1:
            msg = (
                "max_retries must be >= 0, max_concurrency and max_tokens >= 1, got "
                f"{self.max_retries}, {self.max_concurrency}, {self.max_tokens}"
            )
            raise RewardError(msg)
        if not 0.0 <= self.temperature <= 2.0:
            msg = f"temperature must be in [0, 2], got {self.temperature}"
            raise RewardError(msg)


@dataclass(frozen=True)
class VLMRequest:
    """One question for :meth:`VLMClient.ask_many` (the arguments of :meth:`VLMClient.ask`)."""

    prompt: str  # text of the new user turn
    images: Sequence[np.ndarray] = ()  # (H, W, 3) uint8 RGB, shown in the first user turn
    history: Sequence[tuple[str, str]] = ()  # earlier (user text, assistant reply) turns


def encode_png_data_url(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 RGB image as a lossless ``data:image/png;base64,...`` URL."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        msg = f"VLM images must be uint8 numpy arrays, got {getattr(image, 'dtype', type(image))}"
        raise RewardError(msg)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        msg = f"VLM images must be (H, W, 3) RGB, got shape {image.shape}"
        raise RewardError(msg)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        msg = f"could not PNG-encode an image of shape {image.shape}"
        raise RewardError(msg)
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


class _Retryable(Exception):
    """A failed attempt worth retrying; ``wait_s`` is the server's Retry-After, if any."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text[:300].split()) or "(empty body)"
    if isinstance(body, list) and body and isinstance(body[0], dict):  # Gemini wraps it in a list
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:500]
    return str(error or body)[:500]


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers return a list of typed parts
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        texts = [p for p in parts if isinstance(p, str)]
        return "".join(texts) if texts else None
    return None


class VLMClient:
    """Ask an OpenAI-compatible VLM questions about images; retries, caching, redaction.

    ``transport``: an httpx transport to use instead of the network (tests pass
    ``httpx.MockTransport``). ``sleep``: the function that waits between retries.
    """

    def __init__(
        self,
        config: VLMClientConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        else:
            log.info(
                "no API key in $%s: sending requests without Authorization "
                "(fine for local servers)",
                config.api_key_env,
            )
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            transport=transport,
            limits=httpx.Limits(max_connections=config.max_concurrency),
        )
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.cache = AnswerCache(config.cache_dir) if config.cache_dir else None
        self._stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    # ----- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLMClient({self._url!r}, model={self.config.model!r})"

    @property
    def stats(self) -> dict[str, int]:
        """requests (HTTP attempts sent), cache_hits, retries, failures (asks that raised)."""
        with self._lock:
            return dict(self._stats)

    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "<redacted>") if self._key else text

    # ----- asking ------------------------------------------------------------------------------
    def ask(
        self,
        prompt: str,
        images: Sequence[np.ndarray] = (),
        *,
        history: Sequence[tuple[str, str]] = (),
    ) -> str:
        """The model's reply to ``prompt`` (after ``history``), with ``images`` in turn one."""
        try:
            return self._ask(prompt, images, history)
        except RewardError as err:
            self._count("failures")
            raise RewardError(self._redact(str(err))) from None

    def ask_many(
        self, requests: Sequence[VLMRequest], *, progress: bool = False
    ) -> list[str | RewardError]:
        """Answers in the order of ``requests``; a failed one holds its RewardError.

        At most ``config.max_concurrency`` requests run at once; ``progress`` shows a tqdm bar.
        """
        if not requests:
            return []
        from tqdm.auto import tqdm

        def one(req: VLMRequest) -> str | RewardError:
            try:
                return self.ask(req.prompt, req.images, history=req.history)
            except RewardError as err:
                return err

        workers = min(self.config.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlm") as pool:
            results = pool.map(one, requests)
            bar = tqdm(results, total=len(requests), desc="VLM queries", disable=not progress)
            return list(bar)

    def _messages(
        self, prompt: str, images: Sequence[np.ndarray], history: Sequence[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        turns = [*history, (prompt, None)]
        parts = [
            {"type": "image_url", "image_url": {"url": encode_png_data_url(im)}} for im in images
        ]
        messages: list[dict[str, Any]] = []
        for i, (user, reply) in enumerate(turns):
            content = [{"type": "text", "text": str(user)}, *(parts if i == 0 else [])]
            messages.append({"role": "user", "content": content})
            if reply is not None:
                messages.append({"role": "assistant", "content": str(reply)})
        return messages

    def _ask(
        self, prompt: str, images: Sequence[np.ndarray], history: Sequence[tuple[str, str]]
    ) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            msg = "a VLM prompt must be non-empty text"
            raise RewardError(msg)
        cfg = self.config
        params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
        key = ""
        if self.cache is not None:
            turns = [t for u, a in history for t in (("user", u), ("assistant", a))]
            key = cache_key(
                cfg.model, [*turns, ("user", prompt)], [image_digest(im) for im in images], params
            )
            cached = self.cache.get(key)
            if cached is not None:
                self._count("cache_hits")
                return cached
        body = {"model": cfg.model, "messages": self._messages(prompt, images, history), **params}
        reply = self._post_with_retries(body)
        if self.cache is not None:
            try:
                self.cache.put(key, reply, model=cfg.model)
            except OSError as err:  # a full disk must not lose an answer that was paid for
                log.warning("could not write the VLM answer cache: %s", err)
        return reply

    def _post_with_retries(self, body: dict[str, Any]) -> str:
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            try:
                return self._post(body)
            except _Retryable as err:
                reason = self._redact(str(err))
                if attempt == cfg.max_retries:
                    msg = (
                        f"VLM request to {self._url} failed after {attempt + 1} attempts: {reason}"
                    )
                    raise RewardError(msg) from None
                backoff = cfg.backoff_s * 2**attempt * (0.5 + self._rng.random())
                wait = min(cfg.max_wait_s, max(backoff, err.wait_s or 0.0))
                log.warning(
                    "VLM request failed (%s); retry %d/%d in %.2f s",
                    reason,
                    attempt + 1,
                    cfg.max_retries,
                    wait,
                )
                self._count("retries")
                self._sleep(wait)
        msg = "unreachable: the retry loop always returns or raises"
        raise RewardError(msg)

    def _post(self, body: dict[str, Any]) -> str:
        with self._slots:
            self._count("requests")
            try:
                response = self._http.post(self._url, json=body)
            except httpx.TimeoutException as err:
                msg = f"timed out after {self.config.timeout_s} s ({type(err).__name__})"
                raise _Retryable(msg) from None
            except httpx.TransportError as err:
                msg = f"connection error {type(err).__name__}: {err}"
                raise _Retryable(msg) from None
        if response.status_code in RETRY_STATUS:
            msg = f"HTTP {response.status_code}: {_error_message(response)}"
            raise _Retryable(msg, _retry_after(response.headers.get("retry-after")))
        if response.status_code != 200:
            msg = (
                f"VLM request to {self._url} was refused with HTTP {response.status_code}: "
                f"{_error_message(response)}"
            )
            raise RewardError(msg)
        return self._reply_text(response)

    def _reply_text(self, response: httpx.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            msg = f"VLM server sent a non-JSON response: {response.text[:200]!r}"
            raise RewardError(msg) from None
        try:
            choice = data["choices"][0]
            text = _content_text(choice["message"]["content"])
        except (KeyError, IndexError, TypeError):
            msg = f"VLM response has no choices[0].message.content: {str(data)[:300]}"
            raise RewardError(msg) from None
        if text is None:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            msg = f"VLM response has no text content (finish_reason {reason!r})"
            raise RewardError(msg)
        return text
