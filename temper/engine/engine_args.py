"""`EngineArgs`: how the built-in engine is configured (checked when built)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

KERNEL_MODES = ("auto", "torch", "triton")
LOAD_FORMATS = ("auto", "dummy")
MOE_KERNELS = ("auto", "grouped_mm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineArgs:
    """Engine configuration.

    model: Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer files).
    load_format: "auto" (the folder's *.safetensors) | "dummy" (random weights drawn on the device under
        `seed`, `dummy_weights.py`; the folder needs only config.json and the tokenizer), SGLang's names.
    dtype: "auto" (float32 on CPU, bfloat16 on CUDA) | "float32" | "bfloat16" | "float16".
    moe_router_dtype: None (each router as Hugging Face computes it) | "float32": a Qwen-MoE router's logits,
        softmax and top-k in float32 from the hidden states and its weight cast up, its weights kept in float32
        (the trainer's ``--moe-router-dtype fp32``, `moe_routing.fp32_softmax_router`); DeepSeek-V3 routes in
        float32 either way.
    device: "auto" (CUDA if available) | "cpu" | "cuda" | "cuda:N".
    max_model_len: prompt + output tokens per request; default min(max_position_embeddings, 4096).
    block_size: tokens per KV-cache block.
    num_kv_blocks: KV-cache size in blocks; None sizes it: on CPU room for max_num_seqs x 512 tokens
        (at most 4 GiB), on CUDA mem_fraction_static of the GPU minus weights and activations.
    max_num_seqs: most sequences running at once. max_num_batched_tokens: tokens per prefill step.
    enable_prefix_caching: share the K/V of equal prompt prefixes (full blocks) across requests.
    seed: seeds the generator that gives each request without its own seed a sampling seed.
    kernels: "auto" (Triton kernels on CUDA where they pass a self-check at start, else PyTorch) |
        "torch" (the PyTorch reference everywhere) | "triton" (all Triton kernels, unchecked; on CPU
        only under TRITON_INTERPRET=1, for tests). The choice is process-wide (see `kernels`).
    moe_kernel: an MoE model's routed experts: "auto" (the fused Triton experts, kernel group "fused_moe",
        where the kernels are on and they pass their self-check, else ``torch._grouped_mm``'s grouped GEMMs,
        group "moe") | "grouped_mm" (the grouped GEMMs even where the Triton experts would pass: an A/B).
    cuda_graphs: replay decode steps from CUDA graphs (CUDA with Triton attention only).
    overlap_scheduling: launch each step before reading back the previous one's tokens (see
        `llm_engine.py`); None: on for CUDA, off for CPU.
    tensor_parallel_size: ranks the model is split over (Megatron-style, see `model_runner.py`): rank 0
        in this process, ranks 1..N-1 in worker processes; on CUDA rank r uses GPU device.index + r.
        The model's attention heads, KV heads and intermediate size must divide by it (`check_model`).
        The workers are spawned, so a script that builds such an engine must do it under
        ``if __name__ == "__main__":`` (a spawned process imports the main module again).
    symmetric_memory: under tensor parallelism on CUDA, sum the layers' partial outputs with a two-shot
        all-reduce over symmetric memory (`torch.ops.symm_mem`, the GPUs reading each other's memory over
        NVLink) instead of NCCL's; the same bits with two ranks, about half the time for decode-sized
        tensors. None: on where every rank can set it up (else NCCL, logged); True: the same, but an
        error where it cannot be set up; False: NCCL always.
    """

    model: str
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    num_kv_blocks: int | None = None
    mem_fraction_static: float = 0.85
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    seed: int = 0
    kernels: str = "auto"
    cuda_graphs: bool = True
    overlap_scheduling: bool | None = None
    tensor_parallel_size: int = 1
    symmetric_memory: bool | None = None
    load_format: str = "auto"
    moe_router_dtype: str | None = None
    moe_kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"EngineArgs.dtype must be 'auto' or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"EngineArgs.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _positive("block_size", self.block_size)
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _positive("tensor_parallel_size", self.tensor_parallel_size)
        if self.num_kv_blocks is not None:
            _positive("num_kv_blocks", self.num_kv_blocks)
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"EngineArgs.max_model_len must be None or an integer >= 2, got {self.max_model_len!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"EngineArgs.load_format must be one of {LOAD_FORMATS} ('auto': the checkpoint's "
                             f"*.safetensors, 'dummy': random weights), got {self.load_format!r}")
        if self.moe_router_dtype not in (None, "float32"):
            raise ValueError(f"EngineArgs.moe_router_dtype must be None or 'float32', got {self.moe_router_dtype!r}")
        if self.moe_kernel not in MOE_KERNELS:
            raise ValueError(f"EngineArgs.moe_kernel must be one of {MOE_KERNELS} ('grouped_mm': torch._grouped_mm's "
                             f"experts instead of the fused Triton ones), got {self.moe_kernel!r}")
        if self.kernels not in KERNEL_MODES:
            raise ValueError(f"EngineArgs.kernels must be one of {KERNEL_MODES}, got {self.kernels!r}")
        for name, value in (("overlap_scheduling", self.overlap_scheduling), ("symmetric_memory", self.symmetric_memory)):
            if not (value is None or isinstance(value, bool)):
                raise ValueError(f"EngineArgs.{name} must be None, True or False, got {value!r}")
        if not 0 < self.mem_fraction_static <= 1:
            raise ValueError(f"EngineArgs.mem_fraction_static must be in (0, 1], got {self.mem_fraction_static!r}")

    def torch_device(self) -> torch.device:
        """The device, with an explicit index for CUDA ("cuda" means the current CUDA device)."""
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"EngineArgs.device={self.device!r} but CUDA is not available; use device='cpu'")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def check_model(self, hf_config) -> None:
        """ValueError (one line) when the model cannot be split over `tensor_parallel_size` ranks."""
        tp = self.tensor_parallel_size
        for field in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            value = getattr(hf_config, field)
            if value % tp:
                raise ValueError(
                    f"EngineArgs.tensor_parallel_size={tp} does not divide the model's {field}={value} "
                    f"({self.model}/config.json); use a tensor_parallel_size that divides it"
                )

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"EngineArgs.{name} must be a positive integer, got {value!r}")
