"""The folder tree is the architecture (docs/DESIGN.md): no layer reaches around another.

Checked on the source's import statements, so a violation fails here before it
becomes a habit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.feature("basic"), pytest.mark.profile("refserver")]

# package (folder) -> top-level modules it must never import
FORBIDDEN = {
    "backends": {"refserver", "tornado", "pydantic", "torch"},
    "refserver/engine": {"tornado", "asyncio", "pydantic", "onnxruntime", "torch"},
    "refserver/chat": {"numpy", "onnxruntime", "tornado", "torch"},
    "refserver/http": {"numpy", "onnxruntime", "torch", "llguidance"},
    "refserver/schemas": {"numpy", "onnxruntime", "torch", "tornado"},
    "refserver": {"torch"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_reaches_around_another(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}"
    bad = []
    for f in files:
        for name in imported_modules(f):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
