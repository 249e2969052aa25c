"""The engine benchmark's workload and measuring helpers, shared by its parts (`engine_throughput.py`,
`engine_diagnostics.py`): the model shapes, nano-vllm's requests, the memory roofline, the result lines a
part prints for the driver, and `timed_generate` (the engine's own offline loop, with a deadline)."""

from __future__ import annotations

import dataclasses
import json
import random
import time

import torch

RESULT = "RESULT "  # the prefix of a part's result lines, which the driver collects


def shapes(smoke: bool) -> dict:
    from temper.testing.tiny_models import PRESETS

    base = PRESETS["qwen3-0.6b"]
    big = dataclasses.replace(base, hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                              num_kv_heads=8, head_dim=128)  # Qwen3-1.7B (vocab 151936, tied embeddings)
    four = PRESETS["qwen3-4b"]
    if smoke:
        tiny = PRESETS["tiny"]
        return {"qwen3-0.6b": tiny, "qwen3-1.7b": dataclasses.replace(tiny, hidden_size=96, num_layers=3),
                "qwen3-4b": dataclasses.replace(tiny, hidden_size=128, num_layers=2)}
    return {"qwen3-0.6b": base, "qwen3-1.7b": big, "qwen3-4b": four}


def needed_shapes(parts: list[str]) -> list[str]:
    """The checkpoints the parts use (the 4B one only for the tensor-parallel parts: 8 GB to write)."""
    names = ["qwen3-0.6b", "qwen3-1.7b"]
    return names + ["qwen3-4b"] if any(p.startswith("tp") for p in parts) else names


def make_requests(args, vocab: int, seed: int = 0, count: int | None = None) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    top = min(10000, vocab) - 1
    n = count if count is not None else args.num_requests
    prompts = [[rng.randint(0, top) for _ in range(rng.randint(*args.input_len))] for _ in range(n)]
    outputs = [rng.randint(*args.output_len) for _ in range(n)]
    return prompts, outputs


def roofline(shape, prompts, outputs, bandwidth: float, matmul_flops: float, max_tokens_per_step: int = 8192) -> dict:
    """Fewest bytes and FLOPs of the workload when every request decodes together (they all fit).

    Decode step t serves every request with more than t outputs: it reads all weights once (the LM head
    included; the embedding rows are negligible) and each served request's K/V for its context. Prefill
    (first output token included) is counted as matmul FLOPs at the measured rate.
    """
    h, layers, v = shape.hidden_size, shape.num_layers, shape.vocab_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    layer_params = h * (q + 2 * kv) + q * h + 3 * h * shape.intermediate_size
    weight_bytes = 2 * (layers * layer_params + v * h)
    kv_token_bytes = 2 * layers * 2 * kv
    decode_steps = max(outputs) - 1
    # Request (p, o) decodes o - 1 times; step t reads p + t tokens of context (t = 1 .. o - 1).
    kv_reads = sum((o - 1) * p + (o - 1) * o // 2 for p, o in zip(prompts_lens(prompts), outputs))
    prefill_tokens = sum(prompts_lens(prompts))
    prefill_flops = 2 * layers * layer_params * prefill_tokens + sum(
        4 * layers * q * n * (n + 1) / 2 for n in prompts_lens(prompts))
    prefill_steps = -(-prefill_tokens // max_tokens_per_step)
    decode_bytes = decode_steps * weight_bytes + kv_reads * kv_token_bytes
    seconds = decode_bytes / bandwidth + prefill_flops / matmul_flops + prefill_steps * weight_bytes / bandwidth
    return {"weight_bytes": weight_bytes, "kv_bytes_per_token": kv_token_bytes, "decode_steps": decode_steps,
            "kv_read_bytes": kv_reads * kv_token_bytes, "decode_bytes": decode_bytes, "prefill_flops": prefill_flops,
            "seconds": seconds, "tok_per_s": sum(outputs) / seconds}


def prompts_lens(prompts) -> list[int]:
    return [len(p) if isinstance(p, list) else int(p) for p in prompts]


def emit(kind: str, **fields) -> None:
    print(RESULT + json.dumps({"kind": kind, **fields}), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(fn, work: float, device: torch.device, repeats: int = 10) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return work / sorted(times)[len(times) // 2]


def timed_generate(engine, prompts, params, budget: float, timeline: list | None = None) -> dict:
    """`engine.generate` with a deadline. Over budget, the rest are aborted and the tokens so far count.

    Returns output_tokens, seconds, finished_requests, steps, and prefill_phase_seconds (until no
    request waits for admission: with every request fitting at once, the prefill phase). `timeline`, if
    given, gets (seconds since start, launched batch) after every step (see `part_timeline`).
    """
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    launched = []
    if timeline is not None:  # record each step's batch as the scheduler hands it to the device
        record = engine.scheduler.launched
        engine.scheduler.launched = lambda batch: (launched.append(batch), record(batch))
    before = engine.stats()["generated_tokens"]
    sync(engine.model_runner.device)
    start = time.perf_counter()
    finished = steps = 0
    prefill_phase = None
    while engine.has_unfinished_requests():
        finished += sum(out.finished for out in engine._step(stream=False))  # generate()'s own loop
        steps += 1
        if timeline is not None:
            timeline.append((time.perf_counter() - start, batch_shape(launched[-1]) if launched else None))
            launched.clear()
        if prefill_phase is None and not engine.scheduler.waiting:
            prefill_phase = time.perf_counter() - start
        if time.perf_counter() - start > budget:
            break
    sync(engine.model_runner.device)
    seconds = time.perf_counter() - start
    done = engine.stats()["generated_tokens"] - before
    for request_id in ids:
        engine.abort_request(request_id)
    while engine.has_unfinished_requests():
        engine.step()
    if timeline is not None:
        del engine.scheduler.launched
    return {"output_tokens": done, "seconds": seconds, "finished_requests": finished, "steps": steps,
            "prefill_phase_seconds": prefill_phase}


def batch_shape(batch) -> tuple[bool, int, int]:
    """(is prefill, sequences, context tokens attended to after the step)."""
    return batch.is_prefill, len(batch.seqs), sum(s.num_computed_tokens + n for s, n in zip(batch.seqs, batch.num_new_tokens))
