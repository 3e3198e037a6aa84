"""Package boundaries, checked on the source with `ast` (no imports are executed).

shared/ is common to both sides, so it imports neither server/ nor client/; the cloud side and the
edge side never import each other; protos/ (the wire format) depends on none of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "client", "server", "protos")
FORBIDDEN = {
    "shared": {"server", "client"},
    "client": {"server"},
    "server": {"client"},
    "protos": {"shared", "server", "client"},
}
DYNAMIC_IMPORTERS = {"import_module", "__import__"}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`; `module` is the file's dotted name.

    Relative imports are resolved against the file's package; `importlib.import_module("x")` and
    `__import__("x")` with a literal name count too.
    """
    package = module.rsplit(".", 1)[0] if "." in module else ""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = parts[: len(parts) - (node.level - 1)] if node.level - 1 <= len(parts) else []
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from . import server` names modules in the alias list
            names = [f"{name}.{a.name}" if name else a.name for a in node.names] if not node.module \
                else [name]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Call):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if fname in DYNAMIC_IMPORTERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path) -> list[str]:
    """'file:line imports X (pkg must not import Y)' for every boundary crossing under `root`."""
    out: list[str] = []
    for pkg in PACKAGES:
        for file in sorted((root / pkg).rglob("*.py")):
            rel = file.relative_to(root)
            module = ".".join(rel.with_suffix("").parts)
            for line, name in imported_modules(file.read_text(encoding="utf-8"), module):
                top = name.split(".")[0]
                if top in FORBIDDEN[pkg]:
                    out.append(f"{rel}:{line} imports {name} ({pkg}/ must not import {top}/)")
    return out


def test_every_package_has_sources():
    for pkg in PACKAGES:
        assert list((REPO_ROOT / pkg).rglob("*.py")), f"no .py files under {pkg}/; is the layout intact?"


def test_package_boundaries_hold():
    found = violations(REPO_ROOT)
    assert not found, "boundary violations:\n" + "\n".join(found)


@pytest.mark.parametrize("pkg, source, expected", [
    ("shared", "import server.app\n", "shared/mod.py:1 imports server.app"),
    ("shared", "x = 1\nfrom client.fit import step\n", "shared/mod.py:2 imports client.fit"),
    ("client", "from server import strategy\n", "client/mod.py:1 imports server"),
    ("server", "import importlib\nm = importlib.import_module('client.x')\n",
     "server/mod.py:2 imports client.x"),
    ("protos", "from shared.errors import DataError\n", "protos/mod.py:1 imports shared.errors"),
    ("shared", "from .. import server\n", "shared/mod.py:1 imports server"),
])
def test_checker_reports_file_and_line(tmp_path, pkg, source, expected):
    # Prepare: a fake tree with one offending file
    for p in PACKAGES:
        (tmp_path / p).mkdir()
    (tmp_path / pkg / "mod.py").write_text(source)
    # Execute
    found = violations(tmp_path)
    # Assert
    assert any(v.startswith(expected) for v in found), found


def test_checker_allows_legal_imports(tmp_path):
    for p in PACKAGES:
        (tmp_path / p).mkdir()
    (tmp_path / "client" / "a.py").write_text("from shared.models import CNN1d\nfrom . import b\n")
    (tmp_path / "server" / "a.py").write_text("import shared.config\nfrom protos import wire_pb2\n")
    (tmp_path / "shared" / "a.py").write_text("from .models import CNN1d\nimport torch\n")
    assert violations(tmp_path) == []
