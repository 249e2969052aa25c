"""The objects that cross part boundaries: `Sample`, its `Status`, and the trainer's `RolloutBatch`.

Token ids are the truth. Text (`prompt`, `response`) is for people and reward functions; nothing
re-tokenizes a response to train on it.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Message = dict[str, Any]

_FINISH_TO_STATUS = {"stop": "COMPLETED", "length": "TRUNCATED", "abort": "ABORTED"}


@dataclass
class Sample:
    """One prompt and one response to it, as it moves from the data source through rollout to training.

    Field names and meanings follow slime's `Sample` so that users' plug-ins port unchanged.
    """

    class Status(enum.Enum):
        PENDING = "pending"
        COMPLETED = "completed"  # the engine stopped on a stop token/string
        TRUNCATED = "truncated"  # hit max_new_tokens or the context length
        ABORTED = "aborted"  # interrupted (abort_request); may be continued by partial rollout
        FAILED = "failed"  # recoverable failure, e.g. a tool error; excluded from training

    group_index: int | None = None
    """Index of the prompt group: the n samples of one prompt share it (set by the data source)."""
    index: int | None = None
    """Global sample index, unique over the run (set by the data source)."""
    rollout_id: int | None = None
    """Id of the rollout execution; fan-out siblings of one execution share it."""
    prompt: str | list[Message] = ""
    """The prompt: text (after the chat template, if applied) or a message list."""
    tokens: list[int] = field(default_factory=list)
    """Prompt + response token ids."""
    response: str = ""
    """Decoded response text."""
    response_length: int = 0
    """Number of response tokens (multi-turn: everything after the first prompt)."""
    label: Any = None
    """Ground truth for the reward function."""
    reward: float | dict[str, Any] | None = None
    """Scalar reward, or a dict from which `--reward-key` picks."""
    loss_mask: list[int] | None = None
    """One 0/1 per response token; 0 for tool/environment tokens. None means all ones."""
    rollout_log_probs: list[float] | None = None
    """Engine log-prob of each response token (0.0 for non-trainable tokens)."""
    rollout_routed_experts: np.ndarray | None = None
    """MoE (--use-rollout-routing-replay): int32 [tokens computed by the engine (at most len(tokens) - 1),
    num_hidden_layers, top_k], the experts the engine routed each token to (-1 on dense layers)."""
    status: Sample.Status = Status.PENDING
    weight_versions: list[str] = field(default_factory=list)
    """Weight version the engine reported for each generate call that produced this response."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """From the dataset's `--metadata-key`; also `tools`, `rm_type`, `raw_reward`, ..."""
    remove_sample: bool = False
    """Exclude from the loss (still counted in reward normalization)."""
    session_id: str | None = None
    """Routing key: samples with one session go to one engine."""
    train_metadata: dict[str, Any] | None = None
    """Passed through to training as per-sample metadata."""
    cached_tokens: int = 0
    """Prompt tokens served from the engine's prefix cache (summed over generate calls)."""
    non_generation_time: float = 0.0
    """Seconds spent in tools or the environment rather than the engine."""

    @property
    def prompt_length(self) -> int:
        return len(self.tokens) - self.response_length

    @property
    def effective_response_length(self) -> int:
        """Trainable response tokens (sum of the loss mask)."""
        return self.response_length if self.loss_mask is None else sum(self.loss_mask)

    def append_response_tokens(
        self,
        tokens: list[int],
        log_probs: list[float] | None = None,
        *,
        trainable: bool = True,
        finish_reason: str | None = None,
        text: str = "",
        weight_version: str | None = None,
    ) -> None:
        """Extend the response by `tokens`: the one way to grow a (multi-turn) sample.

        Trainable tokens come from the policy and carry its log-probs; non-trainable ones (tool
        output) get loss-mask 0 and log-prob 0.0. `finish_reason` (stop|length|abort) sets the status.
        """
        if log_probs is not None and len(log_probs) != len(tokens):
            raise ValueError(f"append_response_tokens: {len(tokens)} tokens but {len(log_probs)} log-probs")
        if trainable and log_probs is None and self.rollout_log_probs is not None:
            raise ValueError("append_response_tokens: trainable tokens need log_probs once the sample has them")
        had_mask = self.loss_mask is not None or not trainable
        if had_mask and self.loss_mask is None:
            self.loss_mask = [1] * self.response_length
        if self.rollout_log_probs is None and log_probs is not None:
            self.rollout_log_probs = [0.0] * self.response_length
        self.tokens.extend(tokens)
        self.response_length += len(tokens)
        self.response += text
        if self.loss_mask is not None:
            self.loss_mask.extend([int(trainable)] * len(tokens))
        if self.rollout_log_probs is not None:
            self.rollout_log_probs.extend(log_probs if trainable and log_probs is not None else [0.0] * len(tokens))
        if weight_version is not None:
            self.weight_versions.append(str(weight_version))
        if finish_reason is not None:
            self.set_finish_reason(finish_reason)

    def set_finish_reason(self, finish_reason: str) -> None:
        if finish_reason not in _FINISH_TO_STATUS:
            raise ValueError(f"finish_reason must be one of {sorted(_FINISH_TO_STATUS)}, got {finish_reason!r}")
        self.status = Sample.Status[_FINISH_TO_STATUS[finish_reason]]

    def get_reward_value(self, reward_key: str | None = None) -> float:
        """The scalar reward: the float itself, or `reward[reward_key]` for dict rewards."""
        if isinstance(self.reward, dict):
            if reward_key is None:
                raise ValueError(f"sample {self.index}: reward is a dict {sorted(self.reward)}; set --reward-key")
            return float(self.reward[reward_key])
        if self.reward is None:
            raise ValueError(f"sample {self.index}: no reward (was the reward function run?)")
        return float(self.reward)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        """Inverse of `to_dict`; keys that are not fields are kept in `metadata['extra']`."""
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        if "status" in known:
            known["status"] = cls.Status(known["status"])
        sample = cls(**known)
        if extra:
            sample.metadata = {**sample.metadata, "extra": extra}
        return sample


