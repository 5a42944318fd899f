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
# # 05 · Alignment: sorting the rows by expert, padded to `BLOCK_M`
#
# Notebook 04 ended with the loop over experts: gather the tokens that chose expert $e$, run one GEMM on
# that group, add the results back. The fused kernel of notebook 06 runs **all** those GEMMs in a single
# launch.

# %% [markdown] slideshow={"slide_type": "notes"}
# It cuts the output into tiles of `BLOCK_M` rows × `BLOCK_N` columns, and one program computes
# one tile — so the `BLOCK_M` rows of a tile must all belong to **one expert**: then a single slice of a
# single expert's weights serves the whole tile.
#
# *Alignment* (`moe_align_block_size`) puts the rows in that order. Token $t$ chose $k$ experts; its
# $j$-th choice is the row with **flat id** $t\,k + j$ — its position in `topk_ids.flatten()`. Alignment
#
# 1. groups the flat ids by expert, ascending inside each group;
# 2. pads every group with a sentinel up to a multiple of `BLOCK_M` (an expert without tokens gets no
#    rows at all);
#
# and returns three tensors:
#
# | output | dtype, shape | holds |
# |---|---|---|
# | `sorted_token_ids` | int32, `(max_len,)` | the flat ids, grouped by expert; padding slots hold the sentinel `numel` $= Mk$ |
# | `expert_ids` | int32, `(max_blocks,)` | the expert of each block of `BLOCK_M` slots; −1 where there is none |
# | `num_tokens_post_padded` | int32, `(1,)` | the padded total: how many slots are in use |
#
# We derive the three by hand, draw them, measure what the padding costs, see how expert parallelism marks
# experts that live on another GPU, and finish with the Triton version and its three passes.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch
import triton
from ipywidgets import Dropdown, IntSlider, Output, VBox, interactive

from moe_lib import runtime
from moe_lib.teach import show_source, viz
from moe_lib.config import TINY
from moe_lib.kernels.align import (
    align_count_kernel,
    align_scan_kernel,
    align_scatter_kernel,
    align_sizes,
    moe_align_block_size,
    moe_align_block_size_torch,
)
from moe_lib.kernels.routing import topk_softmax
from moe_lib.testing import randn, seeded

E, K = TINY.num_experts, TINY.top_k  # 8 experts, top-2
device = runtime.default_device()  # where the Triton kernels run: the GPU, or the CPU interpreter

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Flat ids
#
# Six tokens, routed as in notebook 03 (random logits → fp32 softmax → top-2). Each of the $M k = 12$
# (token, slot) pairs is one row of the expert GEMMs, named by its flat id:

# %% slideshow={"slide_type": "-"}
M, BLOCK_M = 6, 4
_, topk_ids = topk_softmax(randn(M, E, generator=seeded(0)), K)  # (M, k) int32
flat = topk_ids.flatten()  # (M*k,): flat id i is token i // k, slot i % k
numel = flat.numel()

print("topk_ids =", topk_ids.tolist())
print("flat id :", " ".join(f"{i:2d}" for i in range(numel)))
print("token   :", " ".join(f"{i // K:2d}" for i in range(numel)))
print("slot    :", " ".join(f"{i % K:2d}" for i in range(numel)))
print("expert  :", " ".join(f"{e:2d}" for e in flat.tolist()))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The three outputs, by hand
#
# Count the rows of each expert and round each count **up** to whole blocks; the groups then follow one
# another, so each starts where the previous padded group ends (an exclusive prefix sum). A *stable*
# sort by expert lists the flat ids group by group, ascending inside each group; a row's position inside
# its group is its rank among the rows of that expert.

# %% slideshow={"slide_type": "-"}
counts = torch.bincount(flat, minlength=E)  # (E,) rows per expert
padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # (E,) rounded up to whole blocks
starts = torch.cumsum(padded, 0) - padded  # (E,) first slot of each expert's group
order = torch.argsort(flat, stable=True)  # (numel,) flat ids grouped by expert, ascending inside
experts = flat[order].long()  # (numel,) the expert of each of them
rank = torch.arange(numel) - (torch.cumsum(counts, 0) - counts)[experts]  # (numel,) position in its group

