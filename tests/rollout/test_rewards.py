"""Built-in rewards on hand-written cases, the dispatch rules, and custom/group/remote reward plug-ins."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from rollout_helpers import make_args, serve, write_plugin

from temper.rollout.async_loop import run
from temper.rollout.rewards import RM_TYPES, async_rm, batched_async_rm, remote
from temper.rollout.rewards.dapo import compute_score
from temper.rollout.rewards.f1 import f1_reward
from temper.rollout.rewards.gpqa import extract_letter, gpqa_reward
from temper.rollout.rewards.math_utils import grade_deepscaler, grade_math, last_boxed, normalize_answer
from temper.types import Sample


@pytest.mark.parametrize(
    "response, label",
    [
        (r"so the answer is \boxed{\frac{1}{2}}.", "0.5"),
        (r"\boxed{\dfrac{3}{4}}", "3/4"),
        (r"\boxed{0.75}", r"\frac34"),
        (r"\boxed{\sqrt{2}/2}", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{10\%}", "10"),
        (r"\boxed{5 \text{ apples}}", "5"),
        (r"\boxed{\{1,2\}}", r"\boxed{\{2,1\}}"),
        (r"first \boxed{3}, finally \boxed{7}", "7"),
        (r"\boxed{2x+1}", "1+2x"),
    ],
)
def test_math_accepts_equivalent_answers(response, label):
    assert grade_math(response, label) == 1.0


@pytest.mark.parametrize(
    "response, label",
    [
        (r"\boxed{2}", "3"),
        ("the answer is 7", "7"),
        (r"\boxed{7} then \boxed{8}", "7"),
        (r"\boxed{\frac{1}{3}}", "0.33"),
    ],
)
def test_math_rejects_wrong_or_missing_answers(response, label):
    assert grade_math(response, label) == 0.0


def test_boxed_extraction_and_normalization():
    assert last_boxed(r"a \boxed{\frac{a}{b}} b") == r"\frac{a}{b}"
    assert last_boxed(r"\fbox{4}") == "4"
    assert last_boxed(r"\boxed 9$") == "9"
    assert last_boxed(r"\boxed{unclosed") is None
    assert normalize_answer(r"\left( 1, 2 \right)") == "(1,2)"
    assert normalize_answer("1/2") == normalize_answer(r"\dfrac{1}{2}") == r"\frac{1}{2}"


def test_deepscaler_reads_only_after_think():
    assert grade_deepscaler(r"<think>\boxed{3}</think> so \boxed{4}", "4") == 1.0
    assert grade_deepscaler(r"<think>\boxed{4}</think> so \boxed{3}", "4") == 0.0
    assert grade_deepscaler(r"\boxed{4}", "4") == 0.0  # no reasoning delimiter
    assert grade_deepscaler(r"###Response \boxed{4}", ["5", "4"]) == 1.0


def test_dapo():
    assert compute_score("work...\nAnswer: 1,000 dollars", "1000") == {"score": 1.0, "acc": True, "pred": "1000"}
    assert compute_score(r"Answer: $\frac{1}{2}$", r"\boxed{\frac{1}{2}}")["acc"] is True
    assert compute_score("Answer: 42.0", "42")["acc"] is True
    assert compute_score("Answer: 41", "42") == {"score": -1.0, "acc": False, "pred": "41"}
    assert compute_score("no final line", "3")["pred"] == "[INVALID]"
    assert compute_score("Answer: 5\n" + "x" * 400, "5")["acc"] is False  # only the last 300 chars count


def test_f1():
    assert f1_reward("The Eiffel Tower!", "eiffel tower") == 1.0
    assert f1_reward("paris france", ["Lyon", "Paris"]) == pytest.approx(2 / 3)
    assert f1_reward("yes", "no") == 0.0 and f1_reward("Yes.", "yes") == 1.0
    assert f1_reward("nothing shared", "other words") == 0.0


def test_gpqa():
    choices = {"choices": ["shark", "blue whale", "cat", "dog"]}
    assert gpqa_reward("I think the answer is (B).", "B", {}) == 1.0
    assert gpqa_reward("<think>maybe A</think> Final answer: C", 2, choices) == 1.0
    assert gpqa_reward("It must be the blue whale", "blue whale", choices) == 1.0
    assert gpqa_reward(r"\boxed{D}", "ignored", {"correct_letter": "D"}) == 1.0
    assert gpqa_reward("The answer is A", "B", {}) == 0.0
    assert gpqa_reward("no idea", "B", {}) == 0.0
    assert extract_letter("(C) is correct") == "C"
    assert extract_letter("I pick option D. Not E.", valid="ABCD") == "D"


def rm(args, sample):
    return run(async_rm(args, sample), timeout=60)


def test_dispatch_boxed_prefix_and_per_sample_override():
    args = make_args("--rm-type", "boxed_f1")
    sample = Sample(response=r"blah \boxed{Eiffel Tower} blah", label="eiffel tower")
    assert rm(args, sample) == 1.0
    sample.metadata["rm_type"] = "math"
    assert rm(args, Sample(response=r"\boxed{0.5}", label="1/2", metadata={"rm_type": "math"})) == 1.0
    dapo = rm(make_args("--rm-type", "dapo"), Sample(response="Answer: 3", label="3"))
    assert dapo["score"] == 1.0
    assert rm(make_args("--rm-type", "random"), Sample()) in (0.0, 1.0)


def test_unknown_or_missing_rm_type_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"unknown --rm-type 'maths'.*valid: math, deepscaler, dapo, f1, gpqa, remote_rm, random"
    ):
        rm(make_args("--rm-type", "maths"), Sample(index=3))
    with pytest.raises(ValueError, match="no reward function for sample 3: set --rm-type"):
        rm(make_args(), Sample(index=3))
    assert set(RM_TYPES) == {"math", "deepscaler", "dapo", "f1", "gpqa", "remote_rm", "random"}


def test_custom_rm_from_file_sync_and_async(tmp_path):
    path = write_plugin(
        tmp_path,
        "my_rm",
        """
        async def rm(args, sample, **kwargs):
            return {"score": float(len(sample.response)), "label": sample.label}

        def plain(args, sample):
            return 0.25
        """,
    )
    sample = Sample(response="abcd", label="x", metadata={"rm_type": "math"})
    assert rm(make_args("--custom-rm-path", f"{path}:rm", "--rm-type", "f1"), sample) == {"score": 4.0, "label": "x"}
    assert rm(make_args("--custom-rm-path", f"{path}:plain"), sample) == 0.25
    sample.metadata["custom_rm_path"] = f"{path}:plain"  # per-sample path wins over the flag
    assert rm(make_args("--custom-rm-path", f"{path}:rm"), sample) == 0.25


def test_group_rm_from_file(tmp_path):
    path = write_plugin(
        tmp_path,
        "group_rm",
        """
        async def rm(args, samples):
            best = max(len(s.response) for s in samples)
            return [float(len(s.response) == best) for s in samples]

        def wrong_length(args, samples):
            return [1.0]
        """,
    )
    samples = [Sample(response="a"), Sample(response="abc"), Sample(response="ab")]
    args = make_args("--custom-rm-path", f"{path}:rm", "--group-rm")
    assert run(batched_async_rm(args, samples), timeout=60) == [0.0, 1.0, 0.0]
    args = make_args("--custom-rm-path", f"{path}:wrong_length", "--group-rm")
    with pytest.raises(ValueError, match="returned 1 rewards for a group of 3 samples"):
        run(batched_async_rm(args, samples), timeout=60)
    per_sample = make_args("--rm-type", "f1")
    assert run(batched_async_rm(per_sample, [Sample(response="x", label="x")] * 2), timeout=60) == [1.0, 1.0]


def test_class_reward_model_contract(tmp_path):
    path = write_plugin(
        tmp_path,
        "class_rm",
        """
        class Good:
            def __init__(self, model_path):
                self.model_path = model_path

            async def compute_reward(self, prompts, responses):
                return [len(r) for r in responses]

        class Short:
            def __init__(self, model_path):
                pass

            def compute_reward(self, prompts, responses):
                return [1.0]

        class NoMethod:
            def __init__(self, model_path):
                pass
        """,
    )
    samples = [Sample(prompt="p", response="ab"), Sample(prompt="p", response="abc")]
    args = make_args("--custom-rm-path", f"{path}:Good", "--group-rm")
    assert run(batched_async_rm(args, samples), timeout=60) == [2.0, 3.0]
    assert rm(make_args("--custom-rm-path", f"{path}:Good"), samples[0]) == 2.0  # one sample through async_rm
    with pytest.raises(ValueError, match="Short.compute_reward returned 1 rewards for 2 responses"):
        run(batched_async_rm(make_args("--custom-rm-path", f"{path}:Short"), samples), timeout=60)
    with pytest.raises(TypeError, match="class NoMethod needs a method compute_reward"):
        rm(make_args("--custom-rm-path", f"{path}:NoMethod"), samples[0])


def test_remote_rm_retries_server_errors(monkeypatch):
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    app = FastAPI()
    seen = []

    @app.post("/score")
    async def score(request: Request):
        seen.append(await request.json())
        if len(seen) < 3:
            return JSONResponse({"error": "warming up"}, 503)
        return {"score": 0.5}

    @app.post("/bad")
    async def bad():
        return JSONResponse({"error": "bad label"}, 422)

    with serve(app) as url:
        sample = Sample(prompt="p", response="r", label="l")
        assert rm(make_args("--rm-type", "remote_rm", "--rm-url", f"{url}/score"), sample) == {"score": 0.5}
        assert len(seen) == 3 and seen[-1] == {"prompt": "p", "response": "r", "label": "l"}
        with pytest.raises(RuntimeError, match="HTTP 422: .*bad label"):
            rm(make_args("--rm-type", "remote_rm", "--rm-url", f"{url}/bad"), sample)
    with pytest.raises(ValueError, match="needs --rm-url"):
        rm(make_args("--rm-type", "remote_rm"), sample)
