"""Sampler: distribution under temperature/top-k/top-p/min-p, log-prob semantics, seeded noise."""

from __future__ import annotations

import pytest
import torch

from temper.engine.sampler import (
    Sampler,
    SamplingTensors,
    candidate_mask,
    gumbel_noise,
    noise_keys,
)

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
V = len(LOGITS)


def tensors(n, temperature=1.0, top_k=V, top_p=1.0, min_p=0.0, seed=0, positions=None) -> SamplingTensors:
    positions = range(n) if positions is None else positions
    return SamplingTensors(
        temperatures=torch.full((n,), float(temperature)),
        top_k=torch.full((n,), top_k, dtype=torch.int64),
        top_p=torch.full((n,), float(top_p)),
        min_p=torch.full((n,), float(min_p)),
        keys=torch.tensor([noise_keys(seed, p) for p in positions], dtype=torch.int64),
        all_greedy=temperature == 0,
        needs_filter=top_k < V or top_p < 1 or min_p > 0,
    )


def expected_probs(temperature, top_k=V, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """Reference: SGLang's rule written independently, on sorted probabilities, then renormalized."""
    probs = torch.softmax(LOGITS.double() / temperature, -1)
    order = sorted(range(V), key=lambda i: -probs[i].item())
    keep, mass = set(), 0.0
    for rank, i in enumerate(order):
        p = probs[i].item()
        if rank < top_k and mass <= top_p and p >= min_p * probs.max().item():
            keep.add(i)
        mass += p
    masked = torch.tensor([probs[i].item() if i in keep else 0.0 for i in range(V)], dtype=torch.float64)
    return masked / masked.sum()


CASES = [
    {"temperature": 1.0},
    {"temperature": 0.5},
    {"temperature": 2.0},
    {"temperature": 1.0, "top_k": 3},
    {"temperature": 1.0, "top_p": 0.7},
    {"temperature": 0.8, "min_p": 0.2},
    {"temperature": 1.3, "top_k": 5, "top_p": 0.9, "min_p": 0.05},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_empirical_frequencies_match_filtered_softmax(case):
    n = 40_000
    tokens, _ = Sampler()(LOGITS.expand(n, V).clone(), tensors(n, seed=123, **case))
    freq = torch.bincount(tokens, minlength=V).double() / n
    expected = expected_probs(**case)
    assert torch.all(freq[expected == 0] == 0), f"excluded tokens were sampled: {freq}"
    # 40k draws: the standard error of a frequency is <= 0.0025; allow 5 sigma.
    assert (freq - expected).abs().max() < 0.0125, f"{freq} vs {expected}"
    # Chi-square over the allowed tokens (df <= 7; the 0.999 quantile for df=7 is 24.3).
    allowed = expected > 0
    chi2 = (((freq - expected)[allowed] * n) ** 2 / (expected[allowed] * n)).sum()
    assert chi2 < 24.3


def test_logprobs_are_full_vocab_log_softmax_over_temperature():
    n = 64
    for case in CASES:
        tokens, logprobs = Sampler()(LOGITS.expand(n, V).clone(), tensors(n, seed=5, **case))
        full = torch.log_softmax(LOGITS / case["temperature"], -1)
        torch.testing.assert_close(logprobs, full[tokens], rtol=0, atol=1e-6)


def test_greedy_is_argmax_with_plain_log_softmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = Sampler()(logits, tensors(5, temperature=0))
    assert tokens.tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0])


def test_mixed_greedy_and_sampled_rows():
    t = tensors(4, temperature=1.0)
    t.temperatures[::2] = 0
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    tokens, logprobs = Sampler()(logits, t)
    assert tokens[::2].tolist() == logits[::2].argmax(-1).tolist()
    full = torch.log_softmax(logits, -1)  # temperature 1 for the sampled rows too
    torch.testing.assert_close(logprobs, full.gather(1, tokens[:, None])[:, 0])


def test_candidate_mask_keeps_at_least_the_top_token():
    logprobs = torch.log_softmax(torch.tensor([[5.0, 0.0, 0.0, 0.0]]), -1)
    t = tensors(1, top_p=1e-6, min_p=1.0, top_k=1)
    assert candidate_mask(logprobs, t).tolist() == [[False, True, True, True]]


def test_noise_is_a_pure_function_of_seed_position_and_token():
    keys = torch.tensor([noise_keys(7, 3), noise_keys(7, 4), noise_keys(8, 3)], dtype=torch.int64)
    a = gumbel_noise(keys, 100)
    b = gumbel_noise(keys[[2, 0]], 100)  # other batch composition and order
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    assert torch.isfinite(a).all()


def test_seeded_rows_do_not_depend_on_the_batch():
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    t = tensors(6, temperature=1.0, top_p=0.95)
    t.keys = torch.tensor([noise_keys(s, 0) for s in range(6)], dtype=torch.int64)
    full, _ = Sampler()(logits, t)
    for i in range(6):
        sub = tensors(1, temperature=1.0, top_p=0.95)
        sub.keys = t.keys[i : i + 1]
        alone, _ = Sampler()(logits[i : i + 1], sub)
        assert alone.item() == full[i].item()


def test_noise_rows_are_uncorrelated_across_seeds_and_positions():
    # The uniform noise of neighbouring seeds / positions must look independent.
    keys = torch.tensor([noise_keys(s, p) for s in range(4) for p in range(4)], dtype=torch.int64)
    u = torch.exp(-torch.exp(-gumbel_noise(keys, 20_000).double()))  # back to uniform
    assert (u.mean(1) - 0.5).abs().max() < 0.01
    corr = torch.corrcoef(u)
    off_diagonal = corr - torch.eye(len(keys), dtype=torch.float64)
    assert off_diagonal.abs().max() < 0.04


def test_vectorized_noise_keys_equal_the_scalar_ones():
    import numpy as np

    from temper.engine.sampler import noise_keys_array, seed_hash

    seeds = [0, 1, 7, 2**63 - 1, 12345678901234, -5]
    positions = [0, 1, 1000, 3, 2**20, 9]
    keys = noise_keys_array(np.array([seed_hash(s) for s in seeds], dtype=np.uint64), np.array(positions))
    assert keys.tolist() == [list(noise_keys(s, p)) for s, p in zip(seeds, positions)]
