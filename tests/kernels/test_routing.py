"""topk_softmax (the torch specification) and topk_softmax_triton (the kernel) — and HF's router."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_lib import runtime
from moe_lib.kernels.routing import softmax_fp32, topk_softmax, topk_softmax_triton
from moe_lib.runtime import default_device

IMPLS = [topk_softmax, topk_softmax_triton]
INF, NAN = float("inf"), float("nan")


def _hf_route(logits, top_k):
    """HF transformers' Mixtral router applied to given logits (an identity weight makes logits = x)."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    num_experts = logits.shape[1]
    router = MixtralTopKRouter(
        MixtralConfig(hidden_size=num_experts, num_local_experts=num_experts, num_experts_per_tok=top_k)
    )
    with torch.no_grad():
        router.weight.copy_(torch.eye(num_experts))
        _, scores, ids = router(logits)
    return scores, ids


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("M,E,k", [(1, 8, 2), (33, 8, 2), (257, 8, 1), (64, 16, 4), (7, 64, 6), (5, 256, 8)])
def test_matches_hf_router(impl, M, E, k, gen):
    for _ in range(3):  # several fresh draws
        logits = torch.randn(M, E, generator=gen) * 3
        w, ids = impl(logits.to(default_device()), k)
        hf_w, hf_ids = _hf_route(logits, k)
        assert torch.equal(ids.cpu().long(), hf_ids)
        assert torch.allclose(w.cpu(), hf_w, rtol=1e-6, atol=0)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize(
    "M,E,k", [(0, 8, 2), (1, 1, 1), (2, 2, 2), (33, 8, 8), (100, 16, 16), (3, 256, 256), (257, 60, 3)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_equals_torch(M, E, k, renormalize, dtype, gen, device, poison):
    logits = (torch.randn(M, E, generator=gen) * 4).to(device=device, dtype=dtype)
    w, ids = topk_softmax(logits, k, renormalize)
    tw, tids = topk_softmax_triton(logits, k, renormalize)
    assert tw.dtype == torch.float32 and tids.dtype == torch.int32
    assert tw.shape == tids.shape == (M, k)
    assert torch.equal(ids, tids)
    assert torch.allclose(w, tw, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_non_contiguous_logits(impl, gen, device):
    big = torch.randn(40, 24, generator=gen).to(device)
    logits = big[::3, ::2]  # (14, 12), strides (72, 2)
    w, ids = impl(logits, 3)
    w_ref, ids_ref = topk_softmax(logits.contiguous(), 3)
    assert torch.equal(ids, ids_ref) and torch.allclose(w, w_ref, rtol=2e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_go_to_the_lower_id(impl, device):
    logits = torch.tensor(
        [[1.0, 1.0, 1.0, 0.0], [0.0, 5.0, 5.0, 5.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 3.0, 0.0]], device=device
    )
    w, ids = impl(logits, 2)
    assert ids.tolist() == [[0, 1], [1, 2], [0, 1], [0, 2]]
    assert torch.allclose(w, torch.full_like(w, 0.5))


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_and_inf_rows_route_with_zero_weight(impl, device):
    logits = torch.tensor(
        [[NAN, 1.0, 2.0, 3.0], [INF, 1.0, 2.0, 3.0], [-INF] * 4, [-INF, 0.0, -INF, 1.0], [0.0, 1.0, 2.0, 3.0]],
        device=device,
    )
    w, ids = impl(logits, 2)
    assert torch.isfinite(w).all()
    assert torch.equal(w[:3], torch.zeros(3, 2, device=device))
    assert ids[:3].tolist() == [[0, 1]] * 3  # all-zero probabilities tie: lowest ids
    # -inf logits are experts that can't be chosen: the two finite ones win.
    assert ids[3].tolist() == [3, 1] and torch.allclose(w[3].sum(), torch.tensor(1.0, device=device))
    assert torch.allclose(w[4].sum(), torch.tensor(1.0, device=device))


@pytest.mark.parametrize("impl", IMPLS)
def test_without_renormalize_weights_are_probabilities(impl, gen, device):
    logits = torch.randn(50, 8, generator=gen).to(device)
    w, ids = impl(logits, 2, renormalize=False)
    probs = torch.softmax(logits.double(), dim=-1)
    assert torch.allclose(w.double(), probs.gather(1, ids.long()), rtol=1e-6)
    assert (w.sum(-1) < 1).all()


def test_fp32_softmax_even_for_bf16_logits(gen):
    logits = torch.randn(16, 8, generator=gen).to(torch.bfloat16)
    probs = softmax_fp32(logits)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.double(), torch.softmax(logits.double(), -1), rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.randn(4, 8), 0), ValueError, "top_k"),
        ((torch.randn(4, 8), 9), ValueError, "top_k"),
        ((torch.randn(4, 8), 2.0), TypeError, "top_k"),
        ((torch.randn(8), 2), ValueError, "router_logits"),
        ((torch.randn(2, 4, 8), 2), ValueError, "router_logits"),
        ((torch.ones(4, 8, dtype=torch.int32), 2), TypeError, "router_logits"),
        (([[1.0, 2.0]], 1), TypeError, "router_logits"),
        ((torch.randn(4, 0), 1), ValueError, "router_logits"),
    ],
)
def test_bad_inputs(impl, args, exc, match):
    with pytest.raises(exc, match=match):
        impl(*args)


