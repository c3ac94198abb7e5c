"""The episode runner, ROS-free: drives episodes on a running cell the way a person does.

Before each episode it asks for a reset (the twin's ``/twin/reset`` service; on the robot an
optional service, or an operator's ``start`` event), then announces ``start`` on
/twinloop/episode. The episode ends with ``success`` when the success signal fires (the twin's
privileged success, or the reward model's flag) or with ``failure`` once ``max_steps /
control_hz`` seconds have passed. After ``episodes`` episodes it drains (waits until the learner
has taken in the last episode and announced weights that include it, at most ``drain_s``) and
finishes with exit code 0.

Reset-free (RoboFuME): with ``reset_free`` a success switches to the other task of the pair
instead of resetting; a failure retries the same task without a reset; every ``reset_every``
episodes a full reset is made. The core emits a ``switch`` command for this; a cell must be able
to switch its task at run time (the twin node listens on /twin/switch_task).

Success from a reward model (``success_source="reward"``): a flag counts only when its frame is
stamped at or after the episode's start (a frame of the previous episode, in flight across the
reset or switch, cannot end the new one), when it was scored for the running task (reset-free:
the reward node names the task whose model scored it), and after ``success_frames`` flags in a
row. Where the cell also knows the truth (the twin), :meth:`EpisodeRunner.on_truth` records it
next to the reward's verdict (``EpisodeResult.true_success``): the online reward audit.

The core is a state machine driven by the caller: ``tick(now_ns)`` and the ``on_*`` inputs
return :class:`Command` values (``reset``, ``event``, ``switch``, ``exit``) for the node to carry
out; it never reads a clock itself, so tests drive it with a fake one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import PolicyError

__all__ = [
    "PHASES",
    "SUCCESS_SOURCES",
    "Command",
    "EpisodeResult",
    "EpisodeRunner",
    "RunnerConfig",
]

log = logging.getLogger(__name__)

# Where success comes from: "sim" = the twin's privileged success (/twinloop/sim/state),
# "reward" = the success flag of /twinloop/reward (a reward model: what the robot has).
SUCCESS_SOURCES: tuple[str, ...] = ("sim", "reward")
# idle: a reset is due; resetting: waiting for the reset answer; settling: the wait after a
# reset; operator: waiting for an operator's start event; running: an episode is on;
# draining: waiting for the learner after the last episode; done.
PHASES: tuple[str, ...] = (
    "idle", "resetting", "settling", "operator", "running", "draining", "done",
)  # fmt: skip


@dataclass(frozen=True)
class RunnerConfig:
    episodes: int = 1  # episodes to run, then exit
    max_steps: int = 60  # step budget of an episode (the timeout is max_steps / control_hz)
    control_hz: float = 10.0  # the cell's control rate
    success_source: str = "sim"  # one of SUCCESS_SOURCES
    use_reset: bool = True  # call a reset before each episode; False: wait for an operator start
    reset_timeout_s: float = 60.0  # a reset that stays unanswered this long fails the run
    max_reset_failures: int = 3  # failed resets in a row before the run fails (exit 1)
    settle_s: float = 0.0  # wait after a reset before "start" (fresh observations arrive)
    drain_s: float = 0.0  # after the last episode: wait at most this long for the learner
    reset_free: bool = False  # on success switch to the other task instead of resetting
    tasks: tuple[str, ...] = ()  # (forward, backward) task pair for reset_free
    reset_every: int = 10  # reset_free: a full reset every N episodes (0 = only the first)
    success_frames: int = 1  # success flags in a row that end an episode (reward source)

    def __post_init__(self) -> None:
        if self.success_frames < 1:
            msg = f"success_frames must be >= 1, got {self.success_frames}"
            raise PolicyError(msg)
        if self.episodes < 1 or self.max_steps < 1:
            msg = f"episodes and max_steps must be >= 1, got {self.episodes}, {self.max_steps}"
            raise PolicyError(msg)
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            msg = f"control_hz must be > 0, got {self.control_hz}"
            raise PolicyError(msg)
        if self.success_source not in SUCCESS_SOURCES:
            msg = f"unknown success_source {self.success_source!r}. Available: {list(SUCCESS_SOURCES)}"
            raise PolicyError(msg)
        for name in ("reset_timeout_s", "settle_s", "drain_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                msg = f"{name} must be >= 0 seconds, got {value}"
                raise PolicyError(msg)
        if self.max_reset_failures < 1 or self.reset_every < 0:
            msg = (
                f"max_reset_failures must be >= 1 and reset_every >= 0, got "
                f"{self.max_reset_failures}, {self.reset_every}"
            )
            raise PolicyError(msg)
        if self.reset_free and len(self.tasks) != 2:
            msg = f"reset_free needs tasks = (forward, backward), got {list(self.tasks)}"
            raise PolicyError(msg)

    @property
    def timeout_ns(self) -> int:
        return round(self.max_steps / self.control_hz * 1e9)


@dataclass(frozen=True)
class Command:
    """What the node must do: ``reset`` (call the reset service), ``event`` (publish
    ``payload`` on /twinloop/episode), ``switch`` (switch the cell to ``payload["task"]``),
    ``exit`` (stop with ``payload["code"]``)."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EpisodeResult:
    episode: int  # 0-based index among this runner's episodes
    success: bool
    duration_s: float  # from start to end event
    task: str  # "" when the runner does not know it
    true_success: bool | None = None  # the cell's own verdict (on_truth); None: never heard
    true_progress: float | None = None  # the cell's task progress (0..1) at the end, if it has one


