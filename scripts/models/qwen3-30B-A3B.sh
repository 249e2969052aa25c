# Model shape of Qwen/Qwen3-30B-A3B: source this file and pass "${MODEL_ARGS[@]}" to train.py.
# temper builds the model from --hf-checkpoint and checks these flags against its config.json; the
# tiny-model factory's preset "qwen3-30b-a3b" has this shape. 128 experts of moe_intermediate_size 768 in
# every layer (decoder_sparse_step 1, no mlp_only_layers), softmax routing to the top 8 renormalised
# (norm_topk_prob: no --moe-router-pre-softmax). --ffn-hidden-size is config.json's intermediate_size,
# which no layer of this model uses. --moe-grouped-gemm, --moe-permute-fusion,
# --moe-token-dispatcher-type and --moe-token-drop-policy are accepted and change nothing (temper always
# runs grouped GEMMs on one rank and drops no tokens). --moe-router-dtype fp32, as in slime's script: the
# trainer computes the router's logits, softmax and top-k in fp32 (temper's engine routes from bf16 logits).
MODEL_ARGS=(
   --swiglu
   --num-layers 48
   --hidden-size 2048
   --ffn-hidden-size 6144
   --num-attention-heads 32
   --group-query-attention
   --num-query-groups 4
   --kv-channels 128
   --use-rotary-position-embeddings
   --disable-bias-linear
   --normalization "RMSNorm"
   --norm-epsilon 1e-6
   --rotary-base "${MODEL_ARGS_ROTARY_BASE:-1000000}"
   --vocab-size 151936
   --qk-layernorm
   --untie-embeddings-and-output-weights

   # moe
   --moe-ffn-hidden-size 768
   --moe-router-score-function softmax
   --moe-token-dispatcher-type alltoall
   --moe-router-topk 8
   --moe-layer-freq "([1]*48)"
   --num-experts 128
   --moe-grouped-gemm
   --moe-token-drop-policy probs
   --moe-permute-fusion
   --moe-router-dtype fp32
   --moe-aux-loss-coeff 0
)
