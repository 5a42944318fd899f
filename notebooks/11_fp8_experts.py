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
# # 11 · FP8 experts: one byte per weight
#
# A decode call spends almost all its time reading expert weights (notebook 07). FP8 stores each weight in one
# byte — the 8-bit float `float8_e4m3fn` — next to a few fp32 **scales**, and quantizes the activations the
# same way before each GEMM. Half the bytes halve the decode floor; Hopper's tensor cores multiply FP8 about
# twice as fast as bf16. The price is precision: three mantissa bits.

# %% [markdown] slideshow={"slide_type": "notes"}
# This notebook builds the FP8 path of `moe_lib` the way vLLM runs it (`fused_experts(..., use_fp8_w8a8=True)`):
#
# 1. **The e4m3 format**: its bits, its grid of 254 finite values, rounding by hand.
# 2. **Scales** for the weights — per tensor, per channel, per block — and what each costs in accuracy; the
#    shared scale of w1 and w3.
# 3. **Activation quantization**: dynamic per tensor, per token, per token group, or static; the Triton kernels
#    against their torch specification.
# 4. **The kernel's delta** from bf16: the few lines behind the constexpr `SCALES`, and why per-block scales
#    must live inside the K loop.
# 5. **Accuracy** of the whole call against two fp64 oracles, and of a tiny FP8 Mixtral.
# 6. **Speed** on an H200: the floor arithmetic, and recorded runs.
#
# Everything runs on this CPU in the Triton interpreter, in fp32 activations and small shapes.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import json
import math
from pathlib import Path

import torch

from moe_lib import checkpoint, runtime
from moe_lib.kernels.experts import fused_experts
from moe_lib.kernels.fused_moe import _moe_tile, invoke_fused_moe_kernel
from moe_lib.kernels.quant import (
    FP8_DTYPE,
    FP8_MAX,
    MIN_SCALE,
    dequantize_weight,
    expand_block_scale,
    merge_w13_scales,
    quantize_activation,
    quantize_activation_torch,
    quantize_weight,
    to_e4m3,
)
from moe_lib.kernels.routing import topk_softmax
from moe_lib.layer import MixtralMoE
from moe_lib.model import load_mixtral
from moe_lib.perf.floors import MIXTRAL, floor_us
from moe_lib.reference import moe_reference, moe_reference_fp8
from moe_lib.teach import show_lines, viz
from moe_lib.testing import randn, rel_err, seeded, verdict

torch.set_printoptions(precision=4, sci_mode=False)
device = runtime.default_device()  # where the kernels run: the GPU, or the CPU interpreter
BENCH = Path(moe_lib.__file__).resolve().parent.parent / "data" / "bench"


def bits_of(q: torch.Tensor) -> torch.Tensor:
    """The raw bytes of an e4m3 tensor (to compare bit for bit)."""
    return q.view(torch.uint8)


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. The e4m3 format
#
# Eight bits: a sign $s$, four exponent bits $e$ (bias 7) and three mantissa bits $m$:
#
# $$
# x = (-1)^s\, 2^{e-7}\,\bigl(1 + \tfrac{m}{8}\bigr) \quad (e \ge 1), \qquad
# x = (-1)^s\, 2^{-6}\,\tfrac{m}{8} \quad (e = 0,\ \text{subnormal}).
# $$
#
# "fn" means *finite*: no infinities. Only $e = 15, m = 7$ is NaN, so $e = 15$ still holds numbers and the
# largest is $2^8 \cdot 1.75 = 448$.

# %% [markdown] slideshow={"slide_type": "notes"}
# IEEE-style formats keep the whole top exponent for infinities and NaNs; e4m3fn gives it back to the numbers
# but one pattern per sign, which nearly doubles its range (an IEEE-style e4m3 would stop at 240). Below, every one
# of the 256 bit patterns is decoded with the formula and compared with what torch reads from the same byte.

# %% slideshow={"slide_type": "-"}
def decode_e4m3(byte: int) -> float:
    """The value of one e4m3fn bit pattern, from the formula."""
    s, e, m = byte >> 7, (byte >> 3) & 0xF, byte & 0x7
    if e == 15 and m == 7:
        return math.nan
    magnitude = 2.0 ** (e - 7) * (1 + m / 8) if e >= 1 else 2.0**-6 * m / 8
    return -magnitude if s else magnitude


by_hand = torch.tensor([decode_e4m3(b) for b in range(256)], dtype=torch.float64)
by_torch = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8_DTYPE).double()
same = (by_hand == by_torch) | (by_hand.isnan() & by_torch.isnan())
print("PASS" if bool(same.all()) else "FAIL", " all 256 bit patterns decoded by hand == torch's float8_e4m3fn")
finite = by_torch[by_torch.isfinite()]
positive = finite[finite > 0]
print(f"finite values: {finite.numel()} (NaN patterns: {int(by_torch.isnan().sum())}); positive: {positive.numel()}")
print(f"largest {positive.max().item():g}, smallest normal {2.0**-6:g} = 2^-6, "
      f"smallest subnormal {positive.min().item():g} = 2^-9")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The grid: eight values per binade
#
# Between $2^e$ and $2^{e+1}$ the mantissa takes 8 values, so the **step** is $2^{e-3}$: it doubles with every
# binade. Rounding to the nearest value is off by at most half a step — at most $\tfrac{1}{16}$ of the value,
# at every magnitude from $2^{-6}$ to 448. Below $2^{-6}$ the step stays $2^{-9}$ and the relative error grows.

# %% slideshow={"slide_type": "-"}
print(f"{'binade':>18} {'step':>10} {'largest error':>14}")
for e in (-9, -6, -3, 0, 3, 6, 8):
    step = 2.0 ** (max(e, -6) - 3)
    print(f"{f'[2^{e}, 2^{e + 1})':>18} {f'2^{max(e, -6) - 3}':>10} {0.5 * step / 2.0**e:>13.2%}"
          + ("  (subnormal)" if e < -6 else ""))
q = positive.double()
steps = q[1:] - q[:-1]
normal = q[:-1] >= 2.0**-6
print(verdict("step = 2^(floor(log2 x) - 3) above 2^-6, from the grid itself", steps[normal],
              torch.exp2(torch.floor(torch.log2(q[:-1][normal])) - 3)))

# %% slideshow={"slide_type": "subslide"} alt="Three panels about the e4m3 grid: every positive value on a log axis by exponent field with subnormals in orange and arrows from a few numbers to their rounded values; the step to the next value doubling every binade; the largest relative rounding error, flat near 3 to 6 percent above 2 to the minus 6 and rising in the subnormals, far above bf16's."
viz.e4m3_grid({abs(x): abs(to_e4m3(torch.tensor(x)).item()) for x in (0.3, 100.0, 300.0, 0.001)})

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Rounding by hand
#
# Find the binade $[2^e, 2^{e+1})$ of $|x|$ (never below $e = -6$), divide by the step $2^{e-3}$, round to the
# nearest integer — a tie goes to the **even** one — multiply back, and saturate at 448 (the library clamps
# before the cast: `to_e4m3`).

