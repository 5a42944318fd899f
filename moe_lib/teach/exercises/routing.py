"""Notebook 03 (routing): renormalizing the chosen probabilities, and the top-k ids with ties to the lower id.

The references restate steps 3 and 4 of :mod:`moe_lib.kernels.routing` on probabilities (the library's
``topk_softmax`` starts from logits, so it cannot take these inputs as they are).
"""

from __future__ import annotations

import torch

from ...testing import randn, seeded
from ._engine import Case, CheckResult, Mistake, check, compare_close, compare_ints


def _random_probs(gen: torch.Generator, m: int, e: int, k: int) -> torch.Tensor:
    """(m, k) top-k probabilities of random logits, largest first (what routing keeps before renormalizing)."""
    probs = torch.softmax(randn(m, e, generator=gen, scale=1.5), dim=-1)
    return torch.sort(probs, dim=-1, descending=True, stable=True).values[:, :k].contiguous()


def _renormalize_ref(p: torch.Tensor) -> torch.Tensor:
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def check_renormalize(renormalize) -> CheckResult:
    """``renormalize(topk_probs)``: (M, k) chosen probabilities -> (M, k) weights that sum to 1 per token;
    a row whose sum is <= 0 (a NaN token: its probabilities were set to 0) is divided by 1."""
    gen = seeded(202)
    cases = [
        Case("3 tokens, k = 2", (_random_probs(gen, 3, 8, 2),)),
        Case("as many tokens as slots (M = k = 2)", (_random_probs(gen, 2, 8, 2),)),
        Case("a token whose chosen probabilities are all 0", (torch.tensor([[0.6, 0.3], [0.0, 0.0]]),)),
        Case("k = 1", (_random_probs(gen, 4, 8, 1),)),
        *[Case(f"random, M = {m}, k = {k}", (_random_probs(gen, m, 8, k),)) for m, k in ((16, 2), (9, 4), (5, 8))],
    ]
    return check(
        "renormalize", renormalize, arg_names=("topk_probs",), cases=cases,
        reference=_renormalize_ref, compare=compare_close,
        mistakes=[
            Mistake(lambda p: p / p.sum(dim=-1, keepdim=True), "a token whose chosen probabilities sum to 0 gets "
                    "0 / 0 = NaN; divide by 1 where the sum is <= 0 (torch.where(total > 0, total, 1))"),
            Mistake(lambda p: p / p.sum(dim=0, keepdim=True), "the sum ran over the tokens (dim 0); each token is "
                    "normalized over its own k slots: sum(dim=-1, keepdim=True)"),
            Mistake(lambda p: p / p.sum(), "divided by the sum over the whole tensor; sum each row: "
                    "sum(dim=-1, keepdim=True)"),
            Mistake(lambda p: p / p.sum(dim=-1), "sum(dim=-1) without keepdim=True divides column j by token j's "
                    "sum; keep the dimension so each row is divided by its own sum"),
            Mistake(lambda p: torch.softmax(p, dim=-1), "a softmax of the probabilities is not a renormalization: "
                    "divide them by their sum"),
        ],
        hint="divide each row by its own sum (sum(dim=-1, keepdim=True)), using 1 where that sum is <= 0",
        summary="zero-sum token, k = 1 to 8",
    )


def _topk_ids_ref(probs: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]


def check_topk_ids(topk_ids) -> CheckResult:
    """``topk_ids(probs, k)``: (M, E) probabilities -> (M, k) integer ids of the k largest, largest first,
    ties to the lower expert id."""
    gen = seeded(203)
    uniform = torch.full((3, 8), 0.125)
    steps = torch.tensor([[0.1, 0.3, 0.3, 0.05, 0.3, 0.05, 0.1, 0.1],
                          [0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    ints = torch.randint(0, 3, (32, 8), generator=gen).float()
    cases = [
        Case("distinct probabilities, k = 2", (torch.softmax(randn(3, 8, generator=gen), -1), 2)),
        Case("all eight experts equal", (uniform, 2)),
        Case("a three-way tie at the top", (steps, 2)),
        Case("many ties (small integer scores)", (ints / ints.sum(-1, keepdim=True).clamp(min=1), 3)),
        Case("k = 1", (torch.softmax(randn(5, 8, generator=gen), -1), 1)),
        Case("k = E", (torch.softmax(randn(4, 8, generator=gen), -1), 8)),
        Case("random, 16 experts, k = 4", (torch.softmax(randn(20, 16, generator=gen), -1), 4)),
    ]
    return check(
        "top-k ids", topk_ids, arg_names=("probs", "k"), cases=cases,
        reference=_topk_ids_ref, compare=compare_ints,
        mistakes=[
            Mistake(lambda p, k: torch.topk(p, k).indices, "torch.topk does not promise which of several equal "
                    "values comes first; a stable descending sort keeps equal ones in id order: "
                    "torch.sort(probs, dim=-1, descending=True, stable=True)"),
            Mistake(lambda p, k: torch.sort(p, dim=-1, descending=True).indices[:, :k], "without stable=True the "
                    "sort may put equal values in any order; pass stable=True"),
            Mistake(lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, :k], "an ascending sort gives the "
                    "k smallest; sort with descending=True"),
            Mistake(lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, -k:].flip(-1), "the k largest of an "
                    "ascending sort, reversed, put the higher id first among equal values; sort descending with "
                    "stable=True instead"),
            Mistake(lambda p, k: torch.sort(p, dim=0, descending=True, stable=True).indices[:k], "the sort ran over "
                    "the tokens (dim 0); rank the experts of each token: dim=-1"),
        ],
        hint="sort each row, largest first, keeping equal values in expert-id order (a stable sort), and take k",
        summary="ties, k = 1, k = E",
    )


__all__ = ["check_renormalize", "check_topk_ids"]
