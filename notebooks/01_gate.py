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
# # 01 · The gate: scoring every expert for every token
#
# The first step of an MoE layer decides nothing yet — it only **scores**. The gate (or *router*) is a
# single linear map from the hidden size $H$ to the number of experts $E$, without bias:
#
# $$
# \ell = x\,W_g^\top, \qquad x \in \mathbb{R}^{M \times H},\quad W_g \in \mathbb{R}^{E \times H},\quad
# \ell \in \mathbb{R}^{M \times E}.
# $$
#
# Row $t$ of $\ell$ holds token $t$'s **router logits**: one score per expert, $\ell_{te} = \langle x_t,
# W_{g,e}\rangle$ — how well the token aligns with expert $e$'s row of the gate.

# %% [markdown] slideshow={"slide_type": "notes"}
# Notebook 03 turns these
# scores into a choice of experts.
#
# In this notebook: the gate derived by hand, checked against `moe_lib.gate.MoEGate` and against Hugging
# Face's Mixtral router; a picture of the logits; the dtype they come in; and why vLLM keeps a full copy
# of the gate on every GPU.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from moe_lib.teach import viz
from moe_lib.config import MIXTRAL_8X7B, TINY
from moe_lib.gate import INITIALIZER_RANGE, MoEGate
from moe_lib.kernels.routing import topk_softmax
from moe_lib.testing import randn, seeded, tolerance, verdict

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. A gate, and a batch of tokens
#
# We use the small preset `TINY` — same structure as Mixtral (8 experts, top-2), but $H = 64$ so
# everything runs instantly on a CPU. `MoEGate` draws its weight like Hugging Face's Mixtral does at
# initialization: $\mathcal{N}(0, 0.02^2)$, from a seeded generator so this notebook reproduces exactly.

# %% slideshow={"slide_type": "-"}
cfg = TINY
gate = MoEGate(cfg.hidden_size, cfg.num_experts, dtype=torch.float32, generator=seeded(0))
x = randn(16, cfg.hidden_size, generator=seeded(1))  # (M, H): 16 tokens

print(gate)
print("weight:", tuple(gate.weight.shape), gate.weight.dtype, f"| init std {INITIALIZER_RANGE}")
print("tokens:", tuple(x.shape), x.dtype)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The logits, by hand
#
# One logit is a dot product. Token 0 against expert 3:

# %% slideshow={"slide_type": "-"}
W = gate.weight.detach()  # (E, H)
t, e = 0, 3
by_hand = sum(x[t, h] * W[e, h] for h in range(cfg.hidden_size))
print(f"logit[{t}, {e}] = sum_h x[{t}, h] * W[{e}, h] = {by_hand.item():+.4f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# All of them at once is one matrix multiply, $\ell = x W_g^\top$. We check it against the module's
# forward pass — the line below prints `PASS` when the relative error
# $\lVert \ell - \ell_\text{ref}\rVert / \lVert \ell_\text{ref}\rVert$ is under the fp32 tolerance, and
# shows the power of ten just above the error. (An error of exactly zero prints as `< 1e-15`: the module
# runs the very same GEMM, so the results agree to the bit.)

# %% slideshow={"slide_type": "-"}
logits = x @ W.T  # (M, E)
with torch.no_grad():
    ref = gate(x)  # (M, E)

print("logits:", tuple(logits.shape), logits.dtype)
print(verdict("x @ W.T vs MoEGate", logits, ref))
print(verdict("one logit by hand", by_hand.reshape(1), ref[t, e].reshape(1)))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. What the logits look like
#
# One row per token, one column per expert; red is a high score, blue a low one.

# %% slideshow={"slide_type": "-"} alt="Heatmap of router logits, 16 tokens by 8 experts: red cells are high scores, blue cells low; each row shows which experts one token prefers."
viz.token_expert_heatmap(logits, title="Router logits, 16 tokens x 8 experts")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Two things to notice.
#
# * **Every token scores every expert.** The gate is dense; the sparsity comes only in the next step,
#   when each row keeps its top $k$ entries.
# * **The scores are small.** With weights of standard deviation $\sigma = 0.02$ and unit-variance token
#   features, a logit is a sum of $H$ such products, so its standard deviation is about
#   $\sigma\sqrt{H} = 0.02 \cdot 8 = 0.16$. A freshly initialized router therefore spreads its
#   probability almost evenly over the experts; it is training that makes a router decisive.

# %% slideshow={"slide_type": "-"}
print(f"predicted std  : {INITIALIZER_RANGE * cfg.hidden_size ** 0.5:.3f}")
print(f"measured std   : {logits.std().item():.3f}   ({logits.numel()} logits)")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. Any leading shape, and the activation dtype
#
# The gate acts on the last dimension only, so it takes a flat batch $(M, H)$ or a $(\text{batch},
# \text{seq}, H)$ tensor alike. Its output has the **dtype of the gate's weight**, which in vLLM is the
# model's activation dtype — bf16 for Mixtral. The logits are *not* upcast here; routing does that
# (notebook 03).

# %% slideshow={"slide_type": "-"}
batch = x.view(2, 8, cfg.hidden_size)  # (batch, seq, H)
with torch.no_grad():
    print("(batch, seq, H) ->", tuple(gate(batch).shape))

gate_bf16 = MoEGate(cfg.hidden_size, cfg.num_experts, dtype=torch.bfloat16, generator=seeded(0))
with torch.no_grad():
    logits_bf16 = gate_bf16(x.bfloat16())  # (M, E) bf16
print("bf16 gate ->", logits_bf16.dtype)
print(verdict("bf16 logits vs fp32 logits", logits_bf16, logits, tol=tolerance(torch.bfloat16)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# bf16 keeps 8 significant bits, so bf16 logits differ from the fp32 ones by a few parts in a thousand.
# That is harmless for the logits themselves, but it means two experts whose scores are close in fp32 can
# share one bf16 value — the tie-breaking rule of notebook 03 matters in practice.
#
# The gate checks its input and names what is wrong:

# %% slideshow={"slide_type": "-"}
try:
    gate(torch.ones(3, cfg.hidden_size + 1))
except ValueError as err:
    print("ValueError:", err)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Why vLLM replicates the gate
#
# With tensor parallelism, vLLM splits every expert across the GPUs (notebook 08) but gives **each GPU
# the whole gate**. It can afford to: the gate is tiny next to the experts.

# %% slideshow={"slide_type": "-"}
m = MIXTRAL_8X7B
gate_bytes = m.gate_params * m.bytes_per_element
expert_bytes = m.num_experts * m.params_per_expert * m.bytes_per_element
print(f"Mixtral gate    : {m.num_experts} x {m.hidden_size} = {m.gate_params:,} parameters = {gate_bytes / 2**10:.0f} KiB")
print(f"Mixtral experts : {expert_bytes / 1e9:.2f} GB per layer  -> the gate is {gate_bytes / expert_bytes:.1e} of it")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Replication buys two things. Every GPU computes the same logits from the same (replicated) hidden
# states, so every GPU **routes every token identically without talking to the others**. And the gate's
# GEMM, $M \times H \times E$, is negligible next to the experts' — doing it redundantly costs nothing
# worth sharding.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Checked against Hugging Face's Mixtral router
#
# Hugging Face `transformers` has an independent implementation: `MixtralTopKRouter`, the `gate` of its
# `MixtralSparseMoeBlock`. We build one from a small `MixtralConfig` with our shapes. Its weight is created
# **uninitialized** (arbitrary memory), so we copy ours in before using it. Its forward returns three
# things: the logits, and — a preview of notebook 03 — the top-$k$ weights and expert ids.

# %% slideshow={"slide_type": "-"}
hf_config = MixtralConfig(
    hidden_size=cfg.hidden_size,
    intermediate_size=cfg.intermediate_size,
    num_local_experts=cfg.num_experts,
    num_experts_per_tok=cfg.top_k,
)
hf_gate = MixtralTopKRouter(hf_config)
with torch.no_grad():
    hf_gate.weight.copy_(gate.weight)
    hf_logits, hf_scores, hf_ids = hf_gate(x)

print("HF returns:", tuple(hf_logits.shape), tuple(hf_scores.shape), tuple(hf_ids.shape))
print(verdict("MoEGate vs HF MixtralTopKRouter logits", ref, hf_logits))

weights, ids = topk_softmax(ref, cfg.top_k)  # notebook 03's routing, applied to our logits
print(verdict("topk_softmax vs HF router weights", weights, hf_scores),
      "| same expert ids:", torch.equal(ids.long(), hf_ids))

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
# [solutions/01_gate_solutions.ipynb](solutions/01_gate_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_gate_logits, check_logit_std

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — the gate, by hand
#
# Write `gate_logits(x, weight)`: the router logits of tokens `x` of shape $(\dots, H)$ — a flat batch
# $(M, H)$ or $(\text{batch}, \text{seq}, H)$ — under a gate weight of shape $(E, H)$. Return shape
# $(\dots, E)$, one logit per token and expert. One matrix product; no `nn.Linear`.

# %% slideshow={"slide_type": "-"}
def gate_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(..., H) tokens, (E, H) gate weight -> (..., E) router logits."""
    raise NotImplementedError  # your code here


check_gate_logits(gate_logits)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — how decisive is a fresh router?
#
# Section 3 predicted the spread of the logits. Write `logit_std(init_std, hidden_size)`: the standard
# deviation of one logit $\ell = \sum_{h=1}^{H} x_h w_h$ when every $x_h$ has variance 1, every $w_h$ has
# standard deviation `init_std`, and all of them are independent with mean 0. Then evaluate it for
# Mixtral ($H = 4096$, `init_std` $= 0.02$): are a fresh router's probabilities close to uniform?

# %% slideshow={"slide_type": "-"}
def logit_std(init_std: float, hidden_size: int) -> float:
    """Standard deviation of x . w for unit-variance x and weights of standard deviation init_std."""
    raise NotImplementedError  # your code here


check_logit_std(logit_std)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * The gate is one bias-free linear map $H \to E$: $\ell = x W_g^\top$, every token scored against every
#   expert. Its output stays in the activation dtype.
# * A freshly initialized gate ($\sigma = 0.02$) gives logits of standard deviation about $0.02\sqrt{H}$,
#   i.e. a nearly uniform router.
# * vLLM replicates the gate on every GPU: 64 KiB for Mixtral, and identical routing everywhere with no
#   communication.
# * `MoEGate` agrees with Hugging Face's `MixtralTopKRouter` once both hold the same weight.

# %% [markdown] slideshow={"slide_type": "notes"}
# **Next — [02 · a Triton primer](02_triton_primer.ipynb):** the language the kernels of the next notebooks
# are written in — programs, blocks, masks, strides, `tl.dot` — on tiny kernels, each drawn element by
# element; then [03 · top-k routing](03_routing.ipynb) turns these logits into a choice of $k$ experts.
