"""One layer's MoE weights, read straight from a Hugging Face safetensors checkpoint.

A Mixtral checkpoint is one ``model.safetensors`` file or several shards listed in
``model.safetensors.index.json``. safetensors files are a JSON header (names, dtypes, shapes, byte offsets)
followed by raw bytes, so a layer can be read by memory-mapping just its tensors: Mixtral 8x7B's
~93 GB never has to be loaded to serve one layer. Pickle-based weights (``pytorch_model.bin``, ``.pt``) are
refused: unpickling runs arbitrary code.

Hugging Face's names for a layer's MoE tensors are parsed here and nowhere else (:func:`parse_moe_name`):
both this reader and :meth:`moe_lib.layer.MixtralMoE.load_weights` use it. Parsing needs nothing but the
standard library; safetensors is imported only when a file is read, so ``import moe_lib`` works without it.

FP8 checkpoints (``config.json`` with a ``quantization_config`` of ``quant_method`` "fp8") store each expert's
w1, w2, w3 in float8_e4m3fn with fp32 scales next to them: ``...w1.weight_scale`` (a scalar per tensor) or
``...w1.weight_scale_inv`` (one per block, block-wise), and ``...w1.input_scale`` with static activations. Their
names, shapes and dtypes are here too (:func:`moe_shapes`, :func:`stored_dtype`, :func:`quant_config`).

The command line makes the tiny models that notebook 10 and the tests use::

    python -m moe_lib.checkpoint make-tiny data/tiny_mixtral
    python -m moe_lib.checkpoint make-tiny --fp8            # data/tiny_mixtral_fp8: its experts in FP8
    python -m moe_lib.checkpoint inspect data/tiny_mixtral --layer 0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import MoEConfig, QuantConfig

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
GOLDEN_NAME = "golden.safetensors"
#: Suffixes of pickle-based weight files, which we never open.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: The tiny Mixtral made by ``make-tiny`` and committed to the repository.
TINY_MIXTRAL = Path(__file__).resolve().parents[1] / "data" / "tiny_mixtral"
#: The same model with its experts in FP8 (``make-tiny --fp8``; ``--fp8-block``: block-wise scales).
TINY_MIXTRAL_FP8 = TINY_MIXTRAL.with_name("tiny_mixtral_fp8")
TINY_MIXTRAL_FP8_BLOCK = TINY_MIXTRAL.with_name("tiny_mixtral_fp8_block")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as asked: not safetensors, truncated, corrupt, or incomplete."""


# ----------------------------------------------------------------------------------------------------
# Hugging Face names: the one place they are parsed
# ----------------------------------------------------------------------------------------------------
#: A name under one layer's MoE block: its *scope* — any prefix (``model.layers.3.``), then the block, either
#: legacy ``block_sparse_moe.`` (real Mixtral checkpoints, and what ``save_pretrained`` writes) or transformers
#: 5.x ``mlp.`` followed by ``gate.`` / ``experts.`` (not a dense model's ``mlp.gate_proj``) — and the rest.
_MOE_SCOPE = re.compile(
    r"^(?P<scope>(?:.*\.)?(?:(?P<legacy>block_sparse_moe\.)|mlp\.(?=gate\.|experts\.)))(?P<rest>.*)$"
)
#: What an FP8 checkpoint stores next to each expert matrix ``...experts.{e}.w1.weight`` (e4m3): its weight scale
#: (``weight_scale``, one fp32 scalar per tensor; ``weight_scale_inv``, one per bn x bk block, the name of
#: block-wise checkpoints — a multiplier despite the name) and, with static activations, the calibrated scale
#: of that matrix's input (``input_scale``, an fp32 scalar). Dequantized: ``weight * scale``.
FP8_PARAMS = ("weight_scale", "weight_scale_inv", "input_scale")
#: After a legacy scope: the router, and one matrix per expert: ``w1`` (I, H) gate, ``w3`` (I, H) up,
#: ``w2`` (H, I) down; in FP8 checkpoints also each matrix's scales (:data:`FP8_PARAMS`).
_LEGACY_TENSOR = re.compile(
    r"gate\.weight|experts\.(?P<expert>\d+)\.(?P<proj>w[123])\.(?P<param>" + "|".join(("weight", *FP8_PARAMS)) + ")"
)
#: After a transformers 5.x scope: the router, and all experts in two fused tensors. Name -> kind.
_FUSED_TENSOR = {"gate.weight": "gate", "experts.gate_up_proj": "gate_up", "experts.down_proj": "down"}
_FUSED_NAME = {kind: rest for rest, kind in _FUSED_TENSOR.items()}
#: The decoder layer of a scope (``model.layers.3.mlp.``) or of a module name (``model.layers.3.mlp``).
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.[^.]+\.?$")


@dataclass(frozen=True)
class MoEName:
    """Where one MoE tensor of a Hugging Face checkpoint goes.

    ``scope`` is the name up to and including the block (``model.layers.3.block_sparse_moe.``); ``kind`` is
    gate, w1, w3 or w2 (legacy, per ``expert``) or gate_up / down (transformers 5.x, all experts fused);
    ``param`` is "weight", or for an expert matrix of an FP8 checkpoint one of :data:`FP8_PARAMS`.
    """

    scope: str
    kind: str
    expert: int | None = None
    param: str = "weight"

    @property
    def name(self) -> str:
        """The checkpoint name (inverse of :func:`parse_moe_name`)."""
        if self.expert is not None:
            return f"{self.scope}experts.{self.expert}.{self.kind}.{self.param}"
        return self.scope + _FUSED_NAME[self.kind]  # the router is gate.weight in both schemes

    @property
    def key(self) -> str:
        """What the tensor is, whatever the scope and expert: "w1", "gate_up", "w1.weight_scale", ... (the keys
        of :func:`moe_shapes`)."""
        return self.kind if self.param == "weight" else f"{self.kind}.{self.param}"


