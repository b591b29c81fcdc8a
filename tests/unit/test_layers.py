"""The floor plan holds: no import circles between modules, each layer imports only the layers below
it, engines never see protobuf or the Tablet, and protobuf stays at the edges."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Lowest first. A module may import its own layer's package and any lower layer, nothing higher;
# packages that share a layer do not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("agent.errors", "agent.pb"),
    ("agent.config",),
    ("agent.log",),
    ("agent.operations", "agent.params"),
    ("agent.aio",),
    ("agent.mysql", "agent.storage", "agent.topo", "agent.statedir"),
    ("agent.pipeline",),
    ("agent.catalog",),
    ("agent.binlogs",),
    ("engines",),
    ("agent.tablet",),
    ("agent.ops",),
    ("agent.daemon", "agent.ctl"),
]
# Who may speak protobuf: the daemon's edge, the client program and the topology's records.
PROTOBUF_USERS = ("agent.daemon", "agent.ctl", "agent.topo", "agent.pb")
MAX_MODULES_PER_FOLDER = 11


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def our_modules() -> dict[str, Path]:
    found = {}
    for top in ("agent", "engines"):
        for path in (REPO / top).rglob("*.py"):
            if "pb" in path.relative_to(REPO).parts[:2] and path.parent.name == "pb":
                continue
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """Our modules that `name` imports (type-checking-only imports included: they are edges too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for imported in targets:
            target = imported
            while target and target not in known and not target.startswith("agent.pb"):
                target = target.rpartition(".")[0]
            if target.startswith("agent.pb"):
                yield "agent.pb"
            elif target and target != name and target not in ("agent",):
                yield target


def layer_of(name: str) -> tuple[int, str]:
    for rank, packages in enumerate(LAYERS):
        for package in packages:
            if name == package or name.startswith(package + "."):
                return rank, package
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = our_modules()
    known = set(modules)
    return {name: set(imports_of(name, path, known)) for name, path in modules.items()}


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    for name in graph:
        if name not in ("agent",):
            layer_of(name)


def test_layers_import_only_downwards(graph: dict[str, set[str]]) -> None:
    problems = []
    for name, deps in sorted(graph.items()):
        if name == "agent":
            continue
        rank, package = layer_of(name)
        for dep in sorted(deps):
            dep_rank, dep_package = layer_of(dep)
            if dep_rank > rank or (dep_rank == rank and dep_package != package):
                problems.append(f"{name} ({package}) imports {dep} ({dep_package})")
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_engines_see_no_protobuf_and_no_tablet(graph: dict[str, set[str]]) -> None:
    for name, deps in graph.items():
        if name.startswith("engines"):
            assert "agent.pb" not in deps, f"{name} imports protobuf"
            assert "agent.tablet" not in deps, f"{name} imports the Tablet"


def test_protobuf_stays_at_the_edges(graph: dict[str, set[str]]) -> None:
    users = sorted(n for n, deps in graph.items() if "agent.pb" in deps and not n.startswith(PROTOBUF_USERS))
    assert not users, f"protobuf used below the daemon: {users}"


def test_folders_stay_small() -> None:
    for folder in [REPO / "engines", *(p for p in (REPO / "agent").rglob("*") if p.is_dir())]:
        if folder.name in ("pb", "__pycache__"):
            continue
        modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
        assert len(modules) <= MAX_MODULES_PER_FOLDER, f"{folder} has {len(modules)} modules"
