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
# # 10 · The layer: `MixtralMoE`, a checkpoint, and the whole model
#
# Every piece is built: the gate (01), fp32 top-k routing (03), the fused Triton experts (05–06), and the
# tensor-parallel shards (08). This notebook puts them into one `torch.nn.Module`, `moe_lib.layer.MixtralMoE`,
# shaped like vLLM's layer of the same name:
#
# $$
# \texttt{hidden\_states}\ (\dots, H)
# \xrightarrow{\ \text{gate}\ } \text{logits}\ (M, E)
# \xrightarrow{\ \text{topk\_softmax}\ } (w, \text{ids})\ (M, k)
# \xrightarrow{\ \text{fused\_experts}\ } (M, H)
# \xrightarrow{\ \text{all-reduce over TP ranks}\ } (\dots, H).
# $$

# %% [markdown] slideshow={"slide_type": "notes"}
# A layer is only as good as the weights in it, so the notebook then reads them the way a server does —
# one layer at a time, straight out of a Hugging Face safetensors checkpoint — and finally swaps our layer
# into a whole transformers Mixtral: same logits, same generated tokens.
#
# The checkpoint is a tiny Mixtral (2 layers, 8 experts, top-2, $H = 64$, $I = 128$), made by
# `python -m moe_lib.checkpoint make-tiny data/tiny_mixtral` and committed with its *golden* outputs.

# %% slideshow={"slide_type": "skip"}
# %matplotlib inline
import moe_lib  # first: without a GPU it switches Triton to its interpreter, before anything imports Triton

import shutil
import tempfile
from pathlib import Path

import torch

from moe_lib import checkpoint
from moe_lib.teach import viz
from moe_lib.layer import MixtralMoE
from moe_lib.model import record_routing, replace_moe_blocks
from moe_lib.parallel import shard_w13, shard_w2
from moe_lib.testing import randn, rel_err, seeded, verdict

torch.set_printoptions(precision=4, sci_mode=False)
REPO = Path(moe_lib.__file__).resolve().parent.parent
CKPT = checkpoint.TINY_MIXTRAL  # data/tiny_mixtral

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. A checkpoint on disk
#
# A Hugging Face checkpoint is a folder: `config.json` (the architecture's numbers), and the weights in
# **safetensors** files — either one `model.safetensors` or, for large models, shards listed in
# `model.safetensors.index.json` (Mixtral 8x7B has 19 shards, ~93 GB).

# %% slideshow={"slide_type": "-"}
for file in sorted(CKPT.iterdir()):
    print(f"{str(file.relative_to(REPO)):<42} {file.stat().st_size / 1e3:8.1f} kB")

