"""Admin routes: cache flush, abort, pause/continue, weight version, weight updates, memory.

Reply shapes are SGLang's (SGLANG_API.md §1, §5): the weight routes answer
``{"success": bool, "message": str}`` with 200 on success and 400 on failure; memory routes answer a
JSON ``null``. Every engine operation runs on the engine loop thread between two steps, so weights
never change in the middle of a step; a successful weight load moves the weight version to the
request's ``weight_version``, or to the next value of a counter ("1", "2", ...).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from temper.engine.server import cuda_ipc
from temper.engine.server import weight_update as wu
from temper.engine.server.context import (
    ServerState,
    json_body,
    json_response,
    native_error,
    state_of,
)
from temper.engine.server.protocol import (
    AbortReq,
    DestroyWeightsUpdateGroupReq,
    GetWeightsByNameReq,
    InitWeightsUpdateGroupReq,
    MemoryReq,
    PauseReq,
    RequestError,
    UpdateWeightsFromDiskReq,
    UpdateWeightsFromDistributedReq,
    UpdateWeightsFromTensorReq,
    UpdateWeightVersionReq,
    WeightsChecksumReq,
    note_ignored,
    parse_model,
)

logger = logging.getLogger(__name__)
router = APIRouter()
FLUSH_OK = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting "
            "requests, the operation will not be performed.)\n")
MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")


async def _body(request: Request, model):
    return parse_model(model, await json_body(request))


def _result(success: bool, message: str, status: int | None = None, **extra) -> Response:
    return json_response({"success": success, "message": message, **extra}, status or (200 if success else 400))


# ---- cache, abort, pause -------------------------------------------------------------------------


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(request: Request, timeout: float = 0.0) -> Response:
    """Drop the prefix cache; 400 while requests run or wait (retried for up to `timeout` seconds)."""
    if timeout < 0:
        return native_error(f"timeout must be >= 0, got {timeout}")
    engine = state_of(request).engine
    deadline = time.monotonic() + timeout
    while True:
        if await engine.call(engine.engine.flush_cache):
            return PlainTextResponse(FLUSH_OK)
        if time.monotonic() >= deadline:
            return PlainTextResponse("Cache not flushed: requests are running or waiting.\n", status_code=400)
        await asyncio.sleep(0.05)


@router.post("/abort_request")
async def abort_request(request: Request) -> Response:
    """Abort requests whose rid starts with ``rid``, or all with ``abort_all``; they finish with
    finish_reason ``abort`` and their partial output."""
    try:
        body = await _body(request, AbortReq)
    except RequestError as e:
        return native_error(str(e))
    await state_of(request).engine.abort(body.rid, body.abort_all)
    return Response(status_code=200)


@router.post("/pause_generation")
async def pause_generation(request: Request) -> Response:
    """Stop stepping the engine. ``abort`` aborts every request first; ``in_place`` and ``retract``
    keep them (temper's ``retract`` does not free their KV cache)."""
    try:
        body = await _body(request, PauseReq)
    except RequestError as e:
        return native_error(str(e))
    await state_of(request).engine.pause(body.mode)
    return json_response({"message": "Generation paused successfully.", "status": "ok"})


@router.post("/continue_generation")
async def continue_generation(request: Request) -> Response:
    await state_of(request).engine.resume()
    return json_response({"message": "Generation continued successfully.", "status": "ok"})


@router.post("/update_weight_version")
async def update_weight_version(request: Request) -> Response:
    try:
        body = await _body(request, UpdateWeightVersionReq)
    except RequestError as e:
        return _result(False, str(e))
    engine = state_of(request).engine

    def apply() -> str:
        if body.abort_all_requests:
            engine.abort_everything()
        return engine.set_weight_version(body.new_version)

    version = await engine.call(apply)
    return _result(True, f"Weight version updated to {version}", new_version=version)


# ---- weights -------------------------------------------------------------------------------------


PARTIAL = " The weights may be partially updated: load a complete set before generating again."


async def _load(state: ServerState, body, load, ok_message: str, fail_prefix: str = "Failed to update weights",
                report_paused: bool = False) -> Response:
    """Run `load()` on the engine loop (after aborting everything if asked), then bump the version.

    With `report_paused`, the reply carries ``num_paused_requests``: requests in flight at the update.
    On failure the version stays; the engine does not roll back tensors it already copied.
    """
    engine = state.engine

    def apply() -> tuple[str, int]:
        if body.abort_all_requests:
            engine.abort_everything()
        in_flight = engine.stats.get("num_in_flight", 0)
        load()
        return engine.set_weight_version(body.weight_version), in_flight

    try:
        version, in_flight = await engine.call(apply)
    except Exception as e:
        logger.exception("weight update failed")
        extra = {"num_paused_requests": 0} if report_paused else {}
        return _result(False, f"{fail_prefix}: {e}.{PARTIAL}", **extra)
    extra = {"num_paused_requests": in_flight} if report_paused else {}
    return _result(True, f"{ok_message} Weight version updated to {version}.", **extra)


@router.post("/update_weights_from_disk")
async def update_weights_from_disk(request: Request) -> Response:
    """Load a Hugging Face checkpoint folder (``model_path``) into the running engine."""
    try:
        body = await _body(request, UpdateWeightsFromDiskReq)
    except RequestError as e:
        return _result(False, str(e), num_paused_requests=0)
    engine = state_of(request).engine.engine
    return await _load(state_of(request), body, lambda: engine.load_weights_from_disk(body.model_path),
                       "Succeeded to update model weights.", report_paused=True)


@router.post("/init_weights_update_group")
async def init_weights_update_group(request: Request) -> Response:
    """Join the trainer's broadcast group as rank ``rank_offset``; blocks until every rank joined."""
    state = state_of(request)
    try:
        body = await _body(request, InitWeightsUpdateGroupReq)
        if body.group_name in state.groups:
            raise RequestError(f"group_name: group {body.group_name!r} already exists; destroy it first")
        group = await asyncio.to_thread(
            wu.BroadcastGroup, body.master_address, body.master_port, body.world_size, body.rank_offset,
            body.group_name, body.backend, device=_engine_device(state) if body.backend == "nccl" else None)
    except Exception as e:  # noqa: BLE001 -- rendezvous errors of any kind are reported to the trainer
        return _result(False, f"Failed to initialize custom process group: {e}.")
    state.groups[body.group_name] = group
    return _result(True, "Succeeded to initialize custom process group.")


def _engine_device(state: ServerState):
    """The engine's device: NCCL receives straight into it."""
    return state.engine.engine.args.torch_device()


@router.post("/update_weights_from_distributed")
async def update_weights_from_distributed(request: Request) -> Response:
    """Receive ``names``/``dtypes``/``shapes`` from rank 0 of the group and load them."""
    state = state_of(request)
    try:
        body = await _body(request, UpdateWeightsFromDistributedReq)
        if body.load_format not in (None, "flattened_bucket"):
            raise RequestError(f"load_format: expected null or 'flattened_bucket', got {body.load_format!r}")
        group = state.groups.get(body.group_name)
        if group is None:
            raise RequestError(f"Group {body.group_name} not in {sorted(state.groups)}. "
                               "Please call `init_weights_update_group` first.")
        dtypes = wu.check_metadata(body.names, body.dtypes, body.shapes)
    except ValueError as e:
        return _result(False, f"Failed to receive weights: {e}")
    engine = state.engine.engine

    def load() -> None:
        items = wu.receive_tensors(group, body.names, dtypes, body.shapes, body.load_format == "flattened_bucket")
        try:
            engine.load_weights(items)
        finally:
            wu.drain(items)  # a failed load must still take every broadcast, or the trainer blocks

    return await _load(state, body, load, "Succeeded to update parameter online.",
                       fail_prefix="Failed to update parameter online")


@router.post("/destroy_weights_update_group")
async def destroy_weights_update_group(request: Request) -> Response:
    state = state_of(request)
    try:
        body = await _body(request, DestroyWeightsUpdateGroupReq)
    except RequestError as e:
        return _result(False, str(e))
    group = state.groups.pop(body.group_name, None)
    if group is None:
        return _result(False, "The group to be destroyed does not exist.")
    group.close()
    return _result(True, "Succeeded to destroy custom process group.")


@router.post("/update_weights_from_tensor")
async def update_weights_from_tensor(request: Request) -> Response:
    """Load tensors sent in the request (base64 safetensors, see `weight_update.decode_tensor_payload`),
    read from a local safetensors file (``safetensors_path``), or views of a trainer's CUDA buffer on
    this engine's GPU (``load_format: "cuda_ipc"`` with ``cuda_ipc``, see `cuda_ipc`)."""
    state = state_of(request)
    engine = state.engine.engine
    try:
        body = await _body(request, UpdateWeightsFromTensorReq)
        if body.load_format == "cuda_ipc":
            load = _ipc_load(state, body)
        else:
            tensors = await asyncio.to_thread(_read_tensors, body)
            load = functools.partial(engine.load_weights, tensors.items())
    except ValueError as e:
        return _result(False, str(e))
    return await _load(state, body, load, "Success.")


def _ipc_load(state: ServerState, body: UpdateWeightsFromTensorReq):
    if body.cuda_ipc is None or body.serialized_named_tensors is not None or body.safetensors_path is not None:
        raise RequestError("load_format 'cuda_ipc' takes the cuda_ipc field and neither serialized_named_tensors "
                           "nor safetensors_path")
    return cuda_ipc.make_load(body.cuda_ipc, _engine_device(state), state.ipc_buffers, state.engine.engine.load_weights)


def _read_tensors(body: UpdateWeightsFromTensorReq) -> dict:
    if body.load_format not in (None, "direct"):
        raise RequestError(f"load_format: temper accepts null, 'direct' or 'cuda_ipc' here, got {body.load_format!r}")
    if body.cuda_ipc is not None:
        raise RequestError("cuda_ipc: set load_format to 'cuda_ipc' to load a CUDA IPC bucket")
    if (body.serialized_named_tensors is None) == (body.safetensors_path is None):
        raise RequestError("give exactly one of serialized_named_tensors and safetensors_path")
    if body.safetensors_path is not None:
        from safetensors.torch import load_file

        try:
            return load_file(body.safetensors_path)
        except Exception as e:  # noqa: BLE001 -- missing file, bad header, ...: all the caller's mistake
            raise RequestError(f"safetensors_path: cannot read {body.safetensors_path!r}: {e}") from None
    if not body.serialized_named_tensors:
        raise RequestError("serialized_named_tensors: expected one entry per TP rank, got an empty list")
    return wu.decode_tensor_payload(body.serialized_named_tensors[0])  # temper engines have one TP rank


@router.post("/begin_weight_update")
@router.post("/end_weight_update")
async def weight_update_session(request: Request) -> Response:
    """SGLang v0.5.23's update session markers; temper does not need a session and accepts both."""
    return _result(True, "Success.")


@router.post("/post_process_weights")
@router.post("/weights_checker")
async def weight_hooks(request: Request) -> Response:
    """Routes of slime's patched SGLang (quantization post-processing, weight checks). temper loads
    weights as given and has nothing to post-process or snapshot: accepted and answered with success
    so that slime's update sequence runs unchanged."""
    note_ignored({request.url.path.lstrip("/"): True}, "route ")
    return _result(True, "Success (nothing to do in temper).")


# ---- memory and weights inspection ---------------------------------------------------------------


async def _memory(request: Request, release: bool) -> Response:
    try:
        body = await _body(request, MemoryReq)
        bad = sorted(set(body.tags or []) - set(MEMORY_TAGS))
        if bad:
            raise RequestError(f"tags: unknown tag(s) {bad}; expected some of {list(MEMORY_TAGS)}")
        engine = state_of(request).engine
        await engine.call(engine.memory, release, body.tags or None)
    except ValueError as e:
        return native_error(str(e))
    return json_response(None)


@router.api_route("/release_memory_occupation", methods=["GET", "POST"])
async def release_memory_occupation(request: Request) -> Response:
    """Free ``tags`` (``weights``, ``kv_cache``; null = all); generation waits until they are resumed."""
    return await _memory(request, release=True)


@router.api_route("/resume_memory_occupation", methods=["GET", "POST"])
async def resume_memory_occupation(request: Request) -> Response:
    return await _memory(request, release=False)


@router.api_route("/get_weights_by_name", methods=["GET", "POST"])
async def get_weights_by_name(request: Request) -> Response:
    """The first ``truncate_size`` entries (rows, for matrices) of a parameter, by HF name."""
    try:
        body = await _body(request, GetWeightsByNameReq)
        engine = state_of(request).engine
        tensor = await engine.call(engine.engine.get_weights_by_name, body.name)
    except (ValueError, KeyError) as e:
        return native_error(f"name: {e}")
    return json_response(tensor[: body.truncate_size].float().cpu().tolist())


@router.post("/weights_checksum")
async def weights_checksum(request: Request) -> Response:
    """temper's own route (SGLang has none): an exact checksum of each full weight named in ``names``
    (null: all), in the engine's dtype and the Hugging Face layout (`temper.engine.weight_checksum`):
    ``{"dtype": "bfloat16", "checksums": {name: int | null}}``, null for a name the engine does not use.
    A weight sync's check compares them with the trainer's; ``names: []`` answers the dtype alone."""
    try:
        body = await _body(request, WeightsChecksumReq)
        engine = state_of(request).engine
        checksums = await engine.call(engine.engine.weight_checksums, body.names)
    except (ValueError, KeyError) as e:
        return native_error(f"names: {e}")
    return json_response({"dtype": engine.engine.weight_dtype, "checksums": checksums})
