"""The twin's parameter file: identified parameters, versioned, with provenance.

One JSON file (default ``twin_params.json``) holds every version ever applied; ``current`` names
the one twins load. Applying validates the values against the twin's parameters first and
writes a new version atomically (temp file + rename): an interrupted or failed identification
never changes it, and older versions stay for rollback (:func:`set_current`).

    {"schema": "twinloop.twin_params/1", "current": 2,
     "versions": [{"version": 1, "task": "lift_rod", "params": {...}, "created": "...",
                   "provenance": {"method": "asid", "rollout": "...", "spread": {...}, ...}},
                  ...]}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twinloop.sim2real.errors import TwinError
from twinloop.sim2real.params import PARAM_SPECS

__all__ = [
    "SCHEMA",
    "apply_params",
    "load_params_file",
    "load_twin_params",
    "scene_params",
    "set_current",
]

log = logging.getLogger(__name__)

SCHEMA = "twinloop.twin_params/1"
_SPECS = {p.name: p for p in PARAM_SPECS}


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "current": 0, "versions": []}


def load_params_file(path: str | Path) -> dict[str, Any]:
    """The whole file (every version); an absent file is an empty history."""
    path = Path(path)
    if not path.exists():
        return _empty()
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        msg = f"cannot read the twin parameter file {path}: {err}"
        raise TwinError(msg) from err
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        msg = f"{path} is not a twin parameter file (schema {SCHEMA})"
        raise TwinError(msg)
    return data


def _check_values(values: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, raw in values.items():
        spec = _SPECS.get(name)
        if spec is None:
            msg = f"unknown twin parameter {name!r}. Available: {sorted(_SPECS)}"
            raise TwinError(msg)
        value = float(raw)
        if not spec.low <= value <= spec.high:
            msg = f"parameter {name}={value} is outside [{spec.low}, {spec.high}] {spec.unit}"
            raise TwinError(msg)
        out[name] = value
    if not out:
        msg = "no parameter values to apply"
        raise TwinError(msg)
    return out


def _write(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_params(
    path: str | Path,
    task: str,
    values: Mapping[str, float],
    provenance: Mapping[str, Any],
) -> int:
    """Add a version with ``values`` (on top of the current version's other parameters) and
    make it current; returns its number."""
    path = Path(path)
    checked = _check_values(values)
    data = load_params_file(path)
    base = load_twin_params(path) if data["versions"] else {}
    version = 1 + max((v["version"] for v in data["versions"]), default=0)
    entry = {
        "version": version,
        "task": task,
        "params": {**base, **checked},
        "changed": sorted(checked),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": data["current"] or None,
        "provenance": dict(provenance),
    }
    data["versions"].append(entry)
    data["current"] = version
    _write(path, data)
    log.info("twin parameters v%d written to %s: %s", version, path, checked)
    return version


def load_twin_params(path: str | Path, version: int | None = None) -> dict[str, float]:
    """The parameter values of ``version`` (default: the current one)."""
    data = load_params_file(path)
    if not data["versions"]:
        msg = f"{path} holds no parameter versions yet"
        raise TwinError(msg)
    want = data["current"] if version is None else version
    for entry in data["versions"]:
        if entry["version"] == want:
            return _check_values(entry["params"])
    have = [v["version"] for v in data["versions"]]
    msg = f"{path} has no version {want}; versions: {have}"
    raise TwinError(msg)


def scene_params(values: Mapping[str, float], specs: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that a twin with parameter ``specs`` has (a parameter file may
    hold several scenes' parameters: the rod's and the cube's)."""
    return {name: float(v) for name, v in values.items() if name in specs}


def set_current(path: str | Path, version: int) -> None:
    """Roll the current version back (or forward) to ``version``."""
    load_twin_params(path, version)  # exists and is valid
    data = load_params_file(path)
    data["current"] = version
    _write(Path(path), data)
