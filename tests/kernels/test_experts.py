"""fused_experts / fused_moe — the plan run end to end — against the fp64 loop over experts and against HF's
MixtralSparseMoeBlock, for every decision the plan can take (layout, TMA, k-sum, split tail).

The CPU part runs in the Triton interpreter (sizes kept small); the `gpu` part runs on the device
machine (`make test-gpu PY=python3`) with Mixtral shapes, bf16 and M = 100000.
"""

import json

import pytest
import torch
from problems import check, make_problem, tma_config

from moe_lib import runtime
from moe_lib.kernels import fused_experts, fused_moe, plan_call
from moe_lib.kernels.configs import default_config
from moe_lib.kernels.routing import topk_softmax
from moe_lib.reference import moe_reference
from moe_lib.runtime import default_device
from moe_lib.testing import assert_close, tolerance

# ---- the CPU (interpreter) grid ------------------------------------------------------------------------
# Every M, E and top_k of the grid appears, with H and I that are no multiple of any tile.
CPU_GRID = [
    # M, E, H, I, top_k
    (0, 8, 64, 128, 2),
    (1, 8, 96, 200, 2),
    (2, 2, 200, 96, 2),  # top_k = E
    (7, 1, 64, 96, 1),  # one expert
    (7, 4, 511, 96, 4),  # top_k = E
    (33, 8, 96, 200, 2),
    (33, 16, 200, 511, 4),
    (64, 8, 64, 128, 1),
    (64, 64, 96, 64, 4),
    (257, 8, 96, 200, 2),
    (257, 32, 64, 96, 2),
    (1000, 8, 64, 96, 2),
    (100, 256, 32, 48, 4),
]


@pytest.mark.parametrize("M,E,H,I,k", CPU_GRID)
def test_grid_fp32(M, E, H, I, k, gen, device, poison):
    check(M, E, H, I, k, torch.float32, gen, device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,E,H,I,k", [(1, 8, 96, 200, 2), (33, 8, 200, 96, 2), (257, 16, 64, 128, 4)])
def test_grid_half(M, E, H, I, k, dtype, gen, device, poison):
    check(M, E, H, I, k, dtype, gen, device)


@pytest.mark.parametrize(
    "config",
    [
        dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=16, GROUP_SIZE_M=4, num_warps=4, num_stages=2),
        dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=16, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=4, num_stages=2),
    ],
)
def test_explicit_configs_and_group_swizzle(config, gen, device, poison):
    check(50, 8, 72, 40, 2, torch.float32, gen, device, config=config)


def test_separate_down_config(gen, device, poison):
    config = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=32, BLOCK_SIZE_K=32, GROUP_SIZE_M=1, num_warps=4, num_stages=2,
                  down=dict(BLOCK_SIZE_N=64, BLOCK_SIZE_K=16, GROUP_SIZE_M=2))
    check(40, 8, 96, 72, 2, torch.float32, gen, device, config=config)


def test_expert_map_half_local(gen, device, poison):
    M, E, H, I, k = 60, 8, 64, 96, 2
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen, device=device)
    full = moe_reference(x, w13, w2, w, ids, fp64=True)
    total = torch.zeros_like(full)
    for rank in range(2):
        local = torch.arange(rank * 4, rank * 4 + 4, device=device)
        expert_map = torch.full((E,), -1, dtype=torch.int32, device=device)
        expert_map[local] = torch.arange(4, dtype=torch.int32, device=device)
        part = fused_experts(x, w13[local], w2[local], w, ids, expert_map=expert_map)
        assert_close(part, moe_reference(x, w13[local], w2[local], w, ids, expert_map=expert_map, fp64=True))
        total += part.double()
    assert_close(total, full, tol=tolerance(torch.float32))


def test_non_contiguous_inputs(gen, device, poison):
    M, E, H, I, k = 40, 8, 64, 96, 2
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen, device=device)
    w13_t = w13.transpose(1, 2).contiguous().transpose(1, 2)  # K-major: stride(2) != 1
    w2_t = w2.transpose(0, 2).contiguous().transpose(0, 2)  # experts innermost
    x_t = torch.stack([x, -x], dim=2).reshape(M, 2 * H)[:, ::2]
    assert not (w13_t.is_contiguous() or w2_t.is_contiguous() or x_t.is_contiguous())
    assert torch.equal(x_t, x)
    out = fused_experts(x_t, w13_t, w2_t, w, ids)
    assert_close(out, moe_reference(x, w13, w2, w, ids, fp64=True))


