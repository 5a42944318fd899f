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
# # Solutions · 03 top-k routing
#
# Worked solutions to the exercises at the end of [03 · top-k routing](../03_routing.ipynb). Each solution
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

# %% [markdown]
# ## Puzzle 1 — top-k in a kernel
#
# The kernel puzzles go through the same `moe_lib.teach.puzzles` check as in the notebook. The softmax of the
# primer's Puzzle 2, then `TOP_K` rounds: the largest probability, the lowest id that holds it (`tl.min` over
# the ids where `p == best`, `BLOCK_E` elsewhere), two scalar stores, and the chosen expert set below every
# probability so the next round skips it. NaN probabilities (`p != p`) become 0 and padding columns -1.

# %%
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_renormalize_kernel, check_topk_kernel


@triton.jit
def topk_kernel(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    token = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    is_expert = experts < E
    logits = tl.load(logits_ptr + token * stride_lm + experts, mask=is_expert, other=-float("inf"))
    logits = logits.to(tl.float32)
    numerator = tl.exp(logits - tl.max(logits, axis=0))
    probs = numerator / tl.sum(numerator, axis=0)
    probs = tl.where(probs == probs, probs, 0.0)  # NaN -> 0
    probs = tl.where(is_expert, probs, -1.0)  # padding: never chosen
    for slot in tl.static_range(TOP_K):
        best = tl.max(probs, axis=0)
        best_id = tl.min(tl.where(probs == best, experts, BLOCK_E), axis=0)  # ties: the lowest id
        tl.store(weights_ptr + token * TOP_K + slot, best)
        tl.store(ids_ptr + token * TOP_K + slot, best_id)
        probs = tl.where(experts == best_id, -2.0, probs)  # taken


check_topk_kernel(topk_kernel)

# %% [markdown]
# `tl.argmax` looks like the shortcut, but which of several equal maxima it returns is not the tie rule
# spelled out here; and taking the **highest** id among equal values, a common slip, is what the check's rows
# of ties catch:

# %%
@triton.jit
def topk_ties_high(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    experts = tl.arange(0, BLOCK_E)
    logits = tl.load(logits_ptr + tl.program_id(0) * stride_lm + experts, mask=experts < E,
                     other=-float("inf")).to(tl.float32)
    numerator = tl.exp(logits - tl.max(logits, axis=0))
    probs = tl.where(experts < E, numerator / tl.sum(numerator, axis=0), -1.0)
    probs = tl.where(probs == probs, probs, 0.0)
    for slot in tl.static_range(TOP_K):
        best = tl.max(probs, axis=0)
        best_id = tl.max(tl.where(probs == best, experts, -1), axis=0)  # the highest id holding the max
        tl.store(weights_ptr + tl.program_id(0) * TOP_K + slot, best)
        tl.store(ids_ptr + tl.program_id(0) * TOP_K + slot, best_id)
        probs = tl.where(experts == best_id, -2.0, probs)


check_topk_kernel(topk_ties_high)

# %% [markdown]
# ## Puzzle 2 — the renormalization in a kernel
#
# A (`BLOCK_M`, `BLOCK_K`) tile of rows: offsets `row * TOP_K + col`, masked on both axes (the last block of
# rows, and the columns past `TOP_K`); `tl.sum(axis=1)` is each token's sum.

# %%
@triton.jit
def renormalize_kernel(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    tokens = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.arange(0, BLOCK_K)
    tile = tokens[:, None] * TOP_K + slots[None, :]  # (BLOCK_M, BLOCK_K) offsets
    valid = (tokens < M)[:, None] & (slots < TOP_K)[None, :]
    weights = tl.load(w_ptr + tile, mask=valid, other=0.0)
    total = tl.sum(weights, axis=1)  # (BLOCK_M,) one sum per token
    divisor = tl.where(total > 0.0, total, 1.0)  # a NaN token: all weights 0, divide by 1
    tl.store(out_ptr + tile, weights / divisor[:, None], mask=valid)


check_renormalize_kernel(renormalize_kernel)

# %% [markdown]
# Masking only the rows lets a `TOP_K = 3` tile (with `BLOCK_K = 4`) read and write one column too many: the
# first weight of the next token, and past the end of `out` for the last one.

# %%
@triton.jit
def renormalize_rows_only(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    tokens = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tile = tokens[:, None] * TOP_K + tl.arange(0, BLOCK_K)[None, :]
    weights = tl.load(w_ptr + tile, mask=(tokens < M)[:, None], other=0.0)
    total = tl.sum(weights, axis=1)
    tl.store(out_ptr + tile, weights / tl.where(total > 0.0, total, 1.0)[:, None], mask=(tokens < M)[:, None])


check_renormalize_kernel(renormalize_rows_only)
