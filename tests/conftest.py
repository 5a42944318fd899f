"""Shared fixtures. Tests run on the GPU when there is one (the `gpu` marker), else on the CPU interpreter."""

from __future__ import annotations

import os

import pytest
import torch

import moe_lib  # noqa: F401  (sets TRITON_INTERPRET before any kernel is defined)
from moe_lib import runtime

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", ".hypothesis")


def pytest_collection_modifyitems(config, items):
    if runtime.HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `make test-gpu` on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> torch.device:
    return runtime.default_device()


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh seeded generator per test: random but reproducible inputs."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def poison():
    """Every kernel output buffer starts as NaN / an impossible int: unwritten elements fail the test."""
    from moe_lib._alloc import poisoned

    with poisoned():
        yield


@pytest.fixture
def no_pyplot_figures():
    """Figure functions build figures without pyplot: none may appear in pyplot's list (that would leak
    memory in a long notebook and show twice). Closes any that a failure left."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    yield
    after = plt.get_fignums()
    plt.close("all")
    assert after == before, "a figure function registered a figure with pyplot"
