"""temper's imports run one way (STYLE.md, 13): no module imports itself through others. Every import counts,
those inside functions too (deferring an import hides a cycle, it does not remove it)."""

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "temper"


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in it}; ``from a import b`` is ``a.b`` when that is a
    module, else ``a``."""
    def name(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    paths = {name(path): path for path in package.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                             for a in node.names)
        graph[module] = (found & set(paths)) - {module}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert len(graph) > 100 and "temper.engine.model_runner" in graph["temper.engine.llm_engine"]
    found = cycle(graph)
    assert found is None, f"import cycle: {' -> '.join(found)}"


def test_a_deferred_import_back_is_a_cycle(tmp_path):
    """What the cycles this test replaced looked like: one side imports the other inside a function."""
    engine = tmp_path / "temper" / "engine"
    engine.mkdir(parents=True)
    for path, text in ((engine.parent / "__init__.py", ""), (engine / "__init__.py", ""),
                       (engine / "a.py", "from temper.engine import b\n"),
                       (engine / "b.py", "def f():\n    from temper.engine.a import g\n")):
        path.write_text(text)
    graph = import_graph(engine.parent)
    assert graph["temper.engine.a"] == {"temper.engine.b"} and graph["temper.engine.b"] == {"temper.engine.a"}
    assert sorted(cycle(graph)[:2]) == ["temper.engine.a", "temper.engine.b"]
