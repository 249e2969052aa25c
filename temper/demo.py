"""The algorithm demo: GRPO on one CPU process through temper's config, data source and algo.

    python -m temper.demo [--steps 30]

It builds a tiny random Qwen3 checkpoint offline, writes a small prompt file, and runs GRPO with
plain Hugging Face sampling in place of the engine: generate groups -> reward -> advantages ->
policy-gradient steps. The task ("answer in digits") is learnable from a random model: the reward is
the share of response tokens that are digits, about 0.01 at the start. This stands in for the main
job until the distributed loop (`train.py`: Ray, engines, FSDP trainer) is built.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from temper.algo import PolicyLossConfig, compute_advantages_and_returns, policy_loss_function
from temper.command_line import parse_config
from temper.config import Config
from temper.data import RolloutDataSourceWithBuffer, load_tokenizer
from temper.testing import build_tiny_model
from temper.types import Sample


def write_prompts(path: Path, count: int = 64) -> None:
    rows = [{"prompt": f"What is {i} + {i % 7}? Answer in digits.", "label": str(i + i % 7)} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def digit_share(text: str) -> float:
    """The demo's reward: share of non-space characters that are digits."""
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / max(len(chars), 1)


def generate_group_batch(model, tokenizer, cfg: Config, groups: list[list[Sample]]) -> list[Sample]:
    """Sample one response per Sample with HF generate; fill tokens, response, reward."""
    samples = [s for group in groups for s in group]
    prompt_ids = [tokenizer(s.prompt, add_special_tokens=False).input_ids for s in samples]
    width = max(map(len, prompt_ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    attention = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompt_ids])[:, None]).long()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=cfg.rollout_temperature,
            top_k=0, top_p=1.0, max_new_tokens=cfg.rollout_max_response_len, pad_token_id=pad,
        )
    for sample, ids, row in zip(samples, prompt_ids, out[:, width:].tolist()):
        response = [t for t in row if t != pad]
        sample.tokens = ids + response
        sample.response_length = len(response)
        sample.response = tokenizer.decode(response, skip_special_tokens=True)
        sample.reward = digit_share(sample.response)
    return samples


def response_log_probs(model, samples: list[Sample], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response token log-probs [B, T] (logits / temperature) and the response mask [B, T]."""
    width = max(len(s.tokens) for s in samples)
    resp = max(s.response_length for s in samples)
    ids = torch.tensor([s.tokens + [0] * (width - len(s.tokens)) for s in samples])
    logits = model(input_ids=ids).logits.float() / temperature
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = torch.zeros(len(samples), resp)
    rows = []
    for i, s in enumerate(samples):
        start = len(s.tokens) - s.response_length - 1
        rows.append(torch.nn.functional.pad(log_probs[i, start : start + s.response_length], (0, resp - s.response_length)))
        mask[i, : s.response_length] = 1
    return torch.stack(rows), mask


def grpo_step(model, optimizer, cfg: Config, samples: list[Sample]) -> dict[str, float]:
    rewards = torch.tensor([s.reward for s in samples])
    log_probs, mask = response_log_probs(model, samples, cfg.rollout_temperature)
    advantages, _ = compute_advantages_and_returns(
        cfg.advantage_estimator, rewards, mask, group_index=[s.group_index for s in samples],
        grpo_std_normalization=cfg.grpo_std_normalization,
    )
    loss_config = PolicyLossConfig(advantage_estimator=cfg.advantage_estimator, eps_clip=cfg.eps_clip,
                                   eps_clip_high=cfg.eps_clip_high)
    loss, metrics = policy_loss_function(log_probs, log_probs.detach(), advantages, mask, loss_config)
    optimizer.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    optimizer.step()
    return {"loss": loss.item(), "ppo_kl": metrics["ppo_kl"].item(), "grad_norm": grad_norm.item()}


def main(argv: list[str] | None = None) -> list[float]:
    """Run the demo; returns the mean reward of each step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workdir", default=None, help="where the tiny model and prompts go (default: a temp dir)")
    demo = parser.parse_args(argv)
    workdir = Path(demo.workdir or tempfile.mkdtemp(prefix="temper-demo-"))
    model_dir = build_tiny_model(workdir / "model", "qwen3", seed=0)
    write_prompts(workdir / "prompts.jsonl")
    cfg = parse_config([
        "--hf-checkpoint", str(model_dir), "--prompt-data", str(workdir / "prompts.jsonl"), "--input-key", "prompt",
        "--label-key", "label", "--apply-chat-template", "--rollout-shuffle", "--rollout-batch-size", "4",
        "--n-samples-per-prompt", "8", "--num-rollout", str(demo.steps), "--rollout-max-response-len", "8",
        "--lr", "3e-3", "--advantage-estimator", "grpo",
    ])
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.hf_checkpoint, needed_by="the demo")
    model = AutoModelForCausalLM.from_pretrained(cfg.hf_checkpoint, torch_dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    source = RolloutDataSourceWithBuffer(cfg)
    history = []
    print(f"temper demo: GRPO, {cfg.rollout_batch_size} prompts x {cfg.n_samples_per_prompt} samples, model {model_dir}")
    for rollout_id in range(cfg.num_rollout):
        start = time.perf_counter()
        samples = generate_group_batch(model, tokenizer, cfg, source.get_samples(cfg.rollout_batch_size))
        metrics = grpo_step(model, optimizer, cfg, samples)
        reward = sum(s.reward for s in samples) / len(samples)
        history.append(reward)
        print(f"step {rollout_id:3d}  reward {reward:.3f}  loss {metrics['loss']:+.4f}  "
              f"grad_norm {metrics['grad_norm']:.3f}  {time.perf_counter() - start:.2f}s", flush=True)
    return history


if __name__ == "__main__":
    main()
