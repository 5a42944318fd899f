"""moe_reference: the loop over experts, checked by hand and against HF's MixtralSparseMoeBlock."""

import pytest
import torch
import torch.nn.functional as F

from moe_lib.kernels.routing import topk_softmax
from moe_lib.reference import moe_reference, silu_and_mul
from moe_lib.testing import assert_close, tolerance


def make_problem(M, E, H, I, k, gen, dtype=torch.float32, scale=0.1):
    x = torch.randn(M, H, generator=gen).to(dtype)
    w13 = (torch.randn(E, 2 * I, H, generator=gen) * scale).to(dtype)
    w2 = (torch.randn(E, H, I, generator=gen) * scale).to(dtype)
    logits = torch.randn(M, E, generator=gen)
    w, ids = topk_softmax(logits, k)
    return x, w13, w2, w, ids, logits


def per_token_reference(x, w13, w2, w, ids):
    """A second, token-by-token formulation (float64) to check the expert loop against."""
    x, w13, w2 = x.double(), w13.double(), w2.double()
    inter = w13.shape[1] // 2
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            g, u = w13[e, :inter] @ x[t], w13[e, inter:] @ x[t]
            out[t] += float(w[t, j]) * (w2[e] @ (F.silu(g) * u))
    return out


def test_silu_and_mul(gen):
    h = torch.randn(5, 12, generator=gen)
    assert torch.allclose(silu_and_mul(h), h[:, :6] * torch.sigmoid(h[:, :6]) * h[:, 6:])
    with pytest.raises(ValueError, match="gate_up"):
        silu_and_mul(torch.randn(3, 5))


@pytest.mark.parametrize("M,E,H,I,k", [(0, 4, 16, 8, 2), (1, 8, 32, 16, 2), (33, 8, 24, 40, 2), (17, 5, 8, 8, 5)])
def test_loop_equals_per_token_sum(M, E, H, I, k, gen):
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen)
    out = moe_reference(x, w13, w2, w, ids, fp64=True)
    assert out.dtype == torch.float64 and out.shape == (M, H)
    assert_close(out, per_token_reference(x, w13, w2, w, ids), tol=1e-12)
    out32 = moe_reference(x, w13, w2, w, ids)
    assert out32.dtype == torch.float32
    assert_close(out32, out, tol=tolerance(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_hf_block(dtype, gen):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    M, E, H, I, k = 45, 8, 64, 96, 2
    x, w13, w2, _, _, _ = make_problem(M, E, H, I, k, gen, dtype=dtype)
    cfg = MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k)
    block = MixtralSparseMoeBlock(cfg).to(dtype).eval()
    gate_w = (torch.randn(E, H, generator=gen) * 0.5).to(dtype)
    with torch.no_grad():
        block.gate.weight.copy_(gate_w)
        block.experts.gate_up_proj.copy_(w13)
        block.experts.down_proj.copy_(w2)
        hf_out = block(x[None])[0]
    w, ids = topk_softmax(x @ gate_w.T, k)
    ours = moe_reference(x, w13, w2, w, ids)
    oracle = moe_reference(x, w13, w2, w, ids, fp64=True)
    assert_close(ours, oracle, tol=tolerance(dtype))
    assert_close(hf_out, oracle, tol=tolerance(dtype))


def test_expert_map_drops_remote_experts(gen):
    M, E, H, I, k = 20, 8, 16, 8, 2
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen)
    full = moe_reference(x, w13, w2, w, ids, fp64=True)
    # Two "ranks" holding experts {0..3} and {4..7}: the sum of their partial outputs is the full output.
    parts = []
    for rank in range(2):
        local = torch.arange(4 * rank, 4 * rank + 4)
        expert_map = torch.full((E,), -1, dtype=torch.int32)
        expert_map[local] = torch.arange(4, dtype=torch.int32)
        parts.append(moe_reference(x, w13[local], w2[local], w, ids, expert_map=expert_map, fp64=True))
    assert_close(parts[0] + parts[1], full, tol=1e-12)


def test_non_contiguous_weights(gen):
    x, w13, w2, w, ids, _ = make_problem(9, 4, 16, 8, 2, gen)
    w13_t = w13.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    assert not w13_t.is_contiguous()
    assert_close(moe_reference(x, w13_t, w2, w, ids), moe_reference(x, w13, w2, w, ids), tol=1e-6)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda a: a.update(hidden_states=a["hidden_states"][:, :-1]), ValueError, "w13"),
        (lambda a: a.update(w13=a["w13"][:, :-1]), ValueError, "w13"),
        (lambda a: a.update(w2=a["w2"][:-1]), ValueError, "w2"),
        (lambda a: a.update(w2=a["w2"][:, :, :-1]), ValueError, "w2"),
        (lambda a: a.update(w2=a["w2"][0]), ValueError, "w2"),
        (lambda a: a.update(hidden_states=a["hidden_states"][None]), ValueError, "hidden_states"),
        (lambda a: a.update(topk_ids=a["topk_ids"][:, :1]), ValueError, "topk_weights"),
        (lambda a: a.update(topk_ids=a["topk_ids"][:-1], topk_weights=a["topk_weights"][:-1]), ValueError, "topk_ids"),
        (lambda a: a.update(topk_ids=a["topk_ids"] + 4), ValueError, "topk_ids"),
        (lambda a: a.update(topk_ids=a["topk_ids"] - 4), ValueError, "topk_ids"),
        (lambda a: a.update(topk_ids=a["topk_ids"].float()), TypeError, "topk_ids"),
        (lambda a: a.update(w13=a["w13"].to(torch.int32)), TypeError, "w13"),
        (lambda a: a.update(hidden_states="x"), TypeError, "hidden_states"),
    ],
)
def test_bad_inputs(change, exc, match, gen):
    x, w13, w2, w, ids, _ = make_problem(6, 4, 16, 8, 2, gen)
    args = dict(hidden_states=x, w13=w13, w2=w2, topk_weights=w, topk_ids=ids)
    change(args)
    with pytest.raises(exc, match=match):
        moe_reference(**args)


def test_bad_expert_map(gen):
    x, w13, w2, w, ids, _ = make_problem(6, 4, 16, 8, 2, gen)
    with pytest.raises(ValueError, match="expert_map"):
        moe_reference(x, w13, w2, w, ids, expert_map=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match="topk_ids"):  # ids are global: must be < len(expert_map)
        moe_reference(x, w13, w2, w, ids, expert_map=torch.tensor([0, 1]))
