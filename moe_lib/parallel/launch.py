"""Start N ranks of torch.distributed on this machine, run a function on each, collect what they return.

    results = launch(fn, world_size=2, args=(x,), rank_args=[(shard0,), (shard1,)])

``fn(rank, world_size, *args, *rank_args[rank])`` runs in a fresh process per rank with the default
process group already initialized (gloo on the CPU, NCCL with one GPU per rank). ``fn`` must be a
module-level function of an importable module (not of a notebook): the ranks import it by name.

What the launcher guarantees:

- Rendezvous on 127.0.0.1: this process hosts the rendezvous store on a port the OS picks (port 0), so
  two launches never collide; the ranks connect to it and build their process group.
- Each rank receives only its own ``rank_args`` (pickled by value, never shared memory).
- Failure is prompt and explained: a rank that raises makes ``launch`` stop the others and raise
  :class:`RankError` carrying that rank's traceback; a rank that dies without a word (a crash, a kill)
  raises too. Peers of a failed rank usually fail next (their collectives lose a partner): the error
  names the earliest failure and lists the others.
- Nothing waits forever: ``timeout`` bounds the whole launch (a :class:`TimeoutError` names the ranks
  still running), and ``pg_timeout`` bounds every collective inside the ranks (a rank stuck in an
  all-reduce whose peer never comes raises, and that is reported like any other error).
- A stalled rank is named as the stalled one: when the launch gives up, the ranks still running dump their
  Python stacks (``faulthandler`` on SIGUSR1); those outside any collective stalled, those inside one waited
  for them (for NCCL, whose collectives return at once, only the gloo case is this clear).
- No orphans: SIGTERM, SIGINT or SIGHUP to the launching process stop every rank before the signal takes
  its usual effect; if the launching process dies anyway (SIGKILL), each rank notices within a moment (a
  pipe only the launcher holds reaches end-of-file) and exits; if the launcher's own parent dies, the
  launcher stops the ranks and raises.
- NCCL children get ``NCCL_NVLS_ENABLE=0`` and ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` unless these are
  already set: NVLink multicast stays off.

Processes: on a machine without CUDA they are forked from a *forkserver* that has imported torch and
moe_lib once (a launch then costs ~0.1 s instead of seconds of imports per rank); with CUDA they are
spawned (CUDA cannot be used in a process forked from one that touched it). The forkserver inherits the
environment of the moment it starts (the first launch).
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .. import runtime
from .._validate import check_int

BACKENDS = ("gloo", "nccl")
#: Environment that every NCCL rank gets unless the user set it: NVLink multicast (NVLS) stays off.
NCCL_ENV_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
HOST = "127.0.0.1"
#: After a rank fails, how long the launcher waits for other failures before it reports the earliest.
FAILURE_GRACE_S = 0.5
#: The signals that stop a launch (and its ranks) before they take their usual effect.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))
#: How often the launcher checks that its parent is alive, in seconds.
PARENT_POLL_S = 0.5
#: A rank's exit status when it finds its launcher gone.
EXIT_ORPHANED = 70
#: Ranks dump their Python stacks on this signal (where the platform has it).
STACK_SIGNAL = getattr(signal, "SIGUSR1", None)
_STACKS_READY = "ready\n"


class RankError(RuntimeError):
    """A rank raised (or died), or stalled. ``rank`` is its number, ``traceback`` the text it reported (for a
    stalled rank: its Python stack), ``stalled`` whether it stalled while others waited for it."""

    def __init__(self, rank: int, world_size: int, traceback_text: str, also_failed: Sequence[int] = (), *,
                 stalled: bool = False, cause: str = "") -> None:
        self.rank = rank
        self.traceback = traceback_text
        self.also_failed = list(also_failed)
        self.stalled = stalled
        if stalled:
            text = (f"rank {rank} of {world_size} stalled: it was still running, outside any collective, when "
                    f"rank(s) {self.also_failed} gave up waiting for it. Its stack:\n{traceback_text.rstrip()}\n"
                    f"The first error of the ranks that waited:\n{cause.rstrip()}")
        else:
            after = (f"\n(rank(s) {self.also_failed} failed after it, most likely as a consequence)"
                     if also_failed else "")
            text = f"rank {rank} of {world_size} failed:\n{traceback_text.rstrip()}{after}"
        super().__init__(text)


class LaunchInterrupted(RuntimeError):
    """The launch was stopped from outside (its parent died, or a signal whose handler returned): every rank
    was ended first."""


# ----------------------------------------------------------------------------------------------------
# Inside a rank
# ----------------------------------------------------------------------------------------------------
def rank_device(backend: str, local_rank: int) -> torch.device:
    """The device a rank computes on: its own GPU with NCCL; with gloo the CPU (or a GPU when there is one:
    compiled Triton kernels need CUDA tensors)."""
    if backend == "nccl" or runtime.HAS_CUDA:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(
    backend: str, rank: int, world_size: int, *, store: dist.Store | None = None, local_rank: int | None = None,
    pg_timeout: float = 60.0,
) -> torch.device:
    """Initialize the default process group for this rank; returns its device.

    With ``store=None`` the rendezvous comes from the environment (``torchrun`` sets MASTER_ADDR/PORT).
    """
    local_rank = rank if local_rank is None else local_rank
    device = rank_device(backend, local_rank)
    kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size,
                              "timeout": datetime.timedelta(seconds=pg_timeout)}
    if store is not None:
        kwargs["store"] = store
    if backend == "nccl":
        for key, value in NCCL_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)  # read by NCCL and torch when the communicator is made
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the group to this GPU (and silences barrier()'s guess)
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(**kwargs)
    return device


def _exit_when_orphaned(alive: multiprocessing.connection.Connection) -> None:
    """A rank's watchdog thread: the launcher holds the only writing end of ``alive``; end-of-file means the
    launcher is gone (even by SIGKILL), and a rank without its launcher has no one to report to."""
    try:
        alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(EXIT_ORPHANED)


def _rank_main(
    fn: Callable, rank: int, world_size: int, port: int, backend: str, pg_timeout: float, payload: bytes,
    conn: multiprocessing.connection.Connection, alive: multiprocessing.connection.Connection | None = None,
    stack_file: str | None = None,
) -> None:
    """The body of each child: join the group, run fn, send back ("ok", result) or ("error", traceback)."""
    if alive is not None:
        threading.Thread(target=_exit_when_orphaned, args=(alive,), name="launcher-watchdog", daemon=True).start()
    if stack_file is not None and STACK_SIGNAL is not None:
        stacks = open(stack_file, "w")  # open for the life of the process: faulthandler writes here
        faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True)
        stacks.write(_STACKS_READY)  # only now may the launcher send STACK_SIGNAL (before, it would kill)
        stacks.flush()
    try:
        store = dist.TCPStore(HOST, port, is_master=False, timeout=datetime.timedelta(seconds=pg_timeout))
        init_process_group(backend, rank, world_size, store=store, pg_timeout=pg_timeout)
        result = pickle.dumps(fn(rank, world_size, *pickle.loads(payload)))
    except BaseException:  # noqa: B036 (report everything, KeyboardInterrupt and SystemExit included)
        conn.send(("error", time.time(), traceback.format_exc()))
        conn.close()
        os._exit(1)  # skip interpreter teardown: a peer may be stuck; the parent stops everyone anyway
    conn.send(("ok", result))
    conn.close()
    try:  # teardown, after reporting: let every peer finish its last collective, then close connections
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # a peer that failed or was stopped: the parent already knows
        pass


# ----------------------------------------------------------------------------------------------------
# The parent
# ----------------------------------------------------------------------------------------------------
def _context(backend: str) -> multiprocessing.context.BaseContext:
    if backend == "nccl" or runtime.HAS_CUDA:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Applies when the forkserver starts (the first launch): it imports these once, every rank inherits them.
    ctx.set_forkserver_preload(["moe_lib.parallel"])
    return ctx


def _check_fn(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        raise TypeError(
            f"fn must be a module-level function of an importable module (the ranks import it by name), got "
            f"{qualname or fn!r} from {module!r}: define it in a .py module such as moe_lib.parallel.distributed"
        )


def _check_seconds(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    return float(value)


class _Stopped(BaseException):
    """Raised in the launcher's main thread by a stop signal (BaseException: no ``except Exception`` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Armed:
    """Whether a stop signal may still raise: not once the clean-up has begun (it must run to the end)."""

    on = True


