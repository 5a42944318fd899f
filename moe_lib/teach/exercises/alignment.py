"""Notebook 05 (alignment): one expert's slots in ``sorted_token_ids``, and the padded total.

Both references are the library's specification, :func:`moe_lib.kernels.align.moe_align_block_size_torch`.
"""

from __future__ import annotations

import torch

from ...kernels.align import moe_align_block_size_torch
from ...testing import seeded
from ._engine import Case, CheckResult, Mistake, check, compare_ints, compare_number

#: The routing of notebook 05's first example: 6 tokens, top-2 of 8 experts.
NB05_TOPK_IDS = torch.tensor([[4, 5], [5, 6], [7, 3], [5, 4], [6, 7], [5, 1]], dtype=torch.int32)


def routed_ids(gen: torch.Generator, m: int, e: int, k: int, skew: bool = False) -> torch.Tensor:
    """(m, k) int32 distinct expert ids per token: the top-k of random scores (skew favours low ids)."""
    scores = torch.rand(m, e, generator=gen)
    if skew:
        scores = scores + torch.linspace(2.0, 0.0, e)
    return scores.topk(k, dim=1).indices.to(torch.int32)


def _expert_slots_ref(topk_ids: torch.Tensor, expert: int, block_m: int) -> torch.Tensor:
    num_experts = max(int(topk_ids.max()) + 1, expert + 1) if topk_ids.numel() else expert + 1
    sorted_ids, expert_ids, _ = moe_align_block_size_torch(topk_ids, block_m, num_experts)
    blocks = (expert_ids == expert).nonzero().flatten()
    if blocks.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    start, stop = int(blocks[0]) * block_m, (int(blocks[-1]) + 1) * block_m
    return sorted_ids[start:stop].long()


def _slots_wrong(topk_ids, expert, block_m, *, tokens=False, pad=None, extra_block=False, block_for_empty=False):
    flat = topk_ids.flatten().long()
    ids = (flat == expert).nonzero().flatten()
    if tokens:
        ids = ids // topk_ids.shape[1]
    n = ids.numel()
    padded = (n // block_m + 1) * block_m if extra_block else -(-n // block_m) * block_m
    if block_for_empty and n == 0:
        padded = block_m
    fill = flat.numel() if pad is None else pad
    return torch.cat([ids, torch.full((padded - n,), fill, dtype=torch.int64)])


def check_expert_slots(expert_slots) -> CheckResult:
    """``expert_slots(topk_ids, expert, block_m)``: the slots of one expert's group in ``sorted_token_ids`` —
    the flat ids t * k + j routed to ``expert``, ascending, then padding (the sentinel M * k) up to a multiple
    of ``block_m``; an expert with no rows has no slots (an empty tensor)."""
    gen = seeded(404)
    cases = [
        Case("notebook 05's routing, expert 4, BLOCK_M = 4", (NB05_TOPK_IDS, 4, 4)),
        Case("notebook 05's routing, expert 5: exactly BLOCK_M rows", (NB05_TOPK_IDS, 5, 4)),
        Case("notebook 05's routing, expert 0: nobody chose it", (NB05_TOPK_IDS, 0, 4)),
        Case("BLOCK_M = 1", (NB05_TOPK_IDS, 7, 1)),
        *[Case(f"random, M = {m}, E = {e}, top-{k}, BLOCK_M = {b}, expert {x}",
               (routed_ids(gen, m, e, k, skew=True), x, b))
          for m, e, k, b, x in ((10, 8, 2, 4, 0), (33, 8, 2, 16, 5), (50, 16, 4, 8, 2), (7, 8, 8, 4, 7))],
    ]
    return check(
        "one expert's aligned slots", expert_slots, arg_names=("topk_ids", "expert", "block_m"), cases=cases,
        reference=_expert_slots_ref, compare=compare_ints,
        mistakes=[
            Mistake(lambda *a: _slots_wrong(*a, tokens=True), "these are token ids (flat id // k); the slots hold "
                    "flat ids t * k + j, the positions in topk_ids.flatten()"),
            Mistake(lambda *a: _slots_wrong(*a, pad=-1), "padding slots hold the sentinel M * k "
                    "(topk_ids.numel()), not -1"),
            Mistake(lambda *a: _slots_wrong(*a, pad=0), "padding slots hold the sentinel M * k "
                    "(topk_ids.numel()), not 0 (a real flat id!)"),
            Mistake(lambda *a: _slots_wrong(*a, extra_block=True), "a group that already fills whole blocks needs "
                    "no padding: round up with ceil(n / BLOCK_M) * BLOCK_M, not (n // BLOCK_M + 1) * BLOCK_M"),
            Mistake(lambda *a: _slots_wrong(*a, block_for_empty=True), "an expert with no rows gets no block "
                    "at all: return an empty tensor"),
            Mistake(lambda t, e, b: (t.flatten() == e).nonzero().flatten(), "the padding is missing: fill the "
                    "group with the sentinel M * k up to a multiple of BLOCK_M"),
        ],
        hint="flat = topk_ids.flatten(); ids = (flat == expert).nonzero().flatten(); pad with flat.numel() up to "
             "ceil(len(ids) / block_m) * block_m",
        summary="exact multiples, empty experts, BLOCK_M = 1",
    )


def _padded_total_ref(counts, block_m: int) -> int:
    """The library's num_tokens_post_padded for a top-1 routing with these per-expert counts."""
    topk_ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(torch.int32)[:, None]
    return int(moe_align_block_size_torch(topk_ids, block_m, len(counts))[2].item())


def check_padded_total(padded_total) -> CheckResult:
    """``padded_total(counts, block_m)``: num_tokens_post_padded — each expert's row count (a list of ints)
    rounded up to a multiple of ``block_m``, summed; experts with no rows add nothing."""
    gen = seeded(405)
    cases = [
        Case("one expert with 3 rows, BLOCK_M = 4", ([3], 4)),
        Case("notebook 05's routing", ([0, 1, 0, 1, 2, 4, 2, 2], 4)),
        Case("exact multiples", ([4, 8, 0, 4], 4)),
        Case("BLOCK_M = 1", ([3, 0, 5], 1)),
        *[Case(f"random, {e} experts, BLOCK_M = {b}", (torch.randint(0, 40, (e,), generator=gen).tolist(), b))
          for e, b in ((8, 16), (16, 8), (64, 64))],
    ]
    return check(
        "padded total", padded_total, arg_names=("counts", "block_m"), cases=cases,
        reference=_padded_total_ref, compare=lambda got, exp: compare_number(got, exp, integer=True),
        mistakes=[
            Mistake(lambda c, b: sum((n // b + 1) * b for n in c if n), "a group that already fills whole blocks "
                    "needs no padding: ceil(n / BLOCK_M) * BLOCK_M, not (n // BLOCK_M + 1) * BLOCK_M"),
            Mistake(lambda c, b: sum(max(1, -(-n // b)) * b for n in c), "an expert with no rows gets no block"),
            Mistake(lambda c, b: sum(c) + len(c) * (b - 1), "that is the worst case (max_len), used to size the "
                    "buffers; the padded total rounds each expert's actual count up"),
            Mistake(lambda c, b: -(-sum(c) // b) * b, "each expert is padded separately (a block never mixes "
                    "experts): round every count up, then add"),
            Mistake(lambda c, b: sum(n // b * b for n in c), "rounding down drops rows: round each count up"),
        ],
        hint="sum over experts of ceil(n_e / block_m) * block_m; in integers: -(-n // block_m) * block_m",
        summary="exact multiples, empty experts, BLOCK_M = 1",
    )


__all__ = ["check_expert_slots", "check_padded_total"]
