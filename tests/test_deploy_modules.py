"""The deployment modules, read as source: every Flower internal a side uses is declared in
shared/platform/flower_pins.py (so `check()` verifies it at start-up), and every function of
the modules the cloud's deployment and the Flower internals were split into says what it does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.platform import flower_pins

REPO = Path(__file__).resolve().parents[1]

# a module that uses Flower internals -> the declarations `check()` verifies for it
SIDES = {
    "client/node/supernode_internals.py": flower_pins.SUPERNODE_SIDE,
    "client/node/fleet_probe.py": flower_pins.FLEET_PROBE,
    "server/deploy/control_internals.py": flower_pins.CONTROL_SIDE,
    "shared/platform/flower_pulls.py": flower_pins.BOTH_SIDES,
}
PUBLIC_FLWR = {"flwr.app", "flwr.clientapp"}  # Flower's public API: not pinned


def undeclared_internals(source: str, declared) -> list[str]:
    """Every flwr name `source` imports or reaches through an imported module that `declared`
    ((module, attribute, parameters) rows) does not list; public API modules aside."""
    pinned = {(module, attr) for module, attr, _ in declared}
    modules = {module for module, _, _ in declared}
    aliases: dict[str, str] = {}  # local name -> a declared flwr module
    out: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "flwr":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in modules:
                    aliases[a.asname or a.name] = full
                elif node.module not in PUBLIC_FLWR and (node.module, a.name) not in pinned:
                    out.append(full)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] != "flwr":
                    continue
                if a.name in modules and a.asname:
                    aliases[a.asname] = a.name
                else:
                    out.append(a.name)  # `import flwr.x` reaches anything through its path
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and (aliases[node.value.id], node.attr) not in pinned:
            out.append(f"{aliases[node.value.id]}.{node.attr}")
    return out


@pytest.mark.parametrize("path", sorted(SIDES))
def test_every_flower_internal_a_side_uses_is_pinned_and_checked(path):
    source = (REPO / path).read_text(encoding="utf-8")
    assert undeclared_internals(source, SIDES[path]) == []


def test_the_pin_checker_finds_undeclared_internals():
    declared = (("flwr.a.b", "f", None), ("flwr.a.mod", "g", None))
    source = ("from flwr.a.b import f, h\n"
              "from flwr.a import mod as m\n"
              "from flwr.app import Message\n"
              "import flwr.c\n"
              "m.g(); m.k()\n")
    assert undeclared_internals(source, declared) == ["flwr.a.b.h", "flwr.c", "flwr.a.mod.k"]


# what server/deploy/superlink.py and shared/platform/flower_internals.py were split into
DOCUMENTED = sorted([*(f"server/deploy/{name}.py" for name in (
    "cloud_certs", "cloud_config", "flwr_cli", "health", "run_overrides", "submit", "superlink")),
    *SIDES, "shared/platform/flower_pins.py"])


@pytest.mark.parametrize("path", DOCUMENTED)
def test_every_function_and_class_has_a_docstring(path):
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    bare = [f"{node.name} (line {node.lineno})" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not ast.get_docstring(node)]
    assert bare == []
