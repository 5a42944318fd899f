"""Tensor and expert parallelism in one process: what each rank holds, what it computes, and the sum.

A rank of either kind runs the same call — ``fused_experts`` on the experts it holds — and produces a
*partial* output (M, H). Tensor parallel: every expert, a 1/tp slice of I. Expert parallel: whole experts,
a 1/ep share of them (with an ``expert_map``). Either way the layer's output is the sum of the partials,
which is exactly what an all-reduce computes. Here the "ranks" are a Python loop and the all-reduce is
written out; :mod:`moe_lib.parallel.distributed` runs the very same :func:`rank_partial` on real processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._validate import check_int, check_tensor
from ..kernels.experts import fused_experts
from .experts import EplbPlan, expert_map, expert_ranges
from .shard import shard_w2, shard_w13


@dataclass(frozen=True)
class RankShard:
    """What one rank holds of the layer's experts.

    Attributes:
        mode: ``"tp"`` (a slice of every expert) or ``"ep"`` (whole experts).
        rank, size: this rank and the number of ranks in its group.
        w13: (E_local, 2I_local, H) — TP: (E, 2I/tp, H); EP: (E_local, 2I, H).
        w2: (E_local, H, I_local).
        expert_map: EP only, (E or P,) int32 global (or physical) id -> local id or -1.
        plan: EPLB only: the replica table used to turn logical ids into physical ones.
    """

    mode: str
    rank: int
    size: int
    w13: torch.Tensor
    w2: torch.Tensor
    expert_map: torch.Tensor | None = None
    plan: EplbPlan | None = None

    @property
    def weight_bytes(self) -> int:
        return self.w13.numel() * self.w13.element_size() + self.w2.numel() * self.w2.element_size()

    def to(self, device: torch.device | str) -> RankShard:
        """The same shard with its tensors on ``device`` (the EPLB plan's small tables stay on the CPU)."""
        emap = None if self.expert_map is None else self.expert_map.to(device)
        return dataclasses.replace(self, w13=self.w13.to(device), w2=self.w2.to(device), expert_map=emap)


def _check_weights(w13: torch.Tensor, w2: torch.Tensor) -> None:
    check_tensor("w13", w13, ndim=3)
    check_tensor("w2", w2, ndim=3)


def tp_shard(w13: torch.Tensor, w2: torch.Tensor, tp_size: int, rank: int) -> RankShard:
    """Rank ``rank``'s tensor-parallel shard: slice ``rank`` of I of every expert."""
    _check_weights(w13, w2)
    return RankShard("tp", rank, tp_size, shard_w13(w13, tp_size, rank), shard_w2(w2, tp_size, rank))


def tp_shards(w13: torch.Tensor, w2: torch.Tensor, tp_size: int) -> list[RankShard]:
    """All ``tp_size`` tensor-parallel shards."""
    check_int("tp_size", tp_size, low=1)
    return [tp_shard(w13, w2, tp_size, r) for r in range(tp_size)]


def ep_shard(w13: torch.Tensor, w2: torch.Tensor, ep_size: int, rank: int, plan: EplbPlan | None = None) -> RankShard:
    """Rank ``rank``'s expert-parallel shard: its whole experts, placed plainly or by an EPLB plan."""
    _check_weights(w13, w2)
    if plan is None:
        num_experts = w13.shape[0]
        emap = expert_map(num_experts, ep_size, rank, w13.device)  # (E,) global -> local; checks ep_size, rank
        ids = expert_ranges(num_experts, ep_size)[rank]
        local = slice(ids.start, ids.stop)
        return RankShard("ep", rank, ep_size, w13[local].contiguous(), w2[local].contiguous(), emap)
    if not isinstance(plan, EplbPlan):
        raise TypeError(f"plan must be an EplbPlan, got {type(plan).__name__}")
    if plan.ep_size != ep_size:
        raise ValueError(f"plan was made for ep_size={plan.ep_size}, not ep_size={ep_size}")
    return RankShard("ep", rank, ep_size, *plan.local_weights(w13, w2, rank), plan.expert_map(rank, w13.device), plan)


def ep_shards(w13: torch.Tensor, w2: torch.Tensor, ep_size: int, plan: EplbPlan | None = None) -> list[RankShard]:
    """All ``ep_size`` expert-parallel shards."""
    check_int("ep_size", ep_size, low=1)
    return [ep_shard(w13, w2, ep_size, r, plan) for r in range(ep_size)]


def rank_partial(
    hidden_states: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    shard: RankShard,
    *,
    config: dict | None = None,
    check_ids: bool = True,
) -> torch.Tensor:
    """(M, H): one rank's contribution to the layer — ``fused_experts`` on the experts it holds.

    ``topk_ids`` are logical ids (what routing returns); with an EPLB plan they are first sent to replicas.
    ``check_ids=False`` skips fused_experts' host-side id check (a device sync), as benchmarks do.
    """
    if not isinstance(shard, RankShard):
        raise TypeError(f"shard must be a RankShard, got {type(shard).__name__}")
    ids = topk_ids if shard.plan is None else shard.plan.choose_replicas(topk_ids)  # (M, k)
    return fused_experts(hidden_states, shard.w13, shard.w2, topk_weights, ids,
                         expert_map=shard.expert_map, config=config, check_ids=check_ids)


# ----------------------------------------------------------------------------------------------------
# The all-reduce, written out
# ----------------------------------------------------------------------------------------------------
def _check_partials(partials: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(partials, torch.Tensor) or not isinstance(partials, Sequence):
        raise TypeError(f"partials must be a sequence of tensors (one per rank), got {type(partials).__name__}")
    if len(partials) == 0:
        raise ValueError("partials must hold at least one tensor")
    for i, p in enumerate(partials):
        check_tensor(f"partials[{i}]", p)
        if p.shape != partials[0].shape or p.dtype != partials[0].dtype:
            raise ValueError(f"partials[{i}] is {tuple(p.shape)} {p.dtype}, partials[0] is "
                             f"{tuple(partials[0].shape)} {partials[0].dtype}: they must match")
    return list(partials)


def all_reduce_sum(partials: Sequence[torch.Tensor]) -> torch.Tensor:
    """What an all-reduce leaves on every rank: the element-wise sum of all ranks' tensors (rank order)."""
    partials = _check_partials(partials)
    total = partials[0].clone()
    for p in partials[1:]:
        total += p
    return total


def ring_all_reduce(partials: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """The ring algorithm NCCL and gloo use for large tensors, step by step.

    Each of p ranks cuts its tensor into p chunks. Reduce-scatter: in p - 1 steps every rank passes one
    chunk to its right neighbour, which adds it to its own; afterwards rank r holds the full sum of chunk
    (r + 1) % p. All-gather: p - 1 more steps pass the finished chunks around. Every rank sends
    2 (p - 1) / p of the tensor, whatever p is.

    Returns (the tensor each rank ends with, the number of elements each rank sent).
    """
    partials = _check_partials(partials)
    p = len(partials)
    chunks = [list(t.detach().clone().flatten().tensor_split(p)) for t in partials]  # chunks[rank][c]
    sent = [0] * p
    for step in range(p - 1):  # reduce-scatter
        outgoing = [(r, (r - step) % p, chunks[r][(r - step) % p].clone()) for r in range(p)]
        for r, c, data in outgoing:  # all ranks send at once, then all receive
            chunks[(r + 1) % p][c] += data
            sent[r] += data.numel()
    for step in range(p - 1):  # all-gather: rank r starts with its finished chunk (r + 1) % p
        outgoing = [(r, (r + 1 - step) % p, chunks[r][(r + 1 - step) % p].clone()) for r in range(p)]
        for r, c, data in outgoing:
            chunks[(r + 1) % p][c] = data
            sent[r] += data.numel()
    shape = partials[0].shape
    return [torch.cat(chunks[r]).view(shape) for r in range(p)], sent


# ----------------------------------------------------------------------------------------------------
# The layer, simulated
# ----------------------------------------------------------------------------------------------------
def simulate_tp(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    tp_size: int,
    *,
    config: dict | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tensor parallel in one process: (the all-reduced output (M, H), each rank's partial output)."""
    partials = [rank_partial(hidden_states, topk_weights, topk_ids, s, config=config)
                for s in tp_shards(w13, w2, tp_size)]
    return all_reduce_sum(partials), partials


def simulate_ep(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    ep_size: int,
    *,
    plan: EplbPlan | None = None,
    config: dict | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Expert parallel (optionally with an EPLB plan) in one process: (output (M, H), partials)."""
    partials = [rank_partial(hidden_states, topk_weights, topk_ids, s, config=config)
                for s in ep_shards(w13, w2, ep_size, plan)]
    return all_reduce_sum(partials), partials


__all__ = [
    "RankShard",
    "tp_shard",
    "tp_shards",
    "ep_shard",
    "ep_shards",
    "rank_partial",
    "all_reduce_sum",
    "ring_all_reduce",
    "simulate_tp",
    "simulate_ep",
]
