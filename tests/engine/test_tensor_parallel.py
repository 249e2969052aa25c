"""Tensor parallelism of the built-in engine on CPU: two real ranks (a worker process) over gloo.

Qwen3 (tied embeddings: the LM head is a view of the replicated embedding) and Llama with every
bias and an untied LM head (so that row-parallel biases and a sharded LM-head parameter are covered)
must decode as Hugging Face does, and as the one-rank engine does; weights must load (full tensors,
or a checkpoint folder every rank reads) and read back whole; a dead worker must be an error, never
a hang.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.engine.server import ServerArgs, ServerThread
from temper.engine.weights import iter_safetensors

NEW_TOKENS = 10
SHARED = list(range(100, 140))  # 40 tokens: two full blocks of 16 are cached for the second prompt


def engine_args(path, tp: int = 2, **overrides) -> EngineArgs:
    return EngineArgs(model=str(path), tensor_parallel_size=tp, max_model_len=128, num_kv_blocks=48, max_num_seqs=8,
                      **overrides)


@pytest.fixture(scope="module")
def biased_llama(model_dir, tmp_path_factory):
    """biased_llama(seed) -> a spread tiny Llama with q/k/v/o and MLP biases and an untied LM head."""
    built = {}

    def build(seed: int):
        if seed not in built:
            out = tmp_path_factory.mktemp(f"llama-bias-{seed}")
            shutil.copytree(model_dir("llama", seed=seed, tie_word_embeddings=False), out, dirs_exist_ok=True)
            config = json.loads((out / "config.json").read_text())
            (out / "config.json").write_text(json.dumps({**config, "attention_bias": True, "mlp_bias": True}))
            model = AutoModelForCausalLM.from_pretrained(out)  # the biases are new: drawn below
            g = torch.Generator().manual_seed(2000 + seed)
            with torch.no_grad():
                for name, w in model.named_parameters():
                    if name.endswith(".bias"):
                        w.copy_(0.1 * torch.randn(w.shape, generator=g))
            model.save_pretrained(out)
            built[seed] = out
        return built[seed]

    return build


@pytest.fixture(scope="module")
def engines(model_dir, biased_llama):
    """{"qwen3": (path, TP=2 engine), "llama": (...)}: shared by the tests below, which leave their
    weights as they found them. The Llama engine schedules overlapped (as on CUDA): each worker then
    feeds its own last sampled tokens to the next step."""
    made = {}
    for name, path, overlap in (("qwen3", model_dir("qwen3", seed=0), False), ("llama", biased_llama(0), True)):
        made[name] = (path, LLMEngine(engine_args(path, overlap_scheduling=overlap)))
    yield made
    for _, engine in made.values():
        engine.close()


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)


def assert_matches_hf(engine, path, hf, prompts) -> None:
    for out, prompt in zip(engine.generate(prompts, greedy()), prompts):
        assert out.output_token_ids == hf.greedy(path, prompt, NEW_TOKENS), prompt


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_greedy_matches_hf_token_for_token(engines, hf, arch):
    path, engine = engines[arch]
    prompts = hf.prompts(4, 3, 40, seed=1)
    assert_matches_hf(engine, path, hf, prompts)
    first, second = SHARED + [1, 2, 3], SHARED + [7, 8]
    assert_matches_hf(engine, path, hf, [first])
    (out,) = engine.generate([second], greedy())
    assert out.cached_tokens == 32  # the shared prefix came from the prefix cache
    assert out.output_token_ids == hf.greedy(path, second, NEW_TOKENS)


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_sampled_tokens_and_logprobs_match_one_rank(engines, hf, arch):
    path, engine = engines[arch]
    single = LLMEngine(engine_args(path, tp=1))
    prompts = hf.prompts(5, 4, 30, seed=2)
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=NEW_TOKENS, ignore_eos=True, seed=11)
    for a, b in zip(engine.generate(prompts, params), single.generate(prompts, params)):
        assert a.output_token_ids == b.output_token_ids
        assert max(abs(x - y) for x, y in zip(a.output_logprobs, b.output_logprobs)) < 1e-4


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_weight_updates_reach_every_rank(engines, hf, model_dir, biased_llama, arch):
    path, engine = engines[arch]
    new_path = model_dir("qwen3", seed=1) if arch == "qwen3" else biased_llama(1)
    prompts = hf.prompts(2, 5, 20, seed=3)
    new = dict(iter_safetensors(new_path))
    stale = ("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(16))  # old checkpoints have it: skipped
    engine.load_weights([*new.items(), stale])  # full tensors from rank 0, broadcast to the worker
    assert_matches_hf(engine, new_path, hf, prompts)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight",
                 "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight",
                 *(["lm_head.weight", "model.layers.0.self_attn.o_proj.bias", "model.layers.0.mlp.down_proj.bias",
                     "model.layers.1.self_attn.v_proj.bias"] if arch == "llama" else [])):
        assert torch.equal(engine.get_weights_by_name(name), new[name]), name
    with pytest.raises(ValueError, match=r"model.norm.weight.*expected shape \(128,\), got \(3,\)"):
        engine.load_weights([("model.norm.weight", torch.ones(3))])  # a bad tensor: an error, not a stop
    engine.load_weights_from_disk(str(path))  # every rank reads the folder itself
    assert_matches_hf(engine, path, hf, prompts)


def test_memory_release_and_resume_on_every_rank(engines, hf):
    path, engine = engines["qwen3"]
    engine.release_memory()
    assert engine.model_runner.kv_cache is None
    engine.resume_memory()
    assert_matches_hf(engine, path, hf, hf.prompts(2, 5, 20, seed=4))


def test_bad_tensor_parallel_size_is_a_one_line_error(model_dir):
    with pytest.raises(ValueError, match="EngineArgs.tensor_parallel_size must be a positive integer, got 0"):
        engine_args(model_dir("qwen3", seed=0), tp=0)
    with pytest.raises(ValueError) as e:
        LLMEngine(engine_args(model_dir("qwen3", seed=0), tp=3))
    message = str(e.value)
    assert "EngineArgs.tensor_parallel_size=3 does not divide the model's num_attention_heads=4" in message
    assert "\n" not in message


def test_a_killed_worker_is_an_error_not_a_hang(model_dir):
    engine = LLMEngine(engine_args(model_dir("qwen3", seed=0)))
    try:
        worker = engine.model_runner.workers.processes[0]
        worker.kill()
        worker.join(10)
        outcome = {}

        def generate():
            try:
                engine.generate([[1, 2, 3]], greedy())
            except Exception as e:  # noqa: BLE001 -- what the test inspects
                outcome["error"] = e

        start = time.monotonic()
        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "generate hung after the worker died"
        error = outcome.get("error")
        assert isinstance(error, RuntimeError), error
        assert "tensor-parallel worker rank 1" in str(error) and "died" in str(error) and "SIGKILL" in str(error)
        assert time.monotonic() - start < 30
        with pytest.raises(RuntimeError, match="tensor-parallel worker rank 1"):  # and so on, at once
            engine.generate([[4, 5]], greedy())
    finally:
        engine.close()


def test_server_with_tp_size_2(model_dir):
    args = ServerArgs(model=str(model_dir("qwen3", seed=0)), port=0, log_level="warning", tp_size=2,
                      max_model_len=128, num_kv_blocks=48, device="cpu")
    server = ServerThread(args).start()
    workers = server.state.engine.engine.model_runner.workers
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.get("/get_server_info").json()["tp_size"] == 2
            out = client.post("/generate", json={"input_ids": [5, 6, 7], "sampling_params": {
                "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}}).json()
            assert len(out["output_ids"]) == 4
    finally:
        server.stop()
    assert all(p.exitcode is not None for p in workers.processes)  # the server closed the engine
