"""Offline throughput of temper's engine on nano-vllm's workload, against HF `generate` and the memory roofline.

Workload (nano-vllm's bench.py): 256 requests, random prompt ids of length uniform [100, 1024],
max_new_tokens uniform [100, 1024], ignore_eos, temperature 0.6, seed 0, max model length 4096, on
random bf16 models of Qwen3-0.6B's and Qwen3-1.7B's shapes. One invocation runs these parts, each in
its own process (a crash or hang in one, e.g. a kernel that fails on this GPU, costs only that part)
and each under a time budget; a part that hits its budget reports what it finished, marked partial:

  bandwidth  device-to-device copy (bytes read + written), a sum (bytes read) and a bf16 matmul: the
             ceilings; also writes the random checkpoints (on the device, seconds)
  kernels    decode attention alone (GB/s of K/V read, a few tile shapes), prefill attention and the
             sampler kernel vs the reference
  profile    the 0.6B workload run eagerly, 5 steps under torch.profiler at batch 256, 128, 64, 32 and
             16: GPU time per kernel, decode attention's achieved K/V bandwidth (only when named)
  timeline   the 0.6B workload once with every step's batch recorded: seconds, ms a step and K/V read
             per batch-size bin (only when named)
  host       streaming steps (engine.step(), as the server runs them) at batch 256 ... 16 against their
             decode graph and sampler replayed alone: time the GPU waits for the host (only when named)
  engine     the workload on the 0.6B shape (default engine: Triton kernels + CUDA graphs; every engine
             part reports the median of --repeats timed runs, prefix cache flushed before each), then the
             GRPO case (64 prompts x n=8 sharing their prompt: prefill tokens computed vs unique
             prompt tokens), then log-probs of engine samples vs an HF forward (mean |diff|)
  eager      the workload on the 0.6B shape without CUDA graphs
  engine-1.7b  the workload on the 1.7B shape
  hf         HF generate on the same 0.6B requests: one left-padded batch of all of them (halves if it
             runs out of memory), sampling as the engine does; stopped at its budget (max_time) and
             credited with the requested tokens inside the steps it finished
  no-overlap the workload on the 0.6B shape without overlapped scheduling (only when named)
  reference  the workload with the PyTorch reference kernels (runs only if `engine` failed, or when named)
  tp1-4b, tp2-4b  the workload on the Qwen3-4B shape on one GPU and tensor-parallel over two (when named)
  tp2-4b-nccl  tp2-4b with its all-reduces through NCCL instead of symmetric memory (when named)

The last lines are one table: tok/s, seconds, share of the roofline computed from the measured copy
bandwidth (weights once per decode step + every context token's K/V once per decode step + prefill
matmuls at the measured rate), and the ratio to HF.

    python benchmarks/engine_throughput.py                       # GPU, all parts, about 5 minutes on an H100
    python benchmarks/engine_throughput.py --parts engine,hf     # some parts
    python benchmarks/engine_throughput.py --smoke               # CPU smoke run, tiny model, about a minute
    python benchmarks/engine_throughput.py --total-budget 200    # tighter overall time limit (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import engine_diagnostics
import torch
from engine_workload import (
    add_part_runner_arguments,
    add_workload_arguments,
    emit,
    make_requests,
    median_rate,
    needed_shapes,
    roofline,
    run_part_process,
    shapes,
    sync,
    timed_generate,
)

PARTS = ("bandwidth", "kernels", "profile", "timeline", "host", "engine", "eager", "engine-1.7b", "hf", "no-overlap",
         "reference", "tp1-4b", "tp2-4b", "tp2-4b-nccl")
DEFAULT_PARTS = ("bandwidth", "kernels", "engine", "hf", "engine-1.7b", "eager")  # most needed first
# Per-part budgets in seconds (work inside the part; process start and engine set-up come on top).
BUDGETS = {"bandwidth": 20, "kernels": 60, "profile": 60, "timeline": 20, "host": 40, "tp1-4b": 45, "tp2-4b": 45, "tp2-4b-nccl": 45, "engine": 45, "grpo": 25, "eager": 25, "engine-1.7b": 35, "hf": 40,
           "no-overlap": 25, "reference": 30}
SETUP_ALLOWANCE = {"bandwidth": 90, "kernels": 60, "profile": 60, "timeline": 120, "host": 90, "tp1-4b": 60, "tp2-4b": 90, "tp2-4b-nccl": 90, "engine": 120, "eager": 40, "engine-1.7b": 45, "hf": 40,
                   "no-overlap": 40, "reference": 40}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    p.add_argument("--smoke", action="store_true", help="CPU smoke run: tiny model, few short requests")
    add_workload_arguments(p)
    p.add_argument("--grpo-prompts", type=int, default=64)
    p.add_argument("--grpo-n", type=int, default=8)
    p.add_argument("--grpo-output-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs of the workload per engine part (median reported; fewer if the budget ends)")
    add_part_runner_arguments(p, total_budget=330.0)
    args = p.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.num_requests, args.input_len, args.output_len = 12, [10, 60], [8, 32]
        args.max_model_len, args.grpo_prompts, args.grpo_n, args.grpo_output_len = 256, 3, 4, 8
    return args


# ---- parts (each runs in its own process) ---------------------------------------------------------


def part_bandwidth(args, device: torch.device, workdir: Path) -> None:
    measure_ceilings(device)
    for name in needed_shapes(args.parts.split(",")):
        shape = shapes(args.smoke)[name]
        start = time.perf_counter()
        build_checkpoint(workdir / name, shape, device, max(args.max_model_len, shape.max_position_embeddings))
        emit("checkpoint", name=name, seconds=time.perf_counter() - start)


def measure_ceilings(device: torch.device) -> None:
    """The roofline's ceilings: copy and read bandwidth, bf16 matmul rate (result lines with the versions)."""
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    emit("info", **info)
    emit("bandwidth", bytes_per_s=_copy_rate(device), read_bytes_per_s=_read_rate(device))
    emit("matmul", flops_per_s=_matmul_rate(device))