def parse_moe_name(name: str) -> MoEName | None:
    """The :class:`MoEName` of a MoE tensor's name; None for any other name, and for an unknown tensor under
    a MoE block (``...block_sparse_moe.experts.0.w4.weight``)."""
    m = _MOE_SCOPE.match(name)
    if m is None:
        return None
    scope, rest = m["scope"], m["rest"]
    if m["legacy"]:
        t = _LEGACY_TENSOR.fullmatch(rest)
        if t is None:
            return None
        if t["expert"] is None:
            return MoEName(scope, "gate")
        return MoEName(scope, t["proj"], int(t["expert"]), t["param"])
    kind = _FUSED_TENSOR.get(rest)
    return None if kind is None else MoEName(scope, kind)


def is_legacy_scope(scope: str) -> bool:
    """A scope of the legacy per-expert names (``...block_sparse_moe.``), the only names FP8 checkpoints use."""
    return scope.endswith("block_sparse_moe.")


def legacy_scope(scope: str) -> str:
    """The legacy scope of the same block: ``model.layers.3.mlp.`` -> ``model.layers.3.block_sparse_moe.``."""
    if is_legacy_scope(scope):
        return scope
    if not (scope == "mlp." or scope.endswith(".mlp.")):
        raise ValueError(f"{scope!r} is not the scope of a MoE block")
    return scope.removesuffix("mlp.") + "block_sparse_moe."


def expert_params(quant_config: QuantConfig | None) -> tuple[str, ...]:
    """The tensors a checkpoint stores per expert matrix: the weight, and in FP8 its scales."""
    if quant_config is None:
        return ("weight",)
    if quant_config.weight_block_size is not None:
        return ("weight", "weight_scale_inv")
    return ("weight", "weight_scale", "input_scale") if quant_config.static else ("weight", "weight_scale")


def complete_moe_names(scope: str, num_experts: int, quant_config: QuantConfig | None = None) -> list[MoEName]:
    """Every tensor one layer needs under ``scope``, in the scope's naming scheme; with ``quant_config`` those of
    an FP8 checkpoint (legacy names only: there is no fused FP8 scheme here, a ValueError says so)."""
    if is_legacy_scope(scope):
        return [MoEName(scope, "gate")] + [
            MoEName(scope, proj, e, param)
            for e in range(num_experts) for proj in ("w1", "w2", "w3") for param in expert_params(quant_config)
        ]
    if quant_config is not None:
        raise ValueError(f"{scope}: FP8 checkpoints are read in the legacy per-expert names "
                         "(...block_sparse_moe.experts.{e}.w1.weight and its scales), not transformers' fused names")
    return [MoEName(scope, kind) for kind in ("gate", "gate_up", "down")]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def moe_shapes(num_experts: int, hidden: int, inter: int,
               quant_config: QuantConfig | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of each kind of MoE tensor (whole, unsharded), by :attr:`MoEName.key`; with ``quant_config``
    also its scales: scalars () per tensor, (ceil(N/bn), ceil(K/bk)) per block of an (N, K) matrix."""
    E, H, I = num_experts, hidden, inter
    shapes = {"gate": (E, H), "w1": (I, H), "w3": (I, H), "w2": (H, I), "gate_up": (E, 2 * I, H), "down": (E, H, I)}
    if quant_config is not None:
        for proj in ("w1", "w2", "w3"):
            n, k = shapes[proj]
            for param in expert_params(quant_config)[1:]:
                if param == "weight_scale_inv":
                    bn, bk = quant_config.weight_block_size
                    shapes[f"{proj}.{param}"] = (_cdiv(n, bn), _cdiv(k, bk))
                else:
                    shapes[f"{proj}.{param}"] = ()
    return shapes


def stored_dtype(slot: MoEName, quant_config: QuantConfig | None) -> torch.dtype | None:
    """The dtype a checkpoint must store this MoE tensor in: in FP8 checkpoints the expert matrices float8_e4m3fn
    and their scales float32; None for a tensor in the model's own floating dtype (the router, and every tensor
    of an unquantized checkpoint)."""
    from .kernels.quant import FP8_DTYPE

    if quant_config is None or slot.expert is None:
        return None
    return FP8_DTYPE if slot.param == "weight" else torch.float32


def is_fp8(dtype: torch.dtype) -> bool:
    """Any of torch's 8-bit float formats (e4m3fn, e5m2, ...): a quantized tensor, never a model-dtype one."""
    return dtype.is_floating_point and dtype.itemsize == 1


#: How many names an error message lists per kind of problem before it says "... and N more".
MAX_LISTED = 12


def listing(label: str, items: list[str]) -> str:
    """One line of an error message: ``  label (n): a, b, ... and k more``."""
    shown = ", ".join(items[:MAX_LISTED])
    more = f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {label} ({len(items)}): {shown}{more}"


def layer_index(name: str) -> int | None:
    """The decoder layer of a module name (``model.layers.3.mlp``) or a scope (``model.layers.3.mlp.``)."""
    m = _LAYER_INDEX.search(name)
    return None if m is None else int(m[1])


