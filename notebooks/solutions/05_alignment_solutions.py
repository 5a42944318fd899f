# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions · 05 alignment
#
# Worked solutions to the exercises at the end of [05 · alignment](../05_alignment.ipynb). Each solution
# goes through the same `moe_lib.teach.exercises` check as in the notebook, so each prints `PASS`. After each
# one, a wrong answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach.exercises import check_expert_slots, check_padded_total

# %% [markdown]
# ## Exercise 1 — the alignment of one expert
#
# The flat id of a (token, slot) pair is its position in `topk_ids.flatten()`, so the expert's flat ids
# are the positions where the flattened ids equal it — `nonzero` lists them in ascending order. Then pad
# with the sentinel `numel` up to the next multiple of `block_m`: $\lceil n / B \rceil B$, written
# $-(-n \mathbin{//} B)\,B$ in integers. For $n = 0$ that is 0: no slots.

# %%
def expert_slots(topk_ids: torch.Tensor, expert: int, block_m: int) -> torch.Tensor:
    """Flat ids of `expert`, ascending, padded with M*k to a multiple of block_m (empty if none)."""
    flat = topk_ids.flatten()  # (numel,)
    ids = (flat == expert).nonzero().flatten()  # ascending flat ids of this expert
    padded = -(-ids.numel() // block_m) * block_m
    return torch.cat([ids, torch.full((padded - ids.numel(),), flat.numel(), dtype=ids.dtype)])


check_expert_slots(expert_slots)

# %% [markdown]
# Writing the **token** of each row (flat id // $k$) instead of the flat id loses the slot: the kernel
# could not tell token 3's first choice from its second.

# %%
def expert_slots_tokens(topk_ids: torch.Tensor, expert: int, block_m: int) -> torch.Tensor:
    flat = topk_ids.flatten()
    tokens = (flat == expert).nonzero().flatten() // topk_ids.shape[1]
    padded = -(-tokens.numel() // block_m) * block_m
    return torch.cat([tokens, torch.full((padded - tokens.numel(),), flat.numel(), dtype=tokens.dtype)])


check_expert_slots(expert_slots_tokens)

# %% [markdown]
# ## Exercise 2 — the padded total
#
# Round every count up to whole blocks and add; an expert with no rows rounds to 0.

# %%
def padded_total(counts: list[int], block_m: int) -> int:
    """num_tokens_post_padded: every expert's row count rounded up to a multiple of block_m, summed."""
    return sum(-(-n // block_m) * block_m for n in counts)


check_padded_total(padded_total)

# %% [markdown]
# Rounding up with $(n \mathbin{//} B + 1)\,B$ pads a group that already fills whole blocks by one more
# block:

# %%
check_padded_total(lambda counts, block_m: sum((n // block_m + 1) * block_m for n in counts if n))

# %% [markdown]
# ## Puzzle 1 — tokens per expert and the padded offsets, in a kernel
#
# The kernel puzzles go through the same `moe_lib.teach.puzzles` check as in the notebook. The counting is a
# helper of its own (a `@triton.jit` function called from the kernel): per chunk, a one-hot matrix — row $i$
# is 1 in the column of id $i$'s expert — summed over its rows; the last chunk loads its missing ids as -1,
# which matches no expert. Then round each count up to whole blocks, and an exclusive scan of those gives where
# each group starts.

# %%
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_expert_histogram, check_scatter_sorted


@triton.jit
def count_experts(topk_ids_ptr, numel, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    """(E_PAD,) int32: how many of the numel ids name each expert."""
    experts = tl.arange(0, E_PAD)
    counts = tl.zeros((E_PAD,), dtype=tl.int32)
    for first in range(0, numel, CHUNK):
        flat = first + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + flat, mask=flat < numel, other=-1)
        one_hot = ids[:, None] == experts[None, :]  # (CHUNK, E_PAD)
        counts += tl.sum(one_hot.to(tl.int32), axis=0)
    return counts


@triton.jit
def expert_histogram_kernel(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                            BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    counts = count_experts(topk_ids_ptr, numel, CHUNK, E_PAD)
    blocks = (counts + BLOCK_SIZE - 1) // BLOCK_SIZE  # whole blocks per expert (0 for none)
    padded = blocks * BLOCK_SIZE
    starts = tl.cumsum(padded, axis=0) - padded  # exclusive scan
    experts = tl.arange(0, E_PAD)
    tl.store(counts_ptr + experts, counts, mask=experts < num_experts)
    tl.store(offsets_ptr + experts, starts, mask=experts < num_experts)
    tl.store(offsets_ptr + num_experts, tl.sum(padded, axis=0))  # the padded total


check_expert_histogram(expert_histogram_kernel)

# %% [markdown]
# Storing the inclusive scan puts each group's *end* where its start belongs:

# %%
@triton.jit
def expert_histogram_ends(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                          BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    counts = count_experts(topk_ids_ptr, numel, CHUNK, E_PAD)
    padded = (counts + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE
    experts = tl.arange(0, E_PAD)
    tl.store(counts_ptr + experts, counts, mask=experts < num_experts)
    tl.store(offsets_ptr + experts, tl.cumsum(padded, axis=0), mask=experts < num_experts)  # inclusive
    tl.store(offsets_ptr + num_experts, tl.sum(padded, axis=0))


check_expert_histogram(expert_histogram_ends)

# %% [markdown]
# ## Puzzle 2 — every flat id to its sorted position
#
# Program `e` scans all ids. In a chunk, `tl.cumsum` over the hits numbers them 1, 2, ... in ascending order,
# so hit $i$ goes to `start + seen + rank` where `seen` counts the hits of the earlier chunks. The padding
# slots — fewer than `BLOCK_SIZE` — follow the last id, up to the next group's start.

# %%
@triton.jit
def scatter_sorted_kernel(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel,
                          BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr):
    expert = tl.program_id(0)
    group_start = tl.load(offsets_ptr + expert)
    group_end = tl.load(offsets_ptr + expert + 1)
    seen = 0  # ids of this expert in the earlier chunks
    for first in range(0, numel, CHUNK):
        flat = first + tl.arange(0, CHUNK)
        mine = tl.load(topk_ids_ptr + flat, mask=flat < numel, other=-1) == expert
        rank = tl.cumsum(mine.to(tl.int32), axis=0) - 1  # 0, 1, ... among this chunk's hits
        tl.store(sorted_ids_ptr + group_start + seen + rank, flat, mask=mine)
        seen += tl.sum(mine.to(tl.int32), axis=0)
    slots = group_start + seen + tl.arange(0, BLOCK_SIZE)
    sentinel = tl.full((BLOCK_SIZE,), numel, dtype=tl.int32)
    tl.store(sorted_ids_ptr + slots, sentinel, mask=slots < group_end)


check_scatter_sorted(scatter_sorted_kernel)

# %% [markdown]
# Forgetting `seen` restarts every chunk at the group's start: ids of a later chunk overwrite those of an
# earlier one, and the slots they should have filled stay empty — the picture shows both. (To keep it short,
# this version writes no padding: the check stops at the first problem it finds anyway.)

# %%
@triton.jit
def scatter_sorted_forgetful(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel,
                             BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr):
    start = tl.load(offsets_ptr + tl.program_id(0))
    for first in range(0, numel, CHUNK):
        flat = first + tl.arange(0, CHUNK)
        mine = tl.load(topk_ids_ptr + flat, mask=flat < numel, other=-1) == tl.program_id(0)
        tl.store(sorted_ids_ptr + start + tl.cumsum(mine.to(tl.int32), axis=0) - 1, flat, mask=mine)


check_scatter_sorted(scatter_sorted_forgetful)