def _copy_rate(device: torch.device) -> float:
    """Bytes read + written per second by a device-to-device copy of a buffer far larger than L2."""
    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return median_rate(lambda: dst.copy_(src), 2 * n, device)


def _read_rate(device: torch.device) -> float:
    """Bytes per second read by a sum over a buffer far larger than L2 (what decode attention does)."""
    n = (1 << 30) if device.type == "cuda" else (1 << 26)
    src = torch.ones(n, dtype=torch.bfloat16, device=device)
    return median_rate(lambda: src.sum(dtype=torch.float32), 2 * n, device)


def _matmul_rate(device: torch.device) -> float:
    size = 8192 if device.type == "cuda" else 512
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    return median_rate(lambda: a @ b, 2 * size**3, device)


def build_checkpoint(out: Path, shape, device: torch.device, max_len: int) -> None:
    """A random bf16 (fp32 on CPU) HF checkpoint of `shape`, initialised on `device` (seconds on a GPU)."""
    from transformers import AutoModelForCausalLM

    from temper.testing.tiny_models import make_config, make_generation_config
    from temper.testing.tokenizer import save_tokenizer

    shape = dataclasses.replace(shape, max_position_embeddings=max_len)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(make_config("qwen3", shape)).to(dtype)
    model.generation_config = make_generation_config()
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.setdefault("rope_theta", shape.rope_theta)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(out, model_max_length=max_len)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def part_engine(args, device: torch.device, workdir: Path, budget: float, name: str, shape_name: str,
                grpo: bool = False, check: bool = False, **engine_kwargs) -> None:
    from temper.engine import EngineArgs, LLMEngine, SamplingParams

    path = workdir / shape_name
    start = time.perf_counter()
    engine = LLMEngine(EngineArgs(model=str(path), device=args.device, max_model_len=args.max_model_len, seed=0,
                                  **engine_kwargs))
    runner = engine.model_runner
    emit("engine_setup", name=name, seconds=time.perf_counter() - start, kernels=sorted(runner.kernel_groups),
         cuda_graphs=runner.graphs is not None, kv_blocks=runner.num_kv_blocks,
         decode_tile=getattr(runner.attention_backend, "decode_config", None),
         symmetric_all_reduce=runner.tp.symmetric is not None)
    compiled_at_setup = jit_variants()
    warm = SamplingParams(temperature=0.6, max_new_tokens=24, ignore_eos=True)
    engine.generate([[1] * 40, [2] * 70, [3] * 20], warm)  # graphs captured (if any)
    compiled_before = jit_variants()
    prompts, output_lens = make_requests(args, engine.hf_config.vocab_size)
    params = [SamplingParams(temperature=0.6, max_new_tokens=n, ignore_eos=True) for n in output_lens]
    run = repeated_runs(engine, prompts, params, budget * args.budget_scale, args.repeats)
    compiled_after = jit_variants()
    emit("throughput", name=name, shape=shape_name, requested_tokens=sum(output_lens),
         partial=run["output_tokens"] < sum(output_lens), **run,
         cuda_graphs=runner.graphs is not None and runner.graphs.captured, kernels=sorted(runner.kernel_groups),
         overlap=engine._overlap, tp=engine.args.tensor_parallel_size,
         compiles_in_warmup=_new(compiled_at_setup, compiled_before), compiles_in_run=_new(compiled_before, compiled_after))
    if grpo:
        run_grpo(args, engine, BUDGETS["grpo"] * args.budget_scale)
    if check:
        samples = check_samples(engine)
        engine.close()
        del engine, runner
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        compare_with_hf(path, device, samples)
    else:
        engine.close()


