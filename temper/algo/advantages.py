"""Advantages and returns for every estimator temper trains with, and the one dispatcher over them.

Conventions (shared by every function here):

    rewards:     [B] float, one scalar reward R_i per sample (raw, before any group normalization)
    group_index: B group ids (list of hashables or a [B] tensor), samples of one prompt share an id;
                 any order, groups of any size. Grouping is by id, never by position.
    loss_mask:   [B, T] bool or 0/1, padded: 1 for trained response tokens, 0 for tool tokens and
                 padding. A response is taken to end at its last trained token.
    kl:          [B, T] float, per-token KL(old‖ref) from kl.compute_approx_kl, or None for zeros
    values:      [B, T] float, critic values V_t (ppo only)

Every estimator returns (advantages, returns), both [B, T] and zero after the response's end.
"""

from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

from temper.algo.aggregation import require_same_shape
from temper.algo.returns import compute_gae, discounted_returns

ADVANTAGE_ESTIMATORS = (
    "grpo",
    "gspo",
    "cispo",
    "rloo",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "ppo",
)
_GROUPED_ESTIMATORS = ("grpo", "gspo", "cispo", "rloo", "reinforce_plus_plus_baseline")
_KL_SHAPED_ESTIMATORS = ("reinforce_plus_plus", "reinforce_plus_plus_baseline", "ppo")
GROUP_STD_EPS = 1e-6
WHITEN_EPS = 1e-8

GroupIndex = Sequence[Hashable] | Tensor


def group_ids(group_index: GroupIndex, num_samples: int, device: torch.device | None = None) -> Tensor:
    """Map arbitrary group ids to dense ids 0..G−1 in order of first appearance: [B] int64."""
    keys = group_index.tolist() if isinstance(group_index, Tensor) else list(group_index)
    if len(keys) != num_samples:
        raise ValueError(
            f"group_index has {len(keys)} entries but there are {num_samples} rewards; "
            "pass one group id per sample (e.g. Sample.group_index)"
        )
    dense: dict[Hashable, int] = {}
    ids = [dense.setdefault(key, len(dense)) for key in keys]
    return torch.tensor(ids, dtype=torch.long, device=device)


def group_normalize_rewards(
    rewards: Tensor,
    group_index: GroupIndex,
    *,
    grpo_std_normalization: bool = True,
) -> Tensor:
    """GRPO reward normalization within each prompt group: (R_i − mean_g) / (std_g + 1e-6).

    With grpo_std_normalization=False (--disable-grpo-std-normalization, Dr.GRPO) only the group
    mean is subtracted. std is Bessel-corrected, as torch.std in slime; a group of one sample has
    std 0 and so a normalized reward of 0.

    Departure from slime: groups come from `group_index`, not from reshaping the batch positionally
    into rows of n_samples_per_prompt, so shuffled batches, fan-out and uneven groups are grouped
    right (slime falls back to one batch-wide group in those cases).
    rewards: [B] float. Returns [B].
    """
    ids = group_ids(group_index, rewards.shape[0], rewards.device)
    centered = rewards - _group_sum(rewards, ids)[ids] / _group_count(ids, rewards)[ids]
    if not grpo_std_normalization:
        return centered
    bessel_count = (_group_count(ids, rewards) - 1).clamp(min=1)
    std = (_group_sum(centered.square(), ids) / bessel_count).sqrt()
    return centered / (std[ids] + GROUP_STD_EPS)


def leave_one_out_rewards(rewards: Tensor, group_index: GroupIndex) -> Tensor:
    """RLOO baseline (Ahmadian et al. 2024): R_i − mean of the other samples of i's group.

    A sample alone in its group keeps its raw reward (no baseline), as slime does.
    rewards: [B] float. Returns [B].
    """
    ids = group_ids(group_index, rewards.shape[0], rewards.device)
    others = _group_count(ids, rewards)[ids] - 1
    baseline = (_group_sum(rewards, ids)[ids] - rewards) / others.clamp(min=1)
    return torch.where(others > 0, rewards - baseline, rewards)


def _group_sum(values: Tensor, ids: Tensor) -> Tensor:
    num_groups = int(ids.max()) + 1 if ids.numel() else 0
    return values.new_zeros(num_groups).index_add_(0, ids, values)


def _group_count(ids: Tensor, like: Tensor) -> Tensor:
    return _group_sum(torch.ones_like(like), ids)


def last_token_mask(loss_mask: Tensor) -> Tensor:
    """[B, T] bool, True at each row's last trained token (no True in a row with none)."""
    mask = loss_mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=-1, keepdim=True)
    return positions == last


def response_extent(loss_mask: Tensor) -> Tensor:
    """[B, T] bool, True on every position up to and including each row's last trained token."""
    return loss_mask.bool().flip(-1).cummax(dim=-1).values.flip(-1)


def broadcast_to_tokens(sample_values: Tensor, loss_mask: Tensor) -> Tensor:
    """Spread one value per sample ([B]) over its trained tokens: [B, T], 0 where loss_mask is 0."""
    return torch.where(loss_mask.bool(), sample_values[:, None], sample_values.new_zeros(()))


