"""Dynamic-sampling filters (`--dynamic-sampling-filter-path`): keep or drop a finished group.

A filter is ``fn(args, group: list[Sample], **kwargs) -> DynamicFilterOutput | bool``. A dropped
group is counted under its `reason` (``rollout/dynamic_filter/drop_<reason>``); with
`keep_when_insufficient` it is kept anyway when dropping it would force another sampling round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from temper.types import Sample

STD_EPS = 1e-6


@dataclass
class DynamicFilterOutput:
    keep: bool
    reason: str | None = None
    keep_when_insufficient: bool = False


def as_filter_output(result: Any) -> DynamicFilterOutput:
    """A filter's result as `DynamicFilterOutput` (a bare bool is the legacy form)."""
    if isinstance(result, DynamicFilterOutput):
        return result
    if isinstance(result, bool):
        return DynamicFilterOutput(keep=result, reason=None if result else "filtered")
    raise TypeError(f"a dynamic sampling filter returned {type(result).__name__}; expected DynamicFilterOutput or bool")


def _group_rewards(args: Any, group: list[Sample]) -> list[float]:
    key = getattr(args, "reward_key", None)
    return [s.get_reward_value(key) for s in group if s.reward is not None]


def check_reward_nonzero_std(args: Any, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    """Keep a group iff its rewards vary (std > 1e-6): a group with one reward teaches GRPO nothing.
    Reason when dropped: ``zero_std_<reward>`` (e.g. ``zero_std_0.0``)."""
    rewards = _group_rewards(args, samples)
    if len(rewards) > 1 and torch.tensor(rewards, dtype=torch.float64).std().item() > STD_EPS:
        return DynamicFilterOutput(keep=True)
    value = round(rewards[0], 4) if rewards else None
    return DynamicFilterOutput(keep=False, reason=f"zero_std_{value}")


def check_reward_nonzero_std_with_fallback(args: Any, samples: list[Sample], **kwargs: Any) -> DynamicFilterOutput:
    """`check_reward_nonzero_std`, but a dropped group is kept when the batch would otherwise fall short."""
    out = check_reward_nonzero_std(args, samples, **kwargs)
    out.keep_when_insufficient = True
    return out
