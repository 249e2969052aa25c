"""The RL benchmarks' shared workload: the model shapes, and prompt files whose prompts are an exact
number of tokens once rendered the way temper's data path renders them.

Used by `rl_step.py` (temper's loop) and `trl_grpo.py` (TRL's GRPOTrainer on the same workload), so
both read the same model folder and the same prompts. The reward of both is the quickstart's
`digit_share` of the response text.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

WORDS = (
    "the model reads a prompt and writes an answer one token at a time while the reward scores each answer "
    "and the policy learns from a group of samples for every question about numbers dates units cities "
    "rivers stars planets tools functions classes modules errors results papers experiments data"
).split()


SHAPE_NAMES = ("tiny", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b")


@contextmanager
def train_py_session(out: Path, workdir: Path | None, prefix: str):
    """For benchmarks that run train.py several times in one process: OUT made, the work folder (`workdir`, or
    a temporary one removed afterwards) and one local Ray instance that every run joins. Yields
    (work folder, device name, whether CUDA is there)."""
    import ray
    import torch

    from temper.cluster.placement import CPU_OVERSUBSCRIPTION, local_resources

    out.mkdir(parents=True, exist_ok=True)
    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    cuda, cores = local_resources()
    device = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if cuda else f"CPU ({cores} cores)"
    ray.init(num_cpus=cores * CPU_OVERSUBSCRIPTION, include_dashboard=False, configure_logging=False)
    try:
        yield work, device, cuda
    finally:
        ray.shutdown()
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def shapes() -> dict:
    """Model name -> ModelShape: the quickstart's tiny model and Qwen3's 0.6B, 1.7B, 4B and 8B (random weights)."""
    from temper.testing.tiny_models import PRESETS

    return {name: PRESETS[name] for name in SHAPE_NAMES}


def build_model(path: Path, name: str, dtype) -> Path:
    """The random `name`-shaped checkpoint in `path`, reused when its config.json is already there."""
    from temper.testing import build_tiny_model

    if (path / "config.json").is_file():
        return path
    return build_tiny_model(path, "qwen3", preset=shapes()[name], dtype=dtype)


def prompt_tokens(tokenizer, content: str) -> list[int]:
    """The token ids temper's engine gets for a prompt row with `--apply-chat-template`: the text as one
    user message through the chat template (with the generation prompt), tokenized without added
    special tokens (temper.data.prompts + temper.rollout.generate). TRL's conversational prompts give the
    same ids."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fixed_length_content(tokenizer, index: int, length: int, rng: random.Random) -> str:
    """A user message whose rendered prompt is exactly `length` tokens: distinct words, then digits (one
    token each under Qwen's pre-tokenizer) to close the gap."""
    content = f"Question {index}: answer in digits."
    while (gap := length - len(prompt_tokens(tokenizer, content))) > 8:
        content += "".join(" " + rng.choice(WORDS) for _ in range(gap // 3))
    if gap < 0:
        raise ValueError(f"prompt {index}: the header alone is {length - gap} tokens, more than {length}")
    content += "".join(str(rng.randrange(10)) for _ in range(gap))
    got = len(prompt_tokens(tokenizer, content))
    if got != length:
        raise ValueError(f"prompt {index}: {got} tokens after filling, wanted {length}")
    return content


def write_fixed_length_prompts(path: Path, model: Path, count: int, length: int, seed: int = 0) -> Path:
    """JSONL rows {"prompt", "label"} of `count` distinct prompts of exactly `length` tokens each, rendered
    with `model`'s tokenizer and chat template (checked by tokenizing each one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rng = random.Random(seed)
    rows = [{"prompt": fixed_length_content(tokenizer, i, length, rng), "label": "0"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def prepare(work: Path, name: str, prompt_len: int, num_prompts: int, dtype) -> tuple[Path, Path]:
    """The `name`-shaped model and the prompt file in `work`, each built once and reused: prompts of
    exactly `prompt_len` tokens, or the quickstart's short ones when `prompt_len` is 0."""
    from temper.quickstart import write_prompts

    model = build_model(work / f"model-{name}", name, dtype)
    if not prompt_len:
        return model, write_prompts(work / "prompts-quickstart.jsonl")
    prompts = work / f"prompts-{name}-{prompt_len}x{num_prompts}.jsonl"
    if not prompts.is_file():
        write_fixed_length_prompts(prompts, model, num_prompts, prompt_len)
    return model, prompts


def read_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
