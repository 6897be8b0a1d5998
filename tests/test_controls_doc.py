"""docs/CONTROLS.md cannot drift from the suite: every test it cites as proof
(``tests/<file>.py::<function>`` or ``e2e/<file>.py::<function>``) exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTROLS = ROOT / "docs" / "CONTROLS.md"
CITATION = re.compile(r"\b((?:tests|e2e)/[\w/]+\.py)::(\w+)")
ASVS_ID = re.compile(r"^\| V\d+\.\d+\.\d+", re.MULTILINE)


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def missing_citations(text: str, root: Path = ROOT) -> list[str]:
    """Every cited test that does not exist, as ``file::function``."""
    missing = []
    cache: dict[Path, set[str]] = {}
    for file, function in CITATION.findall(text):
        path = root / file
        if not path.is_file():
            missing.append(f"{file}::{function} (no such file)")
            continue
        if path not in cache:
            cache[path] = defined_functions(path)
        if function not in cache[path] or not function.startswith("test_"):
            missing.append(f"{file}::{function}")
    return missing


def test_every_cited_test_exists():
    text = CONTROLS.read_text(encoding="utf-8")
    assert len(CITATION.findall(text)) >= 60, "the map cites the tests that prove it"
    assert missing_citations(text) == []


def test_a_citation_of_a_missing_test_is_caught():
    fake = (
        "| V9.2.2 | x | met | y | `tests/test_redis_tls.py::test_no_such_thing`, "
        "`tests/test_nothing_here.py::test_a`, `tests/test_redis_tls.py::refused` |"
    )
    assert missing_citations(fake) == [
        "tests/test_redis_tls.py::test_no_such_thing",
        "tests/test_nothing_here.py::test_a (no such file)",
        "tests/test_redis_tls.py::refused",
    ]


def test_the_map_lists_unmet_and_compensated_requirements_by_id():
    text = CONTROLS.read_text(encoding="utf-8")
    rows = ASVS_ID.findall(text)
    assert len(rows) >= 30
    assert "**not met**" in text and "**compensating**" in text
    v922 = next(line for line in text.splitlines() if line.startswith("| V9.2.2 "))
    assert "compensating" in v922 and "edge" in v922
