"""Shared fixtures: the tiny glyphs experiment (and tune file) the end-to-end tests train, its cache, a
loopback file server."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from loopback import LoopbackFiles, loopback_server

from harness.config import set_dotted
from harness.models.weights import WEIGHTS_URL_ENV

ROOT = Path(__file__).resolve().parent.parent
# Every shipped experiment file that harness.run runs as it is (base.yaml is a base; tune-*.yaml and
# fair-*.yaml are studies and fair protocols, loaded by harness.tune and harness.fair and tested with
# them).
RUNNABLE_EXPERIMENTS = sorted(
    path
    for path in (ROOT / "experiments").glob("*.yaml")
    if path.name != "base.yaml" and not path.name.startswith(("tune", "fair"))
)

# Two cells of a few seconds each on one CPU thread: 48 glyph classes (36 train incl. 12 val, the rest test).
TINY_EXPERIMENT: dict[str, Any] = {
    "name": "tiny",
    "base": str(ROOT / "experiments" / "base.yaml"),
    "grid": {"datasets": ["glyphs"], "embedding_sizes": [16], "seeds": [0], "losses": ["ms", "binomial"]},
    "data": {
        "image_size": 32,
        "workers": 0,
        "classes_per_batch": 8,
        "samples_per_class": 4,
        "val_fraction": 0.25,
        "options": {"num_classes": 48, "instances_per_class": 10},
    },
    "model": {"backbone": "small_cnn", "pretrained": False, "freeze_bn": False, "width": 8},
    "optim": {"lr_backbone": 0.002, "lr_head": 0.002, "weight_decay": 0.0},
    "schedule": {"milestones": [20], "gamma": 0.5},
    "train": {"iterations": 24, "eval_every": 8, "log_every": 4, "threads": 1},
    "evaluate": {"metrics": ["recall", "map_at_r"], "ks": [1, 2, 4]},
}

# The study: section that turns the tiny experiment, narrowed to one MS cell, into a tune file.
TINY_STUDY: dict[str, Any] = {
    "trials": 4,
    "space": {"alpha": {"low": 0.5, "high": 10.0, "log": True}, "lam": {"low": 0.0, "high": 1.0}},
    "sampler": {"name": "tpe", "multivariate": True, "constant_liar": True, "n_startup_trials": 2, "seed": 0},
    "pruner": {"name": "none"},
    "importance": {"evaluator": "ped_anova"},
}

WriteExperiment = Callable[..., Path]


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One glyph image cache for the whole session: each image set is rendered once, by its first user."""
    return tmp_path_factory.mktemp("glyph-cache")


def write_tiny_experiment(
    folder: Path, cache: Path, overrides: Mapping[str, Any] | None = None, *, name: str = "tiny"
) -> Path:
    """Write the tiny experiment to ``folder/<name>.yaml``; ``overrides`` maps dotted keys to values
    (as --set)."""
    data = copy.deepcopy(TINY_EXPERIMENT)
    data["name"] = name
    data["data"]["cache_dir"] = str(cache)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, copy.deepcopy(value), where="tiny experiment")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture()
def tiny_experiment(tmp_path: Path, glyph_cache: Path) -> WriteExperiment:
    """``tiny_experiment({"train.iterations": 8, ...}, name=...)`` writes the tiny experiment into
    tmp_path."""

    def write(overrides: Mapping[str, Any] | None = None, *, name: str = "tiny") -> Path:
        return write_tiny_experiment(tmp_path, glyph_cache, overrides, name=name)

    return write


@pytest.fixture()
def tiny_tune_file(tmp_path: Path, glyph_cache: Path) -> WriteExperiment:
    """``tiny_tune_file(overrides, **study)``: the tiny experiment as a tune file on its MS cell.

    ``study`` replaces top-level settings of :data:`TINY_STUDY`; ``overrides`` are dotted keys, as for
    :func:`write_tiny_experiment`, applied after the study is in place.
    """

    def write(overrides: Mapping[str, Any] | None = None, **study: Any) -> Path:
        tune = {"grid.losses": [{"name": "ms", "preset": "paper"}], "study": {**TINY_STUDY, **study}}
        return write_tiny_experiment(tmp_path, glyph_cache, {**tune, **(overrides or {})})

    return write


@pytest.fixture()
def loopback() -> Iterator[LoopbackFiles]:
    """A file server on 127.0.0.1 (byte ranges, one cut connection on demand) for the download tests."""
    with loopback_server() as server:
        yield server


# Nothing listens on the discard port of 127.0.0.1: a weights download a test does not point at its own
# server is refused at once (as offline), and no test, nor a subprocess it starts, reaches a real URL.
NO_WEIGHTS_SERVER = "http://127.0.0.1:9"


@pytest.fixture(autouse=True, scope="session")
def one_share_of_the_cores() -> Iterator[None]:
    """Under pytest-xdist, each test process's torch uses its share of the cores, not all of them:
    N processes each running N threads on N cores would spend their time switching."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def no_real_weights_downloads() -> Iterator[None]:
    """``$HARNESS_WEIGHTS_URL`` is a closed loopback port for the whole session (a test may repoint it)."""
    before = os.environ.get(WEIGHTS_URL_ENV)
    os.environ[WEIGHTS_URL_ENV] = NO_WEIGHTS_SERVER
    yield
    if before is None:
        os.environ.pop(WEIGHTS_URL_ENV, None)
    else:
        os.environ[WEIGHTS_URL_ENV] = before
