"""Helpers the engine's HF-parity tests share (a plain module with a name no other test folder uses):
a small engine, the greedy settings and the greedy check against Hugging Face."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from temper.engine import EngineArgs, LLMEngine, SamplingParams

NEW_TOKENS = 24
GREEDY = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)


def engine_for(path, **kwargs) -> LLMEngine:
    kwargs.setdefault("num_kv_blocks", 256)
    kwargs.setdefault("max_model_len", 128)
    return LLMEngine(EngineArgs(model=str(path), **kwargs))


def check_greedy(engine, path, prompts, hf):
    outs = engine.generate(prompts, GREEDY)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        assert out.output_token_ids == hf.greedy(path, prompt, NEW_TOKENS), f"prompt {i} (len {len(prompt)})"
        assert out.finish_reason == "length" and len(out.output_logprobs) == NEW_TOKENS
    assert engine.stats()["kv_blocks_used"] == 0 and not engine.has_unfinished_requests()
    return outs


def check_prefix_cache_hits(engine, outs, prompts) -> None:
    """`outs` of `check_greedy` over the shared `prompts` fixture on a fresh `engine` with prefix caching: prompts
    17-21 share a 40-token prefix (2 full blocks cached), the last ones are copies of one prompt; prefill computed
    exactly the tokens the cache did not hold."""
    assert all(o.cached_tokens >= 32 for o in outs[17:22])  # shared 40-token prefix: 2 full blocks
    assert all(o.cached_tokens > 0 for o in outs[22:])  # copies of one prompt
    total = sum(map(len, prompts))
    assert engine.stats()["prefill_tokens_computed"] == total - engine.stats()["cached_tokens"] < total


def check_n_sample_logprobs(path, prompts, hf, temperature: float) -> None:
    """n=4 samples of a 40+-token prompt (and one other prompt): the first prefills it, the other three hit its
    cached blocks; the samples differ, and every sampled token's log-prob is within 1e-4 of an HF forward's."""
    params = SamplingParams(n=4, temperature=temperature, max_new_tokens=16, ignore_eos=True, seed=11)
    outs = engine_for(path).generate([prompts[16], prompts[0]], params)
    assert [o.cached_tokens >= 32 for o in outs[:4]] == [False, True, True, True]
    assert len({tuple(o.output_token_ids) for o in outs[:4]}) > 1
    for out in outs:
        prompt = out.prompt_token_ids
        expected = hf.logprobs(path, prompt + out.output_token_ids, len(prompt), temperature)
        assert (torch.tensor(out.output_logprobs) - expected).abs().max() <= 1e-4


def check_update_in_trainer_names(path) -> None:
    """A tiny DeepSeek-style MoE checkpoint (`path`: expert 7 in layer 1, e_score_correction_bias buffers): the
    trainer's in-memory HF layout (experts fused as [E, 2I, H]) sent under the checkpoint's names
    (temper/train/weights.py, what iter_weight_buckets sends) after a change of every parameter; the engine then
    computes what the changed HF model computes. The buffers are not sent (training does not change them)."""
    from test_models import engine_logits
    from transformers import AutoModelForCausalLM

    from temper.train.weights import iter_full_parameters

    engine = engine_for(path)
    trainer = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert any(n.endswith("mlp.experts.gate_up_proj") for n, _ in trainer.named_parameters())  # fused in memory
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in trainer.parameters():
            param.mul_(1 + 0.05 * torch.randn(param.shape, generator=g))
    pairs = list(iter_full_parameters(trainer))
    sent, needed = {name for name, _ in pairs}, set(engine.model_runner.weight_map.hf_names())
    assert needed - sent == {n for n in needed if n.endswith("e_score_correction_bias")}
    assert "model.layers.1.mlp.experts.7.gate_proj.weight" in sent and not sent - needed - {"lm_head.weight"}
    tokens = torch.randint(0, 1000, (70,), generator=torch.Generator().manual_seed(4)).tolist()
    before = engine_logits(engine, tokens)
    engine.load_weights(iter(pairs))
    after = engine_logits(engine, tokens)
    with torch.no_grad():
        expected = trainer(torch.tensor([tokens])).logits[0]
    assert not torch.allclose(before, after, atol=1e-2)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(engine.get_weights_by_name("model.layers.1.mlp.experts.7.down_proj.weight"),
                               trainer.model.layers[1].mlp.experts.down_proj[7])


def check_mtp_layer_skipped(path, tmp_path, hf, attention_weight: tuple[str, tuple], unknown_name: str) -> None:
    """A DeepSeek-style checkpoint `path` of 2 layers with a multi-token-prediction layer added as layer 2
    (`attention_weight`: one of its attention tensors, name and shape): the engine does not serve it and loads
    the rest, from disk or by name; an unknown name (`unknown_name`) is still an error."""
    copy = tmp_path / "with-mtp"
    shutil.copytree(path, copy)
    name, shape = attention_weight
    mtp = {"model.layers.2.eh_proj.weight": torch.zeros(128, 256), name: torch.zeros(shape)}
    save_file(mtp, copy / "model-mtp.safetensors")
    engine = engine_for(copy)
    prompt = [5, 6, 7, 8]
    assert engine.generate([prompt], GREEDY)[0].output_token_ids == hf.greedy(path, prompt, NEW_TOKENS)
    engine.load_weights(iter(mtp.items()))
    with pytest.raises(ValueError, match="unknown weight name"):
        engine.load_weights([(unknown_name, torch.zeros(1))])


def check_two_tensor_parallel_ranks(path, variant, hf, read_back: tuple[str, ...], variant_prompts: int) -> None:
    """An engine over two ranks on checkpoint `path`: greedy as HF's, a prefix-cache hit included; then the
    weights of checkpoint `variant` loaded from full tensors: greedy as HF's on it for `variant_prompts` prompts,
    and the `read_back` weights read back whole, equal to the variant's."""
    from temper.engine.weights import iter_safetensors

    engine = engine_for(path, tensor_parallel_size=2, num_kv_blocks=48, max_num_seqs=8)
    try:
        shared = list(range(100, 140))
        prompts = hf.prompts(3, 3, 40, seed=1) + [shared + [1, 2, 3]]
        for out, prompt in zip(engine.generate(prompts, GREEDY), prompts):
            assert out.output_token_ids == hf.greedy(path, prompt, NEW_TOKENS)
        (out,) = engine.generate([shared + [7, 8]], GREEDY)
        assert out.cached_tokens == 32 and out.output_token_ids == hf.greedy(path, shared + [7, 8], NEW_TOKENS)
        new = dict(iter_safetensors(variant))
        engine.load_weights(new.items())
        for prompt in hf.prompts(variant_prompts, 5, 20, seed=3):
            assert engine.generate([prompt], GREEDY)[0].output_token_ids == hf.greedy(variant, prompt, NEW_TOKENS)
        for name in read_back:
            assert torch.equal(engine.get_weights_by_name(name), new[name]), name
    finally:
        engine.close()
