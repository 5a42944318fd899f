"""Notebook 02 (the Triton primer): a masked vector op, and a softmax per row.

The softmax reference is the library's fp32 softmax, :func:`moe_lib.kernels.routing.softmax_fp32`.
"""

from __future__ import annotations

import functools

import torch
import triton

from ...kernels.routing import softmax_fp32
from ...testing import seeded
from ._engine import KernelCase, Puzzle, PuzzleResult, ValueMistake, check_kernel


# ----------------------------------------------------------------------------------------------------
# Puzzle 1: vector add
# ----------------------------------------------------------------------------------------------------
def _vector_add_launch(t):
    return (triton.cdiv(t.n, t.BLOCK),), (t.x, t.y, t.out, t.n), {"BLOCK": t.BLOCK}


def _vector_add_case(label: str, gen: torch.Generator, n: int, block: int) -> KernelCase:
    x, y = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return KernelCase(label, {"x": x, "y": y}, {"out": x + y}, scalars={"n": n, "BLOCK": block})


@functools.cache
def _vector_add_puzzle() -> Puzzle:
    gen = seeded(201)
    cases = [
        _vector_add_case("n = 16, BLOCK = 16: one program", gen, 16, 16),
        _vector_add_case("n = 32, BLOCK = 8: four programs", gen, 32, 8),
        _vector_add_case("n = 37, BLOCK = 8: the last block holds 5 values", gen, 37, 8),
        _vector_add_case("n = 5, BLOCK = 16: one program, mostly masked", gen, 5, 16),
        _vector_add_case("n = 1, BLOCK = 8", gen, 1, 8),
        *[_vector_add_case(f"random: n = {n}, BLOCK = {b}", gen, n, b) for n, b in ((61, 16), (100, 32))],
    ]
    return Puzzle(
        "masked vector add", "vector_add_kernel", cases, _vector_add_launch,
        mistakes=[
            ValueMistake(lambda c: c.inputs["x"] - c.inputs["y"], "that is x - y: add the two loads"),
            ValueMistake(lambda c: c.inputs["x"], "out is x: add y too"),
        ],
        hint="offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK); mask = offs < n; load x and y with the mask, "
             "store x + y with the mask",
        summary="one program, several, a ragged last block, n < BLOCK",
        read_hints={"x": "the last block runs past n: load with mask=offs < n",
                    "y": "the last block runs past n: load with mask=offs < n"},
    )


def check_vector_add(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Write ``out = x + y`` for n fp32 values, one block of BLOCK values per program::

        @triton.jit
        def vector_add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr): ...

        vector_add_kernel[(triton.cdiv(n, BLOCK),)](x, y, out, n, BLOCK=BLOCK)

    n is rarely a multiple of BLOCK: the last program's block runs past the end, so mask its loads and its
    store (``offs < n``)."""
    return check_kernel(_vector_add_puzzle(), kernel, time_limit=time_limit)


# ----------------------------------------------------------------------------------------------------
# Puzzle 2: row softmax
# ----------------------------------------------------------------------------------------------------
def _softmax_launch(t):
    n_rows, n_cols = t.x.shape
    return ((n_rows,), (t.x, t.out, n_cols, t.x.stride(0), t.out.stride(0)),
            {"BLOCK_N": triton.next_power_of_2(n_cols)})


def _softmax_case(label: str, x: torch.Tensor) -> KernelCase:
    return KernelCase(label, {"x": x}, {"out": softmax_fp32(x).to(x.dtype)},
                      scalars={"n_rows": x.shape[0], "n_cols": x.shape[1]}, pads={"x": (0, 3), "out": (0, 5)})


def _softmax_padding_zeros(case: KernelCase) -> torch.Tensor:
    """Padding columns loaded as 0 instead of -inf: they join the max and the sum."""
    x = case.inputs["x"].float()
    n_cols = x.shape[1]
    pad = triton.next_power_of_2(n_cols) - n_cols
    padded = torch.cat([x, torch.zeros(x.shape[0], pad)], dim=1)
    return softmax_fp32(padded)[:, :n_cols].to(case.expected["out"].dtype)


def _softmax_no_max(case: KernelCase) -> torch.Tensor:
    x = case.inputs["x"].float()
    return (x.exp() / x.exp().sum(dim=1, keepdim=True)).to(case.expected["out"].dtype)


@functools.cache
def _row_softmax_puzzle() -> Puzzle:
    gen = seeded(202)
    cases = [
        _softmax_case("4 rows of 8", torch.randn(4, 8, generator=gen)),
        _softmax_case("3 rows of 13: BLOCK_N = 16, 3 padding columns", torch.randn(3, 13, generator=gen)),
        _softmax_case("one row of one value", torch.randn(1, 1, generator=gen)),
        _softmax_case("large logits (up to 300): exp overflows without the max",
                      100 * torch.randn(5, 6, generator=gen)),
        _softmax_case("random: 6 rows of 20", 3 * torch.randn(6, 20, generator=gen)),
        _softmax_case("bf16: 5 rows of 24", torch.randn(5, 24, generator=gen).to(torch.bfloat16)),
    ]
    return Puzzle(
        "row softmax", "row_softmax_kernel", cases, _softmax_launch,
        mistakes=[
            ValueMistake(_softmax_padding_zeros, "the padding columns count as 0: load them with other=-float('inf') "
                         "so that exp() makes them 0 and they join neither the max nor the sum"),
            ValueMistake(_softmax_no_max, "exp of large logits overflows to inf (inf / inf = nan): subtract the "
                         "row's max before tl.exp"),
        ],
        hint="row = tl.program_id(0); cols = tl.arange(0, BLOCK_N); x = tl.load(x_ptr + row * stride_x + cols, "
             "mask=cols < n_cols, other=-float('inf')).to(tl.float32); e = tl.exp(x - tl.max(x, 0)); "
             "store e / tl.sum(e, 0) at out_ptr + row * stride_out + cols with the same mask",
        summary="ragged rows, one value, large logits, bf16",
        read_hints={"x": "mask the columns (cols < n_cols) and step from row to row with stride_x, not n_cols"},
    )


def check_row_softmax(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Write the softmax of each row of x (n_rows, n_cols), one row per program::

        @triton.jit
        def row_softmax_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr): ...

        row_softmax_kernel[(n_rows,)](x, out, n_cols, x.stride(0), out.stride(0),
                                      BLOCK_N=triton.next_power_of_2(n_cols))

    Rows are ``stride_x`` (``stride_out``) elements apart, more than n_cols: step with the stride. Subtract the
    row's max before ``tl.exp`` (large logits overflow), load the padding columns as ``-inf`` (they must add
    nothing), compute in fp32 (a bf16 x: upcast after the load) and store in out's dtype."""
    return check_kernel(_row_softmax_puzzle(), kernel, time_limit=time_limit)


__all__ = ["check_vector_add", "check_row_softmax"]
