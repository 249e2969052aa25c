"""The evaluation datasets, from `--eval-config FILE.yaml` (per-dataset settings) or `--eval-prompt-data`.

`--eval-config` reads slime's format (`slime/utils/eval_config.py`; YAML, or JSON, which YAML reads):

    eval:                               # optional: the root may be this mapping itself
      defaults:                         # any dataset field below; a dataset's own value wins
        n_samples_per_eval_prompt: 4
        max_response_len: 1024
      datasets:                         # a list of mappings with `name`, or a mapping keyed by name
        - name: aime
          path: data/aime.jsonl         # .jsonl or .parquet, optionally PATH@[start:end]
          rm_type: deepscaler
          input_key: problem
          temperature: 0.6

Dataset fields, slime's names: name, path (both required), rm_type, custom_rm_path, input_key (slime's
older spelling prompt_key too), label_key, metadata_key, tool_key, apply_chat_template,
apply_chat_template_kwargs, n_samples_per_eval_prompt, temperature, top_p, top_k, max_response_len,
stop, stop_token_ids, metadata_overrides (merged into every sample's metadata). A field left out falls
back to the eval flag (--n-samples-per-eval-prompt, --eval-temperature, --eval-input-key, ...), then to
the training one (--rollout-temperature, --input-key, ...), as for `--eval-prompt-data` datasets; rm_type
and custom_rm_path left out mean the run's reward (--custom-rm-path, --rm-type).

slime fields temper does not implement (custom_generate_function_path, min_new_tokens,
repetition_penalty, multimodal_keys) and unknown fields stop the run at start with the file, line and
field named, as do wrong types, a missing name or path, a name given twice and a missing file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from temper.config import ConfigError


@dataclass
class EvalDataset:
    """One eval dataset with its settings. Sampling fields left None take the eval flags' values, then
    the rollout's (`default_sampling_params(args, evaluation=True)`); rm_type / custom_rm_path None: the
    run's reward."""

    name: str
    path: str
    input_key: str = "input"
    label_key: str | None = None
    metadata_key: str | None = "metadata"
    tool_key: str | None = "tools"
    apply_chat_template: bool = False
    apply_chat_template_kwargs: dict = field(default_factory=dict)
    rm_type: str | None = None
    custom_rm_path: str | None = None
    n_samples_per_eval_prompt: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_response_len: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    metadata_overrides: dict = field(default_factory=dict)

    def sampling_overrides(self) -> dict[str, Any]:
        """The SGLang sampling params this dataset sets itself."""
        params = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_response_len,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
        }
        return {k: v for k, v in params.items() if v is not None}

    def sample_metadata(self) -> dict[str, Any]:
        """What every sample of this dataset gets in its metadata (the reward dispatch reads rm_type
        and custom_rm_path there)."""
        extra = {"rm_type": self.rm_type, "custom_rm_path": self.custom_rm_path}
        return {**{k: v for k, v in extra.items() if v is not None}, **self.metadata_overrides}


def _check_int(low: int):
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
        return None if ok else f"an integer >= {low}"

    return check


def _check_float(low: float, high: float, low_open: bool = False):
    def check(v: Any) -> str | None:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = number and (v > low if low_open else v >= low) and v <= high
        return None if ok else f"a number in {'(' if low_open else '['}{low}, {high}]"

    return check


def _check_type(kind: type, what: str):
    return lambda v: None if isinstance(v, kind) else what


def _check_list(kind: type, what: str):
    def check(v: Any) -> str | None:
        ok = isinstance(v, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
        return None if ok else what

    return check


def _check_top_k(v: Any) -> str | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)
    return None if ok else "an integer >= 1, or -1 (off)"


_STR = _check_type(str, "a string")
CHECKS = {
    "name": _STR,
    "path": _STR,
    "rm_type": _STR,
    "custom_rm_path": _STR,
    "input_key": _STR,
    "label_key": _STR,
    "metadata_key": _STR,
    "tool_key": _STR,
    "apply_chat_template": _check_type(bool, "true or false"),
    "apply_chat_template_kwargs": _check_type(dict, "a mapping"),
    "n_samples_per_eval_prompt": _check_int(1),
    "temperature": _check_float(0.0, float("inf")),
    "top_p": _check_float(0.0, 1.0, low_open=True),
    "top_k": _check_top_k,
    "max_response_len": _check_int(1),
    "stop": _check_list(str, "a list of strings"),
    "stop_token_ids": _check_list(int, "a list of integers"),
    "metadata_overrides": _check_type(dict, "a mapping"),
}
ALIASES = {"prompt_key": "input_key"}  # slime's older name
UNSUPPORTED = {
    "custom_generate_function_path": "set --custom-generate-function-path for the whole run",
    "min_new_tokens": "the built-in engine has no minimum length",
    "repetition_penalty": "the built-in engine has no repetition penalty",
    "multimodal_keys": "temper reads text prompts only",
}


def eval_datasets_of(args: Any) -> list[EvalDataset]:
    """The eval datasets of a run: `--eval-config`'s (re-read each call; checked at start by
    `load_eval_config`), else `--eval-prompt-data`'s pairs, every field resolved from `args`."""
    path = getattr(args, "eval_config", None)
    if path:
        entries = load_eval_config(path)
    else:
        entries = [{"name": n, "path": p} for n, p in _pairs(args).items()]
    base = flag_defaults(args)
    return [EvalDataset(**{**base, **entry}) for entry in entries]


def _pairs(args: Any) -> dict[str, str]:
    named = getattr(args, "eval_datasets", None)  # `EvalConfig.eval_datasets`: a lone path named after its file
    if named is not None:
        return dict(named)
    items = list(getattr(args, "eval_prompt_data", None) or [])
    return dict(zip(items[0::2], items[1::2]))


