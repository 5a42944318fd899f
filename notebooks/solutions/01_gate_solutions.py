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

# %% [markdown]
# # Solutions · 01 the gate
#
# Worked solutions to the exercises at the end of [01 · the gate](../01_gate.ipynb). Each solution goes
# through the same `moe_lib.teach.exercises` check as in the notebook, so each prints `PASS`. After each one, a
# wrong answer that learners often write, and what the check says about it.

# %%
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import torch

from moe_lib.teach.exercises import check_gate_logits, check_logit_std
from moe_lib.testing import randn, seeded

# %% [markdown]
# ## Exercise 1 — the gate, by hand
#
# `weight` holds one row per expert, so the logit of token $t$ for expert $e$ is the dot product of $x_t$
# with row $e$: $\ell = x W^\top$. The `@` operator multiplies over the last dimension of `x` and broadcasts
# over all the others, so the same line serves $(M, H)$ and $(\text{batch}, \text{seq}, H)$.

# %%
def gate_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(..., H) tokens, (E, H) gate weight -> (..., E) router logits."""
    return x @ weight.T


check_gate_logits(gate_logits)

# %% [markdown]
# A frequent slip is `x @ weight`. With $H \ne E$ it fails at once (the shapes do not fit); the check's
# first case shows it:

# %%
check_gate_logits(lambda x, weight: x @ weight)

# %% [markdown]
# ## Exercise 2 — how decisive is a fresh router?
#
# A logit is a sum of $H$ independent products $x_h w_h$. Each product has mean 0 and variance
# $\operatorname{Var}(x_h)\operatorname{Var}(w_h) = \sigma^2$, and **variances** of independent terms add:
# $\operatorname{Var}(\ell) = H\sigma^2$, so the standard deviation is $\sigma\sqrt{H}$.

# %%
def logit_std(init_std: float, hidden_size: int) -> float:
    """Standard deviation of x . w for unit-variance x and weights of standard deviation init_std."""
    return init_std * hidden_size**0.5


check_logit_std(logit_std)

# %% [markdown]
# For `TINY` ($H = 64$) that is $0.16$ — a nearly uniform router, as notebook 01 measured. For Mixtral
# ($H = 4096$) it is $1.28$: logits that far apart already make a fresh router fairly uneven. Measured on a
# random Mixtral-sized gate and 2,000 unit-variance tokens:

# %%
H, E = 4096, 8
tokens = randn(2000, H, generator=seeded(0))  # (M, H)
gate = randn(E, H, generator=seeded(1), scale=0.02)  # (E, H), std 0.02 as at initialization
logits = gate_logits(tokens, gate)  # (M, E)
top1 = torch.softmax(logits, dim=-1).amax(dim=-1)  # (M,) each token's largest probability
print(f"predicted logit std {logit_std(0.02, H):.2f}, measured {logits.std().item():.2f}")
print(f"largest probability per token: mean {top1.mean().item():.2f} (uniform would be {1 / E:.3f})")

# %% [markdown]
# Adding standard deviations instead of variances gives $\sigma H$, far too large:

# %%
check_logit_std(lambda init_std, hidden_size: init_std * hidden_size)
