"""Data sources with slime's names: where a rollout's prompt groups come from.

`RolloutDataSource` walks the prompt dataset epoch by epoch; `RolloutDataSourceWithBuffer` (the
default) first hands out groups that were given back through `add_samples`. Departure from slime:
the buffer is part of the saved state, so a resumed run continues with exactly the same groups.
"""

from __future__ import annotations

import copy
import glob
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from typing import Any

from temper.data.buffer import Group, check_groups, groups_from_state, groups_to_state, pop_first
from temper.data.dataset import PromptDataset
from temper.data.plugins import load_function
from temper.types import Sample

logger = logging.getLogger(__name__)

STATE_FORMAT = "temper.data_source/1"
_SLIME_DEFAULTS = (
    "slime.rollout.data_source.RolloutDataSourceWithBuffer",
    "slime.rollout.data_source.RolloutDataSource",
)


def state_path(directory: str, rollout_id: int) -> str:
    """Where the data source state of `rollout_id` is saved under a checkpoint `directory`."""
    return os.path.join(directory, "rollout", f"data_source_state_{rollout_id}.json")


class DataSource(ABC):
    """What a rollout function draws prompt groups from (`--data-source-path`).

    Subclasses implement the abstract methods; `save`/`load` write `state_dict()` as JSON.
    """

    def __init__(self, args: Any) -> None:
        self.args = args

    @abstractmethod
    def get_samples(self, num_samples: int) -> list[Group]:
        """The next `num_samples` groups, each `n_samples_per_prompt` Samples of one prompt."""

    @abstractmethod
    def add_samples(self, samples: list[Group]) -> None:
        """Take groups back (e.g. aborted ones) to hand out again."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this source is; JSON-serializable."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict`)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of prompts in one epoch."""

    def save(self, rollout_id: int, directory: str | None = None) -> str:
        """Write the state to `state_path(directory or args.save, rollout_id)` atomically; return it."""
        directory = directory or getattr(self.args, "save", None)
        if not directory:
            raise ValueError("DataSource.save: no directory given and --save is not set")
        path = state_path(directory, rollout_id)
        try:
            text = json.dumps(self.state_dict())
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"data source state for rollout {rollout_id} is not JSON-serializable ({e}); buffered samples' "
                "metadata, label and reward must hold JSON values (str, number, bool, None, list, dict)"
            ) from e
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        return path

    def load(self, rollout_id: int | None = None, directory: str | None = None) -> bool:
        """Restore the state saved for `rollout_id` (None: the latest) under `directory or args.load`.

        Returns False for a fresh start: no directory (silently) or no saved state there (a warning).
        """
        directory = directory or getattr(self.args, "load", None)
        if not directory:
            return False
        if rollout_id is None:
            rollout_id = latest_saved_rollout(directory)
        path = state_path(directory, rollout_id) if rollout_id is not None else None
        if path is None or not os.path.exists(path):
            logger.warning("no data source state %s; the data starts from the beginning", path or f"under {directory}")
            return False
        with open(path) as f:
            try:
                state = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: data source state is not valid JSON ({e}); the file is damaged") from e
        self.load_state_dict(state)
        logger.info("data source state restored from %s", path)
        return True


def latest_saved_rollout(directory: str) -> int | None:
    """The highest rollout id with a saved data source state under `directory`, or None."""
    ids = [
        int(m.group(1))
        for p in glob.glob(os.path.join(directory, "rollout", "data_source_state_*.json"))
        if (m := re.search(r"data_source_state_(\d+)\.json$", p))
    ]
    return max(ids, default=None)


