#!/usr/bin/env bash
# Session 15's first device call (issue 13 and the never-run GPU tests): varlen attention backends
# (flash vs cuDNN ragged), the trainer's profile with where the GPU idles, the GPU tests that have
# never run on a device. Logs under $OUT.
source benchmarks/device/setup.sh
PARTS=${PARTS:-attn,profile,sync}
python -c "import torch; print(torch.__version__, 'cudnn', torch.backends.cudnn.version()); print(torch.ops.aten._cudnn_attention_backward.default._schema)"
has attn && run attention 90 python benchmarks/attention_backends.py --out "$OUT/attention.json"
has profile && TAIL=70 run train_profile 200 python benchmarks/train_throughput.py --skip-hf --rollouts 2 --profile "$OUT"
# weight sync A/B (0.6B, ipc only): this tree with 512 MiB and 1.4 GB buckets, the tree before session 15
# (.device/old.tar.xz, c08ecf2) with 512 MiB, in the same call
W="python benchmarks/weight_sync.py --shapes qwen3-0.6b --transports ipc --repeats 9 --check ipc"
if has sync; then
  run sync_new_512m 100 $W --out "$OUT/sync_new_512m.json"
  run sync_new_1400m 100 $W --bucket-bytes 1400000000 --out "$OUT/sync_new_1400m.json"
  if [ -f .device/old.tar.xz ]; then
    mkdir -p /tmp/old && tar xJf .device/old.tar.xz -C /tmp/old
    (cd /tmp/old && export PYTHONPATH=/tmp/site:/tmp/old && run sync_old_512m 100 $W --out "$OUT/sync_old_512m.json")
  fi
fi
has tests && TAIL=30 run gpu_tests_new 300 python -m pytest -q -rfEs -p no:cacheprovider \
  tests/engine/test_deepseek_v3_gpu.py tests/train/test_gpu.py tests/train/test_optimizer_offload.py ${TESTS:-}
exit 0