def test_matches_hf_block(gen, device):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    M, E, H, I, k = 37, 8, 96, 200, 2
    x, w13, w2, _, _, _ = make_problem(M, E, H, I, k, gen)
    block = MixtralSparseMoeBlock(
        MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k)
    ).eval()
    gate_w = torch.randn(E, H, generator=gen) * 0.3
    with torch.no_grad():
        block.gate.weight.copy_(gate_w)
        block.experts.gate_up_proj.copy_(w13)
        block.experts.down_proj.copy_(w2)
        hf_out = block(x[None])[0]
    logits = (x @ gate_w.T).to(device)
    ours = fused_moe(x.to(device), w13.to(device), w2.to(device), logits, k)
    assert_close(ours, hf_out, tol=tolerance(torch.float32))


def test_fused_moe_routes_then_computes(gen, device, poison):
    x, w13, w2, _, _, logits = make_problem(20, 8, 64, 96, 2, gen, device=device)
    w, ids = topk_softmax(logits, 2)
    assert_close(fused_moe(x, w13, w2, logits, 2), moe_reference(x, w13, w2, w, ids, fp64=True))
    w, ids = topk_softmax(logits, 2, renormalize=False)
    assert_close(
        fused_moe(x, w13, w2, logits, 2, renormalize=False), moe_reference(x, w13, w2, w, ids, fp64=True)
    )


def test_empty_batch_returns_empty(gen, device):
    x, w13, w2, w, ids, logits = make_problem(0, 8, 64, 96, 2, gen, device=device)
    assert fused_experts(x, w13, w2, w, ids).shape == (0, 64)
    assert fused_moe(x, w13, w2, logits, 2).shape == (0, 64)


# ---- bad inputs ------------------------------------------------------------------------------------------
SMALL = default_config(6, 4, 16, 32, 2, interpret=True)


def _args(gen):
    x, w13, w2, w, ids, _ = make_problem(6, 4, 32, 16, 2, gen, device=default_device())
    return dict(hidden_states=x, w13=w13, w2=w2, topk_weights=w, topk_ids=ids)


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (lambda a: a.update(hidden_states=a["hidden_states"][:, :-1]), ValueError, "w13"),
        (lambda a: a.update(w13=a["w13"][:, :-1]), ValueError, "w13"),
        (lambda a: a.update(w2=a["w2"][:-1]), ValueError, "w2"),
        (lambda a: a.update(w2=a["w2"][:, :-1]), ValueError, "w2"),
        (lambda a: a.update(hidden_states=a["hidden_states"].double()), TypeError, "hidden_states"),
        (lambda a: a.update(w2=a["w2"].half()), TypeError, "w2"),
        (lambda a: a.update(topk_ids=a["topk_ids"] + 2), ValueError, "topk_ids"),
        (lambda a: a.update(topk_ids=a["topk_ids"] - 3), ValueError, "topk_ids"),
        (lambda a: a.update(topk_ids=a["topk_ids"][:, :1]), ValueError, "topk_weights"),
        (lambda a: a.update(topk_ids=a["topk_ids"].float()), TypeError, "topk_ids"),
        (lambda a: a.update(w13=torch.empty(4, 32, 32, device="meta")), ValueError, "w13"),
        (lambda a: a.update(topk_ids=a["topk_ids"].to("meta")), ValueError, "topk_ids"),
        (lambda a: a.update(config={"BLOCK_SIZE_M": 16}), ValueError, "config"),
        (lambda a: a.update(config={**SMALL, "down": {"BLOCK_SIZE_M": 32}}),
         ValueError, "down"),
        (lambda a: a.update(config={**SMALL, "down": {"BLOCK_SIZE_K": 8}}), ValueError,
         "down"),
        (lambda a: a.update(config={**SMALL, "BLOCK_SIZE_N": 24}), ValueError,
         "BLOCK_SIZE_N"),
    ],
)
def test_bad_inputs(change, exc, match, gen):
    args = _args(gen)
    change(args)
    with pytest.raises(exc, match=match):
        fused_experts(**args)


