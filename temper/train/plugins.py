"""The trainer's plug points, with slime's signatures, and the adapters between slime's layout and temper's.

    --loss-type custom_loss --custom-loss-function-path
        fn(args, batch, logits, sum_of_sample_mean) -> (loss, metrics)
    --custom-advantage-function-path
        fn(args, rollout_data) -> None, setting rollout_data["advantages"] and rollout_data["returns"]
    --custom-tis-function-path (with --use-tis)
        fn(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths,
           response_lengths) -> (pg_loss, loss_masks, metrics)
    --custom-pg-loss-reducer-function-path
        fn(total_lengths, response_lengths, loss_masks, calculate_per_token_loss) -> reducer(x) -> scalar

Layouts are slime's: per-token values of a micro-batch are one flat [ΣR_i] tensor, per-sample values lists
of [R_i] tensors; `args` is the run's Config (slime's flag names as attributes). Each path is loaded and
its parameters checked against the call temper makes (`inspect.signature(fn).bind`) when the command line
is parsed, before Ray starts (`check_plug_points`): a missing file or a signature that does not fit is a
PluginError naming the flag and the expected signature. A result of the wrong type raises
PluginResultError naming the flag, at the call.

Reductions are slime's: sum_of_sample_mean(x) = Σ_i Σ_t m_it·x_it / max(Σ_t m_it, 1), a sum over the
micro-batch's samples (with --calculate-per-token-loss: Σ_i Σ_t m_it·x_it). temper divides what such a
reduction returns by the micro-batch's samples (or Σ_i max(Σ_t m_it, 1)) and weighs the micro-batch by
its share of the step, so the step's loss is slime's: the sum over the step's samples divided by their
count (or by the step's Σ_i max(Σ_t m_it, 1)).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from temper.algo import PgLossReducer, TisFunction, compute_approx_kl, masked_mean, masked_whiten, token_count
from temper.data.plugins import PluginError, load_function
from temper.train.train_data import TrainData, pad, pad_flat, unpad


class PluginResultError(TypeError):
    """A plug-in returned something of the wrong type or shape; the message names the flag and what it expects."""


@dataclass(frozen=True)
class PlugPoint:
    """One trainer plug point: its flag, its Config field, slime's signature, and the call temper makes."""

    flag: str
    field: str
    signature: str
    args: tuple[str, ...] = ()
    kwargs: tuple[str, ...] = ()

    def fits(self, fn: Callable[..., Any]) -> str | None:
        """None when `fn` accepts temper's call, else why not."""
        if inspect.isclass(fn):
            return f"{fn.__name__} is a class"
        if inspect.iscoroutinefunction(fn):
            return f"{fn.__name__} is async (the trainer calls it synchronously)"
        try:
            inspect.signature(fn).bind(*self.args, **dict.fromkeys(self.kwargs))
        except TypeError as e:
            return f"{getattr(fn, '__name__', fn)}{_signature(fn)} cannot be called so: {e}"
        except ValueError:  # a builtin without a signature: let the call decide
            return None
        return None


PLUG_POINTS = {
    "loss": PlugPoint(
        "--custom-loss-function-path",
        "custom_loss_function_path",
        "fn(args, batch, logits, sum_of_sample_mean) -> (loss, metrics)",
        args=("args", "batch", "logits", "sum_of_sample_mean"),
    ),
    "advantage": PlugPoint(
        "--custom-advantage-function-path",
        "custom_advantage_function_path",
        'fn(args, rollout_data) -> None, setting rollout_data["advantages"] and rollout_data["returns"]',
        args=("args", "rollout_data"),
    ),
    "tis": PlugPoint(
        "--custom-tis-function-path",
        "custom_tis_function_path",
        "fn(args, *, pg_loss, train_log_probs, rollout_log_probs, loss_masks, total_lengths, response_lengths, "
        "**kwargs) -> (pg_loss, loss_masks, metrics)",
        kwargs=("args", "pg_loss", "train_log_probs", "rollout_log_probs", "loss_masks", "total_lengths",
                "response_lengths"),
    ),  # fmt: skip
    "reducer": PlugPoint(
        "--custom-pg-loss-reducer-function-path",
        "custom_pg_loss_reducer_function_path",
        "fn(total_lengths, response_lengths, loss_masks, calculate_per_token_loss) -> reducer, "
        "where reducer(x: [ΣR_i] tensor) -> scalar tensor",
        args=("total_lengths", "response_lengths", "loss_masks", "calculate_per_token_loss"),
    ),
}

