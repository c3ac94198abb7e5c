"""What every twinloop node shares: QoS from the topic contract, typed parameters, a main loop."""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.task import Future

from twinloop.topics import TOPICS

from .errors import RosAdapterError

__all__ = [
    "COMMAND_QOS",
    "SENSOR_QOS",
    "main_exit",
    "params_from_dataclass",
    "qos_for",
    "run_node",
]

# Seconds a node may take to finish stopping once its spin has ended (a recorder closing its
# store, a learner saving its checkpoint) before it prints its stacks and exits with code 1.
STOP_GRACE_S = 30.0
# Sensor streams: best effort, keep the last few (compatible with reliable drivers).
SENSOR_QOS: QoSProfile = qos_profile_sensor_data
# Commands and events: reliable, volatile, depth 10.
COMMAND_QOS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)


def qos_for(topic: str) -> QoSProfile:
    """The QoS the topic contract (twinloop.topics.TOPICS) gives ``topic``."""
    try:
        sensor = TOPICS[topic].sensor
    except KeyError:
        msg = f"{topic!r} is not in the topic contract. Available: {sorted(TOPICS)}"
        raise RosAdapterError(msg) from None
    return SENSOR_QOS if sensor else COMMAND_QOS


T = TypeVar("T")


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Accept ``value`` for a parameter whose default is ``default`` (ints pass for floats)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)) or hasattr(value, "tolist"):
            items = list(value)
            if not default:  # an empty default names no item type: a list of strings
                if all(isinstance(v, str) for v in items):
                    return tuple(items)
            elif isinstance(default[0], float):
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                    return tuple(float(v) for v in items)
            elif all(type(v) is type(default[0]) for v in items):
                return tuple(items)
    empty = isinstance(default, (tuple, list)) and not default
    like = "a list of strings" if empty else f"like {default!r}"
    msg = f"parameter {name!r} must be {like}, got {value!r}"
    raise RosAdapterError(msg)


def params_from_dataclass(
    node: Node, cls: type[T], *, read_only: bool = True, prefix: str = ""
) -> T:
    """Declare one ROS parameter per field of the (flat) dataclass ``cls`` and build it.

    Fields become parameters named ``<prefix><field>`` with the field's default; values given at
    start (``-p name:=value``) are coerced to the field's type (``15`` is fine for a float). The
    dataclass validates itself, so bad parameters fail at start with its message.
    """
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cast(Any, cls)):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            msg = f"{cls.__name__}.{f.name} has no default; cannot turn it into a parameter"
            raise RosAdapterError(msg)
        name = prefix + f.name
        ros_default = list(default) if isinstance(default, tuple) else default
        descriptor = ParameterDescriptor(dynamic_typing=True, read_only=read_only)
        value = node.declare_parameter(name, ros_default, descriptor).value
        values[f.name] = _coerce(name, value, default)
    return cls(**values)


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Run a node until Ctrl-C / SIGTERM (or until its ``done`` future completes); exit code.

    rclpy.init installs handlers for SIGINT and SIGTERM that shut the context down, which ends
    the spin cleanly. A node that exposes ``done: Future`` stops when it completes and its
    result (an int) is the exit code. Bad parameters (ValueError at construction) give exit 2.
    Stopping is bounded: see :func:`_install_stop_handlers`.
    """
    _install_stop_handlers()
    rclpy.init(args=args)
    node: Node | None = None
    code = 0
    try:
        try:
            node = make_node()
        except ValueError as err:  # TwinloopError, TwinError, RosAdapterError: bad parameters
            get_logger("twinloop").fatal(f"cannot start: {err}")
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        done: Future | None = getattr(node, "done", None)
        if done is None:
            executor.spin()
        else:
            executor.spin_until_future_complete(done)
            if done.done():
                code = int(done.result() or 0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT/SIGTERM shut the context down at once; a callback that was publishing just then
        # fails with "context is invalid". That is the shutdown, not an error.
        if rclpy.ok():
            raise
    finally:
        # a node that cannot finish stopping says where it hangs and exits rather than live on
        faulthandler.dump_traceback_later(STOP_GRACE_S, exit=True)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


def _install_stop_handlers() -> None:
    """Make SIGINT/SIGTERM stop the node at a clean point, and a stuck stop visible.

    rclpy's handlers shut the context down (which wakes the executor and ends the spin) and
    then call the Python handler they replaced. Python's default one raises KeyboardInterrupt
    at whatever line the main thread is on, half-way through a callback or a library's
    bookkeeping, and the cleanup after it can then hang; a later SIGTERM finds the context
    already shut down and does nothing. So the Python handler here only notes the first signal;
    a second one (Ctrl-C again, or the graph's SIGTERM after its grace period) prints every
    thread's stack to stderr and exits at once. ``kill -USR1 <pid>`` prints the stacks of a
    running node.
    """
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        if len(signals) > 1:
            sys.stderr.write(f"{signal.Signals(signum).name} while stopping: exiting now\n")
            faulthandler.dump_traceback(all_threads=True)
            os._exit(128 + signum)

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)


def main_exit(make_node: Callable[[], Node]) -> None:
    """Console-script entry: run the node with the process arguments and exit with its code."""
    sys.exit(run_node(make_node, args=sys.argv))


def declare_params(
    node: Node, defaults: dict[str, Any], *, read_only: bool = True
) -> dict[str, Any]:
    """Declare one parameter per ``defaults`` entry and return the values given at start.

    Like :func:`params_from_dataclass` for defaults known only at run time (a profile read from
    a file): values are coerced to the default's type (``15`` is fine for a float). Empty lists
    have no ROS parameter type, so such entries are returned as they are, undeclared.
    """
    values: dict[str, Any] = {}
    for name, default in defaults.items():
        if isinstance(default, (tuple, list)) and not default:
            values[name] = default
            continue
        ros_default = list(default) if isinstance(default, tuple) else default
        descriptor = ParameterDescriptor(dynamic_typing=True, read_only=read_only)
        value = node.declare_parameter(name, ros_default, descriptor).value
        values[name] = _coerce(name, value, default)
    return values


def exit_if_help(
    doc: str | None, *configs: type, extra: str = "", argv: list[str] | None = None
) -> None:
    """``<node> --help`` (or ``-h``) before ``--ros-args``: print the docstring and the
    parameters of ``configs`` (dataclasses: name and default), then exit 0."""
    args = sys.argv[1:] if argv is None else argv
    own = args[: args.index("--ros-args")] if "--ros-args" in args else args
    if "--help" not in own and "-h" not in own:
        return
    lines = [(doc or "").strip(), "", "usage: <node> [--ros-args -p name:=value -r from:=to ...]"]
    lines.append("\nparameters (default):")
    for cls in configs:
        for f in dataclasses.fields(cast(Any, cls)):
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            lines.append(f"  {f.name} ({default!r})")
    if extra:
        lines += ["", extra.strip()]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.exit(0)


def dataclass_from_params(node: Node, cls: type[T], *, prefix: str = "") -> T:
    """Build ``cls`` again from parameters :func:`params_from_dataclass` declared, as they are
    now (a lifecycle node re-reads them on configure). Values are coerced the same way."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cast(Any, cls)):
        default = (
            f.default if f.default is not dataclasses.MISSING else cast(Any, f.default_factory)()
        )
        name = prefix + f.name
        values[f.name] = _coerce(name, node.get_parameter(name).value, default)
    return cls(**values)
