"""The engine benchmark's workload and measuring helpers, shared by its parts (`engine_throughput.py`,
`engine_diagnostics.py`): the model shapes, nano-vllm's requests, the memory roofline, the result lines a
part prints for the driver, and `timed_generate` (the engine's own offline loop, with a deadline)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import time

import torch

RESULT = "RESULT "  # the prefix of a part's result lines, which the driver collects


def shapes(smoke: bool) -> dict:
    from temper.testing.tiny_models import PRESETS

    if smoke:
        tiny = PRESETS["tiny"]
        return {"qwen3-0.6b": tiny, "qwen3-1.7b": dataclasses.replace(tiny, hidden_size=96, num_layers=3),
                "qwen3-4b": dataclasses.replace(tiny, hidden_size=128, num_layers=2)}
    return {name: PRESETS[name] for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b")}


def needed_shapes(parts: list[str]) -> list[str]:
    """The checkpoints the parts use (the 4B one only for the tensor-parallel parts: 8 GB to write)."""
    names = ["qwen3-0.6b", "qwen3-1.7b"]
    return names + ["qwen3-4b"] if any(p.startswith("tp") for p in parts) else names


def add_workload_arguments(p) -> None:
    """nano-vllm's workload flags (`make_requests` reads them): request count, prompt and output length ranges,
    the engine's context."""
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--max-model-len", type=int, default=4096)


def add_part_runner_arguments(p, total_budget: float) -> None:
    """The flags of a benchmark whose parts run in processes of their own (`run_part_process`): the budgets,
    the device, and the hidden ones a part's process gets."""
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every part's time budget")
    p.add_argument("--total-budget", type=float, default=total_budget,
                   help="seconds for the whole run; later parts shrink")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=None, help=argparse.SUPPRESS)


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


@dataclasses.dataclass(frozen=True)
class ModelBytes:
    """What the MoE roofline charges a model (`moe_roofline`).

    dense: weight bytes that every decode step reads whatever its batch (attention, norms, routers, shared
        experts, dense layers' MLPs, the LM head; not the embedding, of which a step reads one row a token).
    expert: one routed expert's weight bytes (gate, up, down); moe_layers: the layers with routed experts,
        num_experts of them, top_k picked per token. kv_token: K/V (or latent) cache bytes of one context token
        over all layers. active_params: the weights one prompt token multiplies (dense less the LM head, plus
        top_k experts per MoE layer); attention_flops: prefill attention FLOPs per (query, key) pair, all layers.
    """

    dense: int
    expert: int
    moe_layers: int
    num_experts: int
    top_k: int
    kv_token: int
    active_params: int
    attention_flops: int

    @property
    def weights(self) -> int:
        """Every weight byte but the embedding's (what a prefill step reads)."""
        return self.dense + self.moe_layers * self.num_experts * self.expert


def model_bytes(hf_config, itemsize: int = 2) -> ModelBytes:
    """`ModelBytes` of the engine's own model for `hf_config`, counted from its parameters (built on the meta
    device: no memory) in a dtype of `itemsize` bytes."""
    from temper.engine.models import model_class
    from temper.engine.tp_group import TPGroup

    with torch.device("meta"):
        model = model_class(hf_config)(hf_config, 16, TPGroup(torch.device("cpu")))
    params = dict(model.named_parameters())
    stacked = [p for p in params.values() if getattr(p, "num_stacked", None)]
    expert_params = sum(p.numel() for p in stacked)
    num_experts = stacked[0].num_stacked if stacked else 0
    head = params.get("lm_head.weight", params["model.embed_tokens.weight"]).numel()
    embedding = 0 if model.tie_word_embeddings else params["model.embed_tokens.weight"].numel()
    dense = sum(p.numel() for p in params.values()) - expert_params - embedding
    moe_layers, top_k = len(stacked) // 2, getattr(hf_config, "num_experts_per_tok", 0) if stacked else 0
    per_expert = expert_params // max(1, num_experts * moe_layers)
    kv_tensors, kv_heads, kv_dim = model.kv_cache_layout(hf_config, 1)
    layers, heads = hf_config.num_hidden_layers, hf_config.num_attention_heads
    if getattr(hf_config, "kv_lora_rank", None):  # latent attention: q.k over nope + rope dims, then v
        pair = heads * (hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim + hf_config.v_head_dim)
    else:
        pair = 2 * heads * kv_dim
    return ModelBytes(dense=dense * itemsize, expert=per_expert * itemsize, moe_layers=moe_layers,
                      num_experts=num_experts, top_k=top_k, kv_token=kv_tensors * layers * kv_heads * kv_dim * itemsize,
                      active_params=dense - head + moe_layers * top_k * per_expert, attention_flops=2 * layers * pair)


