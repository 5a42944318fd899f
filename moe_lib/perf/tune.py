"""Search kernel configurations on the GPU and write tuned tables for ``get_config``.

    python -m moe_lib.perf.tune                  # Mixtral: N = 14336/tp for tp in 1 2 4 8
    python -m moe_lib.perf.tune --tp 8 --m 1 16 64
    python -m moe_lib.perf.tune --fp8 tensor         # FP8 w8a8 tables (",dtype=fp8_w8a8"); --fp8 block: [128,128]
    python -m moe_lib.perf.tune --jobs 12            # compile the search's kernels in 12 processes first
    python -m moe_lib.perf.tune --check-lookup --m 3 12 40 80 160 320 640 1280 2560 --out lookup.json

For each (N, M) and each BLOCK_SIZE_M (shared by both GEMMs, since they walk the same aligned blocks),
GEMM1 (x w13, gate and up) and GEMM2 (x w2) are timed *separately* over their candidates, each alone in a
CUDA graph, as steps of the plan that ``fused_experts`` would run with that config; the BLOCK_SIZE_M whose
alignment + best GEMM1 + best GEMM2 is fastest wins. From M = 512 on each BLOCK_SIZE_M >= 64 is also tried
with ``"TMA"`` (tokens copied into sorted order, tiles read through tensor descriptors), the copy's time
counted. The table goes to ``moe_lib/kernels/configs/E=<E>,N=<N>,device_name=<gpu>.json`` (vLLM's name)
mapping M to a config whose ``"down"`` entry holds GEMM2's own tile sizes; the lookup takes the nearest M by ratio
(``configs.nearest_row``; ``--check-lookup`` times the layer between rows).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
import zlib
from pathlib import Path

import torch
import triton

from .. import runtime
from ..kernels.configs import CONFIG_DIR, config_file_name, nearest_row, read_config_table
from ..kernels.experts import Fp8, plan_call
from ..kernels.routing import topk_softmax_triton
from .bench import MIXTRAL, fp8_weights, make_weights
from .timing import graph_us

#: The M grid of the tables: about two rows per doubling of M (the lookup takes the nearest row by ratio).
TUNE_M = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
SMEM_BYTES = 227 * 1024  # an H100 block's shared memory
#: ``--fp8``: the weight-scale layout -> the table's block_shape (vLLM's names)
FP8_BLOCKS = {"tensor": None, "block": (128, 128)}


def block_m_choices(m: int) -> tuple[int, ...]:
    """Row-block heights worth trying. About M * top_k / E rows land on each expert: at M = 256 (top-2, E = 8)
    about 64, and with the routing's skew up to ~74 — two 64-row tiles but one 128-row tile. The maintainers
    measured 12 row tiles per GEMM with BLOCK_M 64 against 8 with 128 there, so 128 is tried from M = 128."""
    return (16,) if m <= 32 else (16, 32, 64) if m <= 96 else (32, 64, 128) if m <= 384 else (64, 128)


def candidates(m: int, block_m: int, gated: bool, element: int = 2, max_k: int | None = None) -> list[dict]:
    """Tile shapes to try for one GEMM. Small M is bandwidth-bound (skinny tiles, deep K, deep pipelines);
    large M is compute-bound (big tiles, 8 warps, grouped launch order for L2 reuse). ``element``: bytes per
    A/B value (1 for FP8: twice the K per stage fits); ``max_k``: the largest BLOCK_SIZE_K (FP8 blocks)."""
    fp8 = element == 1  # twice the K per stage fits
    if m <= 32:
        space = dict(BLOCK_SIZE_N=[16, 32, 64], BLOCK_SIZE_K=[128, 256], GROUP_SIZE_M=[1], num_warps=[4],
                     num_stages=[3, 4] if fp8 else [3, 4, 5])
    elif m <= 256:
        space = dict(BLOCK_SIZE_N=[64, 128, 256], BLOCK_SIZE_K=[128, 256] if fp8 else [64, 128],
                     GROUP_SIZE_M=[1], num_warps=[4, 8], num_stages=[3, 4])
    elif fp8:
        # Measured on the H200 (data/bench/history/fp8_large_m_H200/, fp8_fused_quant_H200/promotion.json): 256-deep
        # K tiles lost at every large-M point; 4 stages and 128 x 128 gated tiles won with whole-K sums.
        space = dict(BLOCK_SIZE_N=[64, 128, 256], BLOCK_SIZE_K=[128], GROUP_SIZE_M=[1, 16], num_warps=[8],
                     num_stages=[3, 4])
    else:
        space = dict(BLOCK_SIZE_N=[128, 256], BLOCK_SIZE_K=[64, 128], GROUP_SIZE_M=[1, 16], num_warps=[8],
                     num_stages=[3, 4])
    if max_k is not None:
        space["BLOCK_SIZE_K"] = sorted({min(v, max_k) for v in space["BLOCK_SIZE_K"]})
    out = []
    for values in itertools.product(*space.values()):
        cfg = {"BLOCK_SIZE_M": block_m, **dict(zip(space, values, strict=True))}
        b_tiles = 2 if gated else 1  # gate and up tiles
        # fp32 accumulators must fit in registers; the pipelined tiles in shared memory.
        if cfg["BLOCK_SIZE_N"] * block_m * b_tiles > 128 * 256:
            continue
        smem = cfg["num_stages"] * cfg["BLOCK_SIZE_K"] * (block_m + b_tiles * cfg["BLOCK_SIZE_N"]) * element
        if smem > SMEM_BYTES:
            continue
        out.append(cfg)
    return out


def tma_choices(m: int, block_m: int, fp8: bool = False) -> tuple[bool, ...]:
    """The sorted layout read through tensor descriptors pays for its extra copy only at larger M (and
    with row blocks big enough for the copy engine to matter). FP8 reads through pointers only."""
    return (False, True) if m >= 512 and block_m >= 64 and not fp8 else (False,)


def _best(time_one, configs: list[dict]) -> tuple[float, dict]:
    results = []
    for cfg in configs:
        try:
            results.append((time_one(cfg), cfg))
        except Exception as exc:  # a candidate that does not compile or launch is skipped
            print(f"  skip {cfg}: {type(exc).__name__}")
    return min(results, key=lambda r: r[0])


def _down(config: dict) -> dict:
    """GEMM2's overrides: its config without the shared BLOCK_SIZE_M."""
    return {key: v for key, v in config.items() if key != "BLOCK_SIZE_M"}


