"""temper's engine on mixture-of-experts models of real widths (issue 16): throughput against the memory
roofline and HF generate, and log-probs against an HF forward, on random bf16 weights, one GPU.

No checkpoint is written: the engine starts from a folder with config.json and the tokenizer and draws its
weights on the device (``load_format="dummy"``), so a 61 GB Qwen3-30B-A3B fits a 64 GB disk. Each part runs
in its own process under a time budget (a part that hits it reports what it finished, marked partial):

  bandwidth      copy / read bandwidth and the bf16 matmul rate: the roofline's ceilings
  parity-qwen3-moe, parity-glm4, parity-deepseek-v3, parity-glm4.5-air
                 a random HF model of Qwen3-30B-A3B's, GLM-4-9B-0414's, Moonlight-16B-A3B's and GLM-4.5-Air's
                 width (every layer's real hidden size, heads and experts) cut to --parity-layers layers, built
                 on the GPU;
                 an engine with dummy weights takes HF's weights through its weight-update path (the names and
                 layout the trainer sends, `temper.train.weights.iter_full_parameters`); then greedy decoding
                 and log-probs against HF (`temper.testing.parity`: mean |diff| <= 0.02 in bf16)
  moonlight, qwen3-30b
                 nano-vllm's workload (`engine_workload.make_requests`: --num-requests requests, prompts and
                 outputs uniform in [100, 1024] tokens, ignore_eos, temperature 0.6) on the engine at
                 Moonlight-16B-A3B's (DeepSeek-V3 architecture) and Qwen3-30B-A3B's full shapes; then the experts
                 its router picks, for the roofline
  moonlight-hf, qwen3-30b-hf
                 HF generate on the same requests (`engine_throughput.hf_throughput`), its fastest experts
                 implementation that runs here (grouped_mm: torch._grouped_mm) and sdpa attention

The roofline (`engine_workload.moe_roofline`): every decode step reads the dense weights, the experts its
batch touches (expected distinct experts given how often the engine's router picked each, per layer) and its
requests' K/V (or latent) cache, at the measured copy bandwidth; requests decode together as far as the
engine's KV cache and max_num_seqs allow; prefill at the measured matmul rate. Targets: >= 0.6 of the
roofline and >= 10x HF.

    python benchmarks/engine_moe.py                                   # GPU, every part, about 8 minutes
    python benchmarks/engine_moe.py --parts parity-glm4,moonlight     # some parts
    python benchmarks/engine_moe.py --smoke                           # CPU, tiny shapes, in-process, seconds
    python benchmarks/engine_moe.py --parts moonlight,qwen3-30b --moe-kernel grouped_mm   # A/B: no fused experts
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from engine_throughput import hf_throughput, measure_ceilings, repeated_runs
from engine_workload import (
    RESULT,
    add_part_runner_arguments,
    add_workload_arguments,
    emit,
    make_requests,
    model_bytes,
    moe_roofline,
    run_part_process,
)

# name -> (tiny-model factory arch, preset)
MODELS = {"moonlight": ("deepseek_v3", "moonlight-16b-a3b"), "qwen3-30b": ("qwen3_moe", "qwen3-30b-a3b")}
PARITY = {"parity-qwen3-moe": ("qwen3_moe", "qwen3-30b-a3b"), "parity-glm4": ("glm4", "glm4-9b"),
          "parity-deepseek-v3": ("deepseek_v3", "moonlight-16b-a3b"), "parity-glm4.5-air": ("glm4_moe", "glm4.5-air")}
PARTS = ("bandwidth", *PARITY, "moonlight", "moonlight-hf", "qwen3-30b", "qwen3-30b-hf")
# not in the default run: the workload eagerly under torch.profiler, where a decode step's GPU time goes
PROFILES = {"moonlight-profile": "moonlight", "qwen3-30b-profile": "qwen3-30b"}
# Seconds of work inside a part, and what process start, model set-up and graph capture take on top.
BUDGETS = {"bandwidth": 15, **dict.fromkeys(PARITY, 30), "moonlight": 60, "moonlight-hf": 30, "qwen3-30b": 75,
           "qwen3-30b-hf": 30, **dict.fromkeys(PROFILES, 40)}
SETUP_ALLOWANCE = {"bandwidth": 40, **dict.fromkeys(PARITY, 75), "moonlight": 100, "moonlight-hf": 70,
                   "qwen3-30b": 120, "qwen3-30b-hf": 90, **dict.fromkeys(PROFILES, 60)}
TARGET_ROOFLINE, TARGET_HF = 0.6, 10.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {','.join((*PARTS, *PROFILES))}")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, every part in this process")
    add_workload_arguments(p)
    p.add_argument("--mem-fraction-static", type=float, default=0.9,
                   help="the engine's share of GPU memory for weights + KV cache")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of the workload per engine part (median)")
    p.add_argument("--moe-kernel", default="auto", choices=("auto", "grouped_mm"),
                   help="the engines' routed experts (EngineArgs.moe_kernel): grouped_mm for an A/B against the fused "
                        "Triton kernels")
    p.add_argument("--parity-layers", type=int, default=4)
    p.add_argument("--parity-prompts", type=int, default=10)
    p.add_argument("--parity-tokens", type=int, default=32)
    add_part_runner_arguments(p, total_budget=500.0)
    args = p.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.num_requests, args.input_len, args.output_len, args.max_model_len = 4, [4, 24], [2, 6], 64
        args.parity_layers, args.parity_prompts, args.parity_tokens = 2, 2, 6
    return args


# ---- models -------------------------------------------------------------------------------------------------
def config_folder(args, workdir: Path, name: str, arch: str, preset: str, **overrides) -> Path:
    """config.json, generation config and tokenizer of `preset` (the tiny shape under --smoke), no weights."""
    from temper.testing.tiny_models import build_tiny_model

    path = workdir / name
    if not (path / "config.json").exists():
        build_tiny_model(path, arch, preset="tiny" if args.smoke else preset, weights=False, **overrides)
    return path


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def hf_model(path: Path, device: torch.device, seed: int = 0):
    """A random HF model of the folder's config, initialised on `device` (seconds on a GPU); an MoE model's
    experts run HF's fastest implementation that runs here, grouped_mm (torch._grouped_mm), else HF's default."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from temper.train.hf_model import is_moe

    torch.manual_seed(seed)
    with torch.device(device):
        if is_moe(AutoConfig.from_pretrained(path)):
            try:
                return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=_dtype(device),
                                                        experts_implementation="grouped_mm").eval()
            except (ValueError, ImportError, KeyError, TypeError) as e:  # a transformers without it
                emit("note", part=path.name, message=f"HF grouped_mm experts unavailable ({e}); HF's default")
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=_dtype(device)).eval()


