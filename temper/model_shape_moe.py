"""Megatron's mixture-of-experts and multi-latent-attention shape flags, against a Hugging Face config.json.

The MoE and MLA half of `temper.model_shape`: `moe_mla_shape` reads what config.json says about the
experts, the router and the latent attention in Megatron's terms; `given_moe_mla` says which of these flags
a command line gave. As with the dense flags, `--multi-latent-attention` counts as given, present or absent,
once a shape script is (`--num-layers`). In an MoE script (`--num-layers` and `--num-experts`) so do the
router's presence flags (`--moe-router-pre-softmax`, `--moe-router-enable-expert-bias`) and the MoE flags
whose absence Megatron reads as a choice: no `--moe-layer-freq` is experts in every layer, no
`--moe-shared-expert-intermediate-size` no shared expert, no `--moe-router-topk-scaling-factor` unscaled
weights, no `--moe-router-score-function` softmax. A shape script without `--num-experts` is a dense model,
and an MLA script without `--q-lora-rank` has a plain query projection (0 in messages: none).

Megatron's router, as these flags set it: softmax scores take the top k of the logits and a softmax over those
k (Hugging Face's norm_topk_prob true), or with `--moe-router-pre-softmax` a softmax over all experts first
(norm_topk_prob false); sigmoid scores are always renormalised over the k.
"""

from __future__ import annotations

import ast
import itertools
from typing import Any

from temper.config import ConfigError, ModelConfig

ROUTERS: dict[str, dict[str, Any]] = {
    "qwen2_moe": dict(score_function="softmax", fp32_router=True),
    "qwen3_moe": dict(score_function="softmax", fp32_router=True),
    "mixtral": dict(score_function="softmax", fp32_router=False),
    "deepseek_v3": dict(score_function="sigmoid", fp32_router=True),
    "glm4_moe": dict(score_function="sigmoid", fp32_router=True),
}
"""The Hugging Face router of each MoE model type: its score function, and whether temper's trainer can route it
in fp32 (--moe-router-dtype fp32): DeepseekV3TopkRouter and GLM-4.5's Glm4MoeTopkRouter (the same sigmoid
router with an expert bias and grouped top-k) cast their input and weight to fp32 themselves; the Qwen-MoE
routers compute their logits in the compute dtype (bf16 on GPU) and only the softmax in fp32, and the trainer
replaces their forward with an fp32 one (`temper.train.moe_routing.route_in_fp32`); Mixtral's router (logits in
the compute dtype) it leaves as it is."""

SIGMOID_TYPES = ("deepseek_v3", "glm4_moe")
"""Model types laid out as DeepSeek-V3's MoE (Hugging Face names): the first ``first_k_dense_replace`` layers dense,
the others sigmoid-routed experts with an expert bias (``e_score_correction_bias``), ``n_shared_experts`` shared
experts of ``moe_intermediate_size`` each."""

EXPERT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")


class LayerPattern:
    """Which decoder layers have experts: `layers` holds 1 (experts) or 0 (a dense MLP) per layer; `text` is
    how it is shown (the flag's own text, or a run-length form such as ``[0]*3+[1]*58``)."""

    def __init__(self, layers: list[int], text: str | None = None):
        self.layers = layers
        self.text = text if text is not None else run_length(layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LayerPattern) and self.layers == other.layers

    def __repr__(self) -> str:
        return self.text


def run_length(layers: list[int]) -> str:
    """``[0, 0, 0, 1, 1]`` -> ``[0]*3+[1]*2``, Megatron's list-expression form."""
    return "+".join(f"[{value}]*{len(list(run))}" for value, run in itertools.groupby(layers)) or "[]"


def parse_layer_freq(text: str) -> int | list[int]:
    """Megatron's --moe-layer-freq: an int k (experts in layers 0, k, 2k, ...), or a Python list expression of
    0/1 per layer built from lists, ints, ``+`` and ``*`` (``([0]*3+[1]*58)``; surrounding quotes, as some
    scripts pass them, are dropped). Evaluated without `eval`. ValueError when it is neither."""
    text = text.strip().strip("'\"").strip()
    if "[" not in text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError("neither an int k >= 1 nor a list expression")
        return int(text)
    value = _evaluate(ast.parse(text, mode="eval").body)
    if not isinstance(value, list) or any(v not in (0, 1) for v in value):
        raise ValueError("the list must hold 0 (dense layer) or 1 (MoE layer) per layer")
    return value


