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


def assert_group_keeps_greedy(engine, prompts: list[list[int]], groups: set[str], spy_module, spy_name: str,
                              monkeypatch, logprob_tol: float = 1e-5, forbidden: tuple = ()):
    """`engine` (built with kernels="torch") generates `prompts` greedily, then again with only kernel `groups`
    on: `spy_module.spy_name` (the kernel entry point under test) must run and none of the `forbidden`
    (module, name) reference functions, the last prompt must hit the prefix cache (make it a longer one's
    extension), and the tokens must be the reference's with log-probs within `logprob_tol`. Returns
    (reference outputs, outputs with the groups on)."""
    import pytest

    from temper.engine import SamplingParams, kernels

    greedy = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    reference = engine.generate(prompts, greedy)
    calls, real = [], getattr(spy_module, spy_name)
    monkeypatch.setattr(spy_module, spy_name, lambda *a, **k: calls.append(1) or real(*a, **k))
    for module, name in forbidden:
        monkeypatch.setattr(module, name, lambda *a, name=name, **k: pytest.fail(f"{name} ran"))
    kernels.set_enabled(groups)
    outs = engine.generate(prompts, greedy)
    assert calls, f"{spy_name} did not run with kernel group(s) {sorted(groups)} on"
    assert outs[-1].cached_tokens > 0, "the last prompt did not hit the prefix cache"
    for ref, out in zip(reference, outs):
        assert out.output_token_ids == ref.output_token_ids
        assert (torch.tensor(out.output_logprobs) - torch.tensor(ref.output_logprobs)).abs().max() <= logprob_tol
    return reference, outs
