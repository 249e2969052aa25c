"""Bad prompt files, eval files and --config files, met where a run meets them: the driver's checks before
Ray. Each message names the file (and line, field), says what was expected and what to do; a row that is
skipped or dropped is counted and logged, never lost without a word."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_input_helpers import BASE, driver_checks

GOOD = json.dumps({"input": "what is one plus one", "label": "2"})
SKIP = "or pass --skip-invalid-data to skip (and count) such rows"

# (files {name: content}, flags ({d}: the folder, {model}: the tiny checkpoint), parts of the message)
CASES = [
    pytest.param({}, ["--prompt-data", "{d}/nope.jsonl"],
                 ["nope.jsonl: prompt file not found; check --prompt-data"], id="data-missing-file"),
    pytest.param({}, ["--prompt-data", "{d}"],
                 ["is a directory, expected a .jsonl or .parquet file; point --prompt-data at a file"],
                 id="data-directory"),
    pytest.param({"p.csv": "input\nhi\n"}, ["--prompt-data", "{d}/p.csv"],
                 ["p.csv: unknown file extension '.csv', expected .jsonl or .parquet; convert the data"],
                 id="data-unknown-extension"),
    pytest.param({"p.jsonl": b""}, ["--prompt-data", "{d}/p.jsonl"],
                 ["p.jsonl: the file has no rows; fill it with prompts"], id="data-empty-file"),
    pytest.param({"p.jsonl": b"\n  \n\r\n"}, ["--prompt-data", "{d}/p.jsonl"],
                 ["p.jsonl: the file has no rows"], id="data-blank-lines-only"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "two",']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["p.jsonl line 2: malformed JSON at column 17", "fix the line", SKIP], id="data-malformed-json-line"),
    pytest.param({"p.jsonl": [GOOD, "[1, 2]"]}, ["--prompt-data", "{d}/p.jsonl"],
                 ["p.jsonl line 2: a JSON list, expected a JSON object ({...}) per line"], id="data-row-not-an-object"),
    pytest.param({"p.jsonl": [GOOD, '{"input": 5}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2, field 'input': got int 5; expected text or a list of {role, content} messages"],
                 id="data-prompt-wrong-type"),
    pytest.param({"p.jsonl": [GOOD, '{"question": "hi"}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2, field 'input': missing; keys present: ['question']; set --input-key"],
                 id="data-missing-input-key"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "hi"}']}, ["--prompt-data", "{d}/p.jsonl", "--label-key", "label"],
                 ["line 2, field 'label': missing label; keys present: ['input']; set --label-key"],
                 id="data-missing-label-key"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "   "}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2, field 'input': empty prompt; expected non-empty text"], id="data-empty-prompt"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "hi", "metadata": 5}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2, field 'metadata': got int 5; expected a JSON object (dict)"], id="data-metadata-wrong-type"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "hi", "tools": "{not json"}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2, field 'tools': a string that is not JSON", "expected a list of tool schemas"],
                 id="data-tools-not-json"),
    pytest.param({"p.jsonl": [GOOD, '{"input": [{"role": "user"}]}']},
                 ["--prompt-data", "{d}/p.jsonl", "--apply-chat-template"],
                 ["line 2, field 'input[0]': message without 'content'"], id="data-message-without-content"),
    pytest.param({"p.jsonl": [GOOD, '{"input": [{"role": "wizard", "content": "hi"}]}']},
                 ["--prompt-data", "{d}/p.jsonl", "--apply-chat-template"],
                 ["line 2, field 'input': the chat template failed on this row", "wizard",
                  "check the messages' roles and content"], id="data-unknown-chat-role"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "café"}'.encode("latin-1")]}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2: bytes that are not UTF-8 at byte 15", "re-encode the file as UTF-8 (e.g. iconv"],
                 id="data-latin1-bytes"),
    pytest.param({"p.jsonl": [GOOD, b'{"input": "a\x00b"}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2: malformed JSON at column 13 (Invalid control character)"], id="data-raw-control-byte"),
    pytest.param({"p.jsonl": [GOOD, '{"input": "half \\ud83d of an emoji"}']}, ["--prompt-data", "{d}/p.jsonl"],
                 ["line 2, field 'input': a lone UTF-16 surrogate escape", "write the character itself", SKIP],
                 id="data-lone-surrogate"),
    pytest.param({"p.jsonl": GOOD + "\n" + GOOD + "\n" + GOOD + "\n"}, ["--prompt-data", "{d}/p.jsonl@[5:9]"],
                 ["p.jsonl: the row slice @[5:9] selects none of the file's 3 rows"], id="data-slice-selects-nothing"),
    pytest.param({"p.parquet": b"PAR1 but not really"}, ["--prompt-data", "{d}/p.parquet"],
                 ["p.parquet: cannot be read as Parquet", "check that it is a valid .parquet file"],
                 id="data-corrupt-parquet"),
    pytest.param({"p.jsonl": [GOOD]}, ["--prompt-data", "{d}/p.jsonl", "--eval-interval", "1",
                                       "--eval-prompt-data", "aime", "{d}/aime.jsonl"],
                 ["--eval-prompt-data aime: ", "aime.jsonl: prompt file not found"], id="data-eval-file-missing"),
    pytest.param({"p.jsonl": [GOOD], "aime.jsonl": [GOOD, '{"problem": "x"}']},
                 ["--prompt-data", "{d}/p.jsonl", "--eval-interval", "1", "--eval-prompt-data", "aime",
                  "{d}/aime.jsonl"],
                 ["--eval-prompt-data aime: ", "aime.jsonl line 2, field 'input': missing",
                  "eval files are read with --eval-input-key"], id="data-eval-file-bad-row"),
    pytest.param({"eval.yaml": "eval:\n  datasets:\n    - name: aime\n      path: a.jsonl\n"
                               "      n_samples_per_eval_prompt: two\n"},
                 ["--eval-config", "{d}/eval.yaml"],
                 ["--eval-config ", "eval.yaml:5: datasets[0] (aime): field 'n_samples_per_eval_prompt' must be an "
                  "integer >= 1, got 'two'"], id="data-eval-config-wrong-type"),
    pytest.param({"run.yaml": "num_rollout: 1\nlr: [1, 2]\n"}, ["--config", "{d}/run.yaml"],
                 ["run.yaml:2: lr is list [1, 2]; expected a number (as --lr takes)"], id="data-config-wrong-type"),
    pytest.param({"run.yaml": 'colocate: "no"\n'}, ["--config", "{d}/run.yaml"],
                 ["run.yaml:1: colocate is str 'no'; expected true or false (as --colocate takes)"],
                 id="data-config-bool-as-text"),
    pytest.param({"run.yaml": "rollout_stop: </answer>\n"}, ["--config", "{d}/run.yaml"],
                 ["run.yaml:1: rollout_stop is str '</answer>'; expected a list [a, b]"],
                 id="data-config-scalar-for-list"),
    pytest.param({"run.yaml": "advantage-estimator: dpo\n"}, ["--config", "{d}/run.yaml"],
                 ["run.yaml:1: advantage-estimator is str 'dpo'; expected one of grpo, gspo"],
                 id="data-config-unknown-choice"),
    pytest.param({"run.yaml": "lr: 1e-6\nrollout-batch-sise: 8\n"}, ["--config", "{d}/run.yaml"],
                 ["run.yaml: unknown key 'rollout-batch-sise' (did you mean rollout_batch_size?)"],
                 id="data-config-unknown-key"),
    pytest.param({"run.yaml": "lr: 1e-6\nrollout_stop: [a, b\n"}, ["--config", "{d}/run.yaml"],
                 ["run.yaml:3: not valid YAML"], id="data-config-not-yaml"),
]


@pytest.mark.parametrize("files, flags, parts", CASES)
def test_each_data_case(files, flags, parts, write, refused, model, tmp_path):
    for name, content in files.items():
        write(name, content)
    argv = [f.format(d=tmp_path, model=model) for f in [*BASE, "--hf-checkpoint", "{model}", *flags]]
    refused(argv, *parts)


def test_data_parquet_missing_column(write, refused, model, tmp_path):
    pq.write_table(pa.Table.from_pylist([{"question": "hi"}]), tmp_path / "p.parquet")
    refused([*BASE, "--hf-checkpoint", model, "--prompt-data", str(tmp_path / "p.parquet")],
            "p.parquet row 0, field 'input': missing; keys present: ['question']")


def test_data_huge_malformed_line(write, refused, model):
    """A 3 MB line cut short: named by line and column, and the message does not echo the line."""
    path = write("p.jsonl", [GOOD, '{"input": "' + "a" * 3_000_000])
    message = refused([*BASE, "--hf-checkpoint", model, "--prompt-data", path],
                      "p.jsonl line 2: malformed JSON at column 11 (Unterminated string starting)")
    assert len(message) < 400


def test_data_huge_prompt_dropped_and_counted(write, model, caplog):
    """A prompt over --rollout-max-prompt-len is dropped, counted and logged; the rest is kept."""

    path = write("p.jsonl", [GOOD, json.dumps({"input": "word " * 5000})])
    with caplog.at_level(logging.WARNING, logger="temper.data"):
        data = driver_checks([*BASE, "--hf-checkpoint", model, "--prompt-data", path, "--rollout-max-prompt-len", "32"])
    assert len(data.dataset) == 1
    assert "p.jsonl: dropped 1 of 2 prompts longer than --rollout-max-prompt-len=32 tokens" in caplog.text


def test_data_every_prompt_too_long(write, refused, model):
    path = write("p.jsonl", [json.dumps({"input": "word " * 500})])
    refused([*BASE, "--hf-checkpoint", model, "--prompt-data", path, "--rollout-max-prompt-len", "32"],
            "p.jsonl: no usable prompts among 1 rows: 0 invalid rows, 1 longer than --rollout-max-prompt-len; fix "
            "the data, or raise --rollout-max-prompt-len")


def test_data_skipped_rows_counted(write, model, caplog):
    """--skip-invalid-data keeps going past bad rows, and says how many of which kind it skipped."""

    path = write("p.jsonl", [GOOD, "{oops", GOOD, '{"input": 5}', GOOD])
    with caplog.at_level(logging.WARNING, logger="temper.data"):
        data = driver_checks([*BASE, "--hf-checkpoint", model, "--prompt-data", path, "--skip-invalid-data"])
    assert len(data.dataset) == 3
    assert "skipped 2 invalid rows (malformed_json=1, wrong_type=1); first: " in caplog.text
    assert "p.jsonl line 2: malformed JSON" in caplog.text
