"""Helpers the engine's HF-parity tests share (a plain module with a name no other test folder uses):
a small engine, the greedy settings and the greedy check against Hugging Face."""

from __future__ import annotations

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


def check_update_in_trainer_names(path) -> None:
    """A tiny DeepSeek-style MoE checkpoint (`path`: expert 7 in layer 1, e_score_correction_bias buffers): the
    trainer's in-memory HF layout (experts fused as [E, 2I, H]) sent under the checkpoint's names
    (temper/train/weights.py, what iter_weight_buckets sends) after a change of every parameter; the engine then
    computes what the changed HF model computes. The buffers are not sent (training does not change them)."""
    import torch
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
