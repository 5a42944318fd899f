"""The fused-MoE kernel: a grouped GEMM over expert-sorted tokens, written from scratch.

Flow of :func:`fused_experts` for M tokens, each routed to top_k experts::

    align       topk_ids (M, k)  -> sorted_token_ids, expert_ids, num_tokens_post_padded
    GEMM1       x (M, H) @ w13[e].T, gate and up halves in one tile, then silu(gate) * up
                -> act (M*k, I)          row = flat id t*k + j (token t, slot j)
    GEMM2       act (M*k, I) @ w2[e].T, times the routing weight
                -> out (M*k, H)
    sum over k  -> (M, H)            for top_k <= 2 inside GEMM2: each row added into its token's row

Both GEMMs are the same kernel, :func:`fused_moe_kernel`. A program computes one BLOCK_M x BLOCK_N tile of
C for one block of sorted rows; all rows of a block share an expert, so the B tile is one slice of that
expert's weight. Row r of the A tile is token ``sorted_token_ids[r] // A_ROWS_DIV`` (the token itself
in GEMM1, the (token, slot) row in GEMM2).

For large M a config may ask for ``"TMA"``: the tokens are first copied into sorted order
(:func:`gather_sorted_rows`, one row per sorted position), so that every A tile is a contiguous box;
then both GEMMs fetch A and B tiles through tensor descriptors (Hopper's bulk copy engine), GEMM1 writes
``act`` in sorted order too, and GEMM2 scatters its rows back to flat ids. Same arithmetic, same result.

Tiles run in waves of one program per multiprocessor; a last wave at most half full is split into half-width
tiles (``SPLIT_TAIL``). On Hopper one-token calls chain their kernels with programmatic dependent launch
(:func:`moe_lib.runtime.pdl`). Neither changes a bit of the result.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .. import runtime
from .._alloc import empty
from .._validate import FLOAT_DTYPES, check_kernel_device
from ..reference import check_moe_args
from ..runtime import pdl_start
from .align import moe_align_block_size

CONFIG_DIR = Path(__file__).with_name("configs")


@triton.jit
def fused_moe_kernel(
    # Pointers to matrices: A (rows, K), B (E, N or 2N, K), C (M * top_k, EM or M rows, N)
    a_ptr, b_ptr, c_ptr,
    # Tensor descriptors for Hopper's bulk copy engine (TMA), None unless TMA: A, B, and B for half-width
    # tail tiles (None unless SPLIT_TAIL)
    a_desc, b_desc, b_half_desc,
    # Pointers to routing data: topk_weights (M * top_k,) fp32, and the alignment's three outputs
    topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    # Matrix dimensions: N columns of C, K the reduction, EM = len(sorted_token_ids),
    # num_valid_tokens = M * top_k (larger ids are padding), num_experts = experts in B
    N, K, EM, num_valid_tokens, num_experts,
    # Strides: how far to step in memory to move by one along each dimension
    stride_am, stride_ak,
    stride_be, stride_bn, stride_bk,
    stride_cm, stride_cn,
    # Programs that run at once (the GPU's multiprocessors): sizes the last wave for SPLIT_TAIL
    num_sms,
    # Meta-parameters
    A_ROWS_DIV: tl.constexpr,  # flat id -> A row: top_k when A holds tokens (GEMM1), 1 otherwise (GEMM2)
    C_ROWS_DIV: tl.constexpr,  # flat id -> C row: 1, or top_k to add each slot's row into its token's row
    GATED: tl.constexpr,  # B rows [0, N) are the gate, [N, 2N) the up projection: C = silu(A Bg^T) * (A Bu^T)
    MUL_ROUTED_WEIGHT: tl.constexpr,  # multiply each row of C by its fp32 routing weight
    TMA: tl.constexpr,  # A's rows are already in sorted order (row = sorted position); A, B via descriptors
    C_SORTED: tl.constexpr,  # store row r of the tile at sorted position r (GEMM1 feeding a TMA GEMM2)
    SPLIT_TAIL: tl.constexpr,  # a last wave at most half full runs as twice as many half-width tiles
    COMPUTE_FP32: tl.constexpr,  # upcast tiles to fp32 before tl.dot (the interpreter gets bf16 wrong)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (exact), "tf32" is never chosen implicitly
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    pdl_start(USE_PDL)
    # -----------------------------------------------------------
    # The tiles: row blocks that hold tokens (the grid is sized for the worst case; the rest exit) times
    # column blocks of N.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(tl.load(num_tokens_post_padded_ptr), BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_tiles = num_pid_m * num_pid_n
    # Tiles run in waves of num_sms. When the last wave is at most half full, its tiles are split in two
    # along N: the same work, spread over twice as many SMs, so that wave takes about half as long.
    num_whole = num_tiles
    if SPLIT_TAIL:
        tail = num_tiles % num_sms
        if (num_tiles >= num_sms) & (2 * tail <= num_sms):
            num_whole = num_tiles - tail
    if pid < num_whole:
        pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_SIZE_M)
        _moe_tile(a_ptr, b_ptr, c_ptr, a_desc, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                  N, K, EM, num_valid_tokens, num_experts,
                  stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                  b_desc, pid_m, pid_n * BLOCK_SIZE_N,
                  A_ROWS_DIV, C_ROWS_DIV, GATED, MUL_ROUTED_WEIGHT, TMA, C_SORTED, COMPUTE_FP32, DOT_PRECISION,
                  BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K)
    elif SPLIT_TAIL:
        half = pid - num_whole  # programs num_whole + 2t and + 2t + 1 share tile num_whole + t
        if half < 2 * (num_tiles - num_whole):
            pid_m, pid_n = grouped_tile(num_whole + half // 2, num_pid_m, num_pid_n, GROUP_SIZE_M)
            _moe_tile(a_ptr, b_ptr, c_ptr, a_desc, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
                      N, K, EM, num_valid_tokens, num_experts,
                      stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
                      b_half_desc, pid_m, pid_n * BLOCK_SIZE_N + (half % 2) * (BLOCK_SIZE_N // 2),
                      A_ROWS_DIV, C_ROWS_DIV, GATED, MUL_ROUTED_WEIGHT, TMA, C_SORTED, COMPUTE_FP32,
                      DOT_PRECISION, BLOCK_SIZE_M, BLOCK_SIZE_N // 2, BLOCK_SIZE_K)


@triton.jit
def grouped_tile(tile, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """Tile index -> (row block, column block), GROUP_SIZE_M row blocks at a time, so that consecutive
    programs reuse the same B columns from L2."""
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = tile // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((tile % num_pid_in_group) % group_size_m)
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _moe_tile(
    a_ptr, b_ptr, c_ptr, a_desc, topk_weights_ptr, sorted_token_ids_ptr, expert_ids_ptr,
    N, K, EM, num_valid_tokens, num_experts,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    b_desc,  # B's descriptor with boxes of (1, BLOCK_SIZE_N, BLOCK_SIZE_K)
    pid_m, first_col,  # the tile: row block pid_m, columns [first_col, first_col + BLOCK_SIZE_N)
    A_ROWS_DIV: tl.constexpr, C_ROWS_DIV: tl.constexpr, GATED: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr,
    TMA: tl.constexpr, C_SORTED: tl.constexpr, COMPUTE_FP32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
):
    """One BLOCK_SIZE_M x BLOCK_SIZE_N tile of C (see fused_moe_kernel for the arguments)."""
    # -----------------------------------------------------------
    # The rows of this tile: flat ids (t * top_k + j); padding slots hold num_valid_tokens.
    offs_sorted = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    flat_ids = tl.load(sorted_token_ids_ptr + offs_sorted, mask=offs_sorted < EM, other=num_valid_tokens)
    row_mask = flat_ids < num_valid_tokens  # (BLOCK_SIZE_M,)
    flat_ids = flat_ids.to(tl.int64)  # M * top_k * stride overflows int32 at large M
    offs_cn = first_col + tl.arange(0, BLOCK_SIZE_N)
    col_mask = offs_cn < N
    if C_SORTED:  # padding rows too (as zeros), so that GEMM2 reads no uninitialized memory
        c_rows = offs_sorted.to(tl.int64)
        c_mask = (offs_sorted < EM)[:, None] & col_mask[None, :]
    else:
        c_rows = flat_ids // C_ROWS_DIV
        c_mask = row_mask[:, None] & col_mask[None, :]
    c_ptrs = c_ptr + c_rows[:, None] * stride_cm + offs_cn[None, :] * stride_cn

    # An expert that lives on another rank (-1) contributes zeros here; so does an id that is not an
    # expert of B at all (never read out of bounds, whatever the caller passed).
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    if (expert < 0) | (expert >= num_experts):
        if C_ROWS_DIV == 1:  # (when adding into C, zero is nothing to add)
            tl.store(c_ptrs, tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=c_ptr.dtype.element_ty), mask=c_mask)
        return

    # -----------------------------------------------------------
    # Pointers to the first K block of A (gathered rows) and of B (this expert's slice, read as K x N).
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_rows = flat_ids // A_ROWS_DIV
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    offs_bn = offs_cn.to(tl.int64)
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn
    if GATED:
        b_up_ptrs = b_ptrs + N * stride_bn  # the up projection sits N rows further down

    # -----------------------------------------------------------
    # Iterate over K, accumulating in fp32.
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    # TMA: the copy engine fetches whole boxes and fills zeros past the tensor's edges (the K tail, the
    # last rows of B). Gate rows past N read up rows: they only feed columns that are never stored.
    row_a = (pid_m * BLOCK_SIZE_M).to(tl.int32)
    row_b = first_col.to(tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_mask = offs_k < K - k * BLOCK_SIZE_K
        if TMA:
            a = a_desc.load([row_a, k * BLOCK_SIZE_K])  # (BLOCK_SIZE_M, BLOCK_SIZE_K)
            b = b_desc.load([expert.to(tl.int32), row_b, k * BLOCK_SIZE_K]).reshape(BLOCK_SIZE_N, BLOCK_SIZE_K).T
        else:
            a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if COMPUTE_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if GATED:
            if TMA:
                b_up = b_desc.load([expert.to(tl.int32), N + row_b, k * BLOCK_SIZE_K])
                b_up = b_up.reshape(BLOCK_SIZE_N, BLOCK_SIZE_K).T
            else:
                b_up = tl.load(b_up_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
            if COMPUTE_FP32:
                b_up = b_up.to(tl.float32)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=DOT_PRECISION)
            b_up_ptrs += BLOCK_SIZE_K * stride_bk
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    # -----------------------------------------------------------
    # Epilogue in fp32: SiLU-and-mul, the routing weight, then one rounding to C's dtype.
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if MUL_ROUTED_WEIGHT:
        weight = tl.load(topk_weights_ptr + flat_ids, mask=row_mask, other=0.0).to(tl.float32)
        acc = acc * weight[:, None]
    if C_ROWS_DIV == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        # The sum over k, fused: each slot adds its rounded row into the zeroed token row. With two slots
        # that is 0 + a + b = a + b whichever lands first, so the result does not depend on the order.
        tl.atomic_add(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask, sem="relaxed")


@triton.jit
def moe_sum_kernel(
    # Pointers: partial (M, TOP_K, H) expert outputs, out (M, H), topk_ids (M, TOP_K) contiguous
    partial_ptr, out_ptr, topk_ids_ptr,
    # Sizes
    M, H, num_experts,
    # Strides
    stride_pm, stride_pk, stride_ph, stride_om, stride_oh,
    # Meta-parameters
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """out[t] = sum over j of partial[t, j], in fp32, slots in order (deterministic). A slot whose expert
    id is not in [0, num_experts) was never computed (alignment drops it): it counts as zero."""
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_m[:, None] < M) & (offs_h[None, :] < H)
    ptrs = partial_ptr + offs_m[:, None] * stride_pm + offs_h[None, :] * stride_ph
    acc = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        expert = tl.load(topk_ids_ptr + offs_m * TOP_K + j, mask=offs_m < M, other=-1)  # (BLOCK_M,)
        valid = (expert >= 0) & (expert < num_experts)
        acc += tl.load(ptrs + j * stride_pk, mask=mask & valid[:, None], other=0.0).to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_h[None, :] * stride_oh
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gather_rows_kernel(
    # Pointers: x (M, H) tokens, out (EM, H) tokens in sorted order, the alignment's outputs
    x_ptr, out_ptr, sorted_token_ids_ptr, num_tokens_post_padded_ptr,
    # Sizes: H, EM = len(sorted_token_ids), num_valid_tokens = M * top_k (larger ids are padding)
    H, EM, num_valid_tokens,
    # Strides
    stride_xm, stride_xh, stride_om, stride_oh,
    # Meta-parameters
    TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
    USE_PDL: tl.constexpr = False,  # programmatic dependent launch (see runtime.pdl)
):
    """out[p] = x[sorted_token_ids[p] // TOP_K] for every sorted position p below the padded total; padding
    positions get zeros. Programs wholly past the padded total return at once: the GEMMs never read there."""
    pdl_start(USE_PDL)
    pid_m = tl.program_id(axis=0)
    pid_h = tl.program_id(axis=1)
    if pid_m * BLOCK_M >= tl.load(num_tokens_post_padded_ptr):
        return
    offs_p = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    p_mask = offs_p < EM
    flat_ids = tl.load(sorted_token_ids_ptr + offs_p, mask=p_mask, other=num_valid_tokens)
    valid = flat_ids < num_valid_tokens
    rows = (flat_ids // TOP_K).to(tl.int64)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    vals = tl.load(x_ptr + rows[:, None] * stride_xm + offs_h[None, :] * stride_xh,
                   mask=valid[:, None] & h_mask[None, :], other=0.0)
    tl.store(out_ptr + offs_p.to(tl.int64)[:, None] * stride_om + offs_h[None, :] * stride_oh, vals,
             mask=p_mask[:, None] & h_mask[None, :])


def gather_sorted_rows(
    x: torch.Tensor, sorted_token_ids: torch.Tensor, num_tokens_post_padded: torch.Tensor, top_k: int
) -> torch.Tensor:
    """(M, H) -> (EM, H): the tokens laid out in the alignment's order, one row per (token, slot), so that
    each BLOCK_M block is a contiguous box a tensor descriptor can fetch."""
    em, hidden = sorted_token_ids.shape[0], x.shape[1]
    out = empty(em, hidden, dtype=x.dtype, device=x.device)
    use_pdl = runtime.pdl(x.device, x.shape[0] * top_k)
    block_h = min(triton.next_power_of_2(hidden), 4096 if runtime.INTERPRET else 512)
    rows_per_program = max(1, (16384 if runtime.INTERPRET else 4096) // block_h)
    grid = (triton.cdiv(em, rows_per_program), triton.cdiv(hidden, block_h))
    with runtime.quiet_interpreter():
        gather_rows_kernel[grid](
            x, out, sorted_token_ids, num_tokens_post_padded, hidden, em, x.shape[0] * top_k,
            x.stride(0), x.stride(1), out.stride(0), out.stride(1),
            TOP_K=top_k, BLOCK_M=rows_per_program, BLOCK_H=block_h,
            USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4,
        )
    return out


def moe_sum(partial: torch.Tensor, out: torch.Tensor, topk_ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(M, k, H) -> out (M, H): the sum over each token's k expert outputs (slots with an id outside
    [0, num_experts) count as zero)."""
    num_tokens, top_k, hidden = partial.shape
    topk_ids = topk_ids.contiguous()
    # One pass over memory: ~4K values per program on a GPU, a few big programs in the interpreter.
    use_pdl = runtime.pdl(out.device, num_tokens * top_k)
    block_h = min(triton.next_power_of_2(hidden), 8192 if runtime.INTERPRET else 1024)
    block_m = min(triton.next_power_of_2(num_tokens), max(1, (65536 if runtime.INTERPRET else 4096) // block_h))
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(hidden, block_h))
    with runtime.quiet_interpreter():
        moe_sum_kernel[grid](
            partial, out, topk_ids, num_tokens, hidden, num_experts,
            partial.stride(0), partial.stride(1), partial.stride(2), out.stride(0), out.stride(1),
            TOP_K=top_k, BLOCK_M=block_m, BLOCK_H=block_h,
            USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4,
        )
    return out


# ----------------------------------------------------------------------------------------------------
# Configurations: a tuned table per (E, N, device) when one exists, else a heuristic
# ----------------------------------------------------------------------------------------------------
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")


def config_file_name(num_experts: int, n: int, device_name: str) -> str:
    """``E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json`` — N is the intermediate size per rank."""
    return f"E={num_experts},N={n},device_name={device_name.replace(' ', '_')}.json"


@functools.cache
def load_config_table(num_experts: int, n: int, device_name: str) -> dict[int, dict] | None:
    """The tuned table {M: config} for this shape and device, or None."""
    path = CONFIG_DIR / config_file_name(num_experts, n, device_name)
    if not path.exists():
        return None
    table = {int(m): cfg for m, cfg in json.loads(path.read_text()).items()}
    for m, cfg in table.items():
        try:
            split_config(cfg)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path.name}: config for M={m}: {exc}") from None
    return table


def default_config(
    num_tokens: int, num_experts: int, n: int, k: int, top_k: int, *, interpret: bool | None = None
) -> dict:
    """A sound configuration for any shape (used when no tuned table exists). ``interpret`` picks the
    interpreter's or the GPU's branch (default: where kernels run now)."""
    if runtime.INTERPRET if interpret is None else interpret:
        # Each program is a round of numpy calls: few, large tiles keep notebooks fast.
        per_expert = triton.cdiv(num_tokens * top_k, num_experts)
        return {
            "BLOCK_SIZE_M": max(16, min(64, triton.next_power_of_2(per_expert))),
            "BLOCK_SIZE_N": max(16, min(128, triton.next_power_of_2(n))),
            "BLOCK_SIZE_K": max(16, min(128, triton.next_power_of_2(k))),
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 1,
        }
    m = num_tokens
    return {
        "BLOCK_SIZE_M": 16 if m <= 32 else 32 if m <= 96 else 64 if m <= 512 else 128,
        "BLOCK_SIZE_N": 64 if m <= 64 else 128,
        "BLOCK_SIZE_K": 128 if m <= 64 else 64,
        "GROUP_SIZE_M": 16 if m / num_experts > 128 else 1,
        "num_warps": 4 if m <= 128 else 8,
        "num_stages": 4 if m <= 32 else 3,
        # The sorted layout through tensor descriptors won from M = 512 on at every TP size tuned on an H100;
        # fused_experts falls back to pointer loads where the GPU or the strides do not allow descriptors.
        "TMA": m >= 512,
    }


def get_config(num_tokens: int, num_experts: int, n: int, hidden: int, top_k: int, device) -> dict:
    """The tuned config for the nearest M when a table exists for (E, N, device); else the default."""
    if not runtime.INTERPRET:
        table = load_config_table(num_experts, n, runtime.device_name(device))
        if table:
            nearest = min(table, key=lambda m: abs(m - num_tokens))
            return dict(table[nearest])
    return default_config(num_tokens, num_experts, n, hidden, top_k)


def split_config(config: dict) -> tuple[dict, dict]:
    """(GEMM1 config, GEMM2 config). A config may carry ``"down"``: overrides for GEMM2 (x w2), which has
    another shape than GEMM1 (N = H instead of I, no gate/up pair). BLOCK_SIZE_M is shared: both GEMMs
    walk the same aligned blocks; so is the optional ``"TMA"`` (bool, default False): lay the tokens out in
    sorted order first and read every tile through tensor descriptors (see :func:`fused_experts`)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    down = config.get("down", {})
    if not isinstance(down, dict) or "BLOCK_SIZE_M" in down or "TMA" in down:
        raise ValueError("config['down'] must be a dict of GEMM2 overrides without BLOCK_SIZE_M or TMA")
    if not isinstance(config.get("TMA", False), bool):
        raise TypeError(f"config['TMA'] must be a bool, got {config['TMA']!r}")
    up = {key: config[key] for key in (*CONFIG_KEYS, "TMA") if key in config}
    for name, cfg in (("config", up), ("config['down']", {**up, **down})):
        missing = set(CONFIG_KEYS) - set(cfg)
        if missing:
            raise ValueError(f"{name} lacks {sorted(missing)}")
        for key in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
            v = cfg[key]
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"{name}[{key!r}] must be a power of two >= 16, got {v!r}")
    return up, {**up, **down}


# ----------------------------------------------------------------------------------------------------
# Host functions
# ----------------------------------------------------------------------------------------------------
def invoke_fused_moe_kernel(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    topk_weights: torch.Tensor,
    sorted_token_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_tokens_post_padded: torch.Tensor,
    *,
    a_rows_div: int,
    c_rows_div: int = 1,
    gated: bool,
    mul_routed_weight: bool,
    config: dict,
    tma: bool = False,
    c_sorted: bool = False,
    num_sms: int | None = None,
) -> None:
    """Launch one grouped GEMM: C[flat id // c_rows_div] (+)= A[flat id // a_rows_div] @ B[expert].T (see
    the kernel). With ``tma`` A is already in sorted order (row = sorted position, :func:`gather_sorted_rows`)
    and A and B are read through tensor descriptors; with ``c_sorted`` C's rows are sorted positions too.
    ``num_sms``: programs that run at once, for splitting a sparse last wave (default: the GPU's
    multiprocessors; no split in the interpreter unless given)."""
    n = c.shape[1]
    k = a.shape[1]
    em = sorted_token_ids.shape[0]
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    tiles = triton.cdiv(em, bm) * triton.cdiv(n, bn)  # the worst case: every row block holds tokens
    if num_sms is None:
        num_sms = multiprocessors(c.device)
    # Waves of num_sms programs: big tiles (BLOCK_SIZE_M >= 64) hold a whole SM each. A split saves at most
    # half a wave: worth it from one wave up to about 24 (measured on an H100, data/bench/). Half tiles
    # need BLOCK_SIZE_N // 2 >= 16.
    split_tail = (SPLIT_TAIL and num_sms is not None and bm >= 64 and bn >= 32
                  and num_sms <= tiles <= 24 * num_sms)
    grid = (tiles + (num_sms // 2 if split_tail else 0),)  # a split tail adds at most num_sms / 2 programs
    compute_fp32 = runtime.INTERPRET and a.dtype != torch.float32
    use_pdl = runtime.pdl(c.device, topk_weights.shape[0])  # M * top_k rows
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk]) if tma else None  # boxes of (BM, BK) rows of A
    b_desc = TensorDescriptor.from_tensor(b, [1, bn, bk]) if tma else None  # (1, BN, BK) of one expert
    b_half_desc = TensorDescriptor.from_tensor(b, [1, bn // 2, bk]) if tma and split_tail else None
    with runtime.quiet_interpreter():
        fused_moe_kernel[grid](
            a, b, c,
            a_desc, b_desc, b_half_desc,
            topk_weights, sorted_token_ids, expert_ids, num_tokens_post_padded,
            n, k, em, topk_weights.shape[0], b.shape[0],  # num_valid_tokens = M * top_k
            a.stride(0), a.stride(1),
            b.stride(0), b.stride(1), b.stride(2),
            c.stride(0), c.stride(1),
            num_sms if split_tail else 1,
            A_ROWS_DIV=a_rows_div,
            C_ROWS_DIV=c_rows_div,
            GATED=gated,
            MUL_ROUTED_WEIGHT=mul_routed_weight,
            TMA=tma,
            C_SORTED=c_sorted,
            SPLIT_TAIL=split_tail,
            COMPUTE_FP32=compute_fp32,
            DOT_PRECISION="ieee" if (a.dtype == torch.float32 or compute_fp32) else "tf32",
            BLOCK_SIZE_M=config["BLOCK_SIZE_M"],
            BLOCK_SIZE_N=config["BLOCK_SIZE_N"],
            BLOCK_SIZE_K=config["BLOCK_SIZE_K"],
            GROUP_SIZE_M=config["GROUP_SIZE_M"],
            USE_PDL=use_pdl,
            launch_pdl=use_pdl,
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )


#: Split a last wave that is at most half full into half-width tiles (see fused_moe_kernel).
SPLIT_TAIL = True


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def multiprocessors(device: torch.device) -> int | None:
    """How many programs of a big tile run at once on this device: one per SM on a GPU. None in the
    interpreter, which runs programs one after another (no waves to balance)."""
    if runtime.INTERPRET or device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def tma_usable(*tensors: torch.Tensor) -> bool:
    """Whether tensor descriptors can describe these tensors here: a Hopper-or-newer GPU (or the
    interpreter), unit stride in the last dimension, 16-byte aligned base and other strides."""
    if not runtime.INTERPRET and not all(t.is_cuda and torch.cuda.get_device_capability(t.device)[0] >= 9
                                         for t in tensors):
        return False
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])
        for t in tensors
    )


#: Let GEMM2 sum the k slots of each token itself where that is exact (see fuse_k_sum).
FUSE_K_SUM = True


def fuse_k_sum(top_k: int, dtype: torch.dtype) -> bool:
    """Whether GEMM2 adds each slot's row straight into the (zeroed) output instead of writing (M*k, H)
    rows for a second pass to sum. Atomic adds land in any order, and the order does not matter for two
    terms only: 0 + a + b and 0 + b + a round the same in every float format (with three it can differ
    in the last bit). The interpreter has no bf16 atomics: there the second pass stays. On an H100 this
    saves the pass's read and write of (M*k, H) (and a launch): 1-2 % of the layer (data/bench/)."""
    return FUSE_K_SUM and top_k <= 2 and not (runtime.INTERPRET and dtype == torch.bfloat16)


_DECODE_LAYOUTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def decode_layout(topk_ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Alignment without the alignment kernel, for one token: its k slots get one block each.

    A single token's k experts are distinct, so "sorting by expert" is just giving slot j block j:
    sorted_token_ids = [0, pad.., 1, pad.., ...], expert_ids = topk_ids itself, a constant padded total.
    Saves a launch on the decode path. The constant part is cached per (k, block, device); None (use the
    kernel) when it is not cached yet and a CUDA graph is being captured.
    """
    top_k = topk_ids.shape[1]
    key = (top_k, block_size, topk_ids.device)
    if key not in _DECODE_LAYOUTS:
        if topk_ids.is_cuda and torch.cuda.is_current_stream_capturing():
            return None
        sorted_ids = torch.full((top_k * block_size,), top_k, dtype=torch.int32, device=topk_ids.device)
        sorted_ids[::block_size] = torch.arange(top_k, dtype=torch.int32, device=topk_ids.device)
        total = torch.tensor([top_k * block_size], dtype=torch.int32, device=topk_ids.device)
        _DECODE_LAYOUTS[key] = (sorted_ids, total)
    sorted_ids, total = _DECODE_LAYOUTS[key]
    return sorted_ids, topk_ids.reshape(-1).to(torch.int32), total


def fused_experts(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    expert_map: torch.Tensor | None = None,
    config: dict | None = None,
    check_ids: bool = True,
) -> torch.Tensor:
    """The experts of an MoE layer for already-routed tokens.

    Args:
        hidden_states: (M, H) tokens, fp32/fp16/bf16.
        w13: (E, 2I, H) [w1; w3] per expert, same dtype; any strides.
        w2: (E, H, I) per expert, same dtype; any strides.
        topk_weights: (M, k) routing weights; topk_ids: (M, k) expert ids (global ids if expert_map).
        expert_map: optional (E_global,) global -> local expert id, -1 for experts on other ranks.
        config: kernel configuration (CONFIG_KEYS, optionally "down": GEMM2 overrides, "TMA": the sorted
            layout read through tensor descriptors, used where the GPU and the strides allow it); default:
            the tuned table for this shape and GPU, else a heuristic.
        check_ids: verify on the host that ids lie in [0, E) (one device sync; turn off when capturing a
            CUDA graph — out-of-range ids are then skipped by the alignment, never read out of bounds).

    Returns:
        (M, H) in the dtype of hidden_states: sum over k of weight * expert(x).
    """
    if check_ids:
        num_tokens, hidden, inter, num_local, top_k = check_moe_args(
            hidden_states, w13, w2, topk_weights, topk_ids, expert_map
        )
    else:
        num_tokens, hidden = hidden_states.shape
        num_local, inter, top_k = w13.shape[0], w13.shape[1] // 2, topk_ids.shape[1]
    if not (hidden_states.dtype == w13.dtype == w2.dtype):
        raise TypeError(
            f"hidden_states ({hidden_states.dtype}), w13 ({w13.dtype}) and w2 ({w2.dtype}) must share a dtype"
        )
    check_kernel_device("hidden_states", hidden_states)
    num_global = num_local if expert_map is None else expert_map.shape[0]
    out = empty(num_tokens, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    if num_tokens == 0:
        return out
    # With one (validated) expert per token GEMM2 writes the output directly. With two, it adds each
    # slot's row into the output, cleared first; otherwise one row per (token, slot), summed at the end.
    direct = top_k == 1 and check_ids
    fused_sum = not direct and fuse_k_sum(top_k, out.dtype)
    if fused_sum:
        out.zero_()  # first, so that the kernels after it follow each other directly (runtime.pdl)
    config_up, config_down = split_config(
        config if config is not None
        else get_config(num_tokens, num_global, inter, hidden, top_k, hidden_states.device)
    )

    layout = None
    if num_tokens == 1 and expert_map is None:
        layout = decode_layout(topk_ids, config_up["BLOCK_SIZE_M"])
    if layout is None:
        layout = moe_align_block_size(topk_ids, config_up["BLOCK_SIZE_M"], num_global, expert_map)
    sorted_token_ids, expert_ids, num_tokens_post_padded = layout
    weights = topk_weights.reshape(-1).to(torch.float32)  # (M * k,) indexed by flat id
    partial = out if direct or fused_sum else empty(num_tokens * top_k, hidden, dtype=out.dtype, device=out.device)
    c_rows_div = top_k if fused_sum else 1
    routing = (weights, sorted_token_ids, expert_ids, num_tokens_post_padded)
    row_bytes_ok = all(n * hidden_states.element_size() % 16 == 0 for n in (hidden, inter))  # a1 and act rows
    if config_up.get("TMA", False) and row_bytes_ok and tma_usable(w13, w2):
        # Large M: copy the tokens into sorted order once, so every A tile is a contiguous box that the
        # copy engine fetches (a gather by pointers costs more, re-done for each column block of N).
        # act stays in sorted order (one row per sorted position) for GEMM2, which scatters to flat ids.
        a1 = gather_sorted_rows(hidden_states, sorted_token_ids, num_tokens_post_padded, top_k)  # (EM, H)
        act = empty(a1.shape[0], inter, dtype=hidden_states.dtype, device=hidden_states.device)
        invoke_fused_moe_kernel(a1, w13, act, *routing, a_rows_div=1, gated=True, mul_routed_weight=False,
                                config=config_up, tma=True, c_sorted=True)
        invoke_fused_moe_kernel(act, w2, partial, *routing, a_rows_div=1, c_rows_div=c_rows_div, gated=False,
                                mul_routed_weight=True, config=config_down, tma=True)
    else:
        act = empty(num_tokens * top_k, inter, dtype=hidden_states.dtype, device=hidden_states.device)
        # GEMM1 + SiLU-and-mul: act = silu(x @ w1[e].T) * (x @ w3[e].T), one row per (token, slot).
        invoke_fused_moe_kernel(hidden_states, w13, act, *routing,
                                a_rows_div=top_k, gated=True, mul_routed_weight=False, config=config_up)
        # GEMM2, times the routing weight: partial = weight * act @ w2[e].T.
        invoke_fused_moe_kernel(act, w2, partial, *routing, a_rows_div=1, c_rows_div=c_rows_div,
                                gated=False, mul_routed_weight=True, config=config_down)
    # Sum over the k experts of each token.
    if direct or fused_sum:
        return out
    return moe_sum(partial.view(num_tokens, top_k, hidden), out, topk_ids, num_global)


def fused_moe(
    hidden_states: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool = True,
    *,
    expert_map: torch.Tensor | None = None,
    config: dict | None = None,
    check_ids: bool = True,
) -> torch.Tensor:
    """Routing (fp32 softmax top-k, Triton) then :func:`fused_experts`."""
    from ..routing import topk_softmax_triton

    if isinstance(router_logits, torch.Tensor) and isinstance(hidden_states, torch.Tensor) and (
        router_logits.dim() == 2 and router_logits.shape[0] != hidden_states.shape[0]
    ):
        raise ValueError(
            f"router_logits has {router_logits.shape[0]} rows but hidden_states has {hidden_states.shape[0]} tokens"
        )
    topk_weights, topk_ids = topk_softmax_triton(router_logits, top_k, renormalize)
    return fused_experts(hidden_states, w13, w2, topk_weights, topk_ids,
                         expert_map=expert_map, config=config, check_ids=check_ids)


__all__ = [
    "fused_moe_kernel",
    "invoke_fused_moe_kernel",
    "fused_experts",
    "fused_moe",
    "moe_sum",
    "fuse_k_sum",
    "multiprocessors",
    "grouped_tile",
    "gather_sorted_rows",
    "tma_usable",
    "get_config",
    "default_config",
    "load_config_table",
    "config_file_name",
    "CONFIG_KEYS",
    "split_config",
    "FLOAT_DTYPES",
]
