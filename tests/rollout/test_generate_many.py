"""The default generate function's batched form (`generate_many`) against a real engine server, and the
semaphore's multi-slot acquisition (`GenerateState.slots`)."""

from __future__ import annotations

import asyncio
import copy

import pytest
from rollout_helpers import make_args, running_engine_servers, tiny_dir

from temper.rollout import generate as gen
from temper.rollout.async_loop import run
from temper.types import Sample


@pytest.fixture(scope="module")
def engine_url():
    with running_engine_servers(1) as urls:
        yield urls[0]


def _args(url: str):
    args = make_args("--hf-checkpoint", str(tiny_dir()), "--rollout-max-response-len", "6")
    args.sglang_router_ip, port = url.removeprefix("http://").split(":")
    args.sglang_router_port = int(port)
    return args


def test_a_group_goes_out_as_one_request_with_the_same_tokens_as_one_by_one(engine_url):
    """Four samples of a group and one of a session: two requests (one per routing key), each sample
    with its own sampling parameters; greedy tokens and log-probs equal those of one request per
    sample. A sample whose budget is spent is TRUNCATED without a request."""
    args = _args(engine_url)
    params = {"max_new_tokens": 6, "temperature": 0.0, "ignore_eos": True}
    group = [Sample(prompt=f"count to {i}", group_index=3, index=i) for i in range(4)]
    chat = Sample(prompt="hello there", session_id="chat-1", index=9)
    spent = Sample(tokens=[5, 6], index=10)
    spent.append_response_tokens([7, 8, 9, 10, 11, 12], [0.0] * 6, finish_reason="abort")
    samples = group + [chat, spent]
    one_by_one = copy.deepcopy(samples[:5])
    sampling = [dict(params, max_new_tokens=3 + i) for i in range(4)] + [params, params]

    state = run(gen.get_state(args), timeout=60)
    before = state.clock.requests
    out = run(gen.generate_many(args, samples, sampling), timeout=120)
    assert out is samples and state.clock.requests - before == 2 and state.clock.samples >= 5
    assert spent.status == Sample.Status.TRUNCATED and spent.response_length == 6
    assert [s.response_length for s in group] == [3, 4, 5, 6] and chat.response_length == 6

    for sample, p in zip(one_by_one, sampling):
        run(gen.generate(args, sample, p), timeout=120)
    for batched, single in zip(samples[:5], one_by_one):
        assert batched.tokens == single.tokens
        assert batched.rollout_log_probs == pytest.approx(single.rollout_log_probs, abs=1e-5)
        assert batched.status == single.status


def test_slots_take_turns_and_never_exceed_the_cap():
    """Groups asking for 3, 3 and 2 of 4 slots all get them, never more than 4 held at once; more slots
    than the cap is an error."""
    args = make_args("--sglang-server-concurrency", "4")
    held, peak = 0, 0

    async def group(state, count):
        nonlocal held, peak
        async with state.slots(count):
            held += count
            peak = max(peak, held)
            await asyncio.sleep(0.01)
            held -= count

    async def main():
        state = gen.GenerateState(args, None, 1, [])
        await asyncio.wait_for(asyncio.gather(*(group(state, c) for c in (3, 3, 2, 1, 4))), timeout=10)
        with pytest.raises(ValueError, match=r"count must be in \[1, 4\]"):
            async with state.slots(5):
                pass
        return state

    state = run(main(), timeout=30)
    assert peak <= 4 and held == 0
    assert state.semaphore._value == 4  # every slot given back