# %% slideshow={"slide_type": "-"}
def round_by_hand(x: float) -> float:
    e = max(math.floor(math.log2(abs(x))), -6) if x != 0 else -6
    step = 2.0 ** (e - 3)
    steps = abs(x) / step
    rounded = round(steps)  # Python's round: ties to even
    value = min(rounded * step, FP8_MAX)
    tie = " (a tie: to the even)" if steps % 1 == 0.5 else ""
    print(f"{x:>7g}: binade 2^{e:<3} step {step:<9g} {abs(x):g} / step = {steps:<8.4g} -> {rounded:<3}{tie}"
          f" -> {math.copysign(value, x):g}" + ("  (saturated)" if rounded * step > FP8_MAX else ""))
    return math.copysign(value, x)


hand_examples = [0.3, 100.0, 300.0, 500.0, 0.001, -2.6, 17.0, 19.0]
mine = torch.tensor([round_by_hand(x) for x in hand_examples])
library = to_e4m3(torch.tensor(hand_examples)).float()
print("PASS" if torch.equal(mine, library) else "FAIL", " rounding by hand == moe_lib.kernels.quant.to_e4m3")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Scales
#
# Weights of a trained layer are small (a standard deviation near 0.02): many would fall among the subnormals
# below $2^{-6} \approx 0.016$. So each
# group of weights gets an fp32 **scale** $s$: stored $q = \mathrm{e4m3}(w / s)$, read back $q \cdot s$, with
# $s = \max|w| / 448$ so that the group's largest weight lands on 448. Which weights share a scale is the
# **layout**; vLLM's three:

# %% [markdown] slideshow={"slide_type": "notes"}
# For a weight of shape $(E, N, K)$ — $N$ output channels, $K$ inputs — `quantize_weight(w, mode, block_shape)`
# returns the e4m3 tensor and its scales: per tensor $(E,)$, one per expert; per channel $(E, N, 1)$, one per
# output row; per block $(E, \lceil N/b_n \rceil, \lceil K/b_k \rceil)$, one per $b_n \times b_k$ tile
# (DeepSeek-style checkpoints use $128 \times 128$). An all-zero group gets the floor `MIN_SCALE` $= 1/(448
# \cdot 512)$, never 0, so that $0 / s$ stays 0.

# %% slideshow={"slide_type": "-"} alt="Three grids of an 8 by 16 weight coloured by the scale each element shares: one colour for the whole tensor, one per row for per-channel scales, one per 4 by 8 tile for per-block scales."
viz.scale_layouts(rows=8, cols=16, block=(4, 8))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Realistic weights: two experts of $256 \times 512$, $\mathcal{N}(0, 0.02)$, with 16 outliers of $\pm 0.5$
# (25 standard deviations). Each layout's scales, and the dequantization done by hand — $q \cdot s$, with each
# block's scale repeated over its tile — against `dequantize_weight`:

# %% slideshow={"slide_type": "-"}
E_w, N_w, K_w = 2, 256, 512
gen = seeded(11)
w = randn(E_w, N_w, K_w, generator=gen, scale=0.02)  # (E, N, K)
outliers = torch.randperm(w.numel(), generator=gen)[:16]
w.view(-1)[outliers] = 0.5 * torch.sign(randn(16, generator=gen))
layouts = {"per tensor": ("tensor", None), "per channel": ("channel", None),
           "per block 128x128": ("block", [128, 128])}
quantized = {}
for name, (mode, block) in layouts.items():
    q_w, s_w = quantize_weight(w, mode, block)
    quantized[name] = (q_w, s_w, block)
    scale_full = (s_w[:, None, None] if s_w.dim() == 1 else
                  s_w if block is None else expand_block_scale(s_w, N_w, K_w, *block))  # one scale per weight
    read_back = q_w.float() * scale_full
    ok = torch.equal(read_back, dequantize_weight(q_w, s_w, block))
    print(f"{name:<18} scales {str(tuple(s_w.shape)):<14} largest |q| {q_w.float().abs().max().item():g}  "
          f"{'PASS' if ok else 'FAIL'}  q * s by hand == dequantize_weight")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### What the layout changes
#
# The relative error of every weight, $|q s - w| / |w|$. Above $2^{-6} s$ e4m3 is a floating-point grid:
# whatever the scale, a weight is off by at most $\tfrac{1}{16}$. A coarse scale only pushes more small weights
# below $2^{-6} s$, into the subnormals, where the error grows — the tail on the right.

# %% slideshow={"slide_type": "-"} alt="Histograms on log axes of the per-weight relative error for per-tensor, per-channel and per-block scales: the three bulks coincide below the dashed 1/16 bound, and only a small tail beyond it differs, largest for per-tensor scales."
errors = {}
for name, (q_w, s_w, block) in quantized.items():
    errors[name] = ((dequantize_weight(q_w, s_w, block) - w).abs() / w.abs()).flatten()
    print(f"{name:<18} rms {rel_err(dequantize_weight(q_w, s_w, block), w):.2%}, "
          f"median {errors[name].median().item():.2%}, above 1/16: {(errors[name] > 1 / 16).float().mean().item():.3%}")
viz.relative_error_histograms(errors, title="N(0, 0.02) weights with 16 outliers of 0.5")

# %% [markdown] slideshow={"slide_type": "notes"}
# The bulk of the three histograms is the same: 3 mantissa bits give every normal value a relative error
# between 0 and $2^{-4}$, about 2.2 % in the median and 2.6 % in the root mean square, whatever the scale.
# This is the difference from integer formats (INT8), whose grid has one fixed step and where the scale decides
# the error of every value.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Error against the block size
#
# Square blocks of 16 to 256, with the outliers at 0.5 and at 6 (300 standard deviations). The typical error
# does not move; the share of weights pushed below e4m3's normal range grows with the block and the outliers,
# and per-channel scales stay close to the smallest blocks.

# %% slideshow={"slide_type": "-"} alt="Two panels against the block size from 16 to 256: the rms relative error of the ordinary weights stays flat near 2.6 percent for outliers of 0.5 and 6; the share of weights with an error above 1/16 grows with the block size and the outlier size, with per-tensor and per-channel values as dashed lines."
block_sizes = [16, 32, 64, 128, 256]
ordinary = torch.ones(w.numel(), dtype=torch.bool)
ordinary[outliers] = False
rms_name, tail_name = "rms error, ordinary weights (%)", "share with error > 1/16 (%)"