def searches(m: int, scheme: Fp8 | None = None):
    """The searches of one point: (BLOCK_SIZE_M, TMA, GEMM1's candidates, GEMM2's candidates) for each row-block
    height and layout tried. ``scheme``: the FP8 scheme (one-byte tiles; K tiles within its scale blocks)."""
    element = 2 if scheme is None else 1
    max_k = None if scheme is None or scheme.block_shape is None else scheme.block_shape[1]
    for block_m in block_m_choices(m):
        for tma in tma_choices(m, block_m, scheme is not None):
            yield (block_m, tma, candidates(m, block_m, True, element, max_k),
                   candidates(m, block_m, False, element, max_k))


def point_configs(m: int, scheme: Fp8 | None = None):
    """Every whole config the search of one point runs: GEMM1's candidates with GEMM2's first, then GEMM2's with
    GEMM1's first. (The search pairs GEMM2's candidates with GEMM1's winner instead; the kernels are the same.)"""
    for _block_m, tma, ups, downs in searches(m, scheme):
        yield from ({**c, "TMA": tma, "down": _down(downs[0])} for c in ups)
        yield from ({**ups[0], "TMA": tma, "down": _down(c)} for c in downs)


def _bind(x, w13, w2, weights, ids, fp8, config):
    """The plan ``fused_experts`` would run with this config, bound and run once (real values in every buffer:
    GEMM2 reads what GEMM1 wrote)."""
    scheme, scales = fp8 or (None, None)
    b = plan_call(x, w13, w2, ids, None, config, fp8=scheme).bind(x, w13, w2, weights, ids, scales=scales)
    b.run()
    return b


def tune_point(x, w13, w2, weights, ids, fp8=None) -> tuple[float, dict]:
    """The best config for one (weights, M), and the µs of alignment (+ gather) + GEMM1 + GEMM2 with it.

    Every candidate runs through the plan (:func:`moe_lib.kernels.experts.plan_call`), so it is timed with
    exactly the layout, k-sum, split and buffers that ``fused_experts`` would use with it. ``fp8``: (scheme
    :class:`~moe_lib.kernels.experts.Fp8`, scales dict) with e4m3 w13 and w2; the quantizations of x and
    act are counted too (they do not depend on the config)."""
    m = x.shape[0]

    def bound(config):
        return _bind(x, w13, w2, weights, ids, fp8, config)

    best = None
    for _block_m, tma, ups, downs in searches(m, None if fp8 is None else fp8[0]):
        first_down = _down(downs[0])
        probe = bound({**ups[0], "TMA": tma, "down": first_down})
        if tma and not probe.plan.tma:
            continue  # descriptors are not possible here: the plan fell back to pointer loads
        fixed = ("align", "gather", "quant1", "quant2")
        align_us = sum(graph_us(probe.steps[s]) for s in fixed if s in probe.steps)
        # GEMM1's time does not depend on GEMM2's config, so each GEMM is searched on its own.
        up_us, up = _best(lambda c, t=tma, d=first_down: graph_us(bound({**c, "TMA": t, "down": d}).steps["gemm1"]),
                          ups)
        down_us, down = _best(lambda c, t=tma, u=up: graph_us(bound({**u, "TMA": t, "down": _down(c)}).steps["gemm2"]),
                              downs)
        total = align_us + up_us + down_us
        if best is None or total < best[0]:
            best = (total, {**up, **({"TMA": True} if tma else {}), "down": _down(down)})
    return best


