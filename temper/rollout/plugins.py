"""Loading rollout plug-ins by import path, with slime's built-in paths mapped to temper's.

A slime script that passes e.g. ``--rollout-function-path slime.rollout.sglang_rollout.generate_rollout``
or ``--dynamic-sampling-filter-path slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std``
gets temper's equivalent; any other path loads as given (``pkg.mod.fn`` or ``file.py:fn``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from temper.data import load_function

_FILTERS = "slime.rollout.filter_hub.dynamic_sampling_filters"
SLIME_ALIASES = {
    "slime.rollout.sglang_rollout.generate_rollout": "temper.rollout.rollout.generate_rollout",
    "slime.rollout.sglang_rollout.generate": "temper.rollout.generate.generate",
    "slime.rollout.sglang_rollout.eval_rollout": "temper.rollout.evaluation.eval_rollout_sync",
    "slime.rollout.sft_rollout.generate_rollout": "temper.rollout.sft_rollout.generate_rollout",
    f"{_FILTERS}.check_reward_nonzero_std": "temper.rollout.filters.check_reward_nonzero_std",
    f"{_FILTERS}.check_reward_nonzero_std_with_fallback": (
        "temper.rollout.filters.check_reward_nonzero_std_with_fallback"
    ),
    "slime.rollout.rm_hub.async_rm": "temper.rollout.rewards.hub.async_rm",
    "slime.rollout.rm_hub.batched_async_rm": "temper.rollout.rewards.hub.batched_async_rm",
}


def load_plugin(path: str, flag: str) -> Callable[..., Any]:
    """The callable `path` names (slime's built-in names map to temper's); PluginError naming `flag`."""
    return load_function(SLIME_ALIASES.get(path, path), flag=flag)


def accepts_kwarg(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes keyword `name` (explicitly or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
