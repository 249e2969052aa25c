"""Prompt data: datasets (JSONL, Parquet), chat templates, data sources and their resumable buffer."""

from temper.data.buffer import pop_first
from temper.data.data_source import (
    DataSource,
    RolloutDataSource,
    RolloutDataSourceWithBuffer,
    build_data_source,
    num_rollout_from_epochs,
    state_path,
)
from temper.data.dataset import PromptDataset
from temper.data.errors import DataError
from temper.data.plugins import PluginError, load_function
from temper.data.prompts import PromptBuilder, PromptFormat, load_tokenizer
from temper.data.readers import parse_data_spec

__all__ = [
    "DataError",
    "DataSource",
    "PluginError",
    "PromptBuilder",
    "PromptDataset",
    "PromptFormat",
    "RolloutDataSource",
    "RolloutDataSourceWithBuffer",
    "build_data_source",
    "load_function",
    "load_tokenizer",
    "num_rollout_from_epochs",
    "parse_data_spec",
    "pop_first",
    "state_path",
]
