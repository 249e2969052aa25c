"""The command line, generated from the config dataclasses (`temper.config`) with slime's flag names.

Order of precedence: field defaults < `--config FILE.yaml` < flags on the command line. `--sglang-*`
and `--router-*` flags that temper does not define itself are collected into pass-through dicts
(`cfg.engine.sglang`, `cfg.engine.router`). Model-shape flags are checked against `--hf-checkpoint`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from temper.config import FIELD_GROUP, GROUPS, Config, ConfigError
from temper.config_rules import validate
from temper.model_shape import check_model_shape

PASS_THROUGH_PREFIXES = ("sglang", "router")
TRAIN_PLUG_POINTS = (
    "custom_loss_function_path",
    "custom_advantage_function_path",
    "custom_tis_function_path",
    "custom_pg_loss_reducer_function_path",
)
"""Loaded and checked when the command line is parsed (temper.train.plugins), before anything starts."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message}; see --help")


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        usage="%(prog)s [--flag VALUE ...]   (flags below; slime's names)",
        description="temper: RL post-training of LLMs (slime-compatible flags).",
        epilog="--sglang-NAME VALUE and --router-NAME VALUE are passed through to the engine and router.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of flag values (command line wins)")
    for group_name, cls in GROUPS.items():
        if group_name == "engine":
            continue
        group = parser.add_argument_group(group_name)
        for f in dataclasses.fields(cls):
            _add_flag(group, f)
    return parser


def flag_names() -> list[str]:
    """Every flag temper defines, sorted: the frozen list a test guards."""
    return sorted(o for a in build_parser()._actions for o in a.option_strings if o.startswith("--"))


def parse_config(argv: list[str] | None = None, *, prog: str = "train.py", check_shape: bool = True) -> Config:
    """Parse `argv` into a validated `Config`; mistakes raise ConfigError with one line, a trainer plug point
    that cannot be loaded or has the wrong signature PluginError (temper.train.plugins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    own, passthrough = _split_passthrough(argv, parser)
    pre, _ = _pre_parser().parse_known_args(own)
    if pre.config:
        parser.set_defaults(**_load_yaml(pre.config))
    namespace, unknown = parser.parse_known_args(own)
    if unknown:
        raise ConfigError(_unknown_flag_message(unknown, parser))
    values = {k: v for k, v in vars(namespace).items() if k != "config"}
    cfg = Config.from_flat(values)
    cfg.engine.sglang = passthrough["sglang"]
    cfg.engine.router = passthrough["router"]
    validate(cfg)  # derived values and cross-field rules
    if check_shape and cfg.hf_checkpoint:
        check_model_shape(cfg.model, cfg.hf_checkpoint)
    if any(getattr(cfg, name) for name in TRAIN_PLUG_POINTS):
        from temper.train.plugins import check_plug_points  # torch: only when a trainer plug point is set

        check_plug_points(cfg)
    return cfg


def _add_flag(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    meta = dict(f.metadata)
    name = "--" + f.name.replace("_", "-")
    kind, inner = _kind(f.type)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": _help(meta["help"], default)}
    if kind is bool and default is None:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind is bool:
        kwargs["action"] = "store_true"
    elif kind is dict:
        kwargs.update(type=_json_dict(name), metavar="JSON")
    elif kind is list:
        kwargs.update(nargs="+", type=inner, action=_NamePathPairs if meta.get("pairs") else _Repeatable)
    else:
        kwargs["type"] = kind
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    group.add_argument(name, **kwargs)


class _Repeatable(argparse.Action):
    """A list flag that may be repeated: the values of every occurrence, in order. The first occurrence
    replaces the default (which may come from --config), so the command line still wins."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest, None)
        earlier = [] if current is None or current is self.default else list(current)
        self.check(parser, earlier, list(values), option_string)
        setattr(namespace, self.dest, earlier + list(values))

    def check(self, parser, earlier: list, values: list, flag: str | None) -> None:
        pass


class _NamePathPairs(_Repeatable):
    """NAME PATH [NAME PATH ...] (slime's --eval-prompt-data): a repeated flag gives pairs each time; a lone
    PATH (named after its file, see `EvalConfig.eval_datasets`) only when the flag is given once."""

    def check(self, parser, earlier: list, values: list, flag: str | None) -> None:
        if earlier and (len(earlier) % 2 or len(values) % 2):
            odd = earlier if len(earlier) % 2 else values
            parser.error(f"{flag} takes NAME PATH pairs when given more than once; got {' '.join(odd)}")