def hf_cache_token_bytes(config, dtype: torch.dtype) -> int:
    """HF's KV cache per token over every layer: K and V per KV head, or for latent attention the
    decompressed keys (nope + rope) and values of every head."""
    if getattr(config, "kv_lora_rank", None):
        width = config.num_attention_heads * (config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim)
    else:
        width = 2 * config.num_key_value_heads * config.head_dim
    return config.num_hidden_layers * width * dtype.itemsize


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- parts --------------------------------------------------------------------------------------------------
@torch.no_grad()
def part_parity(args, device: torch.device, workdir: Path, name: str) -> None:
    from temper.engine import EngineArgs, LLMEngine
    from temper.testing.parity import compare_with_hf, passes_bf16, random_prompts
    from temper.train.weights import iter_full_parameters

    arch, preset = PARITY[name]
    path = config_folder(args, workdir, name, arch, preset, num_layers=args.parity_layers)
    hf = hf_model(path, device)
    engine = LLMEngine(EngineArgs(model=str(path), load_format="dummy", device=args.device,
                                  dtype=str(_dtype(device)).removeprefix("torch."), max_model_len=512,
                                  num_kv_blocks=256, max_num_seqs=16))
    sent: set[str] = set()

    def hf_weights():  # HF's names and layout, as the trainer sends them; and the buffers the engine loads
        needed = set(engine.model_runner.weight_map.hf_names())
        buffers = [(n, b) for n, b in hf.named_buffers() if n in needed]  # DeepSeek's e_score_correction_bias
        for hf_name, tensor in [*iter_full_parameters(hf), *buffers]:
            sent.add(hf_name)
            yield hf_name, tensor

    engine.load_weights(hf_weights())  # the weight-update path
    runner = engine.model_runner
    missing = [n for n in runner.weight_map.hf_names() if n not in sent]
    if missing:
        raise ValueError(f"HF's weights lack {len(missing)} the engine needs, e.g. {missing[:3]}")
    report = compare_with_hf(hf, engine, random_prompts(args.parity_prompts), args.parity_tokens)
    c = hf.config
    emit("parity", name=name, arch=arch, shape=preset, layers=c.num_hidden_layers, hidden=c.hidden_size,
         heads=c.num_attention_heads, experts=getattr(c, "num_experts", None) or getattr(c, "n_routed_experts", None),
         dtype=str(_dtype(device)), hf_experts=getattr(c, "_experts_implementation", None),
         kernels=sorted(runner.kernel_groups), cuda_graphs=runner.graphs is not None,
         attention=type(runner.attention_backend).__name__, **report, passed=passes_bf16(report))
    engine.close()


