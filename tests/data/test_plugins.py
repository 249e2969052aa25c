"""load_function: dotted import paths and file paths, and its error messages."""

from __future__ import annotations

import sys

import pytest

from temper.data.plugins import PluginError, load_function


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text("VALUE = 3\n\ndef double(x):\n    return 2 * x\n\nclass Thing:\n    pass\n")
    return path


def test_loads_from_file_path(plugin_file):
    fn = load_function(f"{plugin_file}:double")
    assert fn(4) == 8
    assert load_function(f"{plugin_file}:double") is fn  # imported once per file
    assert sys.modules[fn.__module__] is not None


def test_loads_class_from_file(plugin_file):
    assert load_function(f"{plugin_file}:Thing").__name__ == "Thing"


def test_loads_dotted_path(plugin_file, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    assert load_function("my_plugin.double")(5) == 10
    assert load_function("temper.data.buffer.pop_first").__name__ == "pop_first"


@pytest.mark.parametrize(
    "path, match",
    [
        ("nodots", "expected 'package.module.function'"),
        ("no_such_pkg_xyz.fn", "no module named 'no_such_pkg_xyz'"),
        ("temper.data.buffer.nope", "has no 'nope'; callables there: .*pop_first"),
    ],
)
def test_dotted_errors(path, match):
    with pytest.raises(PluginError, match=match):
        load_function(path, flag="--buffer-filter-path")


def test_file_errors(plugin_file, tmp_path):
    with pytest.raises(PluginError, match="--buffer-filter-path .*not found"):
        load_function(f"{tmp_path}/missing.py:fn", flag="--buffer-filter-path")
    with pytest.raises(PluginError, match="has no 'nope'"):
        load_function(f"{plugin_file}:nope")
    with pytest.raises(PluginError, match="'VALUE' is a int"):
        load_function(f"{plugin_file}:VALUE")


def test_bare_file_names_its_one_function_or_class(tmp_path):
    """`--custom-rm-path custom_rm.py`: imported names and private helpers do not count."""
    path = tmp_path / "custom_rm.py"
    path.write_text("import math\nfrom os.path import join\n\ndef _helper():\n    pass\n\n"
                    "class CustomRewardModel:\n    pass\n")
    assert load_function(str(path), flag="--custom-rm-path").__name__ == "CustomRewardModel"
    assert load_function(f"{path}:CustomRewardModel") is load_function(str(path))


def test_bare_file_errors(plugin_file, tmp_path):
    with pytest.raises(PluginError, match=r"--rollout-function-path .*defines 2 public functions or classes "
                       r"\(double, Thing\); name one as '.*my_plugin.py:NAME'"):
        load_function(str(plugin_file), flag="--rollout-function-path")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(PluginError, match="it defines none; name one as"):
        load_function(str(empty))
    with pytest.raises(PluginError, match="not found"):
        load_function(str(tmp_path / "missing.py"))


def test_error_inside_plugin_propagates_and_is_not_cached(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_function(f"{path}:fn")
    path.write_text("def fn():\n    return 1\n")
    assert load_function(f"{path}:fn")() == 1
