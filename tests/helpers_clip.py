"""A tiny open_clip model the tests make themselves (config JSON + random-weight checkpoint).

No download: the architecture is a small ViT CLIP written to a model-config JSON, the weights are
a seeded random init saved with torch.save ({"state_dict": ...}, .pt) and with safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from twinloop.vlm_reward.encoders import OpenClipConfig, avoid_triton_llvm_clash

__all__ = ["TINY_CLIP_CONFIG", "TINY_CLIP_NAME", "make_tiny_open_clip"]

TINY_CLIP_NAME = "twinloop-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_open_clip(
    tmp_path: Path, *, fmt: str = "safetensors", seed: int = 0
) -> OpenClipConfig:
    """Write the tiny config and its weights under ``tmp_path``; return a cpu/fp32 config.

    ``fmt``: which of the two saved weight files the config points at ("safetensors" or "pt").
    Both files are always written: ``<name>.pt`` (wrapped in {"state_dict": ...}) and
    ``<name>.safetensors``.
    """
    avoid_triton_llvm_clash()  # the tests may have rendered the twin in this process
    import open_clip
    from safetensors.torch import save_file

    if fmt not in ("safetensors", "pt"):
        msg = f"fmt must be 'safetensors' or 'pt', got {fmt!r}"
        raise ValueError(msg)
    folder = Path(tmp_path) / "tiny_clip"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, folder / f"{TINY_CLIP_NAME}.pt")
    save_file(state, str(folder / f"{TINY_CLIP_NAME}.safetensors"))
    return OpenClipConfig(
        model_name=TINY_CLIP_NAME,
        checkpoint=str(folder / f"{TINY_CLIP_NAME}.{fmt}"),
        model_config=str(config_path),
        device="cpu",
        precision="fp32",
    )
