"""`--rm-type gpqa`: multiple-choice grading by option letter.

The correct letter comes from, in order: `metadata["correct_letter"]`, a one-letter label (``"C"``,
``"(C)"``), an integer label (0-based index into the choices), or a label text equal to one of
`metadata["choices"]` (a list of option texts, or a dict letter → text). The predicted letter is read
from the text after `</think>` by, in order, `\\boxed{X}`, "answer is X" / "answer: X", "X is
correct", "final answer X", and lastly the last standalone option letter. If no letter is found, a
response that quotes exactly one option's text chooses that option. 1.0 if right, else 0.0.
"""

from __future__ import annotations

import re
import string
from typing import Any

LETTERS = string.ascii_uppercase[:10]

_PATTERNS = [
    r"\\boxed\{\s*\(?([A-J])\)?\s*\}",
    r"(?i:answer)\s*(?i:is)?\s*[:：]?\s*(?i:option)?\s*\(?([A-J])\)?(?![A-Za-z])",
    r"\(?([A-J])\)?\s+(?i:is\s+(?:the\s+)?correct)",
    r"(?i:final\s+answer)\s*[:：]?\s*\(?([A-J])\)?(?![A-Za-z])",
]


def option_texts(metadata: dict[str, Any]) -> dict[str, str]:
    """letter → option text from `metadata["choices"]` (list or dict); empty if absent."""
    choices = metadata.get("choices")
    if isinstance(choices, dict):
        return {str(k).strip("() ").upper(): str(v) for k, v in choices.items()}
    if isinstance(choices, (list, tuple)):
        return {LETTERS[i]: str(c) for i, c in enumerate(choices[: len(LETTERS)])}
    return {}


def gold_letter(label: Any, metadata: dict[str, Any]) -> str | None:
    """The correct option letter (see the module docstring), or None if it cannot be told."""
    options = option_texts(metadata)
    if isinstance(metadata.get("correct_letter"), str):
        return metadata["correct_letter"].strip("() ").upper()
    if isinstance(label, bool) or label is None:
        return None
    if isinstance(label, int):
        return LETTERS[label] if 0 <= label < len(LETTERS) else None
    text = str(label).strip()
    if re.fullmatch(r"\(?[A-Ja-j]\)?", text):
        return text.strip("()").upper()
    for letter, option in options.items():
        if _norm(option) == _norm(text):
            return letter
    return None


def extract_letter(response: str, valid: str = "ABCD") -> str | None:
    """The option letter the response chooses (patterns in the module docstring), or None."""
    text = response.split("</think>")[-1]
    for pattern in _PATTERNS:
        found = [m for m in re.findall(pattern, text) if m in valid]
        if found:
            return found[-1]
    standalone = [m for m in re.findall(r"(?<![A-Za-z])([A-J])(?![A-Za-z])", text) if m in valid]
    return standalone[-1] if standalone else None


def gpqa_reward(response: str, label: Any, metadata: dict[str, Any]) -> float:
    options = option_texts(metadata)
    valid = "".join(options) or "ABCD"
    gold = gold_letter(label, metadata)
    if gold is None:
        return 0.0
    pred = extract_letter(response, valid)
    if pred is None:
        quoted = [letter for letter, option in options.items() if _norm(option) and _norm(option) in _norm(response)]
        pred = quoted[0] if len(quoted) == 1 else None
    return 1.0 if pred == gold else 0.0


def _norm(text: str) -> str:
    return " ".join(text.lower().split())
