"""Policy-gradient losses: PPO clip (asymmetric, dual clip), GSPO, CISPO, with TIS, entropy and KL terms.

Tensors are padded [B, T], one entry per response token:

    log_probs:         current policy log-probs (carry the gradient), float32
    old_log_probs:     log-probs of the policy that generated / was snapshotted for this batch
    advantages:        A_t from advantages.compute_advantages_and_returns
    loss_mask:         bool or 0/1, 1 for trained tokens
    ref_log_probs, rollout_log_probs, entropy: optional, same shape

Masked positions never reach the loss or its gradient (aggregation.py).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from temper.algo.advantages import ADVANTAGE_ESTIMATORS
from temper.algo.aggregation import aggregate, masked_mean, require_same_shape
from temper.algo.kl import KL_LOSS_TYPES, compute_kl_loss
from temper.algo.tis import TIS_MODES, compute_tis_weights


TisFunction = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]]
"""(pg_losses, old_log_probs, rollout_log_probs, loss_mask), all [B, T] → (pg_losses, pg_mask, metrics):
a custom train/inference mismatch correction (slime's --custom-tis-function-path) in place of
compute_tis_weights. pg_mask (within loss_mask) drops rejected tokens from the policy-gradient
numerator; the denominator keeps loss_mask. metrics are detached scalars."""

PgLossReducer = Callable[[Tensor, Tensor], Tensor]
"""(pg_losses [B, T], pg_mask [B, T]) → the policy-gradient term, a scalar (slime's
--custom-pg-loss-reducer-function-path), in place of the aggregation of config.pg_agg_mode."""


@dataclass(frozen=True)
class PolicyLossConfig:
    """Settings of policy_loss_function, named after slime's flags (--eps-clip → eps_clip).

    advantage_estimator picks the loss: `gspo` uses the sequence-level ratio, `cispo` the CISPO loss,
    every other estimator the token-level PPO clip. tis_mode ("truncate" | "icepop") stands for
    slime's --custom-tis-function-path choice between its two built-in functions.
    pg_loss_constant_len, when set, reduces the policy-gradient term with Dr.GRPO's constant
    denominator (slime does this with --custom-pg-loss-reducer-function-path); entropy and KL terms
    keep the sample-mean or, with calculate_per_token_loss, token-mean reduction.
    use_rollout_logprobs (--use-rollout-logprobs) says that old_log_probs are the engine's, so that
    train_rollout_logprob_abs_diff compares the current log-probs with them instead, as slime does.
    """

    advantage_estimator: str = "grpo"
    eps_clip: float = 0.2
    eps_clip_high: float | None = None
    eps_clip_c: float | None = None
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: str = "k1"
    use_unbiased_kl: bool = False
    entropy_coef: float = 0.0
    use_tis: bool = False
    tis_mode: str = "truncate"
    tis_clip: float = 2.0
    tis_clip_low: float = 0.0
    calculate_per_token_loss: bool = False
    pg_loss_constant_len: int | None = None
    use_rollout_logprobs: bool = False

    def __post_init__(self) -> None:
        _require_choice("advantage_estimator", self.advantage_estimator, ADVANTAGE_ESTIMATORS)
        _require_choice("kl_loss_type", self.kl_loss_type, KL_LOSS_TYPES)
        _require_choice("tis_mode", self.tis_mode, TIS_MODES)
        if self.eps_clip_c is not None and self.eps_clip_c <= 1:
            raise ValueError(f"eps_clip_c (dual clip) must be > 1, got {self.eps_clip_c}; leave it unset to disable")
        if self.pg_loss_constant_len is not None and self.pg_loss_constant_len <= 0:
            raise ValueError(f"pg_loss_constant_len must be a positive length, got {self.pg_loss_constant_len}")
        if self.tis_clip_low > self.tis_clip:
            raise ValueError(f"tis_clip_low ({self.tis_clip_low}) must not exceed tis_clip ({self.tis_clip})")

    @property
    def clip_high(self) -> float:
        """Upper ε: eps_clip_high, defaulting to eps_clip as in slime."""
        return self.eps_clip if self.eps_clip_high is None else self.eps_clip_high

    @property
    def agg_mode(self) -> str:
        """Aggregation mode of every term but the policy-gradient one."""
        return "token_mean" if self.calculate_per_token_loss else "sample_mean"

    @property
    def pg_agg_mode(self) -> str:
        return "constant_len" if self.pg_loss_constant_len is not None else self.agg_mode


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def compute_ppo_kl(
    log_probs: Tensor,
    old_log_probs: Tensor,
    loss_mask: Tensor,
    *,
    sequence_level: bool = False,
) -> Tensor:
    """ppo_kl_t = old_t − logp_t, so that the importance ratio is r_t = exp(−ppo_kl_t).

    sequence_level=True is GSPO (Zheng et al. 2025): ppo_kl_i = Σ_t m_t(old_t − logp_t) / Σ_t m_t,
    broadcast to every token of sequence i, so exp(−ppo_kl_i) is the geometric-mean sequence ratio;
    its gradient reaches every trained token of the sequence. Returns [B, T].
    """
    require_same_shape(log_probs=log_probs, old_log_probs=old_log_probs, loss_mask=loss_mask)
    ppo_kl = old_log_probs - log_probs
    if not sequence_level:
        return ppo_kl
    mask = loss_mask.bool()
    summed = torch.where(mask, ppo_kl, ppo_kl.new_zeros(())).sum(-1, keepdim=True)
    return (summed / mask.sum(-1, keepdim=True).clamp(min=1)).expand_as(ppo_kl)


def compute_policy_loss(
    ppo_kl: Tensor,
    advantages: Tensor,
    eps_clip: float,
    eps_clip_high: float,
    eps_clip_c: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate (Schulman et al. 2017), asymmetric (DAPO's clip-higher) and dual clip.

    r = exp(−ppo_kl); loss_t = max(−r·A, −clip(r, 1 − eps_clip, 1 + eps_clip_high)·A).
    Dual clip (Ye et al. 2020), eps_clip_c = c > 1: where A < 0, loss_t = min(loss_t, −c·A).
    Returns per-token (pg_losses, clipfrac), both [B, T]; clipfrac is 1.0 where the clipped term is
    strictly larger (the clip is active), else 0.0.
    """
    require_same_shape(ppo_kl=ppo_kl, advantages=advantages)
    ratio = torch.exp(-ppo_kl)
    unclipped = -ratio * advantages
    clipped = -ratio.clamp(1 - eps_clip, 1 + eps_clip_high) * advantages
    pg_losses = torch.maximum(unclipped, clipped)
    clipfrac = (clipped > unclipped).to(pg_losses.dtype)
    if eps_clip_c is not None:
        dual = torch.minimum(pg_losses, -eps_clip_c * advantages)
        pg_losses = torch.where(advantages < 0, dual, pg_losses)
    return pg_losses, clipfrac


def compute_cispo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    eps_clip: float,
    eps_clip_high: float,
) -> tuple[Tensor, Tensor]:
    """CISPO (MiniMax-M1, 2025): loss_t = −sg(clip(r_t, 1 − eps_clip, 1 + eps_clip_high))·A_t·logp_t.

    r_t = exp(logp_t − old_t). The clipped ratio is a detached weight, so every token keeps its
    REINFORCE gradient −w·A·∇logp, clipped or not (the paper's setting: eps_clip ≥ 1, so no lower
    clip, and a large eps_clip_high). Returns per-token (pg_losses, clipfrac), both [B, T];
    clipfrac is 1.0 where the ratio was clipped.
    """
    require_same_shape(log_probs=log_probs, old_log_probs=old_log_probs, advantages=advantages)
    ratio = torch.exp(log_probs - old_log_probs).detach()
    weight = ratio.clamp(1 - eps_clip, 1 + eps_clip_high)
    clipfrac = (weight != ratio).to(ratio.dtype)
    return -weight * advantages * log_probs, clipfrac


