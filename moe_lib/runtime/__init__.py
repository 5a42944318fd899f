"""The one place that prepares Triton for the machine it runs on.

Without CUDA the Triton *interpreter* runs every kernel on the CPU with numpy. It must be switched on
(``TRITON_INTERPRET=1``) before any ``@triton.jit`` decorator runs, so ``moe_lib/__init__.py`` imports
this module first, before any module that defines a kernel.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from dataclasses import dataclass

import numpy as np
import torch

#: True when no CUDA device is usable: kernels then run in the Triton interpreter on the CPU.
HAS_CUDA: bool = torch.cuda.is_available()

if not HAS_CUDA:
    # Respect an explicit choice ("0" would try to compile for a GPU that is not there, so we don't
    # honour it); only fill in the default.
    os.environ.setdefault("TRITON_INTERPRET", "1")

#: True when kernels run in the Triton interpreter (set by us or by the user).
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check_triton_not_imported_for_the_compiler() -> None:
    """Triton builds its own ``@jit`` helpers (``tl.max``, ``tl.sum``, ...) when ``triton.language`` is
    first imported. If another package (transformers, say) imported it before the switch above, those
    helpers were built for the compiler and every interpreted kernel would fail deep inside. Triton's
    compiled extension cannot be imported twice, so say what to do instead.
    """
    language = sys.modules.get("triton.language")
    if language is not None and type(language.standard.max).__name__ != "InterpretedFunction":
        raise ImportError(
            "triton was imported (probably by another package, e.g. transformers) before moe_lib could switch "
            "it to its CPU interpreter. Import moe_lib first, or set TRITON_INTERPRET=1 before starting Python."
        )


if INTERPRET:
    _check_triton_not_imported_for_the_compiler()

import triton  # noqa: E402  (after the environment variable on purpose)
import triton.language as tl  # noqa: E402

#: Programmatic dependent launch is used by default for calls of at most this many (token, slot) rows: one
#: token of top-2, the decode step. Measured on an H100 it saved 1-4 % of a one-token layer call at every TP
#: size; at 2 to 1024 tokens it won at some TP sizes and lost up to 5 % at others (data/bench/history/README.md).
#: A fused-experts plan in FP8 launches without it (measured there: moe_lib.kernels.experts._make_plan).
PDL_MAX_ROWS: int = 2


@dataclass(frozen=True)
class Target:
    """What a plan needs to know about where kernels run, read once per device and cached (so that
    ``torch.compile`` never meets a device query inside a traced call).

    ``interpret``: the Triton interpreter on the CPU; ``name``: the GPU's name (tuned tables are per name);
    ``num_sms``: programs of a big tile that run at once (None in the interpreter: no waves);
    ``capability``: CUDA compute capability, (0, 0) in the interpreter; ``shared_memory``: bytes of shared memory
    one program may use (None in the interpreter: no limit)."""

    interpret: bool
    name: str = "cpu"
    num_sms: int | None = None
    capability: tuple[int, int] = (0, 0)
    shared_memory: int | None = None

    @property
    def hopper(self) -> bool:
        """Hopper or newer, compiled: tensor descriptors (TMA) and programmatic dependent launch."""
        return not self.interpret and self.capability[0] >= 9


INTERPRETER = Target(interpret=True)


@functools.cache
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    return Target(interpret=False, name=props.name, num_sms=props.multi_processor_count,
                  capability=(props.major, props.minor),
                  shared_memory=getattr(props, "shared_memory_per_block_optin", None))


def target(device: torch.device) -> Target:
    """The :class:`Target` of a tensor's device: the interpreter, or the compiled GPU (cached per GPU)."""
    if INTERPRET or device.type != "cuda":
        return INTERPRETER
    return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())


def pdl(device: torch.device, rows: int) -> bool:
    """The default: whether a kernel of a call with ``rows`` (token, slot) pairs uses programmatic dependent
    launch on ``device`` — compiled, on a Hopper or newer GPU, a small call. The GPU then launches a kernel
    while the one before it finishes; each kernel waits (:func:`pdl_start`) until its predecessor is done
    before touching memory, so results are unchanged: only the launch latency between kernels is hidden."""
    return rows <= PDL_MAX_ROWS and target(device).hopper


@triton.jit
def pdl_start(USE_PDL: tl.constexpr):
    """The first statement of every kernel. With programmatic dependent launch: let the next kernel be
    launched now (it will wait here too), then wait until the previous kernel has finished and its writes
    are visible. Nothing is loaded or stored before this."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


def default_device() -> torch.device:
    """The device notebooks and tests put tensors on: the GPU when there is one, else the CPU."""
    return torch.device("cuda") if HAS_CUDA else torch.device("cpu")


def device_name(device: torch.device | str | None = None) -> str:
    """The accelerator's marketing name (``"NVIDIA H100 80GB HBM3"``) or ``"cpu"``."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def environment_report() -> dict[str, str]:
    """What notebook 00 prints: where kernels run and with which versions."""
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": device_name(),
        "kernels run": "Triton interpreter on the CPU (numpy)" if INTERPRET else "compiled, on the GPU",
    }
    if HAS_CUDA:
        props = torch.cuda.get_device_properties(0)
        report["multiprocessors"] = str(props.multi_processor_count)
        report["GPU memory"] = f"{props.total_memory / 2**30:.0f} GiB"
    return report


def quiet_interpreter():
    """Silence numpy's floating-point warnings while the interpreter runs a kernel.

    The interpreter evaluates kernels with numpy, which warns about IEEE results a GPU produces silently
    (``exp(-inf)``, ``inf - inf`` on masked lanes). They are expected, and stderr must stay clean.
    """
    return np.errstate(all="ignore") if INTERPRET else contextlib.nullcontext()


def format_report(report: dict[str, str] | None = None) -> str:
    report = environment_report() if report is None else report
    width = max(map(len, report))
    return "\n".join(f"{key:<{width}} : {value}" for key, value in report.items())


__all__ = [
    "HAS_CUDA",
    "INTERPRET",
    "quiet_interpreter",
    "PDL_MAX_ROWS",
    "Target",
    "target",
    "pdl",
    "pdl_start",
    "default_device",
    "device_name",
    "environment_report",
    "format_report",
]