def _point_inputs(m: int, gen: torch.Generator):
    """M tokens and their top-2 routing, as the tuner times them."""
    e, k, h = MIXTRAL["num_experts"], MIXTRAL["top_k"], MIXTRAL["hidden"]
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights, ids = topk_softmax_triton(torch.randn(m, e, device="cuda", generator=gen), k)
    return x, weights, ids


def _tp_weights(tp: int, gen: torch.Generator, fp8: str | None):
    """(w13, w2, (scheme, scales) or None) of Mixtral at this TP size."""
    w13, w2 = make_weights(tp, gen)
    if fp8 is None:
        return w13, w2, None
    block = FP8_BLOCKS[fp8]
    (w13, s13), (w2, s2) = fp8_weights(w13, w2, block)
    return w13, w2, (Fp8(fp8, block), {"w1_scale": s13, "w2_scale": s2})


def _zero_weights(tp: int, fp8: str | None):
    """:func:`_tp_weights`' shapes, dtypes and strides, all zeros (scales ones): what a kernel compiles for, without
    the memory of quantizing (a dozen workers hold these at once)."""
    e, h, n = MIXTRAL["num_experts"], MIXTRAL["hidden"], MIXTRAL["intermediate"] // tp
    shapes = ((e, 2 * n, h), (e, h, n))
    if fp8 is None:
        return *(torch.zeros(shape, device="cuda", dtype=torch.bfloat16) for shape in shapes), None
    w13, w2 = (torch.zeros(shape, device="cuda", dtype=torch.uint8).view(torch.float8_e4m3fn) for shape in shapes)
    block = FP8_BLOCKS[fp8]  # e4m3 zeros are byte zeros; scales (E,) per tensor, (E, rows/bn, cols/bk) per block
    s13, s2 = (torch.ones(e if block is None else (e, triton.cdiv(rows, block[0]), triton.cdiv(cols, block[1])),
                          device="cuda") for _, rows, cols in shapes)
    return w13, w2, (Fp8(fp8, block), {"w1_scale": s13, "w2_scale": s2})


def _compile_share(tp: int, ms: tuple[int, ...], fp8: str | None, share: int, jobs: int) -> int:
    """One worker of :func:`precompile`: run once every config of the search whose hash falls to ``share`` (so
    each kernel is compiled by one worker only, into Triton's on-disk cache). Returns how many it ran."""
    gen = torch.Generator(device="cuda").manual_seed(share)
    w13, w2, quant = _zero_weights(tp, fp8)
    ran = 0
    for m in ms:
        x, weights, ids = _point_inputs(m, gen)
        for config in point_configs(m, None if quant is None else quant[0]):
            if zlib.crc32(json.dumps(config, sort_keys=True).encode()) % jobs != share:
                continue
            with contextlib.suppress(Exception):  # the search itself reports what fails
                _bind(x, w13, w2, weights, ids, quant, config)
                ran += 1
    torch.cuda.synchronize()
    return ran


def worker_bytes(tp: int, ms, fp8: str | None = None) -> int:
    """About the GPU memory one :func:`precompile` worker holds: its zero weights, the largest call's buffers (x,
    the sorted copy, act, the output; top-2, E = 8, each row padded) and 1 GiB for the CUDA context."""
    e, k, h, n = MIXTRAL["num_experts"], MIXTRAL["top_k"], MIXTRAL["hidden"], MIXTRAL["intermediate"] // tp
    element = 2 if fp8 is None else 1
    rows = max(ms) * k + e * 128
    return 3 * e * n * h * element + 2 * (max(ms) * h + rows * (h + n) + max(ms) * h) + (1 << 30)


def fit_jobs(jobs: int, free_bytes: int, per_worker: int) -> int:
    """As many of ``jobs`` workers as fit in 80 % of the free GPU memory (at least one)."""
    return max(1, min(jobs, int(0.8 * free_bytes) // per_worker))


def precompile(tp: int, ms, fp8: str | None = None, jobs: int = 8) -> tuple[float, int]:
    """Compile every kernel the search of these points will time, in ``jobs`` processes at once (fewer if the GPU's
    free memory holds fewer workers): Triton compiles on one CPU core per kernel, and a search runs hundreds of
    configs. The search then loads them from Triton's cache. Returns (seconds it took, workers it ran)."""
    start = time.perf_counter()
    jobs = fit_jobs(jobs, torch.cuda.mem_get_info()[0], worker_bytes(tp, ms, fp8))
    ctx = torch.multiprocessing.get_context("spawn")
    with ctx.Pool(jobs) as pool:
        pool.starmap(_compile_share, [(tp, tuple(ms), fp8, share, jobs) for share in range(jobs)])
    return time.perf_counter() - start, jobs


def _write_table(path, table: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(m): table[m] for m in sorted(table)}, indent=1) + "\n")


def tune(tps=(1, 2, 4, 8), ms=TUNE_M, verbose=True, fp8: str | None = None, jobs: int = 0) -> dict[int, dict]:
    """Tune and write the tables of these TP sizes; ``fp8``: "tensor" or "block" for FP8 tables; ``jobs``:
    processes that compile the search's kernels first (0: each compiles when first timed). The table is written
    after every point, so an interrupted search keeps what it found."""
    if not runtime.HAS_CUDA:
        raise SystemExit("moe_lib.perf.tune needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    e = MIXTRAL["num_experts"]
    name = runtime.device_name()
    written = {}
    for tp in tps:
        if jobs:
            seconds, workers = precompile(tp, ms, fp8, jobs)
            if verbose:
                print(f"tp={tp}: kernels compiled in {workers} processes in {seconds:.0f} s", flush=True)
        w13, w2, quant = _tp_weights(tp, gen, fp8)
        n = w2.shape[2]
        path = CONFIG_DIR / config_file_name(e, n, name, None if fp8 is None else "fp8_w8a8",
                                             None if fp8 is None else FP8_BLOCKS[fp8])
        # Re-tuning some M keeps the other rows of an existing table.
        table = read_config_table(path) if path.exists() else {}
        for m in ms:
            start = time.perf_counter()
            x, weights, ids = _point_inputs(m, gen)
            us, table[m] = tune_point(x, w13, w2, weights, ids, quant)
            _write_table(path, table)
            if verbose:
                print(f"tp={tp} N={n} M={m:>5}: {us:8.1f} us  {table[m]}  ({time.perf_counter() - start:.0f} s)",
                      flush=True)
        written[n] = table
        if verbose:
            print(f"wrote {path.name}", flush=True)
        del w13, w2, quant
        torch.cuda.empty_cache()
    return written


def check_lookup(tps, ms, out_path=None, verbose=True) -> list[dict]:
    """Between the rows of a table: the whole layer at each M of ``ms`` (off the grid), timed as the bench times
    it with the config of the row below and of the row above, and the row each lookup rule takes (the nearest M by
    difference, vLLM's rule, or by ratio, this project's :func:`~moe_lib.kernels.configs.nearest_row`)."""
    from .bench import layer_moe_lib, time_layer_graph

    gen = torch.Generator(device="cuda").manual_seed(0)
    e, k, h = MIXTRAL["num_experts"], MIXTRAL["top_k"], MIXTRAL["hidden"]
    rows = []
    for tp in tps:
        w13, w2 = make_weights(tp, gen)
        n = w2.shape[2]
        table = read_config_table(CONFIG_DIR / config_file_name(e, n, runtime.device_name()))
        for m in ms:
            below, above = max((r for r in table if r <= m), default=None), min((r for r in table if r >= m),
                                                                                 default=None)
            if below is None or above is None or below == above:
                continue
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
            pool = [torch.randn(m, e, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
            us = {r: time_layer_graph(layer_moe_lib, x, w13, w2, k, 10, 10, pool, table[r]) for r in (below, above)}
            row = {"tp": tp, "M": m, "below": below, "above": above, "us_below": round(us[below], 2),
                   "us_above": round(us[above], 2), "faster": min(us, key=us.get),
                   "nearest": min((below, above), key=lambda r: (abs(r - m), r)),
                   "nearest_log": nearest_row({r: {"M": r} for r in (below, above)}, m)["M"]}
            rows.append(row)
            if verbose:
                print(row, flush=True)
        del w13, w2
        torch.cuda.empty_cache()
    if out_path:
        Path(out_path).write_text(json.dumps({"gpu": runtime.device_name(), "rows": rows}, indent=1) + "\n")
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tp", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--m", type=int, nargs="+", default=list(TUNE_M))
    p.add_argument("--fp8", choices=tuple(FP8_BLOCKS), default=None, help="tune FP8 w8a8 tables of this scale layout")
    p.add_argument("--jobs", type=int, default=0,
                   help="compile the search's kernels in this many processes first (0: as they are first timed)")
    p.add_argument("--check-lookup", action="store_true",
                   help="time the layer at each --m with the table rows below and above it (bf16) instead of tuning")
    p.add_argument("--out", default=None, help="--check-lookup: a JSON file for the rows")
    a = p.parse_args(argv)
    if a.check_lookup:
        check_lookup(a.tp, a.m, a.out)
    else:
        tune(a.tp, a.m, fp8=a.fp8, jobs=a.jobs)


if __name__ == "__main__":
    main()
