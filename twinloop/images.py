"""ROS image encodings as numpy: one table for the live nodes and the rosbag importer, ROS-free.

``ENCODINGS`` maps a ``sensor_msgs/Image`` encoding to ``(dtype, channels)`` of one pixel.
twinloop writes colour as ``rgb8`` and depth as ``16UC1`` (mm) and reads every encoding listed;
``COLOR_ENCODINGS`` and ``DEPTH_ENCODINGS`` are the subsets accepted as colour and depth frames.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COLOR_ENCODINGS", "DEPTH_ENCODINGS", "ENCODINGS"]

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
