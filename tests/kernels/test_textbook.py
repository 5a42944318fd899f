"""The textbook kernel (moe_lib.kernels.textbook) computes what the production plan computes: the same bits in
fp32 with the same tiles (the same reduction order), the fp64 oracle's result to dtype tolerance otherwise."""

import pytest
import torch
from problems import make_problem

from moe_lib.kernels import fused_experts
from moe_lib.kernels.textbook import textbook_fused_experts
from moe_lib.reference import moe_reference
from moe_lib.testing import assert_close, tolerance

TILES = dict(block_m=16, block_n=32, block_k=32)
SAME_TILES = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1, "num_warps": 4,
              "num_stages": 2}


@pytest.mark.parametrize("M,E,H,I,k", [(1, 8, 64, 96, 2), (33, 8, 96, 200, 2), (40, 4, 72, 40, 3), (7, 1, 64, 32, 1)])
def test_textbook_equals_production_bitwise_in_fp32(M, E, H, I, k, gen, device):
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen, torch.float32, device)
    ours = textbook_fused_experts(x, w13, w2, w, ids, **TILES)
    assert torch.equal(ours, fused_experts(x, w13, w2, w, ids, config=SAME_TILES))
    assert_close(ours, moe_reference(x, w13, w2, w, ids, fp64=True), tol=tolerance(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_textbook_half_precision_against_the_oracle(dtype, gen, device):
    x, w13, w2, w, ids, _ = make_problem(33, 8, 64, 96, 2, gen, dtype, device)
    ours = textbook_fused_experts(x, w13, w2, w, ids, **TILES)
    assert ours.dtype == dtype
    assert_close(ours, moe_reference(x, w13, w2, w, ids, fp64=True), tol=tolerance(dtype))
    assert_close(ours, fused_experts(x, w13, w2, w, ids, config=SAME_TILES), tol=tolerance(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 64, 1000])
def test_gpu_textbook_mixtral_tp8(M, dtype, gen):
    x, w13, w2, w, ids, _ = make_problem(M, 8, 4096, 1792, 2, gen, dtype, "cuda")
    ours = textbook_fused_experts(x, w13, w2, w, ids, block_m=64, block_n=64, block_k=64)
    prod = fused_experts(x, w13, w2, w, ids, config=SAME_TILES | {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64,
                                                                   "BLOCK_SIZE_K": 64})
    assert_close(ours, moe_reference(x, w13, w2, w, ids, fp64=True), tol=tolerance(dtype))
    if dtype == torch.float32:
        assert torch.equal(ours, prod)
    else:
        assert_close(ours, prod, tol=tolerance(dtype))
