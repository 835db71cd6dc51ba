"""Tune files: the shipped ones validate; every mistake in study: or the template cell is one line with a
fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.config import load_raw
from harness.errors import UserError, cli_main
from harness.tune import (
    HeartbeatConfig,
    load_tune,
    main,
    open_storage,
    shown_url,
    validate_tune,
    with_installed_driver,
)

ROOT = Path(__file__).resolve().parent.parent
TUNE_FILES = sorted((ROOT / "experiments").glob("tune-*.yaml"))
RAW = load_raw(ROOT / "experiments" / "tune-ms.yaml")


@pytest.mark.parametrize("path", TUNE_FILES, ids=lambda p: p.name)
def test_shipped_tune_files_validate_to_one_val_selected_cell(path: Path) -> None:
    setup = load_tune(path)
    assert setup.template.train.select_on == "val"
    assert set(setup.study.space) == {"alpha", "beta", "lam", "eps"}
    assert setup.study.sampler.name == "tpe" and setup.study.importance.evaluator == "ped_anova"
    assert setup.study.pruner.name in ("hyperband", "successive_halving")
    assert setup.template.loss.name == "ms"


def test_tune_ms_is_the_papers_cars_protocol_at_64() -> None:
    setup = load_tune(ROOT / "experiments" / "tune-ms.yaml")
    assert (setup.template.dataset, setup.template.embedding_size) == ("cars", 64)
    assert setup.template.model.backbone == "bninception" and setup.study.trials == 50
    space = setup.study.space
    assert (space["alpha"].low, space["alpha"].high, space["alpha"].log) == (0.5, 10.0, True)
    assert (space["beta"].low, space["beta"].high, space["beta"].log) == (10.0, 100.0, True)


def mutate(path: str, value: Any = None, delete: bool = False) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    node = raw
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return raw


MISTAKES = [
    (("study", None, True), r"tune\.yaml: no study: section"),
    (("study.trails", 3), r"study: unknown field 'trails'; did you mean 'trials'\?"),
    (
        ("study.pruner.name", "hyperbnd"),
        r"study\.pruner: unknown pruner 'hyperbnd'; did you mean 'hyperband'\?",
    ),
    (
        ("study.pruner.reduction_factor", None, True),
        r"study\.pruner: pruner 'hyperband' needs reduction_factor",
    ),
    (("study.pruner.min_early_stopping_rate", 1), r"pruner 'hyperband' takes no min_early_stopping_rate"),
    (("study.pruner.max_resource", 5000), r"study\.pruner\.max_resource: 5000 is beyond the 3000 iterations"),
    (("study.space.alpha", {"low": 2, "high": 1}), r"study\.space\.alpha: low must be below high"),
    (
        ("study.space.alpha", {"low": 0, "high": 1, "log": True}),
        r"study\.space\.alpha: a log range needs low > 0",
    ),
    (
        ("study.space.alpah", {"low": 1, "high": 2}),
        r"study\.space\.alpah: loss 'ms' has no hyperparameter 'alpah'; did you mean 'alpha'\?",
    ),
    (("study.space.preset", {"low": 1, "high": 2}), r"loss 'ms' has no hyperparameter 'preset'"),
    (("study.space.beta", {"low": -5, "high": 2}), r"study\.space\.beta: beta=-5\.0: .*narrow the range"),
    (
        ("study.importance.evaluator", "pedanova"),
        r"unknown importance evaluator 'pedanova'; did you mean 'ped_anova'\?",
    ),
    (
        ("study.importance.n_trees", 5),
        r"study\.importance: importance evaluator 'ped_anova' takes no n_trees; it takes target_quantile",
    ),
    (("study.sampler.multivariate", None, True), r"study\.sampler\.multivariate: Field required"),
    (("study.sampler.name", "cmaes"), r"study\.sampler\.name: Input should be 'tpe'"),
    (("study.heartbeat", {"interval": 10, "grace_period": 5}), r"grace_period \(5 s\) must exceed interval"),
    (("study.seeds", [1, 1]), r"study\.seeds: seeds must be distinct"),
    (("study.name", "a b"), r"study\.name: String should match pattern"),
    (("grid.seeds", [0, 1]), r"grid: a tune file needs exactly one cell .* got 2 .*narrow the grid"),
    (("train.select_on", "test"), r"train\.select_on: a study optimises validation data only, got 'test'"),
    (("data.val_fraction", 0.0), r"data\.val_fraction: a study needs validation classes"),
    (("train.iteratons", 5), r"unknown field 'iteratons'"),
    (
        ("study.best_set", {"train.iteratons": 9}),
        r"\(best\.yaml with study\.best_set\): train\.iteratons: unknown field",
    ),
    (
        ("study.best_set", {"train.select_on": "tset"}),
        r"best_set.*train\.select_on: Input should be 'val', 'final' or 'test'",
    ),
]


@pytest.mark.parametrize(("change", "message"), MISTAKES, ids=[m[0][0] for m in MISTAKES])
def test_every_mistake_is_one_line_naming_the_path(change: tuple[Any, ...], message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        validate_tune(mutate(*change), "tune.yaml")
    text = str(caught.value)
    assert "\n" not in text and text.startswith("tune.yaml")


def test_the_command_line_turns_mistakes_into_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**mutate("study.space.alpha", {"low": 3, "high": 1}), "base": None}))
    for argv in (
        [str(path)],
        [str(ROOT / "experiments" / "tune-ms.yaml"), "--workers", "0"],
        [str(ROOT / "experiments" / "tune-ms.yaml"), "--set", "study.trials=0"],
    ):
        with pytest.raises(SystemExit) as stop:
            cli_main(main, argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_storage_urls_are_checked_and_passwords_never_shown(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--storage nosuchdb://u:\*\*\*@h/db: cannot open it .*journal:FILE"):
        open_storage("nosuchdb://u:secret@h/db", HeartbeatConfig())
    assert (
        shown_url("postgresql://harness:secret@127.0.0.1:5432/x")
        == "postgresql://harness:***@127.0.0.1:5432/x"
    )
    assert with_installed_driver("postgresql://h/db") in (
        "postgresql+psycopg://h/db",
        "postgresql+psycopg2://h/db",
    )
    assert with_installed_driver("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert with_installed_driver("sqlite:///x.db") == "sqlite:///x.db"
    storage = open_storage(f"journal:{tmp_path / 'sub' / 'j.log'}", HeartbeatConfig())
    assert type(storage).__name__ == "JournalStorage" and (tmp_path / "sub").is_dir()


def test_null_settings_count_as_unset_so_set_can_switch_the_pruner_off() -> None:
    raw = mutate("study.pruner", {"name": "none", "min_resource": None, "max_resource": None})
    assert validate_tune(raw, "tune.yaml").study.pruner.resolved() == {"name": "none"}
    with pytest.raises(UserError, match=r"pruner 'hyperband' needs max_resource written out"):
        validate_tune(mutate("study.pruner.max_resource", None), "tune.yaml")


def test_default_first_enqueues_the_losses_defaults_once_and_fingerprints_them() -> None:
    import optuna

    from harness.tune.trials import prepare_study

    setup = validate_tune(mutate("study.default_first", True), "tune.yaml")
    defaults = setup.template.loss.resolved()["hparams"]
    assert setup.first_params == {name: float(defaults[name]) for name in setup.study.space}
    storage = optuna.storages.InMemoryStorage()
    prepare_study(setup, storage, setup.study.trials)
    prepare_study(setup, storage, setup.study.trials)  # a second run queues no second default trial
    study = optuna.load_study(study_name=setup.name, storage=storage)
    (first,) = study.get_trials(deepcopy=False)
    assert first.state == optuna.trial.TrialState.WAITING and first.user_attrs == {"default": True}
    assert first.system_attrs["fixed_params"] == setup.first_params
    assert study.user_attrs["fingerprint"]["default_first"] == setup.first_params
    off = validate_tune(mutate("study.default_first", False), "tune.yaml")
    assert off.first_params is None
    with pytest.raises(UserError, match=r"made with other settings \(default_first\)"):
        prepare_study(off, storage, off.study.trials)  # a study without the default trial is another study


def test_a_range_excluding_the_default_is_one_line_when_default_first() -> None:
    raw = mutate("study.default_first", True)
    raw["study"]["space"] = {"beta": {"low": 60.0, "high": 100.0, "log": True}}
    with pytest.raises(UserError) as caught:
        validate_tune(raw, "tune.yaml")
    text = str(caught.value)
    assert "\n" not in text and text.startswith("tune.yaml: study.space.beta: the range [60, 100] excludes")
    assert "default beta=" in text and "widen the range" in text
    raw["study"]["default_first"] = False
    assert validate_tune(raw, "tune.yaml").first_params is None  # off: any range
