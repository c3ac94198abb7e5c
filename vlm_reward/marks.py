"""Visual prompting for KAGI: numbered candidate marks drawn on a camera image.

A VLM cannot name 3D points, but it can name numbered marks (Set-of-Mark prompting): we draw
candidate points on the image, list their positions in the prompt, and the model answers with
mark numbers that :mod:`.keypoints` lifts to 3D with the aligned depth image.

Candidates, in numbering order:

* object marks: the inner point (deep inside, near the centroid, so its depth is clean) of every
  mid-sized region left when the image is cut along colour edges and depth discontinuities
  (cubes, discs, drawer fronts, rods), and of thin structures that stand in front of their
  surroundings in depth (a black top-hat of the depth image: handles, fingers);
* ring marks: a few circles of marks around each small object, so a waypoint next to an object
  (behind a cube on its push line, a handle pulled out) has a mark near it;
* grid marks: a regular grid over the pixels with depth, where no mark is near yet.

With depth, no mark sits on a pixel without a depth return, so every mark can be lifted.

Frames smaller than ``draw_height`` are upscaled by an integer factor before the labels are
drawn, so a 320x240 twin frame gives the same legible 640x480 picture as a RealSense frame.
Segmentation sizes (region areas, the top-hat kernel) are in frame pixels; layout sizes (label
radius, spacing, rings, grid) are in drawn pixels. :class:`Mark` positions are frame pixels;
:meth:`MarkedImage.drawn` gives them in the marked image, for the prompt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from .errors import RewardError

__all__ = [
    "Mark",
    "MarkConfig",
    "MarkedImage",
    "draw_marks",
    "draw_scale",
    "mark_image",
    "propose_marks",
    "to_drawn",
]

log = logging.getLogger(__name__)

ELONGATION = 3.0  # a region this many times longer than wide also gets marks along its axis


class Mark(NamedTuple):
    """One numbered candidate point, in frame pixels (pixel centres at integers)."""

    number: int  # the label drawn on the image and named by the VLM
    u: int  # column, to the right
    v: int  # row, down


@dataclass(frozen=True)
class MarkConfig:
    # layout, in drawn pixels
    draw_height: int = 480  # upscale smaller frames by an integer factor to this height; 0: never
    radius: int = 8  # label disc radius
    min_separation: int = 18  # a candidate closer than this to an earlier mark is dropped
    grid_spacing: int = 64  # between grid marks; 0 draws no grid
    ring_radii: tuple[int, ...] = (28, 56)  # circles of marks around small objects; () for none
    ring_directions: int = 8  # marks per circle (evenly spaced directions)
    max_marks: int = 99  # total cap, so labels stay two-digit
    # candidates, in frame pixels
    object_marks: bool = True  # add object-centred candidates (regions, thin structures, rings)
    max_object_marks: int = 24  # keep at most this many object marks (largest first)
    ring_max_fraction: float = 0.01  # rings only around objects smaller than this image share
    min_region_area: int = 12  # smaller regions are noise
    max_region_fraction: float = 0.06  # regions larger than this image share are surfaces
    depth_jump: float = 0.03  # relative depth step between neighbours that counts as an edge
    thin_kernel: int = 11  # structures thinner than this in front of their surroundings
    canny_low: int = 40  # colour edge thresholds (cv2.Canny)
    canny_high: int = 100

    def __post_init__(self) -> None:
        if self.draw_height < 0 or not 3 <= self.radius <= 40:
            msg = f"need draw_height >= 0 and radius in [3, 40], got {self.draw_height}, {self.radius}"
            raise RewardError(msg)
        least = max(2 * self.radius, self.min_separation)
        if self.grid_spacing < 0 or (0 < self.grid_spacing < least):
            msg = f"grid_spacing must be 0 (no grid) or >= {least} (2 * radius, min_separation), got {self.grid_spacing}"
            raise RewardError(msg)
        if not self.object_marks and self.grid_spacing == 0:
            msg = "no mark source: enable object_marks or set grid_spacing > 0"
            raise RewardError(msg)
        if any(r <= 0 for r in self.ring_radii) or self.ring_directions < 1:
            msg = f"ring_radii must be positive and ring_directions >= 1, got {self.ring_radii}, {self.ring_directions}"
            raise RewardError(msg)
        if self.max_object_marks < 0 or self.max_marks < 1 or self.min_separation < 0:
            msg = "max_object_marks and min_separation must be >= 0, max_marks >= 1"
            raise RewardError(msg)
        if not (0.0 < self.max_region_fraction <= 1.0 and 0.0 <= self.ring_max_fraction <= 1.0):
            msg = "max_region_fraction must be in (0, 1] and ring_max_fraction in [0, 1]"
            raise RewardError(msg)
        if self.min_region_area < 1 or not 0.0 < self.depth_jump < 1.0:
            msg = "min_region_area must be >= 1 and depth_jump in (0, 1)"
            raise RewardError(msg)
        if self.thin_kernel < 3 or self.thin_kernel % 2 == 0:
            msg = f"thin_kernel must be an odd number >= 3, got {self.thin_kernel}"
            raise RewardError(msg)
        if not 0 <= self.canny_low <= self.canny_high:
            msg = f"need 0 <= canny_low <= canny_high, got {self.canny_low}, {self.canny_high}"
            raise RewardError(msg)


@dataclass(frozen=True)
class MarkedImage:
    """The (upscaled) image with the marks drawn on it and the marks themselves."""

    image: np.ndarray  # (scale * H, scale * W, 3) uint8 with the labels drawn
    marks: tuple[Mark, ...]  # numbered 1..N, in frame pixels
    scale: int = 1  # drawn pixels per frame pixel

    def drawn(self) -> tuple[tuple[int, float, float], ...]:
        """(number, u, v) of each mark in the marked image's pixels (what the prompt lists)."""
        return tuple((m.number, *to_drawn(m.u, m.v, self.scale)) for m in self.marks)


def to_drawn(u: float, v: float, scale: int) -> tuple[float, float]:
    """Frame pixel -> marked-image pixel (the centre of the scale x scale block)."""
    return u * scale + (scale - 1) / 2, v * scale + (scale - 1) / 2


def draw_scale(height: int, draw_height: int) -> int:
    """The integer upscale factor that brings ``height`` to at least ``draw_height``."""
    return max(1, math.ceil(draw_height / height)) if draw_height else 1


def _check_inputs(image: np.ndarray, depth: np.ndarray | None) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        msg = f"image must be an (H, W, 3) array, got shape {getattr(image, 'shape', None)}"
        raise RewardError(msg)
    if image.dtype != np.uint8:
        msg = f"image must be uint8, got {image.dtype}"
        raise RewardError(msg)
    if depth is not None and np.shape(depth) != image.shape[:2]:
        msg = f"depth {np.shape(depth)} is not aligned to the image {image.shape[:2]}"
        raise RewardError(msg)


def _depth_edges(depth: np.ndarray, jump: float) -> np.ndarray:
    """Pixels next to a relative depth step larger than ``jump`` (or next to a missing return)."""
    d = depth.astype(np.float32)
    edges = np.zeros(d.shape, dtype=bool)
    rows = np.abs(d[1:] - d[:-1]) > jump * np.maximum(d[1:], d[:-1])
    cols = np.abs(d[:, 1:] - d[:, :-1]) > jump * np.maximum(d[:, 1:], d[:, :-1])
    edges[1:] |= rows
    edges[:-1] |= rows
    edges[:, 1:] |= cols
    edges[:, :-1] |= cols
    return edges


def _inner_point(mask: np.ndarray) -> tuple[int, int]:
    """A pixel of ``mask`` deep inside it and near its centroid (the middle of a long rod)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    inner = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    vs, us = np.nonzero(inner >= 0.6 * inner.max())
    cv, cu = np.nonzero(mask)
    j = int(np.argmin((us - cu.mean()) ** 2 + (vs - cv.mean()) ** 2))
    return int(us[j]), int(vs[j])


def _axis_points(mask: np.ndarray, step: float, elongation: float) -> list[tuple[int, int]]:
    """Pixels of ``mask`` every ``step`` along its long axis, outwards from the middle, when it
    is at least ``elongation`` times longer than wide (a rod gets marks along its length)."""
    vs, us = np.nonzero(mask)
    pts = np.stack([us, vs], axis=1).astype(float)
    centre = pts.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov((pts - centre).T) + 1e-6 * np.eye(2))
    if evals[1] < elongation**2 * evals[0]:
        return []
    axis = evecs[:, 1]
    along = (pts - centre) @ axis
    forward = np.arange(step, along.max() + 1e-9, step)
    backward = -np.arange(step, -along.min() + 1e-9, step)
    out = []
    for t in sorted(np.concatenate([forward, backward]), key=abs):
        j = int(np.argmin(((pts - (centre + t * axis)) ** 2).sum(axis=1)))
        out.append((int(pts[j, 0]), int(pts[j, 1])))
    return out


def _components(
    mask: np.ndarray, min_area: int, max_area: float, step: float
) -> list[tuple[int, list[tuple[int, int]]]]:
    """(area, points) of each connected component of ``mask`` in the size range: its inner
    point first, then points along its long axis if it is elongated."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    out = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if not min_area <= area <= max_area:
            continue
        x, y, w, h = (int(stats[i, k]) for k in range(4))
        blob = labels[y : y + h, x : x + w] == i
        points = [_inner_point(blob), *_axis_points(blob, step, ELONGATION)]
        out.append((area, [(x + u, y + v) for u, v in points]))
    return out


