"""What routing replay does to the train/rollout log-prob gap of a mixture of experts, in bf16.

The engine and the trainer compute the same model in different kernels, so in bf16 their hidden states differ
in the last bits; where a token's router scores are near a top-k tie that difference can send it to other
experts in the trainer than in the rollout, and its log-prob then differs by far more than rounding.
``--use-rollout-routing-replay`` (R3) has the engine return each token's experts and the trainer replays them;
``--moe-router-dtype fp32`` routes in fp32 on both sides (Qwen-MoE; DeepSeek-V3's and GLM-4.5's routers are
fp32 already). This runs train.py (Ray, an engine server, a train rank, weight sync) once per setting on the
same random bf16 checkpoint, prompts and seed, and reports the mean over steps of
``train/train_rollout_logprob_abs_diff`` (mean |trainer − engine| log-prob of the response tokens, the trainer's
old-log-prob forward at the engine's weights) and its largest step, with the ratio to the free-routing run.
``--use-routing-replay`` (R2: the old-log-prob forward's routing replayed in the training forward) changes the
gap between training and old log-probs, not this one: its ``ppo_kl`` is reported beside.

    python benchmarks/routing_gap.py --out /tmp/gap                        # CPU: tiny Qwen3-MoE and DeepSeek-V3
    python benchmarks/routing_gap.py --arch qwen3_moe --preset qwen3-30b-a3b --num-layers 4 \\
        --response-len 256 --out $OUT/gap                                   # GPU: real widths, 4 layers

Writes OUT/routing_gap.md and OUT/routing_gap.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
from rl_workload import train_py_session

from temper.quickstart import load_driver, write_prompts
from temper.testing import build_tiny_model

SETTINGS = {
    "free": [],
    "r3": ["--use-rollout-routing-replay"],
    "fp32-router": ["--moe-router-dtype", "fp32"],
    "fp32-router+r3": ["--moe-router-dtype", "fp32", "--use-rollout-routing-replay"],
    "r2": ["--use-routing-replay"],
}
GAP, KL = "train/train_rollout_logprob_abs_diff", "train/ppo_kl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["qwen3_moe", "deepseek_v3"],
                   choices=["qwen3_moe", "deepseek_v3", "glm4_moe"])
    p.add_argument("--settings", nargs="+", default=["free", "r3", "fp32-router", "fp32-router+r3"],
                   choices=list(SETTINGS))
    p.add_argument("--preset", default="tiny", help="the factory's shape (temper.testing.tiny_models.PRESETS)")
    p.add_argument("--num-layers", type=int, help="the preset's layer count, changed")
    p.add_argument("--num-experts", type=int, help="the preset's expert count, changed (tiny: 8)")
    p.add_argument("--top-k", type=int, help="the preset's num_experts_per_tok, changed (tiny: 2)")
    p.add_argument("--rollouts", type=int, default=3)
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout (--rollout-batch-size)")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--response-len", type=int, default=32)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workdir", type=Path, help="where the checkpoints and runs go (default: a temporary folder)")
    return p.parse_args(argv)


def shape_overrides(args) -> dict:
    names = {"num_layers": args.num_layers, "num_experts": args.num_experts, "num_experts_per_tok": args.top_k}
    return {name: value for name, value in names.items() if value is not None}


def run_flags(args, model: Path, prompts: Path, run_dir: Path, setting: str, cuda: bool) -> list[str]:
    """train.py's flags: a GRPO run in bf16 on both sides (the CPU needs it said; a GPU's default)."""
    flags = [
        "--hf-checkpoint", str(model), "--prompt-data", str(prompts), "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--custom-rm-path", "temper.quickstart.reward", "--advantage-estimator", "grpo",
        "--rollout-batch-size", str(args.prompts), "--n-samples-per-prompt", str(args.n_samples),
        "--rollout-max-response-len", str(args.response_len), "--rollout-temperature", "1.0",
        "--num-rollout", str(args.rollouts), "--lr", "1e-5", "--seed", "1234",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "8192",
        "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1", "--run-dir", str(run_dir),
    ]  # fmt: skip
    if cuda:
        flags += ["--colocate", "--sglang-mem-fraction-static", "0.3"]
    else:
        flags += ["--bf16", "--sglang-dtype", "bfloat16"]
    return flags + SETTINGS[setting]


def summarize(steps: list[dict]) -> dict:
    gaps = [s[GAP] for s in steps]
    return {
        "gap_mean": sum(gaps) / len(gaps),
        "gap_max": max(gaps),
        "gap_per_step": gaps,
        "ppo_kl_abs_mean": sum(abs(s.get(KL, math.nan)) for s in steps) / len(steps),
        "response_tokens": round(sum(s["rollout/num_samples"] * s["rollout/response_len_mean"] for s in steps)),
    }


def table(results: dict[str, dict[str, dict]], device: str, shape: str) -> str:
    lines = [
        f"Train/rollout log-prob gap, bf16, {device}, {shape}: mean over steps of {GAP}",
        "",
        "| arch | setting | gap mean | gap max step | × free | mean \\|ppo_kl\\| | response tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch, runs in results.items():
        free = runs.get("free", {}).get("gap_mean")
        for setting, r in runs.items():
            ratio = f"{r['gap_mean'] / free:.2f}" if free else "-"
            lines.append(f"| {arch} | {setting} | {r['gap_mean']:.5f} | {r['gap_max']:.5f} | {ratio} | "
                         f"{r['ppo_kl_abs_mean']:.2e} | {r['response_tokens']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    overrides = shape_overrides(args)
    shape = args.preset + "".join(f", {k}={v}" for k, v in overrides.items())
    results: dict[str, dict[str, dict]] = {}
    with train_py_session(args.out, args.workdir, "temper-routing-gap-") as (work, device, cuda):
        prompts = write_prompts(work / "prompts.jsonl", args.prompts * args.rollouts)
        for arch in args.arch:
            model = build_tiny_model(work / arch, arch, preset=args.preset, dtype=torch.bfloat16, **overrides)
            for setting in args.settings:
                print(f"== {arch} {setting}", flush=True)
                run_dir = work / f"{arch}-{setting}"
                shutil.rmtree(run_dir, ignore_errors=True)  # a --workdir's earlier run (its metrics.jsonl grows)
                steps = load_driver("train").main(run_flags(args, model, prompts, run_dir, setting, cuda))
                results.setdefault(arch, {})[setting] = summarize(steps)
                print(f"{arch} {setting}: gap {results[arch][setting]['gap_mean']:.5f}", flush=True)
    text = table(results, device, shape)
    print(text, flush=True)
    (args.out / "routing_gap.md").write_text(text)
    record = {"device": device, "shape": shape, "args": {k: str(v) for k, v in vars(args).items()},
              "results": results, "seconds": time.monotonic() - started}
    (args.out / "routing_gap.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    return results


if __name__ == "__main__":
    main()
