"""Benchmark of the whole MoE layer on a GPU, the way serving engines time it.

    python -m moe_lib.perf.bench                      # Mixtral shapes, TP 1/2/4/8, M = 1 ... 4096, bf16
    python -m moe_lib.perf.bench --tp 8 --m 1 64 --impl moe_lib
    python -m moe_lib.perf.bench --power-log clocks.csv   # also sample the SM clock and power draw (nvidia-smi)

Each point: a CUDA graph of ``--calls`` layer calls (routing + alignment + GEMMs + activation + sum
over k) captured once; before each replay a fresh batch of router logits is copied into the graph's
input; replays are timed with CUDA events; the median replay / calls is reported. The transformers-style
loop cannot be captured (its shapes depend on the routing): it is timed eagerly, with events.

Peers in the same run: ``loop`` (one matmul pair per expert, like transformers), ``grouped_mm``
(``torch._grouped_mm`` over expert-sorted tokens, where this torch has it), and two ceilings: a large
device-to-device copy (bytes read + written) and a large bf16 matmul, at the start and again at the end of
the run (``ceilings_end``), the matmul also as a sustained rate. Results go to ``data/bench/<gpu name>.json``.

Each point's ``floor_us`` is the larger of weight bytes / copy bandwidth and FLOPs / matmul rate, for the
routing actually replayed: the distinct experts of each replayed logits draw, median over the timed
replays (``experts_touched``; ``floor_expected_us`` uses the expectation for uniform routing instead).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import time
from pathlib import Path

import torch
import triton

from .. import runtime
from ..kernels import experts
from ..kernels.experts import Fp8, fused_experts, make_plan, plan_call
from ..kernels.quant import quantize_weight
from ..kernels.routing import topk_softmax_triton
from ..reference import silu_and_mul
from .floors import MIXTRAL, floor_us
from .power import PowerLog
from .timing import graph_us, time_calls

M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TP_VALUES = (1, 2, 4, 8)
IMPLS = ("moe_lib", "grouped_mm", "loop")
#: FP8 w8a8 (``--impl moe_lib_fp8 moe_lib_fp8_block``): e4m3 weights, dynamic activation scales, as vLLM's
#: FP8 figures were taken: per tensor, or 128 x 128 weight blocks with activations per token group of 128.
FP8_IMPLS = {"moe_lib_fp8": None, "moe_lib_fp8_block": (128, 128)}
DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "bench"


# ---- ceilings --------------------------------------------------------------------------------------
def measure_ceilings(sustained: bool = False) -> dict[str, float]:
    """Copy bandwidth (TB/s, read + write) and bf16 matmul rate (TFLOP/s) of this card, now: 20 calls of
    each (about 30 ms of matmuls). ``sustained`` adds ``matmul_sustained_TFLOPs``: the matmul timed the way the
    layer is (a CUDA graph of 10, median of 20 replays: about 0.3 s of matmuls, long enough for a card held to
    its power limit to lower its clocks; see notebook 07)."""
    n = 1 << 30  # 1 GiB
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    copy_us = statistics.median(time_calls(lambda: dst.copy_(src)))
    size = 8192
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    mm_us = statistics.median(time_calls(lambda: torch.mm(a, b)))
    result = {"copy_TBps": 2 * n / copy_us / 1e6, "matmul_TFLOPs": 2 * size**3 / mm_us / 1e6}
    if sustained:
        result["matmul_sustained_TFLOPs"] = 2 * size**3 / graph_us(lambda: torch.mm(a, b), 10, 20) / 1e6
    if torch.cuda.get_device_capability() >= (8, 9) and hasattr(torch, "_scaled_mm"):  # e4m3 tensor cores
        a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t().contiguous().t()  # B column-major
        one = torch.ones((), device="cuda")

        def fp8_mm():
            return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        result["fp8_matmul_TFLOPs"] = 2 * size**3 / statistics.median(time_calls(fp8_mm)) / 1e6
    return result


# ---- implementations: each maps (x, w13, w2, logits, top_k) -> (M, H) ------------------------------
def layer_moe_lib(x, w13, w2, logits, top_k, config=None):
    weights, ids = topk_softmax_triton(logits, top_k)
    return fused_experts(x, w13, w2, weights, ids, config=config, check_ids=False)


def layer_loop(x, w13, w2, logits, top_k, config=None):
    """transformers' way: for each expert that got tokens, gather them, run its MLP, scatter-add."""
    weights, ids = topk_softmax_triton(logits, top_k)
    out = torch.zeros_like(x)
    for e in range(w13.shape[0]):
        token, slot = torch.where(ids == e)
        if token.numel() == 0:
            continue
        y = silu_and_mul(x[token] @ w13[e].T) @ w2[e].T
        out.index_add_(0, token, (y * weights[token, slot, None]).to(x.dtype))
    return out


