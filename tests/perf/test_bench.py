"""moe_lib.perf.bench and .tune on a GPU: the breakdown times the plan's own steps; the tuner returns a valid
config found through the plan."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.gpu
def test_gpu_breakdown_times_every_step_of_the_layer():
    from moe_lib.perf import bench

    steps = bench.breakdown(8, 600, repeats=2)  # M = 600: the sorted (TMA) layout and the sum inside GEMM2
    assert list(steps) == ["routing", "clear", "align", "gather", "quant1", "gemm1", "quant2", "gemm2", "sum_k",
                           "layer"]
    assert steps["sum_k"] == steps["quant1"] == 0.0  # GEMM2 sums over k, into the cleared output; bf16
    assert all(steps[name] > 0 for name in ("routing", "clear", "align", "gather", "gemm1", "gemm2", "layer"))
    assert bench.breakdown(8, 600, repeats=2, clear_in_gemm1=True)["clear"] == 0.0  # GEMM1 clears it instead


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
    monkeypatch.setattr(tune, "candidates", lambda m, bm, gated, *a: real(m, bm, gated, *a)[:1])  # one per GEMM
    us, config = tune.tune_point(x, w13, w2, weights, ids)
    up, down = split_config(config)
    assert us > 0 and up["BLOCK_SIZE_M"] == down["BLOCK_SIZE_M"] == 64
    # FP8 per block: through the plan with its quantization steps, K tiles within the scale blocks
    from moe_lib.kernels.experts import Fp8

    (q13, s13), (q2, s2) = tune.fp8_weights(w13, w2, (128, 128))
    us, config = tune.tune_point(x, q13, q2, weights, ids, (Fp8("block", (128, 128)), dict(w1_scale=s13,
                                                                                               w2_scale=s2)))
    up, down = split_config(config)
    assert us > 0 and up["BLOCK_SIZE_K"] <= 128 and down["BLOCK_SIZE_K"] <= 128 and "TMA" not in config


def test_fp8_candidates_fit_one_byte_values_and_the_scale_blocks():
    from moe_lib.perf import tune

    bf16, fp8 = tune.candidates(16, 16, True), tune.candidates(16, 16, True, element=1)
    assert len(fp8) < len(bf16) and {c["BLOCK_SIZE_K"] for c in fp8} == {128, 256}
    assert {c["BLOCK_SIZE_N"] for c in tune.candidates(4096, 128, False, element=1)} == {64, 128, 256}
    assert all(c["BLOCK_SIZE_K"] <= 128 for c in tune.candidates(600, 64, True, element=1, max_k=128))
    assert tune.tma_choices(1024, 64) == (False, True) and tune.tma_choices(1024, 64, fp8=True) == (False,)


def test_the_precompiled_configs_are_the_searched_ones():
    # precompile() runs point_configs; tune_point times searches(): the same GEMM1 and GEMM2 candidates.
    from moe_lib.kernels.configs import split_config
    from moe_lib.perf import tune

    for m in (1, 64, 600):
        configs = list(tune.point_configs(m))
        searched = [(bm, tma, ups, downs) for bm, tma, ups, downs in tune.searches(m)]
        assert len(configs) == sum(len(ups) + len(downs) for _, _, ups, downs in searched)
        for config in configs:
            up, down = split_config(config)
            assert any(up["BLOCK_SIZE_M"] == bm and config["TMA"] == tma for bm, tma, _, _ in searched)
        ups = {json.dumps(split_config(c)[0], sort_keys=True) for c in configs}
        assert ups >= {json.dumps({**c, **({"TMA": True} if tma else {})}, sort_keys=True)
                       for _, tma, cands, _ in searched for c in cands}


def test_precompile_workers_fit_in_gpu_memory():
    from moe_lib.perf import tune

    tp1 = tune.worker_bytes(1, tune.TUNE_M)
    assert 2.8e9 < tp1 < 5e9  # TP 1's bf16 weights (2.8 GB), buffers at M = 4096, the context
    assert tune.worker_bytes(1, tune.TUNE_M, "block") < tp1 and tune.worker_bytes(8, (1,)) < tp1 / 2
    assert tune.fit_jobs(12, 139 << 30, tp1) == 12
    assert tune.fit_jobs(12, 20 << 30, tp1) == int(0.8 * (20 << 30)) // tp1 and tune.fit_jobs(12, 0, tp1) == 1
