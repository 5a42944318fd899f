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
# # 08 · Tensor parallelism: every GPU holds a slice of every expert
#
# Mixtral 8x7B has 32 MoE layers of 8 experts, $3 \cdot 4096 \cdot 14336$ parameters each: 45 billion
# expert parameters, 90 GB in bf16 — more than one 80 GB GPU holds. Speed argues the same way: at small
# batch sizes a layer costs what *reading its weights* costs (notebook 04's floor), so spreading the
# weights over $tp$ GPUs, each reading $1/tp$ of them at the same time, divides that floor by $tp$.

# %% [markdown] slideshow={"slide_type": "notes"}
# **Tensor parallelism** (TP) is how vLLM splits Mixtral's experts: every rank (one process, one GPU) holds
# **every** expert, but only a $1/tp$ slice of each one's intermediate dimension $I$. Each rank runs the
# very same fused kernel of notebook 06 on its slice and gets a *partial* output; one **all-reduce** — a
# sum over the ranks, left on every rank — turns the partials into the layer's output.
#
# This notebook shows why the cut is made where it is (columns, then rows), draws the shards, checks an
# in-process simulation and then real processes against the single-process layer, counts the bytes the
# all-reduce moves, and plots what NCCL measured on real GPUs.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import json
import time
from pathlib import Path

import torch

from moe_lib.teach import show_source, viz
from moe_lib.config import MIXTRAL_8X7B, MIXTRAL_8X7B_LAYERS, TINY
from moe_lib.gate import MoEGate
from moe_lib.kernels.experts import fused_experts
from moe_lib.parallel import (
    RankError,
    all_reduce_sum,
    faults,
    launch,
    rank_forward,
    ring_all_reduce,
    run_tp,
    shard_w2,
    shard_w13,
    simulate_tp,
)
from moe_lib.parallel.distributed import route
from moe_lib.reference import moe_reference
from moe_lib.testing import randn, rel_err, seeded, verdict

torch.set_printoptions(precision=4, sci_mode=False)
E, K, H, I = TINY.num_experts, TINY.top_k, TINY.hidden_size, TINY.intermediate_size  # 8, 2, 64, 128

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Columns, then rows: one all-reduce per layer
#
# One expert computes $y = W_2\,\big(\mathrm{silu}(W_1 x) \odot W_3 x\big)$ with $W_1, W_3$ of shape
# $(I, H)$ and $W_2$ of shape $(H, I)$. Cut the intermediate dimension $I$ into $tp$ slices $I_0, \dots,
# I_{tp-1}$ and give rank $r$
#
# * the rows $I_r$ of $W_1$ and of $W_3$ — the *output* features of the first GEMM. (Megatron-LM calls this
#   **column-parallel**: in $x W^\top$ these rows are columns.) Rank $r$ can compute its slice of the
#   activation, $h_r = \mathrm{silu}(W_1[I_r]\,x) \odot W_3[I_r]\,x$, **alone**, because SiLU and the
#   product act element by element;

# %% [markdown] slideshow={"slide_type": "notes"}
# * the columns $I_r$ of $W_2$ — the *input* features of the second GEMM (**row-parallel**). Its product
#   $W_2[:, I_r]\,h_r$ is a partial sum, and
#
# $$ y \;=\; W_2\,h \;=\; \sum_{r} W_2[:, I_r]\; h_r . $$
#
# So the ranks never talk until the very end, and then once: the sum. Let us check it on one expert of
# the small `TINY` layer, cut four ways:

# %% slideshow={"slide_type": "-"}
gen = seeded(0)
w13 = randn(E, 2 * I, H, generator=gen, scale=H**-0.5)  # (E, 2I, H): [w1; w3] per expert
w2 = randn(E, H, I, generator=gen, scale=I**-0.5)  # (E, H, I)
x1 = randn(H, generator=seeded(1))  # (H,) one token