def part_engine(args, device: torch.device, workdir: Path, budget: float, name: str) -> None:
    from temper.engine import EngineArgs, LLMEngine, SamplingParams

    path = config_folder(args, workdir, name, *MODELS[name])
    start = time.perf_counter()
    engine = LLMEngine(EngineArgs(model=str(path), load_format="dummy", device=args.device, seed=0,
                                  max_model_len=args.max_model_len, mem_fraction_static=args.mem_fraction_static,
                                  moe_kernel=args.moe_kernel))
    runner = engine.model_runner
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    emit("engine_setup", name=name, seconds=time.perf_counter() - start, kernels=sorted(runner.kernel_groups),
         cuda_graphs=runner.graphs is not None, attention=type(runner.attention_backend).__name__,
         kv_blocks=runner.num_kv_blocks, weight_bytes=weights, mem_fraction_static=args.mem_fraction_static,
         **_memory(device))
    engine.generate([[1] * 20, [2] * 30, [3] * 10], SamplingParams(temperature=0.6, max_new_tokens=8, ignore_eos=True))
    prompts, output_lens = make_requests(args, engine.hf_config.vocab_size)
    params = [SamplingParams(temperature=0.6, max_new_tokens=n, ignore_eos=True) for n in output_lens]
    run = repeated_runs(engine, prompts, params, budget * args.budget_scale, args.repeats)
    emit("throughput", name=name, shape=name, requested_tokens=sum(output_lens),
         partial=run["output_tokens"] < sum(output_lens), **run, kernels=sorted(runner.kernel_groups),
         cuda_graphs=runner.graphs is not None and runner.graphs.captured,
         capacity=runner.num_kv_blocks * runner.block_size, max_num_seqs=engine.args.max_num_seqs, **_memory(device))
    emit("routing", name=name, pick_probs=pick_probs(engine, prompts[:32], 4 if args.smoke else 32))
    engine.close()


def _memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"gpu_used_bytes": total - free, "gpu_total_bytes": total}


def pick_probs(engine, prompts: list[list[int]], new_tokens: int = 32) -> list[list[float]]:
    """How often the engine's router picks each expert, per MoE layer ([moe_layers, experts], rows summing to
    top_k), over `prompts` and `new_tokens` sampled tokens each (`return_routed_experts`)."""
    import numpy as np

    from temper.engine import SamplingParams

    params = SamplingParams(temperature=0.6, max_new_tokens=new_tokens, ignore_eos=True)
    for p in prompts:
        engine.add_request(p, params, return_routed_experts=True)
    routed = []
    while engine.has_unfinished_requests():
        routed += [o.routed_experts for o in engine.step() if o.finished]
    ids = np.concatenate(routed)  # [tokens, layers, top_k], -1 on dense layers
    c = engine.hf_config
    experts = getattr(c, "num_experts", None) or c.n_routed_experts
    return [(np.bincount(ids[:, layer].ravel(), minlength=experts) / len(ids)).round(5).tolist()
            for layer in range(ids.shape[1]) if (ids[:, layer] >= 0).all()]


def part_hf(args, device: torch.device, workdir: Path, budget: float, name: str) -> None:
    model_name = name.removesuffix("-hf")
    model = hf_model(config_folder(args, workdir, model_name, *MODELS[model_name]), device)
    c = model.config
    hf_throughput(args, model, device, budget, name, model_name, hf_cache_token_bytes(c, _dtype(device)),
                  experts_implementation=getattr(c, "_experts_implementation", None),
                  attn_implementation=getattr(c, "_attn_implementation", None))


def part_profile(args, device: torch.device, workdir: Path, budget: float, name: str) -> None:
    """`name`'s workload on an eager engine, 5 decode steps under torch.profiler at batch 96, 64 and 32."""
    from engine_diagnostics import profile_decode

    from temper.engine import EngineArgs, LLMEngine

    if device.type != "cuda":
        emit("skip", part=f"{name}-profile", reason="GPU only")
        return
    path = config_folder(args, workdir, name, *MODELS[name])
    engine = LLMEngine(EngineArgs(model=str(path), load_format="dummy", device=args.device, seed=0, cuda_graphs=False,
                                  max_model_len=args.max_model_len, mem_fraction_static=args.mem_fraction_static,
                                  moe_kernel=args.moe_kernel))
    cfg = engine.hf_config
    if getattr(cfg, "kv_lora_rank", None):  # the latent cache: [c, k_rope] a token and layer
        per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    else:
        per_layer = 2 * cfg.num_key_value_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    profile_decode(engine, args, device, time.perf_counter() + budget, cfg.num_hidden_layers * per_layer * 2,
                   (96, 64, 32))
    engine.close()


