"""Notebook 03 (routing): the top-k of a softmax by repeated arg-max, and the renormalization — in Triton.

Both references are the library's routing, :func:`moe_lib.kernels.routing.topk_softmax` (without and with
``renormalize``).
"""

from __future__ import annotations

import functools

import torch
import triton

from ...kernels.routing import topk_softmax
from ...testing import randn, seeded
from ._engine import KernelCase, Puzzle, PuzzleResult, ValueMistake, check_kernel

#: Ties on purpose: small integers, so that equal logits (equal probabilities) are common.
TIED_LOGITS = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 1.0, 2.0, 2.0],
                            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                            [2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0]])


def _nan_row(logits: torch.Tensor, row: int) -> torch.Tensor:
    out = logits.clone()
    out[row, 1] = float("nan")
    return out


# ----------------------------------------------------------------------------------------------------
# Puzzle 1: softmax, then top-k by repeated arg-max
# ----------------------------------------------------------------------------------------------------
def _topk_launch(t):
    num_tokens, num_experts = t.logits.shape
    return ((num_tokens,), (t.logits, t.weights, t.ids, num_experts, t.logits.stride(0)),
            {"TOP_K": t.top_k, "BLOCK_E": triton.next_power_of_2(num_experts)})


def _topk_case(label: str, logits: torch.Tensor, top_k: int) -> KernelCase:
    weights, ids = topk_softmax(logits, top_k, renormalize=False)
    m, e = logits.shape
    return KernelCase(label, {"logits": logits}, {"weights": weights, "ids": ids},
                      scalars={"M": m, "E": e, "top_k": top_k}, pads={"logits": (0, 2)})


def _topk_ties_high(case: KernelCase) -> dict:
    """Ties to the higher id: the same sort on the columns in reverse order."""
    logits = case.inputs["logits"]
    e, k = logits.shape[1], case.scalars["top_k"]
    weights, ids = topk_softmax(logits.flip(1), k, renormalize=False)
    return {"weights": weights, "ids": (e - 1 - ids).to(torch.int32)}


def _topk_not_taken(case: KernelCase) -> dict:
    """The best expert, k times: the chosen one was never taken out."""
    w, i = topk_softmax(case.inputs["logits"], 1, renormalize=False)
    k = case.scalars["top_k"]
    return {"weights": w.expand(-1, k), "ids": i.expand(-1, k)}


def _topk_logits(case: KernelCase) -> dict:
    """The chosen logits instead of their probabilities."""
    logits = case.inputs["logits"]
    _, ids = topk_softmax(logits, case.scalars["top_k"], renormalize=False)
    return {"weights": logits.gather(1, ids.long()), "ids": ids}


def _topk_padding_zero(case: KernelCase) -> dict:
    """Padding columns loaded as 0: they join the softmax, and may be chosen."""
    logits = case.inputs["logits"]
    m, e = logits.shape
    padded = torch.cat([logits, torch.zeros(m, triton.next_power_of_2(e) - e)], dim=1)
    w, i = topk_softmax(padded, case.scalars["top_k"], renormalize=False)
    return {"weights": w, "ids": i}


def _topk_renormalized(case: KernelCase) -> dict:
    w, i = topk_softmax(case.inputs["logits"], case.scalars["top_k"], renormalize=True)
    return {"weights": w, "ids": i}


def _topk_padding(case: KernelCase, got: dict) -> str | None:
    e = case.inputs["logits"].shape[1]
    ids = got["ids"]
    if bool(((ids >= e) & (ids < triton.next_power_of_2(e))).any()):
        return ("an id >= E was chosen: a padding column of the BLOCK_E block — load the padding as -inf (its "
                "probability is then 0) and give padding columns -1 before the arg-max, so that they are never "
                "picked")
    return None


