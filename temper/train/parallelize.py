"""Parallelism applied from outside to an unmodified Hugging Face model, in torchtitan's order.

1. activation checkpointing: each decoder layer wrapped in torch's `checkpoint_wrapper`;
2. compilation (`compile_layers`, on by default on CUDA): each decoder layer wrapped by
   `torch.compile`, which fuses the Hugging Face layer's elementwise work (RMSNorm in fp32, RoPE,
   SwiGLU, residual adds: most of an uncompiled layer's GPU time at this size) into a few kernels;
   the FSDP hooks stay outside the compiled region. `TEMPER_COMPILE=0` turns it off;
3. FSDP2 (`fully_shard`) on each decoder layer, parameters resharded after forward;
4. FSDP2 on the root (embeddings, final norm, lm head / value head), *not* resharded after forward:
   the train worker reads the unsharded lm-head weight after the forward to compute chunked
   log-probs (`log_probs.py`), and backward needs it anyway.

One rank (`memory_plan.keeps_gathered`): FSDP's gathers and reduce-scatters are copies there, one per parameter
per micro-batch each way. A model of up to KEEP_GATHERED_MAX_PARAMS parameters on one rank keeps its
layers gathered after forward, and `TrainableModel.step` keeps them gathered across a step's
micro-batches and accumulates their gradients unsharded (fp32, FSDP's no-sync accumulation), reducing once
at the last micro-batch: the bf16 compute copy of every layer (2 bytes a parameter) stays allocated
through a step instead of two layers' worth.

Mixed precision (GPU): bf16 parameters for compute, fp32 gradient reduction; the sharded master
parameters — and so AdamW's state — stay in the dtype the model was loaded in (fp32).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

# Module-name fragments that wrappers insert into parameter names; Hugging Face names have none.
WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def hf_name(name: str) -> str:
    """The Hugging Face parameter name of a (possibly wrapped) module's parameter name."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decoder_layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    """The ModuleLists holding the repeated decoder blocks (HF's `_no_split_modules` classes)."""
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    lists = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and type(_unwrap(module[0])).__name__ in block_names:
            lists.append(module)
    if not lists:
        raise ValueError(
            f"{type(model).__name__}: found no decoder layers (classes {sorted(block_names)}) to shard; "
            "temper shards Hugging Face decoder-only models whose blocks sit in a ModuleList"
        )
    return lists


def _unwrap(module: nn.Module) -> nn.Module:
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "_checkpoint_wrapped_module", module)


def compile_by_default(device: torch.device) -> bool:
    """Compile the decoder layers on CUDA unless TEMPER_COMPILE=0 (the CPU runs stay eager)."""
    return device.type == "cuda" and os.environ.get("TEMPER_COMPILE", "1") != "0"


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    mixed_precision: bool = False,
    activation_checkpointing: bool = False,
    compile_layers: bool = False,
    keep_gathered: bool = False,
) -> FSDPModule:
    """Shard `model` in place over `mesh` (see the module docstring) and return it."""
    mp_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    for layers in decoder_layer_lists(model):
        for i, layer in enumerate(layers):
            if activation_checkpointing:
                layer = checkpoint_wrapper(layer)
            if compile_layers:
                layer = torch.compile(layer, dynamic=True)  # packed rows vary in length: one graph for all
            layers[i] = layer
            fully_shard(layer, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=not keep_gathered)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False)
    return model