def error_measures(w_amp: torch.Tensor, mode: str, block=None) -> dict[str, float]:
    q_w, s_w = quantize_weight(w_amp, mode, block)
    back = dequantize_weight(q_w, s_w, block).flatten()
    err = (back - w_amp.flatten()).abs() / w_amp.flatten().abs()
    return {rms_name: 100 * rel_err(back[ordinary], w_amp.flatten()[ordinary]),
            tail_name: 100 * (err > 1 / 16).float().mean().item()}


panels, references = {rms_name: {}, tail_name: {}}, {}
for amp in (0.5, 6.0):
    w_amp = w.clone()
    w_amp.view(-1)[outliers] = amp * torch.sign(w.view(-1)[outliers])
    per_block = [error_measures(w_amp, "block", [b, b]) for b in block_sizes]
    for measure in panels:
        panels[measure][f"outliers {amp:g}"] = [m[measure] for m in per_block]
    if amp == 6.0:
        references = {f"{name}, outliers 6": error_measures(w_amp, mode) for name, mode in
                      (("per tensor", "tensor"), ("per channel", "channel"))}
for label, values in panels[tail_name].items():
    print(f"{label}: share above 1/16, blocks {block_sizes[0]}..{block_sizes[-1]}: "
          + " ".join(f"{v:.3f}%" for v in values))
viz.error_vs_block_size(block_sizes, panels, references=references)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### One scale for w1 and w3
#
# Checkpoints store $w_1$ and $w_3$ with a scale each; the fused GEMM1 reads `w13` with **one** scale per
# expert. On load vLLM requantizes both halves to the larger scale $s = \max(s_1, s_3)$:
# $q_1' = \mathrm{e4m3}(q_1 s_1 / s)$. The half that had $s$ is unchanged; the other is rounded twice.

# %% slideshow={"slide_type": "-"}
w1 = randn(E_w, N_w, K_w, generator=gen, scale=0.02)  # gate, (E, I, H)
w3 = randn(E_w, N_w, K_w, generator=gen, scale=0.05)  # up: a wider range, so a larger scale
(q1, s1), (q3, s3) = quantize_weight(w1), quantize_weight(w3)
s13_hand = torch.maximum(s1, s3)
w13_hand = torch.cat([to_e4m3(q1.float() * (s1 / s13_hand)[:, None, None]),
                      to_e4m3(q3.float() * (s3 / s13_hand)[:, None, None])], dim=1)
w13_q, s13 = merge_w13_scales(q1, s1, q3, s3)
print("PASS" if torch.equal(bits_of(w13_hand), bits_of(w13_q)) and torch.equal(s13_hand, s13) else "FAIL",
      " requantized to the larger scale by hand == merge_w13_scales")
back = dequantize_weight(w13_q, s13)
ratios = ", ".join(f"{r:.3f}" for r in (s1 / s13).tolist())
print(f"s1 / s = {ratios}: w1 half rel err {rel_err(dequantize_weight(q1, s1), w1):.2%} -> "
      f"{rel_err(back[:, :N_w], w1):.2%}; w3 half {rel_err(dequantize_weight(q3, s3), w3):.2%} -> "
      f"{rel_err(back[:, N_w:], w3):.2%} (bit for bit: {torch.equal(bits_of(w13_q[:, N_w:]), bits_of(q3))})")

# %% [markdown] slideshow={"slide_type": "notes"}
# The second rounding costs the $w_1$ half about one percentage point of error. Had the ratio $s_1 / s$ been a
# power of two, the requantization would have been exact (a shift of the exponent) for every value that stays
# above $2^{-6}$. Per-channel and per-block checkpoints need no merge: their scales are rows or tiles, and
# `w13`'s scale tensor is simply the two stacked.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Activations
#
# The activations change with every call, so their scales are usually **dynamic**: a small kernel,
# `quantize_activation`, finds the largest magnitude and quantizes before each GEMM — per tensor (one scalar),
# per token $(M, 1)$, or per token and group of $g$ columns $(M, \lceil K/g \rceil)$. A **static** scale is
# one number calibrated offline. The kernels must give the bits of the torch specification:

# %% [markdown] slideshow={"slide_type": "notes"}
# vLLM pairs them with the weights: per-tensor weights with a per-tensor (dynamic or static) activation scale,
# per-channel weights with per-token scales, $b_n \times b_k$ blocks with token groups of $b_k$ columns (static
# scales are not allowed with blocks). The batch here is exaggerated on purpose: 16 tokens whose magnitudes
# span four decades, and token 12 carries four outlier features of a few hundred.

# %% slideshow={"slide_type": "-"}
M_a, K_a = 16, 256
x_a = randn(M_a, K_a, generator=seeded(12)) * torch.logspace(-3, 1, M_a)[:, None]  # rms 0.001 (token 0) ... 10
x_a[12, :4] = torch.tensor([300.0, -250.0, 180.0, 400.0])  # outlier features
static_scale = torch.tensor([8.0 / FP8_MAX])  # "calibrated" on a batch whose largest value was 8
modes = {"dynamic per tensor": {}, "per token": {"per_token": True}, "per token group of 64": {"group": 64},
         "static (amax 8)": {"scale": static_scale}}
token_error = {}
for name, how in modes.items():
    q_t, s_t = quantize_activation(x_a.to(device), **{k: v.to(device) if torch.is_tensor(v) else v
                                                      for k, v in how.items()})
    q_ref, s_ref = quantize_activation_torch(x_a, **how)
    same = torch.equal(bits_of(q_t.cpu()), bits_of(q_ref)) and torch.equal(s_t.cpu().reshape(s_ref.shape), s_ref)
    print(f"{'PASS' if same else 'FAIL'}  {name:<24} Triton == torch, bit for bit; scales {tuple(s_ref.shape)}")
    scale_full = s_ref.repeat_interleave(64, dim=1) if "group" in how else s_ref
    token_error[name] = ((q_ref.float() * scale_full - x_a).norm(dim=1) / x_a.norm(dim=1))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The error of each token. One dynamic scale for the whole batch is set by token 12's outliers: the small
# tokens fall below $2^{-6} s$ and lose most of their bits. Per-token and per-group scales keep every token at
# e4m3's usual 2–3 %. The static scale saturates every value above $448 s = 8$: the outlier token's, and
# those of the largest tokens.

# %% slideshow={"slide_type": "-"} alt="Line plot on a log axis of each token's relative quantization error for four activation scales: dynamic per tensor is about 50 percent for the smallest token and falls as tokens grow, per token and per group stay near 2 to 3 percent, the static scale is low except for the highlighted outlier token 12 and the largest tokens."
for name, err in token_error.items():
    print(f"{name:<24} " + "   ".join(f"token {t}: {err[t].item():6.1%}" for t in (0, 12, 15)))
