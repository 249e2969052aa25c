"""One sample, one group: generate under the concurrency cap, then score (slime's `generate_and_rm`).

`generate_and_rm` runs the generate function (`--custom-generate-function-path`, else temper's
default) for one sample while holding the process-wide semaphore, then computes the reward of every
finished sample it produced. `generate_and_rm_group` does that for all samples of a group at once,
with a deterministic sampling seed per sample, and the group reward (`--group-rm`, or a class-style
reward model: one `compute_reward` call per group, in evaluation too) after.

Contract on statuses: COMPLETED/TRUNCATED samples get a reward (unless the generate function set one);
ABORTED and FAILED samples get none. A sample that arrives COMPLETED/TRUNCATED with a reward (a
finished group recycled by partial rollout) is returned unchanged; an ABORTED one is continued.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temper.rollout.generate import GenerateState, default_sampling_params, generate, sampling_seed
from temper.rollout.plugins import accepts_kwarg, load_plugin
from temper.rollout.rewards import async_rm, batched_async_rm, call_maybe_async
from temper.rollout.rewards.hub import model_rewards, reward_model
from temper.types import Sample

FINISHED = (Sample.Status.COMPLETED, Sample.Status.TRUNCATED)


def generate_function(args: Any):
    """The per-sample generate function: `--custom-generate-function-path` or temper's default."""
    path = getattr(args, "custom_generate_function_path", None)
    return load_plugin(path, flag="--custom-generate-function-path") if path else generate


async def call_generate(args: Any, sample: Sample, sampling_params: dict[str, Any], evaluation: bool) -> list[Sample]:
    """The generate function's output as a list (a custom function may fan out into several samples;
    siblings without a rollout_id get the parent's index as theirs)."""
    fn = generate_function(args)
    kwargs = {"evaluation": evaluation} if accepts_kwarg(fn, "evaluation") else {}
    result = await call_maybe_async(fn, args, sample, sampling_params, **kwargs)
    samples = list(result) if isinstance(result, (list, tuple)) else [result]
    if not samples or not all(isinstance(s, Sample) for s in samples):
        raise TypeError(
            f"the generate function {getattr(fn, '__name__', fn)!r} must return a Sample or a non-empty list of "
            f"Samples, got {result!r:.200}"
        )
    for s in samples:
        if s.rollout_id is None:
            s.rollout_id = sample.index
    return samples


async def generate_and_rm(
    args: Any, sample: Sample, sampling_params: dict[str, Any], state: GenerateState, *, evaluation: bool = False
) -> list[Sample]:
    """Generate (unless already finished) and score one sample; see the module contract."""
    if sample.status in FINISHED:
        samples = [sample]
    elif state.aborted:
        sample.status = Sample.Status.ABORTED
        return [sample]
    else:
        async with state.semaphore:
            if state.aborted:  # the rollout had enough while this one waited for a slot
                sample.status = Sample.Status.ABORTED
                return [sample]
            samples = await call_generate(args, sample, sampling_params, evaluation)
    if getattr(args, "group_rm", False) and not evaluation:
        return samples
    todo = [s for s in samples if s.reward is None and s.status in FINISHED]
    if reward_model(args) is not None:  # scored with the whole group
        todo = [s for s in todo if s.metadata.get("custom_rm_path")]
    rewards = await asyncio.gather(*(async_rm(args, s) for s in todo))
    for s, reward in zip(todo, rewards):
        s.reward = reward
    return samples


async def generate_and_rm_group(
    args: Any,
    group: list[Sample],
    state: GenerateState,
    *,
    evaluation: bool = False,
    sampling_params: dict[str, Any] | None = None,
    seed_salt: str = "",
) -> list[Sample]:
    """All samples of one prompt group, generated concurrently and scored; returns the (possibly
    fanned-out) samples. With `--group-rm` the group is scored in one call once every sample finished."""
    params = sampling_params if sampling_params is not None else default_sampling_params(args, evaluation=evaluation)
    base_seed = int(getattr(args, "rollout_seed", 42))
    seeded = [
        {**params, "sampling_seed": sampling_seed(base_seed, s.group_index, i, seed_salt)} for i, s in enumerate(group)
    ]
    results = await asyncio.gather(
        *(generate_and_rm(args, s, p, state, evaluation=evaluation) for s, p in zip(group, seeded))
    )
    samples = [s for produced in results for s in produced]
    if getattr(args, "group_rm", False) and not evaluation:
        await _group_reward(args, samples)
    elif reward_model(args) is not None:
        todo = [s for s in samples if s.reward is None and s.status in FINISHED]
        for s, reward in zip(todo, await model_rewards(args, todo) if todo else []):
            s.reward = reward
    return samples


async def _group_reward(args: Any, samples: list[Sample]) -> None:
    if any(s.reward is None for s in samples) and all(s.status in FINISHED for s in samples):
        rewards = await batched_async_rm(args, samples)
        for s, reward in zip(samples, rewards):
            if s.reward is None:
                s.reward = reward
