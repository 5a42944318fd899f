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
# # Solutions · 04 alignment
#
# Worked solutions to the exercises at the end of [04 · alignment](../04_alignment.ipynb). Each solution
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
