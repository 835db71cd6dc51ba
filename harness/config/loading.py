"""Reading experiment files into raw mappings: UTF-8 YAML without repeated keys, ``base:`` files,
``--set`` overrides.

Also :func:`validation_message`, which turns a pydantic error into the one-line message naming the
YAML path, the value and what was expected.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import UserError


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after[_buildable()]", "function-before[_from_string()]", "[key]"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _clean_message(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def validation_message(source: str, err: ValidationError) -> str:
    """One line for the first error of a pydantic ``ValidationError``: path, value, expectation."""
    first = err.errors()[0]
    loc = _format_loc(tuple(first["loc"]))
    msg = _clean_message(first["msg"])
    if first["type"] == "extra_forbidden":
        parent, _, key = loc.rpartition(".")
        return f"{source}: {loc}: unknown field {key!r}" + (f" in {parent}" if parent else "")
    value = first.get("input")
    shown = "" if isinstance(value, dict) or "unknown" in msg else f" (got {value!r})"
    return f"{source}: {loc + ': ' if loc else ''}{msg}{shown}{_type_hint(first['type'], value)}"


def _type_hint(kind: str, value: Any) -> str:
    """What to write instead of a value of the wrong type (strict validation coerces nothing)."""
    if kind in ("int_type", "float_type") and isinstance(value, bool):
        return "; a boolean is not a number: write the number"
    if kind in ("int_type", "float_type") and isinstance(value, str):
        return "; write the number without quotes"
    if kind == "int_type" and isinstance(value, float):
        return "; write a whole number"
    if kind == "bool_type":
        return "; write true or false"
    if kind == "string_pattern_mismatch":
        return "; use ASCII letters, digits, '_', '.' and '-', starting with a letter or digit"
    return ""


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error instead of last-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads 1e-3 and 1.0e3 as strings; YAML 1.2 and every user reads them as numbers.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_text(path: Path) -> str:
    """The text of a YAML file; a file that is not UTF-8 text (binary, UTF-16) is one line saying so."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: the file is UTF-16 text; save it as UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not a text file (byte {err.start} is not UTF-8); save it as UTF-8 text"
        ) from None
    if "\x00" in text:
        raise UserError(f"{path}: not a text file (it holds NUL bytes); save it as UTF-8 text")
    return text


MAX_NESTING = 50
"""How deep a settings file may nest mappings and lists (the schema needs 4 levels: deeper is a mistake)."""


def _nesting(data: Any) -> int:
    """How many mappings and lists lie inside one another in ``data``, counted up to ``MAX_NESTING + 1``.

    Iterative and capped, so a file whose aliases make a list hold itself ends too.
    """
    deepest, todo = 0, [(data, 1)]
    while todo and deepest <= MAX_NESTING:
        node, depth = todo.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in children)
    return deepest


def load_yaml(path: Path) -> Any:
    """Parse a YAML file rejecting repeated keys and non-UTF-8 files; every problem is a one-line
    UserError."""
    too_deep = f"{path}: mappings and lists nested more than {MAX_NESTING} levels deep; flatten the file"
    try:
        data = yaml.load(_yaml_text(path), Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}:{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    except RecursionError:  # the parser recurses once per level
        raise UserError(too_deep) from None
    if _nesting(data) > MAX_NESTING:  # deeper than validation, merging and copying can follow
        raise UserError(too_deep)
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: experiment file not found; give the path to a YAML file (see experiments/)")
    data = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def _with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: base files form a cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    data = _read_yaml(path)
    _resolve_imports(data, path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"{path}: base: expected a file name, got {base!r}")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise UserError(f"{path}: base: file {base!r} not found next to the experiment file ({base_path})")
    inherited = _with_bases(base_path, (*seen, path))
    inherited.pop("name", None)  # a name is never inherited: each file writes to its own results folder
    merged = _deep_merge(inherited, data)
    if "imports" in inherited and "imports" in data:  # a base's plugins stay needed: both, base first
        merged["imports"] = list(dict.fromkeys([*inherited["imports"], *data["imports"]]))
    return merged


def _resolve_imports(data: dict[str, Any], path: Path) -> None:
    """Make the ``.py`` paths of a file's ``imports:`` absolute, relative to that file (module names stay)."""
    from harness.plugins import resolve_spec

    imports = data.get("imports")
    if imports is None:
        return
    if not isinstance(imports, list) or not all(isinstance(item, str) and item for item in imports):
        raise UserError(
            f"{path}: imports: expected a list of module names or .py files, e.g. [mylab.losses, my_loss.py]"
        )
    data["imports"] = [resolve_spec(item, path.parent) for item in imports]


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (numbers, booleans, lists), falling back to the plain string."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # as in a file: 1e-3 is a number
    except (yaml.YAMLError, RecursionError):
        return text


def set_dotted(data: dict[str, Any], key: str, value: Any, *, where: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise UserError(f"{where}: {key!r} is not a dotted field name like 'train.iterations'")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{where}: {'.'.join(parts[: i + 1])} is not a section, cannot set {key!r}")
        node = child
    node[parts[-1]] = value


def apply_sets(data: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides to a raw experiment mapping."""
    out = copy.deepcopy(data)
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.iterations=100")
        set_dotted(out, key.strip(), parse_value(raw), where=f"--set {item}")
    return out


def load_raw(path: str | Path, sets: list[str] | None = None) -> dict[str, Any]:
    """An experiment file as a mapping: merged with its base files, ``--set`` overrides applied,
    name defaulted."""
    path = Path(path)
    data = apply_sets(_with_bases(path), sets)
    data.setdefault("name", path.stem)
    return data
