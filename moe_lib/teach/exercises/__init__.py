"""Checkers for the notebooks' exercises: run the learner's function on random cases and explain the first
failure.

Every ``check_*`` function takes the learner's function, calls it on a fixed list of cases (small hand-picked
edge cases first, then seeded random ones) and returns a :class:`CheckResult` whose text is one of

* ``PASS  <exercise>: ...`` — every case agreed with the library's answer;
* ``not solved yet: <exercise> ...`` — the function still raises ``NotImplementedError`` or returns
  ``None`` (the stubs in the notebooks do): nothing fails, the notebook runs on;
* ``FAIL  <exercise>, case i of n (...)`` followed by the input, the expected and the obtained output, and
  the likely mistake. The likely mistake is found by running a list of typical wrong solutions on the same
  input: if the learner's output equals one of them, its explanation is shown.

A checker never raises because of the learner's code (an exception inside it is reported as a failure);
it raises TypeError only when it is handed something that is not callable. The result is truthy only when
the exercise passed, and it displays as its text, so a notebook cell can end with ``check_xxx(my_fn)``.
The cases are seeded: the same function always gets the same verdict and the same message.

    notebook 01   check_gate_logits, check_logit_std
    notebook 02   check_renormalize, check_topk_ids
    notebook 03   check_silu_and_mul, check_moe_forward
    notebook 04   check_expert_slots, check_padded_total
    notebook 05   check_tile_a_rows, check_b_offsets
    notebook 06   check_decode_floor
    notebook 07   check_shard_w13, check_shard_w2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ...testing import randn, rel_err, seeded

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
class _Case:
    label: str  # what is special about this case, shown on failure
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class _Mistake:
    fn: Callable  # a typical wrong solution
    why: str  # what it does wrong, and what to do instead


# ----------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------
def _fmt(value, limit: int = 12) -> str:
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
        return "(" + ", ".join(_fmt(v, limit) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def _round_nested(values):
    if isinstance(values, list):
        return [_round_nested(v) for v in values]
    return values if math.isnan(values) else float(f"{values:.4g}")


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _clone(value):
    """A fresh copy of an argument, so a function that writes into its input cannot spoil the next call."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_clone(v) for v in value)
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------
# Comparisons: return None when equal enough, else what differs (one line)
# ----------------------------------------------------------------------------------------------------
def _compare_close(got, expected: torch.Tensor, tol: float = 1e-5) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
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


def _compare_exact(got, expected: torch.Tensor) -> str | None:
    """Same shape, dtype kind and bit-identical values (slices of a weight are copied, never computed)."""
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype} instead of {expected.dtype}"
    if not torch.equal(got.detach().cpu(), expected.cpu()):
        wrong = (got.detach().cpu() != expected.cpu()).sum().item()
        return f"{wrong} of {expected.numel()} entries differ"
    return None


def _compare_ints(got, expected: torch.Tensor) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor, got {type(got).__name__}"
    if got.dtype.is_floating_point or got.dtype == torch.bool:
        return f"dtype {got.dtype} instead of an integer dtype (int32 or int64)"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape {tuple(got.shape)} instead of {tuple(expected.shape)}"
    if not torch.equal(got.detach().cpu().long(), expected.cpu().long()):
        wrong = (got.detach().cpu().long() != expected.cpu().long()).sum().item()
        return f"{wrong} of {expected.numel()} entries differ"
    return None


def _compare_number(got, expected, *, integer: bool = False, tol: float = 1e-6) -> str | None:
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


def _compare_int_tuple(got, expected: tuple) -> str | None:
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"expected a tuple of {len(expected)} ints, got {_fmt(got)}"
    for name, g, e in zip(("first", "second", "third")[: len(expected)], got, expected, strict=True):
        diff = _compare_number(g, e, integer=True)
        if diff is not None:
            return f"{name} value: {diff}"
    return None


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------
def _check(
    exercise: str,
    fn,
    *,
    arg_names: Sequence[str],
    cases: Sequence[_Case],
    reference: Callable,
    compare: Callable,
    mistakes: Sequence[_Mistake],
    hint: str,
    summary: str,
) -> CheckResult:
    if not callable(fn):
        raise TypeError(f"fn must be the function you wrote for '{exercise}', got {type(fn).__name__}")
    name = getattr(fn, "__name__", "")
    name = f"{name}()" if name.isidentifier() else "your function"
    for i, case in enumerate(cases, start=1):
        try:
            got = fn(*_clone(case.args), **_clone(case.kwargs))
        except NotImplementedError:
            return _unsolved(exercise, name)
        except Exception as exc:  # the learner's code failed: report it, do not raise
            lines = [f"FAIL  {exercise}, case {i} of {len(cases)} ({case.label}):",
                     f"  {name} raised {type(exc).__name__}: {exc}",
                     *_describe_inputs(arg_names, case),
                     f"  hint: {hint}"]
            return CheckResult(exercise, FAILED, "\n".join(lines), i)
        if got is None:
            if i == 1:
                return _unsolved(exercise, name)
            lines = [f"FAIL  {exercise}, case {i} of {len(cases)} ({case.label}):",
                     f"  {name} returned None", *_describe_inputs(arg_names, case), f"  hint: {hint}"]
            return CheckResult(exercise, FAILED, "\n".join(lines), i)
        expected = reference(*_clone(case.args), **_clone(case.kwargs))
        diff = compare(got, expected)
        if diff is None:
            continue
        lines = [f"FAIL  {exercise}, case {i} of {len(cases)} ({case.label}): {diff}",
                 *_describe_inputs(arg_names, case),
                 f"  expected: {_fmt(expected)}",
                 f"  got     : {_fmt(got)}",
                 f"  likely mistake: {_diagnose(got, case, mistakes, compare) or hint}"]
        return CheckResult(exercise, FAILED, "\n".join(lines), i)
    return CheckResult(exercise, PASSED, f"PASS  {exercise}: {len(cases)} cases agree ({summary})", len(cases))


