"""An exact checksum of a weight tensor, computed where the tensor is (GPU or CPU): the weight sync's check.

    checksum(t) = Σ_i h_i · (1 + i mod (P − 1))  mod P,   P = 2^31 − 1 (a prime)

over the tensor's raw bytes read as 16-bit integers h_i (`int16`; one byte each for 1-byte dtypes), in
row-major order of its elements, whatever its strides. Integer arithmetic throughout (each product is
reduced mod P before the sum, so nothing overflows int64), hence the same number on any device, for
any memory layout and any chunking: the trainer computes it over what it sent, cast to the engine's
dtype, the engine over its copy in the Hugging Face layout (`WeightMap.full_view`), and equal weights
give equal checksums.

What it catches: any single changed element (its h_i move by less than P, and the position weight is
never 0 mod P; a 4-byte element that changes in both halves is missed with probability about 1/P);
two different elements less than P − 1 positions apart that trade places (a transposed or misordered
shard); a changed dtype or shape (compared separately by the callers' names and dtypes).

Cost: one pass over the tensor in chunks of `CHUNK` 16-bit words (a few int64 temporaries of that
size); the result stays on the device as a 0-dim int64 tensor until `to_ints` copies a list of them
at once, so a sender does not wait for the device tensor by tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

P = 2**31 - 1
CHUNK = 1 << 22
"""16-bit words per pass: int64 temporaries of 32 MiB (a sync may run beside an engine's weights)."""


def weight_checksum(tensor: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """The checksum (module docstring) of `tensor` cast to `dtype` (default: its own), as a 0-dim int64
    tensor on the tensor's device.

    For positions below P − 1 (every tensor of fewer than 2^31 − 2 words) the position weight is 1 + i, so
    a chunk of words h_j starting at word s adds Σ_j h_j (1 + j) + s · Σ_j h_j: two sums against a fixed
    ramp, with the products reduced mod P only once per chunk (each chunk sum stays below 2^63)."""
    flat = tensor.detach().reshape(-1)
    dtype = dtype or flat.dtype
    words_per_element = max(dtype.itemsize // 2, 1)
    if flat.numel() * words_per_element >= P - 1:
        return _checksum_long(flat, dtype)
    step = CHUNK // words_per_element  # elements a chunk
    ramp = _ramp(flat.device)
    if flat.numel() <= step:  # most tensors: one chunk starting at word 0, four kernels
        words = _words(flat.to(dtype)).to(torch.int64)
        return (words * ramp[: words.numel()]).sum().remainder_(P)
    weighted, plain, starts = [], [], []
    for first in range(0, flat.numel(), step):
        words = _words(flat[first : first + step].to(dtype)).to(torch.int64)
        weighted.append((words * ramp[: words.numel()]).sum())
        plain.append(words.sum())
        starts.append(first * words_per_element)
    if not starts:
        return torch.zeros((), dtype=torch.int64, device=flat.device)
    weighted_sums = torch.stack(weighted).remainder_(P)
    shifts = torch.tensor(starts, dtype=torch.int64).to(flat.device, non_blocking=True)
    shifted = torch.stack(plain).remainder_(P).mul_(shifts).remainder_(P)
    return (weighted_sums.sum() + shifted.sum()).remainder_(P)


_RAMPS: dict[torch.device, Tensor] = {}


def _ramp(device: torch.device) -> Tensor:
    """1, 2, …, CHUNK as int64 on `device` (made once per device)."""
    ramp = _RAMPS.get(device)
    if ramp is None or ramp.numel() < CHUNK:
        ramp = _RAMPS[device] = torch.arange(1, CHUNK + 1, dtype=torch.int64, device=device)
    return ramp


def _checksum_long(flat: Tensor, dtype: torch.dtype) -> Tensor:
    """The general form, for tensors of 2^31 − 2 words or more (positions wrap mod P − 1)."""
    words_per_element = max(dtype.itemsize // 2, 1)
    step = CHUNK // words_per_element
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for first in range(0, flat.numel(), step):
        words = _words(flat[first : first + step].to(dtype))
        position = torch.arange(first * words_per_element, first * words_per_element + words.numel(),
                                device=flat.device)  # fmt: skip
        weights = position.remainder_(P - 1).add_(1)
        terms = words.to(torch.int64).mul_(weights).remainder_(P)
        total = (total + terms.sum()).remainder_(P)
    return total


def _words(block: Tensor) -> Tensor:
    """The bytes of `block` (row-major) as 16-bit integers, or as bytes for a 1-byte dtype."""
    flat = block.reshape(-1).contiguous()
    return flat.view(torch.int16 if flat.element_size() % 2 == 0 else torch.uint8)


def to_ints(checksums: list[Tensor]) -> list[int]:
    """Python ints of 0-dim checksum tensors, copied to the host together (one per device)."""
    out: list[int | None] = [None] * len(checksums)
    by_device: dict[torch.device, list[int]] = {}
    for i, checksum in enumerate(checksums):
        by_device.setdefault(checksum.device, []).append(i)
    for indices in by_device.values():
        values = torch.stack([checksums[i] for i in indices]).tolist()
        for i, value in zip(indices, values):
            out[i] = int(value)
    return out  # type: ignore[return-value]
