"""Every flag that `train.py --help` lists is honoured, or a rule checks or rejects it (issue 14, point 2).

The test walks the parser. A flag is honoured when temper's code reads its field (an attribute or a string
equal to its name) outside the files that define and check the configuration, and outside the engine and
the tiny-model factory, whose own namespaces (ServerArgs, Hugging Face configs) share many of its names.
Every other flag needs probes here: command lines (and for model-shape flags, a checkpoint's config.json)
on which its rule must fire. The Megatron model-shape flags always need probes, since their names are
Hugging Face config names too. A few flags ask for what temper always does (`ALWAYS`); their --help says
"no effect: temper ...".
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from temper.command_line import build_parser, parse_config
from temper.config import ConfigError, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]
CONFIG_FILES = {
    "temper/config.py", "temper/command_line.py", "temper/config_rules.py", "temper/model_shape.py",
    "temper/model_shape_moe.py",
}  # fmt: skip
OTHER_NAMESPACES = ("temper/engine/", "temper/testing/")
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}

# A Qwen3 config.json (tiny sizes); a probe's `hf` changes keys of it (None removes one).
QWEN3 = dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], num_hidden_layers=2, hidden_size=128,
             intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=1024,
             hidden_act="silu", attention_bias=False, attention_dropout=0.0, rms_norm_eps=1e-6, rope_theta=1e6,
             max_position_embeddings=4096, tie_word_embeddings=True)  # fmt: skip
GPT2_LIKE = {"model_type": "gpt2", "rope_theta": None}  # learned absolute positions
# Qwen3-MoE and DeepSeek-V3 (MLA, YaRN) keys over QWEN3, as the tiny-model factory writes them.
MOE = dict(model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, norm_topk_prob=True,
           decoder_sparse_step=1, mlp_only_layers=[])
MLA = dict(model_type="deepseek_v3", n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
           norm_topk_prob=True, n_shared_experts=1, n_group=4, topk_group=2, first_k_dense_replace=1,
           routed_scaling_factor=2.5, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16,
           v_head_dim=32, rope_scaling=dict(type="yarn", factor=40, mscale=1.0, mscale_all_dim=1.0))


@dataclass
class Probe:
    """`argv` after BASE (with --hf-checkpoint when `hf` is given) makes the rule fire: a ConfigError holding
    `error`, or `check(cfg)` true."""

    argv: list[str]
    error: str | None = None
    hf: dict | None = None
    check: Callable | None = field(default=None, repr=False)


def shape(flags: list[str], error: str, **hf) -> Probe:
    return Probe(flags, error, hf=hf)


def rejects(flags: list[str], error: str | None = None) -> Probe:
    return Probe(flags, error or flags[0])


# Flags that nothing but a rule reads: the model-shape check (temper.model_shape) or config_rules.validate's rules.
PROBES: dict[str, list[Probe]] = {
    # -- model shape, against the checkpoint's config.json
    "num_layers": [shape(["--num-layers", "3"], "--num-layers 3 (checkpoint: 2)")],
    "hidden_size": [shape(["--hidden-size", "64"], "--hidden-size 64 (checkpoint: 128)")],
    "ffn_hidden_size": [shape(["--ffn-hidden-size", "64"], "--ffn-hidden-size 64 (checkpoint: 256)")],
    "num_attention_heads": [shape(["--num-attention-heads", "8", "--group-query-attention"],
                                  "--num-attention-heads 8 (checkpoint: 4)")],
    "group_query_attention": [shape(["--num-attention-heads", "4"], "--num-query-groups 4 (checkpoint: 2)")],
    "num_query_groups": [shape(["--num-query-groups", "4"], "--num-query-groups 4 (checkpoint: 2)")],
    "kv_channels": [shape(["--kv-channels", "64"], "--kv-channels 64 (checkpoint: 32)")],
    "vocab_size": [shape(["--vocab-size", "2048"], "--vocab-size 2048 (checkpoint: 1024)")],
    "padded_vocab_size": [shape(["--padded-vocab-size", "1152"], "--padded-vocab-size 1152 (checkpoint: 1024)")],
    "make_vocab_size_divisible_by": [shape(["--make-vocab-size-divisible-by", "384"],
                                           "--make-vocab-size-divisible-by 384 (checkpoint: 1024 embedding rows")],
    "rotary_base": [shape(["--rotary-base", "10000"], "--rotary-base 10000.0 (checkpoint: 1000000.0)")],
    "rotary_percent": [shape(["--rotary-percent", "0.5"], "--rotary-percent 0.5 (checkpoint: 1.0)")],
    "rotary_interleaved": [shape(["--rotary-interleaved"], "--rotary-interleaved True (checkpoint: False)"),
                           shape(["--num-layers", "2"], "--rotary-interleaved False (checkpoint: True)",
                                 model_type="glm4")],
    "use_rotary_position_embeddings": [shape(["--use-rotary-position-embeddings"],
                                             "--use-rotary-position-embeddings True (checkpoint: False)", **GPT2_LIKE)],
    "position_embedding_type": [shape(["--position-embedding-type", "learned_absolute"],
                                      "--position-embedding-type learned_absolute (checkpoint: rope)")],
    "no_position_embedding": [shape(["--no-position-embedding"], "--no-position-embedding True (checkpoint: False)",
                                    **GPT2_LIKE)],
    "max_position_embeddings": [shape(["--max-position-embeddings", "8192"],
                                      "--max-position-embeddings 8192 (checkpoint: 4096)")],
    "seq_length": [shape(["--seq-length", "8192"], "--seq-length 8192 (checkpoint: max_position_embeddings 4096)")],
    "normalization": [shape(["--normalization", "RMSNorm"], "--normalization RMSNorm (checkpoint: LayerNorm)",
                            rms_norm_eps=None, layer_norm_eps=1e-5),
                      shape(["--num-layers", "2"], "--normalization LayerNorm (checkpoint: RMSNorm)")],
    "norm_epsilon": [shape(["--norm-epsilon", "1e-5"], "--norm-epsilon 1e-05 (checkpoint: 1e-06)")],
    "swiglu": [shape(["--swiglu"], "--swiglu True (checkpoint: False)", hidden_act="gelu"),
               shape(["--num-layers", "2"], "--swiglu False (checkpoint: True)")],
    "untie_embeddings_and_output_weights": [shape(["--untie-embeddings-and-output-weights"],
                                                  "--untie-embeddings-and-output-weights True (checkpoint: False)")],
    "disable_bias_linear": [shape(["--disable-bias-linear"], "--disable-bias-linear True (checkpoint: False)",
                                  model_type="llama", attention_bias=True),
                            shape(["--num-layers", "2"], "--disable-bias-linear False (checkpoint: True)")],
    "add_qkv_bias": [shape(["--add-qkv-bias"], "--add-qkv-bias True (checkpoint: False)"),
                     shape(["--disable-bias-linear"], "--add-qkv-bias False (checkpoint: True)",
                           model_type="qwen2", attention_bias=None)],
    "qk_layernorm": [shape(["--qk-layernorm"], "--qk-layernorm True (checkpoint: False)", model_type="llama"),
                     shape(["--num-layers", "2"], "--qk-layernorm False (checkpoint: True)")],
    "post_self_attn_layernorm": [shape(["--post-self-attn-layernorm"],
                                       "--post-self-attn-layernorm True (checkpoint: False)")],
    "post_mlp_layernorm": [shape(["--post-mlp-layernorm"], "--post-mlp-layernorm True (checkpoint: False)")],
    "attention_dropout": [shape(["--attention-dropout", "0.1"], "--attention-dropout 0.1 (checkpoint: 0.0)")],
    "hidden_dropout": [shape(["--hidden-dropout", "0.1"], "--hidden-dropout 0.1 (checkpoint: 0.0)")],
    # -- mixture of experts and multi-latent attention, against the checkpoint's config.json
    "num_experts": [shape(["--num-experts", "4"], "--num-experts 4 (checkpoint: 8)", **MOE),
                    shape(["--num-layers", "2"], "--num-experts 0 (checkpoint: 8)", **MOE),
                    shape(["--num-experts", "8"], "--num-experts 8 (checkpoint: 0)")],
    "moe_ffn_hidden_size": [shape(["--moe-ffn-hidden-size", "32"], "--moe-ffn-hidden-size 32 (checkpoint: 64)", **MOE)],
    "moe_router_topk": [shape(["--moe-router-topk", "4"], "--moe-router-topk 4 (checkpoint: 2)", **MOE)],
    "moe_layer_freq": [shape(["--moe-layer-freq", "2"], "--moe-layer-freq 2 (checkpoint: [1]*2)", **MOE),
                       shape(["--moe-layer-freq", "([1]*2)"], "--moe-layer-freq ([1]*2) (checkpoint: [0]*1+[1]*1)",
                             **MLA),
                       shape(["--moe-layer-freq", "1"], "--moe-layer-freq 1 (checkpoint: [1]*1+[0]*1)", **{**MOE, "mlp_only_layers": [1]}),
                       rejects(["--moe-layer-freq", "[2]*2"], "--moe-layer-freq [2]*2: the list must hold 0"),
                       rejects(["--moe-layer-freq", "dense"], "--moe-layer-freq dense: neither an int")],
    "moe_shared_expert_intermediate_size": [shape(["--moe-shared-expert-intermediate-size", "128"],
                                                  "--moe-shared-expert-intermediate-size 128 (checkpoint: 64)", **MLA),
                                            shape(["--moe-shared-expert-intermediate-size", "64"],
                                                  "--moe-shared-expert-intermediate-size 64 (checkpoint: 0)", **MOE)],
    "moe_router_score_function": [shape(["--moe-router-score-function", "sigmoid"],
                                        "--moe-router-score-function sigmoid (checkpoint: softmax)", **MOE),
                                  shape(["--num-layers", "2", "--num-experts", "8"],
                                        "--moe-router-score-function softmax (checkpoint: sigmoid)", **MLA)],
    "moe_router_pre_softmax": [shape(["--moe-router-pre-softmax"], "--moe-router-pre-softmax True (checkpoint: False)",
                                     **MOE),
                               shape(["--num-layers", "2", "--num-experts", "8"],
                                     "--moe-router-pre-softmax False (checkpoint: True)", **{**MOE, "norm_topk_prob": False})],
    "moe_router_enable_expert_bias": [shape(["--moe-router-enable-expert-bias", "--moe-router-bias-update-rate", "0"],
                                            "--moe-router-enable-expert-bias True (checkpoint: False)", **MOE),
                                      rejects(["--moe-router-enable-expert-bias"], "add --moe-router-bias-update-rate 0")],
    "moe_router_num_groups": [shape(["--moe-router-num-groups", "8"], "--moe-router-num-groups 8 (checkpoint: 4)", **MLA)],
    "moe_router_group_topk": [shape(["--moe-router-group-topk", "1"], "--moe-router-group-topk 1 (checkpoint: 2)", **MLA)],
    "moe_router_topk_scaling_factor": [shape(["--moe-router-topk-scaling-factor", "2"],
                                             "--moe-router-topk-scaling-factor 2.0 (checkpoint: 2.5)", **MLA)],
    "moe_router_dtype": [shape(["--moe-router-dtype", "fp32"], "--moe-router-dtype fp32 is not supported for mixtral",
                               model_type="mixtral", num_local_experts=8, num_experts_per_tok=2),
                         shape(["--moe-router-dtype", "fp64"], "--moe-router-dtype fp64 is not supported", **MLA),
                         shape(["--moe-router-dtype", "fp32"], "temper does not know the router of model type 'qwen3'")],
    "multi_latent_attention": [shape(["--multi-latent-attention"], "--multi-latent-attention True (checkpoint: False)"),
                               shape(["--num-layers", "2"], "--multi-latent-attention False (checkpoint: True)", **MLA)],
    "q_lora_rank": [shape(["--q-lora-rank", "32"], "--q-lora-rank 32 (checkpoint: 64)", **MLA),
                    shape(["--q-lora-rank", "64"], "--q-lora-rank 64 (checkpoint: 0)", **{**MLA, "q_lora_rank": None}),
                    shape(["--num-layers", "2", "--multi-latent-attention"], "--q-lora-rank 0 (checkpoint: 64)", **MLA)],
    "kv_lora_rank": [shape(["--kv-lora-rank", "16"], "--kv-lora-rank 16 (checkpoint: 32)", **MLA)],
    "qk_head_dim": [shape(["--qk-head-dim", "64"], "--qk-head-dim 64 (checkpoint: 32)", **MLA)],
    "qk_pos_emb_head_dim": [shape(["--qk-pos-emb-head-dim", "64"], "--qk-pos-emb-head-dim 64 (checkpoint: 16)", **MLA)],
    "v_head_dim": [shape(["--v-head-dim", "64"], "--v-head-dim 64 (checkpoint: 32)", **MLA)],
    "rotary_scaling_factor": [shape(["--rotary-scaling-factor", "1"], "--rotary-scaling-factor 1.0 (checkpoint: 40)",
                                    **MLA),
                              shape(["--rotary-scaling-factor", "40"], "--rotary-scaling-factor 40.0 (checkpoint: 1.0)")],
    "mscale": [shape(["--mscale", "0.5"], "--mscale 0.5 (checkpoint: 1.0)", **MLA)],
    "mscale_all_dim": [shape(["--mscale-all-dim", "0"], "--mscale-all-dim 0.0 (checkpoint: 1.0)", **MLA)],
    # -- Megatron parallelism and kernels, which temper's FSDP trainer does not have
    "train_backend": [rejects(["--train-backend", "megatron"])],
    "tensor_model_parallel_size": [rejects(["--tensor-model-parallel-size", "2"])],
    "pipeline_model_parallel_size": [rejects(["--pipeline-model-parallel-size", "2"])],
    "context_parallel_size": [rejects(["--context-parallel-size", "2"])],
    "expert_model_parallel_size": [rejects(["--expert-model-parallel-size", "2"])],
    "sequence_parallel": [rejects(["--sequence-parallel"])],
    "attention_backend": [rejects(["--attention-backend", "unfused"], "not supported by temper's FSDP trainer")],
    "use_precision_aware_optimizer": [rejects(["--use-precision-aware-optimizer"], "not supported")],
    "recompute_granularity": [Probe(["--recompute-granularity", "full"], check=lambda cfg: cfg.recompute_activations)],
    "recompute_method": [rejects(["--recompute-granularity", "full", "--recompute-method", "block",
                                  "--recompute-num-layers", "1"], "--recompute-method block"),
                         rejects(["--recompute-method", "uniform"], "apply to --recompute-granularity full")],
    "recompute_num_layers": [rejects(["--recompute-granularity", "full", "--recompute-num-layers", "0"],
                                     "--recompute-num-layers must be >= 1")],
    "optimizer": [rejects(["--optimizer", "sgd"], "invalid choice: 'sgd'")],  # AdamW only; `.optimizer` is read
    # -- the rest
    "num_data_workers": [rejects(["--num-data-workers", "4"], "--num-data-workers 4 is not supported")],
    "max_turns": [rejects(["--max-turns", "4"], "--max-turns 4 is the turn limit of a multi-turn generate"),
                  rejects(["--max-turns", "0", "--custom-generate-function-path", "m.f"], "--max-turns must be >= 1")],
    "rollout_health_check_interval": [rejects(["--rollout-health-check-interval", "5"], "--use-fault-tolerance")],
    "rollout_health_check_timeout": [rejects(["--rollout-health-check-timeout", "5"], "--use-fault-tolerance")],
    "rollout_health_check_first_wait": [rejects(["--rollout-health-check-first-wait", "300"], "--use-fault-tolerance")],
    "moe_router_load_balancing_type": [
        rejects(["--moe-router-load-balancing-type", "global_aux_loss", "--moe-aux-loss-coeff", "0.01"],
                "not over the global batch"),
        rejects(["--moe-router-load-balancing-type", "sinkhorn"], "routes tokens by Sinkhorn balancing"),
        Probe(["--moe-router-load-balancing-type", "none", "--moe-aux-loss-coeff", "0.01"],
              check=lambda cfg: cfg.moe_aux_loss_coeff == 0.0),
    ],
    "moe_router_bias_update_rate": [rejects(["--moe-router-bias-update-rate", "0.001"],
                                            "--moe-router-bias-update-rate 0.001: temper keeps the checkpoint's")],
}  # fmt: skip

# Flags that ask for what temper always does; accepted, and their --help says "no effect: temper ...".
ALWAYS = {
    "no_rope_fusion": "temper's trainer runs RoPE inside the Hugging Face model, never Megatron's fused kernel",
    "attention_softmax_in_fp32": "Flash Attention (GPU) and fp32 SDPA (CPU) keep the softmax in fp32",
    "accumulate_allreduce_grads_in_fp32": "FSDP2 reduces gradients in fp32 (test_grads_reduce_in_fp32)",
    "moe_grouped_gemm": "MoE models load with transformers' grouped_mm experts (temper.train.hf_model.load_causal_lm)",
    "moe_permute_fusion": "a fused kernel of Megatron's token permutation; transformers' experts sort tokens unfused",
    "moe_token_dispatcher_type": "no expert parallelism: every rank routes its own tokens to its own experts",
    "moe_token_drop_policy": "temper has no expert capacity factor, without which Megatron drops no tokens either",
    "no_masked_softmax_fusion": "temper's attention never uses Megatron's fused masked softmax",
}
ALWAYS_VALUES = {"moe_token_dispatcher_type": ["alltoall", "allgather"], "moe_token_drop_policy": ["probs", "position"]}
"""The values of the ALWAYS flags that take one (every one of its choices is accepted)."""


def flag_fields() -> dict[str, str]:
    """{field: --flag} of every flag the parser lists (--help and --config aside)."""
    return {a.dest: a.option_strings[0] for a in build_parser()._actions if a.dest not in ("help", "config")}


def names_read_by_temper() -> set[str]:
    files = [*ROOT.glob("temper/**/*.py"), ROOT / "train.py", ROOT / "train_async.py"]
    names: set[str] = set()
    for file in files:
        rel = file.relative_to(ROOT).as_posix()
        if rel in CONFIG_FILES or rel.startswith(OTHER_NAMESPACES):
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    return names


def test_every_flag_is_read_or_checked():
    read = names_read_by_temper()
    unread = [
        flag for name, flag in flag_fields().items()
        if name not in PROBES and name not in ALWAYS and (name in MODEL_FIELDS or name not in read)
    ]  # fmt: skip
    assert not unread, (
        f"flags that nothing reads and no rule checks: {unread}; honour them, or reject them in temper/config_rules.py "
        "(or check them in temper/model_shape.py) and add probes to PROBES"
    )
    assert not (set(PROBES) | set(ALWAYS)) - set(flag_fields()), "PROBES/ALWAYS name fields that are no flags"


def _probe_cases():
    cases = [(name, i, probe) for name, probes in PROBES.items() for i, probe in enumerate(probes)]
    return [pytest.param(name, probe, id=f"{name}-{i}") for name, i, probe in cases]


@pytest.mark.parametrize("name, probe", _probe_cases())
def test_rule_fires(name, probe, tmp_path):
    argv = BASE + probe.argv
    if probe.hf is not None:
        config = {k: v for k, v in {**QWEN3, **probe.hf}.items() if v is not None}
        (tmp_path / "config.json").write_text(json.dumps(config))
        argv += ["--hf-checkpoint", str(tmp_path)]
        parse_config(BASE + ["--hf-checkpoint", str(tmp_path)])  # the checkpoint alone passes
    if probe.check is not None:
        assert probe.check(parse_config(argv))
        return
    with pytest.raises(ConfigError) as e:
        parse_config(argv)
    assert probe.error in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", sorted(ALWAYS))
def test_always_flags_are_accepted_and_say_so(name, tmp_path):
    flag = flag_fields()[name]
    action = next(a for a in build_parser()._actions if a.dest == name)
    assert action.help.startswith("no effect: temper"), action.help
    (tmp_path / "config.json").write_text(json.dumps(QWEN3))
    for value in ALWAYS_VALUES.get(name, [True]):
        argv = BASE + [flag] + ([] if value is True else [value]) + ["--hf-checkpoint", str(tmp_path)]
        assert getattr(parse_config(argv), name) == value


def test_grads_reduce_in_fp32(monkeypatch):
    """--accumulate-allreduce-grads-in-fp32 is what temper's mixed precision does anyway."""
    import torch
    from transformers import AutoModelForCausalLM

    from temper.testing import make_config
    from temper.train import parallelize as module

    policies = []
    monkeypatch.setattr(module, "fully_shard", lambda layer, mesh, mp_policy, **kw: policies.append(mp_policy))
    model = AutoModelForCausalLM.from_config(make_config("qwen3"))
    module.parallelize(model, mesh=None, mixed_precision=True)
    assert policies and all(p.param_dtype == torch.bfloat16 and p.reduce_dtype == torch.float32 for p in policies)