@contextlib.contextmanager
def _stop_signals_raise():
    """While the launch runs: SIGTERM/SIGINT/SIGHUP raise :class:`_Stopped` (so that ``finally`` stops the
    ranks); afterwards the first such signal is delivered again under the previous handler. Only the main
    thread can handle signals; elsewhere this does nothing. Signals the caller ignores stay ignored. Yields an
    :class:`_Armed` that the clean-up switches off."""
    armed = _Armed()
    if threading.current_thread() is not threading.main_thread():
        yield armed
        return
    received: list[int] = []

    def on_signal(signum, frame):
        if not received:  # one stop is enough: a second signal must not interrupt the clean-up
            received.append(signum)
            if armed.on:
                raise _Stopped(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN and handler is not None:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield armed
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:  # every rank is stopped now: let the signal do what it would have done
        signal.raise_signal(received[0])
        raise LaunchInterrupted(f"launch stopped by {signal.Signals(received[0]).name}; every rank was ended")


def _stop(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Terminate (then kill) every process still running; reap them all."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join()


def launch(
    fn: Callable,
    world_size: int,
    *,
    args: tuple = (),
    rank_args: Sequence[tuple] | None = None,
    backend: str = "gloo",
    timeout: float = 120.0,
    pg_timeout: float = 60.0,
) -> list:
    """Run ``fn(rank, world_size, *args, *rank_args[rank])`` on ``world_size`` new processes.

    Returns the list of the ranks' return values (in rank order; they must be picklable — return CPU
    tensors). Raises :class:`RankError` as soon as a rank fails, :class:`TimeoutError` after ``timeout``
    seconds. ``pg_timeout`` is the process group's timeout for each collective, in seconds.
    """
    _check_fn(fn)
    check_int("world_size", world_size, low=1)
    if not isinstance(args, tuple):
        raise TypeError(f"args must be a tuple, got {type(args).__name__}")
    if rank_args is None:
        rank_args = [()] * world_size
    if isinstance(rank_args, (str, bytes)) or not isinstance(rank_args, Sequence):
        raise TypeError(f"rank_args must be a sequence of tuples (one per rank), got {type(rank_args).__name__}")
    if len(rank_args) != world_size:
        raise ValueError(f"rank_args must hold world_size={world_size} tuples, got {len(rank_args)}")
    for r, extra in enumerate(rank_args):
        if not isinstance(extra, tuple):
            raise TypeError(f"rank_args[{r}] must be a tuple, got {type(extra).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "nccl":
        if not runtime.HAS_CUDA:
            raise ValueError("backend='nccl' needs CUDA GPUs; use backend='gloo' on the CPU")
        if world_size > torch.cuda.device_count():
            raise ValueError(f"world_size={world_size} exceeds the {torch.cuda.device_count()} GPUs (NCCL: one each)")
    timeout = _check_seconds("timeout", timeout)
    pg_timeout = _check_seconds("pg_timeout", pg_timeout)

    deadline = time.monotonic() + timeout
    ctx = _context(backend)
    with _stop_signals_raise() as armed:
        return _run(ctx, fn, world_size, args, rank_args, backend, deadline, timeout, pg_timeout, armed)


def _run(ctx, fn, world_size, args, rank_args, backend, deadline, timeout, pg_timeout, armed: _Armed) -> list:
    # The rendezvous store lives here, on a port the OS picks; the ranks are its clients.
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=pg_timeout))
    # Only this process holds alive_writer: when it dies, every rank's alive_reader reaches end-of-file.
    alive_reader, alive_writer = ctx.Pipe(duplex=False)
    stacks = Path(tempfile.mkdtemp(prefix="moe_lib_launch_"))
    processes, readers = [], {}
    try:
        for rank in range(world_size):
            payload = pickle.dumps(tuple(args) + tuple(rank_args[rank]))
            reader, writer = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_rank_main, name=f"rank{rank}", daemon=True,
                            args=(fn, rank, world_size, store.port, backend, pg_timeout, payload, writer,
                                  alive_reader, str(stacks / f"rank{rank}.txt")))
            p.start()
            writer.close()  # the child has its copy; ours would hide the child's end-of-file
            processes.append(p)
            readers[reader] = rank
        alive_reader.close()
        return _collect(processes, readers, world_size, deadline, timeout, stacks)
    finally:
        armed.on = False
        _stop(processes)
        for reader in readers:
            reader.close()
        alive_writer.close()
        alive_reader.close()
        shutil.rmtree(stacks, ignore_errors=True)
        del store  # its server (the rendezvous) stops here


