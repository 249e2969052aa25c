"""The eval rollout (`generate_rollout(..., evaluation=True)`): every eval dataset.

The datasets are `--eval-config`'s (per-dataset keys, reward, samples per prompt and sampling; see
`temper.eval_config`) or `--eval-prompt-data`'s ``NAME PATH`` pairs, whose settings come from the flags:
field names from `--eval-input-key` / `--eval-label-key` (default: the training keys), samples per
prompt from `--n-samples-per-eval-prompt`, sampling from the eval overrides (`--eval-temperature`,
`--eval-top-p`, `--eval-top-k`, `--eval-max-response-len`, else the rollout's). Each dataset is loaded
once per process and cached; prompts longer than `--eval-max-prompt-len` are dropped. Every prompt is
copied n times (group_index = prompt position, index = position × n + copy), all datasets and samples
generated concurrently under the same concurrency cap as training. Rewards use the per-sample reward
dispatch (a dataset's rm_type / custom_rm_path go into each sample's metadata) and `--eval-reward-key`
(default `--reward-key`); a sample without a reward (aborted, failed) counts as 0. `--group-rm` does not
apply to evaluation.

Metrics per dataset: eval/<name> (mean reward), eval/<name>/truncated_ratio,
eval/<name>/response_len_mean and eval/<name>/pass@k for k = 1, 2, 4, ... up to n (`pass_at_k`: a sample
passes at reward 1). slime logs pass@k for eval only with --log-passrate, as eval/<name>-pass@k; temper
always logs it, under its eval/<name>/ prefix.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
from typing import Any

from temper.data import PromptDataset, PromptFormat, load_tokenizer
from temper.eval_config import EvalDataset, eval_datasets_of, flag_defaults
from temper.rollout.async_loop import run
from temper.rollout.base_types import RolloutFnEvalOutput
from temper.rollout.generate import GenerateState, default_sampling_params, get_state
from temper.rollout.generate_and_rm import generate_and_rm_group
from temper.rollout.pass_at_k import pass_at_k_metrics
from temper.types import Sample

_datasets: dict[tuple, PromptDataset] = {}


def eval_datasets(args: Any) -> dict[str, str]:
    """{name: path} of the eval datasets (`--eval-config`, else `--eval-prompt-data`)."""
    return {d.name: d.path for d in eval_datasets_of(args)}


def load_eval_dataset(args: Any, name: str, path: str) -> PromptDataset:
    """The prompts of eval dataset `name` at `path`, loaded once per process (per field names)."""
    spec = next((d for d in eval_datasets_of(args) if d.name == name), None)
    spec = EvalDataset(name=name, path=path, **flag_defaults(args)) if spec is None else spec
    return _load(args, dataclasses.replace(spec, path=path))


def _load(args: Any, spec: EvalDataset) -> PromptDataset:
    fmt = PromptFormat(
        input_key=spec.input_key,
        label_key=spec.label_key,
        metadata_key=spec.metadata_key,
        tool_key=spec.tool_key,
        apply_chat_template=spec.apply_chat_template,
        apply_chat_template_kwargs=spec.apply_chat_template_kwargs,
    )
    max_len = getattr(args, "eval_max_prompt_len", None)
    key = (spec.name, spec.path, repr(fmt), max_len)
    if key not in _datasets:
        needs_tokenizer = fmt.apply_chat_template or max_len is not None
        tokenizer = (
            load_tokenizer(getattr(args, "hf_checkpoint", None), needed_by=f"eval dataset {spec.name}")
            if needs_tokenizer
            else None
        )
        _datasets[key] = PromptDataset(spec.path, fmt, tokenizer=tokenizer, max_prompt_len=max_len)
    return _datasets[key]


def eval_work(args: Any) -> tuple[int, int | None]:
    """What the eval rollout generates: its samples (every dataset's prompts x its samples per prompt) and
    the most tokens one of them may generate (None: some dataset has no limit). The live line's totals."""
    samples, longest = 0, 0
    for spec in eval_datasets_of(args):
        samples += len(_load(args, spec)) * spec.n_samples_per_eval_prompt
        limit = {**default_sampling_params(args, evaluation=True), **spec.sampling_overrides()}["max_new_tokens"]
        longest = None if limit is None or longest is None else max(longest, int(limit))
    return samples, longest or None


async def eval_rollout(args: Any, rollout_id: int) -> RolloutFnEvalOutput:
    """Generate and score every eval dataset; data[name] = {"rewards", "truncated", "samples"}."""
    if getattr(args, "group_rm", False):
        raise ValueError(
            "--group-rm scores whole training groups and does not apply to evaluation; "
            "use a per-sample --custom-rm-path for eval"
        )
    datasets = eval_datasets_of(args)
    if not datasets:
        raise ValueError("evaluation needs --eval-prompt-data NAME PATH [NAME PATH ...] or --eval-config FILE.yaml")
    state = await get_state(args)
    state.aborted = False
    results = await asyncio.gather(*(_eval_dataset(args, spec, state) for spec in datasets))
    data = {spec.name: result for spec, result in zip(datasets, results)}
    return RolloutFnEvalOutput(data=data, metrics=eval_metrics(data, args))


def eval_rollout_sync(
    args: Any, rollout_id: int, data_source: Any = None, evaluation: bool = True
) -> RolloutFnEvalOutput:
    """`eval_rollout` for callers outside the rollout loop (signature of a rollout function)."""
    return run(eval_rollout(args, rollout_id))


async def _eval_dataset(args: Any, spec: EvalDataset, state: GenerateState) -> dict[str, list]:
    dataset = _load(args, spec)
    n = spec.n_samples_per_eval_prompt
    params = {**default_sampling_params(args, evaluation=True), **spec.sampling_overrides()}
    metadata = spec.sample_metadata()
    groups = [_copies(dataset[i], spec.name, i, n, metadata) for i in range(len(dataset))]
    produced = await asyncio.gather(
        *(
            generate_and_rm_group(
                args, g, state, evaluation=True, sampling_params=params, seed_salt=f"eval/{spec.name}"
            )
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


def _copies(prompt: Sample, name: str, position: int, n: int, metadata: dict[str, Any]) -> list[Sample]:
    group = []
    for j in range(n):
        sample = copy.deepcopy(prompt)
        sample.group_index, sample.index = position, position * n + j
        sample.session_id = f"eval-{name}-{position}"  # one engine per prompt, apart from training's keys
        sample.metadata = {**(sample.metadata or {}), **copy.deepcopy(metadata)}
        group.append(sample)
    return group


def eval_metrics(data: dict[str, dict[str, list]], args: Any = None) -> dict[str, float]:
    """eval/<name> (mean reward), eval/<name>/truncated_ratio, eval/<name>/response_len_mean (when the
    data has its samples) and eval/<name>/pass@k (see the module docstring)."""
    metrics: dict[str, float] = {}
    for name, result in data.items():
        rewards = list(result["rewards"])
        count = max(len(rewards), 1)
        metrics[f"eval/{name}"] = sum(rewards) / count
        if "truncated" in result:
            metrics[f"eval/{name}/truncated_ratio"] = sum(result["truncated"]) / count
        if result.get("samples") is not None:
            metrics[f"eval/{name}/response_len_mean"] = sum(s.response_length for s in result["samples"]) / count
        metrics.update(pass_at_k_metrics(rewards, _groups(name, result, args), f"eval/{name}/"))
    return metrics


def _groups(name: str, result: dict[str, list], args: Any) -> list[Any]:
    """Each reward's prompt: its sample's group_index, else consecutive runs of the dataset's n (an eval
    function that returns rewards alone)."""
    samples = result.get("samples")
    if samples is not None and len(samples) == len(result["rewards"]):
        if all(s.group_index is not None for s in samples):
            return [s.group_index for s in samples]
    n = 1
    if args is not None:
        spec = next((d for d in eval_datasets_of(args) if d.name == name), None)
        n = spec.n_samples_per_eval_prompt if spec is not None else int(getattr(args, "n_samples_per_eval_prompt", 1))
    return [i // n for i in range(len(result["rewards"]))]
