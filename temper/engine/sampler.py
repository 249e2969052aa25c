"""Token sampling and the log-probs that temper's trainer recomputes.

Log-probs: for each sampled token the sampler returns ``log_softmax(logits / temperature)[token]``
over the FULL vocabulary, in float32 (temperature 0, greedy: ``log_softmax(logits)``). top_k, top_p
and min_p decide which tokens may be sampled but do NOT renormalize the returned log-prob: the
trainer computes log-probs as log_softmax(logits / rollout temperature) of the policy, and the two
must agree for the importance ratio to be 1 on the first step.

Sampling (SGLang's semantics): with p = softmax(logits / T) sorted in descending order, a token is a
candidate iff its rank < top_k, the mass of the tokens ranked before it is <= top_p, and
p >= min_p * p_max; the token is drawn from p restricted to the candidates and renormalized.
temperature 0 takes the argmax of the raw logits (first index on ties, as torch/HF do).

Randomness: the draw is a Gumbel-max race, argmax(log p + g) (computed as argmax(logits / T + g): the
two differ by one constant per row), with noise g that is a pure function of
(request seed, output position, token id), built by a counter-based integer hash. So a request's
tokens do not depend on what else is in the batch, on preemption, or on the device; requests without
a seed get one from the engine's seeded generator when they are added.

On CUDA the unfiltered path (no top-k / top-p / min-p in the batch) runs as Triton kernels
(`kernels/sampling.py`): the same hash bit for bit and the same formulas, without [B, V]
temporaries; only the float log's last bits may differ between devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from temper.engine import kernels

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class SamplingTensors:
    """Per-row sampling settings for a batch of B rows, on the logits' device.

    temperatures: [B] float32, 0 for greedy rows. top_k: [B] int64 (vocab size when disabled).
    top_p, min_p: [B] float32. keys: [B, 2] int64, two 32-bit noise keys per row (`noise_keys`).
    """

    temperatures: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    keys: torch.Tensor
    all_greedy: bool
    needs_filter: bool


def noise_keys(seed: int, position: int) -> tuple[int, int]:
    """Two 32-bit keys for the noise of output token `position` of a request seeded with `seed`."""
    key = _splitmix64(seed_hash(seed) ^ position)
    return key & _M32, key >> 32


def seed_hash(seed: int) -> int:
    """The per-request half of `noise_keys` (computed once per request)."""
    return _splitmix64(seed & _M64)


def noise_keys_array(seed_hashes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`noise_keys` for many rows at once: uint64 `seed_hash` values and output positions -> [n, 2] int64."""
    with np.errstate(over="ignore"):
        key = _splitmix64_array(seed_hashes.astype(np.uint64) ^ positions.astype(np.uint64))
    return np.stack([key & np.uint64(_M32), key >> np.uint64(32)], axis=1).astype(np.int64)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    # uint64 arithmetic wraps modulo 2**64, as the masks above do.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # A 32-bit integer hash on int64 tensors holding values < 2**32. The multiplier is < 2**27, so
    # products stay below 2**59 and nothing overflows on any device.
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def gumbel_noise(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, V] float32 standard Gumbel noise, a pure function of keys [B, 2] and the token id."""
    token_ids = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    x = _mix32(token_ids[None, :] ^ keys[:, :1])
    x = _mix32(x ^ keys[:, 1:])
    uniform = ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # in (0, 1)
    return -torch.log(-torch.log(uniform))


def candidate_mask(logprobs: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """[B, V] bool, True for tokens excluded by top_k / top_p / min_p (see the module docstring)."""
    probs = logprobs.exp()
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    ranks = torch.arange(probs.shape[-1], device=probs.device)
    excluded = (ranks[None, :] >= t.top_k[:, None]) | (mass_before > t.top_p[:, None])
    excluded |= sorted_probs < sorted_probs[:, :1] * t.min_p[:, None]
    return torch.zeros_like(excluded).scatter_(1, order, excluded)


class Sampler:
    def __call__(self, logits: torch.Tensor, t: SamplingTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [B, V] (any float dtype) -> (token ids [B] int64, log-probs [B] float32)."""
        if not t.needs_filter and kernels.enabled("sampler", logits):
            from temper.engine.kernels.sampling import sample

            return sample(logits, t.temperatures, t.keys, t.all_greedy)
        logits = logits.float()
        greedy = t.temperatures == 0
        temperatures = torch.where(greedy, torch.ones_like(t.temperatures), t.temperatures)
        scaled = logits / temperatures[:, None]
        logprobs = torch.log_softmax(scaled, dim=-1)
        tokens = logits.argmax(dim=-1)
        if not t.all_greedy:
            scores = scaled  # argmax(log p + g) = argmax(x / T + g): the normaliser is one constant per row
            if t.needs_filter:
                scores = scaled.masked_fill(candidate_mask(logprobs, t), float("-inf"))
            sampled = (scores + gumbel_noise(t.keys, logits.shape[-1])).argmax(dim=-1)
            tokens = torch.where(greedy, tokens, sampled)
        return tokens, logprobs.gather(1, tokens[:, None]).squeeze(1)