def test_bad_router_logits(gen):
    a = _args(gen)
    dev = default_device()
    with pytest.raises(ValueError, match="top_k"):
        fused_moe(a["hidden_states"], a["w13"], a["w2"], torch.randn(6, 4, device=dev), 5)
    with pytest.raises(ValueError, match="router_logits"):
        fused_moe(a["hidden_states"], a["w13"], a["w2"], torch.randn(5, 4, device=dev), 2)


# ---- GPU grid (device machine) -------------------------------------------------------------------------
GPU_GRID = [
    (M, E, H, I, k)
    for M in (1, 2, 7, 33, 64, 257, 1000)
    for (E, k) in ((1, 1), (2, 2), (8, 2), (16, 4), (64, 4), (256, 2), (4, 4))
    for (H, I) in ((96, 200), (511, 96))
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,E,H,I,k", GPU_GRID)
def test_gpu_grid(M, E, H, I, k, dtype, gen, poison):
    check(M, E, H, I, k, dtype, gen, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("M", [1, 64, 1000])
def test_gpu_mixtral_shapes_bf16(tp, M, gen, poison):
    check(M, 8, 4096, 14336 // tp, 2, torch.bfloat16, gen, "cuda")


@pytest.mark.gpu
def test_gpu_int64_offsets_large_m(gen, poison):
    # 100000 tokens x top-6 = 600000 rows of 4096: row offsets reach 2.4e9 > 2**31.
    check(100_000, 8, 4096, 256, 6, torch.bfloat16, gen, "cuda")


@pytest.mark.gpu
def test_gpu_hf_block_bf16(gen):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    M, E, H, I, k = 300, 8, 1024, 2048, 2
    x, w13, w2, _, _, _ = make_problem(M, E, H, I, k, gen, torch.bfloat16, "cuda")
    block = MixtralSparseMoeBlock(
        MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k)
    ).to("cuda", torch.bfloat16).eval()
    gate_w = (torch.randn(E, H, generator=gen) * 0.05).to("cuda", torch.bfloat16)
    with torch.no_grad():
        block.gate.weight.copy_(gate_w)
        block.experts.gate_up_proj.copy_(w13)
        block.experts.down_proj.copy_(w2)
        hf_out = block(x[None])[0]
        logits = x @ gate_w.T
    w, ids = topk_softmax(logits, k)
    oracle = moe_reference(x, w13, w2, w, ids, fp64=True)
    ours = fused_moe(x, w13, w2, logits, k)
    assert_close(ours, oracle, tol=tolerance(torch.bfloat16))
    assert_close(hf_out, oracle, tol=tolerance(torch.bfloat16))


def test_decode_layout(gen, device, poison):
    # One token: slot j gets block j, no alignment kernel; the result is the loop's.
    for k in (1, 2, 4):
        x, w13, w2, w, ids, _ = make_problem(1, 8, 64, 96, k, gen, device=device)
        plan = plan_call(x, w13, w2, ids)
        assert plan.layout == "decode" and plan.sorted_len == k * plan.block_m
        bound = plan.bind(x, w13, w2, w, ids)
        out = bound.run()
        sorted_ids, expert_ids, total = bound.layout
        bm = plan.block_m
        assert sorted_ids.tolist()[::bm] == list(range(k)) and (sorted_ids.view(k, bm)[:, 1:] == k).all()
        assert expert_ids.tolist() == ids.flatten().tolist() and total.item() == bm * k
        assert_close(out, moe_reference(x, w13, w2, w, ids, fp64=True))
        # int64 ids take one cast step ("align") and give the same bits
        wide = plan_call(x, w13, w2, ids.long())
        assert "align" in wide.steps and "align" not in plan.steps
        assert torch.equal(wide.bind(x, w13, w2, w, ids.long()).run(), out)


def test_unchecked_out_of_range_ids_never_read_out_of_bounds(gen, device, poison):
    # check_ids=False skips the host check (for CUDA graphs): a bad id must give zeros, not garbage.
    for M, k in ((1, 2), (9, 2), (9, 1)):
        x, w13, w2, w, ids, _ = make_problem(M, 4, 32, 48, k, gen, device=device)
        bad = ids.clone()
        bad[0, 0] = 7 if M > 1 else -5
        out = fused_experts(x, w13, w2, w, bad, check_ids=False)
        assert torch.isfinite(out).all()
        keep = bad.clone()
        keep[0, 0] = 0
        w_zero = w.clone()
        w_zero[0, 0] = 0.0  # the bad slot contributes nothing
        assert_close(out, moe_reference(x, w13, w2, w_zero, keep, fp64=True))


# ---- the TMA layout: tokens copied into sorted order, tiles read through tensor descriptors -------------
def uses_tma(x, w13, w2, ids, config, expert_map=None) -> bool:
    return plan_call(x, w13, w2, ids, expert_map, config).tma


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,E,H,I,k,block_m", [
    (1, 8, 64, 96, 2, 16),
    (33, 8, 96, 200, 2, 16),  # N = 200: the last gate tile reads up rows (never stored)
    (257, 16, 64, 48, 4, 32),
    (40, 4, 128, 64, 4, 64),  # top_k = E
    (7, 1, 64, 32, 1, 16),  # one expert, top_k = 1: GEMM2 writes the output directly
])
def test_tma_layout(M, E, H, I, k, block_m, dtype, gen, device, poison):
    check(M, E, H, I, k, dtype, gen, device, config=tma_config(block_m))
    x, w13, w2, _, ids, _ = make_problem(M, E, H, I, k, gen, dtype, device)
    assert uses_tma(x, w13, w2, ids, tma_config(block_m))  # the TMA path ran, not the fallback


