"""The default generate function and its state, against a fake engine on 127.0.0.1."""

from __future__ import annotations

import pytest
from rollout_helpers import fake_engine_app, make_args, serve, tiny_dir

from temper.rollout import generate as gen
from temper.rollout.async_loop import run
from temper.types import Sample


def with_router(args, url: str):
    args.sglang_router_ip, args.sglang_router_port = url.removeprefix("http://").split(":")
    args.sglang_router_port = int(args.sglang_router_port)
    return args


def test_sampling_params_from_flags_and_eval_overrides():
    args = make_args(
        "--rollout-temperature", "0.7", "--rollout-top-p", "0.9", "--rollout-top-k", "20",
        "--rollout-max-response-len", "64", "--rollout-stop", "</answer>", "--rollout-stop-token-ids", "5", "6",
        "--eval-temperature", "0.1", "--eval-max-response-len", "8",
    )  # fmt: skip
    params = gen.default_sampling_params(args)
    assert params == {
        "temperature": 0.7, "top_p": 0.9, "top_k": 20, "max_new_tokens": 64, "stop": ["</answer>"],
        "stop_token_ids": [5, 6], "skip_special_tokens": False, "no_stop_trim": True,
    }  # fmt: skip
    evaluation = gen.default_sampling_params(args, evaluation=True)
    assert (evaluation["temperature"], evaluation["top_p"], evaluation["max_new_tokens"]) == (0.1, 0.9, 8)
    assert gen.default_sampling_params(make_args())["max_new_tokens"] is None


