"""The OpenAI-compatible VLM client against httpx.MockTransport: format, retries, cache, secrets."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from twinloop.vlm_reward.answer_cache import AnswerCache, cache_key, image_digest
from twinloop.vlm_reward.errors import RewardError
from twinloop.vlm_reward.vlm_client import (
    VLMClient,
    VLMClientConfig,
    VLMRequest,
    encode_png_data_url,
)

SECRET = "sk-test-4f9a1c0ffee5ecret0123456789"
KEY_ENV = "TWINLOOP_TEST_VLM_KEY"


def ok(text: str) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    )


def image(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_client(
    handler: Callable[[httpx.Request], httpx.Response],
    sleeps: list[float] | None = None,
    **overrides: object,
) -> VLMClient:
    values: dict = {
        "base_url": "http://vlm.test/v1/",
        "model": "test-vlm",
        "api_key_env": KEY_ENV,
        "backoff_s": 0.01,
        "max_retries": 3,
    }
    values.update(overrides)
    sink = sleeps if sleeps is not None else []
    return VLMClient(
        VLMClientConfig(**values), transport=httpx.MockTransport(handler), sleep=sink.append
    )


def decode(url: str) -> np.ndarray:
    head, _, payload = url.partition(",")
    assert head == "data:image/png;base64"
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(payload), np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ----- request format --------------------------------------------------------------------------
def test_request_is_openai_chat_with_png_data_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok("the reply")

    a, b = image(0), image(1)
    with make_client(handler, temperature=0.2, max_tokens=64) as client:
        reply = client.ask("second question", [a, b], history=[("first question", "an answer")])
    assert reply == "the reply"
    (request,) = seen
    assert str(request.url) == "http://vlm.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    body = json.loads(request.content)
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("test-vlm", 0.2, 64)
    first, assistant, last = body["messages"]
    assert first["role"] == "user" and first["content"][0] == {
        "type": "text",
        "text": "first question",
    }
    urls = [p["image_url"]["url"] for p in first["content"][1:]]
    assert len(urls) == 2
    np.testing.assert_array_equal(decode(urls[0]), a)  # PNG is lossless, RGB order kept
    np.testing.assert_array_equal(decode(urls[1]), b)
    assert assistant == {"role": "assistant", "content": "an answer"}
    assert last == {"role": "user", "content": [{"type": "text", "text": "second question"}]}


def test_no_key_means_no_authorization_header(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return ok("fine")

    with caplog.at_level(logging.INFO, logger="twinloop.vlm_reward"):
        with make_client(handler) as client:
            assert client.ask("hello", [image(2)]) == "fine"
    assert "authorization" not in headers[0]
    assert f"no API key in ${KEY_ENV}" in caplog.text


def test_images_must_be_rgb_uint8() -> None:
    with pytest.raises(RewardError, match="uint8"):
        encode_png_data_url(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(RewardError, match=r"\(H, W, 3\)"):
        encode_png_data_url(np.zeros((8, 8), np.uint8))


def test_config_is_validated() -> None:
    with pytest.raises(RewardError, match="base_url"):
        VLMClientConfig("localhost:8000", "m")
    with pytest.raises(RewardError, match="max_concurrency"):
        VLMClientConfig("http://x/v1", "m", max_concurrency=0)
    with pytest.raises(RewardError, match="temperature"):
        VLMClientConfig("http://x/v1", "m", temperature=-1.0)


# ----- retries ---------------------------------------------------------------------------------
def test_retries_429_and_500_honouring_retry_after() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "slow down"}}),
        httpx.Response(500, json={"error": {"message": "oops"}}),
        ok("finally"),
    ]
    sleeps: list[float] = []
    with make_client(lambda r: answers.pop(0), sleeps, backoff_s=0.1) as client:
        assert client.ask("q") == "finally"
        stats = client.stats
    assert stats == {"requests": 3, "cache_hits": 0, "retries": 2, "failures": 0}
    assert sleeps[0] >= 3.0  # Retry-After wins over the shorter backoff
    assert 0.1 <= sleeps[1] <= 0.3  # second backoff: 0.1 * 2 * jitter in [0.5, 1.5)


def test_retry_after_is_capped_by_max_wait() -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "3600"}), ok("ok")]
    sleeps: list[float] = []
    with make_client(lambda r: answers.pop(0), sleeps, max_wait_s=2.0) as client:
        assert client.ask("q") == "ok"
    assert sleeps == [2.0]


def test_no_retry_on_400_and_the_server_message_is_named() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"error": {"message": "image too large"}})

    with make_client(handler) as client:
        with pytest.raises(RewardError, match=r"HTTP 400: image too large"):
            client.ask("q", [image(3)])
        assert client.stats["failures"] == 1
    assert len(calls) == 1


def test_timeouts_are_retried_then_reported() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("read timed out", request=request)

    sleeps: list[float] = []
    with make_client(handler, sleeps, max_retries=2, backoff_s=0.5) as client:
        with pytest.raises(RewardError, match="failed after 3 attempts: timed out"):
            client.ask("q")
        assert client.stats == {"requests": 3, "cache_hits": 0, "retries": 2, "failures": 1}
    assert len(calls) == 3
    assert 0.25 <= sleeps[0] < 0.75 and 0.5 <= sleeps[1] < 1.5  # exponential, with jitter


def test_connection_errors_are_retried() -> None:
    state = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        state["n"] += 1
        if state["n"] == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return ok("up again")

    with make_client(handler) as client:
        assert client.ask("q") == "up again"
        assert client.stats["retries"] == 1


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (httpx.Response(200, text="<html>proxy error</html>"), "non-JSON"),
        (httpx.Response(200, json={"choices": []}), "no choices"),
        (httpx.Response(200, json={"result": "hi"}), "no choices"),
        (
            httpx.Response(
                200, json={"choices": [{"message": {"content": None}, "finish_reason": "length"}]}
            ),
            "no text content.*length",
        ),
    ],
)
def test_garbage_responses_raise(response: httpx.Response, match: str) -> None:
    with make_client(lambda r: response) as client:
        with pytest.raises(RewardError, match=match):
            client.ask("q")


def test_content_as_a_list_of_parts_is_joined() -> None:
    parts = [{"type": "text", "text": "Answer: "}, {"type": "text", "text": "1"}]
    response = httpx.Response(200, json={"choices": [{"message": {"content": parts}}]})
    with make_client(lambda r: response) as client:
        assert client.ask("q") == "Answer: 1"


# ----- secrets ---------------------------------------------------------------------------------
def test_api_key_never_leaks_into_logs_errors_or_cache(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    script: list[Callable[[httpx.Request], httpx.Response]] = [
        # servers and proxies do echo keys back: in error bodies and in exception texts
        lambda r: httpx.Response(500, json={"error": {"message": f"bad key {SECRET}"}}),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError(f"refused for {SECRET}", request=r)),
        lambda r: httpx.Response(401, json={"error": {"message": f"Incorrect API key {SECRET}"}}),
        lambda r: httpx.Response(503, text=f"upstream said {SECRET}"),
        lambda r: httpx.Response(503, text=f"upstream said {SECRET}"),
        lambda r: ok("an answer"),
    ]
    errors: list[str] = []
    cache_dir = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG):
        with make_client(lambda r: script.pop(0)(r), max_retries=1, cache_dir=str(cache_dir)) as c:
            for _ in range(3):
                try:
                    c.ask("which image is better?", [image(4)])
                except RewardError as err:
                    errors.append(str(err))
                    errors.append(repr(err))
            assert c.ask("which image is better?", [image(4)]) == "an answer"
            assert c.ask("which image is better?", [image(4)]) == "an answer"  # from the cache
            assert c.stats["cache_hits"] == 1
    assert len(errors) == 6 and "401" in errors[2] and "<redacted>" in errors[2]
    assert "<redacted>" in caplog.text  # the retries were logged, redacted
    for text in [*errors, caplog.text]:
        assert SECRET not in text
    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert len(files) == 1
    assert SECRET not in files[0].read_text()
    assert json.loads(files[0].read_text())["reply"] == "an answer"


# ----- concurrency and order -------------------------------------------------------------------
def test_ask_many_honours_concurrency_and_keeps_order() -> None:
    lock = threading.Lock()
    live = {"now": 0, "max": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
        time.sleep(0.03)
        with lock:
            live["now"] -= 1
        prompt = json.loads(request.content)["messages"][-1]["content"][0]["text"]
        if prompt == "q5":
            return httpx.Response(400, json={"error": {"message": "refused q5"}})
        return ok(f"answer to {prompt}")

    requests = [VLMRequest(f"q{i}", (image(i),)) for i in range(12)]
    with make_client(handler, max_concurrency=3) as client:
        out = client.ask_many(requests)
    assert live["max"] == 3
    assert [o for i, o in enumerate(out) if i != 5] == [
        f"answer to q{i}" for i in range(12) if i != 5
    ]
    assert isinstance(out[5], RewardError) and "refused q5" in str(out[5])


# ----- cache -----------------------------------------------------------------------------------
def test_cache_hit_sends_no_second_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content)["messages"][-1]["content"][0]["text"])
        return ok(f"reply {len(calls)}")

    img = image(5)
    other = img.copy()
    other[0, 0, 0] ^= 1  # one bit differs: a different question
    with make_client(handler, cache_dir=str(tmp_path)) as client:
        assert client.ask("q", [img]) == "reply 1"
        assert client.ask("q", [img.copy()]) == "reply 1"
        assert client.ask("q", [other]) == "reply 2"
        assert client.ask("q", [img], history=[("earlier", "turn")]) == "reply 3"
        assert client.stats["cache_hits"] == 1 and client.stats["requests"] == 3
    with make_client(handler, cache_dir=str(tmp_path)) as again:  # persisted on disk
        assert again.ask("q", [img]) == "reply 1"
    with make_client(handler, cache_dir=str(tmp_path), model="other-vlm") as other_model:
        assert other_model.ask("q", [img]) == "reply 4"
    assert len(calls) == 4
    # a corrupt entry is a warned-about miss, and gets rewritten
    for path in tmp_path.rglob("*.json"):
        path.write_text("{not json")
    with caplog.at_level(logging.WARNING), make_client(handler, cache_dir=str(tmp_path)) as c:
        assert c.ask("q", [img]) == "reply 5"
        assert c.ask("q", [img]) == "reply 5"
    assert "unreadable VLM cache entry" in caplog.text


def test_cache_key_depends_on_every_part() -> None:
    base = cache_key("m", [("user", "q")], [image_digest(image(0))], {"temperature": 0.0})
    assert base == cache_key("m", [("user", "q")], [image_digest(image(0))], {"temperature": 0.0})
    assert base != cache_key("n", [("user", "q")], [image_digest(image(0))], {"temperature": 0.0})
    assert base != cache_key("m", [("user", "Q")], [image_digest(image(0))], {"temperature": 0.0})
    assert base != cache_key("m", [("user", "q")], [image_digest(image(1))], {"temperature": 0.0})
    assert base != cache_key("m", [("user", "q")], [image_digest(image(0))], {"temperature": 1.0})
    flat = image(0)
    assert image_digest(flat) != image_digest(flat.reshape(32, 24, 3))  # shape is hashed


def test_answer_cache_counts_and_atomic_layout(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "c")
    key = cache_key("m", [("user", "q")], [])
    assert cache.get(key) is None
    path = cache.put(key, "hi", model="m")
    assert path == tmp_path / "c" / key[:2] / f"{key}.json"
    assert cache.get(key) == "hi" and (cache.hits, cache.misses) == (1, 1) and len(cache) == 1
    assert not list(path.parent.glob("*.tmp"))
    entry = json.loads(path.read_text())
    assert set(entry) == {"format", "key", "model", "reply", "created"}
