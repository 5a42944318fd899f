"""Notebook 05 (alignment): tokens per expert and the padded offsets, then every flat id at its sorted position.

Both references are read off the library's specification, :func:`moe_lib.kernels.align.moe_align_block_size_torch`.
"""

from __future__ import annotations

import functools

import torch
import triton

from ...kernels.align import moe_align_block_size_torch
from ...testing import seeded
from ..exercises.alignment import routed_ids
from ._engine import KernelCase, Puzzle, PuzzleResult, ValueMistake, check_kernel

#: The routing of notebook 05's first example: 6 tokens, top-2 of 8 experts.
FIRST_EXAMPLE = torch.tensor([[4, 5], [5, 6], [7, 3], [5, 4], [6, 7], [5, 1]], dtype=torch.int32)
#: Every expert's count a multiple of 4.
WHOLE_BLOCKS = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0], [2, 3], [3, 2], [2, 3], [3, 2]], dtype=torch.int32)


def _aligned(topk_ids: torch.Tensor, block: int, num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts (E,), offsets (E + 1,), sorted_token_ids (padded total,)), all int32, read off the library's
    alignment: an expert's padded count is BLOCK_SIZE times its blocks, its count the real ids among them."""
    sorted_ids, expert_ids, total = moe_align_block_size_torch(topk_ids, block, num_experts)
    total = int(total)
    blocks = expert_ids[: total // block].long()
    real = (sorted_ids[:total] < topk_ids.numel()).view(-1, block).sum(dim=1)
    counts = torch.zeros(num_experts, dtype=torch.int64).index_add_(0, blocks, real)
    padded = torch.zeros(num_experts, dtype=torch.int64).index_add_(0, blocks, torch.full_like(blocks, block))
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), padded.cumsum(0)])
    return counts.to(torch.int32), offsets.to(torch.int32), sorted_ids[:total]


def _cases(gen: torch.Generator) -> list[tuple[str, torch.Tensor, int, int, int]]:
    """(label, topk_ids, num_experts, BLOCK_SIZE, CHUNK) of both puzzles."""
    return [
        ("notebook 05's routing: 12 ids, 8 experts, BLOCK_SIZE = 4, CHUNK = 8", FIRST_EXAMPLE, 8, 4, 8),
        ("every count a multiple of BLOCK_SIZE", WHOLE_BLOCKS, 4, 4, 8),
        ("BLOCK_SIZE = 1: no padding", FIRST_EXAMPLE, 8, 1, 4),
        ("13 tokens, top-2 of 6 experts: 26 ids in chunks of 8", routed_ids(gen, 13, 6, 2, skew=True), 6, 4, 8),
        ("random: 10 tokens, top-4 of 16 experts, BLOCK_SIZE = 8", routed_ids(gen, 10, 16, 4, skew=True), 16, 8, 16),
        ("random: 3 tokens, top-2 of 8, BLOCK_SIZE = 16", routed_ids(gen, 3, 8, 2, skew=True), 8, 16, 4),
    ]


# ----------------------------------------------------------------------------------------------------
# Puzzle 1: tokens per expert, and the padded offsets
# ----------------------------------------------------------------------------------------------------
def _histogram_launch(t):
    return ((1,), (t.topk_ids, t.counts, t.offsets, t.topk_ids.numel(), t.num_experts),
            {"BLOCK_SIZE": t.BLOCK_SIZE, "CHUNK": t.CHUNK, "E_PAD": triton.next_power_of_2(t.num_experts)})


def _histogram_case(label, topk_ids, num_experts, block, chunk) -> KernelCase:
    counts, offsets, _ = _aligned(topk_ids, block, num_experts)
    return KernelCase(label, {"topk_ids": topk_ids}, {"counts": counts, "offsets": offsets},
                      scalars={"numel": topk_ids.numel(), "num_experts": num_experts, "BLOCK_SIZE": block,
                               "CHUNK": chunk})


