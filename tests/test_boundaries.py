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
    (tmp_path / "client" / "a.py").write_text("from shared.unikd.models import CNN1d\nfrom . import b\n")
    (tmp_path / "server" / "a.py").write_text("import shared.config\nfrom protos import wire_pb2\n")
    (tmp_path / "shared" / "a.py").write_text("from .models import CNN1d\nimport torch\n")
    assert violations(tmp_path) == []


# ---------------------------------------------------------------- cycles and private names

SOURCE_DIRS = ("shared", "client", "server", "protos", "bench")


def module_name(root: Path, file: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path) -> dict[str, Path]:
    return {module_name(root, f): f for d in SOURCE_DIRS if (root / d).is_dir()
            for f in sorted((root / d).rglob("*.py"))}


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (`a.b.c` -> `a.b` if c is not a module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> project modules it imports, at module level or inside functions alike."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, file in modules.items():
        is_pkg = file.name == "__init__.py"
        for _, name in imported_modules(file.read_text(encoding="utf-8"),
                                        mod + ".__init__" if is_pkg else mod):
            target = owning_module(name, modules)
            # a package's __init__ importing its own submodules is not a cycle through them
            if target and target != mod and not (is_pkg and target.startswith(mod + ".")):
                graph[mod].add(target)
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    graph, index, low, stack, on, out = import_graph(root), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports(root: Path) -> list[str]:
    """'file:line imports _name from module' for every underscore name taken across modules."""
    modules = project_modules(root)
    found = []
    for mod, file in modules.items():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                if node.module.split(".")[0] not in SOURCE_DIRS + ("tests",):
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{file.relative_to(root)}:{node.lineno} imports "
                                     f"{alias.name} from {node.module}")
    return found


def test_no_import_cycles():
    cycles = import_cycles(REPO_ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_cross_modules():
    found = private_imports(REPO_ROOT)
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_cycle_and_private_name_checkers_catch_offenders(tmp_path):
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "a.py").write_text("from server.b import f\n")
    (tmp_path / "server" / "b.py").write_text("def f():\n    from server.a import _g\n")
    assert import_cycles(tmp_path) == [["server.a", "server.b"]]
    assert private_imports(tmp_path) == ["server/b.py:2 imports _g from server.a"]


# ---------------------------------------------------------------- the layers of shared/

# Each layer of shared/ and the other layers it may import (README "Architecture"). The method
# and its maths (unikd, clock, data, config, privacy) import no platform code and no Flower:
# they run the same in a notebook, the centralized trainer, a simulated or a deployed node.
SHARED_LAYERS = {
    "errors": set(),
    "clock": {"data", "errors"},
    "config": {"data", "errors", "unikd"},
    "data": {"clock", "config", "errors"},
    "unikd": {"clock", "data", "errors"},
    "privacy": {"clock", "errors"},
    "protocol": {"clock", "config", "data", "errors", "platform", "unikd"},
    "platform": {"config", "errors"},
    "cli": {"clock", "config", "data", "errors", "platform", "privacy", "protocol", "unikd"},
}
PLATFORM_FREE = {"clock", "config", "data", "unikd", "privacy"}
PLATFORM_PACKAGES = {"flwr", "grpc"}


def layer_of(rel: Path) -> str:
    return rel.parts[1].removesuffix(".py")


def layer_violations(root: Path) -> list[str]:
    """'file:line imports X (layer L may not import M)' for every import across shared/ layers."""
    out: list[str] = []
    for file in sorted((root / "shared").rglob("*.py")):
        rel = file.relative_to(root)
        if len(rel.parts) < 3 and rel.name == "__init__.py":
            continue  # shared/__init__.py: the package docstring only
        layer = layer_of(rel)
        module = ".".join(rel.with_suffix("").parts)
        for line, name in imported_modules(file.read_text(encoding="utf-8"), module):
            parts = name.split(".")
            if parts[0] == "shared" and len(parts) > 1 and parts[1] != layer:
                if layer not in SHARED_LAYERS or parts[1] not in SHARED_LAYERS[layer]:
                    out.append(f"{rel}:{line} imports {name} (layer {layer} may not import "
                               f"shared.{parts[1]})")
            elif parts[0] in PLATFORM_PACKAGES and layer in PLATFORM_FREE:
                out.append(f"{rel}:{line} imports {name} (layer {layer} imports no platform "
                           f"code)")
    return out


def test_shared_is_in_known_layers():
    found = {layer_of(f.relative_to(REPO_ROOT)) for f in (REPO_ROOT / "shared").rglob("*.py")
             if len(f.relative_to(REPO_ROOT).parts) > 2 or f.name != "__init__.py"}
    assert found == set(SHARED_LAYERS), f"layers of shared/ not in SHARED_LAYERS: {found}"


def test_shared_layers_hold():
    found = layer_violations(REPO_ROOT)
    assert not found, "layer violations in shared/:\n" + "\n".join(found)


@pytest.mark.parametrize("layer, source, expected", [
    ("unikd", "from shared.platform import processes\n", "layer unikd may not import"),
    ("clock", "import flwr\n", "layer clock imports no platform code"),
    ("privacy", "from shared.protocol import wire\n", "layer privacy may not import"),
])
def test_layer_checker_reports_offenders(tmp_path, layer, source, expected):
    (tmp_path / "shared" / layer).mkdir(parents=True)
    (tmp_path / "shared" / layer / "mod.py").write_text(source)
    found = layer_violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found
    assert found[0].startswith(f"shared/{layer}/mod.py:1 imports")
