"""Shared inputs of the kernel tests: fresh random MoE problems and the check against the fp64 oracle."""

from __future__ import annotations

import torch

from moe_lib.kernels import fused_experts
from moe_lib.kernels.routing import topk_softmax
from moe_lib.reference import moe_reference
from moe_lib.testing import assert_close, tolerance


def make_problem(M, E, H, I, k, gen, dtype=torch.float32, device="cpu", scale=None):
    """Fresh random inputs; weights scaled ~1/sqrt(fan-in) so outputs stay O(1) at any size."""
    x = torch.randn(M, H, generator=gen)
    w13 = torch.randn(E, 2 * I, H, generator=gen) * (scale or H**-0.5)
    w2 = torch.randn(E, H, I, generator=gen) * (scale or I**-0.5)
    logits = torch.randn(M, E, generator=gen)
    w, ids = topk_softmax(logits, k)
    cast = dict(device=device, dtype=dtype)
    return x.to(**cast), w13.to(**cast), w2.to(**cast), w.to(device), ids.to(device), logits.to(device)


def check(M, E, H, I, k, dtype, gen, device, **kw):
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen, dtype, device)
    out = fused_experts(x, w13, w2, w, ids, **kw)
    assert out.shape == (M, H) and out.dtype == dtype
    ref = moe_reference(x, w13, w2, w, ids, fp64=True)
    assert_close(out, ref, tol=tolerance(dtype), what=f"M={M} E={E} H={H} I={I} k={k} {dtype}")


def tma_config(block_m=16, **kw):
    """A small config that asks for the sorted (TMA) layout."""
    return dict(BLOCK_SIZE_M=block_m, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=2, num_warps=4,
                num_stages=2, TMA=True) | kw