def _evaluate(node: ast.AST) -> int | list:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.List):
        return [_evaluate(item) for item in node.elts]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add) and type(left) is type(right):
            return left + right
        ints = [v for v in (left, right) if type(v) is int]
        if isinstance(node.op, ast.Mult) and len(ints) == 1 and 0 <= ints[0] <= 100_000:  # a layer count
            return left * right
    raise ValueError(f"unexpected {ast.unparse(node)!r}")


def check_layer_freq(text: str | None) -> None:
    """ConfigError (one line) when --moe-layer-freq is neither form `parse_layer_freq` reads."""
    if text is None:
        return
    try:
        parse_layer_freq(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(
            f"--moe-layer-freq {text}: {e}; give an int k (experts in every k-th layer) or a list expression of "
            f"0 (dense) and 1 (MoE) per layer such as ([0]*3+[1]*58)"
        ) from None


def layer_pattern(text: str, num_layers: int) -> LayerPattern:
    freq = parse_layer_freq(text)
    layers = freq if isinstance(freq, list) else [int(i % freq == 0) for i in range(num_layers)]
    return LayerPattern(layers, text)


# -- what config.json says ---------------------------------------------------------------------------------


def moe_mla_shape(cfg: dict[str, Any], rope: dict[str, Any], mla: bool | None) -> dict[str, Any]:
    """{ModelConfig field: value} of the MoE and MLA flags for text config `cfg` (None where it does not say);
    `mla`: whether the model type has latent attention (None: a model type temper does not know)."""
    return {**_moe_shape(cfg), **_mla_shape(cfg, rope, mla)}


def _moe_shape(cfg: dict[str, Any]) -> dict[str, Any]:
    model_type = cfg.get("model_type")
    router = ROUTERS.get(model_type)
    experts = next((cfg[key] for key in EXPERT_KEYS if cfg.get(key)), None)
    if experts is None:  # a dense model, when temper knows its type
        return {"num_experts": 0} if router or model_type in DENSE_TYPES else {}
    score = cfg.get("scoring_func", router and router["score_function"])
    shape = {
        "num_experts": experts,
        "moe_ffn_hidden_size": cfg.get("moe_intermediate_size"),
        "moe_router_topk": cfg.get("num_experts_per_tok"),
        "moe_layer_freq": _moe_layers(cfg, model_type),
        "moe_shared_expert_intermediate_size": _shared_expert_size(cfg, model_type),
        "moe_router_score_function": score,
        "moe_router_enable_expert_bias": None if router is None else model_type in SIGMOID_TYPES,
        "moe_router_num_groups": cfg.get("n_group"),
        "moe_router_group_topk": cfg.get("topk_group"),
        "moe_router_topk_scaling_factor": cfg.get("routed_scaling_factor", 1.0 if router else None),
    }
    if score == "softmax" and "norm_topk_prob" in cfg:
        shape["moe_router_pre_softmax"] = not cfg["norm_topk_prob"]
    return shape


DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "glm4")
"""Dense model types: config.json without experts states a dense model, Megatron's no --num-experts."""


def _moe_layers(cfg: dict[str, Any], model_type: str | None) -> LayerPattern | None:
    """The MoE layers as the Hugging Face model class builds them."""
    n = cfg["num_hidden_layers"]
    if model_type in ("qwen2_moe", "qwen3_moe"):
        step, dense = cfg.get("decoder_sparse_step", 1), set(cfg.get("mlp_only_layers") or ())
        return LayerPattern([int(i not in dense and (i + 1) % step == 0) for i in range(n)])
    if model_type in SIGMOID_TYPES:  # GLM-4.5's config has no moe_layer_freq: every layer from the first MoE one
        first, freq = cfg.get("first_k_dense_replace", 0), cfg.get("moe_layer_freq", 1)
        return LayerPattern([int(i >= first and i % freq == 0) for i in range(n)])
    if model_type == "mixtral":
        return LayerPattern([1] * n)
    return None


