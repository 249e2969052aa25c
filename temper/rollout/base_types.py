"""What rollout functions return (slime's `RolloutFnTrainOutput` / `RolloutFnEvalOutput`).

A rollout function (`--rollout-function-path`) returns `RolloutFnTrainOutput` for training and
`RolloutFnEvalOutput` with `evaluation=True`. Legacy functions that return bare lists (groups) or
dicts (eval data) are wrapped by `wrap_rollout_output`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temper.types import Sample

Group = list[Sample]


@dataclass
class RolloutFnTrainOutput:
    """One training rollout: `samples` is a list of groups (each the samples of one prompt, sorted by
    `group_index`; a group may be nested deeper by fan-out), `metrics` is {name: number} for logging."""

    samples: list[Any]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RolloutFnEvalOutput:
    """One evaluation: `data[dataset_name] = {"rewards": [float], "truncated": [bool], "samples": [Sample]}`
    (one entry per generated sample, in prompt order), plus `metrics`."""

    data: dict[str, dict[str, list]]
    metrics: dict[str, float] = field(default_factory=dict)


def wrap_rollout_output(output: Any, evaluation: bool) -> RolloutFnTrainOutput | RolloutFnEvalOutput:
    """`output` as the typed result; a list becomes the train output, a dict the eval output."""
    if isinstance(output, RolloutFnEvalOutput if evaluation else RolloutFnTrainOutput):
        return output
    if evaluation and isinstance(output, dict):
        return RolloutFnEvalOutput(data=output)
    if not evaluation and isinstance(output, list):
        return RolloutFnTrainOutput(samples=output)
    expected = "RolloutFnEvalOutput or a dict" if evaluation else "RolloutFnTrainOutput or a list of groups"
    raise TypeError(f"the rollout function returned {type(output).__name__}; expected {expected}")


def flatten_samples(nested: Any) -> list[Sample]:
    """All Samples of arbitrarily nested lists, in order."""
    if isinstance(nested, Sample):
        return [nested]
    out: list[Sample] = []
    for item in nested:
        out.extend(flatten_samples(item))
    return out
