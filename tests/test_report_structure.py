"""The report package, the plotting helpers and ``tune_cli`` stay small enough to read: no
function over 50 statements, no file over 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_green"
FILES = sorted([*(PACKAGE / "report").glob("*.py"), PACKAGE / "tune_cli.py", PACKAGE / "_plotting.py"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_functions_and_files_stay_small(path: Path):
    source = path.read_text()
    assert len(source.splitlines()) < 450
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            statements = sum(isinstance(n, ast.stmt) for n in ast.walk(node)) - 1  # the def itself excluded
            assert statements <= 50, f"{path.name}:{node.lineno} {node.name} has {statements} statements"
