"""Keep triton's LLVM and Mesa's LLVM out of each other's way in one process.

MuJoCo's software rendering (EGL/OSMesa on llvmpipe) loads the system ``libLLVM``; importing
triton afterwards (open_clip -> torchvision -> torch._dynamo -> triton, or lazily from any torch
optimizer step) loads a second LLVM and the process segfaults. The twin calls
:func:`avoid_triton_llvm_clash` right after it creates a renderer, and the open_clip loader
before it imports open_clip, so recording and training in one process works. Triton is only
needed by ``torch.compile`` on a GPU; importing torch._dynamo before the first render keeps it.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["avoid_triton_llvm_clash", "mesa_llvm_loaded"]

log = logging.getLogger(__name__)


def mesa_llvm_loaded() -> bool:
    """Whether a libLLVM is mapped into this process (Linux; False elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:
        return False


def avoid_triton_llvm_clash() -> bool:
    """Disable ``import triton`` when Mesa's LLVM is loaded and triton is not; True if it did.

    torch then reports no triton (torch.compile is unavailable); everything else works.
    """
    if "triton" in sys.modules or not mesa_llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # import triton -> ImportError
    log.info(
        "software rendering loaded Mesa's LLVM, which crashes triton: triton disabled in this "
        "process (torch.compile unavailable; import torch._dynamo before rendering to keep it)"
    )
    return True
