"""The Triton row kernels of the chunked log-probs against their PyTorch references (log_probs.py).

On CPU they run in triton's interpreter (fp32 logits; TRITON_INTERPRET is set before the kernels are
defined); on CUDA in bf16 as the trainer runs them. Skipped without triton.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from temper.train import log_probs, logit_kernels  # noqa: E402 -- after TRITON_INTERPRET

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def random_chunk(rows, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(DEVICE, DTYPE)
    targets = torch.randint(0, vocab, (rows,), generator=g).to(DEVICE)
    upstream = [torch.randn(rows, generator=g).to(DEVICE) for _ in range(2)]
    return logits, targets, upstream


@pytest.mark.parametrize("vocab", [5, 2048, 4099])  # under one tile, exactly one, a partial last tile
@pytest.mark.parametrize("with_entropy", [True, False])
def test_row_kernels_equal_the_references(vocab, with_entropy):
    logits, targets, (g_lp, g_ent) = random_chunk(6, vocab, seed=vocab)
    want = [torch.full((6,), float("nan"), device=DEVICE) for _ in range(3)]
    got = [torch.full((6,), float("nan"), device=DEVICE) for _ in range(3)]
    log_probs.stats_reference(logits, targets, 0.8, want[0], want[1], want[2] if with_entropy else None)
    logit_kernels.row_stats(logits, targets, 0.8, got[0], got[1], got[2] if with_entropy else None)
    for a, b in zip(got[: 3 if with_entropy else 2], want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ent_args = (want[2], g_ent) if with_entropy else (None, None)
    grad_want = log_probs.grad_reference(logits, targets, 0.8, want[1], ent_args[0], g_lp, ent_args[1])
    poisoned = logits.clone()
    grad_got = logit_kernels.row_grad(poisoned, targets, 0.8, want[1], ent_args[0], g_lp, ent_args[1])
    assert grad_got.data_ptr() == poisoned.data_ptr()  # in place over the logits
    tol = 1e-2 if DTYPE == torch.bfloat16 else 1e-5
    assert ((grad_got.float() - grad_want.float()).norm() / grad_want.float().norm()) < tol
