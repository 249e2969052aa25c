# Model shape of THUDM/GLM-4-9B-0414: source this file and pass "${MODEL_ARGS[@]}" to train.py.
# temper builds the model from --hf-checkpoint and checks these flags against its config.json.
MODEL_ARGS=(
   --swiglu
   --num-layers 40
   --hidden-size 4096
   --ffn-hidden-size 13696
   --num-attention-heads 32
   --group-query-attention
   --num-query-groups 2
   --kv-channels 128
   --use-rotary-position-embeddings
   --disable-bias-linear
   --add-qkv-bias
   --normalization "RMSNorm"
   --norm-epsilon 1e-5
   --rotary-base 10000
   --rotary-percent 0.5
   --rotary-interleaved
   --no-rope-fusion
   --post-self-attn-layernorm
   --post-mlp-layernorm
   --vocab-size 151552
   --untie-embeddings-and-output-weights
)
