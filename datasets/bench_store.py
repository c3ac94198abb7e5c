"""Write/read throughput of the episode store for 640x480 camera frames.

    python -m twinloop.datasets.bench_store            # frames rendered from the twin
    python -m twinloop.datasets.bench_store --synthetic --steps 300 --dir /mnt/ssd

Streams frames through ``EpisodeWriter.append`` (what the recorder does), then reads the episode
back, and compares codecs on one 2-frame chunk. Numbers go to stdout (and --json).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main"]

log = logging.getLogger(__name__)


def twin_frames(n: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB and depth frames of a scripted push_cube episode."""
    from twinloop.sim2real.experts import make_expert
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import Twin, TwinConfig

    twin = Twin(TwinConfig(camera=CameraConfig(width=width, height=height), depth=True))
    try:
        obs = twin.reset(seed=0)
        expert = make_expert(twin, seed=0)
        rgb, depth = [obs.image], [obs.depth]
        while len(rgb) < n:
            res = twin.step(expert.act(twin.privileged_state()))
            rgb.append(res.observation.image)
            depth.append(res.observation.depth)
    finally:
        twin.close()
    return np.stack(rgb), np.stack(depth)


def synthetic_frames(n: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth moving gradients plus sensor noise (compresses about like a real camera)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            rgb[t, ..., c] = (x * (c + 1) // 5 + y // 3 + 4 * t) % 256
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-2, 3, rgb.shape), 0, 255).astype(np.uint8)
    depth = (600 + (x + y)[None] + np.arange(n)[:, None, None]).astype(np.uint16)
    return rgb, depth


def bench_stream(
    root: Path, rgb: np.ndarray, depth: np.ndarray, steps: int, cameras: int
) -> dict[str, Any]:
    """Append ``steps`` steps of ``cameras`` RGB frames (+ depth of the first) and low-dim keys."""
    from .store import EpisodeStore

    path = root / f"stream_{cameras}cam.zarr"
    n = len(rgb)
    lat = np.empty(steps)
    with EpisodeStore.create(path, fps=30, overwrite=True) as store:
        writer = store.begin_episode()
        t0 = time.perf_counter()
        for t in range(steps):
            step: dict[str, Any] = {f"image_cam{c}": rgb[(t + 7 * c) % n] for c in range(cameras)}
            step["depth_cam0"] = depth[t % n]
            step["joint_pos"] = np.zeros(9, np.float32)
            step["action"] = np.zeros(5, np.float32)
            step["timestamp"] = np.float64(t / 30.0)
            a = time.perf_counter()
            writer.append(step)
            lat[t] = time.perf_counter() - a
        writer.commit()
        wall = time.perf_counter() - t0
        raw = sum(store.array(k).nbytes for k in store.keys)
        rgb_raw = sum(store.array(k).nbytes for k in store.keys if k.startswith("image_"))
        rgb_stored = sum(
            store.array(k).nbytes_stored() for k in store.keys if k.startswith("image_")
        )
        t1 = time.perf_counter()
        ep = store.get_episode(0)
        read = time.perf_counter() - t1
    shutil.rmtree(path)
    return {
        "cameras": cameras,
        "steps": steps,
        "ms_per_step": 1e3 * wall / steps,
        "ms_per_rgb_frame": 1e3 * wall / (steps * cameras),  # all keys' cost, per RGB frame
        "write_MB_per_s": raw / wall / 1e6,
        "append_p50_ms": float(np.percentile(lat, 50) * 1e3),
        "append_p99_ms": float(np.percentile(lat, 99) * 1e3),
        "append_max_ms": float(lat.max() * 1e3),
        "rgb_compression_ratio": rgb_raw / rgb_stored,
        "read_MB_per_s": sum(v.nbytes for v in ep.values()) / read / 1e6,
        "max_rate_hz": steps / wall,
    }


def bench_codecs(rgb: np.ndarray) -> list[dict[str, Any]]:
    """Ratio and speed of candidate Blosc settings on 2-frame chunks."""
    from numcodecs import Blosc

    chunks = [np.ascontiguousarray(rgb[i : i + 2]) for i in range(0, len(rgb) - 1, 2)][:16]
    rows = []
    for cname, clevel, shuffle, label in [
        ("lz4", 5, Blosc.SHUFFLE, "lz4-5 byte shuffle (= none for uint8) [chosen]"),
        ("lz4", 5, Blosc.BITSHUFFLE, "lz4-5 bitshuffle"),
        ("lz4", 1, Blosc.NOSHUFFLE, "lz4-1"),
        ("zstd", 3, Blosc.NOSHUFFLE, "zstd-3"),
        ("zstd", 3, Blosc.BITSHUFFLE, "zstd-3 bitshuffle"),
    ]:
        codec = Blosc(cname=cname, clevel=clevel, shuffle=shuffle)
        t = time.perf_counter()
        encoded = [codec.encode(c) for c in chunks]
        enc = time.perf_counter() - t
        t = time.perf_counter()
        for e in encoded:
            codec.decode(e)
        dec = time.perf_counter() - t
        raw = sum(c.nbytes for c in chunks)
        rows.append(
            {
                "codec": label,
                "ratio": raw / sum(len(e) for e in encoded),
                "encode_MB_per_s": raw / enc / 1e6,
                "decode_MB_per_s": raw / dec / 1e6,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twinloop.datasets.bench_store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--steps", type=int, default=300, help="steps to stream (default 300)")
    parser.add_argument("--width", type=int, default=640, help="frame width")
    parser.add_argument("--height", type=int, default=480, help="frame height")
    parser.add_argument("--synthetic", action="store_true", help="synthetic frames, no twin")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    logging.basicConfig(level=logging.WARNING)
    n = min(args.steps, 60)
    if args.synthetic:
        rgb, depth = synthetic_frames(n, args.width, args.height)
        source = "synthetic"
    else:
        rgb, depth = twin_frames(n, args.width, args.height)
        source = "twin push_cube"
    root = Path(tempfile.mkdtemp(prefix="twinloop-bench-", dir=args.dir))
    try:
        stream = [bench_stream(root, rgb, depth, args.steps, c) for c in (1, 2)]
        codecs = bench_codecs(rgb)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    frames = f"{args.width}x{args.height} {source}"
    out = sys.stdout
    out.write(f"frames: {frames}\n")
    for r in stream:
        out.write(
            f"{r['cameras']} RGB camera(s) + depth + low-dim, {r['steps']} steps: "
            f"{r['ms_per_step']:.2f} ms/step ({r['ms_per_rgb_frame']:.2f} ms per RGB frame), "
            f"{r['write_MB_per_s']:.0f} MB/s raw, max {r['max_rate_hz']:.0f} Hz; "
            f"append p50 {r['append_p50_ms']:.2f} / p99 {r['append_p99_ms']:.2f} / "
            f"max {r['append_max_ms']:.1f} ms; RGB ratio {r['rgb_compression_ratio']:.1f}x; "
            f"read {r['read_MB_per_s']:.0f} MB/s\n"
        )
    for c in codecs:
        out.write(
            f"  {c['codec']:<48} ratio {c['ratio']:5.1f}x  encode {c['encode_MB_per_s']:6.0f} MB/s"
            f"  decode {c['decode_MB_per_s']:6.0f} MB/s\n"
        )
    if args.json:
        results = {"frames": frames, "stream": stream, "codecs": codecs}
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
