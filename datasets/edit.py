"""Rewriting episode stores: copy episodes between stores, drop episodes, merge stores.

Never in place: the result is written to a new store (and, for :func:`drop_episodes` without
``out``, atomically swapped in). :class:`~.store.EpisodeStore` exposes these as its
``drop_episodes`` and ``merge`` methods.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import DatasetError
from .layout import _RESERVED_ATTRS
from .store import EpisodeStore

__all__ = ["copy_episodes", "drop_episodes", "merge"]

# The store's logger: these records keep the name they had when this code lived in store.py.
log = logging.getLogger(__name__.rpartition(".")[0] + ".store")


def copy_episodes(
    src: EpisodeStore, dest: EpisodeStore, indices: Sequence[int], *, progress: bool = False
) -> None:
    """Append episodes ``indices`` of ``src`` to ``dest`` (bounded memory, metadata kept)."""
    from tqdm import tqdm

    for i in tqdm(indices, desc=f"copy {src.path.name}", unit="episode", disable=not progress):
        meta = src.episode_meta(i)
        meta.pop("n_steps", None)
        writer = dest.begin_episode()
        try:
            for block in src.iter_episode_blocks(i):
                writer.extend(block)
            writer.commit(meta=meta, started=meta.get("started"))
        except BaseException:
            if dest._writer is writer:
                writer.discard()
            raise


def _empty_like(store: EpisodeStore, path: Path) -> EpisodeStore:
    """A new empty store at ``path`` with the attrs of ``store``."""
    return EpisodeStore.create(
        path,
        fps=store.fps,
        task=store._attrs.get("task", ""),
        robot_profile=store._attrs.get("robot_profile", ""),
        camera_intrinsics=store._attrs.get("camera_intrinsics") or None,
        nan_keys=store._attrs.get("nan_keys", ()),
        image_codec=store.image_codec,
        extra_attrs={k: v for k, v in store._attrs.items() if k not in _RESERVED_ATTRS},
    )


def drop_episodes(
    store: EpisodeStore,
    indices: Iterable[int],
    *,
    out: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> EpisodeStore:
    """Remove episodes by index, rewriting the store; see :meth:`EpisodeStore.drop_episodes`."""
    idx = list(indices)
    if not idx:
        msg = "drop_episodes needs at least one episode index (got none); nothing dropped"
        raise DatasetError(msg)
    norm = [store._index(i) for i in idx]
    if len(set(norm)) != len(norm):
        msg = f"duplicate episode indices in {idx}; nothing dropped"
        raise DatasetError(msg)
    keep = [i for i in range(store.n_episodes) if i not in set(norm)]
    if not keep:
        msg = f"that would drop all {store.n_episodes} episodes; delete the store instead"
        raise DatasetError(msg)
    if out is None:
        store._writable()
    if store._writer is not None:
        msg = "an episode writer is open; commit or discard it first"
        raise DatasetError(msg)
    target = Path(out) if out is not None else None
    if target is not None and target.exists():
        msg = f"{target} exists; drop_episodes never overwrites"
        raise DatasetError(msg)
    tmp = (
        target
        if target is not None
        else store.path.with_name(f".{store.path.name}.drop-{uuid.uuid4().hex[:8]}")
    )
    try:
        new = _empty_like(store, tmp)
        try:
            copy_episodes(store, new, keep, progress=progress)
        finally:
            new.close()
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target is not None:
        log.info(
            "%s: wrote %d of %d episodes to %s", store.path, len(keep), store.n_episodes, target
        )
        return EpisodeStore.open(target, mode="a")
    store._swap_in(tmp)
    log.info("%s: dropped episodes %s (%d left)", store.path, sorted(norm), len(keep))
    return store


def merge(
    cls: type[EpisodeStore],
    sources: Sequence[str | os.PathLike[str] | EpisodeStore],
    dest: str | os.PathLike[str],
    *,
    image_codec: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> EpisodeStore:
    """Concatenate the episodes of ``sources`` into a new ``cls`` store at ``dest``.

    See :meth:`EpisodeStore.merge`.
    """
    if not sources:
        msg = "merge needs at least one source store"
        raise DatasetError(msg)
    dest = Path(dest)
    opened: list[tuple[EpisodeStore, bool]] = []
    try:
        for src in sources:
            if isinstance(src, EpisodeStore):
                opened.append((src, False))
            else:
                if Path(src).resolve() == dest.resolve():
                    msg = f"merge destination {dest} is also a source"
                    raise DatasetError(msg)
                opened.append((cls.open(src, mode="r"), True))
        stores = [s for s, _ in opened]
        first = stores[0]
        fps = {s.fps for s in stores}
        if len(fps) > 1:
            msg = f"cannot merge stores with different fps: {sorted(fps)}"
            raise DatasetError(msg)
        profiles = {s._attrs.get("robot_profile", "") for s in stores} - {""}
        if len(profiles) > 1:
            msg = f"cannot merge stores of different robot profiles: {sorted(profiles)}"
            raise DatasetError(msg)
        intr: dict[str, Any] = {}
        for s in stores:
            for cam, k in (s._attrs.get("camera_intrinsics") or {}).items():
                if cam in intr and intr[cam] != k:
                    msg = f"cannot merge: camera {cam!r} has different intrinsics in {s.path}"
                    raise DatasetError(msg)
                intr[cam] = k
        tasks = {s._attrs.get("task", "") for s in stores}
        nan_keys = sorted({k for s in stores for k in s._attrs.get("nan_keys", ())})
        out = cls.create(
            dest,
            fps=first.fps,
            task=tasks.pop() if len(tasks) == 1 else "",
            robot_profile=profiles.pop() if profiles else "",
            camera_intrinsics=intr or None,
            nan_keys=nan_keys,
            image_codec=image_codec or first.image_codec,
            overwrite=overwrite,
            extra_attrs={"merged_from": [str(s.path) for s in stores]},
        )
        try:
            for s in stores:
                copy_episodes(s, out, list(range(s.n_episodes)), progress=progress)
        except BaseException:
            out.close()
            shutil.rmtree(dest, ignore_errors=True)
            raise
        log.info("merged %d stores into %s (%d episodes)", len(stores), dest, out.n_episodes)
        return out
    finally:
        for s, owned in opened:
            if owned:
                s.close()