def token_level_rewards(rewards: Tensor, kl: Tensor, loss_mask: Tensor, kl_coef: float) -> Tensor:
    """KL-shaped token rewards (PPO, REINFORCE++): r_t = −kl_coef·kl_t·m_t, plus R at the last trained token.

    rewards: [B]; kl, loss_mask: [B, T]. Returns [B, T].
    As slime's reinforce_plus_plus. slime's ppo passes every response token as loss_mask (see
    ppo_advantages), so that the KL is charged on tool tokens too and R lands on the last token.
    """
    require_same_shape(kl=kl, loss_mask=loss_mask)
    mask = loss_mask.bool()
    shaped = torch.where(mask, -kl_coef * kl, kl.new_zeros(()))
    return shaped + torch.where(last_token_mask(mask), rewards[:, None], kl.new_zeros(()))


def masked_whiten(
    advantages: Tensor,
    loss_mask: Tensor,
    *,
    shift_mean: bool = True,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Masked whitening (--normalize-advantages): (A − mean) / sqrt(var + 1e-8) over trained tokens.

    mean and the Bessel-corrected var are taken over all positions where loss_mask is 1. For data
    parallel runs pass `all_reduce`, a function that sums a [3] float64 tensor (Σx, Σx², count)
    across ranks and returns it, as slime's `distributed_masked_whiten` does over DP×CP.
    shift_mean=False adds the mean back. Masked positions are set to 0 (slime leaves them unchanged;
    they never reach a loss). advantages, loss_mask: [B, T]. Returns [B, T].
    """
    require_same_shape(advantages=advantages, loss_mask=loss_mask)
    mask = loss_mask.bool()
    x = torch.where(mask, advantages, advantages.new_zeros(())).double()
    stats = torch.stack([x.sum(), x.square().sum(), mask.sum().double()])
    if all_reduce is not None:
        stats = all_reduce(stats)
    total, total_sq, count = stats.unbind()
    mean = total / count.clamp(min=1)
    var = (total_sq / count.clamp(min=1) - mean.square()).clamp(min=0)
    var = var * count / (count - 1) if count > 1 else var
    whitened = (advantages.double() - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened.to(advantages.dtype), advantages.new_zeros(()))


def grpo_advantages(
    rewards: Tensor,
    group_index: GroupIndex,
    loss_mask: Tensor,
    *,
    rewards_normalization: bool = True,
    grpo_std_normalization: bool = True,
) -> tuple[Tensor, Tensor]:
    """GRPO (Shao et al. 2024), also GSPO and CISPO: A_t = returns_t = normalized R on every token.

    R is group-normalized (group_normalize_rewards) unless rewards_normalization is False
    (--disable-rewards-normalization). As in slime, any --kl-coef is not folded in: GRPO puts KL in
    the loss (--use-kl-loss) instead.
    """
    if rewards_normalization:
        rewards = group_normalize_rewards(rewards, group_index, grpo_std_normalization=grpo_std_normalization)
    advantages = broadcast_to_tokens(rewards, loss_mask)
    return advantages, advantages


def rloo_advantages(rewards: Tensor, group_index: GroupIndex, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """RLOO: A_t = R_i − mean of the other samples in i's group, on every token; returns_t = R_i."""
    advantages = broadcast_to_tokens(leave_one_out_rewards(rewards, group_index), loss_mask)
    return advantages, broadcast_to_tokens(rewards, loss_mask)


def reinforce_plus_plus_advantages(
    rewards: Tensor,
    kl: Tensor,
    loss_mask: Tensor,
    *,
    kl_coef: float,
    gamma: float,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): A_t = G_t = Σ_k γ^k r_{t+k} over KL-shaped token rewards.

    r_t = −kl_coef·kl_t·m_t with R added at the last trained token (token_level_rewards). Meant to be
    used with --normalize-advantages (masked whitening), which slime requires. Returns are zero
    outside loss_mask.
    """
    returns = discounted_returns(token_level_rewards(rewards, kl, loss_mask, kl_coef), gamma)
    returns = torch.where(loss_mask.bool(), returns, returns.new_zeros(()))
    return returns, returns


def reinforce_plus_plus_baseline_advantages(
    rewards: Tensor,
    group_index: GroupIndex,
    kl: Tensor,
    loss_mask: Tensor,
    *,
    kl_coef: float,
    rewards_normalization: bool = True,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline: A_t = returns_t = (R − group mean) − kl_coef·kl_t on trained tokens.

    The group mean is subtracted unless rewards_normalization is False. No discounting, as in slime.
    """
    if rewards_normalization:
        rewards = group_normalize_rewards(rewards, group_index, grpo_std_normalization=False)
    require_same_shape(kl=kl, loss_mask=loss_mask)
    advantages = torch.where(loss_mask.bool(), rewards[:, None] - kl_coef * kl, kl.new_zeros(()))
    return advantages, advantages


def ppo_advantages(
    rewards: Tensor,
    kl: Tensor,
    values: Tensor,
    loss_mask: Tensor,
    *,
    kl_coef: float,
    gamma: float,
    lambd: float,
    response_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO with GAE over critic values: token rewards r_t = −kl_coef·kl_t·e_t + R at the episode's last
    token; δ_t = r_t + γV_{t+1} − V_t; A_t = Σ_k (γλ)^k δ_{t+k}; returns = A + V (returns.compute_gae).

    The episode e is `response_mask` when given ([B, T], 1 on every response token, 0 on padding):
    slime's ppo, in which tool tokens are charged KL too, R lands on the response's last token and V
    is 0 after it. Without it the episode follows loss_mask (temper's --ppo-mask-tool-tokens for
    multi-turn data): tool tokens are not the policy's actions, so they get no KL penalty, R lands on
    the last trained token and the episode ends there. The two agree when no response holds tool
    tokens. Values at interior tool tokens are used as given in both.
    """
    episode = loss_mask if response_mask is None else response_mask
    token_rewards = token_level_rewards(rewards, kl, episode, kl_coef)
    return compute_gae(token_rewards, values, response_extent(episode), gamma, lambd)


def compute_advantages_and_returns(
    estimator: str,
    rewards: Tensor,
    loss_mask: Tensor,
    *,
    group_index: GroupIndex | None = None,
    kl: Tensor | None = None,
    values: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    lambd: float = 1.0,
    rewards_normalization: bool = True,
    grpo_std_normalization: bool = True,
    normalize_advantages: bool = False,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    response_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns for `estimator` (--advantage-estimator), slime's entry point.

    estimator: one of ADVANTAGE_ESTIMATORS. Takes raw rewards: the group normalization that slime
    does in the rollout manager happens here, by group_index. kl (per-token KL(old‖ref)) defaults to
    zeros and is needed only when kl_coef ≠ 0; values only for ppo; group_index for grpo, gspo, cispo,
    rloo and reinforce_plus_plus_baseline. normalize_advantages whitens the advantages over trained
    tokens (masked_whiten, with `all_reduce` for data parallel); returns are left as they are.
    response_mask (ppo only, see ppo_advantages): the response's tokens, for slime's token rewards.
    Returns (advantages, returns), both [B, T] like loss_mask.
    """
    _check_estimator_inputs(estimator, rewards, loss_mask, group_index, kl, values, kl_coef)
    kl = torch.zeros_like(loss_mask, dtype=rewards.dtype) if kl is None else kl
    if estimator in ("grpo", "gspo", "cispo"):
        advantages, returns = grpo_advantages(
            rewards,
            group_index,
            loss_mask,
            rewards_normalization=rewards_normalization,
            grpo_std_normalization=grpo_std_normalization,
        )
    elif estimator == "rloo":
        advantages, returns = rloo_advantages(rewards, group_index, loss_mask)
    elif estimator == "reinforce_plus_plus":
        advantages, returns = reinforce_plus_plus_advantages(rewards, kl, loss_mask, kl_coef=kl_coef, gamma=gamma)
    elif estimator == "reinforce_plus_plus_baseline":
        advantages, returns = reinforce_plus_plus_baseline_advantages(
            rewards, group_index, kl, loss_mask, kl_coef=kl_coef, rewards_normalization=rewards_normalization
        )
    else:
        advantages, returns = ppo_advantages(
            rewards, kl, values, loss_mask, kl_coef=kl_coef, gamma=gamma, lambd=lambd, response_mask=response_mask
        )
    if normalize_advantages:
        advantages = masked_whiten(advantages, loss_mask, all_reduce=all_reduce)
    return advantages, returns


def _check_estimator_inputs(
    estimator: str,
    rewards: Tensor,
    loss_mask: Tensor,
    group_index: GroupIndex | None,
    kl: Tensor | None,
    values: Tensor | None,
    kl_coef: float,
) -> None:
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {estimator!r}; valid names: {', '.join(ADVANTAGE_ESTIMATORS)}"
        )
    if loss_mask.dim() != 2 or rewards.shape != loss_mask.shape[:1]:
        raise ValueError(
            f"expected rewards [B] and loss_mask [B, T], got rewards {tuple(rewards.shape)} "
            f"and loss_mask {tuple(loss_mask.shape)}"
        )
    require_same_shape(loss_mask=loss_mask, kl=kl, values=values)
    if estimator in _GROUPED_ESTIMATORS and group_index is None:
        raise ValueError(f"advantage estimator {estimator!r} needs group_index (one group id per sample)")
    if estimator == "ppo" and values is None:
        raise ValueError("advantage estimator 'ppo' needs critic values [B, T]")
    if estimator in _KL_SHAPED_ESTIMATORS and kl_coef != 0 and kl is None:
        raise ValueError(f"kl_coef={kl_coef} needs the per-token kl [B, T] (kl.compute_approx_kl of old vs ref)")
