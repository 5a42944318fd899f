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

# %% [markdown] slideshow={"slide_type": "slide"}
# # 06 · The fused kernel: from one tile to the whole grid
#
# Alignment (notebook 05) left the $Mk$ (token, slot) rows sorted by expert, in blocks of `BLOCK_M` rows
# that each belong to one expert. Now the arithmetic. `moe_lib.kernels.fused_moe.fused_moe_kernel` is a
# **grouped GEMM**: one launch multiplies every block of rows by its own expert's weights. Its grid has
# one program per output tile — a (row block, column block) pair — and each program

# %% [markdown] slideshow={"slide_type": "notes"}
# 1. reads its block's flat ids from `sorted_token_ids` and **gathers** the matching rows of A;
# 2. picks its expert's weight matrix B through the **expert stride**;
# 3. loops over K, accumulating a `BLOCK_M × BLOCK_N` tile in fp32;
# 4. finishes in the **epilogue** — SiLU-and-mul, or the routing weight — and stores the tile at the
#    rows named by the flat ids.
#
# The layer is two launches of this one kernel and a sum:
#
# ```
#            GEMM1 (gated)                          GEMM2 (× routing weight)             sum over k
# x (M, H) ─────────────────────▶ act (Mk, I) ──────────────────────────▶ partial (Mk, H) ──────────▶ out (M, H)
#   A row = token  t = id // k      silu(x·w1ᵀ)·(x·w3ᵀ)   A row = flat id   w · act·w2ᵀ
# ```
#
# We compute one tile by hand and compare it with what the kernel wrote, follow the weights through the
# expert stride, draw the order in which programs visit the tiles, run the whole flow step by step, and
# verify the result against the fp64 reference and Hugging Face's Mixtral block. The last section shows
# what the kernel does on real GPUs.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import json
import statistics
from pathlib import Path

import torch
import triton
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from moe_lib import runtime
from moe_lib.teach import show_source, viz
from moe_lib.config import TINY
from moe_lib.gate import MoEGate
from moe_lib.kernels.align import moe_align_block_size
from moe_lib.kernels.experts import fused_experts, fused_moe, make_plan
from moe_lib.kernels.fused_moe import grouped_tile, invoke_fused_moe_kernel
from moe_lib.kernels.textbook import textbook_fused_experts, textbook_moe_kernel
from moe_lib.reference import moe_reference, silu_and_mul
from moe_lib.kernels.routing import topk_softmax
from moe_lib.runtime import Target
from moe_lib.testing import randn, rel_err, seeded, tolerance, verdict

torch.set_printoptions(precision=4, sci_mode=False)
device = runtime.default_device()  # where the kernels run: the GPU, or the CPU interpreter

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. The problem and the grid
#
# The small layer of notebook 04 (`TINY`: 8 experts, top-2, $H = 64$, $I = 128$), in fp32, with the same
# weights and gate, and 32 tokens. We fix the kernel's tile configuration by hand, small enough that GEMM1
# has two column blocks and a K loop of two steps:

# %% slideshow={"slide_type": "-"}
E, K, H, I = TINY.num_experts, TINY.top_k, TINY.hidden_size, TINY.intermediate_size
gen = seeded(0)
w13 = randn(E, 2 * I, H, generator=gen, scale=H**-0.5, device=device)  # (E, 2I, H): [w1; w3] per expert
w2 = randn(E, H, I, generator=gen, scale=I**-0.5, device=device)  # (E, H, I)
gate = MoEGate(H, E, generator=seeded(1), device=device)
M = 32
x = randn(M, H, generator=seeded(2), device=device)  # (M, H)
with torch.no_grad():
    topk_weights, topk_ids = topk_softmax(gate(x), K)  # (M, k) fp32, (M, k) int32

config = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1,
          "num_warps": 4, "num_stages": 1}
BM, BN, BK = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]

sorted_token_ids, expert_ids, num_tokens_post_padded = moe_align_block_size(topk_ids, BM, E)
print("rows per expert:", torch.bincount(topk_ids.flatten().cpu(), minlength=E).tolist())
print("expert_ids     :", expert_ids.tolist())
print("num_tokens_post_padded:", num_tokens_post_padded.item(), "of", sorted_token_ids.numel(), "slots")

# %% [markdown] slideshow={"slide_type": "subslide"}
# GEMM1 produces `act`, of width $N = I$ (the kernel pairs each gate column with its up column, section
# 7). The grid is sized from the buffer lengths alone — never from the data — so it covers the worst case:

# %% slideshow={"slide_type": "-"}
EM = sorted_token_ids.numel()  # rows of the (virtual) sorted A: max_len from notebook 05
num_pid_m, num_pid_n = triton.cdiv(EM, BM), triton.cdiv(I, BN)
live = num_tokens_post_padded.item() // BM
print(f"grid: {num_pid_m} row blocks x {num_pid_n} column blocks = {num_pid_m * num_pid_n} programs")
print(f"row blocks in use: {live}; the programs of the other {num_pid_m - live} return at their first check")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Those two checks open the kernel, right after the program has found its tile (section 5 is about that
# mapping): a row block at or past `num_tokens_post_padded` has nothing to do, and a block whose expert is
# −1 — held by another rank, notebook 05 — stores zeros and stops:
#
# ```python
# if pid_m * BLOCK_SIZE_M >= num_tokens_post_padded:
#     return
# ...
# if expert == -1:
#     tl.store(c_ptrs, tl.zeros(...), mask=c_mask)
#     return
# ```

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The kernel on one screen
#
# Before the production kernel's details, the whole idea in one short kernel: `textbook_moe_kernel`
# (`moe_lib.kernels.textbook`). It is what this notebook teaches, with nothing else in it — read it top to
# bottom once, then each section below zooms into one part of it.

# %% slideshow={"slide_type": "subslide"}
show_source(textbook_moe_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Walking through it:
#
# * **The grid** is (row blocks of the sorted ids) × (column blocks of N): `pid_m` picks `BLOCK_M` sorted
#   slots, `pid_n` picks `BLOCK_N` output columns.
# * **The rows** are flat ids `t * top_k + j` read from `sorted_token_ids`; padding slots hold `num_valid`
#   and are masked out (`row_mask`). They become int64 before any pointer arithmetic: $Mk \cdot$ stride
#   passes $2^{31}$ at large $M$.
# * **The expert** of the whole block comes from `expert_ids[pid_m]`; −1 (a block past the last expert's
#   rows) writes nothing.

# %% [markdown] slideshow={"slide_type": "notes"}
# * **A** is gathered: row `flat_id // TOP_K_DIV` (the token in GEMM1, the (token, slot) row in GEMM2).
#   **B** is one expert's slice, reached through `stride_be` and read as $(K, N)$.
# * **The K loop** accumulates in fp32 with masked loads: a ragged K tail reads zeros. In GEMM1 (`GATED`) the
#   same A tile meets the gate and the up rows, two accumulators.
# * **The epilogue** runs in fp32 — SiLU(gate)·up, times the routing weight in GEMM2 — and rounds once.
#
# The host side is four plain steps (`textbook_fused_experts`): align, GEMM1, GEMM2, and a sum over the
# $k$ slots in slot order. Checked against the production path with the same tiles — the same reduction
# order, so the same bits in fp32 — and against the fp64 loop:

# %% slideshow={"slide_type": "-"}
same_tiles = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1, "num_warps": 4,
              "num_stages": 1}
textbook_out = textbook_fused_experts(x, w13, w2, topk_weights, topk_ids, block_m=16, block_n=32, block_k=32)
production_out = fused_experts(x, w13, w2, topk_weights, topk_ids, config=same_tiles)
assert torch.equal(textbook_out, production_out)
print("PASS  textbook kernel == production kernel, bit for bit (fp32, same tiles)")
print(verdict("textbook kernel vs fp64 loop", textbook_out,
              moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The production kernel, `fused_moe_kernel`, computes exactly this. What it adds — each measured and kept
# only because it won on a GPU — is the subject of notebook 07: tensor-descriptor (TMA) tiles for large
# batches, a split last wave, programmatic dependent launch, the sum over $k$ inside GEMM2, a swizzled tile
# order (section 5 here) and a switch for the interpreter's bf16. The sections below run the production
# kernel; every line they discuss has its counterpart above.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. One tile, by hand
#
# First let the kernel run GEMM1 for the whole grid. `invoke_fused_moe_kernel` launches it:
# `a_rows_div=K` says that A holds tokens (flat id $tk + j$ reads row $t$), `gated=True` that B's rows
# hold gate and up halves to combine in the epilogue, and the routing weight is not applied here.

# %% slideshow={"slide_type": "-"}
weights_flat = topk_weights.flatten()  # (M*k,) fp32, indexed by flat id
routing = (weights_flat, sorted_token_ids, expert_ids, num_tokens_post_padded)
act = torch.empty(M * K, I, device=device)  # (M*k, I): one row per (token, slot)
invoke_fused_moe_kernel(x, w13, act, *routing, a_rows_div=K, gated=True, mul_routed_weight=False, config=config)
print("act:", tuple(act.shape), act.dtype)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now pick one program's tile — row block 4, column block 1 — and compute it ourselves, step by step as
# the kernel does. **The rows**: the block's 16 slots of `sorted_token_ids`; padding slots hold
# $Mk = 64$ and are masked (row 64 // 2 = 32 of x does not even exist). Each real slot reads the row of
# its token, `flat_id // top_k`:

# %% slideshow={"slide_type": "-"}
pid_m, pid_n = 4, 1
slots = sorted_token_ids[pid_m * BM:(pid_m + 1) * BM]  # (BM,) flat ids; padding = M*k
row_mask = slots < M * K  # (BM,)
flat_ids = slots[row_mask].long()  # (n,) the real rows of this tile
tokens = flat_ids // K  # (n,) the A rows they read
e = expert_ids[pid_m].item()
print("slots   :", slots.tolist())
print("flat ids:", flat_ids.tolist())
print("tokens  :", tokens.tolist(), "-> expert", e)

# %% [markdown] slideshow={"slide_type": "subslide"}
# **The weights**: all rows of the block share expert `e`, so the tile needs one slice of `w13[e]` — the
# gate rows $[n_0, n_0 + \texttt{BLOCK\_N})$ and the up rows $I$ further down. **The K loop**: walk the
# reduction dimension `BLOCK_K` columns at a time, accumulating both products in fp32. **The epilogue**:
# `silu(gate) * up`, then one store.

# %% slideshow={"slide_type": "-"}
cols = torch.arange(pid_n * BN, (pid_n + 1) * BN, device=device)  # (BN,) output columns of this tile
A = x[tokens]  # (n, H) gathered rows
B_gate, B_up = w13[e, cols], w13[e, I + cols]  # (BN, H) each: gate rows, and the up rows I further down

acc = torch.zeros(len(tokens), BN, dtype=torch.float32, device=device)  # (n, BN)
acc_up = torch.zeros_like(acc)
for k0 in range(0, H, BK):  # H = 64, BLOCK_K = 32: two steps
    a = A[:, k0:k0 + BK]  # (n, BK)
    acc += a @ B_gate[:, k0:k0 + BK].T
    acc_up += a @ B_up[:, k0:k0 + BK].T
tile = acc * torch.sigmoid(acc) * acc_up  # (n, BN): silu(gate) * up, still fp32

print(verdict("tile by hand vs the kernel's act[flat ids, columns]", tile, act[flat_ids][:, cols]))

# %% [markdown] slideshow={"slide_type": "subslide"}
# What this program touched: it **gathered** 10 scattered rows of x, read two slabs of one expert's
# weights, and **scattered** its result to 10 rows of `act` — the rows named by the flat ids, so `act` is
# already in (token, slot) order and nobody has to un-sort it.

# %% slideshow={"slide_type": "-"} alt="Three panels for one program of the fused kernel: the scattered token rows of hidden_states it gathers, the gate and up rows of one expert's w13 it reads, and the 10 scattered rows of act it writes."
viz.fused_tile_gather(flat_ids.cpu(), top_k=K, num_tokens=M, hidden=H, inter=I, expert=e,
                              col_start=pid_n * BN, block_n=BN)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. The expert's weights, through the expert stride
#
# The kernel receives one pointer for all of `w13` and three strides: how far to step in memory for one
# expert, one row ($n$), one column ($k$). The B tile of the program is a `BLOCK_K × BLOCK_N` grid of
# addresses,
#
# ```python
# b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn
# ```
#
# read as $K \times N$ — that is, $B^\top$, ready for `tl.dot(a, b)`. `torch.as_strided` builds exactly that
# view from the same numbers, so we can check the arithmetic:

# %% slideshow={"slide_type": "-"}
stride_be, stride_bn, stride_bk = w13.stride()
print("w13 strides (expert, n, k):", (stride_be, stride_bn, stride_bk))
offset = e * stride_be + pid_n * BN * stride_bn  # the first K step of this tile
b_first = torch.as_strided(w13, (BK, BN), (stride_bk, stride_bn), storage_offset=offset)  # (BK, BN)
b_up_first = torch.as_strided(w13, (BK, BN), (stride_bk, stride_bn), storage_offset=offset + I * stride_bn)
print("pointer arithmetic = w13[e, cols, :BK].T :", torch.equal(b_first, B_gate[:, :BK].T))
print("up half: the same plus I * stride_bn      :", torch.equal(b_up_first, B_up[:, :BK].T))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Because the layout is passed as strides, nothing assumes that `w13` is contiguous. Store the same
# values transposed in memory — $(E, H, 2I)$, viewed as $(E, 2I, H)$ — and the kernel simply walks
# different addresses. (On a GPU the layout decides which loads are contiguous, so it matters for speed;
# it never matters for the result.)

# %% slideshow={"slide_type": "-"}
w13_t = w13.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other memory order
print("w13_t strides:", w13_t.stride())
out_contig = fused_experts(x, w13, w2, topk_weights, topk_ids, config=config)
out_t = fused_experts(x, w13_t, w2, topk_weights, topk_ids, config=config)
print(verdict("fused_experts, w13 stored transposed vs contiguous", out_t, out_contig))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Which program computes which tile: `GROUP_SIZE_M`
#
# The grid is one-dimensional: program `pid` must work out its (row block, column block) itself. The
# obvious order is row-major — all column blocks of row block 0, then row block 1, … — but a GPU runs a
# whole *wave* of programs at once (one or more per multiprocessor, 132 of them on an H100), and in
# row-major order that wave touches a few row blocks of A and *every* column block of B.

# %% [markdown] slideshow={"slide_type": "notes"}
# Grouping
# `GROUP_SIZE_M` row blocks together and walking down them column by column makes the programs in flight
# share B tiles (and A tiles) through the L2 cache. The kernel hands each program's tile index to a small
# helper, `grouped_tile` (the number of row blocks, `num_pid_m`, counts only the blocks that hold tokens):

# %% slideshow={"slide_type": "-"}
show_source(grouped_tile)  # the Python function under the @triton.jit wrapper, highlighted

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same mapping in Python, applied to every program id of a 10 × 6 grid:

# %% slideshow={"slide_type": "-"}
def tile_of(pid: int, num_pid_m: int, num_pid_n: int, group_size_m: int) -> tuple[int, int]:
    """(pid_m, pid_n) of program pid: the kernel's swizzle, line by line."""
    num_pid_in_group = group_size_m * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * group_size_m
    group_rows = min(num_pid_m - first_pid_m, group_size_m)  # the last group may be shorter
    return first_pid_m + (pid % num_pid_in_group) % group_rows, (pid % num_pid_in_group) // group_rows


def program_ids(num_pid_m: int, num_pid_n: int, group_size_m: int) -> torch.Tensor:
    """(num_pid_m, num_pid_n): the id of the program that computes each tile."""
    grid = torch.full((num_pid_m, num_pid_n), -1, dtype=torch.int64)
    for pid in range(num_pid_m * num_pid_n):
        grid[tile_of(pid, num_pid_m, num_pid_n, group_size_m)] = pid
    return grid


maps = {f"GROUP_SIZE_M = {g}": program_ids(10, 6, g) for g in (1, 4)}
for name, grid in maps.items():
    print(f"{name}: every tile computed exactly once:", torch.equal(grid.flatten().sort().values, torch.arange(60)))

# %% slideshow={"slide_type": "subslide"} alt="Two 10 by 6 grids of output tiles numbered by the program that computes each: with GROUP_SIZE_M 1 the programs sweep row by row, with GROUP_SIZE_M 4 they sweep down groups of 4 row blocks."
viz.tile_program_ids(maps, title="Program id of each tile (10 x 6 tiles)")

# %% [markdown] slideshow={"slide_type": "subslide"}
# With `GROUP_SIZE_M = 4`, programs 0–23 fill the first four row blocks column by column; the last group
# has only two row blocks (the `min` in the code). How much does it save? Count the distinct A row blocks
# and B column blocks that each wave of consecutive programs needs, on a grid of 64 × 64 tiles and waves of
# 132 programs:

# %% slideshow={"slide_type": "-"}
def tiles_per_wave(num_pid_m: int, num_pid_n: int, group_size_m: int, wave: int) -> float:
    """Average number of distinct A row blocks + B column blocks that a wave of programs loads."""
    tiles = [tile_of(p, num_pid_m, num_pid_n, group_size_m) for p in range(num_pid_m * num_pid_n)]
    loads = [len({m for m, _ in tiles[s:s + wave]}) + len({n for _, n in tiles[s:s + wave]})
             for s in range(0, len(tiles), wave)]
    return statistics.mean(loads)


for g in (1, 4, 8, 16):
    print(f"GROUP_SIZE_M = {g:2d}: {tiles_per_wave(64, 64, g, 132):5.1f} operand tiles per wave of 132 programs")

# %% [markdown] slideshow={"slide_type": "subslide"}
# In an MoE layer there is a twist: the B tile also depends on the row block's **expert**, so consecutive
# row blocks share B only when they belong to the same expert — when each expert has many blocks, at
# large $M$. That is why the GPU's default configuration uses `GROUP_SIZE_M = 16` only when $M/E > 128$,
# and 1 otherwise.
#
# The order changes *who* computes a tile, never *what* is computed — each tile's arithmetic is the same.
# The kernel's output with `GROUP_SIZE_M = 4` is bit-identical:

# %% slideshow={"slide_type": "-"}
act_g4 = torch.empty_like(act)
invoke_fused_moe_kernel(x, w13, act_g4, *routing, a_rows_div=K, gated=True, mul_routed_weight=False,
                        config={**config, "GROUP_SIZE_M": 4})
print("GEMM1 with GROUP_SIZE_M=4 equals GROUP_SIZE_M=1 bit for bit:", torch.equal(act_g4, act))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. GEMM2: the routing weight in the epilogue
#
# GEMM2 multiplies `act` by the down projection: its A rows are already flat ids (`a_rows_div=1`), its B is
# `w2[e]` $(H, I)$, not gated. With `mul_routed_weight=True` the epilogue multiplies row $tk + j$ of the
# fp32 accumulator by that row's routing weight, before the single rounding to the output dtype:
#
# ```python
# weight = tl.load(topk_weights_ptr + flat_ids, mask=row_mask, other=0.0).to(tl.float32)
# acc = acc * weight[:, None]
# ```

# %% slideshow={"slide_type": "-"}
partial = torch.empty(M * K, H, device=device)  # (M*k, H)
invoke_fused_moe_kernel(act, w2, partial, *routing, a_rows_div=1, gated=False, mul_routed_weight=True, config=config)

row_expert = topk_ids.flatten().long()  # (M*k,) the expert of each flat id
down = torch.bmm(w2[row_expert], act[:, :, None]).squeeze(-1)  # (M*k, H): act row @ its expert's w2.T
print(verdict("GEMM2 by hand (weight * act @ w2[e].T) vs the kernel", weights_flat[:, None] * down, partial))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Why there? The weight scales an expert's *output*. Everything after SiLU is linear, so scaling the GEMM2
# tile is exact — and free: one multiply per element on data already in registers, instead of another
# pass over an $(Mk, H)$ tensor in memory. Before the SiLU it would be wrong; scaling each row's input
# instead changes the answer, because $\mathrm{silu}(w\,g)\cdot(w\,u) \ne w\,\mathrm{silu}(g)\,u$:

# %% slideshow={"slide_type": "-"}
row_token = torch.arange(M * K, device=device) // K  # (M*k,) the token of each flat id
x_scaled = weights_flat[:, None] * x[row_token]  # (M*k, H): each row's input times its weight
gate_up_scaled = torch.bmm(w13[row_expert], x_scaled[:, :, None]).squeeze(-1)  # (M*k, 2I)
wrong = torch.bmm(w2[row_expert], silu_and_mul(gate_up_scaled)[:, :, None]).squeeze(-1)  # (M*k, H)
print(f"weight applied to the input instead: relative difference {rel_err(wrong, partial):.0%}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7. The whole flow, step by step
#
# The two launches above are the whole expert computation but for the last step, the **sum over the k
# slots** of each token. `partial` is in flat-id order, so the $k$ rows of token $t$ are adjacent:

# %% slideshow={"slide_type": "-"}
out_steps = partial.view(M, K, H).sum(dim=1)  # (M, H)
oracle = moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True)  # (M, H) float64
print(verdict("align -> GEMM1 -> GEMM2 -> sum, step by step vs fused_experts", out_steps, out_contig))
print(verdict("step by step vs moe_reference(fp64=True)", out_steps, oracle))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The sum inside GEMM2
#
# For top-2 `fused_experts` skips that last pass: it clears the output first, and GEMM2's epilogue *adds*
# each slot's row into its token's row (`tl.atomic_add`, with `c_rows_div = top_k` mapping flat id
# $t k + j$ to row $t$), saving a write and a read of the $(Mk, H)$ `partial`. The two slots of a token are
# in different experts' blocks, so different programs add them, in whatever order those finish — and
# floating-point addition depends on the order.

# %% [markdown] slideshow={"slide_type": "notes"}
# With **two** terms it cannot show: $0 + a = a$ exactly and
# $a + b = b + a$. With three it can, as bf16 shows with $1 + 2^{-8} + 2^{-8}$ (a tie at $1 + 2^{-8}$ rounds
# back to $1$):

# %% slideshow={"slide_type": "-"}
a, b, c = torch.tensor([1.0, 2.0**-8, 2.0**-8], dtype=torch.bfloat16)
zero = torch.zeros((), dtype=torch.bfloat16)
print("two terms,   both orders:", [((zero + p) + q).item() for p, q in ((a, b), (b, a))])
print("three terms, two orders: ", [(((zero + p) + q) + r).item() for p, q, r in ((a, b, c), (b, c, a))])
print("fused_experts (sum in GEMM2) equals the step-by-step sum bit for bit:", torch.equal(out_contig, out_steps))

# %% [markdown] slideshow={"slide_type": "subslide"}
# So the fused sum is used for `top_k` ≤ 2 only; with more slots the separate pass (a fixed order) stays.
# Where an expert lives on another rank, its slot adds nothing, and the cleared row keeps the right value.
# (The interpreter has no bf16 atomics: there, bf16 keeps the separate pass too.)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Why SiLU-and-mul lives in GEMM1's epilogue
#
# Unfused, GEMM1 would produce the full gate-and-up intermediate, $(Mk, 2I)$, write it to memory, and a
# second kernel would read it back to compute `silu(gate) * up` — vLLM's Triton path works this way, with a
# separate activation kernel between its two GEMM launches.
# The same kernel can do that: launch it with `gated=False` over all $2I$ rows of `w13`:

# %% slideshow={"slide_type": "-"}
gate_up = torch.empty(M * K, 2 * I, device=device)  # (M*k, 2I): the intermediate we avoid
invoke_fused_moe_kernel(x, w13, gate_up, *routing, a_rows_div=K, gated=False, mul_routed_weight=False, config=config)
print(verdict("unfused: silu_and_mul(GEMM1 over 2I columns) vs the gated epilogue", silu_and_mul(gate_up), act))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Fusing works because output column $n$ of `act` needs exactly two GEMM columns — gate $n$ and up
# $n + I$ — of the **same rows**. So one program computes both: it loads each A tile once, feeds it to two
# `tl.dot`s (`b_ptrs` and `b_up_ptrs`, section 4), and combines the two fp32 accumulators in registers.
# The $(Mk, 2I)$ intermediate never goes to memory, and one kernel launch disappears. For Mixtral in bf16:

# %% slideshow={"slide_type": "-"}
I_mix, bf16 = 14336, 2  # Mixtral's intermediate size, bytes per bf16 element
for m in (64, 4096):
    rows = m * K
    saved = 2 * rows * 2 * I_mix * bf16  # the (Mk, 2I) intermediate, written once and read once
    print(f"M = {m:4d}: unfused moves {saved / 1e6:6.1f} MB more, about {saved / 2.97e12 * 1e6:5.1f} µs at 2.97 TB/s")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Both versions write `act` once; the difference is the intermediate. At $M = 4096$ that is ~0.3 ms of memory
# traffic on a layer that takes ~5.6 ms on an H100 in the recorded run (notebook 07) — a few per cent, and free; at small $M$ it
# is negligible next to the weights, but the launch saved still counts there. The price is inside the
# kernel: two accumulators per program, so more registers.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 8. `fused_experts` and `fused_moe`, verified
#
# `fused_experts` is exactly sections 1–6: align, GEMM1, GEMM2, sum — the steps of one **plan**
# (`moe_lib.kernels.experts.make_plan`, taken apart in notebook 07) with a configuration from the tables
# (`moe_lib.kernels.configs`: a tuned table on a GPU when one exists, a heuristic otherwise). A tuned configuration may
# give GEMM2 its own tile sizes under the key `"down"` — GEMM2 has another shape ($N = H$, no gate/up pair) —
# but never its own `BLOCK_SIZE_M`: both GEMMs walk the same aligned blocks.

# %% [markdown] slideshow={"slide_type": "notes"}
# `fused_moe` runs the Triton
# routing first (notebook 03). Both against the fp64 oracle, for several batch sizes:

# %% slideshow={"slide_type": "-"}
lines = []
for m in (1, 7, 64, 300):
    xm = randn(m, H, generator=seeded(100 + m), device=device)  # (m, H) fresh tokens
    with torch.no_grad():
        logits = gate(xm)  # (m, E)
    w_m, ids_m = topk_softmax(logits, K)
    ref = moe_reference(xm, w13, w2, w_m, ids_m, fp64=True)
    lines.append(verdict(f"fused_experts M={m:<3d} vs fp64 oracle", fused_experts(xm, w13, w2, w_m, ids_m), ref))
    lines.append(verdict(f"fused_moe     M={m:<3d} vs fp64 oracle", fused_moe(xm, w13, w2, logits, K), ref))
print("\n".join(lines))

# %% [markdown] slideshow={"slide_type": "subslide"}
# In bf16, Mixtral's dtype, the tolerance is bf16's. (In the CPU interpreter the library upcasts the tiles to
# fp32 before `tl.dot`, because the interpreter computes bf16 products wrongly; on a GPU the tensor cores
# take bf16 directly.) And with an `expert_map`: two ranks holding four experts each, whose partial outputs
# add up to the layer — the blocks of the other rank's experts produce zeros:

# %% slideshow={"slide_type": "-"}
xb, w13b, w2b = x.bfloat16(), w13.bfloat16(), w2.bfloat16()
ref_b = moe_reference(xb, w13b, w2b, topk_weights, topk_ids, fp64=True)
print(verdict("fused_experts bf16 vs fp64 oracle", fused_experts(xb, w13b, w2b, topk_weights, topk_ids), ref_b,
              tol=tolerance(torch.bfloat16)))

ranks = []
for r in range(2):
    local = slice(4 * r, 4 * r + 4)  # rank r holds global experts 4r .. 4r+3
    expert_map = torch.full((E,), -1, dtype=torch.int32)
    expert_map[local] = torch.arange(4, dtype=torch.int32)
    ranks.append(fused_experts(x, w13[local], w2[local], topk_weights, topk_ids, expert_map=expert_map.to(device)))
print(verdict("rank 0 + rank 1 (expert_map) vs fp64 oracle", ranks[0] + ranks[1], oracle))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Finally the independent check: Hugging Face's `MixtralSparseMoeBlock` (transformers 5), which keeps our
# exact layout — `gate.weight` $(E, H)$, `experts.gate_up_proj` $(E, 2I, H)$ = `w13`, `experts.down_proj`
# $(E, H, I)$ = `w2`. Its parameters are created uninitialized, so we copy ours in; its forward takes
# `(batch, seq, H)` and does its own routing.

# %% slideshow={"slide_type": "-"}
hf_config = MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=K,
                          experts_implementation="eager")
block = MixtralSparseMoeBlock(hf_config).eval()
with torch.no_grad():
    block.gate.weight.copy_(gate.weight.cpu())
    block.experts.gate_up_proj.copy_(w13.cpu())
    block.experts.down_proj.copy_(w2.cpu())
    hf_out = block(x.cpu().view(1, M, H)).view(M, H)  # (batch=1, seq=M, H) -> (M, H)
    ours = fused_moe(x, w13, w2, gate(x), K)
print(verdict("fused_moe vs HF MixtralSparseMoeBlock", ours, hf_out))
print(verdict("HF MixtralSparseMoeBlock vs fp64 oracle", hf_out, oracle))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 9. Batch invariance: a token's bits do not depend on its batch
#
# A serving engine batches whatever requests are waiting: the same prompt meets a different batch every
# time. If a token's output depended on its neighbours, greedy decoding would not be reproducible, and a
# request would get different text depending on the traffic around it. vLLM needs a special mode for this
# (its batch-invariant kernels, slower). `moe_lib`'s MoE layer has it by default, and keeps it on purpose:

# %% [markdown] slideshow={"slide_type": "notes"}
# > a token's output row is **bitwise** the same alone (one token: the decode layout, no alignment kernel) and
# > inside a batch of any size — whatever tile, layout (TMA or not), split tail, or tuned-table row the plan
# > picks for that size — and two calls with the same inputs give the same bits.
#
# Why it holds: every decision of the plan moves rows around, never the arithmetic *inside* a row. Each row of
# each GEMM is one reduction over $K$, in $K$ order, in fp32; the routing weight and SiLU are applied per row;
# the $k$-sum adds a token's own $k$ rows in slot order (or, for $k \le 2$, atomically into zero: $0 + a + b$
# rounds the same in either order). Nothing reduces *across* tokens.

# %% slideshow={"slide_type": "subslide"}
# The H200's plan picks very different schedules for different batch sizes (decisions only: nothing runs here)
h200 = Target(interpret=False, name="NVIDIA H200", num_sms=132, capability=(9, 0))  # Mixtral at TP 8 on it
print(f"{'M':>5}  {'layout':<7} {'tiles M x N x K (GEMM1)':<24} {'TMA':<5} {'split tail':<10} k-sum")
for m in (1, 64, 512, 4096):
    p = make_plan(m, 4096, 14336 // 8, 2, 8, dtype=torch.bfloat16, target=h200)
    c = p.gemm1.config
    print(f"{m:>5}  {p.layout:<7} {c['BLOCK_SIZE_M']:>3} x {c['BLOCK_SIZE_N']:>3} x {c['BLOCK_SIZE_K']:<12} "
          f"{str(p.tma):<5} {str(p.gemm1.split_tail):<10} {p.k_sum}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Here, in the interpreter, the tile grows with the batch too (16 rows at 7 tokens, 64 at 130). Each probe
# token alone must equal the same token inside both batches — `torch.equal`, not a tolerance — and a second
# call must repeat the first bit for bit. (On the H200 the same check runs at Mixtral's shapes from 1 to 4096
# tokens, through the tuned tables: `tests/kernels/test_batch_invariance.py`.)

# %% slideshow={"slide_type": "-"}
gen_bi = torch.Generator().manual_seed(0)
H_SMALL, I_SMALL = 64, 96  # a small layer of E experts: the interpreter is slow
tokens = torch.randn(130, H_SMALL, generator=gen_bi)
w13_bi = torch.randn(E, 2 * I_SMALL, H_SMALL, generator=gen_bi) * H_SMALL**-0.5
w2_bi = torch.randn(E, H_SMALL, I_SMALL, generator=gen_bi) * I_SMALL**-0.5
logits_bi = torch.randn(130, E, generator=gen_bi)

same = True
for dtype in (torch.float32, torch.bfloat16):
    xb, a, b, lg = (t.to(dtype) for t in (tokens, w13_bi, w2_bi, logits_bi))
    batches = {m: fused_moe(xb[:m], a, b, lg[:m], K) for m in (7, 130)}
    for tok in (0, 4, 129):
        alone = fused_moe(xb[tok : tok + 1], a, b, lg[tok : tok + 1], K)[0]
        same &= all(torch.equal(alone, out[tok]) for m, out in batches.items() if tok < m)
    same &= torch.equal(fused_moe(xb, a, b, lg, K), batches[130])
print(f"{'PASS' if same else 'FAIL'}  every probe token alone == the same token in batches of 7 and 130 "
      "(fp32, bf16), and a repeated call == the first: bitwise")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **What is not covered**: the router's matmul. `MixtralMoE`'s gate is torch's `linear`, and BLAS (cuBLAS on
# a GPU) picks another kernel for one row than for many, which may round differently in the last bit — so
# a whole layer is batch invariant given the same router logits. On this machine:

# %% slideshow={"slide_type": "-"}
# NBVAL_IGNORE_OUTPUT
gate_w = torch.randn(E, H_SMALL, generator=gen_bi)
one_row = torch.nn.functional.linear(tokens[:1], gate_w)
in_batch = torch.nn.functional.linear(tokens, gate_w)[:1]
print("gate logits of token 0, alone vs in a batch of 130: "
      + ("bitwise equal" if torch.equal(one_row, in_batch) else
         f"differ by up to {(one_row - in_batch).abs().max().item():.1e}"))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The rule for future speed-ups follows: anything that would change a row's arithmetic with the batch —
# split-K, a reduction across tokens, more than two atomic terms per output — may only come as a `make_plan`
# keyword that is off by default (a tripwire test lists every keyword).

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 10. On a GPU
#
# Here the kernels ran in the Triton interpreter, which executes each program with numpy — right answers,
# no speed. On a GPU the same source is compiled. If this machine has one, the next cell checks the kernel
# live on a Mixtral-sized layer (TP = 8: $H = 4096$, $I = 14336/8 = 1792$, bf16) and times it; otherwise it
# says so, and the cells after it show results recorded on GPUs.

# %% [markdown] slideshow={"slide_type": "notes"}
# (The unit tests run there as well, on
# Mixtral's shapes in bf16 and with up to $M = 100\,000$ tokens, where the int64 offsets of section 3
# matter; `data/README.md` records their results.)

# %% slideshow={"slide_type": "-"}
# NBVAL_IGNORE_OUTPUT
if runtime.HAS_CUDA:
    g = torch.Generator(device="cuda").manual_seed(0)
    Hg, Ig, Mg = 4096, 14336 // 8, 256
    xg = torch.randn(Mg, Hg, device="cuda", generator=g).bfloat16()
    w13g = (torch.randn(E, 2 * Ig, Hg, device="cuda", generator=g) * Hg**-0.5).bfloat16()
    w2g = (torch.randn(E, Hg, Ig, device="cuda", generator=g) * Ig**-0.5).bfloat16()
    logits_g = torch.randn(Mg, E, device="cuda", generator=g)
    wg, idsg = topk_softmax(logits_g, K)
    print(runtime.device_name())
    print(verdict(f"fused_moe bf16, M={Mg}, H={Hg}, I={Ig} vs fp64 oracle", fused_moe(xg, w13g, w2g, logits_g, K),
                  moe_reference(xg, w13g, w2g, wg, idsg, fp64=True), tol=tolerance(torch.bfloat16)))
    for _ in range(3):  # compile and warm up
        fused_moe(xg, w13g, w2g, logits_g, K)
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fused_moe(xg, w13g, w2g, logits_g, K)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    print(f"fused_moe: {statistics.median(times):.0f} µs per call, median of 20 eager calls "
          "(launch overheads included; the recorded numbers below replay CUDA graphs)")
else:
    print("No GPU on this machine: the kernels ran in the Triton interpreter. Below: results recorded on GPUs.")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Recorded benchmarks
#
# `python -m moe_lib.perf.bench` times the whole layer — routing, alignment, both GEMMs, the sum — for Mixtral's
# shapes in bf16, at tensor-parallel degrees 1–8 (each rank holds $I/\mathrm{tp}$ of every expert), and
# writes one JSON file per GPU into `data/bench/`. Next to `moe_lib` it times two peers: `grouped_mm`
# (PyTorch's grouped GEMM over expert-sorted rows) and `loop` (one matmul pair per expert, like
# transformers).

# %% [markdown] slideshow={"slide_type": "notes"}
# The *floor* is the time the touched experts' weight bytes take at the card's measured
# copy bandwidth, or the FLOPs at its measured matmul rate, whichever is larger (notebook 04). `data/README.md` records how each file was made (for instance, with tuned or with default configurations).

# %% slideshow={"slide_type": "-"}
REPO = Path(moe_lib.__file__).resolve().parent.parent
# one file per card: NVIDIA_<name>.json (the other files there are notebook 07's and 08's: earlier runs, peers)
bench_files = sorted((REPO / "data" / "bench").glob("NVIDIA_*.json"))
runs = [json.loads(path.read_text()) for path in bench_files]
if not runs:
    print("no recorded benchmarks yet")
for path, run in zip(bench_files, runs):
    c = run["ceilings"]
    print(f"{path.relative_to(REPO)}: {run['gpu']}, torch {run['torch']}, triton {run['triton']}, {run['date']}")
    print(f"  ceilings: copy {c['copy_TBps']:.2f} TB/s, bf16 matmul {c['matmul_TFLOPs']:.0f} TFLOP/s")
    print(f"  method: {run['method']}")

# %% slideshow={"slide_type": "subslide"} alt="Log-log plot of recorded layer latency against tokens for moe_lib, grouped_mm and a per-expert loop, with the weight-bytes or FLOPs floor dashed, at TP 1 and TP 8."
viz.latency_vs_tokens(runs, tps=(1, 8)) if runs else None

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same numbers for a few batch sizes, next to each point's floor (`floor_us`: the floor of the routing the
# benchmark replayed). Notebook 07 derives the floor and sets every kernel against it as a share of it.

# %% slideshow={"slide_type": "-"}
IMPLS = ("moe_lib", "grouped_mm", "loop")
for run in runs:
    print(f"{run['gpu']}: µs per layer call (bf16, E=8, top-2, H=4096)")
    print(f"{'TP':>3} {'M':>5} " + "".join(f"{name:>11}" for name in IMPLS) + f"{'floor':>9}")
    table = {(r["tp"], r["M"], r["impl"]): r for r in run["records"]}
    for tp in (1, 8):
        for m in (1, 16, 256, 4096):
            ours = table.get((tp, m, "moe_lib"))
            if ours is None or ours["us"] is None:
                continue
            cells = [table.get((tp, m, name), {}).get("us") for name in IMPLS]
            row = "".join(f"{c:11.1f}" if c is not None else f"{'-':>11}" for c in cells)
            print(f"{tp:>3} {m:>5} {row}{ours['floor_us']:9.1f}")
    print()

# %% [markdown] slideshow={"slide_type": "subslide"}
# At small $M$ the layer should cost what reading the touched experts' weights costs; at $M = 4096$ it is
# compute-bound and the floor is the FLOPs at peak. Notebook 07 looks at these numbers closely: the roofline,
# the tuned configurations, and how vLLM's kernel compares.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Two short exercises. Each is a function for you to complete, followed in the same cell by a check:
# it runs your function on a few fixed and random cases and compares the result with the library's. It
# shows `PASS`, or the first case that went wrong — the input, what was expected, what your function
# returned — and the likely mistake. Until you write the body, the check says *not solved yet*, and the
# notebook still runs to the end.

# %% [markdown] slideshow={"slide_type": "notes"}
# Worked solutions:
# [solutions/06_fused_kernel_solutions.ipynb](solutions/06_fused_kernel_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_b_offsets, check_tile_a_rows

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — the A rows of a tile
#
# Write `tile_a_rows(sorted_token_ids, pid_m, block_m, top_k, num_valid)`: the row of A — of the tokens
# `x` — that each of the `block_m` rows of row block `pid_m` reads in GEMM1 (section 3), as an integer
# tensor of length `block_m`. A padding slot (a flat id $\ge$ `num_valid`) and a slot past the end of
# `sorted_token_ids` read nothing: mark them $-1$, as the kernel's mask does.

# %% slideshow={"slide_type": "-"}
def tile_a_rows(sorted_token_ids: torch.Tensor, pid_m: int, block_m: int, top_k: int,
                num_valid: int) -> torch.Tensor:
    """(block_m,) the token row each row of block pid_m reads; -1 for padding and out-of-range slots."""
    raise NotImplementedError  # your code here


check_tile_a_rows(tile_a_rows)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — the expert stride
#
# Write `b_offsets(expert, n, k, strides, inter)`: where the kernel finds, counted in elements from the
# start of `w13`'s storage, the gate weight `w13[expert, n, k]` and its up partner `w13[expert, I + n, k]`
# (section 4). `strides` is `(stride_be, stride_bn, stride_bk)`, and `inter` is $I$. Return the two offsets
# as a tuple of ints. The check includes a `w13` stored transposed.

# %% slideshow={"slide_type": "-"}
def b_offsets(expert: int, n: int, k: int, strides: tuple[int, int, int], inter: int) -> tuple[int, int]:
    """Element offsets of w13[expert, n, k] (gate) and w13[expert, inter + n, k] (up)."""
    raise NotImplementedError  # your code here


check_b_offsets(b_offsets)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 1 — one MoE tile
#
# Three kernel puzzles follow the exercises: you write the `@triton.jit` kernel, the check launches it (the
# comment shows how) in the interpreter on fixed and random cases inside poisoned guard buffers, and reports
# stores outside the outputs, elements left unwritten, wrong values — with a picture of which program wrote
# what — and the likely mistake. Until the body does something it says *not solved yet*.

# %% [markdown] slideshow={"slide_type": "notes"}
# Complete `moe_tile_kernel`: one block of `BLOCK_M` aligned rows (`row_ids`, flat ids, padding slots hold
# `num_valid`) times expert `expert`'s weight, `BLOCK_N` columns per program. Row `f` of C is
# `a[f // TOP_K] @ b[expert].T`; rows of other tiles stay untouched. Accumulate `tl.dot` in fp32 over `BLOCK_K`
# steps, upcast bf16 tiles first, mask the K and N tails.

# %% slideshow={"slide_type": "-"}
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_grouped_gemm, check_moe_tile, check_silu_mul_epilogue


@triton.jit
def moe_tile_kernel(a_ptr, b_ptr, c_ptr, row_ids_ptr, expert, num_valid, N, K,
                    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


# launched as  moe_tile_kernel[(triton.cdiv(N, BLOCK_N),)](
#                  a, b, c, row_ids, expert, num_valid, N, K, a.stride(0), a.stride(1),
#                  b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
#                  TOP_K=top_k, BLOCK_M=row_ids.numel(), BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
check_moe_tile(moe_tile_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 2 — the SiLU·mul epilogue
#
# Complete `silu_mul_kernel`: `out = silu(gate) * up` for `gate_up` $(M, 2I)$ — gate in columns $[0, I)$, up in
# $[I, 2I)$ — one (`BLOCK_M`, `BLOCK_I`) tile per program, in fp32 (`tl.sigmoid` takes fp32).

# %% slideshow={"slide_type": "-"}
@triton.jit
def silu_mul_kernel(gate_up_ptr, out_ptr, M, I, stride_gm, stride_om, BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr):
    pass  # your code here


# launched as  silu_mul_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(I, BLOCK_I))](
#                  gate_up, out, M, I, gate_up.stride(0), out.stride(0), BLOCK_M=BLOCK_M, BLOCK_I=BLOCK_I)
check_silu_mul_epilogue(silu_mul_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 3 — the whole grouped GEMM
#
# Complete `grouped_gemm_kernel`: program `(pid_m, pid_n)` computes block `pid_m` of `sorted_token_ids`
# with expert `expert_ids[pid_m]` — Puzzle 1's tile on a 2-D grid — times each row's routing weight
# `topk_weights[f]`. Blocks past the padded total have expert -1 and write nothing.

# %% slideshow={"slide_type": "-"}
@triton.jit
def grouped_gemm_kernel(a_ptr, b_ptr, c_ptr, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                        N, K, num_valid, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                        stride_cm, stride_cn, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


# launched as  grouped_gemm_kernel[(sorted_token_ids.numel() // BLOCK_M, triton.cdiv(N, BLOCK_N))](
#                  a, b, c, topk_weights, sorted_token_ids, expert_ids, N, K, topk_weights.numel(),
#                  a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(2), c.stride(0), c.stride(1),
#                  TOP_K=top_k, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
check_grouped_gemm(grouped_gemm_kernel)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * The fused-MoE kernel is a grouped GEMM: one program per (row block, column block) tile; a row block's
#   flat ids gather the rows of A (`flat_id // top_k` in GEMM1) and its single expert selects B through the
#   expert stride; the K loop accumulates in fp32; the tile is stored at the rows named by the flat ids.
# * Programs past `num_tokens_post_padded` return at once; an expert id of −1 stores zeros.

# %% [markdown] slideshow={"slide_type": "notes"}
# * `GROUP_SIZE_M` reorders programs so that a wave shares operand tiles in L2; it changes the order,
#   never the result.
# * GEMM1's epilogue computes SiLU-and-mul — gate column $n$ and up column $n + I$ share the A tile — so
#   the $(Mk, 2I)$ intermediate never reaches memory; GEMM2's epilogue applies the routing weight.
# * Two launches and a sum over $k$ reproduce the fp64 reference and Hugging Face's Mixtral block.
#
# **Next — [07 · performance](07_performance.ipynb):** the floors, the roofline, tuned configurations, a second
# layout of this same kernel for large batches (tiles fetched by Hopper's copy engine), and how the kernel
# measures up against vLLM and the peers on real GPUs.