def test_tma_falls_back_when_rows_are_not_16_byte_aligned(gen, device, poison):
    # fp32 rows of 511 elements are 2044 bytes: no descriptor can describe them; the result is the same.
    check(20, 8, 511, 64, 2, torch.float32, gen, device, config=tma_config())
    x, w13, w2, w, ids, _ = make_problem(20, 8, 511, 64, 2, gen, device=device)
    assert not uses_tma(x, w13, w2, ids, tma_config())
    x, w13, w2, w, ids, _ = make_problem(20, 8, 64, 96, 2, gen, device=device)
    w13_t = w13.transpose(1, 2).contiguous().transpose(1, 2)  # stride(2) != 1
    assert not uses_tma(x, w13_t, w2, ids, tma_config())
    assert_close(fused_experts(x, w13_t, w2, w, ids, config=tma_config()), moe_reference(x, w13, w2, w, ids, fp64=True))


def test_tma_with_expert_map_and_unchecked_bad_ids(gen, device, poison):
    M, E, H, I, k = 50, 8, 64, 96, 2
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen, device=device)
    local = torch.arange(2, 6, device=device)
    expert_map = torch.full((E,), -1, dtype=torch.int32, device=device)
    expert_map[local] = torch.arange(4, dtype=torch.int32, device=device)
    assert uses_tma(x, w13[local], w2[local], ids, tma_config(), expert_map)
    part = fused_experts(x, w13[local], w2[local], w, ids, expert_map=expert_map, config=tma_config())
    assert_close(part, moe_reference(x, w13[local], w2[local], w, ids, expert_map=expert_map, fp64=True))
    bad = ids.clone()
    bad[3, 1] = E + 5  # unchecked: dropped by the alignment, contributes nothing
    w_zero = w.clone()
    w_zero[3, 1] = 0.0
    keep = bad.clone()
    keep[3, 1] = 0
    out = fused_experts(x, w13, w2, w, bad, config=tma_config(), check_ids=False)
    assert_close(out, moe_reference(x, w13, w2, w_zero, keep, fp64=True))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M,E,H,I,k", [(M, E, H, I, k) for M in (1, 33, 257, 1000)
                                       for (E, k) in ((1, 1), (8, 2), (64, 4), (256, 2))
                                       for (H, I) in ((96, 200), (512, 96))])
def test_gpu_tma_grid(M, E, H, I, k, dtype, gen, poison):
    check(M, E, H, I, k, dtype, gen, "cuda", config=tma_config(64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=64))


