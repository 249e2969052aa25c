"""Triton sampler vs the reference `Sampler` on the unfiltered path: same tokens, same log-probs."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from temper.engine.kernels import sampling
from temper.engine.sampler import Sampler, SamplingTensors, noise_keys


def tensors(temperatures, seeds, positions, device) -> SamplingTensors:
    n = len(temperatures)
    return SamplingTensors(
        temperatures=torch.tensor(temperatures, dtype=torch.float32, device=device),
        top_k=torch.full((n,), 1 << 30, dtype=torch.int64, device=device),
        top_p=torch.ones(n, device=device), min_p=torch.zeros(n, device=device),
        keys=torch.tensor([noise_keys(s, p) for s, p in zip(seeds, positions)], dtype=torch.int64, device=device),
        all_greedy=all(t == 0 for t in temperatures), needs_filter=False,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("chunk", "tile"), [(64, 64), (256, 64), (4096, 2048)])  # one tile, several, ragged
def test_same_tokens_and_logprobs_as_the_reference(dtype, chunk, tile, device):
    g = torch.Generator().manual_seed(0)
    vocab, rows = 500, 12  # 500 is not a multiple of the chunk: a ragged last chunk
    logits = (3 * torch.randn(rows, vocab + 24, generator=g)).to(dtype).to(device)[:, :vocab]  # strided rows
    t = tensors([0.6, 1.0, 0.0, 2.0] * 3, list(range(rows)), [5 * i for i in range(rows)], device)
    ref_tokens, ref_logprobs = Sampler()(logits.float(), t)
    tokens, logprobs = sampling.sample(logits, t.temperatures, t.keys, t.all_greedy, chunk=chunk, tile=tile)
    assert tokens.tolist() == ref_tokens.tolist()
    torch.testing.assert_close(logprobs, ref_logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("chunk", "tile"), [(64, 64), (256, 32)])
def test_greedy_takes_the_first_of_tied_maxima(chunk, tile, device):
    logits = torch.zeros(3, 300, device=device)
    logits[0, [70, 130, 250]] = 5.0  # ties across chunks of 64
    logits[1, [3, 4]] = 1.0
    logits[2, [134, 38, 102]] = 2.0  # one lane of 32 in three tiles: the earliest tile's column wins
    t = tensors([0.0, 0.0, 0.0], [0, 0, 0], [0, 0, 0], device)
    tokens, logprobs = sampling.sample(logits, t.temperatures, t.keys, True, chunk=chunk, tile=tile)
    assert tokens.tolist() == [70, 3, 38]
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1)[[0, 1, 2], [70, 3, 38]])


def test_draws_follow_the_softmax(device):
    """40k draws from one 8-token distribution (different output positions) match softmax(x / T). On
    CPU the equality with the reference sampler (whose own tests check the statistics) stands for it."""
    if device == "cpu":
        pytest.skip("40k rows take minutes in triton's interpreter")
    n, temperature = 40_000, 0.7
    base = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], device=device)
    t = tensors([temperature] * n, [9] * n, list(range(n)), device)
    tokens, _ = sampling.sample(base.expand(n, 8), t.temperatures, t.keys, False, chunk=8)
    freq = torch.bincount(tokens.cpu(), minlength=8).double() / n
    assert (freq - torch.softmax(base.cpu().double() / temperature, -1)).abs().max() < 2.5 / n**0.5


def test_every_batch_size_runs_the_same_compiled_kernels(device):
    """Triton specialises pointers on 16-byte alignment: per-row statistics laid out by batch size would
    compile new variants in the middle of serving (seen on an H100 when the chunk count was odd)."""
    if device == "cpu":
        pytest.skip("the interpreter compiles nothing")
    logits = torch.randn(9, 151936, device=device, dtype=torch.bfloat16)

    def variants():
        return sum(len(entry[0]) for kernel in (sampling._chunk_kernel, sampling._pick_kernel)
                   for entry in kernel.device_caches.values())

    t = tensors([0.6] * 9, list(range(9)), [0] * 9, device)
    sampling.sample(logits[:4], t.temperatures[:4], t.keys[:4], False)
    before = variants()
    for rows in range(1, 10):
        sampling.sample(logits[:rows], t.temperatures[:rows], t.keys[:rows], False)
    assert variants() == before
