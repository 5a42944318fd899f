"""The textbook fused-MoE kernel: the whole idea in one short kernel, to read top to bottom.

One program computes one BLOCK_M x BLOCK_N tile of C for one block of expert-sorted rows. Every row of the
block belongs to the same expert (the alignment padded each expert's rows to whole blocks), so the B tile is
a slice of that one expert's weight: a grouped GEMM, one group per expert. The production kernel
(:mod:`moe_lib.kernels.fused_moe`) is this kernel plus measured speed-ups — TMA tiles, a split last wave,
programmatic dependent launch, the sum over k inside GEMM2 — and gives the same bits (``tests/kernels``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import runtime
from .align import moe_align_block_size


@triton.jit
def textbook_moe_kernel(
    # Pointers: A (rows, K) tokens or activations, B (E, N or 2N, K) expert weights, C (M * top_k, N) output
    a_ptr, b_ptr, c_ptr,
    # Routing: weights (M * top_k,) fp32 by flat id; the alignment's sorted flat ids and one expert per block
    topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
    # Sizes: N columns of C, K the reduction, num_valid = M * top_k (larger sorted ids are padding)
    N, K, num_valid,
    # Strides
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    # Meta-parameters
    TOP_K_DIV: tl.constexpr,  # flat id -> A row: top_k when A holds tokens (GEMM1), 1 when it holds rows (GEMM2)
    GATED: tl.constexpr,  # B holds [gate; up]: C = silu(A @ gate.T) * (A @ up.T)
    MUL_ROUTED_WEIGHT: tl.constexpr,  # multiply each row of C by its routing weight
    COMPUTE_FP32: tl.constexpr,  # upcast tiles before tl.dot (the interpreter computes bf16 wrongly)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(axis=0)  # which block of sorted rows
    pid_n = tl.program_id(axis=1)  # which BLOCK_N columns of C
    # The rows of this tile: flat ids t * top_k + j, padding slots hold num_valid.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # < len(sorted_token_ids): the grid has whole blocks only
    flat_ids = tl.load(sorted_token_ids_ptr + offs_m).to(tl.int64)  # (BLOCK_M,) int64: M * k * stride > 2**31
    row_mask = flat_ids < num_valid
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)  # -1: a block past the last expert's rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = offs_n < N
    c_ptrs = c_ptr + flat_ids[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if expert < 0:
        return  # no row of this block holds a token: nothing to write
    offs_k = tl.arange(0, BLOCK_K)
    # A: gathered rows (token flat_id // TOP_K_DIV); B: expert `expert`'s weight, read as (K, N).
    a_ptrs = a_ptr + (flat_ids // TOP_K_DIV)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if COMPUTE_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision="ieee")  # fp32 inputs: exact products, no tf32
        if GATED:  # the up projection sits N rows below the gate in B
            b_up = tl.load(b_ptrs + N * stride_bn, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            if COMPUTE_FP32:
                b_up = b_up.to(tl.float32)
            acc_up = tl.dot(a, b_up, acc_up, input_precision="ieee")
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    # Epilogue in fp32, then one rounding to C's dtype.
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_ROUTED_WEIGHT:
        acc = acc * tl.load(topk_weights_ptr + flat_ids, mask=row_mask, other=0.0)[:, None]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def textbook_gemm(a, b, c, topk_weights, sorted_token_ids, expert_ids, *, top_k_div: int, gated: bool,
                  mul_routed_weight: bool, block_m: int, block_n: int, block_k: int) -> torch.Tensor:
    """Launch the textbook kernel: one program per (block of sorted rows, BLOCK_N columns of C)."""
    n = c.shape[1]
    grid = (sorted_token_ids.shape[0] // block_m, triton.cdiv(n, block_n))
    with runtime.quiet_interpreter():
        textbook_moe_kernel[grid](
            a, b, c, topk_weights, sorted_token_ids, expert_ids, n, a.shape[1], topk_weights.shape[0],
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
            TOP_K_DIV=top_k_div, GATED=gated, MUL_ROUTED_WEIGHT=mul_routed_weight,
            COMPUTE_FP32=runtime.INTERPRET and a.dtype != torch.float32,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        )
    return c


def textbook_fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                           topk_ids: torch.Tensor, *, block_m: int = 16, block_n: int = 32,
                           block_k: int = 32) -> torch.Tensor:
    """The experts of an MoE layer in four plain steps: align, GEMM1 (+ SiLU·mul), GEMM2 (× weight), sum over k.
    For already-validated inputs (``fused_experts`` checks its arguments; this one teaches)."""
    (m, hidden), top_k, inter = x.shape, topk_ids.shape[1], w2.shape[2]
    sorted_ids, expert_ids, _ = moe_align_block_size(topk_ids, block_m, w13.shape[0])
    weights = topk_weights.reshape(-1).to(torch.float32)  # (M * k,)
    tiles = dict(block_m=block_m, block_n=block_n, block_k=block_k)
    act = torch.empty(m * top_k, inter, dtype=x.dtype, device=x.device)  # (M * k, I)
    textbook_gemm(x, w13, act, weights, sorted_ids, expert_ids, top_k_div=top_k, gated=True,
                  mul_routed_weight=False, **tiles)
    partial = torch.empty(m * top_k, hidden, dtype=x.dtype, device=x.device)  # (M * k, H)
    textbook_gemm(act, w2, partial, weights, sorted_ids, expert_ids, top_k_div=1, gated=False,
                  mul_routed_weight=True, **tiles)
    partial = partial.view(m, top_k, hidden)
    out = partial[:, 0].to(torch.float32)
    for j in range(1, top_k):  # slots in order, in fp32: the same sum as the production kernels
        out += partial[:, j]
    return out.to(x.dtype)


__all__ = ["textbook_moe_kernel", "textbook_gemm", "textbook_fused_experts"]
