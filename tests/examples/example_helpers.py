"""Shared by the examples' tests: the commands their READMEs show, run as written on the tiny model."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

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