def _stacks(processes, ranks: Sequence[int], stacks: Path) -> dict[int, str]:
    """Each rank's Python stack (the thread that runs fn), dumped on STACK_SIGNAL; '' for a rank that cannot
    dump one (not yet ready to: the signal would kill it, or it is gone)."""
    if STACK_SIGNAL is None:
        return {}
    files = {rank: stacks / f"rank{rank}.txt" for rank in ranks}
    ready = [r for r, f in files.items() if f.exists() and f.stat().st_size >= len(_STACKS_READY)]
    for rank in ready:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(processes[rank].pid, STACK_SIGNAL)
    end, sizes = time.monotonic() + 1.0, None
    while ready and time.monotonic() < end:  # until every dump has stopped growing (or 1 s)
        time.sleep(0.05)
        now = {r: files[r].stat().st_size for r in ready}
        if now == sizes and all(size > len(_STACKS_READY) for size in now.values()):
            break
        sizes = now
    out = {rank: "" for rank in ranks}
    for rank in ready:
        text = files[rank].read_text(errors="replace")
        blocks = [b for b in text.split("\n\n") if "in _rank_main" in b]  # the thread that runs fn
        lines = blocks[-1].strip().splitlines() if blocks else []
        mine = [i for i, line in enumerate(lines) if "in _rank_main" in line]
        out[rank] = "\n".join(lines[: mine[0]]) if mine else ""
    return out


