"""Math answer checking: `\\boxed{}` extraction, MATH-style string normalization, and symbolic
equivalence through math-verify (Hugging Face's `parse`/`verify`).

`is_equiv(pred, gold)` is true when the normalized strings are equal or math-verify finds the two
expressions equal (fractions, decimals, `\\dfrac` vs `/`, reordered sets, ...). Without the
`math-verify` package only the string comparison runs (logged once). These functions are pure and
synchronous; `hub` runs them off the event loop with a time limit, since sympy can take long.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_warned_no_math_verify = False


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x`) in `text`, braces matched;
    None if there is none or its braces do not close."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    rest = text[start:]
    rest = rest[len(next(cmd for cmd in _BOX_COMMANDS if rest.startswith(cmd))) :]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        return rest.strip().split("$")[0].strip() or None
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None


def unbox(text: str) -> str:
    """`text`'s last boxed content if it has one, else `text` itself (labels may come either way)."""
    boxed = last_boxed(text)
    return text if boxed is None else boxed


def normalize_answer(answer: str) -> str:
    """MATH-style canonical form of a final answer (after Hendrycks et al.'s `strip_string`): no
    spaces, units, `\\left`/`\\right`, dollar signs or degree marks; `\\dfrac`→`\\frac`; `a/b` and
    `\\frac12` → `\\frac{a}{b}`; leading zero on decimals; a short `x =` prefix dropped."""
    s = answer.strip().replace("\n", "").replace("\\!", "")
    s = re.sub(r"\\+", r"\\", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}$", "", s.strip())  # trailing units
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{(.*?)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if "=" in s and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=", 1)[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_slash(s)
    return s.rstrip(".")


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _fix_fracs(s: str) -> str:
    """`\\frac12` → `\\frac{1}{2}`, `\\frac1{2}` → `\\frac{1}{2}`."""
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", s)


def _fix_slash(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def math_verify_equal(pred: str, gold: str) -> bool:
    """Whether math-verify finds `pred` equal to `gold` (both LaTeX fragments); False if not installed.

    Its own signal-based timeouts are off (they only work on the main thread); callers bound time.
    """
    global _warned_no_math_verify
    try:
        from math_verify import parse, verify

        # It warns that its timeouts are off on every first call; callers bound the time instead.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
    except ImportError:
        if not _warned_no_math_verify:
            _warned_no_math_verify = True
            logger.warning(
                "math-verify is not installed: math rewards compare normalized strings only (pip install math-verify)"
            )
        return False
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def is_equiv(pred: str, gold: str) -> bool:
    """Same answer: equal after `normalize_answer`, or symbolically equal (math-verify)."""
    if normalize_answer(pred) == normalize_answer(gold):
        return True
    try:
        return math_verify_equal(pred, gold)
    except Exception as e:  # noqa: BLE001  (sympy raises anything on odd input; an unparsable answer is wrong)
        logger.debug("math-verify failed on %r vs %r: %s", pred, gold, e)
        return False


def grade_boxed(response: str, label: object) -> float:
    """1.0 if the last `\\boxed{}` of `response` equals the label (itself boxed or not, or any of a
    list of labels), else 0.0; 0.0 when the response has no boxed answer."""
    pred = last_boxed(response)
    if pred is None:
        return 0.0
    golds = label if isinstance(label, (list, tuple)) else [label]
    return 1.0 if any(is_equiv(pred, unbox(str(g))) for g in golds if g is not None) else 0.0


def grade_math(response: str, label: object) -> float:
    """`--rm-type math`: the last boxed answer against the label."""
    return grade_boxed(response, label)


def grade_deepscaler(response: str, label: object) -> float:
    """`--rm-type deepscaler`: like math, but only the text after `</think>` (or `###Response`)
    counts, and a response without that delimiter scores 0."""
    for delimiter in ("</think>", "###Response"):
        if delimiter in response:
            return grade_boxed(response.split(delimiter)[-1], label)
    return 0.0
