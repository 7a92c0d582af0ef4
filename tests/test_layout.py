"""The package's shape (docs/architecture.md, "Layout"): imports point down the layers, no import circle, short modules."""
import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "pipeline"
# Lowest first. A module may import its own layer or a lower one; layers are folders or modules.
LAYERS = [
    {"config", "suggest", "world", "distributed", "metrics", "faults", "runlock"},
    {"numerics", "runtime", "checkpoint", "optim", "models", "trained"},
    {"data"},
    {"tracking"},
    {"engines"},
    {"training"},
    {"tools"},
    {"cli", "__main__"},
]
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (deferred imports count: they are still arrows)."""
    me = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != me and not me.startswith(name + "."):  # own packages run first anyway
                found.add(name)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_imports_point_down_the_layers():
    modules = _modules()
    upward = [f"{m} -> {dep}" for m, path in modules.items() if m != "pipeline"
              for dep in _imports(path, modules) if _layer(dep) > _layer(m)]
    assert upward == []


def test_no_import_circle():
    modules = _modules()
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(module: str, stack: list[str]) -> list[str]:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [module, dep] if dep in stack else [module, dep]
            if dep not in state and (cycle := visit(dep, stack + [module])):
                return cycle
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            assert visit(module, []) == []


def test_no_module_is_long():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
