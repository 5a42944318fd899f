"""Expert parallelism: which rank owns which experts, and EPLB's redundant replicas of hot experts.

Plain placement. Each of ``ep_size`` ranks owns whole experts: ``E // ep_size`` each, and the first
``E % ep_size`` ranks one more, in id order. A rank's ``expert_map`` (E,) maps a global expert id to its
local id, or -1 for an expert held elsewhere; ``fused_experts(..., expert_map=...)`` then computes only
the (token, slot) rows of local experts and leaves zeros in the others, so the sum over ranks is the layer.

EPLB (expert-parallel load balancing). Routing is rarely uniform: a few hot experts get most tokens, and
the ranks that own them set the pace. EPLB adds ``num_redundant`` *physical* experts — copies of hot
*logical* experts — and places the ``E + num_redundant`` physical experts so that every rank gets about
the same load. Physical ids are rank-major (rank 0 holds the lowest ones); routing still picks logical
experts, and each (token, slot) is then sent to one replica of its expert: the i-th pair that chose
expert e in the batch (in flat-id order) goes to replica ``i % replicas(e)``. That choice is deterministic,
identical on every rank (all ranks see the same routing), and splits an expert's load evenly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .._validate import INT_DTYPES, check_int, check_tensor


# ----------------------------------------------------------------------------------------------------
# Plain placement
# ----------------------------------------------------------------------------------------------------
def _check_ep(num_experts: int, ep_size: int) -> None:
    check_int("num_experts", num_experts, low=1)
    check_int("ep_size", ep_size, low=1)
    if ep_size > num_experts:
        raise ValueError(f"ep_size ({ep_size}) must be <= num_experts ({num_experts}): every rank owns an expert")


def expert_ranges(num_experts: int, ep_size: int) -> list[range]:
    """The global expert ids of each rank: E // ep each, the first E % ep ranks one more."""
    _check_ep(num_experts, ep_size)
    base, extra = divmod(num_experts, ep_size)
    ranges, start = [], 0
    for rank in range(ep_size):
        size = base + (rank < extra)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def expert_owner(num_experts: int, ep_size: int) -> torch.Tensor:
    """(E,) int64: the rank that owns each expert."""
    owner = torch.empty(num_experts, dtype=torch.int64)
    for rank, ids in enumerate(expert_ranges(num_experts, ep_size)):
        owner[ids.start : ids.stop] = rank
    return owner


