"""`load_function`: the object behind a plug-in path such as `--buffer-filter-path`.

Three spellings, as slime users write them: a dotted import path `pkg.module.fn`, a file and a name
`path/to/file.py:fn` (the file need not be on `sys.path`), or a bare `path/to/file.py`, which names the
one public function or class that the file itself defines (several or none is an error listing them).
A file is imported once per absolute path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any


class PluginError(ImportError):
    """A plug-in path that cannot be loaded; the message names the flag, the path and the fix."""


def load_function(path: str, *, flag: str = "plug-in path") -> Any:
    """The callable named by `path` ("pkg.mod.fn", "file.py:fn" or "file.py"); PluginError if absent or not callable."""
    if path.endswith(".py"):
        return _only_callable(_import_file(path, path, flag), path, flag)
    if _is_file_path(path):
        file, name = path.rsplit(":", 1)
        module = _import_file(file, path, flag)
    else:
        module_name, _, name = path.rpartition(".")
        if not module_name:
            raise PluginError(
                f"{flag} {path!r}: expected 'package.module.function', 'path/to/file.py:function' or 'path/to/file.py'"
            )
        module = _import_dotted(module_name, path, flag)
    obj = getattr(module, name, None)
    if obj is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise PluginError(f"{flag} {path!r}: {module.__name__} has no {name!r}; callables there: {public}")
    if not callable(obj):
        raise PluginError(f"{flag} {path!r}: {name!r} is a {type(obj).__name__}, expected a function or class")
    return obj


def _only_callable(module: ModuleType, path: str, flag: str) -> Any:
    """The one public function or class defined in `module` (not imported into it)."""
    found = [
        name for name, obj in vars(module).items()
        if not name.startswith("_") and callable(obj) and getattr(obj, "__module__", None) == module.__name__
    ]  # fmt: skip
    if len(found) == 1:
        return getattr(module, found[0])
    what = f"defines {len(found)} public functions or classes ({', '.join(found)})" if found else "defines none"
    raise PluginError(f"{flag} {path!r}: a bare file path names the file's one public function or class, but it "
                      f"{what}; name one as '{path}:NAME'")


def _is_file_path(path: str) -> bool:
    return ":" in path and path.rsplit(":", 1)[0].endswith(".py")


def _import_dotted(module_name: str, path: str, flag: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only a missing plug-in module is our message; a missing dependency inside it is the user's.
        if e.name is None or not module_name.startswith(e.name):
            raise
        raise PluginError(
            f"{flag} {path!r}: no module named {e.name!r}; check the spelling and that it is importable "
            f"(on PYTHONPATH), or use 'path/to/file.py:function'"
        ) from e


def _import_file(file: str, path: str, flag: str) -> ModuleType:
    full = os.path.abspath(file)
    if not os.path.isfile(full):
        raise PluginError(f"{flag} {path!r}: file {full} not found")
    digest = hashlib.sha1(full.encode()).hexdigest()[:10]
    module_name = f"temper_plugin_{os.path.splitext(os.path.basename(full))[0]}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # registered first so that pickling and dataclasses can find it
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[module_name]
        e.add_note(f"raised while importing {full} for {flag} {path!r}")
        raise
    return module
