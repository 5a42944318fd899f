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
# # Solutions · 02 a Triton primer
#
# Worked solutions to the puzzles at the end of [02 · a Triton primer](../02_triton_primer.ipynb). Each kernel
# goes through the same `moe_lib.teach.puzzles` check as in the notebook, so each prints `PASS`. After each
# one, a kernel that learners often write, what the check says about it, and its picture of which program
# wrote each element.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_row_softmax, check_vector_add

# %% [markdown]
# ## Puzzle 1 — a masked vector add
#
# Program `pid` owns elements `pid * BLOCK` to `pid * BLOCK + BLOCK - 1`. The last program's block runs past
# `n` unless `n` is a multiple of `BLOCK`, so the same mask `offs < n` guards both loads and the store.

# %%
@triton.jit
def vector_add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # this program's block of offsets
    in_bounds = offs < n  # False past the end of the tensors
    x = tl.load(x_ptr + offs, mask=in_bounds)
    y = tl.load(y_ptr + offs, mask=in_bounds)
    tl.store(out_ptr + offs, x + y, mask=in_bounds)


check_vector_add(vector_add_kernel)

# %% [markdown]
# Without the mask, the last program of a ragged case stores past the end of `out` — into the guard the check
# poisoned there, which on a GPU is some other tensor's memory:

# %%
@triton.jit
def vector_add_unmasked(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs) + tl.load(y_ptr + offs))


check_vector_add(vector_add_unmasked)

# %% [markdown]
# ## Puzzle 2 — a row softmax
#
# One program per row: the row starts at `row * stride_x`. Padding columns load as `-inf`, so they neither
# win the max nor add to the sum ($e^{-\infty} = 0$); subtracting the max keeps `tl.exp` finite; the upcast
# makes a bf16 row compute in fp32, and the store rounds once to `out`'s dtype.

# %%
@triton.jit
def row_softmax_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    valid = cols < n_cols
    logits = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=-float("inf")).to(tl.float32)
    shifted = logits - tl.max(logits, axis=0)  # <= 0 everywhere: exp cannot overflow
    numerator = tl.exp(shifted)
    softmax = numerator / tl.sum(numerator, axis=0)
    tl.store(out_ptr + row * stride_out + cols, softmax, mask=valid)


check_row_softmax(row_softmax_kernel)

# %% [markdown]
# Loading the padding as 0 (the default `other`) lets every padding column add $e^{0 - \max}$ to the sum:
# the rows of a ragged case no longer add up to one.

# %%
@triton.jit
def row_softmax_zero_padding(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    cols = tl.arange(0, BLOCK_N)
    logits = tl.load(x_ptr + tl.program_id(0) * stride_x + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    numerator = tl.exp(logits - tl.max(logits, axis=0))
    tl.store(out_ptr + tl.program_id(0) * stride_out + cols, numerator / tl.sum(numerator, axis=0),
             mask=cols < n_cols)


check_row_softmax(row_softmax_zero_padding)
