"""One RL step end to end, split into rollout / train / weight sync: disaggregated and colocated on two
GPUs, and colocated on one GPU (the GRPO workload that `trl_grpo.py` runs through TRL).

Every run is train.py's loop (Ray, engine servers, FSDP train ranks, weight sync) on a random model
(bf16 on disk; the flags of scripts/models/<shape>.sh, checked against it), GRPO without KL, reward
= share of digits in the response (temper.quickstart.reward), --rollout-batch-size prompts x
--n-samples samples of up to --response-len tokens per rollout, temperature 1.0, one optimizer step
per rollout (--global-batch-size = all samples):

- disaggregated: the trainer on GPU 0, one engine on GPU 1, weights by NCCL broadcast;
- colocated: two train ranks (FSDP over both GPUs), each sharing its GPU with an engine; what moves
  between the phases is the colocated memory plan's choice (logged at start), weights go by CUDA IPC
  (the ipc transport);
- colocated-1gpu: one train rank and one engine sharing one GPU, as colocated.
- disaggregated-2x2 (4 GPUs): two train ranks (FSDP) on GPUs 0-1, two engines on GPUs 2-3, NCCL broadcast;
- colocated-4 (4 GPUs): four train ranks, each sharing its GPU with an engine;
- disaggregated-4x4 / disaggregated-4x2tp2 (8 GPUs): four train ranks, then four engines or two engines of
  tensor parallel 2 on the other four GPUs.

`--drivers train train_async` runs each layout with train.py and with train_async.py (rollout k+1 generated
while rollout k trains, one step stale; nothing is offloaded), the second named <layout>-async.

Prompts: the quickstart's short ones, or with --prompt-len N distinct prompts of exactly N tokens after
the chat template (rl_workload.py, checked by tokenizing). Every sync is verified
(--check-weight-update-equal); the check's seconds are reported apart and left out of "sync" and
"step". The first rollout is a warm-up and is left out of the measured figures. Response tok/s/GPU
= response tokens of the measured rollouts / (their summed time/step - check seconds) / GPUs, where
time/step runs from the end of one rollout's step to the end of the next (generate, train, sync, and
the loop's own time). Writes OUT/rl_step.md (the tables), OUT/rl_step.json, and each run's folder
(OUT/<run>/metrics.jsonl, written as the run goes, and report.md).

    bash benchmarks/device/rl_step.sh              # 2 GPUs (nvidia-h100-x2), carry .device
    bash benchmarks/device/rl_step_1gpu.sh         # 1 GPU: this, then TRL on the same workload
    python benchmarks/rl_step.py --model qwen3-0.6b --runs colocated-1gpu --steps 6 --prompt-len 512 \\
        --response-len 512 --offload-train off      # the one-GPU GRPO workload
    python benchmarks/rl_step.py --out /tmp/rl --model tiny --response-len 16   # CPU smoke run (about 1 min)
    python benchmarks/rl_step.py --runs disaggregated --drivers train train_async   # sync vs async, 2 GPUs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch
from rl_workload import prepare, train_py_session

from temper.quickstart import load_driver

ROOT = Path(__file__).resolve().parents[1]

RUNS = {
    "disaggregated": ["--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1"],
    "colocated": ["--actor-num-gpus-per-node", "2", "--colocate", "--sglang-mem-fraction-static", "0.4"],
    "colocated-1gpu": ["--actor-num-gpus-per-node", "1", "--colocate", "--sglang-mem-fraction-static", "0.3"],
    "disaggregated-2x2": ["--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2"],
    "colocated-4": ["--actor-num-gpus-per-node", "4", "--colocate", "--sglang-mem-fraction-static", "0.4"],
    "disaggregated-4x4": ["--actor-num-gpus-per-node", "4", "--rollout-num-gpus", "4"],
    "disaggregated-4x2tp2": ["--actor-num-gpus-per-node", "4", "--rollout-num-gpus", "4",
                             "--rollout-num-gpus-per-engine", "2"],
}
GPUS = {"disaggregated": 2, "colocated": 2, "colocated-1gpu": 1, "disaggregated-2x2": 4, "colocated-4": 4,
        "disaggregated-4x4": 8, "disaggregated-4x2tp2": 8}
DRIVERS = {"train": "", "train_async": "-async"}  # driver -> suffix of its runs' names
SHAPE_SCRIPTS = {"qwen3-0.6b": "qwen3-0.6B.sh", "qwen3-1.7b": "qwen3-1.7B.sh", "qwen3-4b": "qwen3-4B.sh",
                 "qwen3-8b": "qwen3-8B.sh", "tiny": "qwen3-tiny.sh"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("rl_step_out"))
    p.add_argument("--model", default="qwen3-0.6b", choices=sorted(SHAPE_SCRIPTS))
    p.add_argument("--runs", nargs="+", default=["disaggregated", "colocated"], choices=list(RUNS))
    p.add_argument("--drivers", nargs="+", default=["train"], choices=list(DRIVERS),
                   help="train.py and/or train_async.py (rollout k+1 generated while k trains; runs named <run>-async)")
    p.add_argument("--steps", type=int, default=4, help="rollouts per run (the first is a warm-up)")
    p.add_argument("--rollout-batch-size", type=int, default=8)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--response-len", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=0, help="tokens per prompt (0: the quickstart's prompts)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--max-tokens-per-gpu", type=int, default=16384, help="token budget per train micro-batch")
    p.add_argument("--offload-train", choices=["default", "on", "off"], default="default",
                   help="colocated runs: move the trainer to CPU during rollouts (default: the memory plan's choice)")
    p.add_argument("--recompute", action="store_true", help="activation checkpointing (--recompute-activations)")
    p.add_argument("--check-first-sync-only", action="store_true",
                   help="no --check-weight-update-equal: only the preflight's check of the first sync (whose "
                        "sender-side checksums are computed during that sync)")
    p.add_argument("--mem-fraction", type=float, help="--sglang-mem-fraction-static instead of the run's own")
    p.add_argument("--workdir", type=Path, help="where the model and prompts go (and are reused from); "
                   "default: a temporary folder, removed at the end")  # fmt: skip
    return p.parse_args(argv)


def model_args(script: str) -> list[str]:
    command = f"source {ROOT / 'scripts' / 'models' / script} && printf '%s\\n' \"${{MODEL_ARGS[@]}}\""
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()


def run_flags(args, model: Path, prompts: Path, run: str, name: str) -> list[str]:
    """The flags of layout `run`; `name`: the run's folder under OUT."""
    samples = args.rollout_batch_size * args.n_samples
    flags = [
        *model_args(SHAPE_SCRIPTS[args.model]), "--hf-checkpoint", str(model), "--prompt-data", str(prompts),
        "--input-key", "prompt", "--label-key", "label", "--apply-chat-template", "--rollout-shuffle",
        "--custom-rm-path", "temper.quickstart.reward", "--advantage-estimator", "grpo", "--lr", "1e-6",
        "--rollout-batch-size", str(args.rollout_batch_size), "--n-samples-per-prompt", str(args.n_samples),
        "--global-batch-size", str(samples), "--rollout-temperature", "1.0",
        "--rollout-max-response-len", str(args.response_len), "--num-rollout", str(args.steps),
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", str(args.max_tokens_per_gpu),
        "--run-dir", str(args.out / name), *RUNS[run],
    ]  # fmt: skip
    if not args.check_first_sync_only:
        flags.append("--check-weight-update-equal")
    if args.offload_train != "default":
        flags.append("--offload-train" if args.offload_train == "on" else "--no-offload-train")
    if args.recompute:
        flags.append("--recompute-activations")
    if args.mem_fraction is not None:
        flags += ["--sglang-mem-fraction-static", str(args.mem_fraction)]  # the last one wins
    return flags


