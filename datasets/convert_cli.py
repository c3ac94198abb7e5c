"""``twinloop dataset import-rosbag2`` and ``twinloop dataset export-lerobot``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Literal

from .errors import DatasetError

__all__ = ["add_commands", "cmd_export_lerobot", "cmd_import_rosbag2"]

log = logging.getLogger(__name__)


def _out(text: str) -> None:
    """User-facing output of the CLI (library code logs instead)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _tolerances(items: list[str]) -> tuple[float | None, dict[str, float]]:
    default: float | None = None
    per_key: dict[str, float] = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            seconds = float(value)
        except ValueError:
            msg = f"--tolerance expects SECONDS or KEY=SECONDS, got {item!r}"
            raise DatasetError(msg) from None
        if sep:
            per_key[key.strip()] = seconds
        else:
            default = seconds
    return default, per_key


def cmd_import_rosbag2(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .rosbag_import import (
        RosbagImportConfig,
        find_bags,
        import_rosbags,
        parse_topic_overrides,
    )

    tolerance, tolerances = _tolerances(args.tolerance)
    config = RosbagImportConfig(
        fps=args.fps,
        topics=parse_topic_overrides(args.topic),
        tolerance=tolerance,
        tolerances=tolerances,
        stamps=args.stamps,
        joint_names=tuple(j.strip() for j in args.joints.split(",")) if args.joints else None,
        drop_bad_messages=args.drop_bad_messages,
        task=args.task,
        operator=args.operator,
    )
    mode: Literal["create", "append", "overwrite"] = (
        "append" if args.append else "overwrite" if args.overwrite else "create"
    )
    n_bags = len(find_bags(args.bags))
    _out(f"importing {n_bags} bag(s) into {args.out} at {config.fps:g} fps")
    report = import_rosbags(
        args.bags, args.out, config, mode=mode, robot_profile=args.robot_profile, progress=True
    )
    for path, episode in report.imported:
        tqdm.write(f"  episode {episode}: {path}")
    for path, err in report.failed:
        _out(f"  FAILED {path}: {err}")
    _out(
        f"{len(report.imported)} of {len(report.imported) + len(report.failed)} bags imported: "
        f"{report.steps} steps, {report.dropped_steps} dropped, {report.seconds:.1f} s -> {args.out}"
    )
    return 1 if report.failed else 0


def cmd_export_lerobot(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .lerobot_export import LeRobotExportConfig, export_lerobot
    from .store import EpisodeStore

    config = LeRobotExportConfig(
        repo_id=args.repo_id,
        state_keys=tuple(k.strip() for k in args.state_keys.split(","))
        if args.state_keys
        else None,
        vcodec=args.vcodec,
        crf=args.crf,
        robot_type=args.robot_type,
        episodes=tuple(int(e) for e in args.episodes.split(",")) if args.episodes else None,
    )
    with EpisodeStore.open(args.store, mode="r") as store:
        total = len(config.episodes) if config.episodes else store.n_episodes
    bar = tqdm(total=total, unit="episode", desc="export")
    try:
        report = export_lerobot(
            args.store,
            args.out,
            config,
            overwrite=args.overwrite,
            on_episode=lambda _i: bar.update(1),
        )
    finally:
        bar.close()
    videos = sum(report.videos.values())
    _out(
        f"LeRobot v3.0 dataset {config.repo_id}: {report.episodes} episodes, {report.frames} "
        f"frames, {report.data_files} data file(s), {videos} video file(s), "
        f"{report.seconds:.1f} s -> {report.out}"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this module's ``twinloop dataset ...`` subcommands on ``sub``."""
    p = sub.add_parser(
        "import-rosbag2",
        help="import rosbag2 recordings (sqlite3 or MCAP), one episode per bag",
        description=(
            "Import rosbag2 recordings into an episode store, one episode per bag. Steps are "
            "sampled at --fps from the first camera frame; every source is aligned by nearest "
            "header stamp, and a step whose input is missing or further than the tolerance is "
            "dropped and counted (never filled). A bag that cannot be read is reported and "
            "skipped; the others are still imported (exit status 1 if any failed)."
        ),
    )
    p.add_argument(
        "bags",
        nargs="+",
        metavar="BAG_OR_DIR",
        help="a rosbag2 directory, a .mcap / .db3 file, or a directory searched for bags",
    )
    p.add_argument("--out", required=True, help="the episode store to write")
    p.add_argument("--fps", type=float, default=10.0, help="step rate of the store (default: 10)")
    p.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="KEY=/TOPIC",
        help=(
            "map a source to a topic; an empty topic switches it off. Keys: image_<cam>, "
            "depth_<cam>, info_<cam>, joint_states, ee_pose, action, reward, episode. Defaults: "
            "image_color=/camera/camera/color/image_raw, depth_color=/camera/camera/"
            "aligned_depth_to_color/image_raw, info_color=/camera/camera/color/camera_info, "
            "joint_states=/joint_states, ee_pose=/twinloop/ee_pose, action=/twinloop/action, "
            "episode=/twinloop/episode (reward is off unless given, e.g. reward=/twinloop/reward)"
        ),
    )
    p.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="[KEY=]SECONDS",
        help="largest |stamp - step time| accepted, for all sources or one (default: 0.5/fps)",
    )
    p.add_argument(
        "--stamps",
        choices=["header", "bag"],
        default="header",
        help="align on header stamps (default) or on the bag's receive times",
    )
    p.add_argument(
        "--joints", default=None, help="joint order, comma-separated (default: as recorded)"
    )
    p.add_argument("--task", default="", help="task text of the episodes")
    p.add_argument("--operator", default="", help="who recorded the episodes")
    p.add_argument("--robot-profile", default="", help="robot profile stored in the store attrs")
    p.add_argument(
        "--drop-bad-messages",
        action="store_true",
        help="drop the steps that use an undecodable message instead of failing the bag",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add to an existing store")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=cmd_import_rosbag2)

    p = sub.add_parser(
        "export-lerobot",
        help="export an episode store as a LeRobot v3.0 dataset (parquet + mp4)",
        description=(
            "Write a LeRobot v3.0 dataset: meta/info.json, meta/stats.json, meta/tasks.parquet, "
            "meta/episodes/, data/chunk-000/file-000.parquet and one mp4 per camera under "
            "videos/observation.images.<camera>/ (encoded with PyAV). Depth is not exported."
        ),
    )
    p.add_argument("store", metavar="STORE", help="the episode store to export")
    p.add_argument("--out", required=True, help="the dataset directory to write")
    p.add_argument("--repo-id", default="twinloop/dataset", help="dataset name (user/name)")
    p.add_argument(
        "--state-keys",
        default=None,
        help="store keys concatenated into observation.state (default: joint_pos,ee_pose)",
    )
    p.add_argument("--vcodec", default="libx264", help="video encoder (libx264, libsvtav1, ...)")
    p.add_argument(
        "--crf", type=int, default=23, help="video quality, lower is better (default 23)"
    )
    p.add_argument("--robot-type", default=None, help="robot_type (default: the store's profile)")
    p.add_argument("--episodes", default=None, help="export only these episodes, e.g. 0,2,5")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.set_defaults(func=cmd_export_lerobot)
