"""moe_lib.teach.exercises.alignment (notebook 05): the checkers keep the contract of exercise_contract.py."""

from __future__ import annotations

import torch
from exercise_contract import ExerciseContract

from moe_lib.teach.exercises import alignment


def _slots(topk_ids, expert, block_m, *, tokens=False, fill=None, extra_block=False):
    """One expert's slots, written out by hand; the keywords make the typical mistakes."""
    flat = topk_ids.flatten()
    ids = (flat == expert).nonzero().flatten()
    if tokens:
        ids = ids // topk_ids.shape[1]
    padded = (ids.numel() // block_m + 1) * block_m if extra_block else -(-ids.numel() // block_m) * block_m
    sentinel = flat.numel() if fill is None else fill
    return torch.cat([ids, torch.full((padded - ids.numel(),), sentinel, dtype=ids.dtype)])


def expert_slots(topk_ids, expert, block_m):
    return _slots(topk_ids, expert, block_m)


def padded_total(counts, block_m):
    return sum(-(-n // block_m) * block_m for n in counts)


class TestAlignmentCheckers(ExerciseContract):
    module = alignment
    checks = {
        "check_expert_slots": (expert_slots, [
            (lambda t, e, b: _slots(t, e, b, tokens=True), "token ids"),
            (lambda t, e, b: _slots(t, e, b, fill=-1), "not -1"),
            (lambda t, e, b: _slots(t, e, b, extra_block=True), "no padding"),
            (lambda t, e, b: (t.flatten() == e).nonzero().flatten(), "padding is missing"),
        ]),
        "check_padded_total": (padded_total, [
            (lambda c, b: sum((n // b + 1) * b for n in c if n), "ceil(n / BLOCK_M)"),
            (lambda c, b: sum(max(1, -(-n // b)) * b for n in c), "no block"),
            (lambda c, b: sum(c) + len(c) * (b - 1), "worst case"),
            (lambda c, b: -(-sum(c) // b) * b, "padded separately"),
        ]),
    }


def test_notebook_04_routing_aligns_as_the_library_does():
    """The slots of every expert of notebook 05's routing, stacked, are the library's sorted_token_ids."""
    from moe_lib.kernels.align import moe_align_block_size_torch

    ids = alignment.NB05_TOPK_IDS
    sorted_ids, _, total = moe_align_block_size_torch(ids, 4, 8)
    stacked = torch.cat([expert_slots(ids, e, 4) for e in range(8)])
    assert torch.equal(stacked, sorted_ids[: int(total)].long())