def test_cpu_tensor_on_a_gpu_machine_is_rejected():
    if not runtime.HAS_CUDA:
        pytest.skip("on a CPU machine the interpreter takes CPU tensors")
    with pytest.raises(ValueError, match="router_logits"):
        topk_softmax_triton(torch.randn(4, 8), 2)


def test_bad_renormalize():
    with pytest.raises(TypeError, match="renormalize"):
        topk_softmax_triton(torch.randn(2, 4), 2, renormalize=1)


def test_meta_logits_are_refused_by_the_kernel_not_crashed_on():
    # the torch version computes shapes on meta tensors like any torch code; the kernel needs values
    with pytest.raises(ValueError, match="router_logits is a meta tensor"):
        topk_softmax_triton(torch.randn(4, 8, device="meta"), 2)
    weights, ids = topk_softmax(torch.randn(4, 8, device="meta"), 2)
    assert weights.shape == ids.shape == (4, 2) and ids.device.type == "meta"


# ---- properties over many random inputs (hypothesis) --------------------------------------------------
@st.composite
def routing_problem(draw):
    num_experts = draw(st.integers(1, 64))
    top_k = draw(st.integers(1, num_experts))
    num_tokens = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.01, 1.0, 10.0]))
    logits = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(seed)) * scale
    return logits, top_k


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(routing_problem())
def test_properties_of_torch_routing(problem):
    logits, k = problem
    w, ids = topk_softmax(logits, k)
    _check_properties(logits, k, w, ids)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routing_problem())
def test_properties_of_triton_routing(problem):
    logits, k = problem
    w, ids = topk_softmax_triton(logits.to(default_device()), k)
    _check_properties(logits, k, w.cpu(), ids.cpu())


def _check_properties(logits, k, w, ids):
    num_experts = logits.shape[1]
    # weights are a distribution over the k chosen experts
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[0]), atol=1e-6)
    assert (w >= 0).all()
    # ids distinct and in range
    assert (ids >= 0).all() and (ids < num_experts).all()
    assert all(len(set(row)) == k for row in ids.tolist())
    # order: weights descending; among equal weights, ids ascending
    assert (w[:, :-1] >= w[:, 1:]).all()
    same = w[:, :-1] == w[:, 1:]
    assert (ids[:, :-1][same] < ids[:, 1:][same]).all()
    # renormalized top-k probabilities == softmax over the top-k logits
    chosen = logits.double().gather(1, ids.long())
    assert torch.allclose(w.double(), torch.softmax(chosen, -1), rtol=1e-5, atol=1e-7)
    # the chosen are the largest: nothing left out beats the smallest chosen probability — up to an ulp or two,
    # since the kernel's fp32 exp is not torch's (hypothesis found 24 of 64 near-equal logits at scale 0.01
    # where one ulp swapped two neighbours)
    probs = softmax_fp32(logits)
    kth = probs.gather(1, ids.long())[:, -1:]
    unchosen = probs.scatter(1, ids.long(), -1.0)
    assert (unchosen <= kth * (1 + 2**-22)).all()
