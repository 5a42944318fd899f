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
- NCCL children get ``NCCL_NVLS_ENABLE=0`` and ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` unless these are
  already set: NVLink multicast stays off.

Processes: on a machine without CUDA they are forked from a *forkserver* that has imported torch and
moe_lib once (a launch then costs ~0.1 s instead of seconds of imports per rank); with CUDA they are
spawned (CUDA cannot be used in a process forked from one that touched it). The forkserver inherits the
environment of the moment it starts (the first launch).
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
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


class RankError(RuntimeError):
    """A rank raised (or died). ``rank`` is its number, ``traceback`` the text it reported."""

    def __init__(self, rank: int, world_size: int, traceback_text: str, also_failed: Sequence[int] = ()) -> None:
        self.rank = rank
        self.traceback = traceback_text
        self.also_failed = list(also_failed)
        after = f"\n(rank(s) {self.also_failed} failed after it, most likely as a consequence)" if also_failed else ""
        super().__init__(f"rank {rank} of {world_size} failed:\n{traceback_text.rstrip()}{after}")


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


def _rank_main(
    fn: Callable, rank: int, world_size: int, port: int, backend: str, pg_timeout: float, payload: bytes,
    conn: multiprocessing.connection.Connection,
) -> None:
    """The body of each child: join the group, run fn, send back ("ok", result) or ("error", traceback)."""
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
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value}")
    return float(value)


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
    # The rendezvous store lives here, on a port the OS picks; the ranks are its clients.
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=pg_timeout))
    processes, readers = [], {}
    try:
        for rank in range(world_size):
            payload = pickle.dumps(tuple(args) + tuple(rank_args[rank]))
            reader, writer = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_rank_main, name=f"rank{rank}", daemon=True,
                            args=(fn, rank, world_size, store.port, backend, pg_timeout, payload, writer))
            p.start()
            writer.close()  # the child has its copy; ours would hide the child's end-of-file
            processes.append(p)
            readers[reader] = rank
        return _collect(processes, readers, world_size, deadline, timeout)
    finally:
        _stop(processes)
        for reader in readers:
            reader.close()
        del store  # its server (the rendezvous) stops here


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


def _collect(processes, readers: dict, world_size: int, deadline: float, timeout: float) -> list:
    """Wait for every rank's message; fail at the first error, a silent death, or the deadline.

    A failure makes its peers fail too (their collectives lose a partner), so after the first one the
    others get FAILURE_GRACE_S to report, and the error names the earliest failure — a silent death first.
    """
    results: list = [None] * world_size
    pending = {rank: reader for reader, rank in readers.items()}  # ranks that have not reported yet
    failures: dict[int, tuple[float, str]] = {}  # rank -> (when, what)
    grace_end = math.inf
    while pending:
        now = time.monotonic()
        if now >= grace_end or (now >= deadline and failures):
            break
        if now >= deadline:
            raise TimeoutError(f"rank(s) {sorted(pending)} of {world_size} did not finish within {timeout:g} s "
                               "(a rank stalled outside any collective, or the launch timeout is too short)")
        waiting = {**{reader: rank for rank, reader in pending.items()},
                   **{processes[rank].sentinel: rank for rank in pending}}  # a message, or the process's exit
        for ready in multiprocessing.connection.wait(list(waiting), timeout=min(deadline, grace_end) - now):
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
        raise RankError(first, world_size, failures[first][1], also_failed=sorted(set(failures) - {first}))
    for p in processes:  # all reported: they are exiting; the caller stops any that lingers
        p.join(min(5.0, max(0.1, deadline - time.monotonic())))
    return results


__all__ = ["launch", "RankError", "init_process_group", "rank_device", "NCCL_ENV_DEFAULTS", "BACKENDS"]
