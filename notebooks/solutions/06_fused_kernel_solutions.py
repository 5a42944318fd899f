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
# # Solutions · 06 the fused kernel
#
# Worked solutions to the exercises at the end of [06 · the fused kernel](../06_fused_kernel.ipynb). Each
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

# %% [markdown]
# ## Puzzle 1 — one MoE tile
#
# The kernel puzzles go through the same `moe_lib.teach.puzzles` check as in the notebook. The product is a
# helper (a `@triton.jit` function called from the kernel), because Puzzle 3 needs it again. The tile's rows
# are flat ids; A's row is the token `f // TOP_K`; padding slots (`f >= num_valid`) neither load nor store.
# B's tile is read as (`BLOCK_K`, `BLOCK_N`) through its strides — the transpose costs nothing. Both tiles are
# upcast before `tl.dot` (exact in fp32, and right in the interpreter for bf16 inputs).

# %%
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_grouped_gemm, check_moe_tile, check_silu_mul_epilogue


@triton.jit
def expert_tile(a_ptr, b_ptr, flat_ids, real, expert, n_offs, N, K, stride_am, stride_ak, stride_be, stride_bn,
                stride_bk, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32: the tokens of the rows flat_ids (the real ones) times columns n_offs of
    expert's weight, transposed."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        k_offs = k_start + tl.arange(0, BLOCK_K)
        a_tile = tl.load(a_ptr + (flat_ids // TOP_K)[:, None] * stride_am + k_offs[None, :] * stride_ak,
                         mask=real[:, None] & (k_offs < K)[None, :], other=0.0)
        b_tile = tl.load(b_ptr + expert * stride_be + k_offs[:, None] * stride_bk + n_offs[None, :] * stride_bn,
                         mask=(k_offs < K)[:, None] & (n_offs < N)[None, :], other=0.0)
        acc = tl.dot(a_tile.to(tl.float32), b_tile.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def moe_tile_kernel(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    flat_ids = tl.load(row_ids_ptr + tl.arange(0, BLOCK_M))
    real = flat_ids < num_valid  # padding slots hold num_valid
    n_offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = expert_tile(a_ptr, b_ptr, flat_ids, real, expert, n_offs, N, K, stride_am, stride_ak, stride_be,
                      stride_bn, stride_bk, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(c_ptr + flat_ids[:, None] * stride_cm + n_offs[None, :] * stride_cn, acc,
             mask=real[:, None] & (n_offs < N)[None, :])


check_moe_tile(moe_tile_kernel)

# %% [markdown]
# Storing without the row mask writes the padding slots too — to row `num_valid`, one past the end of C:

# %%
@triton.jit
def moe_tile_stores_padding(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                            stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                            TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    flat_ids = tl.load(row_ids_ptr + tl.arange(0, BLOCK_M))
    n_offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = expert_tile(a_ptr, b_ptr, flat_ids, flat_ids < num_valid, expert, n_offs, N, K, stride_am, stride_ak,
                      stride_be, stride_bn, stride_bk, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K)
    tl.store(c_ptr + flat_ids[:, None] * stride_cm + n_offs[None, :] * stride_cn, acc, mask=(n_offs < N)[None, :])


check_moe_tile(moe_tile_stores_padding)

# %% [markdown]
# ## Puzzle 2 — the SiLU·mul epilogue
#
# Up sits `I` columns to the right of gate in the same row, so one tile of pointers serves both loads, with
# one mask. A helper loads the two halves in fp32; the kernel computes and stores, rounding once.

# %%
@triton.jit
def load_halves(gate_up_ptr, M, I, stride_gm, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    """This program's tile of both halves of gate_up, in fp32, with its rows, columns and mask."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    inside = (rows < M)[:, None] & (cols < I)[None, :]
    first_half = gate_up_ptr + rows[:, None] * stride_gm + cols[None, :]
    first = tl.load(first_half, mask=inside, other=0.0).to(tl.float32)
    second = tl.load(first_half + I, mask=inside, other=0.0).to(tl.float32)
    return first, second, rows, cols, inside


@triton.jit
def silu_mul_kernel(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    gate, up, rows, cols, inside = load_halves(gate_up_ptr, M, I, stride_gm, BLOCK_M, BLOCK_I)
    silu = gate * tl.sigmoid(gate)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], silu * up, mask=inside)


check_silu_mul_epilogue(silu_mul_kernel)

# %% [markdown]
# Taking the halves the wrong way round computes `silu(up) * gate` — plausible numbers, all wrong:

# %%
@triton.jit
def silu_mul_swapped(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    up, gate, rows, cols, inside = load_halves(gate_up_ptr, M, I, stride_gm, BLOCK_M, BLOCK_I)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], gate * tl.sigmoid(gate) * up, mask=inside)


check_silu_mul_epilogue(silu_mul_swapped)

# %% [markdown]
# ## Puzzle 3 — the whole grouped GEMM
#
# Puzzle 1's tile on a 2-D grid: the block's rows come from `sorted_token_ids`, its expert from `expert_ids`
# (a block of expert -1 returns at once), and the epilogue multiplies each row by its fp32 routing weight.

# %%
@triton.jit
def grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                        N, K, num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                        stride_cm, stride_cn, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    block = tl.program_id(0)
    expert = tl.load(expert_ids_ptr + block)
    if expert < 0:  # past the padded total: no token here
        return
    flat_ids = tl.load(sorted_token_ids_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    real = flat_ids < num_valid
    n_offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = expert_tile(a_ptr, b_ptr, flat_ids, real, expert, n_offs, N, K, stride_am, stride_ak, stride_be,
                      stride_bn, stride_bk, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K)
    routing_weight = tl.load(topk_weights_ptr + flat_ids, mask=real, other=0.0)  # fp32, by flat id
    tl.store(c_ptr + flat_ids[:, None] * stride_cm + n_offs[None, :] * stride_cn, acc * routing_weight[:, None],
             mask=real[:, None] & (n_offs < N)[None, :])


check_grouped_gemm(grouped_gemm_kernel)

# %% [markdown]
# Taking the block index for the expert (`expert = tl.program_id(0)`) reads weights of experts that do not
# exist — past the end of B, where the check refuses the loads:

# %%
@triton.jit
def grouped_gemm_block_as_expert(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                                 N, K, num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                                 stride_cm, stride_cn, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    flat_ids = tl.load(sorted_token_ids_ptr + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M))
    n_offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = expert_tile(a_ptr, b_ptr, flat_ids, flat_ids < num_valid, tl.program_id(0), n_offs, N, K, stride_am,
                      stride_ak, stride_be, stride_bn, stride_bk, TOP_K, BLOCK_M, BLOCK_N, BLOCK_K)
    acc = acc * tl.load(topk_weights_ptr + flat_ids, mask=flat_ids < num_valid, other=0.0)[:, None]
    tl.store(c_ptr + flat_ids[:, None] * stride_cm + n_offs[None, :] * stride_cn, acc,
             mask=(flat_ids < num_valid)[:, None] & (n_offs < N)[None, :])


check_grouped_gemm(grouped_gemm_block_as_expert)
