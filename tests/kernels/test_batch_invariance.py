"""Batch invariance, guaranteed: a token's output is bitwise the same alone (the one-token "decode" layout) and
inside batches of other sizes (other tiles, layouts and, on the GPU, other tuned-table rows, TMA and split
tails), and every repeated call gives the same bits. vLLM needs a special mode for this; here it is the
default, and these tests keep it so (moe_lib.kernels.experts' docstring says what a change must respect).

What is invariant: everything from the router logits on (routing, alignment, both GEMMs, the k-sum). The gate's
matmul in MixtralMoE is torch's (BLAS / cuBLAS), which picks another kernel for one row than for many (on this
CPU they differ in the last bit), so a whole layer is batch invariant only given the same logits.

CPU: the interpreter with its default configs (BLOCK_SIZE_M grows with the batch). GPU (`gpu` marker): the
H200's tuned tables at Mixtral's shapes, fp32/fp16/bf16, up to M = 4096.
"""

import inspect

import pytest
import torch

from moe_lib.kernels.experts import fused_experts, fused_moe, make_plan


def pool(M, E, H, I, dtype, device, seed=0):
    """M tokens, their router logits and one layer's weights (scaled ~1/sqrt(fan-in))."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, H, generator=gen)
    w13 = torch.randn(E, 2 * I, H, generator=gen) * H**-0.5
    w2 = torch.randn(E, H, I, generator=gen) * I**-0.5
    logits = torch.randn(M, E, generator=gen)
    return tuple(t.to(device, dtype) for t in (x, w13, w2, logits))


def assert_batch_invariant(x, w13, w2, logits, top_k, batch_sizes, probes, *, bitwise=True, **kw):
    """Each probe token alone == the same token in every batch (a prefix of x) that holds it, bitwise (or, where
    ``bitwise`` is False, to 1e-6 relative); and a repeated call of the largest batch is bitwise the same."""
    alone = {i: fused_moe(x[i : i + 1], w13, w2, logits[i : i + 1], top_k, **kw)[0] for i in probes}
    for m in batch_sizes:
        batch = fused_moe(x[:m], w13, w2, logits[:m], top_k, **kw)
        for i in probes:
            if i < m and bitwise:
                assert torch.equal(batch[i], alone[i]), f"token {i} alone != token {i} in a batch of {m}"
            elif i < m:
                err = ((batch[i].double() - alone[i].double()).norm() / alone[i].double().norm()).item()
                assert err < 1e-6, f"token {i} alone vs in a batch of {m}: rel err {err:.1e}"
    again = fused_moe(x[:m], w13, w2, logits[:m], top_k, **kw)
    assert torch.equal(again, batch), f"two calls with {m} tokens differ"


# ---- CPU (the interpreter): BLOCK_SIZE_M is 16 at 7 tokens and 64 at 130 (with E = 8, top-2) ------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_token_alone_equals_the_token_in_a_batch(dtype, device):
    x, w13, w2, logits = pool(130, 8, 64, 96, dtype, device)
    assert_batch_invariant(x, w13, w2, logits, 2, (7, 130), probes=(0, 129))


@pytest.mark.parametrize("top_k", [1, 4])  # the k-sum: written directly (top-1), a separate pass (top-4)
def test_batch_invariance_for_every_k_sum(top_k, device):
    x, w13, w2, logits = pool(130, 8, 64, 96, torch.float32, device, seed=1)
    assert_batch_invariant(x, w13, w2, logits, top_k, (130,), probes=(0, 77))


def test_fused_experts_with_int64_ids_and_an_expert_map(device):
    # the routed entry point, int64 ids (an extra cast step for one token) and half the experts on "this rank"
    x, w13, w2, logits = pool(70, 8, 64, 96, torch.float32, device, seed=2)
    weights, ids = torch.ops.moe_lib.topk_softmax(logits, 2)
    ids = ids.long()
    emap = torch.tensor([0, -1, 1, -1, 2, -1, 3, -1], device=device)
    batch = fused_experts(x, w13[:4], w2[:4], weights, ids, expert_map=emap)
    for i in (0, 69):
        alone = fused_experts(x[i : i + 1], w13[:4], w2[:4], weights[i : i + 1], ids[i : i + 1], expert_map=emap)
        assert torch.equal(alone[0], batch[i])


def test_no_plan_keyword_slipped_in_unnoticed():
    """A tripwire for the opt-in rule: every make_plan policy keyword is listed here with its default. A new
    one must not change a row's arithmetic with the batch unless it is off by default — add it here once you
    have checked that (and a case to the tests above or the GPU ones below)."""
    keywords = {name: p.default for name, p in inspect.signature(make_plan).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}
    assert keywords == {"num_local": None, "config": None, "has_expert_map": False, "ids_checked": True,
                        "ids_int32": True, "descriptors_ok": True, "split_tail": True, "fuse_k_sum": True,
                        "pdl": None, "config_dir": None, "fp8": None, "clear_in_gemm1": None}
    # clear_in_gemm1: who writes the zeros the k-sum adds into changes no value (test_experts.py checks the bits).
    # fp8: per token / token group / static activation scales keep it (tests/kernels/test_experts_fp8.py); a
    # dynamic per-tensor scale is the batch's by definition (documented in fused_experts).


# ---- GPU (device machine): the tuned tables' rows from M = 1 to 4096, Mixtral's shapes -----------------------
GPU_BATCHES = (2, 33, 64, 257, 512, 1024, 4096)
GPU_PROBES = (0, 1, 32, 511, 4095)


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, 8])  # I = 14336 and 1792: H200 tables (TMA from M = 512, split tails)
def test_gpu_mixtral_bf16_tuned_tables(tp):
    x, w13, w2, logits = pool(4096, 8, 4096, 14336 // tp, torch.bfloat16, "cuda")
    assert_batch_invariant(x, w13, w2, logits, 2, GPU_BATCHES, GPU_PROBES)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("E,H,I,top_k", [(8, 1024, 512, 2), (8, 511, 200, 1), (16, 256, 384, 4)])
def test_gpu_dtypes_and_heuristic_configs(E, H, I, top_k, dtype):
    # Measured on the H200 (2026-12-01): fp32 with top-4 and the heuristic tiles gave one element one ulp apart
    # between a token alone and in a batch of 33; bf16 and fp16 (what the layer serves) are bitwise everywhere.
    x, w13, w2, logits = pool(4096, E, H, I, dtype, "cuda", seed=E + H)
    assert_batch_invariant(x, w13, w2, logits, top_k, GPU_BATCHES, GPU_PROBES, bitwise=dtype != torch.float32)


@pytest.mark.gpu
def test_gpu_fused_experts_int64_ids(gen):
    x, w13, w2, logits = pool(1024, 8, 4096, 1792, torch.bfloat16, "cuda", seed=7)
    weights, ids = torch.ops.moe_lib.topk_softmax(logits, 2)
    ids = ids.long()
    batch = fused_experts(x, w13, w2, weights, ids)
    for i in (0, 500, 1023):
        assert torch.equal(fused_experts(x[i : i + 1], w13, w2, weights[i : i + 1], ids[i : i + 1])[0], batch[i])
