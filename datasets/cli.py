"""CLI subcommands of ``twinloop dataset``: info, check, view, merge, drop-episodes.

Heavy imports (zarr, PyAV, matplotlib) stay inside the command functions so ``twinloop --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "parse_episodes"]


def _out(text: str) -> None:
    """User-facing output of the CLI (library code logs instead)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def parse_episodes(text: str) -> list[int]:
    """``"1,3,5-7"`` -> [1, 3, 5, 6, 7] (DatasetError on anything else)."""
    from .errors import DatasetError

    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep and lo:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            msg = f"bad episode list {text!r}: use indices and ranges like 1,3,5-7"
            raise DatasetError(msg) from None
    if not out:
        msg = f"episode list {text!r} names no episodes"
        raise DatasetError(msg)
    return out


# ----- info / check ----------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .check import store_info
    from .store import EpisodeStore

    with EpisodeStore.open(args.path, mode="r") as store:
        info = store_info(store)
    if args.json:
        _out(json.dumps(info, indent=2))
        return 0
    rate = info["success_rate"]
    lengths = info["episode_length"]
    _out(f"store        {info['path']} (schema {info['schema_version']})")
    _out(
        f"episodes     {info['episodes']} ({info['steps']} steps, length "
        f"{lengths['min']}/{lengths['mean']:.1f}/{lengths['max']} min/mean/max)"
    )
    _out(f"fps          {info['fps']:g}   duration {info['duration_s']:.1f} s")
    _out(
        f"task         {info['task']!r}"
        + (f"  (episodes: {info['tasks']})" if len(info["tasks"]) > 1 else "")
    )
    _out(
        f"robot        {info['robot_profile'] or '-'}   cameras {', '.join(info['cameras']) or '-'}"
    )
    success = (
        f"{rate:.0%} ({info['successes']}/{info['judged_episodes']} judged episodes)"
        if rate is not None
        else "-"
    )
    _out(f"success      {success}")
    _out(f"dropped      {info['dropped_steps']} steps")
    _out(f"stored       {info['stored_bytes'] / 1e6:.1f} MB")
    _out(f"{'key':<20} {'shape':<22} {'dtype':<8} {'chunks':<22} ratio")
    for key, k in info["keys"].items():
        ratio = f"{k['compression_ratio']:.2f}" if k["compression_ratio"] else "-"
        _out(
            f"{key:<20} {tuple(k['shape'])!s:<22} {k['dtype']:<8} "
            f"{tuple(k['chunks'])!s:<22} {ratio}"
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .check import check_store

    with tqdm(unit="B", unit_scale=True, desc="check", disable=args.quiet) as bar:
        report = check_store(args.path, decode_all=not args.quick, progress=bar.update)
    for note in report.notes:
        _out(f"note: {note}")
    for problem in report.problems:
        _out(f"PROBLEM: {problem}")
    if report.ok:
        _out(f"ok: {report.path} ({report.n_episodes} episodes, {report.n_steps} steps)")
        return 0
    _out(f"{len(report.problems)} problem(s) in {report.path}")
    return 1


# ----- view ------------------------------------------------------------------------------------
def _depth_rgb(depth: Any) -> Any:
    import numpy as np

    d = depth.astype(np.float32)
    valid = d > 0
    hi = float(np.percentile(d[valid], 99)) if valid.any() else 1.0
    g = np.clip(d / max(hi, 1.0) * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def cmd_view(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm
    from twinloop.sim2real.sheet import contact_sheet

    from .errors import DatasetError
    from .store import EpisodeStore

    if args.frames < 1:
        msg = f"--frames must be >= 1, got {args.frames}"
        raise DatasetError(msg)
    out = Path(args.out)
    with EpisodeStore.open(args.path, mode="r") as store:
        cams = [k for k in store.keys if k.startswith("image_")]
        cams += [k for k in store.keys if k.startswith("depth_")]  # colour rows first
        if args.camera:
            wanted = [
                c if c.startswith(("image_", "depth_")) else f"image_{c}" for c in args.camera
            ]
            missing = sorted(set(wanted) - set(cams))
            if missing:
                msg = f"no camera key(s) {missing}; the store has {cams}"
                raise DatasetError(msg)
            cams = wanted
        if not cams:
            msg = f"{args.path} holds no image_* or depth_* keys to view"
            raise DatasetError(msg)
        episodes = parse_episodes(args.episodes) if args.episodes else list(range(store.n_episodes))
        for i in episodes:
            store.episode_slice(i)  # validates the index before any work
        out.mkdir(parents=True, exist_ok=True)
        import matplotlib.image

        for i in tqdm(episodes, desc="episodes", unit="episode"):
            sl = store.episode_slice(i)
            idx = np.unique(np.linspace(sl.start, sl.stop - 1, args.frames).round().astype(int))
            rows = []
            for cam in cams:
                frames = store.array(cam).get_orthogonal_selection((idx,))
                rows.append([_depth_rgb(f) if cam.startswith("depth_") else f for f in frames])
            shapes = {r[0].shape for r in rows}
            if len(shapes) > 1:  # cameras of different sizes: one sheet each
                for cam, row in zip(cams, rows, strict=True):
                    matplotlib.image.imsave(
                        out / f"episode_{i:04d}_{cam}.png", contact_sheet([row])
                    )
            else:
                matplotlib.image.imsave(out / f"episode_{i:04d}.png", contact_sheet(rows))
            if args.mp4:
                for cam in cams:
                    _write_mp4(store, i, cam, out / f"episode_{i:04d}_{cam}.mp4")
    _out(f"wrote {len(episodes)} episode view(s) to {out}")
    return 0


def _write_mp4(store: Any, episode: int, key: str, path: Path) -> None:
    from fractions import Fraction

    import av

    fps = Fraction(store.fps).limit_denominator(1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps
        )
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        first = True
        for block in store.iter_episode_blocks(episode, keys=[key], block_bytes=32 * 1024 * 1024):
            frames = block[key]
            if key.startswith("depth_"):
                frames = [_depth_rgb(f) for f in frames]
            for frame in frames:
                if first:
                    # yuv420p needs even sizes: crop a trailing odd row/column.
                    stream.height, stream.width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
                    first = False
                vf = av.VideoFrame.from_ndarray(
                    frame[: stream.height, : stream.width], format="rgb24"
                )
                for packet in stream.encode(vf):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ----- merge / drop ----------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    from .store import EpisodeStore

    with EpisodeStore.merge(
        args.sources,
        args.out,
        image_codec=args.image_codec,
        overwrite=args.overwrite,
        progress=True,
    ) as st:
        _out(
            f"merged {len(args.sources)} stores into {st.path}: {st.n_episodes} episodes, {st.n_steps} steps"
        )
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    from .store import EpisodeStore

    indices = parse_episodes(args.episodes)
    with EpisodeStore.open(args.path, mode="r" if args.out else "a") as store:
        before = store.n_episodes
        result = store.drop_episodes(indices, out=args.out, progress=True)
        try:
            _out(
                f"dropped {len(indices)} of {before} episodes: {result.path} holds "
                f"{result.n_episodes} episodes, {result.n_steps} steps"
            )
        finally:
            if result is not store:
                result.close()
    return 0


# ----- parser ----------------------------------------------------------------------------------
def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this module's ``twinloop dataset ...`` subcommands on ``sub``."""
    p = sub.add_parser("info", help="summary of an episode store: episodes, keys, success, drops")
    p.add_argument("path", help="episode store (zarr directory)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "check", help="verify every invariant of a store (exit 0 ok, 1 with each problem listed)"
    )
    p.add_argument("path", help="episode store (zarr directory)")
    p.add_argument(
        "--quick", action="store_true", help="skip decoding image chunks (float keys still scanned)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("view", help="contact sheet PNG (and --mp4 video) per episode")
    p.add_argument("path", help="episode store (zarr directory)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--episodes", default=None, help="e.g. 0,2,5-7 (default: all)")
    p.add_argument(
        "--camera",
        action="append",
        default=[],
        help="camera name or key, e.g. color or depth_color (repeatable; default: all)",
    )
    p.add_argument("--frames", type=int, default=8, help="frames per episode on the sheet")
    p.add_argument("--mp4", action="store_true", help="also write an mp4 per episode and camera")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("merge", help="concatenate stores into a new one")
    p.add_argument("sources", nargs="+", help="source stores")
    p.add_argument("--out", required=True, help="destination store (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination store")
    p.add_argument(
        "--image-codec",
        default=None,
        choices=["lz4", "lz4-bitshuffle", "zstd"],
        help="recompress frames with this codec (default: the first source's)",
    )
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser(
        "drop-episodes", help="remove episodes (rewrites to a new store, then swaps atomically)"
    )
    p.add_argument("path", help="episode store (zarr directory)")
    p.add_argument("--episodes", required=True, help="episodes to drop, e.g. 1,3,5-7")
    p.add_argument("--out", default=None, help="write the kept episodes here; PATH stays unchanged")
    p.set_defaults(func=cmd_drop)
