"""Discounted returns and generalized advantage estimation over padded [B, T] token tensors."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from temper.algo.aggregation import require_same_shape


def discounted_cumsum(x: Tensor, discount: float, chunk_size: int = 128) -> Tensor:
    """Reverse discounted sum along the last dim: y_t = x_t + discount·y_{t+1}, with y_T = 0.

    x: [B, T]; returns [B, T] in x's dtype. Computed as slime's `chunked_gae` does: within a chunk of
    `chunk_size` tokens the scan is one [C, C] matmul, across chunks a Python loop of T/C steps, so a
    16k-token response costs 128 small steps instead of 16k.
    """
    batch, length = x.shape
    if length == 0:
        return x.clone()
    size = min(chunk_size, length)
    num_chunks = math.ceil(length / size)
    # Padding goes after the reversed sequence, i.e. before t=0, where it cannot reach real tokens.
    reversed_x = F.pad(x.flip(-1), (0, num_chunks * size - length))
    local = reversed_x.view(batch, num_chunks, size) @ _scan_matrix(discount, size, x)
    carry_scale = torch.pow(discount, torch.arange(1, size + 1, device=x.device, dtype=x.dtype))
    carry = x.new_zeros(batch, 1)
    chunks = []
    for c in range(num_chunks):
        chunk = local[:, c] + carry * carry_scale
        chunks.append(chunk)
        carry = chunk[:, -1:]
    return torch.cat(chunks, dim=-1)[:, :length].flip(-1)


def _scan_matrix(discount: float, size: int, like: Tensor) -> Tensor:
    """M[j, s] = discount^(s − j) for j ≤ s, else 0: a prefix scan as a matmul."""
    index = torch.arange(size, device=like.device)
    exponent = index[None, :] - index[:, None]
    powers = torch.pow(discount, exponent.clamp(min=0).to(like.dtype))
    return torch.where(exponent >= 0, powers, torch.zeros((), dtype=like.dtype, device=like.device))


def discounted_returns(token_rewards: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo returns G_t = Σ_k γ^k r_{t+k} (REINFORCE++). token_rewards: [B, T] → [B, T]."""
    return discounted_cumsum(token_rewards, gamma)


def compute_gae(
    token_rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    gamma: float,
    lambd: float,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) for PPO.

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = Σ_k (γλ)^k δ_{t+k},  returns_t = A_t + V_t.

    token_rewards, values: [B, T] float; response_mask: [B, T], 1 on every position of the response
    (tool tokens included) up to its last token, 0 on the padding after it. Values on padding are
    treated as 0, so the episode ends at the response's last token (V_{T_i} = 0); advantages and
    returns are 0 there. Returns (advantages, returns), both [B, T].
    """
    require_same_shape(token_rewards=token_rewards, values=values, response_mask=response_mask)
    live = response_mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(live, values, zero)
    rewards = torch.where(live, token_rewards, zero)
    next_values = F.pad(values[:, 1:], (0, 1))
    deltas = rewards + gamma * next_values - values
    advantages = discounted_cumsum(deltas, gamma * lambd)
    return advantages, advantages + values