print("rows per expert  :", counts.tolist())
print("padded to blocks :", padded.tolist())
print("group starts     :", starts.tolist())

# %% [markdown] slideshow={"slide_type": "subslide"}
# The buffers are allocated for the **worst case** (section 4 explains why): every expert may waste up to
# `BLOCK_M − 1` slots, so `max_len = numel + E (BLOCK_M − 1)`. Padding and everything past the padded
# total hold the sentinel `numel`; `expert_ids` holds −1 past the last block in use.

# %% slideshow={"slide_type": "-"}
max_len = numel + E * (BLOCK_M - 1)
max_blocks = triton.cdiv(max_len, BLOCK_M)

sorted_token_ids = torch.full((max_len,), numel, dtype=torch.int32)
sorted_token_ids[starts[experts] + rank] = order.to(torch.int32)  # scatter each flat id to its slot

expert_ids = torch.full((max_blocks,), -1, dtype=torch.int32)
block_owner = torch.repeat_interleave(torch.arange(E), padded // BLOCK_M)  # one entry per block in use
expert_ids[: block_owner.numel()] = block_owner.to(torch.int32)

num_tokens_post_padded = padded.sum().reshape(1).to(torch.int32)

for b in range(max_blocks):
    print(f"block {b}: slots {sorted_token_ids[b * BLOCK_M:(b + 1) * BLOCK_M].tolist()}  expert {expert_ids[b].item():2d}")
print("num_tokens_post_padded =", num_tokens_post_padded.tolist())

# %% [markdown] slideshow={"slide_type": "subslide"}
# Read block 0: slot 0 holds flat id 11 — token 5's second choice, expert 1 — and the other three slots
# hold 12, the sentinel: padding. Experts 0 and 2 got no rows, so they have no blocks. After the last
# group, 24 slots in, the buffer continues with sentinels up to `max_len`, and `expert_ids` with −1.
#
# The library's specification, `moe_align_block_size_torch`, computes the same thing one expert at a
# time (a loop with `torch.nonzero`). The outputs must be **bit-identical**:

# %% slideshow={"slide_type": "-"}
spec = moe_align_block_size_torch(topk_ids, BLOCK_M, E)
mine = (sorted_token_ids, expert_ids, num_tokens_post_padded)
ok = all(torch.equal(a, b) for a, b in zip(mine, spec))
print(f"{'PASS' if ok else 'FAIL'}  by hand vs moe_align_block_size_torch: all three outputs equal")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. The picture
#
# The same layout as a strip of slots, coloured by expert, with the flat id in each slot. Padding slots are
# hatched grey; thick lines separate the blocks, each labelled with its `expert_ids` entry; white slots lie
# past `num_tokens_post_padded` — allocated, never used.

# %% slideshow={"slide_type": "-"} alt="Strip of aligned slots coloured by expert with flat ids, padding slots hatched grey, thick lines between blocks of BLOCK_M labelled by expert id, unused slots white."
viz.alignment_layout(*spec, block_size=BLOCK_M, num_valid=numel, num_experts=E,
                             title=f"{M} tokens x top-{K}, BLOCK_M = {BLOCK_M}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each block is one row-tile of the kernel: the program for block 2 loads `w13[4]` and computes the rows
# of flat ids 0 and 7 (tokens 0 and 3); its two padding rows are masked — never loaded, never stored.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. How long can it get?
#
# An expert with $n_e$ rows occupies $\lceil n_e / B \rceil B$ slots (writing $B$ for `BLOCK_M`), at most
# $B - 1$ more than $n_e$. Only experts with rows take slots, so
#
# $$ \texttt{num\_tokens\_post\_padded} = \sum_{e:\,n_e>0} \Big\lceil \frac{n_e}{B} \Big\rceil B
#    \;\le\; Mk + \min(E,\, Mk)\,(B - 1) \;\le\; \texttt{max\_len} = Mk + E\,(B-1). $$
#
# The bound is reached when every expert gets one row more than a multiple of $B$. Four tokens that cover
# the eight experts once each do it:

# %% slideshow={"slide_type": "-"}
worst_ids = torch.arange(8, dtype=torch.int32).view(4, 2)  # (M=4, k=2): every expert gets exactly one row
_, _, worst_total = moe_align_block_size_torch(worst_ids, BLOCK_M, E)
print("align_sizes(numel=8, BLOCK_M=4, E=8) -> (max_len, max_blocks) =", align_sizes(8, BLOCK_M, E))
print("num_tokens_post_padded =", worst_total.item(), "= 8 rows + 8 experts x 3 padding slots")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Why allocate the worst case instead of the exact size? The exact total is only known after the routing
# has run **on the GPU**. Reading it back to the host would stall the CPU until the GPU catches up, and it
# would make the buffer sizes — and the kernel's grid — depend on data, which CUDA graphs (notebook 07)
# cannot replay.

# %% [markdown] slideshow={"slide_type": "notes"}
# So the sizes depend only on $M$, $k$, $E$ and $B$; `num_tokens_post_padded` stays a
# one-element tensor **on the device**, and the kernel's programs past it return at once.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. What the padding costs
#
# Padding rows are computed by nobody — they are masked — but they still occupy the lanes of the tiles
# that contain them: a block with one real row costs the GPU the same as a full one. The wasted fraction
# is $1 - Mk / \texttt{num\_tokens\_post\_padded}$. Measured on random routing (E = 8, top-2) for the block
# sizes the GPU configuration uses, with the Triton alignment, against the worst case:

# %% slideshow={"slide_type": "-"}
token_counts = [2**i for i in range(13)]  # M = 1 ... 4096
block_sizes = [16, 32, 64, 128]
wasted = {b: [] for b in block_sizes}
for m in token_counts:
    _, ids = topk_softmax(randn(m, E, generator=seeded(m)), K)  # (m, k) fresh routing per M
    for b in block_sizes:
        total = moe_align_block_size(ids.to(device), b, E)[2].item()
        wasted[b].append(1 - m * K / total)

print("padding, % of the padded total")
print(f"{'M':>6}" + "".join(f"{f'BLOCK_M={b}':>13}" for b in block_sizes))
for i, m in enumerate(token_counts):
    if m in (1, 16, 256, 4096):
        print(f"{m:>6}" + "".join(f"{100 * wasted[b][i]:12.1f}%" for b in block_sizes))

# %% slideshow={"slide_type": "subslide"} alt="Padding waste for 8 experts, top-2: the share of padded rows against tokens per call for BLOCK_M 16, 32, 64 and 128, measured and worst case; near 100 percent for a few tokens, falling towards 0 for thousands."
viz.padding_waste(token_counts, wasted, num_experts=E, top_k=K)

# %% [markdown] slideshow={"slide_type": "subslide"}
# At decode-sized batches most of the rows computed are padding: one token with $B = 16$ fills 2 of the
# 32 rows of its two blocks. That is cheaper than it sounds — at small $M$ the layer is bound by reading
# the expert **weights** (notebook 04), and a padded row reuses weights the block loads anyway. For large
# $M$ each expert wastes $(B-1)/2$ rows on average, so the fraction falls like $E(B-1)/(2Mk)$.

# %% [markdown] slideshow={"slide_type": "notes"}
# This is
# why the GPU's default configuration lets `BLOCK_M` grow with $M$: 16 up to $M = 32$, then 32, 64, and
# 128 above $M = 512$ — big tiles only once the groups are long enough to fill them.

# %% slideshow={"slide_type": "-"}
m, b = 4096, 128
print(f"M={m}, BLOCK_M={b}: estimate E(B-1)/(2Mk) = {100 * E * (b - 1) / (2 * m * K):.1f} %,"
      f" measured {100 * wasted[b][token_counts.index(m)]:.1f} %")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Try it
#
# Pick `BLOCK_M` and the number of tokens; the layout is re-aligned (with the Triton kernel) and redrawn,
# with the waste printed above it. Small blocks hug the groups tightly; large blocks leave most slots
# hatched until the groups grow. The figure is drawn when the cell runs, and redrawn when you change a
# control.

# %% slideshow={"slide_type": "-"} alt="Aligned layout drawn by the widget for 12 tokens with BLOCK_M 8: expert-coloured slots, hatched padding, most slots wasted at this size."
layout_area = Output()


def show_layout(block_m: int, num_tokens: int) -> None:
    """Align fresh routing of num_tokens tokens with BLOCK_M = block_m; print the waste, draw the layout."""
    _, ids = topk_softmax(randn(num_tokens, E, generator=seeded(7)), K)  # (num_tokens, k)
    s, e, n = (t.cpu() for t in moe_align_block_size(ids.to(device), block_m, E))
    rows, total = num_tokens * K, int(n.item())
    layout_area.outputs = ()
    layout_area.append_stdout(
        f"{rows} rows -> {total} slots in use: {total - rows} padding "
        f"({100 * (total - rows) / total:.0f} % of the rows computed); buffer {s.numel()} slots\n"
    )
    layout_area.append_display_data(
        viz.alignment_layout(s, e, n, block_size=block_m, num_valid=rows, num_experts=E)
    )


controls = interactive(
    show_layout,
    clear_output=False,
    block_m=Dropdown(options=[4, 8, 16, 32, 64], value=8, description="BLOCK_M"),
    num_tokens=IntSlider(value=12, min=1, max=64, description="tokens", continuous_update=False),
)
VBox([controls, layout_area])

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Experts on another GPU: `expert_map`
#
# With **expert parallelism** (notebook 09) each GPU holds only some of the experts. Routing still picks
# among all $E$, so `topk_ids` hold *global* ids, and each rank passes an `expert_map`: global id → this
# rank's local id, or −1 for an expert held elsewhere. Alignment keeps the very same layout but writes the
# **local** id into `expert_ids`, and −1 for the blocks of remote experts.

# %% [markdown] slideshow={"slide_type": "notes"}
# The kernel writes zeros for a
# −1 block, so this rank's output holds only its own experts' share; summing the ranks' outputs (an
# all-reduce) gives the full layer.
#
# Rank 1 of 2 holds global experts 4–7 as its local experts 0–3:

# %% slideshow={"slide_type": "-"}
expert_map = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3], dtype=torch.int32)  # (E,) global -> local, or -1
s_ep, e_ep, n_ep = moe_align_block_size_torch(topk_ids, BLOCK_M, E, expert_map)
print("expert_ids, no map  :", spec[1].tolist())
print("expert_ids, rank 1  :", e_ep.tolist())
print("sorted_token_ids and num_tokens_post_padded unchanged:",
      torch.equal(s_ep, spec[0]) and torch.equal(n_ep, spec[2]))

