"""The machinery every checker shares: run the learner's function on a list of cases, compare each answer with
the reference, and on the first disagreement say what differs and which typical mistake gives the same answer.

A checker module only writes its cases (:class:`Case`), its typical wrong solutions (:class:`Mistake`) and
its reference, and hands them to :func:`check`. Nothing here raises because of the learner's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...testing import rel_err

PASSED, FAILED, UNSOLVED = "passed", "failed", "unsolved"


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one checker. ``bool(result)`` is True only for a pass; it displays as ``message``."""

    exercise: str
    status: str  # "passed", "failed" or "unsolved"
    message: str
    cases_run: int = 0

    def __bool__(self) -> bool:
        return self.status == PASSED

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        return self.message

    __str__ = __repr__

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(self.message)


@dataclass
class Case:
    """One call of the learner's function."""

    label: str  # what is special about this case, shown on failure
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class Mistake:
    """A typical wrong solution: when the learner's answer equals its answer, ``why`` is the likely mistake."""

    fn: Callable
    why: str  # what it does wrong, and what to do instead


# ----------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------
def fmt(value, limit: int = 12) -> str:
    """A short, deterministic rendering of a value (tensors: shape, dtype and the first values)."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        head = f"tensor of shape {tuple(value.shape)}, {dtype}"
        if value.numel() == 0:
            return head + ", empty"
        if value.device.type == "meta":
            return head + " (meta)"
        flat = value.detach().cpu().flatten()
        shown = flat[:limit].tolist()
        if value.dtype.is_floating_point:
            text = ", ".join("nan" if math.isnan(v) else f"{v:.4g}" for v in shown)
        else:
            text = ", ".join(str(v) for v in shown)
        if value.numel() <= 2 * limit:
            rows = value.detach().cpu().tolist()
            if value.dtype.is_floating_point:
                rows = _round_nested(rows)
            return f"{head}: {rows}"
        more = f", ... ({value.numel() - limit} more)" if value.numel() > limit else ""
        return f"{head}, flattened: [{text}{more}]"
    if isinstance(value, tuple):
        return "(" + ", ".join(fmt(v, limit) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def _round_nested(values):
    if isinstance(values, list):
        return [_round_nested(v) for v in values]
    return values if math.isnan(values) else float(f"{values:.4g}")


def _clone(value):
    """A fresh copy of an argument, so a function that writes into its input cannot spoil the next call."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _call(fn: Callable, case: Case):
    return fn(*_clone(case.args), **_clone(case.kwargs))


# ----------------------------------------------------------------------------------------------------
# Comparisons: return None when equal enough, else what differs (one line)
# ----------------------------------------------------------------------------------------------------
def _not_a_tensor(got) -> str | None:
    return None if isinstance(got, torch.Tensor) else f"expected a torch.Tensor, got {type(got).__name__}"


