"""The reward hub: which reward function scores a sample, and calling it (slime's `rm_hub`).

Dispatch, first match wins: `sample.metadata["custom_rm_path"]` (per-sample, e.g. from an eval
dataset), `--custom-rm-path`, then the built-in named by `sample.metadata["rm_type"]` or `--rm-type`.
A ``boxed_`` prefix (``boxed_f1``) first replaces the response by its last `\\boxed{}` content.

Custom reward functions: ``async def rm(args, sample) -> float | dict`` (a plain function works
too); with `--group-rm`, ``rm(args, samples) -> list`` scores a whole group at once. A class (slime's
page: ``class CustomRewardModel`` with ``__init__(self, model_path)`` and
``compute_reward(self, prompts, responses) -> list[float]``) is a reward model: built once per process
with `--reward-model-path` (or None) and called once per group (`generate_and_rm_group`), off the
event loop and one call at a time unless `compute_reward` is async.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from temper.data import load_function
from temper.rollout.rewards import dapo, f1, gpqa, math_utils
from temper.rollout.rewards.remote import remote_rm
from temper.types import Sample

logger = logging.getLogger(__name__)

MATH_TIMEOUT_S = 10.0  # sympy can take very long on adversarial answers; such an answer scores 0

Reward = float | dict[str, Any]


async def _math(args: Any, sample: Sample, response: str) -> float:
    return await _off_loop(math_utils.grade_math, response, sample.label)


async def _deepscaler(args: Any, sample: Sample, response: str) -> float:
    return await _off_loop(math_utils.grade_deepscaler, response, sample.label)


async def _dapo(args: Any, sample: Sample, response: str) -> dict:
    return dapo.compute_score(response, sample.label)


async def _f1(args: Any, sample: Sample, response: str) -> float:
    return f1.f1_reward(response, sample.label)


async def _gpqa(args: Any, sample: Sample, response: str) -> float:
    return gpqa.gpqa_reward(response, sample.label, sample.metadata)


async def _remote(args: Any, sample: Sample, response: str) -> Reward:
    return await remote_rm(args, sample, response)


async def _random(args: Any, sample: Sample, response: str) -> float:
    return float(random.randint(0, 1))


BUILTIN_RMS: dict[str, Callable[[Any, Sample, str], Awaitable[Reward]]] = {
    "math": _math,
    "deepscaler": _deepscaler,
    "dapo": _dapo,
    "f1": _f1,
    "gpqa": _gpqa,
    "remote_rm": _remote,
    "random": _random,
}
RM_TYPES = tuple(BUILTIN_RMS)


async def async_rm(args: Any, sample: Sample, **kwargs: Any) -> Reward:
    """The reward of one sample (see the module docstring for which function computes it)."""
    custom = sample.metadata.get("custom_rm_path") or getattr(args, "custom_rm_path", None)
    if custom and inspect.isclass(load_function(custom, flag="--custom-rm-path")):
        return (await model_rewards(args, [sample], custom))[0]
    if custom:
        try:
            reward = await call_maybe_async(load_function(custom, flag="--custom-rm-path"), args, sample, **kwargs)
        except Exception as e:  # the user's own error, kept as it is, told where it came from
            e.add_note(f"raised by the --custom-rm-path function {custom!r} on sample {sample.index}")
            raise
        return checked_reward(reward, f"--custom-rm-path {custom!r}", sample)
    rm_type = sample.metadata.get("rm_type") or getattr(args, "rm_type", None)
    return await builtin_rm(args, sample, rm_type)


def checked_reward(reward: Any, source: str, sample: Sample) -> Reward:
    """`reward` when it is a number (not NaN) or a dict; a TypeError naming `source` and the sample else
    (a string or None would fail later, far from the function, or a "0.5" pass as a number)."""
    if isinstance(reward, dict):
        return reward
    try:
        if not isinstance(reward, (str, bytes)) and not math.isnan(float(reward)):
            return reward
    except (TypeError, ValueError, RuntimeError):  # None, a list, a tensor of several values
        pass
    raise TypeError(f"{source} returned {type(reward).__name__} {reward!r:.60} for sample {sample.index}; a reward "
                    f"function must return a number (not NaN) or a dict of them (with --reward-key naming the one "
                    f"to train on)")


async def builtin_rm(args: Any, sample: Sample, rm_type: str | None) -> Reward:
    """The built-in reward `rm_type` (optionally ``boxed_``-prefixed) of `sample`."""
    if not rm_type:
        raise ValueError(
            f"no reward function for sample {sample.index}: set --rm-type ({', '.join(RM_TYPES)}) or --custom-rm-path"
        )
    name, response = rm_type, sample.response
    if name.startswith("boxed_"):
        name, response = name[len("boxed_") :], math_utils.last_boxed(response) or ""
    if name not in BUILTIN_RMS:
        raise ValueError(
            f"unknown --rm-type {rm_type!r} (sample {sample.index}); valid: {', '.join(RM_TYPES)}, each also as "
            f"boxed_<type>; or write your own and pass --custom-rm-path"
        )
    return await BUILTIN_RMS[name](args, sample, response)


async def batched_async_rm(args: Any, samples: list[Sample]) -> list[Reward]:
    """Rewards of `samples`: one call of the group reward function with `--group-rm` and
    `--custom-rm-path`, else `async_rm` on each sample concurrently."""
    path = getattr(args, "custom_rm_path", None)
    if reward_model(args) is not None and not any(s.metadata.get("custom_rm_path") for s in samples):
        return await model_rewards(args, samples, path)
    if getattr(args, "group_rm", False) and path:
        rewards = await call_maybe_async(load_function(path, flag="--custom-rm-path"), args, samples)
        if not isinstance(rewards, (list, tuple)) or len(rewards) != len(samples):
            got = f"{len(rewards)} rewards" if isinstance(rewards, (list, tuple)) else type(rewards).__name__
            raise ValueError(
                f"--group-rm reward function {path!r} returned {got} for a group of {len(samples)} samples; "
                "return one per sample"
            )
        return [checked_reward(r, f"--group-rm reward function {path!r}", s) for r, s in zip(rewards, samples)]
    return list(await asyncio.gather(*(async_rm(args, s) for s in samples)))


_models: dict[tuple, Any] = {}
_model_lock = threading.Lock()


def reward_model(args: Any, path: str | None = None) -> Any | None:
    """The reward model instance when `path` (default `--custom-rm-path`) names a class, else None;
    built once per process with `--reward-model-path`."""
    path = path or getattr(args, "custom_rm_path", None)
    cls = load_function(path, flag="--custom-rm-path") if path else None
    if not inspect.isclass(cls):
        return None
    model_path = getattr(args, "reward_model_path", None)
    if (path, model_path) not in _models:
        if not callable(getattr(cls, "compute_reward", None)):
            raise TypeError(f"--custom-rm-path {path!r}: class {cls.__name__} needs a method "
                            "compute_reward(self, prompts, responses) -> list[float]")
        _models[path, model_path] = cls(model_path)
    return _models[path, model_path]


async def model_rewards(args: Any, samples: list[Sample], path: str | None = None) -> list[Reward]:
    """One `compute_reward(prompts, responses)` call of the reward model for `samples`."""
    model = reward_model(args, path)
    prompts, responses = [s.prompt for s in samples], [s.response for s in samples]
    if inspect.iscoroutinefunction(model.compute_reward):
        rewards = await model.compute_reward(prompts, responses)
    else:
        rewards = await asyncio.to_thread(_locked, model.compute_reward, prompts, responses)
    if not isinstance(rewards, (list, tuple)) or len(rewards) != len(samples):
        got = f"{len(rewards)} rewards" if isinstance(rewards, (list, tuple)) else type(rewards).__name__
        raise ValueError(f"{type(model).__name__}.compute_reward returned {got} for {len(samples)} responses; "
                         "return one float per response")
    return [float(r) for r in rewards]


def _locked(fn: Callable[..., Any], *args: Any) -> Any:
    with _model_lock:  # a user's model need not be thread-safe
        return fn(*args)


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), awaited if it returns an awaitable (plug-ins may be sync or async)."""
    result = fn(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def _off_loop(fn: Callable[..., float], *args: Any) -> float:
    """Run a CPU-heavy grader in a worker thread, bounded by MATH_TIMEOUT_S (then: 0.0, logged)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), MATH_TIMEOUT_S)
    except TimeoutError:
        logger.warning("math grading took over %.0fs on %r; scored 0", MATH_TIMEOUT_S, args[0][-200:])
        return 0.0
