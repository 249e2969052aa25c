"""Fixtures for the train-worker tests: a 1-rank gloo process group and a tiny checkpoint.

Tests in this folder run in a process that is rank 0 of a world of 1 (the group lives for one test
module); the two-rank tests spawn their own processes (test_distributed.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from temper.testing import tiny_model_dir

# The Triton kernel tests run in triton's interpreter without a GPU; triton reads this on import.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module", autouse=True)
def single_rank_group():
    """A 1-rank gloo group through a FileStore (no port), torn down after the module."""
    if dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


@pytest.fixture(scope="session")
def qwen3_dir() -> Path:
    return tiny_model_dir("qwen3")
