"""Camera pose calibration (PnP) against the twin's own camera, its file, and the CLI."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from twinloop.sim2real import TwinError
from twinloop.sim2real import calibration as cal
from twinloop.sim2real.calibration import (
    CalibrationConfig,
    calibrate_camera,
    load_calibration,
    load_camera_config,
    load_correspondences,
    load_intrinsics,
    pose_error,
    project_points,
    save_calibration,
    twin_correspondences,
)
from twinloop.sim2real.physics import CameraIntrinsics
from twinloop.sim2real.scene import CameraConfig
from twinloop.sim2real.twin import Twin, TwinConfig

from twinloop.calibrate_cli import add_calibrate_parser
from twinloop.errors import TwinloopError

CAMERA = CameraConfig(width=640, height=480)


@pytest.fixture(scope="module")
def twin() -> Iterator[Twin]:
    t = Twin(TwinConfig(render=False, camera=CAMERA))
    yield t
    t.close()


def _workspace_points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform((0.3, -0.3, 0.05), (0.7, 0.3, 0.4), size=(n, 3))


def _observed(twin: Twin, n: int = 15, noise_px: float = 0.5, seed: int = 0):
    points = _workspace_points(n, seed)
    pixels = project_points(points, twin.camera_pose(), twin.intrinsics)
    rng = np.random.default_rng(seed + 100)
    return points, pixels + rng.normal(0.0, noise_px, pixels.shape)


# ----- the fit ---------------------------------------------------------------------------------
def test_projection_matches_the_twin_renderer_convention(twin: Twin) -> None:
    # The point on the optical axis 1 m ahead lands on the principal point.
    pose = twin.camera_pose()
    ahead = pose[:3, 3] + pose[:3, 2]
    uv = project_points(ahead[None], pose, twin.intrinsics)[0]
    assert uv == pytest.approx([twin.intrinsics.ppx, twin.intrinsics.ppy], abs=1e-6)


def test_recovers_the_twin_camera_pose_from_noisy_pixels(twin: Twin) -> None:
    points, pixels = _observed(twin, n=15, noise_px=0.5)
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    dt, dr = pose_error(calib.camera_pose, twin.camera_pose())
    assert dt < 0.005
    assert dr < 0.5
    assert calib.outliers == []
    assert 0.1 < calib.median_error_px < 1.0  # the noise shows, the fit does not hide it
    assert calib.max_error_px < 2.0
    rot = calib.camera_pose[:3, :3]
    assert rot.T @ rot == pytest.approx(np.eye(3), abs=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)


def test_noise_free_pixels_give_the_exact_pose(twin: Twin) -> None:
    points, pixels = _observed(twin, n=10, noise_px=0.0)
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    dt, dr = pose_error(calib.camera_pose, twin.camera_pose())
    assert dt < 1e-6
    assert dr < 1e-4


def test_arm_poses_from_the_twin_calibrate_its_camera(twin: Twin) -> None:
    points, pixels = twin_correspondences(twin, 12, noise_px=0.5, seed=3)
    assert len(points) == 12
    spread = np.ptp(points, axis=0)
    assert (spread > 0.05).all()  # the arm really went to different places
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    dt, dr = pose_error(calib.camera_pose, twin.camera_pose())
    assert dt < 0.005
    assert dr < 0.5


def test_a_misclicked_pixel_is_dropped_as_an_outlier(twin: Twin) -> None:
    points, pixels = _observed(twin, n=12)
    pixels[4] += (40.0, -25.0)
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    assert calib.outliers == [4]
    assert calib.errors_px[4] > 30.0
    dt, dr = pose_error(calib.camera_pose, twin.camera_pose())
    assert dt < 0.005
    assert dr < 0.5
    with pytest.raises(TwinError, match="max_error_px"):  # without RANSAC it spoils the fit
        calibrate_camera(points, pixels, twin.intrinsics, CalibrationConfig(ransac=False))


def _bad_cases(twin: Twin) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    points, pixels = _observed(twin, n=12)
    nan_pts = points.copy()
    nan_pts[3, 1] = np.nan
    off = pixels.copy()
    off[2] = (700.0, 10.0)
    line = np.linspace(0.0, 1.0, 10)[:, None] * np.array([0.3, 0.2, 0.1]) + (0.4, 0.0, 0.1)
    bunch = points[:8] * 0.02 + (0.5, 0.0, 0.2)
    many_bad = pixels.copy()
    many_bad[[0, 3, 5, 7, 9]] += 60.0
    return {
        "too few": (points[:5], pixels[:5], "at least 6 correspondences, got 5"),
        "millimetres": (points * 1000.0, pixels, "must be in metres"),
        "unpaired": (points, pixels[:10], "12 3-D points but 10 pixels"),
        "nan": (nan_pts, pixels, "NaN or inf values at rows 3"),
        "off image": (points, off, "pixels off the 640x480 image at rows 2"),
        "collinear": (line, project_points(line, twin.camera_pose(), twin.intrinsics), "collinear"),
        "bunched": (
            bunch,
            project_points(bunch, twin.camera_pose(), twin.intrinsics),
            "span only",
        ),
        "outliers": (points, many_bad, "RANSAC kept only 7 of 12"),
        "noisy": (points, _observed(twin, n=12, noise_px=4.0)[1], "above max_error_px 2.0"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "too few",
        "millimetres",
        "unpaired",
        "nan",
        "off image",
        "collinear",
        "bunched",
        "outliers",
        "noisy",
    ],
)
def test_bad_input_is_refused_naming_the_problem(twin: Twin, case: str) -> None:
    points, pixels, message = _bad_cases(twin)[case]
    with pytest.raises(TwinError, match=message):
        calibrate_camera(points, pixels, twin.intrinsics)


def test_bad_intrinsics_are_refused(twin: Twin) -> None:
    points, pixels = _observed(twin, n=10)
    k = twin.intrinsics
    zero_f = CameraIntrinsics(k.width, k.height, 0.0, k.fy, k.ppx, k.ppy)
    with pytest.raises(TwinError, match="fx, fy > 0"):
        calibrate_camera(points, pixels, zero_f)
    fisheye = CameraIntrinsics(
        k.width, k.height, k.fx, k.fy, k.ppx, k.ppy, "equidistant", (0.1, 0.0, 0.0, 0.0)
    )
    with pytest.raises(TwinError, match="'equidistant' is not supported"):
        calibrate_camera(points, pixels, fisheye)


def test_points_behind_the_fitted_camera_are_refused(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    points, pixels = _observed(twin, n=10)
    world_to_cam = np.linalg.inv(twin.camera_pose())
    flip = np.diag([1.0, -1.0, -1.0])  # the camera turned round: the cell is behind it
    rvec = cal.cv2.Rodrigues(flip @ world_to_cam[:3, :3])[0]
    tvec = (flip @ world_to_cam[:3, 3]).reshape(3, 1)
    monkeypatch.setattr(cal, "_fit", lambda *_args: (rvec, tvec))
    with pytest.raises(TwinError, match="behind the fitted camera"):
        calibrate_camera(points, pixels, twin.intrinsics, CalibrationConfig(ransac=False))


def test_config_is_validated() -> None:
    with pytest.raises(TwinError, match="min_points"):
        CalibrationConfig(min_points=3)
    with pytest.raises(TwinError, match="max_error_px"):
        CalibrationConfig(max_error_px=0.0)


# ----- the file and the twin -------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trips_into_the_twin_camera(twin: Twin, tmp_path: Path, suffix: str) -> None:
    points, pixels = _observed(twin, n=12, seed=5)
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    path = save_calibration(calib, tmp_path / f"calib{suffix}")
    loaded = load_calibration(path)
    assert loaded.camera_pose == pytest.approx(calib.camera_pose, abs=1e-8)
    assert loaded.errors_px == pytest.approx(calib.errors_px, abs=1e-4)
    assert loaded.intrinsics == calib.intrinsics

    camera = load_camera_config(path, CameraConfig(width=320, height=240))
    assert (camera.width, camera.height) == (320, 240)  # size kept from the base
    moved = Twin(TwinConfig(render=False, camera=camera))
    try:
        assert moved.camera_pose() == pytest.approx(calib.camera_pose, abs=1e-6)
        # and it differs from the default camera by the calibration's own error, no more
        dt, _ = pose_error(moved.camera_pose(), twin.camera_pose())
        assert 0.0 < dt < 0.005
    finally:
        moved.close()


def test_file_can_carry_the_intrinsics_into_the_twin(tmp_path: Path) -> None:
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]  # looking down, rolled
    pose[:3, 3] = (0.5, 0.0, 1.2)
    intr = CameraIntrinsics(424, 240, 300.0, 300.0, 211.5, 119.5)
    calib = cal.CameraCalibration(pose, intr, np.zeros(6), np.ones(6, bool))
    path = save_calibration(calib, tmp_path / "calib.yaml")
    twin = Twin(TwinConfig(render=False, camera=load_camera_config(path, intrinsics=True)))
    try:
        assert twin.camera_pose() == pytest.approx(pose, abs=1e-6)
        k = twin.intrinsics
        assert (k.width, k.height) == (424, 240)
        assert k.fy == pytest.approx(300.0, rel=1e-6)
    finally:
        twin.close()


def test_files_are_not_overwritten_and_bad_files_are_refused(twin: Twin, tmp_path: Path) -> None:
    points, pixels = _observed(twin, n=10)
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    path = save_calibration(calib, tmp_path / "calib.yaml")
    with pytest.raises(TwinError, match="exists"):
        save_calibration(calib, path)
    save_calibration(calib, path, overwrite=True)

    data = json.loads(json.dumps(calib.to_dict()))
    data["camera_pose"]["matrix"][0][0] = 2.0
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(TwinError, match="not a rigid 4x4 transform"):
        load_calibration(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something/1"}))
    with pytest.raises(TwinError, match="not a camera calibration file"):
        load_calibration(tmp_path / "other.json")


def test_camera_config_refuses_a_non_unit_quaternion() -> None:
    with pytest.raises(TwinError, match="unit quaternion"):
        CameraConfig(quat=(1.0, 1.0, 0.0, 0.0))


# ----- input files -----------------------------------------------------------------------------
ROS_ECHO = """header:
  stamp:
    sec: 12
    nanosec: 0
  frame_id: camera_color_optical_frame
