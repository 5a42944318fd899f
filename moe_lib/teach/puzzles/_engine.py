"""The machinery every kernel puzzle shares: run the learner's ``@triton.jit`` kernel on a list of cases with
the launch the puzzle defines, and on the first case that goes wrong say what went wrong, where, written by
which program, and which typical mistake gives the same picture.

**Guards.** Every tensor of a case lives inside a larger buffer: ``GUARD`` poisoned elements before and after
it and, where a puzzle passes a row stride to the kernel, poisoned gaps between its rows (``KernelCase.pads``).
Outputs start fully poisoned (NaN with a payload of our own for floats, ``OUT_INT_POISON`` for ints), so an
element no program wrote still holds the poison; inputs are surrounded by a different poison, so a read past an
input shows up as NaN in the output. The buffers of a case share one arena, at fixed offsets with room between
them: where a wrong pointer lands never depends on the allocator, so the same kernel always gets the same
verdict.

**Write map.** In the Triton interpreter the checker watches every load and store the kernel makes (it wraps
the interpreter's memory operations for the length of one launch): which program wrote which element, which
stores landed in a guard or a gap, which loads read past an input. An access outside every buffer of the case
is refused (a store is dropped, a load returns ``other``) and reported, so a wrong pointer cannot corrupt the
notebook's memory. On a GPU the kernel runs compiled and only the poisoned buffers are inspected.

**Time limit.** Each case runs under a time limit: SIGALRM in the main thread (Jupyter and pytest run cells and
tests there); in another thread, a deadline checked at each program, load and store and at every line of the
kernel. A kernel that raises, calls ``sys.exit`` or runs out of time gets a failed verdict, never a traceback.

A puzzle module only writes its cases (:class:`KernelCase`), its launch, its typical mistakes
(:class:`ValueMistake`) and references from the library, and hands them to :func:`check_kernel`.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from ... import runtime
from ...testing import TOLERANCE
from ..exercises._engine import FAILED, PASSED, UNSOLVED, CheckResult, fmt

#: Poisoned elements before and after every tensor of a case.
GUARD = 64
#: Seconds one case may run before the checker stops the kernel.
TIME_LIMIT = 20.0
#: What an int output holds before the kernel writes it; int inputs' guards hold INPUT_INT_POISON.
OUT_INT_POISON, INPUT_INT_POISON = -123456789, -7
#: NaN bit patterns with payloads of our own: output poison, input poison (quiet NaNs, never computed).
_NAN_BITS = {
    torch.float32: (0x7FC0BAD0, 0x7FC0DEAD, torch.int32),
    torch.float16: (0x7E0B, 0x7E0D, torch.int16),
    torch.bfloat16: (0x7FCB, 0x7FCD, torch.int16),
    torch.float8_e4m3fn: (0xFF, 0x7F, torch.int8),  # e4m3fn has two NaNs, S.1111.111: one each
}

# Where a buffer element sits (the ``where`` map of a placed tensor): a flat index into the tensor, or one of these.
_GUARD_BEFORE, _GAP, _GUARD_AFTER = -1, -2, -3
# Where a refused load went, relative to the tensor that sits just before it in the case's arena.
_FAR_AFTER, _FAR_BEFORE = -4, -5


# ----------------------------------------------------------------------------------------------------
# What a puzzle module writes
# ----------------------------------------------------------------------------------------------------
@dataclass
class KernelCase:
    """One launch of the learner's kernel.

    ``inputs``: named input tensors; ``expected``: the reference value of each named output (its shape and
    dtype are the output's). ``scalars``: the sizes and other plain values the launch uses (shown on failure).
    ``pads``: per tensor, extra poisoned elements after each dimension (``(0, 3)``: a gap of 3 elements after
    every row, so the row stride is cols + 3). ``writes``: per output, a bool mask of the elements the kernel
    must write (default all); the others must stay untouched.
    """

    label: str
    inputs: dict[str, torch.Tensor]
    expected: dict[str, torch.Tensor]
    scalars: dict[str, object] = field(default_factory=dict)
    pads: dict[str, tuple[int, ...]] = field(default_factory=dict)
    writes: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def low_precision(self) -> bool:
        """A bf16/fp16 case (where a reduction that is not in fp32 goes wrong)."""
        tensors = list(self.inputs.values()) + list(self.expected.values())
        return any(t.dtype in (torch.bfloat16, torch.float16) for t in tensors)


@dataclass
class ValueMistake:
    """A typical wrong kernel, simulated in torch: ``fn(case)`` returns the outputs it would write (a dict by
    output name, or one tensor for the first output); when the learner's outputs equal them, ``why`` is the
    likely mistake."""

    fn: Callable
    why: str


@dataclass
class Puzzle:
    """Everything :func:`check_kernel` needs to know about one puzzle.

    ``launch(t)`` returns ``(grid, args, constexprs)``: ``t`` holds the case's placed tensors by name (views
    into the guarded buffers, with their strides) and its scalars. ``read_hints``: per input, the likely
    mistake when a load reads past it; ``write_hints``: per output, the likely mistake when a store lands past
    its end. ``diagnose(case, got)``: a puzzle's own look at wrong values (a string, or None).
    """

    name: str
    kernel_name: str
    cases: Sequence[KernelCase]
    launch: Callable[[SimpleNamespace], tuple]
    mistakes: Sequence[ValueMistake] = ()
    hint: str = ""
    summary: str = ""
    read_hints: Mapping[str, str] = field(default_factory=dict)
    write_hints: Mapping[str, str] = field(default_factory=dict)
    diagnose: Callable | None = None
    time_limit: float = TIME_LIMIT


@dataclass(frozen=True, repr=False, eq=False)
class PuzzleResult(CheckResult):
    """A :class:`CheckResult` that, for a failure, also holds the write map of the failing case:
    ``result.figure`` draws it, and a notebook shows it under the message."""

    write_map: WriteMap | None = None

    @property
    def figure(self):
        """The write map of the failing case as a figure (None when there is none: a pass, a stub, an error)."""
        return None if self.write_map is None else self.write_map.figure()

    def _ipython_display_(self) -> None:  # Jupyter: the message, then the picture (a PNG, whatever the backend)
        from IPython.display import Image, display

        print(self.message)
        if self.write_map is not None:
            png = io.BytesIO()
            self.figure.savefig(png, format="png", dpi=90, bbox_inches="tight")
            display(Image(data=png.getvalue(), format="png"))


# ----------------------------------------------------------------------------------------------------
# Guarded buffers
# ----------------------------------------------------------------------------------------------------
def _poison(dtype: torch.dtype, *, output: bool) -> torch.Tensor:
    """A one-element tensor holding the poison of ``dtype``."""
    if dtype in _NAN_BITS:
        out_bits, in_bits, int_type = _NAN_BITS[dtype]
        bits = out_bits if output else in_bits
        if bits >= 2 ** (8 * torch.empty(0, dtype=int_type).element_size() - 1):
            bits -= 2 ** (8 * torch.empty(0, dtype=int_type).element_size())
        return torch.tensor([bits], dtype=int_type).view(dtype)
    if dtype in (torch.int32, torch.int64):
        return torch.tensor([OUT_INT_POISON if output else INPUT_INT_POISON], dtype=dtype)
    raise TypeError(f"puzzle tensors must be float32, float16, bfloat16, float8_e4m3fn, int32 or int64, got {dtype}")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: a and b hold the same bits (NaN payloads included)."""
    if a.dtype in _NAN_BITS:
        int_type = _NAN_BITS[a.dtype][2]
        return a.view(int_type) == b.view(int_type)
    return a == b


