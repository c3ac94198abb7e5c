"""ROS image encodings as numpy: one table for the live nodes and the rosbag importer, ROS-free.

``ENCODINGS`` maps a ``sensor_msgs/Image`` encoding to ``(dtype, channels)`` of one pixel.
twinloop writes colour as ``rgb8`` and depth as ``16UC1`` (mm) and reads every encoding listed;
``COLOR_ENCODINGS`` and ``DEPTH_ENCODINGS`` are the subsets accepted as colour and depth frames.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import TwinloopError

__all__ = ["COLOR_ENCODINGS", "DEPTH_ENCODINGS", "ENCODINGS", "decode_pixels", "pixels_to_rgb"]

_HOST_BIG_ENDIAN = sys.byteorder == "big"

# encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
COLOR_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    k: ENCODINGS[k] for k in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1")
}
DEPTH_ENCODINGS: dict[str, tuple[np.dtype, int]] = {k: ENCODINGS[k] for k in ("16UC1", "mono16")}


def decode_pixels(
    msg: Any,
    *,
    encodings: Mapping[str, tuple[np.dtype, int]] = ENCODINGS,
    kind: str = "",
    exact_size: bool = False,
) -> np.ndarray:
    """``(H, W, C)`` pixels of a ``sensor_msgs/Image``-like object (rclpy or rosbags message).

    Row padding (``step`` larger than a row) and byte order are honoured. Every disagreement
    between encoding, size, step and data is a TwinloopError naming it; with ``exact_size`` a
    buffer longer than ``step * height`` is one too.
    """
    enc = str(msg.encoding)
    spec = encodings.get(enc)
    if spec is None:
        what = f"{kind} image" if kind else "image"
        msg_ = f"unsupported {what} encoding {enc!r}. Supported: {sorted(encodings)}"
        raise TwinloopError(msg_)
    dtype, channels = spec
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        msg_ = f"image has no pixels: {width}x{height}"
        raise TwinloopError(msg_)
    row = width * channels * dtype.itemsize
    if step < row:
        msg_ = (
            f"image step {step} is smaller than a row of {width} {enc} pixels ({row} bytes): "
            f"step {step} disagrees with encoding {enc} and width {width}"
        )
        raise TwinloopError(msg_)
    buf = _bytes(msg.data)
    if buf.size < step * height:
        msg_ = (
            f"image data truncated: has {buf.size} bytes, {enc} {width}x{height} with step "
            f"{step} needs {step * height}"
        )
        raise TwinloopError(msg_)
    if exact_size and buf.size > step * height:
        msg_ = (
            f"image data has {buf.size} bytes but step {step} x height {height} is "
            f"{step * height}: size and step disagree"
        )
        raise TwinloopError(msg_)
    rows = buf[: step * height].reshape(height, step)[:, :row]
    out = np.ascontiguousarray(rows).view(dtype)
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != _HOST_BIG_ENDIAN:
        out = out.byteswap()
    return out.reshape((height, width, channels))


def _bytes(data: Any) -> np.ndarray:
    """The image buffer as uint8 without a copy where possible (bytes, array.array, ndarray)."""
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).ravel()
    if isinstance(data, bytes | bytearray | memoryview | array.array):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).ravel()


def pixels_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB from ``(H, W, C)`` pixels of an 8-bit colour or mono encoding."""
    if encoding == "rgb8":
        return pixels
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[..., :3])
    if encoding in ("mono8", "8UC1"):
        return np.ascontiguousarray(np.repeat(pixels[..., :1], 3, axis=2))
    msg = f"cannot turn a {encoding} image into RGB"
    raise TwinloopError(msg)
