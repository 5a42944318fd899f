"""Comparing results: relative error ||out - ref|| / ||ref|| with tolerances that depend on the dtype.

Notebooks print ``verdict(...)``: one deterministic line (pass/fail and the error rounded to its order
of magnitude), so nbval can compare it across machines.
"""

from __future__ import annotations

import math

import torch

#: Relative-error tolerance by the *lowest* precision that took part in the computation.
#: fp32 arithmetic lands far under 1e-4; fp16 (10-bit mantissa) near 1e-3; bf16 (7-bit) up to ~1e-2.
TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}


def tolerance(*dtypes: torch.dtype) -> float:
    """The tolerance for a computation whose inputs have these dtypes (the loosest one wins)."""
    if not dtypes:
        raise ValueError("tolerance() needs at least one dtype")
    try:
        return max(TOLERANCE[d] for d in dtypes)
    except KeyError as exc:
        raise TypeError(f"no tolerance for dtype {exc.args[0]}") from None


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives NaN (which never passes); 0 for two empties."""
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {tuple(out.shape)} but ref has shape {tuple(ref.shape)}")
    if out.numel() == 0:
        return 0.0
    out64 = out.detach().to("cpu", torch.float64)
    ref64 = ref.detach().to("cpu", torch.float64)
    if not torch.isfinite(out64).all():
        return math.nan
    num = torch.linalg.vector_norm(out64 - ref64).item()
    den = torch.linalg.vector_norm(ref64).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float | None = None, what: str = "output") -> float:
    """Raise AssertionError unless rel_err(out, ref) <= tol (default: by out's dtype). Returns the error."""
    tol = tolerance(out.dtype) if tol is None else tol
    err = rel_err(out, ref)
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"{what}: relative error {err:.3e} exceeds tolerance {tol:.1e}")
    return err


def verdict(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float | None = None) -> str:
    """One line like ``PASS  fused_moe vs fp64 reference: rel err < 1e-06 (tol 1e-05)``.

    A pass shows only the power of ten above the error, so the line is the same on every machine.
    """
    tol = tolerance(out.dtype) if tol is None else tol
    err = rel_err(out, ref)
    if err <= tol:
        return f"PASS  {name}: rel err < {_upper_decade(err)} (tol {tol:.0e})"
    return f"FAIL  {name}: rel err {err:.2e} (tol {tol:.0e})"


def _upper_decade(err: float) -> str:
    """The power of ten just above err, e.g. 3.2e-7 -> '1e-06'."""
    if err == 0.0:
        return "1e-15"
    return f"{10.0 ** math.ceil(math.log10(err) + 1e-12):.0e}"


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator with a fixed seed (tensors are then moved to the device, so CPU and GPU draw alike)."""
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype=torch.float32, device="cpu", generator: torch.Generator | None = None, scale=1.0):
    """Fresh random normal data drawn on the CPU in fp32 (reproducible everywhere), then cast and moved."""
    t = torch.randn(*shape, generator=generator, dtype=torch.float32) * scale
    return t.to(device=device, dtype=dtype)


__all__ = ["TOLERANCE", "tolerance", "rel_err", "assert_close", "verdict", "seeded", "randn"]