height: 480
width: 640
distortion_model: plumb_bob
d:
- 0.0
- 0.0
- 0.0
- 0.0
- 0.0
k:
- 615.0
- 0.0
- 320.5
- 0.0
- 614.0
- 240.5
- 0.0
- 0.0
- 1.0
r: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
binning_x: 0
---
"""


def test_intrinsics_from_the_usual_files(tmp_path: Path) -> None:
    (tmp_path / "info.yaml").write_text(ROS_ECHO)
    k = load_intrinsics(tmp_path / "info.yaml")
    assert (k.width, k.height, k.fx, k.fy, k.ppx, k.ppy) == (640, 480, 615.0, 614.0, 320.5, 240.5)
    info = {"camera": {"width": 320, "height": 240, "fx": 230.5, "fy": 230.5, "ppx": 159.5,
                       "ppy": 119.5}, "task": "push_cube"}  # fmt: skip
    (tmp_path / "twin_info.json").write_text(json.dumps(info))
    assert load_intrinsics(tmp_path / "twin_info.json").fx == 230.5
    (tmp_path / "flat.yaml").write_text(
        "fx: 400\nfy: 401\ncx: 100\ncy: 80\nwidth: 200\nheight: 160\n"
    )
    flat = load_intrinsics(tmp_path / "flat.yaml")
    assert (flat.fy, flat.ppx, flat.ppy) == (401.0, 100.0, 80.0)
    (tmp_path / "bad.yaml").write_text("fx: 400\nfy: 401\n")
    with pytest.raises(TwinError, match="cannot read intrinsics"):
        load_intrinsics(tmp_path / "bad.yaml")


def test_correspondences_csv_with_a_marker_offset(tmp_path: Path) -> None:
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)  # 90 deg about z: x -> y
    text = f"# marker run\nx,y,z,qx,qy,qz,qw,u,v\n0.5,0.0,0.2,0,0,{s},{c},100.0,50.0\n"
    (tmp_path / "pts.csv").write_text(text)
    points, pixels = load_correspondences(tmp_path / "pts.csv")
    assert points.tolist() == [[0.5, 0.0, 0.2]]
    assert pixels.tolist() == [[100.0, 50.0]]
    points, _ = load_correspondences(tmp_path / "pts.csv", marker_offset=(0.1, 0.0, 0.0))
    assert points[0] == pytest.approx([0.5, 0.1, 0.2])
    (tmp_path / "short.csv").write_text("x,y,z,u\n1,2,3,4\n")
    with pytest.raises(TwinError, match="lacks the column"):
        load_correspondences(tmp_path / "short.csv")


# ----- the CLI ---------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="twinloop")
    add_calibrate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_twin_check_then_robot_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = _cli(
        ["calibrate", "camera", "--twin-check", "--poses", "10", "--out", str(tmp_path / "t.yaml"),
         "--save-points", str(tmp_path / "pts.csv"), "--save-intrinsics",
         str(tmp_path / "intr.json"), "--plot", str(tmp_path / "check.png")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "twin check passed" in out
    assert "reprojection error over 10 of 10 points" in out
    assert (tmp_path / "check.png").stat().st_size > 10_000

    rc = _cli(
        ["calibrate", "camera", "--points", str(tmp_path / "pts.csv"), "--intrinsics",
         str(tmp_path / "intr.json"), "--out", str(tmp_path / "robot.yaml")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "static_transform_publisher" in out
    robot, check = load_calibration(tmp_path / "robot.yaml"), load_calibration(tmp_path / "t.yaml")
    assert robot.camera_pose == pytest.approx(check.camera_pose, abs=1e-5)

    with pytest.raises(TwinError, match=r"above max_error_px 0\.01"):
        _cli(["calibrate", "camera", "--points", str(tmp_path / "pts.csv"), "--intrinsics",
              str(tmp_path / "intr.json"), "--max-error-px", "0.01"])  # fmt: skip
    with pytest.raises(TwinloopError, match="give --points CSV and --intrinsics"):
        _cli(["calibrate", "camera", "--points", str(tmp_path / "pts.csv")])


def test_twin_node_takes_the_calibration_file(twin: Twin, tmp_path: Path) -> None:
    pytest.importorskip("rclpy")
    from twinloop_ros.twin_node import TwinNodeConfig

    points, pixels = _observed(twin, n=12, seed=7)
    calib = calibrate_camera(points, pixels, twin.intrinsics)
    path = save_calibration(calib, tmp_path / "calib.yaml")
    config = TwinNodeConfig(camera_calibration=str(path)).twin_config()
    moved = Twin(config)
    try:
        assert moved.camera_pose() == pytest.approx(calib.camera_pose, abs=1e-6)
        assert (config.camera.width, config.camera.height) == (320, 240)  # the node's size
    finally:
        moved.close()
    with pytest.raises(TwinError, match=r"missing\.yaml"):
        TwinNodeConfig(camera_calibration=str(tmp_path / "missing.yaml")).twin_config()