def moe_layer_of(name: str) -> int | None:
    """The decoder layer whose MoE block holds tensor ``name`` — any tensor under the block, known or not, so
    that a loader rejects what it does not know instead of never seeing it; None for every other name."""
    m = _MOE_SCOPE.match(name)
    return None if m is None else layer_index(m["scope"])


# ----------------------------------------------------------------------------------------------------
# Opening: which tensor lives in which file
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    """The table of contents of a safetensors checkpoint, read from the headers only (no tensor data)."""

    path: Path  #: what was opened: a directory, a .safetensors file or an index file
    files: tuple[Path, ...]  #: the safetensors files, in order
    weight_map: Mapping[str, Path]  #: tensor name -> the file that holds it
    shapes: Mapping[str, tuple[int, ...]]  #: tensor name -> shape
    dtypes: Mapping[str, str]  #: tensor name -> safetensors dtype ("F32", "BF16", ...)

    @property
    def root(self) -> Path:
        """The directory of the checkpoint (where config.json lives)."""
        return self.path if self.path.is_dir() else self.path.parent

    def moe_layers(self) -> list[int]:
        """The decoder layer indices that have MoE weights, ascending."""
        return sorted({layer for name in self.weight_map if (layer := moe_layer_of(name)) is not None})

    def moe_names(self, layer: int) -> list[str]:
        """The names of layer ``layer``'s MoE tensors, by file, then by name (numbers in numeric order)."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        names = [n for n in self.weight_map if moe_layer_of(n) == layer]
        if not names:
            raise CheckpointError(
                f"{self.path}: no MoE weights for layer {layer}; MoE layers present: {self.moe_layers() or 'none'}"
            )
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(names, key=lambda n: (order[self.weight_map[n]], _natural(n)))


def _natural(name: str) -> list:
    """A sort key that puts experts.2 before experts.10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: pickle-based weights are not read (unpickling can run arbitrary code); "
        "convert the checkpoint to safetensors"
    )


