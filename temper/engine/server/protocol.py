"""Request bodies of the native (SGLang-compatible) routes, as pydantic models, and their parsing.

Contract (DESIGN.md, Contract 1): types are strict (``1.0`` is not an int, ``1`` is not a bool); a
field with a wrong type or value is a `RequestError` (HTTP 400) whose message names the field; an
unknown **top-level** field is accepted and ignored, logged once per field name; an unknown key
**inside** ``sampling_params`` is a 400 (SGLang v0.5.23 behaviour).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

logger = logging.getLogger(__name__)

_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict"}
_logged_ignored: set[str] = set()


class RequestError(ValueError):
    """A client mistake: becomes an HTTP 400 (or `status_code`) whose message names the field."""

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code


def note_ignored(fields: dict[str, Any] | None, where: str = "") -> None:
    """Log, once per field name, that a request field is accepted but not implemented."""
    for name in fields or {}:
        key = f"{where}{name}"
        if key not in _logged_ignored:
            _logged_ignored.add(key)
            logger.info("ignoring request field %r: accepted for SGLang compatibility, not implemented", key)


_HINTS = {"seed": " (SGLang's name for the per-request seed is 'sampling_seed')"}


def format_validation_error(err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per offending field: ``sampling_params.top_k: Input should be a valid integer (got 1.5)``.

    Union members show up in pydantic locations as type tags (``str``, ``list[int]``); they are
    folded into an "expected A or B" message on the field itself.
    """
    by_path: dict[str, list[dict]] = {}
    for e in err.errors():
        path = [str(p) for p in e["loc"] if not (isinstance(p, str) and (p in _TYPE_TAGS or "[" in p))]
        key = prefix + ".".join(path) if path else prefix.rstrip(".") or "body"
        by_path.setdefault(key.replace(".[", "["), []).append(e)
    lines = []
    for path, errors in by_path.items():
        first = errors[0]
        got = repr(first.get("input"))[:80]
        if first["type"] == "extra_forbidden":
            known = f"; expected one of {sorted(model.model_fields)}" if model is not None else ""
            lines.append(f"{path}: unknown field{_HINTS.get(path.rsplit('.', 1)[-1], '')}{known}")
        elif len(errors) > 1:
            tags = [p for e in errors for p in e["loc"] if isinstance(p, str) and (p in _TYPE_TAGS or "[" in p)]
            expected = " or ".join(dict.fromkeys(tags)) or "another type"
            lines.append(f"{path}: invalid value {got} (expected {expected})")
        else:
            lines.append(f"{path}: {first['msg']} (got {got})")
    return "; ".join(lines)


def parse_model(model: type[BaseModel], data: Any, prefix: str = ""):
    """Validate `data` into `model`; a `RequestError` naming the field on failure. Logs ignored extras."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RequestError(f"{prefix.rstrip('.') or 'body'}: expected a JSON object, got {type(data).__name__}")
    try:
        parsed = model.model_validate(data)
    except ValidationError as err:
        raise RequestError(format_validation_error(err, prefix, model)) from None
    note_ignored(parsed.model_extra, prefix)
    return parsed


class Body(BaseModel):
    """Base of the native request bodies: strict types, unknown fields kept aside and ignored."""

    model_config = ConfigDict(strict=True, extra="allow")


class SamplingParamsIn(BaseModel):
    """SGLang's ``sampling_params`` (SGLANG_API.md §3). ``None`` means "use the default".

    Implemented: max_new_tokens, temperature, top_p, top_k, min_p, stop, stop_token_ids, ignore_eos,
    skip_special_tokens, no_stop_trim, n, sampling_seed, stream_interval. The rest are range-checked
    like SGLang and otherwise ignored (logged once) when set to a non-neutral value.
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    max_new_tokens: int | None = 128  # explicit null = no cap (bounded by the context)
    min_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stop_regex: str | list[str] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    no_stop_trim: bool | None = None
    n: int | None = None
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    sampling_seed: int | None = None
    logit_bias: dict[str, float] | None = None
    stream_interval: int | None = None
    custom_params: dict[str, Any] | None = None
    beam_width: int | None = None
    watermark: dict[str, Any] | None = None


class GenerateReqInput(Body):
    """Body of ``/generate`` (SGLANG_API.md §2). Fields not declared here are accepted and ignored."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    input_embeds: Any = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: str | list[str] | None = None
    stream: bool = False
    return_logprob: bool | list[bool] | None = None
    return_text_in_logprobs: bool = False
    return_prompt_token_ids: bool = False
    return_routed_experts: bool | list[bool] = False
    routed_experts_start_len: int | list[int] = 0


class AbortReq(Body):
    rid: str = ""
    abort_all: bool = False


class PauseReq(Body):
    mode: Literal["abort", "retract", "in_place"] = "abort"


class UpdateWeightVersionReq(Body):
    new_version: str
    abort_all_requests: bool = True


class _WeightUpdate(Body):
    """Fields shared by the weight-update bodies (SGLANG_API.md §5.1)."""

    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: str | None = None
    load_format: str | None = None


class UpdateWeightsFromDiskReq(_WeightUpdate):
    model_path: str


class InitWeightsUpdateGroupReq(Body):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = "weight_update_group"
    backend: str = "nccl"


class UpdateWeightsFromDistributedReq(_WeightUpdate):
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = "weight_update_group"


class DestroyWeightsUpdateGroupReq(Body):
    group_name: str = "weight_update_group"


class CudaIpcBuffer(BaseModel):
    """A trainer's flat CUDA buffer, as torch's ``UntypedStorage._share_cuda_()`` describes it (see
    `temper.engine.server.cuda_ipc`). Byte strings travel as standard base64."""

    model_config = ConfigDict(strict=True, extra="forbid")

    gpu_uuid: str  # the trainer GPU's UUID (torch.cuda.get_device_properties(d).uuid)
    handle: str  # base64 of the allocation's IPC handle
    size_bytes: int  # bytes of the buffer's storage
    offset_bytes: int  # where the storage starts in the allocation
    ref_counter_handle: str  # torch's shared-memory ref-counter file, "/torch_<pid>_<n>_<n>"
    ref_counter_offset: int
    event_handle: str  # base64 of a CUDA IPC event handle
    event_sync_required: bool


class CudaIpcTensor(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str  # Hugging Face parameter name
    dtype: str  # float32, bfloat16 or float16
    shape: list[int]
    offset: int  # bytes from the start of the buffer's storage


class CudaIpcBucket(BaseModel):
    """One refill of the buffer: where it is, and the tensors in it."""

    model_config = ConfigDict(strict=True, extra="forbid")

    buffer: CudaIpcBuffer
    tensors: list[CudaIpcTensor]


class UpdateWeightsFromTensorReq(_WeightUpdate):
    """See `temper.engine.server.weight_update.decode_tensor_payload` for the wire format of
    ``serialized_named_tensors`` and `temper.engine.server.cuda_ipc` for ``cuda_ipc`` (with
    ``load_format: "cuda_ipc"``)."""

    serialized_named_tensors: list[str] | None = None
    safetensors_path: str | None = None
    cuda_ipc: CudaIpcBucket | None = None


class MemoryReq(Body):
    tags: list[str] | None = None


class GetWeightsByNameReq(Body):
    name: str
    truncate_size: int = 100


class WeightsChecksumReq(Body):
    names: list[str] | None = None  # Hugging Face names; null: every weight the model loads
