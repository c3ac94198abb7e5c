"""Streaming one episode into an :class:`~.store.EpisodeStore`: :class:`EpisodeWriter`.

Rows are written in whole chunks ahead of the commit and stay invisible to readers until the
store appends the episode's end index (see :mod:`.store` for the commit protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DatasetError
from .layout import _GROW_CHUNKS, _check_key_name, _now_iso, chunk_rows

if TYPE_CHECKING:
    from .store import EpisodeStore

__all__ = ["EpisodeWriter"]

# The store's logger: the writer's records keep the name they had when it lived in store.py.
log = logging.getLogger(__name__.rpartition(".")[0] + ".store")


class EpisodeWriter:
    """Streams one episode into the store: ``append`` steps, then ``commit`` or ``discard``.

    Steps are buffered per key and written in whole chunks, so memory stays at about one chunk
    per key (2 MB per camera) however long the episode. Rows written before the commit are
    invisible to readers and rolled back after a crash.
    """

    def __init__(self, store: EpisodeStore) -> None:
        self._store = store
        self._start = store.n_steps
        self._rows = 0  # rows appended (buffered or written)
        self._written: dict[str, int] = {}  # rows of each key already in the zarr array
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._chunks: dict[str, int] = {}
        self._started = _now_iso()
        self._open = True

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._open:
            if exc_type is None:
                log.warning("episode writer left without commit(); discarding the episode")
            self.discard()

    @property
    def n_steps(self) -> int:
        """Steps appended so far."""
        return self._rows

    @property
    def is_open(self) -> bool:
        return self._open

    def _check_open(self) -> None:
        if not self._open:
            msg = "this episode writer is closed (committed or discarded)"
            raise DatasetError(msg)

    def append(self, step: Mapping[str, Any]) -> None:
        """Add one step: key -> array of one step's shape (no time dimension)."""
        self._check_open()
        if not isinstance(step, Mapping) or not step:
            msg = "a step is a non-empty mapping of key -> array"
            raise DatasetError(msg)
        store = self._store
        if self._specs:
            if step.keys() != self._specs.keys():
                self._keys_mismatch(step.keys())
        else:
            for key in step:
                _check_key_name(key)
            store._check_keyset(step)
        known = self._specs or store._known_specs()
        rows = {k: store._normalize(k, v, leading=False, known=known) for k, v in step.items()}
        self._add_rows({k: v[None] for k, v in rows.items()}, 1)

    def extend(self, steps: Mapping[str, Any], *, _validated: bool = False) -> None:
        """Add a block of steps: key -> array with the time dimension first."""
        self._check_open()
        store = self._store
        if _validated:
            arrays = dict(steps)
        else:
            if not isinstance(steps, Mapping) or not steps:
                msg = "steps is a non-empty mapping of key -> array (time first)"
                raise DatasetError(msg)
            if self._specs and steps.keys() != self._specs.keys():
                self._keys_mismatch(steps.keys())
            for key in steps:
                _check_key_name(key)
            store._check_keyset(steps)
            known = self._specs or store._known_specs()
            arrays = {
                k: store._normalize(k, v, leading=True, known=known) for k, v in steps.items()
            }
            lengths = {k: v.shape[0] for k, v in arrays.items()}
            if len(set(lengths.values())) != 1:
                msg = f"all keys of a block need the same length, got {lengths}"
                raise DatasetError(msg)
        n = next(iter(arrays.values())).shape[0]
        if n:
            self._add_rows(arrays, n)

    def _keys_mismatch(self, keys: Iterable[str]) -> None:
        keys, have = set(keys), set(self._specs)
        msg = f"step keys differ from the episode's: missing {sorted(have - keys)}, unknown {sorted(keys - have)}"
        raise DatasetError(msg)

    def _add_rows(self, arrays: Mapping[str, np.ndarray], n: int) -> None:
        if not self._specs:
            self._specs = {k: (v.dtype, tuple(v.shape[1:])) for k, v in arrays.items()}
            self._chunks = {k: chunk_rows(s, d) for k, (d, s) in self._specs.items()}
            self._buffers = {k: [] for k in arrays}
            self._written = dict.fromkeys(arrays, 0)
        for k, v in arrays.items():
            self._buffers[k].append(v)
        self._rows += n
        try:
            self._flush(final=False)
        except OSError as err:
            self._fail(err)

    def _flush(self, *, final: bool) -> None:
        store = self._store
        if store.n_episodes == 0 and not any(self._written.values()):
            store._ensure_arrays(self._specs)
        end = self._start + self._rows
        for key, buf in self._buffers.items():
            if not buf:
                continue
            at = self._start + self._written[key]
            chunk = self._chunks[key]
            # Write up to the last chunk boundary (or everything when final).
            stop = end if final else (end // chunk) * chunk
            if stop <= at:
                continue
            block = buf[0] if len(buf) == 1 else np.concatenate(buf, axis=0)
            n = stop - at
            arr = store._arrays[key]
            if arr.shape[0] < stop:
                # Grow ahead (one metadata write per _GROW_CHUNKS chunks); commit trims.
                cap = stop if final else stop + chunk * _GROW_CHUNKS
                arr.resize((cap, *arr.shape[1:]))
            arr[at:stop] = block[:n]
            self._written[key] += n
            self._buffers[key] = [block[n:]] if n < len(block) else []

    def _fail(self, err: OSError) -> None:
        store = self._store
        self._rollback()
        msg = (
            f"{store.path}: writing the episode failed ({err}); the uncommitted episode was "
            f"discarded, the {store.n_episodes} committed episodes are intact"
        )
        raise DatasetError(msg) from err

    def _rollback(self) -> None:
        store = self._store
        self._open = False
        self._buffers = {}
        if store._writer is self:
            store._writer = None
        try:
            for arr in store._arrays.values():
                if arr.shape[0] > self._start:
                    arr.resize((self._start, *arr.shape[1:]))
        except OSError as err:
            log.warning(
                "%s: could not roll back the partial episode now (%s); it is rolled back on "
                "the next open",
                store.path,
                err,
            )

    def commit(self, meta: Mapping[str, Any] | None = None, *, started: str | None = None) -> int:
        """Write the buffered rows, then commit the episode; returns its index.

        ``meta``: task, success, operator, dropped_steps, started, duration_s and free-form
        extras (JSON); n_steps is always computed. An empty episode is a DatasetError and the
        writer stays open.
        """
        self._check_open()
        store = self._store
        meta_in = store._check_meta(meta)
        if self._rows == 0:
            msg = "cannot commit an empty episode (no steps appended); discard() it instead"
            raise DatasetError(msg)
        try:
            self._flush(final=True)
        except OSError as err:
            self._fail(err)
        stop = self._start + self._rows
        if store.n_steps != self._start:
            msg = "the store changed under this writer"
            raise DatasetError(msg)
        try:
            for arr in store._arrays.values():
                if arr.shape[0] != stop:
                    arr.resize((stop, *arr.shape[1:]))
        except OSError as err:
            self._fail(err)
        self._open = False
        store._writer = None
        try:
            return store._commit(self._start, stop, meta_in, started or self._started)
        except DatasetError:
            if store.n_steps == self._start:  # the end index did not make it: roll back rows
                self._rollback()
            raise

    def discard(self) -> None:
        """Drop this episode: buffered rows and rows already written (nothing is committed)."""
        if not self._open:
            return
        n = self._rows
        self._rollback()
        log.info("%s: discarded an uncommitted episode of %d steps", self._store.path, n)