def policy_loss_function(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    config: PolicyLossConfig = PolicyLossConfig(),
    *,
    ref_log_probs: Tensor | None = None,
    rollout_log_probs: Tensor | None = None,
    entropy: Tensor | None = None,
    tis_function: TisFunction | None = None,
    pg_loss_reducer: PgLossReducer | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The actor's loss (slime's `policy_loss_function`, --loss-type policy_loss):

        loss = agg_pg(pg_loss_t · tis_t) − entropy_coef·agg(entropy_t) + kl_loss_coef·agg(KL_est_t)

    pg_loss_t is compute_policy_loss (token ratio, or GSPO's sequence ratio) or compute_cispo_loss,
    chosen by config.advantage_estimator; tis_t is 1 unless config.use_tis (compute_tis_weights, or
    `tis_function` when given; needs rollout_log_probs); agg_pg is config.pg_agg_mode's aggregation,
    or `pg_loss_reducer` when given; the entropy term needs `entropy` when entropy_coef ≠ 0; the KL
    term needs ref_log_probs when use_kl_loss.

    Returns (loss, metrics): loss a scalar carrying the gradient into log_probs (and entropy);
    metrics detached scalars: loss, pg_loss, pg_clipfrac, ppo_kl (masked token mean of old − logp),
    entropy_loss, kl_loss, train_rollout_logprob_abs_diff (mean |old − rollout|, or |logp − rollout|
    with config.use_rollout_logprobs) and the tis metrics when their inputs are given. Departure from
    slime: metrics are token means over the batch, not per-sample means.
    """
    require_same_shape(
        log_probs=log_probs,
        old_log_probs=old_log_probs,
        advantages=advantages,
        loss_mask=loss_mask,
        ref_log_probs=ref_log_probs,
        rollout_log_probs=rollout_log_probs,
        entropy=entropy,
    )
    pg_losses, clipfrac = _pg_token_losses(log_probs, old_log_probs, advantages, loss_mask, config)
    metrics = {
        "pg_clipfrac": masked_mean(clipfrac, loss_mask),
        "ppo_kl": masked_mean(old_log_probs - log_probs, loss_mask),
    }
    if rollout_log_probs is not None:
        trainer = log_probs.detach() if config.use_rollout_logprobs else old_log_probs
        metrics["train_rollout_logprob_abs_diff"] = masked_mean((trainer - rollout_log_probs).abs(), loss_mask)
    pg_mask = loss_mask
    if config.use_tis and tis_function is not None:
        _require_rollout_log_probs(rollout_log_probs)
        pg_losses, pg_mask, tis_metrics = tis_function(pg_losses, old_log_probs, rollout_log_probs, loss_mask)
        metrics.update(tis_metrics)
    elif config.use_tis:
        pg_losses = pg_losses * _tis_weights(old_log_probs, rollout_log_probs, loss_mask, config, metrics)
    if pg_loss_reducer is not None:
        pg_loss = pg_loss_reducer(pg_losses, pg_mask)
    else:  # rejected tokens leave the numerator only, as in slime
        numerator = torch.where(pg_mask.bool(), pg_losses, pg_losses.new_zeros(()))
        pg_loss = aggregate(numerator, loss_mask, config.pg_agg_mode, constant_len=config.pg_loss_constant_len)
    metrics["pg_loss"] = pg_loss
    loss = pg_loss + _regularizers(log_probs, old_log_probs, loss_mask, config, ref_log_probs, entropy, metrics)
    metrics["loss"] = loss
    return loss, {name: value.detach() for name, value in metrics.items()}


def _pg_token_losses(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, loss_mask: Tensor, config: PolicyLossConfig
) -> tuple[Tensor, Tensor]:
    if config.advantage_estimator == "cispo":
        return compute_cispo_loss(log_probs, old_log_probs, advantages, config.eps_clip, config.clip_high)
    sequence_level = config.advantage_estimator == "gspo"
    ppo_kl = compute_ppo_kl(log_probs, old_log_probs, loss_mask, sequence_level=sequence_level)
    return compute_policy_loss(ppo_kl, advantages, config.eps_clip, config.clip_high, config.eps_clip_c)


def _tis_weights(
    old_log_probs: Tensor,
    rollout_log_probs: Tensor | None,
    loss_mask: Tensor,
    config: PolicyLossConfig,
    metrics: dict[str, Tensor],
) -> Tensor:
    _require_rollout_log_probs(rollout_log_probs)
    weights, tis_metrics = compute_tis_weights(
        old_log_probs,
        rollout_log_probs,
        loss_mask,
        tis_clip=config.tis_clip,
        tis_clip_low=config.tis_clip_low,
        tis_mode=config.tis_mode,
    )
    metrics.update(tis_metrics)
    return weights


def _require_rollout_log_probs(rollout_log_probs: Tensor | None) -> None:
    if rollout_log_probs is None:
        raise ValueError("use_tis needs rollout_log_probs (the engine's log-probs of the sampled tokens)")


def _regularizers(
    log_probs: Tensor,
    old_log_probs: Tensor,
    loss_mask: Tensor,
    config: PolicyLossConfig,
    ref_log_probs: Tensor | None,
    entropy: Tensor | None,
    metrics: dict[str, Tensor],
) -> Tensor:
    """−entropy_coef·agg(entropy) + kl_loss_coef·agg(KL_est); records entropy_loss and kl_loss."""
    total = log_probs.new_zeros(())
    if config.entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={config.entropy_coef} needs the per-token entropy [B, T]")
    if entropy is not None:
        metrics["entropy_loss"] = aggregate(entropy, loss_mask, config.agg_mode)
        total = total - config.entropy_coef * metrics["entropy_loss"]
    if config.use_kl_loss:
        if ref_log_probs is None:
            raise ValueError("use_kl_loss needs ref_log_probs (the reference model's log-probs)")
        metrics["kl_loss"] = compute_kl_loss(
            log_probs,
            ref_log_probs,
            loss_mask,
            kl_loss_type=config.kl_loss_type,
            old_log_probs=old_log_probs if config.use_unbiased_kl else None,
            mode=config.agg_mode,
        )
        total = total + config.kl_loss_coef * metrics["kl_loss"]
    return total