class EpisodeRunner:
    """The episode state machine (see the module docstring). Not thread-safe."""

    def __init__(self, config: RunnerConfig, *, task: str = "") -> None:
        self.config = config
        self.task = config.tasks[0] if config.reset_free else task
        self.phase = "idle"
        self.index = 0  # episodes started so far (the running one is index - 1)
        self.results: list[EpisodeResult] = []
        self.cell_episode: int | None = None  # the cell's episode id (from the reset answer)
        self.resets = 0
        self.switches = 0
        self.exit_code: int | None = None
        self._since_ns = 0  # when the phase began
        self._start_ns = 0  # when the running episode started
        self._reset_failures = 0
        self._since_reset = 0  # reset-free: episodes since the last full reset
        self._last_success = False
        self._learner: tuple[int, int] = (0, 0)  # (episodes, env_steps) the learner reported
        self._weights_env_steps = -1  # env steps of the newest announced weights
        self._settle_until = 0
        self._streak = 0  # success flags in a row in the running episode
        self._truth: bool | None = None  # the cell's success during the running episode
        self._progress: float | None = None  # the cell's last task progress in it

    # ----- helpers -------------------------------------------------------------------------------
    def _set(self, phase: str, now_ns: int) -> None:
        self.phase, self._since_ns = phase, int(now_ns)

    def _event(self, kind: str, **extra: Any) -> Command:
        # start is sent before the index moves on, the end events after
        payload: dict[str, Any] = {"event": kind, "episode": self.index - 1}
        if self.task:
            payload["task"] = self.task
        return Command("event", payload | extra)

    @property
    def successes(self) -> int:
        return sum(r.success for r in self.results)

    @property
    def done(self) -> bool:
        return self.phase == "done"

    # ----- driving -------------------------------------------------------------------------------
    def tick(self, now_ns: int) -> list[Command]:
        """Advance on time alone: start the first reset, time out, settle, drain."""
        cfg = self.config
        waited_ns = now_ns - self._since_ns
        if self.phase == "idle":
            return self._next_episode(now_ns)
        if self.phase == "resetting" and waited_ns > cfg.reset_timeout_s * 1e9:
            log.error("the reset was not answered within %.0f s", cfg.reset_timeout_s)
            return self._finish(now_ns, 1)
        if self.phase == "settling" and now_ns >= self._settle_until:
            return self._start(now_ns)
        if self.phase == "running" and now_ns - self._start_ns >= cfg.timeout_ns:
            return self._end(now_ns, success=False)
        if self.phase == "draining" and (self._drained() or waited_ns >= cfg.drain_s * 1e9):
            if not self._drained():
                log.warning("the learner did not report the last episode within %.0f s",
                            cfg.drain_s)  # fmt: skip
            return self._finish(now_ns, 0)
        return []

    def _next_episode(self, now_ns: int) -> list[Command]:
        cfg = self.config
        if self.index >= cfg.episodes:
            self._set("draining", now_ns)
            return self.tick(now_ns) if cfg.drain_s == 0 or self._drained() else []
        if cfg.reset_free and self.index > 0:
            due = cfg.reset_every and self._since_reset >= cfg.reset_every
            if not due:
                return self._switch(now_ns)
        if not cfg.use_reset:
            self._set("operator", now_ns)
            return []
        self._set("resetting", now_ns)
        return [Command("reset")]

    def _switch(self, now_ns: int) -> list[Command]:
        """Reset-free: the other task after a success, the same one after a failure."""
        out: list[Command] = []
        if self._last_success:
            forward, backward = self.config.tasks
            self.task = backward if self.task == forward else forward
            self.switches += 1
        out.append(Command("switch", {"task": self.task}))  # also restarts the step budget
        return out + self._start(now_ns)

    def on_reset_done(self, ok: bool, info: dict[str, Any] | None, now_ns: int) -> list[Command]:
        """The reset answer: ``ok`` and the cell's info (``{"episode": n, "task": ...}``)."""
        if self.phase != "resetting":
            return []
        if not ok:
            self._reset_failures += 1
            log.error("reset failed (%d/%d): %s", self._reset_failures,
                      self.config.max_reset_failures, info)  # fmt: skip
            if self._reset_failures >= self.config.max_reset_failures:
                return self._finish(now_ns, 1)
            self._set("resetting", now_ns)
            return [Command("reset")]
        self._reset_failures = 0
        self.resets += 1
        self._since_reset = 0
        info = info or {}
        if isinstance(info.get("episode"), int):
            self.cell_episode = int(info["episode"])
        if self.config.reset_free:
            self.task = self.config.tasks[0]
        elif isinstance(info.get("task"), str) and info["task"]:
            self.task = info["task"]
        if self.config.settle_s > 0:
            self._settle_until = now_ns + round(self.config.settle_s * 1e9)
            self._set("settling", now_ns)
            return []
        return self._start(now_ns)

    def on_operator_start(self, now_ns: int) -> list[Command]:
        """An operator's ``start`` event (no reset service): the episode begins now."""
        if self.phase != "operator":
            return []
        self._begin(now_ns)
        return []  # the operator already announced it

    def _begin(self, now_ns: int) -> None:
        self._set("running", now_ns)
        self._start_ns = int(now_ns)
        self._last_success = False
        self._streak = 0
        self._truth = None
        self._progress = None
        self.index += 1
        self._since_reset += 1

    def _start(self, now_ns: int) -> list[Command]:
        self._begin(now_ns)
        # stamp_ns: frames stamped from here on belong to this episode (the reward node switches
        # its per-task model from this stamp)
        return [self._event("start", stamp_ns=int(now_ns))]

    def on_success(
        self,
        success: bool,
        now_ns: int,
        *,
        episode: int | None = None,
        stamp_ns: int | None = None,
        task: str = "",
    ) -> list[Command]:
        """A success signal. ``episode``: the cell's episode id the signal is about (states of
        an earlier episode, in flight during a reset, are ignored); ``stamp_ns``: the stamp of
        the frame it was computed from (earlier than the start: ignored); ``task``: the task it
        was scored for (another than the running one: ignored)."""
        if self.phase != "running":
            return []
        if episode is not None and self.cell_episode is not None and episode != self.cell_episode:
            return []
        if stamp_ns is not None and stamp_ns < self._start_ns:
            return []
        if task and self.task and task != self.task:
            return []
        self._streak = self._streak + 1 if success else 0
        if self._streak < self.config.success_frames:
            return []
        return self._end(now_ns, success=True)

    def on_truth(
        self,
        success: bool,
        *,
        task: str = "",
        stamp_ns: int | None = None,
        progress: float | None = None,
    ) -> None:
        """The cell's own success (the twin's, when success comes from a reward model): kept as
        the running episode's ``true_success`` (True once it was seen); ``progress``: the cell's
        task progress (0..1, the twin's dense reward), the last one kept as ``true_progress``."""
        if self.phase != "running" or (stamp_ns is not None and stamp_ns < self._start_ns):
            return
        if task and self.task and task != self.task:
            return
        self._truth = bool(self._truth) or bool(success)
        if progress is not None and math.isfinite(progress):
            self._progress = float(progress)

    def _end(self, now_ns: int, *, success: bool) -> list[Command]:
        duration = (now_ns - self._start_ns) / 1e9
        self.results.append(
            EpisodeResult(
                self.index - 1,
                success,
                duration,
                self.task,
                true_success=self._truth,
                true_progress=self._progress,
            )
        )
        self._last_success = success
        event = self._event("success" if success else "failure", duration_s=round(duration, 3))
        self._set("idle", now_ns)
        return [event, *self._next_episode(now_ns)]

    def _finish(self, now_ns: int, code: int) -> list[Command]:
        self.exit_code = code
        self._set("done", now_ns)
        return [Command("exit", {"code": code})]

    # ----- the learner (for draining) ------------------------------------------------------------
    def on_learner_status(self, episodes: int, env_steps: int) -> None:
        self._learner = (int(episodes), int(env_steps))

    def on_weights(self, env_steps: int) -> None:
        self._weights_env_steps = max(self._weights_env_steps, int(env_steps))

    def _drained(self) -> bool:
        episodes, env_steps = self._learner
        return episodes >= len(self.results) and self._weights_env_steps >= env_steps > 0

    def status(self) -> dict[str, Any]:
        n = len(self.results)
        audit = any(r.true_success is not None for r in self.results)
        return {
            "phase": self.phase,
            "episodes": n,
            "target": self.config.episodes,
            "successes": self.successes,
            "success_rate": round(self.successes / n, 4) if n else None,
            "task": self.task,
            "resets": self.resets,
            "switches": self.switches,
            "running": self.index - 1 if self.phase == "running" else None,
            **({"audit": self.audit()} if audit else {}),
        }

    def audit(self) -> dict[str, int]:
        """The success signal against the cell's truth over the episodes where both are known:
        ``false_success`` = ended as a success the cell never reached; ``missed`` = ended as a
        failure although the cell reached success."""
        known = [r for r in self.results if r.true_success is not None]
        return {
            "episodes": len(known),
            "agree": sum(r.success == r.true_success for r in known),
            "false_success": sum(r.success and not r.true_success for r in known),
            "missed": sum(bool(r.true_success) and not r.success for r in known),
            "true_successes": sum(bool(r.true_success) for r in known),
        }