viz.token_errors(token_error, highlight=12)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. The kernel's delta from bf16
#
# The production kernel (`fused_moe_kernel` → `_moe_tile`, notebooks 06–07) takes e4m3 tiles of A and B and
# one constexpr, `SCALES`: 1 per tensor, 2 per channel and token, 3 per block and token group. These are all the
# lines it adds (numbered as in the source):

# %% slideshow={"slide_type": "-"}
show_lines(_moe_tile, "SCALES", "a_s", "b_s", "scale = ", "acc = acc * scale", "acc_up = acc_up * scale")

# %% [markdown] slideshow={"slide_type": "notes"}
# Everything else — the gather of A's rows, the expert stride, masks, the fp32 accumulator, SiLU·mul, the
# routing weight — is the bf16 kernel unchanged. With `SCALES` 1 and 2 the K loop is the bf16 loop on e4m3
# tiles and the scales are applied once, in the epilogue; with `SCALES` 3 each K step's partial product is
# multiplied by its own scales before it is added. (In the interpreter the tiles are upcast to fp32 first, as
# for bf16.)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Why per-tensor and per-channel scales can wait
#
# With a scale per row of A and per row of B (a column of C), the scales do not depend on $k$, so they leave
# the sum:
#
# $$
# C_{mn} = \sum_k \bigl(s^a_m q^a_{mk}\bigr)\bigl(s^b_n q^b_{nk}\bigr) = s^a_m\, s^b_n \sum_k q^a_{mk}\, q^b_{nk}.
# $$
#
# Per block, the scales change with the K group $g$: $C_{mn} = \sum_g s^a_{mg}\, s^b_{ng} \sum_{k \in g}
# q^a_{mk} q^b_{nk}$. No single factor after the loop can do that.

# %% slideshow={"slide_type": "-"}
a_x = randn(4, 256, generator=seeded(13))  # 4 tokens, K = 256
b_w = randn(1, 8, 256, generator=seeded(14), scale=0.05)  # one expert, 8 output channels

# per token and per channel: raw sum over K, then both scales once
qa, sa = quantize_activation_torch(a_x, per_token=True)  # (4, K) e4m3, (4, 1)
qb, sb = quantize_weight(b_w, "channel")  # (1, 8, K) e4m3, (1, 8, 1)
dequantized_first = (qa.double() * sa.double()) @ (qb[0].double() * sb[0].double()).T  # (4, 8)
epilogue = (qa.double() @ qb[0].double().T) * sa.double() * sb[0].double().T
print(verdict("per channel: scales in the epilogue == dequantize first", epilogue, dequantized_first, tol=1e-12))

# per token group / per block (groups of 64 along K): each group's partial sum gets its own factor
group = 64
qa, sa = quantize_activation_torch(a_x, group)  # (4, K), (4, 4)
qb, sb = quantize_weight(b_w, "block", [8, group])  # (1, 8, K), (1, 1, 4)
dequantized_first = ((qa.double() * sa.double().repeat_interleave(group, 1))
                     @ (qb[0].double() * sb[0].double().repeat_interleave(group, 1)).T)
partial = torch.stack([qa.double()[:, g * group:(g + 1) * group] @ qb[0].double()[:, g * group:(g + 1) * group].T
                       for g in range(4)])  # (G, 4, 8): raw sums per K group
factors = sa.double().T[:, :, None] * sb[0].double().T[:, None, :]  # (G, 4, 1): B is one row group here
in_the_loop = (factors * partial).sum(0)
one_factor = factors.mean(0) * partial.sum(0)  # the best a single epilogue factor could try
print(verdict("per block: each K group scaled in the loop == dequantize first", in_the_loop, dequantized_first,
              tol=1e-12))
print(f"per block with one factor after the loop (the mean): rel err {rel_err(one_factor, dequantized_first):.1%}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# For C's element $(0, 0)$: the factor each K group's partial sum needs. Per channel it is one number, so it
# moves to the epilogue; per block it changes from group to group. Hence `SCALES == 3` loads two small scale
# vectors and multiplies inside the loop, and a K tile must never straddle two groups (`BLOCK_SIZE_K` divides
# $b_k$; the launcher refuses anything else).

# %% slideshow={"slide_type": "-"} alt="Bar chart over four K groups of the factor on each group's partial sum for one output element: per-channel scaling gives the same bar in every group, per-block scaling gives a different bar per group."
per_channel_factor = float(quantize_activation_torch(a_x, per_token=True)[1][0, 0]
                           * quantize_weight(b_w, "channel")[1][0, 0, 0])
t = torch.zeros(4, 4)  # placeholders: the launcher checks its arguments before it launches anything
bad = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4,
       "num_stages": 2}  # K tiles of 128 for K groups of 64
try:
    invoke_fused_moe_kernel(t, t[None], t, t, t, t, t, a_rows_div=1, gated=False, mul_routed_weight=False,
                            config=bad, scales=3, group_n=64, group_k=64)
except ValueError as err:
    print("refused:", err)
viz.k_group_scales(per_channel_factor, factors[:, 0, 0].float(), group=group)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Accuracy: the whole FP8 call
#
# `fused_experts(x, w13, w2, topk_weights, topk_ids, use_fp8_w8a8=True, w1_scale=..., w2_scale=...)` runs
# quantize → GEMM1 → quantize → GEMM2. Two oracles in fp64: `moe_reference_fp8` emulates both activation
# quantizations exactly, so the kernels must match it to fp32 rounding; `moe_reference` on the unquantized
# weights measures what FP8 costs.

# %% [markdown] slideshow={"slide_type": "notes"}
# The layer here: 8 experts, top-2, $H = 256$, $I = 128$, 16 tokens in fp32, weights $\mathcal{N}(0, 1/H)$ and
# $\mathcal{N}(0, 1/I)$. Per-tensor scales merge $w_1$ and $w_3$ as in section 2; per channel the activations
# are quantized per token; per block ($64 \times 64$) per token group of 64. "Weights only" runs the fp64 loop
# over the dequantized weights with unquantized activations: the share of the error the weights make; the
# call against that loop is the share of the activations (the measure of vLLM's maintainers' notes in
# `data/bench/vllm_reference_fp8_H200.json`). Per tensor, the weights cost a little more: the merged $w_1$ half
# was rounded twice.

