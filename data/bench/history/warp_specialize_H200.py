"""Experiment: warp specialization (tl.range(warp_specialize=True)) for the TMA GEMMs at large M. Same bits?

    OUT=<dir> PYTHONPATH=. python3 data/bench/history/warp_specialize_H200.py   # writes <dir>/ws.json

Needs the kernel of the commit that added this file (``invoke_fused_moe_kernel(..., warp_specialize=...)``); the
next commit removed that switch."""
import functools, json, os, statistics
import torch
import importlib
from moe_lib.kernels import experts
fused_moe = importlib.import_module("moe_lib.kernels.fused_moe")
from moe_lib.perf.bench import bound_layer
from moe_lib.perf.timing import graph_us

OUT = os.environ.get("OUT", ".")
real = fused_moe.invoke_fused_moe_kernel
rows = []
for tp, m in ((1, 4096), (8, 4096), (1, 1024), (8, 1024), (4, 1024), (2, 2048)):
    bound, _ = bound_layer(tp, m)
    cfg = bound.plan.config
    base = {}
    for variant in ("off", "ws", "ws_w4"):
        def patched(*a, **kw):
            if variant != "off":
                kw["warp_specialize"] = True
                if variant == "ws_w4":
                    kw["config"] = {**kw["config"], "num_warps": 4}
            return real(*a, **kw)
        experts.invoke_fused_moe_kernel = patched
        try:
            out = bound.run().clone()
            same = bool(torch.equal(out, base["out"])) if base else True
            t = {s: round(graph_us(bound.steps[s], 10, 10), 1) for s in ("gemm1", "gemm2")}
            if not base:
                base["out"] = out
            row = {"tp": tp, "M": m, "variant": variant, "tma": bound.plan.tma, **t, "same_bits": same}
        except Exception as exc:
            row = {"tp": tp, "M": m, "variant": variant, "error": repr(exc)[:300]}
        experts.invoke_fused_moe_kernel = real
        rows.append(row); print(row, flush=True)
    del bound; torch.cuda.empty_cache()
json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, open(f"{OUT}/ws.json", "w"), indent=1)
