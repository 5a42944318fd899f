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
# # 00 · Overview: the Mixtral MoE layer, as vLLM runs it
#
# This series rebuilds one layer of a large language model — the **Mixture-of-Experts (MoE) block of
# Mixtral 8x7B** — exactly as the vLLM inference engine computes it, one step per notebook. Each step is
# first derived in a few lines of plain PyTorch, then checked against the shared `moe_lib` package (and,
# where one exists, against an independent implementation such as Hugging Face `transformers`), then
# drawn.

# %% [markdown] slideshow={"slide_type": "notes"}
# Every notebook is re-executed as a test, so every number you read here was just recomputed.
#
# In this notebook:
#
# 1. what an MoE layer computes, and why it is cheaper than its parameter count suggests;
# 2. Mixtral 8x7B's numbers: parameters stored versus used per token, bytes, FLOPs;
# 3. the vLLM layer we reproduce, piece by piece;
# 4. the road map of notebooks 00–10;
# 5. a check of the machine these notebooks run on.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import torch

import moe_lib
from moe_lib import runtime
from moe_lib.teach import viz
from moe_lib.config import MIXTRAL_8X7B, MIXTRAL_8X7B_LAYERS, TINY
from moe_lib.testing import randn, seeded

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. What an MoE layer is
#
# In a dense transformer, every token goes through the same feed-forward network (FFN). An MoE layer keeps
# **E** FFNs — the *experts* — side by side and adds a small **router** (also called the *gate*). For each
# token $x \in \mathbb{R}^H$ the router scores all experts, the layer keeps the **top $k$**, and only those
# $k$ experts run:
#
# $$
# \ell = W_g\,x \in \mathbb{R}^E, \qquad
# p = \operatorname{softmax}(\ell), \qquad
# \mathcal{T} = \operatorname{top}_k(p), \qquad
# w_e = \frac{p_e}{\sum_{j \in \mathcal{T}} p_j}\ \ (e \in \mathcal{T}),
# $$
#
# $$
# y = \sum_{e \in \mathcal{T}} w_e\, \mathrm{FFN}_e(x), \qquad
# \mathrm{FFN}_e(x) = W_2^{(e)}\big(\operatorname{silu}(W_1^{(e)} x) \odot W_3^{(e)} x\big).
# $$

# %% [markdown] slideshow={"slide_type": "notes"}
# Each expert is a SwiGLU MLP: two "up" projections $W_1, W_3$ of shape $I \times H$ (gate and up), a
# SiLU on one of them, an elementwise product, and a "down" projection $W_2$ of shape $H \times I$.
#
# The point is **sparse compute**: the layer *stores* $E$ experts but each token *uses* only $k$ of them.
# Mixtral has $E = 8$ and $k = 2$, so a token pays for 2 experts while the model has the capacity of 8.
#
# Here is the whole idea on a toy layer (`moe_lib.config.TINY`: 8 experts, top-2, $H = 64$) — six tokens,
# a random router, and which experts each token is sent to:

# %% slideshow={"slide_type": "-"}
cfg = TINY
gen = seeded(0)
x = randn(6, cfg.hidden_size, generator=gen)  # (M, H): six tokens
w_gate = randn(cfg.num_experts, cfg.hidden_size, generator=gen, scale=0.15)  # (E, H): the router

logits = x @ w_gate.T  # (M, E)
probs = torch.softmax(logits.float(), dim=-1)  # (M, E)
top_p, top_ids = probs.topk(cfg.top_k, dim=-1)  # (M, k)  (fine without ties; notebook 03 on ties)
weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (M, k): renormalized

ref_weights, ref_ids = moe_lib.topk_softmax(logits, cfg.top_k)  # the library's routing
print(moe_lib.verdict("weights vs moe_lib.topk_softmax", weights, ref_weights),
      "| same experts:", torch.equal(top_ids.int(), ref_ids))
