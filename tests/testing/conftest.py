"""Shared tiny-model fixtures, imported the way any test package can."""

from temper.testing.fixtures import tiny_arch_dir, tiny_model_factory, tiny_qwen3_dir  # noqa: F401
