"""The learner on a CUDA device: GPU-resident buffers, one update of every algorithm, and the
batched critic ensemble (GPU path) against the per-member path (CPU path). Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from twinloop.policy.base import make_algorithm
from twinloop.policy.buffers import MixedSampler, ReplayBuffer
from twinloop.policy.networks import CriticEnsemble, EncoderSpec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _buffer(spec: EncoderSpec, seed: int) -> ReplayBuffer:
    buf = ReplayBuffer(300, spec.state_dim, spec.action_dim, spec.image_size, device="cuda")
    rng = np.random.default_rng(seed)
    for _ in range(3):
        buf.add_episode(
            rng.standard_normal((51, spec.state_dim)).astype(np.float32),
            rng.uniform(-1, 1, (50, spec.action_dim)).astype(np.float32),
            -np.ones(50, dtype=np.float32),
            terminated=True,
            images=rng.integers(0, 256, (51, 3, 32, 32), dtype=np.uint8),
        )
    return buf


@pytest.mark.parametrize("algo", ["bc", "iql", "calql", "sac"])
def test_update_on_gpu_resident_batches(algo: str) -> None:
    spec = EncoderSpec(state_dim=6, action_dim=3, image_size=32, channels=8, features=16)
    sampler = MixedSampler(_buffer(spec, 0), _buffer(spec, 1), 0.5)
    batch = sampler.sample(32)
    assert batch.obs["image"].is_cuda and batch.obs["image"].dtype == torch.uint8
    learner = make_algorithm(algo, spec, device="cuda", seed=0)
    logs = [learner.update(sampler.sample(32)) for _ in range(3)]
    assert all(np.isfinite(v) for log in logs for v in log.values())
    action = learner.act({k: v[:2] for k, v in batch.obs.items()})
    assert action.shape == (2, 3) and bool((action.abs() <= 1).all())


def test_cuda_ensemble_matches_cpu_member_path() -> None:
    torch.manual_seed(0)
    critic = CriticEnsemble(5, 2, n=10, hidden=(32, 32), layer_norm=True)
    feats, act = torch.randn(64, 5), torch.rand(64, 2)
    q_cpu = critic(feats, act)  # per-member 2-D path
    q_gpu = critic.cuda()(feats.cuda(), act.cuda())  # one batched pass
    torch.testing.assert_close(q_gpu.cpu(), q_cpu, rtol=1e-4, atol=1e-4)
