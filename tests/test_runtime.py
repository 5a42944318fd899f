import os
import subprocess
import sys

import torch
import triton

from moe_lib import runtime


def test_interpreter_exactly_when_no_cuda():
    if not runtime.HAS_CUDA:
        assert runtime.INTERPRET and os.environ["TRITON_INTERPRET"] == "1"
    assert triton.knobs.runtime.interpret == runtime.INTERPRET


def test_report_names_device_and_versions():
    report = runtime.environment_report()
    for key in ("python", "torch", "triton", "device", "kernels run"):
        assert report[key]
    text = runtime.format_report(report)
    assert "triton" in text and report["device"] in text


def test_import_sets_interpreter_before_kernels_in_a_fresh_process():
    # A fresh interpreter without TRITON_INTERPRET: importing moe_lib alone must make kernels work on CPU.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import torch, moe_lib\n"
        "from moe_lib.kernels.routing import topk_softmax_kernel\n"
        "print(type(topk_softmax_kernel).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = "JITFunction" if runtime.HAS_CUDA else "InterpretedFunction"
    assert out.stdout.strip() == expected
    assert out.stderr == ""


def test_triton_imported_too_early_gives_a_clear_error():
    if runtime.HAS_CUDA:
        return  # only the interpreter cares about import order
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import triton.language\nimport moe_lib\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "Import moe_lib first" in out.stderr


def test_pdl_only_compiled_on_hopper_and_for_one_token(monkeypatch):
    # Programmatic dependent launch: never in the interpreter or off CUDA; on a GPU only from Hopper on and only
    # for calls of at most PDL_MAX_ROWS (token, slot) rows.
    assert not runtime.pdl(torch.device("cpu"), 1)
    monkeypatch.setattr(runtime, "INTERPRET", False)
    monkeypatch.setattr(runtime, "_compute_capability", lambda index: (9, 0))
    cuda = torch.device("cuda", 0)
    assert runtime.pdl(cuda, runtime.PDL_MAX_ROWS)
    assert not runtime.pdl(cuda, runtime.PDL_MAX_ROWS + 1)
    monkeypatch.setattr(runtime, "_compute_capability", lambda index: (8, 0))
    assert not runtime.pdl(cuda, 1)
    monkeypatch.setattr(runtime, "_compute_capability", lambda index: (9, 0))
    monkeypatch.setattr(runtime, "PDL_ENABLED", False)
    assert not runtime.pdl(cuda, 1)
