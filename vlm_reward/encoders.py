"""open_clip image/text encoders with on-device preprocessing of uint8 camera frames.

:func:`load_open_clip` builds an open_clip CLIP model from one of three weight sources:

* ``pretrained``: an open_clip pretrained tag (``laion2b_s34b_b79k`` ...), downloaded on first use
  into open_clip's cache (needs network once);
* ``checkpoint``: a local ``.pt/.pth/.bin/.safetensors`` file holding the state dict (possibly
  wrapped in ``{"state_dict": ...}``);
* neither: random weights (benchmarks and tests only; rewards are meaningless).

``model_config`` registers a model-config JSON for a custom architecture with open_clip (its file
name, without ``.json``, is the model name). Frames are resized, centre-cropped and normalised on
the model's device, so on a GPU only the uint8 frames cross the bus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from twinloop.llvm_guard import avoid_triton_llvm_clash

from .errors import RewardError

__all__ = [
    "OpenClipConfig",
    "OpenClipEncoder",
    "avoid_triton_llvm_clash",
    "load_open_clip",
    "resolve_device",
    "resolve_dtype",
]

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SCHEMAS = ("hf-hub:", "local-dir:")
GRAPH_MAX_BATCH = 8  # larger batches are throughput-bound; they run eagerly
GRAPH_MAX_SHAPES = 16  # at most this many captured graphs (frame sizes x batch sizes) per encoder


@dataclass(frozen=True)
class OpenClipConfig:
    model_name: str = "ViT-B-32"  # open_clip architecture name (open_clip.list_models())
    pretrained: str = ""  # open_clip pretrained tag (needs network on first use); "" = none
    checkpoint: str = ""  # local weight file (.pt/.pth/.bin/.safetensors); "" = none
    model_config: str = ""  # model-config JSON of a custom architecture; its stem is the name
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (fp16 on cuda, fp32 on cpu), "fp32", "fp16", "bf16"

    def __post_init__(self) -> None:
        if not self.model_name:
            msg = "model_name must not be empty (e.g. 'ViT-B-32')"
            raise RewardError(msg)
        if self.pretrained and self.checkpoint:
            msg = (
                f"give either pretrained ({self.pretrained!r}) or checkpoint "
                f"({self.checkpoint!r}), not both"
            )
            raise RewardError(msg)
        if self.checkpoint and Path(self.checkpoint).suffix not in CHECKPOINT_SUFFIXES:
            msg = f"checkpoint {self.checkpoint} must end in one of {CHECKPOINT_SUFFIXES}"
            raise RewardError(msg)
        if self.model_config and Path(self.model_config).stem != self.model_name:
            msg = (
                f"model_config {self.model_config} defines the model "
                f"{Path(self.model_config).stem!r} (open_clip names a config by its file name) "
                f"but model_name is {self.model_name!r}"
            )
            raise RewardError(msg)
        if self.precision != "auto" and self.precision not in PRECISIONS:
            msg = f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {self.precision!r}"
            raise RewardError(msg)
        if not self.device:
            msg = "device must not be empty (use 'auto', 'cpu' or 'cuda')"
            raise RewardError(msg)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; a cuda device without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        msg = f"bad device {device!r}: {err}"
        raise RewardError(msg) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {device!r} asked for but CUDA is not available here (use 'auto' or 'cpu')"
        raise RewardError(msg)
    return resolved


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> fp16 on cuda, fp32 elsewhere."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return PRECISIONS[precision]


def _precision_name(dtype: torch.dtype) -> str:
    return next(name for name, value in PRECISIONS.items() if value == dtype)


class OpenClipEncoder:
    """A loaded open_clip model with batched, on-device frame preprocessing and a text cache."""

    def __init__(
        self, model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype
    ) -> None:
        from open_clip import get_model_preprocess_cfg

        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        cfg = dict(get_model_preprocess_cfg(model))
        size = cfg.get("size", 224)
        self.crop_hw: tuple[int, int] = (
            (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        )
        self.image_size = min(self.crop_hw)  # the square side for every CLIP ViT/ResNet
        self.interpolation: str = str(cfg.get("interpolation", "bicubic"))
        self.resize_mode: str = str(cfg.get("resize_mode", "shortest"))
        self.fill_color = float(cfg.get("fill_color", 0))
        mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        # x_norm = x_uint8 * scale + shift  ==  (x / 255 - mean) / std
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        self._shift = (-mean / std).view(1, 3, 1, 1).to(device)
        self._text_cache: dict[tuple[tuple[str, ...], bool], torch.Tensor] = {}
        # Replay image encoding as CUDA graphs on a GPU (see _graphed); set False for eager.
        self.cuda_graphs = device.type == "cuda"
        self._graphs: dict[tuple[Any, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}
        self.embed_dim = int(self.encode_text(("a photo",)).shape[-1])

    # ------------------------------------------------------------------ images
    def _as_uint8_tensor(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(frames, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(frames))
        elif isinstance(frames, torch.Tensor):
            x = frames
        else:
            msg = f"frames must be a numpy array or torch tensor, got {type(frames).__name__}"
            raise RewardError(msg)
        if x.ndim != 4 or x.shape[-1] != 3:
            msg = f"frames must be (B, H, W, 3) RGB, got shape {tuple(x.shape)}"
            raise RewardError(msg)
        if x.dtype != torch.uint8:
            msg = f"frames must be uint8, got {x.dtype}"
            raise RewardError(msg)
        return x.to(self.device, non_blocking=True)

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if self.interpolation in ("bicubic", "bilinear"):
            x = F.interpolate(
                x, size=size, mode=self.interpolation, antialias=True, align_corners=False
            )
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return x.clamp_(0.0, 255.0).round_()  # what a uint8 PIL resize would give

    def _resized_size(self, h: int, w: int) -> tuple[int, int]:
        th, tw = self.crop_hw
        if self.resize_mode == "squash":
            return th, tw
        if self.resize_mode == "longest":
            scale = min(th / h, tw / w)
            return max(1, round(h * scale)), max(1, round(w * scale))
        if th == tw:  # torchvision Resize(int): shorter side -> th, longer side truncated
            if h <= w:
                return th, int(th * w / h)
            return int(th * h / w), th
        scale = max(th / h, tw / w)
        return max(th, round(h * scale)), max(tw, round(w * scale))

    def _center_crop_or_pad(self, x: torch.Tensor) -> torch.Tensor:
        th, tw = self.crop_hw
        h, w = x.shape[-2:]
        if h < th or w < tw:  # only after a "longest" resize
            pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
            pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
            x = F.pad(x, pads, value=self.fill_color)
            h, w = x.shape[-2:]
        top = round((h - th) / 2.0)
        left = round((w - tw) / 2.0)
        return x[..., top : top + th, left : left + tw]

    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, S, S) normalised tensor on the model's device and dtype.

        Resize (shorter side to S by default, antialiased bicubic/bilinear as the model's
        preprocess config says), centre crop, then normalise with the model's mean/std.
        """
        x = self._as_uint8_tensor(frames)
        x = x.permute(0, 3, 1, 2).float()
        if x.shape[0] > 0:
            x = self._resize(x, self._resized_size(int(x.shape[-2]), int(x.shape[-1])))
            x = self._center_crop_or_pad(x)
        else:
            x = x.new_zeros((0, 3, *self.crop_hw))
        x = x * self._scale + self._shift
        return x.to(self.dtype).contiguous()

    @torch.no_grad()
    def encode_images(
        self,
        frames: np.ndarray | torch.Tensor,
        normalize: bool = True,
        *,
        batch_size: int = 64,
    ) -> torch.Tensor:
        """(B, H, W, 3) uint8 frames -> (B, D) float32 embeddings on the device (no grad).

        Frames go through the model ``batch_size`` at a time (bounds memory on long episodes).
        """
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise RewardError(msg)
        n = len(frames)
        if n == 0:
            self._as_uint8_tensor(frames)  # shape check only
            return torch.zeros((0, self.embed_dim), device=self.device)
        chunks = []
        for start in range(0, n, batch_size):
            chunk = frames[start : start + batch_size]
            graphed = self._graphed(chunk, normalize)
            chunks.append(graphed if graphed is not None else self._encode(chunk, normalize))
        return torch.cat(chunks)

    def _encode(self, frames: np.ndarray | torch.Tensor, normalize: bool) -> torch.Tensor:
        feats = self.model.encode_image(self.preprocess(frames)).float()
        return F.normalize(feats, dim=-1) if normalize else feats

    # ------------------------------------------------------------------ CUDA graphs
    def _graphed(self, frames: np.ndarray | torch.Tensor, normalize: bool) -> torch.Tensor | None:
        """Preprocess + encode as one replayed CUDA graph per input shape; None = run eagerly.

        At batch 1-2 an eager ViT forward on a GPU is bound by kernel launches (hundreds per
        call); a captured graph replays them in one launch. Graphs are captured lazily per
        (B, H, W) and normalize flag, up to ``GRAPH_MAX_BATCH``; a failed capture turns them off.
        """
        if not self.cuda_graphs or self.device.type != "cuda":
            return None
        x = self._as_uint8_tensor(frames)
        if not 0 < x.shape[0] <= GRAPH_MAX_BATCH:
            return None
        key = (*x.shape, normalize)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= GRAPH_MAX_SHAPES:
                return None
            try:
                entry = self._capture(x, normalize)
            except RuntimeError as err:
                log.warning("CUDA graph capture failed (%s); the image encoder runs eagerly", err)
                self.cuda_graphs = False
                return None
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(
        self, x: torch.Tensor, normalize: bool
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up (allocator, cuBLAS workspaces) off the main stream
            for _ in range(3):
                self._encode(static_in, normalize)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._encode(static_in, normalize)
        log.debug("captured a CUDA graph for frames %s", tuple(x.shape))
        return graph, static_in, static_out

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Texts -> (N, D) float32 embeddings on the device; cached per (texts, normalize)."""
        if isinstance(texts, str):
            texts = (texts,)
        key = (tuple(texts), bool(normalize))
        if not key[0]:
            msg = "encode_text needs at least one text"
            raise RewardError(msg)
        bad = [t for t in key[0] if not isinstance(t, str) or not t.strip()]
        if bad:
            msg = f"texts must be non-empty strings, got {bad!r}"
            raise RewardError(msg)
        cached = self._text_cache.get(key)
        if cached is None:
            tokens = self.tokenizer(list(key[0])).to(self.device)
            feats = self.model.encode_text(tokens).float()
            cached = F.normalize(feats, dim=-1) if normalize else feats
            self._text_cache[key] = cached
        return cached.clone()


# ---------------------------------------------------------------------- loading
def _register_model_config(path_str: str, name: str) -> None:
    """Register a custom model-config JSON with open_clip (re-registered if another file won)."""
    import open_clip

    path = Path(path_str).expanduser()
    if not path.is_file():
        msg = f"model_config {path} does not exist"
        raise RewardError(msg)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        msg = f"model_config {path} is not readable JSON: {err}"
        raise RewardError(msg) from err
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in content]
    if missing:
        msg = f"model_config {path} lacks the open_clip keys {missing}"
        raise RewardError(msg)
    if open_clip.get_model_config(name) != content:
        # add_model_config appends the file to open_clip's search path and rescans; the last
        # registered file of a name wins, so re-adding makes this file current again.
        open_clip.add_model_config(path)


def _check_model_name(name: str) -> None:
    import open_clip

    if name.startswith(_SCHEMAS) or name.replace("/", "-") in open_clip.list_models():
        return  # open_clip itself reads "ViT-B/32" as "ViT-B-32"
    available = open_clip.list_models()
    close = [m for m in available if m.lower().startswith(name.lower().split("-")[0])][:8]
    examples = close or ["ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50"]
    msg = (
        f"unknown open_clip model {name!r}. Available (of {len(available)}): {examples}; "
        "see open_clip.list_models(), or pass model_config=<your config JSON>"
    )
    raise RewardError(msg)


def _fetch_hint(name: str, tag: str = "") -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "") if tag else ""
    parts = [f"pretrained tags for {name}: {tags[:8] or 'none'} (open_clip.list_pretrained())"]
    if hub:
        repo = hub.rstrip("/").split("/")
        parts.append(
            f"on a machine with network: `huggingface-cli download {'/'.join(repo[:2])}` "
            "and pass checkpoint=<the downloaded open_clip_pytorch_model.bin/.safetensors>"
        )
    else:
        parts.append(
            "download the weights where there is network (e.g. `huggingface-cli download "
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K`) and pass checkpoint=<file>"
        )
    return "; ".join(parts)


def _create(config: OpenClipConfig, device: torch.device, dtype: torch.dtype) -> Any:
    import open_clip

    name = config.model_name
    pretrained: str | None = None
    if config.pretrained:
        tag_known = bool(open_clip.get_pretrained_cfg(name, config.pretrained))
        if not tag_known and not Path(config.pretrained).is_file():
            msg = f"unknown pretrained tag {config.pretrained!r}; {_fetch_hint(name)}"
            raise RewardError(msg)
        pretrained = config.pretrained
    elif config.checkpoint:
        ckpt = Path(config.checkpoint).expanduser()
        if not ckpt.is_file():
            msg = f"checkpoint file {ckpt} does not exist; {_fetch_hint(name)}"
            raise RewardError(msg)
        pretrained = str(ckpt)
    else:
        log.warning(
            "open_clip %s has RANDOM weights (no pretrained tag or checkpoint): its rewards are "
            "meaningless (fine for benchmarks and tests only)",
            name,
        )
    try:
        return open_clip.create_model(
            name,
            pretrained=pretrained,
            precision=_precision_name(dtype),
            device=device,
            pretrained_text=False,  # never fetch tower weights behind the user's back
        )
    except (RuntimeError, FileNotFoundError, OSError, KeyError, ValueError) as err:
        if config.checkpoint:
            msg = f"checkpoint {config.checkpoint} does not load into open_clip {name}: {err}"
        elif config.pretrained:
            msg = (
                f"could not fetch pretrained weights {name}/{config.pretrained} "
                f"(no network?): {err}; {_fetch_hint(name, config.pretrained)}"
            )
        else:
            msg = f"could not build open_clip {name}: {err}"
        raise RewardError(msg) from err


def load_open_clip(config: OpenClipConfig) -> OpenClipEncoder:
    """Build the encoder of ``config`` in eval mode on its device/precision (RewardError if not)."""
    avoid_triton_llvm_clash()
    import open_clip

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    if dtype == torch.float16 and device.type == "cpu":
        log.warning("fp16 on cpu is slow and loses precision; use precision='fp32' there")
    if config.model_config:
        _register_model_config(config.model_config, config.model_name)
    _check_model_name(config.model_name)
    model = _create(config, device, dtype)
    model.eval()
    model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(config.model_name)
    encoder = OpenClipEncoder(model, tokenizer, device, dtype)
    log.info(
        "open_clip %s on %s (%s), image size %d, embedding dim %d",
        config.model_name,
        device,
        _precision_name(dtype),
        encoder.image_size,
        encoder.embed_dim,
    )
    return encoder
