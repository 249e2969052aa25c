"""ReTool's rollout: math with a Python tool run in temper's sandbox, as a custom generate function.

    --custom-generate-function-path examples/retool/generate_with_retool.py:generate
    --custom-rm-path examples/retool/generate_with_retool.py:reward    --max-turns 4

`generate(args, sample, sampling_params)` has slime's signature. The prompt is the chat template with
the row's tools (the ``code_interpreter`` schema, `--tool-key tools`), so the model is told to call
it as ``<tool_call>{"name": "code_interpreter", "arguments": {"code": "..."}}</tool_call>``
(``<code>...</code>`` is accepted too, as in slime's example). Each turn stops at ``</tool_call>`` or
``</code>``; the code runs in `temper.rollout.sandbox` (fresh interpreter, no network, CPU / memory /
wall-clock limits, see its docstring) and what it printed, with a last ``[error] message`` line when it
failed, comes back inside the same assistant turn as ``<interpreter>…</interpreter>`` with loss mask 0.
``Answer: \\boxed{…}``, a turn without a tool call, the token budget, an abort or `--max-turns`
(default 4) ends the rollout. Each model turn gets `max_new_tokens` of its own.

Reward: `--rm-type math`'s grading (the last ``\\boxed{}`` against the label) on the policy's own text,
with the interpreter's output removed first, so that a program printing ``\\boxed{...}`` earns nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from temper.rollout.generate import append_output, get_state, prompt_token_ids, routing_key
from temper.rollout.rewards.math_utils import grade_boxed
from temper.rollout.sandbox import run_python_async
from temper.types import Sample

MAX_TURNS = 4
STOP = ["</tool_call>", "</code>"]
SANDBOX_LIMITS = {"timeout_s": 10.0, "cpu_s": 10, "memory_mb": 512, "max_output_bytes": 4_000}
DONE = (Sample.Status.ABORTED, Sample.Status.TRUNCATED)
INTERPRETER = re.compile(r"<interpreter>.*?</interpreter>", re.S)


def parse_code(text: str) -> str | None:
    """The code of the turn's code_interpreter call (``<tool_call>`` JSON or ``<code>``), or None."""
    call = re.search(r"<tool_call>\s*(\{.*\})\s*</tool_call>", text, re.S)
    if call:
        try:
            data = json.loads(call[1], strict=False)  # strict=False: raw newlines inside the code string
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        arguments = data.get("arguments")
        if data.get("name") == "code_interpreter" and isinstance(arguments, dict):
            code = arguments.get("code")
            return code if isinstance(code, str) and code.strip() else None
        return None
    block = re.search(r"<code>(.*?)</code>", text, re.S)
    return (block[1].strip() or None) if block else None


def has_answer(text: str) -> bool:
    return re.search(r"Answer:\s*\\boxed\{", text) is not None


async def run_tool(code: str | None) -> str:
    """The observation for a turn's code: the sandbox's output in ``<interpreter>`` tags."""
    if code is None:
        result = "[error] no code_interpreter call found: call it as <tool_call>{\"name\": \"code_interpreter\", " \
                 "\"arguments\": {\"code\": \"...\"}}</tool_call>"  # fmt: skip
    else:
        result = (await run_python_async(code, **SANDBOX_LIMITS)).tool_text().rstrip("\n") or "(no output)"
    return f"\n\n<interpreter>\n{result}\n</interpreter>\n\n"


async def generate(args: Any, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    """Up to --max-turns model turns, each tool call answered by the sandbox (see the module docstring)."""
    state = await get_state(args)
    client = state.require_client()
    if not sample.tokens:
        sample.tokens = prompt_token_ids(state, sample)
    stop = sampling_params.get("stop") or []
    params = {**sampling_params, "stop": list(dict.fromkeys([*([stop] if isinstance(stop, str) else stop), *STOP]))}
    turns = getattr(args, "max_turns", None) or MAX_TURNS
    calls = 0
    for turn in range(turns):
        payload = {"input_ids": sample.tokens, "sampling_params": params, "return_logprob": True}
        output = await client.generate(payload, routing_key=routing_key(sample))
        append_output(sample, output)
        text = output.get("text", "")
        called = any(text.rstrip().endswith(tag) for tag in STOP)
        if sample.status in DONE or has_answer(text) or not called or turn == turns - 1:
            break
        observation = await run_tool(parse_code(text))
        calls += 1
        ids = state.tokenizer(observation, add_special_tokens=False)["input_ids"]
        sample.append_response_tokens(ids, trainable=False, text=observation)
    sample.metadata = {**sample.metadata, "tool_calls": calls}
    return sample


async def reward(args: Any, sample: Sample) -> float:
    """1.0 when the last ``\\boxed{}`` of the policy's text (interpreter output removed) equals the label."""
    return grade_boxed(INTERPRETER.sub("", sample.response), sample.label)