_SLIME_LOSS = "slime.backends.megatron_utils.loss"
BUILTIN_TIS = {f"{_SLIME_LOSS}.vanilla_tis_function": "truncate", f"{_SLIME_LOSS}.icepop_function": "icepop"}
"""slime's own TIS functions, which temper.algo.tis computes (--tis-clip-low/--tis-clip)."""


@dataclass(frozen=True)
class TrainPlugins:
    """The loaded user functions (None where the flag is not set) and the built-in TIS mode."""

    loss: Callable[..., Any] | None = None
    advantage: Callable[..., Any] | None = None
    tis: Callable[..., Any] | None = None
    reducer: Callable[..., Any] | None = None
    tis_mode: str = "truncate"

    @classmethod
    def load(cls, cfg) -> TrainPlugins:
        """Load and check every plug point `cfg` sets; PluginError naming the flag and the expected signature."""
        loaded = {name: load_plug_point(cfg, name) for name in PLUG_POINTS}
        return cls(**loaded, tis_mode=BUILTIN_TIS.get(cfg.custom_tis_function_path or "", "truncate"))


def load_plug_point(cfg, name: str) -> Callable[..., Any] | None:
    point = PLUG_POINTS[name]
    path = getattr(cfg, point.field)
    if not path or path in BUILTIN_TIS:
        return None
    try:
        fn = load_function(path, flag=point.flag)
    except PluginError as e:
        raise PluginError(f"{e}; it must be slime's {point.signature}") from None
    problem = point.fits(fn)
    if problem:
        raise PluginError(f"{point.flag} {path!r}: {problem}; expected slime's signature {point.signature}")
    return fn


def check_plug_points(cfg) -> None:
    """The start-up check: load every trainer plug point `cfg` sets (raising PluginError for a missing file or
    a wrong signature), and spell a relative `file.py` path absolute, so that the train workers, whatever
    their working directory, load the same file."""
    for name, point in PLUG_POINTS.items():
        path = getattr(cfg, point.field)
        if path and path not in BUILTIN_TIS:
            setattr(cfg, point.field, _absolute(path))
    TrainPlugins.load(cfg)


def _absolute(path: str) -> str:
    if path.endswith(".py"):
        return os.path.abspath(path)
    file, _, name = path.rpartition(":")
    return f"{os.path.abspath(file)}:{name}" if file.endswith(".py") else path


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _fail(name: str, got: str) -> PluginResultError:
    point = PLUG_POINTS[name]
    return PluginResultError(f"{point.flag}: {got}; expected slime's signature {point.signature}")


# -- layout ------------------------------------------------------------------------------------------


def flatten(padded: Tensor, lengths: list[int]) -> Tensor:
    """[B, T] → the flat [ΣR_i] concatenation of each row's first R_i entries (differentiable)."""
    return torch.cat([row[:n] for row, n in zip(padded, lengths)])


def _per_token(name: str, what: str, value: Any, lengths: list[int]) -> Tensor:
    """`value` checked to be a flat [ΣR_i] tensor."""
    if not isinstance(value, Tensor) or value.shape != (sum(lengths),):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise _fail(name, f"{what} is {shape}, expected a flat tensor of the {sum(lengths)} response tokens")
    return value


def _per_sample(name: str, what: str, value: Any, lengths: list[int]) -> list[Tensor]:
    """`value` checked to be a list of [R_i] tensors, one per sample."""
    ok = isinstance(value, (list, tuple)) and len(value) == len(lengths)
    ok = ok and all(isinstance(t, Tensor) and t.numel() == n for t, n in zip(value, lengths))
    if not ok:
        expected = f"expected a list of {len(lengths)} tensors of lengths {lengths}"
        raise _fail(name, f"{what} is {_describe(value)}, {expected}")
    return [t.reshape(-1) for t in value]


