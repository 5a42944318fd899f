"""moe_lib.parallel.launch leaves no orphans and names a stalled rank; moe_lib.parallel.run refuses bad values
in one argparse line.

Signals are sent to this process itself (with a handler of the test's standing in for the default, so that
pytest survives), and the parent's death is what the launcher sees of it (its parent pid changes): the ranks
start in a moment from the warm forkserver, and the process table (/proc) says whether any rank survived.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from moe_lib import runtime
from moe_lib.parallel import faults, launch
from moe_lib.parallel.launch import LaunchInterrupted
from moe_lib.parallel.run import parse_args

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the Linux process table")
STARTUP = 30.0 if runtime.HAS_CUDA else 0.0  # spawned ranks import torch themselves (seconds each)


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state letter) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return int(ppid), state


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def ranks_of(launcher: int) -> set[int]:
    """A launcher's ranks: forked by its forkserver (a grandchild) or spawned (``spawn_main``), not the
    forkserver or the resource tracker themselves."""
    def is_rank(pid: int) -> bool:
        stat = proc_stat(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return stat is not None and (stat[0] != launcher or b"spawn_main" in cmdline)

    return {pid for pid in descendants(launcher) if is_rank(pid)}


def alive(pids) -> set[int]:
    """The pids still running (a zombie has ended: it only waits to be reaped)."""
    return {pid for pid in pids if (stat := proc_stat(pid)) is not None and stat[1] not in "ZX"}


def wait_until(condition, seconds: float, step: float = 0.05):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(step)
    return condition()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_stop_signal_ends_every_rank_first(signame):
    sig = getattr(signal, signame)
    before = ranks_of(os.getpid())
    seen, ranks = [], set()

    def send_when_running():
        ranks.update(wait_until(lambda: len(ranks_of(os.getpid()) - before) >= 2 and ranks_of(os.getpid()) - before,
                                60 + STARTUP) or ())
        time.sleep(0.3)  # the ranks are inside fn now
        os.kill(os.getpid(), sig)

    previous = signal.signal(sig, lambda signum, frame: seen.append(signum))  # stands in for the default action
    try:
        threading.Thread(target=send_when_running, daemon=True).start()
        start = time.monotonic()
        with pytest.raises(LaunchInterrupted, match=signame):
            launch(faults.stall_on_rank, 2, args=(0, 600.0, True), timeout=20 + STARTUP, pg_timeout=600)
    finally:
        signal.signal(sig, previous)
    assert seen == [sig]  # after the clean-up, the signal reached the handler that was there before
    assert len(ranks) >= 2 and not alive(ranks)
    assert time.monotonic() - start < 30 + STARTUP


def test_a_launcher_whose_parent_dies_ends_every_rank(monkeypatch):
    """When the launching process's parent dies, the launcher is adopted by another process: its parent pid
    changes (POSIX), which the launcher checks every PARENT_POLL_S. Here the parent pid is made to change once
    the ranks run; the launcher must stop them and raise."""
    launch_mod = importlib.import_module("moe_lib.parallel.launch")  # (the package exports the function `launch`)
    before = ranks_of(os.getpid())
    real_getppid, adopted = os.getppid, threading.Event()
    monkeypatch.setattr(launch_mod.os, "getppid", lambda: 1 if adopted.is_set() else real_getppid())
    ranks: set[int] = set()

    def adopt_when_running():
        ranks.update(wait_until(lambda: len(ranks_of(os.getpid()) - before) >= 2 and ranks_of(os.getpid()) - before,
                                60 + STARTUP) or ())
        time.sleep(0.3)
        adopted.set()

    threading.Thread(target=adopt_when_running, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(LaunchInterrupted, match=r"parent \(pid \d+\) died; every rank was ended"):
        launch(faults.stall_on_rank, 2, args=(0, 600.0, True), timeout=20 + STARTUP, pg_timeout=600)
    assert len(ranks) >= 2 and not alive(ranks)
    assert time.monotonic() - start < 30 + STARTUP


def test_a_rank_whose_launcher_vanished_exits():
    """What a rank does when its launcher is killed outright (SIGKILL: no clean-up runs): the pipe that only the
    launcher holds open reaches end-of-file, and the rank's watchdog ends it. Here the 'launcher' is this test,
    which closes its end."""
    from moe_lib.parallel.launch import EXIT_ORPHANED, _context, _exit_when_orphaned

    ctx = _context("gloo")
    reader, writer = ctx.Pipe(duplex=False)
    rank = ctx.Process(target=_exit_when_orphaned, args=(reader,), daemon=True)
    rank.start()
    reader.close()
    time.sleep(0.2)
    assert rank.is_alive()  # the launcher is there: the rank keeps running
    writer.close()
    rank.join(30 + STARTUP)  # (a spawned process imports torch first)
    assert rank.exitcode == EXIT_ORPHANED


@pytest.mark.parametrize("argv,message", [
    (["--tp", "2", "--timeout", "0"], "--timeout must be a finite number of seconds > 0, got 0"),
    (["--tp", "2", "--timeout", "-5"], "--timeout must be a finite number of seconds > 0, got -5"),
    (["--tp", "2", "--timeout", "inf"], "--timeout must be a finite number of seconds > 0, got inf"),
    (["--tp", "2", "--pg-timeout", "nan"], "--pg-timeout must be a finite number of seconds > 0, got nan"),
    (["--tp", "2", "--pg-timeout", "0"], "--pg-timeout must be a finite number of seconds > 0, got 0"),
])
def test_cli_refuses_bad_timeouts_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and err[-1] == f"python -m moe_lib.parallel.run: error: {message}"


@pytest.mark.skipif(runtime.HAS_CUDA, reason="NCCL is available on a GPU machine")
def test_cli_refuses_nccl_without_gpus(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--tp", "2", "--backend", "nccl"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m moe_lib.parallel.run: error: --backend nccl needs CUDA GPUs (this machine has none); "
        "use --backend gloo")


def test_launch_refuses_infinite_timeouts():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
            launch(faults.stall_on_rank, 2, timeout=bad)
