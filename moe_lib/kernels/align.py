"""Token alignment: group the (token, slot) pairs by expert and pad each group to a multiple of BLOCK_M.

The fused-MoE GEMM works on row blocks of BLOCK_M rows that all belong to one expert. Alignment lays
the flat ids ``t * top_k + j`` (token t's j-th choice) out in that order:

    sorted_token_ids  int32 (max_len,)   flat ids grouped by expert, ascending inside a group; padding
                                         slots hold the sentinel ``numel = M * top_k``
    expert_ids        int32 (max_blocks,) the expert of each BLOCK_M block; -1 past the padded total and
                                         for experts that ``expert_map`` marks as held by another rank
    num_tokens_post_padded int32 (1,)    the padded total (a tensor: it stays on the device)

with ``max_len = numel + E * (BLOCK_M - 1)`` (every expert may waste up to BLOCK_M - 1 slots) and
``max_blocks = cdiv(max_len, BLOCK_M)``. Experts without tokens get no blocks. ``expert_map`` maps a
global expert id to this rank's local id, or -1; ``topk_ids`` hold global ids.

``moe_align_block_size_torch`` is the readable specification; ``moe_align_block_size`` runs the same
in Triton (one launch for up to CHUNK ids, three above: count per chunk, scan, scatter).

Values out of range. With ``check_ids=True`` (the default) both raise when an id is outside [0, E) or an
``expert_map`` value outside [-1, num_local) (one device sync; skipped while a CUDA graph is captured). With
``check_ids=False`` — and during a capture — they agree on every input: an out-of-range id (int64 ids of
2**31 and more included: never truncated) is dropped, as if that slot chose no expert, and an out-of-range map
value counts as -1 (another rank's expert). Nothing is read or written out of bounds either way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import runtime
from .._alloc import empty
from .._validate import (
    INT_DTYPES,
    check_bool,
    check_has_data,
    check_id_values,
    check_int,
    check_kernel_device,
    check_tensor,
)
from ..runtime import pdl_start


def _check_align_args(topk_ids, block_size, num_experts, expert_map, num_local, check_ids) -> tuple[int, bool]:
    """Validate; returns (num_local, whether the values were checked)."""
    check_tensor("topk_ids", topk_ids, dtypes=INT_DTYPES)
    check_has_data("topk_ids", topk_ids)
    check_int("block_size", block_size, low=1)
    check_int("num_experts", num_experts, low=1)
    check_bool("check_ids", check_ids)
    num_local = num_experts if num_local is None else check_int("num_local", num_local, low=1)
    if expert_map is not None:
        check_tensor("expert_map", expert_map, ndim=1, dtypes=INT_DTYPES, device=topk_ids.device)
        if expert_map.shape[0] != num_experts:
            raise ValueError(
                f"expert_map must have num_experts={num_experts} entries, got shape {tuple(expert_map.shape)}"
            )
    return num_local, check_id_values(topk_ids, num_experts, expert_map, num_local, check_ids=check_ids)


def _local_expert(expert_map: torch.Tensor | None, num_local: int) -> torch.Tensor | None:
    """The map with every value outside [-1, num_local) replaced by -1 (what an unchecked map means)."""
    if expert_map is None:
        return None
    return torch.where((expert_map >= -1) & (expert_map < num_local), expert_map, -1)


def align_sizes(numel: int, block_size: int, num_experts: int) -> tuple[int, int]:
    """(max_len, max_blocks): the worst-case lengths of sorted_token_ids and expert_ids."""
    max_len = numel + num_experts * (block_size - 1)
    return max_len, triton.cdiv(max_len, block_size)


def moe_align_block_size_torch(
    topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None = None, *,
    num_local: int | None = None, check_ids: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The specification, one expert at a time. ``num_local``: the experts of this rank (the range of
    ``expert_map``'s values, default num_experts); ``check_ids``: see the module docstring."""
    num_local, checked = _check_align_args(topk_ids, block_size, num_experts, expert_map, num_local, check_ids)
    if not checked:
        expert_map = _local_expert(expert_map, num_local)
    device = topk_ids.device
    # (numel,) flat id i is token i // top_k, slot i % top_k; ids outside [0, E) match no expert below
    flat = topk_ids.reshape(-1).long()
    numel = flat.numel()
    max_len, max_blocks = align_sizes(numel, block_size, num_experts)
    sorted_token_ids = torch.full((max_len,), numel, dtype=torch.int32, device=device)
    expert_ids = torch.full((max_blocks,), -1, dtype=torch.int32, device=device)
    start = 0  # where the current expert's group begins
    for e in range(num_experts):
        ids = torch.nonzero(flat == e).flatten()  # ascending flat ids routed to expert e
        if ids.numel() == 0:
            continue  # no tokens, no blocks
        padded = triton.cdiv(ids.numel(), block_size) * block_size
        sorted_token_ids[start : start + ids.numel()] = ids.to(torch.int32)
        local = e if expert_map is None else int(expert_map[e])
        expert_ids[start // block_size : (start + padded) // block_size] = local
        start += padded
    num_tokens_post_padded = torch.tensor([start], dtype=torch.int32, device=device)
    return sorted_token_ids, expert_ids, num_tokens_post_padded


# ----------------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _one_hot(ids_ptr, chunk, numel, CHUNK: tl.constexpr, E_PAD: tl.constexpr):
    """Load one chunk of flat expert ids; (CHUNK, E_PAD) int32 one-hot rows (all zero past numel)."""
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < numel, other=-1)  # -1 matches no expert column
    return (ids[:, None] == tl.arange(0, E_PAD)[None, :]).to(tl.int32), offs


