"""Training throughput of temper's FSDP train worker on packed batches, beside a naive HF training loop.

Workload: a random model of Qwen3-0.6B's shape (bf16 on disk); each rollout has --samples samples
(groups of 8) of random tokens, prompt length uniform in --prompt-len, response length uniform in
--response-len, random rewards (group-normalized). temper trains GRPO's policy loss, one optimizer
step per rollout (--steps-per-rollout), micro-batches packed to --max-tokens-per-gpu without padding,
varlen attention (--attn), no activation checkpointing unless --recompute, bf16 compute with fp32
master weights and fp32 gradient reduction, fused AdamW. Each measured rollout also times the
forward-only log-probs of the same batch (what old/ref log-probs cost).
The naive baseline is the loop people write first: `AutoModelForCausalLM` (fp32 weights, bf16
autocast, HF gradient checkpointing unless --naive-no-recompute, sdpa attention), the same samples
sorted by length in right-padded micro-batches under the same token budget (padding included), HF's
own loss over full-vocabulary logits, AdamW. It runs only in a single-process run, after temper's,
in the same process.

Reported: tokens/s (prompt + response tokens, padding excluded; per GPU and in all), MFU (model
FLOPs — 3x the forward: linear layers, causal attention, lm head on response tokens only for temper
and on every position for HF, which is what each computes — over --peak-tflops per GPU), the
log-prob forward's tokens/s and its ratio to training, and peak GPU memory. Losses, entropy and
gradient norms of every rollout are printed (and written with --out) so that a 2-GPU run can be
checked against a 1-GPU run (--compare-to). --profile DIR writes a torch.profiler table of one more
rollout (CUDA time by kernel).

    python benchmarks/train_throughput.py --out 1gpu.json                  # 1 GPU, with the baseline
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --compare-to 1gpu.json
    python benchmarks/train_throughput.py --model-shape tiny --samples 16 --prompt-len 8 32 \
        --response-len 8 64 --max-tokens-per-gpu 512 --rollouts 2            # CPU smoke run

MoE (issue 16): `--model-shape qwen3-30b-a3b --num-layers 4` is Qwen3-30B-A3B's widths (hidden 2048, 32/4
heads of 128, 128 experts of 768, top-8, its vocabulary) cut to 4 layers: 3.1B parameters, 0.23B of them
active per token outside the embeddings, which with fp32 master weights and AdamW (16 bytes a parameter)
trains on one 80 GB GPU. temper's trainer then runs twice in the same process on the same batches (--experts
both): with Hugging Face's grouped-GEMM experts (`experts_implementation="grouped_mm"`, what the trainer
loads MoE models with) and with HF's loop over the experts ("eager"), and prints the ratio. MFU counts the
*active* parameters: per token a MoE layer does top_k experts' GEMMs and the router's, not all experts'.

    python benchmarks/train_throughput.py --model-shape qwen3-30b-a3b --num-layers 4 --skip-hf
    python benchmarks/train_throughput.py --model-shape tiny --arch qwen3_moe --samples 16 --prompt-len 8 32 \
        --response-len 8 64 --max-tokens-per-gpu 512 --rollouts 1 --skip-hf  # CPU smoke run of the MoE A/B
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM

from temper.algo import group_normalize_rewards
from temper.command_line import parse_config
from temper.testing.tiny_models import PRESETS, build_tiny_model
from temper.train import Actor
from temper.train.hf_model import is_moe
from temper.train.parallelize import compile_by_default
from temper.types import RolloutBatch

GROUP_SIZE = 8
COMPARED_METRICS = ("loss", "entropy", "grad_norm")
MOE_PRESETS = ("qwen3-30b-a3b",)  # presets built as qwen3_moe unless --arch says otherwise
EXPERTS = ("grouped_mm", "eager")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-shape", default="qwen3-0.6b", choices=sorted(PRESETS))
    p.add_argument("--arch", choices=["qwen3", "qwen3_moe"], help="architecture of the random checkpoint "
                   f"(default: qwen3_moe for {', '.join(MOE_PRESETS)}, else qwen3)")  # fmt: skip
    p.add_argument("--num-layers", type=int, help="the shape's layer count, changed (4 for the MoE shape on one GPU)")
    p.add_argument("--model-dir", help="where the random checkpoint is built (default: a folder under the temp dir, "
                                       "kept and reused across runs)")
    p.add_argument("--experts", default="both", choices=[*EXPERTS, "both"],
                   help="MoE: Hugging Face's experts implementation in temper's trainer; both: grouped_mm, then eager "
                        "(HF's loop over the experts) on the same batches")
    p.add_argument("--samples", type=int, default=64, help="samples per rollout (a multiple of 8)")
    p.add_argument("--prompt-len", type=int, nargs=2, default=[64, 512], metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=[256, 1536], metavar=("MIN", "MAX"))
    p.add_argument("--max-tokens-per-gpu", type=int, default=16384)
    p.add_argument("--steps-per-rollout", type=int, default=1)
    p.add_argument("--rollouts", type=int, default=4, help="measured rollouts (after one warm-up rollout)")
    p.add_argument("--attn", default=None, help="temper's HF attn_implementation (default: temper_varlen; sdpa, ...)")
    p.add_argument("--naive-attn", default="sdpa", help="the naive loop's HF attn_implementation")
    p.add_argument("--recompute", action="store_true", help="activation checkpointing in temper (--recompute-activations)")
    p.add_argument("--naive-no-recompute", action="store_true", help="no HF gradient checkpointing in the naive loop")
    p.add_argument("--profile", help="write a torch.profiler table of one extra rollout into this folder")
    p.add_argument("--skip-hf", action="store_true", help="skip the naive HF baseline")
    p.add_argument("--no-keep-gathered", action="store_true",
                   help="FSDP's per-micro-batch gathers and reduce-scatters on one GPU too: the A/B of memory_plan.keeps_gathered")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200 SXM)")
    p.add_argument("--out", help="write the results as JSON here (rank 0)")
    p.add_argument("--compare-to", help="JSON of another run: check its per-rollout metrics against this run's")
    p.add_argument("--rtol", type=float, default=2e-2, help="relative tolerance of --compare-to (bf16)")
    return p.parse_args(argv)


# -- setup ------------------------------------------------------------------------------------------


def init_distributed() -> torch.device:
    """torchrun's group when launched by it, else a 1-rank group; NCCL on GPU, gloo on CPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        store = tempfile.mkdtemp(prefix="temper-bench-store-")
        dist.init_process_group(backend, init_method=f"file://{store}/store", rank=0, world_size=1)
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def model_dir(args) -> Path:
    """Rank 0 builds the random checkpoint once per machine; the others wait for it."""
    arch = args.arch or ("qwen3_moe" if args.model_shape in MOE_PRESETS else "qwen3")
    layers = {"num_layers": args.num_layers} if args.num_layers else {}
    name = f"temper-train-bench-{args.model_shape}" + (f"-{arch}" if arch != "qwen3" else "")
    name += f"-{args.num_layers}l" if args.num_layers else ""
    path = Path(args.model_dir) if args.model_dir else Path(tempfile.gettempdir()) / name
    if dist.get_rank() == 0 and not (path / "model.safetensors").exists():
        start = time.perf_counter()
        build_tiny_model(path, arch, preset=args.model_shape, dtype=torch.bfloat16, **layers)
        log(f"built the random {arch} checkpoint in {path} ({time.perf_counter() - start:.0f} s)")
    dist.barrier()
    return path


