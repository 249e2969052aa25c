#!/usr/bin/env bash
# Trainer speed (issue 13) on one GPU, for the device tool: the trainer's GPU tests (varlen attention,
# logit kernels, bf16 training), then benchmarks/train_throughput.py on the Qwen3-0.6B shape with the
# naive HF loop in the same run, a profile of one rollout, and (PARTS) the uncompiled layers, the old sdpa
# attention, FSDP's per-micro-batch gathers on one GPU ("keep,nokeep": the A/B of memory_plan.keeps_gathered, no HF loop) and the
# Qwen3-4B shape; "moe": the MoE trainer (issue 16) on Qwen3-30B-A3B's widths cut to 4 layers (3.1B parameters,
# fp32 master weights + AdamW on one GPU), HF's grouped-GEMM experts then HF's loop over the experts in one
# process on the same batches ("moe_nocompile": the same with TEMPER_COMPILE=0). Logs under $OUT.
# Usage (repo root): PARTS="tests,0.6b,profile,nokeep,sdpa,4b,moe" bash benchmarks/device/train_speed.sh
# Carry .device (pack.tar.xz from `../shared/tools/device-pack orjson`): temper.train imports temper.observe, which
# needs orjson, and the device image has none.
source benchmarks/device/setup.sh
PARTS=${PARTS:-tests,0.6b,profile}
B=benchmarks/train_throughput.py
has tests && run gpu_tests 240 python -m pytest -q -rA -p no:cacheprovider tests/train/test_varlen_attention.py \
  tests/train/test_logit_kernels.py tests/train/test_gpu.py tests/train/test_trainable.py
has 0.6b && run train_0.6b 300 python $B --out "$OUT/train_0.6b.json"
has profile && TAIL=45 run train_profile 200 python $B --skip-hf --rollouts 1 --profile "$OUT"
has keep && run train_0.6b_keep 200 python $B --skip-hf --rollouts 4
has nokeep && run train_0.6b_nokeep 200 python $B --skip-hf --rollouts 4 --no-keep-gathered
has eager && TEMPER_COMPILE=0 run train_0.6b_eager 200 python $B --skip-hf --rollouts 2
has sdpa && run train_0.6b_sdpa 200 python $B --skip-hf --rollouts 2 --attn sdpa
# the 4B shape without activation checkpointing needs more than an 80 GB card (seen: out of memory on an H100)
GPU_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
DEFAULT_4B="--max-tokens-per-gpu 8192"; ((GPU_MIB < 100000)) && DEFAULT_4B="$DEFAULT_4B --recompute"
has 4b && run train_4b 300 python $B --model-shape qwen3-4b --skip-hf --rollouts 2 ${ARGS_4B:-$DEFAULT_4B}
# ~46 GiB of fp32 weights, gradients and AdamW state, ~15 GiB of activations at 16k tokens a micro-batch;
# ARGS_MOE adds to (or overrides) the workload, e.g. ARGS_MOE="--max-tokens-per-gpu 8192" if memory runs out
MOE="--model-shape qwen3-30b-a3b --num-layers 4 --skip-hf --samples 32 --response-len 256 1024 --rollouts 2 ${ARGS_MOE:-}"
has moe && TAIL=20 run train_moe 300 python $B $MOE --out "$OUT/train_moe.json"
has moe_nocompile && TAIL=20 TEMPER_COMPILE=0 run train_moe_nocompile 300 python $B $MOE --out "$OUT/train_moe_nocompile.json"
exit 0
