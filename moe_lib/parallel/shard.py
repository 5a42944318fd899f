"""Tensor-parallel shards of the expert weights.

Every rank holds every expert, cut along the intermediate dimension I:

- w13 (E, 2I, H) is column-parallel. Its gate half w1 and up half w3 are cut *separately*, so that rank
  r's local w13 is [w1 shard r; w3 shard r] (E, 2I/tp, H) and SiLU-and-mul stays local.
- w2 (E, H, I) is row-parallel: cut along its input dimension I, (E, H, I/tp).

Each rank then computes a partial output from its slice of I; the sum over ranks (an all-reduce) is the
full output, because w2 @ a = sum_r w2[:, I_r] @ a[I_r].
"""

from __future__ import annotations

import torch

from .._validate import check_int, check_tensor


def _check_tp(tp_size: int, rank: int, inter: int, what: str) -> int:
    check_int("tp_size", tp_size, low=1)
    check_int("rank", rank, low=0, high=tp_size - 1)
    if inter % tp_size:
        raise ValueError(f"intermediate_size {inter} ({what}) is not divisible by tp_size {tp_size}")
    return inter // tp_size


def shard_w13(w13: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """(E, 2I, H) -> this rank's (E, 2I/tp, H) = [w1 rows of rank; w3 rows of rank] (a copy)."""
    check_tensor("w13", w13, ndim=3)
    if w13.shape[1] % 2:
        raise ValueError(f"w13 must have an even dim 1 (2 * intermediate_size), got shape {tuple(w13.shape)}")
    inter = w13.shape[1] // 2
    part = _check_tp(tp_size, rank, inter, "w13.shape[1] // 2")
    rows = slice(rank * part, (rank + 1) * part)
    gate, up = w13[:, :inter], w13[:, inter:]
    return torch.cat([gate[:, rows], up[:, rows]], dim=1)


def shard_w2(w2: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """(E, H, I) -> this rank's (E, H, I/tp) (a contiguous copy)."""
    check_tensor("w2", w2, ndim=3)
    part = _check_tp(tp_size, rank, w2.shape[2], "w2.shape[2]")
    return w2[:, :, rank * part : (rank + 1) * part].contiguous()


__all__ = ["shard_w13", "shard_w2"]
