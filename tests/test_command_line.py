"""The generated CLI: slime's flag names, frozen list, pass-through, YAML overlay, one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from temper.command_line import flag_names, parse_config
from temper.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--rollout-batch-size", "4", "--num-rollout", "2"]

# The flags the foundation issue requires, by slime's names.
REQUIRED = """actor-num-nodes actor-num-gpus-per-node rollout-num-gpus rollout-num-gpus-per-engine num-gpus-per-node
colocate offload offload-train offload-rollout hf-checkpoint load save save-interval ref-load prompt-data input-key
label-key metadata-key tool-key apply-chat-template apply-chat-template-kwargs rollout-shuffle rollout-seed
num-rollout num-epoch rollout-batch-size n-samples-per-prompt global-batch-size num-steps-per-rollout
micro-batch-size use-dynamic-batch-size max-tokens-per-gpu rollout-temperature rollout-top-p rollout-top-k
rollout-max-prompt-len rollout-max-response-len rollout-max-context-len rollout-stop rollout-stop-token-ids
over-sampling-batch-size dynamic-sampling-filter-path partial-rollout advantage-estimator loss-type use-kl-loss
kl-loss-coef kl-loss-type kl-coef eps-clip eps-clip-high eps-clip-c entropy-coef gamma lambd normalize-advantages
disable-grpo-std-normalization disable-rewards-normalization use-tis tis-clip tis-clip-low calculate-per-token-loss
lr min-lr lr-warmup-iters lr-decay-style weight-decay clip-grad adam-beta1 adam-beta2 seed rm-type custom-rm-path
group-rm rm-url reward-key rollout-function-path custom-generate-function-path buffer-filter-path data-source-path
eval-prompt-data eval-interval n-samples-per-eval-prompt eval-temperature eval-max-response-len
update-weights-interval use-fault-tolerance use-wandb wandb-project wandb-mode use-tensorboard
sglang-server-concurrency debug-rollout-only debug-train-only save-debug-rollout-data load-debug-rollout-data
num-layers hidden-size ffn-hidden-size num-attention-heads num-query-groups kv-channels vocab-size rotary-base
normalization swiglu untie-embeddings-and-output-weights async-buffer-size max-turns recompute-activations
sequence-parallel tensor-model-parallel-size pipeline-model-parallel-size num-data-workers streaming-data
skip-invalid-data""".split()


def test_required_flags_exist():
    missing = sorted(set("--" + f for f in REQUIRED) - set(flag_names()))
    assert missing == []


def test_flag_list_is_frozen():
    frozen = (ROOT / "tests" / "frozen_flags.txt").read_text().split()
    assert flag_names() == frozen, (
        "the flag list changed; if deliberate, regenerate tests/frozen_flags.txt with "
        "python -c \"from temper.command_line import flag_names; print('\\n'.join(flag_names()))\""
    )


def test_help_lists_the_flags():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for flag in ("--advantage-estimator", "--rollout-batch-size", "--eval-prompt-data", "--use-kl-loss"):
        assert flag in out.stdout


def test_values_and_types():
    cfg = parse_config(
        BASE
        + ["--rollout-stop", "</answer>", "\n\n", "--rollout-stop-token-ids", "5", "7", "--lr", "3e-6"]
        + ["--apply-chat-template-kwargs", '{"enable_thinking": false}', "--advantage-estimator", "gspo"]
    )
    assert cfg.rollout_stop == ["</answer>", "\n\n"]
    assert cfg.rollout_stop_token_ids == [5, 7]
    assert cfg.lr == 3e-6 and cfg.train.lr == 3e-6
    assert cfg.apply_chat_template_kwargs == {"enable_thinking": False}
    assert cfg.advantage_estimator == "gspo"


def test_repeated_list_flags_collect_every_value(tmp_path):
    """slime's multi-task form repeats --eval-prompt-data; no list flag keeps only its last occurrence."""
    repeated = parse_config(BASE + ["--eval-prompt-data", "aime", "A.jsonl", "--eval-prompt-data", "gsm8k", "B.jsonl"])
    pairs = parse_config(BASE + ["--eval-prompt-data", "aime", "A.jsonl", "gsm8k", "B.jsonl"])
    assert repeated.eval_datasets == pairs.eval_datasets == {"aime": "A.jsonl", "gsm8k": "B.jsonl"}
    assert parse_config(BASE + ["--rollout-stop", "a", "--rollout-stop", "b", "c"]).rollout_stop == ["a", "b", "c"]
    file = tmp_path / "run.yaml"
    file.write_text("eval-prompt-data: [yaml, Y.jsonl]\nrollout-stop: [x]\n")
    cfg = parse_config(["--config", str(file), *BASE, "--eval-prompt-data", "cli", "C.jsonl"])
    assert cfg.eval_datasets == {"cli": "C.jsonl"} and cfg.rollout_stop == ["x"]  # the command line replaces


