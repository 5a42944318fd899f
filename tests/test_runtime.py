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


def test_target_of_a_device():
    # The interpreter (any CPU tensor, or no GPU) has no waves and no Hopper features.
    cpu = runtime.target(torch.device("cpu"))
    assert cpu is runtime.INTERPRETER and cpu.interpret and cpu.num_sms is None and not cpu.hopper
    if runtime.HAS_CUDA and not runtime.INTERPRET:
        gpu = runtime.target(torch.device("cuda"))
        props = torch.cuda.get_device_properties(0)
        assert gpu.name == props.name and gpu.num_sms == props.multi_processor_count
        assert gpu is runtime.target(torch.device("cuda", 0))  # read once, cached


def test_hopper_means_compiled_and_capability_9():
    assert runtime.Target(interpret=False, capability=(9, 0)).hopper
    assert runtime.Target(interpret=False, capability=(10, 0)).hopper
    assert not runtime.Target(interpret=False, capability=(8, 0)).hopper
    assert not runtime.Target(interpret=True, capability=(9, 0)).hopper


def test_pdl_default_only_on_hopper_and_for_one_token():
    # Programmatic dependent launch by default: never in the interpreter or off CUDA; on a GPU only from Hopper
    # on and only for calls of at most PDL_MAX_ROWS (token, slot) rows.
    assert not runtime.pdl(torch.device("cpu"), 1)
    if runtime.HAS_CUDA and not runtime.INTERPRET:
        cuda = torch.device("cuda", 0)
        hopper = runtime.target(cuda).hopper
        assert runtime.pdl(cuda, runtime.PDL_MAX_ROWS) == hopper
        assert not runtime.pdl(cuda, runtime.PDL_MAX_ROWS + 1)
