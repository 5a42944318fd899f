"""FP8 A/B on the H200: the GEMMs quantizing their own A tiles (fused: no quantizing launches at small M) against
the separate quantizing kernels, with and without PDL; every pair checked bitwise. Then the promotion interval at
large M (the fp32 add every 128 products, none, and every 256 with 256-deep K tiles): time and accuracy.

    OUT=... python3 data/bench/history/fp8_fused_quant_H200/ab.py
"""
import json, os, statistics, sys, time
import torch
from moe_lib.kernels import experts
from moe_lib.kernels.experts import plan_call, Fp8
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.perf.bench import LAYERS, make_weights, time_layer_graph, fp8_weights
from moe_lib.reference import moe_reference_fp8
OUT = os.environ.get("OUT", ".")
BLOCKS = {"tensor": None, "block": (128, 128)}
T0 = time.time()


def layer(scheme, scales, config=None, **opt):
    fp8 = Fp8(scheme, BLOCKS[scheme])
    def fn(x, w13, w2, logits, top_k, _config=None):
        w, ids = topk_softmax_triton(logits, top_k)
        return plan_call(x, w13, w2, ids, None, config, ids_checked=False, fp8=fp8, **opt).bind(
            x, w13, w2, w, ids, scales=scales).run()
    return fn


VARIANTS = {"separate": {"fuse_quant": False}, "fused": {"fuse_quant": True, "pdl": False},
            "fused_pdl": {"fuse_quant": True, "pdl": True}}
gen = torch.Generator(device="cuda").manual_seed(5)
rows = []
part = sys.argv[1] if len(sys.argv) > 1 else "ab"
if part == "ab":
    for tp in (8, 1, 4, 2):
        w13, w2 = make_weights(tp, gen)
        q = {s: fp8_weights(w13, w2, BLOCKS[s]) for s in BLOCKS}
        for m in ((1, 2, 4, 16, 64, 256) if tp in (1, 8) else (1, 16, 64)):
            x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
            pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
            for s in BLOCKS:
                (a, sa), (b, sb) = q[s]
                scales = {"w1_scale": sa, "w2_scale": sb}
                names = ["separate", "fused"] + (["fused_pdl"] if m <= 4 else [])
                outs = {n: layer(s, scales, **VARIANTS[n])(x, a, b, pool[0], 2) for n in names}
                same = all(torch.equal(outs["separate"], o) for o in outs.values())
                w, ids = topk_softmax_triton(pool[0], 2)
                steps = plan_call(x, a, b, ids, None, None, fp8=Fp8(s, BLOCKS[s]), fuse_quant=True).steps
                res = {n: [] for n in names}
                for rep in range(3):
                    for n in names:
                        res[n].append(time_layer_graph(layer(s, scales, **VARIANTS[n]), x, a, b, 2, 10, 20, pool))
                row = {"tp": tp, "M": m, "scheme": s, "bitwise_equal": same, "fused_steps": list(steps),
                       **{n: round(statistics.median(v), 2) for n, v in res.items()}}
                rows.append(row); print(row, f"{time.time() - T0:.0f}s", flush=True)
        del w13, w2, q; torch.cuda.empty_cache()
    json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
              open(f"{OUT}/ab.json", "w"), indent=1)
else:  # promotion interval at large M, per tensor
    for tp in (8, 1):
        w13, w2 = make_weights(tp, gen)
        (a, sa), (b, sb) = fp8_weights(w13, w2, None)
        scales = {"w1_scale": sa, "w2_scale": sb}
        for m in (1024, 4096):
            x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
            pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
            w, ids = topk_softmax_triton(pool[0], 2)
            plan = plan_call(x, a, b, ids, None, None, fp8=Fp8("tensor"))
            base = plan.config
            deep = {k: v for k, v in base.items() if k != "down"}
            deep = {**deep, "BLOCK_SIZE_K": 256}
            if "down" in base:
                deep["down"] = {**base["down"], "BLOCK_SIZE_K": 256}
            ref = moe_reference_fp8(x, a, b, w, ids, w1_scale=sa, w2_scale=sb) if m == 1024 else None
            row = {"tp": tp, "M": m, "config": base}
            row["bf16"] = round(statistics.median(
                time_layer_graph(LAYERS["moe_lib"], x, w13, w2, 2, 10, 20, pool) for _ in range(3)), 1)
            for name, acc, cfg in (("acc128", 128, None), ("none", None, None), ("acc128_bk256", 128, deep),
                                   ("acc256_bk256", 256, deep), ("none_bk256", None, deep)):
                experts.FP8_ACCUMULATE = acc
                experts._make_plan.cache_clear()
                fn = layer("tensor", scales, config=cfg)
                try:
                    out = fn(x, a, b, pool[0], 2)
                    if ref is not None:
                        row[f"{name}_err"] = float(((out.double() - ref).norm() / ref.norm()).item())
                    row[name] = round(statistics.median(
                        time_layer_graph(fn, x, a, b, 2, 10, 20, pool) for _ in range(3)), 1)
                except Exception as e:  # a config that cannot launch
                    row[name] = repr(e)[:200]
            experts.FP8_ACCUMULATE = 128
            rows.append(row); print(row, f"{time.time() - T0:.0f}s", flush=True)
        del w13, w2, a, b; torch.cuda.empty_cache()
    json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
              open(f"{OUT}/promotion.json", "w"), indent=1)