def _in_collective(stack: str) -> bool:
    """Whether a rank's stack is inside torch.distributed (waiting in a collective)."""
    return "torch/distributed/" in stack.replace(os.sep, "/") or "distributed_c10d" in stack


def _died(rank: int, process) -> str:
    process.join(1.0)
    return f"(rank {rank} exited with code {process.exitcode} before reporting: it crashed or was killed)"


def _receive(reader, rank: int, process) -> tuple[bool, float, Any]:
    """One rank's message: (True, 0, result), or (False, when it failed, its traceback or how it died)."""
    try:
        message = reader.recv()
    except EOFError:
        return False, -math.inf, _died(rank, process)  # a crash is a cause, never a peer's consequence
    if message[0] == "error":
        return False, message[1], message[2]
    return True, 0.0, pickle.loads(message[1])


def _collect(processes, readers: dict, world_size: int, deadline: float, timeout: float, stacks: Path) -> list:
    """Wait for every rank's message; fail at the first error, a silent death, the deadline, or the death of
    the launcher's parent.

    A failure makes its peers fail too (their collectives lose a partner), so after the first one the
    others get FAILURE_GRACE_S to report, and the error names the earliest failure — a silent death first —
    unless the ranks that failed were waiting for a rank that is still running outside any collective: that
    rank stalled, and is named.
    """
    results: list = [None] * world_size
    pending = {rank: reader for reader, rank in readers.items()}  # ranks that have not reported yet
    failures: dict[int, tuple[float, str]] = {}  # rank -> (when, what)
    grace_end = math.inf
    parent = os.getppid()
    while pending:
        now = time.monotonic()
        if now >= grace_end or (now >= deadline and failures):
            break
        if now >= deadline:
            raise _timeout(processes, sorted(pending), world_size, timeout, stacks)
        if os.getppid() != parent:
            raise LaunchInterrupted(f"the launching process's parent (pid {parent}) died; every rank was ended")
        waiting = {**{reader: rank for rank, reader in pending.items()},
                   **{processes[rank].sentinel: rank for rank in pending}}  # a message, or the process's exit
        wait_s = min(deadline, grace_end, now + PARENT_POLL_S) - now
        for ready in multiprocessing.connection.wait(list(waiting), timeout=wait_s):
            rank = waiting[ready]
            if rank not in pending:
                continue  # its message and its exit were both ready
            reader = pending.pop(rank)
            if ready is reader or reader.poll(0.5):  # an exited rank's message is already in the pipe
                ok, when, value = _receive(reader, rank, processes[rank])
            else:
                ok, when, value = False, -math.inf, _died(rank, processes[rank])
            if ok:
                results[rank] = value
            else:
                failures[rank] = (when, value)
                grace_end = min(grace_end, time.monotonic() + FAILURE_GRACE_S)
    if failures:
        first = min(failures, key=lambda r: (failures[r][0], r))
        others = sorted(set(failures) - {first})
        if pending and failures[first][0] > -math.inf:  # ranks still running: did the failed ones wait for them?
            still = _stacks(processes, sorted(pending), stacks)
            stalled = [r for r, stack in still.items() if stack and not _in_collective(stack)]
            if stalled and _waited(failures[first][1]):
                raise RankError(stalled[0], world_size, still[stalled[0]], sorted(failures), stalled=True,
                                cause=failures[first][1])
        raise RankError(first, world_size, failures[first][1], also_failed=others)
    for p in processes:  # all reported: they are exiting; the caller stops any that lingers
        p.join(min(5.0, max(0.1, deadline - time.monotonic())))
    return results


