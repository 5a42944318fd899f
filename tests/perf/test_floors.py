"""moe_lib.perf.floors: the expected number of experts M uniformly routed tokens touch, against its limits, a
simulation through the library's routing, and bad arguments named."""

from __future__ import annotations

import pytest
import torch

from moe_lib.kernels.routing import topk_softmax
from moe_lib.perf.floors import expected_experts_touched


def test_expected_experts_touched_limits():
    E, k = 8, 2
    assert expected_experts_touched(0, E, k) == 0.0
    assert expected_experts_touched(1, E, k) == pytest.approx(k)  # one token: exactly its top_k
    assert expected_experts_touched(200, E, k) == pytest.approx(E)  # many tokens: every expert
    assert expected_experts_touched(3, E, E) == E  # top_k = E: every token touches them all


def test_expected_experts_touched_against_a_simulation(gen):
    """Random logits route every token to a uniformly random k-subset of the experts."""
    E, k, M, trials = 8, 2, 4, 2000
    _, ids = topk_softmax(torch.randn(trials * M, E, generator=gen), k)  # (trials * M, k)
    hit = torch.nn.functional.one_hot(ids.long(), E).view(trials, M * k, E).amax(dim=1)  # (trials, E)
    assert hit.sum(dim=1).double().mean().item() == pytest.approx(expected_experts_touched(M, E, k), abs=0.1)


@pytest.mark.parametrize("args,exc,name", [
    ((1, 8, 9), ValueError, "top_k"),
    ((-1, 8, 2), ValueError, "num_tokens"),
    ((1, 0, 1), ValueError, "num_experts"),
    ((1.0, 8, 2), TypeError, "num_tokens"),
])
def test_bad_arguments_are_named(args, exc, name):
    with pytest.raises(exc, match=name):
        expected_experts_touched(*args)
