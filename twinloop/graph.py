"""Node-graph profiles (config/graph_<profile>.yaml) and a launcher that runs them as processes.

One source of truth, two launchers (DESIGN.md "Launching"): on the robot
``ros2 launch twinloop_ros twinloop.launch.py profile:=robot`` turns each node into a launch_ros
``Node`` (via :meth:`NodeSpec.launch_kwargs`); in CI and on laptops :class:`GraphProcesses` starts
the same console scripts as processes with ``--ros-args`` (:meth:`NodeSpec.ros_args`).

A graph file::

    nodes:
      - name: twin                  # ROS node name (unique in the graph)
        package: twinloop_ros
        executable: twin_node       # console script
        required: true              # optional: the graph stops when this node exits
        parameters: {task: push_cube, camera_fps: 15.0}
        remappings: {/joint_states: /twin/joint_states}

This module is ROS-free: it only builds command lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import yaml

from .errors import TwinloopError

__all__ = [
    "Graph",
    "GraphProcesses",
    "NodeExit",
    "NodeSpec",
    "available_profiles",
    "config_dirs",
    "format_param_value",
    "load_graph",
    "parse_graph",
    "parse_override",
]

log = logging.getLogger(__name__)

ROS_PACKAGE = "twinloop_ros"
FASTDDS_PROFILE = "fastdds.xml"  # Fast DDS profile shipped in config/
PROFILE_PREFIX = "graph_"
ParamValue = (
    bool
    | int
    | float
    | str
    | tuple[bool, ...]
    | tuple[int, ...]
    | tuple[float, ...]
    | tuple[str, ...]
)

_NODE_KEYS = {"name", "package", "executable", "parameters", "remappings", "required"}
_REQUIRED_NODE_KEYS = ("name", "package", "executable")
_TOP_KEYS = {"nodes", "description"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EXP_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ----- parameter values ------------------------------------------------------------------------
def _check_value(where: str, value: Any) -> ParamValue:
    """A ROS parameter value: bool, int, float, str, or a non-empty list of one of them."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{where}: {value} is not a finite number"
            raise TwinloopError(msg)
        return value
    if isinstance(value, list | tuple):
        if not value:
            msg = f"{where}: an empty list has no ROS parameter type; leave the parameter out"
            raise TwinloopError(msg)
        items: list[bool | int | float | str] = []
        for v in value:
            checked = _check_value(where, v)
            if isinstance(checked, tuple):
                msg = f"{where}: nested lists are not ROS parameters"
                raise TwinloopError(msg)
            items.append(checked)
        kinds = {bool if isinstance(v, bool) else type(v) for v in items}
        if kinds == {int, float}:  # [0, 0.5] is a float array
            return tuple(float(v) for v in items)
        if len(kinds) != 1:
            msg = f"{where}: a list must hold one type, got {value!r}"
            raise TwinloopError(msg)
        return tuple(items)  # type: ignore[return-value]
    if value is None:
        msg = f"{where} has no value (write '' for an empty string)"
        raise TwinloopError(msg)
    msg = f"{where}: {value!r} is not a ROS parameter value (bool, int, float, string or a list)"
    raise TwinloopError(msg)


def _flatten(where: str, params: Mapping[str, Any], prefix: str = "") -> dict[str, ParamValue]:
    """Nested mappings become dotted names, as ROS parameter files have them."""
    out: dict[str, ParamValue] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or not _PARAM_RE.match(name):
            msg = f"{where}: {name!r} is not a valid parameter name"
            raise TwinloopError(msg)
        if isinstance(value, Mapping):
            out.update(_flatten(where, value, prefix=f"{name}."))
        else:
            out[name] = _check_value(f"{where} parameter {name!r}", value)
    return out


