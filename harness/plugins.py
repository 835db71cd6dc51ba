"""Plugins: a user's own modules (losses, backbones, datasets) imported before any config is validated.

Three sources, loaded in this order, each module at most once per process:

- installed packages' entry points in the group :data:`ENTRY_POINT_GROUP` (``gpw_harness.plugins``),
  loaded by the first call of :func:`load_plugins` in a process;
- ``--import MODULE`` on any entry point (``harness.run``, ``harness.tune``, ``harness.fair``,
  ``harness.report``), repeatable;
- an experiment file's ``imports:`` list (a base file's imports come first, then the file's own).

A module is an importable name (``mylab.losses``) or a path to a ``.py`` file: relative to the
experiment file that lists it (``imports:``) or to the current folder (``--import``). A path is
imported under a name made from its stem and a hash of its absolute path, the same in every process,
so worker processes (``--jobs N``, tuning workers) import it again by :func:`loaded_plugins` before
they read a cell. Importing a module should only register things (no ``__main__`` guard is needed):
each file is imported once per process, whether it is named by module name or by path, so its
registrations never run twice. A module that cannot be imported is one line naming it and the error.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from harness.errors import UserError

ENTRY_POINT_GROUP = "gpw_harness.plugins"
"""The entry-point group of installed plugins: ``[project.entry-points."gpw_harness.plugins"]``."""

_LOADED: dict[str, ModuleType] = {}  # spec (module name or absolute .py path) -> its module
_ENTRY_POINTS_LOADED = False


def is_path(spec: str) -> bool:
    """Whether a plugin spec names a ``.py`` file rather than an importable module."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def resolve_spec(spec: str, base: Path | None = None) -> str:
    """``spec`` as loaded: a module name as it is, a path made absolute against ``base`` (default: cwd)."""
    if not is_path(spec):
        return spec
    path = Path(spec).expanduser()
    return str((path if path.is_absolute() else (base or Path.cwd()) / path).resolve())


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"gpw_plugin_{stem}_{digest}"


def _imported_file(path: Path) -> ModuleType | None:
    """The module already imported from ``path`` (under any name), if any."""
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    return None


def _import_name(name: str) -> ModuleType:
    """``import name``; a module whose file was already imported by path is that module, not a second copy."""
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        module = _imported_file(origin) if origin is not None and origin.is_file() else None
        if module is not None:
            sys.modules[name] = module
            return module
    return importlib.import_module(name)


def _import_path(path: Path, where: str) -> ModuleType:
    if not path.is_file():
        raise UserError(f"{where}: plugin file {path} not found; give an importable module or a .py file")
    known = _imported_file(path)
    if known is not None:
        return known
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{where}: {path} is not a Python module; give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as import does, so that its classes pickle by reference
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugin(spec: str, *, where: str = "--import") -> ModuleType:
    """Import one plugin (a resolved spec, see :func:`resolve_spec`) once; a failure is one line."""
    if spec in _LOADED:
        return _LOADED[spec]
    try:
        module = _import_path(Path(spec), where) if is_path(spec) else _import_name(spec)
    except UserError:
        raise
    except Exception as err:  # any failure of a user's module is theirs to fix
        raise UserError(
            f"{where}: cannot import plugin {spec!r} ({type(err).__name__}: {err}); "
            "fix the module, or check its name or path"
        ) from None
    _LOADED[spec] = module
    return module


def load_entry_points() -> list[str]:
    """Import the installed plugins (entry points of :data:`ENTRY_POINT_GROUP`), once per process."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return []
    _ENTRY_POINTS_LOADED = True
    names = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as err:
            raise UserError(
                f"installed plugin {point.name!r} ({point.value}, entry point group {ENTRY_POINT_GROUP}) "
                f"cannot be imported ({type(err).__name__}: {err}); fix or uninstall its package"
            ) from None
        names.append(point.name)
    return names


def load_plugins(specs: Iterable[str], *, base: Path | None = None, where: str = "--import") -> list[str]:
    """Import the installed plugins, then each of ``specs`` (paths relative to ``base``); returns them
    resolved."""
    load_entry_points()
    resolved = [resolve_spec(str(spec), base) for spec in specs]
    for spec in resolved:
        import_plugin(spec, where=where)
    return resolved


def loaded_plugins() -> tuple[str, ...]:
    """The plugin specs imported in this process, in order: what a worker process imports before its work."""
    return tuple(_LOADED)


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--import MODULE`` option of every entry point (repeatable; loaded before the file is read)."""
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (name or .py file) that registers losses, backbones or datasets first "
        "(repeatable; see docs/plugins.md)",
    )


def import_arguments() -> list[str]:
    """``--import SPEC`` for every plugin loaded here: the command-line tail of a worker process."""
    return [arg for spec in loaded_plugins() for arg in ("--import", spec)]