def test_sampling_seeds_are_deterministic_and_distinct():
    seeds = {gen.sampling_seed(42, g, i) for g in range(50) for i in range(8)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert gen.sampling_seed(42, 3, 1) == gen.sampling_seed(42, 3, 1) != gen.sampling_seed(43, 3, 1)
    assert gen.sampling_seed(42, 3, 1) != gen.sampling_seed(42, 3, 1, salt="eval/aime")


def test_append_output_reads_the_sglang_response():
    sample = Sample(tokens=[1, 2, 3])
    output = {
        "text": "ab", "output_ids": [10, 11],
        "meta_info": {"finish_reason": {"type": "stop", "matched": 11}, "cached_tokens": 2, "weight_version": "v3",
                      "output_token_logprobs": [[-0.1, 10, None], [-0.2, 11, None]]},
    }  # fmt: skip
    gen.append_output(sample, output)
    assert sample.tokens == [1, 2, 3, 10, 11] and sample.response == "ab" and sample.response_length == 2
    assert sample.rollout_log_probs == [-0.1, -0.2] and sample.status == Sample.Status.COMPLETED
    assert sample.weight_versions == ["v3"] and sample.cached_tokens == 2
    gen.append_output(sample, {"text": "c", "output_ids": [12], "meta_info": {"finish_reason": {"type": "length"}}})
    assert sample.rollout_log_probs == [-0.1, -0.2, 0.0] and sample.status == Sample.Status.TRUNCATED
    with pytest.raises(ValueError, match="2 output ids but 1 log-probs"):
        gen.append_output(Sample(), {"output_ids": [1, 2], "meta_info": {"output_token_logprobs": [[0.0, 1, None]]}})


def test_generate_posts_prompt_ids_and_group_routing_key():
    app = fake_engine_app("engine")
    with serve(app) as url:
        args = with_router(make_args("--hf-checkpoint", str(tiny_dir()), "--rollout-max-response-len", "16"), url)
        sample = Sample(prompt=[{"role": "user", "content": "hi"}], group_index=5, index=21)
        out = run(gen.generate(args, sample, gen.default_sampling_params(args)), timeout=60)
    assert out is sample and sample.status == Sample.Status.TRUNCATED
    _, body, headers = app.state.calls[-1]
    prompt_ids = body["input_ids"]
    assert sample.tokens == prompt_ids + [7, 8, 9] and sample.prompt_length == len(prompt_ids)
    state = run(gen.get_state(args))
    rendered = state.tokenizer.apply_chat_template(sample.prompt, tokenize=False, add_generation_prompt=True)
    assert state.tokenizer.decode(prompt_ids) == rendered
    assert body["return_logprob"] is True and body["sampling_params"]["max_new_tokens"] == 16
    assert headers["x-routing-key"] == "group-5"


def test_prompt_ids_are_rendered_once_per_prompt_and_never_shared():
    """A group's samples share their prompt: the chat template and tokenizer run once for it, each
    sample gets its own list, and prompts that differ (text, tools) get their own ids."""
    args = make_args("--hf-checkpoint", str(tiny_dir()))
    state = gen.GenerateState(args, None, 1, [])
    calls = []
    render = state.tokenizer.apply_chat_template
    state.tokenizer.apply_chat_template = lambda *a, **k: calls.append(a) or render(*a, **k)
    try:
        group = [Sample(prompt=[{"role": "user", "content": "what is 2 + 2?"}], group_index=0, index=i) for i in range(4)]
        ids = [gen.prompt_token_ids(state, s) for s in group]
        tools = Sample(prompt=group[0].prompt, metadata={"tools": [{"type": "function", "function": {"name": "f"}}]})
        other = gen.prompt_token_ids(state, Sample(prompt=[{"role": "user", "content": "what is 3 + 3?"}]))
        with_tools = gen.prompt_token_ids(state, tools)
    finally:
        state.tokenizer.apply_chat_template = render
    assert len(calls) == 3  # the group's prompt once, the other prompt, the prompt with tools
    assert ids[0] == ids[3] and ids[0] is not ids[3]
    ids[0].append(99)
    assert ids[1][-1] != 99 and other != ids[1] and with_tools != ids[1]
    assert gen.prompt_token_ids(state, Sample(prompt="plain text")) == state.tokenizer("plain text", add_special_tokens=False)["input_ids"]


def test_generate_continues_a_partial_sample():
    app = fake_engine_app("engine")
    with serve(app) as url:
        args = with_router(make_args("--hf-checkpoint", str(tiny_dir()), "--mask-offpolicy-in-partial-rollout"), url)
        sample = Sample(prompt="ignored once tokens exist", tokens=[1, 2, 3], session_id="chat-9")
        sample.append_response_tokens([4, 5], [-1.0, -1.0], finish_reason="abort")
        run(gen.generate(args, sample, {"max_new_tokens": 10}), timeout=60)
        _, body, headers = app.state.calls[-1]
        assert body["input_ids"] == [1, 2, 3, 4, 5] and body["sampling_params"]["max_new_tokens"] == 8
        assert headers["x-routing-key"] == "chat-9"
        assert sample.response_length == 5 and sample.loss_mask == [0, 0, 1, 1, 1]
        assert sample.status == Sample.Status.TRUNCATED
        calls = len(app.state.calls)
        done = Sample(tokens=[1], response_length=0)
        done.append_response_tokens([2, 3], [0.0, 0.0], finish_reason="abort")
        run(gen.generate(args, done, {"max_new_tokens": 2}), timeout=60)  # budget used up: no request
        assert done.status == Sample.Status.TRUNCATED and len(app.state.calls) == calls


def test_generate_without_router_says_how_to_set_one():
    args = make_args("--hf-checkpoint", str(tiny_dir()))
    with pytest.raises(RuntimeError, match="no router to send generate requests to"):
        run(gen.generate(args, Sample(prompt="x"), {}), timeout=60)


def test_state_counts_engines_behind_the_router():
    apps = [fake_engine_app("a"), fake_engine_app("b")]
    from temper.rollout.router import start_router

    with serve(apps[0]) as a, serve(apps[1]) as b, start_router([a, b]) as router:
        args = with_router(make_args("--sglang-server-concurrency", "3"), router.url)
        state = run(gen.get_state(args))
        assert state.engine_urls == [a, b] and state.concurrency == 6
        assert run(gen.get_state(args)) is state
        run(state.abort_engines())
    assert all(app.state.calls[-1][:2] == ("/abort_request", {"abort_all": True}) for app in apps)