def format_param_value(value: ParamValue) -> str:
    """The YAML text that ``-p name:=<text>`` parses back to ``value`` with the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)  # shortest round trip
        if "." not in text and "e" in text:  # 1e-05 -> 1.0e-05: a float for every YAML parser
            text = text.replace("e", ".0e", 1)
        return text
    if isinstance(value, str):
        return json.dumps(value)  # a double-quoted YAML scalar is always a string
    return "[" + ", ".join(format_param_value(v) for v in value) + "]"


# ----- the graph -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph: what to run, its parameters and remappings."""

    name: str  # ROS node name, unique in the graph
    package: str  # ROS package of the executable
    executable: str  # console script name
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)  # flat, dotted names
    remappings: Mapping[str, str] = field(default_factory=dict)  # from -> to (topics, services)
    required: bool = False  # the graph stops when this node exits

    def __post_init__(self) -> None:
        where = f"node {self.name!r}"
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            msg = f"{where}: a node name is letters, digits and '_' and does not start with a digit"
            raise TwinloopError(msg)
        for key in ("package", "executable"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value or "/" in value:
                msg = f"{where}: {key} must be a plain name, got {value!r}"
                raise TwinloopError(msg)
        if not isinstance(self.required, bool):
            msg = f"{where}: required must be true or false, got {self.required!r}"
            raise TwinloopError(msg)
        if not isinstance(self.parameters, Mapping):
            msg = f"{where}: parameters must be a mapping, got {self.parameters!r}"
            raise TwinloopError(msg)
        if not isinstance(self.remappings, Mapping):
            msg = f"{where}: remappings must be a mapping of from: to, got {self.remappings!r}"
            raise TwinloopError(msg)
        for src, dst in self.remappings.items():
            if not (isinstance(src, str) and isinstance(dst, str) and src and dst):
                msg = f"{where}: remapping {src!r}: {dst!r} must map a name to a name"
                raise TwinloopError(msg)
        params = _flatten(where, self.parameters)
        object.__setattr__(self, "parameters", MappingProxyType(params))
        object.__setattr__(self, "remappings", MappingProxyType(dict(self.remappings)))

    def ros_args(self) -> list[str]:
        """``--ros-args -r __node:=<name> -p k:=v ... -r from:=to ...`` for the command line."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={format_param_value(value)}"]
        for src, dst in self.remappings.items():
            args += ["-r", f"{src}:={dst}"]
        return args

    def launch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``launch_ros.actions.Node`` (the launch file adds on_exit)."""
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.parameters.items()}
        return {
            "package": self.package,
            "executable": self.executable,
            "name": self.name,
            "parameters": [params] if params else [],
            "remappings": list(self.remappings.items()),
            "output": "screen",
        }

    def with_parameters(self, updates: Mapping[str, Any]) -> NodeSpec:
        return replace(self, parameters={**self.parameters, **updates})