def _object_candidates(
    image: np.ndarray, depth: np.ndarray | None, cfg: MarkConfig, step: float
) -> list[tuple[int, list[tuple[int, int]]]]:
    """(area, points) of object-centred candidates, largest first (see :func:`_components`)."""
    edges = cv2.Canny(image, cfg.canny_low, cfg.canny_high) > 0
    valid = np.ones(image.shape[:2], dtype=bool)
    if depth is not None:
        edges |= _depth_edges(depth, cfg.depth_jump)
        valid = depth > 0
    edges = cv2.dilate(edges.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    max_area = cfg.max_region_fraction * edges.size
    found = _components(~edges & valid, cfg.min_region_area, max_area, step)
    if depth is not None:  # thin structures in front of their surroundings: black top-hat
        d = np.where(valid, depth, depth.max() if valid.any() else 0).astype(np.float32)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.thin_kernel,) * 2)
        thin = (cv2.morphologyEx(d, cv2.MORPH_CLOSE, kernel) - d > cfg.depth_jump * d) & valid
        found += _components(thin, cfg.min_region_area, max_area, step)
    return sorted(found, key=lambda c: -c[0])


class _Layout:
    """Marks placed so far (frame pixels) with the spacing rules."""

    def __init__(self, shape: tuple[int, int], depth: np.ndarray | None, cap: int) -> None:
        self.h, self.w = shape
        self.depth = depth
        self.cap = cap
        self.points: list[tuple[int, int]] = []

    def try_add(self, u: float, v: float, min_dist: float) -> bool:
        col, row = round(u), round(v)
        if len(self.points) >= self.cap or not (0 <= col < self.w and 0 <= row < self.h):
            return False
        if self.depth is not None and self.depth[row, col] == 0:
            return False
        if any((col - a) ** 2 + (row - b) ** 2 < min_dist**2 for a, b in self.points):
            return False
        self.points.append((col, row))
        return True


def propose_marks(
    image: np.ndarray, depth: np.ndarray | None = None, config: MarkConfig | None = None
) -> tuple[Mark, ...]:
    """Candidate marks for ``image`` (+ aligned ``depth`` in mm, 0 = no return), numbered 1..N
    in frame pixels: object marks, rings around small objects, then the grid."""
    cfg = config or MarkConfig()
    _check_inputs(image, depth)
    scale = draw_scale(image.shape[0], cfg.draw_height)
    sep = cfg.min_separation / scale
    layout = _Layout(image.shape[:2], depth, cfg.max_marks)
    ring_centres: list[tuple[int, int]] = []
    if cfg.object_marks:
        ring_area = cfg.ring_max_fraction * image.shape[0] * image.shape[1]
        for area, points in _object_candidates(image, depth, cfg, step=sep * 1.2):
            for i, (u, v) in enumerate(points):
                if len(layout.points) >= cfg.max_object_marks:
                    break
                if layout.try_add(u, v, sep) and i == 0 and area <= ring_area:
                    ring_centres.append((u, v))
        angles = 2 * np.pi * (np.arange(cfg.ring_directions) + 0.5) / cfg.ring_directions
        for radius in cfg.ring_radii:
            for cu, cv in ring_centres:
                for a in angles:
                    r = radius / scale
                    layout.try_add(cu + r * math.cos(a), cv + r * math.sin(a), sep)
    if cfg.grid_spacing:
        step = cfg.grid_spacing / scale
        cover = max(sep, step / 2)
        for gv in np.arange(step / 2, image.shape[0], step):
            for gu in np.arange(step / 2, image.shape[1], step):
                layout.try_add(float(gu), float(gv), cover)
    if len(layout.points) >= cfg.max_marks:
        log.debug("mark cap %d reached; later candidates are left out", cfg.max_marks)
    if not layout.points:
        msg = "no candidate marks on this image (no depth returns, or no edges/regions found)"
        raise RewardError(msg)
    return tuple(Mark(i + 1, u, v) for i, (u, v) in enumerate(layout.points))


def draw_marks(
    image: np.ndarray, marks: Sequence[Mark], *, scale: int = 1, radius: int = 8
) -> np.ndarray:
    """``image`` upscaled by ``scale`` with each mark drawn as a white disc with a black outline
    and its number inside (``radius`` in drawn pixels)."""
    _check_inputs(image, None)
    if scale < 1:
        msg = f"scale must be >= 1, got {scale}"
        raise RewardError(msg)
    out = image.copy()
    if scale > 1:
        out = cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    out = np.ascontiguousarray(out)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for number, u, v in marks:
        du, dv = to_drawn(u, v, scale)
        centre = (round(du), round(dv))
        text = str(number)
        fs = radius / (18.0 if len(text) < 3 else 24.0)
        (tw, th), _ = cv2.getTextSize(text, font, fs, 1)
        cv2.circle(out, centre, radius, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, centre, radius, (0, 0, 0), 1, cv2.LINE_AA)
        org = (centre[0] - tw // 2, centre[1] + th // 2)
        cv2.putText(out, text, org, font, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def mark_image(
    image: np.ndarray, depth: np.ndarray | None = None, config: MarkConfig | None = None
) -> MarkedImage:
    """Propose marks for ``image`` and draw them: the visual prompt of KAGI."""
    cfg = config or MarkConfig()
    marks = propose_marks(image, depth, cfg)
    scale = draw_scale(image.shape[0], cfg.draw_height)
    return MarkedImage(draw_marks(image, marks, scale=scale, radius=cfg.radius), marks, scale)