def _offsets_from(counts: torch.Tensor, sizes: torch.Tensor) -> dict:
    return {"counts": counts, "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), sizes.long().cumsum(0)])}


def _histogram_unpadded(case: KernelCase) -> dict:
    counts = case.expected["counts"]
    return _offsets_from(counts, counts)


def _histogram_extra_block(case: KernelCase) -> dict:
    counts, block = case.expected["counts"].long(), case.scalars["BLOCK_SIZE"]
    return _offsets_from(counts, torch.where(counts > 0, (counts // block + 1) * block, 0))


def _histogram_inclusive(case: KernelCase) -> dict:
    counts, offsets = case.expected["counts"], case.expected["offsets"]
    return {"counts": counts, "offsets": torch.cat([offsets[1:], offsets[-1:]])}


@functools.cache
def _expert_histogram_puzzle() -> Puzzle:
    cases = [_histogram_case(*c) for c in _cases(seeded(501))]
    return Puzzle(
        "tokens per expert and padded offsets", "expert_histogram_kernel", cases, _histogram_launch,
        mistakes=[
            ValueMistake(_histogram_unpadded, "the offsets add up the counts themselves: round each count up to a "
                         "multiple of BLOCK_SIZE first, (n + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE"),
            ValueMistake(_histogram_extra_block, "a count that already fills whole blocks got one more block: "
                         "round up with (n + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE, not (n // BLOCK_SIZE + 1) "
                         "* BLOCK_SIZE"),
            ValueMistake(_histogram_inclusive, "offsets[e] holds where expert e's group ends (an inclusive scan): "
                         "it is where the group starts — tl.cumsum(padded, 0) - padded — and offsets[E] the total"),
        ],
        hint="counts += tl.sum((ids[:, None] == offs_e[None, :]).to(tl.int32), axis=0) over the chunks (ids loaded "
             "with mask=offs < numel, other=-1); padded = (counts + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE; "
             "store counts and tl.cumsum(padded, 0) - padded for offs_e < num_experts, and tl.sum(padded, 0) at "
             "offsets_ptr + num_experts",
        summary="whole blocks, empty experts, BLOCK_SIZE = 1, ragged chunks, E not a power of two",
        read_hints={"topk_ids": "the last chunk runs past numel: load with mask=offs < numel, other=-1 (-1 "
                                "matches no expert)"},
    )


def check_expert_histogram(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Count the flat ids of each expert, then each expert group's first slot in the aligned layout — one
    program reads all the ids, CHUNK at a time::

        @triton.jit
        def expert_histogram_kernel(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                                    BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr): ...

        expert_histogram_kernel[(1,)](topk_ids, counts, offsets, topk_ids.numel(), num_experts,
                                      BLOCK_SIZE=block_size, CHUNK=chunk,
                                      E_PAD=triton.next_power_of_2(num_experts))

    ``counts`` (E,) int32: the number of ids equal to each expert. ``offsets`` (E + 1,) int32: ``offsets[e]``
    is where expert e's group starts — the sum of the *padded* counts (each rounded up to a multiple of
    BLOCK_SIZE) of the experts before it — and ``offsets[E]`` the padded total (num_tokens_post_padded). The
    outputs start as garbage: never add into them. Per chunk: a one-hot (CHUNK, E_PAD) of the ids (the last
    chunk masked), summed over axis 0; then ``tl.cumsum`` of the padded counts."""
    return check_kernel(_expert_histogram_puzzle(), kernel, time_limit=time_limit)


# ----------------------------------------------------------------------------------------------------
# Puzzle 2: each flat id to its sorted position
# ----------------------------------------------------------------------------------------------------
def _scatter_launch(t):
    return ((t.num_experts,), (t.topk_ids, t.offsets, t.sorted_token_ids, t.topk_ids.numel()),
            {"BLOCK_SIZE": t.BLOCK_SIZE, "CHUNK": t.CHUNK})


def _scatter_case(label, topk_ids, num_experts, block, chunk) -> KernelCase:
    _, offsets, sorted_ids = _aligned(topk_ids, block, num_experts)
    return KernelCase(label, {"topk_ids": topk_ids, "offsets": offsets}, {"sorted_token_ids": sorted_ids},
                      scalars={"numel": topk_ids.numel(), "num_experts": num_experts, "BLOCK_SIZE": block,
                               "CHUNK": chunk})


def _scatter_pad_with(value: int):
    def wrong(case: KernelCase) -> torch.Tensor:
        ids = case.expected["sorted_token_ids"]
        return torch.where(ids == case.inputs["topk_ids"].numel(), value, ids)
    return wrong


@functools.cache
def _scatter_sorted_puzzle() -> Puzzle:
    cases = [_scatter_case(*c) for c in _cases(seeded(502))]
    return Puzzle(
        "flat ids to sorted positions", "scatter_sorted_kernel", cases, _scatter_launch,
        mistakes=[
            ValueMistake(_scatter_pad_with(0), "the padding slots hold 0 — a real flat id! They hold the "
                         "sentinel numel (topk_ids.numel()), which every later kernel skips"),
            ValueMistake(_scatter_pad_with(-1), "the padding slots hold -1: they hold the sentinel numel "
                         "(topk_ids.numel())"),
        ],
        hint="e = tl.program_id(0); start, end = offsets[e], offsets[e + 1]; per chunk: hit = ids == e, store the "
             "flat ids offs at start + count + tl.cumsum(hit, 0) - 1 where hit, count += tl.sum(hit); then store "
             "numel at start + count + tl.arange(0, BLOCK_SIZE) where that is < end",
        summary="whole blocks, empty experts, BLOCK_SIZE = 1, ids over several chunks",
        read_hints={"topk_ids": "the last chunk runs past numel: load with mask=offs < numel, other=-1",
                    "offsets": "program e reads offsets[e] and offsets[e + 1]: e is tl.program_id(0), and "
                               "offsets holds E + 1 values"},
    )


def check_scatter_sorted(kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Write the aligned layout ``sorted_token_ids``: program e fills expert e's group — its flat ids in
    ascending order, then the sentinel ``numel`` in the group's padding slots::

        @triton.jit
        def scatter_sorted_kernel(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel,
                                  BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr): ...

        scatter_sorted_kernel[(num_experts,)](topk_ids, offsets, sorted_ids, topk_ids.numel(),
                                              BLOCK_SIZE=block_size, CHUNK=chunk)

    ``offsets`` (E + 1,) is the previous puzzle's answer: expert e's group is ``sorted_ids[offsets[e]:
    offsets[e + 1]]``, and ``sorted_ids`` holds offsets[E] slots. The flat id of ``topk_ids.flatten()[i]``
    is i. Read the ids CHUNK at a time; inside a chunk the rank of a hit is ``tl.cumsum(hit, 0) - 1``, plus
    the hits of the chunks before (carry a count). The padding slots (fewer than BLOCK_SIZE) come after."""
    return check_kernel(_scatter_sorted_puzzle(), kernel, time_limit=time_limit)


__all__ = ["check_expert_histogram", "check_scatter_sorted"]