# %% slideshow={"slide_type": "subslide"} alt="Aligned layout on rank 1 of 2: blocks of local experts 0 to 3 keep their rows, blocks of remote experts are marked with expert id minus one."
viz.alignment_layout(s_ep, e_ep, n_ep, block_size=BLOCK_M, num_valid=numel, num_experts=E,
                             expert_label="local expert",
                             title="Rank 1 of 2 (global experts 4-7 = local 0-3): remote experts' blocks get -1")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7. The Triton version
#
# `moe_align_block_size` computes the same three outputs on the GPU. The work is a *counting sort*: count
# the rows of each expert, turn the counts into group starts with a prefix sum, then send every flat id to
# its slot. When all `numel` ids fit into one chunk — `CHUNK` ids, about 8K / `E_PAD` on a GPU: 1024 for 8
# experts — one program does all of it in registers, in **one launch**.

# %% [markdown] slideshow={"slide_type": "notes"}
# Above that, the ids are split into
# chunks and the sort takes three launches:
#
# 1. **count** — one program per chunk writes how many ids of each expert the chunk holds;
# 2. **scan** — one program walks down the chunks, and for each chunk and expert writes how many ids of
#    that expert lie in *earlier* chunks (an exclusive prefix sum), plus the per-expert totals;
# 3. **scatter** — one program per chunk computes the padded group starts from the totals and writes each
#    of its ids to *group start + ids of its expert in earlier chunks + its rank within this chunk*; the
#    programs also fill the padding slots, the tail, and `expert_ids`.
#
# Every slot is determined by the data alone, so the order inside each expert is ascending and the
# result is the same on every run — whatever the number of chunks, and whichever program runs first.
# That is what lets us compare it with the specification bit for bit. (A version that claims slots with
# atomic counters is simpler, but puts the rows of an expert in whatever order the programs arrive.)
#
# Both passes 1 and 3 start by turning a chunk of ids into a one-hot matrix, `(CHUNK, E_PAD)`, with `E`
# padded to a power of two for `tl.arange`:

