# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "slide"}
# # 07 · Performance: floors, the roofline, and what each production change buys
#
# Notebook 06 built a kernel that computes the right answer. This one asks how fast it is, and how fast it
# *could* be. A time means little on its own: 900 µs is excellent if no implementation can do better than
# 880 µs and poor if one could do 300.

# %% [markdown] slideshow={"slide_type": "notes"}
# So we first derive the **floor** — the least time any implementation
# could take on a given card — and read every measurement as a share of it.
#
# 1. **The floor**: bytes over bandwidth, FLOPs over the matmul rate.
# 2. **The roofline**: every recorded point on one picture of the card's two limits.
# 3. **Tuning and the plan**: the decisions `moe_lib` takes for each call on an H200.
# 4. **What each production change bought**, from the recorded runs before and after it.
# 5. **The H200 against vLLM 0.33** and against the floor, point by point.
# 6. **The power limit** at large $M$.
#
# No GPU is needed. The timings were recorded on GPUs and live in `data/bench/` (`data/README.md` and
# `data/bench/history/README.md` say which command made each file). Every number printed below is read from
# those files or computed here.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import dataclasses
import json
import math
import statistics
from pathlib import Path

import torch

from moe_lib import runtime
from moe_lib.kernels.configs import default_config, load_config_table, nearest_row
from moe_lib.kernels.experts import CLEAR_IN_GEMM1_MAX_ROWS, make_plan
from moe_lib.kernels.fused_moe import _moe_tile as fused_moe_kernel_tile
from moe_lib.kernels.fused_moe import fused_moe_kernel
from moe_lib.kernels.routing import topk_softmax
from moe_lib.kernels.textbook import textbook_fused_experts
from moe_lib.perf.bench import M_VALUES, TP_VALUES
from moe_lib.perf.floors import MIXTRAL, expected_experts_touched, floor_us
from moe_lib.perf.power import read_power_log
from moe_lib.runtime import Target, pdl_start
from moe_lib.teach import show_lines, viz
from moe_lib.testing import randn, seeded, verdict

BENCH = Path(moe_lib.__file__).resolve().parent.parent / "data" / "bench"
HISTORY = BENCH / "history"
E, K, H, I = (MIXTRAL[key] for key in ("num_experts", "top_k", "hidden", "intermediate"))  # 8, 2, 4096, 14336


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def moe_lib_us(run: dict) -> dict:
    """(tp, M) -> µs per layer call of moe_lib, for every timed point of a bench run."""
    return {(r["tp"], r["M"]): r["us"] for r in run["records"] if r["impl"] == "moe_lib" and r["us"]}


run = load(BENCH / "NVIDIA_H200.json")  # the current record of moe_lib on an H200
ref = load(BENCH / "vllm_reference_H200.json")  # vLLM 0.33.0 on an H200, timed by the maintainers
for name, data in (("NVIDIA_H200.json", run), ("vllm_reference_H200.json", ref)):
    c = data["ceilings"]
    print(f"{name}: {data['gpu']}, {data['date']}, {len(data['records'])} records; ceilings: copy "
          f"{c['copy_TBps']:.2f} TB/s, bf16 matmul {c['matmul_TFLOPs']:.0f} TFLOP/s")
