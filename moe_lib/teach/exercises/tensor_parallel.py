"""Notebook 08 (tensor parallel): each rank's slice of w13 and of w2.

The references are the library's own shards (:mod:`moe_lib.parallel.shard`): the exercise is to rebuild them.
"""

from __future__ import annotations

import torch

from ...parallel.shard import shard_w2 as _shard_w2_ref
from ...parallel.shard import shard_w13 as _shard_w13_ref
from ._engine import Case, CheckResult, Mistake, check, compare_exact


def _labelled(e: int, rows: int, cols: int) -> torch.Tensor:
    """Weights whose every entry is distinct (so any wrong slice shows), fp32."""
    return torch.arange(e * rows * cols, dtype=torch.float32).reshape(e, rows, cols)


def check_shard_w13(shard_w13) -> CheckResult:
    """``shard_w13(w13, tp_size, rank)``: rank ``rank``'s slice of w13 (E, 2I, H) under tensor parallelism —
    (E, 2I/tp, H) = [rows of w1 for the rank; rows of w3 for the rank], each half cut along I separately."""
    cases = [
        Case("E = 1, I = 4, H = 2, tp = 2, rank 0", (_labelled(1, 8, 2), 2, 0)),
        Case("E = 1, I = 4, H = 2, tp = 2, rank 1", (_labelled(1, 8, 2), 2, 1)),
        Case("E = 2, I = 6, H = 3, tp = 3, rank 1", (_labelled(2, 12, 3), 3, 1)),
        Case("tp = 1 (the whole w13)", (_labelled(2, 8, 4), 1, 0)),
        Case("E = 4, I = 8, H = 4, tp = 4, rank 3", (_labelled(4, 16, 4), 4, 3)),
        Case("H = I: E = 3, I = 4, H = 4, tp = 2, rank 1", (_labelled(3, 8, 4), 2, 1)),
    ]

    def chunk_rows(w, tp, r):
        return w.chunk(tp, dim=1)[r]

    def only_w1(w, tp, r):
        i = w.shape[1] // 2
        p = i // tp
        return w[:, r * 2 * p:(r + 1) * 2 * p] if (r + 1) * 2 * p <= i else w[:, :2 * p]

    def cut_h(w, tp, r):
        return torch.cat([w[:, : w.shape[1] // 2], w[:, w.shape[1] // 2:]], 1).chunk(tp, dim=2)[r]

    def up_first(w, tp, r):
        i = w.shape[1] // 2
        p = i // tp
        return torch.cat([w[:, i + r * p:i + (r + 1) * p], w[:, r * p:(r + 1) * p]], dim=1)

    def interleaved(w, tp, r):
        return w[:, r::tp]

    return check(
        "shard w13", shard_w13, arg_names=("w13", "tp_size", "rank"), cases=cases,
        reference=_shard_w13_ref, compare=compare_exact,
        mistakes=[
            Mistake(chunk_rows, "w13 was cut as one block of 2I rows, so rank 0 got w1 rows only and the last rank "
                    "w3 rows only; cut w1 = w13[:, :I] and w3 = w13[:, I:] separately and stack the rank's parts"),
            Mistake(only_w1, "the rank's slice needs its rows of w1 AND its rows of w3 (SiLU-and-mul pairs "
                    "gate row n with up row n, so both must live on the same rank)"),
            Mistake(cut_h, "w13 is cut along its output rows (I), not along H: every rank sees the whole token"),
            Mistake(up_first, "the order is [w1 part; w3 part]: the gate rows come first, as in the full w13"),
            Mistake(interleaved, "a rank holds a contiguous range of I/tp rows of each half, not every tp-th row"),
        ],
        hint="I = w13.shape[1] // 2; p = I // tp_size; torch.cat([w13[:, rank*p:(rank+1)*p], "
             "w13[:, I + rank*p:I + (rank+1)*p]], dim=1)",
        summary="tp = 1 to 4, every rank position",
    )


def check_shard_w2(shard_w2) -> CheckResult:
    """``shard_w2(w2, tp_size, rank)``: rank ``rank``'s slice of w2 (E, H, I) — (E, H, I/tp), the rank's
    columns of the reduction dimension I (row-parallel)."""
    cases = [
        Case("E = 1, H = 2, I = 4, tp = 2, rank 1", (_labelled(1, 2, 4), 2, 1)),
        Case("E = 2, H = 3, I = 6, tp = 3, rank 2", (_labelled(2, 3, 6), 3, 2)),
        Case("tp = 1", (_labelled(2, 4, 8), 1, 0)),
        Case("H = I: E = 2, H = I = 4, tp = 2, rank 0", (_labelled(2, 4, 4), 2, 0)),
        Case("E = 4, H = 4, I = 8, tp = 4, rank 3", (_labelled(4, 4, 8), 4, 3)),
    ]
    return check(
        "shard w2", shard_w2, arg_names=("w2", "tp_size", "rank"), cases=cases,
        reference=_shard_w2_ref, compare=compare_exact,
        mistakes=[
            Mistake(lambda w, tp, r: w.chunk(tp, dim=1)[r], "w2 was cut along H (its output); it is row-parallel: "
                    "cut its input dimension I (dim 2), so each rank's product is a partial sum"),
            Mistake(lambda w, tp, r: w[:, :, r::tp], "a rank holds a contiguous range of I/tp columns, matching "
                    "its slice of w1 and w3, not every tp-th column"),
            Mistake(lambda w, tp, r: w.chunk(tp, dim=2)[tp - 1 - r], "rank r holds columns [r * I/tp, (r+1) * I/tp)"),
        ],
        hint="p = w2.shape[2] // tp_size; w2[:, :, rank*p:(rank+1)*p]",
        summary="tp = 1 to 4",
    )


__all__ = ["check_shard_w13", "check_shard_w2"]
