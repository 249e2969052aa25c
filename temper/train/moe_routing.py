"""MoE routers in training: routing replay and the routers' auxiliary losses.

Hugging Face's MoE blocks call a router module that returns ``(router_logits, scores, expert_indices)``
(Qwen3-MoE's `Qwen3MoeTopKRouter`, and the routers written like it: a softmax over the logits, the top k,
optionally renormalized with ``norm_topk_prob``). `RouterHooks` puts a forward hook on each such router:

- routing replay (slime's ``--use-routing-replay``, arXiv 2507.18071): the old-log-prob forward records
  every router's expert indices per micro-batch; the training forward of the same micro-batch replays
  them, the scores recomputed from the current logits at the recorded experts (so gradients still reach
  the router). Training then routes every token as the policy that computed the old log-probs did, which
  keeps the importance ratio free of routing flips. Keyed by micro-batch and router, a replay also serves
  the recomputation of activation checkpointing. A micro-batch with no record routes as usual.
- rollout routing replay (R3, slime's ``--use-rollout-routing-replay``, arXiv 2510.11370): the routing is
  the engine's, given per micro-batch (`use_routing`: [tokens, num_hidden_layers, top_k] expert ids, a
  row of -1 routes that token freely), in the old-log-prob and the training forwards alike; scores as
  above. Training then routes every token as the engine that sampled it did.
- the routers' losses (Megatron's ``--moe-aux-loss-coeff`` and ``--moe-z-loss-coeff``, summed over the
  MoE layers as Megatron applies them per layer): the Switch load-balancing loss
  ``coeff x E x sum_e f_e P_e`` (f_e: the share of the micro-batch's top-k assignments that went to
  expert e, P_e: its mean router probability) and the z-loss ``coeff x mean(logsumexp(logits)^2)``.
  With ``--moe-router-load-balancing-type seq_aux_loss`` the balance term is DeepSeek-V3's sequence-wise
  one (arXiv 2412.19437, eq. 17-20; Megatron's ``seq_aux_loss``): f and P over each sequence's own tokens,
  ``E x sum_e f_{s,e} P_{s,e}`` averaged over the sequences of the micro-batch. The trainer packs several
  sequences into one row, so the hooks are told the row's bounds (`sequences`, from the micro-batch's
  ``cu_seqlens``): each sample is one sequence whatever the packing (Megatron's formula takes the
  [seq, batch] layout's rows as the sequences). As in Megatron, a sigmoid router's (DeepSeek-V3's)
  probabilities P are its sigmoid scores normalised to sum to 1 over the experts.

`route_in_fp32` (``--moe-router-dtype fp32``): the Qwen-MoE routers compute their logits in the compute
dtype (bf16 on GPU) and only the softmax in fp32; it makes them compute the logits, softmax and top-k in fp32
and hand the experts fp32 weights, as Hugging Face's DeepSeek-V3 and GLM-4.5 routers do already.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Hashable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP32_ROUTERS = ("DeepseekV3TopkRouter", "Glm4MoeTopkRouter")
"""Routers that compute in fp32 whatever the compute dtype (they cast their input and weight to fp32)."""
SOFTMAX_ROUTERS = ("Qwen3MoeTopKRouter", "Qwen2MoeTopKRouter")
"""Routers whose forward is `fp32_softmax_router`'s in the compute dtype: logits = linear(hidden, weight), a
float32 softmax, its top k renormalised when ``norm_topk_prob``, the weights cast to the logits' dtype."""
MIXTRAL_ROUTERS = ("MixtralTopKRouter",)
"""Softmax routers with no ``norm_topk_prob``: they always renormalise the top k, and weigh in fp32."""
LOAD_BALANCING = ("aux_loss", "seq_aux_loss")


def find_routers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the model's top-k routers that `RouterHooks` handles (see the module docstring)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__.lower().endswith("topkrouter") and hasattr(module, "top_k")
    ]


def router_layer(name: str) -> int | None:
    """The decoder layer index in a router's module name (``model.layers.3.mlp.gate`` -> 3)."""
    found = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return int(found[1]) if found else None


