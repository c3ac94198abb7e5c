"""``twinloop calibrate camera``: the camera pose in the arm base frame, for the robot and the twin.

On the robot: ``--points points.csv`` (x,y,z of the end effector from /twinloop/ee_pose, u,v of
the marker's pixel) and ``--intrinsics camera_info.yaml`` (a ``ros2 topic echo --once`` dump)
give the camera-to-base pose, written with ``--out calib.yaml`` for the twin and TF.
Without a robot: ``--twin-check`` collects the same data from the twin (arm driven to random
poses, pixels projected with the twin's true camera pose plus noise), calibrates, and compares
the result with the truth.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import TwinloopError

if TYPE_CHECKING:
    from twinloop.sim2real.calibration import CameraCalibration

__all__ = ["add_calibrate_parser", "cmd_calibrate_camera"]

log = logging.getLogger(__name__)


def _out(text: str) -> None:
    """User-facing output of the CLI (library code logs instead)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _report(calib: CameraCalibration) -> None:
    x, y, z = calib.translation
    qx, qy, qz, qw = calib.quat_xyzw
    _out(f"camera pose ({calib.camera_frame} in {calib.base_frame}, OpenCV optical axes):")
    for row in calib.camera_pose:
        _out("  [" + " ".join(f"{v:10.6f}" for v in row) + "]")
    _out(f"  translation m: {x:.4f} {y:.4f} {z:.4f}")
    _out(f"  quaternion xyzw: {qx:.5f} {qy:.5f} {qz:.5f} {qw:.5f}")
    n, used = len(calib.errors_px), int(calib.inliers.sum())
    _out(
        f"reprojection error over {used} of {n} points: median {calib.median_error_px:.2f} px, "
        f"max {calib.max_error_px:.2f} px, rms {calib.rms_error_px:.2f} px"
    )
    if calib.outliers:
        _out(f"outliers (not used; re-measure them): rows {calib.outliers}")
    _out(f"static TF: {calib.static_tf_command()}")


def _plot(
    path: Path,
    calib: CameraCalibration,
    points: np.ndarray,
    pixels: np.ndarray,
    image: np.ndarray | None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = calib.intrinsics
    reproj = calib.project(points)
    fig, ax = plt.subplots(figsize=(8, 8 * k.height / k.width))
    if image is not None:
        ax.imshow(image)
    for (u0, v0), (u1, v1) in zip(pixels, reproj, strict=True):
        ax.plot([u0, u1], [v0, v1], "-", color="yellow", lw=1)
    inl = calib.inliers
    ax.plot(pixels[inl, 0], pixels[inl, 1], "+", color="cyan", ms=10, mew=2, label="measured")
    ax.plot(reproj[:, 0], reproj[:, 1], "o", mfc="none", color="magenta", ms=8, label="reprojected")
    if (~inl).any():
        ax.plot(pixels[~inl, 0], pixels[~inl, 1], "x", color="red", ms=10, mew=2, label="outlier")
    for i, (u, v) in enumerate(pixels):
        ax.annotate(str(i), (u, v), xytext=(4, 4), textcoords="offset points", color="white")
    ax.set_xlim(-0.5, k.width - 0.5)
    ax.set_ylim(k.height - 0.5, -0.5)
    ax.set_title(
        f"camera calibration: median {calib.median_error_px:.2f} px, "
        f"max {calib.max_error_px:.2f} px ({int(inl.sum())}/{len(inl)} points)"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    _out(f"plot: {path}")


def _read_image(path: str) -> np.ndarray:
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        msg = f"--image {path}: not a readable image"
        raise TwinloopError(msg)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _twin_check(args: argparse.Namespace, config: Any) -> int:
    from twinloop.sim2real.calibration import (
        camera_config_from_calibration,
        pose_error,
        save_correspondences,
        twin_correspondences,
    )
    from twinloop.sim2real.scene import CameraConfig
    from twinloop.sim2real.twin import Twin, TwinConfig

    camera = CameraConfig(width=args.width, height=args.height)
    twin = Twin(TwinConfig(task=args.task, render=False, camera=camera))
    try:
        points, pixels = twin_correspondences(
            twin, args.poses, noise_px=args.noise_px, seed=args.seed
        )
        image = twin.physics.render() if args.plot else None
        truth, intr = twin.camera_pose(), twin.intrinsics
    finally:
        twin.close()
    _out(
        f"twin check: {len(points)} arm poses in {args.task}, pixels projected with the twin's "
        f"camera pose + {args.noise_px} px noise"
    )
    if args.save_points:
        _out(
            f"correspondences: {save_correspondences(args.save_points, points, pixels, overwrite=args.overwrite)}"
        )
    if args.save_intrinsics:
        _save_intrinsics(Path(args.save_intrinsics), intr, overwrite=args.overwrite)
    calib = _calibrate(args, points, pixels, intr, config)
    _finish(args, calib, points, pixels, image)
    dt, dr = pose_error(calib.camera_pose, truth)
    # The calibrated pose, loaded into a twin, is the twin's camera pose.
    probe = Twin(
        TwinConfig(
            task=args.task, render=False, camera=camera_config_from_calibration(calib, camera)
        )
    )
    try:
        dt_twin, dr_twin = pose_error(probe.camera_pose(), calib.camera_pose)
    finally:
        probe.close()
    _out(f"error against the twin's true camera pose: {dt * 1000:.2f} mm, {dr:.3f} deg")
    _out(
        f"twin built from the calibration: camera off by {dt_twin * 1000:.4f} mm, {dr_twin:.5f} deg"
    )
    if dt * 1000 > args.tolerance_mm or dr > args.tolerance_deg:
        _out(f"twin check FAILED: beyond {args.tolerance_mm} mm / {args.tolerance_deg} deg")
        return 1
    _out(f"twin check passed (tolerance {args.tolerance_mm} mm, {args.tolerance_deg} deg)")
    return 0


def _save_intrinsics(path: Path, intr: Any, *, overwrite: bool) -> None:
    import json

    if path.exists() and not overwrite:
        msg = f"{path} exists; pass --overwrite to replace it"
        raise TwinloopError(msg)
    data = {
        "width": intr.width,
        "height": intr.height,
        "fx": intr.fx,
        "fy": intr.fy,
        "ppx": intr.ppx,
        "ppy": intr.ppy,
        "model": intr.model,
        "coeffs": list(intr.coeffs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    _out(f"intrinsics: {path}")


def _calibrate(
    args: argparse.Namespace, points: np.ndarray, pixels: np.ndarray, intr: Any, config: Any
) -> CameraCalibration:
    """Fit the pose with the command line's frames and print it."""
    from twinloop.sim2real.calibration import calibrate_camera

    calib = calibrate_camera(
        points, pixels, intr, config, base_frame=args.base_frame, camera_frame=args.camera_frame
    )
    _report(calib)
    return calib


def _finish(
    args: argparse.Namespace,
    calib: CameraCalibration,
    points: np.ndarray,
    pixels: np.ndarray,
    image: np.ndarray | None,
) -> None:
    from twinloop.sim2real.calibration import save_calibration

    if args.out:
        path = save_calibration(calib, args.out, overwrite=args.overwrite)
        _out(f"calibration: {path}")
    if args.plot:
        _plot(Path(args.plot), calib, points, pixels, image)


def cmd_calibrate_camera(args: argparse.Namespace) -> int:
    from twinloop.sim2real.calibration import (
        CalibrationConfig,
        load_correspondences,
        load_intrinsics,
    )

    config = CalibrationConfig(
        max_error_px=args.max_error_px,
        ransac=not args.no_ransac,
        ransac_threshold_px=args.ransac_threshold_px,
    )
    if args.twin_check:
        if args.points or args.intrinsics:
            msg = "--twin-check makes its own correspondences: drop --points and --intrinsics"
            raise TwinloopError(msg)
        return _twin_check(args, config)
    if not args.points or not args.intrinsics:
        msg = "give --points CSV and --intrinsics FILE (or --twin-check to try it on the twin)"
        raise TwinloopError(msg)
    intr = load_intrinsics(args.intrinsics)
    points, pixels = load_correspondences(args.points, marker_offset=args.marker_offset)
    calib = _calibrate(args, points, pixels, intr, config)
    _finish(args, calib, points, pixels, _read_image(args.image) if args.image else None)
    return 0


def add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` (with its ``camera`` subcommand) to the ``twinloop`` subparsers."""
    cal = sub.add_parser("calibrate", help="calibration: the camera pose in the arm base frame")
    cal_sub = cal.add_subparsers(dest="calibrate_command", required=True, metavar="WHAT")
    p = cal_sub.add_parser(
        "camera",
        help="camera-to-base pose from marker pixels at N arm poses (PnP), for the twin and TF",
        description="Fit the camera pose to N >= 6 end-effector positions (base frame, m) and "
        "their pixels in the colour image; print it with its reprojection error and write it for "
        "the twin. --twin-check tries the whole procedure on the twin.",
    )
    p.add_argument("--points", help="CSV with header x,y,z,u,v (+ qx,qy,qz,qw for --marker-offset)")
    p.add_argument(
        "--intrinsics", help="camera_info dump (YAML/JSON: width, height, k, d) or fx,fy,ppx,ppy"
    )
    p.add_argument(
        "--twin-check",
        action="store_true",
        help="make the correspondences in the twin (no robot) and compare with its true pose",
    )
    p.add_argument("--out", default=None, help="write the calibration here (.yaml or .json)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--max-error-px",
        type=float,
        default=2.0,
        help="refuse when a point reprojects further than this (default: 2.0 px)",
    )
    p.add_argument(
        "--ransac-threshold-px",
        type=float,
        default=8.0,
        help="points further than this from the RANSAC pose are outliers (default: 8 px)",
    )
    p.add_argument("--no-ransac", action="store_true", help="use every point, no outlier rejection")
    p.add_argument(
        "--marker-offset",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="the marker in the end-effector frame, m (needs qx,qy,qz,qw columns)",
    )
    p.add_argument("--base-frame", default="base_link", help="frame of the 3-D points")
    p.add_argument(
        "--camera-frame", default="camera_color_optical_frame", help="the camera's optical frame"
    )
    p.add_argument("--plot", default=None, help="PNG of measured vs reprojected pixels")
    p.add_argument("--image", default=None, help="background image for --plot (robot mode)")
    g = p.add_argument_group("--twin-check options")
    g.add_argument("--task", default="push_cube", help="twin task (default: push_cube)")
    g.add_argument("--poses", type=int, default=12, help="arm poses (default: 12)")
    g.add_argument("--noise-px", type=float, default=0.5, help="pixel noise, px (default: 0.5)")
    g.add_argument("--seed", type=int, default=0, help="seed of poses and noise")
    g.add_argument("--width", type=int, default=640, help="camera width, px (default: 640)")
    g.add_argument("--height", type=int, default=480, help="camera height, px (default: 480)")
    g.add_argument("--save-points", default=None, help="also write the correspondences CSV")
    g.add_argument("--save-intrinsics", default=None, help="also write the intrinsics JSON")
    g.add_argument("--tolerance-mm", type=float, default=10.0, help="pass/fail translation, mm")
    g.add_argument("--tolerance-deg", type=float, default=1.0, help="pass/fail rotation, deg")
    p.set_defaults(func=cmd_calibrate_camera)