def expert_map(num_experts: int, ep_size: int, rank: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(E,) int32: global expert id -> local id on ``rank``, or -1 for experts owned by another rank."""
    ranges = expert_ranges(num_experts, ep_size)
    check_int("rank", rank, low=0, high=ep_size - 1)
    local = ranges[rank]
    emap = torch.full((num_experts,), -1, dtype=torch.int32)
    emap[local.start : local.stop] = torch.arange(len(local), dtype=torch.int32)
    return emap.to(device) if device is not None else emap


def rank_loads(topk_ids: torch.Tensor, owner: torch.Tensor, ep_size: int) -> torch.Tensor:
    """(ep,) int64: how many (token, slot) rows each rank computes, given the owner of each expert id.

    ``topk_ids`` (M, k) hold the ids that ``owner`` is indexed by: logical ids with :func:`expert_owner`,
    physical ids with :attr:`EplbPlan.owner`.
    """
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=INT_DTYPES)
    check_tensor("owner", owner, ndim=1, dtypes=INT_DTYPES)
    check_int("ep_size", ep_size, low=1)
    if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= ep_size):
        raise ValueError(f"owner must hold ranks in [0, {ep_size}) (ep_size)")
    if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= owner.numel()):
        raise ValueError(f"topk_ids must lie in [0, {owner.numel()}) (len(owner))")
    ranks = owner.cpu().long()[topk_ids.cpu().long().flatten()]  # (M*k,) the rank of each row
    return torch.bincount(ranks, minlength=ep_size)


def imbalance(loads: torch.Tensor) -> float:
    """max / mean of per-rank loads: 1.0 is perfect balance; the busiest rank sets the layer's time."""
    check_tensor("loads", loads, ndim=1)
    if loads.numel() == 0:
        raise ValueError("loads must not be empty")
    mean = loads.double().mean().item()
    return loads.max().item() / mean if mean > 0 else 1.0


# ----------------------------------------------------------------------------------------------------
# EPLB
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EplbPlan:
    """Physical experts: which logical expert each one copies, and which rank holds it.

    Attributes:
        phys_to_log: (P,) int64, the logical expert of each physical expert; physical ids are rank-major.
        ep_size: number of ranks; rank r holds physical ids ``slots(r)`` (sizes as in :func:`expert_ranges`).
        num_logical: E, the number of logical experts (routing's ids).
    """

    phys_to_log: torch.Tensor
    ep_size: int
    num_logical: int

    def __post_init__(self) -> None:
        check_tensor("phys_to_log", self.phys_to_log, ndim=1, dtypes=INT_DTYPES)
        check_int("num_logical", self.num_logical, low=1)
        _check_ep(self.phys_to_log.numel(), self.ep_size)
        ids = self.phys_to_log.long()
        if int(ids.min()) < 0 or int(ids.max()) >= self.num_logical or ids.unique().numel() != self.num_logical:
            raise ValueError(f"phys_to_log must hold every logical expert in [0, {self.num_logical}) at least once")

    @property
    def num_physical(self) -> int:
        return self.phys_to_log.numel()

    @property
    def replica_count(self) -> torch.Tensor:
        """(E,) int64: how many physical copies each logical expert has."""
        return torch.bincount(self.phys_to_log.long(), minlength=self.num_logical)

    @property
    def log_to_phys(self) -> torch.Tensor:
        """(E, max replicas) int64: the physical ids of each logical expert, ascending, padded with -1."""
        table = torch.full((self.num_logical, int(self.replica_count.max())), -1, dtype=torch.int64)
        filled = [0] * self.num_logical
        for phys, log in enumerate(self.phys_to_log.tolist()):
            table[log, filled[log]] = phys
            filled[log] += 1
        return table

    @property
    def owner(self) -> torch.Tensor:
        """(P,) int64: the rank that holds each physical expert."""
        return expert_owner(self.num_physical, self.ep_size)

    def slots(self, rank: int) -> range:
        """The physical ids held by ``rank``."""
        check_int("rank", rank, low=0, high=self.ep_size - 1)
        return expert_ranges(self.num_physical, self.ep_size)[rank]

    def expert_map(self, rank: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(P,) int32: physical id -> local id on ``rank``, or -1."""
        return expert_map(self.num_physical, self.ep_size, rank, device)

    def local_weights(self, w13: torch.Tensor, w2: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the logical experts that ``rank`` holds: (E_local, 2I, H) and (E_local, H, I)."""
        check_tensor("w13", w13, ndim=3)
        check_tensor("w2", w2, ndim=3)
        for name, w in (("w13", w13), ("w2", w2)):
            if w.shape[0] != self.num_logical:
                raise ValueError(f"{name} must hold the {self.num_logical} logical experts, got shape {tuple(w.shape)}")
        slots = self.slots(rank)
        logical = self.phys_to_log[slots.start : slots.stop].to(w13.device)  # (E_local,)
        return w13[logical].contiguous(), w2[logical].contiguous()

    def choose_replicas(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """(M, k) logical ids -> (M, k) physical ids, same dtype and device.

        The i-th (token, slot) pair, in flat-id order, that chose logical expert e goes to replica
        ``i % replica_count[e]``: deterministic, and an expert's load splits evenly over its replicas.
        """
        check_tensor("topk_ids", topk_ids, ndim=2, dtypes=INT_DTYPES)
        if topk_ids.numel() and (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= self.num_logical):
            raise ValueError(f"topk_ids must lie in [0, {self.num_logical}) (the logical experts)")
        device = topk_ids.device
        flat = topk_ids.flatten().long()  # (M*k,)
        one_hot = torch.nn.functional.one_hot(flat, self.num_logical)  # (M*k, E)
        occurrence = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # (M*k,) i: earlier pairs with the same expert
        replica = occurrence % self.replica_count.to(device)[flat]  # (M*k,)
        physical = self.log_to_phys.to(device)[flat, replica]  # (M*k,)
        return physical.view(topk_ids.shape).to(topk_ids.dtype)


def replica_counts(expert_load: torch.Tensor, num_redundant: int) -> torch.Tensor:
    """(E,) int64: one copy per expert, then each extra copy to the expert with the largest load per copy.

    Ties go to the lower expert id, so the result is deterministic.
    """
    check_tensor("expert_load", expert_load, ndim=1)
    check_int("num_redundant", num_redundant, low=0)
    load = expert_load.detach().cpu().double()
    counts = torch.ones(load.numel(), dtype=torch.int64)
    for _ in range(num_redundant):
        per_copy = load / counts
        counts[int(torch.argmax(per_copy))] += 1  # argmax returns the first maximum
    return counts


def plan_eplb(expert_load: torch.Tensor, ep_size: int, num_redundant: int = 0) -> EplbPlan:
    """Replicate hot experts and pack the physical experts onto ranks so each rank gets a similar load.

    Args:
        expert_load: (E,) how many (token, slot) rows each logical expert got in a calibration batch
            (counts or any non-negative weights).
        ep_size: number of ranks.
        num_redundant: extra physical experts. The P = E + num_redundant physical experts are spread over
            the ranks like experts in :func:`expert_ranges` (P // ep each, the remainder to the lowest ranks).

    Deterministic packing in two steps. Greedy: copies in order of decreasing load per copy (ties: the
    lower expert id) each go to the least-loaded rank with a free slot that does not already hold that
    expert (ties: the lower rank). Then swaps: exchange two copies between two ranks whenever that lowers
    the larger of the two ranks' loads (the greedy step can strand small copies on a rank with a spare
    slot). Inside a rank the physical experts are ordered by logical id.
    """
    check_tensor("expert_load", expert_load, ndim=1)
    if expert_load.numel() == 0:
        raise ValueError("expert_load must hold at least one expert")
    if expert_load.is_complex() or not torch.isfinite(expert_load.double()).all() or (expert_load < 0).any():
        raise ValueError("expert_load must hold finite, non-negative loads")
    num_logical = expert_load.numel()
    check_int("num_redundant", num_redundant, low=0)
    check_int("ep_size", ep_size, low=1)
    num_physical = num_logical + num_redundant
    if ep_size > num_physical:
        raise ValueError(f"ep_size ({ep_size}) must be <= the number of physical experts ({num_physical})")
    counts = replica_counts(expert_load, num_redundant)
    load = expert_load.detach().cpu().double()
    copies = sorted(
        ((load[e].item() / counts[e].item(), e) for e in range(num_logical) for _ in range(int(counts[e]))),
        key=lambda item: (-item[0], item[1]),
    )
    capacity = [len(r) for r in expert_ranges(num_physical, ep_size)]
    held: list[list[int]] = [[] for _ in range(ep_size)]
    rank_load = [0.0] * ep_size
    for per_copy, e in copies:
        free = [r for r in range(ep_size) if len(held[r]) < capacity[r]]
        fresh = [r for r in free if e not in held[r]] or free  # avoid two copies of e on one rank
        rank = min(fresh, key=lambda r: (rank_load[r], r))
        held[rank].append(e)
        rank_load[rank] += per_copy
    _improve_by_swaps(held, [load[e].item() / counts[e].item() for e in range(num_logical)])
    phys_to_log = torch.tensor([e for rank in range(ep_size) for e in sorted(held[rank])], dtype=torch.int64)
    return EplbPlan(phys_to_log, ep_size, num_logical)


def _improve_by_swaps(held: list[list[int]], per_copy: list[float]) -> None:
    """Swap copies between ranks (in place) while a swap lowers the larger load of the two ranks involved.

    Each swap makes the pair's loads more even at the same total, so the sum of squared rank loads falls
    strictly: the loop ends. Copies of one expert never meet on one rank.
    """
    def load(rank: int) -> float:
        return sum(per_copy[e] for e in held[rank])

    improved = True
    while improved:
        improved = False
        for a, b in itertools.combinations(range(len(held)), 2):
            for i, j in itertools.product(range(len(held[a])), range(len(held[b]))):
                ea, eb = held[a][i], held[b][j]
                if ea == eb or eb in held[a] or ea in held[b]:
                    continue
                before = max(load(a), load(b))
                after = max(load(a) - per_copy[ea] + per_copy[eb], load(b) - per_copy[eb] + per_copy[ea])
                if after < before - 1e-9 * max(before, 1.0):
                    held[a][i], held[b][j] = eb, ea
                    improved = True
                    break
            if improved:
                break


__all__ = [
    "expert_ranges",
    "expert_owner",
    "expert_map",
    "rank_loads",
    "imbalance",
    "EplbPlan",
    "replica_counts",
    "plan_eplb",
]
