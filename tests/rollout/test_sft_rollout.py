"""The SFT rollout function: conversations -> tokens + a loss mask that is exactly the assistant turns."""

import json

import pytest
from transformers import AutoTokenizer

from temper.command_line import parse_config
from temper.data import build_data_source
from temper.rollout.plugins import load_plugin
from temper.rollout.sft_rollout import generate_rollout, tokens_and_loss_mask
from temper.testing import tiny_model_dir
from temper.types import Sample

TOOLS = [{"type": "function", "function": {"name": "calc", "description": "arithmetic", "parameters": {}}}]
CALL = {"function": {"name": "calc", "arguments": {"expr": "2+3"}}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "Check it with the tool."},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "5"},
    {"role": "tool", "content": "exact"},
    {"role": "assistant", "content": "It is 5.", "reasoning_content": "the tool agrees"},
    {"role": "user", "content": "Thanks."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))


def turn_alone(tokenizer, message) -> str:
    """The assistant turn rendered by itself, without the header the generation prompt writes and the
    separator after its end-of-turn token: what the model is trained to produce."""
    text = tokenizer.apply_chat_template([message], tokenize=False)
    header = "<|im_start|>assistant\n"
    assert text.startswith(header)
    return text[len(header):].rstrip()


def runs(ids: list[int], mask: list[int], value: int) -> list[list[int]]:
    """The maximal runs of `ids` whose mask is `value`."""
    out, current = [], []
    for token, m in zip(ids, mask):
        if m == value:
            current.append(token)
        elif current:
            out.append(current)
            current = []
    return out + ([current] if current else [])


@pytest.mark.parametrize("tools", [None, TOOLS])
def test_mask_is_exactly_the_assistant_turns(tokenizer, tools):
    ids, mask = tokens_and_loss_mask(tokenizer, CONVERSATION, tools)
    assert len(ids) == len(mask)
    trained = [tokenizer.decode(run) for run in runs(ids, mask, 1)]
    expected = [turn_alone(tokenizer, m) for m in CONVERSATION if m["role"] == "assistant"]
    assert trained == expected
    assert trained[0] == "5<|im_end|>" and "<tool_call>" in trained[1] and trained[2].startswith("<think>")
    # the tokens are the whole conversation as the template renders it, nothing added or lost
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(CONVERSATION, tools=tools, tokenize=False)
    untrained = "".join(tokenizer.decode(run) for run in runs(ids, mask, 0))
    for message in CONVERSATION:
        if message["role"] in ("system", "user", "tool"):
            assert message["content"] in untrained
    assert "<|im_start|>assistant\n" in untrained and "<tool_response>" in untrained


def test_trained_ids_are_what_the_model_generates_after_the_prompt(tokenizer):
    """Each assistant turn's ids follow the generation prompt's own tokenization, as in a rollout."""
    ids, mask = tokens_and_loss_mask(tokenizer, CONVERSATION[:3])
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[: len(prompt_ids)] == prompt_ids and mask[: len(prompt_ids)] == [0] * len(prompt_ids)
    answer = ids[len(prompt_ids):][: sum(mask)]
    assert answer == tokenizer.encode("5", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_step_loss_mask_zero_excludes_a_turn(tokenizer):
    messages = [dict(m) for m in CONVERSATION]
    messages[2]["step_loss_mask"] = 0
    ids, mask = tokens_and_loss_mask(tokenizer, messages)
    trained = [tokenizer.decode(run) for run in runs(ids, mask, 1)]
    assert len(trained) == 2 and "<tool_call>" in trained[0]
    assert tokens_and_loss_mask(tokenizer, CONVERSATION)[0] == ids  # same tokens, only the mask differs


def test_no_assistant_turn_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="no assistant turn to train on"):
        tokens_and_loss_mask(tokenizer, CONVERSATION[:2], where=7)


def test_a_template_that_rewrites_earlier_turns_is_an_error(tokenizer):
    """A Qwen3-style template that drops reasoning from turns before the last user query."""
    dropping = AutoTokenizer.from_pretrained(tiny_model_dir("qwen3"))
    dropping.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.reasoning_content and loop.last %}<think>{{ m.reasoning_content }}</think>{% endif %}"
        "{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="message 8: the chat template renders"):
        tokens_and_loss_mask(dropping, CONVERSATION, where=0)


def write_rows(path, count: int) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}],
         "tools": TOOLS if i % 2 else None}
        for i in range(count)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_generate_rollout_over_the_data_source(tmp_path, tokenizer):
    data = tmp_path / "chats.jsonl"
    write_rows(data, 5)
    args = parse_config([
        "--hf-checkpoint", str(tiny_model_dir("qwen3")), "--prompt-data", str(data), "--input-key", "messages",
        "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--loss-type", "sft_loss",
        "--debug-train-only", "--rollout-batch-size", "2", "--global-batch-size", "2", "--num-rollout", "2",
    ])  # fmt: skip
    fn = load_plugin(args.rollout_function_path, flag="--rollout-function-path")
    assert fn is generate_rollout  # slime's path maps to temper's
    groups = fn(args, 0, build_data_source(args))
    assert [len(g) for g in groups] == [1, 1]
    for group in groups:
        sample = group[0]
        ids, mask = tokens_and_loss_mask(tokenizer, sample.prompt, sample.metadata.get("tools"))
        start = mask.index(1)
        assert sample.tokens == ids and sample.loss_mask == mask[start:]
        assert sample.response_length == len(ids) - start == len(sample.loss_mask)
        assert sample.response == tokenizer.decode(ids[start:])
        assert sample.status is Sample.Status.COMPLETED and sample.reward == 0.0
    assert "<tools>" in tokenizer.decode(groups[1][0].tokens)  # row 1 carries tools
    with pytest.raises(ValueError, match="no evaluation"):
        fn(args, 0, build_data_source(args), evaluation=True)


def test_text_prompts_are_refused(tokenizer):
    class Source:
        def get_samples(self, n):
            return [[Sample(index=0, prompt="<|im_start|>user\nhi<|im_end|>\n")]]

    class Args:
        hf_checkpoint = str(tiny_model_dir("qwen3"))
        rollout_batch_size = 1

    with pytest.raises(ValueError, match="needs a list of messages"):
        generate_rollout(Args(), 0, Source())


def test_train_only_runs_need_a_rollout_function_without_engines():
    from temper.config import ConfigError

    base = ["--rollout-batch-size", "2", "--num-rollout", "1", "--debug-train-only"]
    for default in ([], ["--rollout-function-path", "temper.rollout.rollout.generate_rollout"]):
        with pytest.raises(ConfigError, match="starts no engines"):
            parse_config([*base, *default])
    cfg = parse_config([*base, "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout"])
    assert cfg.debug_train_only


def test_slimes_loss_mask_type_is_accepted_and_changes_nothing(tmp_path, tokenizer):
    data = tmp_path / "chats.jsonl"
    write_rows(data, 2)
    masks = []
    for family in ("qwen", "qwen3_5", "distill_qwen"):
        args = parse_config([
            "--hf-checkpoint", str(tiny_model_dir("qwen3")), "--prompt-data", str(data), "--input-key", "messages",
            "--rollout-function-path", "slime.rollout.sft_rollout.generate_rollout", "--loss-mask-type", family,
            "--debug-train-only", "--rollout-batch-size", "2", "--num-rollout", "1",
        ])  # fmt: skip
        masks.append([s.loss_mask for g in generate_rollout(args, 0, build_data_source(args)) for s in g])
    assert masks[0] == masks[1] == masks[2]
