"""`--custom-convert-samples-to-train-data-path`: slime's plug point that turns a rollout's samples into the
trainer's data, replacing reward post-processing and the conversion (`RolloutManager.to_batch`).

    fn(args, samples: list[Sample]) -> dict

The dict is slime's train data, one list entry per training sample (which need not be one per sample):
"tokens" (prompt + response ids), "response_lengths", "rewards" (what the advantage estimator uses) and
"loss_masks" (one 0/1 per response token) are required; "raw_reward" (logged; default: "rewards"),
"truncated", "sample_indices" (default: the samples' indices when the counts match, else 0..N-1) and
"rollout_log_probs" (one per response token) are optional. Other keys are ignored. Group indices and
weight versions come from the samples, found by sample index.

The function is loaded and its parameters checked when the rollout manager starts (`load_converter`); a
result of the wrong shape is a TypeError naming the flag, the key and what was expected.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from temper.data import PluginError
from temper.rollout.plugins import load_plugin
from temper.types import RolloutBatch, Sample

FLAG = "--custom-convert-samples-to-train-data-path"
SIGNATURE = (
    'fn(args, samples) -> dict with "tokens", "response_lengths", "rewards", "loss_masks" (one entry per training '
    'sample) and optionally "raw_reward", "truncated", "sample_indices", "rollout_log_probs"'
)
REQUIRED = ("tokens", "response_lengths", "rewards", "loss_masks")
OPTIONAL = ("raw_reward", "truncated", "sample_indices", "rollout_log_probs")


def load_converter(args: Any) -> Callable[..., dict] | None:
    """The user's conversion function, or None when the flag is not set; PluginError when it cannot be
    loaded or cannot be called as fn(args, samples)."""
    path = getattr(args, "custom_convert_samples_to_train_data_path", None)
    if not path:
        return None
    fn = load_plugin(path, flag=FLAG)
    if inspect.iscoroutinefunction(fn):
        raise PluginError(f"{FLAG} {path!r}: {fn.__name__} is async (it is called synchronously); expected slime's "
                          f"{SIGNATURE}")
    try:
        inspect.signature(fn).bind("args", "samples")
    except TypeError as e:
        raise PluginError(f"{FLAG} {path!r}: {getattr(fn, '__name__', fn)} cannot be called as fn(args, samples) "
                          f"({e}); expected slime's {SIGNATURE}") from None
    except ValueError:  # no signature to read (a builtin): let the call decide
        pass
    return fn


def batch_from_train_data(data: Any, samples: list[Sample]) -> RolloutBatch:
    """The trainer's batch from what the conversion function returned for `samples`."""
    if not isinstance(data, dict):
        raise _error(f"returned {type(data).__name__}")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise _error(f"returned a dict without {', '.join(map(repr, missing))} (keys: {sorted(data)})")
    n = _length(data, "tokens")
    for key in (*REQUIRED, *OPTIONAL):
        if key in data and _length(data, key) != n:
            raise _error(f"{key!r} has {_length(data, key)} entries but 'tokens' has {n}")
    tokens = [torch.as_tensor(t, dtype=torch.long).reshape(-1) for t in data["tokens"]]
    lengths = [int(r) for r in data["response_lengths"]]
    masks = _per_token(data, "loss_masks", lengths, tokens)
    rewards = torch.tensor([float(r) for r in data["rewards"]], dtype=torch.float32)
    by_index = {s.index: s for s in samples}
    indices = list(data.get("sample_indices") or ([s.index for s in samples] if len(samples) == n else range(n)))
    return RolloutBatch(
        tokens=tokens,
        response_lengths=lengths,
        loss_masks=masks,
        rewards=rewards,
        raw_rewards=torch.tensor([float(r) for r in data.get("raw_reward", rewards.tolist())], dtype=torch.float32),
        group_indices=[by_index[i].group_index if i in by_index else i for i in indices],
        sample_indices=indices,
        rollout_log_probs=(
            _per_token(data, "rollout_log_probs", lengths, tokens) if "rollout_log_probs" in data else None
        ),
        truncated=[bool(t) for t in data.get("truncated", [False] * n)],
        weight_versions=[list(by_index[i].weight_versions) if i in by_index else [] for i in indices],
    )


def _per_token(data: dict, key: str, lengths: list[int], tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    """data[key] as [R_i] float32 tensors, each as long as its response (which fits in its tokens)."""
    out = []
    for i, (values, length, ids) in enumerate(zip(data[key], lengths, tokens)):
        values = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        if len(values) != length or not 0 <= length <= len(ids):
            raise _error(f"{key!r}[{i}] has {len(values)} entries for response_lengths[{i}] = {length} "
                         f"(tokens[{i}] has {len(ids)})")
        out.append(values)
    return out


def _length(data: dict, key: str) -> int:
    try:
        return len(data[key])
    except TypeError:
        raise _error(f"{key!r} is {type(data[key]).__name__}, expected a list") from None


def _error(what: str) -> TypeError:
    return TypeError(f"{FLAG}: the function {what}; expected slime's {SIGNATURE}")
