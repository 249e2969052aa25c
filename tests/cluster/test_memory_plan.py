"""The colocated memory plan: the estimate from model shapes, the three outcomes on real card sizes,
explicit --offload flags over the plan, and the runs it leaves to the flags. Pure functions: no GPU, no Ray."""

import pytest
import torch

from temper.cluster.memory_plan import (
    ALL_TAGS,
    ENGINE_MEM_FRACTION,
    GiB,
    MemorySizes,
    ModelSize,
    checkpoint_params,
    decide,
    engine_bytes,
    estimate,
    plan_memory,
    trainer_bytes,
)
from temper.cluster.engine_group import engine_dtype
from temper.cluster.placement import plan_resources
from temper.command_line import parse_config
from temper.testing import tiny_model_dir

QWEN3_0_6B = {"num_hidden_layers": 28, "hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True}  # fmt: skip
QWEN3_4B = {"num_hidden_layers": 36, "hidden_size": 2560, "intermediate_size": 9728, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True}  # fmt: skip
SMALL = ModelSize.of(QWEN3_0_6B, params=596_049_920)
MEDIUM = ModelSize.of(QWEN3_4B, params=4_022_468_096)
H200 = 143_771 * 2**20  # what torch reports for a 141 GB H200
H100 = 81_559 * 2**20  # an 80 GB H100
CHUNK = 2**26 // 151936  # automatic log-prob chunk rows

BASE = ["--rollout-batch-size", "2", "--num-rollout", "1"]


def sizes_of(model: ModelSize, total: int, *, tokens=4096, recompute=False, ranks=1, fraction=ENGINE_MEM_FRACTION):
    resident, peak = trainer_bytes(model, ranks=ranks, tokens=tokens, recompute=recompute, chunk_tokens=CHUNK)
    weights, whole = engine_bytes(model, total=total, fraction=fraction, dtype_bytes=2, tp=1)
    return MemorySizes(total, resident, peak, weights, whole)


def test_trainer_estimate_counts_state_over_ranks():
    resident, peak = trainer_bytes(MEDIUM, ranks=1, tokens=4096, recompute=True, chunk_tokens=CHUNK)
    assert resident == 12 * MEDIUM.params  # fp32 parameters + AdamW's two moments
    assert 16 * MEDIUM.params < peak < 18 * MEDIUM.params  # + gradients, compute copies, activations
    sharded, _ = trainer_bytes(MEDIUM, ranks=4, tokens=4096, recompute=True, chunk_tokens=CHUNK)
    assert sharded == resident // 4
    _, full = trainer_bytes(MEDIUM, ranks=1, tokens=4096, recompute=False, chunk_tokens=CHUNK)
    assert full - peak > 20 * GiB  # 36 layers' activations of 4096 tokens, not one
    with_ref, _ = trainer_bytes(MEDIUM, ranks=1, tokens=1, recompute=True, chunk_tokens=1, reference=True)
    assert with_ref == 14 * MEDIUM.params


def test_engine_estimate_is_its_share_of_the_gpu():
    weights, whole = engine_bytes(MEDIUM, total=H200, fraction=0.85, dtype_bytes=2, tp=2)
    assert weights == MEDIUM.params and whole == int(0.85 * H200)


def test_small_model_on_h200_keeps_everything_resident():
    plan = decide(sizes_of(SMALL, H200))
    assert plan.outcome == "resident" and not plan.offload_train and plan.release == () and plan.fits


def test_small_model_on_h100_releases_the_kv_cache_only():
    plan = decide(sizes_of(SMALL, H100))
    assert plan.outcome == "release_kv_cache" and not plan.offload_train and plan.release == ("kv_cache",)
    assert plan.fits


def test_4b_model_on_one_gpu_releases_engine_memory_and_offloads():
    for total, recompute in ((H200, False), (H100, True)):
        plan = decide(sizes_of(MEDIUM, total, recompute=recompute))
        assert plan.outcome == "offload" and plan.offload_train and plan.release == ALL_TAGS and plan.fits
    too_big = decide(sizes_of(MEDIUM, H100, recompute=False))
    assert too_big.outcome == "offload" and not too_big.fits
    assert "does NOT fit while training" in too_big.describe()


def test_small_cards():
    assert decide(sizes_of(SMALL, 24 * GiB)).outcome == "offload"
    assert decide(sizes_of(SMALL, 8 * GiB)).fits is False
    tiny = ModelSize.of(QWEN3_0_6B | {"num_hidden_layers": 2, "vocab_size": 1024}, params=30_000_000)
    assert decide(sizes_of(tiny, 24 * GiB, tokens=512)).outcome == "resident"
    assert decide(sizes_of(tiny, 16 * GiB, tokens=512)).outcome == "release_kv_cache"


def test_the_engine_share_decides_between_outcomes():
    """A smaller --sglang-mem-fraction-static leaves the 4B trainer room beside the engine on an H200."""
    outcomes = [decide(sizes_of(MEDIUM, H200, recompute=True, fraction=f)).outcome for f in (0.45, 0.6, 0.85)]
    assert outcomes == ["resident", "release_kv_cache", "offload"]


def test_explicit_flags_fix_their_side():
    sizes = sizes_of(SMALL, H200)
    forced = decide(sizes, offload_train=True, offload_rollout=True)
    assert (forced.outcome, forced.offload_train, forced.release) == ("flags", True, ALL_TAGS)
    assert decide(sizes, offload_rollout=True).release == ALL_TAGS
    assert decide(sizes, offload_rollout=True).offload_train is False  # fits beside the whole engine
    assert decide(sizes, offload_train=True).release == ()  # the engine need not free anything
    small_card = sizes_of(SMALL, H100)
    assert decide(small_card, offload_train=False).release == ("kv_cache",)
    assert decide(small_card, offload_rollout=False).offload_train is True  # nothing fits: the other side moves
    assert not decide(small_card, offload_train=False, offload_rollout=False).fits


def test_describe_is_one_line_with_the_numbers():
    line = decide(sizes_of(SMALL, H200)).describe()
    assert "\n" not in line and "140.4 GiB" in line and "resident" in line and "engine releases nothing" in line
    assert line.endswith("fits")


def test_checkpoint_params_reads_safetensors_headers():
    from transformers import AutoModelForCausalLM

    folder = tiny_model_dir("qwen3")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert checkpoint_params(folder) == sum(p.numel() for p in model.parameters())


def cuda_plan(*flags):
    cfg = parse_config([*BASE, "--hf-checkpoint", str(tiny_model_dir("qwen3")), *flags], check_shape=False)
    return cfg, plan_resources(cfg, cuda_available=False, cluster_gpus=8, cores=2)


def test_colocated_cuda_runs_are_planned():
    cfg, plan = cuda_plan("--actor-num-gpus-per-node", "2", "--colocate")
    assert cfg.offload_train is None and cfg.offload_rollout is None  # left to the plan
    memory = plan_memory(cfg, plan, H100)
    assert memory.outcome == "resident" and memory.sizes.total == H100
    small_gpu = plan_memory(cfg, plan, 512 * 2**20)  # a tiny model, a tiny GPU
    assert small_gpu.outcome == "offload"
    cfg, plan = cuda_plan("--actor-num-gpus-per-node", "2", "--colocate", "--offload")
    assert plan_memory(cfg, plan, H100).outcome == "flags" and plan_memory(cfg, plan, H100).offload_train


def test_the_ipc_buffer_holds_the_whole_model_only_when_the_trainer_stays_on_the_gpu():
    cfg, plan = cuda_plan("--actor-num-gpus-per-node", "2", "--colocate")
    params = checkpoint_params(cfg.hf_checkpoint)
    engine_bytes_per_param = {"float32": 4, "bfloat16": 2}[engine_dtype(cfg, "cuda")]
    resident = plan_memory(cfg, plan, H100)
    assert resident.ipc_buffer_bytes == params * engine_bytes_per_param  # one handoff a sync
    assert f"weight-sync buffer {params * engine_bytes_per_param / GiB:.2f} GiB" in resident.describe()
    whole = params * engine_bytes_per_param
    assert resident.sizes == estimate(cfg, plan, H100, params, sync_buffer=whole)  # counted in the trainer's share
    assert resident.sizes.trainer_resident - estimate(cfg, plan, H100, params).trainer_resident == (
        whole - cfg.update_weight_buffer_size  # the tiny model is smaller than one bucket
    )
    offloaded = plan_memory(cfg, plan, 512 * 2**20)  # the buffer would stay on the GPU while the trainer is away
    assert offloaded.outcome == "offload" and offloaded.ipc_buffer_bytes == cfg.update_weight_buffer_size
    cfg, plan = cuda_plan("--actor-num-gpus-per-node", "2", "--colocate", "--update-weight-transport", "tensor")
    assert plan_memory(cfg, plan, H100).ipc_buffer_bytes == 0


def test_runs_without_an_estimate_follow_the_flags():
    cfg, plan = cuda_plan("--actor-num-gpus-per-node", "2", "--colocate")
    unknown = plan_memory(cfg, plan, None)
    assert (unknown.offload_train, unknown.release, unknown.why) == (True, ALL_TAGS, "GPU memory unknown")
    cfg, plan = cuda_plan("--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "2")
    apart = plan_memory(cfg, plan, H100)
    assert (apart.offload_train, apart.release, apart.why) == (False, (), "not colocated")
    cpu_cfg = parse_config([*BASE, "--actor-num-gpus-per-node", "2", "--colocate", "--no-offload-train"])
    cpu_plan = plan_resources(cpu_cfg, cuda_available=False, cluster_gpus=None, cores=2)
    cpu = plan_memory(cpu_cfg, cpu_plan, None)
    assert (cpu.offload_train, cpu.release, cpu.why) == (False, ALL_TAGS, "CPU run")
    assert "memory plan (CPU run): trainer kept in place outside training" in cpu.describe()


def test_engine_share_default_is_the_engines():
    from temper.engine import EngineArgs

    assert EngineArgs(model="m").mem_fraction_static == ENGINE_MEM_FRACTION


def test_latent_attention_width_is_nope_plus_rope_per_head():
    """DeepSeek-V3's config.json says head_dim 64 (its RoPE part); a query head is 128 + 64 wide."""
    cfg = {"num_attention_heads": 128, "hidden_size": 7168, "head_dim": 64, "kv_lora_rank": 512,
           "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "num_hidden_layers": 61, "vocab_size": 129280}
    assert ModelSize.of(cfg, 671_000_000_000).attention == 128 * 192
