"""One side of the image-transport latency benchmark (``python -m twinloop_ros.dds_peer``,
run by benchmarks/twin.py as a subprocess).

``pub``: publishes ``--warmup`` + ``--count`` sensor_msgs/Image rgb8 frames at ``--rate`` Hz once a subscriber
has matched; ``msg.data = array.array('B', img.tobytes())`` and ``header.stamp = now`` right
before ``publish``, as the twin and camera nodes do. ``header.frame_id`` carries the sequence
number so the subscriber can count drops.

``sub``: records ``receive_time - header.stamp`` (same host, same system clock) at the top of the
callback and prints one JSON line with the latencies when the publisher has gone quiet.

Both sides exit on their own after ``--timeout`` seconds at the latest.
"""

from __future__ import annotations

import argparse
import array
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

TOPIC = "/twinloop_bench/image_raw"


def make_qos(name: str) -> QoSProfile:
    if name == "sensor":  # best effort, keep last 5, volatile
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    msg = f"unknown QoS {name!r}. Available: ['reliable', 'sensor']"
    raise ValueError(msg)


def run_pub(node: Node, args: argparse.Namespace) -> dict[str, object]:
    pub = node.create_publisher(Image, TOPIC, make_qos(args.qos))
    deadline = time.monotonic() + args.timeout
    while pub.get_subscription_count() < 1:
        if time.monotonic() > deadline:
            return {"role": "pub", "error": "no subscriber matched"}
        time.sleep(0.02)
    time.sleep(0.5)  # let the subscriber's side of the match settle as well
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(4)]
    msg = Image()
    msg.height, msg.width, msg.encoding = args.height, args.width, "rgb8"
    msg.step = 3 * args.width
    period = 1.0 / args.rate
    t_next = time.monotonic()
    t_start = t_next
    total = args.warmup + args.count
    for seq in range(total):
        msg.data = array.array("B", frames[seq % len(frames)].tobytes())
        msg.header.frame_id = str(seq)
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        t_next += period
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() > deadline:
            break
    elapsed = time.monotonic() - t_start
    time.sleep(0.3)  # keep the writer alive while the last samples are delivered
    return {"role": "pub", "sent": seq + 1, "rate_hz": (seq + 1) / elapsed}


def run_sub(node: Node, args: argparse.Namespace) -> dict[str, object]:
    clock = node.get_clock()
    latencies_ns: list[int] = []
    seqs: list[int] = []

    def on_image(msg: Image) -> None:
        now = clock.now().nanoseconds
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latencies_ns.append(now - stamp)
        seqs.append(int(msg.header.frame_id))
        if len(msg.data) != msg.step * msg.height:
            node.get_logger().error("wrong payload size")

    node.create_subscription(Image, TOPIC, on_image, make_qos(args.qos))
    deadline = time.monotonic() + args.timeout
    last_rx = None
    while time.monotonic() < deadline:
        n = len(seqs)
        rclpy.spin_once(node, timeout_sec=0.05)
        if len(seqs) != n:
            last_rx = time.monotonic()
        elif last_rx is not None and time.monotonic() - last_rx > args.idle:
            break
        if seqs and seqs[-1] >= args.warmup + args.count - 1:
            break
    keep = [i for i, seq in enumerate(seqs) if seq >= args.warmup]
    return {
        "role": "sub",
        "latencies_ns": [latencies_ns[i] for i in keep],
        "seqs": [seqs[i] for i in keep],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["pub", "sub"])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--count", type=int, default=300, help="frames measured")
    parser.add_argument("--warmup", type=int, default=15, help="frames sent first, not measured")
    parser.add_argument("--rate", type=float, default=30.0, help="publish rate, Hz")
    parser.add_argument("--qos", choices=["reliable", "sensor"], default="sensor")
    parser.add_argument("--idle", type=float, default=1.5, help="sub: stop after this quiet, s")
    parser.add_argument("--timeout", type=float, default=60.0, help="hard limit, s")
    args = parser.parse_args(argv)
    rclpy.init()
    try:
        node = rclpy.create_node(f"twinloop_bench_{args.role}")
        result = run_pub(node, args) if args.role == "pub" else run_sub(node, args)
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
