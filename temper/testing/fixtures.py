"""pytest fixtures over `tiny_model_dir`; import them into a conftest.py to use them.

    from temper.testing.fixtures import tiny_model_factory, tiny_qwen3_dir  # noqa: F401

The folders are shared across the session (and with direct `tiny_model_dir` callers): treat them as
read-only, and build into ``tmp_path`` with `build_tiny_model` when a test must write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from temper.testing.tiny_models import tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_factory() -> Callable[..., Path]:
    """`tiny_model_dir` itself: ``tiny_model_factory("llama", tie_word_embeddings=False)``."""
    return tiny_model_dir


@pytest.fixture(scope="session", params=["qwen3", "qwen2", "llama"])
def tiny_arch_dir(request: pytest.FixtureRequest) -> Path:
    """The default tiny checkpoint of each architecture in turn (tests using it run three times)."""
    return tiny_model_dir(request.param)


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    """The default tiny Qwen3 checkpoint (seed 0, float32, tied embeddings)."""
    return tiny_model_dir("qwen3")
