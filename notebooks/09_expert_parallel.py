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
# # 09 · Expert parallelism: whole experts per GPU, and keeping the GPUs equally busy
#
# Tensor parallelism (notebook 08) gives every rank a slice of every expert. **Expert parallelism** (EP)
# gives every rank a share of the experts — whole ones. A rank holds $E/ep$ experts at full width, so its
# GEMMs are as wide as on one GPU, and the `expert_map` of notebook 05 tells the fused kernel which of the
# routed (token, slot) rows are its own.

# %% [markdown] slideshow={"slide_type": "notes"}
# As with TP, each rank produces a partial output — zeros for the
# rows of experts held elsewhere — and an all-reduce sums them into the layer's output.
#
# The catch is that a rank's work now depends on **routing**. If many tokens prefer a few experts, the
# ranks holding those experts get most of the rows, and since the layer is done only when the slowest rank
# is, the others wait. **EPLB** (expert-parallel load balancing) answers with *redundant experts*: extra
# copies of the hot experts, placed so that every rank gets about the same load, with each token's row sent
# to one of the copies.
#
# We place experts, check EP against the single-process layer, make routing skewed and watch the ranks'
# loads drift apart, even them out with EPLB, and run all of it on real processes.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach import show_source, viz
from moe_lib.config import TINY
from moe_lib.gate import MoEGate
from moe_lib.kernels.experts import fused_experts
from moe_lib.parallel import (
    Case,
    EplbPlan,
    ep_shards,
    expert_map,
    expert_owner,
    expert_ranges,
    imbalance,
    plan_eplb,
    rank_loads,
    replica_counts,
    run_parallel,
    simulate_ep,
)
from moe_lib.parallel.distributed import route
from moe_lib.reference import moe_reference
from moe_lib.testing import randn, seeded, verdict

torch.set_printoptions(precision=4, sci_mode=False)
E, K, H, I = TINY.num_experts, TINY.top_k, TINY.hidden_size, TINY.intermediate_size  # 8, 2, 64, 128

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Placement
#
# With $E$ experts on $ep$ ranks, every rank gets $\lfloor E/ep \rfloor$ consecutive experts and the first
# $E \bmod ep$ ranks one more:

# %% slideshow={"slide_type": "-"}
for ep in (2, 3, 4, 8):
    print(f"ep = {ep}:", [list(r) for r in expert_ranges(E, ep)])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Routing knows nothing of ranks: `topk_ids` hold *global* expert ids. Each rank translates them with its
# `expert_map` — global id → local id in its own weight tensors, or −1 for an expert that lives elsewhere:

# %% slideshow={"slide_type": "-"}
for rank in range(3):
    print(f"ep = 3, rank {rank}: expert_map = {expert_map(E, 3, rank).tolist()}")

# %% slideshow={"slide_type": "subslide"} alt="Placement of 8 experts on 3 ranks: experts 0 to 2 on rank 0, 3 to 5 on rank 1, 6 and 7 on rank 2, the remainder going to the lowest ranks."
viz.expert_placement(torch.arange(E), 3, title="Plain placement: 8 experts on 3 ranks")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. One `fused_experts` per rank, then the sum
#
# A rank's share of the layer is `fused_experts` called with its local weights and its `expert_map`: the
# alignment gives the blocks of remote experts the id −1 and the kernel writes zeros for them (notebooks 05
# and 06). The small layer, 128 tokens, and the single-process result to compare with:

# %% slideshow={"slide_type": "-"}
gen = seeded(0)
w13 = randn(E, 2 * I, H, generator=gen, scale=H**-0.5)  # (E, 2I, H)
w2 = randn(E, H, I, generator=gen, scale=I**-0.5)  # (E, H, I)
gate = MoEGate(H, E, generator=seeded(4))
M = 128
x = randn(M, H, generator=seeded(5))  # (M, H)
topk_weights, topk_ids = route(x, gate.weight.detach(), K)  # (M, k): the replicated router
ref = fused_experts(x, w13, w2, topk_weights, topk_ids)  # (M, H), one process, all experts
oracle = moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True)

