"""Search-R1's multi-turn rollout as a custom generate function, and its exact-match / F1 rewards.

    --custom-generate-function-path examples/search-r1/generate_with_search.py:generate
    --custom-rm-path examples/search-r1/generate_with_search.py:reward_em     (or reward_f1)
    --max-turns 3                                  SEARCH_R1_CORPUS=data/search-r1/corpus.jsonl

`generate(args, sample, sampling_params)` has slime's signature. Each turn the policy writes until
``</search>`` or ``</answer>`` (stop strings, kept in the text); a search query goes to the local BM25
retriever (retriever.py) and its top documents come back as ``<information>…</information>``, appended
to the sample with loss mask 0 (the policy is not trained to write them); an answer, a turn cut by the
token budget or an abort ends the rollout, as does `--max-turns` (default 3). Each model turn gets
`max_new_tokens` of its own (`--rollout-max-response-len`), as in Search-R1. A turn with neither tag gets
Search-R1's "invalid action" reminder as its observation.

Tokens are the truth: the prompt is tokenized once and every turn continues from the sample's ids (the
engine's own ids for the policy's text, the tokenizer's for observations), never re-tokenizing text.

Rewards: the content of the last ``<answer>`` against the label (a string or list of strings), after
SQuAD normalization (lower case, no punctuation or articles); no answer tag scores 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

from temper.rollout.generate import append_output, get_state, prompt_token_ids, routing_key
from temper.rollout.rewards.f1 import f1_reward, normalize_text
from temper.types import Sample

CORPUS_ENV = "SEARCH_R1_CORPUS"
DEFAULT_CORPUS = "data/search-r1/corpus.jsonl"
TOPK = 3
MAX_TURNS = 3
STOP = ["</search>", "</answer>"]
INVALID = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
    "</search>. If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)
DONE = (Sample.Status.ABORTED, Sample.Status.TRUNCATED)


def _sibling(name: str):
    """retriever.py beside this file (the example folder is not a package)."""
    module_name = f"search_r1_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        sys.modules[module_name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[module_name]


retriever = _sibling("retriever")


def parse_action(text: str) -> tuple[str | None, str]:
    """("search" | "answer" | None, the tag's content) of the first complete tag in a turn's text."""
    match = re.search(r"<(search|answer)>(.*?)</\1>", text, re.S)
    return (match[1], match[2].strip()) if match else (None, "")


def search(query: str, topk: int = TOPK) -> str:
    corpus = os.environ.get(CORPUS_ENV, DEFAULT_CORPUS)
    return retriever.passages_text(retriever.load_retriever(corpus).search(query, topk))


def observation(action: str | None, content: str) -> str:
    if action == "search":
        return f"\n\n<information>{search(content)}</information>\n\n"
    return INVALID


async def generate(args: Any, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    """Up to --max-turns model turns, each followed by a search result (see the module docstring)."""
    state = await get_state(args)
    client = state.require_client()
    if not sample.tokens:
        sample.tokens = prompt_token_ids(state, sample)
    stop = sampling_params.get("stop") or []
    params = {**sampling_params, "stop": list(dict.fromkeys([*([stop] if isinstance(stop, str) else stop), *STOP]))}
    turns = getattr(args, "max_turns", None) or MAX_TURNS
    searches = []
    for turn in range(turns):
        payload = {"input_ids": sample.tokens, "sampling_params": params, "return_logprob": True}
        output = await client.generate(payload, routing_key=routing_key(sample))
        append_output(sample, output)
        action, content = parse_action(output.get("text", ""))
        if sample.status in DONE or action == "answer" or turn == turns - 1:
            break
        searches += [content] if action == "search" else []
        text = observation(action, content)
        ids = state.tokenizer(text, add_special_tokens=False)["input_ids"]
        sample.append_response_tokens(ids, trainable=False, text=text)
    sample.metadata = {**sample.metadata, "searches": searches}
    return sample


def extract_answer(response: str) -> str | None:
    """The content of the last ``<answer>…</answer>``, or None."""
    answers = re.findall(r"<answer>(.*?)</answer>", response, re.S)
    return answers[-1].strip() if answers else None


def _golds(label: Any) -> list[str]:
    return [str(g) for g in label] if isinstance(label, (list, tuple)) else [str(label)]


async def reward_em(args: Any, sample: Sample) -> float:
    """1.0 when the last answer equals one of the label's answers after normalization, else 0.0."""
    answer = extract_answer(sample.response)
    if answer is None:
        return 0.0
    return float(any(normalize_text(answer) == normalize_text(g) for g in _golds(sample.label)))


async def reward_f1(args: Any, sample: Sample) -> float:
    """SQuAD token F1 of the last answer against the label's best answer (0.0 without an answer)."""
    answer = extract_answer(sample.response)
    return 0.0 if answer is None else f1_reward(answer, _golds(sample.label))