def _unsolved(exercise: str, name: str) -> CheckResult:
    return CheckResult(
        exercise, UNSOLVED,
        f"not solved yet: {exercise} — write the body of {name} (replace `raise NotImplementedError`), "
        "then run this cell again",
    )


def _describe_inputs(arg_names: Sequence[str], case: _Case) -> list[str]:
    values = list(zip(arg_names, case.args, strict=True)) + list(case.kwargs.items())
    return [f"  input {n} = {_fmt(v)}" for n, v in values]


def _diagnose(got, case: _Case, mistakes: Sequence[_Mistake], compare: Callable) -> str | None:
    for mistake in mistakes:
        try:
            wrong = mistake.fn(*_clone(case.args), **_clone(case.kwargs))
        except Exception:
            continue
        try:
            if compare(got, wrong) is None:
                return mistake.why
        except Exception:
            continue
    return None


def _random_probs(gen: torch.Generator, m: int, e: int, k: int) -> torch.Tensor:
    """(m, k) top-k probabilities of random logits, largest first (what routing keeps before renormalizing)."""
    probs = torch.softmax(randn(m, e, generator=gen, scale=1.5), dim=-1)
    return torch.sort(probs, dim=-1, descending=True, stable=True).values[:, :k].contiguous()


def _routed_ids(gen: torch.Generator, m: int, e: int, k: int, skew: bool = False) -> torch.Tensor:
    """(m, k) int32 distinct expert ids per token: the top-k of random scores (skew favours low ids)."""
    scores = torch.rand(m, e, generator=gen)
    if skew:
        scores = scores + torch.linspace(2.0, 0.0, e)
    return scores.topk(k, dim=1).indices.to(torch.int32)


# ----------------------------------------------------------------------------------------------------
# Notebook 01: the gate
# ----------------------------------------------------------------------------------------------------
def check_gate_logits(gate_logits) -> CheckResult:
    """``gate_logits(x, weight)``: x (..., H), weight (E, H) -> router logits (..., E) = x W^T."""
    gen = seeded(101)
    cases = [
        _Case("2 tokens, H = 4, E = 3", (randn(2, 4, generator=gen), randn(3, 4, generator=gen))),
        _Case("square: H = E = 6", (randn(5, 6, generator=gen), randn(6, 6, generator=gen))),
        _Case("a (batch, seq, H) input", (randn(2, 3, 8, generator=gen), randn(4, 8, generator=gen))),
        *[_Case(f"random, M = {m}", (randn(m, 16, generator=gen), randn(8, 16, generator=gen))) for m in (1, 7, 33)],
    ]
    return _check(
        "gate logits", gate_logits, arg_names=("x", "weight"), cases=cases,
        reference=lambda x, w: x @ w.T, compare=_compare_close,
        mistakes=[
            _Mistake(lambda x, w: x @ w, "x @ weight multiplies by the weight itself; the gate is x @ weight.T "
                     "(weight is (E, H): one row per expert)"),
            _Mistake(lambda x, w: w @ x.transpose(-1, -2), "weight @ x.T gives one row per expert; the logits "
                     "have one row per token: x @ weight.T"),
            _Mistake(lambda x, w: x.reshape(-1, x.shape[-1]) @ w.T, "the leading dimensions were flattened; "
                     "keep them: x @ weight.T works on (..., H) as it is"),
        ],
        hint="logit[t, e] is the dot product of token t with row e of the weight: x @ weight.T",
        summary="2-D and 3-D inputs, square and non-square weights",
    )


def check_logit_std(logit_std) -> CheckResult:
    """``logit_std(init_std, hidden_size)``: the standard deviation of a logit x . w for unit-variance x and
    weights of standard deviation ``init_std`` (independent, zero mean)."""
    pairs = [(0.02, 4096), (0.02, 64), (0.5, 1), (1.0, 9), (0.1, 100), (0.03, 14336)]
    cases = [_Case(f"init_std = {s}, hidden_size = {h}", (s, h)) for s, h in pairs]
    return _check(
        "logit std", logit_std, arg_names=("init_std", "hidden_size"), cases=cases,
        reference=lambda s, h: s * math.sqrt(h), compare=lambda got, exp: _compare_number(got, exp, tol=1e-6),
        mistakes=[
            _Mistake(lambda s, h: s * s * h, "that is the variance: a sum of H independent products has variance "
                     "H x init_std^2; its standard deviation is the square root"),
            _Mistake(lambda s, h: s * h, "standard deviations do not add; variances do: sqrt(H x init_std^2)"),
            _Mistake(lambda s, h: s / math.sqrt(h), "the spread grows with H (more terms in the sum), it does not "
                     "shrink"),
            _Mistake(lambda s, h: s, "the logit sums H products, each with standard deviation init_std"),
        ],
        hint="a logit is a sum of H independent products x_h w_h, each of variance init_std^2",
        summary="including Mixtral's H = 4096",
    )


