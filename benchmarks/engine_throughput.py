"""Offline throughput of temper's engine on nano-vllm's workload, with HF `generate` as the baseline.

Workload (nano-vllm's bench.py): 256 requests, random prompt ids of length uniform [100, 1024],
max_new_tokens uniform [100, 1024], ignore_eos, temperature 0.6, seed 0, max model length 4096, on a
random model of Qwen3-0.6B's shape (bf16 on CUDA). The HF baseline runs the same requests through
``model.generate`` in left-padded batches (sorted by prompt length, each batch generating its longest
max_new_tokens); only the requested tokens count as output.

    python benchmarks/engine_throughput.py                     # full run (GPU)
    python benchmarks/engine_throughput.py --skip-hf           # engine only
    python benchmarks/engine_throughput.py --model-shape tiny --num-requests 16 \
        --input-len 10 60 --output-len 10 40                   # CPU smoke run
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from temper.engine import EngineArgs, LLMEngine, SamplingParams
from temper.testing.tiny_models import PRESETS, build_tiny_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--model-shape", default="qwen3-0.6b", choices=sorted(PRESETS))
    p.add_argument("--skip-hf", action="store_true", help="skip the HF generate baseline")
    p.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def make_requests(args) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(0)
    top = min(10000, PRESETS[args.model_shape].vocab_size) - 1
    prompts = [[rng.randint(0, top) for _ in range(rng.randint(*args.input_len))] for _ in range(args.num_requests)]
    outputs = [rng.randint(*args.output_len) for _ in range(args.num_requests)]
    return prompts, outputs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_engine(path, args, prompts, output_lens) -> float:
    engine = LLMEngine(EngineArgs(model=str(path), device=args.device, max_model_len=args.max_model_len, seed=0))
    device = engine.model_runner.device
    engine.generate([[1] * 32, [2] * 64], SamplingParams(max_new_tokens=16))  # warm-up
    params = [SamplingParams(temperature=0.6, max_new_tokens=n, ignore_eos=True) for n in output_lens]
    sync(device)
    start = time.perf_counter()
    outs = engine.generate(prompts, params)
    sync(device)
    seconds = time.perf_counter() - start
    assert sum(len(o.output_token_ids) for o in outs) == sum(output_lens)
    del engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


@torch.no_grad()
def bench_hf(path, args, prompts, output_lens, device: torch.device, dtype: torch.dtype) -> float:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i : i + args.hf_batch_size] for i in range(0, len(order), args.hf_batch_size)]
    _hf_generate(model, [prompts[0][:32]], 8, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        _hf_generate(model, [prompts[i] for i in batch], max(output_lens[i] for i in batch), device)
    sync(device)
    return time.perf_counter() - start


def _hf_generate(model, prompts, max_new_tokens, device):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                          temperature=0.6, top_p=1.0, top_k=0, eos_token_id=None, pad_token_id=0)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = EngineArgs(model="-", device=args.device).torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    prompts, output_lens = make_requests(args)
    total = sum(output_lens)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(tmp, "qwen3", preset=args.model_shape, dtype=dtype,
                                max_position_embeddings=max(args.max_model_len, PRESETS[args.model_shape].max_position_embeddings))
        print(f"model: qwen3 {args.model_shape} ({dtype}, {device}); {len(prompts)} requests, "
              f"{sum(map(len, prompts))} prompt tokens, {total} output tokens")
        seconds = bench_engine(path, args, prompts, output_lens)
        print(f"temper engine: {total} tok in {seconds:.2f}s = {total / seconds:.1f} tok/s")
        if not args.skip_hf:
            hf_seconds = bench_hf(path, args, prompts, output_lens, device, dtype)
            print(f"HF generate (batch {args.hf_batch_size}): {total} tok in {hf_seconds:.2f}s = "
                  f"{total / hf_seconds:.1f} tok/s")
            print(f"speed-up: {hf_seconds / seconds:.2f}x")


if __name__ == "__main__":
    main()