@dataclass
class _Placed:
    """One tensor of a case inside its guarded buffer."""

    name: str
    output: bool
    buf: torch.Tensor  # (size,) the whole allocation
    view: torch.Tensor  # the tensor the kernel sees: a strided view into buf
    where: np.ndarray  # (size,) int64: flat index into the tensor, or _GUARD_BEFORE / _GAP / _GUARD_AFTER
    padded_shape: tuple[int, ...]
    # the kernel's accesses (interpreter only)
    count: np.ndarray = None  # (size,) stores per element
    writer: np.ndarray = None  # (size,) the program that stored last, -1 none
    bad_reads: int = 0  # loads of a guard or gap element
    bad_read_program: int = -1
    bad_read_kinds: set = field(default_factory=set)  # _GUARD_BEFORE, _GAP, _GUARD_AFTER
    stores: list = field(default_factory=list)  # (program, element indices) of every store

    def __post_init__(self):
        self.count = np.zeros(self.buf.numel(), dtype=np.int64)
        self.writer = np.full(self.buf.numel(), -1, dtype=np.int64)

    @property
    def base(self) -> int:
        return self.buf.data_ptr()

    @property
    def itemsize(self) -> int:
        return self.buf.element_size()


def _padded_shape(name: str, shape: tuple[int, ...], pad: tuple[int, ...]) -> tuple[int, ...]:
    pad = tuple(pad) + (0,) * (len(shape) - len(pad))
    if len(pad) != len(shape) or any(p < 0 for p in pad):
        raise ValueError(f"pads[{name!r}] = {pad} does not fit a tensor of shape {shape}")
    return tuple(s + p for s, p in zip(shape, pad, strict=True))


def _place(name: str, value: torch.Tensor, pad: tuple[int, ...], *, output: bool, memory: torch.Tensor) -> _Placed:
    """``value`` (for an output: its shape and dtype) inside a buffer of guards and gaps, all poisoned; the
    buffer is ``memory`` (bytes) viewed as value's dtype."""
    shape = tuple(value.shape)
    padded_shape = _padded_shape(name, shape, pad)
    inner = math.prod(padded_shape)
    buf = memory.view(value.dtype)
    buf.copy_(_poison(value.dtype, output=output).expand_as(buf))
    region = buf[GUARD:GUARD + inner].view(padded_shape) if shape else buf[GUARD:GUARD + 1].view(())
    view = region[tuple(slice(0, s) for s in shape)]
    if not output:
        view.copy_(value.to(buf.device))
    where = torch.full((buf.numel(),), _GAP, dtype=torch.int64)
    where[:GUARD] = _GUARD_BEFORE
    where[GUARD + inner:] = _GUARD_AFTER
    where_region = where[GUARD:GUARD + inner].view(padded_shape) if shape else where[GUARD:GUARD + 1].view(())
    where_region[tuple(slice(0, s) for s in shape)] = torch.arange(math.prod(shape)).view(shape)
    return _Placed(name, output, buf, view, where.numpy(), padded_shape)


#: Bytes between two buffers of a case's arena (owned by no tensor: an access there is refused) and alignment.
_SPACING, _ALIGN = 16384, 128


