"""The whole MoE layer, as vLLM's ``MixtralMoE`` runs it: replicated gate -> fp32 top-k routing -> fused experts
-> (tensor parallel) all-reduce.

:class:`MixtralMoE` holds three parameters:

- ``gate.weight`` (E, H): the router, replicated on every rank (:class:`moe_lib.gate.MoEGate`);
- ``w13`` (E, 2I/tp, H): this rank's rows of every expert's gate (w1) and up (w3) projections, stacked
  ``[w1 shard; w3 shard]`` so that SiLU-and-mul stays local (see :mod:`moe_lib.parallel.shard`);
- ``w2`` (E, H, I/tp): this rank's columns of every expert's down projection.

With ``tp_size > 1`` a rank's experts see only its slice of I, so its output is a *partial* sum; the layer
output is the sum over ranks. ``reduce_results=True`` (the default) does that sum with an all-reduce and
therefore needs torch.distributed; ``reduce_results=False`` returns the partial output (to be summed by
the caller, as the in-process simulations do).

:meth:`MixtralMoE.load_weights` reads Hugging Face names — the legacy per-expert names that Mixtral
checkpoints use and transformers 5.x's fused names, parsed by :func:`moe_lib.checkpoint.parse_moe_name` —
and shards them for its rank. It checks everything before it changes anything, so a failed load leaves the
layer as it was.

Swapping the layer into a whole transformers model is :mod:`moe_lib.model`; the whole tiny model on real
tensor-parallel processes is :mod:`moe_lib.parallel.golden`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ._validate import FLOAT_DTYPES, check_has_data, check_int, check_tensor
from .checkpoint import MoEName, complete_moe_names, listing, moe_shapes, parse_moe_name
from .gate import INITIALIZER_RANGE, MoEGate
from .kernels.experts import fused_experts, route
from .parallel.shard import shard_w2, shard_w13


# ----------------------------------------------------------------------------------------------------
# Tensor-parallel setup
# ----------------------------------------------------------------------------------------------------
def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _resolve_tp(tp_size: int | None, tp_rank: int | None) -> tuple[int, int]:
    """None means "from torch.distributed if it is initialized, else a single rank"."""
    if tp_size is None:
        tp_size = torch.distributed.get_world_size() if _dist_ready() else 1
    check_int("tp_size", tp_size, low=1)
    if tp_rank is None:
        if tp_size == 1:
            tp_rank = 0
        elif _dist_ready():
            tp_rank = torch.distributed.get_rank()
        else:
            raise ValueError(
                f"tp_rank is required when tp_size={tp_size} > 1 and torch.distributed is not initialized"
            )
    check_int("tp_rank", tp_rank, low=0, high=tp_size - 1)
    return tp_size, tp_rank


# ----------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------
class MixtralMoE(nn.Module):
    """Mixtral's sparse MoE block for inference: ``(..., H) -> (..., H)``.

    Args:
        num_experts: E, experts per layer.
        top_k: experts per token (Mixtral: 2).
        hidden_size: H.
        intermediate_size: I, the width of one whole expert (before tensor-parallel sharding).
        params_dtype: dtype of all parameters and of the activations forward accepts (default: torch's
            default dtype).
        tp_size, tp_rank: tensor-parallel world size and this rank. None: from torch.distributed when it is
            initialized, else 1 and 0. ``intermediate_size`` must be divisible by ``tp_size``.
        reduce_results: with tp_size > 1, all-reduce the partial outputs over ``tp_group`` so that forward
            returns the full output (needs torch.distributed with tp_size ranks); False returns this rank's
            partial output. Ignored when tp_size == 1.
        tp_group: the process group of the all-reduce (None: the default group).
        renormalize: divide the top_k routing weights by their sum (Mixtral: True).
        device: where the parameters live.
        generator: draws the initial weights (on the CPU, N(0, 0.02^2) like Hugging Face's initializer) so a
            seed gives the same layer everywhere. Real weights come from :meth:`load_weights`.
    """

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        params_dtype: torch.dtype | None = None,
        tp_size: int | None = None,
        tp_rank: int | None = None,
        *,
        reduce_results: bool = True,
        tp_group=None,
        renormalize: bool = True,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_int("num_experts", num_experts, low=1)
        check_int("top_k", top_k, low=1)
        if top_k > num_experts:
            raise ValueError(f"top_k ({top_k}) must be <= num_experts ({num_experts})")
        check_int("hidden_size", hidden_size, low=1)
        check_int("intermediate_size", intermediate_size, low=1)
        params_dtype = torch.get_default_dtype() if params_dtype is None else params_dtype
        if not isinstance(params_dtype, torch.dtype) or params_dtype not in FLOAT_DTYPES:
            raise TypeError(f"params_dtype must be one of float32, float16, bfloat16, got {params_dtype!r}")
        for name, flag in (("reduce_results", reduce_results), ("renormalize", renormalize)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        tp_size, tp_rank = _resolve_tp(tp_size, tp_rank)
        if intermediate_size % tp_size:
            raise ValueError(f"intermediate_size ({intermediate_size}) must be divisible by tp_size ({tp_size})")

        self.num_experts = num_experts
        self.top_k = top_k
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.intermediate_size_per_rank = intermediate_size // tp_size
        self.params_dtype = params_dtype
        self.tp_size = tp_size
        self.tp_rank = tp_rank
        self.reduce_results = reduce_results
        self.tp_group = tp_group
        self.renormalize = renormalize
        #: While :func:`moe_lib.model.record_routing` is active: the list forward appends (topk_weights, topk_ids) to.
        self._routing_log: list[tuple[torch.Tensor, torch.Tensor]] | None = None

        self.gate = MoEGate(hidden_size, num_experts, dtype=params_dtype, device=device, generator=generator)
        self.gate.weight.requires_grad_(False)
        i_local = self.intermediate_size_per_rank

        def draw(*shape: int) -> nn.Parameter:
            w = torch.empty(*shape).normal_(0.0, INITIALIZER_RANGE, generator=generator)
            return nn.Parameter(w.to(device=device, dtype=params_dtype), requires_grad=False)

        self.w13 = draw(num_experts, 2 * i_local, hidden_size)  # (E, 2I/tp, H)  [w1 shard; w3 shard]
        self.w2 = draw(num_experts, hidden_size, i_local)  # (E, H, I/tp)

    # -- forward ---------------------------------------------------------------------------------------
    def route(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, H) tokens -> (topk_weights fp32 (M, k), topk_ids int32 (M, k)): the gate, then fp32 top-k."""
        router_logits = self.gate(hidden_states)  # (M, E)
        return route(router_logits, self.top_k, self.renormalize)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., H): every token through its top_k experts (summed over ranks if reducing).

        Captures in a CUDA graph (no host sync: the ids come from the layer's own routing, in [0, E) by
        construction) and compiles with ``torch.compile(layer, fullgraph=True)`` (routing and experts run as
        the custom ops ``torch.ops.moe_lib.*``), with the bits of the eager call."""
        check_tensor("hidden_states", hidden_states, dtypes=FLOAT_DTYPES, device=self.w13.device)
        check_has_data("hidden_states", hidden_states)
        if hidden_states.dim() == 0 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must have last dim hidden_size={self.hidden_size}, got shape "
                f"{tuple(hidden_states.shape)}"
            )
        if hidden_states.dtype != self.params_dtype:
            raise TypeError(
                f"hidden_states has dtype {hidden_states.dtype} but the layer's params_dtype is {self.params_dtype}"
            )
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, self.hidden_size)  # (M, H)
        with torch.no_grad():
            topk_weights, topk_ids = self.route(x)  # (M, k) fp32, (M, k) int32
            if self._routing_log is not None:
                self._routing_log.append((topk_weights.clone(), topk_ids.clone()))
            # The ids come from our own routing, in [0, E) by construction: no host-side check (no device sync,
            # so a forward can be captured in a CUDA graph).
            out = fused_experts(x, self.w13, self.w2, topk_weights, topk_ids, check_ids=False)  # (M, H)
            if self.tp_size > 1 and self.reduce_results:
                self._all_reduce(out)
        return out.view(shape)

    def _all_reduce(self, out: torch.Tensor) -> None:
        """Sum the ranks' partial outputs in place, after checking that the group is the one we shard for."""
        if not _dist_ready():
            raise RuntimeError(
                f"MixtralMoE(tp_size={self.tp_size}, reduce_results=True) needs torch.distributed to sum the ranks' "
                "partial outputs, but it is not initialized. Initialize it (one process per rank), or pass "
                "reduce_results=False to get this rank's partial output."
            )
        world = torch.distributed.get_world_size(self.tp_group)
        rank = torch.distributed.get_rank(self.tp_group)
        if (world, rank) != (self.tp_size, self.tp_rank):
            raise RuntimeError(
                f"the all-reduce group has {world} ranks and this is rank {rank}, but the layer was built for "
                f"tp_size={self.tp_size}, tp_rank={self.tp_rank}: its shards would be summed wrongly"
            )
        torch.distributed.all_reduce(out, group=self.tp_group)

    # -- loading ---------------------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> list[str]:
        """Load one layer's Hugging Face tensors, sharded for this rank; returns the names loaded, sorted.

        Accepted, after any prefix (``model.layers.3.``), either set — complete, and nothing else:

        - legacy: ``block_sparse_moe.gate.weight`` (E, H) and ``block_sparse_moe.experts.{e}.w1/w3.weight``
          (I, H), ``...w2.weight`` (H, I) for every expert e;
        - transformers 5.x: ``mlp.gate.weight`` (E, H), ``mlp.experts.gate_up_proj`` (E, 2I, H),
          ``mlp.experts.down_proj`` (E, H, I).

        Tensors are always the whole (unsharded) weights, in any floating dtype (cast to params_dtype).
        Every tensor is checked and placed into temporaries first; unknown, duplicate, missing or misshapen
        names raise one ValueError that lists them all, and the layer is then left unchanged.
        """
        if isinstance(weights, Mapping):
            weights = weights.items()
        E, H, I, i_local = self.num_experts, self.hidden_size, self.intermediate_size, self.intermediate_size_per_rank
        tp, rank = self.tp_size, self.tp_rank
        device, dtype = self.w13.device, self.params_dtype
        expected_shapes = moe_shapes(E, H, I)

        gate = torch.empty(E, H, device=device, dtype=dtype)  # (E, H)
        w13 = torch.empty(E, 2 * i_local, H, device=device, dtype=dtype)  # (E, 2I/tp, H)
        w2 = torch.empty(E, H, i_local, device=device, dtype=dtype)  # (E, H, I/tp)
        pending_w1w3: dict[tuple[int, str], torch.Tensor] = {}  # one half of an expert's w13, until its pair comes
        seen: dict[MoEName, str] = {}
        scopes: list[str] = []
        unknown: list[str] = []
        duplicate: list[str] = []
        bad: list[str] = []

        for entry in weights:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise TypeError(f"weights must yield (name, tensor) pairs, got {type(entry).__name__}")
            name, tensor = entry
            if not isinstance(name, str):
                raise TypeError(f"weights: a name must be a str, got {type(name).__name__}")
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"weights: {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
            slot = parse_moe_name(name)
            if slot is None:
                unknown.append(name)
                continue
            if slot.expert is not None and slot.expert >= E:
                unknown.append(f"{name} (expert {slot.expert} >= num_experts {E})")
                continue
            if slot.scope not in scopes:
                scopes.append(slot.scope)
            if slot in seen:
                duplicate.append(name)
                continue
            seen[slot] = name
            want = expected_shapes[slot.kind]
            if tuple(tensor.shape) != want:
                bad.append(f"{name} has shape {tuple(tensor.shape)}, expected {want}")
                continue
            if not tensor.is_floating_point():
                bad.append(f"{name} has dtype {tensor.dtype}, expected a floating dtype")
                continue
            t = tensor.detach().to(device=device, dtype=dtype)
            if slot.kind == "gate":
                gate.copy_(t)
            elif slot.kind == "gate_up":
                w13.copy_(shard_w13(t, tp, rank))
            elif slot.kind == "down":
                w2.copy_(shard_w2(t, tp, rank))
            elif slot.kind == "w2":
                w2[slot.expert].copy_(shard_w2(t[None], tp, rank)[0])  # (H, I/tp)
            else:  # w1 or w3: shard the pair [w1; w3] once both halves are here
                other = "w3" if slot.kind == "w1" else "w1"
                partner = pending_w1w3.pop((slot.expert, other), None)
                if partner is None:
                    pending_w1w3[(slot.expert, slot.kind)] = t
                else:
                    w1, w3 = (t, partner) if slot.kind == "w1" else (partner, t)
                    w13[slot.expert].copy_(shard_w13(torch.cat([w1, w3])[None], tp, rank)[0])  # (2I/tp, H)

        problems = []
        if len(scopes) > 1:
            problems.append(listing("names from more than one layer or naming scheme (prefixes)", scopes))
        if unknown:
            problems.append(listing("unknown names", unknown))
        if duplicate:
            problems.append(listing("given twice", duplicate))
        if bad:
            problems.append(listing("wrong shape or dtype", bad))
        if len(scopes) == 1:
            missing = [s.name for s in complete_moe_names(scopes[0], E) if s not in seen]
            if missing:
                problems.append(listing("missing", missing))
        elif not scopes and not problems:
            problems.append("  no weights were given")
        if problems:
            raise ValueError(
                f"MixtralMoE.load_weights (num_experts={E}, hidden_size={H}, intermediate_size={I}): "
                "nothing was loaded.\n" + "\n".join(problems)
            )

        # Everything is present and checked: commit.
        with torch.no_grad():
            self.gate.weight.copy_(gate)
            self.w13.copy_(w13)
            self.w2.copy_(w2)
        return sorted(seen.values())

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, hidden_size={self.hidden_size}, "
            f"intermediate_size={self.intermediate_size} ({self.intermediate_size_per_rank} on this rank), "
            f"tp_size={self.tp_size}, tp_rank={self.tp_rank}, reduce_results={self.reduce_results}, "
            f"dtype={str(self.params_dtype).replace('torch.', '')}"
        )


__all__ = ["MixtralMoE"]
