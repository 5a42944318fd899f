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
# # Solutions · 04 the reference MoE
#
# Worked solutions to the exercises at the end of [04 · the reference MoE](../04_reference.ipynb). Each
# solution goes through the same `moe_lib.teach.exercises` check as in the notebook, so each prints `PASS`.
# After each one, a wrong answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach.exercises import check_moe_forward, check_silu_and_mul

# %% [markdown]
# ## Exercise 1 — SiLU-and-mul
#
# `chunk(2, dim=-1)` cuts the last dimension into its two halves, whatever the leading shape.

# %%
def my_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(..., 2I) -> (..., I): silu(first half) * second half."""
    g, u = gate_up.chunk(2, dim=-1)
    return g * torch.sigmoid(g) * u


check_silu_and_mul(my_silu_and_mul)

# %% [markdown]
# Swapping the halves gives an output of the right shape and the wrong values — the check recognizes it:

# %%
def silu_and_mul_swapped(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    return u * torch.sigmoid(u) * g


check_silu_and_mul(silu_and_mul_swapped)

# %% [markdown]
# ## Exercise 2 — the whole layer
#
# The expert-major loop of section 3: for each expert, the (token, slot) pairs that chose it, one GEMM
# for the group, and the weighted result added back with `index_add_` (a token appears at most once per
# expert, since its $k$ experts are distinct).

# %%
def moe_forward(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
    """The routing-weighted sum of each token's k SwiGLU experts: (M, H)."""
    out = torch.zeros_like(x)  # (M, H)
    for e in range(w13.shape[0]):
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)  # the tokens that chose e, and in which slot
        if tok.numel() == 0:
            continue
        y = my_silu_and_mul(x[tok] @ w13[e].T) @ w2[e].T  # (n_e, H)
        out.index_add_(0, tok, topk_weights[tok, slot, None] * y)
    return out


check_moe_forward(moe_forward)

# %% [markdown]
# Forgetting the routing weights — adding the $k$ expert outputs as they are — is the mistake the check
# finds most often:

# %%
def moe_forward_unweighted(x, w13, w2, topk_weights, topk_ids):
    return moe_forward(x, w13, w2, torch.ones_like(topk_weights), topk_ids)


print(check_moe_forward(moe_forward_unweighted).message.splitlines()[-1])
