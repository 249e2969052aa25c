"""Chunked log-probs and entropy against a full-vocabulary computation, values and gradients."""

import pytest
import torch

from temper.train import log_probs as lp_module
from temper.train.log_probs import resolve_chunk_size, token_log_probs


def reference(hidden, weight, targets, temperature):
    logits = (hidden @ weight.T).float() / temperature
    log_softmax = torch.log_softmax(logits, -1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    return log_softmax.gather(-1, targets[:, None]).squeeze(-1), entropy


def inputs(tokens=11, hidden=16, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    # logits of realistic size (|z| of a few units): fp32 rounding stays far below the 1e-5 bound
    h = (0.3 * torch.randn(tokens, hidden, generator=g, dtype=torch.float64)).requires_grad_()
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, t


@pytest.mark.parametrize("chunk_size", [1, 3, 11, 64, -1])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_full_in_value_and_gradient(chunk_size, temperature):
    h, w, t = inputs()
    got_lp, got_ent = token_log_probs(h, w, t, temperature=temperature, chunk_size=chunk_size, with_entropy=True)
    (got_lp.sum() + 0.3 * got_ent.sum()).backward()
    got_grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    want_lp, want_ent = reference(h, w, t, temperature)
    (want_lp.sum() + 0.3 * want_ent.sum()).backward()
    assert got_lp.dtype == torch.float32 and got_ent.dtype == torch.float32
    torch.testing.assert_close(got_lp, want_lp.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(got_ent, want_ent.float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(got_grads[0], h.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_grads[1], w.grad, rtol=0, atol=1e-5)


def test_entropy_is_optional_and_empty_input_is_fine():
    h, w, t = inputs()
    log_probs, entropy = token_log_probs(h, w, t)
    assert entropy is None and log_probs.shape == (11,)
    empty, empty_entropy = token_log_probs(h[:0], w, t[:0], with_entropy=True)
    assert empty.shape == (0,) and empty_entropy.shape == (0,)


def test_never_builds_more_than_one_chunk_of_logits(monkeypatch):
    seen = []
    for name in ("stats_reference", "grad_reference"):
        original = getattr(lp_module, name)

        def spy(logits, *args, _original=original):
            seen.append(logits.shape[0])
            return _original(logits, *args)

        monkeypatch.setattr(lp_module, name, spy)
    h, w, t = inputs(tokens=10)
    token_log_probs(h, w, t, chunk_size=4)[0].sum().backward()
    # 3 chunks in forward, recomputed once each in backward, none over 4 rows
    assert seen == [4, 4, 2, 4, 4, 2]


def test_bias_and_a_detached_entropy_get_the_reference_gradients():
    h, w, t = inputs(seed=1)
    b = torch.randn(w.shape[0], dtype=torch.float64, requires_grad=True)
    log_probs, entropy = token_log_probs(h, w, t, bias=b, chunk_size=4, with_entropy=True, temperature=1.3)
    entropy = entropy.detach()  # what the actor does with --entropy-coef 0
    (log_probs * torch.linspace(-1, 2, len(t))).sum().backward()
    got = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    logits = (h @ w.T + b).float() / 1.3
    want = torch.log_softmax(logits, -1).gather(-1, t[:, None]).squeeze(-1)
    (want * torch.linspace(-1, 2, len(t))).sum().backward()
    torch.testing.assert_close(log_probs, want, rtol=0, atol=1e-5)
    for g, x in zip(got, (h, w, b)):
        torch.testing.assert_close(g, x.grad, rtol=0, atol=1e-5)


def test_automatic_chunk_size_bounds_logits_memory():
    assert resolve_chunk_size(-1, 151936) * 151936 <= lp_module.AUTO_CHUNK_ELEMENTS
    assert resolve_chunk_size(None, 10**9) == 1
    assert resolve_chunk_size(7, 151936) == 7


def test_rejects_mismatched_shapes():
    h, w, t = inputs()
    with pytest.raises(ValueError, match="targets"):
        token_log_probs(h, w, t[:-1])
