"""The folder tree is the architecture (docs/DESIGN.md): no layer reaches around another.

Checked on the source's import statements, so a violation fails here before it
becomes a habit: third-party imports per file, the walls between refserver's own layers
(http never reaches the CLI, the engine never reaches chat/http/stream) through the whole
import graph.
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
    "refserver/stream": {"numpy", "onnxruntime", "torch", "tornado", "llguidance"},
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


# ------------------------------------------------------------------ walls between refserver's own layers
# package -> internal modules it must never reach, directly or through anything it imports
# (function-level imports count: a lazy import is still a dependency).
WALLS = {
    "refserver/http": ("refserver.cli",),
    "refserver/engine": ("refserver.chat", "refserver.http", "refserver.stream", "refserver.schemas",
                         "refserver.cli"),
    "refserver/stream": ("refserver.http", "refserver.cli"),
    "refserver/chat": ("refserver.http", "refserver.cli"),
    "refserver/schemas": ("refserver.http", "refserver.cli"),
    "backends": ("refserver",),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(path: Path, modules: set[str]) -> set[str]:
    """The refserver/backends modules `path` imports, relative imports resolved; importing
    `a.b.c` also runs `a` and `a.b` (their __init__)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            parts = t.split(".")
            found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [f for pkg in ("refserver", "backends") for f in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(f): f for f in files}
    return {m: internal_imports(f, set(modules)) for m, f in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module reachable from `start` -> the module that first imported it."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        m = todo.pop()
        for n in graph.get(m, ()):
            if n not in via and n != start:
                via[n] = m
                todo.append(n)
    return via


def path_to(via: dict[str, str], start: str, target: str) -> str:
    chain = [target]
    while chain[-1] != start:
        chain.append(via[chain[-1]])
    return " -> ".join(reversed(chain))


@pytest.mark.parametrize("package", sorted(WALLS))
def test_walls_hold_transitively(package):
    graph = import_graph()
    prefix = package.replace("/", ".")
    bad = []
    for m in sorted(graph):
        if m != prefix and not m.startswith(prefix + "."):
            continue
        via = reachable(graph, m)
        for target in via:
            if any(target == w or target.startswith(w + ".") for w in WALLS[package]):
                bad.append(path_to(via, m, target))
                break
    assert not bad, "\n".join(bad)


def test_the_wall_check_sees_transitive_imports(tmp_path):
    """The checker itself: a chain a -> b -> c is found from a."""
    graph = {"x.a": {"x.b"}, "x.b": {"x.c"}, "x.c": set()}
    via = reachable(graph, "x.a")
    assert path_to(via, "x.a", "x.c") == "x.a -> x.b -> x.c"
