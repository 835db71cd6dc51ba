"""Optuna storages: opening one from a URL (SQLite, journal file, PostgreSQL), hiding its password in
messages."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import UserError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


class Heartbeat(Protocol):
    """Stale-trial settings of an RDB storage (``study.heartbeat`` of a tune file, ``fair.heartbeat``)."""

    @property
    def interval(self) -> int: ...
    @property
    def grace_period(self) -> int: ...
    @property
    def max_retry(self) -> int: ...


def sqlite_url(path: Path) -> str:
    """``sqlite:///<path>``, absolute, so worker processes agree on it."""
    return f"sqlite:///{path.resolve()}"


def local_file(url: str) -> tuple[str, Path] | None:
    """The scheme prefix and the file of a storage kept in a local file (``journal:FILE``,
    ``sqlite:///FILE``); None for a server or an in-memory database."""
    if url.startswith("journal:"):
        return "journal:", Path(url[len("journal:") :].removeprefix("//"))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return "sqlite:///", Path(url[len("sqlite:///") :])
    return None


def shown_url(url: str, relative_to: Path | None = None) -> str:
    """A storage URL with its password hidden, for messages and the summary. ``relative_to``: a local
    file is named by its path from that folder, so a committed summary holds no machine's absolute path
    and reads the same wherever it is rebuilt."""
    file = local_file(url)
    if file is not None and relative_to is not None:
        prefix, path = file
        return prefix + os.path.relpath(path.resolve(), relative_to.resolve())
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _retry_callback(max_retry: int) -> dict[str, Any]:
    """The RDBStorage keyword for retrying heartbeat-stale trials, by installed Optuna version."""
    import optuna.storages as storages

    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        callback = storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
        return {"heartbeat_stale_trial_callback": callback}
    callback = storages.RetryFailedTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
    return {"failed_trial_callback": callback}


def with_installed_driver(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; the harness's test extra installs
    psycopg2, so the bare scheme gets whichever of the two is importable (psycopg first).
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    return f"postgresql://{rest}"


def open_storage(url: str, heartbeat: Heartbeat) -> BaseStorage:
    """An Optuna storage: ``journal:FILE`` is a journal file, anything else an SQLAlchemy URL.

    SQLite waits up to 60 s for the file lock, so several worker processes can share one file.
    RDB storages record a heartbeat; a trial whose process died is failed and retried once stale.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    file = local_file(url)
    if file is not None and file[0] == "journal:":
        path = file[1]
        if not str(path) or str(path) == ".":
            raise UserError(f"--storage {url!r}: expected journal:FILE, e.g. journal:results/ms/journal.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                with_installed_driver(url),
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace_period,
                **_retry_callback(heartbeat.max_retry),
            )
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--storage {shown_url(url)}: cannot open it ({first}); expected a reachable database "
            "URL such as sqlite:///study.db or postgresql://user:password@host/db, "
            "or journal:FILE"
        ) from None
