"""moe_lib.teach.exercises.reference (notebook 04): the checkers keep the contract of exercise_contract.py."""

from __future__ import annotations

import torch
from exercise_contract import ExerciseContract

from moe_lib.teach.exercises import reference


def silu_and_mul(gate_up):
    g, u = gate_up.chunk(2, dim=-1)
    return g * torch.sigmoid(g) * u


def moe_forward(x, w13, w2, topk_weights, topk_ids):
    inter = w2.shape[2]
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        if tok.numel():
            gu = x[tok] @ w13[e].T
            y = (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ w2[e].T
            out.index_add_(0, tok, topk_weights[tok, slot, None] * y)
    return out


def _swap_halves(x):
    g, u = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(u) * g


def _moe_unweighted(x, w13, w2, topk_weights, topk_ids):
    return moe_forward(x, w13, w2, torch.ones_like(topk_weights), topk_ids)


def _moe_swapped(x, w13, w2, topk_weights, topk_ids):
    inter = w2.shape[2]
    return moe_forward(x, torch.cat([w13[:, inter:], w13[:, :inter]], dim=1), w2, topk_weights, topk_ids)


class TestReferenceCheckers(ExerciseContract):
    module = reference
    checks = {
        "check_silu_and_mul": (silu_and_mul, [
            (_swap_halves, "halves are swapped"),
            (lambda x: torch.sigmoid(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1], "sigmoid is not SiLU"),
            (lambda x: torch.nn.functional.silu(x.chunk(2, -1)[0]), "product with the up half"),
            (lambda x: torch.nn.functional.silu(x[..., 0::2]) * x[..., 1::2], "even and odd"),
        ]),
        "check_moe_forward": (moe_forward, [
            (_moe_unweighted, "routing weights"),
            (_moe_swapped, "w1 and w3 are swapped"),
            (lambda x, w13, w2, w, ids: w13 @ x, "raised RuntimeError"),  # a crash is reported, not raised
        ]),
    }
