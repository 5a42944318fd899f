"""moe_lib.perf.bench and .tune on a GPU: the breakdown times the plan's own steps; the tuner returns a valid
config found through the plan."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.gpu
def test_gpu_breakdown_times_every_step_of_the_layer():
    from moe_lib.perf import bench

    steps = bench.breakdown(8, 600, repeats=2)  # M = 600: the sorted (TMA) layout and the sum inside GEMM2
    assert list(steps) == ["routing", "clear", "align", "gather", "gemm1", "gemm2", "sum_k", "layer"]
    assert steps["sum_k"] == 0.0  # GEMM2 sums over k, into the cleared output
    assert all(steps[name] > 0 for name in ("routing", "clear", "align", "gather", "gemm1", "gemm2", "layer"))


@pytest.mark.gpu
def test_gpu_tune_point_returns_a_valid_config(monkeypatch):
    from moe_lib.kernels.configs import split_config
    from moe_lib.kernels.routing import topk_softmax_triton
    from moe_lib.perf import tune

    gen = torch.Generator(device="cuda").manual_seed(0)
    w13, w2 = tune.make_weights(8, gen)
    x = torch.randn(600, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights, ids = topk_softmax_triton(torch.randn(600, 8, device="cuda", dtype=torch.bfloat16, generator=gen), 2)
    real = tune.candidates
    monkeypatch.setattr(tune, "block_m_choices", lambda m: (64,))
    monkeypatch.setattr(tune, "candidates", lambda m, bm, gated: real(m, bm, gated)[:1])  # one config per GEMM
    us, config = tune.tune_point(x, w13, w2, weights, ids)
    up, down = split_config(config)
    assert us > 0 and up["BLOCK_SIZE_M"] == down["BLOCK_SIZE_M"] == 64
