"""The package's shape: imports point one way, the core never imports the passes, files stay short."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import fxmeta

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.AST]:
    """Every import statement, inside functions too; ``if TYPE_CHECKING:`` blocks never run."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _import_targets(path: Path, is_module) -> list[str]:
    """The dotted names every import in ``path`` names, relative imports resolved; ``from PKG import NAME``
    names the submodule ``PKG.NAME`` where ``is_module`` says there is one, else ``PKG``."""
    name = _module_name(path)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = here.split(".")
            base = ".".join(anchor[:len(anchor) - (node.level - 1)] + ([base] if base else []))
        targets += [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
    return targets


def import_graph(packages: tuple[str, ...] = ("fxmeta", "passes")) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (edges to its own parent packages left out)."""
    files = [p for pkg in packages for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for target in _import_targets(path, modules.__contains__):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_core_never_imports_the_passes():
    offenders = {name: sorted(e for e in edges if e == "passes" or e.startswith("passes."))
                 for name, edges in import_graph().items() if name.startswith("fxmeta")}
    assert not {k: v for k, v in offenders.items() if v}


LAYERS = {  # ARCHITECTURE.md, "Import directions": a module imports its own package or lower layers only
    "fxmeta.errors": 0, "fxmeta.keys": 0, "fxmeta.ops": 0, "fxmeta.tracing": 1, "fxmeta.models": 1,
    "fxmeta.capture": 2, "fxmeta.analysis": 3, "fxmeta.ir": 4, "fxmeta.pruning": 5, "fxmeta.io": 6,
    "fxmeta.metanet": 7, "fxmeta.training": 7, "fxmeta.metatrain": 8, "fxmeta.pipeline": 8, "fxmeta.cli": 9,
    "fxmeta.__main__": 10,
}


def _layer(module: str) -> tuple[str, int] | None:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def test_imports_point_down_the_layers():
    for name, edges in import_graph().items():
        here = _layer(name)
        if here is None:
            continue
        for target in edges:
            there = _layer(target)
            if there is None or there[0] == here[0]:
                continue
            assert there[1] < here[1], f"{name} (layer {here[1]}) imports {target} (layer {there[1]})"


def _private_imports(path: Path, packages: tuple[str, ...]) -> list[str]:
    """``from M import _name`` in ``path`` where M is a module of ``packages`` (relative imports resolved)."""
    name = _module_name(path)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            anchor = here.split(".")
            base = ".".join(anchor[:len(anchor) - (node.level - 1)] + ([base] if base else []))
        if base.split(".")[0] in packages:
            found += [f"{base}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names():
    """A name shared between modules is public (no leading underscore) where it is defined."""
    offenders = {str(p.relative_to(ROOT)): names for pkg in ("fxmeta", "passes") for p in (ROOT / pkg).rglob("*.py")
                 if (names := _private_imports(p, ("fxmeta", "passes")))}
    assert not offenders


# The libraries of the benchmarks (no main; ARCHITECTURE.md, "benchmarks/"): what benchmarks share. "quality"
# is that package's API (its __init__: settings, base networks, metanetwork, the digits16 data zoos load by
# name); the quality benchmark itself is benchmarks.quality.__main__, which nothing imports.
SHARED_BENCHMARK_MODULES = {"_env", "common", "tp_baselines", "llm_baselines", "llm_recovery", "digits", "zoo", "allocation_cells",
                            "transformer_models", "quality", "calibrated_metanet", "calibrated_sweep", "seqconv",
                            "llm_budget", "llm_speed", "llm_twin"}


def _benchmark_imports(path: Path) -> set[str]:
    """The modules of ``benchmarks`` that ``path`` imports, named inside the package (``benchmarks.x.y`` ->
    ``x.y``); ``from PKG import NAME`` imports the submodule NAME where there is one."""
    def is_module(dotted: str) -> bool:
        file = ROOT.joinpath(*dotted.split("."))
        return file.with_suffix(".py").is_file() or (file / "__init__.py").is_file()

    return {t.removeprefix("benchmarks.") for t in _import_targets(path, is_module) if t.startswith("benchmarks.")}


def test_benchmark_import_resolution():
    assert _benchmark_imports(ROOT / "benchmarks" / "metanet_digits.py") >= {"quality"}
    assert "tp_baselines" in _benchmark_imports(ROOT / "benchmarks" / "quality" / "cells.py")
    assert "quality.settings" in _benchmark_imports(ROOT / "benchmarks" / "quality" / "cells.py")


def test_all_benchmarks_import_no_private_fxmeta_names_and_no_other_benchmark():
    """Every file under benchmarks/ uses fxmeta's public names only and imports no other benchmark: what
    benchmarks share lives in the library modules (inside the quality package its modules import each other)."""
    files = sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        rel = str(path.relative_to(ROOT))
        assert not _private_imports(path, ("fxmeta",)), rel
        own = _module_name(path).removeprefix("benchmarks").lstrip(".")
        others = {m for m in _benchmark_imports(path) if m != own and m not in SHARED_BENCHMARK_MODULES
                  and not (own.startswith("quality") and m.startswith("quality."))}
        assert not others, (rel, others)


def test_the_shared_benchmark_modules_are_libraries():
    """A shared module has no ``main`` and no ``__main__`` block: running it is no benchmark."""
    for name in SHARED_BENCHMARK_MODULES:
        path = ROOT / "benchmarks" / f"{name}.py"
        path = path if path.is_file() else ROOT / "benchmarks" / name / "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), name
        assert "__main__" not in {c.value for n in ast.walk(tree) if isinstance(n, ast.Compare)
                                  for c in n.comparators if isinstance(c, ast.Constant)}, name


@pytest.mark.parametrize("folder", ["fxmeta", "passes", "benchmarks"])
def test_no_source_file_is_too_long(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_no_submodule_is_shadowed_by_a_public_name():
    """``pkg.name`` is the submodule whenever a submodule of that name exists (and vice versa)."""
    for info in pkgutil.walk_packages(fxmeta.__path__, "fxmeta."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name, module in list(sys.modules.items()):
        if not name.startswith("fxmeta.") or name.endswith("__main__"):
            continue
        parent, _, child = name.rpartition(".")
        assert getattr(sys.modules[parent], child) is module, f"{parent}.{child} is not the module {name}"


def test_the_public_api_is_stable():
    """Every name of fxmeta.__all__ is the same object on every access, before and after imports."""
    first = {name: getattr(fxmeta, name) for name in fxmeta.__all__}
    for info in pkgutil.walk_packages(fxmeta.__path__, "fxmeta."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    for name in fxmeta.__all__:
        assert getattr(fxmeta, name) is first[name], name
        assert getattr(fxmeta, name) is getattr(fxmeta, name), name
    from fxmeta.metatrain.loop import meta_train

    assert fxmeta.meta_train is meta_train and callable(fxmeta.meta_train)
    assert not any(type(first[name]).__name__ == "module" for name in fxmeta.__all__)
