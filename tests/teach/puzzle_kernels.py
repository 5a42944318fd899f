"""Kernels for the puzzle tests: for every puzzle of moe_lib.teach.puzzles a correct kernel and typical wrong ones,
and the contract every checker keeps (:class:`PuzzleContract`). Tests only: the library's kernels live in
moe_lib/kernels/. (conftest.py imports moe_lib, which switches Triton to its interpreter, before this module.)

Each puzzle has one body, ``_<puzzle>``, whose constexpr switches each make one typical mistake; with every
switch at its default it is the correct kernel (written from the puzzle's docstring). The kernels the tests hand
to the checkers are thin wrappers with the learner's signature.
"""

from __future__ import annotations

import sys

import triton
import triton.language as tl


# ====================================================================================================
# Notebook 02: the primer
# ====================================================================================================
@triton.jit
def _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr, MASKED: tl.constexpr = True,
                USE_PID: tl.constexpr = 1, PID_SHIFT: tl.constexpr = 0, SHORT: tl.constexpr = 0,
                SIGN: tl.constexpr = 1):
    """MASKED=False: no masks; USE_PID=0: every program takes block 0; PID_SHIFT=1: block pid + 1 (its store
    mask widened to match); SHORT=1: masks offs < n - 1; SIGN=-1: x - y."""
    offs = (tl.program_id(0) * USE_PID + PID_SHIFT) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n - SHORT
    if MASKED:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        tl.store(out_ptr + offs, x + SIGN * y, mask=offs < n - SHORT + PID_SHIFT * BLOCK)
    else:
        tl.store(out_ptr + offs, tl.load(x_ptr + offs) + SIGN * tl.load(y_ptr + offs))


@triton.jit
def vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK)


@triton.jit
def vector_add_no_mask(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK, MASKED=False)


@triton.jit
def vector_add_no_program_id(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK, USE_PID=0)


@triton.jit
def vector_add_pid_plus_one(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK, PID_SHIFT=1)


@triton.jit
def vector_add_mask_short(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK, SHORT=1)


@triton.jit
def vector_add_subtracts(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK, SIGN=-1)