# %% slideshow={"slide_type": "-"}
show_source(align_count_kernel)  # the Python function under the @triton.jit wrapper, highlighted

# %% [markdown] slideshow={"slide_type": "subslide"}
# `_one_hot` loads the chunk with `other=-1` past `numel`, so the tail of the last chunk matches no expert.
# Pass 2 is a single program: it loads `ROWS` chunks at a time, takes an inclusive `cumsum` down the
# chunks, subtracts the counts to make it exclusive, and adds the `carry` from the rows before:

# %% slideshow={"slide_type": "-"}
show_source(align_scan_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Pass 3. `rank` is the position of each id among the ids of **its** expert in this chunk: the running
# count `cumsum(one_hot)` picked at the id's own column, minus one (and −1 for the padding lanes past
# `numel`). Block `b` belongs to the expert whose group contains slot `b * BLOCK_SIZE`: the number of
# group ends at or before that slot. With `SINGLE_CHUNK` the totals come from this chunk alone and there
# are no earlier chunks — the one-launch path.

# %% slideshow={"slide_type": "-"}
show_source(align_scatter_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The three passes, one at a time
#
# Our 12 ids fit in a single chunk, so the library takes the one-launch path. To watch the three passes,
# we launch the kernels ourselves with `CHUNK = 4` — three chunks — and re-derive each intermediate in
# torch.

# %% slideshow={"slide_type": "-"}
CHUNK, E_PAD = 4, triton.next_power_of_2(E)
num_chunks = triton.cdiv(numel, CHUNK)
ids_dev = flat.to(device)  # (numel,) int32
counts_k = torch.empty(num_chunks, E_PAD, dtype=torch.int32, device=device)
with runtime.quiet_interpreter():  # numpy warnings of the CPU interpreter are expected; keep stderr clean
    align_count_kernel[(num_chunks,)](ids_dev, counts_k, numel, CHUNK=CHUNK, E_PAD=E_PAD)

counts_hand = torch.nn.functional.one_hot(flat.long(), E_PAD).view(num_chunks, CHUNK, E_PAD).sum(1)  # (chunks, E_PAD)
print("pass 1, counts per chunk (rows: chunks, columns: experts):\n", counts_k.cpu())
print("equal to the one-hot sums by hand:", torch.equal(counts_k.cpu(), counts_hand.int()))

# %% slideshow={"slide_type": "subslide"}
prefix_k = torch.empty_like(counts_k)
totals_k = torch.empty(E_PAD, dtype=torch.int32, device=device)
with runtime.quiet_interpreter():
    # ROWS=2 < 3 chunks, so the scan's loop runs twice and the carry matters.
    align_scan_kernel[(1,)](counts_k, prefix_k, totals_k, num_chunks, ROWS=2, E_PAD=E_PAD)

prefix_hand = torch.cumsum(counts_hand, 0) - counts_hand  # (chunks, E_PAD) exclusive prefix over chunks
print("pass 2, ids of each expert in earlier chunks:\n", prefix_k.cpu())
print("totals:", totals_k.tolist())
print("equal to the exclusive cumsum by hand:",
      torch.equal(prefix_k.cpu(), prefix_hand.int()) and torch.equal(totals_k.cpu(), counts_hand.sum(0).int()))

# %% slideshow={"slide_type": "subslide"}
out_k = (torch.empty(max_len, dtype=torch.int32, device=device),
         torch.empty(max_blocks, dtype=torch.int32, device=device),
         torch.empty(1, dtype=torch.int32, device=device))
with runtime.quiet_interpreter():
    align_scatter_kernel[(num_chunks,)](
        ids_dev, prefix_k, totals_k, ids_dev,  # the last pointer (expert_map) is unused without a map
        *out_k,
        numel, E, max_len, max_blocks,
        BLOCK_SIZE=BLOCK_M, CHUNK=CHUNK, E_PAD=E_PAD,
        SINGLE_CHUNK=False, HAS_EXPERT_MAP=False, FILL=numel,
    )
ok = all(torch.equal(a.cpu(), b) for a, b in zip(out_k, spec))
print(f"{'PASS' if ok else 'FAIL'}  three passes with CHUNK=4 vs moe_align_block_size_torch: all three outputs equal")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Checked against the specification
#
# Now the library function itself, against `moe_align_block_size_torch`, on shapes that exercise every
# path: no tokens at all, one token, top-$k$ = $E$, 256 experts (DeepSeek-sized routing), tokens piled
# onto a few experts (others get none), an `expert_map`, and enough ids for the three-pass path. Every
# case must give **equal** tensors — `torch.equal`, not a tolerance.

# %% slideshow={"slide_type": "-"}
def routed(m: int, e: int, k: int, seed: int, skew: bool = False) -> torch.Tensor:
    """(m, k) int32 expert ids: top-k of random scores; skew piles the tokens onto the low experts."""
    scores = torch.rand(m, e, generator=seeded(seed))  # (m, e)
    if skew:
        scores = scores + torch.linspace(3, 0, e)
    return scores.topk(k, dim=1).indices.to(torch.int32)


two_ranks = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1], dtype=torch.int32)
cases = [  # M, E, top_k, BLOCK_M, skew, expert_map
    (0, 8, 2, 16, False, None),
    (0, 256, 8, 16, False, None),
    (1, 8, 2, 16, False, None),
    (6, 8, 2, 4, False, None),
    (33, 8, 8, 32, False, None),
    (100, 8, 2, 16, True, None),
    (100, 8, 2, 16, False, two_ranks),
    (300, 256, 8, 16, False, None),
    (2000, 256, 8, 64, True, None),
    (5000, 8, 2, 64, False, None),
    (20000, 8, 2, 128, False, None),
]
lines = []
for i, (m, e, k, b, skew, emap) in enumerate(cases):
    ids = routed(m, e, k, seed=i, skew=skew)
    ref = moe_align_block_size_torch(ids, b, e, emap)
    got = moe_align_block_size(ids.to(device), b, e, None if emap is None else emap.to(device))
    ok = all(torch.equal(g.cpu(), r) for g, r in zip(got, ref))
    extra = " skewed" if skew else " expert_map" if emap is not None else ""
    lines.append(f"{'PASS' if ok else 'FAIL'}  M={m:<5d} E={e:<3d} top_k={k} BLOCK_M={b:<3d}{extra:11s}"
                 f" padded total {ref[2].item():6d}: all three outputs equal")