@dataclass(frozen=True)
class NodeExit:
    """The node exit that ended a running graph."""

    name: str
    returncode: int  # as Popen reports it: -N when killed by signal N
    required: bool

    @property
    def exit_code(self) -> int:
        """The code for the launcher's own exit: 128 + N for a node killed by signal N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode


@dataclass(frozen=True)
class Graph:
    """A validated node graph."""

    profile: str  # profile name (the file's stem without "graph_")
    nodes: tuple[NodeSpec, ...]
    source: Path | None = None  # the file it came from

    def __post_init__(self) -> None:
        if not self.nodes:
            msg = f"graph {self.profile!r} has no nodes"
            raise TwinloopError(msg)
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                msg = f"graph {self.profile!r}: duplicate node name {node.name!r}"
                raise TwinloopError(msg)
            seen.add(node.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        msg = f"graph {self.profile!r} has no node {name!r}. Available: {list(self.names)}"
        raise TwinloopError(msg)

    def only(self, *names: str) -> Graph:
        """The graph restricted to ``names`` (in the graph's order)."""
        for name in names:
            self.node(name)  # unknown names raise
        return replace(self, nodes=tuple(n for n in self.nodes if n.name in names))

    def without(self, *names: str) -> Graph:
        for name in names:
            self.node(name)
        return replace(self, nodes=tuple(n for n in self.nodes if n.name not in names))

    def with_overrides(self, overrides: Iterable[str]) -> Graph:
        """Apply ``node.param=value`` overrides (values parsed as YAML: 3, 0.5, true, [1, 2])."""
        updates: dict[str, dict[str, Any]] = {}
        for text in overrides:
            node, param, value = parse_override(text)
            self.node(node)
            updates.setdefault(node, {})[param] = value
        if not updates:
            return self
        nodes = tuple(
            n.with_parameters(updates[n.name]) if n.name in updates else n for n in self.nodes
        )
        return replace(self, nodes=nodes)

    def launch_kwargs(self) -> list[dict[str, Any]]:
        """One dict per node for launch_ros ``Node(**kwargs)``, plus ``required``."""
        return [{**n.launch_kwargs(), "required": n.required} for n in self.nodes]


def parse_override(text: str) -> tuple[str, str, ParamValue]:
    """``"twin.task=open_drawer"`` -> ``("twin", "task", "open_drawer")``."""
    key, sep, raw = text.partition("=")
    node, dot, param = key.strip().partition(".")
    if not sep or not dot or not node or not param:
        msg = f"override {text!r} must look like node.parameter=value (e.g. twin.task=open_drawer)"
        raise TwinloopError(msg)
    raw = raw.strip()
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        msg = f"override {text!r}: the value is not valid YAML: {err}"
        raise TwinloopError(msg) from err
    if value == raw and _EXP_FLOAT_RE.match(raw):  # YAML 1.1 reads 1e-5 as a string; ROS does not
        value = float(raw)
    if not _PARAM_RE.match(param):
        msg = f"override {text!r}: {param!r} is not a valid parameter name"
        raise TwinloopError(msg)
    return node, param, _check_value(f"override {text!r}", value)


def parse_graph(data: Any, *, profile: str, source: Path | None = None) -> Graph:
    """Validate the parsed YAML of a graph file and build the Graph."""
    where = f"graph {profile!r}" + (f" ({source})" if source else "")
    if not isinstance(data, Mapping):
        msg = f"{where}: expected a mapping with a 'nodes' list, got {type(data).__name__}"
        raise TwinloopError(msg)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        msg = f"{where}: unknown keys {unknown}. Allowed: {sorted(_TOP_KEYS)}"
        raise TwinloopError(msg)
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        msg = f"{where}: 'nodes' must be a non-empty list"
        raise TwinloopError(msg)
    specs = []
    for i, entry in enumerate(nodes):
        if not isinstance(entry, Mapping):
            msg = f"{where}: node #{i} must be a mapping, got {entry!r}"
            raise TwinloopError(msg)
        label = f"{where} node #{i} ({entry.get('name', '?')})"
        missing = [k for k in _REQUIRED_NODE_KEYS if k not in entry]
        if missing:
            msg = f"{label}: missing keys {missing}"
            raise TwinloopError(msg)
        extra = sorted(set(entry) - _NODE_KEYS)
        if extra:
            msg = f"{label}: unknown keys {extra}. Allowed: {sorted(_NODE_KEYS)}"
            raise TwinloopError(msg)
        kwargs = dict(entry)
        for key in ("parameters", "remappings"):  # "parameters:" with nothing under it
            if kwargs.get(key) is None:
                kwargs[key] = {}
        try:
            specs.append(NodeSpec(**kwargs))
        except TwinloopError as err:
            msg = f"{where}: {err}"
            raise TwinloopError(msg) from None
    try:
        return Graph(profile=profile, nodes=tuple(specs), source=source)
    except TwinloopError as err:
        msg = f"{err}" + (f" ({source})" if source else "")
        raise TwinloopError(msg) from None


# ----- finding graph files ---------------------------------------------------------------------
def config_dirs() -> list[Path]:
    """Where graph files are looked for, first match wins.

    1. the repository checkout (robot_ws/src/twinloop_ros/config next to the twinloop package),
    2. ``<sys.prefix>/share/twinloop_ros/config`` (``pip install robot_ws/src/twinloop_ros``),
    3. ``<prefix>/share/twinloop_ros/config`` for each AMENT_PREFIX_PATH entry (colcon install).
    """
    repo = Path(__file__).resolve().parent.parent / "robot_ws" / "src" / ROS_PACKAGE / "config"
    dirs = [repo, Path(sys.prefix) / "share" / ROS_PACKAGE / "config"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / ROS_PACKAGE / "config")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def fastdds_profile(search_dirs: Sequence[Path] | None = None) -> Path | None:
    """The shipped Fast DDS profile (8 MiB shared-memory segments, so 640x480 frames fit)."""
    for d in search_dirs or config_dirs():
        path = d / FASTDDS_PROFILE
        if path.is_file():
            return path
    return None


def available_profiles(search_dirs: Sequence[Path] | None = None) -> list[str]:
    names: set[str] = set()
    for d in search_dirs if search_dirs is not None else config_dirs():
        if d.is_dir():
            names.update(
                p.stem.removeprefix(PROFILE_PREFIX) for p in d.glob(f"{PROFILE_PREFIX}*.yaml")
            )
    return sorted(names)


def _find_profile(profile: str, search_dirs: Sequence[Path]) -> Path:
    for d in search_dirs:
        path = d / f"{PROFILE_PREFIX}{profile}.yaml"
        if path.is_file():
            return path
    msg = (
        f"unknown graph profile {profile!r}. Available: {available_profiles(search_dirs)} "
        f"(looked in {[str(d) for d in search_dirs]})"
    )
    raise TwinloopError(msg)


def load_graph(
    profile_or_path: str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    search_dirs: Sequence[Path] | None = None,
) -> Graph:
    """Load a profile by name (``"sim"``) or a graph file by path, then apply overrides."""
    text = os.fspath(profile_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            msg = f"graph file {path} does not exist"
            raise TwinloopError(msg)
        profile = path.stem.removeprefix(PROFILE_PREFIX)
    else:
        path = _find_profile(text, list(search_dirs) if search_dirs is not None else config_dirs())
        profile = text
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        msg = f"graph file {path} is not valid YAML: {err}"
        raise TwinloopError(msg) from err
    return parse_graph(data, profile=profile, source=path).with_overrides(overrides)


# ----- running a graph as processes ------------------------------------------------------------
def find_executable(node: NodeSpec) -> Path:
    """The console script of ``node``: this environment's bin, a colcon lib dir, then PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / node.executable,
        Path(sys.executable).parent / node.executable,
    ]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "lib" / node.package / node.executable)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(node.executable)
    if found:
        return Path(found)
    msg = (
        f"node {node.name!r}: executable {node.executable!r} of package {node.package!r} not found "
        f"(looked in {sorted({str(c.parent) for c in candidates})} and PATH); "
        f"install it with `pip install -e robot_ws/src/{ROS_PACKAGE}`"
    )
    raise TwinloopError(msg)


def _log_line(node: str, line: str) -> None:
    log.info("[%s] %s", node, line)


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a child that runs this gets SIGTERM when the launching thread dies, so a crashed or
    SIGKILLed launcher leaves no orphans. Loaded in the parent: the child only makes the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def set_death_signal() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigterm)

    return set_death_signal


class GraphProcesses:
    """Runs each node of a graph as its own process (and process group).

    Use as a context manager; leaving it (also on Ctrl-C, SIGTERM or an exception) stops every
    node, so no process outlives it::

        with GraphProcesses(load_graph("sim"), log_dir=run / "logs") as procs:
            code = procs.wait()  # exit code of the graph, None on timeout

    The graph ends when a ``required`` node exits (its code is the graph's) or any node fails
    (non-zero; that code, 128 + N for a node killed by signal N). Each output line of a node goes
    to ``output(node_name, line)`` (default: this module's logger, prefixed ``[name]``), to
    ``<log_dir>/<name>.log`` when ``log_dir`` is given, and the last ``keep_lines`` lines of each
    node are kept for :meth:`logs`.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        env: Mapping[str, str] | None = None,
        output: Callable[[str, str], None] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        keep_lines: int = 200,
        handle_sigterm: bool = True,
    ) -> None:
        self.graph = graph
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        profile = fastdds_profile()
        if profile is not None and "FASTRTPS_DEFAULT_PROFILES_FILE" not in self._env:
            # Default Fast DDS segments (512 KiB) drop 640x480 frames; see benchmarks/RESULTS.md.
            self._env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
        self._output = output or _log_line
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._keep = keep_lines
        self._handle_sigterm = handle_sigterm
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._readers: list[threading.Thread] = []
        self._lines: dict[str, deque[str]] = {}
        self._old_sigterm: Any = None
        self._stopped = False
        self.ended: NodeExit | None = None  # the exit that ended the graph

    # ----- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> GraphProcesses:
        if self._handle_sigterm and threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self.start()
        except BaseException:
            self.stop()
            self._restore_sigterm()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def start(self) -> None:
        """Start every node (all executables are found first, so a missing one starts none)."""
        if self._procs:
            msg = "this graph is already running"
            raise TwinloopError(msg)
        commands = {n.name: [str(find_executable(n)), *n.ros_args()] for n in self.graph.nodes}
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
        # The death signal follows the launching *thread*: only set it from the main thread.
        on_main = threading.current_thread() is threading.main_thread()
        preexec = _parent_death_signal() if on_main else None
        for name, cmd in commands.items():
            log.debug("starting %s: %s", name, shlex.join(cmd))
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,  # own process group: signals reach the node and its children
                preexec_fn=preexec,
            )
            self._procs[name] = proc
            self._lines[name] = deque(maxlen=self._keep)
            reader = threading.Thread(
                target=self._pump, args=(name, proc, cmd), name=f"graph-{name}", daemon=True
            )
            reader.start()
            self._readers.append(reader)

    def _pump(self, name: str, proc: subprocess.Popen[bytes], cmd: list[str]) -> None:
        if proc.stdout is None:
            return
        sink = None
        if self._log_dir is not None:
            sink = (self._log_dir / f"{name}.log").open("w", encoding="utf-8")
            sink.write(f"$ {shlex.join(cmd)}\n")
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self._lines[name].append(line)
                if sink is not None:
                    sink.write(line + "\n")
                    sink.flush()
                try:
                    self._output(name, line)
                except Exception:  # a broken sink must not stop the pump (the pipe would fill)
                    log.exception("output callback failed for %s", name)
        finally:
            proc.stdout.close()
            if sink is not None:
                sink.close()

    # ----- state -----------------------------------------------------------------------------
    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items()}

    def returncodes(self) -> dict[str, int | None]:
        """Return code of each node (None while it runs; -N when killed by signal N)."""
        return {name: p.poll() for name, p in self._procs.items()}

    def running(self) -> list[str]:
        return [name for name, code in self.returncodes().items() if code is None]

    def logs(self, name: str) -> str:
        """The last lines a node wrote (stdout and stderr)."""
        if name not in self._lines:
            msg = f"no node {name!r} in this graph. Available: {list(self._lines)}"
            raise TwinloopError(msg)
        return "\n".join(self._lines[name])

    def poll(self) -> int | None:
        """The graph's exit code once it has ended, else None (see the class docstring)."""
        if self.ended is not None:
            return self.ended.exit_code
        codes = self.returncodes()
        if not codes:
            return None
        for node in self.graph.nodes:
            code = codes.get(node.name)
            if code is not None and (node.required or code != 0):
                self.ended = NodeExit(node.name, code, node.required)
                if code != 0:
                    log.error(
                        "node %s exited with %d; its last output:\n%s",
                        node.name,
                        code,
                        self.logs(node.name),
                    )
                return self.ended.exit_code
        if all(code == 0 for code in codes.values()):  # all left cleanly, none is required
            return 0
        return None

    def wait(self, timeout: float | None = None, *, poll_s: float = 0.05) -> int | None:
        """Block until the graph ends and return its exit code; None after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)
        return code

    # ----- stopping --------------------------------------------------------------------------
    def stop(self, timeout: float = 5.0) -> dict[str, int | None]:
        """SIGINT every node, then SIGTERM, then SIGKILL what is left; return the return codes.

        Safe to call twice; a second Ctrl-C while waiting skips straight to SIGKILL.
        """
        if self._stopped:
            return self.returncodes()
        self._stopped = True
        try:
            for sig, wait_s in ((signal.SIGINT, timeout), (signal.SIGTERM, 2.0)):
                self._signal_all(sig, only_running=True)
                if self._wait_all(wait_s):
                    break
                log.warning("nodes %s ignored %s", self.running(), sig.name)
            else:
                self._dump_stacks()
        except KeyboardInterrupt:
            log.warning("interrupted while stopping: killing the graph")
        finally:
            self._signal_all(signal.SIGKILL, only_running=False)  # stragglers in the groups too
            for proc in self._procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5.0)
            for reader in self._readers:
                reader.join(timeout=2.0)
        return self.returncodes()

    def _dump_stacks(self) -> None:
        """Ask twinloop's nodes still running for their thread stacks (run_node prints them on
        SIGUSR1; to another program it could be fatal) so the output shows where they hang, then
        give the readers a moment to pass it on."""
        ours = [n for n in self.running() if self.graph.node(n).package == ROS_PACKAGE]
        for name in ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._procs[name].pid, signal.SIGUSR1)
        if ours:
            time.sleep(1.0)

    def _signal_all(self, sig: signal.Signals, *, only_running: bool) -> None:
        for proc in self._procs.values():
            if only_running and proc.poll() is not None:
                continue
            try:
                if proc.poll() is not None:
                    os.killpg(proc.pid, 0)  # the group outlives its leader while a member lives
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _wait_all(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return True
            time.sleep(0.05)
        return not self.running()


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
