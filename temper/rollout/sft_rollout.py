"""SFT as a rollout function: conversations in, tokens and a loss mask over assistant turns out.

    python train.py --rollout-function-path temper.rollout.sft_rollout.generate_rollout \\
        --loss-type sft_loss --calculate-per-token-loss --disable-compute-advantages-and-returns \\
        --debug-train-only --prompt-data chats.jsonl --input-key messages ...

slime's recipe (`slime.rollout.sft_rollout.generate_rollout`, which maps here) with the same contract:
`generate_rollout(args, rollout_id, data_source, evaluation=False)` takes `--rollout-batch-size` rows
of messages from the data source and returns them as samples, no engine involved. Tools come from
`--tool-key` (`sample.metadata["tools"]`); a message with ``step_loss_mask: 0`` is not trained (slime).

How the mask is found: every assistant message i is cut out of the chat template's own rendering.
The text before it is the template applied to messages[:i] with the generation prompt; its text is
what the template adds for messages[:i+1] beyond that, without trailing whitespace (the separator the
template writes after the end-of-turn token, which the model never generates). So the trained tokens
are the assistant's content, tool calls and end-of-turn token; system, user and tool turns and the
``<|im_start|>assistant`` headers are not. Each piece of text is tokenized on its own, as the engine
tokenizes a prompt and then generates, so the trained ids are those the model would produce.

Departure from slime: slime's `MultiTurnLossMaskGenerator` renders each message alone and strips a
system-prompt length measured per tokenizer family (`--loss-mask-type`); here the template is applied
to whole prefixes, which works for any template whose rendering of a conversation starts with the
rendering of its first turns (it is checked, and a template that is not is an error naming the turn).
`--loss-mask-type` (slime's family switch) is accepted and changes nothing. As in slime, the response starts at the first trained token, so
later user and tool turns are response tokens with mask 0.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from temper.types import Sample

logger = logging.getLogger(__name__)

Message = dict[str, Any]


def generate_rollout(args: Any, rollout_id: int, data_source: Any, evaluation: bool = False) -> list[list[Sample]]:
    """`--rollout-batch-size` groups of SFT samples (tokens, response_length, loss_mask, reward 0)."""
    if evaluation:
        raise ValueError(
            "the SFT rollout function has no evaluation: give --eval-function-path for evaluation, or drop "
            "--eval-interval"
        )
    tokenizer = _tokenizer(args.hf_checkpoint)
    _announce(args.hf_checkpoint, getattr(args, "loss_mask_type", "qwen"))
    groups = data_source.get_samples(args.rollout_batch_size)
    for group in groups:
        for sample in group:
            to_sft_sample(sample, tokenizer)
    if groups and groups[0]:
        first = groups[0][0]
        logger.debug("sft rollout %d: first sample %d: %d tokens, %d trained", rollout_id, first.index,
                     len(first.tokens), sum(first.loss_mask or []))
    return groups


def to_sft_sample(sample: Sample, tokenizer: Any) -> Sample:
    """Fill `sample` (prompt = messages) with its tokens, response and loss mask; status COMPLETED."""
    if not isinstance(sample.prompt, list):
        raise ValueError(
            f"sample {sample.index}: the SFT rollout needs a list of messages per row, got text; point "
            "--input-key at the messages field and drop --apply-chat-template"
        )
    tokens, mask = tokens_and_loss_mask(tokenizer, sample.prompt, sample.metadata.get("tools"), where=sample.index)
    start = mask.index(1)
    sample.tokens = tokens
    sample.response_length = len(tokens) - start
    sample.loss_mask = mask[start:]
    sample.response = tokenizer.decode(tokens[start:])
    sample.reward = 0.0
    sample.status = Sample.Status.COMPLETED
    return sample


def tokens_and_loss_mask(
    tokenizer: Any, messages: list[Message], tools: list[Message] | None = None, where: Any = None
) -> tuple[list[int], list[int]]:
    """(token ids of the whole conversation, 1 on assistant-turn tokens and 0 elsewhere)."""
    tokens: list[int] = []
    mask: list[int] = []
    for text, trained in assistant_spans(tokenizer, messages, tools, where):
        ids = tokenizer.encode(text, add_special_tokens=False) if text else []
        tokens += ids
        mask += [int(trained)] * len(ids)
    if 1 not in mask:
        raise ValueError(
            f"sample {where}: no assistant turn to train on (every assistant message is missing or has "
            "step_loss_mask 0); SFT rows need at least one trained assistant message"
        )
    return tokens, mask


def assistant_spans(
    tokenizer: Any, messages: list[Message], tools: list[Message] | None = None, where: Any = None
) -> list[tuple[str, bool]]:
    """The conversation's rendered text as consecutive (text, trained) pieces; see the module docstring."""
    pieces: list[tuple[str, bool]] = []
    done = ""  # the text covered by `pieces` so far
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:i], tools, generation_prompt=True)
        with_turn = _render(tokenizer, messages[: i + 1], tools)
        _check_prefix(done, before, where, i)
        _check_prefix(before, with_turn, where, i)
        turn = with_turn[len(before):].rstrip()
        pieces += [(before[len(done):], False), (turn, message.get("step_loss_mask", 1) == 1)]
        done = before + turn
    full = _render(tokenizer, messages, tools)
    _check_prefix(done, full, where, len(messages) - 1)
    pieces.append((full[len(done):], False))
    return _merged(pieces)


def _merged(pieces: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Adjacent pieces with the same flag joined, empty ones dropped (each piece is tokenized alone)."""
    out: list[tuple[str, bool]] = []
    for text, trained in pieces:
        if not text:
            continue
        if out and out[-1][1] == trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def _render(tokenizer: Any, messages: list[Message], tools: list[Message] | None, generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


def _check_prefix(prefix: str, text: str, where: Any, turn: int) -> None:
    if not text.startswith(prefix):
        raise ValueError(
            f"sample {where}, message {turn}: the chat template renders the conversation up to this message "
            "differently from its first turns (the earlier text is not a prefix), so assistant turns cannot be "
            "cut out of it; use a template that renders each turn the same whatever follows (e.g. one that "
            "keeps reasoning in every assistant turn)"
        )


@functools.cache
def _announce(hf_checkpoint: str, loss_mask_type: str) -> None:
    """Said once per run: where the masks come from, and that slime's family switch changes nothing."""
    logger.info("sft rollout: loss masks from the chat template of %s (--loss-mask-type %s gives the same mask)",
                hf_checkpoint, loss_mask_type)


@functools.lru_cache(maxsize=4)
def _tokenizer(hf_checkpoint: str) -> Any:
    from temper.data.prompts import load_tokenizer

    return load_tokenizer(hf_checkpoint, needed_by="--rollout-function-path temper.rollout.sft_rollout")
