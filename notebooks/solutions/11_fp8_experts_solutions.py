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
# # Solutions · 11 FP8 experts
#
# Worked solutions to the exercises and the puzzle at the end of [11 · FP8 experts](../11_fp8_experts.ipynb).
# Each solution goes through the same check as in the notebook, so each prints `PASS`. After each one, a wrong
# answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.kernels.quant import FP8_MAX, MIN_SCALE, to_e4m3
from moe_lib.teach.exercises import check_e4m3_round, check_quantize_block
from moe_lib.teach.exercises.fp8 import NB11_BLOCK

# %% [markdown]
# ## Exercise 1 — round to e4m3 by hand
#
# `torch.frexp` splits $x = f \cdot 2^p$ with $\tfrac12 \le |f| < 1$, so the binade of $|x|$ is $e = p - 1$ —
# exactly, where `floor(log2(x))` can be off by one just below a power of two. The step is $2^{e-3}$, never
# finer than the subnormals' $2^{-9}$; `torch.round` rounds a tie to the even integer, which on the grid is the
# neighbour whose last mantissa bit is 0. The clamp comes last: a value just above 448 rounds to 448 or 480, and
# 480 does not exist.

# %%
def e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the float8_e4m3fn grid (nearest, ties to even, saturating at ±448), in fp32."""
    exponent = (torch.frexp(x.float())[1] - 1).clamp(min=-6)  # the binade [2^e, 2^(e+1)); subnormals share e = -6
    step = torch.pow(2.0, (exponent - 3).float())  # 8 values per binade
    return (torch.round(x.float() / step) * step).clamp(-FP8_MAX, FP8_MAX)


check_e4m3_round(e4m3_round)

# %% [markdown]
# The grid by hand and torch's cast agree on every e4m3 value and on every midpoint between two neighbours —
# the ties:

# %%
grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
grid = grid[grid.isfinite()].unique()  # -448 ... 448, ascending
midpoints = (grid[1:] + grid[:-1]) / 2
print(f"{grid.numel()} distinct values (+0 and -0 are one) and {midpoints.numel()} midpoints:",
      "PASS" if torch.equal(e4m3_round(midpoints), to_e4m3(midpoints).float())
      and torch.equal(e4m3_round(grid), grid) else "FAIL")

# %% [markdown]
# Rounding a tie away from zero, `floor(|x| / step + 0.5)`, looks right and is wrong exactly on the ties:

# %%
def e4m3_round_ties_away(x: torch.Tensor) -> torch.Tensor:
    exponent = (torch.frexp(x.float())[1] - 1).clamp(min=-6)
    step = torch.pow(2.0, (exponent - 3).float())
    rounded = torch.sign(x) * torch.floor(x.abs() / step + 0.5)
    return (rounded * step).clamp(-FP8_MAX, FP8_MAX)


check_e4m3_round(e4m3_round_ties_away)

# %% [markdown]
# ## Exercise 2 — quantize one block by hand
#
# The block's largest magnitude goes to 448: $s = \max|w| / 448$, kept at least `MIN_SCALE` so that an all-zero
# block divides 0 by a positive number. Then divide, clamp (a no-op here, since $|w| / s \le 448$, but the cast
# saturates only after a clamp) and cast.

# %%
def quantize_block(block: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(q, scale) of one block: scale = max(amax / 448, MIN_SCALE), q = e4m3(block / scale)."""
    scale = torch.clamp(block.abs().max() / FP8_MAX, min=MIN_SCALE)
    q = (block / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.item()


check_quantize_block(quantize_block)

# %% [markdown]
# The notebook's block, read back: every weight within $\tfrac{1}{16}$ of itself, the largest one exact.

# %%
q, scale = quantize_block(NB11_BLOCK)
print(f"scale = {NB11_BLOCK.abs().max().item():g} / 448 = {scale:.6g}")
print("q        =", q.float())
print("q * scale =", q.float() * scale)
print("relative error:", ((q.float() * scale - NB11_BLOCK).abs() / NB11_BLOCK.abs()).max().item() <= 1 / 16)

# %% [markdown]
# Without the floor on the scale, an all-zero block computes $0 / 0$:

# %%
def quantize_block_no_floor(block: torch.Tensor) -> tuple[torch.Tensor, float]:
    scale = block.abs().max() / FP8_MAX
    return (block / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale.item()


check_quantize_block(quantize_block_no_floor)

# %% [markdown]
# ## Puzzle 1 — dequantize in an epilogue
#
# The K loop is an ordinary fp32 GEMM on the e4m3 values (upcast right after the loads, so that the interpreter
# computes them exactly; on a GPU `tl.dot` of two fp8 tiles runs on the FP8 tensor cores). The scales depend
# only on the row and the column, so they multiply the finished accumulator once: a column vector of `a_scale`
# and a row vector of `b_scale`.

# %%
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_fp8_matmul_epilogue


@triton.jit
def raw_product(a_ptr, b_ptr, rows, cols, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32: sum over k of a[rows, k] * b[k, cols], the e4m3 values as they are."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(rows < M)[:, None] & (ks < K)[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=(ks < K)[:, None] & (cols < N)[None, :], other=0.0)
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def fp8_matmul_kernel(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K,
                      stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = raw_product(a_ptr, b_ptr, rows, cols, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                      BLOCK_M, BLOCK_N, BLOCK_K)
    # the epilogue: one scale per row of A, one per column of B, applied once
    a_s = tl.load(a_scale_ptr + rows, mask=rows < M, other=0.0)
    b_s = tl.load(b_scale_ptr + cols, mask=cols < N, other=0.0)
    acc = acc * a_s[:, None] * b_s[None, :]
    tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn, acc,
             mask=(rows < M)[:, None] & (cols < N)[None, :])


check_fp8_matmul_epilogue(fp8_matmul_kernel)

# %% [markdown]
# Multiplying the accumulator by the scales inside the loop — `acc = tl.dot(a, b, acc) * scale` — scales the
# first K steps again at every later step. (Scaling each step's own product, `acc += tl.dot(a, b) * scale`, would
# be right but wasteful: one multiply per K step instead of one per tile. The per-block kernel must do exactly
# that, because its scales change from step to step.)

# %%
@triton.jit
def fp8_matmul_rescales_every_step(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K,
                                   stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    scale = (tl.load(a_scale_ptr + rows, mask=rows < M, other=0.0)[:, None]
             * tl.load(b_scale_ptr + cols, mask=cols < N, other=0.0)[None, :])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(rows < M)[:, None] & (ks < K)[None, :], other=0.0)
        b = tl.load(b_ptr + ks[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=(ks < K)[:, None] & (cols < N)[None, :], other=0.0)
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee") * scale
    tl.store(c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn, acc,
             mask=(rows < M)[:, None] & (cols < N)[None, :])


check_fp8_matmul_epilogue(fp8_matmul_rescales_every_step)