MAIN_PHASES = ("rollout", "train", "sync")


def step_figures(s: dict) -> dict[str, float]:
    """One rollout's figures from its metrics.jsonl record (the check's seconds out of sync and step: the
    comparison after the sync, sync/check_s, and the sender's checksums during it, sync/check_record_s).
    memory_s: the driver's other phases (colocated memory moves: time/release_engine, onload_train,
    offload_train, resume_engine)."""
    check = s.get("sync/check_s", 0.0) + s.get("sync/check_record_s", 0.0)
    tokens = s.get("rollout/num_samples", 0.0) * s.get("rollout/response_len_mean", 0.0)
    sync = s.get("time/sync", 0.0) - check
    other = [k for k in s if k.startswith("time/") and k[5:] not in (*MAIN_PHASES, "step", "elapsed")]
    return {
        "rollout_s": s.get("time/rollout", 0.0),
        "generation_s": s.get("rollout/generation_time", 0.0),
        "train_s": s.get("time/train", 0.0),
        "sync_s": sync,
        "memory_s": sum(s[k] for k in other),
        "check_s": check,
        "step_s": s.get("time/step", 0.0) - check,
        "response_tokens": round(tokens),
        "samples": s.get("rollout/num_samples", 0.0),
        "response_len": s.get("rollout/response_len_mean", 0.0),
        "sync_bytes": s.get("sync/bytes", 0.0),
        "checked_tensors": s.get("sync/checked_tensors", 0.0),  # a mismatch stops the run
        "sync_gb_s": s.get("sync/bytes", 0.0) / sync / 1e9 if sync > 0 else 0.0,
        "logprob_abs_diff": s.get("train/train_rollout_logprob_abs_diff", float("nan")),
        "ppo_kl": s.get("train/ppo_kl", float("nan")),
        "pg_clipfrac": s.get("train/pg_clipfrac", float("nan")),
        # where a rollout's time goes: requests out, answers in, the engines' steps; the sender's own share of sync
        "last_sent_s": s.get("rollout/last_request_sent_s", float("nan")),
        "last_answer_s": s.get("rollout/last_answer_s", float("nan")),
        "engine_steps": s.get("rollout/engine_prefill_steps", float("nan")) + s.get("rollout/engine_decode_steps", float("nan")),
        "engine_ms_per_step": s.get("rollout/engine_ms_per_step", float("nan")),
        "engine_prefills": s.get("rollout/engine_prefill_steps", float("nan")),
        "engine_busy_s": s.get("rollout/engine_busy_s", float("nan")),
        "engine_start_s": s.get("rollout/engine_busy_start_s", float("nan")),
        "engine_idle_s": s.get("rollout/engine_idle_at_s", float("nan")),
        "send_s": s.get("sync/send_s", float("nan")),
        "gather_s": s.get("sync/gather_s", float("nan")),
        "post_s": s.get("sync/post_s", float("nan")),
    }


