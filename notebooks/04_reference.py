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
# # 04 · The reference MoE: running the chosen experts
#
# Routing (notebook 03) told every token which $k$ experts to visit and with what weight. What remains is
# the arithmetic: run each token through its experts and add up the results,
#
# $$
# y_t = \sum_{j=1}^{k} w_{tj}\; \mathrm{FFN}_{e_{tj}}(x_t), \qquad
# \mathrm{FFN}_e(x) = W_2^{(e)}\Big(\operatorname{silu}\big(W_1^{(e)} x\big) \odot W_3^{(e)} x\Big),
# \qquad \operatorname{silu}(z) = z\,\sigma(z) = \frac{z}{1 + e^{-z}} .
# $$
#
# This notebook writes that down three times — per token by hand, then as a loop over experts, then as
# the library's `moe_lib.reference.moe_reference` — and checks it against Hugging Face's
# `MixtralSparseMoeBlock`.

# %% [markdown] slideshow={"slide_type": "notes"}
# `moe_reference` is slow on purpose: it is the **specification** that every
# fast kernel in the later notebooks is compared with. The notebook ends by counting what the layer costs
# per token: FLOPs, and the weight bytes a batch of tokens has to read.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch
import torch.nn.functional as F
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from moe_lib.perf import floors
from moe_lib.teach import viz
from moe_lib.config import MIXTRAL_8X7B, TINY
from moe_lib.gate import MoEGate
from moe_lib.reference import moe_reference, silu_and_mul
from moe_lib.kernels.routing import topk_softmax
from moe_lib.testing import randn, seeded, tolerance, verdict

torch.set_printoptions(precision=4, sci_mode=False)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Weights in the fused layout
#
# As in vLLM (and Hugging Face `transformers` 5), the two up projections of every expert are stored
# stacked in one tensor, so that one GEMM computes both:
#
# * `w13` of shape $(E, 2I, H)$ — rows $[0, I)$ of expert $e$ are $W_1^{(e)}$ (the *gate* projection, the
#   one that goes through SiLU), rows $[I, 2I)$ are $W_3^{(e)}$ (the *up* projection);
# * `w2` of shape $(E, H, I)$ — the *down* projection.

# %% [markdown] slideshow={"slide_type": "notes"}
# We draw them at random with a $1/\sqrt{\text{fan-in}}$ scale, so activations stay of order one, and
# route 16 tokens with a gate as in notebooks 01 and 03.

# %% slideshow={"slide_type": "-"}
cfg = TINY
E, K, H, I = cfg.num_experts, cfg.top_k, cfg.hidden_size, cfg.intermediate_size
gen = seeded(0)
w13 = randn(E, 2 * I, H, generator=gen, scale=H**-0.5)  # (E, 2I, H)
w2 = randn(E, H, I, generator=gen, scale=I**-0.5)  # (E, H, I)
gate = MoEGate(H, E, generator=seeded(1))
x = randn(16, H, generator=seeded(2))  # (M, H)

with torch.no_grad():
    topk_weights, topk_ids = topk_softmax(gate(x), K)  # (M, k) fp32, (M, k) int32
print("w13", tuple(w13.shape), "| w2", tuple(w2.shape), "| x", tuple(x.shape))
print("token 0 goes to experts", topk_ids[0].tolist(), "with weights", [f"{w:.4f}" for w in topk_weights[0].tolist()])

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. One token, by hand
#
# Token 0, one expert at a time: a GEMV against `w13[e]` gives the gate and up halves; SiLU of the gate
# half times the up half is the expert's hidden activation (width $I$); a GEMV against `w2[e]` brings it
# back to width $H$; the routing weight scales it.

# %% slideshow={"slide_type": "-"}
t = 0
y_t = torch.zeros(H)
for w, e in zip(topk_weights[t].tolist(), topk_ids[t].tolist()):
    gate_up = w13[e] @ x[t]  # (2I,)
    g, up = gate_up[:I], gate_up[I:]  # (I,), (I,)
    act = g * torch.sigmoid(g) * up  # (I,)  silu(g) * up
    y_t += w * (w2[e] @ act)  # (H,)