def _place_all(case: KernelCase, device) -> dict[str, _Placed]:
    """Every tensor of the case in one arena, in a fixed order at fixed offsets: where a wrong pointer lands
    (another tensor, a guard, the space between) is the same in every run, whatever the allocator does."""
    tensors = [(name, t, False) for name, t in case.inputs.items()] + \
              [(name, t, True) for name, t in case.expected.items()]
    offsets, end = [], _SPACING
    for name, t, _ in tensors:
        nbytes = (GUARD + math.prod(_padded_shape(name, tuple(t.shape), case.pads.get(name, ()))) + GUARD) \
            * t.element_size()
        offsets.append((end, nbytes))
        end = -(-(end + nbytes + _SPACING) // _ALIGN) * _ALIGN
    arena = torch.full((end + _ALIGN,), 0xFF, dtype=torch.uint8, device=device)  # 0xFF..: NaN, or -1
    base = -arena.data_ptr() % _ALIGN  # align the arena's first byte
    return {name: _place(name, t, case.pads.get(name, ()), output=output,
                         memory=arena[base + start:base + start + nbytes])
            for (name, t, output), (start, nbytes) in zip(tensors, offsets, strict=True)}


# ----------------------------------------------------------------------------------------------------
# The time limit
# ----------------------------------------------------------------------------------------------------
class _OutOfTime(BaseException):
    """Raised inside the kernel when its case runs out of time (a BaseException, so that no ``except
    Exception`` in the interpreter or in the kernel swallows it)."""


class _Deadline:
    """A case's time limit: SIGALRM in the main thread, else checks at the interpreter's memory operations and
    at every line of the kernel (``check``)."""

    def __init__(self, seconds: float, kernel_name: str):
        self.seconds = seconds
        self.kernel_name = kernel_name
        self.end = 0.0

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise _OutOfTime

    def _trace(self, frame, event, arg):  # the fallback outside the main thread
        self.check()
        if frame.f_code.co_name == self.kernel_name:
            return self._trace_lines
        return None

    def _trace_lines(self, frame, event, arg):
        self.check()
        return self._trace_lines

    @contextlib.contextmanager
    def running(self):
        self.end = time.monotonic() + self.seconds
        use_signal = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        if use_signal:
            def on_alarm(signum, frame):
                raise _OutOfTime

            previous = signal.signal(signal.SIGALRM, on_alarm)
            started = time.monotonic()
            outer, _ = signal.setitimer(signal.ITIMER_REAL, self.seconds)
            try:
                yield
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                if outer > 0:  # somebody else's alarm (pytest-timeout, say) was running: give it back
                    signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))
        else:
            previous = sys.gettrace()
            sys.settrace(self._trace)
            try:
                yield
            finally:
                sys.settrace(previous)


