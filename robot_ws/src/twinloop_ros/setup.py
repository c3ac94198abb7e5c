"""ament_python package twinloop_ros; also installable with `pip install -e robot_ws/src/twinloop_ros`."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "twinloop_ros"
HERE = Path(__file__).resolve().parent


def _files(pattern: str) -> list[str]:
    # data_files paths must be relative to this directory (colcon and pip both build from here).
    return sorted(str(Path(p).relative_to(HERE)) for p in glob(str(HERE / pattern)))


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.py")),
        (f"share/{PACKAGE}/config", _files("config/*.yaml") + _files("config/*.xml")),
    ],
    # rclpy and the message packages come from the ROS install (or the ros-jazzy-* wheels, see the
    # "ros" extra of the twinloop distribution); the twinloop core is installed from the repository.
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="twinloop maintainers",
    maintainer_email="twinloop@example.com",
    description="Thin rclpy nodes and launch profiles of the twinloop robot-learning stack",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            f"twin_node = {PACKAGE}.twin_node:main",
            f"scripted_teleop_node = {PACKAGE}.scripted_teleop_node:main",
            f"safety_node = {PACKAGE}.safety_node:main",
            f"camera_node = {PACKAGE}.camera_node:main",
            f"arm_bridge = {PACKAGE}.arm_bridge:main",
            f"ros2_control_mock = {PACKAGE}.ros2_control_mock:main",
            f"teleop_node = {PACKAGE}.teleop_node:main",
            f"recorder_node = {PACKAGE}.recorder_node:main",
            f"reward_node = {PACKAGE}.reward_node:main",
            f"policy_node = {PACKAGE}.policy_node:main",
            f"learner_node = {PACKAGE}.learner_node:main",
            f"episode_runner_node = {PACKAGE}.episode_runner_node:main",
            f"sysid_node = {PACKAGE}.sysid_node:main",
            f"live_view_node = {PACKAGE}.live_view_node:main",
        ],
    },
)