print("\n".join(lines))

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
# [solutions/05_alignment_solutions.ipynb](solutions/05_alignment_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_expert_slots, check_padded_total

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — the alignment of one expert
#
# Write `expert_slots(topk_ids, expert, block_m)`: the slots of one expert's group in `sorted_token_ids` —
# the flat ids routed to `expert`, ascending, followed by padding (the sentinel $Mk$) up to a multiple of
# `block_m`. An expert that nobody chose has no slots: return an empty tensor. Return an integer tensor.
# (Section 2's table: expert 4 of the first example has the slots `[0, 7, 12, 12]`.)

# %% slideshow={"slide_type": "-"}
def expert_slots(topk_ids: torch.Tensor, expert: int, block_m: int) -> torch.Tensor:
    """Flat ids of `expert`, ascending, padded with M*k to a multiple of block_m (empty if none)."""
    raise NotImplementedError  # your code here


check_expert_slots(expert_slots)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — the padded total
#
# Write `padded_total(counts, block_m)`: `num_tokens_post_padded` from the number of rows of each expert
# (`counts`, a list of ints, one per expert). Section 4 has the formula; which experts add nothing?

# %% slideshow={"slide_type": "-"}
def padded_total(counts: list[int], block_m: int) -> int:
    """num_tokens_post_padded: every expert's row count rounded up to a multiple of block_m, summed."""
    raise NotImplementedError  # your code here