for t in range(x.shape[0]):
    pairs = ", ".join(f"expert {e} (w={w:.3f})" for e, w in zip(top_ids[t].tolist(), weights[t].tolist()))
    print(f"token {t}: {pairs}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Every token lands on its own pair of experts: the work per token is 2 expert MLPs, never 8. The
# other six experts of that token are simply not computed. (Notebook 03 explains why the softmax runs in
# fp32 and how ties are broken; notebook 04 runs the experts.)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Mixtral 8x7B's numbers
#
# `moe_lib.config.MIXTRAL_8X7B` holds the shape of one MoE block: hidden size $H$, expert width $I$,
# $E$ experts, top-$k$, and bf16 weights. Let us count, by hand first.

# %% slideshow={"slide_type": "-"}
m = MIXTRAL_8X7B
print(m)
print(f"decoder layers, each with one MoE block: {MIXTRAL_8X7B_LAYERS}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# One expert holds $W_1$ and $W_3$ ($I \times H$ each) and $W_2$ ($H \times I$): $3HI$ parameters. The
# router is $E \times H$. A token touches its $k$ experts and the (whole, tiny) router:
#
# $$
# P_\text{total} = E\cdot 3HI + EH, \qquad P_\text{active} = k\cdot 3HI + EH .
# $$

# %% slideshow={"slide_type": "-"}
H, I, E, k = m.hidden_size, m.intermediate_size, m.num_experts, m.top_k
per_expert = 3 * H * I
total = E * per_expert + E * H
active = k * per_expert + E * H
bytes_per = torch.finfo(m.dtype).bits // 8  # bf16: 2 bytes

# the same numbers, as moe_lib.config computes them
assert (per_expert, total, active) == (m.params_per_expert, m.total_params, m.active_params)
assert total * bytes_per == m.weight_bytes

print(f"parameters per expert      : {per_expert:>15,}")
print(f"router (E x H)             : {E * H:>15,}")
print(f"per layer, stored          : {total:>15,}  = {total * bytes_per / 1e9:5.2f} GB in bf16")
print(f"per layer, used per token  : {active:>15,}  = {active * bytes_per / 1e9:5.2f} GB in bf16")
print(f"fraction used per token    : {active / total:15.1%}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# A single MoE block of Mixtral holds **1.41 billion** parameters — 2.82 GB of bf16 weights — and a token
# uses a quarter of them. Across the model's 32 layers:

# %% slideshow={"slide_type": "-"}
L = MIXTRAL_8X7B_LAYERS
print(f"MoE blocks, all {L} layers : {L * total / 1e9:6.2f} B parameters = {L * total * bytes_per / 1e9:6.1f} GB bf16")
print(f"used per token            : {L * active / 1e9:6.2f} B parameters = {L * active * bytes_per / 1e9:6.1f} GB bf16")
print(f"FLOPs per token per layer : {m.flops_per_token() / 1e9:6.3f} GFLOP  (2 per multiply-add)")
print(f"FLOPs per token, {L} layers: {L * m.flops_per_token() / 1e9:6.1f} GFLOP")

# %% [markdown] slideshow={"slide_type": "subslide"}
# So the MoE blocks are **45.1 B** of Mixtral's parameters, and a token uses **11.3 B** of them. (The
# figures usually quoted for the whole model, 46.7 B stored and 12.9 B active, add the dense parts:
# attention and the embeddings, which every token uses.)
#
# Two consequences shape everything that follows:

# %% [markdown] slideshow={"slide_type": "notes"}
# * **Compute is cheap, memory is not.** Per token, the layer does ~0.7 GFLOP of expert work, but it must
#   keep all 2.82 GB of expert weights in GPU memory, because the next token may pick any expert.
# * **At small batch sizes the layer is bound by reading weights.** Decoding one token reads the weights
#   of its 2 experts (0.70 GB) to do 0.7 GFLOP: about one FLOP per byte, far below what a GPU can do per
#   byte it reads. A batch of tokens shares the weight reads only when tokens pick the same experts —
#   notebook 04 counts this, notebook 07 measures it.

# %% slideshow={"slide_type": "-"} alt="Bar chart of Mixtral 8x7B's expert parameters over 32 layers: 45.10 billion stored for the 8 experts, 11.27 billion used per token by its 2 experts."
viz.moe_parameters(MIXTRAL_8X7B, num_layers=MIXTRAL_8X7B_LAYERS)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. The layer vLLM runs
#
# In vLLM, Mixtral's MoE block is a module called `MixtralMoE`. Its forward pass is short, and each line
# hides one topic of this series:
#
# | step | what happens | shapes | notebook |
# |---|---|---|---|
# | gate | a **replicated** `Linear(H → E, bias=False)`: every GPU holds the whole (small) router and scores every token | $(M, H) \to (M, E)$ logits, activation dtype | 01 |
# | routing | softmax **in fp32** (max-subtracted) → top-$k$ (ties to the lower id) → renormalize | $(M, k)$ fp32 weights, $(M, k)$ int32 ids | 03 |
# | expert math | for each chosen expert: $W_{13}$ GEMM → SiLU·mul → $W_2$ GEMM, weighted sum over the $k$ | $(M, H)$ | 04 (reference) |
# | alignment | sort the (token, slot) pairs by expert, pad each group to a tile size | sorted ids, one expert id per block | 05 |
# | fused MoE | one **Triton** grouped-GEMM kernel runs all experts' tiles at once | $(M \cdot k, 2I)$, $(M \cdot k, H)$ | 06 |
# | tensor parallel | every GPU holds a slice of **every** expert along $I$; partial outputs are **all-reduced** | $(M, H)$ partial sums → sum | 08 |
#
# The expert weights live fused, as in vLLM (and in Hugging Face `transformers` 5): `w13` of shape
# $(E, 2I, H)$ — rows $[0, I)$ are $W_1$ (gate), rows $[I, 2I)$ are $W_3$ (up) — and `w2` of shape
# $(E, H, I)$. One GEMM against `w13` computes both up projections at once.

# %% [markdown] slideshow={"slide_type": "notes"}
# vLLM wraps the routing and expert steps in a layer called `FusedMoE`; the gate stays outside it. With
# tensor parallelism over $t$ GPUs, each GPU's `w13` is $(E, 2I/t, H)$ and its `w2` is $(E, H, I/t)$:
# each GPU computes a partial sum of every expert's output, and one all-reduce adds them up.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. The road map
#
# | notebook | teaches | lives in `moe_lib` |
# |---|---|---|
# | **00 overview** | the MoE layer, Mixtral's numbers, the road map, device check | `config`, `runtime` |
# | **01 gate** | the router: a linear map $H \to E$ | `gate` |
# | **02 Triton primer** | programs, blocks, masks, strides, `tl.dot`; the interpreter and debugging | `teach/viz` |
# | **03 top-k routing** | fp32 softmax → top-$k$ → renormalize; a Triton routing kernel | `routing` |
# | **04 reference MoE** | the loop over experts; checked against Hugging Face's block | `reference`, `testing` |
# | **05 alignment** | sort tokens by expert, pad to `BLOCK_M` | `kernels/align` |
# | **06 fused kernel** | the Triton grouped GEMM: GEMM1 → SiLU·mul → GEMM2 → sum | `kernels/fused_moe` |
# | **07 performance** | floors, roofline, tuning, comparison with peers | `bench`, `tune`, `kernels/configs/` |
# | **08 tensor parallel** | shards, all-reduce, gloo and NCCL runs | `parallel` |
# | **09 expert parallel** | `expert_map`, expert-parallel load balancing (EPLB) | `parallel` |
# | **10 the layer** | `MixtralMoE`, checkpoint loading, the whole model | `layer`, `checkpoint` |
#
# Across all of them: `moe_lib.teach.viz` draws the figures, `moe_lib.testing` compares results. Each
# comparison prints one line: `PASS`/`FAIL`, and the power of ten just above the relative error
# $\lVert \text{out} - \text{ref} \rVert / \lVert \text{ref} \rVert$, against a tolerance chosen by dtype.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Where these notebooks run
#
# On a machine with an NVIDIA GPU, the Triton kernels of notebooks 02, 03, 05 and 06 are compiled for it. Without
# one, `moe_lib.runtime` switches Triton to its **interpreter**, which runs the same kernel source on the
# CPU with numpy — slowly, but exactly enough to check it. (The interpreter does not compute bf16
# correctly, so the CPU runs use fp32 and small shapes such as `TINY`.) Your machine:

# %% slideshow={"slide_type": "-"}
# NBVAL_IGNORE_OUTPUT
print(runtime.format_report())
print(f"moe_lib     : {moe_lib.__version__}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * An MoE layer routes each token to $k$ of $E$ expert MLPs; the output is the routing-weighted sum of
#   those $k$ experts. Compute scales with $k$, memory with $E$.
# * Mixtral 8x7B: 8 experts of $3 \cdot 4096 \cdot 14336$ parameters each, top-2. One MoE block stores
#   1.41 B parameters (2.82 GB in bf16); a token uses 0.35 B of them. All 32 blocks: 45.1 B stored,
#   11.3 B used per token.

# %% [markdown] slideshow={"slide_type": "notes"}
# * vLLM's layer is: replicated gate → fp32 top-$k$ routing → a fused Triton kernel over the experts →
#   an all-reduce across tensor-parallel GPUs.
#
# **Next — [01 · the gate](01_gate.ipynb):** the router, a single matrix multiply, and what its logits
# look like.