# ----------------------------------------------------------------------------------------------------
# Watching the interpreter's memory operations
# ----------------------------------------------------------------------------------------------------
class _Watch:
    """For the length of one launch, wraps the Triton interpreter's loads and stores: every access is looked
    up in the case's buffers and recorded with the program that made it; an access outside all of them is
    refused and counted."""

    def __init__(self, placed: Sequence[_Placed], deadline: _Deadline):
        self.placed = sorted(placed, key=lambda p: p.base)
        self.bases = np.array([p.base for p in self.placed], dtype=np.uint64)
        self.ends = np.array([p.base + p.buf.numel() * p.itemsize for p in self.placed], dtype=np.uint64)
        self.deadline = deadline
        self.grid = (1, 1, 1)
        self.wild_reads = 0
        self.wild_read_program = -1
        self.wild_writes = 0
        self.wild_write_program = -1
        self.input_writes: dict[str, int] = {}

    # -- the program being run ---------------------------------------------------------------------
    def program(self, builder) -> int:
        x, y, z = builder.grid_idx
        _, ny, nz = builder.grid_dim
        return (x * ny + y) * nz + z

    def program_names(self) -> list[str]:
        nx, ny, nz = self.grid
        names = []
        for x in range(nx):
            for y in range(ny):
                for z in range(nz):
                    idx = (x, y, z)[: 3 if nz > 1 else 2 if ny > 1 else 1]
                    names.append(str(x) if len(idx) == 1 else "(" + ", ".join(map(str, idx)) + ")")
        return names

    def _far_reads(self, addresses: np.ndarray, program: int) -> None:
        """Refused loads: inside the case's arena they are charged to the tensor just before them (an overrun:
        far past its end) or, before the first tensor, to that one; outside the arena they are wild."""
        lo, hi = self.bases[0] - np.uint64(_SPACING), self.ends[-1] + np.uint64(_SPACING)
        inside = (addresses >= lo) & (addresses < hi)
        below = np.searchsorted(self.bases, addresses[inside], side="right").astype(np.int64) - 1
        for s in np.unique(below):
            placed = self.placed[max(int(s), 0)]
            placed.bad_reads += int((below == s).sum())
            placed.bad_read_kinds.add(_FAR_AFTER if s >= 0 else _FAR_BEFORE)
            if placed.bad_read_program < 0:
                placed.bad_read_program = program
        if (~inside).any():
            self.wild_reads += int((~inside).sum())
            if self.wild_read_program < 0:
                self.wild_read_program = program

    # -- looking addresses up ----------------------------------------------------------------------
    def _lookup(self, addresses: np.ndarray) -> np.ndarray:
        """The index into ``self.placed`` of the buffer holding each address, -1 for none."""
        slot = np.searchsorted(self.bases, addresses, side="right").astype(np.int64) - 1
        inside = slot >= 0
        inside[inside] &= addresses[inside] < self.ends[slot[inside]]
        return np.where(inside, slot, -1)

    def access(self, builder, ptrs: np.ndarray, mask: np.ndarray, *, store: bool) -> np.ndarray:
        """Record the active lanes' accesses; return the mask with the lanes outside every buffer turned off."""
        self.deadline.check()
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), ptrs.shape)
        addresses = np.asarray(ptrs).astype(np.uint64)
        active = mask.copy()
        flat_active = active.reshape(-1)
        flat_addr = addresses.reshape(-1)[flat_active]
        if flat_addr.size == 0:
            return mask
        slots = self._lookup(flat_addr)
        program = self.program(builder)
        wild = slots < 0
        if wild.any():
            if store:
                self.wild_writes += int(wild.sum())
                if self.wild_write_program < 0:
                    self.wild_write_program = program
            else:
                self._far_reads(flat_addr[wild], program)
            lanes = np.nonzero(flat_active)[0]
            flat_active[lanes[wild]] = False
        for s in np.unique(slots[~wild]):
            placed = self.placed[s]
            idx = ((flat_addr[slots == s] - np.uint64(placed.base)) // np.uint64(placed.itemsize)).astype(np.int64)
            if store:
                if not placed.output:
                    self.input_writes[placed.name] = self.input_writes.get(placed.name, 0) + idx.size
                np.add.at(placed.count, idx, 1)
                placed.writer[idx] = program
                placed.stores.append((program, idx))
            elif not placed.output:
                outside = placed.where[idx] < 0
                if outside.any():
                    placed.bad_reads += int(outside.sum())
                    placed.bad_read_kinds.update(int(k) for k in np.unique(placed.where[idx][outside]))
                    if placed.bad_read_program < 0:
                        placed.bad_read_program = program
        return active

    @contextlib.contextmanager
    def installed(self):
        """Wrap the interpreter builder's memory operations (and its program switch) for one launch."""
        from triton.runtime import interpreter

        builder = interpreter.interpreter_builder
        handle = interpreter.TensorHandle
        load, store = builder.create_masked_load, builder.create_masked_store
        rmw, set_idx, set_dim = builder.create_atomic_rmw, builder.set_grid_idx, builder.set_grid_dim

        def masked_load(ptrs, mask, other, cache_policy, is_volatile):
            keep = self.access(builder, ptrs.data, mask.data, store=False)
            return load(ptrs, handle(keep, mask.dtype), other, cache_policy, is_volatile)

        def masked_store(ptrs, value, mask, cache_policy):
            keep = self.access(builder, ptrs.data, mask.data, store=True)
            return store(ptrs, value, handle(keep, mask.dtype), cache_policy)

        def atomic_rmw(op, ptr, val, mask, sem, scope):
            keep = self.access(builder, ptr.data, mask.data, store=True)
            return rmw(op, ptr, val, handle(keep, mask.dtype), sem, scope)

        def set_grid_idx(x, y, z):
            self.deadline.check()
            return set_idx(x, y, z)

        def set_grid_dim(nx, ny, nz):
            self.grid = (nx, ny, nz)
            return set_dim(nx, ny, nz)

        patches = {"create_masked_load": masked_load, "create_masked_store": masked_store,
                   "create_atomic_rmw": atomic_rmw, "set_grid_idx": set_grid_idx, "set_grid_dim": set_grid_dim}
        for name, fn in patches.items():
            setattr(builder, name, fn)
        try:
            yield self
        finally:
            for name in patches:
                with contextlib.suppress(AttributeError):
                    delattr(builder, name)


# ----------------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What one launch did."""

    placed: dict[str, _Placed]
    watch: _Watch | None
    grid: tuple
    error: BaseException | None = None
    timed_out: bool = False
    exited: bool = False  # the kernel called sys.exit (exit_code: its argument)
    exit_code: object = None


def _is_kernel(kernel) -> bool:
    """A ``@triton.jit`` function (compiled, or interpreted)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return isinstance(kernel, (JITFunction, InterpretedFunction))


def _device():
    return torch.device("cpu") if runtime.INTERPRET else runtime.default_device()


def _run_case(puzzle: Puzzle, kernel, case: KernelCase, time_limit: float) -> _Run:
    device = _device()
    placed = _place_all(case, device)
    views = {name: p.view for name, p in placed.items()}
    grid, args, constexprs = puzzle.launch(SimpleNamespace(**views, **case.scalars))
    deadline = _Deadline(time_limit, getattr(kernel, "__name__", puzzle.kernel_name))
    watch = _Watch(list(placed.values()), deadline) if runtime.INTERPRET else None
    run = _Run(placed, watch, tuple(grid))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(runtime.quiet_interpreter())
            if watch is not None:
                stack.enter_context(watch.installed())
            stack.enter_context(deadline.running())
            kernel[grid](*args, **constexprs)
            if not runtime.INTERPRET:
                torch.cuda.synchronize(device)
    except _OutOfTime:
        run.timed_out = True
    except SystemExit as exc:
        run.exited, run.exit_code = True, exc.code
    except Exception as exc:  # the learner's kernel failed: report it, do not raise
        run.error = _cause(exc)
    return run


def _cause(exc: BaseException) -> BaseException:
    """The learner's exception behind Triton's wrappers (the interpreter's InterpreterError, the compiler's
    CompilationError, one per nested call)."""
    seen = 0
    while type(exc).__name__ in ("InterpreterError", "CompilationError") and exc.__cause__ is not None and seen < 20:
        exc, seen = exc.__cause__, seen + 1
    return exc


# ----------------------------------------------------------------------------------------------------
# What went wrong in one case
# ----------------------------------------------------------------------------------------------------
@dataclass
class _OutputReport:
    name: str
    written: torch.Tensor  # (numel,) bool: elements of the output that were written
    must: torch.Tensor  # (numel,) bool: elements the kernel must write
    wrong: torch.Tensor  # (numel,) bool: must-write elements, written, with a wrong value
    got: torch.Tensor  # the output as the kernel left it
    expected: torch.Tensor
    guard_before: int = 0
    guard_after: int = 0
    gap: int = 0
    twice: int = 0
    outside_programs: tuple[int, ...] = ()  # programs that wrote a guard or gap

    @property
    def unwritten(self) -> torch.Tensor:
        return self.must & ~self.written

    @property
    def forbidden(self) -> torch.Tensor:
        return ~self.must & self.written


def _close(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Elementwise: got is expected — exactly for ints; for floats within the dtype's tolerance, relative to the
    element or to the tensor's mean magnitude (sums of many terms near 0 carry absolute rounding error)."""
    if not expected.dtype.is_floating_point:
        return got.long() == expected.long()
    g, e = got.double(), expected.double()
    tol = TOLERANCE[expected.dtype]
    scale = e.abs() + (e[torch.isfinite(e)].abs().mean() if torch.isfinite(e).any() else 0.0)
    both_nan = torch.isnan(g) & torch.isnan(e)
    same_inf = torch.isinf(e) & (g == e)
    return both_nan | same_inf | ((g - e).abs() <= tol * scale)


def _report_output(p: _Placed, expected: torch.Tensor, must: torch.Tensor | None) -> _OutputReport:
    got = p.view.detach().cpu()
    buf = p.buf.detach().cpu()
    poison = _poison(buf.dtype, output=True).expand_as(buf)
    if p.count is not None and runtime.INTERPRET:
        touched = p.count > 0
    else:  # compiled: a write is a change of the poison
        touched = (~_same_bits(buf, poison)).numpy()
    where = p.where
    n = expected.numel()
    written = torch.zeros(n, dtype=torch.bool)
    inside = where >= 0
    written[torch.from_numpy(where[inside & touched])] = True
    must = torch.ones(n, dtype=torch.bool) if must is None else must.flatten().cpu().bool()
    wrong = must & written & ~_close(got.flatten(), expected.flatten().cpu())
    outside = touched & ~inside
    programs = tuple(sorted({int(w) for w in p.writer[outside] if w >= 0}))
    twice = int(((p.count > 1) & inside).sum()) if runtime.INTERPRET else 0
    return _OutputReport(p.name, written, must, wrong, got, expected.cpu(),
                         guard_before=int((touched & (where == _GUARD_BEFORE)).sum()),
                         guard_after=int((touched & (where == _GUARD_AFTER)).sum()),
                         gap=int((touched & (where == _GAP)).sum()), twice=twice, outside_programs=programs)


def _failed(report: _OutputReport) -> bool:
    return bool(report.guard_before or report.guard_after or report.gap or report.forbidden.any()
                or report.unwritten.any() or report.wrong.any())


# ----------------------------------------------------------------------------------------------------
# Diagnosis: the likely mistake from the pattern
# ----------------------------------------------------------------------------------------------------
def _blocks(p: _Placed) -> list[set[int]]:
    """The elements of the output each program wrote, for the programs that wrote any (interpreter only)."""
    per: dict[int, set[int]] = {}
    for program, idx in p.stores:
        inside = p.where[idx]
        per.setdefault(program, set()).update(int(i) for i in inside[inside >= 0])
    return [per[k] for k in sorted(per)]


def _memory_diagnosis(puzzle: Puzzle, run: _Run, reports: list[_OutputReport]) -> str | None:
    """The likely mistake behind writes outside the outputs, reads past the inputs, or missing elements."""
    watch = run.watch
    for report in reports:
        p = run.placed[report.name]
        if report.guard_after and report.unwritten.any() and bool(report.unwritten[0]):
            return ("every program's block is shifted by one: program 0 should start at element 0 — take the "
                    "block from tl.program_id(0) * BLOCK, not (tl.program_id(0) + 1) * BLOCK")
        if report.guard_after and report.name in puzzle.write_hints:
            return f"stores ran past the end of {report.name}: {puzzle.write_hints[report.name]}"
        if report.guard_after and report.expected.dim() == 2 and report.twice:
            return (f"a block's columns run past the end of a row of {report.name}, into the next row (and past "
                    f"the end of the last one): mask the columns as well as the rows, (cols < number of "
                    f"columns)[None, :]")
        if report.guard_after and report.expected.dim() == 2:
            return (f"the last block's rows run past the end of {report.name}: mask the rows, (rows < number of "
                    f"rows)[:, None] — loads with the same mask")
        if report.guard_after or report.guard_before:
            where = "past the end" if report.guard_after else "before the start"
            return (f"stores ran {where} of {report.name}: the last block is only partly inside the tensor, so "
                    f"store with a mask (offsets < size) — and load with the same mask")
        if report.gap:
            return (f"stores landed between the rows of {report.name}: mask the columns (col < number of "
                    f"columns), and step from row to row with the row stride the launch passes (stride_...), "
                    f"not with the number of columns")
        if report.twice and watch is not None:
            blocks = _blocks(p)
            if len(blocks) > 1 and all(b == blocks[0] for b in blocks):
                return ("every program wrote the same elements: use tl.program_id(0) to pick each program's "
                        "block (offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK))")
    for name, p in run.placed.items():
        if not p.output and p.bad_reads:
            hint = puzzle.read_hints.get(name, f"mask every load (offsets < size, other=...) and use the row "
                                               f"stride the launch passes for {name}")
            return (f"a load read {_read_where(p)} (program {_program_name(run, p.bad_read_program)}): {hint}")
    if watch is not None and watch.wild_reads:
        return ("a load read far outside every tensor of the case (refused): a pointer is wrong — check the "
                "strides and the row index each load uses" + _first_read_hint(puzzle))
    if watch is not None and watch.wild_writes:
        return "a store went far outside every tensor of the case (refused): check the pointer arithmetic of tl.store"
    if watch is not None and watch.input_writes:
        name = next(iter(watch.input_writes))
        return f"the kernel stored into the input {name}: store into the output instead"
    for report in reports:
        if report.forbidden.any():
            return f"the kernel wrote elements of {report.name} that are not its to write: mask the rows it owns"
        if report.unwritten.any():
            missing = torch.nonzero(report.unwritten).flatten()
            if report.twice and run.watch is not None:
                return ("some elements were written twice and others never: two programs (or two loop steps) "
                        "computed the same positions — check how each one's offsets depend on tl.program_id and "
                        "on the loop variable")
            if bool(report.unwritten[-1]) and not bool(report.unwritten[0]):
                return (f"the last elements of {report.name} are missing ({missing.numel()} never written): the "
                        "mask or the loop stops short — compare with < size, not < size - 1")
            return None
    return None


def _read_where(p: _Placed) -> str:
    """Where the bad loads of an input went: past its end, before its start, between its rows."""
    kinds, places = p.bad_read_kinds, []
    sides = ((_GUARD_AFTER, _FAR_AFTER, "past the end"), (_GUARD_BEFORE, _FAR_BEFORE, "before the start"))
    for near, far, where in sides:
        if near in kinds or far in kinds:
            places.append(f"{where} of {p.name}" + (" (some far from it: refused)" if far in kinds else ""))
    if _GAP in kinds:
        places.append(f"between the rows of {p.name} (the padding of its row stride)")
    return " and ".join(places)


def _first_read_hint(puzzle: Puzzle) -> str:
    return f" ({next(iter(puzzle.read_hints.values()))})" if puzzle.read_hints else ""


def _program_name(run: _Run, program: int) -> str:
    if run.watch is None or program < 0:
        return "?"
    names = run.watch.program_names()
    return names[program] if program < len(names) else str(program)


def _value_diagnosis(puzzle: Puzzle, case: KernelCase, reports: list[_OutputReport],
                     fp32_passed: bool) -> str | None:
    """The likely mistake behind wrong values."""
    got = {r.name: r.got for r in reports}
    for mistake in puzzle.mistakes:
        try:
            theirs = mistake.fn(case)
        except Exception:
            continue
        if isinstance(theirs, torch.Tensor):
            theirs = {reports[0].name: theirs}
        if all(name in got and got[name].shape == t.shape and bool(_close(got[name], t.to(got[name].dtype)).all())
               for name, t in theirs.items()):
            return mistake.why
    if puzzle.diagnose is not None:
        text = puzzle.diagnose(case, got)
        if text:
            return text
    if case.low_precision and fp32_passed:
        return ("the fp32 cases pass but this bf16 one does not: compute in fp32 — upcast right after the load "
                "(x = tl.load(...).to(tl.float32)), reduce and multiply in fp32, round once when storing. (The "
                "interpreter even computes bf16 arithmetic wrongly; on a GPU a bf16 sum loses precision.)")
    for report in reports:
        if report.got.dim() == 2 and report.wrong.any():
            rows_mixed = _rows_mixed(report)
            if rows_mixed:
                return rows_mixed
    return None


def _rows_mixed(report: _OutputReport) -> str | None:
    """A wrong row that equals another row of the expected output: the rows were mixed up."""
    rows = report.wrong.view(report.expected.shape).any(dim=1)
    expected = report.expected
    for i in torch.nonzero(rows).flatten().tolist():
        same = _close(report.got[i].expand_as(expected), expected).all(dim=1)
        same[i] = False
        if same.any():
            j = int(torch.nonzero(same)[0])
            return (f"row {i} of {report.name} holds what row {j} should: the rows are mixed up — a wrong row "
                    f"stride (use the stride the launch passes) or a wrong row index")
    return None


def _error_diagnosis(error: BaseException) -> str | None:
    text = str(error)
    if "but got bf16" in text or "but got fp16" in text:
        return ("tl.exp, tl.sigmoid and the like take fp32: upcast right after the load "
                "(x = tl.load(...).to(tl.float32)) and compute in fp32")
    if isinstance(error, TypeError) and "argument" in text:
        return ("keep the stub's signature: the check launches the kernel with exactly the arguments and "
                "constexprs shown in the comment under it")
    if ">= 16" in text and not runtime.INTERPRET:
        return ("compiled for a GPU, tl.dot needs blocks of at least 16 along K (and on some GPUs along M and N): "
                "check the puzzles in the interpreter (start Jupyter with TRITON_INTERPRET=1), or multiply with "
                "tl.sum(a[:, :, None] * b[None, :, :], axis=1)")
    if "arange" in text and "power of 2" in text:
        return "tl.arange needs a power-of-two length: use the BLOCK constexpr the launch passes, and mask"
    return None


# ----------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------
def _show(t: torch.Tensor, written: torch.Tensor) -> str:
    """fmt of a tensor; elements never written show as nan."""
    if bool(written.all()):
        return fmt(t)
    t = (t if t.dtype.is_floating_point else t.float()).clone()
    t[~written] = float("nan")
    return fmt(t) + "  (nan: never written)"


def _describe(case: KernelCase, grid) -> list[str]:
    lines = [f"  launch: grid {tuple(grid)}" + "".join(f", {k} = {v}" for k, v in case.scalars.items()
                                                     if isinstance(v, (int, float, bool)))]
    lines += [f"  input {name} = {fmt(t)}" for name, t in case.inputs.items()]
    return lines


def _elements(report: _OutputReport, mask: torch.Tensor, limit: int = 4) -> str:
    idx = torch.nonzero(mask).flatten()[:limit].tolist()
    shape = tuple(report.expected.shape)
    parts = []
    for i in idx:
        pos = np.unravel_index(i, shape) if len(shape) > 1 else (i,)
        where = f"[{', '.join(str(int(j)) for j in pos)}]"
        g, e = report.got.flatten()[i].item(), report.expected.flatten()[i].item()
        parts.append(f"{where}: expected {fmt(e)}, got {fmt(g)}")
    more = int(mask.sum()) - len(idx)
    return "; ".join(parts) + (f"; ... ({more} more)" if more > 0 else "")


def _problems(report: _OutputReport, run: _Run) -> list[str]:
    lines = []
    progs = ", ".join(_program_name(run, p) for p in report.outside_programs[:4])
    by = f" (by program {progs})" if progs else ""
    if report.guard_before:
        lines.append(f"  {report.name}: {report.guard_before} element(s) written before its start{by}")
    if report.guard_after:
        lines.append(f"  {report.name}: {report.guard_after} element(s) written past its end{by}")
    if report.gap:
        lines.append(f"  {report.name}: {report.gap} element(s) written between its rows{by}")
    if report.forbidden.any():
        lines.append(f"  {report.name}: {int(report.forbidden.sum())} element(s) written that must stay untouched")
    if report.unwritten.any():
        lines.append(f"  {report.name}: {int(report.unwritten.sum())} of {int(report.must.sum())} element(s) "
                     f"left unwritten, first: {_positions(report, report.unwritten)}")
    if report.twice:
        lines.append(f"  {report.name}: {report.twice} element(s) written more than once")
    if report.wrong.any():
        lines.append(f"  {report.name}: {int(report.wrong.sum())} wrong value(s): {_elements(report, report.wrong)}")
    return lines


def _positions(report: _OutputReport, mask: torch.Tensor, limit: int = 6) -> str:
    shape = tuple(report.expected.shape)
    idx = torch.nonzero(mask).flatten()[:limit].tolist()
    pos = [str([int(j) for j in np.unravel_index(i, shape)]) if len(shape) > 1 else str(i) for i in idx]
    return ", ".join(pos) + (", ..." if int(mask.sum()) > limit else "")


def _headline(reports: list[_OutputReport], run: _Run) -> str:
    if run.watch is not None and (run.watch.wild_writes or run.watch.input_writes):
        return "wrote outside the output"
    if any(r.guard_before or r.guard_after or r.gap or r.forbidden.any() for r in reports):
        return "wrote outside the output"
    if any(not p.output and p.bad_reads for p in run.placed.values()) or (run.watch and run.watch.wild_reads):
        return "read outside the input"
    if any(r.unwritten.any() for r in reports):
        return "left elements unwritten"
    return "wrong values"


# ----------------------------------------------------------------------------------------------------
# The write map (the picture)
# ----------------------------------------------------------------------------------------------------
def _panel(report: _OutputReport, p: _Placed):
    from ..viz.puzzles import CELL_GAP, CELL_GUARD, CELL_KEEP, CELL_NONE, CELL_OUTPUT, WritePanel

    where, writer, count = p.where, p.writer, p.count
    size = where.size
    if not runtime.INTERPRET:  # compiled: a write is a change of the poison; the program is unknown
        writer = np.where(where >= 0, np.where(report.written.numpy()[np.maximum(where, 0)], 0, -1), -1)
        count = (writer >= 0).astype(np.int64)
    region = np.where(where >= 0, CELL_OUTPUT, np.where(where == _GAP, CELL_GAP, CELL_GUARD))
    keep = where >= 0
    keep[keep] = ~report.must.numpy()[where[keep]]
    region[keep] = CELL_KEEP
    wrong = np.zeros(size, dtype=bool)
    wrong[where >= 0] = report.wrong.numpy()[where[where >= 0]]
    twice = count > 1
    written_outside = (where < 0) & (writer >= 0)
    # shown: the tensor, a few guard cells either side, and every guard cell that was written
    end = size - GUARD  # the first element of the guard after
    before = np.nonzero(written_outside[:GUARD])[0]
    after = np.nonzero(written_outside[end:])[0]
    show_before = max(4, GUARD - int(before.min()) if before.size else 0)
    show_after = max(4, int(after.max()) + 1 if after.size else 0)
    if len(p.padded_shape) == 2:  # whole rows of the padded width
        width = p.padded_shape[1]
        show_before = min(math.ceil(show_before / width), GUARD // width) * width
        show_after = min(math.ceil(show_after / width), GUARD // width) * width
    else:
        width = 16 if end - GUARD + show_before + show_after <= 80 else 32
    first, last = GUARD - show_before, end + show_after
    cells = last - first
    rows = math.ceil(cells / width)

    def grid(values: np.ndarray, fill) -> torch.Tensor:
        out = np.full(rows * width, fill, dtype=values.dtype)
        out[:cells] = values[first:last]
        return torch.from_numpy(out.reshape(rows, width))

    region_grid = grid(region, CELL_NONE)
    labels = []
    for r in range(rows):
        start = first + r * width
        if len(p.padded_shape) != 2:
            labels.append(str(start - GUARD))  # the index of the row's first cell (negative: the guard)
        elif GUARD <= start < end:
            labels.append(f"row {(start - GUARD) // width}")
        else:
            labels.append("guard")
    return WritePanel(name=f"{report.name} {tuple(report.expected.shape)}", writer=grid(writer, -1),
                      region=region_grid, wrong=grid(wrong, False), twice=grid(twice, False),
                      row_labels=tuple(labels))


@dataclass
class WriteMap:
    """The failing case's accesses, drawn on demand by :meth:`figure` (``PuzzleResult.figure``)."""

    reports: list[_OutputReport]
    run: _Run
    title: str

    def figure(self):
        from ..viz.puzzles import puzzle_write_map

        panels = [_panel(r, self.run.placed[r.name]) for r in self.reports]
        programs = (self.run.watch.program_names() if self.run.watch is not None
                    else ["? (compiled: programs unknown)"])
        return puzzle_write_map(panels, programs=programs, title=self.title)


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------
def check_kernel(puzzle: Puzzle, kernel, *, time_limit: float | None = None) -> PuzzleResult:
    """Run ``kernel`` on every case of ``puzzle``; the verdict on the first case that goes wrong, else a pass."""
    if not callable(kernel):
        raise TypeError(f"kernel must be the @triton.jit kernel you wrote for '{puzzle.name}', got "
                        f"{type(kernel).__name__}")
    name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", puzzle.kernel_name)
    if not _is_kernel(kernel):
        return PuzzleResult(puzzle.name, FAILED,
                            f"FAIL  {puzzle.name}: {name} is a plain Python function — put @triton.jit on the "
                            f"line above its def, then run the cell again", 0)
    limit = puzzle.time_limit if time_limit is None else time_limit
    for i, case in enumerate(puzzle.cases, start=1):
        where = f"FAIL  {puzzle.name}, case {i} of {len(puzzle.cases)} ({case.label})"
        run = _run_case(puzzle, kernel, case, limit)
        grid = run.grid
        if isinstance(run.error, NotImplementedError):
            return _unsolved(puzzle, name)
        if run.timed_out:
            lines = [f"{where}: out of time", f"  {name} ran longer than {limit:g} s on this case and was stopped",
                     *_describe(case, grid),
                     "  likely mistake: a loop that never ends, or one that runs far too long — check its bounds "
                     "(range(0, n, BLOCK) steps BLOCK at a time) and that the loop variable advances"]
            return PuzzleResult(puzzle.name, FAILED, "\n".join(lines), i)
        if run.exited or run.error is not None:
            what = (f"called sys.exit({'' if run.exit_code is None else repr(run.exit_code)})" if run.exited
                    else f"raised {type(run.error).__name__}: {_short(run.error)}")
            likely = ("a kernel must not call sys.exit() or exit(): it stops the notebook's Python — leave the "
                      "kernel by returning" if run.exited else _error_diagnosis(run.error) or puzzle.hint)
            lines = [f"{where}: the kernel failed", f"  {name} {what}", *_describe(case, grid),
                     f"  likely mistake: {likely}"]
            return PuzzleResult(puzzle.name, FAILED, "\n".join(lines), i)
        reports = [_report_output(run.placed[n], e, case.writes.get(n)) for n, e in case.expected.items()]
        nothing = not any(r.written.any() or r.guard_before or r.guard_after or r.gap for r in reports)
        if nothing and i == 1:
            return _unsolved(puzzle, name)
        bad_reads = any(not p.output and p.bad_reads for p in run.placed.values())
        wild = run.watch is not None and (run.watch.wild_reads or run.watch.wild_writes or run.watch.input_writes)
        if not (any(_failed(r) for r in reports) or bad_reads or wild):
            continue
        fp32_passed = any(not c.low_precision for c in puzzle.cases[: i - 1])  # (every earlier case passed)
        likely = (_memory_diagnosis(puzzle, run, reports)
                  or (_value_diagnosis(puzzle, case, reports, fp32_passed)
                      if not any(r.unwritten.any() for r in reports) else None)
                  or puzzle.hint)
        lines = [f"{where}: {_headline(reports, run)}", *_describe(case, grid)]
        for r in reports:
            lines += _problems(r, run)
        if run.watch is not None and run.watch.wild_reads:
            lines.append(f"  {run.watch.wild_reads} load(s) far outside every tensor were refused "
                         f"(first by program {_program_name(run, run.watch.wild_read_program)})")
        if run.watch is not None and run.watch.wild_writes:
            lines.append(f"  {run.watch.wild_writes} store(s) far outside every tensor were refused "
                         f"(first by program {_program_name(run, run.watch.wild_write_program)})")
        for p in run.placed.values():
            if not p.output and p.bad_reads:
                lines.append(f"  {p.bad_reads} load(s) {_read_where(p)} (first by program "
                             f"{_program_name(run, p.bad_read_program)})")
        for r in reports:
            if _failed(r):
                lines += [f"  expected {r.name}: {fmt(r.expected)}",
                          f"  got      {r.name}: {_show(r.got, _view_written(r))}"]
                break
        lines.append(f"  likely mistake: {likely}")
        if run.watch is not None:
            lines.append("  the picture below shows which program wrote each element (result.figure)")
        title = f"{puzzle.name}, case {i}: {case.label}"
        return PuzzleResult(puzzle.name, FAILED, "\n".join(lines), i, write_map=WriteMap(reports, run, title))
    return PuzzleResult(puzzle.name, PASSED, f"PASS  {puzzle.name}: {len(puzzle.cases)} cases agree "
                        f"({puzzle.summary})", len(puzzle.cases))


def _view_written(report: _OutputReport) -> torch.Tensor:
    return (report.written | ~report.must).view(report.expected.shape)


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _unsolved(puzzle: Puzzle, name: str) -> PuzzleResult:
    """A stub (a body of ``pass``: nothing written, or NotImplementedError): not a failure, the notebook runs on."""
    return PuzzleResult(
        puzzle.name, UNSOLVED,
        f"not solved yet: {puzzle.name} — write the body of {name} (replace `pass  # your code here`), then run "
        "this cell again",
    )


__all__ = ["KernelCase", "ValueMistake", "Puzzle", "PuzzleResult", "check_kernel", "GUARD", "TIME_LIMIT"]
