"""The quickstart: GRPO that visibly learns on a CPU in a few minutes, through temper's real path.

    python -m temper.quickstart [--workdir quickstart] [--prepare-only] [train.py flags that override the defaults ...]

It builds (or reuses) a tiny random Qwen3 checkpoint and a small synthetic prompt file in `--workdir`,
prints the `python train.py ...` command it runs, and runs it: Ray, one engine server, one FSDP train
rank, weight sync by gloo broadcast after every step. The task is "answer in digits": prompts ask for
a sum, and the reward is the share of the response's non-space characters that are digits (`reward`).
A random model scores about 0.01; GRPO drives it above 0.8 within about 30 steps. Each step prints a
progress line; metrics go to `<workdir>/run-<time>/metrics.jsonl` and the summary to `report.md`.
The trained model is kept as a Hugging Face folder, `<workdir>/run-<time>/trained_model` (the last
checkpoint's export, --save-hf), and the last lines say how to serve it with `temper serve`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import time
from pathlib import Path
from typing import Any

NUM_PROMPTS = 64


def reward(args: Any, sample: Any) -> float:
    """The task's reward (--custom-rm-path temper.quickstart.reward): share of non-space characters
    of the response that are digits."""
    return digit_share(sample.response)


def digit_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / max(len(chars), 1)


def prepare(workdir: Path) -> tuple[Path, Path]:
    """The tiny model and the prompt file in `workdir`, built the first time (seeded: same files each time)."""
    from transformers.utils import logging as hf_logging

    from temper.testing import build_tiny_model

    hf_logging.disable_progress_bar()
    model = workdir / "model"
    if not (model / "config.json").is_file():
        build_tiny_model(model, "qwen3", seed=0)
    prompts = workdir / "prompts.jsonl"
    if not prompts.is_file():
        write_prompts(prompts)
    return model, prompts


def write_prompts(path: Path, count: int = NUM_PROMPTS) -> Path:
    """The task's prompt file: "What is i + j? Answer in digits." with the sum as label."""
    rows = [{"prompt": f"What is {i} + {i % 7}? Answer in digits.", "label": str(i + i % 7)} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_flags(model: Path, prompts: Path, run_dir: Path) -> list[str]:
    """The train.py flags of the quickstart run."""
    return [
        "--hf-checkpoint", str(model), "--prompt-data", str(prompts), "--input-key", "prompt", "--label-key", "label",
        "--apply-chat-template", "--rollout-shuffle", "--custom-rm-path", "temper.quickstart.reward",
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "8", "--rollout-max-response-len", "8",
        "--rollout-temperature", "1.0", "--num-rollout", "30", "--advantage-estimator", "grpo", "--lr", "3e-3",
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "4096",
        "--actor-num-nodes", "1", "--actor-num-gpus-per-node", "1", "--rollout-num-gpus", "1",
        "--run-dir", str(run_dir), "--save", str(run_dir / "checkpoint"), "--save-interval", "30", "--no-save-optim",
        "--save-hf", str(trained_model(run_dir)),
    ]  # fmt: skip


def trained_model(run_dir: Path) -> Path:
    """The Hugging Face folder of the run's model: written at every checkpoint (--save-interval, and the
    last rollout), so after the run it holds the final weights."""
    return run_dir / "trained_model"


def serve_hint(model: Path) -> str:
    """How to serve `model` and ask it one of the task's questions."""
    request = {"messages": [{"role": "user", "content": "What is 3 + 3? Answer in digits."}], "max_tokens": 8}
    return (
        f"temper quickstart: the trained model is a Hugging Face folder, {model}; serve it with\n"
        f"  temper serve --model {shlex.quote(str(model))} --port 30000\n"
        f"and ask it (in another shell):\n"
        f"  curl -s localhost:30000/v1/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(request)}'"
    )


def load_driver(name: str = "train") -> Any:
    """`train.py` / `train_async.py` of the checkout this package belongs to (the drivers live at the
    repository root, as slime's do)."""
    path = Path(__file__).resolve().parents[1] / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"temper.quickstart: {path} not found; run from a temper checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"temper_{name}_driver", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> list[dict]:
    """Prepare, run train.py with the quickstart flags (then `argv`'s extra flags), print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--workdir", default="quickstart", help="where the model, prompts and runs go")
    parser.add_argument("--prepare-only", action="store_true", help="build the model and the prompt file, then stop")
    own, extra = parser.parse_known_args(argv)
    workdir = Path(own.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, prompts = prepare(workdir)
    if own.prepare_only:
        print(f"temper quickstart: model {model}, prompts {prompts}")
        return []
    run_dir = workdir / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    flags = train_flags(model, prompts, run_dir) + extra
    print("temper quickstart: python train.py " + shlex.join(flags), flush=True)
    steps = load_driver("train").main(flags)
    rewards = [s["rollout/raw_reward"] for s in steps]
    if rewards:
        hit = next((s for s in steps if s["rollout/raw_reward"] >= 0.8), None)
        when = f"reward >= 0.8 at step {hit['step']}" if hit else "reward stayed below 0.8"
        print(
            f"temper quickstart: reward {rewards[0]:.3f} -> {rewards[-1]:.3f} over {len(rewards)} steps; {when}; "
            f"run time {steps[-1]['time/elapsed'] / 60:.1f} min (start-up included, as in report.md)",
            flush=True,
        )
    if (trained_model(run_dir) / "config.json").is_file():
        print(serve_hint(trained_model(run_dir)), flush=True)
    return steps


if __name__ == "__main__":
    main()
