"""Random weights in place of a checkpoint (``EngineArgs.load_format="dummy"``), as vLLM's and SGLang's
``--load-format dummy``: the engine needs only the model folder's config.json and tokenizer, so a model
too large to write to disk (a 61 GB Qwen3-30B-A3B on a 64 GB disk) can still be served and benchmarked.

Every parameter is initialised on the device in place, the way Hugging Face's ``_init_weights`` draws a
fresh model: RMSNorm scales 1, biases (and DeepSeek-V3's ``e_score_correction_bias``) 0, every matrix
(embeddings, projections, routers, stacked experts) normal with mean 0 and std the config's
``initializer_range`` (0.02 when it has none). Such a model decodes sanely in bf16 (no overflow, routers
spread tokens over the experts) but says nothing. The draws come from one generator seeded with
``EngineArgs.seed``, in parameter order, so the same seed gives the same weights; under tensor
parallelism each rank draws its own shard (the ranks then hold no single consistent model, which a
benchmark does not need). The weights can be replaced afterwards by any weight update, by HF name.
"""

from __future__ import annotations

import torch
from torch import nn

from temper.engine.models.layers import RMSNorm

DEFAULT_STD = 0.02  # HF's initializer_range default


@torch.no_grad()
def init_dummy_weights(model: nn.Module, hf_config, seed: int) -> None:
    """Fill every parameter of `model` in place (module docstring): norms 1, biases 0, matrices normal."""
    std = float(getattr(hf_config, "initializer_range", None) or DEFAULT_STD)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, RMSNorm)}
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    for param in model.parameters():
        if id(param) in norms:
            param.fill_(1.0)
        elif param.dim() == 1:  # a bias, or DeepSeek-V3's expert score correction: zero as HF starts it
            param.zero_()
        else:
            param.normal_(0.0, std, generator=generator)
