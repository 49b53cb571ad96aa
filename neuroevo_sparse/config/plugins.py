"""User code named in an experiment: a model factory and a data factory.

A factory is named `"package.module:callable"` (importable from here) or `"path/file.py:callable"`
(a file; a relative path is taken from the experiment file's directory). It is imported once,
on the driver. Workers never parse these names: they receive the resolved callable inside the
TrainSpec, which Ray pickles by reference, so a worker imports the same module; user modules
that are not installed are shipped to the workers with Ray's runtime environment
(`py_modules`, see `shipped_modules`) so nothing has to be copied to a cluster by hand.

The keyword arguments of `model.args` / `data.args` are passed to the factory, plus
`input_shape`, `num_classes` (model) and `seed` (data) when it has parameters of those names.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from .schema import ConfigError, factory_is_file as is_file, factory_parts as split


def resolve(name: str, key: str) -> Callable[..., Any]:
    """The callable a factory name denotes; ConfigError naming `key` if it cannot be had."""
    try:
        target, attr = split(name)
    except ValueError as e:
        raise ConfigError([f"{key}: {e}"]) from None
    try:
        module = _load_file(Path(target)) if is_file(target) else importlib.import_module(target)
    except Exception as e:  # an import error, or any error the user's module raised on import
        where = "" if is_file(target) else (f"; is it installed, or on PYTHONPATH? (this process imports from "
                                            f"{', '.join(p or '.' for p in sys.path[:3])}, ...)")
        raise ConfigError([f"{key}: cannot import {target!r}: {type(e).__name__}: {e}{where}"]) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part) and target == "__main__":
            raise ConfigError([f"{key}: {name!r} was defined in a script or notebook that is not running now: "
                               f"call resume() or load_run() from it after defining {attr}, or move {attr} into "
                               f"a module and name it \"module:{attr}\""])
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ConfigError([f"{key}: {target!r} has no {attr!r}; its callables are: {', '.join(public[:20])}"])
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError([f"{key}: {name!r} is a {type(obj).__name__}, not a callable"])
    return obj


def _load_file(path: Path) -> ModuleType:
    """A .py file imported as the module named after it, so that Ray pickles its functions
    by that name and a worker that was shipped the file imports the same code."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = path.stem
    if not name.isidentifier():
        raise ValueError(f"{path.name}: a factory file's name must be a Python identifier (it is imported as "
                         f"a module of that name); rename it")
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path.resolve():
            return loaded
        raise ValueError(f"it would be imported as {name!r}, but a module of that name is already loaded "
                         f"from {getattr(loaded, '__file__', 'a built-in')}: rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def name_of(obj: Callable[..., Any], key: str) -> str:
    """The factory name of a callable passed to the Python API: its module and qualified name,
    which must give back the same object (so runs, exports and resumes can find it again)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not callable(obj) or module is None or "<" in qualname:
        raise ConfigError([f"{key}: pass a function or class defined at the top level of a module (or of the "
                           f"script/notebook), not {obj!r}: runs record it by name to resume and export"])
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not obj:
        raise ConfigError([f"{key}: {module}:{qualname} does not name {obj!r} (was it redefined?)"])
    return f"{module}:{qualname}"


def call(factory: Callable[..., Any], args: dict[str, Any], key: str, **offered: Any) -> Any:
    """`factory(**args)`, plus those of `offered` (input_shape, num_classes, seed) that it names
    as parameters; a TypeError from the call is a ConfigError naming `key`."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    extra = {k: v for k, v in offered.items() if k in params and k not in args}
    try:
        return factory(**args, **extra)
    except TypeError as e:
        raise ConfigError([f"{key}: calling {_show(factory)} with {sorted({**args, **extra})} failed: {e} "
                           f"(its parameters: {', '.join(params) or 'unknown'}; set them in the args table)"]) \
            from None


def _show(factory: Callable[..., Any]) -> str:
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


def _installed(path: str) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(Path(path).resolve().is_relative_to(Path(r).resolve()) for r in roots)


def shipped_modules(*factories: Callable[..., Any] | None) -> list[str]:
    """Paths of the top-level modules (a package's directory, a module's .py file) of the
    factories that are user code (neither installed nor part of this package): what a worker
    on another node would otherwise fail to import."""
    out: dict[str, str] = {}
    for f in factories:
        name = getattr(f, "__module__", None)
        if f is None or not name or name == "__main__":
            continue  # __main__'s functions are pickled by value by Ray
        top = name.split(".")[0]
        module = sys.modules.get(top)
        path = getattr(module, "__file__", None)
        if module is None or top == __package__ or path is None or _installed(path):
            continue
        paths = list(getattr(module, "__path__", []))
        out[top] = paths[0] if len(paths) == 1 else path
    return list(out.values())
