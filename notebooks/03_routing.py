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
# # 03 · Top-k routing: from logits to experts and weights
#
# The gate (notebook 01) gave every token a score per expert. Routing turns those $E$ scores into a
# decision: **which $k$ experts** the token visits, and **with what weight** each one's output counts.
# vLLM does it in one fused operation, `topk_softmax`, with these exact semantics:
#
# 1. softmax over the $E$ experts, **in fp32**, after subtracting the row's maximum;
# 2. probabilities that come out NaN or Inf are set to 0;

# %% [markdown] slideshow={"slide_type": "notes"}
# 3. keep the $k$ largest, in descending order — **ties go to the lower expert id**;
# 4. renormalize: divide the $k$ kept probabilities by their fp32 sum (by 1 if that sum is $\le 0$).
#
# The outputs are `topk_weights` (fp32, shape $(M, k)$) and `topk_ids` (int32, shape $(M, k)$).
#
# This notebook derives each step, shows why each detail is there — fp32, the max subtraction, the tie
# rule, the NaN rule — draws the routing, and ends with a Triton kernel that does all four steps in one
# pass over the logits.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch
from ipywidgets import IntSlider, Output, VBox, interactive
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from moe_lib import runtime
from moe_lib.teach import show_source, viz
from moe_lib.config import TINY
from moe_lib.gate import MoEGate
from moe_lib.kernels.routing import softmax_fp32, topk_softmax, topk_softmax_kernel, topk_softmax_triton
from moe_lib.testing import randn, seeded, verdict

torch.set_printoptions(precision=4, sci_mode=False)
E, K = TINY.num_experts, TINY.top_k  # 8 experts, top-2

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. The four steps, by hand
#
# Six tokens' logits. We draw them directly, with unit spread, so that the choices are easy to see.

# %% slideshow={"slide_type": "-"}
logits = randn(6, E, generator=seeded(0))  # (M, E)
logits

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Step 1 — softmax, max-subtracted, in fp32.** For a row $\ell$ with maximum $m$,
#
# $$ p_e = \frac{e^{\ell_e - m}}{\sum_{j} e^{\ell_j - m}} . $$
#
# Subtracting $m$ changes nothing mathematically (it cancels between numerator and denominator), but it
# makes the largest exponent $e^0 = 1$, so nothing can overflow — section 4 shows what happens without it.

# %% slideshow={"slide_type": "-"}
l32 = logits.float()  # (M, E): upcast first, whatever the activation dtype
shifted = l32 - l32.amax(dim=-1, keepdim=True)  # (M, E), every entry <= 0
num = shifted.exp()  # (M, E), in (0, 1]
probs = num / num.sum(dim=-1, keepdim=True)  # (M, E), rows sum to 1