# ----------------------------------------------------------------------------------------------------
# Notebook 02: routing
# ----------------------------------------------------------------------------------------------------
def _renormalize_ref(p: torch.Tensor) -> torch.Tensor:
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def check_renormalize(renormalize) -> CheckResult:
    """``renormalize(topk_probs)``: (M, k) chosen probabilities -> (M, k) weights that sum to 1 per token;
    a row whose sum is <= 0 (a NaN token: its probabilities were set to 0) is divided by 1."""
    gen = seeded(202)
    cases = [
        _Case("3 tokens, k = 2", (_random_probs(gen, 3, 8, 2),)),
        _Case("as many tokens as slots (M = k = 2)", (_random_probs(gen, 2, 8, 2),)),
        _Case("a token whose chosen probabilities are all 0", (torch.tensor([[0.6, 0.3], [0.0, 0.0]]),)),
        _Case("k = 1", (_random_probs(gen, 4, 8, 1),)),
        *[_Case(f"random, M = {m}, k = {k}", (_random_probs(gen, m, 8, k),)) for m, k in ((16, 2), (9, 4), (5, 8))],
    ]
    return _check(
        "renormalize", renormalize, arg_names=("topk_probs",), cases=cases,
        reference=_renormalize_ref, compare=_compare_close,
        mistakes=[
            _Mistake(lambda p: p / p.sum(dim=-1, keepdim=True), "a token whose chosen probabilities sum to 0 gets "
                     "0 / 0 = NaN; divide by 1 where the sum is <= 0 (torch.where(total > 0, total, 1))"),
            _Mistake(lambda p: p / p.sum(dim=0, keepdim=True), "the sum ran over the tokens (dim 0); each token is "
                     "normalized over its own k slots: sum(dim=-1, keepdim=True)"),
            _Mistake(lambda p: p / p.sum(), "divided by the sum over the whole tensor; sum each row: "
                     "sum(dim=-1, keepdim=True)"),
            _Mistake(lambda p: p / p.sum(dim=-1), "sum(dim=-1) without keepdim=True divides column j by token j's "
                     "sum; keep the dimension so each row is divided by its own sum"),
            _Mistake(lambda p: torch.softmax(p, dim=-1), "a softmax of the probabilities is not a renormalization: "
                     "divide them by their sum"),
        ],
        hint="divide each row by its own sum (sum(dim=-1, keepdim=True)), using 1 where that sum is <= 0",
        summary="zero-sum token, k = 1 to 8",
    )