def _kind(annotation: Any) -> tuple[type, type | None]:
    """(bool|int|float|str|list|dict, element type) from a field annotation such as 'list[int] | None'."""
    hint = eval(annotation, {"Any": Any}) if isinstance(annotation, str) else annotation  # noqa: S307
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    hint = args[0]
    origin = typing.get_origin(hint) or hint
    if origin is list:
        return list, typing.get_args(hint)[0]
    return origin, None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _help(text: str, default: Any) -> str:
    if default in (None, False, [], {}):
        return text
    return f"{text} (default: {default})"


def _json_dict(flag: str):
    def parse(value: str) -> dict:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"{flag} expects a JSON object, got {value!r} ({e.msg})") from None
        if not isinstance(parsed, dict):
            raise argparse.ArgumentTypeError(f"{flag} expects a JSON object, got {type(parsed).__name__}")
        return parsed

    return parse


def _pre_parser() -> argparse.ArgumentParser:
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    return pre


def _load_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        text = file.read_text()
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"--config {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag names to values, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in FIELD_GROUP:
            close = difflib.get_close_matches(name, FIELD_GROUP, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"--config {path}: unknown key {key!r}{hint}")
        if (problem := _yaml_value_problem(name, value)) is not None:
            line = _key_lines(text).get(str(key))
            shown = "null" if value is None else f"{type(value).__name__} {value!r:.60}"
            raise ConfigError(f"--config {path}{f':{line}' if line else ''}: {key} is {shown}; {problem} (as "
                              f"--{name.replace('_', '-')} takes)")
        values[name] = value
    return values


_EXPECTED = {bool: "true or false", int: "a whole number", float: "a number", str: "text (quote it)",
             list: "a list [a, b]", dict: "a mapping {key: value}"}  # fmt: skip


def _yaml_value_problem(name: str, value: Any) -> str | None:
    """What is wrong with a --config file's `value` for config field `name` (its type, its choices), or None."""
    f = next(f for f in dataclasses.fields(GROUPS[FIELD_GROUP[name]]) if f.name == name)
    kind, _ = _kind(f.type)
    if value is None:
        return None if _optional(f.type) else "expected a value, not null"
    if not _fits(kind, value):
        return f"expected {_EXPECTED[kind]}"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"expected one of {', '.join(map(str, choices))}"
    return None


def _fits(kind: type, value: Any) -> bool:
    if kind in (int, float) and isinstance(value, str):  # PyYAML reads 1e-6 as text; argparse converts it
        try:
            kind(value)
        except ValueError:
            return False
        return True
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return kind not in _EXPECTED or isinstance(value, kind)


def _optional(annotation: Any) -> bool:
    hint = eval(annotation, {"Any": Any}) if isinstance(annotation, str) else annotation  # noqa: S307
    return _is_union(hint) and type(None) in typing.get_args(hint)


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key of a YAML mapping."""
    node = yaml.compose(text)
    pairs = node.value if isinstance(node, yaml.MappingNode) else []
    return {str(k.value): k.start_mark.line + 1 for k, _ in pairs}


def _split_passthrough(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, dict]]:
    """Take `--sglang-NAME [VALUE ...]` / `--router-NAME [VALUE ...]` flags temper does not define out of argv."""
    own_flags = {o for a in parser._actions for o in a.option_strings}
    own: list[str] = []
    passthrough: dict[str, dict] = {p: {} for p in PASS_THROUGH_PREFIXES}
    i = 0
    while i < len(argv):
        token = argv[i]
        flag = token.split("=", 1)[0]
        prefix = flag[2:].split("-", 1)[0] if flag.startswith("--") else None
        if prefix not in PASS_THROUGH_PREFIXES or flag in own_flags or "-" not in flag[2:]:
            own.append(token)
            i += 1
            continue
        key = flag[len(prefix) + 3 :].replace("-", "_")
        if "=" in token:
            values, i = [token.split("=", 1)[1]], i + 1
        else:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            values, i = argv[i + 1 : j], j
        passthrough[prefix][key] = _literal(values)
    return own, passthrough


def _literal(values: list[str]) -> Any:
    """A bare flag is True; one value is parsed as a YAML scalar (numbers, booleans); several make a list."""
    parsed = [yaml.safe_load(v) if v else v for v in values]
    if not parsed:
        return True
    return parsed[0] if len(parsed) == 1 else parsed


def _unknown_flag_message(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    flags = [u for u in unknown if u.startswith("-")]
    if not flags:
        return f"unexpected value(s) {' '.join(unknown)}; each value must follow its flag"
    known = [o for a in parser._actions for o in a.option_strings]
    first = flags[0].split("=", 1)[0]
    close = difflib.get_close_matches(first, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    more = f" (and {len(flags) - 1} more: {' '.join(flags[1:])})" if len(flags) > 1 else ""
    return f"unknown flag {first}{more}; {hint}see --help for the flags temper accepts"
