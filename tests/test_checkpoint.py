"""moe_lib.checkpoint: parsing Hugging Face MoE names, reading one layer out of single-file and sharded safetensors
checkpoints, refusing pickles, clear errors for truncated, corrupt and incomplete files, and the tiny checkpoint
being exactly what ``make-tiny`` makes."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moe_lib import checkpoint as ck
from moe_lib.checkpoint import CheckpointError, MoEName
from moe_lib.config import MoEConfig, QuantConfig
from moe_lib.layer import MixtralMoE

TINY = ck.TINY_MIXTRAL
E, K, H, I = 8, 2, 64, 128


def all_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {n: f.get_tensor(n) for n in f.keys()}


@pytest.fixture(scope="module")
def tiny_tensors() -> dict[str, torch.Tensor]:
    return all_tensors(TINY / "model.safetensors")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The tiny model saved by transformers in ~300 kB shards, with its model.safetensors.index.json."""
    out = tmp_path_factory.mktemp("sharded")
    model = ck.load_hf_model(TINY)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        model.save_pretrained(out, max_shard_size="300KB")
    finally:
        transformers.utils.logging.enable_progress_bar()
    return out


def copy_tiny(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY / name, dst / name)
    return dst


# ----------------------------------------------------------------------------------------------------
# Hugging Face names
# ----------------------------------------------------------------------------------------------------
L0 = "model.layers.0.block_sparse_moe."
F3 = "language_model.model.layers.3.mlp."


@pytest.mark.parametrize(
    "name,parsed,layer",
    [
        (L0 + "gate.weight", MoEName(L0, "gate"), 0),
        (L0 + "experts.7.w1.weight", MoEName(L0, "w1", 7), 0),
        (L0 + "experts.12.w2.weight", MoEName(L0, "w2", 12), 0),
        ("block_sparse_moe.experts.0.w3.weight", MoEName("block_sparse_moe.", "w3", 0), None),
        ("layers.17.block_sparse_moe.gate.weight", MoEName("layers.17.block_sparse_moe.", "gate"), 17),
        (F3 + "gate.weight", MoEName(F3, "gate"), 3),
        (F3 + "experts.gate_up_proj", MoEName(F3, "gate_up"), 3),
        (F3 + "experts.down_proj", MoEName(F3, "down"), 3),
        ("mlp.experts.down_proj", MoEName("mlp.", "down"), None),
        # FP8 checkpoints: each expert matrix's scales
        (L0 + "experts.7.w1.weight_scale", MoEName(L0, "w1", 7, "weight_scale"), 0),
        (L0 + "experts.0.w2.weight_scale_inv", MoEName(L0, "w2", 0, "weight_scale_inv"), 0),
        (L0 + "experts.3.w3.input_scale", MoEName(L0, "w3", 3, "input_scale"), 0),
        # under a MoE block, but not a tensor the layer knows: the reader hands them over, the layer refuses them
        (L0 + "experts.0.w1.scale", None, 0),
        (L0 + "experts.0.w1.output_scale", None, 0),
        (L0 + "gate.weight_scale", None, 0),  # the router is never quantized
        (F3 + "experts.gate_up_proj_scale", None, 3),
        (L0 + "experts.0.w4.weight", None, 0),
        (L0 + "experts.0.w1.bias", None, 0),
        (L0 + "experts.gate_up_proj", None, 0),  # a fused name under a legacy block
        (F3 + "experts.0.w1.weight", None, 3),  # a legacy name under a fused block
        # not MoE at all
        ("model.layers.0.mlp.gate_proj.weight", None, None),  # a dense model's MLP
        ("model.layers.0.self_attn.q_proj.weight", None, None),
        ("lm_head.weight", None, None),
    ],
)
def test_moe_names(name, parsed, layer):
    assert ck.parse_moe_name(name) == parsed
    assert ck.moe_layer_of(name) == layer
    if parsed is not None:
        assert parsed.name == name  # the inverse


def test_complete_moe_names_and_layer_index():
    legacy = ck.complete_moe_names(L0, E)
    assert len(legacy) == 3 * E + 1 and legacy[0] == MoEName(L0, "gate")
    assert {n.name for n in legacy} == set(ck.open_checkpoint(TINY).moe_names(0))
    assert [n.name for n in ck.complete_moe_names(F3, E)] == [
        F3 + "gate.weight", F3 + "experts.gate_up_proj", F3 + "experts.down_proj"]
    assert MoEName(L0, "w1", 2).key == "w1" and MoEName(L0, "w1", 2, "input_scale").key == "w1.input_scale"
    assert [ck.layer_index(n) for n in ("model.layers.3.mlp", "model.layers.3.mlp.", "layers.0.block_sparse_moe",
                                        "model.layers.3", "model.layers.3.mlp.experts", "extra")] == [
        3, 3, 0, None, None, None]