def _topk_ids_ref(probs: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(probs, dim=-1, descending=True, stable=True).indices[:, :k]


def check_topk_ids(topk_ids) -> CheckResult:
    """``topk_ids(probs, k)``: (M, E) probabilities -> (M, k) integer ids of the k largest, largest first,
    ties to the lower expert id."""
    gen = seeded(203)
    uniform = torch.full((3, 8), 0.125)
    steps = torch.tensor([[0.1, 0.3, 0.3, 0.05, 0.3, 0.05, 0.1, 0.1],
                          [0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    ints = torch.randint(0, 3, (32, 8), generator=gen).float()
    cases = [
        _Case("distinct probabilities, k = 2", (torch.softmax(randn(3, 8, generator=gen), -1), 2)),
        _Case("all eight experts equal", (uniform, 2)),
        _Case("a three-way tie at the top", (steps, 2)),
        _Case("many ties (small integer scores)", (ints / ints.sum(-1, keepdim=True).clamp(min=1), 3)),
        _Case("k = 1", (torch.softmax(randn(5, 8, generator=gen), -1), 1)),
        _Case("k = E", (torch.softmax(randn(4, 8, generator=gen), -1), 8)),
        _Case("random, 16 experts, k = 4", (torch.softmax(randn(20, 16, generator=gen), -1), 4)),
    ]
    return _check(
        "top-k ids", topk_ids, arg_names=("probs", "k"), cases=cases,
        reference=_topk_ids_ref, compare=_compare_ints,
        mistakes=[
            _Mistake(lambda p, k: torch.topk(p, k).indices, "torch.topk does not promise which of several equal "
                     "values comes first; a stable descending sort keeps equal ones in id order: "
                     "torch.sort(probs, dim=-1, descending=True, stable=True)"),
            _Mistake(lambda p, k: torch.sort(p, dim=-1, descending=True).indices[:, :k], "without stable=True the "
                     "sort may put equal values in any order; pass stable=True"),
            _Mistake(lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, :k], "an ascending sort gives the "
                     "k smallest; sort with descending=True"),
            _Mistake(lambda p, k: torch.sort(p, dim=-1, stable=True).indices[:, -k:].flip(-1), "the k largest of an "
                     "ascending sort, reversed, put the higher id first among equal values; sort descending with "
                     "stable=True instead"),
            _Mistake(lambda p, k: torch.sort(p, dim=0, descending=True, stable=True).indices[:k], "the sort ran over "
                     "the tokens (dim 0); rank the experts of each token: dim=-1"),
        ],
        hint="sort each row, largest first, keeping equal values in expert-id order (a stable sort), and take k",
        summary="ties, k = 1, k = E",
    )


# ----------------------------------------------------------------------------------------------------
# Notebook 03: the reference MoE
# ----------------------------------------------------------------------------------------------------
def _silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    g, u = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(g) * u


def check_silu_and_mul(silu_and_mul) -> CheckResult:
    """``silu_and_mul(gate_up)``: (..., 2I) -> (..., I) = silu(first half) * second half."""
    gen = seeded(303)
    cases = [
        _Case("one row, I = 3", (randn(1, 6, generator=gen, scale=2.0),)),
        _Case("a 1-D input, I = 4", (randn(8, generator=gen, scale=2.0),)),
        _Case("a 3-D input", (randn(2, 3, 10, generator=gen, scale=2.0),)),
        *[_Case(f"random, ({m}, {2 * i})", (randn(m, 2 * i, generator=gen, scale=2.0),)) for m, i in ((5, 16),
                                                                                                     (33, 64))],
    ]
    return _check(
        "silu_and_mul", silu_and_mul, arg_names=("gate_up",), cases=cases,
        reference=_silu_and_mul_ref, compare=_compare_close,
        mistakes=[
            _Mistake(lambda x: torch.nn.functional.silu(x.chunk(2, -1)[1]) * x.chunk(2, -1)[0], "the halves are "
                     "swapped: the FIRST half is the gate (goes through SiLU), the second is the up projection"),
            _Mistake(lambda x: torch.sigmoid(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1], "sigmoid is not SiLU: "
                     "silu(g) = g * sigmoid(g)"),
            _Mistake(lambda x: torch.relu(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1], "ReLU is not SiLU: "
                     "silu(g) = g * sigmoid(g)"),
            _Mistake(lambda x: torch.nn.functional.silu(x.chunk(2, -1)[0]), "the product with the up half is "
                     "missing: silu(gate) * up"),
            _Mistake(lambda x: torch.nn.functional.silu(x.chunk(2, -1)[0] * x.chunk(2, -1)[1]), "SiLU went over the "
                     "product; apply it to the gate half only, then multiply"),
            _Mistake(lambda x: torch.nn.functional.silu(x[..., 0::2]) * x[..., 1::2], "the halves are the first I "
                     "and the last I values, not the even and odd positions"),
        ],
        hint="split the last dimension in two halves g, u (gate_up[..., :I], gate_up[..., I:]); return g * "
             "sigmoid(g) * u",
        summary="1-D, 2-D and 3-D inputs",
    )


def _moe_forward_ref(x, w13, w2, topk_weights, topk_ids):
    from ...reference import moe_reference

    return moe_reference(x, w13, w2, topk_weights, topk_ids, fp64=True).to(x.dtype)


def _moe_case(gen: torch.Generator, m: int, e: int, k: int, h: int, i: int) -> tuple:
    x = randn(m, h, generator=gen)
    w13 = randn(e, 2 * i, h, generator=gen, scale=h**-0.5)
    w2 = randn(e, h, i, generator=gen, scale=i**-0.5)
    probs = torch.softmax(randn(m, e, generator=gen, scale=1.5), dim=-1)
    top_p, ids = torch.sort(probs, dim=-1, descending=True, stable=True)
    weights = top_p[:, :k] / top_p[:, :k].sum(-1, keepdim=True)
    return x, w13, w2, weights.contiguous(), ids[:, :k].to(torch.int32).contiguous()


def _moe_wrong(x, w13, w2, topk_weights, topk_ids, *, weighted=True, swap=False, slot0=False):
    out = torch.zeros_like(x)
    inter = w2.shape[2]
    for t in range(x.shape[0]):
        for j in range(1 if slot0 else topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            gu = w13[e] @ x[t]
            g, u = (gu[inter:], gu[:inter]) if swap else (gu[:inter], gu[inter:])
            y = w2[e] @ (torch.nn.functional.silu(g) * u)
            out[t] += (topk_weights[t, j] if weighted else 1.0) * y
    return out


def check_moe_forward(moe_forward) -> CheckResult:
    """``moe_forward(x, w13, w2, topk_weights, topk_ids)``: the MoE layer output (M, H) — for each token, the
    routing-weighted sum over its k experts of w2[e] @ (silu(w1[e] @ x) * (w3[e] @ x)), w13[e] = [w1; w3]."""
    gen = seeded(304)
    cases = [
        _Case("1 token, 4 experts, top-2, H = 4, I = 3", _moe_case(gen, 1, 4, 2, 4, 3)),
        _Case("5 tokens, 8 experts, top-2", _moe_case(gen, 5, 8, 2, 8, 6)),
        _Case("top-1", _moe_case(gen, 6, 4, 1, 8, 4)),
        _Case("top-3 of 6 experts, H != I", _moe_case(gen, 7, 6, 3, 12, 5)),
        _Case("random, 24 tokens", _moe_case(gen, 24, 8, 2, 16, 32)),
    ]
    return _check(
        "MoE forward", moe_forward, arg_names=("x", "w13", "w2", "topk_weights", "topk_ids"), cases=cases,
        reference=_moe_forward_ref, compare=_compare_close,
        mistakes=[
            _Mistake(lambda *a: _moe_wrong(*a, weighted=False), "the expert outputs were added without their "
                     "routing weights: y_t = sum_j topk_weights[t, j] * FFN_e(x_t)"),
            _Mistake(lambda *a: _moe_wrong(*a, swap=True), "w1 and w3 are swapped: rows [0, I) of w13[e] are w1 "
                     "(the gate, through SiLU), rows [I, 2I) are w3 (up)"),
            _Mistake(lambda *a: _moe_wrong(*a, slot0=True), "only the first chosen expert was used; add all k "
                     "slots of every token"),
        ],
        hint="for each token t and slot j: e = topk_ids[t, j]; g, u = (w13[e] @ x[t]).split(I); "
             "y[t] += topk_weights[t, j] * w2[e] @ (silu(g) * u)",
        summary="top-1 to top-3, H != I",
    )


# ----------------------------------------------------------------------------------------------------
# Notebook 04: alignment
# ----------------------------------------------------------------------------------------------------
#: The routing of notebook 04's first example: 6 tokens, top-2 of 8 experts.
NB04_TOPK_IDS = torch.tensor([[4, 5], [5, 6], [7, 3], [5, 4], [6, 7], [5, 1]], dtype=torch.int32)


def _expert_slots_ref(topk_ids: torch.Tensor, expert: int, block_m: int) -> torch.Tensor:
    from ...kernels.align import moe_align_block_size_torch

    num_experts = max(int(topk_ids.max()) + 1, expert + 1) if topk_ids.numel() else expert + 1
    sorted_ids, expert_ids, _ = moe_align_block_size_torch(topk_ids, block_m, num_experts)
    blocks = (expert_ids == expert).nonzero().flatten()
    if blocks.numel() == 0:
        return torch.empty(0, dtype=torch.int64)
    start, stop = int(blocks[0]) * block_m, (int(blocks[-1]) + 1) * block_m
    return sorted_ids[start:stop].long()


def _slots_wrong(topk_ids, expert, block_m, *, tokens=False, pad=None, extra_block=False, block_for_empty=False):
    flat = topk_ids.flatten().long()
    ids = (flat == expert).nonzero().flatten()
    if tokens:
        ids = ids // topk_ids.shape[1]
    n = ids.numel()
    padded = (n // block_m + 1) * block_m if extra_block else -(-n // block_m) * block_m
    if block_for_empty and n == 0:
        padded = block_m
    fill = flat.numel() if pad is None else pad
    return torch.cat([ids, torch.full((padded - n,), fill, dtype=torch.int64)])


def check_expert_slots(expert_slots) -> CheckResult:
    """``expert_slots(topk_ids, expert, block_m)``: the slots of one expert's group in ``sorted_token_ids`` —
    the flat ids t * k + j routed to ``expert``, ascending, then padding (the sentinel M * k) up to a multiple
    of ``block_m``; an expert with no rows has no slots (an empty tensor)."""
    gen = seeded(404)
    cases = [
        _Case("notebook 04's routing, expert 4, BLOCK_M = 4", (NB04_TOPK_IDS, 4, 4)),
        _Case("notebook 04's routing, expert 5: exactly BLOCK_M rows", (NB04_TOPK_IDS, 5, 4)),
        _Case("notebook 04's routing, expert 0: nobody chose it", (NB04_TOPK_IDS, 0, 4)),
        _Case("BLOCK_M = 1", (NB04_TOPK_IDS, 7, 1)),
        *[_Case(f"random, M = {m}, E = {e}, top-{k}, BLOCK_M = {b}, expert {x}",
                (_routed_ids(gen, m, e, k, skew=True), x, b))
          for m, e, k, b, x in ((10, 8, 2, 4, 0), (33, 8, 2, 16, 5), (50, 16, 4, 8, 2), (7, 8, 8, 4, 7))],
    ]
    return _check(
        "one expert's aligned slots", expert_slots, arg_names=("topk_ids", "expert", "block_m"), cases=cases,
        reference=_expert_slots_ref, compare=_compare_ints,
        mistakes=[
            _Mistake(lambda *a: _slots_wrong(*a, tokens=True), "these are token ids (flat id // k); the slots hold "
                     "flat ids t * k + j, the positions in topk_ids.flatten()"),
            _Mistake(lambda *a: _slots_wrong(*a, pad=-1), "padding slots hold the sentinel M * k "
                     "(topk_ids.numel()), not -1"),
            _Mistake(lambda *a: _slots_wrong(*a, pad=0), "padding slots hold the sentinel M * k "
                     "(topk_ids.numel()), not 0 (a real flat id!)"),
            _Mistake(lambda *a: _slots_wrong(*a, extra_block=True), "a group that already fills whole blocks needs "
                     "no padding: round up with ceil(n / BLOCK_M) * BLOCK_M, not (n // BLOCK_M + 1) * BLOCK_M"),
            _Mistake(lambda *a: _slots_wrong(*a, block_for_empty=True), "an expert with no rows gets no block "
                     "at all: return an empty tensor"),
            _Mistake(lambda t, e, b: (t.flatten() == e).nonzero().flatten(), "the padding is missing: fill the "
                     "group with the sentinel M * k up to a multiple of BLOCK_M"),
        ],
        hint="flat = topk_ids.flatten(); ids = (flat == expert).nonzero().flatten(); pad with flat.numel() up to "
             "ceil(len(ids) / block_m) * block_m",
        summary="exact multiples, empty experts, BLOCK_M = 1",
    )


def _padded_total_ref(counts, block_m: int) -> int:
    return sum(-(-int(n) // block_m) * block_m for n in counts)


def check_padded_total(padded_total) -> CheckResult:
    """``padded_total(counts, block_m)``: num_tokens_post_padded — each expert's row count (a list of ints)
    rounded up to a multiple of ``block_m``, summed; experts with no rows add nothing."""
    gen = seeded(405)
    cases = [
        _Case("one expert with 3 rows, BLOCK_M = 4", ([3], 4)),
        _Case("notebook 04's routing", ([0, 1, 0, 1, 2, 4, 2, 2], 4)),
        _Case("exact multiples", ([4, 8, 0, 4], 4)),
        _Case("BLOCK_M = 1", ([3, 0, 5], 1)),
        *[_Case(f"random, {e} experts, BLOCK_M = {b}", (torch.randint(0, 40, (e,), generator=gen).tolist(), b))
          for e, b in ((8, 16), (16, 8), (64, 64))],
    ]
    return _check(
        "padded total", padded_total, arg_names=("counts", "block_m"), cases=cases,
        reference=_padded_total_ref, compare=lambda got, exp: _compare_number(got, exp, integer=True),
        mistakes=[
            _Mistake(lambda c, b: sum((n // b + 1) * b for n in c if n), "a group that already fills whole blocks "
                     "needs no padding: ceil(n / BLOCK_M) * BLOCK_M, not (n // BLOCK_M + 1) * BLOCK_M"),
            _Mistake(lambda c, b: sum(max(1, -(-n // b)) * b for n in c), "an expert with no rows gets no block"),
            _Mistake(lambda c, b: sum(c) + len(c) * (b - 1), "that is the worst case (max_len), used to size the "
                     "buffers; the padded total rounds each expert's actual count up"),
            _Mistake(lambda c, b: -(-sum(c) // b) * b, "each expert is padded separately (a block never mixes "
                     "experts): round every count up, then add"),
            _Mistake(lambda c, b: sum(n // b * b for n in c), "rounding down drops rows: round each count up"),
        ],
        hint="sum over experts of ceil(n_e / block_m) * block_m; in integers: -(-n // block_m) * block_m",
        summary="exact multiples, empty experts, BLOCK_M = 1",
    )


# ----------------------------------------------------------------------------------------------------
# Notebook 05: the fused kernel
# ----------------------------------------------------------------------------------------------------
def _tile_a_rows_ref(sorted_token_ids, pid_m, block_m, top_k, num_valid):
    offs = pid_m * block_m + torch.arange(block_m)
    flat = torch.full((block_m,), num_valid, dtype=torch.int64)
    inside = offs < sorted_token_ids.numel()
    flat[inside] = sorted_token_ids[offs[inside]].long()
    return torch.where(flat < num_valid, flat // top_k, torch.full_like(flat, -1))


def _a_rows_wrong(s, pid_m, b, k, v, *, divide=True, mod=False, mask=True, offset=None):
    start = pid_m * b if offset is None else offset
    offs = start + torch.arange(b)
    flat = torch.full((b,), v, dtype=torch.int64)
    inside = (offs < s.numel()) & (offs >= 0)
    flat[inside] = s[offs[inside]].long()
    rows = flat % k if mod else (flat // k if divide else flat)
    return torch.where(flat < v, rows, torch.full_like(rows, -1)) if mask else rows


def _alignment_case(gen: torch.Generator, m: int, e: int, k: int, b: int, pid_m: int) -> tuple:
    from ...kernels.align import moe_align_block_size_torch

    ids = _routed_ids(gen, m, e, k)
    sorted_ids = moe_align_block_size_torch(ids, b, e)[0]
    return sorted_ids, pid_m, b, k, m * k


def check_tile_a_rows(tile_a_rows) -> CheckResult:
    """``tile_a_rows(sorted_token_ids, pid_m, block_m, top_k, num_valid)``: which row of A (the tokens x)
    each of the ``block_m`` rows of row block ``pid_m`` reads in GEMM1 — ``flat_id // top_k`` — with -1 for
    padding slots (flat id >= num_valid) and for slots past the end of sorted_token_ids."""
    gen = seeded(505)
    from ...kernels.align import moe_align_block_size_torch

    nb04 = moe_align_block_size_torch(NB04_TOPK_IDS, 4, 8)[0]  # (36,)
    cases = [
        _Case("notebook 04's layout, block 2", (nb04, 2, 4, 2, 12)),
        _Case("notebook 04's layout, block 0: one real row", (nb04, 0, 4, 2, 12)),
        _Case("notebook 04's layout, block 7: past the padded total", (nb04, 7, 4, 2, 12)),
        _Case("a partly filled last block", (torch.tensor([4, 0, 2, 6, 6], dtype=torch.int32), 1, 4, 3, 6)),
        _Case("top_k = 1", _alignment_case(gen, 9, 4, 1, 4, 1)),
        *[_Case(f"random, M = {m}, E = {e}, top-{k}, BLOCK_M = {b}, block {p}", _alignment_case(gen, m, e, k, b, p))
          for m, e, k, b, p in ((20, 8, 2, 8, 3), (40, 8, 2, 16, 1), (33, 16, 4, 8, 5))],
    ]
    return _check(
        "A rows of a tile", tile_a_rows, arg_names=("sorted_token_ids", "pid_m", "block_m", "top_k", "num_valid"),
        cases=cases, reference=_tile_a_rows_ref, compare=_compare_ints,
        mistakes=[
            _Mistake(lambda *a: _a_rows_wrong(*a, divide=False), "these are the flat ids themselves; in GEMM1 A "
                     "holds one row per token, so a flat id t * k + j reads row flat_id // top_k"),
            _Mistake(lambda *a: _a_rows_wrong(*a, mod=True), "flat_id % top_k is the slot j; the token is "
                     "flat_id // top_k"),
            _Mistake(lambda *a: _a_rows_wrong(*a, mask=False), "padding slots (flat id == num_valid) must not read "
                     "a row: mark them -1 (the kernel masks them)"),
            _Mistake(lambda s, p, b, k, v: _a_rows_wrong(s, p, b, k, v, offset=p), "row block pid_m starts at slot "
                     "pid_m * block_m, not at slot pid_m"),
            _Mistake(lambda s, p, b, k, v: _a_rows_wrong(s, p, b, k, v, offset=(p + 1) * b), "row block pid_m "
                     "covers slots [pid_m * block_m, (pid_m + 1) * block_m)"),
        ],
        hint="slots = pid_m * block_m + arange(block_m); flat = sorted_token_ids[slots] (num_valid past the end); "
             "rows = flat // top_k, and -1 where flat >= num_valid",
        summary="padding, partial last block, top_k = 1",
    )


def _b_offsets_ref(expert, n, k, strides, inter):
    be, bn, bk = strides
    gate = expert * be + n * bn + k * bk
    return gate, gate + inter * bn


def check_b_offsets(b_offsets) -> CheckResult:
    """``b_offsets(expert, n, k, strides, inter)``: the element offsets, from the start of w13's storage, of
    w13[expert, n, k] (gate) and of its up partner w13[expert, I + n, k], for w13 of shape (E, 2I, H) with
    ``strides = (stride_be, stride_bn, stride_bk)`` and ``inter`` = I — the kernel's pointer arithmetic."""
    contiguous = torch.empty(8, 2 * 6, 4).stride()  # (E=8, 2I=12, H=4)
    transposed = torch.empty(8, 4, 12).transpose(1, 2).stride()  # same shape, other memory order
    mixtral = (2 * 14336 * 4096, 4096, 1)
    cases = [
        _Case("contiguous w13 (8, 12, 4), expert 1, n = 2, k = 1", (1, 2, 1, contiguous, 6)),
        _Case("contiguous, first element of expert 3", (3, 0, 0, contiguous, 6)),
        _Case("w13 stored transposed (8, 12, 4) with strides (48, 1, 12)", (2, 5, 3, transposed, 6)),
        _Case("Mixtral's w13 (8, 28672, 4096), expert 7", (7, 14335, 4095, mixtral, 14336)),
        _Case("expert 0, n = 0, k = 0", (0, 0, 0, contiguous, 6)),
    ]
    return _check(
        "B offsets", b_offsets, arg_names=("expert", "n", "k", "strides", "inter"), cases=cases,
        reference=_b_offsets_ref, compare=_compare_int_tuple,
        mistakes=[
            _Mistake(lambda e, n, k, s, i: (n * s[1] + k * s[2], n * s[1] + k * s[2] + i * s[1]), "the expert's "
                     "offset is missing: add expert * stride_be"),
            _Mistake(lambda e, n, k, s, i: _b_offsets_ref(e, n, k, s, i)[:1] * 2, "the up row is I rows further "
                     "down: add inter * stride_bn"),
            _Mistake(lambda e, n, k, s, i: (e * s[0] + n * s[1] + k * s[2], e * s[0] + n * s[1] + k * s[2] + i),
                     "I rows further down is inter * stride_bn elements, not inter elements"),
            _Mistake(lambda e, n, k, s, i: (e * s[0] + n * s[2] + k * s[1], e * s[0] + n * s[2] + k * s[1] + i * s[2]),
                     "the row n goes with stride_bn and the column k with stride_bk"),
            _Mistake(lambda e, n, k, s, i: (e * s[0] + n * s[1] + k * s[2],
                                            e * s[0] + (i + n) * s[1] + k * s[2] + s[0]),
                     "the up half lives in the same expert: only the row moves (by inter * stride_bn)"),
        ],
        hint="offset(e, n, k) = e * stride_be + n * stride_bn + k * stride_bk; the up row adds inter * stride_bn",
        summary="contiguous and transposed storage, Mixtral's size",
    )


# ----------------------------------------------------------------------------------------------------
# Notebook 06: performance
# ----------------------------------------------------------------------------------------------------
def _decode_floor_ref(hidden: int, inter: int, top_k: int, tp: int, bandwidth_tbps: float) -> float:
    weight_bytes = top_k * 3 * hidden * (inter // tp) * 2  # w1, w3, w2 of each chosen expert, bf16
    return weight_bytes / (bandwidth_tbps * 1e12) * 1e6


def check_decode_floor(decode_floor_us) -> CheckResult:
    """``decode_floor_us(hidden, inter, top_k, tp, bandwidth_tbps)``: the weight-bandwidth floor in µs of one
    token (M = 1) on one rank — its top_k experts' bf16 w1, w3 and w2 slices (I/tp wide), read once at
    ``bandwidth_tbps`` TB/s."""
    cases = [
        _Case("Mixtral, TP = 1, 2.98 TB/s", (4096, 14336, 2, 1, 2.98)),
        _Case("Mixtral, TP = 8, 2.98 TB/s", (4096, 14336, 2, 8, 2.98)),
        _Case("Mixtral, TP = 2 on an H200 (4.8 TB/s)", (4096, 14336, 2, 2, 4.8)),
        _Case("top-1, TP = 4", (1024, 4096, 1, 4, 3.35)),
        _Case("a tiny layer: H = 64, I = 128, top-2", (64, 128, 2, 1, 1.0)),
    ]
    return _check(
        "decode floor", decode_floor_us, arg_names=("hidden", "inter", "top_k", "tp", "bandwidth_tbps"),
        cases=cases, reference=_decode_floor_ref,
        compare=lambda got, exp: _compare_number(got, exp, tol=1e-3),
        mistakes=[
            _Mistake(lambda h, i, k, tp, bw: k * 3 * h * i * 2 / (bw * 1e12) * 1e6,
                     "each rank holds only I/tp of every expert: divide the intermediate size by tp"),
            _Mistake(lambda h, i, k, tp, bw: k * 2 * h * (i // tp) * 2 / (bw * 1e12) * 1e6,
                     "an expert has three matrices: w1 and w3 (in w13) and w2, each H x I/tp"),
            _Mistake(lambda h, i, k, tp, bw: k * 3 * h * (i // tp) / (bw * 1e12) * 1e6,
                     "bf16 takes 2 bytes per weight: count bytes, not parameters"),
            _Mistake(lambda h, i, k, tp, bw: 8 * 3 * h * (i // tp) * 2 / (bw * 1e12) * 1e6,
                     "one token reads only its top_k experts, not all of them"),
            _Mistake(lambda h, i, k, tp, bw: k * 3 * h * (i // tp) * 2 / (bw * 1e9) * 1e6,
                     "1 TB/s is 1e12 bytes per second"),
        ],
        hint="top_k * 3 * hidden * (inter / tp) * 2 bytes, divided by bandwidth_tbps * 1e12 bytes/s, times 1e6",
        summary="TP = 1 to 8, top-1 and top-2, two bandwidths",
    )


# ----------------------------------------------------------------------------------------------------
# Notebook 07: tensor parallel
# ----------------------------------------------------------------------------------------------------
def _shard_w13_ref(w13, tp_size, rank):
    from ...parallel.shard import shard_w13

    return shard_w13(w13, tp_size, rank)


def _shard_w2_ref(w2, tp_size, rank):
    from ...parallel.shard import shard_w2

    return shard_w2(w2, tp_size, rank)


def _labelled(e: int, rows: int, cols: int) -> torch.Tensor:
    """Weights whose every entry is distinct (so any wrong slice shows), fp32."""
    return torch.arange(e * rows * cols, dtype=torch.float32).reshape(e, rows, cols)


def check_shard_w13(shard_w13) -> CheckResult:
    """``shard_w13(w13, tp_size, rank)``: rank ``rank``'s slice of w13 (E, 2I, H) under tensor parallelism —
    (E, 2I/tp, H) = [rows of w1 for the rank; rows of w3 for the rank], each half cut along I separately."""
    cases = [
        _Case("E = 1, I = 4, H = 2, tp = 2, rank 0", (_labelled(1, 8, 2), 2, 0)),
        _Case("E = 1, I = 4, H = 2, tp = 2, rank 1", (_labelled(1, 8, 2), 2, 1)),
        _Case("E = 2, I = 6, H = 3, tp = 3, rank 1", (_labelled(2, 12, 3), 3, 1)),
        _Case("tp = 1 (the whole w13)", (_labelled(2, 8, 4), 1, 0)),
        _Case("E = 4, I = 8, H = 4, tp = 4, rank 3", (_labelled(4, 16, 4), 4, 3)),
        _Case("H = I: E = 3, I = 4, H = 4, tp = 2, rank 1", (_labelled(3, 8, 4), 2, 1)),
    ]

    def chunk_rows(w, tp, r):
        return w.chunk(tp, dim=1)[r]

    def only_w1(w, tp, r):
        i = w.shape[1] // 2
        p = i // tp
        return w[:, r * 2 * p:(r + 1) * 2 * p] if (r + 1) * 2 * p <= i else w[:, :2 * p]

    def cut_h(w, tp, r):
        return torch.cat([w[:, : w.shape[1] // 2], w[:, w.shape[1] // 2:]], 1).chunk(tp, dim=2)[r]

    def up_first(w, tp, r):
        i = w.shape[1] // 2
        p = i // tp
        return torch.cat([w[:, i + r * p:i + (r + 1) * p], w[:, r * p:(r + 1) * p]], dim=1)

    def interleaved(w, tp, r):
        return w[:, r::tp]

    return _check(
        "shard w13", shard_w13, arg_names=("w13", "tp_size", "rank"), cases=cases,
        reference=_shard_w13_ref, compare=_compare_exact,
        mistakes=[
            _Mistake(chunk_rows, "w13 was cut as one block of 2I rows, so rank 0 got w1 rows only and the last rank "
                     "w3 rows only; cut w1 = w13[:, :I] and w3 = w13[:, I:] separately and stack the rank's parts"),
            _Mistake(only_w1, "the rank's slice needs its rows of w1 AND its rows of w3 (SiLU-and-mul pairs "
                     "gate row n with up row n, so both must live on the same rank)"),
            _Mistake(cut_h, "w13 is cut along its output rows (I), not along H: every rank sees the whole token"),
            _Mistake(up_first, "the order is [w1 part; w3 part]: the gate rows come first, as in the full w13"),
            _Mistake(interleaved, "a rank holds a contiguous range of I/tp rows of each half, not every tp-th row"),
        ],
        hint="I = w13.shape[1] // 2; p = I // tp_size; torch.cat([w13[:, rank*p:(rank+1)*p], "
             "w13[:, I + rank*p:I + (rank+1)*p]], dim=1)",
        summary="tp = 1 to 4, every rank position",
    )


def check_shard_w2(shard_w2) -> CheckResult:
    """``shard_w2(w2, tp_size, rank)``: rank ``rank``'s slice of w2 (E, H, I) — (E, H, I/tp), the rank's
    columns of the reduction dimension I (row-parallel)."""
    cases = [
        _Case("E = 1, H = 2, I = 4, tp = 2, rank 1", (_labelled(1, 2, 4), 2, 1)),
        _Case("E = 2, H = 3, I = 6, tp = 3, rank 2", (_labelled(2, 3, 6), 3, 2)),
        _Case("tp = 1", (_labelled(2, 4, 8), 1, 0)),
        _Case("H = I: E = 2, H = I = 4, tp = 2, rank 0", (_labelled(2, 4, 4), 2, 0)),
        _Case("E = 4, H = 4, I = 8, tp = 4, rank 3", (_labelled(4, 4, 8), 4, 3)),
    ]
    return _check(
        "shard w2", shard_w2, arg_names=("w2", "tp_size", "rank"), cases=cases,
        reference=_shard_w2_ref, compare=_compare_exact,
        mistakes=[
            _Mistake(lambda w, tp, r: w.chunk(tp, dim=1)[r], "w2 was cut along H (its output); it is row-parallel: "
                     "cut its input dimension I (dim 2), so each rank's product is a partial sum"),
            _Mistake(lambda w, tp, r: w[:, :, r::tp], "a rank holds a contiguous range of I/tp columns, matching "
                     "its slice of w1 and w3, not every tp-th column"),
            _Mistake(lambda w, tp, r: w.chunk(tp, dim=2)[tp - 1 - r], "rank r holds columns [r * I/tp, (r+1) * I/tp)"),
        ],
        hint="p = w2.shape[2] // tp_size; w2[:, :, rank*p:(rank+1)*p]",
        summary="tp = 1 to 4",
    )


__all__ = [
    "CheckResult",
    "check_gate_logits",
    "check_logit_std",
    "check_renormalize",
    "check_topk_ids",
    "check_silu_and_mul",
    "check_moe_forward",
    "check_expert_slots",
    "check_padded_total",
    "check_tile_a_rows",
    "check_b_offsets",
    "check_decode_floor",
    "check_shard_w13",
    "check_shard_w2",
]
