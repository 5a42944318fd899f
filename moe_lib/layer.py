"""The whole MoE layer, as vLLM's ``MixtralMoE`` runs it: replicated gate -> fp32 top-k routing -> fused experts
-> (tensor parallel) all-reduce.

:class:`MixtralMoE` holds three parameters:

- ``gate.weight`` (E, H): the router, replicated on every rank (:class:`moe_lib.gate.MoEGate`);
- ``w13`` (E, 2I/tp, H): this rank's rows of every expert's gate (w1) and up (w3) projections, stacked
  ``[w1 shard; w3 shard]`` so that SiLU-and-mul stays local (see :mod:`moe_lib.parallel.shard`);
- ``w2`` (E, H, I/tp): this rank's columns of every expert's down projection.

With ``quant_config`` (:class:`moe_lib.config.QuantConfig`, an FP8 checkpoint's ``quantization_config``) the
experts are FP8, as vLLM runs them: ``w13``/``w2`` in float8_e4m3fn with fp32 scales ``w13_scale``/``w2_scale``
— per tensor (E,), one per expert (w1 and w3 requantized to the larger of their two scales on load), or per
block (E, 2I/tp/bn, ceil(H/bk)) and (E, ceil(H/bn), ceil(I/tp/bk)) — and with static activations one input
scale per GEMM, ``a1_scale``/``a2_scale`` (1,) (the largest over experts). The router and the activations
stay in params_dtype; each GEMM quantizes its input to e4m3 (``fused_experts(..., use_fp8_w8a8=True)``).

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
from .checkpoint import (
    MoEName,
    complete_moe_names,
    expert_params,
    is_fp8,
    is_legacy_scope,
    listing,
    moe_shapes,
    parse_moe_name,
    stored_dtype,
)
from .config import QuantConfig
from .gate import INITIALIZER_RANGE, MoEGate
from .kernels.experts import fused_experts, route
from .kernels.quant import FP8_DTYPE, merge_w13_scales, quantize_weight
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
        quant_config: FP8 experts (see the module docstring); None (the default): experts in params_dtype.
            Block-wise, I/tp must be a multiple of bn (w1 and w3 are stacked block by block) and, with
            tp_size > 1, of bk (w2's scale columns are split between ranks). A fresh FP8 layer holds its drawn
            weights quantized, and static activation scales of 1.
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
        quant_config: QuantConfig | None = None,
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
        if quant_config is not None and not isinstance(quant_config, QuantConfig):
            raise TypeError(
                f"quant_config must be a moe_lib.config.QuantConfig or None, got {type(quant_config).__name__}"
            )
        if quant_config is not None and quant_config.weight_block_size is not None:
            bn, bk = quant_config.weight_block_size
            i_rank = intermediate_size // tp_size
            if i_rank % bn or (tp_size > 1 and i_rank % bk):
                raise ValueError(
                    f"quant_config.weight_block_size {list(quant_config.weight_block_size)} does not fit "
                    f"intermediate_size {intermediate_size} on tp_size {tp_size}: I/tp = {i_rank} must be a multiple "
                    f"of bn = {bn} (w1 and w3 are stacked block by block)"
                    + (f" and of bk = {bk} (w2's blocks are split between ranks)" if tp_size > 1 else "")
                )

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
        self.quant_config = quant_config
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
        if quant_config is not None:  # the drawn weights, quantized; scales as buffers (in the state dict)
            mode = "tensor" if quant_config.weight_block_size is None else "block"
            for name in ("w13", "w2"):
                q, scale = quantize_weight(getattr(self, name).float(), mode, quant_config.block_shape)
                setattr(self, name, nn.Parameter(q, requires_grad=False))  # (E, N, K) e4m3
                self.register_buffer(f"{name}_scale", scale)  # (E,) or (E, ceil(N/bn), ceil(K/bk)) fp32
            for name in ("a1_scale", "a2_scale"):  # the inputs of GEMM1 (x) and GEMM2 (SiLU-and-mul)
                static = torch.ones(1, device=device) if quant_config.static else None
                self.register_buffer(name, static)  # (1,) fp32 static; None: dynamic, computed per call

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
            # The ids come from our own routing, in [0, E) by construction, and the scales were checked on load:
            # no host-side check (no device sync, so a forward can be captured in a CUDA graph).
            out = fused_experts(x, self.w13, self.w2, topk_weights, topk_ids, check_ids=False,
                                **self.fp8_arguments())  # (M, H)
            if self.tp_size > 1 and self.reduce_results:
                self._all_reduce(out)
        return out.view(shape)

    def fp8_arguments(self) -> dict:
        """fused_experts' FP8 keywords for this layer's experts ({} when they are not FP8)."""
        if self.quant_config is None:
            return {}
        if self.w13.dtype != FP8_DTYPE or self.w2.dtype != FP8_DTYPE:
            raise RuntimeError(
                f"this FP8 layer's w13/w2 are {self.w13.dtype}/{self.w2.dtype}, not float8_e4m3fn: was it cast with "
                ".to(dtype)? Cast a model before its MoE blocks are replaced (load_mixtral(..., dtype=...))"
            )
        return dict(use_fp8_w8a8=True, w1_scale=self.w13_scale, w2_scale=self.w2_scale, a1_scale=self.a1_scale,
                    a2_scale=self.a2_scale, block_shape=self.quant_config.block_shape, check_scales=False)

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

        An FP8 layer (``quant_config``) reads an FP8 checkpoint's legacy names: the router as above, each expert
        matrix in float8_e4m3fn with its fp32 scale — ``...w1.weight_scale`` () per tensor, or
        ``...w1.weight_scale_inv`` (ceil(I/bn), ceil(H/bk)) per block — and with static activations
        ``...w1.input_scale`` () (likewise w2, w3). Per tensor, each expert's w1 and w3 are requantized to the
        larger of their two scales (w13 has one scale per expert); static input scales become one per GEMM, the
        largest over experts (w1's and w3's for GEMM1, w2's for GEMM2). Every scale must be finite and > 0.

        Every tensor is checked and placed into temporaries first; unknown, duplicate, missing, misshapen or
        mistyped names raise one ValueError that lists them all, and the layer is then left unchanged.
        """
        if isinstance(weights, Mapping):
            weights = weights.items()
        E, H, I = self.num_experts, self.hidden_size, self.intermediate_size
        quant, device, dtype = self.quant_config, self.w13.device, self.params_dtype
        expected_shapes = moe_shapes(E, H, I, quant)

        gate = torch.empty(E, H, device=device, dtype=dtype)  # (E, H)
        staged = {name: torch.empty_like(t) for name, t in self._loaded_tensors().items() if name != "gate"}
        input_scales = torch.zeros(E, 3, device=device)  # static: per expert, of w1, w3 (GEMM1) and w2 (GEMM2)
        pending: dict[tuple[int, str], dict[str, torch.Tensor]] = {}  # an expert's part of w13 or w2, until whole
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
            if slot.key not in expected_shapes:  # a scale of an FP8 checkpoint this layer does not read
                unknown.append(f"{name} ({self._not_read(slot)})")
                continue
            if quant is not None and not is_legacy_scope(slot.scope):
                bad.append(f"{name}: an FP8 layer reads the legacy per-expert names (experts.{{e}}.w1.weight and "
                           "its scales), not transformers' fused names")
                continue
            if slot.scope not in scopes:
                scopes.append(slot.scope)
            if slot in seen:
                duplicate.append(name)
                continue
            seen[slot] = name
            problem = self._check_tensor(slot, tensor, expected_shapes[slot.key])
            if problem:
                bad.append(f"{name} {problem}")
                continue
            want = stored_dtype(slot, quant)
            t = tensor.detach().to(device=device, dtype=dtype if want is None else want)
            if slot.kind == "gate":
                gate.copy_(t)
            elif slot.param == "input_scale":
                input_scales[slot.expert, ("w1", "w3", "w2").index(slot.kind)] = t
            elif slot.expert is None:  # transformers 5.x: all experts at once
                staged["w13" if slot.kind == "gate_up" else "w2"].copy_(
                    shard_w13(t, self.tp_size, self.tp_rank) if slot.kind == "gate_up"
                    else shard_w2(t, self.tp_size, self.tp_rank))
            else:  # one piece of an expert's w13 or w2: place the whole once every piece is here
                group = "w2" if slot.kind == "w2" else "w13"
                parts = pending.setdefault((slot.expert, group), {})
                parts[slot.key] = t
                if len(parts) == len(self._pieces(group)):
                    self._place_expert(staged, slot.expert, group, pending.pop((slot.expert, group)))

        problems = []
        if len(scopes) > 1:
            problems.append(listing("names from more than one layer or naming scheme (prefixes)", scopes))
        if unknown:
            problems.append(listing("unknown names", unknown))
        if duplicate:
            problems.append(listing("given twice", duplicate))
        if bad:
            problems.append(listing("wrong shape, dtype or value", bad))
        if len(scopes) == 1:
            missing = [s.name for s in complete_moe_names(scopes[0], E, quant) if s not in seen]
            if missing:
                problems.append(listing("missing", missing))
        elif not scopes and not problems:
            problems.append("  no weights were given")
        if problems:
            raise ValueError(
                f"MixtralMoE.load_weights (num_experts={E}, hidden_size={H}, intermediate_size={I}"
                f"{'' if quant is None else f', {quant}'}): nothing was loaded.\n" + "\n".join(problems)
            )

        # Everything is present and checked: commit.
        if quant is not None and quant.static:
            staged["a1_scale"] = input_scales[:, :2].amax().reshape(1)  # (1,): one static scale per GEMM
            staged["a2_scale"] = input_scales[:, 2].amax().reshape(1)
        with torch.no_grad():
            self.gate.weight.copy_(gate)
            for name, t in self._loaded_tensors().items():
                if name != "gate":
                    t.copy_(staged[name])
        return sorted(seen.values())

    # -- loading: the pieces ---------------------------------------------------------------------------
    def _loaded_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors load_weights replaces: gate, w13, w2 and, if FP8, their scales (and static input scales)."""
        out = {"gate": self.gate.weight, "w13": self.w13, "w2": self.w2}
        if self.quant_config is not None:
            out |= {"w13_scale": self.w13_scale, "w2_scale": self.w2_scale}
            if self.quant_config.static:
                out |= {"a1_scale": self.a1_scale, "a2_scale": self.a2_scale}
        return out

    def _pieces(self, group: str) -> list[str]:
        """The :attr:`MoEName.key` of every tensor of one expert that goes into ``group`` (w13 or w2): the
        matrices and their weight scales (input scales are kept apart)."""
        params = [p for p in expert_params(self.quant_config) if p != "input_scale"]
        projs = ("w2",) if group == "w2" else ("w1", "w3")
        return [MoEName("", proj, 0, p).key for proj in projs for p in params]

    def _place_expert(self, staged: dict[str, torch.Tensor], e: int, group: str, parts: dict[str, torch.Tensor]):
        """Put expert ``e``'s whole w13 (from w1 and w3) or w2, and their scales, into this rank's ``staged`` shards."""
        tp, rank, quant = self.tp_size, self.tp_rank, self.quant_config
        if group == "w2":
            staged["w2"][e] = shard_w2(parts["w2"][None], tp, rank)[0]  # (H, I/tp)
            if quant is not None:
                scale = parts.get("w2.weight_scale", parts.get("w2.weight_scale_inv"))
                # per tensor: the expert's scalar; per block: (ceil(H/bn), I/tp/bk), its columns of blocks
                staged["w2_scale"][e] = scale if scale.dim() == 0 else shard_w2(scale[None], tp, rank)[0]
            return
        w1, w3 = parts["w1"], parts["w3"]  # (I, H) each
        if quant is None:
            w13 = torch.cat([w1, w3])  # (2I, H)
        elif quant.weight_block_size is None:  # one scale per expert: both halves to the larger of the two
            q, scale = merge_w13_scales(w1[None], parts["w1.weight_scale"].reshape(1), w3[None],
                                        parts["w3.weight_scale"].reshape(1))
            w13 = q[0]  # (2I, H)
            staged["w13_scale"][e] = scale[0]
        else:  # block scales stack like the rows they scale: [w1 blocks; w3 blocks], then the rank's rows of each
            w13 = torch.cat([w1, w3])
            scales = torch.cat([parts["w1.weight_scale_inv"], parts["w3.weight_scale_inv"]])  # (2I/bn, ceil(H/bk))
            staged["w13_scale"][e] = shard_w13(scales[None], tp, rank)[0]  # (2I/tp/bn, ceil(H/bk))
        staged["w13"][e] = shard_w13(w13[None], tp, rank)[0]  # (2I/tp, H)

    def _check_tensor(self, slot: MoEName, tensor: torch.Tensor, shape: tuple[int, ...]) -> str | None:
        """What is wrong with one tensor (shape, dtype, a scale's values), or None."""
        if tuple(tensor.shape) != shape:
            return f"has shape {tuple(tensor.shape)}, expected {shape}"
        want = stored_dtype(slot, self.quant_config)
        if want is None:  # in the model's own dtype
            if not tensor.is_floating_point():
                return f"has dtype {tensor.dtype}, expected a floating dtype"
            if is_fp8(tensor.dtype):
                return (f"has dtype {tensor.dtype}: an FP8 tensor, but this layer is "
                        f"{str(self.params_dtype).removeprefix('torch.')}"
                        + ("" if self.quant_config is not None else " (pass quant_config for an FP8 checkpoint)"))
            return None
        if tensor.dtype != want:
            what = "FP8 weights are" if want == FP8_DTYPE else "FP8 scales are"
            return f"has dtype {tensor.dtype}, expected {want} ({what} stored so)"
        if slot.param != "weight" and tensor.numel() and not bool(
                (torch.isfinite(tensor) & (tensor > 0)).all()):
            return "holds a scale that is not finite and > 0"
        return None

    def _not_read(self, slot: MoEName) -> str:
        """Why a parsed name is not a tensor of this layer: an FP8 scale this layer's quantization does not use."""
        if self.quant_config is None:
            return f"an FP8 {slot.param}, but this layer is not FP8: pass quant_config for an FP8 checkpoint"
        return f"not part of a checkpoint with {self.quant_config}"

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, hidden_size={self.hidden_size}, "
            f"intermediate_size={self.intermediate_size} ({self.intermediate_size_per_rank} on this rank), "
            f"tp_size={self.tp_size}, tp_rank={self.tp_rank}, reduce_results={self.reduce_results}, "
            f"dtype={str(self.params_dtype).replace('torch.', '')}"
            + ("" if self.quant_config is None else f", {self.quant_config}")
        )


__all__ = ["MixtralMoE"]