@pytest.mark.parametrize(
    "flags, message",
    [
        (["aime", "A.jsonl", "--eval-prompt-data", "gsm8k"], "takes NAME PATH pairs when given more than once; got gsm8k"),
        (["A.jsonl", "--eval-prompt-data", "B.jsonl"], "takes NAME PATH pairs when given more than once; got A.jsonl"),
        (["aime", "A.jsonl", "--eval-prompt-data", "aime", "B.jsonl"], "distinct NAME per dataset; named twice: aime"),
    ],
)
def test_eval_prompt_data_mistakes_are_one_line(flags, message):
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + ["--eval-prompt-data", *flags])
    assert message in str(e.value) and "--eval-prompt-data" in str(e.value) and "\n" not in str(e.value)


def test_offload_flags_are_tristate():
    """Off unless given; with --colocate a flag not given stays None for the memory plan at start."""
    assert parse_config(BASE).offload_train is False
    assert parse_config(BASE + ["--colocate", "--actor-num-gpus-per-node", "2"]).offload_train is None
    cfg = parse_config(BASE + ["--colocate", "--actor-num-gpus-per-node", "2", "--no-offload-train"])
    assert cfg.offload_train is False and cfg.offload_rollout is None
    cfg = parse_config(BASE + ["--colocate", "--actor-num-gpus-per-node", "2", "--offload"])
    assert cfg.offload_train is True and cfg.offload_rollout is True


def test_sglang_and_router_pass_through():
    cfg = parse_config(
        BASE
        + ["--sglang-mem-fraction-static", "0.7", "--sglang-disable-radix-cache", "--sglang-log-level", "warn"]
        + ["--router-policy=cache_aware", "--sglang-server-concurrency", "64", "--sglang-cuda-graph-bs", "1", "2", "4"]
    )
    assert cfg.engine.sglang == {
        "mem_fraction_static": 0.7,
        "disable_radix_cache": True,
        "log_level": "warn",
        "cuda_graph_bs": [1, 2, 4],
    }
    assert cfg.engine.router == {"policy": "cache_aware"}
    assert cfg.sglang_server_concurrency == 64  # defined by temper, not passed through


def test_unknown_flag_is_one_line_with_suggestion():
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + ["--rollout-temprature", "0.7"])
    msg = str(e.value)
    assert "--rollout-temprature" in msg and "--rollout-temperature" in msg and "\n" not in msg


def test_bad_value_is_one_line():
    with pytest.raises(ConfigError, match="--rollout-batch-size: invalid int value: 'four'"):
        parse_config(["--rollout-batch-size", "four", "--num-rollout", "1"])
    with pytest.raises(ConfigError, match="invalid choice: 'dpo'"):
        parse_config(BASE + ["--advantage-estimator", "dpo"])
    with pytest.raises(ConfigError, match="expects a JSON object"):
        parse_config(BASE + ["--apply-chat-template-kwargs", "{oops"])


def test_yaml_overlay_and_precedence(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("rollout-batch-size: 8\nn_samples_per_prompt: 4\nlr: 2.0e-6\nuse-kl-loss: true\nnum-rollout: 3\n")
    cfg = parse_config(["--config", str(file), "--lr", "5e-6"])
    assert (cfg.rollout_batch_size, cfg.n_samples_per_prompt, cfg.num_rollout) == (8, 4, 3)
    assert cfg.use_kl_loss is True
    assert cfg.lr == 5e-6  # the command line wins
    assert cfg.global_batch_size == 32


def test_yaml_errors_name_file_and_key(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("rollout-batch-sise: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'rollout-batch-sise' \(did you mean rollout_batch_size\?\)"):
        parse_config(["--config", str(file)])
    file.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        parse_config(["--config", str(file)])
    with pytest.raises(ConfigError, match="file not found"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
