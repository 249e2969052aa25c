"""Kernel tests run the Triton kernels on CPU through triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before the kernel modules are imported (triton reads it when a kernel
is defined), so this file sets it at collection time; the engine imports kernel modules lazily, so no
earlier test has defined them. Without triton every test here is skipped.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _kernels_off_afterwards():
    """Kernel groups are process-wide: leave none enabled for the tests that follow."""
    yield
    from temper.engine import kernels

    kernels.set_enabled(set())