def layer_grouped_mm(x, w13, w2, logits, top_k, config=None):
    """Sort (token, slot) rows by expert, two torch._grouped_mm calls, un-sort, weight, sum over k."""
    weights, ids = topk_softmax_triton(logits, top_k)
    m, e = x.shape[0], w13.shape[0]
    flat = ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)  # (M*k,)
    counts = (flat[:, None] == torch.arange(e, device=x.device)[None, :]).sum(0)  # no host sync
    offs = torch.cumsum(counts, 0).to(torch.int32)  # (E,) group ends
    xs = x[order // top_k]  # (M*k, H)
    act = silu_and_mul(torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs))
    ys = torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)  # (M*k, H)
    out = torch.empty_like(ys)
    out[order] = ys
    out = out.view(m, top_k, -1) * weights.to(x.dtype)[..., None]
    return out.sum(1)


def fp8_layer(block_shape):
    """The FP8 layer: w13 and w2 come as (e4m3 weights, scales) pairs (:func:`fp8_weights`)."""

    def layer(x, w13, w2, logits, top_k, config=None):
        weights, ids = topk_softmax_triton(logits, top_k)
        return fused_experts(x, w13[0], w2[0], weights, ids, config=config, check_ids=False, use_fp8_w8a8=True,
                             w1_scale=w13[1], w2_scale=w2[1], block_shape=block_shape, check_scales=False)

    return layer


def fp8_weights(w13, w2, block_shape):
    """bf16 weights -> ((e4m3 w13, scales), (e4m3 w2, scales)), per tensor or per block."""
    mode = "tensor" if block_shape is None else "block"
    return quantize_weight(w13, mode, block_shape), quantize_weight(w2, mode, block_shape)


LAYERS = {"moe_lib": layer_moe_lib, "loop": layer_loop, "grouped_mm": layer_grouped_mm,
          **{name: fp8_layer(block) for name, block in FP8_IMPLS.items()}}


# ---- timing ----------------------------------------------------------------------------------------
def time_layer_graph(fn, x, w13, w2, top_k, calls=10, replays=20, logits_pool=None, config=None) -> float:
    """µs per layer call: a CUDA graph of `calls` calls, a fresh routing input before each replay."""
    logits = logits_pool[0].clone()
    replay = iter(range(2, 10**9))  # timed replays use pool entries 2, 3, ... (as every recorded run did)

    def fresh_logits():
        logits.copy_(logits_pool[next(replay) % len(logits_pool)])

    return graph_us(lambda: fn(x, w13, w2, logits, top_k, config), calls, replays, warmup=2, before_each=fresh_logits)


def time_layer_eager(fn, x, w13, w2, top_k, replays=20, logits_pool=None, config=None) -> float:
    logits = logits_pool[0].clone()
    replay = iter(range(2, 10**9))  # timed replays use pool entries 2, 3, ... (as every recorded run did)

    def fresh_logits():
        logits.copy_(logits_pool[next(replay) % len(logits_pool)])

    return statistics.median(time_calls(lambda: fn(x, w13, w2, logits, top_k, config), reps=replays, warmup=2,
                                        before_each=fresh_logits))