@functools.cache
def _topk_kernel_puzzle() -> Puzzle:
    gen = seeded(301)
    cases = [
        _topk_case("3 tokens, 8 experts, top-2", randn(3, 8, generator=gen, scale=1.5), 2),
        _topk_case("ties: equal logits go to the lower id", TIED_LOGITS, 2),
        _topk_case("ties, top-4", TIED_LOGITS, 4),
        _topk_case("E = 6 (BLOCK_E = 8: two padding columns), top-3", randn(4, 6, generator=gen), 3),
        _topk_case("top-1", randn(5, 8, generator=gen), 1),
        _topk_case("a token with a NaN logit: its probabilities are 0", _nan_row(randn(3, 8, generator=gen), 1), 2),
        _topk_case("random: 7 tokens, 16 experts, top-4", randn(7, 16, generator=gen, scale=2.0), 4),
    ]
    return Puzzle(
        "top-k by repeated arg-max", "topk_kernel", cases, _topk_launch,
        mistakes=[
            ValueMistake(_topk_ties_high, "equal probabilities went to the higher expert id: among the experts "
                         "holding the max, take the lowest id — tl.min(tl.where(p == best, offs_e, BLOCK_E), 0)"),
            ValueMistake(_topk_not_taken, "the same expert was chosen k times: after each round take it out "
                         "(p = tl.where(offs_e == best_id, -1.0, p))"),
            ValueMistake(_topk_logits, "the weights are the logits: store the softmax probabilities (exp(x - max) "
                         "/ sum) of the chosen experts"),
            ValueMistake(_topk_padding_zero, "the padding columns (offs_e >= E) were loaded as 0: they joined the "
                         "softmax's sum (and can be chosen) — load them with other=-float('inf') and set their "
                         "probability to -1 before the arg-max"),
            ValueMistake(_topk_renormalized, "the weights were renormalized: this kernel stores the probabilities "
                         "as they are (renormalizing is the next puzzle)"),
        ],
        diagnose=_topk_padding,
        hint="softmax in fp32 with -inf padding, NaN -> 0, padding -> -1; then TOP_K rounds of max, lowest id "
             "holding it, store, take it out",
        summary="ties, padding columns, top-1 to top-4, a NaN token",
        read_hints={"logits": "mask the columns (offs_e < E) and step from token to token with stride_lm"},
    )


