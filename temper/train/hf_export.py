"""Hugging Face export: `save_pretrained`-compatible safetensors + config + tokenizer.

`export_hf` writes a live (sharded) model; `convert_checkpoint_to_hf` converts a DCP checkpoint
written by `checkpoint.save_checkpoint` without any process group (`temper convert`). Both write
weights in the dtype of the original `--hf-checkpoint` and copy its config, generation config and
tokenizer files, so the result loads with `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import AutoConfig, AutoModelForCausalLM

from temper.train.checkpoint import resolve_checkpoint
from temper.train.env import TrainEnv
from temper.train.weights import iter_full_parameters

MAX_SHARD_BYTES = 5 * 1024**3
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".index.json")


def checkpoint_dtype(hf_checkpoint: str | Path) -> torch.dtype:
    """The weight dtype recorded in `hf_checkpoint`'s config.json (float32 when absent)."""
    config = json.loads((Path(hf_checkpoint) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return getattr(torch, name)


def copy_hf_metadata(hf_checkpoint: str | Path, out_dir: str | Path) -> None:
    """Copy every top-level non-weight file (config, generation config, tokenizer, templates)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in Path(hf_checkpoint).iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(item, out_dir / item.name)


def write_safetensors(
    named_tensors: Iterable[tuple[str, Tensor]], out_dir: str | Path, max_shard_bytes: int = MAX_SHARD_BYTES
) -> None:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` shards + index when larger than a shard."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    sizes = [0]
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
            _save_shard(shards[-1], out_dir / f"shard-{len(shards):05d}.tmp")
            shards[-1] = {n: None for n in shards[-1]}  # keep names for the index, drop the data
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor.detach().cpu().contiguous()
        sizes[-1] += nbytes
    if len(shards) == 1:
        _save_shard(shards[0], out_dir / "model.safetensors")
        return
    _save_shard(shards[-1], out_dir / f"shard-{len(shards):05d}.tmp")
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        (out_dir / f"shard-{i:05d}.tmp").replace(out_dir / final)
        weight_map.update({name: final for name in shard})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _save_shard(tensors: dict[str, Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})


def export_hf(model: nn.Module, hf_checkpoint: str | Path, out_dir: str | Path, env: TrainEnv) -> None:
    """Every rank takes part in the gathers; rank 0 writes `out_dir`."""
    dtype = checkpoint_dtype(hf_checkpoint)
    tensors = ((name, t.cpu()) for name, t in iter_full_parameters(model, dtype))
    if env.rank == 0:
        write_safetensors(tensors, out_dir)
        copy_hf_metadata(hf_checkpoint, out_dir)
    else:
        for _ in tensors:
            pass
    env.barrier()


def convert_checkpoint_to_hf(ckpt_dir: str | Path, hf_checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Convert the actor of a temper checkpoint (a --save root, iter_* or role folder) to an HF folder.

    Runs in a single process with no process group. `hf_checkpoint` supplies the architecture (to
    drop tied parameters), the dtype, config and tokenizer. Returns `out_dir`.
    """
    role_dir = resolve_checkpoint(ckpt_dir, "actor")
    if role_dir is None:
        raise FileNotFoundError(f"{ckpt_dir}: no temper checkpoint here (no latest_checkpointed_iteration.txt)")
    metadata = dcp.FileSystemReader(str(role_dir / "model")).read_metadata()
    state = {
        name: torch.empty(md.size, dtype=md.properties.dtype)
        for name, md in metadata.state_dict_metadata.items()
        if isinstance(md, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load(state, checkpoint_id=role_dir / "model", no_dist=True)
    dtype = checkpoint_dtype(hf_checkpoint)
    names = _export_names(hf_checkpoint, state)
    write_safetensors(((name, state[name].to(dtype)) for name in names), out_dir)
    copy_hf_metadata(hf_checkpoint, out_dir)
    return Path(out_dir)


def _export_names(hf_checkpoint: str | Path, state: dict[str, Tensor]) -> list[str]:
    """Names of `state` to write, in the model's parameter order, without tied aliases."""
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf_checkpoint))
    unique = [name for name, _ in skeleton.named_parameters()]
    aliases = {name for name, _ in skeleton.named_parameters(remove_duplicate=False)} - set(unique)
    missing = [name for name in unique if name not in state]
    if missing:
        raise ValueError(f"checkpoint lacks parameters of {hf_checkpoint}'s architecture: {missing[:5]}")
    rest = sorted(set(state) - set(unique) - aliases)
    return unique + rest
