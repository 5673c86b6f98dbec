"""The shape of the source tree: imports run one way, the package root stays small, and
no module grows past 400 lines.

The import graph is read from the source with :mod:`ast`, so it counts every import:
at module level, inside functions (a lazy import is still a dependency) and under
``if TYPE_CHECKING:`` (a type is a dependency too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: source directory -> the package name it is installed as
PACKAGES = {"torchdoctor": "torchdoctor", "checks": "torchdoctor.checks"}
MAX_FLAT_MODULES = 15
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of torchdoctor/ and checks/."""
    found: dict[str, Path] = {}
    for directory, package in PACKAGES.items():
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            parts = [package, *path.relative_to(REPO_ROOT / directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              known: set[str]) -> list[str]:
    """The modules of ``known`` that one import statement of ``module`` depends on."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: resolved against the importing module's package
            package = module if is_package else module.rpartition(".")[0]
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # `from package import submodule` depends on the submodule itself
        candidates = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known
                      else source for alias in node.names]
    targets = []
    for name in candidates:
        while name and name not in known:  # `import a.b.c` of a module a.b: a.b
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.append(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Module -> the torchdoctor / checks modules it imports (anywhere in its source)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {
            target
            for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for target in _imported(node, name, path.name == "__init__.py", known)}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_sees_lazy_relative_and_type_only_imports() -> None:
    graph = import_graph()
    assert "torchdoctor.scriptrun.patches" in graph["torchdoctor.scriptrun.instrument"]
    # `from torchdoctor import checks` inside a function is a dependency on checks/
    assert "torchdoctor.checks" in graph["torchdoctor.plugins"]
    # a module of checks/ is named as installed
    assert any(name.startswith("torchdoctor.checks.") for name in graph)


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    described = ["; ".join(f"{a} -> {b}" for a in cycle for b in sorted(graph[a])
                           if b in cycle) for cycle in cycles]
    assert not cycles, "import cycles (move the shared piece down):\n" + "\n".join(described)


def test_the_package_root_stays_small() -> None:
    flat = sorted(path.name for path in (REPO_ROOT / "torchdoctor").glob("*.py"))
    assert len(flat) <= MAX_FLAT_MODULES, f"{len(flat)} modules in torchdoctor/: {flat}"


@pytest.mark.parametrize("directory", sorted(PACKAGES))
def test_no_module_over_400_lines(directory: str) -> None:
    long = {str(path.relative_to(REPO_ROOT)): lines
            for path in sorted((REPO_ROOT / directory).rglob("*.py"))
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _is_broad(handler: ast.ExceptHandler) -> bool:
    """A bare ``except:``, or one naming Exception/BaseException (alone or in a tuple)."""
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("Exception", "BaseException")
               for n in names)


def test_broad_exception_handlers_say_whose_code_they_guard() -> None:
    """Our own bug must surface as ``crashed``, so a broad handler is only for the
    user's code or a plugin, and says which on its ``except`` line. Handlers that only
    clean up and re-raise are exempt; a check catching the user's failure uses
    ``torchdoctor.errors.user_code`` / ``UserCodeError`` instead of a broad handler."""
    unexplained = []
    for path in _modules().values():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.ExceptHandler) or not _is_broad(node):
                continue
            last = node.body[-1]
            if isinstance(last, ast.Raise) and last.exc is None:
                continue
            if "#" not in lines[node.lineno - 1]:
                unexplained.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not unexplained, ("broad except without a comment saying whose code it "
                             f"guards: {unexplained}")
