"""ros2 launch twinloop_ros twinloop.launch.py profile:=sim|robot [overrides:="twin.task=open_drawer"]

Builds one launch_ros Node per entry of config/graph_<profile>.yaml (installed in this package's
share directory). The YAML is read and validated by twinloop.graph, the same code
`twinloop launch` uses, so both launchers start the same graph. A node marked ``required`` shuts
the whole launch down when it exits.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from twinloop.graph import load_graph


def _nodes(context: LaunchContext) -> list[Node]:
    profile = LaunchConfiguration("profile").perform(context)
    overrides = shlex.split(LaunchConfiguration("overrides").perform(context))
    config = Path(get_package_share_directory("twinloop_ros")) / "config"
    graph = load_graph(profile, overrides=overrides, search_dirs=[config])
    nodes = []
    for kwargs in graph.launch_kwargs():
        required = kwargs.pop("required")
        on_exit = Shutdown(reason=f"required node {kwargs['name']} exited") if required else None
        nodes.append(Node(**kwargs, on_exit=on_exit))
    return nodes


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "profile", default_value="sim", description="graph profile: sim or robot"
            ),
            DeclareLaunchArgument(
                "overrides",
                default_value="",
                description="space-separated node.param=value overrides",
            ),
            OpaqueFunction(function=_nodes),
        ]
    )
