"""Camera pose calibration: where the camera sits relative to the arm base, and into the twin.

The arm shows a marker (or its tool centre point) at N >= 6 poses spread over the workspace; its
3-D position in the base frame comes from /twinloop/ee_pose, its pixel from the colour image.
With the camera's intrinsics (camera_info) a perspective-n-point fit gives the camera pose:

1. RANSAC (``cv2.solvePnPRansac``, EPnP samples) separates gross outliers (a mis-clicked pixel),
2. SQPnP on the inliers, then Levenberg-Marquardt (``cv2.solvePnPRefineLM``) minimises the
   reprojection error,
3. the fit is refused (:class:`TwinError`, naming the problem) for too few points, NaN, pixels off
   the image, points that are collinear or bunched together, points behind the fitted camera,
   too many outliers, or a reprojection error above ``max_error_px``.

The result is the camera-to-base transform in OpenCV axes (x right, y down, z forward), the
convention of :meth:`Twin.camera_pose` and of realsense-ros' ``camera_color_optical_frame``.
:func:`save_calibration` writes it as YAML/JSON; :func:`load_camera_config` turns that file into
the twin's :class:`CameraConfig` (position + orientation quaternion), so
``Twin(TwinConfig(camera=load_camera_config("calib.yaml"))).camera_pose()`` is the calibrated pose.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import mujoco
import numpy as np
import yaml

from .errors import TwinError
from .physics import CameraIntrinsics
from .scene import CameraConfig

if TYPE_CHECKING:
    from .twin import Twin

__all__ = [
    "SCHEMA",
    "CalibrationConfig",
    "CameraCalibration",
    "calibrate_camera",
    "camera_config_from_calibration",
    "load_calibration",
    "load_camera_config",
    "load_correspondences",
    "load_intrinsics",
    "pose_error",
    "project_points",
    "save_calibration",
    "save_correspondences",
    "twin_correspondences",
]

log = logging.getLogger(__name__)

SCHEMA = "twinloop.camera_calibration/1"
_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")  # the ones OpenCV's PnP understands


@dataclass(frozen=True)
class CalibrationConfig:
    """How the pose is fitted and when a fit is refused."""

    min_points: int = 6  # fewer correspondences are refused (PnP needs 4; 6+ to see outliers)
    max_error_px: float = 2.0  # refuse when any point used in the fit reprojects further, px
    ransac: bool = True  # separate gross outliers (mis-clicks) before the least-squares fit
    ransac_threshold_px: float = 8.0  # a point further than this from the RANSAC pose is an outlier
    max_outlier_fraction: float = 0.25  # refuse when RANSAC drops more than this share
    min_spread_m: float = 0.05  # RMS extent of the points along their main axis, at least, m
    collinear_ratio: float = 0.05  # 2nd / 1st principal extent below this: points are collinear

    def __post_init__(self) -> None:
        if self.min_points < 4:
            msg = f"min_points must be >= 4 (PnP needs 4 points), got {self.min_points}"
            raise TwinError(msg)
        if not self.max_error_px > 0.0 or not self.ransac_threshold_px > 0.0:
            msg = (
                f"max_error_px and ransac_threshold_px must be positive, got "
                f"{self.max_error_px} and {self.ransac_threshold_px}"
            )
            raise TwinError(msg)
        if not 0.0 <= self.max_outlier_fraction < 1.0:
            msg = f"max_outlier_fraction must be in [0, 1), got {self.max_outlier_fraction}"
            raise TwinError(msg)
        if not self.min_spread_m >= 0.0 or not 0.0 <= self.collinear_ratio < 1.0:
            msg = "min_spread_m must be >= 0 and collinear_ratio in [0, 1)"
            raise TwinError(msg)


@dataclass(frozen=True)
class CameraCalibration:
    """A fitted camera pose with the evidence for it."""

    camera_pose: np.ndarray  # (4, 4) camera-to-base, OpenCV optical axes
    intrinsics: CameraIntrinsics
    errors_px: np.ndarray  # (N,) reprojection error of every point, outliers included
    inliers: np.ndarray  # (N,) bool: the points the pose was fitted to
    base_frame: str = "base_link"  # frame of the 3-D points (/twinloop/ee_pose)
    camera_frame: str = "camera_color_optical_frame"  # the camera's optical frame

    @property
    def translation(self) -> np.ndarray:
        return self.camera_pose[:3, 3].copy()

    @property
    def quat_xyzw(self) -> np.ndarray:
        """Orientation as a ROS quaternion (x, y, z, w)."""
        wxyz = _quat_wxyz(self.camera_pose[:3, :3])
        return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])

    @property
    def median_error_px(self) -> float:
        return float(np.median(self.errors_px[self.inliers]))

    @property
    def max_error_px(self) -> float:
        return float(np.max(self.errors_px[self.inliers]))

    @property
    def rms_error_px(self) -> float:
        return float(np.sqrt(np.mean(self.errors_px[self.inliers] ** 2)))

    @property
    def outliers(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.inliers)]

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) of base-frame points (N, 3) seen from the calibrated camera."""
        return project_points(points, self.camera_pose, self.intrinsics)

    def static_tf_command(self) -> str:
        """The tf2 static publisher line that puts this pose on the robot's TF tree."""
        (x, y, z), (qx, qy, qz, qw) = self.translation, self.quat_xyzw
        return (
            "ros2 run tf2_ros static_transform_publisher "
            f"--x {x:.6f} --y {y:.6f} --z {z:.6f} "
            f"--qx {qx:.6f} --qy {qy:.6f} --qz {qz:.6f} --qw {qw:.6f} "
            f"--frame-id {self.base_frame} --child-frame-id {self.camera_frame}"
        )

    def to_dict(self) -> dict[str, Any]:
        k = self.intrinsics
        return {
            "schema": SCHEMA,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "base_frame": self.base_frame,
            "camera_frame": self.camera_frame,
            "camera_pose": {
                "convention": "camera-to-base, OpenCV optical axes (x right, y down, z forward)",
                "matrix": [[round(float(v), 9) for v in row] for row in self.camera_pose],
                "translation": [round(float(v), 9) for v in self.translation],
                "quaternion_xyzw": [round(float(v), 9) for v in self.quat_xyzw],
            },
            "intrinsics": {
                "width": k.width,
                "height": k.height,
                "fx": k.fx,
                "fy": k.fy,
                "ppx": k.ppx,
                "ppy": k.ppy,
                "model": k.model,
                "coeffs": [float(c) for c in k.coeffs],
            },
            "reprojection_error_px": {
                "median": round(self.median_error_px, 4),
                "max": round(self.max_error_px, 4),
                "rms": round(self.rms_error_px, 4),
            },
            "points": {
                "n": len(self.errors_px),
                "inliers": int(self.inliers.sum()),
                "outliers": self.outliers,
                "errors_px": [round(float(e), 4) for e in self.errors_px],
            },
            "static_tf": self.static_tf_command(),
        }