def _wrong_shape(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    return None


def _entries_differ(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    if torch.equal(got, expected):
        return None
    return f"{(got != expected).sum().item()} of {expected.numel()} entries differ"


def compare_close(got, expected: torch.Tensor, tol: float = 1e-5) -> str | None:
    """A floating-point tensor of the same shape within relative error ``tol``."""
    diff = _not_a_tensor(got) or _wrong_shape(got, expected)
    if diff is not None:
        return diff
    if not got.dtype.is_floating_point:
        return f"dtype {got.dtype} instead of a floating-point tensor"
    if got.numel() == 0:
        return None
    got64 = got.detach().to("cpu", torch.float64)
    exp64 = expected.detach().to("cpu", torch.float64)
    if torch.isnan(got64).any() and not torch.isnan(exp64).any():
        return "the result contains NaN"
    err = rel_err(got64.nan_to_num(), exp64.nan_to_num())
    if not err <= tol:
        return f"values differ: relative error {err:.2e} (tolerance {tol:.0e})"
    return None


def compare_exact(got, expected: torch.Tensor) -> str | None:
    """Same shape, dtype and bit-identical values (slices of a weight are copied, never computed)."""
    diff = _not_a_tensor(got) or _wrong_shape(got, expected)
    if diff is not None:
        return diff
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype} instead of {expected.dtype}"
    return _entries_differ(got.detach().cpu(), expected.cpu())


def compare_ints(got, expected: torch.Tensor) -> str | None:
    """An integer tensor (any integer dtype) of the same shape and values."""
    diff = _not_a_tensor(got)
    if diff is not None:
        return diff
    if got.dtype.is_floating_point or got.dtype == torch.bool:
        return f"dtype {got.dtype} instead of an integer dtype (int32 or int64)"
    return _wrong_shape(got, expected) or _entries_differ(got.detach().cpu().long(), expected.cpu().long())


def compare_number(got, expected, *, integer: bool = False, tol: float = 1e-6) -> str | None:
    """A Python number (or a one-element tensor): equal for ``integer``, else within relative ``tol``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {type(got).__name__}"
    if integer:
        if isinstance(got, float) and not got.is_integer():
            return f"expected a whole number, got {got}"
        return None if int(got) == expected else f"{int(got)} instead of {expected}"
    if math.isnan(got) or abs(got - expected) > tol * max(1.0, abs(expected)):
        return f"{got:.6g} instead of {expected:.6g}"
    return None


def compare_int_tuple(got, expected: tuple) -> str | None:
    """A tuple (or list) of as many whole numbers, each equal."""
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"expected a tuple of {len(expected)} ints, got {fmt(got)}"
    for name, g, e in zip(("first", "second", "third")[: len(expected)], got, expected, strict=True):
        diff = compare_number(g, e, integer=True)
        if diff is not None:
            return f"{name} value: {diff}"
    return None


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------
def check(
    exercise: str,
    fn,
    *,
    arg_names: Sequence[str],
    cases: Sequence[Case],
    reference: Callable,
    compare: Callable,
    mistakes: Sequence[Mistake],
    hint: str,
    summary: str,
) -> CheckResult:
    """Run ``fn`` on every case against ``reference``; the verdict on the first case that differs, else a pass."""
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for '{exercise}', got {type(fn).__name__}")
    name = getattr(fn, "__name__", "")
    name = f"{name}()" if name.isidentifier() else "your function"
    for i, case in enumerate(cases, start=1):
        where = f"FAIL  {exercise}, case {i} of {len(cases)} ({case.label})"
        try:
            got = _call(fn, case)
        except NotImplementedError:
            return _unsolved(exercise, name)
        except Exception as exc:  # the learner's code failed: report it, do not raise
            lines = [f"{where}:", f"  {name} raised {type(exc).__name__}: {exc}",
                     *_describe_inputs(arg_names, case), f"  hint: {hint}"]
            return CheckResult(exercise, FAILED, "\n".join(lines), i)
        if got is None:
            if i == 1:
                return _unsolved(exercise, name)
            lines = [f"{where}:", f"  {name} returned None", *_describe_inputs(arg_names, case), f"  hint: {hint}"]
            return CheckResult(exercise, FAILED, "\n".join(lines), i)
        expected = _call(reference, case)
        diff = compare(got, expected)
        if diff is None:
            continue
        lines = [f"{where}: {diff}",
                 *_describe_inputs(arg_names, case),
                 f"  expected: {fmt(expected)}",
                 f"  got     : {fmt(got)}",
                 f"  likely mistake: {_diagnose(got, case, mistakes, compare) or hint}"]
        return CheckResult(exercise, FAILED, "\n".join(lines), i)
    return CheckResult(exercise, PASSED, f"PASS  {exercise}: {len(cases)} cases agree ({summary})", len(cases))


def _unsolved(exercise: str, name: str) -> CheckResult:
    """A stub (it raises NotImplementedError or returns None): not a failure, the notebook runs on."""
    return CheckResult(
        exercise, UNSOLVED,
        f"not solved yet: {exercise} — write the body of {name} (replace `raise NotImplementedError`), "
        "then run this cell again",
    )


def _describe_inputs(arg_names: Sequence[str], case: Case) -> list[str]:
    values = list(zip(arg_names, case.args, strict=True)) + list(case.kwargs.items())
    return [f"  input {n} = {fmt(v)}" for n, v in values]


def _diagnose(got, case: Case, mistakes: Sequence[Mistake], compare: Callable) -> str | None:
    """The explanation of the first typical mistake whose answer equals the learner's, if any."""
    for mistake in mistakes:
        try:
            if compare(got, _call(mistake.fn, case)) is None:
                return mistake.why
        except Exception:
            continue
    return None


__all__ = ["CheckResult", "PASSED", "FAILED", "UNSOLVED"]
