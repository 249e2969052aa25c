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
    tensor on the tensor's device."""
    tensor = tensor.detach()
    dtype = dtype or tensor.dtype
    rows = tensor.reshape(1) if tensor.dim() == 0 else tensor
    words_per_element = max(dtype.itemsize // 2, 1)
    row_words = (rows[0].numel() if len(rows) else 0) * words_per_element
    step = max(CHUNK // max(row_words, 1), 1)
    total = torch.zeros((), dtype=torch.int64, device=tensor.device)
    for start in range(0, len(rows), step):
        words = _words(rows[start : start + step].to(dtype))
        position = torch.arange(start * row_words, start * row_words + words.numel(), device=tensor.device)
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