def _scalar(name: str, what: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise _fail(name, f"{what} is {_describe(value)}, expected a scalar tensor")
    return value.reshape(())


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        items = ", ".join([_describe(v) for v in value[:3]] + ["..."] * (len(value) > 3))
        return f"a {type(value).__name__} of {len(value)} ({items})"
    return f"a {type(value).__name__}"


# -- advantages --------------------------------------------------------------------------------------


def custom_advantages(fn: Callable[..., Any], cfg, data: TrainData) -> tuple[list[Tensor], list[Tensor]]:
    """--custom-advantage-function-path: (advantages, returns), lists of [R_i], from slime's
    fn(args, rollout_data), which sets rollout_data["advantages"] and ["returns"].

    rollout_data holds slime's keys: tokens, total_lengths, response_lengths, loss_masks, rewards (the
    rollout manager's, group-normalized), raw_reward, log_probs (old: recomputed, or the engine's with
    --use-rollout-logprobs), ref_log_probs, rollout_log_probs, values (PPO), kl (KL(old‖ref) with
    --kl-loss-type when --kl-coef ≠ 0, else zeros), plus temper's sample_indices and group_indices.
    --normalize-advantages then whitens the advantages, as slime does after a custom function.
    """
    batch = data.batch
    rollout_data = {
        "tokens": list(batch.tokens),
        "total_lengths": batch.total_lengths,
        "response_lengths": list(batch.response_lengths),
        "loss_masks": list(batch.loss_masks),
        "rewards": batch.rewards.tolist(),
        "raw_reward": batch.raw_rewards.tolist(),
        "log_probs": data.old_log_probs,
        "ref_log_probs": data.ref_log_probs,
        "rollout_log_probs": batch.rollout_log_probs,
        "values": data.values,
        "kl": _slime_kl(cfg, data),
        "sample_indices": list(batch.sample_indices),
        "group_indices": list(batch.group_indices),
    }
    fn(cfg, rollout_data)
    lengths = batch.response_lengths
    missing = [key for key in ("advantages", "returns") if key not in rollout_data]
    if missing:
        raise _fail("advantage", f"rollout_data has no {' and no '.join(map(repr, missing))} after the call")
    advantages, returns = (
        [t.float() for t in _per_sample("advantage", f"rollout_data[{key!r}]", rollout_data[key], lengths)]
        for key in ("advantages", "returns")
    )
    if cfg.normalize_advantages:
        advantages = unpad(masked_whiten(pad(advantages), pad(batch.loss_masks)), lengths)
    return advantages, returns


def _slime_kl(cfg, data: TrainData) -> list[Tensor]:
    if cfg.kl_coef == 0 or data.old_log_probs is None or data.ref_log_probs is None:
        return [torch.zeros(n) for n in data.batch.response_lengths]
    return [compute_approx_kl(old, ref, cfg.kl_loss_type) for old, ref in zip(data.old_log_probs, data.ref_log_probs)]


# -- policy loss: TIS and the reducer ------------------------------------------------------------------


def tis_function(fn: Callable[..., Any], cfg, total_lengths: list[int], lengths: list[int]) -> TisFunction:
    """--custom-tis-function-path as temper.algo's TisFunction over one micro-batch's padded [B, T] tensors.

    fn gets pg_loss flat [ΣR_i] (carrying the gradient), train_log_probs (old), rollout_log_probs and
    loss_masks as lists of [R_i]; it returns pg_loss [ΣR_i], loss_masks (list of [R_i]; zeros reject tokens
    from the numerator, the denominator keeps the original masks) and metrics {name: [ΣR_i] tensor or
    scalar}, reported as token means over the original masks.
    """

    def apply(pg_losses: Tensor, old: Tensor, rollout: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, dict]:
        result = fn(
            args=cfg,
            pg_loss=flatten(pg_losses, lengths),
            train_log_probs=unpad(old.detach(), lengths),
            rollout_log_probs=unpad(rollout, lengths),
            loss_masks=unpad(mask.float(), lengths),
            total_lengths=total_lengths,
            response_lengths=lengths,
        )
        if not isinstance(result, (tuple, list)) or len(result) != 3:
            raise _fail("tis", f"it returned {_describe(result)}")
        pg_loss, masks, metrics = result
        pg_loss = _per_token("tis", "the returned pg_loss", pg_loss, lengths)
        masks = _per_sample("tis", "the returned loss_masks", masks, lengths)
        if not isinstance(metrics, dict):
            raise _fail("tis", f"the returned metrics are {_describe(metrics)}, expected a dict of tensors")
        width = pg_losses.shape[1]
        padded_masks = pad_flat(torch.cat(masks).to(mask.dtype), lengths)[:, :width]
        reported = {str(k): _tis_metric(k, v, mask, lengths) for k, v in metrics.items()}
        return pad_flat(pg_loss, lengths)[:, :width], padded_masks, reported

    return apply


def _tis_metric(name: Any, value: Any, mask: Tensor, lengths: list[int]) -> Tensor:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.detach().reshape(())
    value = _per_token("tis", f"metric {name!r}", value, lengths)
    return masked_mean(pad_flat(value.detach().to(mask.device), lengths)[:, : mask.shape[1]], mask)


def pg_loss_reducer(
    fn: Callable[..., Any], cfg, total_lengths: list[int], lengths: list[int], loss_mask: Tensor
) -> PgLossReducer:
    """--custom-pg-loss-reducer-function-path as temper.algo's PgLossReducer for one micro-batch.

    fn(total_lengths, response_lengths, loss_masks, calculate_per_token_loss) is called with the
    micro-batch's masks after TIS (slime's order) and returns the reducer; the reducer's value, a sum over
    the micro-batch as slime's reducers are, is divided by the micro-batch's samples (or, per token, by
    Σ_i max(Σ_t m_it, 1) of the original loss_mask [B, T]) to give temper's micro-batch mean.
    """
    per_token = cfg.calculate_per_token_loss
    normalizer = token_count(loss_mask) if per_token else len(lengths)

    def reduce(pg_losses: Tensor, pg_mask: Tensor) -> Tensor:
        reducer = fn(total_lengths, lengths, unpad(pg_mask.float(), lengths), per_token)
        if not callable(reducer):
            raise _fail("reducer", f"it returned {_describe(reducer)}, not a reducer function")
        value = _scalar("reducer", "the reducer's value", reducer(flatten(pg_losses, lengths)))
        return value / normalizer

    return reduce


# -- custom loss -------------------------------------------------------------------------------------


def sum_of_sample_mean(lengths: list[int], masks: list[Tensor], per_token: bool) -> Callable[[Tensor], Tensor]:
    """slime's reducer over one micro-batch: x [ΣR_i] → Σ_i Σ_t m_it·x_it / max(Σ_t m_it, 1), or with
    per_token the plain Σ_i Σ_t m_it·x_it."""

    def reduce(x: Tensor) -> Tensor:
        pieces = torch.split(x, lengths)
        if per_token:
            return sum((p * m).sum() for p, m in zip(pieces, masks))
        return sum((p * m).sum() / m.sum().clamp(min=1) for p, m in zip(pieces, masks))

    return reduce


def micro_batch_dict(data: TrainData, positions: list[int], device: torch.device) -> dict[str, Any]:
    """slime's micro-batch for a custom loss: the samples at `positions`, per-sample tensors on `device`."""
    batch = data.batch
    pick = lambda xs: None if xs is None else [xs[p].to(device) for p in positions]  # noqa: E731
    out = {
        "unconcat_tokens": pick(batch.tokens),
        "total_lengths": [len(batch.tokens[p]) for p in positions],
        "response_lengths": [batch.response_lengths[p] for p in positions],
        "loss_masks": pick(batch.loss_masks),
        "advantages": pick(data.advantages),
        "returns": pick(data.returns),
        "log_probs": pick(data.old_log_probs),
        "ref_log_probs": pick(data.ref_log_probs),
        "rollout_log_probs": pick(batch.rollout_log_probs),
        "values": pick(data.values),
        "rewards": [batch.rewards[p].item() for p in positions],
        "raw_reward": [batch.raw_rewards[p].item() for p in positions],
        "sample_indices": [batch.sample_indices[p] for p in positions],
    }
    return {key: value for key, value in out.items() if value is not None}


def custom_loss(fn: Callable[..., Any], cfg, batch: dict[str, Any], logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """--loss-type custom_loss: slime's fn(args, batch, logits, sum_of_sample_mean) on one micro-batch.

    logits: [1, S, V] float32 over the packed row (the samples' tokens one after another, as slime packs
    them; not divided by --rollout-temperature). Returns temper's micro-batch mean of the loss and of each
    metric: fn's values, sums over the micro-batch as slime's reducers give, divided by its samples (or,
    with --calculate-per-token-loss, by Σ_i max(Σ_t m_it, 1)).
    """
    lengths, masks = batch["response_lengths"], batch["loss_masks"]
    per_token = cfg.calculate_per_token_loss
    result = fn(cfg, batch, logits, sum_of_sample_mean(lengths, masks, per_token))
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise _fail("loss", f"it returned {_describe(result)}")
    loss, metrics = result
    loss = _scalar("loss", "the returned loss", loss)
    if not isinstance(metrics, dict):
        raise _fail("loss", f"the returned metrics are {_describe(metrics)}, expected a dict of scalar tensors")
    normalizer = sum(max(m.sum().item(), 1) for m in masks) if per_token else len(lengths)
    reported = {
        str(k): _scalar("loss", f"metric {k!r}", torch.as_tensor(v)).detach() / normalizer for k, v in metrics.items()
    }
    return loss / normalizer, reported