def jit_variants() -> dict[str, int] | None:
    """Compiled variants of each of the engine's Triton kernels in this process (None if this Triton
    keeps its caches elsewhere): a count that grows inside a timed run means a compile was timed."""
    try:
        from triton.runtime.jit import JITFunction

        from temper.engine.kernels import elementwise, paged_attention, sampling
    except ImportError:
        return None
    counts = {}
    for module in (elementwise, paged_attention, sampling):
        for name, fn in vars(module).items():
            if isinstance(fn, JITFunction):
                caches = getattr(fn, "device_caches", None)
                if caches is None:
                    return None
                counts[name] = sum(len(entry[0]) for entry in caches.values())
    return counts


def _new(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    return {name: after[name] - before.get(name, 0) for name in after if after[name] > before.get(name, 0)}


def repeated_runs(engine, prompts, params, budget: float, repeats: int) -> dict:
    """The workload `repeats` times on the same engine (prefix cache flushed before each, so every run
    prefills), while the budget lasts; the median run by time, with every run's tok/s in `runs_tok_s`.
    One run of this workload moves by about ±1.5% between engine starts on the same H100."""
    deadline = time.perf_counter() + budget
    runs = []
    while len(runs) < max(1, repeats):
        left = deadline - time.perf_counter()
        if runs and (runs[-1]["partial"] or left < 1.2 * runs[-1]["seconds"]):
            break
        engine.flush_cache()
        run = timed_generate(engine, prompts, params, left)
        run["partial"] = run["output_tokens"] < sum(p.max_new_tokens for p in params)
        runs.append(run)
    if runs[-1]["partial"] and len(runs) > 1:
        runs.pop()  # a partial repeat says nothing about the median
    median = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    median = {k: v for k, v in median.items() if k != "partial"}
    return {**median, "runs_tok_s": [r["output_tokens"] / r["seconds"] for r in runs]}


def run_grpo(args, engine, budget: float) -> None:
    """64 prompts x n=8 sharing their prompt; prefill tokens computed vs unique prompt tokens."""
    from temper.engine import SamplingParams

    engine.flush_cache()
    prompts, _ = make_requests(args, engine.hf_config.vocab_size, seed=1, count=args.grpo_prompts)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.grpo_output_len, ignore_eos=True, n=args.grpo_n)
    before = engine.stats()
    expanded = [p for p in prompts for _ in range(args.grpo_n)]
    run = timed_generate(engine, expanded, [dataclasses.replace(params, n=1)] * len(expanded), budget)
    after = engine.stats()
    emit("grpo", prompts=len(prompts), n=args.grpo_n, unique_prompt_tokens=sum(map(len, prompts)),
         prompt_tokens=sum(map(len, expanded)),
         prefill_tokens_computed=after["prefill_tokens_computed"] - before["prefill_tokens_computed"],
         cached_tokens=after["cached_tokens"] - before["cached_tokens"], requests=len(expanded),
         partial=run["finished_requests"] < len(expanded), **run)


def check_samples(engine) -> list[tuple[list[int], list[int], list[float], float]]:
    """A few engine samples to compare with HF: plain prompts, greedy, and samples that share a prompt
    (so their prefill ran over a cached prefix)."""
    from temper.engine import SamplingParams

    vocab = min(10000, engine.hf_config.vocab_size)
    rng = random.Random(7)
    longest = engine.max_model_len - 64
    prompts = [[rng.randrange(vocab) for _ in range(min(n, longest))] for n in (100, 333, 600, 47)]
    out = []
    for temperature, ps, n in ((0.6, prompts[:3], 1), (0.0, prompts[3:], 1), (1.0, prompts[1:2], 3)):
        params = SamplingParams(temperature=temperature, max_new_tokens=48, ignore_eos=True, n=n, seed=11)
        for prompt, res in zip([p for p in ps for _ in range(n)], engine.generate(ps, params)):
            out.append((prompt, res.output_token_ids, res.output_logprobs, temperature))
    return out


