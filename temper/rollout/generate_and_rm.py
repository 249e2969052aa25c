"""One sample, one group: generate under the concurrency cap, then score (slime's `generate_and_rm`).

`generate_and_rm` runs the generate function (`--custom-generate-function-path`, else temper's
default) for one sample while holding the process-wide semaphore, then computes the reward of every
finished sample it produced. `generate_and_rm_group` does that for all samples of a group at once,
with a deterministic sampling seed per sample, and the group reward (`--group-rm`, or a class-style
reward model: one `compute_reward` call per group, in evaluation too) after. A list-style generate
function (`custom_generate(args, samples, evaluation=False)`, see `is_list_style`) gets the group's
unfinished samples in one call instead, holding one slot of the semaphore; the scoring is the same.
With temper's default generate function, a group's unfinished samples go out as one batched request
(`generate_many`), holding one slot per sample.

Contract on statuses: COMPLETED/TRUNCATED samples get a reward (unless the generate function set one);
ABORTED and FAILED samples get none. A sample that arrives COMPLETED/TRUNCATED with a reward (a
finished group recycled by partial rollout) is returned unchanged; an ABORTED one is continued.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import typing
from typing import Any

from temper.data import PluginError
from temper.rollout.generate import GenerateState, default_sampling_params, generate, generate_many, sampling_seed
from temper.rollout.plugins import accepts_kwarg, load_plugin
from temper.rollout.rewards import async_rm, batched_async_rm, call_maybe_async
from temper.rollout.rewards.hub import model_rewards, reward_model
from temper.types import Sample

FINISHED = (Sample.Status.COMPLETED, Sample.Status.TRUNCATED)


FLAG = "--custom-generate-function-path"
SIGNATURES = (
    "slime's per-sample `async def generate(args, sample, sampling_params[, evaluation=False]) -> Sample | "
    "list[Sample]`, or the list form `async def custom_generate(args, samples, evaluation=False) -> list[Sample]` "
    "(one group's samples in, the list out)"
)


def generate_function(args: Any):
    """The generate function: `--custom-generate-function-path` or temper's default (per-sample)."""
    path = getattr(args, "custom_generate_function_path", None)
    return load_plugin(path, flag=FLAG) if path else generate


def is_list_style(fn: Any, path: str = "") -> bool:
    """Whether `fn` is the list form `(args, samples, evaluation=False)` rather than the per-sample
    `(args, sample, sampling_params)`; PluginError naming the flag and both signatures otherwise.

    The rule reads the positional parameters: a second one named `samples` (or annotated as a list)
    is the list form, which may have no other required parameter; otherwise a third positional
    parameter other than `evaluation` makes it per-sample. Anything else (*args, fewer than two
    parameters, `(args, sample, evaluation=False)`, `(args, samples, sampling_params)`) is refused."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(positional) >= 2 and not varargs:
        if positional[1].name == "samples" or _is_list_annotation(positional[1].annotation):
            if len(required) <= 2:
                return True
        elif len(positional) >= 3 and positional[2].name != "evaluation" and len(required) <= 3:
            return False
    name = getattr(fn, "__name__", repr(fn))
    where = f" {path!r}" if path else ""
    raise PluginError(f"{FLAG}{where}: {name}{_signature(fn)} is neither accepted signature; write {SIGNATURES}; "
                      f"the list form is told apart by its second parameter, named `samples` or annotated as a list")


def _is_list_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):  # `from __future__ import annotations`
        text = annotation.replace("typing.", "")
        return text == "list" or text.startswith(("list[", "List[", "Sequence["))
    return annotation is list or typing.get_origin(annotation) in (list, collections.abc.Sequence)


def _signature(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(?)"


async def call_generate(args: Any, sample: Sample, sampling_params: dict[str, Any], evaluation: bool) -> list[Sample]:
    """The generate function's output as a list (a custom function may fan out into several samples;
    siblings without a rollout_id get the parent's index as theirs)."""
    fn = generate_function(args)
    kwargs = {"evaluation": evaluation} if accepts_kwarg(fn, "evaluation") else {}
    result = await call_maybe_async(fn, args, sample, sampling_params, **kwargs)
    samples = _checked_samples(fn, result)
    for s in samples:
        if s.rollout_id is None:
            s.rollout_id = sample.index
    return samples


