"""Contact sheets: a grid of camera frames (one row per episode) saved as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import TwinError

__all__ = ["contact_sheet", "save_contact_sheet"]


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], *, pad: int = 2) -> np.ndarray:
    """Tile frames (H, W, 3 uint8) into one image, one row per sequence."""
    frames = [f for row in rows for f in row]
    if not frames:
        msg = "contact sheet needs at least one frame"
        raise TwinError(msg)
    h, w = frames[0].shape[:2]
    if any(f.shape != frames[0].shape for f in frames):
        msg = "all frames of a contact sheet must have the same shape"
        raise TwinError(msg)
    ncol = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y : y + h, x : x + w] = frame
    return sheet


def save_contact_sheet(rows: Sequence[Sequence[np.ndarray]], path: Path) -> Path:
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, contact_sheet(rows))
    return path
