"""Bad flags: contradictions, values out of range, unknown choices and names. Each stops the run before
Ray with one line naming the flag(s), the value given and what to do."""

from __future__ import annotations

import pytest
from bad_input_helpers import BASE

# (flags after BASE ({model}: the tiny checkpoint), parts of the message)
CASES = [
    pytest.param(["--advantage-estimator", "dpo"],
                 ["argument --advantage-estimator: invalid choice: 'dpo' (choose from 'grpo', 'gspo'", "see --help"],
                 id="flags-unknown-choice"),
    pytest.param(["--rollout-batch-sise", "4"],
                 ["unknown flag --rollout-batch-sise; did you mean --rollout-batch-size?"], id="flags-unknown-flag"),
    pytest.param(["--lr", "fast"], ["argument --lr: invalid float value: 'fast'; see --help"], id="flags-not-a-number"),
    pytest.param(["--apply-chat-template-kwargs", "{enable_thinking: false"],
                 ["--apply-chat-template-kwargs expects a JSON object, got '{enable_thinking: false'"],
                 id="flags-malformed-json-value"),
    pytest.param(["--rollout-batch-size", "0"],
                 ["--rollout-batch-size (0) and --n-samples-per-prompt (1) must be positive"], id="flags-zero-batch"),
    pytest.param(["--n-samples-per-prompt", "2", "--global-batch-size", "3"],
                 ["--rollout-batch-size 2 x --n-samples-per-prompt 2 = 4 samples is not a multiple of "
                  "--global-batch-size 3; make it divide 4 or set --num-steps-per-rollout"],
                 id="flags-batch-arithmetic"),
    pytest.param(["--micro-batch-size", "0"], ["--micro-batch-size must be positive, got 0"],
                 id="flags-zero-micro-batch"),
    pytest.param(["--num-steps-per-rollout", "0"], ["--num-steps-per-rollout must be positive, got 0"],
                 id="flags-zero-steps-per-rollout"),
    pytest.param(["--num-rollout", "-1"], ["--num-rollout must be >= 0 (rollout steps to run), got -1"],
                 id="flags-negative-num-rollout"),
    pytest.param(["--rollout-temperature", "nan"],
                 ["--rollout-temperature must be > 0 (it also divides training logits), got nan"],
                 id="flags-nan-temperature"),
    pytest.param(["--rollout-top-p", "1.5"], ["--rollout-top-p must be in (0, 1], got 1.5"], id="flags-top-p-above-1"),
    pytest.param(["--rollout-max-response-len", "0"], ["--rollout-max-response-len must be at least 1 token, got 0"],
                 id="flags-zero-response-len"),
    pytest.param(["--eps-clip-c", "0.5"], ["--eps-clip-c is the dual-clip constant and must be > 1, got 0.5"],
                 id="flags-dual-clip-below-1"),
    pytest.param(["--num-gpus-per-node", "0"], ["--num-gpus-per-node must be >= 1, got 0"],
                 id="flags-zero-gpus-per-node"),
    pytest.param(["--actor-num-gpus-per-node", "16"],
                 ["--actor-num-gpus-per-node 16 exceeds --num-gpus-per-node 8; use more --actor-num-nodes"],
                 id="flags-more-gpus-than-a-node"),
    pytest.param(["--colocate", "--rollout-num-gpus", "4"],
                 ["--colocate shares GPUs, so --rollout-num-gpus (4) must equal the actor's 8 GPUs; drop "
                  "--rollout-num-gpus"],
                 id="flags-colocate-gpu-mismatch"),
    pytest.param(["--tensor-model-parallel-size", "2"],
                 ["--tensor-model-parallel-size is honoured by the Megatron backend only; with --train-backend fsdp "
                  "leave it at 1"], id="flags-megatron-only-parallelism"),
    pytest.param(["--train-backend", "megatron"],
                 ["--train-backend megatron is not available in this build; use --train-backend fsdp"],
                 id="flags-backend-not-built"),
    pytest.param(["--debug-rollout-only", "--debug-train-only"],
                 ["--debug-rollout-only and --debug-train-only exclude each other; pick one"],
                 id="flags-exclusive-modes"),
    pytest.param(["--use-kl-loss", "--kl-loss-coef", "0.1", "--kl-coef", "0.1"],
                 ["--kl-coef (KL in the reward) and --use-kl-loss --kl-loss-coef (KL in the loss) exclude each other"],
                 id="flags-kl-twice"),
    pytest.param(["--advantage-estimator", "rloo"],
                 ["--advantage-estimator rloo needs --n-samples-per-prompt >= 2"], id="flags-rloo-without-group"),
    pytest.param(["--use-tis", "--use-rollout-logprobs"],
                 ["--use-tis corrects towards the engine's log-probs; it cannot be combined with "
                  "--use-rollout-logprobs"],
                 id="flags-tis-with-rollout-logprobs"),
    pytest.param(["--save-interval", "5"], ["--save-interval needs --save DIR"], id="flags-save-interval-without-save"),
    pytest.param(["--eval-interval", "5"],
                 ["--eval-interval needs --eval-prompt-data NAME PATH or --eval-config FILE.yaml"],
                 id="flags-eval-interval-without-data"),
    pytest.param(["--eval-prompt-data", "aime", "a.jsonl", "gsm8k"],
                 ["--eval-prompt-data takes NAME PATH pairs, got 3 values"], id="flags-eval-pairs-odd"),
    pytest.param(["--eval-prompt-data", "aime", "a.jsonl", "aime", "b.jsonl"],
                 ["--eval-prompt-data needs a distinct NAME per dataset; named twice: aime"],
                 id="flags-eval-name-twice"),
    pytest.param([], ["--hf-checkpoint is not set, but the trainer (its initial weights) loads it; pass "
                      "--hf-checkpoint DIR"],
                 id="flags-no-hf-checkpoint"),
    pytest.param(["--hf-checkpoint", "{model}", "--num-layers", "28"],
                 ["model flags disagree with ", "config.json: --num-layers 28 (checkpoint: 2)",
                  "source the scripts/models file that matches the checkpoint"], id="flags-model-shape-disagrees"),
]


@pytest.mark.parametrize("flags, parts", CASES)
def test_each_flags_case(flags, parts, refused, model):
    refused([*BASE, *(model if f == "{model}" else f for f in flags)], *parts)