def _read_header(file: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and dtypes of every tensor in one safetensors file; a damaged file raises CheckpointError."""
    if file.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: file not found")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            return ({n: tuple(s.get_shape()) for n, s in slices.items()},
                    {n: s.get_dtype() for n, s in slices.items()})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file, truncated or corrupt ({exc})") from None


def _read_index(index: Path) -> dict[str, Path]:
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{index}: not valid JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: has no 'weight_map' object mapping tensor names to files")
    out = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
            raise CheckpointError(f"{index}: {name!r} maps to {file!r}, which is not a file name in the same folder")
        if Path(file).suffix in PICKLE_SUFFIXES:
            _refuse_pickle(index.parent / file)
        out[name] = index.parent / file
    return out


def open_checkpoint(path: str | Path | Checkpoint) -> Checkpoint:
    """Read the headers of a checkpoint: a directory, a ``.safetensors`` file, or an index ``.json``."""
    if isinstance(path, Checkpoint):
        return path
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or directory")
    index = None
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            index = path / INDEX_NAME
        elif (path / SINGLE_NAME).is_file():
            single = path / SINGLE_NAME
        else:
            tensors = sorted(path.glob("*.safetensors"))
            pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if len(tensors) == 1:
                single = tensors[0]
            elif tensors:
                raise CheckpointError(
                    f"{path}: {len(tensors)} .safetensors files but no {INDEX_NAME} saying which tensor is where"
                )
            elif pickles:
                _refuse_pickle(pickles[0])
            else:
                raise CheckpointError(f"{path}: no {SINGLE_NAME}, {INDEX_NAME} or other .safetensors file")
    elif path.suffix == ".json":
        index = path
    elif path.suffix in PICKLE_SUFFIXES:
        _refuse_pickle(path)
    elif path.suffix == ".safetensors":
        single = path
    else:
        raise CheckpointError(f"{path}: expected a directory, a .safetensors file or a {INDEX_NAME}")

    if index is None:
        shapes, dtypes = _read_header(single)
        return Checkpoint(path, (single,), {n: single for n in shapes}, shapes, dtypes)

    weight_map = _read_index(index)
    files = tuple(dict.fromkeys(weight_map.values()))  # in order of first mention
    shapes, dtypes = {}, {}
    for file in files:
        file_shapes, file_dtypes = _read_header(file)
        absent = [n for n, f in weight_map.items() if f == file and n not in file_shapes]
        if absent:
            raise CheckpointError(
                f"{file}: lacks {len(absent)} tensor(s) that {index.name} puts there, e.g. {absent[:3]}"
            )
        for name in file_shapes:
            if weight_map.get(name) == file:
                shapes[name], dtypes[name] = file_shapes[name], file_dtypes[name]
    return Checkpoint(path, files, weight_map, shapes, dtypes)


# ----------------------------------------------------------------------------------------------------
# Reading one layer
# ----------------------------------------------------------------------------------------------------
def iter_moe_weights(checkpoint: str | Path | Checkpoint, layer: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for layer ``layer``'s MoE tensors, reading only those bytes.

    Feed it to :meth:`moe_lib.layer.MixtralMoE.load_weights`. Each tensor is read when it is yielded (one file
    open per shard), so a layer never holds more than the caller keeps. A tensor with NaN or Inf raises
    CheckpointError: real weights are finite, and damaged bytes often are not.
    """
    from safetensors import SafetensorError, safe_open

    ckpt = open_checkpoint(checkpoint)
    names = ckpt.moe_names(layer)
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(ckpt.weight_map[name], []).append(name)
    for file, file_names in by_file.items():
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in file_names:
                    tensor = f.get_tensor(name)
                    if tensor.is_floating_point() and not all_finite(tensor):
                        raise CheckpointError(f"{file}: tensor {name} holds NaN or Inf; the file may be corrupt")
                    yield name, tensor
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: reading failed, truncated or corrupt ({exc})") from None


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in a floating tensor. torch has no isfinite for FP8: those go through fp16, which holds
    every e4m3/e5m2 value exactly."""
    return bool(torch.isfinite(t.to(torch.float16) if is_fp8(t.dtype) else t).all())


def read_moe_weights(checkpoint: str | Path | Checkpoint, layer: int) -> dict[str, torch.Tensor]:
    """All of layer ``layer``'s MoE tensors as a dict (name -> tensor), in checkpoint order."""
    return dict(iter_moe_weights(checkpoint, layer))


def read_config(checkpoint: str | Path | Checkpoint) -> dict:
    """The checkpoint's ``config.json`` as a dict (plain JSON: nothing is executed)."""
    root = open_checkpoint(checkpoint).root
    file = root / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{root}: no config.json")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from None


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def moe_config(config: Mapping) -> MoEConfig:
    """The MoE layer shape of a Mixtral ``config.json`` (its ``dtype``, default float32)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a parsed config.json), got {type(config).__name__}")
    keys = ("num_local_experts", "num_experts_per_tok", "hidden_size", "intermediate_size")
    missing = [k for k in keys if k not in config]
    if missing:
        raise CheckpointError(f"config lacks {missing}: not a Mixtral config")
    dtype_name = config.get("dtype") or config.get("torch_dtype") or "float32"
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"config dtype {dtype_name!r} is not one of {sorted(_DTYPES)}")
    return MoEConfig(config["num_local_experts"], config["num_experts_per_tok"], config["hidden_size"],
                     config["intermediate_size"], dtype=_DTYPES[dtype_name])


#: Keys of an FP8 ``quantization_config`` that change nothing here, with the values they must have (None: any).
#: ``ignored_layers`` (vLLM) and ``modules_to_not_convert`` (transformers) list the layers left unquantized:
#: moe_lib quantizes only the experts and reads every other tensor in the dtype it is stored in.
_NEUTRAL_QUANT_KEYS = {"fmt": "e4m3", "scale_fmt": "float", "expert_dtype": "fp8", "dequantize": False,
                       "ignored_layers": None, "modules_to_not_convert": None, "modules_to_convert": None}


def quant_config(config: Mapping) -> QuantConfig | None:
    """The :class:`~moe_lib.config.QuantConfig` of a ``config.json`` (its ``quantization_config``), or None for
    an unquantized checkpoint. Only FP8 (``quant_method`` "fp8") is known; anything else raises CheckpointError."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a parsed config.json), got {type(config).__name__}")
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, Mapping):
        raise CheckpointError(f"quantization_config must be a JSON object, got {type(qc).__name__}")
    problems = [f"{key}={qc[key]!r} (moe_lib reads only {want!r})" for key, want in _NEUTRAL_QUANT_KEYS.items()
                if want is not None and key in qc and qc[key] != want]
    known = {"quant_method", "activation_scheme", "weight_block_size", *_NEUTRAL_QUANT_KEYS}
    problems += [f"unknown key {key!r}" for key in qc if key not in known]
    for key in ("ignored_layers", "modules_to_not_convert", "modules_to_convert"):
        value = qc.get(key)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            problems.append(f"{key} must be a list of names, got {value!r}")
    if problems:
        raise CheckpointError("quantization_config: " + "; ".join(problems))
    try:
        return QuantConfig(qc.get("quant_method"), qc.get("activation_scheme", "dynamic"), qc.get("weight_block_size"))
    except ValueError as exc:
        raise CheckpointError(f"quantization_config: {exc}") from None


def hf_quantization_config(quant: QuantConfig, ignored_layers: list[str] | None = None) -> dict:
    """The ``quantization_config`` of ``config.json`` for ``quant`` (the inverse of :func:`quant_config`);
    ``ignored_layers``: the linear layers left unquantized (vLLM's key)."""
    out = {"quant_method": quant.quant_method, "activation_scheme": quant.activation_scheme,
           "weight_block_size": quant.block_shape}
    if ignored_layers is not None:
        out["ignored_layers"] = list(ignored_layers)
    return out


# ----------------------------------------------------------------------------------------------------
# The tiny Mixtral
# ----------------------------------------------------------------------------------------------------
#: A whole Mixtral, shrunk: 2 decoder layers of 8 experts (top-2), H = 64, I = 128, a 256-token vocabulary,
#: grouped-query attention (4 heads, 2 KV heads) like the real one. Every projection is drawn with
#: std 1/sqrt(H) = 0.125 (``initializer_range``) so activations stay of order one and the MoE blocks change
#: the logits substantially. No EOS token, so greedy generation always runs its full length.
TINY_MIXTRAL_CONFIG = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=128,
    initializer_range=0.125,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=None,
    pad_token_id=0,
)
#: The golden run: logits for GOLDEN_BATCH random sequences of GOLDEN_LEN tokens, and greedy generation of
#: GOLDEN_NEW_TOKENS tokens after random prompts of GOLDEN_PROMPT_LEN tokens.
GOLDEN_BATCH, GOLDEN_LEN, GOLDEN_PROMPT_LEN, GOLDEN_NEW_TOKENS = 2, 16, 6, 10


def tiny_mixtral_model(seed: int = 0):
    """The tiny ``MixtralForCausalLM`` (fp32, eval mode, eager experts) with weights drawn from ``seed``."""
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(**TINY_MIXTRAL_CONFIG, experts_implementation="eager")
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        return MixtralForCausalLM(config).eval()


