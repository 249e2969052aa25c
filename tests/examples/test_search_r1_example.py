"""examples/search-r1: the data and the BM25 retriever find the facts a question needs; the custom
generate function runs search turns against a scripted engine with exactly the observation tokens
masked; the rewards; and the README's CPU command trains 2 steps on the tiny model."""

import asyncio
import json

import pytest
import torch
from example_helpers import EXAMPLES, ROOT, load_example, readme_train_commands, run_scripted, substituted

from temper.command_line import parse_config
from temper.quickstart import load_driver
from temper.testing import build_tiny_model, tiny_model_dir
from temper.types import Sample

README = EXAMPLES / "search-r1" / "README.md"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("search-r1")
    load_example("search-r1/make_search_data.py").main(["--out-dir", str(out), "--test-size", "8"])
    return out


@pytest.fixture
def search_r1(data, monkeypatch):
    monkeypatch.setenv("SEARCH_R1_CORPUS", str(data / "corpus.jsonl"))
    return load_example("search-r1/generate_with_search.py")


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_retriever_finds_the_documents_of_each_fact(data):
    retriever = load_example("search-r1/retriever.py")
    bm25 = retriever.load_retriever(str(data / "corpus.jsonl"))
    one_hop = [r for r in rows(data / "train.jsonl") + rows(data / "test.jsonl") if r["metadata"]["hops"] == 1]
    assert len(one_hop) > 30
    for row in one_hop:
        top = bm25.search(row["question"], topk=3)
        assert any(row["label"] in doc["contents"] for doc in top), row["question"]
    assert bm25.search("zzzz qqqq") == [] and retriever.passages_text([]) == "No results."


def test_two_hop_questions_need_two_searches(data):
    retriever = load_example("search-r1/retriever.py")
    bm25 = retriever.load_retriever(str(data / "corpus.jsonl"))
    two_hop = [r for r in rows(data / "train.jsonl") if r["metadata"]["hops"] == 2]
    assert two_hop
    for row in two_hop:
        company = row["question"].removeprefix("In which city was the founder of ").removesuffix(" born?")
        company_doc = bm25.search(company, topk=1)[0]["contents"]
        founder = company_doc.split("founded by ")[1].split(".")[0]
        assert row["label"] in bm25.search(f"{founder} born", topk=1)[0]["contents"]


def run_generate(module, monkeypatch, texts, *flags, finish="stop", label=None):
    prompt = [{"role": "user", "content": "Where was X born?"}]
    return run_scripted(module, monkeypatch, texts, *flags, finish=finish, label=label, prompt=prompt)


def test_search_turns_are_masked_and_answered(data, search_r1, monkeypatch):
    row = next(r for r in rows(data / "train.jsonl") if r["metadata"]["hops"] == 2)
    company = row["question"].removeprefix("In which city was the founder of ").removesuffix(" born?")
    turns = [f"<think>who founded it</think><search> {company} </search>", "<search> born inventor </search>",
             f"<answer> {row['label']} </answer>"]  # fmt: skip
    sample, engine, tokenizer = run_generate(search_r1, monkeypatch, turns, "--max-turns", "3", label=row["label"])
    assert sample.status is Sample.Status.COMPLETED and sample.metadata["searches"] == [company, "born inventor"]
    assert len(engine.payloads) == 3
    assert all(set(search_r1.STOP) | {"<|im_end|>"} <= set(p["sampling_params"]["stop"]) for p in engine.payloads)
    # every turn continues from the sample's ids so far; the policy's ids are trained, the documents are not
    prompt_len = len(engine.payloads[0]["input_ids"])
    trained = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
    response = sample.tokens[prompt_len:]
    assert sample.response_length == len(response) == len(sample.loss_mask) == len(sample.rollout_log_probs)
    position, observations = 0, []
    for k, ids in enumerate(trained):
        assert engine.payloads[k]["input_ids"] == sample.tokens[: prompt_len + position]
        assert response[position : position + len(ids)] == ids
        assert set(sample.loss_mask[position : position + len(ids)]) == {1}
        position += len(ids)
        if k < 2:
            end = len(engine.payloads[k + 1]["input_ids"]) - prompt_len
            assert set(sample.loss_mask[position:end]) == {0} and set(sample.rollout_log_probs[position:end]) == {0.0}
            observations.append(tokenizer.decode(response[position:end]))
            position = end
    assert position == len(response)
    assert observations[0].startswith("\n\n<information>Doc 1(Title: ") and company in observations[0]
    assert sample.response.count("<information>") == 2 and sample.weight_versions == ["3"] * 3
    assert asyncio.run(search_r1.reward_em(None, sample)) == asyncio.run(search_r1.reward_f1(None, sample)) == 1.0


def test_invalid_turns_the_turn_limit_and_truncation(search_r1, monkeypatch):
    sample, engine, _ = run_generate(search_r1, monkeypatch, ["no tags here", "still none"], "--max-turns", "2")
    assert len(engine.payloads) == 2 and sample.response.count("My previous action is invalid") == 1
    assert sample.metadata["searches"] == [] and asyncio.run(search_r1.reward_em(None, sample)) == 0.0
    sample, engine, _ = run_generate(search_r1, monkeypatch, ["<search> x", "unused"], finish="length")
    assert len(engine.payloads) == 1 and sample.status is Sample.Status.TRUNCATED


def test_rewards(search_r1):
    def sample(response, label):
        return Sample(index=0, response=response, label=label)

    em, f1 = search_r1.reward_em, search_r1.reward_f1
    assert asyncio.run(em(None, sample("<answer> x </answer> <answer>The Brentmoor.</answer>", "brentmoor"))) == 1.0
    assert asyncio.run(em(None, sample("<answer>New Brentmoor</answer>", ["Old Town", "brentmoor"]))) == 0.0
    best = asyncio.run(f1(None, sample("<answer>New Brentmoor</answer>", ["Old Town", "brentmoor"])))
    assert best == pytest.approx(2 / 3)
    assert asyncio.run(em(None, sample("Brentmoor", "Brentmoor"))) == 0.0  # no answer tag


def test_readme_gpu_command_parses():
    gpu, _ = readme_train_commands(README)
    cfg = parse_config(substituted(gpu, {"/path/to/Qwen2.5-3B-Instruct": tiny_model_dir("qwen3")}))
    assert cfg.max_turns == 3 and cfg.custom_generate_function_path.endswith("generate_with_search.py:generate")


@pytest.mark.slow
@pytest.mark.usefixtures("plots_unrasterized")
def test_readme_cpu_command_trains_two_steps(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_R1_CORPUS", str(data / "corpus.jsonl"))
    _, cpu = readme_train_commands(README)
    build_tiny_model(tmp_path / "model", "qwen3", seed=0)
    paths = {"tiny-model": tmp_path / "model", "data/search-r1": data, "runs/search-r1-tiny": tmp_path / "run",
             "examples": ROOT / "examples"}  # fmt: skip
    saved = str(tmp_path / "rollouts" / "{rollout_id}.pt")
    steps = load_driver("train").main([*substituted(cpu, paths), "--save-debug-rollout-data", saved])
    assert [s["step"] for s in steps] == [0, 1] and "eval/search" in steps[-1]
    for step in (0, 1):
        samples = torch.load(tmp_path / "rollouts" / f"{step}.pt", weights_only=False)["samples"]
        assert len(samples) == 8 and all(s["reward"] in (0.0, 1.0) and "searches" in s["metadata"] for s in samples)
