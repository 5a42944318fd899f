"""Notebook 04 (the reference MoE): SiLU-and-mul, and the whole layer as a loop over tokens and slots.

The references are the library's own (:mod:`moe_lib.reference`): the exercise is to rebuild them.
"""

from __future__ import annotations

import torch

from ...reference import moe_reference
from ...reference import silu_and_mul as _silu_and_mul_ref
from ...testing import randn, seeded
from ._engine import Case, CheckResult, Mistake, check, compare_close


def check_silu_and_mul(silu_and_mul) -> CheckResult:
    """``silu_and_mul(gate_up)``: (..., 2I) -> (..., I) = silu(first half) * second half."""
    gen = seeded(303)
    cases = [
        Case("one row, I = 3", (randn(1, 6, generator=gen, scale=2.0),)),
        Case("a 1-D input, I = 4", (randn(8, generator=gen, scale=2.0),)),
        Case("a 3-D input", (randn(2, 3, 10, generator=gen, scale=2.0),)),
        *[Case(f"random, ({m}, {2 * i})", (randn(m, 2 * i, generator=gen, scale=2.0),)) for m, i in ((5, 16),
                                                                                                    (33, 64))],
    ]
    return check(
        "silu_and_mul", silu_and_mul, arg_names=("gate_up",), cases=cases,
        reference=_silu_and_mul_ref, compare=compare_close,
        mistakes=[
            Mistake(lambda x: torch.nn.functional.silu(x.chunk(2, -1)[1]) * x.chunk(2, -1)[0], "the halves are "
                    "swapped: the FIRST half is the gate (goes through SiLU), the second is the up projection"),
            Mistake(lambda x: torch.sigmoid(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1], "sigmoid is not SiLU: "
                    "silu(g) = g * sigmoid(g)"),
            Mistake(lambda x: torch.relu(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1], "ReLU is not SiLU: "
                    "silu(g) = g * sigmoid(g)"),
            Mistake(lambda x: torch.nn.functional.silu(x.chunk(2, -1)[0]), "the product with the up half is "
                    "missing: silu(gate) * up"),
            Mistake(lambda x: torch.nn.functional.silu(x.chunk(2, -1)[0] * x.chunk(2, -1)[1]), "SiLU went over the "
                    "product; apply it to the gate half only, then multiply"),
            Mistake(lambda x: torch.nn.functional.silu(x[..., 0::2]) * x[..., 1::2], "the halves are the first I "
                    "and the last I values, not the even and odd positions"),
        ],
        hint="split the last dimension in two halves g, u (gate_up[..., :I], gate_up[..., I:]); return g * "
             "sigmoid(g) * u",
        summary="1-D, 2-D and 3-D inputs",
    )


def _moe_forward_ref(x, w13, w2, topk_weights, topk_ids):
    return moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True).to(x.dtype)


def _moe_case(gen: torch.Generator, m: int, e: int, k: int, h: int, i: int) -> tuple:
    x = randn(m, h, generator=gen)
    w13 = randn(e, 2 * i, h, generator=gen, scale=h**-0.5)
    w2 = randn(e, h, i, generator=gen, scale=i**-0.5)
    probs = torch.softmax(randn(m, e, generator=gen, scale=1.5), dim=-1)
    top_p, ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights = top_p[:, :k] / top_p[:, :k].sum(-1, keepdim=True)
    return x, w13, w2, weights.contiguous(), ids[:, :k].to(torch.int32).contiguous()


def _moe_wrong(x, w13, w2, topk_weights, topk_ids, *, weighted=True, swap=False, slot0=False):
    out = torch.zeros_like(x)
    inter = w2.shape[2]
    for t in range(x.shape[0]):
        for j in range(1 if slot0 else topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            gu = w13[e] @ x[t]
            g, u = (gu[inter:], gu[:inter]) if swap else (gu[:inter], gu[inter:])
            y = w2[e] @ (torch.nn.functional.silu(g) * u)
            out[t] += (topk_weights[t, j] if weighted else 1.0) * y
    return out


def check_moe_forward(moe_forward) -> CheckResult:
    """``moe_forward(x, w13, w2, topk_weights, topk_ids)``: the MoE layer output (M, H) — for each token, the
    routing-weighted sum over its k experts of w2[e] @ (silu(w1[e] @ x) * (w3[e] @ x)), w13[e] = [w1; w3]."""
    gen = seeded(304)
    cases = [
        Case("1 token, 4 experts, top-2, H = 4, I = 3", _moe_case(gen, 1, 4, 2, 4, 3)),
        Case("5 tokens, 8 experts, top-2", _moe_case(gen, 5, 8, 2, 8, 6)),
        Case("top-1", _moe_case(gen, 6, 4, 1, 8, 4)),
        Case("top-3 of 6 experts, H != I", _moe_case(gen, 7, 6, 3, 12, 5)),
        Case("random, 24 tokens", _moe_case(gen, 24, 8, 2, 16, 32)),
    ]
    return check(
        "MoE forward", moe_forward, arg_names=("x", "w13", "w2", "topk_weights", "topk_ids"), cases=cases,
        reference=_moe_forward_ref, compare=compare_close,
        mistakes=[
            Mistake(lambda *a: _moe_wrong(*a, weighted=False), "the expert outputs were added without their "
                    "routing weights: y_t = sum_j topk_weights[t, j] * FFN_e(x_t)"),
            Mistake(lambda *a: _moe_wrong(*a, swap=True), "w1 and w3 are swapped: rows [0, I) of w13[e] are w1 "
                    "(the gate, through SiLU), rows [I, 2I) are w3 (up)"),
            Mistake(lambda *a: _moe_wrong(*a, slot0=True), "only the first chosen expert was used; add all k "
                    "slots of every token"),
        ],
        hint="for each token t and slot j: e = topk_ids[t, j]; g, u = (w13[e] @ x[t]).split(I); "
             "y[t] += topk_weights[t, j] * w2[e] @ (silu(g) * u)",
        summary="top-1 to top-3, H != I",
    )


__all__ = ["check_silu_and_mul", "check_moe_forward"]