print(f"  how {run['gpu']} was timed: {run['method']}")
print(f"  the reference: {ref['source']}; {ref['what']}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. The floor
#
# A layer call must at least **read the weights** of every expert some token was routed to, and **do the
# FLOPs** of both GEMMs for every (token, expert) pair. Whichever takes longer bounds the call from below:
#
# $$
# t_\text{floor} = \max\Big(\frac{\text{experts touched}\cdot 3\,H\,\tfrac{I}{tp}\cdot 2\ \text{bytes}}{\text{copy bandwidth}},\;
# \frac{2\cdot Mk\cdot 3\,H\,\tfrac{I}{tp}}{\text{matmul rate}}\Big)
# $$
#
# On one of $tp$ ranks an expert is $w_1$, $w_3$ ($I/tp \times H$ each) and $w_2$ ($H \times I/tp$) in bf16,
# 2 bytes a value; each of the $Mk$ (token, slot) rows does $3 H \cdot I/tp$ multiply-adds.

# %% [markdown] slideshow={"slide_type": "notes"}
# With uniform routing
# $M$ tokens touch $E\,(1 - (1 - k/E)^M)$ experts on average: 2 for one token, nearly all 8 from $M = 16$. Both rates are the card's **ceilings**, measured in the same run: a 1 GiB device-to-device copy (bytes read
# *plus* written) and an $8192^3$ bf16 matmul. By hand, for TP = 8 on the recorded H200:

# %% slideshow={"slide_type": "-"}
ceilings = run["ceilings"]
bandwidth, matmul_rate = ceilings["copy_TBps"] * 1e12, ceilings["matmul_TFLOPs"] * 1e12  # bytes/s, FLOP/s


def floor_by_hand(m: int, tp: int) -> tuple[float, float]:
    """(memory floor, compute floor) in µs, for M tokens on one of tp ranks."""
    n = I // tp
    touched = E * (1 - (1 - K / E) ** m)
    weight_bytes = touched * 3 * H * n * 2  # w1, w3, w2 slices, bf16
    flops = 2 * m * K * 3 * H * n
    return weight_bytes / bandwidth * 1e6, flops / matmul_rate * 1e6


for m in (1, 4096):
    memory, compute = floor_by_hand(m, 8)
    print(f"TP = 8, M = {m:>4}: {E * (1 - (1 - K / E) ** m):.2f} experts, weights {memory:6.1f} µs, "
          f"FLOPs {compute:6.1f} µs -> floor {max(memory, compute):6.1f} µs "
          f"({'memory' if memory > compute else 'compute'})")
hand = torch.tensor([max(floor_by_hand(m, tp)) for tp in TP_VALUES for m in M_VALUES], dtype=torch.float64)
library = torch.tensor([floor_us(m, tp, ceilings)["floor_us"] for tp in TP_VALUES for m in M_VALUES],
                       dtype=torch.float64)
print(verdict("floor by hand vs moe_lib.perf.floors.floor_us, every (TP, M)", hand, library))

# %% [markdown] slideshow={"slide_type": "subslide"}
# From here on, **% of the floor** means floor / measured time: 100 % is a call that costs only its
# unavoidable work. The benchmark stores each point's floor (`floor_us`) for the routing it actually replayed
# (`experts_touched`: at $M = 2$ a batch touches 2, 3 or 4 experts, not 3.75). Two caveats: the copy ceiling
# counts bytes read and written, and a GEMM mostly reads, so a good kernel can land slightly *above* 100 %;
# and the floor assumes memory and compute overlap perfectly.

# %% [markdown] slideshow={"slide_type": "notes"}
# The floor at every $M$, at TP = 1:

# %% slideshow={"slide_type": "-"}
print(f"{'M':>5} {'experts':>8} {'FLOP/byte':>10} {'memory µs':>10} {'compute µs':>11} {'floor µs':>9}  bound")
for m in M_VALUES:
    memory, compute = floor_by_hand(m, 1)
    touched = expected_experts_touched(m, E, K)
    print(f"{m:>5} {touched:>8.2f} {m * K / touched:>10.1f} {memory:>10.1f} {compute:>11.1f} "
          f"{max(memory, compute):>9.1f}  {'memory' if memory > compute else 'compute'}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Up to $M \approx 16$ each new token brings new experts, so the bytes grow; then they are fixed (all eight
# experts) and the floor **stays flat while $M$ grows a hundredfold**, until the compute floor takes over and
# grows linearly. Both terms shrink as $1/tp$: tensor parallelism gives each rank a slice of every expert.

# %% alt="Log-log plot of the latency floor against tokens for TP 1, 2, 4 and 8: flat while weights dominate, then rising linearly once compute dominates." slideshow={"slide_type": "-"}
viz.floor_vs_tokens(ceilings, token_counts=list(M_VALUES), tps=list(TP_VALUES))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The roofline
#
# The layer's **arithmetic intensity** — FLOPs per byte of expert weights — is $Mk/\text{touched}$: 1 at
# $M = 1$, growing as $M/4$ once every expert is touched. The card's **ridge point** is the matmul rate over
# the bandwidth: below it the layer is memory-bound, above it compute-bound.

# %% [markdown] slideshow={"slide_type": "notes"}
# A roofline plots each point at
# its intensity against the FLOP rate it achieved, under the roof $\min(\text{rate}, \text{bandwidth} \times
# \text{intensity})$; a point on the roof runs at its floor, and the gap below the roof is the share of the
# floor it misses. `moe_lib` is blue, its peers in the same run (`grouped_mm`: PyTorch's grouped GEMM; `loop`:
# one matmul pair per expert, like transformers) green and red, vLLM black crosses.

# %% alt="Roofline plot: achieved FLOP rate against arithmetic intensity under the bandwidth and matmul ceilings, moe_lib in blue, peers in green and red, vLLM as black crosses." slideshow={"slide_type": "-"}
ridge_m = viz.ridge_tokens(ceilings)
print(f"ridge: {matmul_rate / 1e12:.0f} TFLOP/s / {bandwidth / 1e12:.2f} TB/s = "
      f"{matmul_rate / bandwidth:.0f} FLOP/byte, "
      f"which the layer reaches at M = {ridge_m}")
viz.roofline(run, reference=ref)

# %% [markdown] slideshow={"slide_type": "subslide"}
# On the slanted part (small $M$) the question is whether the weights stream at the copy bandwidth; under
# the flat part, whether the tensor cores stay busy. The points near the ridge sit lowest: there memory and
# compute cost about the same, and a kernel rarely overlaps the two as perfectly as the floor's $\max$ assumes.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Tuning and the plan
#
# Every call of `fused_experts` first makes a **plan** (`moe_lib.kernels.experts.make_plan`): from the shapes
# and the target GPU alone it decides the tiles, the layout, how the sum over $k$ is made, the launch mode —
# then runs its steps. The benchmark, its step breakdown and the tuner run the same plan. A plan touches no
# tensor, so this CPU can print exactly what an H200 runs (the tiles come from the tuned H200 tables shipped in
# `moe_lib/kernels/configs/`):

# %% slideshow={"slide_type": "-"}
h200 = Target(interpret=False, name=run["gpu"], num_sms=132, capability=(9, 0))  # an H200 SXM: 132 SMs, Hopper


def plan(m: int, tp: int, **options):
    return make_plan(m, H, I // tp, K, E, dtype=torch.bfloat16, target=h200, **options)


for m in (1, 4096):
    print(f"--- TP = 8, M = {m}\n{plan(m, 8).describe()}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each line is a production decision. Across $M$ at TP = 8:

# %% slideshow={"slide_type": "-"}
def yes(flag: bool) -> str:
    return "yes" if flag else "no"


print(f"{'M':>5} {'layout':>7} {'BLOCK_M':>8} {'TMA':>4} {'k-sum':>7} {'cleared by':>11} {'PDL':>4} "
      f"{'split tail GEMM1/GEMM2':>23}")
for m in M_VALUES:
    p = plan(m, 8)
    cleared = "GEMM1" if p.gemm1.clears_out else "own launch" if "clear" in p.steps else "-"
    print(f"{m:>5} {p.layout:>7} {p.block_m:>8} {yes(p.tma):>4} {p.k_sum:>7} {cleared:>11} {yes(p.pdl):>4} "
          f"{yes(p.gemm1.split_tail) + '/' + yes(p.gemm2.split_tail):>23}")
separate = plan(4096, 8, fuse_k_sum=False)
print(f"\nwith the sum over k as a separate pass (M = 4096): {' -> '.join(separate.steps)}; buffers {separate.buffers}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# * **Decode layout** (one token): its $k$ experts are distinct, so slot $j$ simply gets block $j$; no
#   alignment kernel runs: the int32 ids are already the expert ids of its blocks.
# * **PDL**, programmatic dependent launch (one token): Hopper launches each kernel while the one before is
#   finishing, and the kernel waits for its predecessor's writes; the launch gaps shrink, the bits do not change.

# %% [markdown] slideshow={"slide_type": "notes"}
# * **Atomic k-sum** (top-2): GEMM2 adds each slot's row into a cleared output. $0 + a + b$ rounds the same in
#   either order, so the result stays deterministic; the separate pass and its $(Mk, H)$ buffer disappear. Up to
#   $M = 256$ GEMM1's programs clear that output themselves: one launch fewer (section 4).
# * **TMA layout** (large $M$): the tokens are copied once into sorted order (`gather`), so every tile is a
#   rectangle that Hopper's copy engine fetches from one tensor descriptor, instead of rows gathered by pointer
#   in every program.
# * **Split tail** (large $M$): tiles run in waves of one per multiprocessor; a last wave at most half full
#   runs as twice as many half-width tiles, in about half the time.
# * **Tuned tiles**, per GEMM: `python -m moe_lib.perf.tune` timed a space of tile shapes per $(N, M)$ and
#   kept the fastest, separately for GEMM1 and GEMM2; below, against the default heuristic's tiles at TP = 8:

# %% alt="Three panels of tile sizes against tokens per call at TP 8: BLOCK_SIZE_M, BLOCK_SIZE_N and BLOCK_SIZE_K of the default heuristic next to the tuned values for GEMM1 and GEMM2." slideshow={"slide_type": "-"}
tuned = load_config_table(E, I // 8, run["gpu"])
heuristic = {m: default_config(m, E, I // 8, H, K, interpret=False) for m in tuned}
viz.tile_shapes(heuristic, tuned,
                title=f"Tile shapes at TP = 8 (N = {I // 8}): default heuristic vs tuned, {run['gpu']}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Where the tuned tiles differ from the heuristic's, the floor arithmetic explains why. At small $M$ each expert
# owns a single row block, so column blocks are all a batch has to spread over 132 multiprocessors, and a
# memory-bound kernel needs many loads in flight: narrower tiles (more programs) and deeper ones (bigger loads)
# often win.

# %% [markdown] slideshow={"slide_type": "notes"}
# At large $M$ a bigger tile does more FLOPs per byte it moves into shared memory, which is what a
# compute-bound batch needs; GEMM2, whose output is $H = 4096$ wide at every TP, often takes 256-wide tiles.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Between the rows
#
# A table holds 21 rows, $M$ = 1, 2, 4, 8, 16, 24, 32, 48, … 4096: about two per doubling. A call of $M = 40$
# takes the row of 32 or of 48 — which? vLLM takes the nearest difference; on a grid that doubles, the nearest
# *ratio* is the natural distance. The H200 settled it (`tune --check-lookup`): the layer at ten $M$ between
# rows, at every TP, with the row below and with the row above.

# %% slideshow={"slide_type": "-"}
lookup = load(HISTORY / "lookup_H200.json")["rows"]


def slower(row: dict, pick: int) -> float:
    """How much slower the picked row ran than the faster of the two."""
    us = row["us_below"] if pick == row["below"] else row["us_above"]
    return us / min(row["us_below"], row["us_above"]) - 1


for rule, label in (("nearest", "nearest difference"), ("nearest_log", "nearest ratio")):
    cost = [slower(row, row[rule]) for row in lookup]
    print(f"{label:>18}: the faster row at {sum(c == 0 for c in cost):>2} of {len(lookup)} points, "
          f"{statistics.fmean(cost):.1%} slower on average, at most {max(cost):.1%}")
ratio = [row["nearest_log"] for row in lookup]
ours_pick = [nearest_row({row["below"]: {"m": row["below"]}, row["above"]: {"m": row["above"]}}, row["M"])["m"]
             for row in lookup]
print("PASS" if ours_pick == ratio else "FAIL", " configs.nearest_row takes the nearest ratio at every measured point")

# %% alt="Four panels, TP 1 to 8: for ten token counts between table rows, how many per cent slower than the faster neighbouring row each lookup rule's pick ran; the ratio rule's points sit mostly at zero." slideshow={"slide_type": "-"}
viz.between_rows(lookup)

# %% [markdown] slideshow={"slide_type": "notes"}
# The ratio rule is the lookup of `moe_lib.kernels.configs.nearest_row`. Neither rule is always right (the
# faster row is sometimes below, sometimes above); a finer grid makes the choice matter less, and the search that
# made these 21 rows per table took about five minutes for all four tables once its kernels were compiled in
# parallel first (`tune --jobs 12`, `data/bench/history/README.md`).

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. What each production change bought
#
# Each change was benchmarked just before and just after it went in, by the same `bench` command (kept in
# `data/bench/history/`). Each row: the speed-up of the whole layer, after/before, as the geometric mean over
# the points where the change acts, with its range. The cards differ because the changes were made on
# whichever card the device machine lent that day.

# %% slideshow={"slide_type": "-"}
everywhere = [(tp, m) for tp in TP_VALUES for m in M_VALUES]
large_m = [(tp, m) for tp in TP_VALUES for m in M_VALUES if m >= 512]
changes = [  # (change, before, after, points where it acts), files of data/bench/
    ("tuned tiles (+ decode layout)", "history/default_configs_NVIDIA_H200.json", "history/before_tma_NVIDIA_H200.json",
     everywhere),
    ("TMA layout, M >= 512", "history/before_tma_NVIDIA_H200.json", "history/before_ksum_NVIDIA_H200.json", large_m),
    ("TMA layout, M >= 512", "history/before_tma_NVIDIA_H100_80GB_HBM3.json",
     "history/before_ksum_NVIDIA_H100_80GB_HBM3.json", large_m),
    ("k-sum + split tail + PDL", "history/before_ksum_NVIDIA_H100_80GB_HBM3.json",
     "history/NVIDIA_H100_80GB_HBM3.json", everywhere),
    ("21-row tables + GEMM1 clear", "history/before_fine_tables_NVIDIA_H200.json", "NVIDIA_H200.json", everywhere),
]
print(f"{'change':<30} {'card':<22} {'points':>6} {'speed-up':>9} {'range':>13}   largest at")
for change, before_file, after_file, points in changes:
    after = load(BENCH / after_file)
    us_before, us_after = moe_lib_us(load(BENCH / before_file)), moe_lib_us(after)
    speedup = {pt: us_before[pt] / us_after[pt] for pt in points if pt in us_before and pt in us_after}
    geo = math.exp(statistics.fmean(math.log(r) for r in speedup.values()))
    (tp, m), top = max(speedup.items(), key=lambda item: item[1])
    print(f"{change:<30} {after['gpu']:<22} {len(speedup):>6} {geo:>8.2f}x {min(speedup.values()):>6.2f}-{top:.2f}x"
          f"   TP {tp}, M {m}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# The k-sum row bundles three changes that went in together; `python -m moe_lib.perf.bench --breakdown` times
# each step of a call alone, and its logs before and after separate them. The last row bundles section 3's
# re-tuned tables and GEMM1's clear. Two runs of the same code on two H100 machines (`repeat_*`) show how much
# of a difference is noise:

# %% slideshow={"slide_type": "-"}
def read_table(path: Path) -> dict:
    """A table printed by bench or bench --breakdown: (tp, M[, impl]) -> {column: value}; '#' lines are notes."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    start = next(i for i, row in enumerate(rows) if row[:2] == ["tp", "M"])
    header, table = " ".join(rows[start]).replace("w TB/s", "w_TB/s").split(), {}
    for row in rows[start + 1:]:
        if len(row) == len(header):
            cells = {key: (v if key == "impl" else float(v.rstrip("%"))) for key, v in zip(header, row, strict=True)}
            table[(int(cells["tp"]), int(cells["M"])) + ((cells["impl"],) if "impl" in cells else ())] = cells
    return table


steps_before = read_table(HISTORY / "before_ksum_breakdown_H100.txt")  # the sum over k as a separate pass
steps_after = read_table(HISTORY / "breakdown_H100.txt")  # the sum in GEMM2, split tail, PDL at M = 1
for tp, m in ((8, 1), (8, 4096), (4, 4096)):
    o, n = steps_before[(tp, m)], steps_after[(tp, m)]
    print(f"TP = {tp}, M = {m:>4}: sum over k: pass {o['sum_k']:5.1f} -> clear {n['clear']:4.1f} µs; "
          f"GEMM1 {o['gemm1']:6.1f} -> {n['gemm1']:6.1f} µs; layer {o['layer']:7.1f} -> {n['layer']:7.1f} µs")
repeat = read_table(HISTORY / "repeat_NVIDIA_H100_80GB_HBM3.txt")
same_code = moe_lib_us(load(HISTORY / "before_ksum_NVIDIA_H100_80GB_HBM3.json"))
noise = [abs(row["us"] / same_code[(tp, m)] - 1) for (tp, m, impl), row in repeat.items()
         if impl == "moe_lib" and (tp, m) in same_code and not (m == 256 and tp in (1, 4))]  # those two rows differed
print(f"noise, same code on two machines ({len(noise)} points): median {statistics.median(noise):.1%}, "
      f"largest {max(noise):.1%}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# * **Tuned tiles** pay most where the heuristic leaves multiprocessors idle, one token at high TP; the decode
#   layout came in the same step and is part of this row.
# * **The TMA layout** pays at the largest batches, where the GEMMs are most of the call and GEMM1 repeated the
#   pointer gather for each of its column blocks.

# %% [markdown] slideshow={"slide_type": "notes"}
# * **The atomic k-sum** replaces a pass that reads and writes the $(Mk, H)$ partial rows by a clear of the
#   $(M, H)$ output: the first column above.
# * **The split tail** acts on GEMM1 and GEMM2 at large $M$ when the last wave is sparse; read its gain in the
#   GEMM1 column against the noise line.
# * **PDL** acts on one-token calls only: the TP = 8, $M = 1$ layer row, less what the k-sum saved there.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Each change as a delta from the textbook kernel
#
# Notebook 06 showed the whole idea as `textbook_moe_kernel`. The production kernel is that kernel plus one
# switch per change above. For each: the lines the switch adds (numbered as in the production source), then
# the same small problem run in the interpreter with the change and without it — the bits must not move.

# %% slideshow={"slide_type": "-"}
small = dict(num_experts=4, hidden=64, inter=96, top_k=2, num_tokens=300)
x_s = randn(small["num_tokens"], small["hidden"], generator=seeded(7))  # (M, H)
w13_s = randn(4, 2 * small["inter"], small["hidden"], generator=seeded(8), scale=small["hidden"] ** -0.5)
w2_s = randn(4, small["hidden"], small["inter"], generator=seeded(9), scale=small["inter"] ** -0.5)
weights_s, ids_s = topk_softmax(randn(small["num_tokens"], 4, generator=seeded(10)), small["top_k"])
tiles = {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1, "num_warps": 4,
         "num_stages": 1}


def run_small(config=tiles, target=runtime.INTERPRETER, m=small["num_tokens"], **options):
    """The plan of the small problem with a change on or off, run: (plan, output)."""
    p = make_plan(m, small["hidden"], small["inter"], small["top_k"], 4, dtype=torch.float32, target=target,
                  config=config, **options)
    return p, p.bind(x_s[:m], w13_s, w2_s, weights_s[:m], ids_s[:m]).run()


textbook_s = textbook_fused_experts(x_s, w13_s, w2_s, weights_s, ids_s, block_m=64, block_n=32, block_k=32)
_, plain = run_small(fuse_k_sum=False)  # no production switch on: what the textbook kernel does
print("PASS" if torch.equal(plain, textbook_s) else "FAIL", " production kernel, every switch off == textbook kernel")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **The sum over k inside GEMM2** (`C_ROWS_DIV = top_k`): the epilogue adds each slot's row into its token's
# cleared row instead of storing it for a separate pass. Bought with the split tail and PDL: the table above.

# %% slideshow={"slide_type": "-"}
plan_on, on = run_small()
print(f"k-sum: {plan_on.k_sum}; steps {' -> '.join(plan_on.steps)}  (off: a separate sum_k pass)")
print("PASS" if torch.equal(on, plain) else "FAIL", " the same bits with the sum in GEMM2")
show_lines(fused_moe_kernel_tile, "C_ROWS_DIV")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **The TMA layout** (`TMA`, `C_SORTED`): tokens copied into sorted order once, so that every A tile is a box
# the copy engine fetches, and B through a descriptor too. Bought 1.14x at $M \ge 512$ on the H200.

# %% slideshow={"slide_type": "-"}
plan_on, on = run_small({**tiles, "TMA": True})
print(f"TMA: {plan_on.tma}; steps {' -> '.join(plan_on.steps)}")
print("PASS" if torch.equal(on, plain) else "FAIL", " the same bits through tensor descriptors")
show_lines(fused_moe_kernel_tile, "TMA", "desc")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **The split last wave** (`SPLIT_TAIL`): when the last wave of tiles fills at most half the multiprocessors,
# its tiles run as twice as many half-width tiles. The interpreter has no waves; a target that pretends to
# run 7 programs at once makes the plan split:

# %% slideshow={"slide_type": "-"}
seven = dataclasses.replace(runtime.INTERPRETER, num_sms=7)
plan_on, on = run_small(target=seven)
_, off = run_small(target=seven, split_tail=False)
print(f"split tail: GEMM1 {plan_on.gemm1.split_tail}, GEMM2 {plan_on.gemm2.split_tail}")
print("PASS" if torch.equal(on, off) else "FAIL", " the same bits with the last wave split")
show_lines(fused_moe_kernel, "SPLIT_TAIL", "num_whole", "half")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **GEMM1 clears the output** (`ZERO_BLOCK`): the atomic k-sum adds into an output that must start as zeros.
# A launch of its own costs a few µs of a decode call; instead every GEMM1 program first zeroes a few chunks
# of it. GEMM2 starts only after GEMM1 has finished, so its adds find the zeros. Zeros are zeros: the bits
# cannot move.

# %% slideshow={"slide_type": "-"}
plan_on, on = run_small(clear_in_gemm1=True)
plan_off, off = run_small(clear_in_gemm1=False)
print(f"steps: {' -> '.join(plan_on.steps)}  (alone: {' -> '.join(plan_off.steps)})")
print("PASS" if torch.equal(on, off) else "FAIL", " the same bits with the output cleared by GEMM1")
show_lines(fused_moe_kernel, "ZERO_BLOCK", "zero_chunks")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Predicted: one launch fewer, 1–2 µs per call, which matters only where a call takes tens of µs. Measured on
# the H200, the whole layer, both ways interleaved five times:

# %% slideshow={"slide_type": "-"}
clear_ab = load(HISTORY / "clear_in_gemm1_H200.json")["repeat_retuned_tables"]
print(f"{'TP':>3} {'M':>5} {'own launch µs':>14} {'in GEMM1 µs':>12} {'change':>8}")
for row in clear_ab:
    print(f"{row['tp']:>3} {row['M']:>5} {row['clear_alone']:>14.1f} {row['clear_in_gemm1']:>12.1f} "
          f"{row['clear_in_gemm1'] / row['clear_alone'] - 1:>+8.1%}")
print(f"so the plan clears in GEMM1 up to {CLEAR_IN_GEMM1_MAX_ROWS} (token, slot) rows: "
      f"M = 256, top-2 (TP = 8, M = 256: {'GEMM1' if plan(256, 8).gemm1.clears_out else 'own launch'}; "
      f"M = 512: {'GEMM1' if plan(512, 8).gemm1.clears_out else 'own launch'})")

# %% [markdown] slideshow={"slide_type": "notes"}
# It won 1–2 µs at one token at TP 8, 2 and 1 and at up to 64 tokens everywhere, as predicted — and lost 3 µs at
# TP 4, $M = 1$, in both runs, which we do not yet understand. At 512 and 1024 tokens it was within 1 % at TP 8
# and 4 and lost up to 2 % at TP 2 and 1: there a clear of its own (8 MB at $M = 1024$) streams at full
# bandwidth in about as long as GEMM1's programs take for it. A change is kept only where it wins.
#
# **Tried and dropped: warp specialization.** Triton 3.6 can split a K loop's warps into producers (TMA loads)
# and consumers (the tensor-core MMAs), `tl.range(..., warp_specialize=True)`. On the TMA GEMMs at $M$ = 1024–4096
# it gave the same bits and the same time (GEMM1 −1 % to +1 %, GEMM2 −1 % to +3 %,
# `data/bench/history/warp_specialize_H200.json`), and did not compile with 4 warps: not kept.

# %% [markdown] slideshow={"slide_type": "subslide"}
# **The decode layout** (one token): its $k$ experts are distinct, so slot $j$ takes block $j$ — no alignment
# kernel. **PDL** (`USE_PDL`, one token on Hopper): each kernel launches while its predecessor finishes and
# waits for its writes; the interpreter ignores it, and the GPU tests hold the bits (`tests/kernels`).

# %% slideshow={"slide_type": "-"}
plan_one, one = run_small(m=1)
textbook_one = textbook_fused_experts(x_s[:1], w13_s, w2_s, weights_s[:1], ids_s[:1], block_m=64, block_n=32,
                                      block_k=32)
print(f"M = 1: layout {plan_one.layout}, steps {' -> '.join(plan_one.steps)}; on an H200 PDL = "
      f"{make_plan(1, H, I // 8, K, E, dtype=torch.bfloat16, target=h200).pdl}")
print("PASS" if torch.equal(one, textbook_one) else "FAIL", " the decode layout gives the textbook's bits")
show_lines(pdl_start, "USE_PDL", "gdc")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. The H200 against vLLM 0.33 and against the floor
#
# The reference is vLLM 0.33.0's own bf16 fused-MoE path on the same kind of card — its Triton kernel, its
# compiled small ops and its own H200 tables — timed the way `bench` times ours. The **goal** per point is
# the maintainers' target (`goal_rule` in the file). Both shares of the floor use our run's floor.

# %% slideshow={"slide_type": "-"}
ours, floor = moe_lib_us(run), {(r["tp"], r["M"]): r.get("floor_us") for r in run["records"] if r["impl"] == "moe_lib"}
vllm = {(r["tp"], r["M"]): r["us"] for r in ref["records"]}
goal = {(r["tp"], r["M"]): r["us"] for r in ref["goal_records"]}
print(ref["goal_rule"])
print(f"{'TP':>3} {'M':>5} {'ours µs':>9} {'vLLM µs':>9} {'goal µs':>9} {'ours/vLLM':>10} "
      f"{'ours %floor':>12} {'vLLM %floor':>12}  goal")
for tp, m in sorted(vllm):
    o, v = ours[(tp, m)], vllm[(tp, m)]
    print(f"{tp:>3} {m:>5} {o:>9.1f} {v:>9.1f} {goal[(tp, m)]:>9.1f} {o / v:>10.2f} {floor[(tp, m)] / o:>12.0%} "
          f"{floor[(tp, m)] / v:>12.0%}  {'met' if o <= goal[(tp, m)] else 'missed'}")
faster = [p for p in vllm if ours[p] <= vllm[p]]
met = [p for p in vllm if ours[p] <= goal[p]]
print(f"\nmoe_lib is at or below vLLM at {len(faster)} of {len(vllm)} points and meets the goal at {len(met)}.")
touched = {(r["tp"], r["M"]): r["experts_touched"] for r in run["records"] if r["impl"] == "moe_lib"}
print("slower than vLLM at:", ", ".join(f"TP {tp} M {m} (+{ours[(tp, m)] / vllm[(tp, m)] - 1:.0%}, "
                                       f"{touched[(tp, m)]:g} experts touched, "
                                       f"{expected_experts_touched(m, E, K):.1f} expected)"
                                       for tp, m in sorted(set(vllm) - set(faster))) or "none")

# %% [markdown] slideshow={"slide_type": "notes"}
# At $M = 4$ a point depends on its routing draws: 8 (token, slot) rows touch between 2 and 8 experts, 5.5 on
# average, and each expert is 1/8 of the bytes. Our run replays its own draws, vLLM's run replayed others, so
# where this run touched 6 experts it streamed about 9 % more weights than the expected draw. The "%floor"
# columns use our run's replayed routing for both: a point above 100 % streams faster than the card's measured
# copy, and no kernel can make up for a draw that touches more experts.

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same comparison as latency against $M$ (the floor dashed, the peers of our run included), then as shares
# of the floor:

# %% alt="Log-log plot of layer latency against tokens for moe_lib and vLLM at each TP, with the floor dashed." slideshow={"slide_type": "-"}
viz.latency_vs_reference(run, ref)

# %% alt="Plot of the share of the floor reached against tokens for moe_lib and vLLM at each TP: high and flat at small M, a dip near the ridge, partial recovery beyond." slideshow={"slide_type": "subslide"}
viz.floor_fraction({f"moe_lib, {run['gpu']}": run}, reference=ref)

# %% [markdown] slideshow={"slide_type": "subslide"}
# The curves are high and flat where the layer streams weights, dip near the ridge, and recover partly on the
# compute-bound side. At small $M$ and high TP the gap is a **fixed cost per call**: routing, the clear, two
# GEMMs that ramp up and wind down, each launch waiting for the previous one. It does not shrink with $tp$ while
# the floor does, so it weighs most at TP = 8:

# %% alt="Bars of microseconds per layer call at one token for TP 1, 2, 4 and 8: the floor in grey and moe_lib's time above it in blue, a few microseconds at every TP, with vLLM's time marked for reference." slideshow={"slide_type": "-"}
viz.time_above_floor(run, m=1, reference=ref)

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Where the rest goes
#
# `bench --breakdown` times each step of a call alone. Recorded on the H200 at TP 8 and 4: up to $M = 64$ each
# GEMM is judged by the weight bytes it streams per second, from $M = 1024$ by its share of the 767 TFLOP/s the
# goal assumes. The small steps are routing, the clear, the alignment and the sorted copy.

# %% slideshow={"slide_type": "-"}
steps_h200 = read_table(HISTORY / "breakdown_H200.txt")  # bench --breakdown on an H200, TP 8 and 4
rate = ref["goal_terms"]["matmul_TFLOPs"] * 1e6  # FLOP per µs
print(f"{'TP':>3} {'M':>5} {'small µs':>9} {'GEMM1':>13} {'GEMM2':>13} {'layer µs':>9} {'goal µs':>8}")
for (tp, m), r in sorted(steps_h200.items(), reverse=True):
    n = I // tp
    small = sum(r[step] for step in ("routing", "clear", "align", "gather", "sum_k"))
    shares = ((2 * n, "gemm1"), (n, "gemm2"))  # columns of w1|w3 (times H) and of w2 (times H)
    if m <= 64:  # the bytes of the experts' slices each GEMM reads, for the expected experts touched
        touched = expected_experts_touched(m, E, K)
        g1, g2 = (f"{touched * cols * H * 2 / r[gemm] / 1e6:.2f} TB/s" for cols, gemm in shares)
    else:  # FLOPs over the time, against the goal's matmul rate
        g1, g2 = (f"{2 * m * K * cols * H / r[gemm] / rate:.0%} of rate" for cols, gemm in shares)
    target = f"{goal[(tp, m)]:.1f}" if (tp, m) in goal else ""
    print(f"{tp:>3} {m:>5} {small:>9.1f} {g1:>13} {g2:>13} {r['layer']:>9.1f} {target:>8}")

# %% [markdown] slideshow={"slide_type": "notes"}
# Read it against the goal. Up to $M = 64$ the GEMMs stream close to what the card's copy reaches (4.0–4.2
# TB/s), except for one token, where each kernel ends about as soon as it has ramped up. (A step repeated alone
# may find its weights in the 50 MB L2: TP 8's GEMM2 of one token reads 29 MB, hence its 4.4 TB/s; the
# layer then takes 3 µs more than its steps.) At $M = 1024$ they reach
# 55–65 % of the rate while the goal asks 65 % of the whole call, small steps included. At $M = 4096$ on TP 8 the
# two GEMMs alone fit the goal; the 54 µs of data movement around them do not.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. The power limit at large M
#
# Past the ridge the comparison is the dense $8192^3$ matmul that set the ceiling. But that ceiling is timed
# over about 30 ms, while each large-$M$ bench point runs for a few hundred: long enough for the card to reach
# its power cap (700 W on an H100 SXM and an H200) and lower its clock to stay under it.

# %% [markdown] slideshow={"slide_type": "notes"}
# The last H100 run logged
# clock and power all along (`bench --power-log`); the shaded spans are its $M = 4096$ points, red samples are
# held to the power limit. It also timed the matmul the way it times the layer (`matmul_sustained_TFLOPs`).

# %% alt="Trace of GPU clock and power over an H100 benchmark run, the M 4096 points shaded, samples held at the 700 W power cap in red." slideshow={"slide_type": "-"}
h100 = load(HISTORY / "NVIDIA_H100_80GB_HBM3.json")
viz.power_trace(h100, read_power_log(HISTORY / "power_NVIDIA_H100_80GB_HBM3.csv"))

# %% slideshow={"slide_type": "subslide"}
for label, data in (("moe_lib, the last H100 run", h100), ("moe_lib, the H200 run", run), ("the vLLM run", ref)):
    c = data["ceilings"]
    sustained = c.get("matmul_sustained_TFLOPs")
    line = f"{label} ({data['gpu']}, {data['date']}): matmul {c['matmul_TFLOPs']:.0f} TFLOP/s burst"
    print(line + (f", {sustained:.0f} sustained ({sustained / c['matmul_TFLOPs']:.0%})" if sustained else
                  ", no sustained rate recorded in this run"))
    if data is not ref:
        us = moe_lib_us(data)
        for tp in TP_VALUES:
            rate = floor_us(4096, tp, c)["flops"] / us[(tp, 4096)] / 1e6
            print(f"  TP = {tp}, M = 4096: {rate:4.0f} TFLOP/s = {rate / c['matmul_TFLOPs']:.0%} of burst"
                  + (f", {rate / sustained:.0%} of sustained" if sustained else ""))
print(f"the vLLM reference run: {ref['power_note']}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# So part of the gap to the matmul ceiling at the largest batches is the card's power budget, not the kernel,
# and those points vary most from run to run. The targets are stated against the burst ceiling; the sustained
# share is the like-for-like reading.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# One short exercise: the number everything in section 1 starts from. Complete the function; the check below
# it runs it on a few cases and compares with the library's arithmetic. It shows `PASS`, or the first case
# that went wrong — the input, what was expected, what your function returned — and the likely mistake.
# Until you write the body the check says *not solved yet*, and the notebook still runs to the end. Worked
# solution: [solutions/07_performance_solutions.ipynb](solutions/07_performance_solutions.ipynb).

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1 — the decode floor
#
# Write `decode_floor_us(hidden, inter, top_k, tp, bandwidth_tbps)`: the weight-bandwidth floor, in µs, of
# one token (M = 1) on one tensor-parallel rank — the bf16 weights of its `top_k` experts (each rank holds
# an $I/tp$ slice of w1, w3 and w2) read once at `bandwidth_tbps` TB/s. Compare your TP = 8 answer with the
# time the recorded H200 run needs at TP = 8, $M = 1$ (section 5).

# %% slideshow={"slide_type": "-"}
from moe_lib.teach.exercises import check_decode_floor


def decode_floor_us(hidden: int, inter: int, top_k: int, tp: int, bandwidth_tbps: float) -> float:
    """µs to read one token's expert weights (bf16) on one rank at bandwidth_tbps TB/s."""
    raise NotImplementedError  # your code here


check_decode_floor(decode_floor_us)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * The **floor** of a call is the larger of the touched experts' weight bytes over the copy bandwidth and the
#   FLOPs over the matmul rate. The bytes saturate by $M \approx 16$, so the floor is flat up to the **ridge**,
#   where compute takes over.
# * A **roofline** shows every point against both limits; the gap under the roof is the missing share of the floor.

# %% [markdown] slideshow={"slide_type": "notes"}
# * One **plan** holds every decision of a call — tiles, decode or aligned layout, TMA, how the sum over $k$ is
#   made, split tail, PDL — and is computed from shapes alone, so a CPU can show what an H200 runs.
# * Each production change was measured before and after, against the noise of two machines: tuned tiles at
#   small $M$, the TMA layout at large $M$, and smaller gains from the atomic k-sum, the split tail and PDL;
#   a clear moved into GEMM1 won only up to 256 tokens and is kept only there; warp specialization won nothing.
# * Between two table rows the nearest **ratio** picks the faster row more often than the nearest difference.
# * The remaining gaps have names: a fixed cost per call at small $M$ and high TP, the dip near the ridge, and
#   at the largest batches the card's power budget.
#
# **Next — [08 · tensor parallel](08_tensor_parallel.ipynb):** how the $1/tp$ slices of section 1 are cut, and
# what the all-reduce that joins them costs.
