"""temper's varlen attention: no token attends across a packed sequence boundary, and a model on it
gives Hugging Face's own packed-row (block-diagonal mask) log-probs and gradients."""

import pytest
import torch
import torch.nn.functional as F
from train_helpers import toy_batch

from temper.testing import tiny_model_dir
from temper.train import attention
from temper.train.hf_model import load_causal_lm, policy_log_probs
from temper.train.packing import pack

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def dense_reference(q, k, v, lengths, scale):
    """[S, Hq, D] attention with an explicit block-diagonal causal mask, in float64."""
    q, k, v = (t.double().transpose(0, 1) for t in (q, k, v))  # [H, S, D]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
    v = v.repeat_interleave(q.shape[0] // v.shape[0], 0)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(q.device)
    pos = torch.arange(len(seq), device=q.device)
    allowed = (seq[:, None] == seq[None, :]) & (pos[:, None] >= pos[None, :])
    scores = (q @ k.transpose(1, 2) * scale).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)


def random_row(lengths, heads=4, kv_heads=2, dim=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, generator=g).to(device, dtype) for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0, *lengths]).cumsum(0).to(device, torch.int32)
    return q, k, v, cu


def call(q, k, v, cu, max_len, scale):
    """`varlen_attention` as Hugging Face calls it: [1, H, S, D] in, [1, S, H, D] out."""
    out, weights = attention.varlen_attention(
        None, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None,
        scaling=scale, **attention.varlen_kwargs(cu, max_len),
    )  # fmt: skip
    assert weights is None
    return out[0]


def test_each_sequence_attends_to_itself_only():
    lengths = [5, 1, 9, 3]
    q, k, v, cu = random_row(lengths)
    got = call(q, k, v, cu, max(lengths), 0.25)
    torch.testing.assert_close(got.double(), dense_reference(q, k, v, lengths, 0.25), rtol=0, atol=1e-5)
    # a change in one sequence's keys leaves every other sequence's output unchanged
    k2 = k.clone()
    k2[6:15] += torch.randn(9, *k.shape[1:])  # the third sequence
    moved = (call(q, k2, v, cu, max(lengths), 0.25) - got).abs().amax(dim=(1, 2))
    assert moved[6:15].max() > 1e-3
    assert moved[:6].max() == 0 and moved[15:].max() == 0


def test_missing_sequence_bounds_is_an_error_that_says_what_to_pass():
    q, k, v, _ = random_row([4])
    with pytest.raises(ValueError, match="varlen_kwargs"):
        attention.varlen_attention(None, q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_model_on_varlen_attention_matches_hugging_face_packed_sdpa(arch):
    """Log-probs and every parameter's gradient of a packed row: temper's attention vs HF's own sdpa
    packed path (which builds the block-diagonal mask from the position ids), in fp32."""
    path = tiny_model_dir(arch)
    batch = toy_batch(5, seed=3)
    mb = pack(batch.tokens, batch.response_lengths, list(range(5)))
    results = {}
    for name in (attention.VARLEN, "sdpa"):
        model = load_causal_lm(path, torch.float32, name)
        log_probs, _ = policy_log_probs(model, mb, temperature=0.7, chunk_size=5)
        (log_probs * torch.linspace(-1, 1, len(log_probs))).sum().backward()
        results[name] = log_probs.detach(), {n: p.grad for n, p in model.named_parameters()}
    (fast_lp, fast_grads), (ref_lp, ref_grads) = results[attention.VARLEN], results["sdpa"]
    torch.testing.assert_close(fast_lp, ref_lp, rtol=0, atol=2e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("kv_heads", [2, 4])
def test_flash_varlen_matches_the_reference_in_bf16_with_gradients(kv_heads):
    """The CUDA fast path (Flash Attention over the packed row) vs float64 block-diagonal attention:
    outputs and q/k/v gradients within bf16 tolerance; sequences of 1 to 700 tokens."""
    lengths = [700, 1, 130, 64, 511, 2]
    q, k, v, cu = random_row(lengths, heads=4, kv_heads=kv_heads, dim=128, dtype=torch.bfloat16, device="cuda")
    for t in (q, k, v):
        t.requires_grad_(True)
    out = call(q, k, v, cu, max(lengths), 128**-0.5)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref = dense_reference(*leaves, lengths, 128**-0.5)
    ref.backward(grad_out.double())
    for got, want in [(out, ref), *((t.grad, r.grad) for t, r in zip((q, k, v), leaves))]:
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 1e-2, rel


@pytest.mark.gpu
@cuda
def test_bf16_model_on_flash_varlen_matches_per_sequence_sdpa():
    """A bf16 Qwen3 on CUDA: log-probs of the packed row through Flash varlen vs through the exact
    per-sequence path (sdpa on each sequence), within bf16 tolerance."""
    path = tiny_model_dir("qwen3")
    batch = toy_batch(6, seed=4)
    mb = pack(batch.tokens, batch.response_lengths, list(range(6))).to(torch.device("cuda"))
    model = load_causal_lm(path, torch.bfloat16).cuda()
    with torch.no_grad():
        fast, _ = policy_log_probs(model, mb, temperature=1.0)
        original = attention._flash_varlen
        attention._flash_varlen = lambda q, k, v, cu, _m, s: attention._sdpa_per_sequence(q, k, v, cu, s)
        try:
            exact, _ = policy_log_probs(model, mb, temperature=1.0)
        finally:
            attention._flash_varlen = original
    assert (fast - exact).abs().mean() < 0.02
    assert F.cosine_similarity(fast, exact, dim=0) > 0.999