print("y_0[:6] =", y_t[:6])

# %% [markdown] slideshow={"slide_type": "subslide"}
# Two library pieces appear here. `silu_and_mul` is the activation on the fused $(…, 2I)$ GEMM output —
# first half through SiLU, times the second half — and `moe_reference` is the whole layer:

# %% slideshow={"slide_type": "-"}
e = topk_ids[t, 0].item()
gate_up = w13[e] @ x[t]  # (2I,)
print(verdict("silu(g) * up by hand vs silu_and_mul", gate_up[:I] * torch.sigmoid(gate_up[:I]) * gate_up[I:],
              silu_and_mul(gate_up)))
print(verdict("g * sigmoid(g) vs F.silu", gate_up[:I] * torch.sigmoid(gate_up[:I]), F.silu(gate_up[:I])))

out = moe_reference(x, w13, w2, topk_weights, topk_ids)  # (M, H)
print(verdict("token 0 by hand vs moe_reference", y_t, out[t]))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. The same for a few tokens — and why the library loops over experts instead
#
# The direct translation of the formula loops over tokens and, inside, over their $k$ slots. Each step is
# a matrix–*vector* product: a whole expert's weights are read to serve a single token.

# %% slideshow={"slide_type": "-"}
def moe_token_loop(x, w13, w2, topk_weights, topk_ids):
    """Token-major: for each token, for each of its k experts. Clear, and slow."""
    out = torch.zeros_like(x)  # (M, H)
    for t in range(x.shape[0]):
        for w, e in zip(topk_weights[t].tolist(), topk_ids[t].tolist()):
            out[t] += w * (w2[e] @ silu_and_mul(w13[e] @ x[t]))
    return out


print(verdict("token loop vs moe_reference, 4 tokens", moe_token_loop(x[:4], w13, w2, topk_weights[:4], topk_ids[:4]),
              out[:4]))

# %% [markdown] slideshow={"slide_type": "subslide"}
# `moe_reference` turns the loop inside out: **for each expert**, gather every token that chose it, run
# the expert once on that whole group — a matrix–*matrix* product — and add the weighted result back into
# those tokens' rows. Same sums, different order. It is the shape every fast MoE implementation takes,
# including the fused kernel of notebook 06: group by expert, one GEMM per group. Here it is inline:

# %% slideshow={"slide_type": "-"}
out_em = torch.zeros_like(x)  # (M, H)
group_sizes = []
for e in range(E):
    tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)  # the tokens that chose e, and in which slot
    group_sizes.append(tok.numel())
    if tok.numel() == 0:
        continue
    y = silu_and_mul(x[tok] @ w13[e].T) @ w2[e].T  # (n_e, 2I) -> (n_e, I) -> (n_e, H)
    out_em.index_add_(0, tok, topk_weights[tok, slot, None] * y)

