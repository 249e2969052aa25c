"""README.md lists every case of the suite, and every listed case is a test: a `pytest.param` id, or a test
function `test_<case with underscores>` (the parametrized `test_each_*` functions are not cases)."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent


def case_ids_in_tests() -> list[str]:
    found = []
    for path in sorted(HERE.glob("test_bad_*.py")):
        for m in re.finditer(r'\bid="([a-z0-9-]+)"|^def test_(?!each_|readme_)([a-z0-9_]+)\(', path.read_text(), re.M):
            found.append(m[1] or m[2].replace("_", "-"))
    return found


def case_ids_in_readme() -> list[str]:
    return re.findall(r"^\| `([a-z0-9-]+)` \|", (HERE / "README.md").read_text(), re.M)


def test_readme_lists_every_case():
    tests, readme = case_ids_in_tests(), case_ids_in_readme()
    assert len(tests) == len(set(tests)), sorted({c for c in tests if tests.count(c) > 1})
    assert len(readme) == len(set(readme)), sorted({c for c in readme if readme.count(c) > 1})
    assert sorted(set(tests) - set(readme)) == [], "cases missing from README.md"
    assert sorted(set(readme) - set(tests)) == [], "README.md rows without a test"
    assert len(tests) >= 40
    for category in ("data", "flags", "plug", "http", "ckpt"):
        assert sum(c.startswith(f"{category}-") for c in tests) >= 5, category
