"""The eval rollout (`generate_rollout(..., evaluation=True)`): every `--eval-prompt-data` dataset.

Each dataset (``NAME PATH`` pairs) is loaded once per process and cached; its field names come from
`--eval-input-key` / `--eval-label-key` (default: the training keys) and prompts longer than
`--eval-max-prompt-len` are dropped. Every prompt is copied `--n-samples-per-eval-prompt` times
(group_index = prompt position, index = position × n + copy) and generated with the eval sampling
overrides (`--eval-temperature`, `--eval-top-p`, `--eval-top-k`, `--eval-max-response-len`), all
datasets and samples concurrently under the same concurrency cap as training. Rewards use the
per-sample reward dispatch and `--eval-reward-key` (default `--reward-key`); a sample without a
reward (aborted, failed) counts as 0. `--group-rm` does not apply to evaluation.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from typing import Any

from temper.data import PromptDataset, PromptFormat, load_tokenizer
from temper.rollout.async_loop import run
from temper.rollout.base_types import RolloutFnEvalOutput
from temper.rollout.generate import GenerateState, default_sampling_params, get_state
from temper.rollout.generate_and_rm import generate_and_rm_group
from temper.types import Sample

_datasets: dict[tuple, PromptDataset] = {}


def eval_datasets(args: Any) -> dict[str, str]:
    """{name: path} of `--eval-prompt-data` (a lone path is named after its file)."""
    named = getattr(args, "eval_datasets", None)
    if named is not None:
        return dict(named)
    items = list(getattr(args, "eval_prompt_data", None) or [])
    return dict(zip(items[0::2], items[1::2]))


def load_eval_dataset(args: Any, name: str, path: str) -> PromptDataset:
    """The prompts of eval dataset `name` at `path`, loaded once per process (per field names)."""
    fmt = dataclasses.replace(
        PromptFormat.from_args(args),
        input_key=getattr(args, "eval_input_key", None) or getattr(args, "input_key", "input"),
        label_key=getattr(args, "eval_label_key", None) or getattr(args, "label_key", None),
    )
    max_len = getattr(args, "eval_max_prompt_len", None)
    key = (name, path, repr(fmt), max_len)
    if key not in _datasets:
        needs_tokenizer = fmt.apply_chat_template or max_len is not None
        tokenizer = (
            load_tokenizer(getattr(args, "hf_checkpoint", None), needed_by=f"eval dataset {name}")
            if needs_tokenizer
            else None
        )
        _datasets[key] = PromptDataset(path, fmt, tokenizer=tokenizer, max_prompt_len=max_len)
    return _datasets[key]


async def eval_rollout(args: Any, rollout_id: int) -> RolloutFnEvalOutput:
    """Generate and score every eval dataset; data[name] = {"rewards", "truncated", "samples"}."""
    if getattr(args, "group_rm", False):
        raise ValueError(
            "--group-rm scores whole training groups and does not apply to evaluation; "
            "use a per-sample --custom-rm-path for eval"
        )
    datasets = eval_datasets(args)
    if not datasets:
        raise ValueError("evaluation needs --eval-prompt-data NAME PATH [NAME PATH ...]")
    state = await get_state(args)
    state.aborted = False
    results = await asyncio.gather(*(_eval_dataset(args, name, path, state) for name, path in datasets.items()))
    data = dict(zip(datasets, results))
    return RolloutFnEvalOutput(data=data, metrics=eval_metrics(data))


def eval_rollout_sync(
    args: Any, rollout_id: int, data_source: Any = None, evaluation: bool = True
) -> RolloutFnEvalOutput:
    """`eval_rollout` for callers outside the rollout loop (signature of a rollout function)."""
    return run(eval_rollout(args, rollout_id))


async def _eval_dataset(args: Any, name: str, path: str, state: GenerateState) -> dict[str, list]:
    dataset = load_eval_dataset(args, name, path)
    n = int(getattr(args, "n_samples_per_eval_prompt", 1))
    params = default_sampling_params(args, evaluation=True)
    groups = [_copies(dataset[i], name, i, n) for i in range(len(dataset))]
    produced = await asyncio.gather(
        *(
            generate_and_rm_group(args, g, state, evaluation=True, sampling_params=params, seed_salt=f"eval/{name}")
            for g in groups
        )
    )
    samples = [s for group in produced for s in group]
    key = getattr(args, "eval_reward_key", None) or getattr(args, "reward_key", None)
    return {
        "rewards": [s.get_reward_value(key) if s.reward is not None else 0.0 for s in samples],
        "truncated": [s.status == Sample.Status.TRUNCATED for s in samples],
        "samples": samples,
    }


def _copies(prompt: Sample, name: str, position: int, n: int) -> list[Sample]:
    group = []
    for j in range(n):
        sample = copy.deepcopy(prompt)
        sample.group_index, sample.index = position, position * n + j
        sample.session_id = f"eval-{name}-{position}"  # one engine per prompt, apart from training's keys
        group.append(sample)
    return group


def eval_metrics(data: dict[str, dict[str, list]]) -> dict[str, float]:
    """eval/<name> (mean reward), eval/<name>/truncated_ratio, eval/<name>/response_len_mean."""
    metrics: dict[str, float] = {}
    for name, result in data.items():
        count = max(len(result["rewards"]), 1)
        metrics[f"eval/{name}"] = sum(result["rewards"]) / count
        metrics[f"eval/{name}/truncated_ratio"] = sum(result["truncated"]) / count
        metrics[f"eval/{name}/response_len_mean"] = sum(s.response_length for s in result["samples"]) / count
    return metrics