print(verdict("by hand vs torch.softmax", probs, torch.softmax(l32, dim=-1)))
print(verdict("by hand vs moe_lib softmax_fp32", probs, softmax_fp32(logits)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Steps 2–3 — the top $k$.** (Step 2, the NaN rule, does nothing on finite logits; section 5 is about
# it.) We take the top $k$ with a *stable* descending sort: equal values keep their index order, so a tie
# is won by the lower expert id. Section 3 explains why we do not simply call `torch.topk`.

# %% slideshow={"slide_type": "-"}
sorted_p, sorted_ids = torch.sort(probs, dim=-1, descending=True, stable=True)  # (M, E) each
top_p, top_ids = sorted_p[:, :K], sorted_ids[:, :K]  # (M, k) each
print("chosen experts:\n", top_ids)
print("their probabilities:\n", top_p)

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Step 4 — renormalize.** The two kept probabilities of a token sum to less than one; dividing by their
# sum makes the routing weights of every token sum to exactly one, so the layer output is a weighted
# *average* of the chosen experts' outputs.

# %% slideshow={"slide_type": "-"}
weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (M, k)
print("routing weights:\n", weights)
print("row sums:", [f"{s:.4f}" for s in weights.sum(dim=-1).tolist()])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now the library, `moe_lib.kernels.routing.topk_softmax`. The expert ids must agree **exactly** — a different id
# means a token computed by a different expert — and the weights to within fp32 rounding:

# %% slideshow={"slide_type": "-"}
ref_weights, ref_ids = topk_softmax(logits, K)
print("ids equal:", torch.equal(top_ids.int(), ref_ids), "| dtypes:", ref_weights.dtype, ref_ids.dtype)
print(verdict("weights by hand vs topk_softmax", weights, ref_weights))

# %% [markdown] slideshow={"slide_type": "subslide"}
# One token's probabilities, its two chosen experts in orange:

# %% slideshow={"slide_type": "-"} alt="Bar chart of one token's softmax probabilities over 8 experts, the two chosen experts highlighted in orange."
viz.token_probabilities(probs[0], ref_ids[0], title="Token 0: softmax over 8 experts")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Renormalized top-k = a softmax over the top-k logits
#
# Write $Z = \sum_j e^{\ell_j}$ for the full softmax denominator. For the chosen set $\mathcal{T}$,
#
# $$
# w_e = \frac{p_e}{\sum_{i \in \mathcal{T}} p_i}
#     = \frac{e^{\ell_e}/Z}{\sum_{i \in \mathcal{T}} e^{\ell_i}/Z}
#     = \frac{e^{\ell_e}}{\sum_{i \in \mathcal{T}} e^{\ell_i}}
#     = \operatorname{softmax}\big(\ell_{\mathcal{T}}\big)_e .
# $$
#
# $Z$ cancels: the weights depend only on the $k$ chosen logits. The other $E - k$ logits decide *which*
# experts are chosen, never *how much* each counts. Numerically:

# %% slideshow={"slide_type": "-"}
chosen_logits = logits.gather(1, ref_ids.long())  # (M, k)
print(verdict("softmax over the top-k logits vs topk_softmax", torch.softmax(chosen_logits, dim=-1), ref_weights))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Two consequences. With $k = 1$ every weight is exactly 1 — the layer just picks one expert. And without
# renormalization (`renormalize=False`, which some other MoE models use) the weights are the raw
# probabilities and sum to less than one:

# %% slideshow={"slide_type": "-"}
w1, _ = topk_softmax(logits, 1)
raw, _ = topk_softmax(logits, K, renormalize=False)
print("k = 1 weights:", [f"{w:.4f}" for w in w1.flatten().tolist()])
print("renormalize=False, row sums:", [f"{s:.4f}" for s in raw.sum(dim=-1).tolist()])

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Ties go to the lower expert id
#
# Two experts with *equal* probability are a real event, not a curiosity: router logits come out of the
# gate in bf16, which has only 128 values between one power of two and the next, so two experts can get
# the very same logit. When that happens at the edge of the top $k$, the tie rule decides which expert the
# token visits.

# %% [markdown] slideshow={"slide_type": "notes"}
# vLLM's routing kernel scans for the maximum and, among equal values, keeps the lowest index; so does
# ours. Take a row where experts 1, 2 and 4 share the top score:

# %% slideshow={"slide_type": "-"}
tied = torch.tensor([[0.5, 1.0, 1.0, 0.2, 1.0, -0.3, 0.0, 0.7]])  # (1, E)
w_tied, ids_tied = topk_softmax(tied, K)
print("topk_softmax ids:", ids_tied.tolist(), "weights:", [f"{w:.4f}" for w in w_tied[0].tolist()])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Why not `torch.topk`? Its documentation promises the $k$ largest *values*, but says that the indices of
# tied elements are not guaranteed to be stable and may vary between calls. On this CPU, for a row of
# eight equal probabilities — a router whose logits are all equal:

# %% slideshow={"slide_type": "-"}
uniform = torch.full((1, E), 1.0 / E)  # (1, E): eight equal probabilities
print("torch.topk         :", torch.topk(uniform, K).indices.tolist())
print("stable sort (ours) :", torch.sort(uniform, dim=-1, descending=True, stable=True).indices[:, :K].tolist())

# %% [markdown] slideshow={"slide_type": "subslide"}
# `torch.topk` returned experts 6 and 5 here (another version, device or row length may return yet
# another pair). A stable sort keeps equal elements in their original order, so the first $k$ of a
# descending stable sort are exactly "the largest, lowest id first". That is why `moe_lib` uses it.
#
# How often does it matter?

# %% [markdown] slideshow={"slide_type": "notes"}
# Over 20,000 tokens with bf16 logits, count the rows where the $k$-th and
# $(k{+}1)$-th probabilities are equal (the tie rule decides), and the rows where `torch.topk` picks a
# different *set* of experts than the rule:

# %% slideshow={"slide_type": "-"}
logits_bf16 = randn(20_000, E, generator=seeded(5)).bfloat16()  # (M, E): as a bf16 gate would give them
p = softmax_fp32(logits_bf16)  # (M, E) fp32
p_sorted = torch.sort(p, dim=-1, descending=True, stable=True).values
_, rule_ids = topk_softmax(logits_bf16, K)
topk_ids = torch.topk(p, K).indices
print(f"rows with a tie at the top-{K} edge : {(p_sorted[:, K - 1] == p_sorted[:, K]).sum().item()}")
print(f"rows where torch.topk's set differs : "
      f"{(topk_ids.sort(dim=-1).values != rule_ids.sort(dim=-1).values).any(dim=-1).sum().item()}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# A few tokens in ten thousand — at serving scale that is many tokens per second sent to a different
# expert than vLLM would send them. A reference that breaks ties differently cannot be compared with the
# real layer token by token, so the rule is part of the specification.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. Why fp32
#
# **Range.** $e^x$ overflows fp16 above $x \approx 11.1$ and fp32 above $x \approx 88.7$. Without the
# max subtraction, one large logit turns a row into $\infty/\infty = \text{NaN}$:

# %% slideshow={"slide_type": "-"}
big_fp16 = torch.tensor([[12.0, 10.0, 3.0, 0.0]], dtype=torch.float16)
big_fp32 = torch.tensor([[100.0, 95.0, 3.0, 0.0]])
for row in (big_fp16, big_fp32):
    naive = row.exp() / row.exp().sum(dim=-1, keepdim=True)
    print(f"{str(row.dtype):14} naive: {naive.float().tolist()}   max-subtracted: "
          f"{[round(v, 4) for v in softmax_fp32(row)[0].tolist()]}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Precision.** bf16 has the range of fp32 but only 8 significant bits. When a softmax's *output* is
# rounded to bf16, two probabilities closer than one bf16 step (0.4–0.8 % of their value) can round to
# the same number. Two distinct logits then become a tie, which the tie rule resolves towards the lower
# id — the *wrong* expert, when the higher id had the larger logit. The probabilities also stop summing
# to one. Compare, on the same 20,000 bf16 logit rows:

# %% slideshow={"slide_type": "-"}
for dtype in (torch.bfloat16, torch.float16):
    p_low = torch.softmax(logits_bf16.to(dtype), dim=-1).float()  # softmax output rounded to dtype
    low_ids = torch.sort(p_low, dim=-1, descending=True, stable=True).indices[:, :K]
    changed = (low_ids.sort(dim=-1).values != rule_ids.sort(dim=-1).values).any(dim=-1)
    drift = (p_low.sum(dim=-1) - 1).abs().max().item()
    print(f"{str(dtype):15}: {changed.sum().item():3d} tokens get another expert; "
          f"row sums off by up to {drift:.1e}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# One such token. Experts 2 and 3 have distinct bf16 logits, so fp32 ranks expert 3 above expert 2; the
# bf16 softmax rounds both probabilities to the same value, and the tie goes to expert 2:

# %% slideshow={"slide_type": "-"}
p_bf16 = torch.softmax(logits_bf16, dim=-1)  # (M, E) bf16
bf16_ids = torch.sort(p_bf16.float(), dim=-1, descending=True, stable=True).indices[:, :K]
row = (bf16_ids.sort(dim=-1).values != rule_ids.sort(dim=-1).values).any(dim=-1).nonzero()[0, 0].item()
print(f"token {row}: fp32 picks {rule_ids[row].tolist()}, bf16 softmax picks {bf16_ids[row].tolist()}")
swapped = sorted(set(rule_ids[row].tolist()) ^ set(bf16_ids[row].tolist()))  # the two experts that swap
for e in swapped:
    print(f"  expert {e}: logit {logits_bf16[row, e].item():+.6f}   fp32 p = {p[row, e].item():.6f}"
          f"   bf16 p = {p_bf16[row, e].item():.6f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# fp16, with 11 significant bits, changed no token in this sample, but its sums drift too, and its range
# is what broke the first example. Computing in fp32 costs nothing measurable — routing reads an
# $(M, E)$ tensor, tiny next to the experts' weights — so vLLM does it, and so do we.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. NaN and Inf
#
# If a hidden state contains a NaN (a numerical failure upstream), every logit of that token is NaN, and
# so is every probability. vLLM's rule sets non-finite probabilities to **0**: the token gets weight 0
# for both its experts (the sum is 0, so the division is by 1) and, by the tie rule, experts 0 and 1.
# The routing output stays finite and well-formed; it does not spread NaN into the weights.

# %% [markdown] slideshow={"slide_type": "notes"}
# Four rows: a NaN logit, a $+\infty$ logit ($\infty - \infty$ = NaN poisons the row), a $-\infty$ logit
# (a clean probability of 0 — that expert is simply never chosen), and a row that is all $-\infty$:

# %% slideshow={"slide_type": "-"}
nan, inf = float("nan"), float("inf")
special = torch.tensor([
    [0.5, 1.0, -0.5, nan, 0.0, 0.2, -1.0, 0.3],
    [0.5, 1.0, -0.5, 0.1, 0.0, inf, -1.0, 0.3],
    [-inf, 1.0, -0.5, 0.1, 0.0, 0.2, -1.0, 0.3],
    [-inf] * E,
])  # (4, E)
w_special, ids_special = topk_softmax(special, K)
for name, w, i in zip(["NaN logit", "+inf logit", "-inf logit", "all -inf"], w_special, ids_special):
    print(f"{name:11}: ids {i.tolist()}  weights {[f'{v:.4f}' for v in w.tolist()]}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Hugging Face's router has no such rule: the same NaN token gets NaN weights there.

# %% slideshow={"slide_type": "-"}
hf_router = MixtralTopKRouter(MixtralConfig(hidden_size=TINY.hidden_size, num_local_experts=E,
                                            num_experts_per_tok=K))
gate = MoEGate(TINY.hidden_size, E, generator=seeded(1))
with torch.no_grad():
    hf_router.weight.copy_(gate.weight)
    x = randn(2, TINY.hidden_size, generator=seeded(2))  # (M, H)
    x[1, 7] = nan  # token 1 carries a NaN
    _, hf_w, _ = hf_router(x)
    ours_w, ours_ids = topk_softmax(gate(x), K)
print("HF weights of the NaN token  :", hf_w[1].tolist())
print("our weights, ids of the token:", ours_w[1].tolist(), ours_ids[1].tolist())

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Pictures of the routing
#
# For a batch of 64 tokens: the **load** of each expert — how many (token, slot) pairs chose it — and the
# routing as a token × expert map. With perfectly balanced routing each expert would get $M k / E$ slots;
# random logits get close, real routers can be far more uneven, and the kernels must cope with that
# (notebooks 05 and 09).

# %% slideshow={"slide_type": "-"} alt="Bar chart of expert load for 64 tokens with top-2 routing: slots per expert, all near the balanced value of 16."
batch_logits = randn(64, E, generator=seeded(3))  # (M, E)
batch_w, batch_ids = topk_softmax(batch_logits, K)
viz.expert_load(batch_ids, E)

# %% slideshow={"slide_type": "subslide"} alt="Routing map of the first 24 tokens: for each token, two coloured cells mark its chosen experts, shaded by routing weight."
viz.routing_heatmap(batch_w[:24], batch_ids[:24], E, title="Routing weights, first 24 tokens")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Try it
#
# Move the sliders: `top_k` from 1 to 8, and the number of tokens. Watch the load even out as the batch
# grows, and the map fill up as $k$ approaches $E$ (at $k = E$ every token visits every expert — a dense
# layer, but weighted). The figure is drawn when the cell runs, and redrawn whenever a slider is released.

# %% slideshow={"slide_type": "-"} alt="Routing overview for 32 tokens with top-2: the load of each expert as bars and the token by expert routing map, as the widget first draws it."
figure_area = Output()


def show_routing(top_k: int, num_tokens: int) -> None:
    """Route fresh tokens with the given top_k, and redraw the figure below the sliders."""
    logits = randn(num_tokens, E, generator=seeded(4))  # (M, E)
    w, ids = topk_softmax(logits, top_k)
    figure_area.outputs = ()
    figure_area.append_display_data(viz.routing_overview(w, ids, E))


controls = interactive(
    show_routing,
    clear_output=False,
    top_k=IntSlider(value=K, min=1, max=E, description="top_k", continuous_update=False),
    num_tokens=IntSlider(value=32, min=4, max=256, step=4, description="tokens", continuous_update=False),
)
VBox([controls, figure_area])

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7. The Triton kernel
#
# `topk_softmax` above is a sequence of torch operations, each reading and writing an $(M, E)$ tensor in
# memory. `moe_lib.kernels.routing.topk_softmax_triton` does the whole routing **in one kernel**: each row's
# logits are read once, and everything else happens in registers. Here is its source:

# %% slideshow={"slide_type": "-"}
show_source(topk_softmax_kernel)  # the Python function under the @triton.jit wrapper, highlighted

# %% [markdown] slideshow={"slide_type": "subslide"}
# A walk through it:
#
# * **One program per block of rows.** The launch grid is $\lceil M / \texttt{BLOCK\_M} \rceil$ programs;
#   program `pid_m` owns rows `pid_m * BLOCK_M + arange(BLOCK_M)`. `BLOCK_E` is $E$ rounded up to a power
#   of two (Triton tiles have power-of-two sizes), and `BLOCK_K` likewise for $k$.

# %% [markdown] slideshow={"slide_type": "notes"}
# * **Softmax in registers.** The tile of logits is loaded once, with `mask_m`/`mask_e` guarding rows past
#   $M$ and columns past $E$. Masked columns read $-\infty$, so they add $e^{-\infty} = 0$ to the sum.
#   The row maximum is subtracted before `exp`, in fp32.
# * **NaN and Inf to zero.** `p == p` is false only for NaN, and `p < inf` rules out infinities. Padding
#   columns are then set to $-1$, below any real probability, so they can never be picked.
# * **Top-k by repeated arg-max.** $k$ is small (2 for Mixtral), so instead of sorting, the kernel runs $k$
#   rounds: take the row maximum `best`; among the columns equal to it take the **smallest** index (the
#   `tl.min` over `where(p == best, offs_e, BLOCK_E)`) — the lower-id tie rule; write both into slot $j$;
#   then overwrite the taken column with $-2$ so the next round finds the next one.
# * **Renormalize** by the sum of the $k$ kept values, dividing by 1 when that sum is not positive.
# * **Masked store.** Row offsets are cast to int64 before multiplying, so huge $M$ cannot overflow 32
#   bits; the mask writes only real rows and the first $k$ of the `BLOCK_K` slots.
#
# On this machine the kernel runs in the Triton interpreter (or compiled, on a GPU):

# %% slideshow={"slide_type": "-"}
# NBVAL_IGNORE_OUTPUT
device = runtime.default_device()
print("device:", device, "| Triton interpreter:", runtime.INTERPRET)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Checked against `topk_softmax`
#
# Ids must match **exactly**, weights within fp32 tolerance — on random logits, on logits full of ties
# (small integers), on the NaN/Inf rows, for several $k$, and without renormalization. (fp32 logits: the
# interpreter does not compute bf16 correctly.)

# %% slideshow={"slide_type": "-"}
cases = {
    "random logits, M=1000": randn(1000, E, generator=seeded(6), scale=2.0),
    "integer logits (many ties)": torch.randint(-2, 3, (500, E), generator=seeded(7)).float(),
    "NaN / Inf rows": special,
}
for name, case in cases.items():
    w_t, ids_t = topk_softmax_triton(case.to(device), K)
    w_r, ids_r = topk_softmax(case, K)
    print(f"ids equal: {torch.equal(ids_t.cpu(), ids_r)} | " + verdict(f"triton vs torch, {name}", w_t.cpu(), w_r))

# %% slideshow={"slide_type": "subslide"}
case = cases["random logits, M=1000"]
for k in (1, 2, 4, 8):
    for renormalize in (True, False):
        w_t, ids_t = topk_softmax_triton(case.to(device), k, renormalize=renormalize)
        w_r, ids_r = topk_softmax(case, k, renormalize=renormalize)
        print(f"k={k} ids equal: {torch.equal(ids_t.cpu(), ids_r)} | "
              + verdict(f"renormalize={renormalize!s:5}", w_t.cpu(), w_r))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Checked against Hugging Face's router
#
# Finally the whole path against an independent implementation: our gate, then the Triton kernel, versus
# Hugging Face's `MixtralTopKRouter` holding the same weight — fresh random tokens, no ties, so the two
# tie rules cannot disagree.

# %% slideshow={"slide_type": "-"}
tokens = randn(256, TINY.hidden_size, generator=seeded(8))  # (M, H)
gate = MoEGate(TINY.hidden_size, E, generator=seeded(9))
with torch.no_grad():
    hf_router.weight.copy_(gate.weight)
    _, hf_w, hf_ids = hf_router(tokens)
    w_t, ids_t = topk_softmax_triton(gate(tokens).to(device), K)
print("ids equal:", torch.equal(ids_t.cpu().long(), hf_ids))
print(verdict("MoEGate + topk_softmax_triton vs HF MixtralTopKRouter", w_t.cpu(), hf_w))

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
# [solutions/03_routing_solutions.ipynb](solutions/03_routing_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_renormalize, check_topk_ids

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — the renormalization
#
# Write `renormalize(topk_probs)`: the $(M, k)$ probabilities of the chosen experts in, the $(M, k)$
# routing weights out — each token's weights divided by their sum, so that they add up to one. Mind
# section 5: a token whose logits held a NaN has probabilities 0, and the rule is to divide by 1 when the
# sum is $\le 0$.

# %% slideshow={"slide_type": "-"}
def renormalize(topk_probs: torch.Tensor) -> torch.Tensor:
    """(M, k) chosen probabilities -> (M, k) weights summing to 1 per token (divide by 1 if the sum is <= 0)."""
    raise NotImplementedError  # your code here


check_renormalize(renormalize)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — top-k with the tie rule
#
# Write `topk_ids(probs, k)`: for $(M, E)$ probabilities, the integer ids of each token's $k$ largest,
# largest first, and among equal probabilities the **lower** expert id first (section 3). The check
# includes rows full of ties.

# %% slideshow={"slide_type": "-"}
def topk_ids(probs: torch.Tensor, k: int) -> torch.Tensor:
    """(M, E) probabilities -> (M, k) expert ids, largest first, ties to the lower id."""
    raise NotImplementedError  # your code here


check_topk_ids(topk_ids)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 1 — top-k in a kernel
#
# Two kernel puzzles follow the exercises: you write the `@triton.jit` kernel, the check launches it (the
# comment shows how) in the interpreter on fixed and random cases inside poisoned guard buffers, and reports
# stores outside the outputs, elements left unwritten, wrong values — with a picture of which program wrote
# what — and the likely mistake. Until the body does something it says *not solved yet*.

# %% [markdown] slideshow={"slide_type": "notes"}
# Complete `topk_kernel`: one program per token — the softmax of its `E` logits in fp32, then `TOP_K` rounds
# of arg-max, largest first, **ties to the lower expert id** (section 7's kernel does the same for a block of
# rows). A NaN probability counts as 0 and padding columns are never chosen; no renormalization here.

# %% slideshow={"slide_type": "-"}
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_renormalize_kernel, check_topk_kernel


@triton.jit
def topk_kernel(logits_ptr, weights_ptr, ids_ptr, E, stride_lm, TOP_K: tl.constexpr, BLOCK_E: tl.constexpr):
    pass  # your code here


# launched as  topk_kernel[(M,)](logits, weights, ids, E, logits.stride(0),
#                                TOP_K=top_k, BLOCK_E=triton.next_power_of_2(E))
# weights (M, TOP_K) fp32 and ids (M, TOP_K) int32 are contiguous: slot j of token m is at m * TOP_K + j
check_topk_kernel(topk_kernel)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 2 — the renormalization in a kernel
#
# Complete `renormalize_kernel`: `BLOCK_M` tokens per program, as a (`BLOCK_M`, `BLOCK_K`) tile of the
# contiguous $(M, k)$ weights — divide each row by its sum, by 1 where the sum is $\le 0$. `BLOCK_K` is a
# power of two and `TOP_K` need not be: mask the rows and the columns.

# %% slideshow={"slide_type": "-"}
@triton.jit
def renormalize_kernel(w_ptr, out_ptr, M, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


# launched as  renormalize_kernel[(triton.cdiv(M, BLOCK_M),)](w, out, M, TOP_K=top_k, BLOCK_M=BLOCK_M,
#                                                              BLOCK_K=triton.next_power_of_2(top_k))
check_renormalize_kernel(renormalize_kernel)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * Routing is: fp32 softmax (max-subtracted) → NaN/Inf to 0 → top-$k$ with ties to the lower id →
#   renormalize. Outputs: fp32 weights and int32 ids, both $(M, k)$.
# * Renormalized top-$k$ probabilities are a softmax over the $k$ chosen logits; the rest only decide the
#   choice.
# * The tie rule is part of the contract; `torch.topk` does not promise it, a stable sort does.

# %% [markdown] slideshow={"slide_type": "notes"}
# * fp32 matters: low-precision softmax overflows without the max subtraction, and rounding its output to
#   bf16 merges close probabilities and sends some tokens to a different expert.
# * The Triton kernel does all of it in one pass with a repeated arg-max, and matches the torch
#   specification and Hugging Face's router.
#
# **Next — [04 · the reference MoE](04_reference.ipynb):** running the chosen experts — a loop over
# experts, SiLU-and-mul, the weighted sum — checked against Hugging Face's `MixtralSparseMoeBlock`.