# ----- geometry --------------------------------------------------------------------------------
def _k_and_dist(intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    return intr.k_matrix().astype(np.float64), np.asarray(intr.coeffs, dtype=np.float64)


def _invert(pose: np.ndarray) -> np.ndarray:
    inv = np.eye(4)
    inv[:3, :3] = pose[:3, :3].T
    inv[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return inv


def _quat_wxyz(rot: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(rot, dtype=np.float64).ravel())
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def project_points(
    points: np.ndarray, camera_pose: np.ndarray, intrinsics: CameraIntrinsics
) -> np.ndarray:
    """Pixels (N, 2) of base-frame points (N, 3) for a camera-to-base pose (OpenCV axes)."""
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    world_to_cam = _invert(np.asarray(camera_pose, dtype=np.float64))
    rvec, _ = cv2.Rodrigues(world_to_cam[:3, :3])
    k, dist = _k_and_dist(intrinsics)
    pix, _ = cv2.projectPoints(pts, rvec, world_to_cam[:3, 3], k, dist)
    return pix.reshape(-1, 2)


def pose_error(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Distance between two 4x4 poses: (translation in m, rotation angle in degrees)."""
    dt_ = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1.0) / 2.0
    return dt_, math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


# ----- the fit ---------------------------------------------------------------------------------
def _check_intrinsics(intr: CameraIntrinsics) -> None:
    values = (intr.fx, intr.fy, intr.ppx, intr.ppy)
    if not all(math.isfinite(v) for v in values) or intr.fx <= 0 or intr.fy <= 0:
        msg = f"intrinsics need finite fx, fy > 0 and finite ppx, ppy, got {values}"
        raise TwinError(msg)
    if intr.width < 1 or intr.height < 1:
        msg = f"intrinsics need the image size, got {intr.width}x{intr.height}"
        raise TwinError(msg)
    if any(c != 0.0 for c in intr.coeffs) and intr.model not in _DISTORTION_MODELS:
        msg = (
            f"distortion model {intr.model!r} is not supported for calibration "
            f"(supported: {', '.join(_DISTORTION_MODELS)}, or zero coefficients)"
        )
        raise TwinError(msg)


def _rows(mask: np.ndarray, limit: int = 8) -> str:
    idx = [int(i) for i in np.flatnonzero(mask)]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(map(str, idx[:limit])) + more


def _check_input(
    points: np.ndarray, pixels: np.ndarray, intr: CameraIntrinsics, cfg: CalibrationConfig
) -> None:
    if points.ndim != 2 or points.shape[1] != 3:
        msg = f"3-D points must have shape (N, 3), got {points.shape}"
        raise TwinError(msg)
    if pixels.ndim != 2 or pixels.shape[1] != 2:
        msg = f"pixels must have shape (N, 2), got {pixels.shape}"
        raise TwinError(msg)
    if len(points) != len(pixels):
        msg = f"got {len(points)} 3-D points but {len(pixels)} pixels; they must pair up"
        raise TwinError(msg)
    if len(points) < cfg.min_points:
        msg = f"need at least {cfg.min_points} correspondences, got {len(points)}"
        raise TwinError(msg)
    bad = ~np.isfinite(points).all(axis=1) | ~np.isfinite(pixels).all(axis=1)
    if bad.any():
        msg = f"correspondences with NaN or inf values at rows {_rows(bad)}"
        raise TwinError(msg)
    far = np.linalg.norm(points, axis=1) > 5.0
    if far.any():
        msg = (
            f"3-D points more than 5 m from the base at rows {_rows(far)} "
            f"(e.g. {points[far][0].tolist()}): the points must be in metres, in the base frame"
        )
        raise TwinError(msg)
    off = (
        (pixels[:, 0] < -0.5)
        | (pixels[:, 0] > intr.width - 0.5)
        | (pixels[:, 1] < -0.5)
        | (pixels[:, 1] > intr.height - 0.5)
    )
    if off.any():
        msg = (
            f"pixels off the {intr.width}x{intr.height} image at rows {_rows(off)} "
            f"(e.g. {pixels[off][0].tolist()}); are u and v swapped, or from another resolution?"
        )
        raise TwinError(msg)
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False) / math.sqrt(len(points))
    if spread[0] < cfg.min_spread_m:
        msg = (
            f"the 3-D points span only {spread[0] * 1000:.1f} mm (RMS) but need "
            f"{cfg.min_spread_m * 1000:.0f} mm: spread the arm poses over the workspace"
        )
        raise TwinError(msg)
    if spread[1] < cfg.collinear_ratio * spread[0]:
        msg = (
            f"the 3-D points are (nearly) collinear (principal extents {spread[0] * 1000:.1f} "
            f"and {spread[1] * 1000:.1f} mm), which leaves the rotation about that line "
            "undetermined: spread the arm poses in more than one direction"
        )
        raise TwinError(msg)


def _ransac_inliers(
    points: np.ndarray, pixels: np.ndarray, intr: CameraIntrinsics, cfg: CalibrationConfig
) -> np.ndarray:
    k, dist = _k_and_dist(intr)
    ok, _rvec, _tvec, idx = cv2.solvePnPRansac(
        points,
        pixels,
        k,
        dist,
        iterationsCount=500,
        reprojectionError=cfg.ransac_threshold_px,
        confidence=0.999,
        flags=cv2.SOLVEPNP_EPNP,
    )
    inliers = np.zeros(len(points), dtype=bool)
    if ok and idx is not None:
        inliers[np.asarray(idx).ravel()] = True
    return inliers


def _fit(
    points: np.ndarray, pixels: np.ndarray, intr: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """SQPnP + Levenberg-Marquardt; returns world-to-camera (rvec, tvec)."""
    k, dist = _k_and_dist(intr)
    ok, rvec, tvec = cv2.solvePnP(points, pixels, k, dist, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        msg = "PnP found no camera pose for these correspondences"
        raise TwinError(msg)
    rvec, tvec = cv2.solvePnPRefineLM(points, pixels, k, dist, rvec, tvec)
    return rvec, tvec


def _check_in_front(points: np.ndarray, world_to_cam: np.ndarray, used: np.ndarray) -> None:
    depth = points @ world_to_cam[2, :3] + world_to_cam[2, 3]
    behind = used & (depth <= 0.0)
    if behind.any():
        msg = (
            f"points at rows {_rows(behind)} lie behind the fitted camera (depth "
            f"{depth[behind].min():.3f} m): the correspondences are inconsistent; check the "
            "point units (m), the frame of the 3-D points and the pixel order (u, v)"
        )
        raise TwinError(msg)


def calibrate_camera(
    points: np.ndarray | Sequence[Sequence[float]],
    pixels: np.ndarray | Sequence[Sequence[float]],
    intrinsics: CameraIntrinsics,
    config: CalibrationConfig | None = None,
    *,
    base_frame: str = "base_link",
    camera_frame: str = "camera_color_optical_frame",
) -> CameraCalibration:
    """Fit the camera-to-base pose to base-frame points (N, 3) and their pixels (N, 2)."""
    cfg = config or CalibrationConfig()
    pts = np.ascontiguousarray(points, dtype=np.float64)  # cv2 refuses strided views
    pix = np.ascontiguousarray(pixels, dtype=np.float64)
    _check_intrinsics(intrinsics)
    _check_input(pts, pix, intrinsics, cfg)
    n = len(pts)
    inliers = _ransac_inliers(pts, pix, intrinsics, cfg) if cfg.ransac else np.ones(n, bool)
    n_out = n - int(inliers.sum())
    if n_out > cfg.max_outlier_fraction * n or inliers.sum() < cfg.min_points:
        msg = (
            f"RANSAC kept only {int(inliers.sum())} of {n} correspondences within "
            f"{cfg.ransac_threshold_px} px (outliers at rows {_rows(~inliers)}); check those "
            "pixels and that the points and pixels were taken at the same arm poses"
        )
        raise TwinError(msg)
    rvec, tvec = _fit(pts[inliers], pix[inliers], intrinsics)
    rot, _ = cv2.Rodrigues(rvec)
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3], world_to_cam[:3, 3] = rot, tvec.ravel()
    _check_in_front(pts, world_to_cam, inliers)
    pose = _invert(world_to_cam)
    errors = np.linalg.norm(project_points(pts, pose, intrinsics) - pix, axis=1)
    calib = CameraCalibration(
        camera_pose=pose,
        intrinsics=intrinsics,
        errors_px=errors,
        inliers=inliers,
        base_frame=base_frame,
        camera_frame=camera_frame,
    )
    if calib.max_error_px > cfg.max_error_px:
        worst = np.argsort(np.where(inliers, errors, -1.0))[::-1][:3]
        listing = ", ".join(f"row {int(i)}: {errors[i]:.2f} px" for i in worst if inliers[i])
        msg = (
            f"reprojection error {calib.max_error_px:.2f} px is above max_error_px "
            f"{cfg.max_error_px} (median {calib.median_error_px:.2f} px; worst {listing}); "
            "re-measure those points, check the intrinsics, or raise the threshold"
        )
        raise TwinError(msg)
    if n_out:
        log.warning("RANSAC dropped %d outlier(s) at rows %s", n_out, _rows(~inliers))
    log.info(
        "camera calibrated from %d points: median %.2f px, max %.2f px",
        int(inliers.sum()),
        calib.median_error_px,
        calib.max_error_px,
    )
    return calib


# ----- files -----------------------------------------------------------------------------------
def _read_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        msg = f"cannot read the {what} {path}: {err}"
        raise TwinError(msg) from err
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:  # YAML; `ros2 topic echo --once` output ends with a '---' document separator
            data = next((d for d in yaml.safe_load_all(text) if d is not None), None)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        msg = f"the {what} {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {err}"
        raise TwinError(msg) from err
    if not isinstance(data, dict):
        msg = f"the {what} {path} must hold a mapping, got {type(data).__name__}"
        raise TwinError(msg)
    return data


def _write_atomic(path: Path, text: str, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        msg = f"{path} exists; pass overwrite to replace it"
        raise TwinError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_intrinsics(path: str | Path) -> CameraIntrinsics:
    """Intrinsics from a file: a ``ros2 topic echo --once .../camera_info`` dump (YAML or JSON:
    width, height, k, d, distortion_model), a camera_calibration YAML (image_width, camera_matrix,
    distortion_coefficients), ``twinloop twin info`` JSON, or flat ``fx, fy, ppx|cx, ppy|cy,
    width, height``."""
    path = Path(path)
    data = _read_mapping(path, "intrinsics file")
    if "fx" not in data and "k" not in data and "K" not in data and "camera_matrix" not in data:
        data = data.get("camera", data)  # `twinloop twin info` nests them under "camera"
        if not isinstance(data, dict):
            data = {}
    try:
        if "camera_matrix" in data:  # ROS camera_calibration YAML
            k = np.asarray(data["camera_matrix"]["data"], dtype=float).ravel()
            width, height = data["image_width"], data["image_height"]
            model = data.get("distortion_model", "plumb_bob")
            coeffs = (data.get("distortion_coefficients") or {}).get("data", [])
        elif "k" in data or "K" in data:  # sensor_msgs/CameraInfo
            k = np.asarray(data.get("k", data.get("K")), dtype=float).ravel()
            width, height = data["width"], data["height"]
            model = data.get("distortion_model") or "plumb_bob"
            coeffs = data.get("d", data.get("D")) or []
        else:
            cx, cy = data.get("ppx", data.get("cx")), data.get("ppy", data.get("cy"))
            k = np.array([data["fx"], 0, cx, 0, data["fy"], cy, 0, 0, 1], dtype=float)
            width, height = data["width"], data["height"]
            model = data.get("model", data.get("distortion_model", "plumb_bob"))
            coeffs = data.get("coeffs", data.get("d", [])) or []
        if k.shape != (9,):
            msg = f"camera matrix must have 9 values, got {k.size}"
            raise TwinError(msg)
        intr = CameraIntrinsics(
            width=int(width),
            height=int(height),
            fx=float(k[0]),
            fy=float(k[4]),
            ppx=float(k[2]),
            ppy=float(k[5]),
            model=str(model),
            coeffs=tuple(float(c) for c in coeffs),
        )
    except (KeyError, TypeError, ValueError) as err:
        msg = (
            f"cannot read intrinsics from {path} ({type(err).__name__}: {err}); expected a "
            "camera_info dump (width, height, k, d) or fx, fy, ppx, ppy, width, height"
        )
        raise TwinError(msg) from err
    _check_intrinsics(intr)
    return intr


def load_correspondences(
    path: str | Path, *, marker_offset: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """3-D points (N, 3) and pixels (N, 2) from a CSV with a header ``x,y,z,u,v``.

    x, y, z: the end-effector position in the base frame (m, from /twinloop/ee_pose); u, v: the
    marker's pixel (column, row). With ``marker_offset`` (the marker in the end-effector frame,
    m) the file also needs the end-effector orientation ``qx,qy,qz,qw`` and the 3-D point is the
    marker's. Lines starting with ``#`` are comments.
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(line for line in f if not line.lstrip().startswith("#")))
    except OSError as err:
        msg = f"cannot read the correspondence file {path}: {err}"
        raise TwinError(msg) from err
    need = ["x", "y", "z", "u", "v"] + (["qx", "qy", "qz", "qw"] if marker_offset else [])
    if not rows:
        msg = f"{path} holds no correspondences (expected a header {','.join(need)} and rows)"
        raise TwinError(msg)
    header = [str(h).strip() for h in rows[0] if h is not None]
    missing = [c for c in need if c not in header]
    if missing:
        msg = f"{path} lacks the column(s) {', '.join(missing)} (header: {','.join(header)})"
        raise TwinError(msg)
    try:
        table = np.array(
            [
                [float(r[c]) for c in need]
                for r in ({k.strip(): v for k, v in r.items()} for r in rows)
            ]
        )
    except (TypeError, ValueError) as err:
        msg = f"{path}: a value is not a number ({err})"
        raise TwinError(msg) from err
    points, pixels = table[:, :3].copy(), table[:, 3:5].copy()
    if marker_offset is not None:
        offset = np.asarray(marker_offset, dtype=float)
        if offset.shape != (3,) or not np.isfinite(offset).all():
            msg = f"marker_offset must be 3 finite numbers (m), got {marker_offset}"
            raise TwinError(msg)
        points = points + np.stack([_rot_xyzw(q) @ offset for q in table[:, 5:9]])
    return points, pixels


def _rot_xyzw(q: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(q))
    if not math.isfinite(norm) or norm < 1e-9:
        msg = f"end-effector quaternion {q.tolist()} is not a rotation"
        raise TwinError(msg)
    mat = np.zeros(9)
    mujoco.mju_quat2Mat(mat, np.array([q[3], q[0], q[1], q[2]]) / norm)
    return mat.reshape(3, 3)


def save_correspondences(
    path: str | Path, points: np.ndarray, pixels: np.ndarray, *, overwrite: bool = False
) -> Path:
    """Write a CSV that :func:`load_correspondences` reads."""
    path = Path(path)
    lines = ["x,y,z,u,v"] + [
        f"{p[0]:.6f},{p[1]:.6f},{p[2]:.6f},{q[0]:.3f},{q[1]:.3f}"
        for p, q in zip(np.asarray(points), np.asarray(pixels), strict=True)
    ]
    _write_atomic(path, "\n".join(lines) + "\n", overwrite=overwrite)
    return path


def save_calibration(
    calib: CameraCalibration, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write the calibration as YAML (or JSON for a ``.json`` path), atomically."""
    path = Path(path)
    data = calib.to_dict()
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = "# twinloop camera calibration (twinloop calibrate camera)\n" + yaml.safe_dump(
            data, sort_keys=False, default_flow_style=None, width=1000
        )
    _write_atomic(path, text, overwrite=overwrite)
    return path


def load_calibration(path: str | Path) -> CameraCalibration:
    """Read a file written by :func:`save_calibration`; a bad pose is refused, naming the file."""
    path = Path(path)
    data = _read_mapping(path, "camera calibration file")
    if data.get("schema") != SCHEMA:
        msg = f"{path} is not a camera calibration file (schema {SCHEMA!r})"
        raise TwinError(msg)
    try:
        pose = np.asarray(data["camera_pose"]["matrix"], dtype=float)
        k = data["intrinsics"]
        intr = CameraIntrinsics(
            width=int(k["width"]),
            height=int(k["height"]),
            fx=float(k["fx"]),
            fy=float(k["fy"]),
            ppx=float(k["ppx"]),
            ppy=float(k["ppy"]),
            model=str(k.get("model", "plumb_bob")),
            coeffs=tuple(float(c) for c in k.get("coeffs", ())),
        )
        errors = np.asarray(data["points"]["errors_px"], dtype=float)
        outliers = [int(i) for i in data["points"].get("outliers", [])]
        frames = (
            str(data.get("base_frame", "base_link")),
            str(data.get("camera_frame", "camera_color_optical_frame")),
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        msg = f"{path} is missing or has a bad field ({type(err).__name__}: {err})"
        raise TwinError(msg) from err
    rot = pose[:3, :3] if pose.shape == (4, 4) else np.zeros((3, 3))
    if (
        pose.shape != (4, 4)
        or not np.isfinite(pose).all()
        or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6)
        or np.linalg.det(rot) < 0
        or not np.allclose(pose[3], [0, 0, 0, 1])
    ):
        msg = f"{path}: camera_pose.matrix is not a rigid 4x4 transform"
        raise TwinError(msg)
    inliers = np.ones(len(errors), dtype=bool)
    inliers[[i for i in outliers if 0 <= i < len(errors)]] = False
    return CameraCalibration(
        pose, intr, errors, inliers, base_frame=frames[0], camera_frame=frames[1]
    )


# ----- into the twin ---------------------------------------------------------------------------
def camera_config_from_calibration(
    calib: CameraCalibration, base: CameraConfig | None = None, *, intrinsics: bool = False
) -> CameraConfig:
    """The twin's camera at the calibrated pose (``base`` keeps size and field of view).

    With ``intrinsics`` the twin also takes the calibrated camera's image size and vertical field
    of view (from fy); the twin's pinhole has fx = fy and a centred principal point, so a real
    camera's small differences there are not reproduced (logged).
    """
    base = base or CameraConfig()
    rot_mujoco = calib.camera_pose[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # y up, looks along -z
    changes: dict[str, Any] = {
        "pos": tuple(float(v) for v in calib.camera_pose[:3, 3]),
        "quat": tuple(float(v) for v in _quat_wxyz(rot_mujoco)),
    }
    if intrinsics:
        k = calib.intrinsics
        changes["width"], changes["height"] = k.width, k.height
        changes["fovy"] = math.degrees(2.0 * math.atan((k.height / 2.0) / k.fy))
        off = math.hypot(k.ppx - (k.width - 1) / 2.0, k.ppy - (k.height - 1) / 2.0)
        if abs(k.fx / k.fy - 1.0) > 0.005 or off > 2.0:
            log.warning(
                "the twin's camera has fx = fy and a centred principal point; the calibrated "
                "one has fx/fy %.4f and its principal point %.1f px off centre",
                k.fx / k.fy,
                off,
            )
    return dataclasses.replace(base, **changes)


def load_camera_config(
    path: str | Path, base: CameraConfig | None = None, *, intrinsics: bool = False
) -> CameraConfig:
    """The twin's :class:`CameraConfig` from a calibration file (see module doc)."""
    return camera_config_from_calibration(load_calibration(path), base, intrinsics=intrinsics)


# ----- synthetic correspondences from the twin -------------------------------------------------
def twin_correspondences(
    twin: Twin,
    n_poses: int,
    *,
    noise_px: float = 0.5,
    seed: int = 0,
    max_steps_per_pose: int = 40,
) -> tuple[np.ndarray, np.ndarray]:
    """Drive the twin's arm to ``n_poses`` random poses in view and return what a calibration on
    the robot would collect there: the end-effector position (as /twinloop/ee_pose publishes it)
    and its pixel, projected with the twin's true camera pose plus Gaussian noise (``noise_px``
    per axis). The pixels are projected, not detected in the rendered image.
    """
    if n_poses < 1 or noise_px < 0:
        msg = f"need n_poses >= 1 and noise_px >= 0, got {n_poses} and {noise_px}"
        raise TwinError(msg)
    rng = np.random.default_rng(seed)
    twin.reset(seed=seed)
    intr, pose = twin.intrinsics, twin.camera_pose()
    low = np.maximum(twin.config.workspace_low, (0.3, -0.3, 0.08))
    high = np.minimum(twin.config.workspace_high, (0.7, 0.3, 0.4))
    margin = 10.0  # px from the image border, so noise keeps the pixel on the image
    points: list[np.ndarray] = []
    pixels: list[np.ndarray] = []
    for _ in range(50 * n_poses):
        if len(points) == n_poses:
            break
        target = rng.uniform(low, high)
        uv = project_points(target[None], pose, intr)[0]
        if not (
            margin <= uv[0] <= intr.width - 1 - margin
            and margin <= uv[1] <= intr.height - 1 - margin
        ):
            continue
        dyaw = float(rng.uniform(-0.1, 0.1))
        for _step in range(max_steps_per_pose):
            delta = target - twin.physics.ee_pos()
            if np.linalg.norm(delta) < 0.005:
                break
            twin.step([*delta, dyaw, -1.0])
        ee = twin.physics.ee_pos().copy()
        uv = project_points(ee[None], pose, intr)[0] + rng.normal(0.0, noise_px, 2)
        if (
            margin / 2 <= uv[0] <= intr.width - 1 - margin / 2
            and margin / 2 <= uv[1] <= intr.height - 1 - margin / 2
        ):
            points.append(ee)
            pixels.append(uv)
    if len(points) < n_poses:
        msg = f"found only {len(points)} of {n_poses} arm poses in the camera's view"
        raise TwinError(msg)
    return np.asarray(points), np.asarray(pixels)