@torch.no_grad()
def compare_with_hf(path: Path, device: torch.device, samples) -> None:
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    diffs, worst = [], 0.0
    for prompt, output, logprobs, temperature in samples:
        logits = model(torch.tensor([prompt + output], device=device)).logits[0].float()
        logits = logits[len(prompt) - 1 : -1] / (temperature or 1.0)
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(output, device=device)[:, None])[:, 0]
        diff = (ref - torch.tensor(logprobs, device=device)).abs()
        diffs.append(diff.mean().item())
        worst = max(worst, diff.max().item())
    mean = sum(diffs) / len(diffs)
    emit("check", sequences=len(samples), logprob_mean_abs_diff=mean, logprob_max_abs_diff=worst,
         per_sequence=[round(x, 5) for x in diffs], passed=mean <= 0.02)


@torch.no_grad()
def part_hf(args, device: torch.device, workdir: Path, budget: float) -> None:
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(workdir / "qwen3-0.6b", dtype=dtype).to(device).eval()
    c = model.config
    hf_throughput(args, model, device, budget, "hf", "qwen3-0.6b",
                  2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * dtype.itemsize)


@torch.no_grad()
def hf_throughput(args, model, device: torch.device, budget: float, name: str, shape: str, cache_token_bytes: int,
                  **notes) -> None:
    """HF generate over the workload's requests: all in one left-padded batch (halves on out-of-memory),
    stopped by HF's own max_time at the budget; only requested tokens in finished steps count.
    `cache_token_bytes`: HF's KV cache per token (every layer), which bounds the first batch size."""
    prompts, output_lens = make_requests(args, model.config.vocab_size)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    _hf_generate(model, [prompts[0][:32]], 8, device, None)  # warm-up
    batch_size = len(prompts)
    if device.type == "cuda":  # HF's cache holds every row at the longest prompt + longest output
        free = torch.cuda.mem_get_info(device)[0]
        while batch_size > 1 and 1.15 * batch_size * (args.input_len[1] + args.output_len[1]) * cache_token_bytes > 0.9 * free:
            batch_size //= 2
    while True:
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        try:
            sync(device)
            start = time.perf_counter()
            useful = 0
            for batch in batches:
                left = budget * args.budget_scale - (time.perf_counter() - start)
                if left <= 0:
                    break
                steps = _hf_generate(model, [prompts[i] for i in batch], max(output_lens[i] for i in batch), device,
                                     left)
                useful += sum(min(steps, output_lens[i]) for i in batch)
            sync(device)
            seconds = time.perf_counter() - start
            break
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            if batch_size == 1:
                raise
            batch_size //= 2
            emit("note", part=name, message=f"out of memory; batch size {batch_size}")
    emit("throughput", name=name, shape=shape, output_tokens=useful, requested_tokens=sum(output_lens),
         seconds=seconds, partial=useful < sum(output_lens), batch_size=batch_size, **notes)