# ----------------------------------------------------------------------------------------------------
# The committed tiny checkpoint
# ----------------------------------------------------------------------------------------------------
def test_tiny_checkpoint_files_and_names(tiny_tensors):
    assert sorted(p.name for p in TINY.iterdir()) == [
        "config.json", "generation_config.json", "golden.safetensors", "model.safetensors"]
    assert sum(p.stat().st_size for p in TINY.iterdir()) < 3_000_000  # a few MB at most
    ckpt = ck.open_checkpoint(TINY)
    assert ckpt.moe_layers() == [0, 1]
    assert ckpt.root == TINY and ckpt.files == (TINY / "model.safetensors",)
    for layer in (0, 1):
        names = ckpt.moe_names(layer)
        p = f"model.layers.{layer}.block_sparse_moe."
        expected = {p + "gate.weight"} | {f"{p}experts.{e}.w{j}.weight" for e in range(E) for j in (1, 2, 3)}
        assert set(names) == expected  # the legacy names save_pretrained writes
        assert ckpt.shapes[p + "gate.weight"] == (E, H)
        assert ckpt.shapes[p + "experts.0.w1.weight"] == (I, H) and ckpt.shapes[p + "experts.0.w2.weight"] == (H, I)
        assert {ckpt.dtypes[n] for n in names} == {"F32"}
    cfg = ck.read_config(TINY)
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["num_hidden_layers"]) == (8, 2, 2)
    assert 64 <= cfg["hidden_size"] <= 128
    assert ck.moe_config(cfg) == MoEConfig(E, K, H, I, dtype=torch.float32)


def test_golden_outputs_are_consistent():
    golden, meta = ck.read_golden(TINY)
    B, T, P = ck.GOLDEN_BATCH, ck.GOLDEN_LEN, ck.GOLDEN_PROMPT_LEN
    assert golden["logits"].shape == (B, T, 256) and golden["logits"].dtype == torch.float32
    assert golden["greedy_ids"].shape == (B, P + ck.GOLDEN_NEW_TOKENS)
    assert torch.equal(golden["greedy_ids"][:, :P], golden["prompt_ids"])
    assert len(set(golden["greedy_ids"][:, P:].flatten().tolist())) > 3  # a varied, not a stuck, generation
    assert meta["made_by"].startswith("python -m moe_lib.checkpoint make-tiny")


def test_make_tiny_reproduces_the_committed_files(tmp_path):
    import transformers

    recorded = ck.read_config(TINY)["transformers_version"]
    if transformers.__version__ != recorded:
        pytest.skip(f"made with transformers {recorded}; initialization order may differ in {transformers.__version__}")
    sizes = ck.make_tiny(tmp_path / "tiny")
    assert set(sizes) == {p.name for p in TINY.iterdir()}
    for name in ("model.safetensors", "golden.safetensors"):
        new, old = all_tensors(tmp_path / "tiny" / name), all_tensors(TINY / name)
        assert new.keys() == old.keys()
        for key in old:
            if key == "logits":
                # fp32 matmuls round differently on another CPU (BLAS picks its kernels per processor): the
                # weights, inputs and greedy tokens are bitwise, the logits equal to fp32 rounding.
                err = ((new[key] - old[key]).norm() / old[key].norm()).item()
                assert err < 1e-5, f"{name}: logits differ from the committed file by {err:.1e}"
            else:
                assert torch.equal(new[key], old[key]), f"{name}: {key} differs from the committed file"
    assert json.loads((tmp_path / "tiny" / "config.json").read_text()) == ck.read_config(TINY)


# ----------------------------------------------------------------------------------------------------
# Reading a layer
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 1])
def test_read_layer_equals_file_contents(layer, tiny_tensors):
    got = ck.read_moe_weights(TINY, layer)
    assert len(got) == 3 * E + 1
    for name, t in got.items():
        assert f"layers.{layer}." in name and torch.equal(t, tiny_tensors[name])


def test_reads_only_the_layers_tensors(monkeypatch):
    """safe_open hands out only the asked-for tensors: nothing else of the model is read."""
    requested = []
    real_safe_open = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **kw):
            self._f = real_safe_open(*a, **kw)

        def __enter__(self):
            self._inner = self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def get_tensor(self, name):
            requested.append(name)
            return self._inner.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    list(ck.iter_moe_weights(TINY, 1))
    assert len(requested) == 3 * E + 1 and all(n.startswith("model.layers.1.block_sparse_moe.") for n in requested)


