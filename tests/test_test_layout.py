"""The test tree itself: pytest imports test files by their base name (the folders have no __init__.py), so two
test files of one name in different folders stop a fresh collection with "import file mismatch"."""

from collections import Counter
from pathlib import Path


def test_every_test_file_name_is_unique():
    names = Counter(path.name for path in Path(__file__).parent.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
