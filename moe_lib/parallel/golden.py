"""The whole tiny Mixtral, tensor-parallel on real processes, against its golden outputs.

Every rank loads the unmodified transformers model, swaps each MoE block for its :class:`moe_lib.layer.MixtralMoE`
shard (:func:`moe_lib.model.replace_moe_blocks`), and runs the golden inputs; the layers' all-reduces keep the
ranks in step. Each rank's logits are compared with the golden ones by relative error, its greedy tokens exactly.

    python -m moe_lib.parallel.golden --tp 2 [--backend gloo|nccl] [--out result.json]

It starts the ranks itself (gloo on the CPU, NCCL on GPUs: one GPU per rank), prints the result as JSON and
exits with status 0 when every rank passes. It is an application of the model side, not a part of it: no
module of moe_lib imports it (``moe_lib.parallel`` does not either, so the layer can use ``parallel.shard``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from .. import runtime
from ..model import replace_moe_blocks
from ..testing import rel_err
from .launch import launch


def tiny_model_rank(rank: int, world_size: int, checkpoint_dir: str | None = None) -> dict[str, torch.Tensor]:
    """One rank of a whole Mixtral whose every MoE block is this rank's :class:`MixtralMoE` shard.

    Run by :func:`moe_lib.parallel.launch`, which has joined the process group and chosen the device.
    Every rank runs the same model and the same tokens; the MoE all-reduces keep them in step.
    """
    checkpoint_dir = checkpoint_dir or ckpt.TINY_MIXTRAL
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model = ckpt.load_hf_model(checkpoint_dir).to(device)
    replace_moe_blocks(model, checkpoint_dir, tp_size=world_size, tp_rank=rank)
    golden, _ = ckpt.read_golden(checkpoint_dir)
    out = ckpt.golden_run(model, golden["input_ids"].to(device), golden["prompt_ids"].to(device))
    return {name: t.cpu() for name, t in out.items()}


def check_tiny_model_tp(tp_size: int, backend: str | None = None, checkpoint_dir: str | None = None) -> dict:
    """Run the tiny Mixtral with TP = ``tp_size`` processes and compare every rank with the golden outputs
    of the unmodified transformers model: logits by relative error, greedy tokens exactly."""
    backend = backend or ("nccl" if runtime.HAS_CUDA else "gloo")
    checkpoint_dir = checkpoint_dir or ckpt.TINY_MIXTRAL
    golden, _ = ckpt.read_golden(checkpoint_dir)
    outs = launch(tiny_model_rank, tp_size, args=(str(checkpoint_dir),), backend=backend, timeout=300.0)
    ranks = [
        {"rank": r, "logits_rel_err": rel_err(o["logits"], golden["logits"]),
         "greedy_equal": bool(torch.equal(o["greedy_ids"], golden["greedy_ids"]))}
        for r, o in enumerate(outs)
    ]
    return {"tp": tp_size, "backend": backend, "device": runtime.device_name(), "ranks": ranks,
            "passed": all(r["logits_rel_err"] <= 1e-5 and r["greedy_equal"] for r in ranks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_lib.parallel.golden",
                                     description="The tiny Mixtral, tensor-parallel, against its golden outputs")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--out", default=None)
    cli = parser.parse_args(argv)
    result = check_tiny_model_tp(cli.tp, cli.backend)
    text = json.dumps(result, indent=1)
    print(text)
    if cli.out:
        Path(cli.out).write_text(text + "\n")
    return 0 if result["passed"] else 1


__all__ = ["tiny_model_rank", "check_tiny_model_tp", "main"]

if __name__ == "__main__":  # python -m moe_lib.parallel.golden --tp 2 [--out result.json]
    # The ranks import the rank function by name: use the module's own copy, not this __main__ one.
    sys.exit(importlib.import_module("moe_lib.parallel.golden").main())
