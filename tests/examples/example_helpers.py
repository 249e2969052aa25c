"""Shared by the examples' tests: the commands their READMEs show, run as written on the tiny model."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shlex
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

from transformers import AutoTokenizer

from temper.command_line import parse_config
from temper.testing import tiny_model_dir
from temper.types import Sample

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def readme_train_commands(readme: Path) -> list[list[str]]:
    """The arguments of every ``python train.py ...`` command in the README's bash blocks (continuation
    lines joined), in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:2] == ["python", "train.py"]:
                commands.append(words[2:])
    return commands


def substituted(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """`argv` with each word that is, or starts with, a key of `paths` pointed into `paths[key]`."""
    out = []
    for word in argv:
        for name, path in paths.items():
            if word == name or word.startswith(name + "/"):
                word = str(path) + word[len(name):]
                break
        out.append(word)
    return out


def load_example(relative: str) -> ModuleType:
    """An example's Python file as a module (example folders such as search-r1 are not packages)."""
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ScriptedEngine:
    """A router stand-in answering each /generate with the next scripted text (the tiny tokenizer's ids)
    and finish reason `finish`; the requests are kept in `payloads`."""

    def __init__(self, tokenizer, texts, finish="stop"):
        self.tokenizer, self.texts, self.finish, self.payloads = tokenizer, list(texts), finish, []

    async def generate(self, payload, routing_key=None):
        self.payloads.append(json.loads(json.dumps(payload)))
        text = self.texts.pop(0)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        meta = {"finish_reason": {"type": self.finish}, "output_token_logprobs": [[-0.5, i, None] for i in ids],
                "weight_version": "3"}  # fmt: skip
        return {"text": text, "output_ids": ids, "meta_info": meta}


class ScriptedState:
    """The `GenerateState` parts a custom generate function uses, over a `ScriptedEngine`."""

    def __init__(self, args, engine):
        self.args, self.engine, self.prompt_ids = args, engine, OrderedDict()
        self.tokenizer = engine.tokenizer

    def require_client(self):
        return self.engine


def run_scripted(module, monkeypatch, texts, *flags, finish="stop", label=None, prompt=None, tools=None):
    """`module.generate` on one sample against a `ScriptedEngine` answering `texts`; returns
    (sample, engine, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    args = parse_config(["--rollout-batch-size", "1", "--num-rollout", "1", "--hf-checkpoint",
                         str(tiny_model_dir("qwen3")), "--custom-generate-function-path", "x.py:generate",
                         *flags])  # fmt: skip
    engine = ScriptedEngine(tokenizer, texts, finish)

    async def state(_args):
        return ScriptedState(_args, engine)

    monkeypatch.setattr(module, "get_state", state)
    metadata = {"tools": tools} if tools else {}
    sample = Sample(index=0, group_index=0, prompt=prompt, label=label, metadata=metadata)
    params = {"temperature": 1.0, "max_new_tokens": 32, "stop": ["<|im_end|>"]}
    asyncio.run(module.generate(args, sample, params))
    return sample, engine, tokenizer
