"""GLM-4.5 and GLM-4.5-Air (HF `Glm4MoeForCausalLM`, model type glm4_moe): a Llama-style decoder layer (no
GLM4 sandwich norms) with GLM's attention and DeepSeek-V3's mixture of experts, as Hugging Face computes them.

- Attention (`glm4.Glm4Attention`): biases on q/k/v when ``attention_bias`` (true in the released configs),
  none on o_proj; a per-head RMSNorm on q and k before RoPE when ``use_qk_norm`` (GLM-4.5: yes, GLM-4.5-Air:
  no); partial RoPE on the first ``partial_rotary_factor * head_dim`` dimensions (0.5 in both) in the
  half-split layout (`rotary.PartialRotary`, HF's ``gpt_neox`` ``apply_rotary_pos_emb``), not GLM4's
  interleaved pairs. It runs in PyTorch, the attention backend writing K/V to the cache.
- Feed-forward: the first ``first_k_dense_replace`` layers keep a dense SwiGLU MLP of ``intermediate_size``
  (separate ``gate_proj``/``up_proj`` tensors, fused by the engine as in Llama); the others are DeepSeek-V3's
  `deepseek_v3.DeepseekMoE` -- sigmoid router with ``e_score_correction_bias`` (float32), ``n_group`` groups of
  which ``topk_group`` are kept, weights renormalised when ``norm_topk_prob`` and scaled by
  ``routed_scaling_factor``, ``n_shared_experts`` always-on experts -- its routed experts `moe.GroupedExperts`
  (the grouped-GEMM path on CUDA, so decode steps replay from CUDA graphs) recording their routing for R3.
- The multi-token-prediction layers (``num_nextn_predict_layers``, stored as ``model.layers.{num_hidden_layers
  + i}.*``) are skipped when loading, as DeepSeek-V3's.

Tensor parallelism as in `decoder.py` (heads) and `moe.py` (experts' intermediate size; router replicated).
"""

from __future__ import annotations

from torch import nn

from temper.engine.models.decoder import DecoderForCausalLM, DecoderLayer, DecoderSpec
from temper.engine.models.deepseek_v3 import DeepseekMoE, DeepseekV3ForCausalLM
from temper.engine.models.glm4 import Glm4Attention, rotary_dim_of
from temper.engine.models.rotary import PartialRotary, inverse_frequencies, rope_parameters


class Glm4MoeForCausalLM(DecoderForCausalLM):
    CUDA_GRAPH_KERNELS = (("fused_moe", "moe"),)  # the experts' reference dispatch reads its token counts on the host
    unused_weight = DeepseekV3ForCausalLM.unused_weight  # the multi-token-prediction layers, stored after the others

    @staticmethod
    def spec(hf_config) -> DecoderSpec:
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"GLM-4.5 with hidden_act={hf_config.hidden_act!r}; temper supports silu")
        return DecoderSpec(qkv_bias=bool(getattr(hf_config, "attention_bias", False)),
                           qk_norm=bool(getattr(hf_config, "use_qk_norm", False)))

    @staticmethod
    def build_rotary(hf_config, max_len: int) -> nn.Module:
        rotary_dim = rotary_dim_of(hf_config)
        inv_freq = inverse_frequencies(rope_parameters(hf_config), rotary_dim, hf_config.max_position_embeddings)
        return PartialRotary(rotary_dim, max_len, inv_freq)

    def build_layer(self, hf_config, spec: DecoderSpec, rotary: nn.Module, layer_idx: int) -> nn.Module:
        sparse = layer_idx >= hf_config.first_k_dense_replace
        mlp = DeepseekMoE(hf_config, self.tp) if sparse else None
        return DecoderLayer(hf_config, spec, rotary, self.tp, mlp=mlp,
                            attention=Glm4Attention(hf_config, spec, rotary, self.tp))
