"""Loading a Hugging Face causal LM for training, and running it on a packed micro-batch.

The model is used as Hugging Face ships it, with temper's varlen attention (attention.py) as its
attention implementation by default: the forward gets `input_ids`, per-sequence `position_ids` and
the row's sequence bounds (packed, see packing.py) and computes logits for one position only
(`logits_to_keep=1`); the final hidden states are read with a forward hook on the decoder, and the
log-probs of the response tokens come from `log_probs.token_log_probs` over the lm-head weight.

A mixture-of-experts model runs its routed experts as grouped GEMMs over the tokens sorted by expert
(transformers' ``experts_implementation="grouped_mm"``: `torch._grouped_mm` on GPU, the same sums in a loop
elsewhere), not Hugging Face's default loop over the experts; ``TEMPER_EXPERTS=eager`` (or another name
transformers knows) loads that one instead, for an A/B (benchmarks/train_throughput.py). With
``router_dtype="fp32"`` (--moe-router-dtype fp32) every router computes in fp32 (`moe_routing.route_in_fp32`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM

from temper.train import attention
from temper.train.log_probs import token_log_probs
from temper.train.moe_routing import route_in_fp32
from temper.train.packing import MicroBatch

DEFAULT_ATTENTION = attention.VARLEN
DEFAULT_EXPERTS = "grouped_mm"


def resolve_attention(attn_implementation: str | None) -> str:
    """The Hugging Face attention name to load a model with (default: temper's varlen attention)."""
    name = attn_implementation or DEFAULT_ATTENTION
    if name == attention.VARLEN:
        attention.register()
    return name


def packed_forward_kwargs(mb: MicroBatch) -> dict:
    """Keyword arguments of a Hugging Face forward over the packed row of `mb` (no KV cache)."""
    return {
        "input_ids": mb.input_ids,
        "position_ids": mb.position_ids,
        "use_cache": False,
        **attention.varlen_kwargs(mb.cu_seqlens, mb.max_seqlen),
    }


def load_causal_lm(
    path: str | Path, dtype: torch.dtype, attn_implementation: str | None = None, *, router_dtype: str | None = None
) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(path)` in `dtype`, on CPU, with the KV cache off; an MoE model with
    its experts as grouped GEMMs, and its routers in fp32 when `router_dtype` is "fp32" (module docstring)."""
    config = AutoConfig.from_pretrained(path)
    _check_supported(config, path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=resolve_attention(attn_implementation), **moe_load_options(config)
    )
    model.config.use_cache = False
    if router_dtype == "fp32":
        route_in_fp32(model)
    return model


def moe_load_options(config) -> dict:
    """`from_pretrained` options of an MoE model (its experts' implementation, `TEMPER_EXPERTS`); none otherwise."""
    return {"experts_implementation": os.environ.get("TEMPER_EXPERTS", DEFAULT_EXPERTS)} if is_moe(config) else {}


def is_moe(config) -> bool:
    """Whether `config` is a mixture-of-experts model (it has routed experts)."""
    text = getattr(config, "text_config", None) or config
    return any(getattr(text, name, None) for name in ("num_experts", "n_routed_experts", "num_local_experts"))


def _check_supported(config, path: str | Path) -> None:
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) not in (None, 1.0):
            raise ValueError(
                f"{path}: config.{name}={getattr(config, name)} changes the logits after the lm head; temper's "
                "chunked log-probs assume logits = lm_head(hidden) and do not support this model yet"
            )


def final_hidden_states(model: nn.Module, mb: MicroBatch) -> Tensor:
    """[S, H] output of the decoder (after its final norm) for the packed row of `mb`."""
    captured: list[Tensor] = []

    def grab(_module, _args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = model.get_decoder().register_forward_hook(grab)
    try:
        model(**packed_forward_kwargs(mb), logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0][0]


def policy_log_probs(
    model: nn.Module,
    mb: MicroBatch,
    *,
    temperature: float,
    chunk_size: int | None = None,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs [Tr] (and entropy [Tr]) of the response tokens of `mb`, fp32, logits / temperature."""
    hidden = final_hidden_states(model, mb).index_select(0, mb.response_index)
    head = model.get_output_embeddings()
    return token_log_probs(
        hidden,
        head.weight,
        mb.targets,
        bias=getattr(head, "bias", None),
        temperature=temperature,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