def run_part(args, part: str, workdir: Path, budget: float) -> None:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if part == "bandwidth":
        measure_ceilings(device)
    elif part in PARITY:
        part_parity(args, device, workdir, part)
    elif part in MODELS:
        part_engine(args, device, workdir, budget, part)
    elif part in PROFILES:
        part_profile(args, device, workdir, budget, PROFILES[part])
    else:
        part_hf(args, device, workdir, budget, part)


# ---- the driver ---------------------------------------------------------------------------------------------
def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.run_part:
        try:
            run_part(args, args.run_part, Path(args.workdir), args.budget)
        except Exception as e:  # noqa: BLE001 (report, then let the driver go on)
            traceback.print_exc()
            emit("error", part=args.run_part, error=f"{type(e).__name__}: {e}"[:500])
            sys.exit(1)
        return []
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS and p not in PROFILES]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; expected some of {(*PARTS, *PROFILES)}")
    if "bandwidth" not in parts:
        parts.insert(0, "bandwidth")
    deadline = time.perf_counter() + args.total_budget
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="temper-moe-") as workdir:
        for part in parts:
            left = deadline - time.perf_counter()
            if left < 15:
                results.append({"kind": "skip", "part": part, "reason": "total budget spent"})
                continue
            budget = min(BUDGETS[part] * args.budget_scale, max(5.0, left - SETUP_ALLOWANCE[part]))
            print(f"== {part} (budget {budget:.0f}s)", flush=True)
            if args.smoke:
                results += in_process(args, part, Path(workdir), budget)
                continue
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--run-part", part, "--workdir", workdir,
                   "--budget", str(budget)]
            results += run_part_process(cmd, part, min(budget + SETUP_ALLOWANCE[part], left))
    print("\n===== engine MoE summary =====")
    print("\n".join(report(args, results)), flush=True)
    return results


