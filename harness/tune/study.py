"""Opening a tune study: its sampler and pruner, and the fingerprint that refuses a study made from other
settings."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import NOT_TRAINING
from harness.errors import UserError
from harness.studies.storage import sqlite_url
from harness.tune.schema import TuneSetup

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage


DEFAULT_ATTR = "default"  # the user attribute of the trial that trains the loss's default values


def default_storage(study_dir: Path) -> str:
    """``sqlite:///<study_dir>/study.db`` (absolute, so worker processes agree on it)."""
    return sqlite_url(study_dir / "study.db")


def _fingerprint(setup: TuneSetup) -> dict[str, Any]:
    """What must not change between runs of one study: the trial template and the search space."""
    return {
        "template": setup.template.model_dump(mode="json", exclude=NOT_TRAINING),
        "space": {k: v.model_dump() for k, v in setup.study.space.items()},
        "seeds": setup.seeds,
        **({"folds": setup.study.folds} if setup.study.folds else {}),  # class folds change the objective
        # the first trial's values (study.default_first): a study without that trial is another study
        **({"default_first": setup.first_params} if setup.first_params is not None else {}),
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


def open_study(setup: TuneSetup, storage: BaseStorage, sampler_seed: int) -> optuna.Study:
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
        if setup.first_params is not None and not study.get_trials(deepcopy=False):
            study.enqueue_trial(setup.first_params, user_attrs={DEFAULT_ATTR: True})
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
