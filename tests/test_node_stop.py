"""How a twinloop node process stops (node_utils.run_node), checked on real processes.

- SIGINT ends it at a clean point with exit code 0, even while the main thread is busy in a
  callback: no KeyboardInterrupt is raised in the middle of it (CI once saw policy_node hang
  after one and ignore the SIGTERM that followed, so the graph had to SIGKILL it).
- A node whose stop hangs is not left running: the second signal prints every thread's stack,
  naming where it hangs, and exits with 128 + the signal.
- SIGUSR1 prints the stacks of a running node and it keeps running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Jazzy wheels (pip install -e .[ros])")

from twinloop_ros.probe import ros_env

pytestmark = [pytest.mark.ros]

DOMAIN_ID = 1 + (os.getpid() + 37) % 100

NODE = """
import os, sys, threading, time
from rclpy.node import Node
from twinloop_ros.node_utils import main_exit

class Busy(Node):
    def __init__(self):
        super().__init__("busy")
        self.ticks = 0
        self.create_timer(0.01, self.tick)

    def tick(self):
        self.ticks += 1
        if self.ticks == 5:
            print("spinning", flush=True)
        t = time.monotonic()
        while time.monotonic() - t < 0.009:  # busy in Python: where KeyboardInterrupt would land
            pass

    def destroy_node(self):
        print(f"destroy after {self.ticks} ticks", flush=True)
        if os.environ.get("HANG_IN_STOP"):
            threading.Event().wait()  # a stop that never ends
        super().destroy_node()

main_exit(Busy)
"""


def start(tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "busy_node.py"
    script.write_text(NODE)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **ros_env(DOMAIN_ID), **env},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "spinning", line
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_sigint_stops_a_busy_node_cleanly(tmp_path: Path) -> None:
    for _ in range(3):  # the signal lands at a different line each time
        proc = start(tmp_path)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        code, out = finish(proc)
        assert code == 0, out
        assert "destroy after" in out and "KeyboardInterrupt" not in out, out
        assert "Traceback" not in out, out


def test_a_stop_that_hangs_shows_where_and_ends_on_the_second_signal(tmp_path: Path) -> None:
    proc = start(tmp_path, HANG_IN_STOP="1")
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None, "the stop hangs (on purpose)"
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out
    assert "SIGTERM while stopping: exiting now" in out, out
    assert "in destroy_node" in out and "busy_node.py" in out, out  # the stack names the hang


def test_sigusr1_prints_the_stacks_of_a_running_node(tmp_path: Path) -> None:
    proc = start(tmp_path)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert proc.poll() is None, "SIGUSR1 must not stop the node"
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    assert code == 0, out
    assert "Current thread" in out and ("in tick" in out or "in spin" in out), out