# %% slideshow={"slide_type": "-"}
E_l, K_l, H_l, I_l, M_l = 8, 2, 256, 128, 16
w13_l = randn(E_l, 2 * I_l, H_l, generator=seeded(15), scale=H_l**-0.5)  # (E, 2I, H)
w2_l = randn(E_l, H_l, I_l, generator=seeded(16), scale=I_l**-0.5)  # (E, H, I)
x_l = randn(M_l, H_l, generator=seeded(17))  # (M, H) fp32
topk_weights, topk_ids = topk_softmax(randn(M_l, E_l, generator=seeded(18)), K_l)
exact = moe_reference(x_l, w13_l, w2_l, topk_weights, topk_ids, fp64=True)  # no quantization at all

budget = {}
for name, mode, block in (("per tensor", "tensor", None), ("per channel", "channel", None),
                          ("per block 64x64", "block", [64, 64])):
    if mode == "tensor":  # as a checkpoint stores them: w1 and w3 apart, merged on load
        (q1, s1), (q3, s3) = quantize_weight(w13_l[:, :I_l]), quantize_weight(w13_l[:, I_l:])
        q13, s13 = merge_w13_scales(q1, s1, q3, s3)
    else:
        q13, s13 = quantize_weight(w13_l, mode, block)
    q2, s2 = quantize_weight(w2_l, mode, block)
    fp8 = dict(w1_scale=s13, w2_scale=s2, block_shape=block, per_channel_quant=mode == "channel")
    out = fused_experts(x_l.to(device), q13.to(device), q2.to(device), topk_weights.to(device), topk_ids.to(device),
                        use_fp8_w8a8=True, **{k: v.to(device) if torch.is_tensor(v) else v for k, v in fp8.items()})
    emulated = moe_reference_fp8(x_l, q13, q2, topk_weights, topk_ids, **fp8)
    print(verdict(f"{name}: fused_experts FP8 vs moe_reference_fp8", out, emulated, tol=1e-5))
    weights_only = moe_reference(x_l.double(), dequantize_weight(q13, s13, block).double(),
                                 dequantize_weight(q2, s2, block).double(), topk_weights, topk_ids, fp64=True)
    budget[name] = {"weights only (vs no quantization)": rel_err(weights_only, exact),
                    "activations only (vs dequantized weights)": rel_err(out, weights_only),
                    "the FP8 call (vs no quantization)": rel_err(out, exact)}
    print("      " + ", ".join(f"{what} {err:.1%}" for what, err in budget[name].items()))

# %% [markdown] slideshow={"slide_type": "subslide"}
# FP8 costs 6–7 % of this layer's output. The weights and the two activation quantizations contribute about
# equally, and independent errors add in quadrature: $\sqrt{5^2 + 5^2} \approx 7$. The finer layouts gain
# little on such well-behaved data; they earn their keep on outliers (sections 2 and 3).

# %% slideshow={"slide_type": "-"} alt="Grouped bars for per-tensor, per-channel and per-block scales: the relative error of the layer output with only the weights quantized and with only the activations quantized, about 4 to 5 percent each, next to the whole FP8 call, 6 to 7 percent."
viz.error_budget(budget, title="Relative error of the layer's output")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### The tiny FP8 Mixtral
#
# Notebook 10's tiny Mixtral with its experts stored in FP8, in two checkpoints: `data/tiny_mixtral_fp8`
# (per-tensor scales, static activation scales) and `data/tiny_mixtral_fp8_block` (block-wise). `load_mixtral`
# reads both: transformers loads everything but the experts, the `MixtralMoE` layers read the e4m3 experts and
# their scales. Against the unquantized model's golden logits:

# %% [markdown] slideshow={"slide_type": "notes"}
# A static checkpoint carries, next to each expert matrix, the activation scale calibrated when it was made
# (`...w1.input_scale`); the kernel takes one per GEMM, the largest over the experts. "Next token" compares the
# most likely next token at each of the 32 positions of the golden input (teacher forcing): the quantized
# model's prediction against the unquantized one's. Two MoE layers and the attention between them carry the
# error on, so the logits move more than one layer's output.

# %% slideshow={"slide_type": "-"}
golden, _ = checkpoint.read_golden(checkpoint.TINY_MIXTRAL)  # the unquantized model's outputs
for path in (checkpoint.TINY_MIXTRAL_FP8, checkpoint.TINY_MIXTRAL_FP8_BLOCK):
    model = load_mixtral(path, device=device)
    quant = next(m for m in model.modules() if isinstance(m, MixtralMoE)).quant_config
    with torch.no_grad():
        logits = model(golden["input_ids"].to(device)).logits.cpu()  # (B, T, vocab)
    same_next = (logits.argmax(-1) == golden["logits"].argmax(-1)).float().mean().item()
    blocks = "per tensor" if quant.weight_block_size is None else f"blocks {quant.weight_block_size}"
    print(f"{path.name:<24} {blocks}, {quant.activation_scheme} activations: logits rel err "
          f"{rel_err(logits, golden['logits']):.1%}, same next token at {same_next:.0%} of the positions")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Speed on the H200
#
# A decode token reads its $k$ experts once. Per rank an expert is $3 H \cdot I/tp$ weights: in bf16 2 bytes
# each, in FP8 one (the scales add 4 bytes per tensor, row or block: nothing). At the H200's 4.8 TB/s:
#
# $$
# t_\text{decode} = \frac{k \cdot 3 H \tfrac{I}{tp} \cdot b}{4.8\ \text{TB/s}}, \qquad b = 2\ \text{(bf16)}
# \text{ or } 1\ \text{(FP8)}.
# $$