class RolloutDataSource(DataSource):
    """Prompts of `--prompt-data`, epoch after epoch, as groups of deep copies.

    `get_samples(n)` takes the next n prompts in the epoch's order (`PromptDataset.order`; a new epoch,
    reshuffled, starts when one runs out) and copies each `n_samples_per_prompt` times, setting
    `group_index` (one per prompt, running) and `index` (one per sample, running): both unique and
    increasing over calls and epochs. With `--disable-rollout-global-dataset` the samples are empty.
    """

    def __init__(self, args: Any, dataset: PromptDataset | None = None) -> None:
        super().__init__(args)
        self.n_samples_per_prompt = int(getattr(args, "n_samples_per_prompt", 1))
        if dataset is None and getattr(args, "rollout_global_dataset", True):
            dataset = PromptDataset.from_args(args)
        self.dataset = dataset
        self.epoch_id = 0
        self.sample_offset = 0  # prompts of the current epoch already handed out
        self.sample_group_index = 0
        self.sample_index = 0
        self.metadata: dict[str, Any] = {}  # free-form, for custom rollout functions; saved with the state

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else 0

    def get_samples(self, num_samples: int) -> list[Group]:
        if num_samples < 0:
            raise ValueError(f"get_samples: num_samples must be >= 0, got {num_samples}")
        return [self._group(prompt) for prompt in self._next_prompts(num_samples)]

    def add_samples(self, samples: list[Group]) -> None:
        raise RuntimeError(
            "RolloutDataSource has no buffer to take samples back; use RolloutDataSourceWithBuffer "
            "(the default --data-source-path)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "epoch_id": self.epoch_id,
            "sample_offset": self.sample_offset,
            "sample_group_index": self.sample_group_index,
            "sample_index": self.sample_index,
            "metadata": self.metadata,
            "num_prompts": len(self),
            "rollout_shuffle": self.dataset.shuffle if self.dataset is not None else False,
            "rollout_seed": self.dataset.seed if self.dataset is not None else None,
            "buffer": [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"data source state has format {state.get('format')!r}, expected {STATE_FORMAT!r}")
        self._warn_if_data_changed(state)
        if state.get("buffer"):
            raise ValueError(
                f"the saved state holds {len(state['buffer'])} buffered groups, but {type(self).__name__} has no "
                "buffer; resume with RolloutDataSourceWithBuffer"
            )
        self.epoch_id = int(state["epoch_id"])
        self.sample_offset = int(state["sample_offset"])
        self.sample_group_index = int(state["sample_group_index"])
        self.sample_index = int(state["sample_index"])
        self.metadata = copy.deepcopy(state.get("metadata", {}))

    def _next_prompts(self, n: int) -> list[Sample]:
        if self.dataset is None:
            return [Sample() for _ in range(n)]
        prompts: list[Sample] = []
        while len(prompts) < n:
            if self.sample_offset >= len(self.dataset):
                self.epoch_id += 1
                self.sample_offset = 0
            take = min(n - len(prompts), len(self.dataset) - self.sample_offset)
            order = self.dataset.order(self.epoch_id)
            prompts += [self.dataset[i] for i in order[self.sample_offset : self.sample_offset + take]]
            self.sample_offset += take
        return prompts

    def _group(self, prompt: Sample) -> Group:
        group = []
        for _ in range(self.n_samples_per_prompt):
            sample = copy.deepcopy(prompt)
            sample.group_index = self.sample_group_index
            sample.index = self.sample_index
            self.sample_index += 1
            group.append(sample)
        self.sample_group_index += 1
        return group

    def _warn_if_data_changed(self, state: dict[str, Any]) -> None:
        now = {"num_prompts": len(self), "rollout_shuffle": state.get("rollout_shuffle"), "rollout_seed": None}
        if self.dataset is not None:
            now.update(rollout_shuffle=self.dataset.shuffle, rollout_seed=self.dataset.seed)
        changed = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        if changed:
            logger.warning(
                "data source state was saved with different data (%s); the prompt order will not continue exactly",
                ", ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in changed.items()),
            )


class RolloutDataSourceWithBuffer(RolloutDataSource):
    """`RolloutDataSource` plus a buffer of groups, handed out first through `--buffer-filter-path`.

    `get_samples(n)` asks the buffer filter (default `pop_first`, FIFO) for up to n groups, called as
    `fn(args, None, buffer, n)` like slime, then takes the rest from the dataset. `add_samples`
    accepts only whole groups of `n_samples_per_prompt`. The buffer is saved in the state.
    """

    def __init__(self, args: Any, dataset: PromptDataset | None = None) -> None:
        super().__init__(args, dataset)
        self.buffer: list[Group] = []
        path = getattr(args, "buffer_filter_path", None)
        self.buffer_filter = load_function(path, flag="--buffer-filter-path") if path else pop_first

    def get_samples(self, num_samples: int) -> list[Group]:
        groups = self._from_buffer(num_samples)
        return groups + super().get_samples(num_samples - len(groups))

    def add_samples(self, samples: list[Group]) -> None:
        check_groups(samples, self.n_samples_per_prompt, who="add_samples")
        self.buffer.extend(samples)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": groups_to_state(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({**state, "buffer": []})
        self.buffer = groups_from_state(state.get("buffer", []))

    def _from_buffer(self, num_samples: int) -> list[Group]:
        if not self.buffer or num_samples <= 0:
            return []
        groups = self.buffer_filter(self.args, None, self.buffer, num_samples)
        if not isinstance(groups, list) or len(groups) > num_samples:
            got = f"{len(groups)} groups" if isinstance(groups, list) else type(groups).__name__
            raise ValueError(
                f"buffer filter {getattr(self.buffer_filter, '__name__', self.buffer_filter)!r} returned {got} for "
                f"num_samples={num_samples}; it must return a list of at most num_samples groups"
            )
        check_groups(groups, self.n_samples_per_prompt, who="buffer filter")
        return groups


def build_data_source(args: Any) -> DataSource:
    """The data source `--data-source-path` names (slime's default names map to temper's classes)."""
    path = getattr(args, "data_source_path", None)
    if not path or path == _SLIME_DEFAULTS[0]:
        return RolloutDataSourceWithBuffer(args)
    if path == _SLIME_DEFAULTS[1]:
        return RolloutDataSource(args)
    return load_function(path, flag="--data-source-path")(args)


def num_rollout_from_epochs(num_prompts: int, rollout_batch_size: int, num_epoch: int) -> int:
    """slime's `--num-epoch` rule: `num_prompts // rollout_batch_size * num_epoch` rollouts."""
    per_epoch = num_prompts // rollout_batch_size
    if per_epoch == 0:
        raise ValueError(
            f"--num-epoch: the dataset has {num_prompts} prompts, fewer than --rollout-batch-size="
            f"{rollout_batch_size}, so an epoch holds no rollout; lower the batch size or set --num-rollout"
        )
    return per_epoch * num_epoch
