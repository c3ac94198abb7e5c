"""The safety layer's core: every action bound for an arm passes through ActionLimiter.

This is the first version (finite values, length, per-step translation/yaw limits, workspace box
on the commanded end-effector target, gripper range). The watchdog, latched e-stop and deadman
arrive with the robot I/O issue; they build on this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import TwinloopError
from .topics import ACTION_NAMES

__all__ = ["ActionLimiter", "LimiterConfig"]


@dataclass(frozen=True)
class LimiterConfig:
    max_translation: float = 0.03  # largest EE move per command, m
    max_yaw: float = 0.2  # largest yaw change per command, rad
    workspace_low: tuple[float, float, float] = (0.25, -0.35, 0.01)  # EE box, m (robot base frame)
    workspace_high: tuple[float, float, float] = (0.8, 0.35, 0.45)

    def __post_init__(self) -> None:
        if not (0.0 < self.max_translation <= 0.1):
            msg = f"max_translation must be in (0, 0.1] m, got {self.max_translation}"
            raise TwinloopError(msg)
        if not (0.0 < self.max_yaw <= 0.5):
            msg = f"max_yaw must be in (0, 0.5] rad, got {self.max_yaw}"
            raise TwinloopError(msg)
        if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
            msg = "workspace_low and workspace_high need 3 values (x, y, z)"
            raise TwinloopError(msg)
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high, strict=True)):
            msg = f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}"
            raise TwinloopError(msg)


class ActionLimiter:
    """Validates and limits ``[dx, dy, dz, dyaw, gripper]`` commands."""

    def __init__(self, config: LimiterConfig | None = None) -> None:
        self.config = config or LimiterConfig()
        self._low = np.asarray(self.config.workspace_low, dtype=float)
        self._high = np.asarray(self.config.workspace_high, dtype=float)

    def __call__(
        self, action: Sequence[float] | np.ndarray, ee_pos: Sequence[float] | None = None
    ) -> np.ndarray:
        """Return the limited action; raise TwinloopError for one that cannot be made safe.

        With ``ee_pos`` (the current end-effector position) the translation is also cut so that
        the commanded point stays inside the workspace box.
        """
        try:
            a = np.asarray(action, dtype=float)
        except (TypeError, ValueError) as err:
            msg = f"action is not a numeric vector: {action!r}"
            raise TwinloopError(msg) from err
        if a.shape != (len(ACTION_NAMES),):
            msg = f"action must have {len(ACTION_NAMES)} values {ACTION_NAMES}, got shape {a.shape}"
            raise TwinloopError(msg)
        if not np.isfinite(a).all():
            msg = f"action has NaN or inf: {a.tolist()}"
            raise TwinloopError(msg)
        cfg = self.config
        out = a.copy()
        if ee_pos is not None:
            ee = np.asarray(ee_pos, dtype=float)
            if ee.shape == (3,) and np.isfinite(ee).all():
                out[:3] = np.clip(ee + out[:3], self._low, self._high) - ee
        out[:3] = _limit_norm(out[:3], cfg.max_translation)  # also bounds a move back inside
        out[3] = float(np.clip(out[3], -cfg.max_yaw, cfg.max_yaw))
        out[4] = float(np.clip(out[4], -1.0, 1.0))
        return out


def _limit_norm(v: np.ndarray, limit: float) -> np.ndarray:
    """Scale ``v`` down to norm ``limit`` if longer (overflow-safe for huge values)."""
    peak = float(np.max(np.abs(v)))
    if peak == 0.0:
        return v
    norm = peak * float(np.linalg.norm(v / peak))
    return v * (limit / norm) if norm > limit else v