class RouterHooks:
    """Routing replay and router losses over `model`'s routers (see the module docstring).

    `record(key)` / `replay(key)` / `route_freely()` set what the routers do until the next call: a
    training forward and the backward that may recompute it both run under one setting. `losses()`
    returns the router losses of the forward since the last `record`/`replay`/`route_freely` call.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        aux_loss_coeff: float = 0.0,
        z_loss_coeff: float = 0.0,
        load_balancing: str = "aux_loss",
        why: str = "",
    ):
        if aux_loss_coeff and load_balancing not in LOAD_BALANCING:
            raise ValueError(f"load_balancing {load_balancing!r}: the balance losses are {', '.join(LOAD_BALANCING)}")
        self.routers = find_routers(model)
        if not self.routers:
            kinds = sorted({type(m).__name__ for m in model.modules() if "router" in type(m).__name__.lower()})
            arch = (getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__])[0]
            raise ValueError(
                f"{why or 'routing replay and router losses'}: {arch} has no top-k router temper "
                f"knows (a module named *TopKRouter returning (logits, scores, indices)); found {kinds or 'none'}"
            )
        self.aux_loss_coeff = aux_loss_coeff
        self.z_loss_coeff = z_loss_coeff
        self.load_balancing = load_balancing
        self.cu_seqlens: Tensor | None = None  # the current micro-batch's sequence bounds (seq_aux_loss)
        self.mode: str | None = None
        self.key: Hashable = None
        self.recorded: dict[tuple[Hashable, str], Tensor] = {}
        self.given: Tensor | None = None  # the engine's routing of the current micro-batch (`use_routing`)
        self._seen: list[tuple[Tensor, Tensor, nn.Module]] = []  # (logits, indices, router) of the current forward
        self._handles = [r.register_forward_hook(functools.partial(self._hook, name)) for name, r in self.routers]

    # -- settings ------------------------------------------------------------------------------------

    def record(self, key: Hashable) -> None:
        self.mode, self.key, self._seen = "record", key, []

    def replay(self, key: Hashable) -> None:
        """Replay `key`'s recorded routing if there is one, else route freely."""
        recorded = (key, self.routers[0][0]) in self.recorded
        self.mode, self.key, self._seen = ("replay" if recorded else None), key, []

    def use_routing(self, routed: Tensor | None) -> None:
        """Route as `routed` says: [tokens of the micro-batch, num_hidden_layers, top_k] expert ids (the
        engine's, R3), a token whose row is -1 freely; None routes every token freely."""
        if routed is not None:
            unplaced = [name for name, _ in self.routers if router_layer(name) is None]
            if unplaced:
                raise ValueError(f"rollout routing replay: router {unplaced[0]} is in no model.layers.N")
        self.mode, self.key, self._seen = ("given" if routed is not None else None), None, []
        self.given = routed

    def sequences(self, cu_seqlens: Tensor | None) -> None:
        """The sequence bounds of the packed row the next forward runs on ([N+1] int: 0, then the running sums
        of the sequences' lengths); the sequence-wise balance loss is computed within each of them."""
        self.cu_seqlens = cu_seqlens

    def route_freely(self) -> None:
        self.mode, self.key, self._seen, self.given = None, None, [], None

    def clear(self) -> None:
        """Forget every record (a new rollout)."""
        self.recorded.clear()
        self.route_freely()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    # -- the hook ------------------------------------------------------------------------------------

    def _hook(self, name: str, module: nn.Module, args: Any, output: Any) -> Any:
        logits, scores, indices = output
        if self.mode == "record":
            self.recorded[(self.key, name)] = indices.detach()
        elif self.mode == "replay":
            indices = self.recorded[(self.key, name)]
            if indices.shape[0] != logits.shape[0]:
                raise RuntimeError(
                    f"routing replay: router {name} recorded {indices.shape[0]} tokens for micro-batch {self.key!r} "
                    f"but routes {logits.shape[0]} now (the old-log-prob and training passes must pack alike)"
                )
            scores = replayed_scores(module, logits, indices)
        elif self.mode == "given":
            indices = self._given_indices(name, logits, indices)
            scores = replayed_scores(module, logits, indices)
        if torch.is_grad_enabled() and (self.aux_loss_coeff or self.z_loss_coeff):
            self._seen.append((logits, indices, module))
        return logits, scores, indices

    def _given_indices(self, name: str, logits: Tensor, indices: Tensor) -> Tensor:
        """The engine's experts of router `name`'s layer where it has them, the router's own elsewhere."""
        given = self.given[:, router_layer(name)].to(device=indices.device, dtype=indices.dtype)
        if given.shape != indices.shape:
            raise RuntimeError(
                f"rollout routing replay: router {name} routes {tuple(indices.shape)} (tokens, top-k) but the "
                f"engine's routing of this micro-batch holds {tuple(given.shape)}; the engine and the trainer "
                "must serve the same model"
            )
        return torch.where(given[:, :1] >= 0, given, indices)

    # -- losses --------------------------------------------------------------------------------------

    def losses(self) -> tuple[Tensor | None, dict[str, Tensor]]:
        """(the router losses to add to the micro-batch's loss, or None; their metrics) of the forward
        since the last setting. A recomputation during backward does not count twice: only the routers'
        first call per forward is used."""
        if not self._seen:
            return None, {}
        calls = self._seen[: len(self.routers)]
        total = torch.zeros((), device=calls[0][0].device, dtype=torch.float32)
        metrics: dict[str, Tensor] = {}
        if self.aux_loss_coeff:
            aux = sum(self._balance_loss(logits, indices, router) for logits, indices, router in calls)
            total = total + self.aux_loss_coeff * aux
            metrics["moe_aux_loss"] = (aux / len(calls)).detach()
        if self.z_loss_coeff:
            z = sum(z_loss(logits) for logits, _, _ in calls)
            total = total + self.z_loss_coeff * z
            metrics["moe_z_loss"] = (z / len(calls)).detach()
        return total, metrics

    def _balance_loss(self, logits: Tensor, indices: Tensor, router: nn.Module) -> Tensor:
        probs = balance_probs(router, logits)
        if self.load_balancing == "aux_loss":
            return load_balancing_loss(probs, indices)
        if self.cu_seqlens is None:
            raise RuntimeError("seq_aux_loss: the micro-batch's sequence bounds were not given (RouterHooks.sequences)")
        return sequence_load_balancing_loss(probs, indices, self.cu_seqlens)


