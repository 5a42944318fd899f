"""moe_lib.parallel: shards, expert placement and EPLB, the in-process simulation, real gloo processes, the
launcher's failure and timeout behaviour, the command line, and argument checks.

Real processes are expensive on a small CPU machine, so one launch checks many layouts (TP 1/2/4, EP 2/4,
EPLB) at once; the failure tests use tiny workers from moe_lib.parallel.faults. On a GPU machine the
tensors live on the GPU, and the ranks are spawned (seconds of imports each) rather than forked from a
warm server: the timeouts of the timing tests grow by STARTUP there.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from moe_lib import runtime
from moe_lib.kernels.experts import fused_experts
from moe_lib.parallel import (
    Case,
    EplbPlan,
    RankError,
    all_reduce_sum,
    ep_shards,
    expert_map,
    expert_owner,
    expert_ranges,
    faults,
    imbalance,
    launch,
    plan_eplb,
    rank_loads,
    replica_counts,
    ring_all_reduce,
    run_parallel,
    shard_w2,
    shard_w13,
    simulate_ep,
    simulate_tp,
    tp_shards,
)
from moe_lib.parallel.bench import bench_rank, summary, write
from moe_lib.parallel.distributed import route
from moe_lib.parallel.run import main as run_main
from moe_lib.reference import moe_reference
from moe_lib.testing import assert_close, rel_err

E, K, H, I = 8, 2, 64, 128
TOL = 1e-5  # fp32
DEVICE = runtime.default_device()
STARTUP = 30.0 if runtime.HAS_CUDA else 0.0  # extra seconds for ranks that import torch themselves


@pytest.fixture(scope="module")
def layer():
    """A fresh random fp32 layer, a replicated gate that prefers experts 0 and 1, and 40 tokens."""
    gen = torch.Generator().manual_seed(2024)
    w13 = torch.randn(E, 2 * I, H, generator=gen) * H**-0.5  # (E, 2I, H)
    w2 = torch.randn(E, H, I, generator=gen) * I**-0.5  # (E, H, I)
    direction = torch.randn(H, generator=gen)
    direction /= direction.norm()
    gate = torch.randn(E, H, generator=gen) * 0.05  # (E, H)
    gate[:2] += 0.5 * direction  # experts 0 and 1 are hot: skewed routing
    x = torch.randn(40, H, generator=gen) + direction  # (M, H)
    x, gate, w13, w2 = (t.to(DEVICE) for t in (x, gate, w13, w2))
    topk_weights, topk_ids = route(x, gate, K)
    return {"x": x, "gate": gate, "w13": w13, "w2": w2, "w": topk_weights, "ids": topk_ids,
            "ref": fused_experts(x, w13, w2, topk_weights, topk_ids)}


# ----------------------------------------------------------------------------------------------------
# Shards and placement
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_tp_shards_tile_the_weights(layer, tp):
    w13, w2 = layer["w13"], layer["w2"]
    shards = tp_shards(w13, w2, tp)
    assert [s.w13.shape for s in shards] == [(E, 2 * I // tp, H)] * tp
    gate = torch.cat([s.w13[:, : I // tp] for s in shards], dim=1)  # the w1 halves, rank after rank
    up = torch.cat([s.w13[:, I // tp :] for s in shards], dim=1)
    assert torch.equal(torch.cat([gate, up], dim=1), w13)
    assert torch.equal(torch.cat([s.w2 for s in shards], dim=2), w2)
    assert sum(s.weight_bytes for s in shards) == (w13.numel() + w2.numel()) * 4


@pytest.mark.parametrize("num_experts,ep,sizes", [(8, 2, [4, 4]), (8, 3, [3, 3, 2]), (10, 4, [3, 3, 2, 2]),
                                                  (8, 8, [1] * 8), (5, 1, [5])])
def test_expert_ranges_remainder_to_lowest_ranks(num_experts, ep, sizes):
    ranges = expert_ranges(num_experts, ep)
    assert [len(r) for r in ranges] == sizes
    assert [e for r in ranges for e in r] == list(range(num_experts))  # every expert once, in order
    owner = expert_owner(num_experts, ep)
    for rank, ids in enumerate(ranges):
        emap = expert_map(num_experts, ep, rank)
        assert emap.dtype == torch.int32
        assert emap[list(ids)].tolist() == list(range(len(ids)))
        assert (emap >= 0).sum().item() == len(ids)
        assert (owner[list(ids)] == rank).all()


# ----------------------------------------------------------------------------------------------------
# The simulation
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_simulated_tp_equals_single_process(layer, tp):
    out, partials = simulate_tp(layer["x"], layer["w13"], layer["w2"], layer["w"], layer["ids"], tp)
    assert len(partials) == tp
    assert_close(out, layer["ref"], tol=TOL, what=f"TP={tp} simulation vs single process")
    oracle = moe_reference(layer["x"], layer["w13"], layer["w2"], layer["w"], layer["ids"], fp64=True)
    assert_close(out, oracle, tol=TOL, what=f"TP={tp} simulation vs fp64 oracle")
    if tp > 1:  # no single rank has the answer: only the sum does
        assert all(rel_err(p, layer["ref"]) > 0.1 for p in partials)


@pytest.mark.parametrize("ep", [2, 3, 4])
def test_simulated_ep_equals_single_process(layer, ep):
    out, partials = simulate_ep(layer["x"], layer["w13"], layer["w2"], layer["w"], layer["ids"], ep)
    assert_close(out, layer["ref"], tol=TOL, what=f"EP={ep} simulation")
    owner = expert_owner(E, ep)
    untouched = [~(owner[layer["ids"].cpu().long()] == rank).any(dim=1) for rank in range(ep)]  # (M,) per rank
    assert sum(int(u.sum()) for u in untouched) > 0
    for p, u in zip(partials, untouched, strict=True):  # a token that chose none of a rank's experts: zeros
        p = p.cpu()
        assert (p[u] == 0).all() and (p[~u] != 0).any(dim=1).all()


def test_all_reduce_sum_and_ring(gen):
    partials = [torch.randn(7, 33, generator=gen) for _ in range(4)]  # 231 values: chunks of unequal size
    total = all_reduce_sum(partials)
    assert_close(total, torch.stack(partials).double().sum(0), tol=1e-6)
    results, sent = ring_all_reduce(partials)
    assert all(torch.equal(r, results[0]) for r in results)  # every rank ends with the same bits
    assert_close(results[0], total, tol=1e-6)
    assert sum(sent) == 2 * 3 * 231  # 2 (p - 1) / p of the tensor per rank, p ranks
    assert max(sent) - min(sent) <= 2 * 3  # uneven chunks differ by at most one element per step
    one, sent1 = ring_all_reduce(partials[:1])
    assert torch.equal(one[0], partials[0]) and sent1 == [0]


# ----------------------------------------------------------------------------------------------------
# EPLB
# ----------------------------------------------------------------------------------------------------
def test_replica_counts_go_to_the_hottest_experts():
    load = torch.tensor([100, 60, 10, 10, 5, 5, 5, 5])
    assert replica_counts(load, 0).tolist() == [1] * 8
    assert replica_counts(load, 1).tolist() == [2, 1, 1, 1, 1, 1, 1, 1]
    assert replica_counts(load, 3).tolist() == [3, 2, 1, 1, 1, 1, 1, 1]  # 100/2 = 50 < 60, then 60/2 < 100/2
    assert replica_counts(torch.ones(4), 2).tolist() == [2, 2, 1, 1]  # ties: the lower id first


def test_eplb_plan_structure_and_replica_choice(layer):
    ids = layer["ids"].cpu()  # (M, k)
    load = torch.bincount(ids.flatten().long(), minlength=E)
    plan = plan_eplb(load, ep_size=4, num_redundant=4)
    assert plan.num_physical == 12 and plan.replica_count.sum() == 12
    assert plan.replica_count.tolist() == replica_counts(load, 4).tolist()
    for rank in range(4):
        held = plan.phys_to_log[list(plan.slots(rank))].tolist()
        assert len(held) == 3 and len(set(held)) == 3  # no rank holds two copies of one expert
        assert held == sorted(held)
    table = plan.log_to_phys
    for e in range(E):
        phys = table[e][table[e] >= 0]
        assert (plan.phys_to_log[phys] == e).all() and phys.numel() == plan.replica_count[e]
    physical = plan.choose_replicas(ids)
    assert physical.shape == ids.shape and physical.dtype == ids.dtype
    assert torch.equal(plan.phys_to_log[physical.long()], ids.long())  # a copy of the chosen expert
    assert torch.equal(plan.choose_replicas(ids), physical)  # deterministic
    per_physical = torch.bincount(physical.flatten().long(), minlength=12)
    for e in range(E):  # an expert's rows split evenly over its replicas
        counts = per_physical[table[e][table[e] >= 0]]
        assert counts.max() - counts.min() <= 1
    before = rank_loads(ids, expert_owner(E, 4), 4)
    after = rank_loads(physical, plan.owner, 4)
    assert before.sum() == after.sum() == ids.numel()
    assert imbalance(before) > 1.5  # the skewed gate overloads rank 0 (experts 0 and 1)
    assert imbalance(after) < imbalance(before) and imbalance(after) < 1.2


@pytest.mark.parametrize("ep,redundant", [(2, 0), (4, 4), (3, 1)])
def test_eplb_preserves_the_output(layer, ep, redundant):
    load = torch.bincount(layer["ids"].flatten().long(), minlength=E)
    plan = plan_eplb(load, ep, redundant)
    out, partials = simulate_ep(layer["x"], layer["w13"], layer["w2"], layer["w"], layer["ids"], ep, plan=plan)
    assert len(partials) == ep
    assert_close(out, layer["ref"], tol=TOL, what=f"EP={ep} + EPLB({redundant})")


def test_eplb_plan_rejects_inconsistent_tables():
    with pytest.raises(ValueError, match="phys_to_log"):
        EplbPlan(torch.tensor([0, 1, 1, 3]), ep_size=2, num_logical=4)  # expert 2 has no copy
    with pytest.raises(ValueError, match="ep_size"):
        EplbPlan(torch.tensor([0, 1]), ep_size=3, num_logical=2)


# ----------------------------------------------------------------------------------------------------
# Real processes (gloo)
# ----------------------------------------------------------------------------------------------------
def test_real_processes_equal_the_single_process_layer(layer):
    load = torch.bincount(layer["ids"].flatten().long(), minlength=E)
    plan = plan_eplb(load, 4, 4)
    cases = [Case("tp", 1), Case("tp", 2), Case("tp", 4), Case("ep", 2), Case("ep", 4), Case("ep", 4, plan)]
    results = run_parallel(layer["x"], layer["gate"], layer["w13"], layer["w2"], K, cases, timeout=90)
    full_bytes = (layer["w13"].numel() + layer["w2"].numel()) * 4
    for result in results:
        case = result.case
        assert len(result.outputs) == case.size and result.ranks_agree, case.name
        assert_close(result.output, layer["ref"], tol=TOL, what=f"{case.name} on real processes")
        if case.mode == "tp":  # each rank holds 1/tp of every expert and computes every row
            assert result.weight_bytes == [full_bytes // case.size] * case.size
            assert result.rows == [layer["ids"].numel()] * case.size
        else:  # each rank computes only its experts' rows
            assert sum(result.rows) == layer["ids"].numel()
    ep4, eplb = results[4], results[5]
    assert ep4.rows == rank_loads(layer["ids"], expert_owner(E, 4), 4).tolist()
    assert eplb.rows == rank_loads(plan.choose_replicas(layer["ids"]), plan.owner, 4).tolist()
    assert max(eplb.rows) < max(ep4.rows)


def test_launch_returns_in_rank_order():
    assert launch(faults.stall_on_rank, 3, args=(1, 0.0, True)) == [0, 1, 2]


def test_a_rank_that_raises_fails_the_launch_promptly():
    start = time.monotonic()
    with pytest.raises(RankError) as info:
        launch(faults.raise_on_rank, 3, args=(1, "injected failure 4711"), timeout=60)
    assert time.monotonic() - start < 15 + STARTUP  # not the 60 s timeout, not the others' wait
    assert info.value.rank == 1
    assert "rank 1 of 3" in str(info.value)
    assert "ValueError: injected failure 4711" in str(info.value)
    assert "raise_on_rank" in info.value.traceback  # the rank's own traceback, frame by frame


def test_a_rank_that_dies_silently_fails_the_launch():
    with pytest.raises(RankError, match="exited with code 3") as info:
        launch(faults.exit_on_rank, 2, args=(0, 3), timeout=60)
    assert info.value.rank == 0


def test_process_group_timeout_turns_a_hang_into_an_error_that_names_the_stalled_rank():
    start = time.monotonic()
    with pytest.raises(RankError, match="(?i)timed out") as info:
        launch(faults.stall_on_rank, 2, args=(1, 90.0, True), timeout=90, pg_timeout=2 + STARTUP)
    # rank 0 reports the all-reduce's timeout, but the culprit is rank 1, still asleep outside any collective
    assert info.value.rank == 1 and info.value.stalled and info.value.also_failed == [0]
    assert str(info.value).startswith("rank 1 of 2 stalled")
    assert "in stall_on_rank" in info.value.traceback and "all_reduce" not in info.value.traceback  # its stack
    assert "all_reduce" in str(info.value)  # and the waiting rank's error
    assert time.monotonic() - start < 20 + 2 * STARTUP  # the sleeper (90 s) was stopped, not waited for


def test_launch_timeout_names_the_stalled_rank():
    start, timeout = time.monotonic(), 3 + STARTUP
    with pytest.raises(TimeoutError, match=rf"rank\(s\) \[1\] of 2 did not finish within {timeout:g} s"):
        launch(faults.stall_on_rank, 2, args=(1, 90.0, False), timeout=timeout, pg_timeout=90)
    assert timeout <= time.monotonic() - start < timeout + 12


def test_launch_timeout_tells_the_stalled_rank_from_the_one_waiting_for_it():
    # Both ranks are still running at the deadline: rank 0 in the all-reduce, rank 1 asleep before it.
    launch(faults.stall_on_rank, 2, args=(1, 0.0, False))  # the forkserver is warm: the ranks start at once
    timeout = 2 + STARTUP
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[0, 1\] of 2 did not finish within .*: rank\(s\) \[1\] "
                       r"stalled outside any collective while rank\(s\) \[0\] waited for them in one") as info:
        launch(faults.stall_on_rank, 2, args=(1, 90.0, True), timeout=timeout, pg_timeout=90)
    assert info.value.stalled == [1] and info.value.waiting == [0]
    assert "rank 1's stack" in str(info.value) and "in stall_on_rank" in str(info.value)


# ----------------------------------------------------------------------------------------------------
# The command line and the benchmark's code path (a CPU dry run; the real one needs GPUs)
# ----------------------------------------------------------------------------------------------------
def test_command_line_check(capsys):
    assert run_main(["--ep", "2", "--redundant", "2", "--tokens", "24", "--backend", "gloo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("EP=2 + EPLB (10 physical experts) on 2 gloo processes: M=24")
    assert out[-1].startswith("PASS  EP=2 + EPLB")
    with pytest.raises(SystemExit):
        run_main(["--tp", "3"])  # I = 128 is not divisible by 3
    assert "not divisible by --tp 3" in capsys.readouterr().err


def test_benchmark_dry_run_on_cpu(tmp_path):
    # every implementation (FP8 blocks of 16: I / tp = 64 holds four), eager calls and wall clocks on gloo
    opts = {"shape": {"num_experts": E, "top_k": K, "hidden": H, "intermediate": I, "dtype": "float32"},
            "ms": [8], "calls": 1, "reps": 1, "warmup": 0, "command": "test", "block_shape": [16, 16]}
    result = launch(bench_rank, 2, args=(opts,), timeout=120)[0]
    records = {(r["impl"], r["tp"], r["M"]): r for r in result["records"]}
    impls = ("moe_lib", "moe_lib_fp8", "moe_lib_fp8_block")
    assert set(records) == {(i, tp, 8) for i in impls for tp in (1, 2)}
    for impl in impls:
        for m in (8,):
            tp2 = records[(impl, 2, m)]
            assert tp2["check"]["passed"] and tp2["check"]["rel_err"] < tp2["check"]["tol"]
            assert len(tp2["per_rank"]["kernel_us"]) == 2 and tp2["total_us"] == max(tp2["per_rank"]["total_us"])
            assert tp2["allreduce_bytes"] == m * H * 4
            assert tp2["speedup_vs_tp1"] == round(records[(impl, 1, m)]["total_us"] / tp2["total_us"], 3)
            assert tp2["allreduce_in_layer_us"] == round(max(tp2["total_us"] - tp2["kernel_us"], 0.0), 2)
    assert result["backend"] == "gloo" and result["num_gpus"] == 2
    path = write(result, tmp_path / "parallel_cpu.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert "speed-up" in summary(result) and "moe_lib_fp8_block" in summary(result)


def test_tp_check_tolerances_per_implementation():
    # per block, act's token groups stay on one rank: TP gives TP = 1's e4m3 values (the fp32 rounding of the
    # partial sums only, measured 7e-8 on the CPU); per tensor each rank scales its own slice of act (2.5 %)
    from moe_lib.parallel.bench import _check_tol

    assert _check_tol("moe_lib_fp8_block", torch.float32) == _check_tol("moe_lib", torch.float32) < 1e-4
    assert _check_tol("moe_lib_fp8", torch.bfloat16) == 0.05


# ----------------------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------------------
def test_bad_arguments_name_the_argument(layer):
    w13, w2 = layer["w13"], layer["w2"]
    with pytest.raises(ValueError, match="tp_size 3"):
        shard_w13(w13, 3, 0)  # I = 128 is not divisible by 3
    with pytest.raises(ValueError, match="tp_size 3"):
        shard_w2(w2, 3, 0)
    with pytest.raises(ValueError, match="tp_size"):
        tp_shards(w13, w2, 0)
    with pytest.raises(TypeError, match="tp_size"):
        simulate_tp(layer["x"], w13, w2, layer["w"], layer["ids"], 2.0)
    with pytest.raises(ValueError, match="rank"):
        shard_w13(w13, 2, 2)
    with pytest.raises(ValueError, match="rank"):
        expert_map(E, 2, -1)
    with pytest.raises(ValueError, match="ep_size"):
        expert_ranges(E, 9)
    with pytest.raises(ValueError, match="ep_size"):
        ep_shards(w13, w2, 0)
    with pytest.raises(ValueError, match="ep_size"):
        simulate_ep(layer["x"], w13, w2, layer["w"], layer["ids"], 2, plan=plan_eplb(torch.ones(E), 4))
    with pytest.raises(TypeError, match="plan"):
        ep_shards(w13, w2, 2, plan="balanced")
    with pytest.raises(ValueError, match="expert_load"):
        plan_eplb(torch.tensor([1.0, -1.0]), 1)
    with pytest.raises(ValueError, match="num_redundant"):
        plan_eplb(torch.ones(E), 2, -1)
    with pytest.raises(ValueError, match="ep_size"):
        plan_eplb(torch.ones(2), 4, 1)  # 3 physical experts for 4 ranks
    with pytest.raises(ValueError, match="topk_ids"):
        plan_eplb(torch.ones(4), 2).choose_replicas(torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="owner"):
        rank_loads(layer["ids"], expert_owner(E, 4), 2)
    with pytest.raises(ValueError, match="mode"):
        Case("dp", 2)
    with pytest.raises(ValueError, match="size"):
        Case("tp", 0)
    with pytest.raises(ValueError, match="plan"):
        Case("tp", 4, plan_eplb(torch.ones(E), 4))
    with pytest.raises(ValueError, match="partials"):
        all_reduce_sum([torch.ones(2), torch.ones(3)])


def test_launch_rejects_bad_arguments_before_starting_anything():
    with pytest.raises(TypeError, match="fn"):
        launch(lambda rank, world_size: rank, 2)
    with pytest.raises(ValueError, match="world_size"):
        launch(faults.stall_on_rank, 0)
    with pytest.raises(TypeError, match="world_size"):
        launch(faults.stall_on_rank, "2")
    with pytest.raises(ValueError, match="backend"):
        launch(faults.stall_on_rank, 2, backend="mpi")
    with pytest.raises(ValueError, match="timeout"):
        launch(faults.stall_on_rank, 2, timeout=0)
    with pytest.raises(TypeError, match="pg_timeout"):
        launch(faults.stall_on_rank, 2, pg_timeout="1")
    with pytest.raises(ValueError, match="rank_args"):
        launch(faults.stall_on_rank, 2, rank_args=[(1, 0.0, True)])
    with pytest.raises(TypeError, match="args"):
        launch(faults.stall_on_rank, 2, args=[1, 0.0, True])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="nccl"):
            launch(faults.stall_on_rank, 2, backend="nccl")


def test_run_parallel_checks_shapes_in_the_parent(layer):
    start = time.monotonic()
    with pytest.raises(ValueError, match="tp_size 3"):
        run_parallel(layer["x"], layer["gate"], layer["w13"], layer["w2"], K, [Case("tp", 3)])
    with pytest.raises(ValueError, match="ep_size"):
        run_parallel(layer["x"], layer["gate"], layer["w13"], layer["w2"], K, [Case("ep", 9)])
    with pytest.raises(TypeError, match="cases"):
        run_parallel(layer["x"], layer["gate"], layer["w13"], layer["w2"], K, Case("tp", 2))
    assert time.monotonic() - start < 1.0  # raised before any process started