# %% slideshow={"slide_type": "-"}
H, I, K_top = MIXTRAL["hidden"], MIXTRAL["intermediate"], MIXTRAL["top_k"]
hbm = 4.8  # TB/s, the H200's memory bandwidth
ref_fp8 = json.loads((BENCH / "vllm_reference_fp8_H200.json").read_text())  # vLLM 0.33 bf16 and FP8, one H200
bf16_rate = ref_fp8["ceilings"]["matmul_sustained_TFLOPs"]  # bf16 matmul, TFLOP/s, sustained (measured)
fp8_rate = min(ref_fp8["ceilings"]["fp8_matmul_sustained_TFLOPs_range"])  # FP8 matmul, sustained (measured)
ceil_bf16 = {"copy_TBps": hbm, "matmul_TFLOPs": bf16_rate}
ceil_fp8 = {"copy_TBps": hbm, "matmul_TFLOPs": fp8_rate}
hand, lib = [], []
print(f"{'TP':>3} {'bf16 µs':>9} {'FP8 µs':>8}   scales, block 128x128")
for tp in (1, 2, 4, 8):
    weights = K_top * 3 * H * (I // tp)  # one token's expert weights on one rank
    bf16_us, fp8_us = weights * 2 / (hbm * 1e12) * 1e6, weights * 1 / (hbm * 1e12) * 1e6
    blocks_per_expert = 3 * math.ceil(I // tp / 128) * math.ceil(H / 128)  # w1, w3 (I/tp x H) and w2 (H x I/tp)
    scale_bytes = K_top * 4 * blocks_per_expert  # an fp32 scale per 128 x 128 block of w13 and of w2
    print(f"{tp:>3} {bf16_us:>9.1f} {fp8_us:>8.1f}   {scale_bytes} bytes ({scale_bytes / weights:.3%} of the weights)")
    hand += [bf16_us, fp8_us]
    lib += [floor_us(1, tp, ceil_bf16, experts=K_top)["memory_us"],
            floor_us(1, tp, ceil_fp8, experts=K_top, bytes_per_weight=1)["memory_us"]]
print(verdict("decode floors by hand vs moe_lib.perf.floors.floor_us", torch.tensor(hand), torch.tensor(lib),
              tol=1e-12))

# %% [markdown] slideshow={"slide_type": "notes"}
# 4.8 TB/s is the H200's nominal bandwidth, which the maintainers' goals use; the copy ceiling measured on this
# card is 4.13 TB/s (notebook 07 reads every point against it). Either way the ratio is the point: one byte per
# weight, half the time. The scales of a $128 \times 128$ block layout add four bytes per 16384 weights.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Prefill: twice the tensor-core rate
#
# At large $M$ the floor is the FLOPs over the matmul rate. Hopper's FP8 tensor cores are rated at twice bf16;
# sustained over a long run the maintainers measured 672 TFLOP/s in bf16 and 1200–1260 in FP8 on this H200:
# about 1.8×.

# %% [markdown] slideshow={"slide_type": "notes"}
# Both floors move, so the **ridge** — the batch where compute starts to dominate — moves by the ratio of the two
# changes: the bytes halve, the rate grows 1.8×, so the ridge comes at about $1.8 / 2 = 0.9$ times the bf16
# batch. Below, the floors at $M = 4096$ (every expert touched) and the ridge, both from `floor_us`. (The burst
# rates, 767 in bf16 and 1180–1370 in FP8, last only until the card reaches its power cap: notebook 07.)

# %% slideshow={"slide_type": "-"}
flops = 2 * 4096 * K_top * 3 * H * I  # M = 4096 at TP = 1
print(f"sustained rates: bf16 {bf16_rate:g}, FP8 {fp8_rate:g} TFLOP/s ({fp8_rate / bf16_rate:.2f}x)")
print(f"M = 4096, TP = 1: {flops / 1e12:.2f} TFLOP -> bf16 {flops / (bf16_rate * 1e12) * 1e6:.0f} µs, "
      f"FP8 {flops / (fp8_rate * 1e12) * 1e6:.0f} µs")


def ridge(ceilings: dict, bytes_per_weight: int) -> int:
    """The smallest M whose compute floor reaches its memory floor (TP = 1)."""
    m = 1
    while True:
        f = floor_us(m, 1, ceilings, bytes_per_weight=bytes_per_weight)
        if f["compute_us"] >= f["memory_us"]:
            return m
        m += 1


print(f"ridge: bf16 at M = {ridge(ceil_bf16, 2)}, FP8 at M = {ridge(ceil_fp8, 1)}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### vLLM 0.33's FP8 paths, recorded
#
# The maintainers timed vLLM 0.33's bf16 and FP8 (per-tensor and $128 \times 128$ block) fused-MoE paths on one
# H200 (`data/bench/vllm_reference_fp8_H200.json`), with dynamic activation scales. The share of the FP8 floor
# says how much of the halving each path collects.

# %% slideshow={"slide_type": "-"}
us = {(r["tp"], r["M"], r["impl"]): r["us"] for r in ref_fp8["records"]}
impls = ("vllm_bf16", "vllm_fp8_per_tensor", "vllm_fp8_block_128x128")
print("µs per layer call (share of the FP8 floor)")
print(f"{'TP':>3} {'M':>5} " + " ".join(f"{i.removeprefix('vllm_'):>22}" for i in impls) + "  FP8 floor µs")
for tp in (1, 8):
    for m in (1, 64, 4096):
        fl = floor_us(m, tp, ceil_fp8, bytes_per_weight=1)["floor_us"]
        cells = " ".join(f"{us[(tp, m, i)]:>15.1f} ({fl / us[(tp, m, i)]:>4.0%})" for i in impls)
        print(f"{tp:>3} {m:>5} {cells} {fl:>13.1f}")
for note in ref_fp8["notes"][:3]:
    print("note:", note)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Per-tensor FP8 nearly halves the time from $M = 64$ up. At $M = 1$ the gain is smallest — at TP 8 almost nil —
# because fixed costs weigh most there: the activation quantization alone is a launch of 10–13 µs. Block-wise
# keeps up at small $M$ but falls back towards bf16 at large $M$, where it rescales at every K step.

# %% slideshow={"slide_type": "-"} alt="Two log-log panels, TP 1 and TP 8, of microseconds per layer call against tokens for vLLM's bf16, FP8 per-tensor and FP8 block paths on an H200, with the bf16 floor dashed and the FP8 floor dotted below it."
viz.fp8_latency([ref_fp8], ceilings={"copy_TBps": hbm, "matmul_TFLOPs": bf16_rate, "fp8_matmul_TFLOPs": fp8_rate},
                tps=(1, 8))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### moe_lib's FP8 path on the H200
#
# One recorded run (`data/bench/fp8_NVIDIA_H200.json`, `python -m moe_lib.perf.bench --impl moe_lib
# moe_lib_fp8 moe_lib_fp8_block`): the same layer in bf16, FP8 per tensor and FP8 per 128 × 128 block, each
# point against the FP8 floor and vLLM's FP8 per-tensor time from the maintainers' run.

# %% slideshow={"slide_type": "-"}
fp8_run = json.loads((BENCH / "fp8_NVIDIA_H200.json").read_text())
timed = {(r["tp"], r["M"], r["impl"]): r["us"] for r in fp8_run["records"] if r.get("us")}
acc = fp8_run["fp8_accumulate"]
print(f"{fp8_run['gpu']}, {fp8_run['date']}; FP8 sums: "
      + ("the tensor core's over the whole K loop" if acc is None else f"an fp32 add every {acc} products"))
print(f"{'TP':>3} {'M':>5} {'bf16':>8} {'fp8':>8} {'block':>8} {'fp8/bf16':>9} {'vs vLLM fp8':>12} {'fp8 floor':>10}")
for tp in (1, 2, 4, 8):
    for m in (1, 4, 16, 64, 256, 1024, 4096):
        bf16, fp8, block = (timed[(tp, m, i)] for i in ("moe_lib", "moe_lib_fp8", "moe_lib_fp8_block"))
        fl = floor_us(m, tp, ceil_fp8, bytes_per_weight=1)["floor_us"]
        print(f"{tp:>3} {m:>5} {bf16:>8.1f} {fp8:>8.1f} {block:>8.1f} {bf16 / fp8:>8.2f}x "
              f"{us[(tp, m, 'vllm_fp8_per_tensor')] / fp8:>11.2f}x {fl / fp8:>9.0%}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Per tensor, FP8 is faster than bf16 at every point, 1.19–1.87× — short of the 2× that half the bytes
# promise. The notes and the next slides give the measured reasons.

# %% [markdown] slideshow={"slide_type": "notes"}
# Read the table by columns. Decode ($M \le 64$) gains 1.2–1.9×: the weights stream at half the bytes, but the
# two activation quantizations are extra launches, which weigh most at TP 8 where each GEMM is short. Against
# vLLM's FP8 per-tensor path ("vs vLLM fp8" above 1 means faster) this layer leads at 19 of 28 points, every
# $M \le 64$ point but TP 1, $M = 4$ (whose draws touched 6 experts here), and trails by at most 5 % from
# $M = 256$ up at TP 1, 2 and 4 — after the large-$M$ change two slides on. Block-wise leads vLLM's block path
# at 11 of 28 points and trails by 1–9 %, mostly from $M = 1024$ up (20 % at TP 1, $M = 4$: the same draw);
# nothing changed for it since the record before, which led at 16: run-to-run noise is a few per cent.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Two decode deltas, measured
#
# The record before this one ran a token with programmatic dependent launch, as bf16 does: the block layer took
# 216 µs at TP 1 where its steps alone summed to 123. Timed with and without, PDL costs FP8 up to 90 µs, so FP8
# plans launch without it. And the per-tensor scale of `act` was one program looping over 14336 columns; split
# over column tiles it takes half the time.

# %% slideshow={"slide_type": "-"}
from moe_lib.kernels.experts import Fp8, make_plan

ab = json.loads((BENCH / "history" / "fp8_decode_H200" / "ab.json").read_text())
print(f"{ab['gpu']}, µs per layer call, one token:  PDL on -> off (PDL on the GEMMs only)")
for r in (r for r in ab["rows"] if r["M"] == 1):
    print(f"  TP {r['tp']} {r['scheme']:>6}: {r['pdl_on']:6.1f} -> {r['new']:6.1f} ({r['pdl_gemms_only']:.1f})")
print("per-tensor scale of act (quant2 alone) and the layer, TP 1: looped -> split")
for r in (r for r in ab["rows"] if r["scheme"] == "tensor" and r["tp"] == 1 and r["M"] <= 256):
    print(f"  M {r['M']:>4}: {r['quant2_old_absmax']:4.1f} -> {r['quant2_new']:4.1f} µs; "
          f"layer {r['old_absmax']:6.1f} -> {r['new']:6.1f} µs")
h200 = runtime.Target(interpret=False, name="NVIDIA H200", num_sms=132, capability=(9, 0))
pdl = {name: make_plan(1, 4096, 1792, 2, 8, dtype=torch.bfloat16, target=h200, fp8=fp8).pdl
       for name, fp8 in (("bf16", None), ("fp8", Fp8("tensor")), ("block", Fp8("block", (128, 128))))}
print(f"{'PASS' if pdl == {'bf16': True, 'fp8': False, 'block': False} else 'FAIL'}: one token on an H200 "
      f"plans PDL for {[k for k, v in pdl.items() if v]} only")

# %% [markdown] slideshow={"slide_type": "notes"}
# With PDL each kernel lets the next one launch at its own start, and the next waits on the GPU instead of in
# the launch queue. For bf16's two GEMMs that hides a launch; with FP8's quantizing kernels between them it
# cost far more than it hid. Launching only the GEMMs with PDL was within 1 µs of no PDL at all (faster at one
# token, slower at two) — not worth a second switch. The old scale kernel ran one program per few rows, each
# looping over all 14336 columns: 14 dependent loads in a row. `absmax_kernel` now spreads a row's column tiles
# over programs, at most `ABSMAX_PARTIALS` maxima in all, so the quantizing programs still read them in one step.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Whole-K sums, as vLLM's
#
# Hopper's FP8 tensor cores add products into a short accumulator. Adding it into fp32 after every 128 products
# keeps the layer closer to the emulated reference — but no closer to the exact layer, and it serializes the
# tensor-core pipeline. With tiles tuned for each, measured:

# %% slideshow={"slide_type": "-"}
history = BENCH / "history" / "fp8_accumulate_H200"
print((history / "accuracy.txt").read_text().splitlines()[1])
for line in (history / "accuracy.txt").read_text().splitlines()[2:]:
    tp, m, scales, acc = line.split()[:4]
    if tp == "1" and m == "2048" and scales == "tensor" and acc in ("None", "128"):
        print(line)
tiles = json.loads((BENCH / "history" / "fp8_large_m_H200" / "tiles.json").read_text())
print("µs per layer call, best tiles tried for each:")
for r in tiles["rows"]:
    best = {acc: min(v for k, v in r.items() if k.endswith(f"_acc{acc}") and isinstance(v, float))
            for acc in (128, 0)}
    print(f"  TP {r['tp']} M {r['M']:>4}: every 128 products {best[128]:6.0f}, whole K {best[0]:6.0f} "
          f"({best[128] / best[0] - 1:+.0%}), vLLM {us[(r['tp'], r['M'], 'vllm_fp8_per_tensor')]:6.0f}")
plan = make_plan(4096, 4096, 14336, 2, 8, dtype=torch.bfloat16, target=h200, fp8=Fp8("tensor"))
print(f"{'PASS' if plan.gemm1.fp8_acc is plan.gemm2.fp8_acc is None else 'FAIL'}: FP8 plans leave the sums "
      "to the tensor core (experts.FP8_ACCUMULATE = None)")

# %% [markdown] slideshow={"slide_type": "notes"}
# The first lines: the error against the fp64 layer with the activation quantizations emulated ("vs emulated"),
# and against the exact bf16 layer ("vs bf16 exact": what e4m3 itself costs, about 6.6 %). Whole-K sums add
# 2 % against the emulation, the fp32 adds 0.4 % — and both are 6.6 % from the exact layer. The adds cost time
# because the tensor core must finish each K tile before its partial sum is added: no overlap with the next.
# Tiles tuned for whole-K sums (128 × 128, four stages) reach vLLM's time; so whole-K sums are the default,
# and the per-tensor tables were re-tuned for them from $M = 96$. `experts.FP8_ACCUMULATE = 128` (or the
# bench's `--fp8-accumulate 128`) brings the fp32 adds back; the GPU tests check the kernels both ways, with
# the tight tolerance for the fp32 adds. Block-wise scales rescale at every K tile anyway: no difference there.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Quantizing inside the GEMM: measured, not kept
#
# The two quantizing launches cost a token several µs. The GEMMs could quantize their own A tiles instead:
# per token group inside the tile, per tensor from maxima that GEMM1 leaves for GEMM2. Predicted: a launch or
# two fewer per GEMM. Measured on the H200, one token:

# %% slideshow={"slide_type": "-"}
import ast

log = (BENCH / "history" / "fp8_fused_quant_H200" / "ab_log.txt").read_text().splitlines()
fused = [ast.literal_eval(line[: line.rindex("}") + 1]) for line in log if line.startswith("{")]
print("µs per layer call: separate quantizing kernels -> GEMMs quantizing (with PDL)")
for r in (r for r in fused if r["M"] == 1):
    print(f"  TP {r['tp']} {r['scheme']:>6}: {r['separate']:6.1f} -> {r['fused']:6.1f} ({r['fused_pdl']:.1f})")
print(f"{'PASS' if all(r['fused'] > r['separate'] for r in fused) else 'FAIL'}: slower at all {len(fused)} "
      "points measured: not kept")

# %% [markdown] slideshow={"slide_type": "notes"}
# Why slower: Triton pipelines a load that feeds `tl.dot` through shared memory several K steps ahead, but
# A's tile now feeds arithmetic first (the scale, the rounding), so each K step waits for it — a load latency
# per step, where the separate kernel paid one launch. The prediction counted launches and forgot latency.
# The code that was measured is kept as a patch beside its log (`fused_quant.diff`).

# %% slideshow={"slide_type": "-"} alt="Two log-log panels, TP 1 and TP 8, of microseconds per layer call against tokens: moe_lib's recorded bf16, FP8 and FP8 block paths on an H200 next to vLLM 0.33's, with the bf16 floor dashed and the FP8 floor dotted."
viz.fp8_latency([{**ref_fp8, "label": "vLLM 0.33"}, {**fp8_run, "label": "moe_lib"}],
                ceilings={"copy_TBps": hbm, "matmul_TFLOPs": bf16_rate, "fp8_matmul_TFLOPs": fp8_rate})

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Two short exercises and a kernel puzzle. Each is a function or kernel for you to complete, followed in the same
# cell by a check that runs it on fixed and random cases and prints `PASS`, or the first case that went wrong —
# input, expected, got — and the likely mistake. Until you write the body it says *not solved yet*.

# %% [markdown] slideshow={"slide_type": "notes"}
# Worked solutions:
# [solutions/11_fp8_experts_solutions.ipynb](solutions/11_fp8_experts_solutions.ipynb).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_e4m3_round, check_quantize_block

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — round to e4m3 by hand
#
# Write `e4m3_round(x)`: every value of the fp32 tensor `x` rounded to the nearest e4m3 value — ties to the even
# neighbour, saturating at ±448 — as an fp32 tensor, **without** the fp8 dtype: the binade, the step, a
# rounding, a clamp (section 1). `torch.frexp` gives the exponent exactly; `torch.round` rounds ties to even.

# %% slideshow={"slide_type": "-"}
def e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the float8_e4m3fn grid (nearest, ties to even, saturating at ±448), in fp32."""
    raise NotImplementedError  # your code here


check_e4m3_round(e4m3_round)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2 — quantize one block by hand
#
# Write `quantize_block(block)`: the scale of one block of weights, $\max(\max|w| / 448,\ \texttt{MIN\_SCALE})$,
# and its e4m3 values, returned as `(q, scale)` — `q` of the block's shape (e4m3, or fp32 on the grid), `scale`
# a float. The first case is this block:

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises.fp8 import NB11_BLOCK

print(NB11_BLOCK, f"\nMIN_SCALE = 1 / (448 * 512) = {MIN_SCALE:.6g}")


def quantize_block(block: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(q, scale) of one block: scale = max(amax / 448, MIN_SCALE), q = e4m3(block / scale)."""
    raise NotImplementedError  # your code here


check_quantize_block(quantize_block)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Puzzle 1 — dequantize in an epilogue
#
# Complete `fp8_matmul_kernel`: $C = \mathrm{diag}(s^a)\,(A B)\,\mathrm{diag}(s^b)$ for e4m3 `a` $(M, K)$ and `b`
# $(K, N)$, one fp32 scale per row of A (`a_scale`) and per column of B (`b_scale`) — accumulate the raw
# products over K in fp32, then apply both scales once, after the loop (section 4).

# %% [markdown] slideshow={"slide_type": "notes"}
# One $(\texttt{BLOCK\_M}, \texttt{BLOCK\_N})$ tile of C per program. Upcast the e4m3 tiles to fp32 before
# `tl.dot` (the interpreter computes low precision wrongly), mask the M, N and K tails. The check runs it in the
# interpreter inside poisoned guard buffers and names the likely mistake — a scale forgotten, scales applied at
# every K step, a scale loaded without a mask.

# %% slideshow={"slide_type": "-"}
import triton
import triton.language as tl

from moe_lib.teach.puzzles import check_fp8_matmul_epilogue


@triton.jit
def fp8_matmul_kernel(a_ptr, b_ptr, c_ptr, a_scale_ptr, b_scale_ptr, M, N, K,
                      stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pass  # your code here


# launched as  fp8_matmul_kernel[(triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))](
#                  a, b, c, a_scale, b_scale, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
#                  c.stride(0), c.stride(1), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
check_fp8_matmul_epilogue(fp8_matmul_kernel)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * e4m3 is a floating-point byte: 3 mantissa bits give every value from $2^{-6}$ to 448 a relative error of at
#   most $\tfrac{1}{16}$; below, the subnormals' fixed step $2^{-9}$ takes over.
# * A scale maps a group's largest value onto 448. Since the grid is relative, the layout matters mostly for what
#   falls below the normal range: outliers, small tokens, saturation with static scales.

# %% [markdown] slideshow={"slide_type": "notes"}
# * Checkpoints keep w1 and w3 apart; per-tensor FP8 merges them to the larger scale, rounding one half twice.
# * Per-tensor and per-channel scales factor out of the sum over K and wait for the epilogue; per-block scales
#   differ from K group to K group, so the kernel multiplies each partial product inside the loop, and a K tile
#   must not straddle two groups.
# * The FP8 call matches an fp64 loop that emulates both activation quantizations to fp32 rounding; against no
#   quantization it is off by a few percent, mostly from the activations.
# * One byte per weight halves the decode floor; the FP8 tensor cores shorten the prefill floor by about 1.8×
#   on the H200 (sustained), so the ridge moves to slightly smaller batches.
# * A decode trick is not portable between precisions: PDL, which saves bf16 a launch, cost FP8 up to 90 µs a
#   token and is off there; measuring the whole call, not its steps alone, found it.