@pytest.mark.parametrize("entry", ["dir", "file", "str"])
def test_open_single_file_forms(entry):
    path = {"dir": TINY, "file": TINY / "model.safetensors", "str": str(TINY)}[entry]
    ckpt = ck.open_checkpoint(path)
    assert ckpt.moe_layers() == [0, 1] and len(ckpt.weight_map) == 65
    assert ck.open_checkpoint(ckpt) is ckpt


def test_sharded_checkpoint(sharded, tiny_tensors):
    index = json.loads((sharded / ck.INDEX_NAME).read_text())
    ckpt = ck.open_checkpoint(sharded)
    assert len(ckpt.files) >= 3 and ckpt.weight_map.keys() == tiny_tensors.keys()
    # At least one layer's MoE tensors are spread over two shards: the reader must follow the index.
    assert any(len({index["weight_map"][n] for n in ckpt.moe_names(layer)}) > 1 for layer in (0, 1))
    assert ck.open_checkpoint(sharded / ck.INDEX_NAME).weight_map == ckpt.weight_map
    for layer in (0, 1):
        got = ck.read_moe_weights(sharded, layer)
        assert got.keys() == ck.read_moe_weights(TINY, layer).keys()
        assert all(torch.equal(t, tiny_tensors[n]) for n, t in got.items())
        a, b = MixtralMoE(E, K, H, I), MixtralMoE(E, K, H, I)
        a.load_weights(ck.iter_moe_weights(sharded, layer))
        b.load_weights(ck.iter_moe_weights(TINY, layer))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_fused_names_in_a_file(tmp_path):
    """A checkpoint written with transformers 5.x in-memory names (one tensor per projection) reads too."""
    model = ck.load_hf_model(TINY)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if ".mlp." in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    ckpt = ck.open_checkpoint(tmp_path)
    assert ckpt.moe_names(1) == sorted(n for n in state if "layers.1." in n)
    a, b = MixtralMoE(E, K, H, I), MixtralMoE(E, K, H, I)
    a.load_weights(ck.iter_moe_weights(ckpt, 1))
    b.load_weights(ck.iter_moe_weights(TINY, 1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_dense_mlp_names_are_not_moe(tmp_path):
    save_file({"model.layers.0.mlp.gate_proj.weight": torch.randn(4, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no MoE weights for layer 0; MoE layers present: none"):
        ck.read_moe_weights(tmp_path, 0)


def test_missing_layer_and_bad_layer_arg():
    with pytest.raises(CheckpointError, match=r"no MoE weights for layer 5; MoE layers present: \[0, 1\]"):
        ck.read_moe_weights(TINY, 5)
    with pytest.raises(TypeError, match="layer"):
        ck.read_moe_weights(TINY, "0")


# ----------------------------------------------------------------------------------------------------
# Damaged, incomplete and unsafe checkpoints
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 5, 8, 100, 0.5, -1])
def test_truncated_file(keep, tmp_path):
    data = (TINY / "model.safetensors").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    (tmp_path / "model.safetensors").write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        list(ck.iter_moe_weights(tmp_path / "model.safetensors", 0))


@pytest.mark.parametrize("damage", ["garbage", "header_json", "header_length"])
def test_corrupt_header(damage, tmp_path):
    data = bytearray((TINY / "model.safetensors").read_bytes())
    if damage == "garbage":
        data = bytearray(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy())
    elif damage == "header_json":
        data[8:12] = b"}}}}"
    else:
        data[0:8] = (len(data) * 4).to_bytes(8, "little")
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.open_checkpoint(tmp_path)


def test_corrupt_tensor_bytes_become_an_error(tmp_path, tiny_tensors):
    """Bytes of one tensor overwritten with 0xFF (NaN in fp32): the reader refuses that tensor's layer."""
    path = copy_tiny(tmp_path) / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    name = "model.layers.1.block_sparse_moe.experts.4.w3.weight"
    start = 8 + header_len + header[name]["data_offsets"][0]
    data[start + 400 : start + 480] = b"\xff" * 80
    path.write_bytes(bytes(data))
    assert len(ck.read_moe_weights(path, 0)) == 25  # layer 0 is intact
    layer = MixtralMoE(E, K, H, I)
    before = layer.w13.clone()
    with pytest.raises(CheckpointError, match=r"experts\.4\.w3\.weight holds NaN or Inf"):
        layer.load_weights(ck.iter_moe_weights(path, 1))
    assert torch.equal(layer.w13, before)


def test_checkpoint_missing_one_expert(tmp_path, tiny_tensors):
    kept = {n: t for n, t in tiny_tensors.items() if ".experts.5." not in n}
    save_file(kept, str(tmp_path / "model.safetensors"))
    layer = MixtralMoE(E, K, H, I)
    before = [p.clone() for p in layer.parameters()]
    with pytest.raises(ValueError, match=r"missing \(3\): model\.layers\.0\.block_sparse_moe\.experts\.5\.w1\.weight"):
        layer.load_weights(ck.iter_moe_weights(tmp_path, 0))
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))


def test_checkpoint_with_a_wrong_shape(tmp_path, tiny_tensors):
    changed = dict(tiny_tensors)
    name = "model.layers.1.block_sparse_moe.experts.2.w2.weight"
    changed[name] = torch.randn(H, I + 8, generator=torch.Generator().manual_seed(0))
    save_file(changed, str(tmp_path / "model.safetensors"))
    layer = MixtralMoE(E, K, H, I)
    before = [p.clone() for p in layer.parameters()]
    with pytest.raises(ValueError, match=r"experts\.2\.w2\.weight has shape \(64, 136\), expected \(64, 128\)"):
        layer.load_weights(ck.iter_moe_weights(tmp_path, 1))
    assert all(torch.equal(p, b) for p, b in zip(layer.parameters(), before, strict=True))


class _Boom:
    """Unpickling this would create a marker file: proof that a loader unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("layout", ["dir", "file", "pt", "index"])
def test_pickles_are_refused_never_opened(layout, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(marker))
    if layout == "dir":
        (tmp_path / "pytorch_model.bin").write_bytes(payload)
        target = tmp_path
    elif layout in ("file", "pt"):
        target = tmp_path / ("pytorch_model.bin" if layout == "file" else "weights.pt")
        target.write_bytes(payload)
    else:
        (tmp_path / "pytorch_model-00001-of-00001.bin").write_bytes(payload)
        target = tmp_path / "pytorch_model.bin.index.json"
        target.write_text(json.dumps({"weight_map": {"model.layers.0.block_sparse_moe.gate.weight":
                                                     "pytorch_model-00001-of-00001.bin"}}))
    with pytest.raises(CheckpointError, match="pickle"):
        ck.open_checkpoint(target)
    with pytest.raises(CheckpointError, match="pickle"):
        list(ck.iter_moe_weights(target, 0))
    assert not marker.exists()


def test_index_problems(tmp_path, sharded):
    for f in sharded.iterdir():
        shutil.copy(f, tmp_path / f.name)
    index_path = tmp_path / ck.INDEX_NAME
    index = json.loads(index_path.read_text())

    def with_index(obj):
        index_path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return tmp_path

    with pytest.raises(CheckpointError, match="not valid JSON"):
        ck.open_checkpoint(with_index("{weight_map:"))
    with pytest.raises(CheckpointError, match="weight_map"):
        ck.open_checkpoint(with_index({"metadata": {}}))
    name = next(iter(index["weight_map"]))
    escaped = {**index, "weight_map": {**index["weight_map"], name: "../elsewhere.safetensors"}}
    with pytest.raises(CheckpointError, match="not a file name in the same folder"):
        ck.open_checkpoint(with_index(escaped))
    missing_file = {**index, "weight_map": {**index["weight_map"], name: "model-00099-of-00099.safetensors"}}
    with pytest.raises(CheckpointError, match="file not found"):
        ck.open_checkpoint(with_index(missing_file))
    other_file = next(f for f in set(index["weight_map"].values()) if f != index["weight_map"][name])
    wrong_file = {**index, "weight_map": {**index["weight_map"], name: other_file}}
    with pytest.raises(CheckpointError, match=f"lacks 1 tensor.*{name}"):
        ck.open_checkpoint(with_index(wrong_file))


def test_folder_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ck.open_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        ck.open_checkpoint(tmp_path)
    for i in range(2):
        save_file({"x": torch.zeros(2)}, str(tmp_path / f"part{i}.safetensors"))
    with pytest.raises(CheckpointError, match="2 .safetensors files but no model.safetensors.index.json"):
        ck.open_checkpoint(tmp_path)
    (tmp_path / "part1.safetensors").unlink()
    assert ck.open_checkpoint(tmp_path).files == (tmp_path / "part0.safetensors",)  # one file: its name is free
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="expected a directory"):
        ck.open_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(TypeError, match="path"):
        ck.open_checkpoint(3)
    with pytest.raises(CheckpointError, match="no config.json"):
        ck.read_config(tmp_path)


def test_moe_config_errors():
    cfg = ck.read_config(TINY)
    with pytest.raises(CheckpointError, match="num_local_experts"):
        ck.moe_config({k: v for k, v in cfg.items() if k != "num_local_experts"})
    with pytest.raises(CheckpointError, match="dtype"):
        ck.moe_config(cfg | {"dtype": "int8"})
    with pytest.raises(TypeError, match="config"):
        ck.moe_config([1, 2])
    assert ck.moe_config(cfg | {"dtype": "bfloat16"}).dtype == torch.bfloat16


def test_load_hf_model_refuses_what_we_refuse(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(tmp_path / "unpickled")))
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="pickle"):
        ck.load_hf_model(tmp_path)
    assert not (tmp_path / "unpickled").exists()
    model = ck.load_hf_model(TINY)
    assert not model.training and model.config.num_local_experts == E


# ----------------------------------------------------------------------------------------------------
# load_hf_model is strict: every tensor of the model, nothing else, each of its shape and dtype
# ----------------------------------------------------------------------------------------------------
P0 = "model.layers.0."


def changed_checkpoint(tmp_path: Path, tiny_tensors, change) -> Path:
    tensors = dict(tiny_tensors)
    change(tensors)
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("change,line", [
    (lambda t: t.pop(P0 + "self_attn.q_proj.weight"), f"missing (1): {P0}self_attn.q_proj.weight"),
    (lambda t: t.pop(P0 + "block_sparse_moe.experts.3.w1.weight"),
     f"missing (1): {P0}block_sparse_moe.experts.3.w1.weight"),
    (lambda t: [t.pop(n) for n in list(t) if n.startswith("model.layers.1.block_sparse_moe.")],
     "missing (3): model.layers.1.mlp.gate.weight, model.layers.1.mlp.experts.gate_up_proj, "
     "model.layers.1.mlp.experts.down_proj"),
    (lambda t: t.update({P0 + "extra.weight": torch.zeros(3)}), f"unknown names (1): {P0}extra.weight"),
    (lambda t: t.update({P0 + "block_sparse_moe.experts.8.w1.weight": torch.zeros(I, H)}),
     f"unknown names (1): {P0}block_sparse_moe.experts.8.w1.weight"),
    (lambda t: t.update({P0 + "self_attn.q_proj.weight": torch.zeros(H, 32)}),
     f"wrong shape (1): {P0}self_attn.q_proj.weight (64, 32) (expected (64, 64))"),
    (lambda t: t.update({P0 + "block_sparse_moe.experts.3.w2.weight": torch.zeros(H, I + 1)}),
     f"wrong shape (1): {P0}block_sparse_moe.experts.3.w2.weight (64, 129) (expected (64, 128))"),
    (lambda t: t.update({P0 + "self_attn.q_proj.weight": torch.zeros(H, H, dtype=torch.int32)}),
     f"wrong dtype (1): {P0}self_attn.q_proj.weight I32 (the config says float32)"),
    (lambda t: t.update({"model.norm.weight": t["model.norm.weight"].half()}),
     "wrong dtype (1): model.norm.weight F16 (the config says float32)"),
])
def test_load_hf_model_refuses_an_incomplete_or_mismatched_checkpoint(change, line, tmp_path, tiny_tensors):
    path = changed_checkpoint(tmp_path, tiny_tensors, change)
    with pytest.raises(CheckpointError, match="not a complete checkpoint of this model") as info:
        ck.load_hf_model(path)
    assert line in [entry.strip() for entry in str(info.value).splitlines()]


def test_load_hf_model_takes_fused_names_and_partial_loads_only_when_asked(tmp_path, tiny_tensors):
    # transformers 5.x's own names (what save_pretrained of a loaded model writes) are complete too
    fused = {}
    for name, t in tiny_tensors.items():
        slot = ck.parse_moe_name(name)
        if slot is None:
            fused[name] = t
    for layer in (0, 1):
        d = {n: t for n, t in tiny_tensors.items() if n.startswith(f"model.layers.{layer}.block_sparse_moe.")}
        p = f"model.layers.{layer}.block_sparse_moe."
        fused[f"model.layers.{layer}.mlp.gate.weight"] = d[p + "gate.weight"]
        fused[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([d[f"{p}experts.{e}.w1.weight"], d[f"{p}experts.{e}.w3.weight"]]) for e in range(E)])
        fused[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.stack([d[f"{p}experts.{e}.w2.weight"]
                                                                          for e in range(E)])
    ck.check_complete(ck.open_checkpoint(changed_checkpoint(tmp_path, fused, lambda t: None)),
                      ck.model_tensors(ck.load_hf_model(TINY)), E, H, I, torch.float32)
    # a partial load is an explicit choice: strict=False lets transformers initialize what is missing
    partial = changed_checkpoint(tmp_path, tiny_tensors, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match="missing"):
        ck.load_hf_model(partial)
    assert ck.load_hf_model(partial, strict=False).model.norm.weight.shape == (H,)
    with pytest.raises(TypeError, match="strict"):
        ck.load_hf_model(TINY, strict="no")


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def test_cli_inspect(capsys):
    assert ck.main(["inspect", str(TINY), "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "65 tensors in 1 file(s); MoE layers [0, 1]" in out
    assert "model.layers.1.block_sparse_moe.experts.7.w2.weight" in out and "(64, 128)" in out


def test_cli_errors(capsys, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 3)
    assert ck.main(["inspect", str(tmp_path)]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ck.main(["unknown-command"])


def test_cli_make_tiny(tmp_path, capsys):
    assert ck.main(["make-tiny", str(tmp_path / "t"), "--seed", "3"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    golden, meta = ck.read_golden(tmp_path / "t")
    assert meta["seed"] == "3"
    assert not torch.equal(golden["logits"], ck.read_golden(TINY)[0]["logits"])  # another seed, another model


def test_names_sort_experts_numerically(tmp_path):
    p = "model.layers.0.block_sparse_moe."
    save_file({f"{p}experts.{e}.w1.weight": torch.zeros(1) for e in (10, 2, 1)}, str(tmp_path / "model.safetensors"))
    assert ck.open_checkpoint(tmp_path).moe_names(0) == [f"{p}experts.{e}.w1.weight" for e in (1, 2, 10)]


# ----------------------------------------------------------------------------------------------------
# FP8 checkpoints: names, shapes, dtypes, quantization_config
# ----------------------------------------------------------------------------------------------------
PER_TENSOR, STATIC = QuantConfig(), QuantConfig(activation_scheme="static")
BLOCK = QuantConfig(weight_block_size=[32, 32])
TINY_FP8, TINY_FP8_BLOCK = ck.TINY_MIXTRAL_FP8, ck.TINY_MIXTRAL_FP8_BLOCK


def test_fp8_complete_names_shapes_and_dtypes():
    counts = {None: 1 + 3 * E, PER_TENSOR: 1 + 6 * E, STATIC: 1 + 9 * E, BLOCK: 1 + 6 * E}
    for quant, n in counts.items():
        names = ck.complete_moe_names(L0, E, quant)
        assert len(names) == n == len(set(names))
    assert MoEName(L0, "w2", 5, "input_scale") in ck.complete_moe_names(L0, E, STATIC)
    assert MoEName(L0, "w2", 5, "weight_scale_inv") in ck.complete_moe_names(L0, E, BLOCK)
    with pytest.raises(ValueError, match="FP8 checkpoints are read in the legacy per-expert names"):
        ck.complete_moe_names(F3, E, PER_TENSOR)
    # scales: scalars per tensor, one per bn x bk block (ceil: I = 100 is not a multiple of 32)
    assert ck.moe_shapes(E, H, 100) == ck.moe_shapes(E, H, 100, None)
    static = ck.moe_shapes(E, H, 100, STATIC)
    assert static["w1"] == (100, H) and static["w1.weight_scale"] == () == static["w2.input_scale"]
    block = ck.moe_shapes(E, H, 100, BLOCK)
    assert block["w1.weight_scale_inv"] == (4, 2) == block["w3.weight_scale_inv"]
    assert block["w2.weight_scale_inv"] == (2, 4)
    assert "w1.input_scale" not in block and "w1.weight_scale" not in block
    assert ck.stored_dtype(MoEName(L0, "w1", 0), PER_TENSOR) == torch.float8_e4m3fn
    assert ck.stored_dtype(MoEName(L0, "w1", 0, "weight_scale"), PER_TENSOR) == torch.float32
    assert ck.stored_dtype(MoEName(L0, "gate"), PER_TENSOR) is None  # the router: the model's dtype
    assert ck.stored_dtype(MoEName(L0, "w1", 0), None) is None
    assert ck.legacy_scope("model.layers.3.mlp.") == "model.layers.3.block_sparse_moe." == ck.legacy_scope(
        "model.layers.3.block_sparse_moe.")


def test_quant_config_of_a_config_json():
    assert ck.quant_config({"hidden_size": 4}) is None
    hf = {"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": None, "fmt": "e4m3",
          "ignored_layers": ["lm_head"], "modules_to_not_convert": None}
    assert ck.quant_config({"quantization_config": hf}) == STATIC
    assert ck.quant_config({"quantization_config": {"quant_method": "fp8", "weight_block_size": [32, 32]}}) == BLOCK
    for quant in (PER_TENSOR, STATIC, BLOCK):
        assert ck.quant_config({"quantization_config": ck.hf_quantization_config(quant)}) == quant
    assert ck.hf_quantization_config(BLOCK, ["lm_head"]) == {
        "quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [32, 32],
        "ignored_layers": ["lm_head"]}


@pytest.mark.parametrize("qc,match", [
    ({"quant_method": "gptq"}, "quant_method must be 'fp8'"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]}, "'static' does not go"),
    ({"quant_method": "fp8", "weight_block_size": [100, 128]}, "weight_block_size"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "fmt='e5m2' \\(moe_lib reads only 'e4m3'\\)"),
    ({"quant_method": "fp8", "scale_fmt": "ue8m0"}, "scale_fmt"),
    ({"quant_method": "fp8", "group_size": 128}, "unknown key 'group_size'"),
    ({"quant_method": "fp8", "ignored_layers": "lm_head"}, "ignored_layers must be a list of names"),
    ("fp8", "must be a JSON object"),
])
def test_quant_config_refuses_what_it_does_not_know(qc, match):
    with pytest.raises(CheckpointError, match=match):
        ck.quant_config({"quantization_config": qc})


def test_tiny_fp8_checkpoint_is_the_tiny_model_quantized(tiny_tensors):
    """data/tiny_mixtral_fp8: every expert matrix is the fp32 one in e4m3 with scale amax / 448 (within half an
    e4m3 step), its input scales the calibrated amax / 448; everything else is the fp32 file's, bit for bit."""
    from moe_lib.kernels.quant import FP8_MAX

    assert sorted(p.name for p in TINY_FP8.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert sum(p.stat().st_size for p in TINY_FP8.iterdir()) < 1_000_000
    cfg = ck.read_config(TINY_FP8)
    assert ck.quant_config(cfg) == STATIC and ck.read_quant_config(TINY_FP8) == STATIC
    assert {k: v for k, v in cfg.items() if k != "quantization_config"} == ck.read_config(TINY)
    assert "lm_head" in cfg["quantization_config"]["ignored_layers"]
    fp8 = all_tensors(TINY_FP8 / "model.safetensors")
    ckpt = ck.open_checkpoint(TINY_FP8)
    assert len(ckpt.moe_names(0)) == len(ck.complete_moe_names(L0, E, STATIC))
    amax = ck.calibrate_input_amax(TINY, [ck.read_golden(TINY)[0][k] for k in ("input_ids", "greedy_ids")])
    for name, t in tiny_tensors.items():
        slot = ck.parse_moe_name(name)
        if slot is None or slot.expert is None:
            assert fp8[name].dtype == t.dtype and torch.equal(fp8[name], t), name
            continue
        q, scale = fp8[name], fp8[name.replace(".weight", ".weight_scale")]
        assert q.dtype == torch.float8_e4m3fn and scale.shape == () and scale.dtype == torch.float32
        assert scale == (t.abs().amax() / FP8_MAX).float()
        deq = q.float() * scale
        # round to nearest: within half a step, 2**-4 of the value's binade (at most 1/16 relative to |t|)
        assert ((deq - t).abs() <= t.abs() / 16 + 2**-10 * scale).all()
        layer_amax = amax[ck.layer_index(slot.scope)]
        col = 0 if slot.kind in ("w1", "w3") else 1
        input_scale = fp8[name.replace(".weight", ".input_scale")]
        assert input_scale.shape == () and input_scale > 0
        torch.testing.assert_close(input_scale, layer_amax[slot.expert, col] / FP8_MAX, rtol=1e-5, atol=0)
    assert (torch.stack(list(amax.values())) > 0).all()  # every expert saw tokens in the calibration


def bits(t: torch.Tensor) -> torch.Tensor:
    """What torch.equal can compare: an e4m3 tensor's bytes (torch has no equal for FP8)."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def test_make_tiny_fp8_reproduces_the_committed_files(tmp_path, capsys):
    for flag, committed in (("--fp8", TINY_FP8), ("--fp8-block", TINY_FP8_BLOCK)):
        out = tmp_path / committed.name
        assert ck.main(["make-tiny", flag, str(out)]) == 0
        assert "model.safetensors" in capsys.readouterr().out
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in committed.iterdir())
        new, old = all_tensors(out / "model.safetensors"), all_tensors(committed / "model.safetensors")
        assert new.keys() == old.keys()
        for key in old:
            if key.endswith("input_scale"):  # calibrated with fp32 matmuls: BLAS rounds per CPU
                torch.testing.assert_close(new[key], old[key], rtol=1e-5, atol=0)
            else:
                assert torch.equal(bits(new[key]), bits(old[key])), key
        assert ck.read_config(out) == ck.read_config(committed)
    block = all_tensors(TINY_FP8_BLOCK / "model.safetensors")
    assert block[L0 + "experts.0.w1.weight_scale_inv"].shape == (I // 32, H // 32)
    assert block[L0 + "experts.0.w2.weight_scale_inv"].shape == (H // 32, I // 32)
    assert ck.read_quant_config(TINY_FP8_BLOCK) == QuantConfig(weight_block_size=list(ck.TINY_FP8_BLOCK))
    with pytest.raises(SystemExit):
        ck.main(["make-tiny", "--fp8", "--seed", "3", str(tmp_path / "x")])
    with pytest.raises(CheckpointError, match="already quantized"):
        ck.make_tiny_fp8(tmp_path / "twice", TINY_FP8)


def test_hf_loaders_and_fp8_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="an FP8 checkpoint .*moe_lib.model.load_mixtral"):
        ck.load_hf_model(TINY_FP8)
    model = ck.load_hf_model_except_experts(TINY_FP8)
    reference = ck.load_hf_model(TINY)
    outside = {n: t for n, t in reference.state_dict().items() if ck.moe_layer_of(n) is None}
    got = model.state_dict()
    assert all(torch.equal(got[n], t) for n, t in outside.items())
    assert getattr(model.config, "quantization_config", None) is None


def fp8_changed(tmp_path: Path, change) -> Path:
    tensors = all_tensors(TINY_FP8 / "model.safetensors")
    change(tensors)
    shutil.copy(TINY_FP8 / "config.json", tmp_path / "config.json")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


@pytest.mark.parametrize("change,line", [
    (lambda t: t.pop(L0 + "experts.3.w1.weight_scale"), f"missing (1): {L0}experts.3.w1.weight_scale"),
    (lambda t: t.pop(L0 + "experts.6.w2.input_scale"), f"missing (1): {L0}experts.6.w2.input_scale"),
    (lambda t: t.update({L0 + "experts.3.w1.weight": t[L0 + "experts.3.w1.weight"].float()}),
     f"wrong dtype (1): {L0}experts.3.w1.weight F32 (an FP8 checkpoint stores float8_e4m3fn)"),
    (lambda t: t.update({L0 + "experts.3.w1.weight_scale": t[L0 + "experts.3.w1.weight_scale"].half()}),
     f"wrong dtype (1): {L0}experts.3.w1.weight_scale F16 (an FP8 checkpoint stores float32)"),
    (lambda t: t.update({L0 + "experts.3.w1.weight_scale": torch.ones(1)}),
     f"wrong shape (1): {L0}experts.3.w1.weight_scale (1,) (expected ())"),
    (lambda t: t.update({L0 + "experts.3.w1.weight_scale_inv": torch.ones(4, 2)}),
     f"unknown names (1): {L0}experts.3.w1.weight_scale_inv"),
    (lambda t: t.update({P0 + "self_attn.q_proj.weight": t[P0 + "self_attn.q_proj.weight"].to(torch.float8_e4m3fn)}),
     f"wrong dtype (1): {P0}self_attn.q_proj.weight F8_E4M3 (the config says float32)"),
    (lambda t: [t.pop(n) for n in list(t) if n.startswith("model.layers.1.block_sparse_moe.experts.")],
     "missing (72): model.layers.1.block_sparse_moe.experts.0.w1.weight"),
])
def test_fp8_checkpoints_are_checked_whole(change, line, tmp_path):
    from moe_lib.model import load_mixtral

    path = fp8_changed(tmp_path, change)
    with pytest.raises(CheckpointError, match="not a complete checkpoint of this model") as info:
        ck.load_hf_model_except_experts(path)
    assert any(entry.strip().startswith(line) for entry in str(info.value).splitlines()), str(info.value)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_mixtral(path)


def test_corrupt_fp8_bytes_become_an_error(tmp_path):
    """0x7F is NaN in e4m3fn (which has no Inf): the reader refuses it like an fp32 NaN."""
    def poison(t):
        q = t[L0 + "experts.2.w3.weight"].clone()
        q.view(torch.uint8)[5, 7] = 0x7F
        t[L0 + "experts.2.w3.weight"] = q

    path = fp8_changed(tmp_path, poison)
    assert len(ck.read_moe_weights(path, 1)) == 1 + 9 * E  # layer 1 is intact
    with pytest.raises(CheckpointError, match=r"experts\.2\.w3\.weight holds NaN or Inf"):
        ck.read_moe_weights(path, 0)
