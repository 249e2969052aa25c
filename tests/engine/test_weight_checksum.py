"""The weight checksum (temper/engine/weight_checksum.py): exact and layout-independent, so that trainer and
engine agree on equal weights whatever their devices, strides and chunking; any one changed element and
two swapped rows change it."""

import pytest
import torch

from temper.engine import weight_checksum as wc
from temper.engine.weight_checksum import P, to_ints, weight_checksum


def reference(tensor: torch.Tensor) -> int:
    """The module docstring's formula in Python integers."""
    words = tensor.contiguous().reshape(-1).view(torch.int16 if tensor.element_size() % 2 == 0 else torch.uint8)
    return sum(int(h) * (1 + i % (P - 1)) for i, h in enumerate(words.tolist())) % P


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int8])
def test_the_checksum_is_the_formula(dtype):
    tensor = (torch.randn(7, 5) * 50).to(dtype)
    assert int(weight_checksum(tensor)) == reference(tensor)


def test_layout_chunking_and_casts_do_not_change_it(monkeypatch):
    tensor = torch.randn(64, 33)
    want = int(weight_checksum(tensor))
    assert int(weight_checksum(tensor.t().contiguous().t())) == want  # column-major strides, same elements
    monkeypatch.setattr(wc, "CHUNK", 100)  # many passes of a few rows
    assert int(weight_checksum(tensor)) == want
    assert int(weight_checksum(tensor, torch.bfloat16)) == int(weight_checksum(tensor.bfloat16()))
    assert int(weight_checksum(torch.tensor(2.5))) == reference(torch.tensor([2.5]))  # a 0-dim tensor
    assert int(weight_checksum(torch.zeros(0, 3))) == 0


def test_the_ramp_form_equals_the_general_form():
    """Below 2^31 − 2 words the checksum takes the weights 1 + i as two sums a chunk; the general form
    (positions mod P − 1, for longer tensors) gives the same number."""
    for tensor in (torch.randn(300, 7), (torch.randn(1000) * 40).to(torch.int8), torch.randn(5, 3).bfloat16()):
        for chunk in (wc.CHUNK, 64):
            wc_chunk, wc.CHUNK = wc.CHUNK, chunk
            try:
                assert int(weight_checksum(tensor)) == int(wc._checksum_long(tensor.reshape(-1), tensor.dtype))
            finally:
                wc.CHUNK = wc_chunk


def test_one_changed_element_anywhere_changes_it():
    tensor = torch.randn(512, 96)
    want = int(weight_checksum(tensor))
    for row, col in [(0, 0), (256, 48), (511, 95)]:
        for changed in (torch.nextafter(tensor[row, col], torch.tensor(9.0)), -tensor[row, col]):
            other = tensor.clone()
            other[row, col] = changed  # the smallest step up (last mantissa bit), or the sign bit
            assert int(weight_checksum(other)) != want, (row, col)


def test_swapped_rows_and_a_transpose_change_it():
    tensor = torch.randn(16, 16)
    swapped = tensor.clone()
    swapped[[3, 9]] = swapped[[9, 3]]
    assert int(weight_checksum(swapped)) != int(weight_checksum(tensor))
    assert int(weight_checksum(tensor.t())) != int(weight_checksum(tensor))


def test_to_ints_copies_the_sums_in_order():
    sums = [weight_checksum(torch.full((3,), float(v))) for v in range(4)]
    assert to_ints(sums) == [int(s) for s in sums] and to_ints([]) == []


def test_a_bf16_engine_sums_its_float32_router_in_bf16(model_dir):
    """DeepSeek-V3's router weight stays float32 in a bf16 engine (`TopkRouter`); its checksum is taken in the
    engine's dtype, as the trainer takes its sums, so a bf16 checkpoint's weights all match (the preflight's
    check of the first sync)."""
    from engine_helpers import engine_for

    from temper.engine.weights import iter_safetensors

    path = model_dir("deepseek_v3")
    engine = engine_for(path, dtype="bfloat16")
    assert engine.weight_dtype == "bfloat16"
    router = engine.model_runner.get_weight("model.layers.1.mlp.gate.weight")
    assert router.dtype == torch.float32
    sums = engine.weight_checksums()
    want = {name: int(weight_checksum(t, torch.bfloat16)) for name, t in iter_safetensors(path)}
    summed = {name: s for name, s in sums.items() if s is not None}  # None: a buffer the engine computes
    assert "model.layers.1.mlp.gate.weight" in summed
    assert summed == {name: want[name] for name in summed}
