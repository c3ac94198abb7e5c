"""An on-disk cache of VLM answers, so a relabeling run never pays twice for the same question.

The key is the sha256 of the model name, the whole conversation text (earlier turns included),
the generation settings and a digest of every image's raw pixels (shape, dtype and bytes, not an
encoded PNG, so encoder versions do not change keys). Each entry is one small JSON file in a
two-level sharded directory, written atomically (temporary file + ``os.replace``). An entry holds
the model, the key, the reply and a timestamp, never credentials. A corrupt entry is ignored
with a warning and treated as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RewardError

__all__ = ["AnswerCache", "cache_key", "image_digest"]

log = logging.getLogger(__name__)

FORMAT = "twinloop.answer/1"  # the "format" field of an entry; bump on an incompatible change


def image_digest(image: np.ndarray) -> str:
    """sha256 hex digest of an image's raw pixels (dtype, shape and C-order bytes)."""
    array = np.ascontiguousarray(image)
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}|{array.shape}|".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def cache_key(
    model: str,
    conversation: Sequence[tuple[str, str]],
    image_digests: Sequence[str],
    params: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of one request: sha256 over model, (role, text) turns, images and params."""
    payload = {
        "model": model,
        "turns": [[role, text] for role, text in conversation],
        "images": list(image_digests),
        "params": dict(params or {}),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    """Replies on disk under ``directory/<key[:2]>/<key>.json``; thread-safe counters."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = f"cannot create the VLM answer cache directory {self.directory}: {err}"
            raise RewardError(msg) from err
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def path_of(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached reply of ``key``, or None (missing or unreadable entries are misses)."""
        path = self.path_of(key)
        reply: str | None = None
        if path.is_file():
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                if entry.get("format") == FORMAT and entry.get("key") == key:
                    reply = entry["reply"] if isinstance(entry.get("reply"), str) else None
                if reply is None:
                    log.warning("ignoring a malformed VLM cache entry %s", path)
            except (OSError, ValueError, AttributeError) as err:
                log.warning("ignoring an unreadable VLM cache entry %s: %s", path, err)
        with self._lock:
            if reply is None:
                self.misses += 1
            else:
                self.hits += 1
        return reply

    def put(self, key: str, reply: str, *, model: str) -> Path:
        """Store ``reply`` under ``key`` atomically (a reader sees the old entry or the new one)."""
        path = self.path_of(key)
        entry = {
            "format": FORMAT,
            "key": key,  # sha256 of model + conversation + image digests + params
            "model": model,
            "reply": reply,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.json"))

    def __repr__(self) -> str:
        return f"AnswerCache({str(self.directory)!r}, hits={self.hits}, misses={self.misses})"