def _waited(traceback_text: str) -> bool:
    """Whether a rank's error says it gave up waiting for a peer (a collective's timeout)."""
    return "timed out" in traceback_text.lower() or "timeout" in traceback_text.lower()


def _timeout(processes, pending: list[int], world_size: int, timeout: float, stacks: Path) -> TimeoutError:
    """The launch's deadline passed: name the ranks still running, and which of them stalled (outside any
    collective) and which waited for them (inside one)."""
    text = f"rank(s) {pending} of {world_size} did not finish within {timeout:g} s"
    still = _stacks(processes, pending, stacks)
    waiting = [r for r in pending if _in_collective(still.get(r, ""))]
    stalled = [r for r in pending if r not in waiting]
    if not waiting:
        err = TimeoutError(f"{text} (a rank stalled outside any collective, or the launch timeout is too short)")
    elif not stalled:
        err = TimeoutError(f"{text}: all of them were waiting in collectives (do the ranks call the same "
                           "collectives in the same order?)")
    else:
        shown = "\n".join(f"rank {r}'s stack:\n{still[r]}" for r in stalled if still.get(r))
        err = TimeoutError(f"{text}: rank(s) {stalled} stalled outside any collective while rank(s) {waiting} "
                           f"waited for them in one\n{shown}".rstrip())
    err.stalled, err.waiting = stalled, waiting
    return err


__all__ = ["launch", "RankError", "LaunchInterrupted", "init_process_group", "rank_device", "NCCL_ENV_DEFAULTS",
           "BACKENDS", "STOP_SIGNALS"]
