"""Benchmark of the whole MoE layer on a GPU, the way serving engines time it.

    python -m moe_lib.bench                      # Mixtral shapes, TP 1/2/4/8, M = 1 ... 4096, bf16
    python -m moe_lib.bench --tp 8 --m 1 64 --impl moe_lib
    python -m moe_lib.bench --power-log clocks.csv   # also sample the SM clock and power draw (nvidia-smi)

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
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton

from . import runtime
from .kernels.fused_moe import fused_experts, get_config
from .reference import silu_and_mul
from .routing import topk_softmax_triton

MIXTRAL = dict(num_experts=8, top_k=2, hidden=4096, intermediate=14336)
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TP_VALUES = (1, 2, 4, 8)
IMPLS = ("moe_lib", "grouped_mm", "loop")
DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "bench"


# ---- ceilings --------------------------------------------------------------------------------------
def _time_events(fn: Callable[[], None], reps: int = 20, warmup: int = 3) -> list[float]:
    """Per-call times in µs, measured with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return times


def measure_ceilings(sustained: bool = False) -> dict[str, float]:
    """Copy bandwidth (TB/s, read + write) and bf16 matmul rate (TFLOP/s) of this card, now: 20 calls of
    each (about 30 ms of matmuls). ``sustained`` adds ``matmul_sustained_TFLOPs``: the matmul timed the way the
    layer is (a CUDA graph of 10, median of 20 replays: about 0.3 s of matmuls, long enough for a card held to
    its power limit to lower its clocks; see notebook 06)."""
    n = 1 << 30  # 1 GiB
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    copy_us = statistics.median(_time_events(lambda: dst.copy_(src)))
    size = 8192
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    mm_us = statistics.median(_time_events(lambda: torch.mm(a, b)))
    result = {"copy_TBps": 2 * n / copy_us / 1e6, "matmul_TFLOPs": 2 * size**3 / mm_us / 1e6}
    if sustained:
        result["matmul_sustained_TFLOPs"] = 2 * size**3 / graph_us(lambda: torch.mm(a, b), 10, 20) / 1e6
    return result


# ---- clocks and power ------------------------------------------------------------------------------
POWER_LOG_COLUMNS = ("unix_s", "sm_clock_MHz", "power_W", "temperature_C", "throttle_reasons")
#: nvidia-smi's throttle-reason bit for "software power cap": the card holds itself to its power limit.
POWER_CAP_BIT = 0x4


class PowerLog:
    """While the ``with`` block runs, sample the GPU's SM clock, power draw, temperature and throttle reasons
    (nvidia-smi, about every ``period`` s, from a background thread) into a CSV file with a header line:
    the clocks a benchmark ran at, to line up with its records' ``t_s`` (see notebook 06)."""

    def __init__(self, path, period: float = 0.2, gpu: int = 0):
        self.path, self.period, self.gpu = Path(path), period, gpu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = ["nvidia-smi", f"--id={self.gpu}", "--format=csv,noheader,nounits",
                 "--query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"]
        with self.path.open("w") as f:
            f.write(",".join(POWER_LOG_COLUMNS) + "\n")
            while not self._stop.is_set():
                now = time.time()
                reply = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
                if reply:
                    f.write(f"{now:.3f}," + ",".join(v.strip() for v in reply.split(",")) + "\n")
                    f.flush()
                self._stop.wait(self.period)

    def __enter__(self) -> PowerLog:
        if shutil.which("nvidia-smi") is None:
            raise SystemExit("--power-log needs nvidia-smi")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def read_power_log(path) -> dict[str, list]:
    """A :class:`PowerLog` file as columns: ``unix_s``, ``sm_clock_MHz``, ``power_W``, ``temperature_C``
    (floats) and ``throttle_reasons`` (ints); lines starting with ``#`` are comments."""
    columns = {name: [] for name in POWER_LOG_COLUMNS}
    lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines or lines[0].split(",") != list(POWER_LOG_COLUMNS):
        raise ValueError(f"{path}: the first line must be the header {','.join(POWER_LOG_COLUMNS)}")
    for number, line in enumerate(lines[1:], start=2):
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(POWER_LOG_COLUMNS):
            raise ValueError(f"{path}: line {number} has {len(values)} fields, expected {len(POWER_LOG_COLUMNS)}")
        try:
            for name, v in zip(POWER_LOG_COLUMNS[:-1], values, strict=False):
                columns[name].append(float(v))
            columns["throttle_reasons"].append(int(values[-1], 16))
        except ValueError:
            raise ValueError(f"{path}: line {number} is not numeric: {line!r}") from None
    return columns