print("tokens per expert:", group_sizes, "| total", sum(group_sizes), "= M * k =", x.shape[0] * K)
print(verdict("expert loop vs moe_reference", out_em, out))
print(verdict("expert loop vs token loop", out_em, moe_token_loop(x, w13, w2, topk_weights, topk_ids)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The group sizes vary from expert to expert and from batch to batch — this is why the fused kernel needs
# the *alignment* step of notebook 05, which sorts the (token, slot) pairs by expert and pads each group to
# a multiple of the kernel's tile height.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. fp64: a reference for the reference
#
# A kernel running in bf16 will differ from an fp32 reference by bf16 rounding — but the fp32 reference
# has rounding errors of its own. With `fp64=True`, `moe_reference` computes in float64 and returns
# float64: an oracle whose own error ($\sim 10^{-16}$) is negligible against any tolerance we use. Every
# comparison below is against it, with a tolerance set by the lowest precision that took part.

# %% slideshow={"slide_type": "-"}
oracle = moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True)  # (M, H) float64
print("oracle dtype:", oracle.dtype)
print(verdict("fp32 reference vs fp64 oracle", out, oracle))

for dtype in (torch.float16, torch.bfloat16):
    low = moe_reference(x.to(dtype), w13.to(dtype), w2.to(dtype), topk_weights, topk_ids)  # (M, H) in dtype
    print(verdict(f"{str(dtype).replace('torch.', '')} reference vs fp64 oracle", low, oracle, tol=tolerance(dtype)))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The error grows as the number of significant bits shrinks — fp32 (24 bits) below $10^{-6}$, fp16 (11)
# below $10^{-3}$, bf16 (8) below $10^{-2}$ — and `moe_lib.testing.tolerance` sets each dtype's
# tolerance a little above that.
# (These low-precision runs use PyTorch on the CPU, which handles bf16 correctly; only the Triton
# interpreter does not.)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Checked against Hugging Face's `MixtralSparseMoeBlock`
#
# Hugging Face `transformers` 5 keeps Mixtral's experts in our very layout: `experts.gate_up_proj` is
# $(E, 2I, H)$ with the gate rows first, `experts.down_proj` is $(E, H, I)$, and `gate.weight` is
# $(E, H)$. The block does its own routing (softmax in fp32, `torch.topk`, renormalize) and its own
# expert loop, so this is an end-to-end check of notebooks 01–04 against independent code.
#
# Two details. The parameters of a fresh block are **uninitialized** memory, so we copy ours into all
# three.

# %% [markdown] slideshow={"slide_type": "notes"}
# And we name the experts implementation (`"eager"`, the plain loop) in the config: left unset,
# the block warns about it at its first call. Its forward takes `(batch, seq, H)`.

# %% slideshow={"slide_type": "-"}
hf_config = MixtralConfig(
    hidden_size=H,
    intermediate_size=I,
    num_local_experts=E,
    num_experts_per_tok=K,
    experts_implementation="eager",
)
block = MixtralSparseMoeBlock(hf_config).eval()
with torch.no_grad():
    block.gate.weight.copy_(gate.weight)
    block.experts.gate_up_proj.copy_(w13)
    block.experts.down_proj.copy_(w2)
    hf_out = block(x.view(1, -1, H))  # (batch=1, seq=M, H)

print("HF output:", tuple(hf_out.shape))
print(verdict("HF block vs gate + topk_softmax + moe_reference", hf_out.view(-1, H), out))
print(verdict("HF block vs fp64 oracle", hf_out.view(-1, H), oracle))

# %% [markdown] slideshow={"slide_type": "subslide"}
# And in float64? Convert the block with `.double()` and it computes the experts in float64 — but its
# router still upcasts the logits with `.float()`: **routing is fp32 even in an fp64 model**. Its weights
# therefore carry fp32 rounding, and our fp64 oracle, fed our own fp32 routing, would differ at the
# $10^{-8}$ level. To compare the expert arithmetic alone, we give the oracle HF's routing:

# %% slideshow={"slide_type": "-"}
x64 = x.double()
block64 = block.double()
with torch.no_grad():
    _, hf_w, hf_ids = block64.gate(x64)  # fp32 weights (M, k), int64 ids (M, k)
    hf_out64 = block64(x64.view(1, -1, H)).view(-1, H)  # (M, H) float64
print("HF routing weights in the fp64 block:", hf_w.dtype)
oracle_hf = moe_reference(x64, w13.double(), w2.double(), hf_w, hf_ids, fp64=True)
print(verdict("HF block (fp64) vs moe_reference(fp64=True), same routing", hf_out64, oracle_hf))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. What a token costs
#
# **FLOPs.** Per token and chosen expert: the `w13` GEMV is $2I \times H$ multiply-adds, the `w2` GEMV
# $H \times I$, so $3HI$ multiply-adds $= 6HI$ FLOPs. With $k$ experts and the router's $EH$
# multiply-adds:
#
# $$ \text{FLOPs per token} = 2\,(3kHI + EH). $$
#
# (SiLU, the product and the weighted sum add $O(kI + kH)$ — negligible.) `MoEConfig.flops_per_token()`
# computes the same.

# %% slideshow={"slide_type": "-"}
m = MIXTRAL_8X7B
flops = 2 * (3 * m.top_k * m.hidden_size * m.intermediate_size + m.num_experts * m.hidden_size)
assert flops == m.flops_per_token()
expert_bytes = m.params_per_expert * m.bytes_per_element  # one expert's w1, w3, w2 in bf16
act_bytes = (2 * m.hidden_size + 3 * m.intermediate_size) * m.bytes_per_element  # x, y, gate_up, act of one expert
print(f"Mixtral, per token and layer : {flops / 1e9:.3f} GFLOP")
print(f"one expert's weights (bf16)  : {expert_bytes / 1e6:.1f} MB")
print(f"a token's own activations    : {act_bytes / 1e3:.1f} kB per expert visited")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **Bytes.** A token's own data is about a hundred kilobytes; the expert weights it needs are hundreds of
# megabytes. So the cost of a layer call is driven by *which experts the batch touches*: every touched
# expert's weights must be read from memory at least once, however few tokens chose it. With $M$ tokens
# routed uniformly at random, one token misses a given expert with probability $1 - k/E$, so
#
# $$ \mathbb{E}[\text{experts touched}] = E\left(1 - \left(1 - \tfrac{k}{E}\right)^{M}\right). $$

# %% [markdown] slideshow={"slide_type": "notes"}
# First a check of that formula against simulated routing (random logits through `topk_softmax`), then
# against `moe_lib.perf.floors.expected_experts_touched`, which the figure below and the benchmark use:

# %% slideshow={"slide_type": "-"}
trials = 2000
for M in (1, 2, 4, 8, 16):
    formula = E * (1 - (1 - K / E) ** M)
    _, ids = topk_softmax(randn(trials * M, E, generator=seeded(M)), K)  # (trials * M, k)
    hit = F.one_hot(ids.long(), E).view(trials, M * K, E).amax(dim=1)  # (trials, E): expert touched?
    simulated = hit.sum(dim=1).double().mean().item()
    assert abs(formula - floors.expected_experts_touched(M, E, K)) < 1e-12
    print(f"M = {M:2d}: formula {formula:.2f} experts, simulation {simulated:.2f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# For Mixtral, per layer call, against the batch size $M$: the expected weight bytes read, the bytes per
# token, and the **arithmetic intensity** — FLOPs per byte of weights read.

# %% slideshow={"slide_type": "-"}
print(f"{'M':>5} {'experts':>8} {'weights read':>13} {'per token':>11} {'FLOP/byte':>10}")
for M in (1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096):
    touched = m.num_experts * (1 - (1 - m.top_k / m.num_experts) ** M)
    weight_bytes = touched * expert_bytes
    intensity = M * 2 * 3 * m.top_k * m.hidden_size * m.intermediate_size / weight_bytes
    print(f"{M:>5} {touched:>8.2f} {weight_bytes / 1e9:>10.2f} GB {weight_bytes / M / 1e6:>8.1f} MB {intensity:>10.1f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# One token reads 2 experts (0.70 GB) and does one FLOP per byte. By $M \approx 16$ nearly all 8 experts
# are touched, and from then on the bytes stay at 2.82 GB while the FLOPs grow with $M$: the intensity
# climbs as $M k / E = M/4$.
#
# A GPU balances the two at its **ridge point**, peak FLOP/s divided by memory bandwidth.

# %% [markdown] slideshow={"slide_type": "notes"}
# The ceilings
# measured for this project on an H100 (bf16 GEMM 766 TFLOP/s, device copy 2.97 TB/s) put it near
# 258 FLOP/byte — reached only around $M \approx 1000$. Below that the layer is **memory-bound**: its
# fastest possible time is the weight bytes over the bandwidth, whatever the kernel does with the FLOPs.

# %% slideshow={"slide_type": "-"}
peak_flops, bandwidth = 766e12, 2.97e12  # H100 ceilings measured for this project (notebook 07)
print(f"ridge point: {peak_flops / bandwidth:.0f} FLOP/byte")
for M in (1, 64, 4096):
    touched = m.num_experts * (1 - (1 - m.top_k / m.num_experts) ** M)
    t_mem = touched * expert_bytes / bandwidth
    t_flop = M * 2 * 3 * m.top_k * m.hidden_size * m.intermediate_size / peak_flops
    bound = "memory" if t_mem > t_flop else "compute"
    print(f"M = {M:4d}: floor {max(t_mem, t_flop) * 1e6:6.0f} µs  ({bound}-bound)")

# %% slideshow={"slide_type": "subslide"} alt="Two plots against tokens per call M: the weight bytes read per call grow from 2 experts' worth to all 8 experts' by M of about 16, then stay flat; FLOPs per weight byte grow linearly and cross the ridge point near M of about 1000."
viz.weight_traffic(m, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                   ridge_flops_per_byte=peak_flops / bandwidth)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Notebook 07 measures real kernels against these floors.

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
# [solutions/04_reference_solutions.ipynb](solutions/04_reference_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_moe_forward, check_silu_and_mul

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — SiLU-and-mul
#
# Write `my_silu_and_mul(gate_up)`, your own version of the library's `silu_and_mul` (the cells above use
# that one, so yours gets its own name): for the output of the fused `w13` GEMM, shape $(\dots, 2I)$, return
# $\operatorname{silu}(g) \odot u$ of shape $(\dots, I)$, where $g$ is the first half of the last dimension
# (the gate, $W_1 x$) and $u$ the second half (up, $W_3 x$). Use $\operatorname{silu}(z) = z\,\sigma(z)$,
# with `torch.sigmoid`.

# %% slideshow={"slide_type": "-"}
def my_silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """(..., 2I) -> (..., I): silu(first half) * second half."""
    raise NotImplementedError  # your code here


check_silu_and_mul(my_silu_and_mul)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — the whole layer
#
# Write `moe_forward(x, w13, w2, topk_weights, topk_ids)`: the MoE output $(M, H)$ for tokens $x$ $(M, H)$,
# weights `w13` $(E, 2I, H)$ and `w2` $(E, H, I)$, and the routing $(M, k)$. Loop over tokens or over
# experts, as you like (section 3 did both) — but write the expert arithmetic yourself rather than calling
# `moe_reference`.

# %% slideshow={"slide_type": "-"}
def moe_forward(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
    """The routing-weighted sum of each token's k SwiGLU experts: (M, H)."""
    raise NotImplementedError  # your code here


check_moe_forward(moe_forward)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * The MoE output is, per token, the routing-weighted sum of $k$ SwiGLU experts:
#   `w2[e] @ (silu(w1[e] @ x) * (w3[e] @ x))`, with `w13 = [w1; w3]` fused as $(E, 2I, H)$.
# * Looping over experts instead of tokens gives the same result with one GEMM per expert group — the
#   structure of every fast MoE kernel. `moe_reference` is that loop, and `fp64=True` makes it an oracle.
# * Our gate + routing + reference match Hugging Face's `MixtralSparseMoeBlock` loaded with the same
#   weights, to fp32 and to fp64 rounding.

# %% [markdown] slideshow={"slide_type": "notes"}
# * A token costs $2(3kHI + EH)$ FLOPs — 0.7 GFLOP for Mixtral — but a batch must read every touched
#   expert's weights: at small $M$ the layer is bound by memory, one FLOP per byte at $M = 1$.
#
# **Next — [05 · alignment](05_alignment.ipynb):** sorting the (token, slot) pairs by expert and padding each group to the
# kernel's tile size, so that one Triton launch can run all experts' GEMMs.
