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
# # Solutions · 08 tensor parallel
#
# Worked solutions to the exercises at the end of [08 · tensor parallel](../08_tensor_parallel.ipynb). Each
# solution goes through the same `moe_lib.teach.exercises` check as in the notebook, so each prints `PASS`. After
# each one, a wrong answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach.exercises import check_shard_w2, check_shard_w13

# %% [markdown]
# ## Exercise 1 — shard w13 by hand
#
# Rows $[0, I)$ of `w13` are $W_1$ and rows $[I, 2I)$ are $W_3$. Each rank needs the same slice
# $[rI/tp, (r+1)I/tp)$ of **both** halves, so cut the halves apart first, take the rank's rows of each, and
# stack them again: the local `w13` is $[W_1 \text{ shard}; W_3 \text{ shard}]$, and SiLU-and-mul stays
# local because each gate row meets its own up row on the same rank.

# %%
def my_shard_w13(w13: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """(E, 2I, H) -> (E, 2I/tp, H): [w1 rows of this rank; w3 rows of this rank]."""
    inter = w13.shape[1] // 2
    part = inter // tp_size
    rows = slice(rank * part, (rank + 1) * part)
    gate, up = w13[:, :inter], w13[:, inter:]
    return torch.cat([gate[:, rows], up[:, rows]], dim=1)


check_shard_w13(my_shard_w13)

# %% [markdown]
# Cutting `w13` into `tp_size` consecutive blocks of rows instead gives rank 0 only gate rows and the last
# rank only up rows: the shapes are right, the numbers are not.

# %%
def shard_w13_blocks(w13: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    return w13.chunk(tp_size, dim=1)[rank]


check_shard_w13(shard_w13_blocks)

# %% [markdown]
# ## Exercise 2 — shard w2 by hand
#
# `w2` (E, H, I) maps the activation (length $I$) back to $H$. The rank holds only its slice of the
# activation, so it needs the matching columns of `w2` — the same slice of $I$ as in exercise 1 — and its
# product is a partial sum over $I$, which the all-reduce completes.

# %%
def my_shard_w2(w2: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """(E, H, I) -> (E, H, I/tp): this rank's columns of the reduction dimension I."""
    part = w2.shape[2] // tp_size
    return w2[:, :, rank * part : (rank + 1) * part]


check_shard_w2(my_shard_w2)

# %% [markdown]
# Cutting along $H$ (the output dimension) instead would give each rank complete sums for a slice of the
# output — a different scheme, which would need the *whole* activation on every rank.

# %%
def shard_w2_rows(w2: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    part = w2.shape[1] // tp_size
    return w2[:, rank * part : (rank + 1) * part, :]


check_shard_w2(shard_w2_rows)

# %% [markdown]
# ## Puzzle 1 — the TP partial sum
#
# The kernel puzzle goes through the same `moe_lib.teach.puzzles` check as in the notebook. Each program
# walks the ranks in order and adds its tile of every rank's partial into one fp32 accumulator; the store
# rounds once. Rank `r`'s tile starts `r * stride_pr` elements in — the partials are padded, so the stride,
# not `M * H`. The accumulator's dtype is a switch here (`ACC_FP32`), to show the mistake below.

# %%
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_tp_partial_sum


@triton.jit
def sum_ranks(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om,
              BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, ACC_FP32: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = (rows < M)[:, None] & (cols < H)[None, :]
    tile = partials_ptr + rows[:, None] * stride_pm + cols[None, :]  # rank 0's tile
    total = tl.load(tile, mask=inside, other=0.0)
    if ACC_FP32:
        total = total.to(tl.float32)
    for rank in range(1, TP):
        partial = tl.load(tile + rank * stride_pr, mask=inside, other=0.0)
        total += partial.to(tl.float32) if ACC_FP32 else partial
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], total, mask=inside)


@triton.jit
def tp_sum_kernel(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om,
                  BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    sum_ranks(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M, BLOCK_H, ACC_FP32=True)


check_tp_partial_sum(tp_sum_kernel)

# %% [markdown]
# Adding in the partials' own dtype passes every fp32 case and fails the bf16 one: in the interpreter bf16
# arithmetic is simply wrong, and on a GPU a bf16 running sum rounds after every rank.

# %%
@triton.jit
def tp_sum_bf16_accumulator(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om,
                            BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    sum_ranks(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om, BLOCK_M, BLOCK_H, ACC_FP32=False)


check_tp_partial_sum(tp_sum_bf16_accumulator)
