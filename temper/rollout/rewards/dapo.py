"""`--rm-type dapo`: DAPO's math reward, Minerva-style (Lewkowycz et al. 2022, appendix D.1).

Only the last 300 characters of the response are read; the prediction is the last line of the form
``Answer: ...``, normalized (units, `\\text{}`, dollar signs, thousands separators removed); it is
correct when it equals the normalized label, or both are numbers of equal value. Returns a dict
``{"score": 1.0 | -1.0, "acc": bool, "pred": str}``: train on it with ``--reward-key score``.
"""

from __future__ import annotations

import re

from temper.rollout.rewards.math_utils import unbox

TAIL_CHARS = 300
INVALID = "[INVALID]"

_SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]  # fmt: skip
_REMOVED = [
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
    "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
]  # fmt: skip


def normalize_final_answer(answer: str) -> str:
    """Minerva's normalization of a final answer (the right-hand side of a last `=`)."""
    s = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        s = s.replace(before, after)
    for expr in _REMOVED:
        s = s.replace(expr, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)
    for command in ("text", "textbf", "overline"):
        s = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
    s = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s)
    s = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", s)
    s = s.replace("$", "")
    if s.replace(",", "").isdigit():
        s = s.replace(",", "")
    return s.strip()


def extract_answer(response: str) -> str:
    """The normalized prediction: the last ``Answer: ...`` line of the response's tail, or INVALID."""
    matches = re.findall(r"(?i)Answer\s*:\s*([^\n]+)", response[-TAIL_CHARS:])
    return normalize_final_answer(matches[-1]) if matches else INVALID


def compute_score(response: str, label: object) -> dict:
    """{"score": 1.0 if correct else -1.0, "acc": correct, "pred": the normalized prediction}."""
    pred = extract_answer(response)
    gold = normalize_final_answer(unbox(str(label)))
    correct = pred != INVALID and (pred == gold or _same_number(pred, gold))
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred}


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False
