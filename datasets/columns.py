"""Set one per-row data column (say a relabeled ``reward``) of an episode store, losing nothing.

* :func:`copy_with_column` writes a new store: a copy of the source (every episode, its
  metadata and the store attrs) with ``data/<key>`` added or replaced.
* :func:`set_column` changes a store in place, touching no other key: the new column is written
  to a temporary array inside the store directory and renamed over ``data/<key>`` (an atomic
  exchange when the key exists), so a crash leaves either the old column or the new one.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np

from .errors import DatasetError
from .layout import _ARRAY_CONFIG, _check_key_name, _compressor, _exchange_paths, chunk_rows
from .store import EpisodeStore

__all__ = ["copy_with_column", "set_column"]

log = logging.getLogger(__name__)

_TMP_PREFIX = ".column-"  # temporary column arrays inside a store directory


def _checked_values(store: EpisodeStore, key: str, values: Any) -> np.ndarray:
    """``values`` as one row per step of ``store``, cast like the store casts appended data."""
    _check_key_name(key)
    arr = np.asarray(values)
    if arr.ndim < 1 or arr.shape[0] != store.n_steps:
        msg = f"column {key!r} needs {store.n_steps} rows (one per step), got shape {arr.shape}"
        raise DatasetError(msg)
    if store.n_steps == 0:
        msg = f"{store.path} holds no episodes; there is nothing to set {key!r} on"
        raise DatasetError(msg)
    known = {k: s for k, s in store._known_specs().items() if k != key}
    return store._normalize(key, arr, leading=True, known=known)


def copy_with_column(
    src: str | os.PathLike[str] | EpisodeStore,
    dest: str | os.PathLike[str],
    key: str,
    values: Any,
    *,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Copy store ``src`` to a new store ``dest`` with ``data/<key>`` set to ``values``.

    ``values``: one row per step of ``src`` (episodes concatenated). ``attrs``: extra store
    attrs for the copy (say, where the column came from). ``dest`` must not exist unless
    ``overwrite`` (which only replaces a store). On any error the partial copy is removed.
    """
    from tqdm import tqdm

    from .edit import _empty_like

    dest = Path(dest)
    owned = not isinstance(src, EpisodeStore)
    store = EpisodeStore.open(src, mode="r") if not isinstance(src, EpisodeStore) else src
    try:
        if dest.resolve() == store.path.resolve():
            msg = f"destination {dest} is the source store; use set_column to change it in place"
            raise DatasetError(msg)
        column = _checked_values(store, key, values)
        if dest.exists():
            if not overwrite:
                msg = f"{dest} exists; pass overwrite=True to replace it"
                raise DatasetError(msg)
            EpisodeStore.open(dest, mode="r").close()  # refuse to remove what is not a store
            shutil.rmtree(dest)
        new = _empty_like(store, dest)
        try:
            if attrs:
                new.update_attrs(**dict(attrs))
            keys = [k for k in store.keys if k != key]
            episodes = range(store.n_episodes)
            for i in tqdm(episodes, desc=f"copy {store.path.name}", disable=not progress):
                meta = store.episode_meta(i)
                meta.pop("n_steps", None)
                row = store.episode_slice(i).start
                with new.begin_episode() as writer:
                    for block in store.iter_episode_blocks(i, keys=keys):
                        n = len(next(iter(block.values())))
                        writer.extend({**block, key: column[row : row + n]})
                        row += n
                    writer.commit(meta=meta, started=meta.get("started"))
        except BaseException:
            new.close()
            shutil.rmtree(dest, ignore_errors=True)
            raise
        new.close()
    finally:
        if owned:
            store.close()
    log.info("wrote %s: a copy of %s with column %r", dest, store.path, key)
    return dest


def set_column(
    store: EpisodeStore, key: str, values: Any, *, attrs: Mapping[str, Any] | None = None
) -> None:
    """Add or replace ``data/<key>`` of ``store`` (open with mode="a") in place.

    No other key is read or written. The column is complete on disk before it becomes visible
    (directory rename); ``attrs`` are written after it.
    """
    import zarr

    store._writable()
    if store._writer is not None:
        msg = "an episode writer is open; commit or discard it before setting a column"
        raise DatasetError(msg)
    column = _checked_values(store, key, values)
    step_shape = column.shape[1:]
    tmp = store.path / f"{_TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}"
    target = store.path / "data" / key
    try:
        arr = zarr.create_array(
            str(tmp),
            shape=column.shape,
            dtype=column.dtype,
            chunks=(chunk_rows(step_shape, column.dtype), *step_shape),
            fill_value=False if column.dtype.kind == "b" else 0,
            compressors=_compressor(step_shape, column.dtype, store.image_codec),
            config=cast(Any, _ARRAY_CONFIG),
            zarr_format=3,
        )
        arr[...] = column
        if target.exists():
            if not _exchange_paths(tmp, target):
                old = tmp.with_name(tmp.name + "-old")
                os.rename(target, old)
                os.rename(tmp, target)
                tmp = old
            shutil.rmtree(tmp)  # now the old column
        else:
            os.rename(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"{store.path}: could not write column {key!r}: {err}"
        raise DatasetError(msg) from err
    store._group = zarr.open_group(str(store.path), mode="r+")
    store._load()
    if attrs:
        store.update_attrs(**dict(attrs))
    log.info("%s: set column %r in place (%d rows)", store.path, key, len(column))
