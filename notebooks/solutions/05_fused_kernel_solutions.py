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
# # Solutions · 05 the fused kernel
#
# Worked solutions to the exercises at the end of [05 · the fused kernel](../05_fused_kernel.ipynb). Each
# solution goes through the same `moe_lib.teach.exercises` check as in the notebook, so each prints `PASS`.
# After each one, a wrong answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach.exercises import check_b_offsets, check_tile_a_rows

# %% [markdown]
# ## Exercise 1 — the A rows of a tile
#
# The kernel's own steps, in torch: the block's slots, the flat ids they hold (the sentinel past the end of
# the buffer, as the kernel's `other=num_valid_tokens`), the token `flat // top_k`, and the row mask.

# %%
def tile_a_rows(sorted_token_ids: torch.Tensor, pid_m: int, block_m: int, top_k: int,
                num_valid: int) -> torch.Tensor:
    """(block_m,) the token row each row of block pid_m reads; -1 for padding and out-of-range slots."""
    slots = pid_m * block_m + torch.arange(block_m)  # (block_m,) offs_sorted
    inside = slots < sorted_token_ids.numel()
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    flat[inside] = sorted_token_ids[slots[inside]].long()  # tl.load(..., mask=offs < EM, other=num_valid)
    return torch.where(flat < num_valid, flat // top_k, -1)  # row_mask


check_tile_a_rows(tile_a_rows)

# %% [markdown]
# Forgetting the mask gives the padding slots a row too — here `12 // 2 = 6`, a token that does not exist
# in a batch of six:

# %%
def tile_a_rows_unmasked(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    slots = pid_m * block_m + torch.arange(block_m)
    inside = slots < sorted_token_ids.numel()
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    flat[inside] = sorted_token_ids[slots[inside]].long()
    return flat // top_k


check_tile_a_rows(tile_a_rows_unmasked)

# %% [markdown]
# ## Exercise 2 — the expert stride
#
# An element's offset is the dot product of its index with the strides; the up row sits $I$ rows — `inter *
# stride_bn` elements — after the gate row, as `b_up_ptrs = b_ptrs + N * stride_bn` in the kernel.

# %%
def b_offsets(expert: int, n: int, k: int, strides: tuple[int, int, int], inter: int) -> tuple[int, int]:
    """Element offsets of w13[expert, n, k] (gate) and w13[expert, inter + n, k] (up)."""
    stride_be, stride_bn, stride_bk = strides
    gate = expert * stride_be + n * stride_bn + k * stride_bk
    return gate, gate + inter * stride_bn


check_b_offsets(b_offsets)

# %% [markdown]
# The same with a real tensor: the offsets index the flat storage of a `w13` that is stored transposed.

# %%
w13 = torch.arange(2 * 12 * 4).reshape(2, 4, 12).transpose(1, 2)  # (E=2, 2I=12, H=4), not contiguous
gate, up = b_offsets(1, 5, 3, w13.stride(), 6)
flat = w13.as_strided((w13.numel(),), (1,))  # the same memory, read in storage order
print("strides", w13.stride(), "| offsets", (gate, up))
print("w13[1, 5, 3] =", w13[1, 5, 3].item(), "= storage[gate] =", flat[gate].item())
print("w13[1, 11, 3] =", w13[1, 11, 3].item(), "= storage[up] =", flat[up].item())

# %% [markdown]
# Adding $I$ elements instead of $I$ rows lands in the wrong place as soon as a row is longer than one
# element:

# %%
def b_offsets_elements(expert, n, k, strides, inter):
    gate = expert * strides[0] + n * strides[1] + k * strides[2]
    return gate, gate + inter


check_b_offsets(b_offsets_elements)
