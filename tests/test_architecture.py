"""The package's layers, as toylib/ARCHITECTURE.md draws them, hold in every module.

Every import in toylib (at module level or inside a function) is read from the source with
``ast``: a module may import from its own folder and from the layers below, never from a layer
above, never from a peer layer, and never a private name of another module.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "toylib"

# folder -> rank; a module may import ranks strictly lower than its own, or its own folder.
RANK = {"core": 0, "testing": 1, "resilience": 1, "data": 1, "present": 2, "prod": 2, "claims": 3,
        "chapters": 4, "labs": 5}
ROOT_MODULES = {"__init__"}      # toylib/__init__.py re-exports the core's main names


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "toylib", module
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        yield name, path


def imports(name: str, path: Path):
    """(imported module, imported names) for every import statement in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names]


ALL = list(modules())


def test_every_module_is_in_a_known_layer():
    for name, _ in ALL:
        layer = layer_of(name)
        assert layer in RANK or layer in ROOT_MODULES, f"{name}: not in a layer of ARCHITECTURE.md"


@pytest.mark.parametrize("name,path", ALL, ids=[n for n, _ in ALL])
def test_imports_go_down_the_layers(name, path):
    mine = layer_of(name)
    for mod, names in imports(name, path):
        if not mod.startswith("toylib"):
            continue
        # `from toylib import claims` imports toylib.claims, not the package root
        targets = [f"toylib.{n}" for n in names] if mod == "toylib" else [mod]
        for target in targets:
            theirs = layer_of(target)
            if theirs == "__init__" or theirs not in RANK:
                if mine in ROOT_MODULES:
                    continue
                pytest.fail(f"{name} imports the package root ({mod}); import the module itself")
            if mine in ROOT_MODULES:
                assert RANK[theirs] == 0, f"toylib/__init__ may only re-export the core: {target}"
                continue
            if theirs == mine:
                continue
            assert RANK[theirs] < RANK[mine], (
                f"{name} ({mine}, rank {RANK[mine]}) imports {target} ({theirs}, rank "
                f"{RANK[theirs]}): a layer may only import the layers below it")


@pytest.mark.parametrize("name,path", ALL, ids=[n for n, _ in ALL])
def test_no_private_names_of_other_modules(name, path):
    for mod, names in imports(name, path):
        if not mod.startswith("toylib"):
            continue
        private_mod = [p for p in mod.split(".") if p.startswith("_") and p != "__init__"]
        assert not private_mod, f"{name} imports private module {mod}"
        bad = [n for n in names if n.startswith("_")]
        assert not bad, f"{name} imports private names {bad} from {mod}"


def test_the_layer_test_bites(tmp_path):
    """A module of the core importing a chapter, or a private name, is caught."""
    core = tmp_path / "toylib" / "core"
    core.mkdir(parents=True)
    (core / "bad.py").write_text("from toylib.chapters import ch02_chatty\n"
                                 "from toylib.core.load import _secret\n")
    found = list(imports("toylib.core.bad", core / "bad.py"))
    assert ("toylib.chapters", ["ch02_chatty"]) in found
    assert RANK[layer_of("toylib.chapters")] > RANK[layer_of("toylib.core.bad")]
    assert any(n.startswith("_") for _, ns in found for n in ns)
