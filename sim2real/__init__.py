"""twinloop.sim2real: the MuJoCo twin of the cell (and, later, system identification).

Importing this package registers gymnasium ids ``twinloop/PushCube-v0``,
``twinloop/OpenDrawer-v0``, ``twinloop/CloseDrawer-v0`` and ``twinloop/LiftRod-v0``.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from .errors import TwinError

__all__ = ["ENV_IDS", "TwinError"]

ENV_IDS: dict[str, str] = {
    "twinloop/PushCube-v0": "push_cube",
    "twinloop/OpenDrawer-v0": "open_drawer",
    "twinloop/CloseDrawer-v0": "close_drawer",
    "twinloop/LiftRod-v0": "lift_rod",
}

for _env_id, _task in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point="twinloop.sim2real.env:TwinEnv", kwargs={"task": _task})
