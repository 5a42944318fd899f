"""Kernel configurations: tuned tables per (E, N, GPU, dtype) when one exists, else a heuristic.

A table is a JSON file mapping M (tokens per call) to a config, named exactly as vLLM names its own tuned
tables, so that a table tuned by vLLM can be used as it is::

    E=8,N=14336,device_name=NVIDIA_H200.json                                   bf16 / fp16 / fp32
    E=8,N=14336,device_name=NVIDIA_H200,dtype=fp8_w8a8.json                    FP8, per tensor / channel
    E=8,N=14336,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json

N is the intermediate size per rank (I / tp). A config has the six keys of :data:`CONFIG_KEYS` (all vLLM's
tables have them); this project's tables may also hold ``"TMA"`` (bool: the sorted layout read through tensor
descriptors) and ``"down"`` (GEMM2's own tile sizes). A missing ``"TMA"``/``"down"`` takes its default.

Where tables are looked up, first match wins: the ``config_dir`` argument, the directory in the environment
variable ``MOE_LIB_CONFIG_DIR``, then this package's ``configs/``. The row for the nearest M (by ratio) is
used.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import triton

#: The tables that ship with moe_lib.
CONFIG_DIR = Path(__file__).with_name("configs")
#: An environment variable naming one more directory of tables (for example vLLM's), searched first.
CONFIG_DIR_ENV = "MOE_LIB_CONFIG_DIR"

#: Every config has these keys; a table's config may add "TMA" and "down" (see split_config).
CONFIG_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
_OPTIONAL_KEYS = ("TMA", "down")
_DOWN_KEYS = ("BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
#: Tiles: tl.dot needs every side >= 16; past 256 a tile no longer fits in one SM's registers.
_BLOCK_RANGE = (16, 256)
_WARPS = (1, 2, 4, 8, 16)
_STAGES_RANGE = (1, 8)
_GROUP_RANGE = (1, 256)


def config_file_name(num_experts: int, n: int, device_name: str, dtype: str | None = None,
                     block_shape: list[int] | tuple[int, int] | None = None) -> str:
    """vLLM's name for a tuned table: ``E=8,N=14336,device_name=NVIDIA_H200.json``; ``dtype="fp8_w8a8"``
    adds ``,dtype=fp8_w8a8`` and ``block_shape=[128, 128]`` adds ``,block_shape=[128,128]``."""
    name = f"E={num_experts},N={n},device_name={device_name.replace(' ', '_')}"
    if dtype:
        name += f",dtype={dtype}"
    if block_shape:
        name += f",block_shape=[{','.join(str(int(v)) for v in block_shape)}]"
    return name + ".json"


def _power_of_two_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high and not value & (value - 1)


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_keys(name: str, cfg: dict, required: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown} (allowed: {list(allowed)})")
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(f"{name} lacks {missing}")
    for key in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K"):
        if key in cfg and not _power_of_two_in(cfg[key], *_BLOCK_RANGE):
            raise ValueError(f"{name}[{key!r}] must be a power of two in [{_BLOCK_RANGE[0]}, {_BLOCK_RANGE[1]}], "
                             f"got {cfg[key]!r}")
    if "GROUP_SIZE_M" in cfg and not _int_in(cfg["GROUP_SIZE_M"], *_GROUP_RANGE):
        raise ValueError(f"{name}['GROUP_SIZE_M'] must be an int in [{_GROUP_RANGE[0]}, {_GROUP_RANGE[1]}], "
                         f"got {cfg['GROUP_SIZE_M']!r}")
    if "num_warps" in cfg and (not _int_in(cfg["num_warps"], 1, _WARPS[-1]) or cfg["num_warps"] not in _WARPS):
        raise ValueError(f"{name}['num_warps'] must be one of {list(_WARPS)}, got {cfg['num_warps']!r}")
    if "num_stages" in cfg and not _int_in(cfg["num_stages"], *_STAGES_RANGE):
        raise ValueError(f"{name}['num_stages'] must be an int in [{_STAGES_RANGE[0]}, {_STAGES_RANGE[1]}], "
                         f"got {cfg['num_stages']!r}")


def split_config(config: dict) -> tuple[dict, dict]:
    """Validate a config; return (GEMM1 config, GEMM2 config), each with the six keys of CONFIG_KEYS.

    ``"down"`` holds overrides for GEMM2 (x w2), which has another shape than GEMM1 (N = H instead of I, no
    gate/up pair). BLOCK_SIZE_M is shared: both GEMMs walk the same aligned blocks; so is ``"TMA"`` (bool,
    default False), kept in the GEMM1 config. Unknown keys and out-of-range values raise ``ValueError``."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    _check_keys("config", config, CONFIG_KEYS, CONFIG_KEYS + _OPTIONAL_KEYS)
    if not isinstance(config.get("TMA", False), bool):
        raise TypeError(f"config['TMA'] must be a bool, got {config['TMA']!r}")
    down = config.get("down", {})
    if not isinstance(down, dict):
        raise TypeError(f"config['down'] must be a dict of GEMM2 overrides, got {type(down).__name__}")
    _check_keys("config['down']", down, (), _DOWN_KEYS)
    up = {key: config[key] for key in CONFIG_KEYS}
    if config.get("TMA", False):
        up["TMA"] = True
    return up, {key: config[key] for key in CONFIG_KEYS} | down


