"""Pure tensor functions for RL post-training: advantages, KL, policy/value/SFT losses, aggregation.

Nothing here knows about models, processes or configs: every function takes tensors (padded
[B, T], one entry per response token, with a loss_mask) and returns tensors. See each module's
docstring for shapes.
"""

from temper.algo.advantages import (
    ADVANTAGE_ESTIMATORS,
    broadcast_to_tokens,
    compute_advantages_and_returns,
    group_normalize_rewards,
    grpo_advantages,
    last_token_mask,
    leave_one_out_rewards,
    masked_whiten,
    ppo_advantages,
    reinforce_plus_plus_advantages,
    reinforce_plus_plus_baseline_advantages,
    response_extent,
    rloo_advantages,
    token_level_rewards,
)
from temper.algo.aggregation import AGG_MODES, aggregate, masked_mean, token_count
from temper.algo.kl import KL_LOSS_TYPES, compute_approx_kl, compute_kl_loss
from temper.algo.policy_loss import (
    PgLossReducer,
    PolicyLossConfig,
    TisFunction,
    compute_cispo_loss,
    compute_policy_loss,
    compute_ppo_kl,
    policy_loss_function,
)
from temper.algo.returns import compute_gae, discounted_cumsum, discounted_returns
from temper.algo.sft_loss import sft_loss_function
from temper.algo.tis import TIS_MODES, compute_tis_weights
from temper.algo.value_loss import compute_value_loss, value_loss_function

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGG_MODES",
    "KL_LOSS_TYPES",
    "TIS_MODES",
    "PgLossReducer",
    "PolicyLossConfig",
    "TisFunction",
    "aggregate",
    "broadcast_to_tokens",
    "compute_advantages_and_returns",
    "compute_approx_kl",
    "compute_cispo_loss",
    "compute_gae",
    "compute_kl_loss",
    "compute_policy_loss",
    "compute_ppo_kl",
    "compute_tis_weights",
    "compute_value_loss",
    "discounted_cumsum",
    "discounted_returns",
    "group_normalize_rewards",
    "grpo_advantages",
    "last_token_mask",
    "leave_one_out_rewards",
    "masked_mean",
    "masked_whiten",
    "policy_loss_function",
    "ppo_advantages",
    "reinforce_plus_plus_advantages",
    "reinforce_plus_plus_baseline_advantages",
    "response_extent",
    "rloo_advantages",
    "sft_loss_function",
    "token_count",
    "token_level_rewards",
    "value_loss_function",
]