def load_hf_model(checkpoint_dir: str | Path = TINY_MIXTRAL, *, strict: bool = True,
                  experts_implementation: str = "eager"):
    """transformers' own ``MixtralForCausalLM.from_pretrained`` of a checkpoint directory: the unmodified model.

    safetensors only (never pickle), eager experts by default (the plain loop, as the golden run used; or any
    name registered with transformers, such as ``"moe_lib"``, see :mod:`moe_lib.model`), eval mode, and without
    the progress bar that loading otherwise draws on stderr.

    ``strict`` (the default): the checkpoint must hold exactly the model's tensors — none missing (transformers
    would fill it with random numbers), none unknown, each of the model's shape and of the config's floating
    dtype (transformers would cast an int tensor silently) — checked from the file headers before anything is
    read: one :class:`CheckpointError` names every offending tensor. ``strict=False`` is the opt-out for a
    partial load: transformers' own rules then apply (missing tensors are initialized at random).
    """
    import transformers
    from transformers import MixtralConfig, MixtralForCausalLM

    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    checkpoint_dir = Path(checkpoint_dir)
    ckpt = open_checkpoint(checkpoint_dir)  # our clear errors first: missing, pickle-only, truncated
    if read_quant_config(ckpt) is not None:
        raise CheckpointError(
            f"{checkpoint_dir}: an FP8 checkpoint (its config.json has a quantization_config); transformers does "
            "not read its e4m3 experts with their scales: load it with moe_lib.model.load_mixtral"
        )
    if strict:
        config = MixtralConfig.from_pretrained(checkpoint_dir, local_files_only=True)
        with torch.device("meta"):
            expected = model_tensors(MixtralForCausalLM(config))
        check_complete(ckpt, expected, config.num_local_experts, config.hidden_size, config.intermediate_size,
                       moe_config(read_config(ckpt)).dtype)
    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = MixtralForCausalLM.from_pretrained(
            checkpoint_dir, use_safetensors=True, experts_implementation=experts_implementation,
            local_files_only=True, output_loading_info=True,
        )
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    left = {key: sorted(map(str, v)) for key, v in info.items() if v and key != "error_msgs"}
    if strict and (left or info.get("error_msgs")):  # what the header check cannot foresee
        raise CheckpointError(f"{checkpoint_dir}: transformers did not load every tensor as it is: {left} "
                              f"{info.get('error_msgs') or ''}".rstrip())
    return model.eval()


def read_quant_config(checkpoint: str | Path | Checkpoint) -> QuantConfig | None:
    """The checkpoint's :class:`~moe_lib.config.QuantConfig` (:func:`quant_config` of its config.json); None for
    an unquantized checkpoint and for one without config.json (a bare safetensors file)."""
    ckpt = open_checkpoint(checkpoint)
    if not (ckpt.root / "config.json").is_file():
        return None
    return quant_config(read_config(ckpt))


def load_hf_model_except_experts(checkpoint_dir: str | Path, *, strict: bool = True):
    """The transformers ``MixtralForCausalLM`` of a checkpoint whose experts transformers cannot read (FP8): built
    from its config (without ``quantization_config``, in the config's dtype, eager experts, eval mode), every
    tensor outside the MoE blocks loaded from the checkpoint; the MoE blocks keep their random weights, for
    :func:`moe_lib.model.replace_moe_blocks` to swap (:func:`moe_lib.model.load_mixtral` does both).

    ``strict`` (the default): the checkpoint is checked whole from its headers first (:func:`check_complete`
    with its quantization: every tensor of the model, its FP8 experts and their scales; nothing unknown).
    The model is built on the CPU with random weights before they are overwritten: meant for small models.
    """
    from safetensors import SafetensorError, safe_open
    from transformers import MixtralConfig, MixtralForCausalLM

    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {type(strict).__name__}")
    ckpt = open_checkpoint(checkpoint_dir)
    raw = read_config(ckpt)
    quant = quant_config(raw)
    dtype = moe_config(raw).dtype
    config = MixtralConfig.from_dict({k: v for k, v in raw.items() if k != "quantization_config"},
                                     experts_implementation="eager")
    if strict:
        with torch.device("meta"):
            expected = model_tensors(MixtralForCausalLM(config))
        check_complete(ckpt, expected, config.num_local_experts, config.hidden_size, config.intermediate_size,
                       dtype, quant)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's state alone
        model = MixtralForCausalLM(config).to(dtype).eval()
    outside = [name for name in ckpt.weight_map if moe_layer_of(name) is None]
    tensors = {}
    for file in ckpt.files:
        try:
            with safe_open(str(file), framework="pt") as f:
                tensors |= {name: f.get_tensor(name) for name in outside if ckpt.weight_map[name] == file}
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file}: reading failed, truncated or corrupt ({exc})") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    left = sorted(unexpected) + [f"{n} (missing)" for n in missing if moe_layer_of(n) is None]
    if strict and left:  # what the header check cannot foresee
        raise CheckpointError(f"{ckpt.path}: the model did not take every tensor as it is: {left}")
    return model


