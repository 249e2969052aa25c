"""One RL step end to end, split into rollout / train / weight sync, for a disaggregated and a colocated run.

Both runs are train.py's loop (Ray, engine servers, FSDP train ranks, weight sync) on a Qwen3-0.6B-shaped
random model (bf16 on disk; the flags of scripts/models/qwen3-0.6B.sh, checked against it), GRPO on
the quickstart's prompts ("answer in digits"), --rollout-batch-size prompts x --n-samples samples of
up to --response-len tokens per rollout:

- disaggregated: the trainer on GPU 0, one engine on GPU 1, weights by NCCL broadcast;
- colocated: two train ranks (FSDP over both GPUs), each sharing its GPU with an engine; engine memory
  is released and the trainer onloaded around training, weights go by same-host tensor handoff.

Every sync is verified (--check-weight-update-equal); the check's seconds are reported apart and
left out of "sync". The first rollout is a warm-up and is excluded from the means. Writes
OUT/rl_step.md (the table), OUT/rl_step.json, and each run's metrics (OUT/<run>.jsonl).

    bash benchmarks/device/rl_step.sh              # nvidia-h100-x2, carry .device (the pack: ray, fastapi, ...)
    python benchmarks/rl_step.py --out /tmp/rl --model tiny --response-len 16   # CPU smoke run (about 1 min)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from temper.cluster.placement import CPU_OVERSUBSCRIPTION, local_resources
from temper.quickstart import load_driver, write_prompts
from temper.testing import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "disaggregated": ["--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1"],
    "colocated": ["--actor-num-gpus-per-node", "2", "--colocate", "--sglang-mem-fraction-static", "0.4"],
}
SHAPE_SCRIPTS = {"qwen3-0.6b": "qwen3-0.6B.sh", "tiny": "qwen3-tiny.sh"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("rl_step_out"))
    p.add_argument("--model", default="qwen3-0.6b", choices=sorted(SHAPE_SCRIPTS))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--steps", type=int, default=4, help="rollouts per run (the first is a warm-up)")
    p.add_argument("--rollout-batch-size", type=int, default=8)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--response-len", type=int, default=128)
    return p.parse_args(argv)


def model_args(script: str) -> list[str]:
    command = f"source {ROOT / 'scripts' / 'models' / script} && printf '%s\\n' \"${{MODEL_ARGS[@]}}\""
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()


def run_flags(args, model: Path, prompts: Path, run: str, work: Path) -> list[str]:
    return [
        *model_args(SHAPE_SCRIPTS[args.model]), "--hf-checkpoint", str(model), "--prompt-data", str(prompts),
        "--input-key", "prompt", "--label-key", "label", "--apply-chat-template", "--rollout-shuffle",
        "--custom-rm-path", "temper.quickstart.reward", "--advantage-estimator", "grpo", "--lr", "1e-6",
        "--rollout-batch-size", str(args.rollout_batch_size), "--n-samples-per-prompt", str(args.n_samples),
        "--rollout-max-response-len", str(args.response_len), "--num-rollout", str(args.steps),
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "16384", "--check-weight-update-equal",
        "--run-dir", str(work / run), *RUNS[run],
    ]  # fmt: skip


def measure(steps: list[dict]) -> dict[str, float]:
    """Means over the measured steps (all but the first)."""
    measured = steps[1:] or steps

    def mean(key: str) -> float:
        return sum(s.get(key, 0.0) for s in measured) / len(measured)

    check = mean("sync/check_s")
    return {
        "rollout_s": mean("time/rollout"),
        "train_s": mean("time/train"),
        "sync_s": mean("time/sync") - check,
        "check_s": check,
        "step_s": mean("time/step") - check,
        "samples": mean("rollout/num_samples"),
        "response_len": mean("rollout/response_len_mean"),
        "sync_mb": mean("sync/bytes") / 2**20,
        "logprob_abs_diff": mean("train/train_rollout_logprob_abs_diff"),
        "measured_steps": len(measured),
    }


def table(results: dict[str, dict], device: str) -> str:
    lines = [
        f"Device: {device}. Means over {next(iter(results.values()))['measured_steps']} rollouts after one warm-up.",
        "",
        "| run | rollout s | train s | sync s | step s | samples | mean response len | synced MiB | check s | trainer-engine log-prob gap |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, r in results.items():
        lines.append(
            f"| {run} | {r['rollout_s']:.2f} | {r['train_s']:.2f} | {r['sync_s']:.2f} | {r['step_s']:.2f} | "
            f"{r['samples']:.0f} | {r['response_len']:.1f} | {r['sync_mb']:.0f} | {r['check_s']:.2f} | {r['logprob_abs_diff']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import ray

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="temper-rl-step-"))
    cuda, cores = local_resources()
    device = torch.cuda.get_device_name(0) + f" x{torch.cuda.device_count()}" if cuda else f"CPU ({cores} cores)"
    started = time.monotonic()
    dtype = torch.bfloat16 if cuda else torch.float32
    model = build_tiny_model(work / "model", "qwen3", preset=args.model, dtype=dtype)
    prompts = write_prompts(work / "prompts.jsonl")
    print(f"model built in {time.monotonic() - started:.0f}s", flush=True)
    ray.init(num_cpus=cores * CPU_OVERSUBSCRIPTION, include_dashboard=False, configure_logging=False)
    results = {}
    try:
        for run in args.runs:
            print(f"== {run}", flush=True)
            steps = load_driver("train").main(run_flags(args, model, prompts, run, work))
            results[run] = measure(steps)
            shutil.copy(work / run / "metrics.jsonl", args.out / f"{run}.jsonl")
    finally:
        ray.shutdown()
    text = table(results, device)
    print(text, flush=True)
    (args.out / "rl_step.md").write_text(text)
    (args.out / "rl_step.json").write_text(json.dumps({"device": device, "args": vars(args) | {"out": str(args.out)},
                                                       "results": results}, indent=2) + "\n")  # fmt: skip
    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
