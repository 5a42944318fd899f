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
# # 02 · A Triton primer: programs, blocks, masks, and a tiny matmul
#
# Three of the next notebooks read a Triton kernel: the routing kernel (03), the alignment kernels (05) and
# the fused-MoE kernel (06), vLLM's grouped GEMM. Triton is a Python dialect for GPU kernels: you write what
# **one program** does to **blocks** of elements, launch a **grid** of programs, and the compiler spreads
# each block over the GPU's threads.

# %% [markdown] slideshow={"slide_type": "notes"}
# This notebook teaches the pieces those kernels are made of, each with a
# tiny kernel of its own, a check against torch (one `PASS` line) and a **picture of which elements each
# program reads and writes**:
#
# programs and `tl.program_id` · blocks with `tl.arange` · masks · `tl.load` / `tl.store` with `other` ·
# pointers and strides · `tl.constexpr` · `tl.dot` with an fp32 accumulator · the interpreter, its bf16
# caveat, and debugging with `print`.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch
import triton
import triton.language as tl

from moe_lib import runtime
from moe_lib.kernels.fused_moe import fused_moe_kernel
from moe_lib.teach import source_text, viz
from moe_lib.testing import randn, seeded, verdict

device = runtime.default_device()
torch.set_printoptions(precision=3, sci_mode=False)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Programs and `tl.program_id`
#
# A kernel is a Python function under `@triton.jit`. Launching it as `kernel[grid](args)` runs it once per
# **program** of the grid; `tl.program_id(0)` tells a program which one it is. Arguments that are tensors
# arrive as **pointers** to their first element. The smallest kernel: every program stores its own id.

# %% slideshow={"slide_type": "-"}
@triton.jit
def whoami_kernel(out_ptr):
    pid = tl.program_id(0)  # 0, 1, ..., grid - 1
    tl.store(out_ptr + pid, pid)  # pointer + offset: element pid of out


