"""Shared fixtures for engine tests: tiny checkpoints whose outputs depend on the context, and HF references.

`temper.testing`'s tiny models use HF's default init (std 0.02 with tied embeddings), under which the
greedy continuation just repeats the last prompt token; a parity test on that would not exercise
attention. `spread_model_dir` re-draws the weights at a scale (linear std 2/sqrt(fan_in)) where
greedy outputs vary with the whole prompt, and writes a normal HF folder.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from temper.testing.tiny_models import build_tiny_model


@functools.cache
def spread_model_dir(arch: str = "qwen3", seed: int = 0, **overrides) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"temper-engine-{arch}-{seed}-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    build_tiny_model(out, arch, seed=seed, **overrides)
    model = AutoModelForCausalLM.from_pretrained(out)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.endswith("norm.weight"):
                w.copy_(1 + 0.1 * torch.randn(w.shape, generator=g))
            elif w.ndim == 1:  # biases
                w.copy_(0.1 * torch.randn(w.shape, generator=g))
            elif "embed_tokens" in name:
                w.copy_(0.05 * torch.randn(w.shape, generator=g))
            else:
                w.copy_(2.0 / math.sqrt(w.shape[1]) * torch.randn(w.shape, generator=g))
    model.save_pretrained(out)
    return out


@functools.cache
def hf_model(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(path: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """HF generate(do_sample=False), ignoring EOS, one prompt at a time (no padding effects); cached."""
    return list(_hf_greedy(path, tuple(prompt), max_new_tokens))


@functools.cache
def _hf_greedy(path: Path, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    model = hf_model(path)
    out = model.generate(
        torch.tensor([list(prompt)]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
    )
    tokens = out[0, len(prompt):].tolist()
    assert len(tokens) == max_new_tokens, "HF generate stopped early; EOS was not disabled"
    return tuple(tokens)


@torch.no_grad()
def hf_logprobs(path: Path, tokens: list[int], num_prompt: int, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of tokens[num_prompt:] under an HF forward pass (T = 0 means 1)."""
    logits = hf_model(path)(torch.tensor([tokens])).logits[0].float()
    logits = logits[num_prompt - 1 : len(tokens) - 1] / (temperature or 1.0)
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens[num_prompt:])[:, None])[:, 0]


def random_prompts(n: int, lo: int, hi: int, seed: int = 0, vocab: int = 1000) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lens]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than two on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def model_dir():
    """model_dir(arch="qwen3", seed=0, **ModelShape overrides) -> Path of a spread tiny checkpoint."""
    return spread_model_dir


@pytest.fixture(scope="session")
def hf():
    """HF references: hf.model(path), hf.greedy(path, prompt, n), hf.logprobs(path, tokens, num_prompt, T)."""
    return SimpleNamespace(model=hf_model, greedy=hf_greedy, logprobs=hf_logprobs, prompts=random_prompts)


@pytest.fixture(scope="module")
def prompts(hf):
    """16 random prompts of 3..60 tokens, 6 sharing a 40-token prefix, and 4 copies of one prompt."""
    mixed = hf.prompts(16, 3, 60, seed=0)
    prefix = hf.prompts(1, 40, 40, seed=1)[0]
    shared = [prefix + suffix for suffix in hf.prompts(6, 1, 20, seed=2)]
    return mixed + shared + [mixed[3]] * 4
