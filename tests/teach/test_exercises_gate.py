"""moe_lib.teach.exercises.gate (notebook 01): the checkers keep the contract of exercise_contract.py."""

from __future__ import annotations

import math

from exercise_contract import ExerciseContract

from moe_lib.teach.exercises import gate


def gate_logits(x, weight):
    return x @ weight.T


def logit_std(init_std, hidden_size):
    return init_std * math.sqrt(hidden_size)


class TestGateCheckers(ExerciseContract):
    module = gate
    checks = {
        "check_gate_logits": (gate_logits, [
            (lambda x, w: x @ w, "x @ weight.T"),
            (lambda x, w: w @ x.transpose(-1, -2), "one row per token"),
            (lambda x, w: x.reshape(-1, x.shape[-1]) @ w.T, "leading dimensions"),
        ]),
        "check_logit_std": (logit_std, [
            (lambda s, h: s * s * h, "variance"),
            (lambda s, h: s * h, "variances do"),
            (lambda s, h: s / math.sqrt(h), "grows with H"),
        ]),
    }