def phases(s: dict) -> dict[str, float]:
    """Every time/<phase> of the record, as the driver logged it (the check inside sync)."""
    return {k[5:]: v for k, v in s.items() if k.startswith("time/") and k != "time/elapsed"}


def measure(steps: list[dict], gpus: int) -> dict:
    """Per-rollout figures, and over the measured rollouts (all but the first): means, totals and rates."""
    per_step = [{"step": s["step"], **step_figures(s), "phases": phases(s)} for s in steps]
    measured = per_step[1:] or per_step
    means = {k: sum(s[k] for s in measured) / len(measured) for k in measured[0] if k not in ("step", "phases")}
    tokens, seconds = sum(s["response_tokens"] for s in measured), sum(s["step_s"] for s in measured)
    return {
        **means,
        "measured_steps": len(measured),
        "gpus": gpus,
        "measured_response_tokens": tokens,
        "measured_step_s": seconds,
        "response_tok_s_per_gpu": tokens / seconds / gpus if seconds else 0.0,
        "rollout_tok_s": tokens / sum(s["rollout_s"] for s in measured),
        "generation_tok_s": tokens / max(sum(s["generation_s"] for s in measured), 1e-9),
        "max_abs_ppo_kl": max(abs(s["ppo_kl"]) for s in per_step),
        "max_pg_clipfrac": max(s["pg_clipfrac"] for s in per_step),
        "max_logprob_abs_diff": max(s["logprob_abs_diff"] for s in per_step),
        "steps": per_step,
    }


