"""The ChatML chat template, rendered through transformers' apply_chat_template."""

import json

import jinja2
import pytest

from temper.testing.tokenizer import build_tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": '{"temp": 25}'},
    {"role": "assistant", "content": "21 and 25.", "reasoning_content": "Both answered."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def test_plain_conversation_exact(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "2+2?"}]
    text = render(tokenizer, messages, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_no_default_system_prompt(tokenizer):
    text = render(tokenizer, [{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"


def test_tools_render_as_json_in_system_turn(tokenizer):
    text = render(tokenizer, TOOL_CONVERSATION[:2], tools=[WEATHER_TOOL], add_generation_prompt=True)
    system_turn = text.split("<|im_end|>")[0]
    assert system_turn.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    tools_block = system_turn.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(tools_block) == WEATHER_TOOL
    assert text.count("<|im_start|>system") == 1
    assert text.endswith("<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n<|im_start|>assistant\n")


def test_tool_calls_and_responses(tokenizer):
    text = render(tokenizer, TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    calls = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    assert calls == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    # Consecutive tool messages share one user turn.
    assert (
        '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n'
        '<tool_response>\n{"temp": 25}\n</tool_response><|im_end|>\n'
    ) in text
    assert text.endswith("<|im_start|>assistant\n<think>\nBoth answered.\n</think>\n\n21 and 25.<|im_end|>\n")


def test_flat_tool_call_and_none_content(tokenizer):
    messages = [
        {"role": "user", "content": "calc"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "calc", "arguments": {"x": 1}}]},
    ]
    text = render(tokenizer, messages)
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "calc", "arguments": {"x": 1}}\n</tool_call><|im_end|>' in text


def test_text_parts_content(tokenizer):
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert render(tokenizer, messages) == "<|im_start|>user\nab<|im_end|>\n"


def test_generation_prompt_and_thinking_switch(tokenizer):
    messages = [{"role": "user", "content": "q"}]
    assert render(tokenizer, messages, add_generation_prompt=False).endswith("<|im_end|>\n")
    assert render(tokenizer, messages, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    no_think = render(tokenizer, messages, add_generation_prompt=True, enable_thinking=False)
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_each_turn_extends_the_previous_render(tokenizer):
    # Multi-turn rollouts append to the token prefix, so a render must be a prefix of its continuation.
    full = render(tokenizer, TOOL_CONVERSATION, tools=[WEATHER_TOOL])
    for k in range(1, len(TOOL_CONVERSATION)):
        if TOOL_CONVERSATION[k - 1]["role"] == TOOL_CONVERSATION[k]["role"] == "tool":
            continue  # consecutive tool responses share one turn, as in Qwen's template
        shorter = render(tokenizer, TOOL_CONVERSATION[:k], tools=[WEATHER_TOOL])
        assert full.startswith(shorter), k


def test_markers_tokenize_to_single_ids(tokenizer):
    ids = tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=[WEATHER_TOOL], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    for marker in ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</tool_response>"]:
        assert tokenizer.convert_tokens_to_ids(marker) in ids, marker


def test_unknown_role_is_an_error(tokenizer):
    with pytest.raises(jinja2.TemplateError, match="unknown chat role"):
        render(tokenizer, [{"role": "narrator", "content": "x"}])