@pytest.mark.gpu
@pytest.mark.parametrize("tp", [1, 8])
@pytest.mark.parametrize("M", [512, 4096])
def test_gpu_mixtral_tma_bf16(tp, M, gen, poison):
    config = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=16, num_warps=8, num_stages=4,
                  TMA=True, down=dict(BLOCK_SIZE_N=256))
    check(M, 8, 4096, 14336 // tp, 2, torch.bfloat16, gen, "cuda", config=config)
    x, w13, w2, _, ids, _ = make_problem(M, 8, 4096, 14336 // tp, 2, gen, torch.bfloat16, "cuda")
    assert uses_tma(x, w13, w2, ids, config)


# ---- the sum over k inside GEMM2: atomic adds into the cleared output, where that is exact -----------
@pytest.mark.parametrize("k,check_ids,k_sum", [(1, True, "direct"), (1, False, "atomic"), (2, True, "atomic"),
                                               (3, True, "pass"), (4, False, "pass")])
def test_k_sum_moves_into_gemm2_only_for_two_slots_or_fewer(k, check_ids, k_sum, gen, device, poison):
    x, w13, w2, w, ids, _ = make_problem(45, 8, 64, 96, k, gen, device=device)
    out = fused_experts(x, w13, w2, w, ids, check_ids=check_ids)
    assert_close(out, moe_reference(x, w13, w2, w, ids, fp64=True))
    assert plan_call(x, w13, w2, ids, ids_checked=check_ids).k_sum == k_sum


def run_plan(x, w13, w2, w, ids, config=None, **options):
    """fused_experts with the plan's policy keywords (what the public function leaves at their defaults)."""
    return plan_call(x, w13, w2, ids, None, config, **options).bind(x, w13, w2, w, ids).run()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tma", [False, True])
def test_k_sum_in_gemm2_gives_the_bits_of_the_separate_pass(dtype, tma, gen, device):
    # Two terms added into zero round the same in either order: the same bits as the sum kernel, every time.
    x, w13, w2, w, ids, _ = make_problem(41, 8, 64, 96, 2, gen, dtype, device)
    config = tma_config(BLOCK_SIZE_M=16, TMA=tma)
    fused = [fused_experts(x, w13, w2, w, ids, config=config) for _ in range(2)]
    separate = run_plan(x, w13, w2, w, ids, config, fuse_k_sum=False)
    assert plan_call(x, w13, w2, ids, None, config, fuse_k_sum=False).k_sum == "pass"
    assert torch.equal(fused[0], fused[1]) and torch.equal(fused[0], separate)


@pytest.mark.parametrize("m,hidden", [(1, 64), (41, 512)])  # H = 512: two chunks of 1024 per program
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm1_clears_the_output_with_the_bits_of_a_separate_clear(m, hidden, dtype, gen, device, poison):
    # The output starts as NaNs (poison): any value GEMM1's programs failed to zero would show.
    x, w13, w2, w, ids, _ = make_problem(m, 8, hidden, 96, 2, gen, dtype, device)
    plan = plan_call(x, w13, w2, ids)
    assert plan.gemm1.clears_out == (plan.k_sum == "atomic") and "clear" not in plan.steps
    out = fused_experts(x, w13, w2, w, ids)
    assert torch.equal(out, run_plan(x, w13, w2, w, ids, clear_in_gemm1=False))
    assert_close(out, moe_reference(x, w13, w2, w, ids, fp64=True), tol=tolerance(dtype))


def test_k_sum_in_gemm2_with_expert_map_and_unchecked_bad_ids(gen, device, poison):
    # Slots on other ranks (-1 blocks) and dropped ids add nothing: their tokens still get a cleared row.
    M, E = 30, 8
    x, w13, w2, w, ids, _ = make_problem(M, E, 64, 96, 2, gen, device=device)
    ids[0] = torch.tensor([0, 1], dtype=ids.dtype)  # token 0: both slots on another rank below
    expert_map = torch.full((E,), -1, dtype=torch.int32, device=device)
    expert_map[4:] = torch.arange(4, dtype=torch.int32, device=device)
    part = fused_experts(x, w13[4:], w2[4:], w, ids, expert_map=expert_map)
    assert (part[0] == 0).all()
    assert_close(part, moe_reference(x, w13[4:], w2[4:], w, ids, expert_map=expert_map, fp64=True))
    bad = ids.clone()
    bad[1] = torch.tensor([E + 3, -2], dtype=ids.dtype)  # unchecked: both slots dropped by the alignment
    out = fused_experts(x, w13, w2, w, bad, check_ids=False)
    assert (out[1] == 0).all() and torch.isfinite(out).all()
    assert plan_call(x, w13, w2, bad, ids_checked=False).k_sum == "atomic"


# ---- a sparse last wave split into half tiles ----------------------------------------------------------
@pytest.mark.parametrize("num_sms", [5, 9])  # last wave: 1 of 5, 4 of 9 programs (split at most half)
@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_tail(num_sms, tma, dtype, gen, device, poison):
    # A Target that says the device runs num_sms programs at once makes the plan split a sparse last wave (the
    # interpreter has no waves of its own; on a GPU this pretends to have fewer SMs).
    import dataclasses

    from moe_lib.kernels.experts import make_plan

    M, E, H, I, k = 300, 4, 64, 96, 2
    x, w13, w2, w, ids, _ = make_problem(M, E, H, I, k, gen, dtype, device)
    target = dataclasses.replace(runtime.target(torch.device(device)), num_sms=num_sms)
    plan = make_plan(M, H, I, k, E, dtype=dtype, target=target, config=tma_config(64, TMA=tma))
    assert plan.tma == (tma and (target.interpret or target.hopper))
    assert plan.gemm1.split_tail and plan.gemm2.split_tail  # 1 to 24 waves of tiles
    out = plan.bind(x, w13, w2, w, ids).run()
    assert_close(out, moe_reference(x, w13, w2, w, ids, fp64=True), tol=tolerance(dtype))
    unsplit = make_plan(M, H, I, k, E, dtype=dtype, target=target, config=tma_config(64, TMA=tma), split_tail=False)
    assert not unsplit.gemm1.split_tail
    # Bitwise equality is a GPU property (test_gpu_split_tail_and_pdl_keep_the_bits): numpy's fp32 matmul may
    # sum a half-width tile in another order.
    assert_close(out, unsplit.bind(x, w13, w2, w, ids).run(), tol=tolerance(dtype))


@pytest.mark.gpu
def test_gpu_split_tail_and_pdl_keep_the_bits(gen):
    # bf16 Mixtral TP8 at M = 4096: 7.2 waves of GEMM1 tiles, so the split runs; PDL on or off, split on or
    # off, the output cleared by GEMM1 or alone, the layer gives the same bits.
    x, w13, w2, w, ids, _ = make_problem(4096, 8, 4096, 1792, 2, gen, torch.bfloat16, "cuda")
    config = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=64, GROUP_SIZE_M=1, num_warps=8, num_stages=3,
                  TMA=True, down=dict(BLOCK_SIZE_N=256))
    assert plan_call(x, w13, w2, ids, None, config).gemm1.split_tail
    outs = [run_plan(x, w13, w2, w, ids, config, split_tail=split, pdl=pdl, clear_in_gemm1=clear)
            for split, pdl, clear in ((True, True, True), (False, True, True), (True, False, True),
                                      (False, False, True), (True, True, False))]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert_close(outs[0], moe_reference(x, w13, w2, w, ids), tol=tolerance(torch.bfloat16))


# ---- strict inputs: check_ids=False skips only the values; configs, router_logits, devices ---------------
@pytest.mark.parametrize(
    "change,exc,match",
    [
        # a routing batch larger (or smaller) than the tokens: refused even unchecked (it wrote out of bounds)
        (lambda a: a.update(topk_ids=torch.cat([a["topk_ids"]] * 2), topk_weights=torch.cat([a["topk_weights"]] * 2)),
         ValueError, "topk_ids has size 12 in dim 0"),
        (lambda a: a.update(topk_ids=a["topk_ids"][:3], topk_weights=a["topk_weights"][:3]), ValueError, "topk_ids"),
        (lambda a: a.update(hidden_states=a["hidden_states"][:, :-1]), ValueError, "w13"),
        (lambda a: a.update(w2=a["w2"].half()), TypeError, "w2"),
        (lambda a: a.update(topk_ids=a["topk_ids"].float()), TypeError, "topk_ids"),
        (lambda a: a.update(topk_weights=a["topk_weights"].long()), TypeError, "topk_weights"),
        (lambda a: a.update(expert_map=torch.zeros(4, 1, dtype=torch.int32, device=a["w13"].device)), ValueError,
         "expert_map"),
        (lambda a: a.update(w13=a["w13"].to("meta")), ValueError, "w13 is on meta"),
    ],
)
def test_unchecked_ids_keep_every_other_check(change, exc, match, gen):
    args = _args(gen)
    change(args)
    with pytest.raises(exc, match=match):
        fused_experts(**args, check_ids=False)


@pytest.mark.parametrize("flag", [1, 0, None, "yes", torch.tensor(True)])
def test_check_ids_must_be_a_bool(flag, gen):
    with pytest.raises(TypeError, match="check_ids must be a bool"):
        fused_experts(**_args(gen), check_ids=flag)
    a = _args(gen)
    with pytest.raises(TypeError, match="check_ids must be a bool"):
        fused_moe(a["hidden_states"], a["w13"], a["w2"], torch.randn(6, 4, device=default_device()), 2,
                  check_ids=flag)


@pytest.mark.parametrize("change,match", [
    ({"GROUP_SIZE_M": 0}, "GROUP_SIZE_M"),
    ({"GROUP_SIZE_M": -1}, "GROUP_SIZE_M"),
    ({"GROUP_SIZE_M": 2.0}, "GROUP_SIZE_M"),
    ({"num_warps": 3}, "num_warps"),
    ({"num_warps": 0}, "num_warps"),
    ({"num_stages": 0}, "num_stages"),
    ({"num_stages": True}, "num_stages"),
    ({"BLOCK_SIZE_K": 8}, "BLOCK_SIZE_K"),
    ({"BLOCK_SIZE_M": 512}, "BLOCK_SIZE_M"),
    ({"split_k": 2}, "unknown keys"),
    ({"TMA": 1}, "TMA"),
    ({"down": {"num_warps": 6}}, "down"),
    ({"down": {"BLOCK_SIZE_M": 32}}, "down"),
])
def test_every_config_key_is_validated(change, match, gen):
    with pytest.raises((ValueError, TypeError), match=match):
        fused_experts(**_args(gen), config={**SMALL, **change})


def test_a_json_table_is_validated_when_the_plan_reads_it(tmp_path):
    # A GPU target reads tuned tables; a bad row is refused with the file and the M, not launched.
    from moe_lib.kernels.configs import config_file_name
    from moe_lib.kernels.experts import make_plan
    from moe_lib.runtime import Target

    h200 = Target(interpret=False, name="NVIDIA H200", num_sms=132, capability=(9, 0))
    name = config_file_name(8, 96, "NVIDIA H200")
    (tmp_path / name).write_text(json.dumps({"1": SMALL, "64": {**SMALL, "GROUP_SIZE_M": 0}}))
    with pytest.raises(ValueError, match=rf"{name}: config for M=64: config\['GROUP_SIZE_M'\]"):
        make_plan(40, 64, 96, 2, 8, dtype=torch.float16, target=h200, config_dir=tmp_path)


@pytest.mark.parametrize("columns", [3, 6, 16])
def test_router_logits_must_have_one_column_per_expert(columns, gen):
    a = _args(gen)  # E = 4
    logits = torch.randn(6, columns, device=default_device())
    with pytest.raises(ValueError, match=rf"router_logits has size {columns} in dim 1.*number of experts in w13 is 4"):
        fused_moe(a["hidden_states"], a["w13"], a["w2"], logits, 2)
    # with an expert map the columns are the global experts
    emap = torch.tensor([0, 1, 2, 3, -1, -1, -1, -1], dtype=torch.int32, device=default_device())
    with pytest.raises(ValueError, match="router_logits has size .* global experts"):
        fused_moe(a["hidden_states"], a["w13"], a["w2"], logits, 2, expert_map=emap)


def test_meta_and_mixed_device_inputs_are_refused_clearly(gen):
    a = _args(gen)
    meta = {k: v.to("meta") for k, v in a.items()}
    with pytest.raises(ValueError, match="hidden_states is a meta tensor"):
        fused_experts(**meta)
    with pytest.raises(ValueError, match="hidden_states is a meta tensor"):
        fused_experts(**meta, check_ids=False)
    logits = torch.randn(6, 4, device=default_device())
    with pytest.raises(ValueError, match="router_logits is on meta"):
        fused_moe(a["hidden_states"], a["w13"], a["w2"], logits.to("meta"), 2)
    with pytest.raises(ValueError, match="meta"):
        fused_moe(meta["hidden_states"], meta["w13"], meta["w2"], logits.to("meta"), 2)
    with pytest.raises(ValueError, match="topk_weights is on meta"):
        fused_experts(**(a | {"topk_weights": meta["topk_weights"]}))


@pytest.mark.parametrize("M,k", [(1, 2), (9, 2), (9, 3)])  # decode, align (atomic k-sum), a separate k-sum
def test_unchecked_int64_ids_past_int32_are_dropped_not_wrapped(M, k, gen, device, poison):
    # 2**32 + 3 truncated to 32 bits is expert 3: it must count as no expert, like every out-of-range id.
    x, w13, w2, w, ids, _ = make_problem(M, 4, 32, 48, k, gen, device=device)
    bad = ids.long()
    bad[0, 0] = 2**32 + 3
    if M > 1:
        bad[M - 1, k - 1] = -(2**32) + 1
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, 4\)"):
        fused_experts(x, w13, w2, w, bad)
    out = fused_experts(x, w13, w2, w, bad, check_ids=False)
    dropped = (bad < 0) | (bad >= 4)
    keep = torch.where(dropped, 0, bad)
    assert_close(out, moe_reference(x, w13, w2, torch.where(dropped, 0.0, w), keep, fp64=True))