@triton.jit
def align_count_kernel(
    # Pointers: flat expert ids (numel,) and per-chunk counts (num_chunks, E_PAD)
    ids_ptr, counts_ptr,
    # Sizes
    numel,
    # Meta-parameters
    CHUNK: tl.constexpr, E_PAD: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """Pass 1: how many ids of each expert fall into each chunk."""
    pdl_start(USE_PDL)
    pid = tl.program_id(axis=0)
    one_hot, _ = _one_hot(ids_ptr, pid, numel, CHUNK, E_PAD)
    tl.store(counts_ptr + pid * E_PAD + tl.arange(0, E_PAD), tl.sum(one_hot, axis=0))


@triton.jit
def align_scan_kernel(
    # Pointers: per-chunk counts in, exclusive prefix over chunks out (both (num_chunks, E_PAD)),
    # per-expert totals out (E_PAD,)
    counts_ptr, prefix_ptr, totals_ptr,
    # Sizes
    num_chunks,
    # Meta-parameters
    ROWS: tl.constexpr, E_PAD: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """Pass 2 (one program): for each chunk and expert, the ids of that expert in earlier chunks."""
    pdl_start(USE_PDL)
    offs_e = tl.arange(0, E_PAD)
    carry = tl.zeros((E_PAD,), dtype=tl.int32)
    for start in range(0, num_chunks, ROWS):
        offs_c = start + tl.arange(0, ROWS)
        ptrs = offs_c[:, None] * E_PAD + offs_e[None, :]
        mask = offs_c[:, None] < num_chunks
        counts = tl.load(counts_ptr + ptrs, mask=mask, other=0)  # (ROWS, E_PAD)
        inclusive = tl.cumsum(counts, axis=0)
        tl.store(prefix_ptr + ptrs, inclusive - counts + carry[None, :], mask=mask)
        carry += tl.sum(counts, axis=0)
    tl.store(totals_ptr + offs_e, carry)


@triton.jit
def align_scatter_kernel(
    # Pointers: inputs
    ids_ptr, prefix_ptr, totals_ptr, expert_map_ptr,
    # Pointers: outputs
    sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    # Sizes
    numel, num_experts, max_len, max_blocks,
    # Meta-parameters
    BLOCK_SIZE: tl.constexpr, CHUNK: tl.constexpr, E_PAD: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr, HAS_EXPERT_MAP: tl.constexpr, FILL: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """Pass 3: place every flat id of this chunk; also write the block -> expert table and padding."""
    pdl_start(USE_PDL)
    pid = tl.program_id(axis=0)
    num_programs = tl.num_programs(axis=0)
    offs_e = tl.arange(0, E_PAD)
    one_hot, offs = _one_hot(ids_ptr, pid, numel, CHUNK, E_PAD)  # (CHUNK, E_PAD)

    # -- where each expert's group starts: an exclusive scan of the padded totals
    if SINGLE_CHUNK:
        totals = tl.sum(one_hot, axis=0)  # (E_PAD,)
        before = tl.zeros((E_PAD,), dtype=tl.int32)  # no earlier chunks
    else:
        totals = tl.load(totals_ptr + offs_e)
        before = tl.load(prefix_ptr + pid * E_PAD + offs_e)
    padded = (totals + BLOCK_SIZE - 1) // BLOCK_SIZE * BLOCK_SIZE  # (E_PAD,)
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    total_padded = tl.sum(padded, axis=0)

    # -- each id goes to: its expert's start + ids of its expert in earlier chunks + its rank here
    rank = tl.sum(tl.cumsum(one_hot, axis=0) * one_hot, axis=1) - 1  # (CHUNK,) -1 for no expert
    dest = tl.sum(one_hot * (starts + before)[None, :], axis=1) + rank
    tl.store(sorted_token_ids_ptr + dest, offs, mask=(offs < numel) & (rank >= 0))

    # -- padding slots after each group, and everything past the padded total, hold the sentinel
    if pid == 0:
        tl.store(num_tokens_post_padded_ptr, total_padded)
        offs_p = tl.arange(0, BLOCK_SIZE)
        pad_ptrs = sorted_token_ids_ptr + starts[:, None] + totals[:, None] + offs_p[None, :]
        pad_mask = offs_p[None, :] < (padded - totals)[:, None]
        tl.store(pad_ptrs, tl.full((E_PAD, BLOCK_SIZE), FILL, tl.int32), mask=pad_mask)
    for tail in range(total_padded + pid * CHUNK, max_len, num_programs * CHUNK):
        offs_t = tail + tl.arange(0, CHUNK)
        tl.store(sorted_token_ids_ptr + offs_t, tl.full((CHUNK,), FILL, tl.int32), mask=offs_t < max_len)

    # -- block b belongs to the expert whose [start, end) holds b * BLOCK_SIZE; -1 past the total
    for first in range(pid * CHUNK, max_blocks, num_programs * CHUNK):
        offs_b = first + tl.arange(0, CHUNK)
        row = offs_b * BLOCK_SIZE
        expert = tl.sum((ends[None, :] <= row[:, None]).to(tl.int32), axis=1)  # experts wholly before
        if HAS_EXPERT_MAP:
            expert = tl.load(expert_map_ptr + expert, mask=row < total_padded, other=-1)
        expert = tl.where(row < total_padded, expert, -1)
        tl.store(expert_ids_ptr + offs_b, expert, mask=offs_b < max_blocks)


def _chunk_size(num_experts_pad: int) -> int:
    # A chunk's one-hot is CHUNK x E_PAD int32 values in registers: ~8K on a GPU; big in the interpreter
    # (each program is a numpy round trip).
    budget = 2**18 if runtime.INTERPRET else 2**13
    return max(16, min(4096, budget // num_experts_pad))


def moe_align_block_size(
    topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None = None, *,
    num_local: int | None = None, check_ids: bool = True,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, use_pdl: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract and results as :func:`moe_align_block_size_torch`, in Triton. ``out``: the three output
    buffers (int32, of the lengths :func:`align_sizes` gives, and 1) to write instead of new ones; ``use_pdl``:
    programmatic dependent launch (default: :func:`moe_lib.runtime.pdl`'s choice)."""
    num_local, checked = _check_align_args(topk_ids, block_size, num_experts, expert_map, num_local, check_ids)
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two for the Triton kernel, got {block_size}")
    check_kernel_device("topk_ids", topk_ids)
    return align_launch(topk_ids, block_size, num_experts, expert_map, num_local, values_checked=checked, out=out,
                        use_pdl=use_pdl)


def align_launch(
    topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None, num_local: int, *,
    values_checked: bool, out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    use_pdl: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The launches of :func:`moe_align_block_size` for validated arguments (the plan calls this directly).

    ``values_checked``: every id is in [0, num_experts) and every map value in [-1, num_local). Otherwise the
    values the kernels would misread become -1 first: with E not a power of two, ids in [E, E_PAD), which would
    match a padding column of the one-hot (other out-of-range ids match no column and are dropped as they are,
    int64 ones included: the ids are read in their own dtype, never cast), and map values outside
    [-1, num_local). With E a power of two and no map (Mixtral), that costs nothing."""
    device = topk_ids.device
    flat = topk_ids.reshape(-1)  # int32 or int64, as given: an int64 id is compared as int64
    if not values_checked:
        if num_experts & (num_experts - 1):
            flat = torch.where((flat >= 0) & (flat < num_experts), flat, -1)
        expert_map = _local_expert(expert_map, num_local)
    numel = flat.numel()
    max_len, max_blocks = align_sizes(numel, block_size, num_experts)
    if out is None:
        sorted_token_ids = empty(max_len, dtype=torch.int32, device=device)
        expert_ids = empty(max_blocks, dtype=torch.int32, device=device)
        num_tokens_post_padded = empty(1, dtype=torch.int32, device=device)
    else:
        sorted_token_ids, expert_ids, num_tokens_post_padded = out
        for name, t, length in (("sorted_token_ids", sorted_token_ids, max_len), ("expert_ids", expert_ids, max_blocks),
                                ("num_tokens_post_padded", num_tokens_post_padded, 1)):
            check_tensor(f"out ({name})", t, ndim=1, dtypes=(torch.int32,), device=device)
            if t.shape[0] != length or not t.is_contiguous():
                raise ValueError(f"out ({name}) must be contiguous with {length} entries, got shape {tuple(t.shape)}")

    e_pad = triton.next_power_of_2(num_experts)
    # Few ids (decode): a chunk just big enough, so the single program does little work.
    chunk = min(_chunk_size(e_pad), max(16, triton.next_power_of_2(numel)))
    num_chunks = max(1, triton.cdiv(numel, chunk))
    single = num_chunks == 1
    if single:
        prefix = totals = sorted_token_ids  # unused by the kernel in this mode
    else:
        counts = empty(num_chunks, e_pad, dtype=torch.int32, device=device)
        prefix = empty(num_chunks, e_pad, dtype=torch.int32, device=device)
        totals = empty(e_pad, dtype=torch.int32, device=device)
    emap = expert_map.contiguous() if expert_map is not None else sorted_token_ids  # int32 or int64, as given
    if use_pdl is None:
        use_pdl = runtime.pdl(device, numel)
    with runtime.quiet_interpreter():
        if not single:
            align_count_kernel[(num_chunks,)](flat, counts, numel, CHUNK=chunk, E_PAD=e_pad,
                                              USE_PDL=use_pdl, launch_pdl=use_pdl)
            rows = max(1, min(triton.next_power_of_2(num_chunks), 8192 // e_pad))
            align_scan_kernel[(1,)](counts, prefix, totals, num_chunks, ROWS=rows, E_PAD=e_pad,
                                    USE_PDL=use_pdl, launch_pdl=use_pdl)
        align_scatter_kernel[(num_chunks,)](
            flat, prefix, totals, emap,
            sorted_token_ids, expert_ids, num_tokens_post_padded,
            numel, num_experts, max_len, max_blocks,
            BLOCK_SIZE=block_size, CHUNK=chunk, E_PAD=e_pad,
            SINGLE_CHUNK=single, HAS_EXPERT_MAP=expert_map is not None, FILL=numel,
            USE_PDL=use_pdl, launch_pdl=use_pdl,
        )
    return sorted_token_ids, expert_ids, num_tokens_post_padded


__all__ = ["align_sizes", "align_launch", "moe_align_block_size", "moe_align_block_size_torch"]
