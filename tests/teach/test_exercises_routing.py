"""moe_lib.teach.exercises.routing (notebook 03): the checkers keep the contract of exercise_contract.py, and a
failure shows the input, the expected and the obtained output."""

from __future__ import annotations

import torch
from exercise_contract import ExerciseContract

from moe_lib.teach.exercises import routing


def renormalize(topk_probs):
    total = topk_probs.sum(dim=-1, keepdim=True)
    return topk_probs / torch.where(total > 0, total, torch.ones_like(total))


def topk_ids(probs, k):
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]


class TestRoutingCheckers(ExerciseContract):
    module = routing
    checks = {
        "check_renormalize": (renormalize, [
            (lambda p: p / p.sum(dim=-1, keepdim=True), "NaN"),
            (lambda p: p / p.sum(dim=0, keepdim=True), "over the tokens"),
            (lambda p: p / p.sum(), "whole tensor"),
            (lambda p: torch.softmax(p, dim=-1), "softmax"),
            (lambda p: p, "divide each row by its own sum"),  # no known mistake: the general hint
        ]),
        "check_topk_ids": (topk_ids, [
            (lambda p, k: torch.topk(p, k).indices, "stable"),
            (lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, :k], "k smallest"),
            (lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, -k:].flip(-1), "higher id first"),
            (lambda p, k: torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :k].float(),
             "integer dtype"),
        ]),
    }


def test_failure_message_shows_input_expected_and_got():
    text = routing.check_renormalize(lambda p: p / p.sum(dim=-1, keepdim=True)).message
    assert "a token whose chosen probabilities are all 0" in text
    assert "input topk_probs = tensor of shape (2, 2), float32: [[0.6, 0.3], [0.0, 0.0]]" in text
    assert "expected: tensor of shape (2, 2), float32: [[0.6667, 0.3333], [0.0, 0.0]]" in text
    assert "got     : tensor of shape (2, 2), float32: [[0.6667, 0.3333], [nan, nan]]" in text
    assert "likely mistake: " in text


def test_ties_go_to_the_lower_id_as_in_the_library():
    """The reference restates the library's routing step 3: on logits, both pick the same ids."""
    from moe_lib.kernels.routing import softmax_fp32, topk_softmax

    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    _, ids = topk_softmax(logits, 3)
    assert torch.equal(routing._topk_ids_ref(softmax_fp32(logits), 3), ids.long())
