"""What a stored benchmark run is keyed by, so that a stale result is never reused silently.

A key holds every resolved config value that can change results (defaults included: a default
changed in the code changes the key of every run that left it alone), the package and torch versions, and a hash
of the source of every neuroevo_sparse module the run's entry point imports, followed
transitively (`code_hash`): an edit to the code that trains changes the key even where the
version was not bumped, and an edit elsewhere (the CLI, plots) does not. Settings that cannot
change results (`NEUTRAL`: the backend, worker counts, checkpointing, progress display) are
left out, so a run keyed on one backend or machine size is found again on another.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "neuroevo_sparse"


def _file_of(module: str) -> Path | None:
    """neuroevo_sparse.a.b -> its source file, or None if it is not a module of the package
    (a C extension's source, neuroevo_sparse/train/_kernels.c, counts: it decides the arithmetic)."""
    parts = module.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py", base.with_suffix(".c")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str, top_level: bool = False) -> set[str]:
    """Modules of the package that `path` (the module `module`) imports: anywhere in it (an
    import inside a function may run while training), or only at module level."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in (tree.body if top_level else _walk_running(tree)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "neuroevo_sparse"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            elif (node.module or "").split(".")[0] == "neuroevo_sparse":
                base = node.module
            else:
                continue
            submodules = {f"{base}.{a.name}" for a in node.names if _file_of(f"{base}.{a.name}")}
            # `from . import x` with x a module runs the package's __init__ as a parent only
            # (modules_of adds parents); any other name is taken from the package itself.
            if len(submodules) < len(node.names):
                found.add(base)
            found |= submodules
    return {m for m in found if _file_of(m) is not None}


def _walk_running(tree: ast.AST):
    """ast.walk, less the bodies of `if TYPE_CHECKING:`: imports for type checkers only never
    run, so they decide nothing a run computes."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@lru_cache(maxsize=None)
def modules_of(entry: str) -> tuple[str, ...]:
    """The package modules `entry` (e.g. "neuroevo_sparse.train.single") needs, itself included, sorted.
    Parent packages' __init__ files count too, since Python runs them on import, with what they
    import at module level (neuroevo_sparse/__init__.py imports its API lazily, on first use)."""
    seen, todo = set(), [(entry, False)]
    while todo:
        m, as_parent = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [(".".join(parts[:i]), True) for i in range(1, len(parts))]
        if _file_of(m).suffix == ".py":
            todo += [(i, False) for i in sorted(_imports(_file_of(m), m, top_level=as_parent))]
    return tuple(sorted(seen))


def code_hash(entry: str) -> str:
    h = hashlib.sha256()
    for m in modules_of(entry):
        h.update(m.encode() + b"\0" + _file_of(m).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def neutral() -> frozenset[str]:
    """Config keys (`section.key`) that cannot change what a run computes: those a resume may
    change, less the number of generations (which a resume may extend, but which decides what
    a finished run holds)."""
    from neuroevo_sparse.config import RESUME_SAFE_KEYS
    return RESUME_SAFE_KEYS - {"evolution.generations"}


def keyed_config(exp) -> dict:
    """`exp` as a dict of sections, less the `neutral` keys: what a key's config hash covers."""
    drop = neutral()
    return {section: {k: v for k, v in values.items() if f"{section}.{k}" not in drop}
            for section, values in exp.to_dict().items()}


def run_key(exp, seed: int, entry: str) -> dict:
    """The key of one stored run of `exp` (a config.Experiment) with `seed`, trained by `entry`."""
    import torch

    import neuroevo_sparse
    blob = json.dumps(keyed_config(exp), sort_keys=True, default=str)
    return {"config": hashlib.sha256(blob.encode()).hexdigest()[:16], "code": code_hash(entry),
            "version": neuroevo_sparse.__version__, "torch": torch.__version__, "seed": seed}