def _search_dirs(config_dir: str | Path | None) -> list[Path]:
    dirs = [Path(config_dir)] if config_dir is not None else []
    if os.environ.get(CONFIG_DIR_ENV):
        dirs.append(Path(os.environ[CONFIG_DIR_ENV]))
    return dirs + [CONFIG_DIR]


def read_config_table(path: str | Path) -> dict[int, dict]:
    """One table file as {M: config}, every row validated; errors name the file and the M."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path.name}: must be a non-empty JSON object mapping M to a config")
    table = {}
    for key, cfg in raw.items():
        try:
            m = int(key)
        except ValueError:
            raise ValueError(f"{path.name}: key {key!r} is not a token count M") from None
        if m < 1:
            raise ValueError(f"{path.name}: M must be >= 1, got {key!r}")
        try:
            split_config(cfg)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path.name}: config for M={m}: {exc}") from None
        table[m] = cfg
    return table


@functools.cache
def _load_table(path: Path, mtime_ns: int) -> dict[int, dict]:
    return read_config_table(path)


def load_config_table(num_experts: int, n: int, device_name: str, *, dtype: str | None = None,
                      block_shape=None, config_dir: str | Path | None = None) -> dict[int, dict] | None:
    """The tuned table {M: config} for this shape, device and dtype from the first directory that has one
    (see the module docstring), or None."""
    name = config_file_name(num_experts, n, device_name, dtype, block_shape)
    for directory in _search_dirs(config_dir):
        path = directory / name
        if path.is_file():
            return _load_table(path.resolve(), path.stat().st_mtime_ns)
    return None


def nearest_row(table: dict[int, dict], num_tokens: int) -> dict:
    """The config of the table row whose M is nearest to num_tokens by ratio (the grid of M is close to geometric),
    the smaller M on a tie. Measured on the H200 between the rows of its tables (40 points,
    data/bench/history/lookup_H200.json): the nearest ratio took the faster neighbour at 25 and was 0.7 % slower
    than the faster one on average (at most 6.7 %); the nearest difference, vLLM's rule, at 15: 1.9 % (14.5 %)."""
    num_tokens = max(num_tokens, 1)
    return dict(table[min(table, key=lambda m: (max(m, num_tokens) / min(m, num_tokens), m))])


def default_config(num_tokens: int, num_experts: int, n: int, k: int, top_k: int, *, interpret: bool) -> dict:
    """A sound configuration for any shape, used when no tuned table exists: large tiles in the interpreter
    (each program is a round of numpy calls), vLLM's bf16 heuristic on a GPU."""
    if interpret:
        per_expert = triton.cdiv(num_tokens * top_k, num_experts)
        return {
            "BLOCK_SIZE_M": max(16, min(64, triton.next_power_of_2(per_expert))),
            "BLOCK_SIZE_N": max(16, min(128, triton.next_power_of_2(n))),
            "BLOCK_SIZE_K": max(16, min(128, triton.next_power_of_2(k))),
            "GROUP_SIZE_M": 1,
            "num_warps": 4,
            "num_stages": 1,
        }
    m = num_tokens
    return {
        "BLOCK_SIZE_M": 16 if m <= 32 else 32 if m <= 96 else 64 if m <= 512 else 128,
        "BLOCK_SIZE_N": 64 if m <= 64 else 128,
        "BLOCK_SIZE_K": 128 if m <= 64 else 64,
        "GROUP_SIZE_M": 16 if m / num_experts > 128 else 1,
        "num_warps": 4 if m <= 128 else 8,
        "num_stages": 4 if m <= 32 else 3,
        # The sorted layout through tensor descriptors won from M = 512 on at every TP size tuned; the plan
        # falls back to pointer loads where the GPU or the strides do not allow descriptors.
        "TMA": m >= 512,
    }


def get_config(num_tokens: int, num_experts: int, n: int, hidden: int, top_k: int, *, device_name: str,
               interpret: bool, dtype: str | None = None, block_shape=None,
               config_dir: str | Path | None = None) -> dict:
    """The tuned config for the nearest M when a table exists for (E, N, device, dtype); else the default.
    The interpreter always takes the default (its tiles are chosen for numpy, not for a GPU)."""
    if not interpret:
        table = load_config_table(num_experts, n, device_name, dtype=dtype, block_shape=block_shape,
                                  config_dir=config_dir)
        if table:
            return nearest_row(table, num_tokens)
    return default_config(num_tokens, num_experts, n, hidden, top_k, interpret=interpret)


__all__ = [
    "CONFIG_DIR",
    "CONFIG_DIR_ENV",
    "CONFIG_KEYS",
    "config_file_name",
    "default_config",
    "get_config",
    "load_config_table",
    "nearest_row",
    "read_config_table",
    "split_config",
]
