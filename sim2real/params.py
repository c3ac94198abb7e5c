"""Named physical parameters of the twin, settable before reset and read back.

Each parameter writes straight into the compiled ``MjModel`` (no recompilation), so a system
identification loop can try thousands of values cheaply. Parameters that change a body's mass
distribution (mass, CoM offset) also refresh the model's derived constants (``mj_setConst``:
body_invweight0, subtree masses, bounding boxes, ...), as recompiling would. The constraint
solver scales contact softness by body_invweight0: a cube made 3x heavier with the compiled value
kept, left sliding and turning by a push (0.2 m/s, 3 rad/s), spun up to 4500 rad/s within 1 s.
Collision bounding boxes live in the inertial frame: with a moved CoM and the compiled boxes,
contacts with the rod's far end were culled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mujoco
import numpy as np

from .errors import TwinError

__all__ = ["PARAM_SPECS", "ParamSpec", "TwinParams"]


@dataclass(frozen=True)
class ParamSpec:
    """One physical parameter: where it lives in the model and what values are physical."""

    name: str
    obj: str  # scene object the parameter belongs to ("cube", "drawer", "rod")
    default: float
    low: float
    high: float
    unit: str
    doc: str


PARAM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("cube.mass", "cube", 0.1, 0.02, 1.0, "kg", "mass of the cube"),
    ParamSpec("cube.friction", "cube", 0.5, 0.1, 1.5, "", "sliding friction coefficient"),
    ParamSpec("drawer.damping", "drawer", 5.0, 0.0, 50.0, "N s/m", "slide joint damping"),
    ParamSpec("drawer.friction", "drawer", 0.5, 0.0, 10.0, "N", "slide joint dry friction"),
    ParamSpec("drawer.range", "drawer", 0.2, 0.1, 0.25, "m", "how far the drawer opens"),
    ParamSpec("rod.com_offset", "rod", 0.0, -0.1, 0.1, "m", "centre of mass along the rod"),
    ParamSpec("rod.mass", "rod", 0.3, 0.05, 2.0, "kg", "mass of the rod"),
)
_BY_NAME = {p.name: p for p in PARAM_SPECS}


def _id(model: mujoco.MjModel, kind: mujoco.mjtObj, name: str) -> int:
    idx = mujoco.mj_name2id(model, kind, name)
    if idx < 0:
        msg = f"the twin model has no {kind.name.removeprefix('mjOBJ_').lower()} named {name!r}"
        raise TwinError(msg)
    return int(idx)


class TwinParams:
    """Reads and writes the named parameters of the objects present in ``model``."""

    def __init__(self, model: mujoco.MjModel, objects: tuple[str, ...]) -> None:
        self._model = model
        self.specs: dict[str, ParamSpec] = {n: p for n, p in _BY_NAME.items() if p.obj in objects}
        self._setters: dict[str, Callable[[float], None]] = {}
        self._getters: dict[str, Callable[[], float]] = {}
        self._inertial: set[str] = set()  # parameters that need mj_setConst after a write
        self._scratch: mujoco.MjData | None = None  # mj_setConst works on a data of its own
        B, G, J = mujoco.mjtObj.mjOBJ_BODY, mujoco.mjtObj.mjOBJ_GEOM, mujoco.mjtObj.mjOBJ_JOINT
        if "cube" in objects:
            self._mass("cube.mass", _id(model, B, "cube"))
            g = _id(model, G, "cube")
            self._bind(
                "cube.friction",
                lambda: model.geom_friction[g, 0],
                lambda v: model.geom_friction.__setitem__((g, 0), v),
            )
        if "drawer" in objects:
            j = _id(model, J, "drawer_joint")
            dof = int(model.jnt_dofadr[j])
            self._bind(
                "drawer.damping",
                lambda: model.dof_damping[dof],
                lambda v: model.dof_damping.__setitem__(dof, v),
            )
            self._bind(
                "drawer.friction",
                lambda: model.dof_frictionloss[dof],
                lambda v: model.dof_frictionloss.__setitem__(dof, v),
            )
            self._bind(
                "drawer.range",
                lambda: model.jnt_range[j, 1],
                lambda v: model.jnt_range.__setitem__((j, 1), v),
            )
        if "rod" in objects:
            r = _id(model, B, "rod")
            self._mass("rod.mass", r)
            self._bind(
                "rod.com_offset",
                lambda: model.body_ipos[r, 1],
                lambda v: model.body_ipos.__setitem__((r, 1), v),
            )
            self._inertial.add("rod.com_offset")
        for name, spec in self.specs.items():  # start from the documented defaults
            self._setters[name](spec.default)
        if self._inertial:
            self._set_const()

    def _bind(self, name: str, get: Callable[[], float], set_: Callable[[float], None]) -> None:
        self._getters[name] = lambda: float(get())
        self._setters[name] = set_

    def _mass(self, name: str, body: int) -> None:
        model = self._model
        unit_inertia = model.body_inertia[body] / model.body_mass[body]

        def set_mass(v: float) -> None:
            model.body_mass[body] = v
            model.body_inertia[body] = unit_inertia * v

        self._bind(name, lambda: model.body_mass[body], set_mass)
        self._inertial.add(name)

    def _set_const(self) -> None:
        if self._scratch is None:
            self._scratch = mujoco.MjData(self._model)
        mujoco.mj_setConst(self._model, self._scratch)  # ~13 us for the cell

    def get(self) -> dict[str, float]:
        """Current values of every parameter of the scene."""
        return {name: get() for name, get in self._getters.items()}

    def validate(self, values: Mapping[str, float]) -> dict[str, float]:
        """Check names and ranges; return the values as floats, or raise TwinError."""
        checked: dict[str, float] = {}
        for name, raw in values.items():
            spec = self.specs.get(name)
            if spec is None:
                msg = f"unknown twin parameter {name!r}. Available: {sorted(self.specs)}"
                raise TwinError(msg)
            try:
                value = float(raw)
            except (TypeError, ValueError) as err:
                msg = f"parameter {name} must be a number, got {raw!r}"
                raise TwinError(msg) from err
            if not math.isfinite(value) or not spec.low <= value <= spec.high:
                msg = f"parameter {name}={value} is outside [{spec.low}, {spec.high}] {spec.unit}"
                raise TwinError(msg)
            checked[name] = value
        return checked

    def set(self, values: Mapping[str, float]) -> None:
        """Validate all values first, then write them (all or nothing)."""
        checked = self.validate(values)
        refresh = any(
            n in self._inertial and value != self._getters[n]() for n, value in checked.items()
        )
        for name, value in checked.items():
            self._setters[name](value)
        if refresh:
            self._set_const()

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """Uniform draw over every parameter's range (the prior used by domain randomisation)."""
        return {n: float(rng.uniform(s.low, s.high)) for n, s in self.specs.items()}
