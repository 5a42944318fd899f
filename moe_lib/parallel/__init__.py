"""Tensor and expert parallelism: weight shards, an in-process simulation, and real torch.distributed runs.

    shard        shard_w13 / shard_w2: a rank's slice of every expert (tensor parallel)
    experts      expert placement, expert_map, EPLB plans (replicas of hot experts), per-rank loads
    simulate     RankShard, rank_partial (fused_experts on a rank's shard), the all-reduce as a sum
    launch       launch(): N local processes with a process group, prompt failure, timeouts
    distributed  the layer on real processes: route, rank_forward (partial + all-reduce), run_parallel
    faults       ranks that fail or stall on purpose (for tests and notebook 08)
    bench        the NCCL benchmark (GPU); run: the command line (python -m moe_lib.parallel.run)
"""

from . import faults
from .distributed import Case, CaseResult, rank_forward, route, run_ep, run_parallel, run_tp
from .experts import (
    EplbPlan,
    expert_map,
    expert_owner,
    expert_ranges,
    imbalance,
    plan_eplb,
    rank_loads,
    replica_counts,
)
from .launch import RankError, launch
from .shard import shard_w2, shard_w13
from .simulate import (
    RankShard,
    all_reduce_sum,
    ep_shards,
    rank_partial,
    ring_all_reduce,
    simulate_ep,
    simulate_tp,
    tp_shards,
)

__all__ = [
    "faults",
    "shard_w13",
    "shard_w2",
    "expert_ranges",
    "expert_owner",
    "expert_map",
    "rank_loads",
    "imbalance",
    "EplbPlan",
    "replica_counts",
    "plan_eplb",
    "RankShard",
    "tp_shards",
    "ep_shards",
    "rank_partial",
    "all_reduce_sum",
    "ring_all_reduce",
    "simulate_tp",
    "simulate_ep",
    "launch",
    "RankError",
    "route",
    "rank_forward",
    "Case",
    "CaseResult",
    "run_parallel",
    "run_tp",
    "run_ep",
]
