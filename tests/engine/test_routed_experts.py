"""Each token's routed experts returned by the engine (temper/engine/routed_experts.py; R3), on CPU, fp32,
tiny spread Qwen3-MoE, DeepSeek-V3 and GLM-4.5 checkpoints: equal to Hugging Face's routing of the same tokens for
every computed token and layer, on the loop and on the grouped path, with prefix-cache hits, under
preemption and chunked prefill; the HTTP field in SGLang's format; dense models refuse it."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import torch
from engine_helpers import engine_for

from temper.engine import SamplingParams, kernels
from temper.engine.sequence import RequestOutput

GREEDY = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
ARCHS = ["qwen3_moe", "deepseek_v3", "glm4_moe"]


@torch.no_grad()
def hf_routing(hf, path, tokens: list[int]) -> np.ndarray:
    """Hugging Face's top-k expert ids [len(tokens), num_hidden_layers, top_k] (sorted per token; -1 on
    dense layers), read from the arguments of every MoE block's experts module."""
    model = hf.model(path)
    layers = model.model.layers
    top_k = model.config.num_experts_per_tok
    routing = np.full((len(tokens), len(layers), top_k), -1, dtype=np.int32)
    handles = []
    for i, layer in enumerate(layers):
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None:
            def hook(module, args, i=i):
                routing[:, i] = np.sort(args[1].numpy(), axis=-1)
            handles.append(experts.register_forward_pre_hook(hook))
    try:
        model(torch.tensor([tokens]))
    finally:
        for handle in handles:
            handle.remove()
    return routing


def run(engine, prompts: list[list[int]], params: SamplingParams = GREEDY) -> list[RequestOutput]:
    ids = [engine.add_request(p, params, return_routed_experts=True) for p in prompts]
    final = {}
    while engine.has_unfinished_requests():
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    return [final[i] for i in ids]


def assert_routing_is_hf(hf, path, out: RequestOutput) -> None:
    tokens = out.prompt_token_ids + out.output_token_ids
    routed = out.routed_experts
    assert routed.dtype == np.int32 and routed.shape[0] == len(tokens) - 1  # every token but the last sampled
    expected = hf_routing(hf, path, tokens)[:-1]
    np.testing.assert_array_equal(np.sort(routed, axis=-1), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_routed_experts_are_hf_routing_with_prefix_cache_hits(arch, model_dir, hf):
    path = model_dir(arch)
    engine = engine_for(path, max_num_batched_tokens=40)  # the 50-token prompts are prefilled in chunks
    prompts = hf.prompts(4, 3, 50, seed=11)
    shared = hf.prompts(1, 40, 40, seed=12)[0]
    outs = run(engine, prompts + [shared + [1, 2]])
    outs += run(engine, [shared + [3, 4, 5]])  # its first 32 tokens' K/V and routing from the cache
    assert outs[-1].cached_tokens == 32
    for out in outs:
        assert_routing_is_hf(hf, path, out)
    dense = hf_routing(hf, path, prompts[0])
    if arch in ("deepseek_v3", "glm4_moe"):  # first_k_dense_replace = 1: layer 0 has no experts
        assert (outs[0].routed_experts[:, 0] == -1).all() and (dense[:, 0] == -1).all()
    plain = engine.generate(prompts[:1], GREEDY)[0]
    assert plain.routed_experts is None  # only for requests that ask


@pytest.mark.parametrize("arch", ARCHS)
def test_routed_experts_on_the_grouped_path_and_under_preemption(arch, model_dir, hf):
    path = model_dir(arch)
    engine = engine_for(path, num_kv_blocks=8, max_model_len=96)
    kernels.set_enabled({"moe"} if kernels.grouped_mm_runs_on_cpu() else set())
    try:
        outs = run(engine, hf.prompts(10, 10, 40, seed=13), SamplingParams(temperature=0, max_new_tokens=24,
                                                                           ignore_eos=True))
    finally:
        kernels.set_enabled(set())
    assert engine.stats()["num_preemptions"] > 0
    for out in outs:
        assert_routing_is_hf(hf, path, out)


def test_a_request_preempted_while_its_last_token_is_in_flight_keeps_its_routing(model_dir, hf):
    """Overlapped scheduling: a sequence preempted (its blocks freed) while the step that samples its last token
    runs finishes without running again; its routing is read before the blocks go."""
    path = model_dir("qwen3_moe")
    engine = engine_for(path, overlap_scheduling=True)
    prompt = hf.prompts(1, 20, 20, seed=3)[0]
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True),
                             return_routed_experts=True)
    scheduler = engine.scheduler
    seq, preempted, final = scheduler.unfinished[rid], False, {}
    while engine.has_unfinished_requests():
        if not preempted and seq.num_pending and seq.num_output_tokens + seq.num_pending == 6:
            scheduler.running.remove(seq)  # as `_schedule_decode` takes a victim off the running list
            scheduler._preempt(seq)
            preempted = True
        final.update((o.request_id, o) for o in engine.step() if o.finished)
    assert preempted and seq.num_computed_tokens == 0  # it finished while waiting, never run again
    assert len(final[rid].output_token_ids) == 6
    assert_routing_is_hf(hf, path, final[rid])  # every computed token's routing, none lost with the blocks


def test_an_aborted_request_returns_the_routing_of_what_was_computed(model_dir, hf):
    path = model_dir("qwen3_moe")
    engine = engine_for(path)
    prompt = hf.prompts(1, 20, 20, seed=14)[0]
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_new_tokens=50, ignore_eos=True),
                             return_routed_experts=True)
    for _ in range(4):
        engine.step()
    engine.abort_request(rid)
    (out,) = [o for o in engine.step() if o.request_id == rid]
    assert out.finish_reason == "abort" and out.routed_experts.shape[0] == len(prompt) + len(out.output_token_ids) - 1
    assert_routing_is_hf(hf, path, out)


def test_a_dense_model_refuses_return_routed_experts(model_dir):
    engine = engine_for(model_dir("qwen3"))
    with pytest.raises(ValueError, match="return_routed_experts: Qwen3ForCausalLM has no experts"):
        engine.add_request([1, 2, 3], GREEDY, return_routed_experts=True)


def test_generate_route_returns_sglang_base64_int32(model_dir, hf):
    from temper.engine.server import ServerThread
    from temper.engine.server.server_args import ServerArgs

    path = model_dir("qwen3_moe")
    server = ServerThread(ServerArgs(model=str(path), host="127.0.0.1", port=0, log_level="warning")).start()
    try:
        prompts = hf.prompts(2, 5, 20, seed=15)
        body = {"input_ids": prompts, "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True},
                "return_routed_experts": [True, False], "routed_experts_start_len": 2}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            first, second = client.post("/generate", json=body).json()
            bad = client.post("/generate", json={**body, "routed_experts_start_len": 99})
    finally:
        server.stop()
    assert "routed_experts" not in second["meta_info"]
    tokens = prompts[0] + first["output_ids"]
    config = hf.model(path).config
    flat = np.frombuffer(base64.b64decode(first["meta_info"]["routed_experts"]), dtype="<i4")
    routed = flat.reshape(len(tokens) - 1 - 2, config.num_hidden_layers, config.num_experts_per_tok)
    np.testing.assert_array_equal(np.sort(routed, axis=-1), hf_routing(hf, path, tokens)[2:-1])
    assert bad.status_code == 400 and "routed_experts_start_len[0]: 99" in bad.text
