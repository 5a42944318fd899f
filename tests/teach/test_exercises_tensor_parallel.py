"""moe_lib.teach.exercises.tensor_parallel (notebook 08): the checkers keep the contract of exercise_contract.py."""

from __future__ import annotations

import torch
from exercise_contract import ExerciseContract

from moe_lib.teach.exercises import tensor_parallel


def shard_w13(w13, tp_size, rank):
    inter = w13.shape[1] // 2
    p = inter // tp_size
    return torch.cat([w13[:, rank * p:(rank + 1) * p], w13[:, inter + rank * p:inter + (rank + 1) * p]], dim=1)


def shard_w2(w2, tp_size, rank):
    p = w2.shape[2] // tp_size
    return w2[:, :, rank * p:(rank + 1) * p]


def _w13_up_first(w13, tp_size, rank):
    inter = w13.shape[1] // 2
    return shard_w13(torch.cat([w13[:, inter:], w13[:, :inter]], dim=1), tp_size, rank)


class TestTensorParallelCheckers(ExerciseContract):
    module = tensor_parallel
    checks = {
        "check_shard_w13": (shard_w13, [
            (lambda w, tp, r: w.chunk(tp, dim=1)[r], "one block of 2I rows"),
            (_w13_up_first, "gate rows come first"),
            (lambda w, tp, r: w.chunk(tp, dim=2)[r], "not along H"),
            (lambda w, tp, r: w[:, r::tp], "every tp-th row"),
        ]),
        "check_shard_w2": (shard_w2, [
            (lambda w, tp, r: w.chunk(tp, dim=1)[r], "row-parallel"),
            (lambda w, tp, r: w[:, :, r::tp], "every tp-th column"),
        ]),
    }
