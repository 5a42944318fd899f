"""moe_lib.kernels.experts.make_plan: every decision of a call, checked on the CPU for the GPU targets too.

A plan is computed from shapes and a Target alone, so this file pins what an H200 (or an older GPU, or the
interpreter) would run: which steps, which buffers, which layout, which config for GEMM1/GEMM2, split tails
and dependent launches. The benchmark's breakdown and the tuner run these same plans, so a drift between them
and fused_experts fails here, on CPU CI.
"""

import json

import pytest
import torch

from moe_lib import runtime
from moe_lib.kernels.configs import load_config_table, nearest_row, split_config
from moe_lib.kernels.experts import STEPS, Fp8, make_plan
from moe_lib.runtime import Target

H200 = Target(interpret=False, name="NVIDIA H200", num_sms=132, capability=(9, 0))
A100 = Target(interpret=False, name="NVIDIA A100-SXM4-80GB", num_sms=108, capability=(8, 0))
CPU = runtime.INTERPRETER
BF16 = torch.bfloat16


def mixtral(m, tp=8, target=H200, **kw):
    return make_plan(m, 4096, 14336 // tp, 2, 8, dtype=BF16, target=target, **kw)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("m", [1, 3, 64, 300, 4096])
def test_h200_config_is_the_tuned_row_for_the_nearest_m(tp, m):
    table = load_config_table(8, 14336 // tp, "NVIDIA H200")
    plan = mixtral(m, tp)
    assert plan.config == nearest_row(table, m)
    up, down = split_config(plan.config)
    assert plan.gemm1.config == {k: v for k, v in up.items() if k != "TMA"} and plan.gemm2.config == down
    assert plan.gemm1.n == 14336 // tp and plan.gemm2.n == 4096


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("scheme", [Fp8("tensor"), Fp8("block", (128, 128))])
def test_h200_fp8_plans_take_their_own_tables(tp, scheme):
    # Every TP size ships a per-tensor and a 128 x 128 block FP8 table for the H200; a plan takes its own.
    table = load_config_table(8, 14336 // tp, "NVIDIA H200", dtype="fp8_w8a8", block_shape=scheme.block_shape)
    assert table is not None
    for m in (1, 3, 64, 300, 4096):
        assert mixtral(m, tp, fp8=scheme).config == nearest_row(table, m)


def test_unknown_gpu_and_interpreter_take_the_heuristics():
    assert mixtral(64, target=A100).config["BLOCK_SIZE_M"] == 32  # vLLM's bf16 default at M = 64
    assert mixtral(4096, target=A100).config["TMA"] is True  # asked for, but an A100 has no descriptors:
    assert not mixtral(4096, target=A100).tma
    cpu = make_plan(33, 64, 96, 2, 8, dtype=torch.float32, target=CPU)
    assert cpu.config["num_stages"] == 1 and "TMA" not in cpu.config  # big tiles, one stage: numpy rounds


def test_decode_one_token():
    plan = mixtral(1)
    assert plan.layout == "decode" and plan.steps == ("gemm1", "gemm2")  # int32 ids: no layout kernel
    assert plan.gemm1.clears_out  # GEMM1 zeroes the output GEMM2 adds into: two launches in all
    assert mixtral(1, clear_in_gemm1=False).steps == ("clear", "gemm1", "gemm2")
    assert mixtral(1, ids_int32=False).steps == ("align", "gemm1", "gemm2")  # int64 ids: one cast
    assert plan.sorted_len == 2 * plan.block_m and plan.k_sum == "atomic"
    assert plan.pdl  # one token of top-2 on Hopper
    assert plan.buffers == {"act": (2, 1792)}
    assert not mixtral(1, pdl=False).pdl and not mixtral(1, target=A100).pdl
    assert mixtral(1, has_expert_map=True).layout == "align"  # global ids must be mapped: the kernel does it
    # FP8 launches without PDL unless asked (it lost on the H200 at one token, per tensor and per block)
    for fp8 in (Fp8("tensor"), Fp8("block", (128, 128))):
        assert not mixtral(1, fp8=fp8).pdl and mixtral(1, fp8=fp8, pdl=True).pdl


def test_prefill_large_m_takes_the_sorted_tma_layout_and_splits_a_sparse_last_wave():
    plan = mixtral(4096)
    assert plan.layout == "align" and plan.tma and not plan.pdl
    assert plan.steps == ("clear", "align", "gather", "gemm1", "gemm2")  # a clear of its own at large M
    assert mixtral(4096, clear_in_gemm1=True).steps == ("align", "gather", "gemm1", "gemm2")
    em = plan.sorted_len
    assert em == 4096 * 2 + 8 * (plan.block_m - 1)
    assert plan.buffers == {"a1": (em, 4096), "act": (em, 1792)}
    assert plan.gemm1.tma and plan.gemm1.c_sorted and plan.gemm1.a_rows_div == 1
    assert plan.gemm2.tma and not plan.gemm2.c_sorted and plan.gemm2.c_rows_div == 2
    tiles = -(-em // plan.block_m) * -(-1792 // plan.gemm1.config["BLOCK_SIZE_N"])
    assert 132 <= tiles <= 24 * 132 and plan.gemm1.split_tail
    assert not mixtral(4096, split_tail=False).gemm1.split_tail
    assert not mixtral(4096, descriptors_ok=False).tma  # strides or alignment rule descriptors out


@pytest.mark.parametrize("top_k,ids_checked,dtype,target,k_sum", [
    (1, True, BF16, H200, "direct"),  # one validated expert: GEMM2 writes the output
    (1, False, BF16, H200, "atomic"),  # an unchecked id may be dropped: its row must start cleared
    (2, True, BF16, H200, "atomic"),  # 0 + a + b rounds the same either way
    (3, True, BF16, H200, "pass"),  # three terms would not: a separate, ordered sum
    (2, True, BF16, CPU, "pass"),  # the interpreter has no bf16 atomics
    (2, True, torch.float32, CPU, "atomic"),
])
def test_k_sum(top_k, ids_checked, dtype, target, k_sum):
    plan = make_plan(40, 64, 96, top_k, 8, dtype=dtype, target=target, ids_checked=ids_checked)
    assert plan.k_sum == k_sum
    assert plan.gemm1.clears_out == (k_sum == "atomic") and ("sum_k" in plan.steps) == (k_sum == "pass")
    alone = make_plan(40, 64, 96, top_k, 8, dtype=dtype, target=target, ids_checked=ids_checked, clear_in_gemm1=False)
    assert ("clear" in alone.steps) == (k_sum == "atomic") and not alone.gemm1.clears_out
    assert ("partial" in plan.buffers) == (k_sum == "pass")
    assert plan.gemm2.c_rows_div == (top_k if k_sum == "atomic" else 1)
    assert make_plan(40, 64, 96, top_k, 8, dtype=dtype, target=target, fuse_k_sum=False).k_sum != "atomic"


def test_steps_are_in_order_and_known():
    for m in (1, 7, 600, 4096):
        for top_k in (1, 2, 3):
            steps = make_plan(m, 4096, 1792, top_k, 8, dtype=BF16, target=H200).steps
            assert list(steps) == sorted(steps, key=STEPS.index)


def test_no_tokens_plans_nothing():
    plan = mixtral(0)
    assert plan.layout == "empty" and plan.steps == () and plan.describe() == "no tokens: nothing to run"


def test_tma_needs_16_byte_rows():
    config = {**mixtral(4096).config, "TMA": True}
    # fp32 rows of 511 elements are 2044 bytes: no descriptor can describe them.
    assert not make_plan(600, 511, 64, 2, 8, dtype=torch.float32, target=H200, config=config).tma
    assert make_plan(600, 512, 64, 2, 8, dtype=torch.float32, target=H200, config=config).tma


def test_plans_are_cached_and_a_config_is_validated_first():
    assert mixtral(64) is mixtral(64)
    with pytest.raises(ValueError, match="GROUP_SIZE_M"):
        mixtral(64, config={**mixtral(64).config, "GROUP_SIZE_M": 0})


def test_describe_names_every_decision():
    text = mixtral(4096).describe()
    for word in ("steps", "layout", "TMA", "k-sum", "PDL", "gemm1", "gemm2", "split tail", "buffers"):
        assert word in text


H200_SMEM = Target(interpret=False, name="NVIDIA H200", num_sms=132, capability=(9, 0), shared_memory=232448)


def test_fp32_takes_the_heuristic_and_every_pipeline_fits_in_shared_memory():
    # The shipped tables are tuned for 2-byte elements; fp32 tiles take twice the shared memory.
    for m in (1, 64, 1024):
        plan = make_plan(m, 4096, 1792, 2, 8, dtype=torch.float32, target=H200_SMEM)
        assert plan.config == make_plan(m, 4096, 1792, 2, 8, dtype=torch.float32, target=A100).config
        for gemm, gated in ((plan.gemm1, True), (plan.gemm2, False)):
            c = gemm.config
            smem = c["num_stages"] * c["BLOCK_SIZE_K"] * (c["BLOCK_SIZE_M"] + (2 if gated else 1) * c["BLOCK_SIZE_N"])
            assert smem * 4 <= 232448 and c["num_stages"] >= 1
    # a bf16 tuned row is kept as it is
    assert mixtral(4096, target=H200_SMEM).config == mixtral(4096).config
    assert mixtral(4096, target=H200_SMEM).gemm1.config == mixtral(4096).gemm1.config


def test_a_config_too_big_for_shared_memory_loses_stages_not_the_launch():
    big = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 128, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 8,
           "num_stages": 5}
    plan = make_plan(300, 4096, 1792, 2, 8, dtype=torch.bfloat16, target=H200_SMEM, config=big)
    assert plan.gemm1.config["num_stages"] == 2  # 128 x (64 + 2 x 128) x 2 B = 80 KiB a stage; 227 KiB in all
    assert plan.gemm2.config["num_stages"] == 4  # 128 x (64 + 128) x 2 B = 48 KiB a stage
    assert plan.config == big  # the config as given stays on record


# ---- FP8 w8a8 ------------------------------------------------------------------------------------------
def test_fp8_quantizes_before_each_gemm_through_pointers(monkeypatch):
    from moe_lib.kernels import experts
    from moe_lib.kernels.experts import Fp8

    plan = mixtral(4096, tp=1, fp8=Fp8("tensor"))
    assert plan.steps == ("clear", "align", "quant1", "gemm1", "quant2", "gemm2")
    assert not plan.tma and "gather" not in plan.steps  # the scales are indexed by token, not sorted position
    assert plan.gemm1.scales == plan.gemm2.scales == 1
    # vLLM's sums by default (the tensor core's own over the whole K loop); a promotion interval, when asked
    # for, never exceeds one K tile
    assert experts.FP8_ACCUMULATE is None and plan.gemm1.fp8_acc is plan.gemm2.fp8_acc is None
    assert "FP8      : e4m3 weights, tensor-wise scales, a1 dynamic, a2 dynamic" in plan.describe()
    assert "fp32 add" not in plan.describe()
    monkeypatch.setattr(experts, "FP8_ACCUMULATE", 512)
    promoted = mixtral(4096, tp=1, fp8=Fp8("tensor"))
    assert [g.fp8_acc for g in (promoted.gemm1, promoted.gemm2)] == [
        min(512, g.config["BLOCK_SIZE_K"]) for g in (promoted.gemm1, promoted.gemm2)]
    assert "fp32 add every 512 products" in promoted.describe()
    decode = mixtral(1, fp8=Fp8("channel", static_a1=True))
    assert decode.steps == ("quant1", "gemm1", "quant2", "gemm2") and decode.gemm1.scales == 2


def test_fp8_block_tiles_never_straddle_a_scale_block():
    config = dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=64, BLOCK_SIZE_K=256, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
    plan = mixtral(300, config=config, fp8=Fp8("block", (128, 64)))
    assert plan.gemm1.config["BLOCK_SIZE_K"] == plan.gemm2.config["BLOCK_SIZE_K"] == 64
    assert (plan.gemm1.scales, plan.gemm1.group_n, plan.gemm1.group_k) == (3, 128, 64)


def test_fp8_zeroes_act_only_where_a_per_tensor_scale_could_read_unwritten_rows():
    assert mixtral(64, ids_checked=False, fp8=Fp8("tensor")).zeroed == ("act",)
    assert mixtral(64, ids_checked=True, fp8=Fp8("tensor")).zeroed == ()
    assert mixtral(64, ids_checked=False, fp8=Fp8("tensor", static_a2=True)).zeroed == ()
    assert mixtral(64, ids_checked=False, fp8=Fp8("channel")).zeroed == ()  # per token: dropped rows unread


def test_fp8_takes_its_own_table_then_the_per_tensor_one_then_the_bf16_tiles(tmp_path):
    from moe_lib.kernels.configs import config_file_name, default_config
    gpu = Target(interpret=False, name="TEST GPU", num_sms=132, capability=(9, 0))  # no shipped tables

    def table(stages, k=256):
        return json.dumps({"16": dict(BLOCK_SIZE_M=32, BLOCK_SIZE_N=64, BLOCK_SIZE_K=k, GROUP_SIZE_M=1,
                                      num_warps=4, num_stages=stages)})

    def plan(fp8, *files):  # a fresh directory per case (plans are cached per directory)
        directory = tmp_path / str(len(list(tmp_path.iterdir())))
        directory.mkdir()
        for name, text in files:
            (directory / name).write_text(text)
        return mixtral(16, target=gpu, fp8=fp8, config_dir=str(directory)).gemm1.config

    bf16 = (config_file_name(8, 1792, "TEST_GPU"), table(2, 64))
    tensor = (config_file_name(8, 1792, "TEST_GPU", "fp8_w8a8"), table(3))
    block = (config_file_name(8, 1792, "TEST_GPU", "fp8_w8a8", (128, 128)), table(4, 128))
    heuristic = default_config(16, 8, 1792, 4096, 2, interpret=False)
    assert plan(Fp8("tensor"))["BLOCK_SIZE_N"] == heuristic["BLOCK_SIZE_N"]
    assert plan(Fp8("tensor"), bf16)["num_stages"] == 2  # the bf16 tiles
    assert plan(Fp8("tensor"), bf16, tensor)["num_stages"] == 3
    cut = plan(Fp8("block", (128, 128)), bf16, tensor)
    assert cut["num_stages"] == 3 and cut["BLOCK_SIZE_K"] == 128  # per tensor's tiles, K cut to the block
    assert plan(Fp8("block", (128, 128)), bf16, tensor, block)["num_stages"] == 4