def make_batch(args, rollout_id: int, vocab: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(1000 + rollout_id)
    tokens, responses = [], []
    for _ in range(args.samples):
        prompt = int(torch.randint(args.prompt_len[0], args.prompt_len[1] + 1, (1,), generator=g))
        response = int(torch.randint(args.response_len[0], args.response_len[1] + 1, (1,), generator=g))
        tokens.append(torch.randint(0, min(vocab, 10000), (prompt + response,), generator=g))
        responses.append(response)
    raw = torch.rand(args.samples, generator=g)
    groups = [i // GROUP_SIZE for i in range(args.samples)]
    return RolloutBatch(
        tokens=tokens,
        response_lengths=responses,
        loss_masks=[torch.ones(r) for r in responses],
        rewards=group_normalize_rewards(raw, groups),
        raw_rewards=raw,
        group_indices=groups,
        sample_indices=list(range(args.samples)),
    )


# -- FLOPs ------------------------------------------------------------------------------------------


def is_moe_layer(config, i: int) -> bool:
    """Whether Qwen3-MoE's layer `i` has experts (not in mlp_only_layers, and (i + 1) % decoder_sparse_step == 0)."""
    if not is_moe(config):
        return False
    return i not in (config.mlp_only_layers or ()) and (i + 1) % config.decoder_sparse_step == 0


def active_layer_params(config) -> int:
    """Weights of the decoder layers that each token multiplies by: attention projections, and a dense MLP or
    an MoE layer's router and its top_k experts (Qwen3 and Qwen3-MoE; norms left out)."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    total = 0
    for i in range(config.num_hidden_layers):
        if is_moe_layer(config, i):
            mlp = config.num_experts * hidden + config.num_experts_per_tok * 3 * hidden * config.moe_intermediate_size
        else:
            mlp = 3 * hidden * config.intermediate_size
        total += attention + mlp
    return total


def forward_flops(config, batch: RolloutBatch, *, lm_head_on_prompt: bool) -> float:
    """Model FLOPs of one forward over `batch`: linear layers (an MoE layer's active ones), causal attention,
    lm head."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    heads = config.num_attention_heads
    linear_params = active_layer_params(config)
    total = 0.0
    for tokens, response in zip(batch.tokens, batch.response_lengths):
        s = len(tokens)
        total += 2 * linear_params * s
        total += 2 * heads * head_dim * s * s * layers  # QK^T and AV, causal half of 2 matmuls x 2 FLOPs
        total += 2 * hidden * config.vocab_size * (s if lm_head_on_prompt else response)
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


# -- temper ------------------------------------------------------------------------------------------


def bench_temper(args, path: Path, device: torch.device, hf_config, experts: str | None = None) -> dict:
    """temper's trainer on the workload; `experts`: the MoE experts implementation (TEMPER_EXPERTS)."""
    world = dist.get_world_size()
    flags = [
        "--hf-checkpoint",
        str(path),
        "--rollout-batch-size",
        str(args.samples // GROUP_SIZE),
        "--n-samples-per-prompt",
        str(GROUP_SIZE),
        "--num-steps-per-rollout",
        str(args.steps_per_rollout),
        "--num-rollout",
        str(args.rollouts + 1),
        "--use-dynamic-batch-size",
        "--max-tokens-per-gpu",
        str(args.max_tokens_per_gpu),
        "--lr",
        "1e-6",
        "--actor-num-gpus-per-node",
        str(world),
        "--num-gpus-per-node",
        str(max(world, 8)),
    ]
    if args.recompute:
        flags.append("--recompute-activations")
    cfg = parse_config(flags, check_shape=False)
    torch._logging.set_logs(recompiles=True)  # a recompilation inside the measured rollouts is reported
    if args.no_keep_gathered:
        import temper.train.trainable as trainable

        trainable.keeps_gathered = lambda world_size, params: False
    actor = load_actor(cfg, args.attn, experts)
    log(f"temper: attention {actor.model.config._attn_implementation}, recompute {args.recompute}"
        + (f", experts {actor.model.config._experts_implementation}" if experts else ""))
    # Warm-up rollouts: the workload's, then rows of about 2k, 4k, 8k and 16k tokens. Inductor's compiled
    # layers guard on ranges of the row length (seen on an H100: below 2,560, up to 5,119, from 5,120), and
    # a rollout's last micro-batch can land in any of them: each range compiles here, not in the timing.
    warm_ups = [make_batch(args, 0, hf_config.vocab_size)]
    for length in (256, 512, 1024, 2048) if compile_by_default(device) else ():
        fixed = argparse.Namespace(**{**vars(args), "samples": GROUP_SIZE, "prompt_len": [length // 2] * 2,
                                      "response_len": [length // 2] * 2})  # fmt: skip
        warm_ups.append(make_batch(fixed, 0, hf_config.vocab_size))
    _, compile_s = timed(
        device, lambda: [(actor.compute_log_probs(b), actor.train(0, b)) for b in warm_ups]
    )
    log(f"warm-up rollouts (compilation included): {compile_s:.1f} s; {dynamo_stats()}")
    reset_peak(device)
    per_rollout, seconds, tokens, flops, forward_seconds = [], 0.0, 0, 0.0, 0.0
    for rollout_id in range(1, args.rollouts + 1):
        batch = make_batch(args, rollout_id, hf_config.vocab_size)
        forward_seconds += timed(device, lambda: actor.compute_log_probs(batch))[1]
        metrics, elapsed = timed(device, lambda: actor.train(rollout_id, batch))
        seconds += elapsed
        tokens += sum(batch.total_lengths)
        flops += 3 * forward_flops(hf_config, batch, lm_head_on_prompt=False)
        per_rollout.append({name: metrics[name] for name in COMPARED_METRICS})
        log(f"temper rollout {rollout_id}: " + "  ".join(f"{k}={v:.6g}" for k, v in per_rollout[-1].items()))
    log(f"after the measured rollouts: {dynamo_stats()}")
    name = f"temper {experts}" if experts else "temper"
    result = summarize(name, tokens, seconds, flops, world, args.peak_tflops, peak_gib(device))
    result["per_rollout"] = per_rollout
    result["log_prob_tokens_per_s"] = tokens / forward_seconds
    if args.profile:
        profile(actor, make_batch(args, args.rollouts + 1, hf_config.vocab_size), args.rollouts + 1, args.profile)
    del actor
    return result


def load_actor(cfg, attn: str | None, experts: str | None) -> Actor:
    """temper's Actor, its MoE experts implementation `experts` (TEMPER_EXPERTS while it loads) when given."""
    saved = os.environ.get("TEMPER_EXPERTS")
    if experts:
        os.environ["TEMPER_EXPERTS"] = experts
    try:
        return Actor(cfg, attn_implementation=attn)
    finally:
        if saved is None:
            os.environ.pop("TEMPER_EXPERTS", None)
        else:
            os.environ["TEMPER_EXPERTS"] = saved


def dynamo_stats() -> str:
    """torch.compile's graph counts so far (a growing count in measured rollouts means recompiles)."""
    from torch._dynamo.utils import counters

    return f"compiled graphs {counters['stats']['unique_graphs']}, frames {counters['stats']['calls_captured']}"


def timed(device: torch.device, fn):
    """(fn(), seconds), with the device synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def profile(actor, batch: RolloutBatch, rollout_id: int, folder: str) -> None:
    """One rollout's training under torch.profiler: the kernels by total device time, into `folder`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        actor.train(rollout_id, batch)
        sync(actor.env.device)
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=80)
    gaps = idle_gaps(prof) if torch.cuda.is_available() else ""
    if dist.get_rank() == 0:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "train_profile.txt").write_text(table + "\n" + gaps)
        log(table)
        log(gaps)


def idle_gaps(prof, top: int = 15, min_us: float = 20.0) -> str:
    """Where the GPU waits on the host: the union of the device's kernel/copy intervals over the
    profiled span, the idle time between them, and the largest gaps with the CPU ops running then
    (the GPU's queue is empty during a gap, so the host's current op is what it waits for)."""
    events = list(prof.events())
    device = sorted((e.time_range.start, e.time_range.end) for e in events if e.device_type.name == "CUDA")
    cpu = [e for e in events if e.device_type.name == "CPU"]
    if not device:
        return "no device events"
    busy, gaps, (start, end) = 0.0, [], device[0]
    for a, b in device[1:]:
        if a > end:
            busy += end - start
            if a - end >= min_us:
                gaps.append((a - end, end, a))
            start, end = a, b
        else:
            end = max(end, b)
    busy += end - start
    span = device[-1][1] - device[0][0]
    lines = [f"GPU busy {busy / 1e3:.1f} ms of a {span / 1e3:.1f} ms span ({busy / span:.0%}); "
             f"{len(gaps)} gaps >= {min_us:.0f} us sum to {sum(g[0] for g in gaps) / 1e3:.1f} ms"]  # fmt: skip
    by_op: dict[str, float] = {}
    for length, a, b in gaps:
        middle = (a + b) / 2
        running = sorted((e for e in cpu if e.time_range.start <= middle <= e.time_range.end),
                         key=lambda e: e.time_range.start)  # fmt: skip
        chain = " > ".join(e.name for e in running[-3:]) or "(no CPU op)"
        by_op[chain] = by_op.get(chain, 0.0) + length
    lines.append("idle by the CPU ops running in the gap (innermost three), largest first:")
    for chain, length in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {length / 1e3:8.2f} ms  {chain[:200]}")
    return "\n".join(lines)


# -- naive HF loop -----------------------------------------------------------------------------------


def naive_micro_batches(batch: RolloutBatch, max_tokens: int) -> list[list[int]]:
    """Samples sorted by length, cut so that rows x longest row <= max_tokens (padding counts)."""
    order = sorted(range(len(batch)), key=lambda i: len(batch.tokens[i]))
    groups, current = [], []
    for i in order:
        if current and (len(current) + 1) * len(batch.tokens[i]) > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    return groups + [current] if current else groups


def naive_step(model, optimizer, batch: RolloutBatch, max_tokens: int, device: torch.device) -> float:
    total_tokens = sum(batch.response_lengths)
    for group in naive_micro_batches(batch, max_tokens):
        width = max(len(batch.tokens[i]) for i in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        for row, i in enumerate(group):
            seq, response = batch.tokens[i], batch.response_lengths[i]
            ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
            labels[row, len(seq) - response : len(seq)] = seq[len(seq) - response :]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        share = sum(batch.response_lengths[i] for i in group) / total_tokens
        (out.loss * share).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


def bench_naive(args, path: Path, device: torch.device, hf_config) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=args.naive_attn)
    model = model.to(device)
    model.config.use_cache = False
    if not args.naive_no_recompute:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    naive_step(model, optimizer, make_batch(args, 0, hf_config.vocab_size), args.max_tokens_per_gpu, device)
    reset_peak(device)
    seconds, tokens, flops = 0.0, 0, 0.0
    for rollout_id in range(1, args.rollouts + 1):
        batch = make_batch(args, rollout_id, hf_config.vocab_size)
        sync(device)
        start = time.perf_counter()
        naive_step(model, optimizer, batch, args.max_tokens_per_gpu, device)
        sync(device)
        seconds += time.perf_counter() - start
        tokens += sum(batch.total_lengths)
        flops += 3 * forward_flops(hf_config, batch, lm_head_on_prompt=True)
    return summarize("naive HF", tokens, seconds, flops, 1, args.peak_tflops, peak_gib(device))


# -- report ------------------------------------------------------------------------------------------


def summarize(name, tokens, seconds, flops, gpus, peak_tflops, peak_memory) -> dict:
    return {
        "name": name,
        "gpus": gpus,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "tokens_per_s_per_gpu": tokens / seconds / gpus,
        "mfu": flops / seconds / gpus / (peak_tflops * 1e12),
        "peak_memory_gib": peak_memory,
    }


def log(message: str) -> None:
    if dist.get_rank() == 0:
        print(message, flush=True)


def report(results: list[dict], device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(f"\ndevice: {name} x {dist.get_world_size()}")
    log(f"{'':18} {'tokens/s':>12} {'tokens/s/GPU':>13} {'MFU':>7} {'peak GiB':>9}")
    for r in results:
        if "error" in r:
            log(f"{r['name']:18} failed: {r['error']}")
            continue
        log(
            f"{r['name']:18} {r['tokens_per_s']:12.0f} {r['tokens_per_s_per_gpu']:13.0f} "
            f"{100 * r['mfu']:6.1f}% {r['peak_memory_gib']:9.2f}"
        )
    ran = [r for r in results if "error" not in r]
    for r in ran:
        if "log_prob_tokens_per_s" in r:
            log(f"{r['name']} log-prob forward: {r['log_prob_tokens_per_s']:.0f} tokens/s "
                f"({r['log_prob_tokens_per_s'] / r['tokens_per_s']:.2f}x training)")  # fmt: skip
    by_name = {r["name"]: r for r in ran}
    if "temper grouped_mm" in by_name and "temper eager" in by_name:
        grouped, loop = by_name["temper grouped_mm"], by_name["temper eager"]
        log(f"MoE experts, grouped_mm / eager (HF's loop): {grouped['tokens_per_s'] / loop['tokens_per_s']:.2f}x "
            f"tokens/s; peak memory {grouped['peak_memory_gib']:.2f} vs {loop['peak_memory_gib']:.2f} GiB")  # fmt: skip
    if "naive HF" in by_name and ran[0]["name"] != "naive HF":
        log(f"{ran[0]['name']} / naive HF: {ran[0]['tokens_per_s'] / by_name['naive HF']['tokens_per_s']:.2f}x")


def compare(this: dict, other_file: str, rtol: float) -> bool:
    other = json.loads(Path(other_file).read_text())["temper"]
    ok = True
    for i, (mine, theirs) in enumerate(zip(this["per_rollout"], other["per_rollout"]), start=1):
        for key in COMPARED_METRICS:
            close = abs(mine[key] - theirs[key]) <= rtol * max(abs(theirs[key]), 1e-3)
            ok &= close
            log(
                f"rollout {i} {key}: {mine[key]:.6g} vs {theirs[key]:.6g} ({other['gpus']} GPU) {'ok' if close else 'DIFFERS'}"
            )
    log(f"compare-to {other_file}: {'MATCH' if ok else 'MISMATCH'} (rtol {rtol})")
    return ok


def moe_passes(args, path: Path, device: torch.device, hf_config) -> dict:
    """temper's trainer once per experts implementation, one after the other on the same batches; a pass that
    fails is reported and the next one still runs (the first pass's model and optimizer are freed between)."""
    results = {}
    for i, experts in enumerate(EXPERTS if args.experts == "both" else [args.experts]):
        key = "temper" if i == 0 else f"temper_{experts}"
        try:
            results[key] = bench_temper(args, path, device, hf_config, experts)
        except Exception as e:  # noqa: BLE001 - the benchmark goes on to the next pass and reports this one failed
            log(traceback.format_exc())
            results[key] = {"name": f"temper {experts}", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        release(device)
    return results


def release(device: torch.device) -> None:
    """Free what a finished pass left: compiled graphs, cyclic garbage, the CUDA cache."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        log(f"after the pass: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB still allocated")


def describe(hf_config) -> None:
    """The model's size: all parameters, and those each token multiplies by (MoE: top_k experts of each layer)."""
    hidden, vocab = hf_config.hidden_size, hf_config.vocab_size
    embeddings = vocab * hidden * (1 if hf_config.tie_word_embeddings else 2)
    active = active_layer_params(hf_config)
    if is_moe(hf_config):
        experts = 3 * hidden * hf_config.moe_intermediate_size * (hf_config.num_experts - hf_config.num_experts_per_tok)
        total = active + experts * sum(is_moe_layer(hf_config, i) for i in range(hf_config.num_hidden_layers))
    else:
        total = active
    log(f"model: {hf_config.model_type}, {hf_config.num_hidden_layers} layers, {count(total + embeddings)} "
        f"parameters; per token {count(active)} in the layers (+ {count(vocab * hidden)} lm head)")  # fmt: skip


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.samples % GROUP_SIZE:
        raise SystemExit(f"--samples must be a multiple of {GROUP_SIZE}")
    own_group = not dist.is_initialized()  # a test may hold a 1-rank group already
    device = init_distributed() if own_group else torch.device("cpu")
    path = model_dir(args)
    hf_config = AutoConfig.from_pretrained(path)
    describe(hf_config)
    if is_moe(hf_config):
        results = moe_passes(args, path, device, hf_config)
    else:
        results = {"temper": bench_temper(args, path, device, hf_config)}
    if not args.skip_hf and dist.get_world_size() == 1:
        results["naive"] = bench_naive(args, path, device, hf_config)
    report(list(results.values()), device)
    failed = [r["name"] for r in results.values() if "error" in r]
    ok = not failed
    if args.compare_to and "error" not in results["temper"]:
        ok &= compare(results["temper"], args.compare_to, args.rtol)
    if args.out and dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if own_group:
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
