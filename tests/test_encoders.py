"""open_clip loading and on-device preprocessing (tiny model made here; nothing downloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from helpers_clip import TINY_CLIP_CONFIG, TINY_CLIP_NAME, make_tiny_open_clip
from PIL import Image
from twinloop.vlm_reward.encoders import OpenClipConfig, load_open_clip
from twinloop.vlm_reward.errors import RewardError

torch.set_num_threads(1)


def _test_image(h: int = 240, w: int = 320) -> np.ndarray:
    """Smooth gradients plus a sharp square: exercises the resize filter in both regimes."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 0.8) % 256, yy % 256, ((xx + yy) * 0.5) % 256], -1).astype(np.uint8)
    img[h // 3 : h // 2, w // 3 : w // 2] = (250, 10, 30)
    return img


def _reference_model() -> open_clip.CLIP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    return model.eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_checkpoint_round_trip_gives_the_in_memory_embeddings(tmp_path: Path, fmt: str) -> None:
    config = make_tiny_open_clip(tmp_path, fmt=fmt)
    assert config.checkpoint.endswith(fmt)
    encoder = load_open_clip(config)
    assert not encoder.model.training
    assert encoder.device == torch.device("cpu") and encoder.dtype == torch.float32
    assert encoder.image_size == 32 and encoder.embed_dim == 32

    reference = _reference_model()
    frames = np.stack([_test_image(), _test_image()[::-1].copy()])
    pixels = encoder.preprocess(frames)
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1)
        tokens = open_clip.get_tokenizer(TINY_CLIP_NAME)(["push the cube", "a drawer"])
        want_text = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
    got = encoder.encode_images(frames)
    assert got.dtype == torch.float32 and got.shape == (2, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.encode_text(["push the cube", "a drawer"]), want_text)
    # a differently seeded checkpoint gives different embeddings (the weights really load)
    other = load_open_clip(make_tiny_open_clip(tmp_path / "other", seed=1))
    assert not torch.allclose(other.encode_images(frames), got, atol=1e-3)


def test_preprocess_matches_open_clip_pil_pipeline(tmp_path: Path) -> None:
    encoder = load_open_clip(make_tiny_open_clip(tmp_path))
    cfg = open_clip.get_model_preprocess_cfg(encoder.model)
    pil_pipeline = open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        interpolation=cfg["interpolation"],
        resize_mode=cfg["resize_mode"],
    )
    for image in (_test_image(), _test_image(300, 200)):  # landscape and portrait
        want = pil_pipeline(Image.fromarray(image))
        got = encoder.preprocess(image[None])
        assert got.shape == (1, 3, 32, 32) and got.dtype == torch.float32
        diff = (got[0] - want).abs()
        assert float(diff.mean()) < 0.01, float(diff.mean())
        assert float(diff.max()) < 0.15, float(diff.max())
    # normalisation: a mid-grey frame maps to (0.5 - mean) / std in every pixel
    grey = np.full((2, 50, 60, 3), 128, np.uint8)
    expect = (128 / 255 - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])
    torch.testing.assert_close(
        encoder.preprocess(torch.from_numpy(grey))[:, :, 5, 7], expect.expand(2, 3)
    )


def test_batched_encoding_equals_one_by_one(tmp_path: Path) -> None:
    encoder = load_open_clip(make_tiny_open_clip(tmp_path))
    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    batched = encoder.encode_images(frames, batch_size=2)
    single = torch.cat([encoder.encode_images(f[None]) for f in frames])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert encoder.encode_images(frames[:0]).shape == (0, 32)
    raw = encoder.encode_images(frames, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(5))


def test_text_cache_returns_equal_but_independent_tensors(tmp_path: Path) -> None:
    encoder = load_open_clip(make_tiny_open_clip(tmp_path))
    first = encoder.encode_text(("open the drawer", "closed drawer"))
    first.zero_()  # a caller scribbling on its copy must not poison the cache
    again = encoder.encode_text(("open the drawer", "closed drawer"))
    assert again.shape == (2, 32)
    torch.testing.assert_close(again.norm(dim=-1), torch.ones(2))
    with pytest.raises(RewardError, match="at least one text"):
        encoder.encode_text(())
    with pytest.raises(RewardError, match="non-empty strings"):
        encoder.encode_text(["ok", "  "])


