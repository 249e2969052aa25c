# Model shape of Qwen/Qwen3-30B-A3B: source this file and pass "${MODEL_ARGS[@]}" to train.py.
# temper builds the model from --hf-checkpoint and checks these flags against its config.json.
# The experts come from config.json too: 128 experts of moe_intermediate_size 768 in every layer
# (decoder_sparse_step 1, no mlp_only_layers), softmax routing to the top 8 renormalised
# (norm_topk_prob); slime's --num-experts, --moe-router-topk and --moe-ffn-hidden-size are not
# temper flags yet, so they are left out. --ffn-hidden-size is config.json's intermediate_size,
# which no layer of this model uses.
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
)