config = checkpoint.read_config(CKPT)
moe_cfg = checkpoint.moe_config(config)
E, K, H, I = moe_cfg.num_experts, moe_cfg.top_k, moe_cfg.hidden_size, moe_cfg.intermediate_size
print(f"\n{config['num_hidden_layers']} layers, E = {E} experts, top_k = {K}, H = {H}, I = {I}, "
      f"vocabulary {config['vocab_size']}, {config['dtype']}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# A safetensors file is a small JSON **header** — each tensor's name, dtype, shape and byte range — followed
# by the raw bytes. `checkpoint.open_checkpoint` reads only the headers (of every shard) to learn which tensor
# lives where. Reading a tensor later memory-maps its byte range and nothing else, so a server can load
# layer 17 of a 93 GB model without touching the rest.

# %% [markdown] slideshow={"slide_type": "notes"}
# And there is no code in the file: unlike the older
# pickle-based `pytorch_model.bin`, opening it cannot run anything — `moe_lib.checkpoint` refuses pickles.
#
# Here are layer 0's MoE tensors, under the names every Mixtral checkpoint uses:

# %% slideshow={"slide_type": "-"}
ckpt = checkpoint.open_checkpoint(CKPT)
print(f"{len(ckpt.weight_map)} tensors in {len(ckpt.files)} file; MoE weights in layers {ckpt.moe_layers()}\n")
names = ckpt.moe_names(0)
for name in names[:4] + ["..."] + names[-3:]:
    if name == "...":
        print(f"  ... ({len(names) - 7} more: experts 1 to {E - 2} alike)")
    else:
        print(f"  {name:<52} {ckpt.dtypes[name]}  {ckpt.shapes[name]}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# $3E + 1 = 25$ tensors: one router, and **one matrix per expert and projection** — `w1` (gate, $I \times H$),
# `w3` (up, $I \times H$), `w2` (down, $H \times I$). That is the original Mixtral release's layout, and
# `save_pretrained` in transformers 5 still writes it (it converts on the way out), so checkpoints stay
# readable by older code.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Two naming schemes for the same numbers
#
# In memory, transformers 5 keeps the *fused* layout of notebook 04: all experts in two 3-D tensors. The
# unmodified model, loaded by transformers itself (`checkpoint.load_hf_model` wraps `from_pretrained`:
# safetensors only, the plain expert loop, no progress bar):

# %% slideshow={"slide_type": "-"}
hf = checkpoint.load_hf_model(CKPT)
hf_block = hf.model.layers[0].mlp
for key, tensor in hf_block.state_dict().items():
    print(f"  model.layers.0.mlp.{key:<22} {tuple(tensor.shape)}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# The conversion is a stack: `gate_up_proj[e]` is `w1` on top of `w3`, and `down_proj[e]` is `w2` as is.
# That is exactly our `w13` $(E, 2I, H)$ and `w2` $(E, H, I)$, so one stack per expert is all the loader has
# to do:

# %% slideshow={"slide_type": "-"}
legacy = checkpoint.read_moe_weights(ckpt, 0)  # name -> tensor, only layer 0's 25 tensors
prefix = "model.layers.0.block_sparse_moe."
w13_from_legacy = torch.stack([
    torch.cat([legacy[f"{prefix}experts.{e}.w1.weight"], legacy[f"{prefix}experts.{e}.w3.weight"]])  # (2I, H)
    for e in range(E)
])  # (E, 2I, H)
w2_from_legacy = torch.stack([legacy[f"{prefix}experts.{e}.w2.weight"] for e in range(E)])  # (E, H, I)
print(verdict("stacked [w1; w3] vs HF gate_up_proj", w13_from_legacy, hf_block.experts.gate_up_proj))
print(verdict("stacked w2 vs HF down_proj", w2_from_legacy, hf_block.experts.down_proj))
print(verdict("gate.weight vs HF router weight", legacy[f"{prefix}gate.weight"], hf_block.gate.weight))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Building the layer
#
# `MixtralMoE(num_experts, top_k, hidden_size, intermediate_size, params_dtype, tp_size, tp_rank)` holds the
# replicated gate and this rank's `w13`/`w2`. `load_weights` takes an iterable of `(name, tensor)` pairs, as a
# server streams them out of the checkpoint, and maps each name onto its parameter. It accepts either naming
# scheme, behind any prefix (`model.layers.0.`). `checkpoint.iter_moe_weights(ckpt, layer)` is that stream.

# %% slideshow={"slide_type": "-"}
moe = MixtralMoE(E, K, H, I, params_dtype=torch.float32)
loaded = moe.load_weights(checkpoint.iter_moe_weights(ckpt, 0))
print(moe)
print(f"\nloaded {len(loaded)} tensors into:")
for name, param in moe.named_parameters():
    print(f"  {name:<12} {tuple(param.shape)}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now the layer against transformers' own block, on fresh random activations of shape
# (batch, sequence, $H$) — the shape a decoder layer hands its MLP:

# %% slideshow={"slide_type": "-"}
x = randn(2, 7, H, generator=seeded(0))  # (batch, seq, H)
with torch.no_grad():
    ours, theirs = moe(x), hf_block(x)  # (2, 7, H) each
print("output shape:", tuple(ours.shape))
print(verdict("MixtralMoE vs HF MixtralSparseMoeBlock, layer 0", ours, theirs))

# %% [markdown] slideshow={"slide_type": "subslide"}
# `forward` flattens whatever leads the last dimension into $M$ tokens and restores it at the end, so one
# token, a batch of tokens and a batch of sequences all work:

# %% slideshow={"slide_type": "-"}
lines = []
for shape in [(H,), (5, H), (2, 7, H)]:
    xs = x.reshape(-1, H)[: torch.Size(shape[:-1]).numel()].reshape(shape)  # the first tokens of x
    lines.append(f"  input {str(shape):<12} -> output {tuple(moe(xs).shape)}")
print("\n".join(lines))

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same layer loads just as well from transformers 5's in-memory names — here the block's own state dict
# with its full prefix:

# %% slideshow={"slide_type": "-"}
moe_5x = MixtralMoE(E, K, H, I, params_dtype=torch.float32)
print(moe_5x.load_weights((f"model.layers.0.mlp.{k}", t) for k, t in hf_block.state_dict().items()))
print(verdict("loaded from 5.x names vs from legacy names, w13", moe_5x.w13, moe.w13))
print(verdict("loaded from 5.x names vs from legacy names, w2", moe_5x.w2, moe.w2))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. When a checkpoint is wrong
#
# Real checkpoints get cut off by a full disk, mixed up between models, or saved by a script with a bug.
# The loader's rule is **all or nothing**: it checks every tensor and fills *temporaries*; only when the
# whole set is present, known and of the right shape does it copy them into the parameters. Three ways to
# fail, each on the layer we just loaded:

# %% slideshow={"slide_type": "-"}
before = moe.w13.clone()
TMP = tempfile.mkdtemp()  # a scratch folder, shown as <tmp> below


def show_error(what, action):
    """Run action, which must raise a ValueError, and print the message."""
    try:
        action()
    except ValueError as err:
        print(f"{what}:\n  {type(err).__name__}: {err}\n".replace(TMP, "<tmp>"))
    else:
        raise AssertionError(f"{what}: no error")


no_expert_3 = [(n, t) for n, t in checkpoint.iter_moe_weights(ckpt, 0) if ".experts.3." not in n]
show_error("a checkpoint without expert 3", lambda: moe.load_weights(no_expert_3))

wrong_shape = [(n, t[:, :100] if n.endswith("experts.5.w2.weight") else t)
               for n, t in checkpoint.iter_moe_weights(ckpt, 0)]
show_error("w2 of expert 5 with 100 columns", lambda: moe.load_weights(wrong_shape))

truncated = Path(TMP) / "model.safetensors"
truncated.write_bytes((CKPT / "model.safetensors").read_bytes()[:1_000_000])  # a download cut short
show_error("a truncated file", lambda: moe.load_weights(checkpoint.iter_moe_weights(truncated, 0)))
shutil.rmtree(TMP)

print(verdict("w13 after three failed loads vs before", moe.w13, before))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Tensor parallel: two ranks, one process
#
# With `tp_size = 2`, rank $r$ keeps rows $[rI/2, (r+1)I/2)$ of *each* of `w1` and `w3` — cut separately, so
# its local `w13` is `[w1 shard; w3 shard]` and SiLU-and-mul needs nothing from the other rank — and the same
# columns of `w2`. `load_weights` does the cutting with `moe_lib.parallel.shard_w13` / `shard_w2` from the
# full checkpoint tensors, so every rank reads the same files:

# %% slideshow={"slide_type": "-"} alt="Diagram of the layer's weights cut for 2 tensor-parallel ranks: each rank holds half of w1, half of w3 and the matching half of w2's columns."
viz.shard_layout(I, 2)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Each rank's output is a partial sum over its half of $I$. In a real run each rank is a process and
# `reduce_results=True` (the default) all-reduces the partials (notebook 08 runs that with gloo and NCCL).
# In one process we build both ranks with `reduce_results=False` and add the partials ourselves:

# %% slideshow={"slide_type": "-"}
ranks = [MixtralMoE(E, K, H, I, params_dtype=torch.float32, tp_size=2, tp_rank=r, reduce_results=False)
         for r in range(2)]
for rank in ranks:
    rank.load_weights(checkpoint.iter_moe_weights(ckpt, 0))
    print(f"rank {rank.tp_rank}: w13 {tuple(rank.w13.shape)}, w2 {tuple(rank.w2.shape)}")

with torch.no_grad():
    partials = [rank(x) for rank in ranks]  # (2, 7, H) each
print(verdict("rank 0 w13 vs shard_w13(full w13, 2, 0)", ranks[0].w13, shard_w13(moe.w13, 2, 0)))
print(verdict("rank 1 w2 vs shard_w2(full w2, 2, 1)", ranks[1].w2, shard_w2(moe.w2, 2, 1)))
print(verdict("partial(rank 0) + partial(rank 1) vs tp_size = 1", partials[0] + partials[1], ours))
print(f"partial(rank 0) alone vs tp_size = 1: rel err {rel_err(partials[0], ours):.2f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# The last line is the point of the all-reduce: one rank alone is far off. Asking for the reduction without
# a process group is an error, not a silent partial result:

# %% slideshow={"slide_type": "-"}
try:
    MixtralMoE(E, K, H, I, params_dtype=torch.float32, tp_size=2, tp_rank=0)(x)
except RuntimeError as err:
    print(f"RuntimeError: {err}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. The whole model
#
# `moe_lib.model.replace_moe_blocks(model, checkpoint)` finds every `MixtralSparseMoeBlock` in a transformers
# model, builds a `MixtralMoE` for it from the model's config, loads that layer's weights from the checkpoint,
# and puts it in the block's place. Attention, norms and embeddings stay transformers'. First the reference:
# the unmodified model against the golden logits recorded when the checkpoint was made.

# %% slideshow={"slide_type": "-"}
golden, meta = checkpoint.read_golden(CKPT)
print({k: tuple(v.shape) for k, v in golden.items()})
with torch.no_grad():
    hf_logits = hf(golden["input_ids"]).logits  # (B, T, vocab)
print(verdict("unmodified HF model vs golden logits", hf_logits, golden["logits"]))

# %% slideshow={"slide_type": "subslide"}
model = checkpoint.load_hf_model(CKPT)
layers = replace_moe_blocks(model, CKPT)
print(model.model.layers[1])

# %% slideshow={"slide_type": "subslide"}
with torch.no_grad():
    our_logits = model(golden["input_ids"]).logits  # (B, T, vocab)
print(verdict("model with MixtralMoE vs unmodified HF model, logits", our_logits, hf_logits))
print(verdict("model with MixtralMoE vs golden logits", our_logits, golden["logits"]))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Is that a real test? The MoE blocks are half of each decoder layer, and with this checkpoint they move the
# logits a lot. Without them (their output zeroed) the logits are nowhere near:

# %% slideshow={"slide_type": "-"}
with torch.no_grad():
    saved = [layer.w2.clone() for layer in layers]
    for layer in layers:
        layer.w2.zero_()
    no_moe = model(golden["input_ids"]).logits
    for layer, w2 in zip(layers, saved, strict=True):
        layer.w2.copy_(w2)
print(f"model with MoE outputs zeroed vs golden: rel err {rel_err(no_moe, golden['logits']):.2f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Generating text, greedily
#
# `generate` runs the prompt through the model once (the *prefill*: $M$ = batch × prompt length), then one
# token per step (*decode*: $M$ = batch), each time picking the most likely next token. Our layer sees both
# shapes. Same logits should mean the same tokens:

# %% slideshow={"slide_type": "-"}
prompt = golden["prompt_ids"]  # (B, 6)
ours_gen = checkpoint.golden_run(model, golden["input_ids"], prompt)["greedy_ids"]  # (B, 6 + 10)
hf_gen = checkpoint.golden_run(hf, golden["input_ids"], prompt)["greedy_ids"]
for b in range(prompt.shape[0]):
    print(f"prompt {prompt[b].tolist()}")
    print(f"  HF         -> {hf_gen[b, prompt.shape[1]:].tolist()}")
    print(f"  MixtralMoE -> {ours_gen[b, prompt.shape[1]:].tolist()}")
print("\nidentical to HF:", torch.equal(ours_gen, hf_gen), "| identical to golden:",
      torch.equal(ours_gen, golden["greedy_ids"]))

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7. Which experts does the model use?
#
# `record_routing(layers)` collects, for every forward call of each layer, the very `(topk_weights, topk_ids)`
# the layer routed with. One pass over a 48-token sequence:

# %% slideshow={"slide_type": "-"} alt="Expert usage over a 48-token sequence with top-2: for each layer a heatmap of routing weight by expert and position, and bars of each expert's share of slots against the balanced share."
sequence = torch.randint(0, config["vocab_size"], (1, 48), generator=seeded(7))  # (1, T)
with record_routing(layers) as log, torch.no_grad():
    model(sequence)
routing = [calls[0] for calls in log]  # per layer: ((T, k) weights, (T, k) ids)
for layer_idx, (_, ids) in enumerate(routing):
    counts = torch.bincount(ids.flatten().long(), minlength=E).tolist()
    print(f"layer {layer_idx}: slots per expert {counts}  (balanced: {48 * K / E:.0f} each)")
viz.expert_usage(routing, E)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Every token uses 2 of the 8 experts in every layer, and the choice changes from position to position and
# from layer to layer: there is no "expert for this sequence". The load is uneven even in this random model —
# in layer 1 one expert takes 30 of the 96 slots and another 2 — which is what the expert-parallel balancing
# of notebook 09 is about.

# %% [markdown] slideshow={"slide_type": "notes"}
# (The same sequence goes to different experts in layer 0 and layer 1 because each layer has its own router.)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## What you learned
#
# * `MixtralMoE` is the whole layer: replicated gate → fp32 top-k → fused experts → all-reduce. Its `w13`
#   $(E, 2I/tp, H)$ and `w2` $(E, H, I/tp)$ are this rank's shards; `reduce_results` says whether forward sums
#   the ranks' partials.
# * Checkpoints store one matrix per expert (`w1`, `w2`, `w3`); transformers 5 and we keep them fused. Loading
#   is a stack per expert, then a cut per rank — `w1` and `w3` cut separately.

# %% [markdown] slideshow={"slide_type": "notes"}
# * safetensors lets a server read one layer from a huge checkpoint without unpickling anything; a careful
#   loader checks every name and shape and commits all or nothing.
# * Swapped into a transformers Mixtral, the layer reproduces the model's logits to fp32 rounding and its
#   greedy tokens exactly.
#
# **Beyond this notebook:** the same `MixtralMoE`, built with `tp_size=2, tp_rank=r` in each of two processes,
# loads the same checkpoint and all-reduces over NCCL on GPUs — see notebook 08 for multi-process runs.
# `python -m moe_lib.parallel.golden --tp 2` runs this whole tiny model that way (gloo on the CPU) and checks
# every rank against the golden logits and tokens.
#
# **Next — [11 · FP8 experts](11_fp8_experts.ipynb):** the same experts in one byte per weight — the e4m3
# format, scales, the kernel's delta — and this tiny model with its experts in FP8.