def test_missing_checkpoint_names_the_path_and_how_to_fetch(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "clip.safetensors"
    with pytest.raises(RewardError, match=r"nowhere/clip\.safetensors does not exist") as info:
        load_open_clip(OpenClipConfig(checkpoint=str(missing), device="cpu"))
    assert "huggingface-cli download" in str(info.value)
    assert "laion2b_s34b_b79k" in str(info.value)  # the tag list of ViT-B-32


def test_failed_pretrained_download_is_a_reward_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> str:
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    config = OpenClipConfig(pretrained="laion2b_s34b_b79k", device="cpu")
    with pytest.raises(RewardError, match="no network") as info:
        load_open_clip(config)
    assert "huggingface-cli download laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in str(info.value)
    with pytest.raises(RewardError, match="unknown pretrained tag 'nope'"):
        load_open_clip(OpenClipConfig(pretrained="nope", device="cpu"))


def test_bad_configs(tmp_path: Path) -> None:
    with pytest.raises(RewardError, match=r"unknown open_clip model 'ViT-Q-99'.*ViT-"):
        load_open_clip(OpenClipConfig(model_name="ViT-Q-99", device="cpu"))
    with pytest.raises(RewardError, match="not both"):
        OpenClipConfig(pretrained="openai", checkpoint="x.pt")
    with pytest.raises(RewardError, match="must end in one of"):
        OpenClipConfig(checkpoint="weights.zip")
    with pytest.raises(RewardError, match="precision"):
        OpenClipConfig(precision="fp8")
    with pytest.raises(RewardError, match="names a config by its file name"):
        OpenClipConfig(model_config=str(tmp_path / "my-arch.json"))
    with pytest.raises(RewardError, match=r"model_config .* does not exist"):
        load_open_clip(
            OpenClipConfig(model_name="ghost", model_config=str(tmp_path / "ghost.json"))
        )
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(RewardError, match="lacks the open_clip keys"):
        load_open_clip(OpenClipConfig(model_name="broken", model_config=str(bad)))
    if not torch.cuda.is_available():
        with pytest.raises(RewardError, match="CUDA is not available"):
            load_open_clip(OpenClipConfig(device="cuda"))
    config = make_tiny_open_clip(tmp_path)
    encoder = load_open_clip(config)
    with pytest.raises(RewardError, match="uint8"):
        encoder.preprocess(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(RewardError, match=r"\(B, H, W, 3\)"):
        encoder.encode_images(np.zeros((32, 32, 3), np.uint8))


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    config = make_tiny_open_clip(tmp_path)
    wide = dict(TINY_CLIP_CONFIG, embed_dim=16)
    arch = tmp_path / "twinloop-tiny-clip-16.json"
    arch.write_text(json.dumps(wide))
    mismatched = OpenClipConfig(
        model_name=arch.stem, model_config=str(arch), checkpoint=config.checkpoint, device="cpu"
    )
    with pytest.raises(RewardError, match="does not load into open_clip twinloop-tiny-clip-16"):
        load_open_clip(mismatched)


def test_random_weights_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = make_tiny_open_clip(tmp_path)
    random_config = OpenClipConfig(
        model_name=config.model_name, model_config=config.model_config, device="cpu"
    )
    with caplog.at_level("WARNING", logger="twinloop.vlm_reward.encoders"):
        encoder = load_open_clip(random_config)
    assert "RANDOM weights" in caplog.text and "meaningless" in caplog.text
    assert encoder.encode_images(np.zeros((1, 40, 40, 3), np.uint8)).shape == (1, 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_preprocesses_on_device(tmp_path: Path) -> None:
    cpu_config = make_tiny_open_clip(tmp_path)
    gpu = load_open_clip(
        OpenClipConfig(
            model_name=cpu_config.model_name,
            model_config=cpu_config.model_config,
            checkpoint=cpu_config.checkpoint,
            device="auto",
        )
    )
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    frames = np.stack([_test_image(), _test_image()[::-1].copy()])
    pixels = gpu.preprocess(torch.from_numpy(frames))
    assert pixels.device.type == "cuda" and pixels.dtype == torch.float16
    got = gpu.encode_images(frames)
    assert got.dtype == torch.float32 and got.device.type == "cuda"
    want = load_open_clip(cpu_config).encode_images(frames)
    cosine = (got.cpu() * want).sum(-1)
    assert float(cosine.min()) > 0.99, cosine


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_matches_eager(tmp_path: Path) -> None:
    cpu_config = make_tiny_open_clip(tmp_path)
    gpu = load_open_clip(
        OpenClipConfig(
            model_name=cpu_config.model_name,
            model_config=cpu_config.model_config,
            checkpoint=cpu_config.checkpoint,
            device="cuda",
        )
    )
    assert gpu.cuda_graphs
    rng = np.random.default_rng(0)
    for shape in [(1, 48, 64, 3), (2, 48, 64, 3), (1, 48, 64, 3), (2, 60, 40, 3)]:
        frames = rng.integers(0, 256, shape, dtype=np.uint8)  # new content on every call
        graphed = gpu.encode_images(frames)
        gpu.cuda_graphs = False
        eager = gpu.encode_images(frames)
        gpu.cuda_graphs = True
        torch.testing.assert_close(graphed, eager, atol=2e-3, rtol=2e-3)
    assert len(gpu._graphs) == 3  # one graph per (B, H, W), reused for the repeated shape


def test_loading_after_software_rendering_does_not_crash(tmp_path: Path) -> None:
    """Mesa's LLVM (MuJoCo EGL on a CPU) + triton's LLVM segfault unless triton is kept out."""
    config = make_tiny_open_clip(tmp_path)
    script = f"""
import os, sys
os.environ.setdefault("MUJOCO_GL", "egl")
from twinloop.sim2real.twin import Twin, TwinConfig
twin = Twin(TwinConfig())
twin.reset(seed=0)
twin.close()
from twinloop.vlm_reward.encoders import OpenClipConfig, load_open_clip
import numpy as np
enc = load_open_clip(OpenClipConfig(model_name={config.model_name!r},
    model_config={config.model_config!r}, checkpoint={config.checkpoint!r}, device="cpu"))
print("shape", tuple(enc.encode_images(np.zeros((1, 40, 40, 3), np.uint8)).shape))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "shape (1, 32)" in run.stdout