def _checked_samples(fn: Any, result: Any) -> list[Sample]:
    samples = list(result) if isinstance(result, (list, tuple)) else [result]
    if not samples or not all(isinstance(s, Sample) for s in samples):
        raise TypeError(
            f"the generate function {getattr(fn, '__name__', fn)!r} must return a Sample or a non-empty list of "
            f"Samples, got {result!r:.200}"
        )
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
    await _score_each(args, samples, evaluation)
    return samples


async def generate_list_and_rm(
    args: Any, group: list[Sample], state: GenerateState, *, evaluation: bool
) -> list[Sample]:
    """The list-style generate function over the group's unfinished samples in one call (one semaphore
    slot: the call's own concurrency is its business), the finished ones kept; then scored as usual."""
    todo = [s for s in group if s.status not in FINISHED]
    done = [s for s in group if s.status in FINISHED]
    if todo and state.aborted:
        for s in todo:
            s.status = Sample.Status.ABORTED
    elif todo:
        fn = generate_function(args)
        kwargs = {"evaluation": evaluation} if accepts_kwarg(fn, "evaluation") else {}
        async with state.semaphore:
            result = await call_maybe_async(fn, args, todo, **kwargs)
        todo = _checked_samples(fn, result)
        for s in todo:
            if s.rollout_id is None:
                s.rollout_id = s.index
    samples = done + todo
    await _score_each(args, samples, evaluation)
    return samples


async def _score_each(args: Any, samples: list[Sample], evaluation: bool) -> None:
    """The per-sample reward of every finished unscored sample (not with --group-rm or a class-style
    reward model, which score the whole group, except a sample's own custom_rm_path)."""
    if getattr(args, "group_rm", False) and not evaluation:
        return
    todo = [s for s in samples if s.reward is None and s.status in FINISHED]
    if reward_model(args) is not None:  # scored with the whole group
        todo = [s for s in todo if s.metadata.get("custom_rm_path")]
    rewards = await asyncio.gather(*(async_rm(args, s) for s in todo))
    for s, reward in zip(todo, rewards):
        s.reward = reward


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
    if is_list_style(generate_function(args), getattr(args, "custom_generate_function_path", None) or ""):
        samples = await generate_list_and_rm(args, group, state, evaluation=evaluation)
        return await _group_scored(args, samples, evaluation)
    params = sampling_params if sampling_params is not None else default_sampling_params(args, evaluation=evaluation)
    base_seed = int(getattr(args, "rollout_seed", 42))
    seeded = [
        {**params, "sampling_seed": sampling_seed(base_seed, s.group_index, i, seed_salt)} for i, s in enumerate(group)
    ]
    for s, p in zip(group, seeded):  # kept with the sample: the rollout recording stores it
        s.metadata["sampling_seed"] = p["sampling_seed"]
    if generate_function(args) is generate and 1 < len(group) <= state.concurrency:
        samples = await generate_group_and_rm(args, group, seeded, state, evaluation=evaluation)
        return await _group_scored(args, samples, evaluation)
    results = await asyncio.gather(
        *(generate_and_rm(args, s, p, state, evaluation=evaluation) for s, p in zip(group, seeded))
    )
    return await _group_scored(args, [s for produced in results for s in produced], evaluation)


async def generate_group_and_rm(
    args: Any, group: list[Sample], params: list[dict[str, Any]], state: GenerateState, *, evaluation: bool
) -> list[Sample]:
    """`generate_and_rm` for a group's samples with temper's default generate function: the unfinished
    ones in one batched request (`generate_many`) under one semaphore slot each, then each scored."""
    todo = [(s, p) for s, p in zip(group, params) if s.status not in FINISHED]
    if todo and state.aborted:
        for s, _ in todo:
            s.status = Sample.Status.ABORTED
    elif todo:
        async with state.slots(len(todo)):
            if state.aborted:  # the rollout had enough while these waited for slots
                for s, _ in todo:
                    s.status = Sample.Status.ABORTED
            else:
                await generate_many(args, [s for s, _ in todo], [p for _, p in todo])
    await _score_each(args, group, evaluation)
    return group


async def _group_scored(args: Any, samples: list[Sample], evaluation: bool) -> list[Sample]:
    """`samples` with the group reward: `--group-rm` (training only) or the class-style reward model."""
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
