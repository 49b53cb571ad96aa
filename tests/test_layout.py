"""The package's layers: imports only go down the data flow, and nothing imports in a circle.

Walks every import statement of the package with `ast` (at module level, inside functions,
and under `if TYPE_CHECKING:` alike: an upward import anywhere is a circle waiting to close).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neuroevo_sparse"

# Top to bottom: a module may import its own layer's modules and any layer below.
LAYERS = [
    {"neuroevo_sparse", "api", "cli", "__main__", "launch"},
    {"report"},
    {"evolution"},
    {"evaluators"},
    {"store"},
    {"train"},
    {"topology"},
    {"problem"},
    {"config"},
    {"seeds", "draws", "faults"},
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `module` imports, anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "neuroevo_sparse"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "neuroevo_sparse":
                base = node.module
            else:
                continue
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != module}


def layer(module: str) -> int:
    rel = module.split(".")
    name = rel[1] if len(rel) > 1 else rel[0]
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS (and to docs/architecture.md)")


GRAPH = {m: imports(m, p, set(modules())) for m, p in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    up = sorted(d for d in GRAPH[module]
                if layer(d) < layer(module) and not (d == "neuroevo_sparse" and module.count(".") >= 1))
    assert not up, f"{module} imports from layers above it: {up}"


def test_no_import_circles():
    # A package's __init__ may be imported by its own modules (Python runs it first anyway).
    graph = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_subpackage_says_what_it_owns_and_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc and ("Owns" in doc or "owns" in doc), f"{init}: docstring"


def test_no_subpackage_shadows_a_name_of_the_public_api():
    """`from neuroevo_sparse import evolve` is the API's function: a subpackage of that name
    would replace it as soon as anything imported the subpackage."""
    import neuroevo_sparse
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}
    assert not set(neuroevo_sparse.__all__) & subpackages
