"""Helpers shared by the train-worker tests (a module of its own: several test folders have a conftest)."""

from __future__ import annotations

from pathlib import Path

import torch

from temper.algo import group_normalize_rewards
from temper.command_line import parse_config
from temper.types import RolloutBatch


def make_cfg(hf_checkpoint, *flags: str, **values):
    """A validated Config from slime flags; `values` are extra flags by field name (True → bare flag)."""
    argv = ["--hf-checkpoint", str(hf_checkpoint)]
    defaults = {"rollout_batch_size": 4, "n_samples_per_prompt": 2, "num_rollout": 4, "lr": 1e-3, "micro_batch_size": 4}
    if values.get("use_dynamic_batch_size"):
        defaults.pop("micro_batch_size")
    for name, value in {**defaults, **values}.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return parse_config(argv + list(flags), check_shape=False)


def toy_batch(
    num_samples: int = 8,
    *,
    group_size: int = 2,
    seed: int = 0,
    min_len: int = 6,
    max_len: int = 14,
    response_len: int = 4,
    vocab: int = 500,
    with_rollout_log_probs: bool = False,
) -> RolloutBatch:
    """Random token sequences with random rewards, group-normalized as the rollout manager does."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (num_samples,), generator=g).tolist()
    tokens = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]
    responses = [min(response_len, n - 2) for n in lengths]
    raw = torch.rand(num_samples, generator=g)
    groups = [i // group_size for i in range(num_samples)]
    masks = [torch.ones(r) for r in responses]
    if num_samples > 1:
        masks[1][0] = 0.0  # one tool token, excluded from the loss
    return RolloutBatch(
        tokens=tokens,
        response_lengths=responses,
        loss_masks=masks,
        rewards=group_normalize_rewards(raw, groups),
        raw_rewards=raw,
        group_indices=groups,
        sample_indices=list(range(num_samples)),
        rollout_log_probs=[-torch.rand(r, generator=g) for r in responses] if with_rollout_log_probs else None,
    )


def params_of(model) -> dict[str, torch.Tensor]:
    """Full copies of every parameter (HF names) of a sharded model."""
    from temper.train.weights import iter_full_parameters

    return {name: t.clone() for name, t in iter_full_parameters(model)}


TARGET_TOKENS = 64
"""The toy task's reward: the share of response tokens with an id below this (≈6% at random init)."""


def toy_reward(response: torch.Tensor) -> float:
    return (response < TARGET_TOKENS).float().mean().item()


def sync_weights(actor, hf_model) -> None:
    """Copy the actor's weights into a plain HF model through the weight-export buckets."""
    state = {name: tensor for bucket in actor.iter_weight_buckets(1 << 20) for name, tensor in bucket}
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    assert not unexpected and all(hf_model.get_parameter(m) is not None for m in missing)


def sample_batch(hf_model, prompts: list[torch.Tensor], n: int, max_new_tokens: int, seed: int) -> RolloutBatch:
    """n sampled responses per prompt (temperature 1), rewarded by `toy_reward`, group-normalized.

    Prompts must share one length (one generate call, no padding). rollout_log_probs are those of the
    sampler's unprocessed logits.
    """
    torch.manual_seed(seed)
    inputs = torch.stack(prompts).repeat_interleave(n, 0)
    with torch.no_grad():
        out = hf_model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    responses = out.sequences[:, inputs.shape[1] :]
    step_lp = torch.log_softmax(torch.stack(out.logits, 1).float(), -1)  # [rows, R, V]
    log_probs = step_lp.gather(-1, responses[..., None]).squeeze(-1)
    groups = [i // n for i in range(len(inputs))]
    raw = torch.tensor([toy_reward(r) for r in responses])
    return RolloutBatch(
        tokens=list(out.sequences.clone()),
        response_lengths=[responses.shape[1]] * len(inputs),
        loss_masks=[torch.ones(responses.shape[1]) for _ in groups],
        rewards=group_normalize_rewards(raw, groups),
        raw_rewards=raw,
        group_indices=groups,
        sample_indices=list(range(len(inputs))),
        rollout_log_probs=list(log_probs.clone()),
    )


def spawn_ranks(fn, world_size: int, backend: str, tmp_dir, *args) -> list:
    """Run fn(*args) on `world_size` fresh processes forming one process group; their return values.

    `fn` must be a module-level function (spawned processes import it by name). With NCCL, rank r
    uses cuda:r. Results travel through torch.save files in `tmp_dir`.
    """
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    procs = [
        ctx.Process(target=_rank_main, args=(fn, rank, world_size, backend, str(tmp_dir), args))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert all(p.exitcode == 0 for p in procs), f"rank exit codes {[p.exitcode for p in procs]}"
    return [torch.load(Path(tmp_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank_main(fn, rank: int, world_size: int, backend: str, tmp_dir: str, args: tuple) -> None:
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(rank)
    store = Path(tmp_dir) / f"store-{world_size}"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.save(fn(*args), Path(tmp_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def computed(metrics: dict) -> dict:
    """`metrics` without the ones measured from the machine (memory peaks, MFU: Actor's MEASURED_METRICS)."""
    from temper.train.actor import MEASURED_METRICS

    return {k: v for k, v in metrics.items() if k not in MEASURED_METRICS}
