"""The one timer of the project: CUDA events around back-to-back calls on a GPU, the wall clock elsewhere.

Everything that reports a time (the layer benchmark, the breakdown, the tuner, the tensor-parallel benchmark)
measures it here, so all of them mean the same thing by "µs per call".
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], *, calls: int = 1, reps: int = 20, warmup: int = 3,
               device: torch.device | str = "cuda", before_each: Callable[[], object] | None = None) -> list[float]:
    """µs per call: ``reps`` samples, each of ``calls`` back-to-back calls of ``fn``, after ``warmup`` samples.
    ``before_each`` runs before every sample, outside the timed region (fresh inputs, a barrier)."""
    device = torch.device(device)
    for _ in range(warmup):
        for _ in range(calls):
            fn()
    samples = []
    for _ in range(reps):
        if before_each is not None:
            before_each()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3 / calls)
        else:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples.append((time.perf_counter() - t0) * 1e6 / calls)
    return samples


def capture(fn: Callable[[], object], repeats: int) -> torch.cuda.CUDAGraph:
    """``repeats`` calls of ``fn`` captured in one CUDA graph, after one eager call on a side stream (it compiles
    the kernels, and sets up NCCL's communicator for a collective inside ``fn``)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    torch.cuda.synchronize()
    return graph


def graph_us(fn: Callable[[], object], repeats: int = 10, reps: int = 5, *, warmup: int = 1,
             before_each: Callable[[], object] | None = None) -> float:
    """µs per call of ``fn``, captured ``repeats`` times in one CUDA graph (no launch gaps): median replay.
    ``fn`` runs once eagerly first (compiles the kernels) on a side stream, as capture requires."""
    graph = capture(fn, repeats)
    us = statistics.median(time_calls(graph.replay, reps=reps, warmup=warmup, before_each=before_each)) / repeats
    del graph
    return us


__all__ = ["time_calls", "capture", "graph_us"]