def route_in_fp32(model: nn.Module) -> None:
    """Make every router of `model` compute in fp32 (``--moe-router-dtype fp32``): a Qwen-MoE router's forward
    becomes `fp32_softmax_router`; a router that works in fp32 already is left alone. ValueError for a router
    temper does not know."""
    for name, router in find_routers(model):
        kind = type(router).__name__
        if kind in FP32_ROUTERS:
            continue
        if kind not in SOFTMAX_ROUTERS:
            raise ValueError(
                f"--moe-router-dtype fp32: router {name} is a {kind}, which temper cannot make compute in fp32 "
                f"(it knows {', '.join(SOFTMAX_ROUTERS + FP32_ROUTERS)}); drop the flag"
            )
        router.forward = types.MethodType(fp32_softmax_router, router)


def fp32_softmax_router(router: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hugging Face's Qwen-MoE router computed in fp32: (logits [T, E], weights [T, k], experts [T, k]) with the
    hidden states and the router weight (the compute copy: bf16 under FSDP's mixed precision, as DeepSeek-V3's
    router gets it) cast to fp32, softmax and top-k in fp32, the k renormalised when ``norm_topk_prob``, and the
    weights left in fp32 (the experts' outputs are weighed in fp32, then summed and cast back)."""
    hidden = hidden_states.reshape(-1, router.hidden_dim).float()
    logits = F.linear(hidden, router.weight.float())
    weights, experts = torch.topk(torch.softmax(logits, dim=-1), router.top_k, dim=-1)
    if router.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return logits, weights, experts


def replayed_scores(router: nn.Module, logits: Tensor, indices: Tensor) -> Tensor:
    """The scores a top-k router gives the experts `indices` under `logits`, in the logits' dtype: softmax
    probabilities renormalized over the k when the router's ``norm_topk_prob`` says so (Mixtral's: always,
    and in fp32, as its router does); for a router with
    an ``e_score_correction_bias`` (DeepSeek-V3's) sigmoid scores, renormalized likewise and scaled by its
    ``routed_scaling_factor`` (the bias only chooses experts, it does not weigh them)."""
    if hasattr(router, "e_score_correction_bias"):
        scores = logits.float().sigmoid().gather(-1, indices.long())
        if getattr(router, "norm_topk_prob", False):
            scores = scores / (scores.sum(dim=-1, keepdim=True) + 1e-20)
        return (scores * router.routed_scaling_factor).to(logits.dtype)
    mixtral = type(router).__name__ in MIXTRAL_ROUTERS
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    scores = probs.gather(-1, indices.long())
    if getattr(router, "norm_topk_prob", mixtral):
        scores = scores / scores.sum(dim=-1, keepdim=True)
    return scores if mixtral else scores.to(logits.dtype)


def balance_probs(router: nn.Module, logits: Tensor) -> Tensor:
    """[T, E] fp32 router probabilities of the balance losses: the softmax of the logits, or for a sigmoid router
    (one with an ``e_score_correction_bias``, DeepSeek-V3's) its sigmoid scores normalised over the experts."""
    if hasattr(router, "e_score_correction_bias"):
        scores = logits.float().sigmoid()
        return scores / (scores.sum(dim=-1, keepdim=True) + 1e-20)
    return torch.softmax(logits, dim=-1, dtype=torch.float32)


def load_balancing_loss(probs: Tensor, indices: Tensor) -> Tensor:
    """Switch load balancing over the T tokens: E x sum_e f_e P_e (f_e: expert e's share of the T x k top-k
    assignments `indices` [T, k], P_e: its mean probability in `probs` [T, E])."""
    num_experts = probs.shape[-1]
    counts = torch.zeros(num_experts, device=probs.device, dtype=torch.float32)
    counts.scatter_add_(0, indices.reshape(-1).long(), torch.ones(indices.numel(), device=probs.device))
    share = counts / max(indices.numel(), 1)
    return num_experts * torch.sum(share * probs.mean(dim=0))


def sequence_load_balancing_loss(probs: Tensor, indices: Tensor, cu_seqlens: Tensor) -> Tensor:
    """DeepSeek-V3's sequence-wise balance loss: `load_balancing_loss` within each sequence s of a packed row
    (tokens cu_seqlens[s] to cu_seqlens[s+1] of `probs` [T, E] and `indices` [T, k]), averaged over the N
    sequences: mean_s E x sum_e (c_{s,e} / (L_s k)) (p_{s,e} / L_s), c: assignments, p: summed probabilities."""
    num_tokens, num_experts = probs.shape
    lengths = cu_seqlens.diff().to(device=probs.device, dtype=torch.long)
    n = lengths.shape[0]
    sequence = torch.repeat_interleave(torch.arange(n, device=probs.device), lengths, output_size=num_tokens)
    prob_sums = probs.new_zeros(n, num_experts).index_add_(0, sequence, probs)
    slots = (sequence[:, None] * num_experts + indices.long()).reshape(-1)
    counts = probs.new_zeros(n * num_experts).index_add_(0, slots, probs.new_ones(slots.shape[0]))
    per_sequence = (counts.view(n, num_experts) * prob_sums).sum(dim=-1) / (lengths * lengths * indices.shape[-1])
    return num_experts * per_sequence.mean()


def z_loss(logits: Tensor) -> Tensor:
    """The router z-loss: mean over tokens of logsumexp(logits)^2."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()