def check_topk_kernel(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Route one token per program: the softmax of its E logits in fp32, then the TOP_K largest probabilities
    by repeated arg-max, largest first, **ties to the lower expert id**::

        @triton.jit
        def topk_kernel(logits_ptr, weights_ptr, ids_ptr, E, stride_lm,
                        TOP_K: tl.constexpr, BLOCK_E: tl.constexpr): ...

        topk_kernel[(M,)](logits, weights, ids, E, logits.stride(0),
                          TOP_K=top_k, BLOCK_E=triton.next_power_of_2(E))

    ``weights`` (M, TOP_K) fp32 and ``ids`` (M, TOP_K) int32 are contiguous: slot j of token m is at
    ``m * TOP_K + j``. Each round: ``best = tl.max(p, 0)``, the lowest id holding it
    ``tl.min(tl.where(p == best, offs_e, BLOCK_E), 0)``, store both, then take that expert out
    (``p = tl.where(offs_e == best_id, -1.0, p)``). A probability that is NaN (a NaN logit) counts as 0; padding
    columns (``offs_e >= E``) are never chosen. No renormalization here (that is the next puzzle)."""
    return check_kernel(_topk_kernel_puzzle(), kernel, time_limit=time_limit)


# ----------------------------------------------------------------------------------------------------
# Puzzle 2: renormalize
# ----------------------------------------------------------------------------------------------------
def _renorm_launch(t):
    num_tokens, top_k = t.w.shape
    return ((triton.cdiv(num_tokens, t.BLOCK_M),), (t.w, t.out, num_tokens),
            {"TOP_K": top_k, "BLOCK_M": t.BLOCK_M, "BLOCK_K": triton.next_power_of_2(top_k)})


def _renorm_case(label: str, logits: torch.Tensor, top_k: int, block_m: int) -> KernelCase:
    w, _ = topk_softmax(logits, top_k, renormalize=False)
    expected, _ = topk_softmax(logits, top_k, renormalize=True)
    return KernelCase(label, {"w": w}, {"out": expected}, scalars={"M": w.shape[0], "BLOCK_M": block_m})


def _renorm_by_zero(case: KernelCase) -> torch.Tensor:
    w = case.inputs["w"]
    return w / w.sum(dim=1, keepdim=True)


def _renorm_columns(case: KernelCase) -> torch.Tensor:
    """Summed over axis 0: each column divided by its sum over the program's block of tokens."""
    w, block = case.inputs["w"], case.scalars["BLOCK_M"]
    return torch.cat([b / b.sum(dim=0, keepdim=True) for b in w.split(block)])


@functools.cache
def _renormalize_kernel_puzzle() -> Puzzle:
    gen = seeded(302)
    nan_logits = _nan_row(randn(4, 8, generator=gen), 2)
    cases = [
        _renorm_case("8 tokens, top-2, BLOCK_M = 4", randn(8, 8, generator=gen), 2, 4),
        _renorm_case("7 tokens: the last block holds 3", randn(7, 8, generator=gen), 2, 4),
        _renorm_case("a NaN token: its weights sum to 0, divide by 1", nan_logits, 2, 4),
        _renorm_case("top-3: BLOCK_K = 4, one padding column", randn(5, 8, generator=gen), 3, 4),
        _renorm_case("top-1: every weight becomes 1", randn(3, 8, generator=gen), 1, 2),
        _renorm_case("random: 9 tokens, 16 experts, top-4, BLOCK_M = 4", randn(9, 16, generator=gen, scale=2.0), 4, 4),
        _renorm_case("random: 6 tokens, top-6, BLOCK_M = 8", randn(6, 8, generator=gen), 6, 8),
    ]
    return Puzzle(
        "renormalize", "renormalize_kernel", cases, _renorm_launch,
        mistakes=[
            ValueMistake(_renorm_by_zero, "a token whose weights sum to 0 gets 0 / 0 = nan: divide by "
                         "tl.where(total > 0, total, 1.0)"),
            ValueMistake(_renorm_columns, "the sum ran over the tokens (axis 0): sum each token's own TOP_K "
                         "weights, tl.sum(w, axis=1)[:, None]"),
        ],
        hint="rows = pid * BLOCK_M + tl.arange(0, BLOCK_M); cols = tl.arange(0, BLOCK_K); offsets rows[:, None] * "
             "TOP_K + cols[None, :]; mask (rows < M)[:, None] & (cols < TOP_K)[None, :]; load with other=0, divide "
             "by the row sum (1 where it is <= 0), store with the mask",
        summary="ragged blocks, a zero-sum token, TOP_K = 1 to 6 (padding columns)",
        read_hints={"w": "mask rows and columns: (rows < M)[:, None] & (cols < TOP_K)[None, :] — BLOCK_K may be "
                         "larger than TOP_K, and the row stride is TOP_K"},
    )


def check_renormalize_kernel(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Divide each token's TOP_K routing weights by their sum — by 1 when the sum is <= 0 (a NaN token's
    weights are all 0) — BLOCK_M tokens per program, as a (BLOCK_M, BLOCK_K) tile::

        @triton.jit
        def renormalize_kernel(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_K: tl.constexpr): ...

        renormalize_kernel[(triton.cdiv(M, BLOCK_M),)](w, out, M, TOP_K=top_k, BLOCK_M=BLOCK_M,
                                                        BLOCK_K=triton.next_power_of_2(top_k))

    ``w`` and ``out`` are (M, TOP_K) fp32, contiguous (row stride TOP_K). Mask rows (``< M``) and columns
    (``< TOP_K``: BLOCK_K is a power of two, TOP_K need not be) and sum along axis 1."""
    return check_kernel(_renormalize_kernel_puzzle(), kernel, time_limit=time_limit)


__all__ = ["check_topk_kernel", "check_renormalize_kernel"]