# ---- floors ----------------------------------------------------------------------------------------
def expected_experts_touched(m: int, num_experts: int, top_k: int) -> float:
    """Expected number of distinct experts that M uniformly routed tokens hit."""
    return num_experts * (1 - (1 - top_k / num_experts) ** m)


def floor_us(m: int, tp: int, ceilings: dict[str, float], shape: dict = MIXTRAL,
             experts: float | None = None) -> dict[str, float]:
    """Bytes over bandwidth (the touched experts' weights, once) and FLOPs over the matmul rate. ``experts``:
    how many distinct experts the routing touched (default: the expectation for uniform routing)."""
    e, k, h, n = shape["num_experts"], shape["top_k"], shape["hidden"], shape["intermediate"] // tp
    bytes_per_expert = 3 * h * n * 2  # w1, w3, w2 in bf16
    weight_bytes = (expected_experts_touched(m, e, k) if experts is None else experts) * bytes_per_expert
    flops = 2 * m * k * 3 * h * n
    mem = weight_bytes / (ceilings["copy_TBps"] * 1e12) * 1e6
    mma = flops / (ceilings["matmul_TFLOPs"] * 1e12) * 1e6
    return {"weight_bytes": weight_bytes, "flops": flops, "memory_us": mem, "compute_us": mma,
            "floor_us": max(mem, mma)}


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


LAYERS = {"moe_lib": layer_moe_lib, "loop": layer_loop, "grouped_mm": layer_grouped_mm}


# ---- timing ----------------------------------------------------------------------------------------
def time_layer_graph(fn, x, w13, w2, top_k, calls=10, replays=20, logits_pool=None, config=None) -> float:
    """µs per layer call: a CUDA graph of `calls` calls, a fresh routing input before each replay."""
    logits = logits_pool[0].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles the kernels) outside the graph
        for _ in range(2):
            fn(x, w13, w2, logits, top_k, config)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn(x, w13, w2, logits, top_k, config)
    times = []
    for i in range(replays + 2):
        logits.copy_(logits_pool[i % len(logits_pool)])
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        if i >= 2:
            times.append(start.elapsed_time(end) * 1e3 / calls)
    del graph
    return statistics.median(times)


def time_layer_eager(fn, x, w13, w2, top_k, replays=20, logits_pool=None, config=None) -> float:
    logits = logits_pool[0].clone()

    def call():
        fn(x, w13, w2, logits, top_k, config)

    times = []
    for i in range(replays + 2):
        logits.copy_(logits_pool[i % len(logits_pool)])
        times.extend(_time_events(call, reps=1, warmup=0))
    return statistics.median(times[2:])


def time_steps(num_tokens: int = 8192, num_experts: int = 8, top_k: int = 2, block_size: int = 64) -> dict:
    """µs of the small steps alone: routing and alignment (eager launches and inside a CUDA graph)."""
    from .kernels.align import moe_align_block_size

    gen = torch.Generator(device="cuda").manual_seed(1)
    logits = torch.randn(num_tokens, num_experts, device="cuda", generator=gen)
    _, ids = topk_softmax_triton(logits, top_k)
    steps = {
        "routing": lambda: topk_softmax_triton(logits, top_k),
        "align": lambda: moe_align_block_size(ids, block_size, num_experts),
    }
    out = {}
    for name, fn in steps.items():
        out[f"{name}_eager_us"] = statistics.median(_time_events(fn, reps=50, warmup=5))
        graph = torch.cuda.CUDAGraph()
        fn()
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            for _ in range(10):
                fn()
        out[f"{name}_graph_us"] = statistics.median(_time_events(graph.replay, reps=50, warmup=3)) / 10
    return {"num_tokens": num_tokens, "num_experts": num_experts, "top_k": top_k, "block_size": block_size, **out}


def graph_us(fn: Callable[[], object], repeats: int = 10, reps: int = 5) -> float:
    """µs per call of `fn`, captured `repeats` times in one CUDA graph (no launch gaps), median replay."""
    fn()  # compile / warm up outside the graph
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    us = statistics.median(_time_events(graph.replay, reps=reps, warmup=1)) / repeats
    del graph
    return us


