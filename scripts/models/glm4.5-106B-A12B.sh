# Model shape of zai-org/GLM-4.5-Air (Glm4MoeForCausalLM, 106B total, 12B active): source this file and pass
# "${MODEL_ARGS[@]}" to train.py. temper builds the model from --hf-checkpoint and checks these flags against
# its config.json; the tiny-model factory's preset "glm4.5-air" has this shape. Attention: 96 query heads of
# 128 over 8 K/V heads, q/k/v biases (no o_proj or MLP bias), no q/k norm (GLM-4.5 355B-A32B has
# --qk-layernorm), RoPE on the first half of each head in the half-split layout (--rotary-percent 0.5, no
# --rotary-interleaved, unlike GLM4). Layer 0 is dense (--ffn-hidden-size), layers 1-45 have 128 routed experts
# of 1408 (sigmoid scores with an expert bias in one group, the top 8, weights renormalised and not scaled:
# routed_scaling_factor 1.0, Megatron's default) and 1 shared expert. The expert bias stays the checkpoint's
# (--moe-router-bias-update-rate 0); with --moe-aux-loss-coeff 0 no load-balancing loss is computed.
# --moe-grouped-gemm, --moe-permute-fusion and --moe-token-dispatcher-type change nothing (temper always runs
# grouped GEMMs on one rank). The multi-token-prediction layer of the checkpoint is not trained or served.
# slime's flags for it (scripts/models/glm4.5-106B-A12B.sh); --norm-epsilon is Megatron's default 1e-5.
N_DENSE_LAYERS=1
N_MOE_LAYERS=45
MODEL_ARGS=(
   --disable-bias-linear
   --group-query-attention
   --num-attention-heads 96
   --num-query-groups 8
   --kv-channels 128
   --num-layers $((N_DENSE_LAYERS + N_MOE_LAYERS))
   --hidden-size 4096
   --ffn-hidden-size 10944

   --add-qkv-bias
   --normalization RMSNorm
   --position-embedding-type rope
   --rotary-percent 0.5
   --swiglu
   --untie-embeddings-and-output-weights
   --vocab-size 151552
   --rotary-base 1000000

   # moe
   --moe-ffn-hidden-size 1408
   --moe-shared-expert-intermediate-size 1408
   --moe-router-pre-softmax
   --moe-router-score-function sigmoid
   --moe-router-enable-expert-bias
   --moe-router-bias-update-rate 0
   --moe-router-load-balancing-type seq_aux_loss
   --moe-token-dispatcher-type alltoall
   --moe-router-topk 8
   --moe-layer-freq "[0]*$N_DENSE_LAYERS+[1]*$N_MOE_LAYERS"
   --num-experts 128
   --moe-grouped-gemm
   --moe-router-dtype fp32
   --moe-permute-fusion
   --moe-aux-loss-coeff 0
)
