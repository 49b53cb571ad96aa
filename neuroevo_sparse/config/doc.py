"""The TOML reference, docs/configuration.md, generated from the config dataclasses.

Every key's type, default and allowed values come from the dataclass field itself (its
annotation and its range metadata), and its meaning from the comment lines written above
the field in config.py, so the page cannot drift from the schema: `neuroevo config --doc`
prints it, and a test fails when the stored page differs from what this module writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import tokenize
import types
import typing
from typing import Any, Literal

from . import schema as config

HEADER = """# Configuration reference

Every key of an experiment TOML, by section. Generated from the config dataclasses
(`neuroevo_sparse/config/schema.py`) by `neuroevo config --doc > docs/configuration.md`; do not edit
by hand. A key left out takes its default; "unset" means the key is absent (TOML has no
null). Any key can be overridden from the command line: `--set section.key=value`.
"""


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment}: the `#` lines right above the field in the class body, and
    a comment at the end of the field's own line, joined into one paragraph."""
    source = inspect.getsource(cls)
    comments: dict[str, str] = {}
    block: list[str] = []
    shared: list[str] = []
    previous_was_field = False
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    line_start = True
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.COMMENT:
            if line_start:
                block.append(tok.string.lstrip("#").strip())
            continue
        if tok.type in (tokenize.NL, tokenize.NEWLINE):
            line_start = True
            continue
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            continue
        if line_start and tok.type == tokenize.NAME and tok.start[1] == 4 and i + 1 < len(tokens) \
                and tokens[i + 1].string == ":":
            inline = _inline_comment(tokens, i)
            # A field with no comment of its own right under another shares that one's
            # (`min_density` / `max_density`, `include` / `exclude`).
            own = block or (shared if previous_was_field else [])
            comments[tok.string] = " ".join(own + ([inline] if inline else []))
            shared, previous_was_field = own, True
        elif line_start and tok.type != tokenize.COMMENT:
            previous_was_field = False
        if line_start and tok.type != tokenize.STRING:
            block = []
        line_start = False
    return comments


def _inline_comment(tokens: list[tokenize.TokenInfo], i: int) -> str:
    """The comment at the end of the statement that starts at token i (it may span lines)."""
    found = ""
    for tok in tokens[i:]:
        if tok.type == tokenize.COMMENT:
            found = tok.string.lstrip("#").strip()
        if tok.type == tokenize.NEWLINE:
            break
    return found


def type_text(annotation: Any) -> str:
    """A type as a TOML user reads it: `"a" \\| "b"` for choices, `list of int`, `table`."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(type_text(a) for a in parts)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_text(item)}"
    if origin is dict:
        return "table"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(annotation, str(annotation))


def range_text(f: dataclasses.Field, of_items: bool = False) -> str:
    """'0 < x <= 1', 'x >= 1', ... for a field with range metadata ('each' item, for a list)."""
    bounds = f.metadata.get("range")
    if not bounds:
        return ""
    lo, hi, lo_open, hi_open = bounds
    if hi is not None and hi >= config.INT64_MAX:  # TOML's integer limit, not a choice of ours
        hi = None
    num = lambda v: f"{v:,}".replace(",", "_") if isinstance(v, int) and v > 10**6 else f"{v:g}"  # noqa: E731
    left = f"{num(lo)} {'<' if lo_open else '<='} " if lo is not None else ""
    right = f" {'<' if hi_open else '<='} {num(hi)}" if hi is not None else ""
    if not left and not right:
        return ""
    each = "each " if of_items else ""
    if lo is not None and hi is None:
        return f"{each}x {'>' if lo_open else '>='} {num(lo)}"
    return f"{each}{left}x{right}"


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    return _toml_value(value)


def _toml_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def keys() -> list[str]:
    """Every key of the config, as `section.key`."""
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(config.Experiment)
            for f in dataclasses.fields(s.default_factory)]


def markdown() -> str:
    """The whole reference page."""
    lines = [HEADER]
    for section in dataclasses.fields(config.Experiment):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        comments = field_comments(cls)
        lines += [f"## [{section.name}]", ""]
        if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
            lines += [" ".join(cls.__doc__.split()), ""]
        lines += ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            meaning = comments.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | {type_text(hints[f.name])} | `{default_text(f)}` | "
                         f"{range_text(f, typing.get_origin(hints[f.name]) is list)} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def undocumented() -> list[str]:
    """Keys whose field has no comment in config.py: each key must say what it means."""
    out = []
    for section in dataclasses.fields(config.Experiment):
        comments = field_comments(section.default_factory)
        out += [f"{section.name}.{f.name}" for f in dataclasses.fields(section.default_factory)
                if not comments.get(f.name)]
    return out
