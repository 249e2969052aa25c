"""The rollout's half of rollout routing replay (R3, slime's ``--use-rollout-routing-replay``): each
``/generate`` request asks for ``return_routed_experts`` and the answer's ``meta_info.routed_experts``
(SGLang's format: base64 of little-endian int32 [tokens - 1, num_hidden_layers, top_k], every token the
model computed -- the prompt and the output but the last sampled token -- and -1 on dense layers) goes
on the sample as ``Sample.rollout_routed_experts``. A continued sample (partial rollout, multi-turn)
sends all its tokens again, so the last answer covers the whole sample but what was appended after it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from pathlib import Path

import numpy as np


@functools.cache
def routing_shape(hf_checkpoint: str) -> tuple[int, int]:
    """(num_hidden_layers, top_k) of the MoE model in folder `hf_checkpoint` (its config.json);
    ValueError for a model without experts."""
    path = Path(hf_checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--use-rollout-routing-replay: cannot read {path} ({e}); set --hf-checkpoint") from e
    config = config.get("text_config", config)
    top_k = config.get("num_experts_per_tok")
    if not top_k or not config.get("num_hidden_layers"):
        raise ValueError(
            f"--use-rollout-routing-replay replays a mixture of experts' routing, but {path} describes no experts "
            "(no num_experts_per_tok); drop the flag for a dense model"
        )
    return int(config["num_hidden_layers"]), int(top_k)


def decode(text: str, num_tokens: int, num_layers: int, top_k: int) -> np.ndarray:
    """``meta_info.routed_experts`` as int32 [num_tokens, num_layers, top_k]; ValueError when it is not
    base64 or holds another number of ids."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError) as e:
        raise ValueError(f"meta_info.routed_experts is not base64 ({e})") from e
    if len(raw) % 4:
        raise ValueError(f"meta_info.routed_experts holds {len(raw)} bytes, not a whole number of int32 ids")
    flat = np.frombuffer(raw, dtype="<i4")
    if flat.size != num_tokens * num_layers * top_k:
        raise ValueError(
            f"meta_info.routed_experts holds {flat.size} expert ids; the sample's {num_tokens} computed tokens x "
            f"{num_layers} layers x top-{top_k} make {num_tokens * num_layers * top_k}"
        )
    return flat.reshape(num_tokens, num_layers, top_k).astype(np.int32)
