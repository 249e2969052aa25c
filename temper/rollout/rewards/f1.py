"""`--rm-type f1`: SQuAD's token-level F1 between the response and the label (search-R1 style QA).

Both sides are lower-cased, stripped of punctuation, of the articles a/an/the and of extra white
space, then split into tokens; F1 = 2PR/(P+R) over the multiset of shared tokens. A side that
normalizes to "yes", "no" or "noanswer" must match exactly (1.0 or 0.0). A list label scores the
best of its answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_EXACT_ONLY = {"yes", "no", "noanswer"}
_PUNCTUATION = set(string.punctuation)


def normalize_text(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD F1 of one prediction against one answer, in [0, 1]."""
    pred, gold = normalize_text(prediction), normalize_text(ground_truth)
    if pred in _EXACT_ONLY or gold in _EXACT_ONLY:
        return float(pred == gold)
    pred_tokens, gold_tokens = pred.split(), gold.split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_reward(response: str, label: object) -> float:
    """Best F1 of `response` over the label's answers (a string or a list of strings)."""
    golds = label if isinstance(label, (list, tuple)) else [label]
    return max((f1_score(response, str(g)) for g in golds if g is not None), default=0.0)
