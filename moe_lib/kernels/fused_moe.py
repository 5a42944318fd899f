"""The fused-MoE kernels and their launchers: a grouped GEMM over expert-sorted tokens, written from scratch.

Both GEMMs of an MoE layer are the same kernel, :func:`fused_moe_kernel`. A program computes one
BLOCK_M x BLOCK_N tile of C for one block of sorted rows; all rows of a block share an expert, so the B tile is
one slice of that expert's weight. Row r of the A tile is token ``sorted_token_ids[r] // A_ROWS_DIV`` (the
token itself in GEMM1, the (token, slot) row in GEMM2).

Production switches, each chosen by the plan (:mod:`moe_lib.kernels.experts`), none changing a bit:

- ``TMA``: the tokens were first copied into sorted order (:func:`gather_sorted_rows`), so every A tile is a
  contiguous box fetched through a tensor descriptor (Hopper's bulk copy engine), and so are the B tiles;
- ``C_SORTED``: GEMM1 writes ``act`` in sorted order for a TMA GEMM2;
- ``C_ROWS_DIV = top_k``: GEMM2 adds each slot's row into its token's row (the sum over k, fused);
- ``SPLIT_TAIL``: a last wave at most half full runs as twice as many half-width tiles;
- ``ZERO_BLOCK``: GEMM1 first clears the output that GEMM2 will add into (no separate clear launch);
- ``USE_PDL``: programmatic dependent launch (:func:`moe_lib.runtime.pdl`);
- ``COMPUTE_FP32``: upcast tiles before ``tl.dot`` — the interpreter computes bf16 wrongly.

The plan decides; the launchers here only turn a decision into a grid and a launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import runtime
from .._alloc import empty
from ..runtime import pdl_start


@triton.jit
def fused_moe_kernel(
    # Pointers to matrices: A (rows, K), B (E, N or 2N, K), C (M * top_k, EM or M rows, N)
    a_ptr, b_ptr, c_ptr,
    # Tensor descriptors for Hopper's bulk copy engine (TMA), None unless TMA: A, B, and B for half-width
    # tail tiles (None unless SPLIT_TAIL)
    a_desc, b_desc, b_half_desc,
    # Pointers to routing data: topk_weights (M * top_k,) fp32, and the alignment's three outputs
    topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    # FP8 scales (fp32; unused unless SCALES): A's (one, per A row, or per A row and K group) and B's (per expert,
    # per expert and row of B, or per expert and (row group, K group))
    a_scale_ptr, b_scale_ptr,
    # The output a later GEMM2 adds into, zeroed here first (unless ZERO_BLOCK is 0): z_numel values, each
    # program its zero_chunks chunks of ZERO_BLOCK
    z_ptr, z_numel, zero_chunks,
    # Matrix dimensions: N columns of C, K the reduction, EM = len(sorted_token_ids),
    # num_valid_tokens = M * top_k (larger ids are padding), num_experts = experts in B
    N, K, EM, num_valid_tokens, num_experts,
    # Strides: how far to step in memory to move by one along each dimension
    stride_am, stride_ak,
    stride_be, stride_bn, stride_bk,
    stride_cm, stride_cn,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    # Programs that run at once (the GPU's multiprocessors): sizes the last wave for SPLIT_TAIL
    num_sms,
    # Meta-parameters
    A_ROWS_DIV: tl.constexpr,  # flat id -> A row: top_k when A holds tokens (GEMM1), 1 otherwise (GEMM2)
    C_ROWS_DIV: tl.constexpr,  # flat id -> C row: 1, or top_k to add each slot's row into its token's row
    GATED: tl.constexpr,  # B rows [0, N) are the gate, [N, 2N) the up projection: C = silu(A Bg^T) * (A Bu^T)
    MUL_ROUTED_WEIGHT: tl.constexpr,  # multiply each row of C by its fp32 routing weight
    TMA: tl.constexpr,  # A's rows are already in sorted order (row = sorted position); A, B via descriptors
    C_SORTED: tl.constexpr,  # store row r of the tile at sorted position r (GEMM1 feeding a TMA GEMM2)
    SPLIT_TAIL: tl.constexpr,  # a last wave at most half full runs as twice as many half-width tiles
    COMPUTE_FP32: tl.constexpr,  # upcast tiles to fp32 before tl.dot (the interpreter gets bf16 wrong)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (exact), "tf32" is never chosen implicitly
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
    SCALES: tl.constexpr = 0,  # FP8 w8a8: 0 none, 1 per tensor, 2 per channel / token, 3 per block / token group
    GROUP_N: tl.constexpr = 1, GROUP_K: tl.constexpr = 1,  # SCALES 3: B's scale blocks (BLOCK_SIZE_K | GROUP_K)
    FP8_ACC: tl.constexpr = None,  # FP8: products summed in the tensor core's own (short) accumulator before
    #                                each fp32 add (None: Triton's default; on Hopper that is the whole K)
    ZERO_BLOCK: tl.constexpr = 0,  # GEMM1 clears GEMM2's output (saves the launch of a separate clear)
):
    pdl_start(USE_PDL)
    pid = tl.program_id(axis=0)
    if ZERO_BLOCK:  # before any early exit: every program clears its own chunks, whether it has a tile or not
        for chunk in range(zero_chunks):
            offs_z = (pid.to(tl.int64) * zero_chunks + chunk) * ZERO_BLOCK + tl.arange(0, ZERO_BLOCK)
            tl.store(z_ptr + offs_z, tl.zeros((ZERO_BLOCK,), dtype=z_ptr.dtype.element_ty), mask=offs_z < z_numel)
    # -----------------------------------------------------------
    # The tiles: row blocks that hold tokens (the grid is sized for the worst case; the rest exit) times
    # column blocks of N.
    num_pid_m = tl.cdiv(tl.load(num_tokens_post_padded_ptr), BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_tiles = num_pid_m * num_pid_n
    # Tiles run in waves of num_sms. When the last wave is at most half full, its tiles are split in two
    # along N: the same work, spread over twice as many SMs, so that wave takes about half as long.
    num_whole = num_tiles
    if SPLIT_TAIL:
        tail = num_tiles % num_sms
        if (num_tiles >= num_sms) & (2 * tail <= num_sms):
            num_whole = num_tiles - tail
    if pid < num_whole:
        pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_SIZE_M)
        _moe_tile(a_ptr, b_ptr, c_ptr, a_desc, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                  a_scale_ptr, b_scale_ptr, N, K, EM, num_valid_tokens, num_experts,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
                  b_desc, pid_m, pid_n * BLOCK_SIZE_N,
                  A_ROWS_DIV, C_ROWS_DIV, GATED, MUL_ROUTED_WEIGHT, TMA, C_SORTED, COMPUTE_FP32, DOT_PRECISION,
                  BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, SCALES, GROUP_N, GROUP_K, FP8_ACC)
    elif SPLIT_TAIL:
        half = pid - num_whole  # programs num_whole + 2t and + 2t + 1 share tile num_whole + t
        if half < 2 * (num_tiles - num_whole):
            pid_m, pid_n = grouped_tile(num_whole + half // 2, num_pid_m, num_pid_n, GROUP_SIZE_M)
            _moe_tile(a_ptr, b_ptr, c_ptr, a_desc, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                      a_scale_ptr, b_scale_ptr, N, K, EM, num_valid_tokens, num_experts,
                      stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                      stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
                      b_half_desc, pid_m, pid_n * BLOCK_SIZE_N + (half % 2) * (BLOCK_SIZE_N // 2),
                      A_ROWS_DIV, C_ROWS_DIV, GATED, MUL_ROUTED_WEIGHT, TMA, C_SORTED, COMPUTE_FP32,
                      DOT_PRECISION, BLOCK_SIZE_M, BLOCK_SIZE_N // 2, BLOCK_SIZE_K, SCALES, GROUP_N, GROUP_K,
                      FP8_ACC)


@triton.jit
def grouped_tile(tile, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """Tile index -> (row block, column block), GROUP_SIZE_M row blocks at a time, so that consecutive
    programs reuse the same B columns from L2."""
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = tile // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((tile % num_pid_in_group) % group_size_m)
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _moe_tile(
    a_ptr, b_ptr, c_ptr, a_desc, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
    a_scale_ptr, b_scale_ptr, N, K, EM, num_valid_tokens, num_experts,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    stride_asm, stride_ask, stride_bse, stride_bsn, stride_bsk,
    b_desc,  # B's descriptor with boxes of (1, BLOCK_SIZE_N, BLOCK_SIZE_K)
    pid_m, first_col,  # the tile: row block pid_m, columns [first_col, first_col + BLOCK_SIZE_N)
    A_ROWS_DIV: tl.constexpr, C_ROWS_DIV: tl.constexpr, GATED: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr,
    TMA: tl.constexpr, C_SORTED: tl.constexpr, COMPUTE_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    SCALES: tl.constexpr, GROUP_N: tl.constexpr, GROUP_K: tl.constexpr, FP8_ACC: tl.constexpr,
):
    """One BLOCK_SIZE_M x BLOCK_SIZE_N tile of C (see fused_moe_kernel for the arguments)."""
    # -----------------------------------------------------------
    # The rows of this tile: flat ids (t * top_k + j); padding slots hold num_valid_tokens.
    offs_sorted = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    flat_ids = tl.load(sorted_token_ids_ptr + offs_sorted, mask=offs_sorted < EM, other=num_valid_tokens)
    row_mask = flat_ids < num_valid_tokens  # (BLOCK_SIZE_M,)
    flat_ids = flat_ids.to(tl.int64)  # M * top_k * stride overflows int32 at large M
    offs_cn = first_col + tl.arange(0, BLOCK_SIZE_N)
    col_mask = offs_cn < N
    if C_SORTED:  # padding rows too (as zeros), so that GEMM2 reads no uninitialized memory
        c_rows = offs_sorted.to(tl.int64)
        c_mask = (offs_sorted < EM)[:, None] & col_mask[None, :]
    else:
        c_rows = flat_ids // C_ROWS_DIV
        c_mask = row_mask[:, None] & col_mask[None, :]
    c_ptrs = c_ptr + c_rows[:, None] * stride_cm + offs_cn[None, :] * stride_cn

    # An expert that lives on another rank (-1) contributes zeros here; so does an id that is not an
    # expert of B at all (never read out of bounds, whatever the caller passed).
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if (expert < 0) | (expert >= num_experts):
        if C_ROWS_DIV == 1:  # (when adding into C, zero is nothing to add)
            tl.store(c_ptrs, tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=c_ptr.dtype.element_ty), mask=c_mask)
        return

    # -----------------------------------------------------------
    # Pointers to the first K block of A (gathered rows) and of B (this expert's slice, read as K x N).
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_rows = flat_ids // A_ROWS_DIV
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    offs_bn = offs_cn.to(tl.int64)
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn
    if GATED:
        b_up_ptrs = b_ptrs + N * stride_bn  # the up projection sits N rows further down

    # -----------------------------------------------------------
    # Iterate over K, accumulating in fp32.
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    # TMA: the copy engine fetches whole boxes and fills zeros past the tensor's edges (the K tail, the
    # last rows of B). Gate rows past N read up rows: they only feed columns that are never stored.
    row_a = (pid_m * BLOCK_SIZE_M).to(tl.int32)
    row_b = first_col.to(tl.int32)
    if SCALES == 3:  # FP8 per block: A's scales per (row, K group), B's per (row group, K group)
        a_scale_ptrs = a_scale_ptr + a_rows * stride_asm
        b_scale_ptrs = b_scale_ptr + expert * stride_bse + (offs_bn // GROUP_N) * stride_bsn
        b_up_scale_ptrs = b_scale_ptr + expert * stride_bse + ((offs_bn + N) // GROUP_N) * stride_bsn
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_mask = offs_k < K - k * BLOCK_SIZE_K
        if TMA:
            a = a_desc.load([row_a, k * BLOCK_SIZE_K])  # (BLOCK_SIZE_M, BLOCK_SIZE_K)
            b = b_desc.load([expert.to(tl.int32), row_b, k * BLOCK_SIZE_K]).reshape(BLOCK_SIZE_N, BLOCK_SIZE_K).T
        else:
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if COMPUTE_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if SCALES == 3:
            k_group = (k * BLOCK_SIZE_K) // GROUP_K
            a_s = tl.load(a_scale_ptrs + k_group * stride_ask, mask=row_mask, other=0.0)  # (BLOCK_SIZE_M,)
            b_s = tl.load(b_scale_ptrs + k_group * stride_bsk, mask=col_mask, other=0.0)  # (BLOCK_SIZE_N,)
            acc += tl.dot(a, b, input_precision=DOT_PRECISION, max_num_imprecise_acc=FP8_ACC) * (
                a_s[:, None] * b_s[None, :])
        else:
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, max_num_imprecise_acc=FP8_ACC)
        if GATED:
            if TMA:
                b_up = b_desc.load([expert.to(tl.int32), N + row_b, k * BLOCK_SIZE_K])
                b_up = b_up.reshape(BLOCK_SIZE_N, BLOCK_SIZE_K).T
            else:
                b_up = tl.load(b_up_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            if COMPUTE_FP32:
                b_up = b_up.to(tl.float32)
            if SCALES == 3:
                b_up_s = tl.load(b_up_scale_ptrs + k_group * stride_bsk, mask=col_mask, other=0.0)
                acc_up += tl.dot(a, b_up, input_precision=DOT_PRECISION, max_num_imprecise_acc=FP8_ACC) * (
                    a_s[:, None] * b_up_s[None, :])
            else:
                acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PRECISION, max_num_imprecise_acc=FP8_ACC)
            b_up_ptrs += BLOCK_SIZE_K * stride_bk
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    # -----------------------------------------------------------
    # Epilogue in fp32: FP8 scales, SiLU-and-mul, the routing weight, then one rounding to C's dtype.
    if SCALES == 1:  # one scale for A, one per expert for B (w1 and w3 share it)
        scale = tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert * stride_bse)
        acc = acc * scale
        acc_up = acc_up * scale
    elif SCALES == 2:  # per token (A's row) and per channel (B's row)
        a_s = tl.load(a_scale_ptr + a_rows * stride_asm, mask=row_mask, other=0.0)[:, None]
        b_s = tl.load(b_scale_ptr + expert * stride_bse + offs_bn * stride_bsn, mask=col_mask, other=0.0)
        acc = acc * a_s * b_s[None, :]
        if GATED:
            b_up_s = tl.load(b_scale_ptr + expert * stride_bse + (offs_bn + N) * stride_bsn, mask=col_mask, other=0.0)
            acc_up = acc_up * a_s * b_up_s[None, :]
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + flat_ids, mask=row_mask, other=0.0).to(tl.float32)
        acc = acc * weight[:, None]
    if C_ROWS_DIV == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        # The sum over k, fused: each slot adds its rounded row into the zeroed token row. With two slots
        # that is 0 + a + b = a + b whichever lands first, so the result does not depend on the order.
        tl.atomic_add(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask, sem="relaxed")


@triton.jit
def moe_sum_kernel(
    # Pointers: partial (M, TOP_K, H) expert outputs, out (M, H), topk_ids (M, TOP_K) contiguous
    partial_ptr, out_ptr, topk_ids_ptr,
    # Sizes
    M, H, num_experts,
    # Strides
    stride_pm, stride_pk, stride_ph, stride_om, stride_oh,
    # Meta-parameters
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """out[t] = sum over j of partial[t, j], in fp32, slots in order (deterministic). A slot whose expert
    id is not in [0, num_experts) was never computed (alignment drops it): it counts as zero."""
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_m[:, None] < M) & (offs_h[None, :] < H)
    ptrs = partial_ptr + offs_m[:, None] * stride_pm + offs_h[None, :] * stride_ph
    acc = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        expert = tl.load(topk_ids_ptr + offs_m * TOP_K + j, mask=offs_m < M, other=-1)  # (BLOCK_M,)
        valid = (expert >= 0) & (expert < num_experts)
        acc += tl.load(ptrs + j * stride_pk, mask=mask & valid[:, None], other=0.0).to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_h[None, :] * stride_oh
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gather_rows_kernel(
    # Pointers: x (M, H) tokens, out (EM, H) tokens in sorted order, the alignment's outputs
    x_ptr, out_ptr, sorted_token_ids_ptr, num_tokens_post_padded_ptr,
    # Sizes: H, EM = len(sorted_token_ids), num_valid_tokens = M * top_k (larger ids are padding)
    H, EM, num_valid_tokens,
    # Strides
    stride_xm, stride_xh, stride_om, stride_oh,
    # Meta-parameters
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """out[p] = x[sorted_token_ids[p] // TOP_K] for every sorted position p below the padded total; padding
    positions get zeros. Programs wholly past the padded total return at once: the GEMMs never read there."""
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    if pid_m * BLOCK_M >= tl.load(num_tokens_post_padded_ptr):
        return
    offs_p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    p_mask = offs_p < EM
    flat_ids = tl.load(sorted_token_ids_ptr + offs_p, mask=p_mask, other=num_valid_tokens)
    valid = flat_ids < num_valid_tokens
    rows = (flat_ids // TOP_K).to(tl.int64)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    vals = tl.load(x_ptr + rows[:, None] * stride_xm + offs_h[None, :] * stride_xh,
                   mask=valid[:, None] & h_mask[None, :], other=0.0)
    tl.store(out_ptr + offs_p.to(tl.int64)[:, None] * stride_om + offs_h[None, :] * stride_oh, vals,
             mask=p_mask[:, None] & h_mask[None, :])


def gather_sorted_rows(
    x: torch.Tensor, sorted_token_ids: torch.Tensor, num_tokens_post_padded: torch.Tensor, top_k: int,
    out: torch.Tensor | None = None, *, use_pdl: bool | None = None,
) -> torch.Tensor:
    """(M, H) -> (EM, H): the tokens laid out in the alignment's order, one row per (token, slot), so that
    each BLOCK_M block is a contiguous box a tensor descriptor can fetch."""
    em, hidden = sorted_token_ids.shape[0], x.shape[1]
    if out is None:
        out = empty(em, hidden, dtype=x.dtype, device=x.device)
    if use_pdl is None:
        use_pdl = runtime.pdl(x.device, x.shape[0] * top_k)
    block_h = min(triton.next_power_of_2(hidden), 4096 if runtime.INTERPRET else 512)
    rows_per_program = max(1, (16384 if runtime.INTERPRET else 4096) // block_h)
    grid = (triton.cdiv(em, rows_per_program), triton.cdiv(hidden, block_h))
    with runtime.quiet_interpreter():
        gather_rows_kernel[grid](
            x, out, sorted_token_ids, num_tokens_post_padded, hidden, em, x.shape[0] * top_k,
            x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            TOP_K=top_k, BLOCK_M=rows_per_program, BLOCK_H=block_h,
            USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4,
        )
    return out


def moe_sum(partial: torch.Tensor, out: torch.Tensor, topk_ids: torch.Tensor, num_experts: int, *,
            use_pdl: bool | None = None) -> torch.Tensor:
    """(M, k, H) -> out (M, H): the sum over each token's k expert outputs (slots with an id outside
    [0, num_experts) count as zero)."""
    num_tokens, top_k, hidden = partial.shape
    topk_ids = topk_ids.contiguous()
    # One pass over memory: ~4K values per program on a GPU, a few big programs in the interpreter.
    if use_pdl is None:
        use_pdl = runtime.pdl(out.device, num_tokens * top_k)
    block_h = min(triton.next_power_of_2(hidden), 8192 if runtime.INTERPRET else 1024)
    block_m = min(triton.next_power_of_2(num_tokens), max(1, (65536 if runtime.INTERPRET else 4096) // block_h))
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(hidden, block_h))
    with runtime.quiet_interpreter():
        moe_sum_kernel[grid](
            partial, out, topk_ids, num_tokens, hidden, num_experts,
            partial.stride(0), partial.stride(1), partial.stride(2), out.stride(0), out.stride(1),
            TOP_K=top_k, BLOCK_M=block_m, BLOCK_H=block_h,
            USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4,
        )
    return out


# ----------------------------------------------------------------------------------------------------
# Host functions
# ----------------------------------------------------------------------------------------------------
def invoke_fused_moe_kernel(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_padded: torch.Tensor,
    *,
    a_rows_div: int,
    c_rows_div: int = 1,
    gated: bool,
    mul_routed_weight: bool,
    config: dict,
    tma: bool = False,
    c_sorted: bool = False,
    split_tail: bool = False,
    num_sms: int | None = None,
    use_pdl: bool = False,
    a_scale: torch.Tensor | None = None,
    b_scale: torch.Tensor | None = None,
    scales: int = 0,
    group_n: int = 1,
    group_k: int = 1,
    fp8_acc: int | None = None,
    zero: torch.Tensor | None = None,
) -> None:
    """Launch one grouped GEMM: C[flat id // c_rows_div] (+)= A[flat id // a_rows_div] @ B[expert].T (see
    the kernel). ``topk_weights`` is flat (M * top_k,) fp32. With ``tma`` A is already in sorted order (row =
    sorted position, :func:`gather_sorted_rows`) and A and B are read through tensor descriptors; with
    ``c_sorted`` C's rows are sorted positions too. ``split_tail`` (needs ``num_sms``, the programs that run
    at once) adds up to num_sms / 2 programs for half-width tiles of a sparse last wave. FP8: ``scales`` 1 (per
    tensor: ``a_scale`` one value, ``b_scale`` (E,)), 2 (per token (rows, 1) / per channel (E, N, 1)) or 3 (per
    token group (rows, K/group_k) / per block (E, N/group_n, K/group_k)), A and B in e4m3; ``fp8_acc``: products
    summed in the tensor core before each fp32 add (at most BLOCK_SIZE_K; None: Triton's default). ``zero``: a
    contiguous tensor the launch's programs clear before their tiles (the output a later GEMM2 adds into)."""
    if scales and tma:  # the FP8 scales index A by flat id; a TMA A is indexed by sorted position
        raise ValueError("FP8 scales need the pointer path: pass tma=False with scales")
    if scales == 3 and group_k % config["BLOCK_SIZE_K"]:
        raise ValueError(f"per-block scales need BLOCK_SIZE_K ({config['BLOCK_SIZE_K']}) to divide the K group "
                         f"({group_k})")
    n = c.shape[1]
    k = a.shape[1]
    em = sorted_token_ids.shape[0]
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    tiles = triton.cdiv(em, bm) * triton.cdiv(n, bn)  # the worst case: every row block holds tokens
    grid = (tiles + (num_sms // 2 if split_tail else 0),)
    compute_fp32 = runtime.INTERPRET and a.dtype != torch.float32  # bf16, fp16 and fp8 alike
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk]) if tma else None  # boxes of (BM, BK) rows of A
    b_desc = TensorDescriptor.from_tensor(b, [1, bn, bk]) if tma else None  # (1, BN, BK) of one expert
    b_half_desc = TensorDescriptor.from_tensor(b, [1, bn // 2, bk]) if tma and split_tail else None
    a_s = a_scale if scales else topk_weights  # any fp32 pointer: never read without SCALES
    b_s = b_scale if scales else topk_weights
    a_s_strides = (a_s.stride(0), a_s.stride(1)) if scales and a_s.dim() == 2 else (0, 0)
    b_s_strides = (tuple(b_s.stride()) + (0, 0))[:3] if scales else (0, 0, 0)
    if zero is not None and not zero.is_contiguous():
        raise ValueError("zero must be a contiguous tensor")
    z_numel = 0 if zero is None else zero.numel()
    # The clear is spread over the grid: chunks of up to 1024 values, as few per program as the grid allows.
    zero_block = min(1024, triton.next_power_of_2(triton.cdiv(z_numel, grid[0]))) if z_numel else 0
    zero_chunks = triton.cdiv(z_numel, grid[0] * zero_block) if z_numel else 0
    with runtime.quiet_interpreter():
        fused_moe_kernel[grid](
            a, b, c,
            a_desc, b_desc, b_half_desc,
            topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
            a_s, b_s,
            c if zero is None else zero, z_numel, zero_chunks,
            n, k, em, topk_weights.shape[0], b.shape[0],  # num_valid_tokens = M * top_k
            a.stride(0), a.stride(1),
            b.stride(0), b.stride(1), b.stride(2),
            c.stride(0), c.stride(1),
            *a_s_strides, *b_s_strides,
            num_sms if split_tail else 1,
            A_ROWS_DIV=a_rows_div,
            C_ROWS_DIV=c_rows_div,
            GATED=gated,
            MUL_ROUTED_WEIGHT=mul_routed_weight,
            TMA=tma,
            C_SORTED=c_sorted,
            SPLIT_TAIL=split_tail,
            COMPUTE_FP32=compute_fp32,
            DOT_PRECISION="ieee" if (a.dtype == torch.float32 or compute_fp32) else "tf32",
            BLOCK_SIZE_M=bm,
            BLOCK_SIZE_N=bn,
            BLOCK_SIZE_K=bk,
            GROUP_SIZE_M=config["GROUP_SIZE_M"],
            USE_PDL=use_pdl,
            launch_pdl=use_pdl,
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
            SCALES=scales,
            GROUP_N=group_n,
            GROUP_K=group_k,
            FP8_ACC=fp8_acc if scales and not compute_fp32 else None,
            ZERO_BLOCK=zero_block,
        )


def tma_usable(*tensors: torch.Tensor) -> bool:
    """Whether tensor descriptors can describe these tensors' memory: unit stride in the last dimension,
    16-byte aligned base and other strides (the device's side is :attr:`runtime.Target.hopper`)."""
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])
        for t in tensors
    )


__all__ = [
    "fused_moe_kernel",
    "grouped_tile",
    "invoke_fused_moe_kernel",
    "gather_sorted_rows",
    "moe_sum",
    "tma_usable",
]
