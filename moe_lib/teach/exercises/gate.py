"""Notebook 01 (the gate): the router logits x W^T, and how far their spread grows with the hidden size."""

from __future__ import annotations

import math

from ...testing import randn, seeded
from ._engine import Case, CheckResult, Mistake, check, compare_close, compare_number


def check_gate_logits(gate_logits) -> CheckResult:
    """``gate_logits(x, weight)``: x (..., H), weight (E, H) -> router logits (..., E) = x W^T."""
    gen = seeded(101)
    cases = [
        Case("2 tokens, H = 4, E = 3", (randn(2, 4, generator=gen), randn(3, 4, generator=gen))),
        Case("square: H = E = 6", (randn(5, 6, generator=gen), randn(6, 6, generator=gen))),
        Case("a (batch, seq, H) input", (randn(2, 3, 8, generator=gen), randn(4, 8, generator=gen))),
        *[Case(f"random, M = {m}", (randn(m, 16, generator=gen), randn(8, 16, generator=gen))) for m in (1, 7, 33)],
    ]
    return check(
        "gate logits", gate_logits, arg_names=("x", "weight"), cases=cases,
        reference=lambda x, w: x @ w.T, compare=compare_close,
        mistakes=[
            Mistake(lambda x, w: x @ w, "x @ weight multiplies by the weight itself; the gate is x @ weight.T "
                    "(weight is (E, H): one row per expert)"),
            Mistake(lambda x, w: w @ x.transpose(-1, -2), "weight @ x.T gives one row per expert; the logits "
                    "have one row per token: x @ weight.T"),
            Mistake(lambda x, w: x.reshape(-1, x.shape[-1]) @ w.T, "the leading dimensions were flattened; "
                    "keep them: x @ weight.T works on (..., H) as it is"),
        ],
        hint="logit[t, e] is the dot product of token t with row e of the weight: x @ weight.T",
        summary="2-D and 3-D inputs, square and non-square weights",
    )


def check_logit_std(logit_std) -> CheckResult:
    """``logit_std(init_std, hidden_size)``: the standard deviation of a logit x . w for unit-variance x and
    weights of standard deviation ``init_std`` (independent, zero mean)."""
    pairs = [(0.02, 4096), (0.02, 64), (0.5, 1), (1.0, 9), (0.1, 100), (0.03, 14336)]
    cases = [Case(f"init_std = {s}, hidden_size = {h}", (s, h)) for s, h in pairs]
    return check(
        "logit std", logit_std, arg_names=("init_std", "hidden_size"), cases=cases,
        reference=lambda s, h: s * math.sqrt(h), compare=lambda got, exp: compare_number(got, exp, tol=1e-6),
        mistakes=[
            Mistake(lambda s, h: s * s * h, "that is the variance: a sum of H independent products has variance "
                    "H x init_std^2; its standard deviation is the square root"),
            Mistake(lambda s, h: s * h, "standard deviations do not add; variances do: sqrt(H x init_std^2)"),
            Mistake(lambda s, h: s / math.sqrt(h), "the spread grows with H (more terms in the sum), it does not "
                    "shrink"),
            Mistake(lambda s, h: s, "the logit sums H products, each with standard deviation init_std"),
        ],
        hint="a logit is a sum of H independent products x_h w_h, each of variance init_std^2",
        summary="including Mixtral's H = 4096",
    )


__all__ = ["check_gate_logits", "check_logit_std"]