RUN_COLUMNS = [
    ("GPUs", "gpus", "{:.0f}"), ("rollout s", "rollout_s", "{:.2f}"), ("train s", "train_s", "{:.2f}"),
    ("sync s", "sync_s", "{:.3f}"), ("memory s", "memory_s", "{:.2f}"), ("step s", "step_s", "{:.2f}"),
    ("response tokens", "response_tokens", "{:.0f}"),
    ("response tok/s/GPU", "response_tok_s_per_gpu", "**{:,.0f}**"), ("rollout tok/s", "rollout_tok_s", "{:,.0f}"),
    ("generation tok/s", "generation_tok_s", "{:,.0f}"),
    ("sync GB/s", "sync_gb_s", "{:.2f}"), ("check s", "check_s", "{:.2f}"),
    ("log-prob gap", "logprob_abs_diff", "{:.2e}"), ("max abs ppo_kl", "max_abs_ppo_kl", "{:.1e}"),
    ("max clipfrac", "max_pg_clipfrac", "{:.1e}"),
]  # fmt: skip
"""(header, key, format) of the table of runs (means over the measured rollouts)."""
STEP_COLUMNS = [
    ("rollout s", "rollout_s", "{:.2f}"), ("generation s", "generation_s", "{:.2f}"),
    ("train s", "train_s", "{:.2f}"), ("sync s", "sync_s", "{:.3f}"), ("memory s", "memory_s", "{:.2f}"),
    ("check s", "check_s", "{:.2f}"), ("step s", "step_s", "{:.2f}"), ("response tokens", "response_tokens", "{:.0f}"),
    ("sync GB/s", "sync_gb_s", "{:.2f}"), ("log-prob gap", "logprob_abs_diff", "{:.2e}"),
    ("ppo_kl", "ppo_kl", "{:.1e}"), ("clipfrac", "pg_clipfrac", "{:.1e}"),
    ("last request sent s", "last_sent_s", "{:.3f}"), ("last answer s", "last_answer_s", "{:.2f}"),
    ("engine steps", "engine_steps", "{:.0f}"), ("prefill steps", "engine_prefills", "{:.0f}"),
    ("engine ms/step", "engine_ms_per_step", "{:.2f}"), ("engine busy s", "engine_busy_s", "{:.2f}"),
    ("engine first step s", "engine_start_s", "{:.3f}"), ("engine idle at s", "engine_idle_s", "{:.2f}"),
    ("sync send s", "send_s", "{:.3f}"), ("sync gather s", "gather_s", "{:.3f}"), ("sync post s", "post_s", "{:.3f}"),
]  # fmt: skip
"""(header, key, format) of each run's table of rollouts."""


def markdown(first: str, columns: list, rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| " + " | ".join([first] + [c[0] for c in columns]) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in rows:
        lines.append("| " + " | ".join([name] + [fmt.format(r[key]) for _, key, fmt in columns]) + " |")
    return lines


def table(results: dict[str, dict], device: str) -> str:
    first = next(iter(results.values()))
    lines = [
        f"Device: {device}. Means over {first['measured_steps']} rollouts after one warm-up; sync and step "
        "exclude the weight check (check s); memory s: colocated memory moves (engine release/resume, trainer "
        "onload/offload). A -async run is train_async.py: its rollout s is the wait for the rollout generated "
        "while the previous one trained (generation s is the generation itself).",
        "",
        *markdown("run", RUN_COLUMNS, list(results.items())),
    ]
    for run, r in results.items():
        lines += ["", f"{run}, each rollout (step 0 is the warm-up):", ""]
        lines += markdown("step", STEP_COLUMNS, [(str(s["step"]), s) for s in r["steps"]])
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    results = {}
    with train_py_session(args.out, args.workdir, "temper-rl-step-") as (work, device, cuda):
        dtype = torch.bfloat16 if cuda else torch.float32
        model, prompts = prepare(work, args.model, args.prompt_len, args.num_prompts, dtype)
        print(f"model and prompts ready in {time.monotonic() - started:.0f}s: {model}, {prompts}", flush=True)
        for run in args.runs:
            for driver in args.drivers:
                name = run + DRIVERS[driver]
                print(f"== {name}", flush=True)
                shutil.rmtree(args.out / name, ignore_errors=True)  # its metrics.jsonl is appended to
                steps = load_driver(driver).main(run_flags(args, model, prompts, run, name))
                results[name] = measure(steps, GPUS[run] if cuda else 1)
    text = table(results, device)
    print(text, flush=True)
    for run, r in results.items():
        print(f"temper {run} response tok/s/GPU: {r['response_tok_s_per_gpu']:.0f}", flush=True)
    (args.out / "rl_step.md").write_text(text)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"device": device, "model": str(model), "prompts": str(prompts), "args": settings, "results": results}
    (args.out / "rl_step.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    return results


if __name__ == "__main__":
    main()