check_padded_total(padded_total)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 1 — tokens per expert and the padded offsets, in a kernel
#
# Two kernel puzzles follow the exercises: you write the `@triton.jit` kernel, the check launches it (the
# comment shows how) in the interpreter on fixed and random cases inside poisoned guard buffers, and reports
# stores outside the outputs, elements left unwritten, wrong values — with a picture of which program wrote
# what — and the likely mistake. Until the body does something it says *not solved yet*.

# %% [markdown] slideshow={"slide_type": "notes"}
# Complete `expert_histogram_kernel`: one program reads the flat ids `CHUNK` at a time and writes `counts`
# (the ids of each expert) and `offsets` — where each expert's group starts in the aligned layout, the sum of
# the padded counts before it, with `offsets[E]` the padded total. The outputs start as garbage.

# %% slideshow={"slide_type": "-"}
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_expert_histogram, check_scatter_sorted


@triton.jit
def expert_histogram_kernel(topk_ids_ptr, counts_ptr, offsets_ptr, numel, num_experts,
                            BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    pass  # your code here


# launched as  expert_histogram_kernel[(1,)](topk_ids, counts, offsets, topk_ids.numel(), num_experts,
#                  BLOCK_SIZE=block_size, CHUNK=chunk, E_PAD=triton.next_power_of_2(num_experts))
check_expert_histogram(expert_histogram_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 2 — every flat id to its sorted position
#
# Complete `scatter_sorted_kernel`: program `e` fills expert `e`'s group `sorted_ids[offsets[e]:offsets[e+1]]`
# — its flat ids in ascending order, then the sentinel `numel` in the padding slots. Inside a chunk, the rank
# of a hit is `tl.cumsum(hit, 0) - 1`; carry the hits of the earlier chunks.

# %% slideshow={"slide_type": "-"}
@triton.jit
def scatter_sorted_kernel(topk_ids_ptr, offsets_ptr, sorted_ids_ptr, numel,
                          BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr):
    pass  # your code here


# launched as  scatter_sorted_kernel[(num_experts,)](topk_ids, offsets, sorted_ids, topk_ids.numel(),
#                                                    BLOCK_SIZE=block_size, CHUNK=chunk)
check_scatter_sorted(scatter_sorted_kernel)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * The fused kernel needs rows grouped by expert in whole blocks of `BLOCK_M`. Alignment produces that
#   order from `topk_ids`: `sorted_token_ids` (flat ids $tk + j$ grouped by expert, padding = `numel`),
#   `expert_ids` (one per block, −1 where there is none) and `num_tokens_post_padded`.
# * By hand it is a counting sort: `bincount`, round up to blocks, exclusive prefix sum, stable sort, scatter.

# %% [markdown] slideshow={"slide_type": "notes"}
# * Buffers are sized for the worst case, `numel + E (BLOCK_M − 1)`, so that no size depends on data: no
#   host sync, and CUDA graphs can replay the layer. Programs past `num_tokens_post_padded` return early.
# * Padding wastes most rows at tiny $M$ — cheap there, the layer is memory-bound — and a fraction
#   $\approx E(B-1)/(2Mk)$ at large $M$; hence `BLOCK_M` grows with $M$.
# * With an `expert_map`, blocks of experts held by other ranks get −1 and contribute zeros.
# * The Triton version is a deterministic counting sort: one launch for small inputs, count → scan →
#   scatter above that; it matches the specification exactly.
#
# **Next — [06 · the fused kernel](06_fused_kernel.ipynb):** one program per (row block, column block)
# tile — gather the block's tokens, load its expert's weights, multiply, SiLU-and-mul in the epilogue —
# and the whole MoE layer in two launches.