def flag_defaults(args: Any) -> dict[str, Any]:
    """Dataset fields from the flags: the eval flags, then the training ones."""
    return {
        "input_key": getattr(args, "eval_input_key", None) or getattr(args, "input_key", None) or "input",
        "label_key": getattr(args, "eval_label_key", None) or getattr(args, "label_key", None),
        "metadata_key": getattr(args, "metadata_key", "metadata"),
        "tool_key": getattr(args, "tool_key", "tools"),
        "apply_chat_template": bool(getattr(args, "apply_chat_template", False)),
        "apply_chat_template_kwargs": dict(getattr(args, "apply_chat_template_kwargs", None) or {}),
        "n_samples_per_eval_prompt": int(getattr(args, "n_samples_per_eval_prompt", None) or 1),
    }


def load_eval_config(path: str) -> list[dict[str, Any]]:
    """The datasets of `--eval-config path`, each a checked mapping of the fields it sets (defaults
    merged in); ConfigError naming the file, line and field of the first mistake."""
    file = Path(path)
    where = f"--eval-config {path}"
    if not file.is_file():
        raise ConfigError(f"{where}: file not found")
    try:
        root = yaml.load(file.read_text(), Loader=_LineLoader)  # noqa: S506 (a SafeLoader that notes lines)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"--eval-config {path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(root, dict):
        raise ConfigError(f"{where}: expected a mapping with `eval: {{defaults, datasets}}` (slime's format)")
    section = root.get("eval", root)
    if not isinstance(section, dict):
        raise ConfigError(f"{_at(path, root, 'eval')}: `eval` must be a mapping with `datasets` (and `defaults`)")
    extra = sorted(set(section) - {"defaults", "datasets"})
    if extra:
        raise ConfigError(f"{_at(path, section, extra[0])}: unknown key {extra[0]!r}; the eval section holds "
                          f"`defaults` and `datasets`")
    defaults = section.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{_at(path, section, 'defaults')}: `defaults` must be a mapping of dataset fields")
    defaults = _checked(path, defaults, "defaults")
    return [{**defaults, **entry} for entry in _dataset_entries(path, section)]


def _dataset_entries(path: str, section: dict) -> list[dict[str, Any]]:
    raw = section.get("datasets")
    if isinstance(raw, dict):  # keyed by name
        items = []
        for name, entry in raw.items():
            entry = entry if entry is not None else _Lines()
            if not isinstance(entry, dict):
                raise ConfigError(f"{_at(path, raw, name)}: dataset {name!r} must be a mapping of fields")
            items.append((entry, {"name": str(name), **entry}))
    elif isinstance(raw, list) and raw:
        items = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise ConfigError(f"--eval-config {path}: datasets[{i}] must be a mapping with name and path")
            items.append((entry, entry))
    else:
        raise ConfigError(f"{_at(path, section, 'datasets')}: `datasets` must list at least one dataset "
                          f"(name and path each)")
    entries = []
    for i, (source, entry) in enumerate(items):
        label = f"datasets[{i}]" + (f" ({entry['name']})" if isinstance(entry.get("name"), str) else "")
        checked = _checked(path, source, label, entry)
        for required in ("name", "path"):
            if required not in checked:
                raise ConfigError(
                    f"{_at(path, source)}: {label} has no {required!r}; each dataset needs a name and a path"
                )
        if any(e["name"] == checked["name"] for e in entries):
            raise ConfigError(f"{_at(path, source, 'name')}: {label}: dataset name {checked['name']!r} is given "
                              f"more than once; names must be distinct")
        data_file = Path(checked["path"].split("@[")[0])
        if not data_file.is_file():
            raise ConfigError(f"{_at(path, source, 'path')}: {label}: path {checked['path']!r}: file not found")
        entries.append(checked)
    return entries


def _checked(path: str, source: dict, label: str, entry: dict | None = None) -> dict[str, Any]:
    """`entry` (default: `source`) with aliases renamed and every field checked; `source` holds the lines."""
    checked: dict[str, Any] = {}
    for key, value in (source if entry is None else entry).items():
        name = ALIASES.get(str(key), str(key))
        at = _at(path, source, key)
        if name in UNSUPPORTED:
            raise ConfigError(f"{at}: {label}: field {key!r} is slime's but not supported by temper "
                              f"({UNSUPPORTED[name]}); remove it")
        if name not in CHECKS:
            close = difflib.get_close_matches(name, [*CHECKS, *ALIASES], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{at}: {label}: unknown field {key!r}{hint}; fields: {', '.join(CHECKS)}")
        if name == "stop" and isinstance(value, str):
            value = [value]
        if value is None:
            continue
        wanted = CHECKS[name](value)
        if wanted:
            raise ConfigError(f"{at}: {label}: field {key!r} must be {wanted}, got {value!r}")
        checked[name] = dict(value) if isinstance(value, dict) else value
    return checked


def _at(path: str, mapping: Any, key: Any = None) -> str:
    """`--eval-config PATH:LINE` for `key` of `mapping` (or the mapping itself), as far as known."""
    lines = getattr(mapping, "lines", {})
    line = lines.get(str(key)) if key is not None else None
    line = line or getattr(mapping, "line", None)
    return f"--eval-config {path}" + (f":{line}" if line else "")


class _Lines(dict):
    """A YAML mapping that knows its own line (`line`) and each key's (`lines`), 1-based."""

    line: int | None = None
    lines: dict[str, int] = {}


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _LineLoader, node: yaml.MappingNode):
    data = _Lines()
    yield data
    data.update(loader.construct_mapping(node))
    data.line = node.start_mark.line + 1
    data.lines = {str(k.value): k.start_mark.line + 1 for k, _ in node.value}


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