for ep in (2, 3, 4, 8):
    out, partials = simulate_ep(x, w13, w2, topk_weights, topk_ids, ep)
    print(verdict(f"EP={ep} simulation vs one process", out, ref), "| bit-identical:", torch.equal(out, ref))
print(verdict("EP=4 simulation vs fp64 oracle", simulate_ep(x, w13, w2, topk_weights, topk_ids, 4)[0], oracle))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Unlike TP, EP is **bit-identical** to one process: every (token, slot) row is computed whole by exactly
# one rank, with the same kernel arithmetic, and the other ranks contribute exact zeros. What each rank
# holds, and how many rows it computes:

# %% slideshow={"slide_type": "-"}
owner = expert_owner(E, 4)  # (E,) the rank of each expert
loads = rank_loads(topk_ids, owner, 4)  # (ep,) rows per rank
for shard, rows in zip(ep_shards(w13, w2, 4), loads.tolist(), strict=True):
    print(f"rank {shard.rank}: w13 {tuple(shard.w13.shape)}, w2 {tuple(shard.w2.shape)}, computes {rows:3d} "
          f"of the {M * K} rows")
print(f"max / mean = {imbalance(loads):.2f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each rank holds a quarter of the weights, like TP = 4 — but where a TP rank computes all $Mk$ rows a
# quarter wide, an EP rank computes full-width rows of its own experts only. With this random gate and
# random tokens the four ranks get nearly the same number of rows. Real traffic is not that kind.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Skewed routing
#
# Tokens are not random vectors. Text from one domain shares directions in the hidden space, and a router
# that has learned which experts handle that domain sends most of it there. We model that with one
# direction $u$: every token leans along $u$, and the router rows of experts 0 and 1 align with it.

# %% slideshow={"slide_type": "-"} alt="Bar chart of skewed expert load: experts 0 and 1 receive far more slots than the balanced share, the others fewer."
u = randn(H, generator=seeded(7))
u /= u.norm()  # (H,) the shared direction
skewed_gate = gate.weight.detach().clone()  # (E, H)
skewed_gate[0] += 0.2 * u
skewed_gate[1] += 0.16 * u


def tokens(m: int, seed: int) -> torch.Tensor:
    """(m, H) fresh tokens that all lean along u."""
    return randn(m, H, generator=seeded(seed)) + u


x_skew = tokens(M, 11)  # the batch we compute
_, ids_skew = route(x_skew, skewed_gate, K)
viz.expert_load(ids_skew, E, title=f"Skewed routing: {M} tokens x top-{K}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Experts 0 and 1 get far more than their share, and with plain placement both live on rank 0. Loads are
# a matter of statistics, so we measure them on larger batches (routing alone is cheap): a **calibration**
# batch — the traffic of the past, which EPLB plans from — and a **fresh** batch from the same
# distribution, which the plan has never seen.

# %% slideshow={"slide_type": "-"}
_, ids_cal = route(tokens(1024, 10), skewed_gate, K)  # (1024, k) the past
_, ids_fresh = route(tokens(1024, 12), skewed_gate, K)  # (1024, k) the future
expert_load = torch.bincount(ids_cal.flatten().long(), minlength=E)  # (E,) rows per expert, calibration
print("calibration rows per expert:", expert_load.tolist())
plain = rank_loads(ids_fresh, expert_owner(E, 4), 4)
print(f"plain EP = 4, fresh batch: rows per rank {plain.tolist()}, max / mean {imbalance(plain):.2f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Rank 0 computes more than twice the average: the layer takes as long as if every rank had that much
# work, so more than half the machine's time is spent waiting.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. EPLB: redundant experts
#
# EPLB adds $R$ **physical** experts to the $E$ **logical** ones: copies of hot experts, each a full copy of
# the expert's weights. `plan_eplb` makes a plan from the calibration load in three steps:
#
# 1. **how many copies** — every expert has one; each of the $R$ extra copies goes to the expert with the
#    largest load *per copy* so far (`replica_counts`);

# %% [markdown] slideshow={"slide_type": "notes"}
# 2. **where** — the $E + R$ copies, heaviest first, each to the least-loaded rank with a free slot that
#    does not already hold that expert; then swaps of two copies between two ranks, while a swap lowers
#    the busier rank's load;
# 3. **numbering** — physical ids are rank-major, like experts in plain placement: rank $r$ holds a run of
#    consecutive physical ids, so the same `expert_map` mechanism works on physical ids.
#
# With $R = 4$ on 4 ranks, every rank has 3 slots:

# %% slideshow={"slide_type": "-"}
R = 4
print("copies per expert:", replica_counts(expert_load, R).tolist())
plan = plan_eplb(expert_load, ep_size=4, num_redundant=R)
for rank in range(4):
    slots = plan.slots(rank)
    print(f"rank {rank}: physical experts {list(slots)} hold logical experts "
          f"{plan.phys_to_log[slots.start:slots.stop].tolist()}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Routing still chooses *logical* experts. Each rank then turns every (token, slot) pair into a *physical*
# expert, the same way on every rank: the $i$-th pair of the batch (in flat-id order) that chose logical
# expert $e$ goes to copy $i \bmod c_e$ of it, $c_e$ being its number of copies. Deterministic, no
# communication, and each expert's rows split evenly over its copies:

# %% slideshow={"slide_type": "-"}
show_source(EplbPlan.choose_replicas)

# %% slideshow={"slide_type": "subslide"} alt="EPLB with 4 redundant copies on 4 ranks: a grid of local slots per rank, each labelled with its logical expert and its rows on the fresh batch; hatched slots are copies of the hot experts."
phys_skew = plan.choose_replicas(ids_skew)  # (M, k) physical ids
for t in range(4):
    print(f"token {t}: logical {ids_skew[t].tolist()} -> physical {phys_skew[t].tolist()}")
print("every physical expert is a copy of the chosen logical one:",
      torch.equal(plan.phys_to_log[phys_skew.long()], ids_skew.long()))

# %% slideshow={"slide_type": "subslide"} alt="EPLB with 4 redundant copies on 4 ranks: a grid of local slots per rank, each labelled with its logical expert and its rows on the fresh batch; hatched slots are copies of the hot experts."
phys_fresh = plan.choose_replicas(ids_fresh)
per_physical = torch.bincount(phys_fresh.flatten().long(), minlength=plan.num_physical)  # (P,) rows
viz.expert_placement(plan.phys_to_log, 4, num_logical=E, loads=per_physical,
                              title="EPLB, R = 4 (copies hatched): logical expert, rows on the fresh batch")

# %% slideshow={"slide_type": "subslide"} alt="Bar chart of rows per rank on 4 ranks for a fresh batch: plain expert parallelism is very uneven, EPLB with redundant experts nearly balanced."
balanced = rank_loads(phys_fresh, plan.owner, 4)
viz.rank_loads({"plain EP": plain, f"EPLB, R = {R}": balanced},
                        title="Fresh batch of 1024 tokens, EP = 4: rows per rank")

# %% [markdown] slideshow={"slide_type": "subslide"}
# How much redundancy is worth it? Each copy costs a full expert's memory on its rank. Sweeping $R$, and
# measuring the plan both on the batch it was made from and on the fresh one:

# %% slideshow={"slide_type": "-"}
redundancy = list(range(9))
sweep = {"calibration batch": [], "fresh batch": []}
for r in redundancy:
    p = plan_eplb(expert_load, 4, r)
    sweep["calibration batch"].append(imbalance(rank_loads(p.choose_replicas(ids_cal), p.owner, 4)))
    sweep["fresh batch"].append(imbalance(rank_loads(p.choose_replicas(ids_fresh), p.owner, 4)))
print("R              :", redundancy)
for name, values in sweep.items():
    print(f"{name:15s}:", [round(v, 2) for v in values])

# %% slideshow={"slide_type": "subslide"} alt="Plot of max over mean rank load against the number of redundant experts, on the planning batch and a fresh batch: imbalance falls as copies are added."
viz.imbalance_vs_redundancy(redundancy, sweep, title="EPLB on 4 ranks: max / mean rank load")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Already $R = 0$ helps — the plan only *places* the 8 experts better, putting the two hot ones on
# different ranks. Copies then shave off the rest. The curve is not smooth: when $E + R$ is not a multiple
# of the number of ranks, the ranks have unequal numbers of slots, and loads come in lumps of whole
# copies.

# %% [markdown] slideshow={"slide_type": "notes"}
# The fresh batch tracks the calibration batch closely because both come from the same
# distribution; when the traffic drifts, a real system re-plans from recent statistics and moves weights.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. The output does not change
#
# Every copy holds exactly its logical expert's weights, and every (token, slot) row is computed by exactly
# one copy. So EPLB cannot change the layer — and with each row still computed whole, it stays
# bit-identical to one process:

# %% slideshow={"slide_type": "-"}
weights_skew, ids_skew = route(x_skew, skewed_gate, K)  # (M, k) logical routing, as before
ref_skew = fused_experts(x_skew, w13, w2, weights_skew, ids_skew)  # (M, H) one process
for ep, r in ((2, 2), (4, 0), (4, 4), (3, 1)):
    p = plan_eplb(expert_load, ep, r)
    out, _ = simulate_ep(x_skew, w13, w2, weights_skew, ids_skew, ep, plan=p)
    print(verdict(f"EP={ep}, EPLB R={r} simulation vs one process", out, ref_skew),
          "| bit-identical:", torch.equal(out, ref_skew))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Real processes
#
# Now on real gloo processes, as in notebook 08: `run_parallel` sends each rank only its experts (for EPLB:
# its copies, and the plan's small tables), and every rank routes with the replicated gate, maps to
# physical experts, runs `fused_experts` with its `expert_map`, and joins the all-reduce. Three layouts, in
# one launch of 4 processes (a layout over 2 ranks uses ranks 0 and 1):

# %% slideshow={"slide_type": "-"}
cases = [Case("ep", 2), Case("ep", 4), Case("ep", 4, plan)]
results = run_parallel(x_skew, skewed_gate, w13, w2, K, cases)
for result in results:
    print(verdict(f"{result.case.name} on {result.case.size} gloo processes vs one process", result.output,
                  ref_skew))
    print(f"   ranks agree: {result.ranks_agree}; rows computed per rank, as the ranks counted them: {result.rows}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# The ranks' own row counts match the loads computed above from the routing alone:

# %% slideshow={"slide_type": "-"}
print("EP=4, plain:", rank_loads(ids_skew, expert_owner(E, 4), 4).tolist() == results[1].rows)
print("EP=4, EPLB :", rank_loads(phys_skew, plan.owner, 4).tolist() == results[2].rows)

# %% [markdown] slideshow={"slide_type": "subslide"}
# From the shell, the same check: `python -m moe_lib.parallel.run --ep 4 --redundant 4`.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * Expert parallelism gives each rank whole experts — $\lfloor E/ep \rfloor$, the remainder to the lowest
#   ranks — and an `expert_map` from global to local ids; `fused_experts` computes only local rows, and an
#   all-reduce sums the partial outputs. The result is bit-identical to one process.
# * A rank's work is the number of rows routed to its experts. Skewed routing makes some ranks much busier
#   than others, and the layer runs at the pace of the busiest.

# %% [markdown] slideshow={"slide_type": "notes"}
# * EPLB plans from observed loads: redundant copies for hot experts, placed to even out the ranks, and a
#   deterministic per-row choice of copy (round robin within the batch). It changes where rows are
#   computed, never what is computed.
#
# Real systems with many experts (DeepSeek-V3 has 256) send each token only to the ranks that hold its
# experts (an *all-to-all* dispatch and combine) instead of all-reducing whole outputs; the placement and
# balancing ideas are the same.
#
# **Next — [10 · the layer](10_the_layer.ipynb):** all the pieces in one `torch.nn.Module`, `MixtralMoE`, loaded
# from a checkpoint and run inside a tiny Mixtral, end to end.