ids = torch.full((8,), -1, dtype=torch.int32, device=device)
whoami_kernel[(8,)](ids)  # a grid of 8 programs
print(ids.tolist())
print(verdict("program ids vs torch.arange(8)", ids.float(), torch.arange(8.0, device=device)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# That tensor already is a **program map**: for every element, the program that wrote it. Such maps are
# what the pictures of this notebook draw, one square per element, one colour per program:

# %% slideshow={"slide_type": "-"} alt="Program map of an 8-element tensor: one coloured square per element, element p written by program p of the 8-program grid."
viz.program_map({"ids (written)": ids}, title="whoami_kernel[(8,)]: program p writes element p")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Blocks with `tl.arange`
#
# One element per program wastes the hardware: a program runs on a whole group of threads. A Triton
# program works on a **block**: `tl.arange(0, BLOCK)` is the vector $0, 1, \dots, \text{BLOCK}-1$, and
# program `pid` takes the elements `pid * BLOCK + tl.arange(0, BLOCK)`. Every operation then acts on the
# whole block at once — here, adding two vectors of $n = 32$ elements with 4 programs of 8:

# %% slideshow={"slide_type": "-"}
@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) this program's offsets
    x = tl.load(x_ptr + offs)  # (BLOCK,) a vector of pointers in, a vector of values out
    y = tl.load(y_ptr + offs)
    tl.store(out_ptr + offs, x + y)


n, BLOCK = 32, 8
x, y = randn(n, generator=seeded(0), device=device), randn(n, generator=seeded(1), device=device)
out = torch.empty(n, device=device)
add_kernel[(n // BLOCK,)](x, y, out, BLOCK=BLOCK)
print(verdict("add_kernel vs x + y", out, x + y))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Which program wrote which element? `viz.record_programs` *measures* it: it launches the kernel on the
# first $p + 1$ programs only, for $p = 0, 1, \dots$, each time on an output filled with NaN — what stops
# being NaN at step $p$, program $p$ wrote. `viz.record_reads` finds the reads: it sets one input element
# to NaN and sees whose output turns NaN. By hand, program `pid` owns `pid * BLOCK` … `pid * BLOCK + 7`:

# %% slideshow={"slide_type": "-"} alt="Two program maps, x read and out written: each program reads and writes one contiguous block of BLOCK elements, the same blocks in both tensors."
def launch_add(grid):
    add_kernel[grid](x, y, out, BLOCK=BLOCK)


wrote = viz.record_programs(launch_add, out, n // BLOCK)  # (n,) program id per element
read = viz.record_reads(launch_add, x, out, n // BLOCK)
by_hand = torch.arange(n) // BLOCK
print(verdict("who wrote out, measured vs arange(n) // BLOCK", wrote.float(), by_hand.float()))
print(verdict("who read x, measured vs arange(n) // BLOCK", read.float(), by_hand.float()))
viz.program_map({"x (read)": read, "out (written)": wrote}, grid=n // BLOCK)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Masks: sizes that are not a multiple of the block
#
# Real sizes are ragged: $M$ tokens, $H$ or $I$ features. With $n = 20$ and `BLOCK` = 8 the grid needs
# `triton.cdiv(20, 8)` = 3 programs, and the last one's offsets run to 23. A **mask** — a boolean block,
# `offs < n` — switches off the lanes past the end: a masked load reads nothing, a masked store writes
# nothing. The offsets and mask of program 2, computed the way the kernel does:

# %% slideshow={"slide_type": "-"}
n = 20
offs = 2 * BLOCK + torch.arange(BLOCK)
print("offs:", offs.tolist(), "\nmask:", (offs < n).int().tolist())


@triton.jit
def masked_add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n  # (BLOCK,) True for the lanes that hold an element
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)


x, y = randn(n, generator=seeded(2), device=device), randn(n, generator=seeded(3), device=device)
buf = torch.zeros(n + 4, device=device)  # out is the first n elements; 4 more follow it in memory
out = buf[:n]
grid = triton.cdiv(n, BLOCK)
masked_add_kernel[(grid,)](x, y, out, n, BLOCK=BLOCK)
print(verdict("masked_add_kernel vs x + y", out, x + y))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The picture shows `buf`, so the four elements after `out` are in it too: nobody wrote them. Without the
# mask, program 2 would have stored into them — memory that belongs to someone else (section 8 finds such
# a bug).

# %% slideshow={"slide_type": "-"} alt="Program map of buf, out plus four extra elements: the last program's masked lanes leave the four elements after out unwritten."
wrote = viz.record_programs(lambda g: masked_add_kernel[g](x, y, buf, n, BLOCK=BLOCK), buf, grid)
viz.program_map({"buf = out + 4 more elements (written)": wrote}, grid=grid)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. `tl.load` and `tl.store`: `mask` and `other`
#
# A masked-off lane of `tl.load` still yields a value: `other` (undefined if not given). It must be the
# **neutral element** of what follows. A kernel that takes the maximum of each block loads with
# `other=-inf`; with `other=0.0` a block of negative numbers whose tail is masked gets 0 as its maximum.
# One switch, `OTHER`, picks which:

# %% slideshow={"slide_type": "-"}
@triton.jit
def block_max_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, OTHER: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=OTHER)  # masked lanes hold OTHER
    tl.store(out_ptr + pid, tl.max(x, axis=0))  # one value per program


x = -randn(n, generator=seeded(4), device=device).abs() - 0.1  # all negative
ref = torch.stack([x[i : i + BLOCK].max() for i in range(0, n, BLOCK)])
maxima = torch.empty(grid, device=device)
for other in (float("-inf"), 0.0):
    block_max_kernel[(grid,)](x, maxima, n, BLOCK=BLOCK, OTHER=other)
    print(f"other={other:>5}:", maxima.tolist(), verdict("vs torch", maxima, ref).split(":")[0])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each program reads a block of `x` and writes **one** element: reads and writes need not have the same
# shape. The masked-off lanes read nothing. (`tl.max` ignores NaN, so `record_reads` poisons with +inf
# here.)

# %% slideshow={"slide_type": "-"} alt="Program maps of a block maximum: each program reads a whole block of x and writes a single element of maxima; masked-off lanes read nothing."
def launch_max(g):
    block_max_kernel[g](x, maxima, n, BLOCK=BLOCK, OTHER=float("-inf"))


viz.program_map({"x (read)": viz.record_reads(launch_max, x, maxima, grid, poison=float("inf")),
                 "maxima (written)": viz.record_programs(launch_max, maxima, grid)}, grid=grid)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Pointers and strides: a 2-D tile of a transposed tensor
#
# A 2-D tensor is one run of memory; element $(r, c)$ sits at `ptr + r * stride_r + c * stride_c`. A kernel
# takes the strides as arguments and never assumes a layout. With `tl.arange` on both axes,
# `rows[:, None] * stride_r + cols[None, :] * stride_c` is a whole **tile** of pointers (broadcasting, as in
# numpy), and the mask is 2-D as well.

# %% [markdown] slideshow={"slide_type": "notes"}
# Here a 2-D grid of programs copies `x` — a **transposed view** of a
# $7 \times 10$ tensor, strides $(1, 10)$ — into a contiguous `out`, one $4 \times 4$ tile per program:

# %% slideshow={"slide_type": "-"}
@triton.jit
def copy_tile_kernel(x_ptr, out_ptr, R, C, stride_xr, stride_xc, stride_or, stride_oc,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    mask = (rows[:, None] < R) & (cols[None, :] < C)  # (BLOCK_R, BLOCK_C)
    tile = tl.load(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask)
    tl.store(out_ptr + rows[:, None] * stride_or + cols[None, :] * stride_oc, tile, mask=mask)


base = torch.arange(70.0, device=device).view(7, 10)  # each element holds its own memory offset
x = base.t()  # (10, 7), strides (1, 10): no copy, just other strides
out = torch.empty(10, 7, device=device)
grid2 = (triton.cdiv(10, 4), triton.cdiv(7, 4))  # (3, 2) programs


def launch_copy(g):
    copy_tile_kernel[g](x, out, 10, 7, *x.stride(), *out.stride(), BLOCK_R=4, BLOCK_C=4)


launch_copy(grid2)
print("x.stride() =", x.stride(), " out.stride() =", out.stride())
print(verdict("copy_tile_kernel vs x.contiguous()", out, x.contiguous()))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Because every element of `base` holds its own offset in memory, `out` now says where each of its elements
# was read from — so the picture of the reads, over `base`'s memory, comes for free. Program $(i, j)$ writes
# a $4 \times 4$ tile of `out` and reads the **transposed** tile of `base`; the masks cut the tiles at the
# edges:

# %% slideshow={"slide_type": "-"} alt="Two program maps for a transposing copy: each program writes a 4 by 4 tile of out and reads the transposed tile of base, with the tiles cut at the edges by masks."
wrote = viz.record_programs(launch_copy, out, grid2)  # (10, 7), flat program id i * 2 + j
read = torch.full((7, 10), -1, dtype=torch.int64)
read.view(-1)[out.long().view(-1).cpu()] = wrote.view(-1)  # out[r, c] came from offset out[r, c]
print(verdict("reads found through the offsets = record_reads", read.float(),
              viz.record_reads(launch_copy, base, out, grid2).float()))
viz.program_map({"base, 7 × 10 in memory (read)": read, "out = x.contiguous(), 10 × 7 (written)": wrote},
                grid=grid2)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. `tl.constexpr`: compile-time values
#
# Arguments annotated `tl.constexpr` are known when the kernel is compiled: block sizes (a block's shape
# must be a power of two, fixed at compile time), and **switches** like `OTHER` above, whose `if` is
# resolved before the kernel runs. On a GPU each new value compiles — and caches — a new binary, so they
# should take few values; plain arguments like `n` change freely. The rules are enforced:

# %% slideshow={"slide_type": "-"}
@triton.jit
def arange_kernel(out_ptr, n, BLOCK: tl.constexpr, USE_N: tl.constexpr):
    offs = tl.arange(0, n) if USE_N else tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, offs)


scratch = torch.zeros(8, dtype=torch.int32, device=device)
for n_arg, block, use_n in ((8, 8, True), (6, 6, False)):
    try:
        arange_kernel[(1,)](scratch, n_arg, BLOCK=block, USE_N=use_n)
    except Exception as err:  # the interpreter wraps the compiler's error
        print(f"BLOCK={block}, USE_N={use_n}:", str(err).strip().splitlines()[-1])

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same kernel with another `BLOCK` is another kernel: a different grid, a different map. `BLOCK` is the
# knob that the fused-MoE kernel's tuned configurations turn (`BLOCK_SIZE_M`, `_N`, `_K` in notebook 07):

# %% slideshow={"slide_type": "-"} alt="Program maps of the same masked add with BLOCK 4 and BLOCK 16: the larger block gives fewer, longer blocks of elements per program."
x, y = randn(n, generator=seeded(5), device=device), randn(n, generator=seeded(6), device=device)
out, maps = torch.empty(n, device=device), {}
for block in (4, 16):
    g = triton.cdiv(n, block)
    maps[f"BLOCK = {block}: {g} programs"] = viz.record_programs(
        lambda gr, b=block: masked_add_kernel[gr](x, y, out, n, BLOCK=b), out, g)
    print(verdict(f"masked_add_kernel, BLOCK={block:2} vs x + y", out, x + y))
viz.program_map(maps, num_programs=5)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7. `tl.dot`: a tiny tiled matmul, accumulated in fp32
#
# `tl.dot(a, b)` multiplies two tiles. A matmul $C = AB$ gives each program one `BLOCK_M` × `BLOCK_N` tile
# of $C$ and loops over $K$ in steps of `BLOCK_K`, adding each product into an **fp32 accumulator**
# (`tl.zeros(..., tl.float32)`); only the finished tile is cast to the output's dtype. This is the core of
# the fused-MoE kernel (notebook 06), without the gather and the experts:

# %% slideshow={"slide_type": "-"}
@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                  stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of A and C
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns of B and C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # the K loop
        rk = k0 + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak,
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)  # 0: adds nothing
        b = tl.load(b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)  # (BLOCK_M, BLOCK_N), fp32
    c = acc.to(c_ptr.dtype.element_ty)  # cast once, at the end
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, c,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


M, N, K, BM, BN, BK = 24, 20, 40, 16, 16, 16
a, b = randn(M, K, generator=seeded(7), device=device), randn(K, N, generator=seeded(8), device=device)
c = torch.empty(M, N, device=device)
grid_mm = (triton.cdiv(M, BM), triton.cdiv(N, BN))  # (2, 2)


def launch_mm(g, a=a, b=b, c=c):
    matmul_kernel[g](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(), BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK)


launch_mm(grid_mm)
print(verdict("matmul_kernel vs torch (fp64)", c, a.double() @ b.double()))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Program $(i, j)$ reads the **row block** $i$ of $A$ and the **column block** $j$ of $B$, all of $K$, in
# `cdiv(K, BLOCK_K)` = 3 steps. To check that program (1, 0) reads nothing else, fill $A$ and $B$ with NaN
# everywhere else: its tile of $C$ must still come out right (the other programs' tiles turn NaN):

# %% slideshow={"slide_type": "-"} alt="Program maps of a tiled matrix multiply: program (1, 0) reads row block 1 of A and column block 0 of B and writes one tile of C."
p_i, p_j = 1, 0
a_nan, b_nan = torch.full_like(a, float("nan")), torch.full_like(b, float("nan"))
a_nan[p_i * BM : (p_i + 1) * BM] = a[p_i * BM : (p_i + 1) * BM]
b_nan[:, p_j * BN : (p_j + 1) * BN] = b[:, p_j * BN : (p_j + 1) * BN]
c_nan = torch.empty_like(c)
with runtime.quiet_interpreter():  # numpy would warn about the NaNs
    launch_mm(grid_mm, a=a_nan, b=b_nan, c=c_nan)
tile = (slice(p_i * BM, (p_i + 1) * BM), slice(p_j * BN, (p_j + 1) * BN))
print(verdict(f"program ({p_i}, {p_j})'s tile from its row and column blocks alone", c_nan[tile], c[tile]))
wrote = viz.record_programs(launch_mm, c, grid_mm)
pid = p_i * grid_mm[1] + p_j
reads_a = torch.where(~torch.isnan(a_nan), pid, -1).cpu()  # (M, K) what program (1, 0) reads of A
reads_b = torch.where(~torch.isnan(b_nan), pid, -1).cpu()  # (K, N) ... and of B
viz.program_map({f"A, {M} × {K}: what program (1, 0) reads": reads_a,
                 f"B, {K} × {N}: what program (1, 0) reads": reads_b, f"C, {M} × {N} (written)": wrote}, grid=grid_mm)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Why accumulate in fp32? Each step adds a partial product to a running sum. Rounded to bf16 after every
# step — 8 bits of mantissa — the sum loses digits that fp32 keeps. The same K loop in torch, for one
# output row with $K = 4096$:

# %% slideshow={"slide_type": "-"}
a_row, b_mat = randn(1, 4096, generator=seeded(9)).bfloat16(), randn(4096, 64, generator=seeded(10)).bfloat16()
exact = a_row.double() @ b_mat.double()
acc16, acc32 = torch.zeros(1, 64, dtype=torch.bfloat16), torch.zeros(1, 64)
for k0 in range(0, 4096, 16):  # BLOCK_K = 16: 256 steps
    part = a_row[:, k0 : k0 + 16].float() @ b_mat[k0 : k0 + 16].float()
    acc16, acc32 = (acc16.float() + part).bfloat16(), acc32 + part
for name, acc in (("bf16 accumulator", acc16), ("fp32 accumulator", acc32)):
    print(f"{name}: relative error {((acc.double() - exact).norm() / exact.norm()).item():.1e}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 8. The interpreter: why it runs here, its bf16 caveat, and debugging
#
# No GPU here, so `import moe_lib` set `TRITON_INTERPRET=1` before any kernel was defined. Triton then
# **interprets** a kernel instead of compiling it: it runs the Python body once per program, one program
# after the other, with every block a numpy array. Slow, but the same source, so the same answers — with
# one exception.

# %% slideshow={"slide_type": "-"}
print("TRITON_INTERPRET:", runtime.INTERPRET, "| kernels run:", runtime.environment_report()["kernels run"])

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The bf16 caveat
#
# numpy has no bfloat16. The interpreter keeps a bf16 block as its raw 16-bit patterns (`uint16`), and
# `tl.dot` then multiplies those **integers**. Upcasting the tiles to fp32 before `tl.dot` avoids it; that is
# what the `COMPUTE_FP32` constexpr of `moe_lib`'s fused-MoE kernel does, switched on in the interpreter:

# %% slideshow={"slide_type": "-"}
@triton.jit
def dot_tile_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr, COMPUTE_FP32: tl.constexpr):
    r = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + r[:, None] * BLOCK + r[None, :])  # (BLOCK, BLOCK), bf16
    b = tl.load(b_ptr + r[:, None] * BLOCK + r[None, :])
    if COMPUTE_FP32:
        a, b = a.to(tl.float32), b.to(tl.float32)
    tl.store(c_ptr + r[:, None] * BLOCK + r[None, :], tl.dot(a, b))


a16 = randn(16, 16, generator=seeded(11), dtype=torch.bfloat16, device=device)
b16 = randn(16, 16, generator=seeded(12), dtype=torch.bfloat16, device=device)
exact = a16.double() @ b16.double()
for fp32 in (True, False):
    c16 = torch.empty(16, 16, device=device)
    dot_tile_kernel[(1,)](a16, b16, c16, BLOCK=16, COMPUTE_FP32=fp32)
    print(f"COMPUTE_FP32={fp32!s:5}: relative error {((c16.double() - exact).norm() / exact.norm()).item():.1e}")
if runtime.INTERPRET:  # the last result (COMPUTE_FP32=False), explained
    bits = lambda t: (t.view(torch.int16).int() & 0xFFFF).double()  # the raw 16-bit patterns, 0 ... 65535
    print(verdict("bf16 tl.dot in the interpreter vs a matmul of the bit patterns", c16,
                  (bits(a16) @ bits(b16)).float()))
print("the fused-MoE kernel's switch:",
      [line.strip() for line in source_text(fused_moe_kernel).splitlines() if "COMPUTE_FP32:" in line][0])

# %% [markdown] slideshow={"slide_type": "subslide"}
# On a GPU bf16 `tl.dot` is exact to bf16 rounding, and `COMPUTE_FP32` is off: the tensor cores take bf16.
# So the notebooks compute in fp32 on a CPU, and bf16 is tested on GPUs (`data/README.md`).
#
# ### Debugging: print inside the kernel
#
# Because the interpreter runs the body as Python, a plain `print` inside a kernel prints each program's
# values; `tl.device_print` does the same and also works compiled on a GPU.

# %% [markdown] slideshow={"slide_type": "notes"}
# A block-sum kernel with a
# bug — its result is wrong for the last block only:

# %% slideshow={"slide_type": "-"}
@triton.jit
def block_sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, DEBUG: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs <= n  # the bug
    if DEBUG:
        print("pid", pid, "offs", offs)  # plain print: the interpreter runs this line as Python
        tl.device_print("mask", mask)  # prefixed with the program's (x, y, z) id; works compiled too
    tl.store(out_ptr + pid, tl.sum(tl.load(x_ptr + offs, mask=mask, other=0.0), axis=0))


storage = torch.arange(1.0, n + 5, device=device)  # x: its first n elements; 21, 22, ... follow x in memory
x, sums = storage[:n], torch.empty(grid, device=device)
block_sum_kernel[(grid,)](x, sums, n, BLOCK=BLOCK, DEBUG=False)
print(sums.tolist(), "expected", [x[i : i + BLOCK].sum().item() for i in range(0, n, BLOCK)])
block_sum_kernel[(grid,)](x, sums, n, BLOCK=BLOCK, DEBUG=True)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Program 2's mask lets offset 20 through: `offs <= n` should be `offs < n`. The picture of the reads
# shows the stray read of the element after `x` — another tensor's memory on a real system:

# %% slideshow={"slide_type": "-"} alt="Program map of the reads of a buggy block sum: one program reads an element past the end of x, the off-by-one of its mask."
buggy = viz.record_reads(lambda g: block_sum_kernel[g](storage, sums, n, BLOCK=BLOCK, DEBUG=False), storage,
                         sums, grid)
viz.program_map({"storage = x + 4 more elements: read by the buggy kernel": buggy}, grid=grid)

# %% [markdown] slideshow={"slide_type": "subslide"}
# With `offs < n` (the mask of section 3) the sums come out right:

# %% slideshow={"slide_type": "-"}
@triton.jit
def block_sum_fixed_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + tl.program_id(0), tl.sum(tl.load(x_ptr + offs, mask=offs < n, other=0.0), axis=0))


block_sum_fixed_kernel[(grid,)](x, sums, n, BLOCK=BLOCK)
ref = torch.stack([x[i : i + BLOCK].sum() for i in range(0, n, BLOCK)])
print(verdict("block_sum_fixed_kernel vs torch", sums, ref))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Puzzles
#
# The puzzles of this notebook follow: a masked vector operation and a row softmax, each a kernel for you to
# complete, with a check and a picture of what your programs touched.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 1 — a masked vector add
#
# Complete `vector_add_kernel`: `out = x + y` for `n` fp32 values, one block of `BLOCK` values per program
# (sections 1 to 4). The check launches it as the comment shows, on seven cases — one program, four, a ragged
# last block, `n < BLOCK` — each tensor inside a buffer whose guards before and after are poisoned with NaN.

# %% [markdown] slideshow={"slide_type": "notes"}
# It
# reports a store outside `out`, an element left unwritten or a wrong value, draws which program wrote each
# element, and names the likely mistake. Until the body does something it says *not solved yet*.

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.puzzles import check_row_softmax, check_vector_add


@triton.jit
def vector_add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    pass  # your code here


# launched as  vector_add_kernel[(triton.cdiv(n, BLOCK),)](x, y, out, n, BLOCK=BLOCK)
check_vector_add(vector_add_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 2 — a row softmax
#
# Complete `row_softmax_kernel`: one program per row of `x` (`n_rows` × `n_cols`), writing that row's softmax
# into `out`. Rows are `stride_x` (`stride_out`) elements apart — more than `n_cols`: the check leaves poisoned
# gaps between rows, so step with the stride (section 5). Subtract the row's max before `tl.exp`, load the
# padding columns as `-inf`, and compute in fp32 — the last case is bf16 (section 8's caveat).

# %% slideshow={"slide_type": "-"}
@triton.jit
def row_softmax_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    pass  # your code here


# launched as  row_softmax_kernel[(n_rows,)](x, out, n_cols, x.stride(0), out.stride(0),
#                                            BLOCK_N=triton.next_power_of_2(n_cols))
check_row_softmax(row_softmax_kernel)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * A kernel runs once per **program** of a launch grid; `tl.program_id(axis)` says which one. Tensors arrive
#   as pointers to their first element.
# * A program works on **blocks**: `tl.arange(0, BLOCK)` offsets, a power of two known at compile time.
# * **Masks** (`offs < n`) make ragged sizes safe: masked loads read nothing and yield `other` — the
#   neutral element of what follows (0 for a sum, −inf for a max) — and masked stores write nothing.

# %% [markdown] slideshow={"slide_type": "notes"}
# * Element $(r, c)$ is at `ptr + r * stride_r + c * stride_c`; broadcasting `rows[:, None]` against
#   `cols[None, :]` makes a 2-D tile of pointers, for any layout, transposed views included.
# * `tl.constexpr` arguments are compile-time: block sizes and switches; each value is its own binary.
# * A matmul gives each program a tile of $C$, loops over $K$ with `tl.dot`, and accumulates in fp32.
# * Without a GPU the interpreter runs each program with numpy; its bf16 `tl.dot` multiplies bit patterns,
#   so `moe_lib` upcasts there (`COMPUTE_FP32`). `print` inside a kernel shows each program's values.
#
# **Next — [03 · top-k routing](03_routing.ipynb):** from the gate's logits to a choice of $k$ experts and
# their weights — softmax in fp32, top-$k$, renormalization, ties, NaNs — and a Triton kernel that does it
# all in one pass, built from the pieces of this notebook.
