"""`PromptDataset`: the prompts of one `--prompt-data` file as Samples, validated, filtered, shuffled."""

from __future__ import annotations

import logging
import random
from array import array
from collections.abc import Iterator
from itertools import islice
from typing import Any

from temper.data.errors import DataError, SkippedRows
from temper.data.prompts import PromptBuilder, PromptFormat, load_tokenizer
from temper.data.readers import Row, Rows, open_rows
from temper.types import Sample

logger = logging.getLogger(__name__)

_CHUNK = 1024  # rows tokenized per batch while measuring prompt lengths


class PromptDataset:
    """The usable prompts of one file, in file order, plus a per-epoch order.

    Contract:
    - `len(self)` is the number of usable prompts; `self[i]` the i-th in file order. Do not mutate it
      (data sources deep-copy what they hand out).
    - `order(epoch)` is the permutation used in `epoch`: with `shuffle`, a shuffle of range(len) by a
      local RNG seeded with `seed + epoch` (independent of global RNG state); otherwise the identity.
    - A bad row raises DataError, or with `skip_invalid` is counted in `skipped.counts` (per reason)
      and logged: one warning with the counts, one debug line per row.
    - Prompts longer than `max_prompt_len` tokens (after the chat template) are dropped and counted
      in `num_filtered_too_long`. No usable prompt left is a DataError.
    - With `streaming`, only row positions are kept in memory and `self[i]` re-reads its row.
    """

    def __init__(
        self,
        spec: str,
        fmt: PromptFormat | None = None,
        *,
        tokenizer: Any = None,
        max_prompt_len: int | None = None,
        skip_invalid: bool = False,
        streaming: bool = False,
        shuffle: bool = False,
        seed: int = 42,
    ) -> None:
        self.spec = spec
        self.shuffle = shuffle
        self.seed = seed
        self.max_prompt_len = max_prompt_len
        self.skip_invalid = skip_invalid
        self.streaming = streaming
        self.skipped = SkippedRows()
        self.num_filtered_too_long = 0
        self._builder = PromptBuilder(fmt or PromptFormat(), tokenizer)
        if max_prompt_len is not None and tokenizer is None:
            raise DataError(
                "--rollout-max-prompt-len", "needs a tokenizer to count prompt tokens", fix="set --hf-checkpoint"
            )
        self._rows: Rows = open_rows(spec)
        self._samples: list[Sample] = []
        self._positions = array("q")
        self._order_cache: tuple[int, list[int]] | None = None
        self._load()

    @classmethod
    def from_args(cls, args: Any, *, prompt_data: str | None = None, tokenizer: Any = None) -> PromptDataset:
        """The dataset slime-style `args` describe (`prompt_data` overrides `args.prompt_data`).

        The tokenizer is loaded from `args.hf_checkpoint` only when the chat template or the prompt
        length limit needs it and none is passed.
        """
        spec = prompt_data or getattr(args, "prompt_data", None)
        if not spec:
            raise DataError(
                "--prompt-data",
                "not set",
                fix="pass --prompt-data PATH.jsonl|PATH.parquet, or --disable-rollout-global-dataset if your "
                "rollout function supplies its own prompts",
            )
        fmt = PromptFormat.from_args(args)
        max_len = getattr(args, "rollout_max_prompt_len", None)
        if tokenizer is None and (fmt.apply_chat_template or max_len is not None):
            needed_by = "--apply-chat-template" if fmt.apply_chat_template else "--rollout-max-prompt-len"
            tokenizer = load_tokenizer(getattr(args, "hf_checkpoint", None), needed_by=needed_by)
        return cls(
            spec,
            fmt,
            tokenizer=tokenizer,
            max_prompt_len=max_len,
            skip_invalid=bool(getattr(args, "skip_invalid_data", False)),
            streaming=bool(getattr(args, "streaming_data", False)),
            shuffle=bool(getattr(args, "rollout_shuffle", False)),
            seed=int(getattr(args, "rollout_seed", 42)),
        )

    def __len__(self) -> int:
        return len(self._positions) if self.streaming else len(self._samples)

    def __getitem__(self, i: int) -> Sample:
        if not self.streaming:
            return self._samples[i]
        k = self._positions[i]
        return self._builder.build(self._rows.read(k), self._rows.location(k))

    def order(self, epoch: int) -> list[int]:
        """Indices of the prompts in the order epoch `epoch` visits them."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            indices = list(range(len(self)))
            if self.shuffle:
                random.Random(self.seed + epoch).shuffle(indices)
            self._order_cache = (epoch, indices)
        return self._order_cache[1]

    def _load(self) -> None:
        rows = self._rows.iter_rows()
        while chunk := list(islice(self._valid(rows), _CHUNK)):
            for k, sample in self._within_limit(chunk):
                if self.streaming:
                    self._positions.append(k)
                else:
                    self._samples.append(sample)
        self._report()

    def _valid(self, rows: Iterator[tuple[int, Row | DataError]]) -> Iterator[tuple[int, Sample]]:
        """(k, sample) for each good row; bad rows raise, or are counted when skipping is on."""
        for k, row in rows:
            sample = self._or_skip(self._build, k, row)
            if sample is not None:
                yield k, sample

    def _build(self, k: int, row: Row | DataError) -> Sample:
        if isinstance(row, DataError):
            raise row
        return self._builder.build(row, self._rows.location(k))

    def _within_limit(self, chunk: list[tuple[int, Sample]]) -> list[tuple[int, Sample]]:
        if self.max_prompt_len is None:
            return chunk
        measured = []
        for k, sample in chunk:
            text = self._or_skip(self._builder.measured_text, sample, self._rows.location(k))
            if text is not None:
                measured.append((k, sample, text))
        lengths = self._builder.count_tokens([text for _, _, text in measured])
        kept = [(k, sample) for (k, sample, _), n in zip(measured, lengths, strict=True) if n <= self.max_prompt_len]
        self.num_filtered_too_long += len(measured) - len(kept)
        return kept

    def _or_skip(self, fn: Any, *args: Any) -> Any:
        """fn(*args), or None when it raises a skippable DataError and skipping is on (counted)."""
        try:
            return fn(*args)
        except DataError as e:
            if not (self.skip_invalid and e.skippable):
                raise
            self.skipped.add(e)
            return None

    def _report(self) -> None:
        total = len(self._rows)
        if self.skipped.total:
            logger.warning("%s: skipped %s (--skip-invalid-data)", self.spec, self.skipped.summary())
        if self.num_filtered_too_long:
            logger.warning(
                "%s: dropped %d of %d prompts longer than --rollout-max-prompt-len=%d tokens",
                self.spec,
                self.num_filtered_too_long,
                total,
                self.max_prompt_len,
            )
        if len(self) == 0:
            raise DataError(
                self.spec,
                f"no usable prompts among {total} rows: {self.skipped.summary()}, "
                f"{self.num_filtered_too_long} longer than --rollout-max-prompt-len",
                fix="fix the data, or raise --rollout-max-prompt-len",
            )
        logger.info("%s: %d prompts", self.spec, len(self))
