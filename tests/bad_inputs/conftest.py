"""Fixtures for the bad-input suite: a tiny checkpoint, file writers, the driver's checks before Ray, a
1-rank process group for train workers.

`refused(argv, *parts)` runs what `train.py` runs before anything starts (bad_input_helpers.driver_checks)
and returns the one-line message it stops with; it fails the test when the bad input is accepted or
stops the run with another kind of error than the driver reports as one line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from bad_input_helpers import DRIVER_ERRORS, assert_message, driver_checks

from temper.testing import tiny_model_dir


@pytest.fixture(scope="session")
def model() -> str:
    """The tiny Qwen3 checkpoint (read-only: copy it to change it)."""
    return str(tiny_model_dir("qwen3"))


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., str]:
    """write(name, content) -> path: bytes as they are, str as UTF-8, a list as one line per item."""

    def put(name: str, content: bytes | str | list) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            content = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in content)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    return put


@pytest.fixture
def refused() -> Callable[..., str]:
    """refused(argv, *parts) -> message: the driver's checks stop on `argv` with one line holding every part."""

    def check(argv: list[str], *parts: str) -> str:
        with pytest.raises(DRIVER_ERRORS) as caught:
            driver_checks(argv)
        return assert_message(caught.value, *parts)

    return check


@pytest.fixture(scope="module")
def single_rank_group() -> Iterator[None]:
    """A 1-rank gloo process group (FileStore, no port) for building train workers in this process."""
    if dist.is_initialized():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()
            torch.set_num_threads(old)


@pytest.fixture
def said() -> Callable[..., str]:
    """said(error, *parts) -> message: one line holding every part (for errors raised outside the driver)."""
    return assert_message