w1_e, w3_e, w2_e = w13[0, :I], w13[0, I:], w2[0]  # expert 0: (I, H), (I, H), (H, I)
y = w2_e @ (torch.nn.functional.silu(w1_e @ x1) * (w3_e @ x1))  # (H,) the expert's output

tp = 4
part = I // tp
partials = []
for r in range(tp):
    rows = slice(r * part, (r + 1) * part)  # this rank's slice I_r of the intermediate dimension
    h_r = torch.nn.functional.silu(w1_e[rows] @ x1) * (w3_e[rows] @ x1)  # (I/tp,) computed alone
    partials.append(w2_e[:, rows] @ h_r)  # (H,) a partial sum
print(verdict("sum of the 4 ranks' partial outputs vs the whole expert", sum(partials), y))
print(f"one rank's partial alone is far off: rel err {rel_err(partials[0], y):.1f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Why not cut the other way round — split $H$, the input of the first GEMM? Then $W_1 x =
# \sum_r W_1[:, H_r]\,x_{H_r}$ is itself a partial sum, and the ranks would have to add their pieces
# **before** the SiLU, since the SiLU of a sum is not the sum of the SiLUs:

# %% slideshow={"slide_type": "-"}
a, b = randn(5, generator=seeded(2)), randn(5, generator=seeded(3))
silu = torch.nn.functional.silu
print("silu(a + b)          :", silu(a + b))
print("silu(a) + silu(b)    :", silu(a) + silu(b))

# %% [markdown] slideshow={"slide_type": "subslide"}
# That cut would need one all-reduce before the activation and another after $W_2$: twice the
# communication, and a wait in the middle of the layer. Columns-then-rows needs one.
#
# The rest of the layer is linear in the expert outputs: each token's output is
# $\sum_j w_{t,j}\, y_{e_{t,j}}$, a weighted sum over its $k$ experts. A sum over ranks can be moved through
# a weighted sum, so **the whole layer** is the sum over ranks of the layer computed on each rank's slice.

# %% [markdown] slideshow={"slide_type": "notes"}
# The router is tiny ($E \times H$) and **replicated**: every rank computes all logits itself and routes
# every token identically, without talking to anyone.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The shards
#
# `w13` stores $[W_1; W_3]$ for all experts as $(E, 2I, H)$. Rank $r$'s slice is *not* a block of
# consecutive rows of `w13` — it needs rows $I_r$ of the gate half **and** rows $I_r$ of the up half,
# so that its local `w13` is again $[W_1 \text{ shard}; W_3 \text{ shard}]$ and the fused kernel's gated
# epilogue (notebook 06) pairs gate column $n$ with up column $n + I/tp$. `shard_w13` makes the two cuts;
# `shard_w2` cuts `w2` along its last dimension:

# %% slideshow={"slide_type": "-"}
show_source(shard_w13)

# %% slideshow={"slide_type": "subslide"}
for r in range(tp):
    s13, s2 = shard_w13(w13, tp, r), shard_w2(w2, tp, r)
    print(f"rank {r}: w13 shard {tuple(s13.shape)}, w2 shard {tuple(s2.shape)}")
rows = slice(part, 2 * part)  # rank 1's slice
print("rank 1's w13 = [w1 rows 32..63; w3 rows 32..63]:",
      torch.equal(shard_w13(w13, tp, 1), torch.cat([w13[:, :I][:, rows], w13[:, I:][:, rows]], dim=1)))

# %% slideshow={"slide_type": "subslide"} alt="One expert's weights split over 4 tensor-parallel ranks: the gate rows w1 and the up rows w3 of w13 are each cut into 4 row blocks, one per rank, and w2 into 4 column blocks."
viz.tp_shards(H, I, tp)

# %% [markdown] slideshow={"slide_type": "subslide"}
# A contiguous cut of `w13` into $tp$ blocks of rows would be a bug: with $tp = 2$ rank 0 would get all
# of $W_1$ and rank 1 all of $W_3$, and neither could form $\mathrm{silu}(W_1 x) \odot W_3 x$. The kernel
# would still run — it just reads the first half of whatever it is given as the gate — so only a check
# against the reference catches it:

# %% slideshow={"slide_type": "-"}
M = 64
gate = MoEGate(H, E, generator=seeded(4))
x = randn(M, H, generator=seeded(5))  # (M, H)
gate_weight = gate.weight.detach()  # (E, H), replicated on every rank
topk_weights, topk_ids = route(x, gate_weight, K)  # (M, k) fp32, (M, k) int32
ref = fused_experts(x, w13, w2, topk_weights, topk_ids)  # (M, H): the single-process layer (TP = 1)

naive = sum(fused_experts(x, w13[:, r * I:(r + 1) * I], shard_w2(w2, 2, r), topk_weights, topk_ids)
            for r in range(2))
print("contiguous cut of w13 reproduces the layer:", rel_err(naive, ref) < 1e-3)

# %% [markdown] slideshow={"slide_type": "subslide"}
# For Mixtral, what one rank holds of one layer, and of the whole model's experts:

# %% slideshow={"slide_type": "-"}
mix = MIXTRAL_8X7B
for t in (1, 2, 4, 8):
    per_rank = mix.num_experts * 3 * mix.hidden_size * (mix.intermediate_size // t) * mix.bytes_per_element
    print(f"TP = {t}: w13 shard ({mix.num_experts}, {2 * mix.intermediate_size // t}, {mix.hidden_size}), "
          f"w2 shard ({mix.num_experts}, {mix.hidden_size}, {mix.intermediate_size // t}): "
          f"{per_rank / 1e9:.2f} GB per layer, {MIXTRAL_8X7B_LAYERS * per_rank / 1e9:5.1f} GB for 32 layers")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. The simulation: partial outputs, and the all-reduce as a sum
#
# `simulate_tp` plays all ranks in this one process: it cuts the shards, calls `rank_partial` — which is
# just `fused_experts` on the rank's shard — once per rank, and sums. Against the single-process layer
# and against the fp64 oracle of notebook 04:

# %% slideshow={"slide_type": "-"}
oracle = moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True)
for t in (1, 2, 4, 8):
    out, parts = simulate_tp(x, w13, w2, topk_weights, topk_ids, t)
    print(verdict(f"TP={t} simulation vs TP=1", out, ref))
    print(verdict(f"TP={t} simulation vs fp64 oracle", out, oracle))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The results are not bit-identical to TP = 1: each rank's GEMM2 sums over $I/tp$ terms and the
# all-reduce adds the $tp$ partial sums, a different order of the same additions, so fp32 rounding differs
# in the last bits — well inside the tolerance. No rank holds the answer on its own:

# %% slideshow={"slide_type": "-"}
_, parts = simulate_tp(x, w13, w2, topk_weights, topk_ids, 4)
for r, p in enumerate(parts):
    print(f"rank {r}'s partial output vs the layer: rel err {rel_err(p, ref):.1f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# What an all-reduce leaves on every rank is the element-wise sum of all ranks' tensors. Written out:

# %% slideshow={"slide_type": "-"}
show_source(all_reduce_sum)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Libraries do not ship every tensor to one place. For large tensors NCCL and gloo use a **ring**: cut
# each rank's tensor into $tp$ chunks; in $tp - 1$ *reduce-scatter* steps every rank passes one chunk to its
# neighbour, which adds it to its own, until each rank holds one finished chunk; in $tp - 1$ *all-gather*
# steps the finished chunks travel round the ring. `ring_all_reduce` does exactly that with tensors and
# counts what each rank sends:

# %% slideshow={"slide_type": "-"}
for t in (2, 4, 8):
    _, parts = simulate_tp(x, w13, w2, topk_weights, topk_ids, t)
    on_ranks, sent = ring_all_reduce(parts)
    same = all(torch.equal(o, on_ranks[0]) for o in on_ranks)
    print(f"tp = {t}: every rank ends with the same bits: {same}; each sent {sent[0]} values = "
          f"{sent[0] / ref.numel():.3f} x the tensor (2 (tp-1)/tp = {2 * (t - 1) / t:.3f})")
    print("   " + verdict(f"ring all-reduce, tp={t} vs TP=1", on_ranks[0], ref))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. Real processes
#
# Now the ranks are separate processes that share nothing but a `torch.distributed` process group —
# gloo over TCP on 127.0.0.1 here, NCCL between GPUs. `run_tp` cuts the shards **in this process** and
# sends each rank only its own; each rank then runs:

# %% slideshow={"slide_type": "-"}
show_source(rank_forward)

# %% [markdown] slideshow={"slide_type": "subslide"}
# after routing with the replicated gate (`route`: logits $= x\,G^\top$, then the Triton top-k of notebook
# 03). The launcher underneath (`moe_lib.parallel.launch`) starts the processes, hosts the rendezvous on a
# port the operating system picks, and collects what each rank returns. Its worker functions live in
# `moe_lib`, not in this notebook: the processes import them by name.

# %% slideshow={"slide_type": "-"}
results = {}
for t in (2, 4):
    results[t] = run_tp(x, gate_weight, w13, w2, K, t)
    r = results[t]
    print(verdict(f"TP={t} on {t} gloo processes vs TP=1", r.output, ref))
    print(f"   all {t} ranks hold the same output: {r.ranks_agree}; weight bytes held per rank: {r.weight_bytes}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each rank held a quarter (TP = 4) of the 786 432 bytes of expert weights, and computed all $Mk = 128$
# (token, slot) rows — but each only $I/tp$ wide. How long a launch takes here (processes are forked from
# a server that imported torch once; the kernels run in the Triton interpreter):

# %% slideshow={"slide_type": "-"}
# NBVAL_IGNORE_OUTPUT
start = time.perf_counter()
run_tp(x, gate_weight, w13, w2, K, 2)
print(f"TP=2 launch: {time.perf_counter() - start:.2f} s wall")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### When a rank fails
#
# A distributed program has a nasty failure mode: one rank raises, and the others wait for it forever in
# their next collective. The launcher refuses to hang. A rank that raises makes `launch` stop the others
# at once and raise `RankError` with **that rank's traceback**; `raise_on_rank` fails on purpose:

# %% slideshow={"slide_type": "-"}
show_source(faults.raise_on_rank, docstring=False)

# %% slideshow={"slide_type": "-"}
try:
    launch(faults.raise_on_rank, 3, args=(1, "the weights of rank 1 did not load"))
except RankError as err:
    print(f"RankError from rank {err.rank}; its traceback ends with:")
    print("   ", err.traceback.strip().splitlines()[-1])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Two timeouts cover the silent cases. Every collective has one (`pg_timeout`, the process group's):
# a rank waiting in an all-reduce for a peer that never comes raises, and is reported like any error.
# And the whole launch has one (`timeout`): a rank that stalls outside any collective is named:

# %% slideshow={"slide_type": "-"}
try:
    launch(faults.stall_on_rank, 2, args=(1, 60.0, False), timeout=2)
except TimeoutError as err:
    print("TimeoutError:", err)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### From the shell
#
# The same check runs from a terminal, on gloo or (with GPUs) NCCL, and under `torchrun`:
#
# ```bash
# python -m moe_lib.parallel.run --tp 4              # 4 processes, TP=4 vs the single-process layer
# torchrun --standalone --nproc_per_node 2 -m moe_lib.parallel.run --tp 2
# ```

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. What the all-reduce costs
#
# The all-reduce moves the layer's output: $H$ values per token, 8 KiB in bf16 for Mixtral. In a ring each
# rank sends (and receives) $2\,(tp - 1)/tp$ of it — one tensor's worth at $tp = 2$, approaching two for
# large $tp$:

# %% slideshow={"slide_type": "-"} alt="Ring all-reduce of the layer output in KiB per token against tensor-parallel size 1 to 8: what each rank sends rises towards twice the output, what all ranks send together grows linearly."
viz.allreduce_traffic(mix.hidden_size, [1, 2, 4, 8])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Set against what each rank *reads* — its slice of the touched experts' weights (notebook 04's floor) —
# the traffic is small at small $M$, and grows with $M$ while the weights do not:

# %% slideshow={"slide_type": "-"}
for m in (1, 64, 4096):
    touched = mix.num_experts * (1 - (1 - mix.top_k / mix.num_experts) ** m)  # expected experts hit
    for t in (2, 8):
        weights = touched * 3 * mix.hidden_size * (mix.intermediate_size // t) * mix.bytes_per_element
        sent = 2 * (t - 1) / t * m * mix.hidden_size * mix.bytes_per_element
        print(f"M = {m:4d}, TP = {t}: each rank reads {weights / 1e6:6.1f} MB of weights, "
              f"sends {sent / 1e6:7.3f} MB ({sent / weights:6.2%})")

# %% [markdown] slideshow={"slide_type": "subslide"}
# At $M = 1$ the bytes are nothing, but an all-reduce has a fixed latency of some microseconds, next to a
# layer that takes about 100 µs at TP = 4 — small, not free. At $M = 4096$ each rank sends tens of MB,
# which NVLink moves in a small fraction of the milliseconds the GEMMs take at that size. The
# measurements below say how it plays out.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Recorded NCCL results
#
# On a machine with 2 or 4 GPUs, the benchmark mode of the launcher times Mixtral's layer in bf16 with
# NCCL — each rank's kernel time, the all-reduce of an $(M, H)$ tensor alone, and the two together — and a
# TP = 1 baseline on one GPU in the same run:
#
# ```bash
# python -m moe_lib.parallel.run --tp 2 --bench --out data/bench/parallel_<gpu>_tp2.json
# ```
#
# The results, if recorded:

# %% slideshow={"slide_type": "-"}
REPO = Path(moe_lib.__file__).resolve().parent.parent
bench_files = sorted((REPO / "data" / "bench").glob("parallel_*.json"))
runs = [json.loads(path.read_text()) for path in bench_files]
if not runs:
    print("no recorded NCCL results yet")
for path, run in zip(bench_files, runs):
    print(f"{path.relative_to(REPO)}: {run['gpu']} x {run['num_gpus']}, torch {run['torch']}, "
          f"NCCL {run['nccl']}, {run['date']}")
    print(f"{'impl':>17} {'TP':>4} {'M':>5} {'kernel µs':>10} {'all-reduce µs':>14} {'total µs':>9} {'speed-up':>9}"
          "  check")
    for rec in run["records"]:
        check = rec.get("check")
        ok = "" if check is None else ("PASS" if check["passed"] else "FAIL")
        speed = f"{rec['speedup_vs_tp1']:.2f}x" if rec.get("speedup_vs_tp1") else ""
        print(f"{rec.get('impl', 'moe_lib'):>17} {rec['tp']:>4} {rec['M']:>5} {rec['kernel_us']:>10.1f} "
              f"{rec['allreduce_us']:>14.1f} {rec['total_us']:>9.1f} {speed:>9}  {ok}")

# %% slideshow={"slide_type": "subslide"} alt="Recorded NCCL runs: bars of microseconds per layer call at 1, 64 and 4096 tokens for TP 1, 2 and 4, split into kernel and all-reduce time, with each run's speed-up over its TP 1 baseline."
viz.parallel_bench(runs) if runs else None

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Two short exercises: shard the weights by hand. Each is a function for you to complete, followed in the
# same cell by a check that runs it on a few fixed cases (small labelled tensors, so a wrong row shows where
# it came from) and compares with the library's answer. It shows `PASS`, or the first case that went wrong
# — the input, what was expected, what your function returned — and the likely mistake.

# %% [markdown] slideshow={"slide_type": "notes"}
# Until you write
# the body the check says *not solved yet*, and the notebook still runs to the end. Worked solutions:
# [solutions/08_tensor_parallel_solutions.ipynb](solutions/08_tensor_parallel_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_shard_w2, check_shard_w13

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — shard w13 by hand
#
# Write `my_shard_w13(w13, tp_size, rank)` (named `my_…` so that it does not replace the library's `shard_w13`
# that section 2 shows and uses): rank `rank`'s slice of `w13` (E, 2I, H) — shape (E, 2I/tp, H),
# the rank's rows of the gate half $W_1$ followed by its rows of the up half $W_3$ (section 2's picture).
# You may assume $I$ is divisible by `tp_size`.

# %% slideshow={"slide_type": "-"}
def my_shard_w13(w13: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """(E, 2I, H) -> (E, 2I/tp, H): [w1 rows of this rank; w3 rows of this rank]."""
    raise NotImplementedError  # your code here


check_shard_w13(my_shard_w13)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — shard w2 by hand
#
# Write `my_shard_w2(w2, tp_size, rank)`: rank `rank`'s slice of `w2` (E, H, I) — shape (E, H, I/tp). Which
# dimension is cut, and why must it be the same slice of $I$ as in exercise 1?

# %% slideshow={"slide_type": "-"}
def my_shard_w2(w2: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """(E, H, I) -> (E, H, I/tp): this rank's columns of the reduction dimension I."""
    raise NotImplementedError  # your code here


check_shard_w2(my_shard_w2)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 1 — the TP partial sum
#
# A kernel puzzle follows the exercises: you write the `@triton.jit` kernel, the check launches it (the comment
# shows how) in the interpreter on fixed and random cases inside poisoned guard buffers, and reports stores
# outside the output, elements left unwritten, wrong values — with a picture of which program wrote what — and
# the likely mistake. Until the body does something it says *not solved yet*.

# %% [markdown] slideshow={"slide_type": "notes"}
# Complete `tp_sum_kernel`: what the all-reduce computes — `out[m, h]`, the sum over the `TP` ranks of
# `partials[r, m, h]`, added in rank order into an fp32 accumulator and rounded once to `out`'s dtype; one
# (`BLOCK_M`, `BLOCK_H`) tile per program. Ranks are `stride_pr` elements apart and rows `stride_pm`: the
# check pads both.

# %% slideshow={"slide_type": "-"}
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_tp_partial_sum


@triton.jit
def tp_sum_kernel(partials_ptr, out_ptr, TP, M, H, stride_pr, stride_pm, stride_om,
                  BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    pass  # your code here


# launched as  tp_sum_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(H, BLOCK_H))](
#                  partials, out, TP, M, H, partials.stride(0), partials.stride(1), out.stride(0),
#                  BLOCK_M=BLOCK_M, BLOCK_H=BLOCK_H)
check_tp_partial_sum(tp_sum_kernel)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * Tensor parallelism gives every rank a $1/tp$ slice of **every** expert along $I$: rows of $W_1$ and
#   $W_3$ (column-parallel), columns of $W_2$ (row-parallel). The activation stays local; each rank's
#   output is a partial sum, and **one all-reduce** per layer adds them up.
# * The local `w13` is $[W_1 \text{ shard}; W_3 \text{ shard}]$ — two cuts, not one block of rows — so the
#   fused kernel runs unchanged on a shard.
# * The router is replicated: every rank routes every token the same way, without communication.

# %% [markdown] slideshow={"slide_type": "notes"}
# * The simulation (`simulate_tp`) and real gloo processes (`run_tp`) both reproduce the single-process
#   layer to fp32 rounding; a ring all-reduce sends $2(tp-1)/tp$ of the output per rank.
# * The launcher never hangs: a failing rank's traceback surfaces at once, collectives and the launch
#   itself have timeouts.
#
# **Next — [09 · expert parallelism](09_expert_parallel.ipynb):** whole experts per rank instead of slices, what skewed routing does
# to the ranks' loads, and how redundant copies of hot experts (EPLB) even them out.
