"""moe_lib.teach.exercises.fused_kernel (notebook 06): the checkers keep the contract of exercise_contract.py."""

from __future__ import annotations

import torch
from exercise_contract import ExerciseContract

from moe_lib.teach.exercises import fused_kernel


def tile_a_rows(sorted_token_ids, pid_m, block_m, top_k, num_valid, *, mask=True):
    slots = pid_m * block_m + torch.arange(block_m)
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    inside = slots < sorted_token_ids.numel()
    flat[inside] = sorted_token_ids[slots[inside]].long()
    return torch.where(flat < num_valid, flat // top_k, -1) if mask else flat // top_k


def b_offsets(expert, n, k, strides, inter):
    be, bn, bk = strides
    gate = expert * be + n * bn + k * bk
    return gate, gate + inter * bn


def _a_rows_slot(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    flat = tile_a_rows(sorted_token_ids, pid_m, block_m, 1, num_valid)  # the flat ids, -1 for padding
    return torch.where(flat >= 0, flat % top_k, -1)


class TestFusedKernelCheckers(ExerciseContract):
    module = fused_kernel
    checks = {
        "check_tile_a_rows": (tile_a_rows, [
            (lambda s, p, b, k, v: tile_a_rows(s, p, b, 1, v), "flat_id // top_k"),
            (_a_rows_slot, "slot j"),
            (lambda s, p, b, k, v: tile_a_rows(s, p, b, k, v, mask=False), "padding slots"),
            (lambda s, p, b, k, v: tile_a_rows(s, 0, b, k, v) if p else tile_a_rows(s, 1, b, k, v),
             "pid_m * block_m"),
        ]),
        "check_b_offsets": (b_offsets, [
            (lambda e, n, k, s, i: (n * s[1] + k * s[2], n * s[1] + k * s[2] + i * s[1]), "expert * stride_be"),
            (lambda e, n, k, s, i: (b_offsets(e, n, k, s, i)[0], b_offsets(e, n, k, s, i)[0] + i),
             "not inter elements"),
            (lambda e, n, k, s, i: (e * s[0] + n * s[2] + k * s[1], e * s[0] + n * s[2] + k * s[1] + i * s[2]),
             "row n goes with stride_bn"),
        ]),
    }


def test_b_offsets_are_the_storage_offsets_of_w13():
    """The reference's offsets address the same elements as indexing a real (non-contiguous) w13."""
    w13 = torch.arange(8 * 4 * 12).reshape(8, 4, 12).transpose(1, 2)  # (E=8, 2I=12, H=4), strides (48, 1, 12)
    flat = w13.as_strided((w13.numel(),), (1,))
    gate, up = fused_kernel._b_offsets_ref(2, 5, 3, w13.stride(), 6)
    assert flat[gate] == w13[2, 5, 3] and flat[up] == w13[2, 11, 3]