@dataclass
class RolloutBatch:
    """One rollout's worth of training data, in the order the trainer consumes it.

    Lists hold one entry per sample; N = number of samples, L_i = prompt+response length of sample i,
    R_i = its response length.
    """

    tokens: list[torch.Tensor]
    """[L_i] int64 each: prompt + response ids."""
    response_lengths: list[int]
    loss_masks: list[torch.Tensor]
    """[R_i] float32 each: 1 for trainable response tokens, 0 for tool/env tokens and removed samples."""
    rewards: torch.Tensor
    """[N] float32: the rewards the advantage estimator uses (group-normalized where the estimator asks)."""
    raw_rewards: torch.Tensor
    """[N] float32: rewards before normalization, for logging."""
    group_indices: list[int]
    sample_indices: list[int]
    rollout_log_probs: list[torch.Tensor] | None = None
    """[R_i] float32 each: the engine's log-probs, when every sample has them."""
    rollout_routed_experts: list[torch.Tensor | None] | None = None
    """[<= L_i - 1, num_hidden_layers, top_k] int32 each (None for a sample without): the engine's routing
    (R3), when some sample has it; training replays it (positions past its rows route freely)."""
    truncated: list[bool] = field(default_factory=list)
    weight_versions: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def total_lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]

    @classmethod
    def from_samples(cls, samples: list[Sample], rewards: list[float], raw_rewards: list[float]) -> RolloutBatch:
        """Build the batch; `rewards`/`raw_rewards` are per sample, already computed by the rollout side."""
        if not (len(samples) == len(rewards) == len(raw_rewards)):
            raise ValueError(f"{len(samples)} samples, {len(rewards)} rewards, {len(raw_rewards)} raw rewards")
        have_logp = all(s.rollout_log_probs is not None for s in samples)
        return cls(
            tokens=[torch.tensor(s.tokens, dtype=torch.long) for s in samples],
            response_lengths=[s.response_length for s in samples],
            loss_masks=[_loss_mask(s) for s in samples],
            rewards=torch.tensor(rewards, dtype=torch.float32),
            raw_rewards=torch.tensor(raw_rewards, dtype=torch.float32),
            group_indices=[s.group_index for s in samples],
            sample_indices=[s.index for s in samples],
            rollout_log_probs=(
                [torch.tensor(s.rollout_log_probs, dtype=torch.float32) for s in samples] if have_logp else None
            ),
            truncated=[s.status == Sample.Status.TRUNCATED for s in samples],
            weight_versions=[list(s.weight_versions) for s in samples],
            rollout_routed_experts=_routed_experts(samples),
        )

    def select(self, positions: list[int]) -> RolloutBatch:
        """The sub-batch of the samples at `positions` (e.g. one data-parallel rank's share)."""
        pick = lambda xs: [xs[i] for i in positions]  # noqa: E731
        return RolloutBatch(
            tokens=pick(self.tokens),
            response_lengths=pick(self.response_lengths),
            loss_masks=pick(self.loss_masks),
            rewards=self.rewards[positions],
            raw_rewards=self.raw_rewards[positions],
            group_indices=pick(self.group_indices),
            sample_indices=pick(self.sample_indices),
            rollout_log_probs=pick(self.rollout_log_probs) if self.rollout_log_probs is not None else None,
            truncated=pick(self.truncated) if self.truncated else [],
            weight_versions=pick(self.weight_versions) if self.weight_versions else [],
            rollout_routed_experts=pick(self.rollout_routed_experts) if self.rollout_routed_experts else None,
        )


def _loss_mask(sample: Sample) -> torch.Tensor:
    if sample.remove_sample:
        return torch.zeros(sample.response_length, dtype=torch.float32)
    if sample.loss_mask is None:
        return torch.ones(sample.response_length, dtype=torch.float32)
    if len(sample.loss_mask) != sample.response_length:
        raise ValueError(
            f"sample {sample.index}: loss_mask has {len(sample.loss_mask)} entries, response_length is "
            f"{sample.response_length}"
        )
    return torch.tensor(sample.loss_mask, dtype=torch.float32)


def _routed_experts(samples: list[Sample]) -> list[torch.Tensor | None] | None:
    if all(s.rollout_routed_experts is None for s in samples):
        return None
    out = []
    for s in samples:
        routed = s.rollout_routed_experts
        if routed is not None and (routed.ndim != 3 or routed.shape[0] > len(s.tokens) - 1):
            raise ValueError(
                f"sample {s.index}: rollout_routed_experts has shape {tuple(routed.shape)}; expected [at most "
                f"{len(s.tokens) - 1} tokens, layers, top_k] for its {len(s.tokens)} tokens"
            )
        out.append(None if routed is None else torch.from_numpy(np.asarray(routed, dtype=np.int32)))
    return out
