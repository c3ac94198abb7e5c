"""Live view of a running graph through rerun (the optional ``live`` extra), ROS-free.

:class:`LiveLogger` opens one rerun recording (application id ``twinloop``) and logs what the
graph streams, all on one timeline of robot time (the sensor stamps, integer nanoseconds), so
camera frames, rewards, actions and episode events line up however late each arrives::

    with LiveLogger(LiveConfig(sink="save", path="run.rrd")) as live:
        live.log_frame("color", stamp_ns, rgb)            # camera/color
        live.log_reward(stamp_ns, 0.42, False, camera="color")  # reward/color/{value,success}
        live.log_action(stamp_ns, [0.01, 0, 0, 0, 1], source="safe_action")  # action/safe_action
        live.log_event(stamp_ns, "episode 3: start")      # events

Sinks: ``spawn`` starts a native viewer (the ``rerun`` executable of rerun-sdk) and streams to
it; ``serve`` serves the recording over gRPC (``rerun rerun+http://host:9876/proxy`` connects a
viewer) and, with ``web_port``, a web viewer; ``connect`` streams to a viewer already running
(e.g. on a laptop); ``save`` writes an ``.rrd`` file (open it later with ``rerun file.rrd``).

Frames are the bandwidth: each camera is capped at ``max_fps`` (by stamp), downscaled to
``max_width`` and optionally JPEG-compressed (``jpeg_quality``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from .errors import TwinloopError
from .topics import ACTION_NAMES

__all__ = [
    "APPLICATION_ID",
    "SINKS",
    "LiveConfig",
    "LiveLogger",
    "check_entity_name",
    "episode_event_text",
    "import_rerun",
]

log = logging.getLogger(__name__)

APPLICATION_ID = "twinloop"
SINKS = ("spawn", "serve", "connect", "save")
INSTALL_HINT = "pip install 'twinloop[live]'"
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")  # one entity path component
_WARN_EVENTS = frozenset({"failure", "discard"})


def import_rerun() -> ModuleType:
    """The ``rerun`` module, or a TwinloopError that says how to install it."""
    try:
        import rerun
    except ImportError as err:
        msg = f"the live view needs rerun-sdk, which is not installed: {INSTALL_HINT}"
        raise TwinloopError(msg) from err
    return rerun


@dataclass(frozen=True)
class LiveConfig:
    """Where the live view goes and how much of the camera streams it takes."""

    sink: str = "spawn"  # spawn | serve | connect | save
    path: str = ""  # save: the .rrd file to write
    overwrite: bool = False  # save: replace an existing file at path
    url: str = ""  # connect: the viewer's gRPC url; "" = rerun+http://127.0.0.1:9876/proxy
    grpc_port: int = 9876  # serve: port of the gRPC server; spawn: port of the spawned viewer
    web_port: int = 0  # serve: also serve a web viewer on this port; 0 = gRPC only
    open_browser: bool = False  # serve with web_port: open the web viewer in a browser
    memory_limit: str = "25%"  # serve: data kept for late viewers (oldest dropped); spawn: viewer
    max_fps: float = 10.0  # most frames per second logged per camera (by stamp); 0 = all
    max_width: int = 640  # wider frames are downscaled to this width (aspect kept); 0 = as is
    jpeg_quality: int = 0  # 1-100: log frames as JPEG of this quality; 0 = raw RGB
    timeline: str = "robot_time"  # the timeline of the sensor stamps

    def __post_init__(self) -> None:
        if self.sink not in SINKS:
            msg = f"unknown live view sink {self.sink!r}. Available: {list(SINKS)}"
            raise TwinloopError(msg)
        if self.sink == "save" and not self.path:
            msg = "the save sink needs path: the .rrd file to write"
            raise TwinloopError(msg)
        if not (isinstance(self.max_fps, (int, float)) and math.isfinite(self.max_fps)):
            msg = f"max_fps must be a finite number >= 0, got {self.max_fps!r}"
            raise TwinloopError(msg)
        if self.max_fps < 0:
            msg = f"max_fps must be >= 0 (0 = every frame), got {self.max_fps}"
            raise TwinloopError(msg)
        if self.max_width < 0:
            msg = f"max_width must be >= 0 (0 = full size), got {self.max_width}"
            raise TwinloopError(msg)
        if not 0 <= self.jpeg_quality <= 100:
            msg = f"jpeg_quality must be in 1..100, or 0 for raw frames, got {self.jpeg_quality}"
            raise TwinloopError(msg)
        if not 1 <= self.grpc_port <= 65535:
            msg = f"grpc_port must be a port in 1..65535, got {self.grpc_port}"
            raise TwinloopError(msg)
        if not 0 <= self.web_port <= 65535:
            msg = f"web_port must be a port in 1..65535, or 0 for none, got {self.web_port}"
            raise TwinloopError(msg)
        if self.web_port and self.web_port == self.grpc_port:
            msg = f"web_port and grpc_port must differ, both are {self.web_port}"
            raise TwinloopError(msg)
        if not self.timeline:
            msg = "timeline must name the timeline of the sensor stamps"
            raise TwinloopError(msg)


def episode_event_text(payload: Mapping[str, Any]) -> str:
    """``{"event": "start", "episode": 3, "task": "push"}`` -> ``episode 3: start (task=push)``."""
    event = payload.get("event", "?")
    episode = payload.get("episode", "?")
    extra = ", ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}"
        for k, v in payload.items()
        if k not in ("event", "episode")
    )
    return f"episode {episode}: {event}" + (f" ({extra})" if extra else "")


def check_entity_name(what: str, name: str) -> str:
    """``name`` if it can be one component of an entity path, else a TwinloopError naming it."""
    if not _NAME_RE.match(name):
        msg = f"{what} {name!r} must be letters, digits, '_' or '-' (it names an entity path)"
        raise TwinloopError(msg)
    return name


def _check_stamp(stamp_ns: int) -> int:
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)) or stamp_ns < 0:
        msg = f"stamp must be integer nanoseconds >= 0, got {stamp_ns!r}"
        raise TwinloopError(msg)
    return int(stamp_ns)


def _vector(what: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        msg = f"{what} must be numbers, got {values!r}"
        raise TwinloopError(msg) from err
    if v.ndim != 1 or v.size == 0:
        msg = f"{what} must be a non-empty vector, got shape {v.shape}"
        raise TwinloopError(msg)
    return v


class LiveLogger:
    """One rerun recording of a running graph; log calls are cheap (rerun batches and sends the
    data on its own thread).

    Entities: ``camera/<camera>`` (frames), ``reward/<camera>/value`` and ``.../success``,
    ``action/<source>`` (one series per ACTION_NAMES component), ``joints`` (one series per
    joint position), ``events`` (text log). :meth:`stats` counts what was logged and skipped.
    Use it as a context manager or call :meth:`close` (an .rrd file is complete after it).
    """

    def __init__(self, config: LiveConfig | None = None, *, recording_id: str | None = None):
        self.config = cfg = config or LiveConfig()
        self._rr = import_rerun()
        if cfg.sink == "save":
            path = Path(cfg.path)
            if path.exists() and not cfg.overwrite:
                msg = f"{path} exists: the live view does not overwrite it (set overwrite)"
                raise TwinloopError(msg)
            if not path.parent.is_dir():
                msg = f"cannot save the live view to {path}: {path.parent} is not a directory"
                raise TwinloopError(msg)
        self._rec = self._rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
        self.url = self._open_sink()
        self._min_period_ns = int(1e9 / cfg.max_fps) if cfg.max_fps > 0 else 0
        self._last_frame: dict[str, int] = {}
        self._next_due: dict[str, int] = {}  # stamp from which the camera's next frame is logged
        self._named: set[str] = set()  # entities whose series names were logged
        self._counts: Counter[str] = Counter()
        self._closed = False

    # ----- sinks -------------------------------------------------------------------------------
    def _open_sink(self) -> str:
        """Attach the recording to the configured sink; where a viewer finds it."""
        cfg, rec = self.config, self._rec
        try:
            if cfg.sink == "save":
                rec.save(cfg.path)
                return str(Path(cfg.path).resolve())
            if cfg.sink == "spawn":
                rec.spawn(port=cfg.grpc_port, memory_limit=cfg.memory_limit)
                return f"rerun+http://127.0.0.1:{cfg.grpc_port}/proxy"
            if cfg.sink == "connect":
                rec.connect_grpc(cfg.url or None)
                return cfg.url or "rerun+http://127.0.0.1:9876/proxy"
            url = str(rec.serve_grpc(grpc_port=cfg.grpc_port, server_memory_limit=cfg.memory_limit))
            if cfg.web_port:
                self._rr.serve_web_viewer(
                    web_port=cfg.web_port, open_browser=cfg.open_browser, connect_to=url
                )
                log.info("web viewer on http://localhost:%d (data from %s)", cfg.web_port, url)
            return url
        except TwinloopError:
            raise
        except Exception as err:  # rerun raises RuntimeError/OSError/ValueError by sink
            msg = f"cannot open the live view sink {cfg.sink!r}: {err}"
            raise TwinloopError(msg) from err

    def close(self) -> None:
        """Flush what was logged (the .rrd file is complete after this) and detach the sink."""
        if self._closed:
            return
        self._closed = True
        self._rec.flush(timeout_sec=10.0)
        self._rec.disconnect()

    def __enter__(self) -> LiveLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----- logging -----------------------------------------------------------------------------
    def _at(self, stamp_ns: int) -> None:
        self._rec.set_time(
            self.config.timeline, timestamp=np.datetime64(_check_stamp(stamp_ns), "ns")
        )

    def _names_once(self, entity: str, names: Sequence[str]) -> None:
        if entity not in self._named:
            self._named.add(entity)
            self._rec.log(entity, self._rr.SeriesLines(names=list(names)), static=True)

    def log_frame(self, camera: str, stamp_ns: int, rgb: np.ndarray) -> bool:
        """Log one ``(H, W, 3) uint8`` RGB frame; False when the camera's rate cap skips it."""
        check_entity_name("camera", camera)
        stamp = _check_stamp(stamp_ns)
        img = np.asarray(rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or 0 in img.shape:
            msg = (
                f"camera {camera}: a frame must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}"
            )
            raise TwinloopError(msg)
        if not self._admit(camera, stamp):
            self._counts[f"frames_skipped/{camera}"] += 1
            return False
        img = self._downscale(img)
        archetype, size = self._encode(img)
        self._at(stamp)
        self._rec.log(f"camera/{camera}", archetype)
        self._counts[f"frames/{camera}"] += 1
        self._counts[f"frame_bytes/{camera}"] += size
        return True

    def _admit(self, camera: str, stamp: int) -> bool:
        """The rate cap: frames are due every 1/max_fps s of stamp time, on a schedule, so a
        15 fps camera capped at 10 gives 10 fps (not every other frame, 7.5). A frame up to a
        quarter period early counts as on time (camera jitter), yet the average stays capped."""
        period = self._min_period_ns
        last = self._last_frame.get(camera)
        due = self._next_due.get(camera, 0)
        if last is not None and last <= stamp < due - period // 4:
            return False
        if last is None or stamp < last or stamp >= due + period:
            due = stamp  # first frame, a clock that went back (a restart) or a gap: start over
        self._last_frame[camera] = stamp
        self._next_due[camera] = due + period
        return True

    def _downscale(self, img: np.ndarray) -> np.ndarray:
        width = self.config.max_width
        if not width or img.shape[1] <= width:
            return img
        import cv2

        height = max(1, round(img.shape[0] * width / img.shape[1]))
        return np.asarray(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA))

    def _encode(self, img: np.ndarray) -> tuple[Any, int]:
        quality = self.config.jpeg_quality
        if not quality:
            return self._rr.Image(np.ascontiguousarray(img), color_model="RGB"), img.nbytes
        import cv2

        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:
            msg = f"JPEG encoding of a {img.shape} frame failed"
            raise TwinloopError(msg)
        data = buf.tobytes()
        return self._rr.EncodedImage(contents=data, media_type="image/jpeg"), len(data)

    def log_reward(
        self, stamp_ns: int, value: float, success: bool, *, camera: str = "color"
    ) -> None:
        """The reward of the frame with this stamp and its success flag (0/1)."""
        check_entity_name("camera", camera)
        try:
            reward = float(value)
        except (TypeError, ValueError) as err:
            msg = f"reward must be a number, got {value!r}"
            raise TwinloopError(msg) from err
        self._at(stamp_ns)
        self._rec.log(f"reward/{camera}/value", self._rr.Scalars(reward))
        self._rec.log(f"reward/{camera}/success", self._rr.Scalars(1.0 if success else 0.0))
        self._counts["rewards"] += 1

    def log_action(
        self,
        stamp_ns: int,
        action: Sequence[float] | np.ndarray,
        *,
        source: str = "action",
        names: Sequence[str] = ACTION_NAMES,
    ) -> None:
        """One action vector (``names`` order) as one series per component on ``action/<source>``."""
        check_entity_name("action source", source)
        vec = _vector(f"action of {source}", action)
        if len(names) != vec.size:
            msg = f"action of {source}: {vec.size} values but {len(names)} names {list(names)}"
            raise TwinloopError(msg)
        entity = f"action/{source}"
        self._names_once(entity, names)
        self._at(stamp_ns)
        self._rec.log(entity, self._rr.Scalars(vec))
        self._counts[f"actions/{source}"] += 1

    def log_joint_state(
        self, stamp_ns: int, names: Sequence[str], positions: Sequence[float] | np.ndarray
    ) -> None:
        """Joint positions, one series per joint on ``joints``."""
        pos = _vector("joint positions", positions)
        if len(names) != pos.size:
            msg = f"{pos.size} joint positions but {len(names)} names {list(names)}"
            raise TwinloopError(msg)
        self._names_once("joints", names)
        self._at(stamp_ns)
        self._rec.log("joints", self._rr.Scalars(pos))
        self._counts["joint_states"] += 1

    def log_event(self, stamp_ns: int, text: str, *, level: str = "INFO") -> None:
        """A line on the ``events`` text log (levels: rerun's TRACE .. CRITICAL)."""
        self._at(stamp_ns)
        self._rec.log("events", self._rr.TextLog(str(text), level=level))
        self._counts["events"] += 1

    def log_episode_event(self, stamp_ns: int, payload: Mapping[str, Any]) -> None:
        """A /twinloop/episode event (``{"event": ..., "episode": n, ...}``) on ``events``."""
        level = "WARN" if payload.get("event") in _WARN_EVENTS else "INFO"
        self.log_event(stamp_ns, episode_event_text(payload), level=level)

    def stats(self) -> dict[str, int]:
        """How many frames (per camera, and their bytes), skipped frames, rewards, actions,
        joint states and events were logged."""
        return dict(sorted(self._counts.items()))
