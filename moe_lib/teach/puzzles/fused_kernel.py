"""Notebook 06 (the fused kernel): one tile (gathered rows times one expert's slice), the SiLU·mul epilogue,
and the whole grouped GEMM over aligned blocks.

The alignment comes from the library (:func:`moe_lib.kernels.align.moe_align_block_size_torch`), the routing
weights from :func:`moe_lib.kernels.routing.topk_softmax`, SiLU·mul from :func:`moe_lib.reference.silu_and_mul`.
A row of a GEMM's output is the definition of the product — token ``f // top_k`` times expert ``e``'s weight,
transposed — computed in fp64 (:func:`_expert_rows`).
"""

from __future__ import annotations

import functools

import torch
import triton

from ...kernels.align import moe_align_block_size_torch
from ...kernels.routing import topk_softmax
from ...reference import silu_and_mul
from ...testing import randn, seeded
from ..exercises.alignment import routed_ids
from ._engine import KernelCase, Puzzle, PuzzleResult, ValueMistake, check_kernel


def _expert_rows(a: torch.Tensor, b: torch.Tensor, flat_ids: torch.Tensor, experts: torch.Tensor, top_k: int,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """(len(flat_ids), N) fp64: row i is ``a[flat_ids[i] // top_k] @ b[experts[i]].T`` (times ``weights[i]``)."""
    rows = a.double()[flat_ids.long() // top_k]  # (n, K)
    out = torch.einsum("mk,mnk->mn", rows, b.double()[experts.long()])
    return out if weights is None else out * weights.double()[:, None]


def _gemm_problem(gen: torch.Generator, m: int, top_k: int, e: int, n: int, k: int, dtype: torch.dtype):
    """Tokens a (m, k), expert weights b (e, n, k), and a routing of the m tokens to top_k of the e experts."""
    a = randn(m, k, generator=gen).to(dtype)
    b = randn(e, n, k, generator=gen, scale=k ** -0.5).to(dtype)
    return a, b, routed_ids(gen, m, e, top_k, skew=True)


#: The likely mistake behind a load past A, and behind a store past C's last row (both GEMM puzzles).
_A_ROWS = ("A's rows are tokens — row = flat id // TOP_K — and a padding slot (flat id >= num_valid) must not load: "
           "mask the rows (flat < num_valid) and the K tail (ks < K)")
_C_ROWS = ("a padding slot holds flat id num_valid, one row past C's end: store only the rows with flat < num_valid "
           "(and the columns < N)")


# ----------------------------------------------------------------------------------------------------
# Puzzle 1: one tile
# ----------------------------------------------------------------------------------------------------
def _tile_launch(t):
    n, k = t.b.shape[1], t.b.shape[2]
    return ((triton.cdiv(n, t.BLOCK_N),),
            (t.a, t.b, t.c, t.row_ids, t.expert, t.num_valid, n, k, t.a.stride(0), t.a.stride(1),
             t.b.stride(0), t.b.stride(1), t.b.stride(2), t.c.stride(0), t.c.stride(1)),
            {"TOP_K": t.top_k, "BLOCK_M": t.row_ids.numel(), "BLOCK_N": t.BLOCK_N, "BLOCK_K": t.BLOCK_K})


def _tile_case(label: str, gen: torch.Generator, m: int, top_k: int, e: int, n: int, k: int,
               blocks: tuple[int, int, int], pick: str, dtype=torch.float32) -> KernelCase:
    """One block of the library's alignment: the first with the fewest padding slots (``pick="full"``) or the
    most (``pick="padded"``)."""
    block_m, block_n, block_k = blocks
    a, b, topk_ids = _gemm_problem(gen, m, top_k, e, n, k, dtype)
    sorted_ids, expert_ids, total = moe_align_block_size_torch(topk_ids, block_m, e)
    num_valid = topk_ids.numel()
    tiles = sorted_ids[: int(total)].view(-1, block_m)
    padding = (tiles >= num_valid).sum(dim=1)  # padding slots per block
    index = int(padding.argmax() if pick == "padded" else padding.argmin())  # the first with the most / fewest
    row_ids, expert = tiles[index].clone(), int(expert_ids[index])
    valid = row_ids[row_ids < num_valid]
    c = torch.zeros(num_valid, n, dtype=torch.float64)
    c[valid.long()] = _expert_rows(a, b, valid, torch.full_like(valid, expert), top_k)
    writes = torch.zeros(num_valid, n, dtype=torch.bool)
    writes[valid.long()] = True
    return KernelCase(label, {"a": a, "b": b, "row_ids": row_ids}, {"c": c.to(dtype)},
                      scalars={"expert": expert, "num_valid": num_valid, "top_k": top_k, "BLOCK_N": block_n,
                               "BLOCK_K": block_k},
                      pads={"a": (0, 3), "b": (0, 0, 3), "c": (0, 4)}, writes={"c": writes})


def _tile_rows_as_tokens(case: KernelCase) -> torch.Tensor:
    """A's row taken as the flat id itself (as if TOP_K were 1)."""
    ids, c = case.inputs["row_ids"], case.expected["c"].clone()
    valid = ids[ids < case.scalars["num_valid"]]
    if int(valid.max()) >= case.inputs["a"].shape[0]:
        return c * float("nan")
    c[valid.long()] = _expert_rows(case.inputs["a"], case.inputs["b"], valid,
                                   torch.full_like(valid, case.scalars["expert"]), 1).to(c.dtype)
    return c


@functools.cache
def _tile_puzzle() -> Puzzle:
    gen = seeded(601)
    cases = [
        _tile_case("a full block: 4 rows, N = K = 16, BLOCK_N = 8, BLOCK_K = 16", gen, 6, 2, 4, 16, 16, (4, 8, 16),
                   "full"),
        _tile_case("a block with padding rows (id = num_valid)", gen, 6, 2, 4, 16, 16, (4, 8, 16), "padded"),
        _tile_case("N = 20, K = 20: ragged column and K tails", gen, 8, 2, 4, 20, 20, (4, 8, 16), "padded"),
        _tile_case("top-1: row f is token f", gen, 9, 1, 4, 16, 16, (4, 8, 16), "full"),
        _tile_case("random: 12 tokens, top-2, N = 24, K = 40, BLOCK 8 x 16 x 16", gen, 12, 2, 4, 24, 40,
                   (8, 16, 16), "padded"),
        _tile_case("bf16: N = 16, K = 24", gen, 6, 2, 4, 16, 24, (4, 8, 16), "full", torch.bfloat16),
    ]
    return Puzzle(
        "one MoE tile", "moe_tile_kernel", cases, _tile_launch,
        mistakes=[
            ValueMistake(_tile_rows_as_tokens, "A's row is the token, flat id // TOP_K: row_ids hold flat ids "
                         "t * TOP_K + j"),
        ],
        hint="flat = tl.load(row_ids_ptr + tl.arange(0, BLOCK_M)); rows = flat < num_valid; for each K block: a = "
             "A[flat // TOP_K, ks] (mask rows & ks < K), b = B[expert, ks, cols] read as (BLOCK_K, BLOCK_N) with "
             "stride_bk, stride_bn (mask ks < K & cols < N), acc += tl.dot(a, b) in fp32; store acc at "
             "C[flat, cols] with mask rows & cols < N",
        summary="padding rows, ragged N and K, top-1, bf16",
        read_hints={"a": _A_ROWS, "b": "B is (E, N, K): expert * stride_be + cols * stride_bn + ks * stride_bk, "
                                            "with cols < N and ks < K masked"},
        write_hints={"c": _C_ROWS},
    )


def check_moe_tile(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """One block of BLOCK_M aligned rows times one expert's weight, in column blocks of BLOCK_N::

        @triton.jit
        def moe_tile_kernel(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                            stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                            TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr): ...

        moe_tile_kernel[(triton.cdiv(N, BLOCK_N),)](
            a, b, c, row_ids, expert, num_valid, N, K, a.stride(0), a.stride(1),
            b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
            TOP_K=top_k, BLOCK_M=row_ids.numel(), BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)

    ``row_ids`` (BLOCK_M,) are one block of ``sorted_token_ids``: flat ids ``t * TOP_K + j`` of tokens routed to
    ``expert``, padding slots hold ``num_valid``. For each real id f, row f of C (M * TOP_K, N) is
    ``a[f // TOP_K] @ b[expert].T`` — only those rows: every other row of C stays untouched. Loop over K in
    BLOCK_K steps and accumulate with ``tl.dot`` in fp32 (upcast bf16 tiles first: the interpreter computes bf16
    dots wrongly); mask the K tail and the N tail. (BLOCK_K is 16 in every case: compiled for a GPU, ``tl.dot``
    needs K >= 16.)"""
    return check_kernel(_tile_puzzle(), kernel, time_limit=time_limit)


# ----------------------------------------------------------------------------------------------------
# Puzzle 2: the SiLU·mul epilogue
# ----------------------------------------------------------------------------------------------------
def _silu_launch(t):
    m, inter = t.out.shape
    return ((triton.cdiv(m, t.BLOCK_M), triton.cdiv(inter, t.BLOCK_I)),
            (t.gate_up, t.out, m, inter, t.gate_up.stride(0), t.out.stride(0)),
            {"BLOCK_M": t.BLOCK_M, "BLOCK_I": t.BLOCK_I})


def _silu_case(label: str, gate_up: torch.Tensor, block_m: int, block_i: int) -> KernelCase:
    return KernelCase(label, {"gate_up": gate_up}, {"out": silu_and_mul(gate_up.float()).to(gate_up.dtype)},
                      scalars={"M": gate_up.shape[0], "I": gate_up.shape[1] // 2, "BLOCK_M": block_m,
                               "BLOCK_I": block_i},
                      pads={"gate_up": (0, 3), "out": (0, 5)})


def _silu_swapped(case: KernelCase) -> torch.Tensor:
    gate, up = case.inputs["gate_up"].float().chunk(2, dim=-1)
    return silu_and_mul(torch.cat([up, gate], dim=-1)).to(case.expected["out"].dtype)


def _silu_no_up(case: KernelCase) -> torch.Tensor:
    gate, _ = case.inputs["gate_up"].float().chunk(2, dim=-1)
    return silu_and_mul(torch.cat([gate, torch.ones_like(gate)], dim=-1)).to(case.expected["out"].dtype)


@functools.cache
def _silu_puzzle() -> Puzzle:
    gen = seeded(602)
    cases = [
        _silu_case("8 rows, I = 16, BLOCK 4 x 8", randn(8, 32, generator=gen), 4, 8),
        _silu_case("7 rows, I = 12: ragged rows and columns", randn(7, 24, generator=gen), 4, 8),
        _silu_case("one row, I = 1", randn(1, 2, generator=gen), 4, 8),
        _silu_case("random: 10 rows, I = 40, BLOCK 4 x 16", 3 * randn(10, 80, generator=gen), 4, 16),
        _silu_case("bf16: 6 rows, I = 20", randn(6, 40, generator=gen).to(torch.bfloat16), 4, 8),
    ]
    return Puzzle(
        "SiLU·mul epilogue", "silu_mul_kernel", cases, _silu_launch,
        mistakes=[
            ValueMistake(_silu_swapped, "gate and up are swapped: the gate is the first half (columns [0, I)), "
                         "out = silu(gate) * up"),
            ValueMistake(_silu_no_up, "that is silu(gate) alone: multiply by up, the second half (columns "
                         "[I, 2I) of the same row)"),
        ],
        hint="rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M), cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I), mask "
             "rows < M and cols < I; g = gate_up[rows, cols], u = gate_up[rows, I + cols] (row stride stride_gm), "
             "both .to(tl.float32); store g * tl.sigmoid(g) * u at out[rows, cols] (row stride stride_om)",
        summary="ragged rows and columns, I = 1, bf16",
        read_hints={"gate_up": "row m of gate_up starts at m * stride_gm; gate is columns [0, I), up [I, 2I) — "
                               "mask cols < I for both"},
    )


def check_silu_mul_epilogue(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """``out = silu(gate) * up`` where ``gate_up`` (M, 2I) holds the gate in columns [0, I) and up in [I, 2I)
    — the epilogue of the first GEMM — one (BLOCK_M, BLOCK_I) tile per program::

        @triton.jit
        def silu_mul_kernel(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om,
                            BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr): ...

        silu_mul_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(I, BLOCK_I))](
            gate_up, out, M, I, gate_up.stride(0), out.stride(0), BLOCK_M=BLOCK_M, BLOCK_I=BLOCK_I)

    ``silu(g) = g * sigmoid(g)``. Rows are ``stride_gm`` (``stride_om``) elements apart; compute in fp32
    (``tl.sigmoid`` takes fp32: upcast a bf16 input) and store in out's dtype."""
    return check_kernel(_silu_puzzle(), kernel, time_limit=time_limit)


# ----------------------------------------------------------------------------------------------------
# Puzzle 3: the grouped GEMM
# ----------------------------------------------------------------------------------------------------
def _gemm_launch(t):
    n, k = t.b.shape[1], t.b.shape[2]
    num_blocks = t.sorted_token_ids.numel() // t.BLOCK_M
    return ((num_blocks, triton.cdiv(n, t.BLOCK_N)),
            (t.a, t.b, t.c, t.topk_weights, t.sorted_token_ids, t.expert_ids, n, k, t.topk_weights.numel(),
             t.a.stride(0), t.a.stride(1), t.b.stride(0), t.b.stride(1), t.b.stride(2), t.c.stride(0),
             t.c.stride(1)),
            {"TOP_K": t.top_k, "BLOCK_M": t.BLOCK_M, "BLOCK_N": t.BLOCK_N, "BLOCK_K": t.BLOCK_K})


def _gemm_case(label: str, gen: torch.Generator, m: int, top_k: int, e: int, n: int, k: int,
               blocks: tuple[int, int, int], dtype=torch.float32) -> KernelCase:
    block_m, block_n, block_k = blocks
    a, b, _ = _gemm_problem(gen, m, top_k, e, n, k, dtype)
    weights, topk_ids = topk_softmax(randn(m, e, generator=gen, scale=2.0), top_k)
    sorted_ids, expert_ids, _ = moe_align_block_size_torch(topk_ids, block_m, e)
    num_blocks = sorted_ids.numel() // block_m  # whole blocks only: the padded total is a multiple of block_m
    flat = torch.arange(topk_ids.numel())
    c = _expert_rows(a, b, flat, topk_ids.flatten(), top_k, weights.flatten())
    return KernelCase(label, {"a": a, "b": b, "topk_weights": weights.flatten(),
                              "sorted_token_ids": sorted_ids[: num_blocks * block_m],
                              "expert_ids": expert_ids[:num_blocks]},
                      {"c": c.to(dtype)},
                      scalars={"M": m, "top_k": top_k, "E": e, "BLOCK_M": block_m, "BLOCK_N": block_n,
                               "BLOCK_K": block_k},
                      pads={"a": (0, 3), "b": (0, 0, 3), "c": (0, 4)})


def _gemm_no_weight(case: KernelCase) -> torch.Tensor:
    w = case.inputs["topk_weights"]
    return (case.expected["c"].double() / w.double()[:, None]).to(case.expected["c"].dtype)


@functools.cache
def _gemm_puzzle() -> Puzzle:
    gen = seeded(603)
    cases = [
        _gemm_case("5 tokens, top-2 of 4 experts, N = K = 16, BLOCK 4 x 8 x 16", gen, 5, 2, 4, 16, 16, (4, 8, 16)),
        _gemm_case("N = 12, K = 20: ragged tails", gen, 6, 2, 4, 12, 20, (4, 8, 16)),
        _gemm_case("top-1", gen, 7, 1, 4, 16, 16, (4, 8, 16)),
        _gemm_case("8 experts for 3 tokens: empty experts, blocks with expert -1", gen, 3, 2, 8, 16, 16, (4, 8, 16)),
        _gemm_case("random: 9 tokens, top-2, N = 24, K = 32, BLOCK 8 x 16 x 16", gen, 9, 2, 4, 24, 32, (8, 16, 16)),
        _gemm_case("bf16: 6 tokens, N = 16, K = 24", gen, 6, 2, 4, 16, 24, (4, 8, 16), torch.bfloat16),
    ]
    return Puzzle(
        "grouped GEMM", "grouped_gemm_kernel", cases, _gemm_launch,
        mistakes=[
            ValueMistake(_gemm_no_weight, "the routing weight is missing: multiply each row by its weight, "
                         "tl.load(topk_weights_ptr + flat, mask=rows, other=0.0)[:, None], before the store"),
        ],
        hint="pid_m, pid_n = tl.program_id(0), tl.program_id(1); expert = tl.load(expert_ids_ptr + pid_m), return if "
             "it is -1; flat = the block's sorted ids, rows = flat < num_valid; the tile of the previous puzzle, "
             "times the rows' routing weights",
        summary="ragged N and K, top-1, empty experts, blocks of expert -1, bf16",
        read_hints={"a": _A_ROWS,
                    "b": "the block's expert is expert_ids[pid_m] (not pid_m), and a block whose expert is -1 holds "
                         "no token: return before loading B; mask ks < K and cols < N",
                    "topk_weights": "the routing weight of row f is topk_weights[f], for real rows only: "
                                    "mask=flat < num_valid"},
        write_hints={"c": _C_ROWS},
    )


def check_grouped_gemm(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """The whole grouped GEMM over the aligned blocks: program (pid_m, pid_n) computes columns
    ``[pid_n * BLOCK_N, ...)`` of the rows in block pid_m of ``sorted_token_ids``, with expert
    ``expert_ids[pid_m]``, times each row's routing weight::

        @triton.jit
        def grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                                N, K, num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                                stride_cm, stride_cn, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr): ...

        grouped_gemm_kernel[(sorted_token_ids.numel() // BLOCK_M, triton.cdiv(N, BLOCK_N))](
            a, b, c, topk_weights, sorted_token_ids, expert_ids, N, K, topk_weights.numel(),
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
            TOP_K=top_k, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)

    Row f of C (M * TOP_K, N) is ``topk_weights[f] * a[f // TOP_K] @ b[e].T`` for the expert e of f's block.
    Blocks past the padded total have expert -1 and only padding slots: they write nothing. This is the
    previous tile puzzle on a 2-D grid, plus the routing weight (fp32, by flat id)."""
    return check_kernel(_gemm_puzzle(), kernel, time_limit=time_limit)


__all__ = ["check_moe_tile", "check_silu_mul_epilogue", "check_grouped_gemm"]