def model_tensors(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of ``model`` holds (its state dict, a tied weight once): name -> shape."""
    seen: set[int] = set()
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = tuple(t.shape)
    return out


#: safetensors' names of the floating dtypes.
_SAFETENSORS_FLOATS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
                       "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def check_complete(ckpt: Checkpoint, expected: Mapping[str, tuple[int, ...]], num_experts: int, hidden: int,
                   inter: int, dtype: torch.dtype, quant_config: QuantConfig | None = None) -> None:
    """A checkpoint holds exactly ``expected`` (name -> shape) in ``dtype``, from its headers alone. The MoE
    tensors may come in either naming scheme (legacy per expert, or transformers 5.x fused) whatever the names
    in ``expected``; with ``quant_config`` they are an FP8 checkpoint's (legacy names, e4m3 experts with fp32
    scales: :func:`stored_dtype`). One CheckpointError lists every missing, unknown, misshapen or mistyped tensor."""
    moe_shape = moe_shapes(num_experts, hidden, inter, quant_config)
    layers = sorted({layer for name in expected if (layer := moe_layer_of(name)) is not None})
    problems: dict[str, list[str]] = {"missing": [], "unknown names": [], "wrong shape": [], "wrong dtype": []}
    scopes: dict[int, set[str]] = {}
    found: set[MoEName] = set()
    for name, shape in ckpt.shapes.items():
        layer = moe_layer_of(name)
        want_dtype, why = dtype, "the config says"
        if layer is None:  # outside the MoE blocks: the model's own names
            want = expected.get(name)
        else:
            slot = parse_moe_name(name)
            valid = (slot is not None and layer in layers and (slot.expert is None or slot.expert < num_experts)
                     and (quant_config is None or is_legacy_scope(slot.scope)))
            want = moe_shape.get(slot.key) if valid else None
            if want is not None:
                scopes.setdefault(layer, set()).add(slot.scope)
                found.add(slot)
                if (fp8_dtype := stored_dtype(slot, quant_config)) is not None:
                    want_dtype, why = fp8_dtype, "an FP8 checkpoint stores"
        if want is None:
            problems["unknown names"].append(name)
            continue
        if tuple(shape) != tuple(want):
            problems["wrong shape"].append(f"{name} {tuple(shape)} (expected {tuple(want)})")
        stored = ckpt.dtypes[name]
        if _SAFETENSORS_FLOATS.get(stored) != want_dtype:
            problems["wrong dtype"].append(f"{name} {stored} ({why} {str(want_dtype).replace('torch.', '')})")
    problems["missing"] = [name for name in expected if moe_layer_of(name) is None and name not in ckpt.shapes]
    for layer in layers:
        held = sorted(scopes.get(layer, ()))
        if len(held) > 1:
            problems["unknown names"].append(f"layer {layer}'s MoE tensors under two names/schemes: {held}")
        # none at all: name them in the model's own scheme (FP8: the legacy one, its only scheme)
        scope = held[0] if held else next(slot.scope for n in expected if moe_layer_of(n) == layer
                                          and (slot := parse_moe_name(n)) is not None)
        if quant_config is not None and not is_legacy_scope(scope):
            scope = legacy_scope(scope)
        problems["missing"] += [s.name for s in complete_moe_names(scope, num_experts, quant_config) if s not in found]
    lines = [listing(label, items) for label, items in problems.items() if items]
    if lines:
        rules = "moe_lib's" if quant_config is not None else "transformers'"
        raise CheckpointError(f"{ckpt.path}: not a complete checkpoint of this model (strict=False loads it "
                              f"anyway, with {rules} rules):\n" + "\n".join(lines))


def golden_inputs(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed inputs of the golden run: (input_ids (B, T), prompt_ids (B, T_prompt)), int64."""
    gen = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, vocab_size, (GOLDEN_BATCH, GOLDEN_LEN), generator=gen)
    prompt_ids = torch.randint(0, vocab_size, (GOLDEN_BATCH, GOLDEN_PROMPT_LEN), generator=gen)
    return input_ids, prompt_ids


def golden_run(model, input_ids: torch.Tensor, prompt_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits (B, T, V) for ``input_ids`` and greedy tokens (B, T_prompt + new) after ``prompt_ids``."""
    with torch.no_grad():
        logits = model(input_ids).logits  # (B, T, V)
        greedy_ids = model.generate(
            prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=GOLDEN_NEW_TOKENS,
            min_new_tokens=GOLDEN_NEW_TOKENS, do_sample=False,
        )  # (B, T_prompt + new)
    return {"logits": logits.float().contiguous(), "greedy_ids": greedy_ids.contiguous()}


def make_tiny(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write the tiny Mixtral (``save_pretrained``, safetensors) and its golden outputs to ``out_dir``.

    Returns the size in bytes of each file written.
    """
    import transformers
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    model = tiny_mixtral_model(seed)
    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # save_pretrained draws one on stderr
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()
    input_ids, prompt_ids = golden_inputs(model.config.vocab_size, seed)
    golden = {"input_ids": input_ids, "prompt_ids": prompt_ids, **golden_run(model, input_ids, prompt_ids)}
    metadata = {
        "made_by": "python -m moe_lib.checkpoint make-tiny",
        "seed": str(seed),
        "model": "transformers MixtralForCausalLM, experts_implementation=eager, fp32, CPU",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "max_new_tokens": str(GOLDEN_NEW_TOKENS),
    }
    save_file(golden, str(out_dir / GOLDEN_NAME), metadata=metadata)
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}


#: The weight blocks of ``make-tiny --fp8-block``: [bn, bk] dividing the tiny I = 128 per rank up to tp = 4.
TINY_FP8_BLOCK = (32, 32)


