"""Kernels of the engine's CUDA fast path, and the switch that turns them on.

The engine computes every function twice over: the PyTorch reference (CPU and CUDA; what the CPU
tests compare with Hugging Face) and these kernels (CUDA; the Triton ones on CPU too under
``TRITON_INTERPRET=1``, which is how the tests run them without a GPU). Six groups, enabled separately:

- "layers" (`elementwise.py`): residual add + RMSNorm, q/k RMSNorm + RoPE, SiLU-and-multiply, one
  kernel each, rounding to the activation dtype exactly where the PyTorch modules round; for a latent-attention
  model also `latent_prep.py`: MLA's query and cache entry (RoPE, the latent's RMSNorm, the concatenations)
  in one launch between its GEMMs;
- "attention" (`paged_attention.py`): KV-cache write, split-K decode attention and varlen causal
  prefill attention, both reading K/V straight from the block-paged cache; for a latent-attention model
  (DeepSeek-V3's MLA) `latent_attention.py`'s entry write, causal prefill and split-K decode instead;
- "sampler" (`sampling.py`): log-softmax + Gumbel-max draw over the vocabulary in one read of the logits,
  without [B, V] intermediates;
- "fused_moe" (`fused_moe.py`): a model's routed experts as four Triton launches (alignment by expert,
  gate/up GEMM with SiLU-and-multiply in its epilogue, down GEMM times the routing weight, the per-token
  sum in ascending expert order), rows gathered straight from the activations, no host reads, so it
  can be captured in a CUDA graph; what an MoE model runs where it passes its self-check;
- "moe" (`models/moe.py`'s `dispatch_grouped`): the routed experts as two grouped GEMMs over the tokens
  sorted by expert (``torch._grouped_mm``, PyTorch's own kernel, no Triton), also capturable. It runs
  wherever ``torch._grouped_mm`` does (CUDA; CPU in recent PyTorch, which the CPU tests use) and where
  "fused_moe" is off: without triton, where the fused experts fail their check, or with
  ``EngineArgs.moe_kernel="grouped_mm"`` (an A/B of the two). Without either the experts run
  `moe.dispatch_loop`, which reads expert counts on the host, and the model decodes without CUDA graphs.
- "routing" (`routing.py`): a router's expert choice after its logits, one launch per layer instead of
  ~10 small ops: DeepSeek-V3's sigmoid routing with its group mask (`deepseek_v3.TopkRouter`, and GLM-4.5's
  which is the same), and Qwen3-MoE's softmax routing (`moe.SparseMoeBlock.route`: `routing.softmax_topk`).
  Only models with experts check these three groups.

`ModelRunner` calls `self_check.enable` once per engine: on CUDA it imports triton, runs every group on small
random inputs against the reference (the experts' groups also inside a CUDA graph capture) and keeps the
groups that pass; a group that fails to compile or disagrees is logged and left to the
reference. Model code asks `enabled(group, x)` before each op, so a tensor on a device without kernels
always takes the reference path.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch


TRITON_GROUPS = ("layers", "attention", "sampler", "fused_moe", "routing")
MOE_GROUPS = ("fused_moe", "moe", "routing")  # checked only for a model with experts
GROUPS = (*TRITON_GROUPS, "moe")
_enabled: set[str] = set()


def interpreting() -> bool:
    """Whether triton runs kernels on CPU tensors (TRITON_INTERPRET=1, read when kernels are defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except Exception:  # noqa: BLE001 (a broken install is as good as none)
        return False
    return True


def module(name: str):
    """A kernel module, imported on first use (importing one defines its triton kernels)."""
    return importlib.import_module(f"temper.engine.kernels.{name}")


def enabled(group: str, x: torch.Tensor) -> bool:
    """Whether kernel `group` runs for tensor `x` (its device must be CUDA, or CPU while interpreting;
    "moe": CUDA, or CPU where this PyTorch's ``torch._grouped_mm`` runs there)."""
    if group not in _enabled:
        return False
    if group == "moe":
        return x.is_cuda or (x.device.type == "cpu" and grouped_mm_runs_on_cpu())
    return x.is_cuda or (x.device.type == "cpu" and interpreting())


@functools.cache
def grouped_mm_runs_on_cpu() -> bool:
    """Whether ``torch._grouped_mm`` has a CPU implementation in this PyTorch (tried once)."""
    try:
        torch._grouped_mm(torch.ones(2, 4), torch.ones(2, 4, 4), offs=torch.tensor([1, 2], dtype=torch.int32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def enabled_groups() -> set[str]:
    return set(_enabled)


def set_enabled(groups) -> None:
    """Turn exactly `groups` on (tests and `self_check.enable` use this; unknown names are an error)."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown kernel group(s) {sorted(unknown)}; expected some of {GROUPS}")
    _enabled.clear()
    _enabled.update(groups)
