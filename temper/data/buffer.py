"""The data buffer's parts: the default buffer filter, group checks, and groups <-> JSON state.

A buffer holds whole prompt groups (`list[Sample]` of `n_samples_per_prompt` each), e.g. the aborted
groups of a partial rollout, until `get_samples` hands them out again.
"""

from __future__ import annotations

from typing import Any

from temper.types import Sample

Group = list[Sample]


def pop_first(args: Any, rollout_id: int | None, buffer: list[Group], num_samples: int) -> list[Group]:
    """slime's default `--buffer-filter-path`: remove and return the first `num_samples` groups (FIFO).

    Contract for every buffer filter: return at most `num_samples` groups and remove the returned
    groups from `buffer` in place (groups left in it are offered again next time).
    """
    taken = buffer[:num_samples]
    del buffer[:num_samples]
    return taken


def check_groups(groups: Any, n_samples_per_prompt: int, *, who: str) -> None:
    """Raise ValueError unless `groups` is a list of lists of exactly `n_samples_per_prompt` Samples."""
    if not isinstance(groups, list):
        raise ValueError(f"{who}: expected a list of groups (lists of Samples), got {type(groups).__name__}")
    for i, group in enumerate(groups):
        if not isinstance(group, list) or not all(isinstance(s, Sample) for s in group):
            raise ValueError(f"{who}: group {i} is not a list of Samples (got {type(group).__name__})")
        if len(group) != n_samples_per_prompt:
            raise ValueError(
                f"{who}: group {i} (group_index {group[0].group_index if group else None}) has {len(group)} "
                f"samples, expected --n-samples-per-prompt={n_samples_per_prompt}; pass whole groups"
            )


def groups_to_state(groups: list[Group]) -> list[list[dict[str, Any]]]:
    """Groups as nested lists of `Sample.to_dict()`; JSON-serializable if the samples' values are. A
    buffered sample's routed experts (R3) are left out: its continuation sends all its tokens again
    and gets the routing of all of them back."""
    return [[sample.to_dict() | {"rollout_routed_experts": None} for sample in group] for group in groups]


def groups_from_state(state: list[list[dict[str, Any]]]) -> list[Group]:
    """Inverse of `groups_to_state`."""
    return [[Sample.from_dict(data) for data in group] for group in state]