def bound_layer(tp: int, m: int, config: dict | None = None, seed: int = 2, **options):
    """Mixtral's layer at (tp, M) as one bound plan (:mod:`moe_lib.kernels.experts`), run once: the tensors
    and the steps of a real call. ``options``: the plan's policy keywords."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    e, k, h = MIXTRAL["num_experts"], MIXTRAL["top_k"], MIXTRAL["hidden"]
    w13, w2 = make_weights(tp, gen)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
    logits = torch.randn(m, e, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights, ids = topk_softmax_triton(logits, k)
    bound = plan_call(x, w13, w2, ids, None, config, **options).bind(x, w13, w2, weights, ids)
    bound.run()
    return bound, (x, w13, w2, logits)


def time_steps(num_tokens: int = 8192, tp: int = 8) -> dict:
    """µs of the small steps alone at Mixtral's shape: routing and the plan's alignment, eager launches and
    inside a CUDA graph."""
    bound, (_x, _w13, _w2, logits) = bound_layer(tp, num_tokens)
    k = MIXTRAL["top_k"]
    steps = {"routing": lambda: topk_softmax_triton(logits, k), "align": bound.steps["align"]}
    out = {}
    for name, fn in steps.items():
        out[f"{name}_eager_us"] = statistics.median(time_calls(fn, reps=50, warmup=5))
        out[f"{name}_graph_us"] = graph_us(fn, 10, 50, warmup=3)
    return {"num_tokens": num_tokens, "num_experts": MIXTRAL["num_experts"], "top_k": k,
            "block_size": bound.plan.block_m, **out}


#: The columns of a breakdown: routing, then every step a plan can have, then the whole layer.
BREAKDOWN_COLUMNS = ("routing", *experts.STEPS, "layer")


def breakdown(tp: int, m: int, config: dict | None = None, repeats: int = 20, **options) -> dict[str, float]:
    """µs of each step of one layer call — the plan's own steps, each alone in a CUDA graph of `repeats`
    launches — plus routing and the whole layer; a step the plan does not have is 0."""
    bound, (x, w13, w2, logits) = bound_layer(tp, m, config, **options)
    k = MIXTRAL["top_k"]
    times = {"routing": graph_us(lambda: topk_softmax_triton(logits, k), repeats, reps=10)}
    for name in BREAKDOWN_COLUMNS[1:-1]:
        fn = bound.steps.get(name)
        times[name] = graph_us(fn, repeats, reps=10) if fn else 0.0
    times["layer"] = graph_us(lambda: layer_moe_lib(x, w13, w2, logits, k, bound.plan.config), repeats, reps=10)
    return times


def make_weights(tp: int, gen: torch.Generator, shape: dict = MIXTRAL):
    e, h, n = shape["num_experts"], shape["hidden"], shape["intermediate"] // tp
    w13 = torch.randn(e, 2 * n, h, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(h**-0.5)
    w2 = torch.randn(e, h, n, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(n**-0.5)
    return w13, w2


def run(tps=TP_VALUES, ms=M_VALUES, impls=IMPLS, calls=10, replays=20, out_path=None, verbose=True) -> dict:
    if not runtime.HAS_CUDA:
        raise SystemExit("moe_lib.bench needs a CUDA GPU; recorded results are in data/bench/")
    gen = torch.Generator(device="cuda").manual_seed(0)
    ceilings = measure_ceilings(sustained=True)
    start, t0_unix = time.perf_counter(), time.time()
    name = runtime.device_name()
    result = {
        "gpu": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "method": f"CUDA graph of {calls} layer calls, median of {replays} replays, fresh logits per replay; "
        "loop: eager, CUDA events; t_s = seconds from t0_unix (the first ceilings just measured) to the point's end",
        "shape": dict(MIXTRAL, dtype="bfloat16"),
        "fp8_accumulate": experts.FP8_ACCUMULATE,  # FP8 impls: products per fp32 add (None: Triton's default)
        "ceilings": ceilings,
        "t0_unix": round(t0_unix, 2),  # when t_s = 0, to line the points up with a clock or power log
        "records": [],
        "steps": time_steps(),
    }
    if verbose:
        print(f"{name}  torch {torch.__version__}  triton {triton.__version__}")
        print(f"ceilings: copy {ceilings['copy_TBps']:.2f} TB/s, bf16 matmul {ceilings['matmul_TFLOPs']:.0f} TFLOP/s "
              f"(sustained {ceilings['matmul_sustained_TFLOPs']:.0f})")
        print("steps (8192 tokens, E=8, top-2):", {k: round(v, 1) if isinstance(v, float) else v
                                                   for k, v in result["steps"].items()})
        print(f"{'tp':>3} {'M':>5} {'impl':>11} {'us':>9} {'TFLOP/s':>8} {'w TB/s':>7} {'%floor':>7}")
    top_k, e, h = MIXTRAL["top_k"], MIXTRAL["num_experts"], MIXTRAL["hidden"]
    for tp in tps:
        w13, w2 = make_weights(tp, gen)
        n = w2.shape[2]
        quantized = {impl: fp8_weights(w13, w2, block) for impl, block in FP8_IMPLS.items() if impl in impls}
        for m in ms:
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
            pool = [torch.randn(m, e, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
            # At small M the floor depends on how many distinct experts each drawn routing touches: the
            # floor of a point is the median, over the timed replays, of the floor of the routing replayed.
            touched = [topk_softmax_triton(lg, top_k)[1].unique().numel() for lg in pool]
            replayed = [touched[i % len(pool)] for i in range(2, replays + 2)]  # the entries the timed replays use
            for impl in impls:
                fn = LAYERS[impl]
                if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
                    continue
                fp8 = impl in FP8_IMPLS
                # FP8: weights of one byte, products at the e4m3 matmul rate
                point_ceilings = dict(ceilings, matmul_TFLOPs=ceilings.get("fp8_matmul_TFLOPs")) if fp8 else ceilings
                nbytes = 1 if fp8 else 2
                fl = floor_us(m, tp, point_ceilings, experts=statistics.median(replayed), bytes_per_weight=nbytes)
                expected = floor_us(m, tp, point_ceilings, bytes_per_weight=nbytes)["floor_us"]
                plan_fp8 = Fp8("block" if FP8_IMPLS[impl] else "tensor", FP8_IMPLS[impl]) if fp8 else None
                config = make_plan(m, h, n, top_k, e, dtype=x.dtype, target=runtime.target(x.device),
                                   fp8=plan_fp8).config if impl.startswith("moe_lib") else None
                a, b = quantized[impl] if fp8 else (w13, w2)
                try:
                    if impl == "loop":
                        us = time_layer_eager(fn, x, a, b, top_k, replays, pool, config)
                    else:
                        us = time_layer_graph(fn, x, a, b, top_k, calls, replays, pool, config)
                except Exception as exc:  # a peer that this torch cannot run is recorded, not fatal
                    result["records"].append({"tp": tp, "M": m, "impl": impl, "us": None, "error": repr(exc)[:200]})
                    if verbose:
                        print(f"{tp:>3} {m:>5} {impl:>11}  failed: {repr(exc)[:80]}")
                    continue
                rec = {"tp": tp, "M": m, "impl": impl, "us": round(us, 2), "config": config,
                       "floor_us": round(fl["floor_us"], 2), "floor_expected_us": round(expected, 2),
                       "experts_touched": statistics.median(replayed),
                       "t_s": round(time.perf_counter() - start, 1)}
                result["records"].append(rec)
                if verbose:
                    print(f"{tp:>3} {m:>5} {impl:>11} {us:>9.1f} {fl['flops'] / us / 1e6:>8.1f} "
                          f"{fl['weight_bytes'] / us / 1e6:>7.2f} {100 * fl['floor_us'] / us:>6.0f}%")
        del w13, w2, quantized
        torch.cuda.empty_cache()
    # The same ceilings once more, with the card as warm as the last points found it.
    result["ceilings_end"] = measure_ceilings(sustained=True)
    result["ceilings_end"]["t_s"] = round(time.perf_counter() - start, 1)
    if verbose:
        end = result["ceilings_end"]
        print(f"ceilings at the end: copy {end['copy_TBps']:.2f} TB/s, bf16 matmul {end['matmul_TFLOPs']:.0f} "
              f"TFLOP/s (sustained {end['matmul_sustained_TFLOPs']:.0f})")
    out_path = Path(out_path) if out_path else DATA_DIR / f"{name.replace(' ', '_')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    if verbose:
        print(f"wrote {out_path}")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tp", type=int, nargs="+", default=list(TP_VALUES))
    p.add_argument("--m", type=int, nargs="+", default=list(M_VALUES))
    p.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS + tuple(FP8_IMPLS))
    p.add_argument("--fp8-accumulate", type=int, default=None,
                   help="FP8: products summed in the tensor core between fp32 adds (0: Triton's default, the whole "
                        "K tile loop); default: experts.FP8_ACCUMULATE")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--out", default=None, help="JSON path (default: data/bench/<gpu name>.json)")
    p.add_argument("--breakdown", action="store_true", help="time each step of the layer at each (tp, M) instead")
    p.add_argument("--power-log", default=None, help="CSV path: sample clocks and power during the run (nvidia-smi)")
    a = p.parse_args(argv)
    if a.fp8_accumulate is not None:  # an A/B knob for one run: the plan reads the policy at every call
        experts.FP8_ACCUMULATE = a.fp8_accumulate or None
    if a.breakdown:
        print(f"{'tp':>3} {'M':>5}  " + "  ".join(f"{name:>8}" for name in BREAKDOWN_COLUMNS))
        for tp in a.tp:
            for m in a.m:
                r = breakdown(tp, m)
                print(f"{tp:>3} {m:>5}  " + "  ".join(f"{v:8.1f}" for v in r.values()), flush=True)
        return
    with PowerLog(a.power_log) if a.power_log else contextlib.nullcontext():
        run(a.tp, a.m, a.impl, a.calls, a.replays, a.out)


if __name__ == "__main__":
    main()
