"""EngineArgs validation and device/dtype resolution."""

from __future__ import annotations

import pytest
import torch

from temper.engine import EngineArgs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "fp8"}, r"EngineArgs.dtype must be 'auto' or one of"),
        ({"device": "tpu"}, r"EngineArgs.device must be"),
        ({"block_size": 0}, r"EngineArgs.block_size must be a positive integer"),
        ({"num_kv_blocks": 0}, r"EngineArgs.num_kv_blocks"),
        ({"max_model_len": 1}, r"EngineArgs.max_model_len must be None or an integer >= 2"),
        ({"mem_fraction_static": 0}, r"EngineArgs.mem_fraction_static must be in \(0, 1\]"),
        ({"max_num_seqs": 0}, r"EngineArgs.max_num_seqs"),
        ({"kernels": "cuda"}, r"EngineArgs.kernels must be one of"),
        ({"symmetric_memory": "yes"}, r"EngineArgs.symmetric_memory must be None, True or False, got 'yes'"),
        ({"overlap_scheduling": 1.0}, r"EngineArgs.overlap_scheduling must be None, True or False"),
    ],
)
def test_bad_args_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineArgs(model="m", **kwargs)


def test_auto_device_and_dtype():
    args = EngineArgs(model="m")
    device = args.torch_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert args.torch_dtype(torch.device("cpu")) == torch.float32
    assert args.torch_dtype(torch.device("cuda")) == torch.bfloat16
    assert EngineArgs(model="m", dtype="float16").torch_dtype(torch.device("cpu")) == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        EngineArgs(model="m", device="cuda").torch_device()