def _hf_generate(model, prompts, max_new_tokens, device, max_time) -> int:
    """Sampling steps done (HF stops early at max_time)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.6,
                         top_p=1.0, top_k=0, eos_token_id=None, pad_token_id=0, max_time=max_time)
    return out.shape[1] - width


def run_part(args) -> None:
    device = _device(args)
    workdir, budget = Path(args.workdir), args.budget
    part = args.run_part
    try:
        if part == "bandwidth":
            part_bandwidth(args, device, workdir)
        elif part == "kernels":
            engine_diagnostics.part_kernels(args, device, workdir, budget)
        elif part == "profile":
            engine_diagnostics.part_profile(args, device, workdir, budget)
        elif part == "timeline":
            engine_diagnostics.part_timeline(args, device, workdir, budget)
        elif part == "host":
            engine_diagnostics.part_host(args, device, workdir, budget)
        elif part == "engine":
            part_engine(args, device, workdir, budget, "engine", "qwen3-0.6b", grpo=True, check=True)
        elif part == "eager":
            part_engine(args, device, workdir, budget, "eager", "qwen3-0.6b", cuda_graphs=False)
        elif part == "engine-1.7b":
            part_engine(args, device, workdir, budget, "engine-1.7b", "qwen3-1.7b")
        elif part == "no-overlap":
            part_engine(args, device, workdir, budget, "no-overlap", "qwen3-0.6b", overlap_scheduling=False)
        elif part == "reference":
            part_engine(args, device, workdir, budget, "reference", "qwen3-0.6b", kernels="torch")
        elif part == "hf":
            part_hf(args, device, workdir, budget)
        elif part in ("tp1-4b", "tp2-4b", "tp2-4b-nccl"):
            tp = int(part[2])
            if device.type == "cuda" and torch.cuda.device_count() < tp:
                emit("skip", part=part, reason=f"needs {tp} GPUs, {torch.cuda.device_count()} here")
                return
            part_engine(args, device, workdir, budget, part, "qwen3-4b", tensor_parallel_size=tp,
                        symmetric_memory=False if part.endswith("nccl") else None)
    except Exception as e:  # noqa: BLE001 (report, then let the driver go on)
        traceback.print_exc()
        emit("error", part=part, error=f"{type(e).__name__}: {e}"[:500])
        sys.exit(1)


def _device(args) -> torch.device:
    if args.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(args.device)


# ---- the driver ---------------------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.run_part:
        run_part(args)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; expected some of {PARTS}")
    if "bandwidth" not in parts:
        parts.insert(0, "bandwidth")  # it writes the checkpoints
    deadline = time.perf_counter() + args.total_budget * (3 if args.smoke else 1)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="temper-bench-") as workdir:
        for part in parts:
            if part == "reference" and "reference" not in args.parts:
                continue
            left = deadline - time.perf_counter()
            budget = min(BUDGETS[part] * args.budget_scale, max(5.0, left - SETUP_ALLOWANCE[part]))
            if left < 15:
                results.append({"kind": "skip", "part": part, "reason": "total budget spent"})
                continue
            extra = BUDGETS["grpo"] * args.budget_scale if part == "engine" else 0
            results += run_subprocess(args, part, workdir, budget,
                                      timeout=min(budget + SETUP_ALLOWANCE[part] + extra, left))
            if part == "engine" and not any(r.get("name") == "engine" and r["kind"] == "throughput" for r in results):
                left = deadline - time.perf_counter()  # the fast path failed: measure the reference instead
                if left > 30:
                    budget = min(BUDGETS["reference"], max(5.0, left - SETUP_ALLOWANCE["reference"]))
                    results += run_subprocess(args, "reference", workdir, budget,
                                              timeout=min(budget + SETUP_ALLOWANCE["reference"], left))
    report(args, results)


def run_subprocess(args, part: str, workdir: str, budget: float, timeout: float) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--run-part", part, "--workdir", workdir, "--budget",
           str(budget), "--device", args.device, "--num-requests", str(args.num_requests),
           "--input-len", *map(str, args.input_len), "--output-len", *map(str, args.output_len),
           "--max-model-len", str(args.max_model_len), "--grpo-prompts", str(args.grpo_prompts),
           "--grpo-n", str(args.grpo_n), "--grpo-output-len", str(args.grpo_output_len),
           "--budget-scale", str(args.budget_scale), "--repeats", str(args.repeats), "--parts", args.parts] + (["--smoke"] if args.smoke else [])
    print(f"== {part} (budget {budget:.0f}s, timeout {timeout:.0f}s)", flush=True)
    return run_part_process(cmd, part, timeout)


def report(args, results: list[dict]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    bw = by_kind.get("bandwidth", [{}])[0].get("bytes_per_s")
    mm = by_kind.get("matmul", [{}])[0].get("flops_per_s")
    info = by_kind.get("info", [{}])[0]
    lines = [f"device: {info.get('device')}  torch {info.get('torch')}  triton {info.get('triton')}"]
    if bw:
        read = by_kind["bandwidth"][0].get("read_bytes_per_s")
        if read:
            lines.append(f"measured read bandwidth (a sum) {read / 1e12:.2f} TB/s")
        lines.append(f"measured copy bandwidth {bw / 1e12:.2f} TB/s (read + write), bf16 matmul "
                     f"{(mm or 0) / 1e12:.0f} TFLOP/s")
    hf = next((r for r in by_kind.get("throughput", []) if r["name"] == "hf"), None)
    hf_rate = hf["output_tokens"] / hf["seconds"] if hf and hf["seconds"] else None
    lines.append(f"{'run':<14}{'shape':<12}{'tok/s':>10}{'seconds':>9}{'tokens':>10}  {'roofline':>9}"
                 f"{'of roof':>8}{'x HF':>7}  notes")
    for r in by_kind.get("throughput", []):
        rate = r["output_tokens"] / r["seconds"] if r["seconds"] else 0.0
        roof = None
        if bw and mm:  # tensor parallel: the bandwidth and matmul rate of all its GPUs
            prompts, outputs = make_requests(args, 151936 if not args.smoke else 1024)
            tp = r.get("tp", 1)
            roof = roofline(shapes(args.smoke)[r["shape"]], prompts, outputs, tp * bw, tp * mm)["tok_per_s"]
        notes = []
        if r.get("partial"):
            notes.append(f"partial: budget hit ({r['output_tokens']}/{r['requested_tokens']} tokens)")
        if "kernels" in r:
            notes.append(f"kernels={','.join(r['kernels']) or 'torch'} graphs={'on' if r.get('cuda_graphs') else 'off'}"
                         f" overlap={'on' if r.get('overlap') else 'off'}")
        if r.get("tp", 1) > 1:
            notes.append(f"tensor parallel {r['tp']} (roofline: {r['tp']} GPUs' bandwidth)")
        if "batch_size" in r:
            notes.append(f"batch {r['batch_size']}")
        if len(r.get("runs_tok_s", [])) > 1:
            notes.append(f"median of {len(r['runs_tok_s'])} runs ({min(r['runs_tok_s']):.0f}-"
                         f"{max(r['runs_tok_s']):.0f})")
        if r.get("steps"):
            notes.append(f"{r['steps']} steps, {1e3 * r['seconds'] / r['steps']:.2f} ms/step, prefill phase "
                         f"{r['prefill_phase_seconds'] or 0:.2f}s")
        lines.append(f"{r['name']:<14}{r['shape']:<12}{rate:>10.0f}{r['seconds']:>9.1f}{r['output_tokens']:>10}  "
                     f"{(f'{roof:.0f}' if roof else '-'):>9}{(f'{rate / roof:.2f}' if roof else '-'):>8}"
                     f"{(f'{rate / hf_rate:.2f}' if hf_rate and r['name'] != 'hf' else '-'):>7}  {'; '.join(notes)}")
    for g in by_kind.get("grpo", []):
        lines.append(f"GRPO {g['prompts']}x{g['n']}: prefill computed {g['prefill_tokens_computed']} tokens for "
                     f"{g['unique_prompt_tokens']} unique prompt tokens ({g['prompt_tokens']} with repeats; "
                     f"{g['cached_tokens']} from the prefix cache); {g['output_tokens']} output tokens in "
                     f"{g['seconds']:.1f}s = {g['output_tokens'] / max(g['seconds'], 1e-9):.0f} tok/s"
                     + (" (partial)" if g.get("partial") else ""))
    for c in by_kind.get("check", []):
        lines.append(f"log-probs vs HF forward ({c['sequences']} sequences): mean |diff| "
                     f"{c['logprob_mean_abs_diff']:.4f}, max {c['logprob_max_abs_diff']:.3f} -> "
                     f"{'PASS' if c['passed'] else 'FAIL'} (<= 0.02)")
    for r in by_kind.get("throughput", []):
        if r.get("compiles_in_run") or r.get("compiles_in_warmup"):
            lines.append(f"{r['name']}: Triton compiles in warm-up {r.get('compiles_in_warmup')}, in the timed run "
                         f"{r.get('compiles_in_run')}")
    lines += engine_diagnostics.report_lines(by_kind, bw)
    for k in by_kind.get("engine_setup", []):
        lines.append(f"{k['name']} set-up {k['seconds']:.0f}s: kernels {k['kernels'] or 'torch'}, "
                     f"graphs {'on' if k['cuda_graphs'] else 'off'}, {k['kv_blocks']} KV blocks, decode tile "
                     f"{k.get('decode_tile')}")
    for k in by_kind.get("failed", []) + by_kind.get("error", []) + by_kind.get("skip", []) + by_kind.get("note", []):
        lines.append(f"{k['kind']}: {json.dumps({x: y for x, y in k.items() if x != 'kind'})}")
    print("\n===== engine throughput summary =====")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