def breakdown(tp: int, m: int, config: dict | None = None, repeats: int = 20) -> dict[str, float]:
    """µs of each step of one layer call (each step alone in a CUDA graph of `repeats` launches)."""
    from .kernels.align import moe_align_block_size
    from .kernels.fused_moe import (
        fuse_k_sum,
        gather_sorted_rows,
        invoke_fused_moe_kernel,
        moe_sum,
        split_config,
        tma_usable,
    )

    gen = torch.Generator(device="cuda").manual_seed(2)
    e, k, h = MIXTRAL["num_experts"], MIXTRAL["top_k"], MIXTRAL["hidden"]
    w13, w2 = make_weights(tp, gen)
    n = w2.shape[2]
    config = config or get_config(m, e, n, h, k, "cuda")
    config_up, config_down = split_config(config)
    x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
    logits = torch.randn(m, e, device="cuda", dtype=torch.bfloat16, generator=gen)
    weights, ids = topk_softmax_triton(logits, k)
    bm = config_up["BLOCK_SIZE_M"]
    routing = moe_align_block_size(ids, bm, e)
    flat_w = weights.reshape(-1)
    tma = config_up.get("TMA", False) and tma_usable(w13, w2)
    if tma:  # the sorted layout, as fused_experts runs it
        a, a_rows_div = gather_sorted_rows(x, routing[0], routing[2], k), 1
    else:
        a, a_rows_div = x, k
    act = torch.empty(a.shape[0] if tma else m * k, n, device="cuda", dtype=torch.bfloat16)
    out = torch.zeros(m, h, device="cuda", dtype=torch.bfloat16)
    fused = fuse_k_sum(k, out.dtype)  # GEMM2 adds into the cleared output, or writes rows for a sum pass
    partial = out if fused else torch.empty(m * k, h, device="cuda", dtype=torch.bfloat16)
    steps = {
        "routing": lambda: topk_softmax_triton(logits, k),
        "clear": (lambda: out.zero_()) if fused else None,
        "align": lambda: moe_align_block_size(ids, bm, e),
        "gather": (lambda: gather_sorted_rows(x, routing[0], routing[2], k)) if tma else None,
        "gemm1": lambda: invoke_fused_moe_kernel(a, w13, act, flat_w, *routing, a_rows_div=a_rows_div, gated=True,
                                                 mul_routed_weight=False, config=config_up, tma=tma, c_sorted=tma),
        "gemm2": lambda: invoke_fused_moe_kernel(act, w2, partial, flat_w, *routing, a_rows_div=1,
                                                 c_rows_div=k if fused else 1, gated=False,
                                                 mul_routed_weight=True, config=config_down, tma=tma),
        "sum_k": None if fused else (lambda: moe_sum(partial.view(m, k, h), out, ids, e)),
        "layer": lambda: layer_moe_lib(x, w13, w2, logits, k, config),
    }
    return {name: graph_us(fn, repeats, reps=10) if fn else 0.0 for name, fn in steps.items()}


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
        for m in ms:
            x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16, generator=gen)
            pool = [torch.randn(m, e, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
            # At small M the floor depends on how many distinct experts each drawn routing touches: the
            # floor of a point is the median, over the timed replays, of the floor of the routing replayed.
            touched = [topk_softmax_triton(lg, top_k)[1].unique().numel() for lg in pool]
            replayed = [touched[i % len(pool)] for i in range(2, replays + 2)]
            fl = floor_us(m, tp, ceilings, experts=statistics.median(replayed))
            expected = floor_us(m, tp, ceilings)["floor_us"]
            for impl in impls:
                fn = LAYERS[impl]
                if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
                    continue
                config = get_config(m, e, n, h, top_k, "cuda") if impl == "moe_lib" else None
                try:
                    if impl == "loop":
                        us = time_layer_eager(fn, x, w13, w2, top_k, replays, pool, config)
                    else:
                        us = time_layer_graph(fn, x, w13, w2, top_k, calls, replays, pool, config)
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
        del w13, w2
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
    p.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--out", default=None, help="JSON path (default: data/bench/<gpu name>.json)")
    p.add_argument("--breakdown", action="store_true", help="time each step of the layer at each (tp, M) instead")
    p.add_argument("--power-log", default=None, help="CSV path: sample clocks and power during the run (nvidia-smi)")
    a = p.parse_args(argv)
    if a.breakdown:
        names = ("routing", "clear", "align", "gather", "gemm1", "gemm2", "sum_k", "layer")
        print(f"{'tp':>3} {'M':>5}  " + "  ".join(f"{name:>8}" for name in names))
        for tp in a.tp:
            for m in a.m:
                r = breakdown(tp, m)
                print(f"{tp:>3} {m:>5}  " + "  ".join(f"{v:8.1f}" for v in r.values()), flush=True)
        return
    with PowerLog(a.power_log) if a.power_log else contextlib.nullcontext():
        run(a.tp, a.m, a.impl, a.calls, a.replays, a.out)


if __name__ == "__main__":
    main()
