"""Ranks that misbehave on purpose, to show (and test) what the launcher does when a rank fails or stalls.

They live in a module because the ranks import their function by name (a notebook cannot define one).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist


def raise_on_rank(rank: int, world_size: int, bad_rank: int, message: str) -> int:
    """``bad_rank`` raises ValueError(message); the others enter an all-reduce that it never joins.

    Without the launcher's care the others would wait in that all-reduce until the process group times
    out; the launcher stops them as soon as ``bad_rank`` reports its traceback.
    """
    if rank == bad_rank:
        raise ValueError(message)
    dist.all_reduce(torch.ones(1))
    return rank


def exit_on_rank(rank: int, world_size: int, bad_rank: int, code: int) -> int:
    """``bad_rank`` vanishes with exit status ``code`` and no traceback (as a crash or a kill would); the
    others wait for it in an all-reduce. The launcher notices the exit and stops them."""
    if rank == bad_rank:
        os._exit(code)
    dist.all_reduce(torch.ones(1))
    return rank


def stall_on_rank(rank: int, world_size: int, stalled_rank: int, seconds: float, in_collective: bool) -> int:
    """``stalled_rank`` sleeps ``seconds`` — alive, silent, no error — before it joins in.

    With ``in_collective`` every rank then takes part in an all-reduce, so the others wait for the sleeper
    inside it (if the process group's timeout is shorter than the sleep, their wait becomes an error);
    without, the others return at once and only the launch's own timeout can notice the sleeper.
    """
    if rank == stalled_rank:
        time.sleep(seconds)
    if in_collective:
        dist.all_reduce(torch.ones(1))
    return rank


__all__ = ["raise_on_rank", "exit_on_rank", "stall_on_rank"]
