"""The weight sync's check (temper/cluster/weight_check.py) against stand-in engines: checksums where the engine
has /weights_checksum (in the dtype it names), the first rows through /get_weights_by_name where it answers 404
(SGLang). The real engine's side: test_weight_sync.py."""

import httpx
import pytest
import torch

from temper.cluster.weight_check import PROBE_ROWS, SentWeights
from temper.engine.weight_checksum import weight_checksum

SENT = {"a.weight": torch.arange(320.0).reshape(40, 8) / 64 - 2, "b.bias": torch.arange(8.0) / 8}  # exact in bf16


def engines(held: dict[str, torch.Tensor], checksum: bool = True, dtype: str = "bfloat16") -> httpx.Client:
    """Engines at http://e0, http://e1 holding `held`; with `checksum` False they answer /weights_checksum 404."""

    def answer(request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.content)
        if request.url.path == "/weights_checksum":
            if not checksum:
                return httpx.Response(404, json={"detail": "Not Found"})
            sums = {n: int(weight_checksum(held[n].to(getattr(torch, dtype)))) for n in body["names"]}
            return httpx.Response(200, json={"dtype": dtype, "checksums": sums})
        return httpx.Response(200, json=held[body["name"]][: body["truncate_size"]].float().tolist())

    return httpx.Client(transport=httpx.MockTransport(answer))


def send(http: httpx.Client, engine_dtype: str | None = None) -> SentWeights:
    sent = SentWeights.open(http, ["http://e0", "http://e1"], engine_dtype)
    for name, tensor in SENT.items():
        sent.record(name, tensor)
    return sent


def test_checksums_in_the_engine_s_dtype_compare_every_element():
    assert send(engines(SENT)).compare() == 4  # 2 tensors x 2 engines
    held = {n: t.clone() for n, t in SENT.items()}
    held["a.weight"][30, 5] += 1.0  # past the rows a probe would read
    with pytest.raises(RuntimeError, match=r"^2 engine tensors differ from the trainer's: http://e0 a.weight: checksum "
                                           r"\d+, the trainer's \d+ \(every element compared in bfloat16\); http://e1 a"):
        send(engines(held)).compare()


def test_engines_without_the_route_compare_the_first_rows():
    assert send(engines(SENT, checksum=False), "float32").compare() == 4
    held = {n: t.clone() for n, t in SENT.items()}
    held["a.weight"][PROBE_ROWS - 1, 0] += 0.5
    with pytest.raises(RuntimeError, match=r"http://e0 a.weight: max \|diff\| 0.5 in the first 4 rows"):
        send(engines(held, checksum=False), "float32").compare()
    held["a.weight"][PROBE_ROWS - 1, 0] -= 0.5
    held["a.weight"][PROBE_ROWS:] += 0.5  # what rows cannot see
    assert send(engines(held, checksum=False), "float32").compare() == 4


def test_an_engine_that_fails_the_route_is_an_error():
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    with pytest.raises(RuntimeError, match=r"POST http://e0/weights_checksum failed \(500\): boom"):
        SentWeights.open(httpx.Client(transport=httpx.MockTransport(broken)), ["http://e0"])