def test_during_a_capture_the_ids_go_unchecked_and_are_masked(gen, device, poison, monkeypatch):
    # What a CUDA graph capture does (no host sync possible), pretended on any device: the default check is
    # skipped, the plan takes the unchecked schedule, and a bad id adds nothing instead of raising.
    from moe_lib import _validate

    x, w13, w2, w, ids, _ = make_problem(9, 4, 32, 48, 1, gen, device=device)
    bad = ids.clone()
    bad[2, 0] = 7
    with pytest.raises(ValueError, match="topk_ids"):
        fused_experts(x, w13, w2, w, bad)
    monkeypatch.setattr(_validate, "ids_checkable", lambda device: False)
    out = fused_experts(x, w13, w2, w, bad)  # the default check_ids=True, "capturing"
    keep, w_zero = bad.clone(), w.clone()
    keep[2, 0], w_zero[2, 0] = 0, 0.0
    assert (out[2] == 0).all()
    assert_close(out, moe_reference(x, w13, w2, w_zero, keep, fp64=True))
    assert plan_call(x, w13, w2, bad, ids_checked=False).k_sum == "atomic"  # top-1: never "direct" unchecked


# ---- CUDA graphs: the default entry points capture and replay the eager bits -----------------------------
def _capture(fn, *static_inputs):
    """Warm up fn on a side stream, capture one call, return (graph, static output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static_inputs)
    return graph, out


@pytest.mark.gpu
@pytest.mark.parametrize("entry", ["fused_moe", "fused_experts"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M,E,H,I,k", [(1, 8, 4096, 1792, 2), (64, 8, 4096, 1792, 2), (33, 8, 96, 200, 1),
                                       (300, 16, 256, 512, 4), (1024, 8, 4096, 1792, 2)])
def test_gpu_default_entry_points_capture_in_a_cuda_graph(entry, M, E, H, I, k, dtype, gen):
    # Defaults only (check_ids=True): the capture must not sync, and each replay gives the eager bits.
    x, w13, w2, w, ids, logits = make_problem(M, E, H, I, k, gen, dtype, "cuda")
    if entry == "fused_moe":
        def fn(x, logits):
            return fused_moe(x, w13, w2, logits, k)

        def inputs(p):
            return p[0], p[5].to(dtype)  # tokens, router logits
    else:
        def fn(x, ids):
            return fused_experts(x, w13, w2, w, ids)

        def inputs(p):
            return p[0], p[4]  # tokens, expert ids
    static = [t.clone() for t in inputs((x, w13, w2, w, ids, logits))]
    graph, out = _capture(fn, *static)
    for seed in range(2):  # new inputs copied into the static ones, then replayed
        new = inputs(make_problem(M, E, H, I, k, torch.Generator().manual_seed(seed), dtype, "cuda"))
        for s, n in zip(static, new, strict=True):
            s.copy_(n)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, fn(*new))


@pytest.mark.gpu
def test_gpu_capture_masks_bad_ids_instead_of_checking(gen):
    x, w13, w2, w, ids, _ = make_problem(64, 8, 256, 512, 2, gen, torch.bfloat16, "cuda")
    static_ids = ids.clone()
    graph, out = _capture(lambda i: fused_experts(x, w13, w2, w, i), static_ids)
    static_ids[5, 0] = 99  # an id the host check would refuse: the captured kernels drop it
    graph.replay()
    torch.cuda.synchronize()
    keep, w_zero = static_ids.clone(), w.clone()
    keep[5, 0], w_zero[5, 0] = 0, 0.0
    assert torch.isfinite(out).all()
    assert_close(out, moe_reference(x, w13, w2, w_zero, keep, fp64=True), tol=tolerance(torch.bfloat16))
