"""Weights by Hugging Face parameter name: read safetensors folders, load into and read from the
engine's (partly fused) parameters.

`WeightMap` is the single translation from HF names to engine parameters: a fused projection's HF name
(``...self_attn.q_proj.weight``) maps to the engine parameter (``...self_attn.qkv_proj.weight``) and a
shard id; the parameter's own ``weight_loader`` / ``shard_view`` (see `models/layers.py`) does the rest.
With tied embeddings ``lm_head.weight`` is the embedding matrix. A parameter that stacks numbered HF
modules (an MoE block's experts: ``num_stacked`` = E on the parameter) takes HF's
``...experts.{e}.gate_proj.weight`` as ``...experts.gate_up_proj.weight`` with shard id (e, "gate"): the
index before the module name moves into the shard id. Under tensor parallelism every rank
loads the full HF tensors (its parameters keep their slices) and `get` gathers the full tensor back
(a collective: every rank calls it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from temper.engine.models.decoder import DecoderForCausalLM

# Buffers that some older checkpoints store; the engine computes them itself.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def iter_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, CPU tensor) for every tensor of every ``*.safetensors`` file in folder `path`."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}; expected a Hugging Face checkpoint folder")
    for file in files:
        try:
            opened = safe_open(str(file), framework="pt", device="cpu")
        except SafetensorError as e:
            raise ValueError(f"{file}: cannot be read as safetensors ({e}); the file is truncated or corrupt, "
                             f"copy it again") from e
        with opened as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield name, f.get_tensor(name)


class WeightMap:
    def __init__(self, model: DecoderForCausalLM):
        self.model = model
        self.params = dict(model.named_parameters())
        self.packed = model.packed_modules
        self.tied = model.tie_word_embeddings
        self._resolve_cache: dict[str, tuple[torch.nn.Parameter, object]] = {}

    def ignored(self, hf_name: str) -> bool:
        """A checkpoint tensor the engine does not use: a buffer it computes itself, or what the model class
        names unused (DeepSeek-V3's multi-token-prediction layer)."""
        return hf_name.endswith(IGNORED_SUFFIXES) or self.model.unused_weight(hf_name)

    def resolve(self, hf_name: str) -> tuple[torch.nn.Parameter, str | None]:
        """The engine parameter and shard id holding HF tensor `hf_name`; ValueError if none does."""
        name, shard_id = hf_name, None
        if self.tied and name == "lm_head.weight":
            name = "model.embed_tokens.weight"
        parts = name.split(".")
        for hf_module, (engine_module, shard) in self.packed.items():
            if hf_module in parts:
                parts[parts.index(hf_module)] = engine_module
                name, shard_id = ".".join(parts), shard
                break
        param = self.params.get(name)
        if param is None:
            param, shard_id = self._resolve_stacked(name, shard_id)
        if param is None:
            raise ValueError(
                f"unknown weight name {hf_name!r}: {type(self.model).__name__} has no such parameter "
                f"(expected Hugging Face names such as 'model.layers.0.self_attn.q_proj.weight')"
            )
        return param, shard_id

    def _resolve_stacked(self, name: str, shard_id: str | None) -> tuple[torch.nn.Parameter | None, object]:
        """``...experts.{e}.<module>.weight`` -> (the stacked ``...experts.<module>.weight``, (e, shard_id)),
        or (None, shard_id) when no stacked parameter holds expert e under that name."""
        parts = name.split(".")
        if len(parts) < 3 or not parts[-3].isdigit():
            return None, shard_id
        param = self.params.get(".".join(parts[:-3] + parts[-2:]))
        index = int(parts[-3])
        if param is None or index >= getattr(param, "num_stacked", 0):
            return None, shard_id
        return param, (index, shard_id)

    def hf_names(self) -> list[str]:
        """Every HF name the model needs (stacked and fused parameters expanded into their shards)."""
        inverse = {}
        for hf_module, (engine_module, shard) in self.packed.items():
            inverse.setdefault(engine_module, []).append(hf_module)
        names = []
        for name in self._unstacked_names():
            parts = name.split(".")
            fused = next((p for p in parts if p in inverse), None)
            if fused is None:
                names.append(name)
                continue
            for hf_module in inverse[fused]:
                names.append(".".join(hf_module if p == fused else p for p in parts))
        return names

    def _unstacked_names(self) -> list[str]:
        """The parameters' names, a stacked one (``num_stacked`` = E) as E numbered names."""
        names = []
        for name, param in self.params.items():
            stacked = getattr(param, "num_stacked", None)
            if stacked is None:
                names.append(name)
                continue
            parts = name.split(".")
            names += [".".join(parts[:-2] + [str(e)] + parts[-2:]) for e in range(stacked)]
        return names

    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy each (HF name, tensor) into the model (any dtype/device); returns the names loaded.

        A tensor already in its parameter's dtype and device, for a loader that only copies into a view
        (`layers.mark_view_copy`), is copied with the others like it in one `torch._foreach_copy_` (one
        launch for a bucket instead of one per tensor); the rest go through their parameter's loader, in order."""
        loaded: set[str] = set()
        batch: tuple[list, list] = ([], [])
        for hf_name, tensor in named_tensors:
            if self.ignored(hf_name):
                continue
            param, shard_id = self._resolved(hf_name)
            if hf_name in loaded:  # loaded twice in one call: the later copy must land last
                copy_all(batch)
            try:
                if getattr(param, "view_copy_loader", None) == param.weight_loader and _same_kind(tensor, param):
                    view = param.shard_view(param, shard_id)
                    if tuple(view.shape) != tuple(tensor.shape):
                        raise ValueError(f"expected shape {tuple(view.shape)}, got {tuple(tensor.shape)}")
                    batch[0].append(view)
                    batch[1].append(tensor)
                else:
                    copy_all(batch)
                    param.weight_loader(param, tensor, shard_id)
            except ValueError as e:
                raise ValueError(f"weight {hf_name!r}: {e}") from None
            loaded.add(hf_name)
        copy_all(batch)
        return loaded

    def _resolved(self, hf_name: str) -> tuple[torch.nn.Parameter, str | None]:
        """`resolve`, remembered per name (the parameters are fixed for the map's life)."""
        found = self._resolve_cache.get(hf_name)
        if found is None:
            found = self._resolve_cache[hf_name] = self.resolve(hf_name)
        return found

    def get(self, hf_name: str) -> torch.Tensor:
        """A copy of the full weight named `hf_name` (un-fused, un-sharded), on the model's device and dtype."""
        param, shard_id = self.resolve(hf_name)
        view = param.shard_view(param, shard_id).detach()
        tp = self.model.tp
        if param.tp_dim is None or tp.size == 1:
            return view.clone()
        full = getattr(param, "tp_full", None) or view.shape[param.tp_dim] * tp.size
        return tp.all_gather(view, param.tp_dim, full).contiguous()


def _same_kind(tensor: torch.Tensor, param: torch.Tensor) -> bool:
    return tensor.dtype == param.dtype and tensor.device == param.device and not tensor.requires_grad


def copy_all(batch: tuple[list, list]) -> None:
    """Copy batch[1][i] into batch[0][i] for every i, in one foreach call (casts included), and empty the batch."""
    views, tensors = batch
    if views:
        torch._foreach_copy_(views, tensors)
        views.clear()
        tensors.clear()
