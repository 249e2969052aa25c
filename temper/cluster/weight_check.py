"""The weight sync's check: the tensors a train rank sent, compared with each engine's copy after the sync.

`SentWeights.open(...)` before a checked sync, `record(name, tensor)` for each tensor as it goes out,
`compare()` once the engines have loaded them (RuntimeError naming what differs). Two ways, by engine:

- checksum, on every engine that has temper's ``POST /weights_checksum`` (the built-in engine): an exact
  checksum of every element of every tensor (`temper.engine.weight_checksum`), computed on the trainer's
  device as the tensor goes out, in the dtype the engine holds its weights in (which the engine names
  first, ``names: []``); the engine computes the same over its copy in the Hugging Face layout, its fused
  q/k/v and gate/up parameters cut back into the names the trainer sent. A single changed element
  anywhere shows. The sums stay on the device until `compare` copies them out at once.
- rows, on an engine without that route (SGLang, which answers 404): the first `PROBE_ROWS` rows (elements,
  for 1-D tensors) of each tensor, kept on the device, compared with the engine's
  ``/get_weights_by_name`` (exactly in the engine's dtype when known, else up to bf16 rounding).
"""

from __future__ import annotations

import httpx
import torch

from temper.engine.weight_checksum import to_ints, weight_checksum

PROBE_ROWS = 4
"""Rows (or elements, for 1-D tensors) of each tensor compared on an engine without /weights_checksum."""


class SentWeights:
    """What one sender keeps of a sync's tensors for its engines (`urls`): see the module docstring.

    `dtypes[url]`: the weight dtype of an engine compared by checksum; engines not in it are compared by rows."""

    def __init__(self, http: httpx.Client, urls: list[str], dtypes: dict[str, str], engine_dtype: str | None = None,
                 probe_rows: int = PROBE_ROWS):  # fmt: skip
        self.http, self.urls, self.dtypes = http, list(urls), dict(dtypes)
        self.engine_dtype = engine_dtype  # for the rows' comparison: the engines' dtype when the driver knows it
        self.probe_rows = probe_rows
        self.sums: dict[str, dict[str, torch.Tensor]] = {dtype: {} for dtype in set(self.dtypes.values())}
        self.rows: dict[str, torch.Tensor] = {}
        self.names: list[str] = []

    @classmethod
    def open(cls, http: httpx.Client, urls: list[str], engine_dtype: str | None = None) -> SentWeights:
        """Ask each engine how it can be checked: its weight dtype from ``/weights_checksum``, or rows (404)."""
        dtypes = {}
        for url in urls:
            response = http.post(f"{url}/weights_checksum", json={"names": []})
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise RuntimeError(f"POST {url}/weights_checksum failed ({response.status_code}): {response.text[:300]}")
            dtypes[url] = response.json()["dtype"]
        return cls(http, urls, dtypes, engine_dtype)

    def record(self, name: str, tensor: torch.Tensor) -> None:
        """Keep what the check needs of `tensor`, sent under `name` (no copy to the host, no wait)."""
        self.names.append(name)
        for dtype, sums in self.sums.items():
            sums[name] = weight_checksum(tensor, getattr(torch, dtype))
        if len(self.dtypes) < len(self.urls):
            self.rows[name] = tensor[: self.probe_rows].detach().clone()

    def compare(self) -> int:
        """Compare with every engine; RuntimeError naming the first tensors that differ. Returns the number
        of (tensor, engine) pairs compared."""
        wrong, compared = [], 0
        sums = {dtype: dict(zip(named, to_ints(list(named.values())))) for dtype, named in self.sums.items()}
        rows = {name: sent.cpu() for name, sent in self.rows.items()}
        for url in self.urls:
            if url in self.dtypes:
                compared += self._compare_sums(url, sums[self.dtypes[url]], wrong)
            else:
                compared += self._compare_rows(url, rows, wrong)
        if wrong:
            raise RuntimeError(f"{len(wrong)} engine tensors differ from the trainer's: {'; '.join(wrong[:5])}")
        return compared

    def _compare_sums(self, url: str, sent: dict[str, int], wrong: list[str]) -> int:
        response = self.http.post(f"{url}/weights_checksum", json={"names": self.names})
        if response.status_code != 200:
            wrong.append(f"{url}: POST /weights_checksum answered HTTP {response.status_code} {response.text[:200]}")
            return 0
        got = response.json()["checksums"]
        compared = 0
        for name, want in sent.items():
            if got.get(name) is None:  # a tensor this engine does not use
                continue
            compared += 1
            if got[name] != want:
                wrong.append(f"{url} {name}: checksum {got[name]}, the trainer's {want} "
                             f"(every element compared in {self.dtypes[url]})")  # fmt: skip
        return compared

    def _compare_rows(self, url: str, sent: dict[str, torch.Tensor], wrong: list[str]) -> int:
        dtype = getattr(torch, self.engine_dtype) if self.engine_dtype else None
        for name, rows in sent.items():
            response = self.http.post(f"{url}/get_weights_by_name", json={"name": name, "truncate_size": self.probe_rows})
            if response.status_code != 200:
                wrong.append(f"{url} {name}: HTTP {response.status_code} {response.text[:200]}")
                continue
            got = torch.tensor(response.json(), dtype=torch.float32)
            if not _equal(rows, got, dtype):
                diff = (got - rows.float()).abs().max().item() if got.shape == rows.shape else "shape"
                wrong.append(f"{url} {name}: max |diff| {diff} in the first {self.probe_rows} rows")
        return len(sent)


def _equal(sent: torch.Tensor, got: torch.Tensor, engine_dtype: torch.dtype | None) -> bool:
    """Exact equality in the engine's dtype; with the dtype unknown, equality up to bf16 rounding."""
    if got.shape != sent.shape:
        return False
    if engine_dtype is not None:
        return torch.equal(sent.to(engine_dtype).float(), got)
    return bool(torch.allclose(sent.float(), got, rtol=2**-8, atol=1e-6))
