"""Comparison helpers for the kernel tests (a uniquely named module: test folders are not packages)."""

from __future__ import annotations

import torch


def paged_cache(shape: tuple[int, ...], layout: str, **tensor_kwargs) -> torch.Tensor:
    """Zeros of logical shape [num_blocks, block_size, Hkv, D] (what the kernels index) in `layout`:
    "token" (contiguous, the engine's) or "head" (memory [num_blocks, Hkv, block_size, D] seen through
    a transpose), to check that the kernels address the cache only through its strides."""
    if layout == "token":
        return torch.zeros(shape, **tensor_kwargs)
    return torch.zeros(shape[0], shape[2], shape[1], shape[3], **tensor_kwargs).transpose(1, 2)


def ulp_close(actual: torch.Tensor, expected: torch.Tensor, max_ulps: int = 2, frac: float = 0.02,
              atol: float = 0.0) -> None:
    """actual == expected up to `max_ulps` steps of their dtype; in bf16/fp16 (where both round at the
    same points) also exactly equal on all but `frac` of the elements. float32 differs in the last
    bits through summation order alone."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    a, e = actual.float(), expected.float()
    step = torch.finfo(expected.dtype).eps * e.abs().clamp_min(torch.finfo(expected.dtype).tiny)
    assert ((a - e).abs() <= max_ulps * step + atol + 1e-30).all(), f"max diff {(a - e).abs().max().item()}"
    if expected.dtype != torch.float32:
        assert (a != e).float().mean().item() <= frac, f"{(a != e).float().mean().item():.4f} of elements differ"
