"""Notebook 08 (tensor parallel): the sum of the ranks' partial outputs — what the all-reduce computes.

The partials of the first case are the library's simulated tensor-parallel layer
(:func:`moe_lib.parallel.simulate.simulate_tp`); every reference is the library's all-reduce,
:func:`moe_lib.parallel.simulate.all_reduce_sum`, taken in fp32 and rounded once to the partials' dtype.
"""

from __future__ import annotations

import functools

import torch
import triton

from ... import runtime
from ...kernels.routing import topk_softmax
from ...parallel.simulate import all_reduce_sum, simulate_tp
from ...testing import randn, seeded
from ._engine import KernelCase, Puzzle, PuzzleResult, ValueMistake, check_kernel


def _launch(t):
    tp, m, h = t.partials.shape
    return ((triton.cdiv(m, t.BLOCK_M), triton.cdiv(h, t.BLOCK_H)),
            (t.partials, t.out, tp, m, h, t.partials.stride(0), t.partials.stride(1), t.out.stride(0)),
            {"BLOCK_M": t.BLOCK_M, "BLOCK_H": t.BLOCK_H})


def _sum(partials: torch.Tensor, ranks: int | None = None) -> torch.Tensor:
    """The all-reduce of the first ``ranks`` partials, in fp32, rounded once to their dtype."""
    parts = [p.float() for p in partials[:ranks]]
    return all_reduce_sum(parts).to(partials.dtype)


def _case(label: str, partials: torch.Tensor, block_m: int, block_h: int) -> KernelCase:
    tp, m, h = partials.shape
    return KernelCase(label, {"partials": partials}, {"out": _sum(partials)},
                      scalars={"TP": tp, "M": m, "H": h, "BLOCK_M": block_m, "BLOCK_H": block_h},
                      pads={"partials": (0, 1, 3), "out": (0, 5)})


def _layer_partials(gen: torch.Generator, tp_size: int) -> torch.Tensor:
    """(TP, M, H): each rank's output of a small MoE layer split over ``tp_size`` ranks (notebook 08)."""
    m, hidden, inter, num_experts, top_k = 6, 16, 32, 4, 2
    device = runtime.default_device()  # the library's kernels run where the machine runs them
    x = randn(m, hidden, generator=gen).to(device)
    w13 = randn(num_experts, 2 * inter, hidden, generator=gen, scale=hidden ** -0.5).to(device)
    w2 = randn(num_experts, hidden, inter, generator=gen, scale=inter ** -0.5).to(device)
    weights, ids = topk_softmax(randn(m, num_experts, generator=gen).to(device), top_k)
    _, partials = simulate_tp(x, w13, w2, weights, ids, tp_size)
    return torch.stack(partials).cpu()


def _one_rank(case: KernelCase) -> torch.Tensor:
    return _sum(case.inputs["partials"], 1)


def _all_but_last(case: KernelCase) -> torch.Tensor:
    partials = case.inputs["partials"]
    return _sum(partials, partials.shape[0] - 1) if partials.shape[0] > 1 else torch.zeros_like(partials[0])


@functools.cache
def _puzzle() -> Puzzle:
    gen = seeded(801)
    cases = [
        _case("notebook 08's layer on 2 ranks: 6 tokens, H = 16", _layer_partials(gen, 2), 4, 8),
        _case("4 ranks, 5 tokens, H = 20: ragged rows and columns", randn(4, 5, 20, generator=gen), 4, 8),
        _case("one rank: the sum is the partial", randn(1, 3, 8, generator=gen), 4, 8),
        _case("random: 8 ranks, 9 tokens, H = 24, BLOCK 4 x 16", randn(8, 9, 24, generator=gen), 4, 16),
        _case("bf16: 4 ranks, 6 tokens, H = 16", randn(4, 6, 16, generator=gen).to(torch.bfloat16), 4, 8),
    ]
    return Puzzle(
        "TP partial sum", "tp_sum_kernel", cases, _launch,
        mistakes=[
            ValueMistake(_all_but_last, "the last rank is missing: for r in range(TP), not range(TP - 1)"),
            ValueMistake(_one_rank, "only rank 0's partial: add every rank's, partials_ptr + r * stride_pr"),
        ],
        hint="rows = pid_m * BLOCK_M + ..., cols = pid_h * BLOCK_H + ...; acc = tl.zeros((BLOCK_M, BLOCK_H), "
             "tl.float32); for r in range(TP): acc += tl.load(partials_ptr + r * stride_pr + rows[:, None] * "
             "stride_pm + cols[None, :], mask=mask, other=0.0).to(tl.float32); store acc at out[rows, cols]",
        summary="a layer's partials, TP = 1 to 8, ragged blocks, bf16",
        read_hints={"partials": "rank r's partial starts at r * stride_pr and its row m at m * stride_pm (both "
                                "larger than the sizes: the partials are padded) — mask rows < M and cols < H"},
    )


def check_tp_partial_sum(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Sum the TP ranks' partial outputs of a row-parallel layer, as the all-reduce does: ``out[m, h] =
    sum over r of partials[r, m, h]``, accumulated in fp32, one (BLOCK_M, BLOCK_H) tile per program::

        @triton.jit
        def tp_sum_kernel(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr): ...

        tp_sum_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(H, BLOCK_H))](
            partials, out, TP, M, H, partials.stride(0), partials.stride(1), out.stride(0),
            BLOCK_M=BLOCK_M, BLOCK_H=BLOCK_H)

    ``partials`` (TP, M, H) and ``out`` (M, H) have the same dtype; ranks are ``stride_pr`` elements apart, rows
    ``stride_pm`` (``stride_om``). Add the ranks in order into an fp32 accumulator (upcast bf16 partials) and
    round once when storing."""
    return check_kernel(_puzzle(), kernel, time_limit=time_limit)


__all__ = ["check_tp_partial_sum"]