# -- what a kernel must not be able to do to the checker ---------------------------------------------
@triton.jit
def vector_add_endless(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = 0
    while i < 1_000_000_000:
        i += 1


@triton.jit
def vector_add_exits(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    sys.exit(3)


@triton.jit
def vector_add_exits_quietly(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    sys.exit()


@triton.jit
def vector_add_raises(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    tl.store(out_ptr + tl.arange(0, BLOCK), undefined_name)  # noqa: F821


@triton.jit
def vector_add_not_implemented(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    raise NotImplementedError


def vector_add_not_jitted(x_ptr, y_ptr, out_ptr, n, BLOCK):
    pass


@triton.jit
def vector_add_wrong_signature(x_ptr, y_ptr, out_ptr, BLOCK: tl.constexpr):  # n is missing
    pass


@triton.jit
def vector_add_wild_store(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs * 1_000_000, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)  # refused
    _vector_add(x_ptr, y_ptr, out_ptr, n, BLOCK)


# -- row softmax ------------------------------------------------------------------------------------
@triton.jit
def _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr, PAD_ZERO: tl.constexpr = False,
                 NO_MAX: tl.constexpr = False, COLS_AS_STRIDE: tl.constexpr = False,
                 STORE_MASK: tl.constexpr = True, SUM_IN_INPUT_DTYPE: tl.constexpr = False):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    if COLS_AS_STRIDE:
        stride_x = n_cols
        stride_out = n_cols
    if PAD_ZERO:
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=-float("inf")).to(tl.float32)
    if not NO_MAX:
        x = x - tl.max(x, axis=0)
    e = tl.exp(x)
    if SUM_IN_INPUT_DTYPE:
        e = e.to(x_ptr.dtype.element_ty)
    if STORE_MASK:
        tl.store(out_ptr + row * stride_out + cols, e / tl.sum(e, axis=0), mask=mask)
    else:
        tl.store(out_ptr + row * stride_out + cols, e / tl.sum(e, axis=0))


@triton.jit
def row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N)


@triton.jit
def row_softmax_pad_zero(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N, PAD_ZERO=True)


@triton.jit
def row_softmax_no_max(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N, NO_MAX=True)


@triton.jit
def row_softmax_cols_as_stride(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N, COLS_AS_STRIDE=True)


@triton.jit
def row_softmax_no_store_mask(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N, STORE_MASK=False)


@triton.jit
def row_softmax_sum_in_bf16(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    _row_softmax(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N, SUM_IN_INPUT_DTYPE=True)


# ====================================================================================================
# Notebook 03: routing
# ====================================================================================================
@triton.jit
def _topk(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr,
          TIES_HIGH: tl.constexpr = False, TAKE_OUT: tl.constexpr = True, PAD_ZERO: tl.constexpr = False):
    offs_e = tl.arange(0, BLOCK_E)
    row = logits_ptr + tl.program_id(0) * stride_lm + offs_e
    if PAD_ZERO:  # padding joins the softmax as 0 and may be chosen
        x = tl.load(row, mask=offs_e < E, other=0.0).to(tl.float32)
    else:
        x = tl.load(row, mask=offs_e < E, other=-float("inf")).to(tl.float32)
    e = tl.exp(x - tl.max(x, axis=0))
    p = e / tl.sum(e, axis=0)
    p = tl.where(p == p, p, 0.0)
    if not PAD_ZERO:
        p = tl.where(offs_e < E, p, -1.0)
    out = tl.program_id(0) * TOP_K
    for j in tl.static_range(TOP_K):
        best = tl.max(p, axis=0)
        if TIES_HIGH:
            best_id = tl.max(tl.where(p == best, offs_e, -1), axis=0)
        else:
            best_id = tl.min(tl.where(p == best, offs_e, BLOCK_E), axis=0)
        tl.store(weights_ptr + out + j, best)
        tl.store(ids_ptr + out + j, best_id)
        if TAKE_OUT:
            p = tl.where(offs_e == best_id, -2.0, p)


@triton.jit
def topk(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    _topk(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K, BLOCK_E)


@triton.jit
def topk_ties_to_higher(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    _topk(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K, BLOCK_E, TIES_HIGH=True)


@triton.jit
def topk_not_taken_out(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    _topk(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K, BLOCK_E, TAKE_OUT=False)


@triton.jit
def topk_padding_zero(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    _topk(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K, BLOCK_E, PAD_ZERO=True)


@triton.jit
def _renormalize(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 SAFE: tl.constexpr = True, AXIS: tl.constexpr = 1, ROW_MASK: tl.constexpr = True,
                 COL_MASK: tl.constexpr = True):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_K)
    offs = rows[:, None] * TOP_K + cols[None, :]
    mask = ((rows < M) | (not ROW_MASK))[:, None] & ((cols < TOP_K) | (not COL_MASK))[None, :]
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    total = tl.sum(w, axis=AXIS)
    if SAFE:
        total = tl.where(total > 0.0, total, 1.0)
    if AXIS == 1:
        tl.store(out_ptr + offs, w / total[:, None], mask=mask)
    else:
        tl.store(out_ptr + offs, w / total[None, :], mask=mask)


@triton.jit
def renormalize(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _renormalize(w_ptr, out_ptr, M, TOP_K, BLOCK_M, BLOCK_K)


@triton.jit
def renormalize_divides_by_zero(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _renormalize(w_ptr, out_ptr, M, TOP_K, BLOCK_M, BLOCK_K, SAFE=False)


@triton.jit
def renormalize_sum_over_tokens(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _renormalize(w_ptr, out_ptr, M, TOP_K, BLOCK_M, BLOCK_K, AXIS=0)


@triton.jit
def renormalize_no_column_mask(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _renormalize(w_ptr, out_ptr, M, TOP_K, BLOCK_M, BLOCK_K, COL_MASK=False)


@triton.jit
def renormalize_no_row_mask(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    _renormalize(w_ptr, out_ptr, M, TOP_K, BLOCK_M, BLOCK_K, ROW_MASK=False)


# ====================================================================================================
# Notebook 05: alignment
# ====================================================================================================
@triton.jit
def _expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts, BLOCK_SIZE: tl.constexpr,
                      CHUNK: tl.constexpr, E_PAD: tl.constexpr, PADDED: tl.constexpr = True,
                      INCLUSIVE: tl.constexpr = False, LOAD_MASK: tl.constexpr = True,
                      EXPERT_MASK: tl.constexpr = True):
    offs_e = tl.arange(0, E_PAD)
    counts = tl.zeros((E_PAD,), dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + offs, mask=(offs < numel) | (not LOAD_MASK), other=-1)
        counts += tl.sum((ids[:, None] == offs_e[None, :]).to(tl.int32), axis=0)
    sizes = counts
    if PADDED:
        sizes = (counts + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE
    starts = tl.cumsum(sizes, axis=0)
    if not INCLUSIVE:
        starts = starts - sizes
    mask = (offs_e < num_experts) | (not EXPERT_MASK)
    tl.store(counts_ptr + offs_e, counts, mask=mask)
    tl.store(offsets_ptr + offs_e, starts, mask=mask)
    tl.store(offsets_ptr + num_experts, tl.sum(sizes, axis=0))


@triton.jit
def expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                     BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    _expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts, BLOCK_SIZE, CHUNK, E_PAD)


@triton.jit
def expert_histogram_unpadded(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                              BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    _expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts, BLOCK_SIZE, CHUNK, E_PAD,
                      PADDED=False)


@triton.jit
def expert_histogram_inclusive(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                               BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    _expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts, BLOCK_SIZE, CHUNK, E_PAD,
                      INCLUSIVE=True)


@triton.jit
def expert_histogram_no_load_mask(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                                  BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    _expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts, BLOCK_SIZE, CHUNK, E_PAD,
                      LOAD_MASK=False)


@triton.jit
def expert_histogram_no_expert_mask(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                                    BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    _expert_histogram(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts, BLOCK_SIZE, CHUNK, E_PAD,
                      EXPERT_MASK=False)


@triton.jit
def _scatter_sorted(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr,
                    PAD_ZERO: tl.constexpr = False, CARRY: tl.constexpr = True, EXPERT_SHIFT: tl.constexpr = 0):
    e = tl.program_id(0) + EXPERT_SHIFT
    start = tl.load(offsets_ptr + e)
    end = tl.load(offsets_ptr + e + 1)
    count = 0
    for c in range(0, numel, CHUNK):
        offs = c + tl.arange(0, CHUNK)
        hit = tl.load(topk_ids_ptr + offs, mask=offs < numel, other=-1) == e
        rank = tl.cumsum(hit.to(tl.int32), axis=0) - 1
        if CARRY:
            rank += count
        tl.store(sorted_ids_ptr + start + rank, offs, mask=hit)
        count += tl.sum(hit.to(tl.int32), axis=0)
    pad = start + count + tl.arange(0, BLOCK_SIZE)
    sentinel = tl.zeros_like(pad)
    if not PAD_ZERO:
        sentinel += numel
    tl.store(sorted_ids_ptr + pad, sentinel, mask=pad < end)


@triton.jit
def scatter_sorted(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr):
    _scatter_sorted(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE, CHUNK)


@triton.jit
def scatter_sorted_pad_zero(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE: tl.constexpr,
                            CHUNK: tl.constexpr):
    _scatter_sorted(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE, CHUNK, PAD_ZERO=True)


@triton.jit
def scatter_sorted_no_carry(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE: tl.constexpr,
                            CHUNK: tl.constexpr):
    _scatter_sorted(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE, CHUNK, CARRY=False)


@triton.jit
def scatter_sorted_expert_off_by_one(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE: tl.constexpr,
                                     CHUNK: tl.constexpr):
    _scatter_sorted(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE, CHUNK, EXPERT_SHIFT=1)


# ====================================================================================================
# Notebook 06: the fused kernel
# ====================================================================================================
@triton.jit
def _tile(a_ptr, b_ptr, c_ptr, flat, expert, num_valid, N, K, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
          stride_cm, stride_cn, pid_n, weights_ptr, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, WEIGHTED: tl.constexpr, ROWS_ARE_FLAT: tl.constexpr = False,
          STORE_ROW_MASK: tl.constexpr = True, K_MASK: tl.constexpr = True, UPCAST: tl.constexpr = True):
    """C[flat, cols] = (weight *) A[flat // TOP_K] @ B[expert].T for the real rows (flat < num_valid)."""
    rows = flat < num_valid
    a_rows = flat if ROWS_ARE_FLAT else flat // TOP_K
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_in = (ks < K) | (not K_MASK)
        a = tl.load(a_ptr + a_rows[:, None] * stride_am + ks[None, :] * stride_ak, mask=rows[:, None] & k_in[None, :],
                    other=0.0)
        b = tl.load(b_ptr + expert * stride_be + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=k_in[:, None] & (cols < N)[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    if WEIGHTED:
        acc = acc * tl.load(weights_ptr + flat, mask=rows, other=0.0)[:, None]
    store_rows = rows | (not STORE_ROW_MASK)
    tl.store(c_ptr + flat[:, None] * stride_cm + cols[None, :] * stride_cn, acc,
             mask=store_rows[:, None] & (cols < N)[None, :])


@triton.jit
def moe_tile(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
             stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
             TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _tile(a_ptr, b_ptr, c_ptr, tl.load(row_ids_ptr + tl.arange(0, BLOCK_M)), expert, num_valid, N, K, stride_am,
          stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn, tl.program_id(0), a_ptr, TOP_K, BLOCK_M,
          BLOCK_N, BLOCK_K, False)


@triton.jit
def moe_tile_flat_id_as_row(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                            stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                            TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _tile(a_ptr, b_ptr, c_ptr, tl.load(row_ids_ptr + tl.arange(0, BLOCK_M)), expert, num_valid, N, K, stride_am,
          stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn, tl.program_id(0), a_ptr, TOP_K, BLOCK_M,
          BLOCK_N, BLOCK_K, False, ROWS_ARE_FLAT=True)


@triton.jit
def moe_tile_stores_padding_rows(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                                 stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                                 TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_K: tl.constexpr):
    _tile(a_ptr, b_ptr, c_ptr, tl.load(row_ids_ptr + tl.arange(0, BLOCK_M)), expert, num_valid, N, K, stride_am,
          stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn, tl.program_id(0), a_ptr, TOP_K, BLOCK_M,
          BLOCK_N, BLOCK_K, False, STORE_ROW_MASK=False)


@triton.jit
def moe_tile_no_k_mask(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                       stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                       TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _tile(a_ptr, b_ptr, c_ptr, tl.load(row_ids_ptr + tl.arange(0, BLOCK_M)), expert, num_valid, N, K, stride_am,
          stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn, tl.program_id(0), a_ptr, TOP_K, BLOCK_M,
          BLOCK_N, BLOCK_K, False, K_MASK=False)


@triton.jit
def moe_tile_dot_in_bf16(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                         stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                         TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _tile(a_ptr, b_ptr, c_ptr, tl.load(row_ids_ptr + tl.arange(0, BLOCK_M)), expert, num_valid, N, K, stride_am,
          stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn, tl.program_id(0), a_ptr, TOP_K, BLOCK_M,
          BLOCK_N, BLOCK_K, False, UPCAST=False)


@triton.jit
def _silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr,
              SWAP: tl.constexpr = False, COL_MASK: tl.constexpr = True, ROW_STRIDE_2I: tl.constexpr = False,
              UPCAST: tl.constexpr = True):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < M)[:, None] & ((cols < I) | (not COL_MASK))[None, :]
    if ROW_STRIDE_2I:
        stride_gm = 2 * I
    first = tl.load(gate_up_ptr + rows[:, None] * stride_gm + cols[None, :], mask=mask, other=0.0)
    second = tl.load(gate_up_ptr + rows[:, None] * stride_gm + I + cols[None, :], mask=mask, other=0.0)
    if UPCAST:
        first, second = first.to(tl.float32), second.to(tl.float32)
    g, u = (second, first) if SWAP else (first, second)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], g * tl.sigmoid(g) * u, mask=mask)


@triton.jit
def silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    _silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M, BLOCK_I)


@triton.jit
def silu_mul_swapped(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    _silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M, BLOCK_I, SWAP=True)


@triton.jit
def silu_mul_no_column_mask(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr,
                            BLOCK_I: tl.constexpr):
    _silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M, BLOCK_I, COL_MASK=False)


@triton.jit
def silu_mul_i_as_row_stride(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr,
                             BLOCK_I: tl.constexpr):
    _silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M, BLOCK_I, ROW_STRIDE_2I=True)


@triton.jit
def silu_mul_no_upcast(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr,
                       BLOCK_I: tl.constexpr):
    _silu_mul(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M, BLOCK_I, UPCAST=False)


@triton.jit
def _grouped_gemm(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  WEIGHTED: tl.constexpr = True, EXPERT_FROM_PID: tl.constexpr = False,
                  STORE_ROW_MASK: tl.constexpr = True):
    pid_m = tl.program_id(0)
    expert = pid_m
    if not EXPERT_FROM_PID:
        expert = tl.load(expert_ids_ptr + pid_m)
    if expert >= 0:  # a block of expert -1 holds no token
        flat = tl.load(sorted_token_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
        _tile(a_ptr, b_ptr, c_ptr, flat, expert, num_valid, N, K, stride_am, stride_ak, stride_be, stride_bn,
              stride_bk, stride_cm, stride_cn, tl.program_id(1), topk_weights_ptr, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K,
              WEIGHTED, STORE_ROW_MASK=STORE_ROW_MASK)


@triton.jit
def grouped_gemm(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                 stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                 TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _grouped_gemm(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  TOP_K, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def grouped_gemm_no_weight(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K,
                           num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                           TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _grouped_gemm(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, WEIGHTED=False)


@triton.jit
def grouped_gemm_expert_from_pid(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K,
                                 num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm,
                                 stride_cn, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_K: tl.constexpr):
    _grouped_gemm(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, EXPERT_FROM_PID=True)


@triton.jit
def grouped_gemm_no_row_mask(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K,
                             num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                             TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr):
    _grouped_gemm(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  TOP_K, BLOCK_M, BLOCK_N, BLOCK_K, STORE_ROW_MASK=False)


# ====================================================================================================
# Notebook 08: tensor parallel
# ====================================================================================================
@triton.jit
def _tp_sum(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M: tl.constexpr,
            BLOCK_H: tl.constexpr, SKIP_LAST: tl.constexpr = 0, FP32: tl.constexpr = True,
            CONTIGUOUS: tl.constexpr = False):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < M)[:, None] & (cols < H)[None, :]
    if CONTIGUOUS:  # as if the partials were not padded
        stride_pr = M * H
        stride_pm = H
    tile = rows[:, None] * stride_pm + cols[None, :]
    acc = tl.load(partials_ptr + tile, mask=mask, other=0.0)
    if FP32:
        acc = acc.to(tl.float32)
    for r in range(1, TP - SKIP_LAST):
        part = tl.load(partials_ptr + r * stride_pr + tile, mask=mask, other=0.0)
        if FP32:
            part = part.to(tl.float32)
        acc += part
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], acc, mask=mask)


@triton.jit
def tp_sum(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M: tl.constexpr,
           BLOCK_H: tl.constexpr):
    _tp_sum(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M, BLOCK_H)


@triton.jit
def tp_sum_skips_last_rank(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M: tl.constexpr,
                           BLOCK_H: tl.constexpr):
    _tp_sum(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M, BLOCK_H, SKIP_LAST=1)


@triton.jit
def tp_sum_in_bf16(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M: tl.constexpr,
                   BLOCK_H: tl.constexpr):
    _tp_sum(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M, BLOCK_H, FP32=False)


@triton.jit
def tp_sum_rank_stride_from_sizes(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om,
                                  BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    _tp_sum(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M, BLOCK_H, CONTIGUOUS=True)


# ====================================================================================================
# Notebook 11: FP8 experts
# ====================================================================================================
@triton.jit
def _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                A_SCALE: tl.constexpr = True, B_SCALE: tl.constexpr = True, EVERY_STEP: tl.constexpr = False,
                SCALE_MASK: tl.constexpr = True, K_MASK: tl.constexpr = True, DIVIDE: tl.constexpr = False):
    """C = (A * a_scale[:, None]) @ (B * b_scale[None, :]), scales in the epilogue. A_SCALE / B_SCALE=False: that
    scale is left out; EVERY_STEP: acc = (acc + a @ b) * scale inside the loop; SCALE_MASK=False: the scales
    loaded without a mask; K_MASK=False: the K tail unmasked; DIVIDE: acc / scales."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if SCALE_MASK:
        a_s = tl.load(a_scale_ptr + rows, mask=rows < M, other=0.0)
        b_s = tl.load(b_scale_ptr + cols, mask=cols < N, other=0.0)
    else:
        a_s = tl.load(a_scale_ptr + rows)
        b_s = tl.load(b_scale_ptr + cols)
    if not A_SCALE:
        a_s = a_s * 0.0 + 1.0
    if not B_SCALE:
        b_s = b_s * 0.0 + 1.0
    scale = a_s[:, None] * b_s[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_in = (ks < K) | (not K_MASK)
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(rows < M)[:, None] & k_in[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=k_in[:, None] & (cols < N)[None, :], other=0.0)
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        if EVERY_STEP:
            acc = acc * scale
    if not EVERY_STEP:
        acc = acc / scale if DIVIDE else acc * scale
    tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn, acc,
             mask=(rows < M)[:, None] & (cols < N)[None, :])


@triton.jit
def fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
               stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def fp8_matmul_scales_every_step(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak,
                                 stride_bk, stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, EVERY_STEP=True)


@triton.jit
def fp8_matmul_no_b_scale(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                          stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, B_SCALE=False)


@triton.jit
def fp8_matmul_no_a_scale(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                          stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, A_SCALE=False)


@triton.jit
def fp8_matmul_unmasked_scales(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak,
                              stride_bk, stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, SCALE_MASK=False)


@triton.jit
def fp8_matmul_no_k_mask(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                         stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, K_MASK=False)


@triton.jit
def fp8_matmul_divides(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                       stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr):
    _fp8_matmul(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                stride_cm, stride_cn, BLOCK_M, BLOCK_N, BLOCK_K, DIVIDE=True)


# ====================================================================================================
# The stubs, as the notebooks hand them out
# ====================================================================================================
@triton.jit
def vector_add_stub(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pass  # your code here


@triton.jit
def row_softmax_stub(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    pass  # your code here


@triton.jit
def topk_stub(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    pass  # your code here


@triton.jit
def renormalize_stub(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


@triton.jit
def expert_histogram_stub(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                          BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    pass  # your code here


@triton.jit
def scatter_sorted_stub(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel, BLOCK_SIZE: tl.constexpr,
                        CHUNK: tl.constexpr):
    pass  # your code here


@triton.jit
def moe_tile_stub(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


@triton.jit
def silu_mul_stub(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    pass  # your code here


@triton.jit
def grouped_gemm_stub(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, N, K, num_valid,
                      stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                      TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


@triton.jit
def tp_sum_stub(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M: tl.constexpr,
                BLOCK_H: tl.constexpr):
    pass  # your code here



@triton.jit
def fp8_matmul_stub(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K, stride_am, stride_ak, stride_bk,
                    stride_bn, stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    pass  # your code here

# ====================================================================================================
# What every puzzle checker promises, written once
# ====================================================================================================
class PuzzleContract:
    """Subclass as ``Test...`` with ``module`` and ``checks``: checker name -> (correct kernel, stub,
    [(wrong kernel, phrase its diagnosis must contain), ...]).

    A checker passes the correct kernel, says "not solved yet" for the stub without raising, rejects each wrong
    kernel with a FAIL line naming the case, the launch, the expected and obtained output or the error, and an
    explanation that contains the phrase; it gives the same verdict twice and raises TypeError only for
    something that is not callable. The puzzles run in the Triton interpreter (on a GPU machine only the
    `gpu`-marked smoke test of test_puzzles_engine.py runs them, compiled)."""

    module = None
    checks: dict = {}

    def pytest_generate_tests(self, metafunc):
        if "name" in metafunc.fixturenames:
            metafunc.parametrize("name", list(self.checks))
        if "mistake" in metafunc.fixturenames:
            cases = [(name, i) for name, (_, _, wrong) in self.checks.items() for i in range(len(wrong))]
            metafunc.parametrize("mistake", cases, ids=[f"{name}-{self.checks[name][2][i][0].__name__}"
                                                        for name, i in cases])

    def checker(self, name: str):
        return getattr(self.module, name)

    def test_every_checker_of_the_module_is_covered(self):
        exported = {name for name in self.module.__all__ if name.startswith("check_")}
        assert exported == set(self.checks)

    def test_every_checker_has_at_least_two_typical_mistakes(self, name):
        assert len(self.checks[name][2]) >= 2

    def test_every_checker_documents_its_kernel_and_launch(self, name):
        doc = self.checker(name).__doc__
        assert "@triton.jit" in doc and "](" in doc, doc

    def test_accepts_the_correct_kernel(self, name):
        from moe_lib.teach.puzzles._engine import PASSED

        result = self.checker(name)(self.checks[name][0])
        assert result.status == PASSED and result.passed and bool(result), result.message
        assert result.message.startswith("PASS  ") and repr(result) == result.message
        assert result.figure is None

    def test_the_stub_says_not_solved_yet(self, name):
        from moe_lib.teach.puzzles._engine import UNSOLVED

        result = self.checker(name)(self.checks[name][1])
        assert result.status == UNSOLVED and not result
        assert result.message.startswith("not solved yet"), result.message

    def test_rejects_a_typical_mistake_and_explains_it(self, mistake):
        from moe_lib.teach.puzzles._engine import FAILED

        name, index = mistake
        kernel, phrase = self.checks[name][2][index]
        result = self.checker(name)(kernel)
        assert result.status == FAILED and not result, result.message
        first = result.message.splitlines()[0]
        assert first.startswith("FAIL  ") and "case " in first, result.message
        assert "  launch: grid (" in result.message and "likely mistake: " in result.message, result.message
        assert phrase in result.message, result.message

    def test_same_kernel_same_verdict(self, name):
        wrong = self.checks[name][2][0][0]
        assert self.checker(name)(wrong).message == self.checker(name)(wrong).message

    def test_not_callable_raises_type_error(self, name):
        import pytest

        with pytest.raises(TypeError, match="kernel must be"):
            self.checker(name)(42)
