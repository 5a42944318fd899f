"""Output buffers of the kernels. Tests switch on poisoning so that an element a kernel forgets to write
shows up as NaN (floats) or an impossible value (ints) instead of passing by luck."""

from __future__ import annotations

import contextlib

import torch

_POISON = False
POISON_INT = -7


def empty(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.empty``, or a NaN / POISON_INT filled tensor inside :func:`poisoned`."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if _POISON:
        t.fill_(float("nan") if t.is_floating_point() else POISON_INT)
    return t


@contextlib.contextmanager
def poisoned():
    """Within this block every kernel output starts poisoned."""
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous
