"""TRL's GRPOTrainer on rl_step.py's one-GPU GRPO workload: the baseline of temper's colocated-1gpu run.

The same random model folder and prompt file as `rl_step.py --workdir DIR` (rl_workload.py builds them
when missing), the same reward (share of digits in the response, temper.quickstart.digit_share), and
TRL's own recipe for one GPU: Hugging Face generate (no vLLM), gradient checkpointing, per-device
batch 16 x 4 accumulation steps = 64 completions per optimizer step (one generation of 8 prompts x
`num_generations` 8 per step), `beta` 0 (no KL, no reference model), temperature 1.0, completions up
to 512 tokens, bf16 mixed precision over the float32 weights TRL loads by default (temper's trainer
keeps float32 master weights too). TRL 1.16 has no prompt-length cap; the prompts are exactly
--prompt-len tokens (checked here by rendering them as TRL does).

Each optimizer step is timed by a TrainerCallback with torch.cuda.synchronize: "step s" runs from the
end of the previous step to the end of this one (as temper's time/step does: the Trainer's logging and
data loading between steps included); "rollout s" is TRL's generate-and-score call (generation,
reward, advantages), "train s" the rest. Response tokens are counted exactly, from the completion ids
the reward function receives. The first step is a warm-up. Writes OUT/trl_grpo.json and prints
`TRL response tok/s/GPU: N` (measured response tokens / their summed step seconds).

    python benchmarks/trl_grpo.py --workdir DIR --out OUT                       # GPU (pip: trl, datasets)
    python benchmarks/trl_grpo.py --model tiny --response-len 16 --prompt-len 64 --workdir /tmp/w --out /tmp/t
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import torch
from rl_workload import prepare, prompt_tokens, read_prompts

from temper.quickstart import digit_share

CONFIG_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
               "steps_per_generation", "num_generations", "max_completion_length", "beta", "temperature",
               "gradient_checkpointing", "bf16", "loss_type", "scale_rewards", "use_vllm")  # fmt: skip
"""The GRPOConfig values written with the result."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("trl_grpo_out"))
    p.add_argument("--workdir", type=Path, help="the model and prompts (rl_step.py's --workdir); default: temporary")
    p.add_argument("--model", default="qwen3-0.6b", choices=["tiny", "qwen3-0.6b", "qwen3-4b"])
    p.add_argument("--steps", type=int, default=6, help="optimizer steps (the first is a warm-up)")
    p.add_argument("--rollout-batch-size", type=int, default=8)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--per-device-batch", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights as TRL loads them (its default: float32, with bf16 autocast)")  # fmt: skip
    p.add_argument("--compare-to", type=Path, help="rl_step.py's rl_step.json: print temper vs TRL")
    p.add_argument("--run", default="colocated-1gpu", help="the run of --compare-to to compare with")
    return p.parse_args(argv)


class CountingReward:
    """temper.quickstart.reward for TRL (the share of digits in each completion's text); counts the
    completion tokens it is given."""

    def __init__(self) -> None:
        self.__name__ = "digit_share"  # TRL names the reward's metrics after it
        self.tokens = 0

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        self.tokens += sum(len(ids) for ids in completion_ids)
        return [digit_share(c[-1]["content"] if isinstance(c, list) else c) for c in completions]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(record: list[float], fn):
    """`fn`, adding each call's seconds (device work included) to record[0]."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _sync()
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _sync()
            record[0] += time.perf_counter() - start

    return wrapper


def make_timer(reward: CountingReward, rollout_seconds: list[float], on_step):
    """A TrainerCallback that records each optimizer step's seconds, rollout seconds and response tokens,
    and calls `on_step(steps)` after each."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict] = []
            self.logs: list[dict] = []
            self._begin = self._last_end = None
            self._tokens = 0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._begin = time.perf_counter()
            rollout_seconds[0] = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            now = time.perf_counter()
            inside = now - self._begin
            step = now - self._last_end if self._last_end is not None else inside
            self.steps.append({
                "step": len(self.steps), "step_s": step, "inside_step_s": inside, "rollout_s": rollout_seconds[0],
                "train_s": inside - rollout_seconds[0], "response_tokens": reward.tokens - self._tokens,
            })  # fmt: skip
            self._last_end, self._tokens = now, reward.tokens
            print(f"TRL step {len(self.steps) - 1}: {self.steps[-1]}", flush=True)
            on_step(self.steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    return StepTimer()


def build_trainer(args, model: Path, prompts: Path, reward: CountingReward, timer, out: Path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available()
    samples = args.rollout_batch_size * args.n_samples
    if samples % args.per_device_batch:
        raise SystemExit(f"--per-device-batch {args.per_device_batch} must divide {samples} samples per step")
    config = GRPOConfig(
        output_dir=str(out / "trl-run"), max_steps=args.steps, learning_rate=1e-6, seed=0,
        per_device_train_batch_size=args.per_device_batch, gradient_accumulation_steps=samples // args.per_device_batch,
        num_generations=args.n_samples, max_completion_length=args.response_len, beta=0.0,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, gradient_checkpointing=True,
        bf16=cuda, use_cpu=not cuda, model_init_kwargs={"dtype": args.dtype},
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0,
    )  # fmt: skip
    rows = [{"prompt": [{"role": "user", "content": text}]} for text in read_prompts(prompts)]
    trainer = GRPOTrainer(
        model=str(model), reward_funcs=[reward], args=config, train_dataset=Dataset.from_list(rows), callbacks=[timer]
    )
    return trainer, config


def check_prompt_lengths(trainer, prompts: Path, want: int) -> list[int]:
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    lengths = sorted({len(prompt_tokens(tokenizer, text)) for text in read_prompts(prompts)})
    if want and lengths != [want]:
        raise SystemExit(f"{prompts}: prompts of {lengths} tokens, wanted {want}")
    return lengths


def summarize(steps: list[dict], gpus: int = 1) -> dict:
    measured = steps[1:] or steps
    tokens, seconds = sum(s["response_tokens"] for s in measured), sum(s["step_s"] for s in measured)
    means = {k: sum(s[k] for s in measured) / len(measured) for k in measured[0] if k != "step"}
    return {
        **means,
        "measured_steps": len(measured),
        "measured_response_tokens": tokens,
        "measured_step_s": seconds,
        "response_tok_s_per_gpu": tokens / seconds / gpus if seconds else 0.0,
        "rollout_tok_s": tokens / max(sum(s["rollout_s"] for s in measured), 1e-9),
        "steps": steps,
    }


def compare(temper: dict, trl: dict, device: str) -> str:
    """temper's run vs TRL's on the same workload, with the issue's bounds."""
    rows = [("response tok/s/GPU", "response_tok_s_per_gpu", "{:,.0f}"), ("step s", "step_s", "{:.2f}"),
            ("rollout s", "rollout_s", "{:.2f}"), ("train s", "train_s", "{:.2f}"),
            ("response tokens / step", "response_tokens", "{:,.0f}")]  # fmt: skip
    lines = [f"Device: {device}. Means over the measured steps after one warm-up.", "",
             "| | temper | TRL GRPOTrainer | temper / TRL |", "|---|---|---|---|"]  # fmt: skip
    for name, key, fmt in rows:
        ratio = temper[key] / trl[key] if trl[key] else float("nan")
        lines.append(f"| {name} | {fmt.format(temper[key])} | {fmt.format(trl[key])} | {ratio:.2f} |")
    speedup = temper["response_tok_s_per_gpu"] / max(trl["response_tok_s_per_gpu"], 1e-9)
    checks = [
        ("temper response tok/s/GPU >= 12,000", temper["response_tok_s_per_gpu"] >= 12_000),
        ("temper / TRL >= 8", speedup >= 8),
        ("temper rollout s <= 1.5", temper["rollout_s"] <= 1.5),
        ("log-prob gap (mean) <= 0.02", temper["logprob_abs_diff"] <= 0.02),
        ("ppo_kl == 0 and clipfrac == 0 on every step (ratio 1)",
         temper["max_abs_ppo_kl"] == 0 and temper["max_pg_clipfrac"] == 0),
        ("every sync checked equal (--check-weight-update-equal)",
         min(s["checked_tensors"] for s in temper["steps"]) > 0),
    ]  # fmt: skip
    lines += ["", *(f"- {name}: {'yes' if ok else 'NO'}" for name, ok in checks)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import transformers
    import trl

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="temper-trl-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    started = time.monotonic()
    model, prompts = prepare(work, args.model, args.prompt_len, args.num_prompts,
                             torch.bfloat16 if cuda else torch.float32)  # fmt: skip
    record = {"device": device, "trl": trl.__version__, "transformers": transformers.__version__, "model": str(model),
              "prompts": str(prompts), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}

    def save(steps: list[dict]) -> dict:  # after every step: a run cut short by a timeout keeps its steps
        record["result"] = summarize(steps)
        record["result"]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        record["logs"] = timer.logs
        (args.out / "trl_grpo.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        return record["result"]

    reward, rollout_seconds = CountingReward(), [0.0]
    timer = make_timer(reward, rollout_seconds, save)
    trainer, config = build_trainer(args, model, prompts, reward, timer, work)
    trainer._generate_and_score_completions = timed(rollout_seconds, trainer._generate_and_score_completions)
    record["prompt_lengths"] = check_prompt_lengths(trainer, prompts, args.prompt_len)
    record["config"] = {k: getattr(config, k) for k in CONFIG_KEYS}
    print(f"TRL {trl.__version__}, transformers {transformers.__version__}, {device}; set up in "
          f"{time.monotonic() - started:.0f}s; prompts of {record['prompt_lengths']} tokens", flush=True)  # fmt: skip
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = save(timer.steps)
    print(f"TRL means over {result['measured_steps']} steps after one warm-up: step {result['step_s']:.2f}s "
          f"(rollout {result['rollout_s']:.2f}s, train {result['train_s']:.2f}s), "
          f"{result['response_tokens']:.0f} response tokens, peak {result['peak_gib']:.1f} GiB",
          flush=True)  # fmt: skip
    print(f"TRL response tok/s/GPU: {result['response_tok_s_per_gpu']:.0f}", flush=True)
    if args.compare_to and args.compare_to.is_file():
        text = compare(json.loads(args.compare_to.read_text())["results"][args.run], result, device)
        (args.out / "compare.md").write_text(text)
        print(text, flush=True)
    elif args.compare_to:
        print(f"no temper result at {args.compare_to}: nothing to compare", flush=True)
    print(f"total {time.monotonic() - started:.0f}s", flush=True)
    return result


if __name__ == "__main__":
    main()
