"""Files on disk: atomic writes (temporary file, fsync, rename) and JSON reading with one-line errors.

Every writer here puts the data in a temporary file in the target's folder, fsyncs it and renames
it into place, so a crash (even ``kill -9``) never leaves a half-written file; the result gets the
permissions of any file the user creates (``0o666`` less the umask). :func:`read_json` turns a
damaged file into a :class:`~harness.errors.DamagedFileError` that names the file and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.errors import DamagedFileError

_UMASK = os.umask(0)
os.umask(_UMASK)

REWRITE_IT = "delete it and re-run the command that wrote it"


TEMPORARY_SUFFIX = ".tmp"


def temporaries(folder: Path) -> list[Path]:
    """The temporary files that atomic writes in ``folder`` left behind (a write killed before its rename)."""
    return list(folder.glob(f".*{TEMPORARY_SUFFIX}"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; results are shared like any file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write or fsync names no file
            err.filename = str(path)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON with sorted keys (anything else JSON lacks as ``str``)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> None:
    """Atomically write rows (mappings) as CSV with the given column order; other keys are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` through a temporary file and rename."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """``numpy.savez_compressed`` through a temporary file and rename."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_json(path: Path, *, remedy: str = REWRITE_IT) -> Any:
    """The parsed content of a JSON file; FileNotFoundError when it is missing.

    A file that is not UTF-8 or not valid JSON raises :class:`~harness.errors.DamagedFileError`:
    one line naming the file, what is wrong with it and ``remedy`` (what the user should do).
    """
    data = Path(path).read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        problem = f"not UTF-8 text (byte {err.start})"
    except json.JSONDecodeError as err:
        problem = f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    raise DamagedFileError(f"{path}: damaged file, {problem}; {remedy}")


def read_json_if_exists(path: Path, *, remedy: str = REWRITE_IT) -> Any | None:
    """:func:`read_json`, or None when the file does not exist."""
    try:
        return read_json(path, remedy=remedy)
    except FileNotFoundError:
        return None
