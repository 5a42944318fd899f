"""FP8 A/B on the H200: the per-tensor absmax split over column tiles (new) against one program per row block
looping over all columns (old: ABSMAX_PARTIALS = 1), and PDL at one token (new default: off for FP8)."""
import json, os, statistics
import torch
from moe_lib.kernels import experts, quant
from moe_lib.kernels.experts import plan_call, Fp8
from moe_lib.kernels.routing import topk_softmax_triton
from moe_lib.perf.bench import make_weights, time_layer_graph, fp8_weights
from moe_lib.perf.timing import graph_us
OUT = os.environ.get("OUT", ".")
BLOCKS = {"tensor": None, "block": (128, 128)}
real_quant = experts.quantize_activation

def layer(scheme, scales, **opt):
    fp8 = Fp8(scheme, BLOCKS[scheme])
    def fn(x, w13, w2, logits, top_k, config=None):
        w, ids = topk_softmax_triton(logits, top_k)
        return plan_call(x, w13, w2, ids, None, None, ids_checked=False, fp8=fp8, **opt).bind(
            x, w13, w2, w, ids, scales=scales).run()
    return fn

def variant(name):
    quant.ABSMAX_PARTIALS = 1 if name == "old_absmax" else 1024
    experts.quantize_activation = ((lambda a, **kw: real_quant(a, **{**kw, "use_pdl": False}))
                                   if name == "pdl_gemms_only" else real_quant)
    return {"pdl_on": {"pdl": True}, "pdl_gemms_only": {"pdl": True}}.get(name, {})

gen = torch.Generator(device="cuda").manual_seed(5)
rows = []
for tp in (1, 8):
    w13, w2 = make_weights(tp, gen)
    q = {s: fp8_weights(w13, w2, BLOCKS[s]) for s in BLOCKS}
    for m in (1, 2, 4, 16, 64, 256, 1024):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16, generator=gen)
        pool = [torch.randn(m, 8, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(8)]
        for s in BLOCKS:
            (a, sa), (b, sb) = q[s]
            scales = {"w1_scale": sa, "w2_scale": sb}
            names = ["new", "old_absmax"] if s == "tensor" else ["new"]
            if m <= 2:
                names += ["pdl_on", "pdl_gemms_only"]
            res = {n: [] for n in names}
            for rep in range(3):
                for n in names:
                    opt = variant(n)
                    res[n].append(time_layer_graph(layer(s, scales, **opt), x, a, b, 2, 10, 20, pool))
            row = {"tp": tp, "M": m, "scheme": s, **{n: round(statistics.median(v), 2) for n, v in res.items()}}
            if s == "tensor":  # quant2 alone (act of this call), old and new
                w, ids = topk_softmax_triton(pool[0], 2)
                for n in ("new", "old_absmax"):
                    variant(n)
                    bound = plan_call(x, a, b, ids, None, None, fp8=Fp8(s)).bind(x, a, b, w, ids, scales=scales)
                    bound.run()
                    row[f"quant2_{n}"] = round(graph_us(bound.steps["quant2"]), 2)
                    row[f"quant1_{n}"] = round(graph_us(bound.steps["quant1"]), 2)
            variant("new")
            rows.append(row); print(row, flush=True)
    del w13, w2, q; torch.cuda.empty_cache()
json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
          open(f"{OUT}/ab.json", "w"), indent=1)
