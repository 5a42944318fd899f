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
# # Solutions · 02 top-k routing
#
# Worked solutions to the exercises at the end of [02 · top-k routing](../02_routing.ipynb). Each solution
# goes through the same `moe_lib.teach.exercises` check as in the notebook, so each prints `PASS`. After each
# one, a wrong answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach.exercises import check_renormalize, check_topk_ids

# %% [markdown]
# ## Exercise 1 — the renormalization
#
# Sum each token's $k$ probabilities — `keepdim=True` keeps the sum as an $(M, 1)$ column, so that row $t$
# is divided by its own sum — and divide by 1 wherever that sum is not positive.

# %%
def renormalize(topk_probs: torch.Tensor) -> torch.Tensor:
    """(M, k) chosen probabilities -> (M, k) weights summing to 1 per token (divide by 1 if the sum is <= 0)."""
    total = topk_probs.sum(dim=-1, keepdim=True)  # (M, 1)
    return topk_probs / torch.where(total > 0, total, torch.ones_like(total))


check_renormalize(renormalize)

# %% [markdown]
# Without the guard, a token whose probabilities were all set to 0 (a NaN token) gets $0/0$ = NaN weights —
# exactly what vLLM's rule prevents:

# %%
check_renormalize(lambda topk_probs: topk_probs / topk_probs.sum(dim=-1, keepdim=True))

# %% [markdown]
# ## Exercise 2 — top-k with the tie rule
#
# A **stable** sort keeps equal values in their original order, that is in expert-id order; sorting
# descending and keeping the first $k$ columns gives "the largest, lower id first" — the same line that
# `moe_lib.kernels.routing.topk_softmax` uses.

# %%
def topk_ids(probs: torch.Tensor, k: int) -> torch.Tensor:
    """(M, E) probabilities -> (M, k) expert ids, largest first, ties to the lower id."""
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]


check_topk_ids(topk_ids)

# %% [markdown]
# Taking the last $k$ of an ascending sort and reversing them finds the right *values*, but among equal
# values it puts the higher id first:

# %%
check_topk_ids(lambda probs, k: torch.sort(probs, dim=-1, stable=True).indices[:, -k:].flip(-1))

# %% [markdown]
# `torch.topk(probs, k).indices` is the other classic: its order among ties is not specified, and the
# check's rows of equal probabilities catch it (which ids it returns there depends on the machine).