def calibrate_input_amax(checkpoint_dir: str | Path, token_ids: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per MoE layer, each expert's largest |input| of each GEMM, measured on the unquantized model of
    ``checkpoint_dir`` (transformers, eager) while it runs ``token_ids``: layer -> (E, 2) fp32, column 0 the
    tokens routed to the expert (the input of w1 and w3), column 1 their SiLU(x w1) * (x w3) (the input of w2).
    Routing: the fp32 softmax top-k of the layer's router (moe_lib's, as the FP8 layer routes). An expert no
    token reached gets 0."""
    from .kernels.routing import topk_softmax
    from .reference import silu_and_mul

    model = load_hf_model(checkpoint_dir)
    inputs: dict[int, list[torch.Tensor]] = {}
    hooks = [decoder.mlp.register_forward_pre_hook(
        lambda _, args, i=i: inputs.setdefault(i, []).append(args[0].reshape(-1, args[0].shape[-1]).detach()))
        for i, decoder in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            for ids in token_ids:
                model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    cfg = model.config
    out = {}
    for i, xs in inputs.items():
        block = model.model.layers[i].mlp
        x = torch.cat(xs).float()  # (N, H)
        _, ids = topk_softmax(x @ block.gate.weight.float().T, cfg.num_experts_per_tok)  # (N, k)
        w13 = block.experts.gate_up_proj.float()  # (E, 2I, H) = [w1; w3]
        amax = torch.zeros(cfg.num_local_experts, 2)
        for e in range(cfg.num_local_experts):
            rows = x[(ids == e).any(dim=1)]  # (n_e, H)
            if len(rows):
                amax[e, 0] = rows.abs().amax()
                amax[e, 1] = silu_and_mul(rows @ w13[e].T).abs().amax()
        out[i] = amax
    return out


def _repo_relative(path: Path) -> str:
    """``data/tiny_mixtral`` for a folder of this repository (no machine's absolute path in a committed file)."""
    try:
        return str(path.resolve().relative_to(TINY_MIXTRAL.parents[1]))
    except ValueError:
        return str(path)


def make_tiny_fp8(out_dir: str | Path | None = None, source: str | Path = TINY_MIXTRAL, *,
                  block_shape: tuple[int, int] | list[int] | None = None) -> dict[str, int]:
    """Write ``source`` (an unquantized Mixtral with golden outputs, default the tiny one) with its experts in FP8.

    Each expert's w1, w2, w3 is quantized on its own (e4m3, round to nearest even, saturating):

    - per tensor (``block_shape=None``; default ``out_dir`` data/tiny_mixtral_fp8): ``weight_scale`` = the
      matrix's amax / 448, and static activations: ``input_scale`` = the expert's input amax / 448 over the golden
      inputs (``input_ids`` and the ``greedy_ids`` sequences of the source's golden.safetensors) run through the
      unquantized model (:func:`calibrate_input_amax`); w1 and w3 get the same one (they read the same x). An
      expert no token reached gets the layer's largest.
    - block-wise (``block_shape=[bn, bk]``; default ``out_dir`` data/tiny_mixtral_fp8_block): ``weight_scale_inv``
      per bn x bk block, dynamic activations.

    Everything else (embeddings, attention, norms, routers, lm_head) is copied unchanged; config.json gains the
    ``quantization_config`` (with ``ignored_layers``: the linear layers left unquantized). Returns the size in
    bytes of each file written.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .kernels.quant import FP8_MAX, quantize_weight

    quant = QuantConfig(activation_scheme="static" if block_shape is None else "dynamic",
                        weight_block_size=block_shape)
    if out_dir is None:
        out_dir = TINY_MIXTRAL_FP8 if block_shape is None else TINY_MIXTRAL_FP8_BLOCK
    out_dir, ckpt = Path(out_dir), open_checkpoint(source)
    config = read_config(ckpt)
    if quant_config(config) is not None:
        raise CheckpointError(f"{source}: already quantized; make-tiny --fp8 quantizes an unquantized checkpoint")
    tensors = {}
    for layer in ckpt.moe_layers():
        tensors |= read_moe_weights(ckpt, layer)
    if any(not is_legacy_scope(slot.scope) for name in tensors if (slot := parse_moe_name(name)) is not None):
        raise CheckpointError(f"{source}: FP8 checkpoints use the legacy per-expert names; this one is fused")
    for file in ckpt.files:
        with safe_open(str(file), framework="pt") as f:
            tensors |= {name: f.get_tensor(name) for name in f.keys() if moe_layer_of(name) is None}
    amax = None
    if quant.static:
        golden = read_golden(ckpt.root)[0]
        amax = calibrate_input_amax(ckpt.root, [golden["input_ids"], golden["greedy_ids"]])
    scale_param = expert_params(quant)[1]
    out: dict[str, torch.Tensor] = {}
    for name in sorted(tensors, key=_natural):
        t, slot = tensors[name], parse_moe_name(name)
        if slot is None or slot.expert is None:  # outside the experts: unchanged
            out[name] = t.contiguous()
            continue
        q, scale = quantize_weight(t[None], "tensor" if block_shape is None else "block", block_shape)
        out[name] = q[0]  # (N, K) e4m3
        out[MoEName(slot.scope, slot.kind, slot.expert, scale_param).name] = scale[0]  # () or (N/bn, K/bk)
        if amax is not None:
            layer_amax = amax[layer_index(slot.scope)][:, 0 if slot.kind in ("w1", "w3") else 1]  # (E,)
            a = layer_amax[slot.expert] if layer_amax[slot.expert] > 0 else layer_amax.max()
            out[MoEName(slot.scope, slot.kind, slot.expert, "input_scale").name] = (a / FP8_MAX).float()
    out_dir.mkdir(parents=True, exist_ok=True)
    made_by = "python -m moe_lib.checkpoint make-tiny " + ("--fp8" if block_shape is None else "--fp8-block")
    save_file(out, str(out_dir / SINGLE_NAME), metadata={
        "format": "pt", "made_by": made_by, "source": _repo_relative(ckpt.root), "torch": torch.__version__,
        "quantization": json.dumps(hf_quantization_config(quant)),
        **({"calibration": "input_scale = the expert's input amax / 448 over golden input_ids and greedy_ids "
                           "(fp32 model, moe_lib routing)"} if quant.static else {}),
    })
    ignored = [name.removesuffix(".weight") for name, t in tensors.items()
               if moe_layer_of(name) is None and t.dim() == 2 and "embed_tokens" not in name]
    config["quantization_config"] = hf_quantization_config(quant, sorted(ignored, key=_natural))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (ckpt.root / "generation_config.json").is_file():
        (out_dir / "generation_config.json").write_text((ckpt.root / "generation_config.json").read_text())
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}


def read_golden(checkpoint_dir: str | Path = TINY_MIXTRAL) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The golden tensors (input_ids, logits, prompt_ids, greedy_ids) and their metadata."""
    from safetensors import SafetensorError, safe_open

    file = Path(checkpoint_dir) / GOLDEN_NAME
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{file}: cannot read the golden outputs ({exc})") from None


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def _cmd_make_tiny(args: argparse.Namespace) -> None:
    if args.fp8 or args.fp8_block:
        block = TINY_FP8_BLOCK if args.fp8_block else None
        out = args.out or (TINY_MIXTRAL_FP8 if block is None else TINY_MIXTRAL_FP8_BLOCK)
        sizes = make_tiny_fp8(out, args.source, block_shape=block)
    else:
        out = args.out or TINY_MIXTRAL
        sizes = make_tiny(out, seed=args.seed)
    for name, size in sizes.items():
        print(f"{Path(out) / name}  {size / 1e3:.1f} kB")


def _cmd_inspect(args: argparse.Namespace) -> None:
    ckpt = open_checkpoint(args.path)
    print(f"{ckpt.path}: {len(ckpt.weight_map)} tensors in {len(ckpt.files)} file(s); MoE layers {ckpt.moe_layers()}")
    for name in ckpt.moe_names(args.layer):
        print(f"  {name:<60} {ckpt.dtypes[name]:>5} {ckpt.shapes[name]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lib.checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-tiny", help="write the tiny Mixtral checkpoint and its golden outputs, or (--fp8) "
                                             "the same model with its experts in FP8")
    make.add_argument("out", nargs="?", default=None,
                      help=f"output directory (default: {TINY_MIXTRAL}, with --fp8 {TINY_MIXTRAL_FP8}, with "
                           f"--fp8-block {TINY_MIXTRAL_FP8_BLOCK})")
    make.add_argument("--seed", type=int, default=None, help="the fp32 model's weights (default 0)")
    fp8 = make.add_mutually_exclusive_group()
    fp8.add_argument("--fp8", action="store_true",
                     help="quantize --source's experts per tensor, static activation scales calibrated on its "
                          "golden inputs")
    fp8.add_argument("--fp8-block", action="store_true",
                     help=f"quantize --source's experts in {list(TINY_FP8_BLOCK)} blocks, dynamic activation scales")
    make.add_argument("--source", default=str(TINY_MIXTRAL),
                      help="with --fp8/--fp8-block: the unquantized checkpoint (default: %(default)s)")
    make.set_defaults(run=_cmd_make_tiny)
    inspect = sub.add_parser("inspect", help="list one layer's MoE tensors: name, dtype, shape")
    inspect.add_argument("path", help="checkpoint directory, .safetensors file or index .json")
    inspect.add_argument("--layer", type=int, default=0)
    inspect.set_defaults(run=_cmd_inspect)
    args = parser.parse_args(argv)
    if args.command == "make-tiny":
        if (args.fp8 or args.fp8_block) and args.seed is not None:
            parser.error("--seed draws the fp32 model; --fp8/--fp8-block quantize --source as it is")
        if args.seed is None:
            args.seed = 0
    try:
        args.run(args)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "MoEName",
    "parse_moe_name",
    "complete_moe_names",
    "layer_index",
    "moe_layer_of",
    "open_checkpoint",
    "iter_moe_weights",
    "read_moe_weights",
    "read_config",
    "moe_config",
    "make_tiny",
    "make_tiny_fp8",
    "calibrate_input_amax",
    "quant_config",
    "read_quant_config",
    "hf_quantization_config",
    "expert_params",
    "stored_dtype",
    "is_fp8",
    "is_legacy_scope",
    "legacy_scope",
    "all_finite",
    "load_hf_model_except_experts",
    "FP8_PARAMS",
    "TINY_MIXTRAL_FP8",
    "TINY_MIXTRAL_FP8_BLOCK",
    "TINY_FP8_BLOCK",
    "tiny_mixtral_model",
    "load_hf_model",
    "check_complete",
    "model_tensors",
    "moe_shapes",
    "listing",
    "golden_inputs",
    "golden_run",
    "read_golden",
    "TINY_MIXTRAL",
    "TINY_MIXTRAL_CONFIG",
    "INDEX_NAME",
    "SINGLE_NAME",
    "GOLDEN_NAME",
]

if __name__ == "__main__":  # python -m moe_lib.checkpoint ...
    sys.exit(main())
