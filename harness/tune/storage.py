"""Optuna storages and studies: opening them, hiding passwords, refusing a study made from other settings."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path
from typing import Any

from harness.config import NOT_TRAINING
from harness.errors import UserError
from harness.tune.schema import HeartbeatConfig, TuneSetup


def default_storage(study_dir: Path) -> str:
    """``sqlite:///<study_dir>/study.db`` (absolute, so worker processes agree on it)."""
    return f"sqlite:///{(study_dir / 'study.db').resolve()}"


def shown_url(url: str) -> str:
    """A storage URL with its password hidden, for messages and the summary."""
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


def open_storage(url: str, heartbeat: HeartbeatConfig) -> Any:
    """An Optuna storage: ``journal:FILE`` is a journal file, anything else an SQLAlchemy URL.

    SQLite waits up to 60 s for the file lock, so several worker processes can share one file.
    RDB storages record a heartbeat; a trial whose process died is failed and retried once stale.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        path = Path(url[len("journal:") :].removeprefix("//"))
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


def _fingerprint(setup: TuneSetup) -> dict[str, Any]:
    """What must not change between runs of one study: the trial template and the search space."""
    return {
        "template": setup.template.model_dump(mode="json", exclude=NOT_TRAINING),
        "space": {k: v.model_dump() for k, v in setup.study.space.items()},
        "seeds": setup.seeds,
        **({"folds": setup.study.folds} if setup.study.folds else {}),  # class folds change the objective
    }


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def open_study(setup: TuneSetup, storage: Any, sampler_seed: int) -> Any:
    """Create the study or load it (``load_if_exists``); refuse one created from a different tune file."""
    import optuna

    sampler_cfg = setup.study.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            multivariate=sampler_cfg.multivariate,
            constant_liar=sampler_cfg.constant_liar,
            n_startup_trials=sampler_cfg.n_startup_trials,
            seed=sampler_seed,
        )
    study = optuna.create_study(
        study_name=setup.name,
        storage=storage,
        sampler=sampler,
        pruner=setup.study.pruner.build(),
        direction="maximize",
        load_if_exists=True,
    )
    fingerprint = json.loads(json.dumps(_fingerprint(setup)))
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("objective", f"val {setup.metric}")
    elif stored != fingerprint:
        changed = ", ".join(_differences(stored, fingerprint)[:4])
        raise UserError(
            f"{setup.source}: study {setup.name!r} in this storage was made with other settings "
            f"({changed}); give the study a new name (--set study.name=...) or restore them"
        )
    return study


def worker_seed(base: int, worker: int, trials_before: int, host: str) -> int:
    """A sampler seed per host, worker and run, so that no two workers draw the same startup trials."""
    import numpy as np

    return int(
        np.random.SeedSequence([base, worker, trials_before, zlib.crc32(host.encode())]).generate_state(1)[0]
    )
