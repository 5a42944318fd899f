import pytest
import torch

from moe_lib.gate import INITIALIZER_RANGE, MoEGate
from moe_lib.testing import assert_close


def _hf_router(hidden, experts, top_k=2):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    cfg = MixtralConfig(hidden_size=hidden, num_local_experts=experts, num_experts_per_tok=top_k)
    return MixtralTopKRouter(cfg)


def test_logits_are_a_linear_map(gen):
    gate = MoEGate(64, 8, generator=gen)
    x = torch.randn(33, 64, generator=gen)
    assert_close(gate(x), x.double() @ gate.weight.double().T, tol=1e-6)
    # Any leading shape: (..., H) -> (..., E)
    assert gate(torch.randn(2, 3, 64, generator=gen)).shape == (2, 3, 8)


def test_initialized_like_hf(gen):
    gate = MoEGate(512, 64, generator=gen)
    std = gate.weight.std().item()
    assert abs(std - INITIALIZER_RANGE) < 0.1 * INITIALIZER_RANGE
    assert abs(gate.weight.mean().item()) < 1e-3
    # Same seed, same router, whatever the dtype.
    a = MoEGate(16, 4, generator=torch.Generator().manual_seed(7))
    b = MoEGate(16, 4, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.weight.to(torch.bfloat16), b.weight)


def test_matches_hf_router_logits(gen):
    gate = MoEGate(96, 8, generator=gen)
    hf = _hf_router(96, 8)
    with torch.no_grad():
        hf.weight.copy_(gate.weight)
    x = torch.randn(57, 96, generator=gen)
    logits, _, _ = hf(x)
    assert_close(gate(x), logits, tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_logits_in_activation_dtype(gen, dtype):
    gate = MoEGate(32, 4, dtype=dtype, generator=gen)
    assert gate(torch.randn(5, 32, generator=gen).to(dtype)).dtype == dtype


def test_bad_inputs(gen):
    gate = MoEGate(32, 4, generator=gen)
    with pytest.raises(ValueError, match="hidden_size"):
        gate(torch.randn(5, 31))
    with pytest.raises(TypeError, match="hidden_states"):
        gate(torch.ones(5, 32, dtype=torch.int64))
    with pytest.raises(TypeError, match="hidden_states"):
        gate([1.0] * 32)
    with pytest.raises(ValueError, match="num_experts"):
        MoEGate(32, 0)
    with pytest.raises(TypeError, match="hidden_size"):
        MoEGate(32.0, 4)