def in_process(args, part: str, workdir: Path, budget: float) -> list[dict]:
    """A part run here (--smoke), its result lines collected as `run_part_process` collects a process's."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_part(args, part, workdir, budget)
    return [json.loads(line[len(RESULT) :]) for line in out.getvalue().splitlines() if line.startswith(RESULT)]


def report(args, results: list[dict]) -> list[str]:
    """The summary: ceilings, one row per throughput run with its roofline and ratio to HF, the parity lines."""
    first = {r["kind"]: r for r in reversed(results)}
    bw, mm = first.get("bandwidth", {}).get("bytes_per_s"), first.get("matmul", {}).get("flops_per_s")
    info = first.get("info", {})
    lines = [f"device: {info.get('device')}  torch {info.get('torch')}  triton {info.get('triton')}"]
    if bw and mm:
        lines.append(f"measured copy bandwidth {bw / 1e12:.2f} TB/s (read + write), bf16 matmul {mm / 1e12:.0f} TFLOP/s")
    runs = [r for r in results if r["kind"] == "throughput"]
    rates = {r["name"]: r["output_tokens"] / r["seconds"] for r in runs if r["seconds"]}
    picks = {r["name"]: r["pick_probs"] for r in results if r["kind"] == "routing"}
    lines.append(f"{'run':<14}{'tok/s':>9}{'seconds':>9}{'tokens':>9}  {'roofline':>9}{'of roof':>8}{'x HF':>7}  notes")
    for r in runs:
        rate, model = rates.get(r["name"], 0.0), r["shape"]
        roof, notes = None, []
        if r["name"] in MODELS and bw and mm:
            roof, roof_notes = rooflines(args, r, bw, mm, picks.get(r["name"]))
            notes += roof_notes
        hf = rates.get(f"{model}-hf") if r["name"] in MODELS else None
        if r.get("partial"):
            notes.append(f"partial: budget hit ({r['output_tokens']}/{r['requested_tokens']} tokens)")
        for key in ("kernels", "batch_size", "experts_implementation", "attn_implementation", "capacity"):
            if key in r:
                notes.append(f"{key}={r[key]}")
        if r.get("steps"):
            notes.append(f"{r['steps']} steps, {1e3 * r['seconds'] / r['steps']:.1f} ms/step")
        verdict = ""
        if roof and hf:
            ok = rate / roof >= TARGET_ROOFLINE and rate / hf >= TARGET_HF
            verdict = f"targets >= {TARGET_ROOFLINE} of roofline, >= {TARGET_HF:.0f}x HF: {'PASS' if ok else 'FAIL'}"
        lines.append(f"{r['name']:<14}{rate:>9.0f}{r['seconds']:>9.1f}{r['output_tokens']:>9}  "
                     f"{(f'{roof:.0f}' if roof else '-'):>9}{(f'{rate / roof:.2f}' if roof else '-'):>8}"
                     f"{(f'{rate / hf:.1f}' if hf else '-'):>7}  {'; '.join(notes)}")
        if verdict:
            lines.append(f"  {r['name']}: {verdict}")
    for p in (r for r in results if r["kind"] == "parity"):
        lines.append(f"parity {p['name']} ({p['layers']} layers, hidden {p['hidden']}, {p['heads']} heads, "
                     f"experts {p['experts']}, {p['dtype']}, engine {p['attention']} graphs "
                     f"{'on' if p['cuda_graphs'] else 'off'}): log-prob mean |diff| {p['logprob_mean_abs_diff']:.4f}, "
                     f"worst argmax gap {p['worst_argmax_gap']:.3f}, identical {p['identical_fraction']:.0%} -> "
                     f"{'PASS' if p['passed'] else 'FAIL'} (<= 0.02; HF routed as the engine routed"
                     + (f", {p['logprob_mean_abs_diff_free']:.4f} with HF routing freely)"
                        if "logprob_mean_abs_diff_free" in p else ")"))
    for k in (r for r in results if r["kind"] == "profile"):
        lines.append(f"profile, eager decode at batch {k['batch']}: {k['step_wall_ms']:.2f} ms wall, "
                     f"{k['gpu_ms_per_step']:.2f} ms GPU, attention {k['attention_ms']:.2f} ms over "
                     f"{k['kv_bytes'] / 1e6:.0f} MB of cache")
        lines += [f"    {t['ms']:7.3f} ms {t['share']:5.1%} x{t['calls']:<4} {t['kernel']}" for t in k["top"]]
    for k in (r for r in results if r["kind"] == "engine_setup"):
        gpu = (f", GPU used {k['gpu_used_bytes'] / 2**30:.1f} of {k['gpu_total_bytes'] / 2**30:.1f} GiB (mem_fraction_static "
               f"{k['mem_fraction_static']})" if "gpu_used_bytes" in k else "")
        lines.append(f"{k['name']} set-up {k['seconds']:.0f}s: kernels {k['kernels'] or 'torch'}, graphs "
                     f"{'on' if k['cuda_graphs'] else 'off'}, {k['attention']}, {k['kv_blocks']} KV blocks, weights "
                     f"{k['weight_bytes'] / 2**30:.1f} GiB{gpu}")
    for k in (r for r in results if r["kind"] in ("failed", "error", "skip", "note")):
        lines.append(f"{k['kind']}: {json.dumps({x: y for x, y in k.items() if x != 'kind'})}")
    return lines


def rooflines(args, run: dict, bw: float, mm: float, picks) -> tuple[float, list[str]]:
    """The run's roofline (the router's measured picks, the engine's cache capacity), with the uniform-routing
    and everything-at-once ones as notes."""
    from temper.testing.tiny_models import PRESETS, make_config

    arch, preset = MODELS[run["name"]]
    config = make_config(arch, PRESETS["tiny" if args.smoke else preset])
    mb = model_bytes(config, 2 if not args.smoke else 4)
    prompts, outputs = make_requests(args, config.vocab_size)
    limits = {"capacity": run.get("capacity"), "max_seqs": run.get("max_num_seqs")}
    roof = moe_roofline(mb, prompts, outputs, bw, mm, picks, **limits)
    uniform = moe_roofline(mb, prompts, outputs, bw, mm, None, **limits)["tok_per_s"]
    unlimited = moe_roofline(mb, prompts, outputs, bw, mm, picks)["tok_per_s"]
    notes = [f"roofline {roof['decode_steps']} decode steps at mean batch {roof['mean_batch']:.0f}, "
             f"{roof['decode_bytes'] / max(1, roof['decode_steps']) / 1e9:.1f} GB/step; uniform routing {uniform:.0f}, "
             f"all requests at once {unlimited:.0f} tok/s"]
    if run.get("partial"):
        notes.append("roofline is the whole workload's")
    return roof["tok_per_s"], notes


if __name__ == "__main__":
    main()