def distinct_experts(batch: int, pick_probs) -> float:
    """Expected distinct experts a decode step of `batch` tokens reads, summed over the MoE layers: expert e of
    a layer is read unless no token picks it, sum over e of 1 - (1 - p_e)^batch, with `pick_probs` [moe_layers,
    num_experts] the chance that a token picks e (each row sums to top_k); tokens of different requests route
    independently. Uniform routing gives E * (1 - (1 - k/E)^batch) per layer."""
    import numpy as np

    p = np.asarray(pick_probs, dtype=np.float64)
    return float((1.0 - (1.0 - p) ** batch).sum())


def uniform_picks(mb: ModelBytes) -> list[list[float]]:
    return [[mb.top_k / mb.num_experts] * mb.num_experts for _ in range(mb.moe_layers)]


def decode_schedule(prompt_lens: list[int], outputs: list[int], capacity: int | None = None,
                    max_seqs: int | None = None) -> list[tuple[int, int]]:
    """(batch, context tokens read) of each decode step when requests are admitted first come first served
    while at most `max_seqs` run and their final lengths (prompt + output) fit in `capacity` cache tokens (None:
    no limit), as an ideal scheduler that knows the lengths would: no preemption, no recomputation. A request's
    prefill samples its first token; it then decodes output - 1 times, step t reading prompt + t tokens."""
    import numpy as np

    waiting = list(range(len(prompt_lens)))[::-1]
    need = [p + o for p, o in zip(prompt_lens, outputs)]
    active, used, steps = [], 0, []
    done = np.zeros(len(prompt_lens), dtype=np.int64)  # decode steps each request has had
    while waiting or active:
        while waiting and (max_seqs is None or len(active) < max_seqs) and (
                not active or capacity is None or used + need[waiting[-1]] <= capacity):
            i = waiting.pop()
            active.append(i)
            used += need[i]
        decoding = [i for i in active if done[i] < outputs[i] - 1]
        if decoding:
            rows = np.array(decoding)
            done[rows] += 1
            steps.append((len(decoding), int(sum(prompt_lens[i] for i in decoding) + done[rows].sum())))
        finished = [i for i in active if done[i] >= outputs[i] - 1]
        used -= sum(need[i] for i in finished)
        active = [i for i in active if done[i] < outputs[i] - 1]
    return steps


def moe_roofline(mb: ModelBytes, prompts, outputs, bandwidth: float, matmul_flops: float, pick_probs=None,
                 capacity: int | None = None, max_seqs: int | None = None, max_tokens_per_step: int = 8192) -> dict:
    """Fewest seconds for the workload on a model of `mb`: each decode step (`decode_schedule`, at the engine's
    cache `capacity` and `max_seqs`) reads the dense weights, the experts its batch touches (`distinct_experts`
    under `pick_probs`, default uniform routing) and its requests' context K/V, at the copy `bandwidth`; prefill
    is its matmul FLOPs at `matmul_flops` plus every weight once per prefill step of `max_tokens_per_step`."""
    lens = prompts_lens(prompts)
    steps = decode_schedule(lens, outputs, capacity, max_seqs)
    picks = pick_probs if pick_probs is not None else uniform_picks(mb)
    touched = {b: distinct_experts(b, picks) if mb.moe_layers else 0.0 for b in {b for b, _ in steps}}
    expert_bytes = sum(mb.expert * touched[b] for b, _ in steps)
    kv_bytes = sum(mb.kv_token * ctx for _, ctx in steps)
    decode_bytes = len(steps) * mb.dense + expert_bytes + kv_bytes
    prefill_tokens = sum(lens)
    prefill_flops = 2 * mb.active_params * prefill_tokens + sum(mb.attention_flops * n * (n + 1) / 2 for n in lens)
    prefill_steps = -(-prefill_tokens // max_tokens_per_step)
    seconds = (decode_bytes + prefill_steps * mb.weights) / bandwidth + prefill_flops / matmul_flops
    return {"decode_steps": len(steps), "mean_batch": sum(b for b, _ in steps) / max(1, len(steps)),
            "decode_bytes": decode_bytes, "expert_read_bytes": expert_bytes, "kv_read_bytes": kv_bytes,
            "prefill_flops": prefill_flops, "seconds": seconds, "tok_per_s": sum(outputs) / seconds}


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


def run_part_process(cmd: list[str], part: str, timeout: float) -> list[dict]:
    """Run one benchmark part as the process `cmd` under `timeout` seconds: its result lines (echoed), and a
    "failed" result with the last lines of its output if it exited otherwise than 0 or timed out."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        code = "timeout"
    found = []
    for line in out.splitlines():
        if line.startswith(RESULT):
            found.append(json.loads(line[len(RESULT) :]))
            print("  " + line[len(RESULT) :], flush=True)
    if code != 0:
        tail = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(RESULT)][-15:]
        print(f"  part {part} exited {code} after {time.perf_counter() - start:.0f}s; last lines:", flush=True)
        for line in tail:
            print("    " + line[:300], flush=True)
        found.append({"kind": "failed", "part": part, "exit": code})
    return found
