"""SFT through train.py on the tiny model (slime's recipe, no engines): the loss falls and the model
learns the trained answer format ("The answer is <sum>." then the end-of-turn token)."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from temper.quickstart import load_driver
from temper.testing import build_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("plots_unrasterized")]
STEPS = 12


def write_chats(path, count: int = 16) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + {3 * i % 7}?"},
                      {"role": "assistant", "content": f"The answer is {i + 3 * i % 7}."}]}
        for i in range(count)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def greedy(model_dir, question: str, tokens: int = 12) -> str:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:])


def test_sft_loss_falls_and_the_format_is_learnt(tmp_path):
    model = tmp_path / "model"
    build_tiny_model(model, "qwen3", seed=0)
    data = tmp_path / "chats.jsonl"
    write_chats(data)
    steps = load_driver("train").main([
        "--hf-checkpoint", str(model), "--prompt-data", str(data), "--input-key", "messages", "--rollout-shuffle",
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--loss-type", "sft_loss",
        "--calculate-per-token-loss", "--disable-compute-advantages-and-returns", "--debug-train-only",
        "--rollout-batch-size", "8", "--global-batch-size", "8", "--num-rollout", str(STEPS), "--lr", "1e-2",
        "--actor-num-gpus-per-node", "1", "--run-dir", str(tmp_path / "run"),
        "--save-hf", str(tmp_path / "hf_{rollout_id}"), "--save", str(tmp_path / "ckpt"), "--save-interval", str(STEPS),
    ])  # fmt: skip
    losses = [step["train/sft_loss"] for step in steps]
    assert len(losses) == STEPS
    assert losses[-1] < 0.4 * losses[0], losses
    assert not greedy(model, "What is 20 + 3?").startswith("The answer is")  # the random model does not know it
    answer = greedy(tmp_path / f"hf_{STEPS - 1}", "What is 20 + 3?")  # a question it was not trained on
    assert re.match(r"The answer is \d", answer), answer  # the format, then a number (not yet the sum)