def _shared_expert_size(cfg: dict[str, Any], model_type: str | None) -> int | None:
    if model_type in SIGMOID_TYPES:
        return (cfg.get("n_shared_experts") or 0) * cfg["moe_intermediate_size"]
    if model_type == "qwen2_moe":
        return cfg.get("shared_expert_intermediate_size")
    return 0 if model_type in ROUTERS else None


def _mla_shape(cfg: dict[str, Any], rope: dict[str, Any], mla: bool | None) -> dict[str, Any]:
    yarn = "yarn" in (rope.get("rope_type"), rope.get("type"))
    shape: dict[str, Any] = {
        "multi_latent_attention": mla,
        "rotary_scaling_factor": rope.get("factor", 1.0) if rope.get("factor") or mla is not None else None,
        "mscale": rope.get("mscale") if yarn else None,
        "mscale_all_dim": rope.get("mscale_all_dim") if yarn else None,
    }
    if mla:
        shape.update(
            q_lora_rank=cfg.get("q_lora_rank") or 0,
            kv_lora_rank=cfg.get("kv_lora_rank"),
            qk_head_dim=cfg.get("qk_nope_head_dim"),
            qk_pos_emb_head_dim=cfg.get("qk_rope_head_dim"),
            v_head_dim=cfg.get("v_head_dim"),
        )
    return shape


# -- what the command line says ----------------------------------------------------------------------------

MOE_VALUES = (
    "num_experts", "moe_ffn_hidden_size", "moe_router_topk", "moe_shared_expert_intermediate_size",
    "moe_router_num_groups", "moe_router_group_topk", "moe_router_topk_scaling_factor",
)  # fmt: skip
MLA_VALUES = (
    "q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim", "rotary_scaling_factor",
    "mscale", "mscale_all_dim",
)  # fmt: skip


def given_moe_mla(model: ModelConfig, num_layers: int) -> dict[str, Any]:
    """The MoE and MLA flags that `model` gives, absent ones included where Megatron reads absence as a choice
    (see the module docstring); `num_layers` expands an int --moe-layer-freq."""
    given = {name: getattr(model, name) for name in MOE_VALUES + MLA_VALUES if getattr(model, name) is not None}
    script = model.num_layers is not None
    moe = script and model.num_experts is not None  # an MoE shape script
    if script and not moe:
        given["num_experts"] = 0
    if model.multi_latent_attention or script:
        given["multi_latent_attention"] = model.multi_latent_attention
    if model.multi_latent_attention and script and model.q_lora_rank is None:
        given["q_lora_rank"] = 0
    if model.moe_layer_freq is not None or moe:
        given["moe_layer_freq"] = layer_pattern(model.moe_layer_freq or "1", num_layers)
    if model.moe_router_score_function != "softmax" or moe:  # Megatron's default is softmax
        given["moe_router_score_function"] = model.moe_router_score_function
    for name in ("moe_router_pre_softmax", "moe_router_enable_expert_bias"):
        if getattr(model, name) or moe:
            given[name] = getattr(model, name)
    if moe:
        given.setdefault("moe_shared_expert_intermediate_size", 0)
        given.setdefault("moe_router_topk_scaling_factor", 1.0)
    return given


def check_router_dtype(model: ModelConfig, cfg: dict[str, Any]) -> None:
    """ConfigError (one line) when --moe-router-dtype asks for a precision temper's trainer does not route in."""
    dtype = model.moe_router_dtype
    if dtype is None:
        return
    flag, model_type = f"--moe-router-dtype {dtype}", cfg.get("model_type")
    router = ROUTERS.get(model_type)
    if dtype == "fp64":
        raise ConfigError(f"{flag} is not supported: temper's routers compute in fp32 at most; use fp32 or drop it")
    if router is None:
        raise ConfigError(
            f"{flag}: temper does not know the router of model type {model_type!r} (known: "
            f"{', '.join(sorted(ROUTERS))}), so it cannot promise its precision; drop the flag"
        )
    if not router["fp32_router"]:
        raise ConfigError(
            f"{flag} is not supported for {model_type}: temper trains Hugging Face's router, which computes the logits "
            f"in the compute dtype (bf16 on GPU) with only the softmax in fp32; drop the flag"
        )
