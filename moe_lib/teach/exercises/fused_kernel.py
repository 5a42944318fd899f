"""Notebook 06 (the fused kernel): which rows of A one row block gathers, and the pointer arithmetic into w13.

The row blocks are laid out by the library's alignment (notebook 05) from notebook 05's routing; the
references restate what the Triton kernel computes in registers (no torch function of the library does).
"""

from __future__ import annotations

import torch

from ...kernels.align import moe_align_block_size_torch
from ...testing import seeded
from ._engine import Case, CheckResult, Mistake, check, compare_int_tuple, compare_ints
from .alignment import NB05_TOPK_IDS, routed_ids


def _tile_a_rows_ref(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    offs = pid_m * block_m + torch.arange(block_m)
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    inside = offs < sorted_token_ids.numel()
    flat[inside] = sorted_token_ids[offs[inside]].long()
    return torch.where(flat < num_valid, flat // top_k, torch.full_like(flat, -1))


def _a_rows_wrong(s, pid_m, b, k, v, *, divide=True, mod=False, mask=True, offset=None):
    start = pid_m * b if offset is None else offset
    offs = start + torch.arange(b)
    flat = torch.full((b,), v, dtype=torch.int64)
    inside = (offs < s.numel()) & (offs >= 0)
    flat[inside] = s[offs[inside]].long()
    rows = flat % k if mod else (flat // k if divide else flat)
    return torch.where(flat < v, rows, torch.full_like(rows, -1)) if mask else rows


def _alignment_case(gen: torch.Generator, m: int, e: int, k: int, b: int, pid_m: int) -> tuple:
    ids = routed_ids(gen, m, e, k)
    sorted_ids = moe_align_block_size_torch(ids, b, e)[0]
    return sorted_ids, pid_m, b, k, m * k


def check_tile_a_rows(tile_a_rows) -> CheckResult:
    """``tile_a_rows(sorted_token_ids, pid_m, block_m, top_k, num_valid)``: which row of A (the tokens x)
    each of the ``block_m`` rows of row block ``pid_m`` reads in GEMM1 — ``flat_id // top_k`` — with -1 for
    padding slots (flat id >= num_valid) and for slots past the end of sorted_token_ids."""
    gen = seeded(505)
    nb05 = moe_align_block_size_torch(NB05_TOPK_IDS, 4, 8)[0]  # (36,)
    cases = [
        Case("notebook 05's layout, block 2", (nb05, 2, 4, 2, 12)),
        Case("notebook 05's layout, block 0: one real row", (nb05, 0, 4, 2, 12)),
        Case("notebook 05's layout, block 7: past the padded total", (nb05, 7, 4, 2, 12)),
        Case("a partly filled last block", (torch.tensor([4, 0, 2, 6, 6], dtype=torch.int32), 1, 4, 3, 6)),
        Case("top_k = 1", _alignment_case(gen, 9, 4, 1, 4, 1)),
        *[Case(f"random, M = {m}, E = {e}, top-{k}, BLOCK_M = {b}, block {p}", _alignment_case(gen, m, e, k, b, p))
          for m, e, k, b, p in ((20, 8, 2, 8, 3), (40, 8, 2, 16, 1), (33, 16, 4, 8, 5))],
    ]
    return check(
        "A rows of a tile", tile_a_rows, arg_names=("sorted_token_ids", "pid_m", "block_m", "top_k", "num_valid"),
        cases=cases, reference=_tile_a_rows_ref, compare=compare_ints,
        mistakes=[
            Mistake(lambda *a: _a_rows_wrong(*a, divide=False), "these are the flat ids themselves; in GEMM1 A "
                    "holds one row per token, so a flat id t * k + j reads row flat_id // top_k"),
            Mistake(lambda *a: _a_rows_wrong(*a, mod=True), "flat_id % top_k is the slot j; the token is "
                    "flat_id // top_k"),
            Mistake(lambda *a: _a_rows_wrong(*a, mask=False), "padding slots (flat id == num_valid) must not read "
                    "a row: mark them -1 (the kernel masks them)"),
            Mistake(lambda s, p, b, k, v: _a_rows_wrong(s, p, b, k, v, offset=p), "row block pid_m starts at slot "
                    "pid_m * block_m, not at slot pid_m"),
            Mistake(lambda s, p, b, k, v: _a_rows_wrong(s, p, b, k, v, offset=(p + 1) * b), "row block pid_m "
                    "covers slots [pid_m * block_m, (pid_m + 1) * block_m)"),
        ],
        hint="slots = pid_m * block_m + arange(block_m); flat = sorted_token_ids[slots] (num_valid past the end); "
             "rows = flat // top_k, and -1 where flat >= num_valid",
        summary="padding, partial last block, top_k = 1",
    )


def _b_offsets_ref(expert, n, k, strides, inter):
    be, bn, bk = strides
    gate = expert * be + n * bn + k * bk
    return gate, gate + inter * bn


def check_b_offsets(b_offsets) -> CheckResult:
    """``b_offsets(expert, n, k, strides, inter)``: the element offsets, from the start of w13's storage, of
    w13[expert, n, k] (gate) and of its up partner w13[expert, I + n, k], for w13 of shape (E, 2I, H) with
    ``strides = (stride_be, stride_bn, stride_bk)`` and ``inter`` = I — the kernel's pointer arithmetic."""
    contiguous = torch.empty(8, 2 * 6, 4).stride()  # (E=8, 2I=12, H=4)
    transposed = torch.empty(8, 4, 12).transpose(1, 2).stride()  # same shape, other memory order
    mixtral = (2 * 14336 * 4096, 4096, 1)
    cases = [
        Case("contiguous w13 (8, 12, 4), expert 1, n = 2, k = 1", (1, 2, 1, contiguous, 6)),
        Case("contiguous, first element of expert 3", (3, 0, 0, contiguous, 6)),
        Case("w13 stored transposed (8, 12, 4) with strides (48, 1, 12)", (2, 5, 3, transposed, 6)),
        Case("Mixtral's w13 (8, 28672, 4096), expert 7", (7, 14335, 4095, mixtral, 14336)),
        Case("expert 0, n = 0, k = 0", (0, 0, 0, contiguous, 6)),
    ]
    return check(
        "B offsets", b_offsets, arg_names=("expert", "n", "k", "strides", "inter"), cases=cases,
        reference=_b_offsets_ref, compare=compare_int_tuple,
        mistakes=[
            Mistake(lambda e, n, k, s, i: (n * s[1] + k * s[2], n * s[1] + k * s[2] + i * s[1]), "the expert's "
                    "offset is missing: add expert * stride_be"),
            Mistake(lambda e, n, k, s, i: _b_offsets_ref(e, n, k, s, i)[:1] * 2, "the up row is I rows further "
                    "down: add inter * stride_bn"),
            Mistake(lambda e, n, k, s, i: (e * s[0] + n * s[1] + k * s[2], e * s[0] + n * s[1] + k * s[2] + i),
                    "I rows further down is inter * stride_bn elements, not inter elements"),
            Mistake(lambda e, n, k, s, i: (e * s[0] + n * s[2] + k * s[1], e * s[0] + n * s[2] + k * s[1] + i * s[2]),
                    "the row n goes with stride_bn and the column k with stride_bk"),
            Mistake(lambda e, n, k, s, i: (e * s[0] + n * s[1] + k * s[2],
                                           e * s[0] + (i + n) * s[1] + k * s[2] + s[0]),
                    "the up half lives in the same expert: only the row moves (by inter * stride_bn)"),
        ],
        hint="offset(e, n, k) = e * stride_be + n * stride_bn + k * stride_bk; the up row adds inter * stride_bn",
        summary="contiguous and transposed storage, Mixtral's size",
    )


__all__ = ["check_tile_a_rows", "check_b_offsets"]
