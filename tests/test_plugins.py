"""A user's own module plugged in: imports:, --import and entry points, in this process and in every
worker."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import WriteExperiment

import losses
import losses.registry
from harness import plugins
from harness.config import load_raw
from harness.errors import UserError
from harness.launch import _cell_worker
from harness.studies.command import worker_commands

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "my_loss.py"
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
SHORT = {"train.iterations": 4, "train.eval_every": 4, "train.log_every": 2, "schedule.milestones": [2]}


@pytest.fixture()
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugins imported by a test leave no loss, loaded module or ``sys.modules`` entry behind."""
    monkeypatch.setattr(losses.registry, "_REGISTRY", dict(losses.registry._REGISTRY))
    monkeypatch.setattr(plugins, "_LOADED", {})
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.run", *args],
        cwd=ROOT,
        env=env or ONE_THREAD,
        text=True,
        capture_output=True,
        timeout=600,
    )


def cells_table(exp_dir: Path) -> list[dict[str, str]]:
    with open(exp_dir / "cells.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_documented_plugin_is_the_example_file_verbatim() -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks
    code = [line for line in EXAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(code) <= 12, "the example stays a ten-line plugin"


@pytest.mark.parametrize("jobs", ["2", "1"])
def test_the_documented_plugin_loss_trains_through_harness_run(
    jobs: str, tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    shutil.copy(EXAMPLE, tmp_path / "my_loss.py")  # next to the experiment, as the doc shows
    overrides = {**SHORT, "grid.losses": ["my_contrastive"], "grid.seeds": [0, 1]}
    if jobs == "2":  # spawned workers: they import the plugin again before their first cell
        args = [str(tiny_experiment({**overrides, "imports": ["my_loss.py"]}))]
    else:
        args = [str(tiny_experiment(overrides)), "--import", str(tmp_path / "my_loss.py")]
    done = run_cli(*args, "--results", str(tmp_path / "results"), "--jobs", jobs, "--no-report", "--quiet")
    assert done.returncode == 0, done.stderr
    rows = cells_table(tmp_path / "results" / "tiny")
    assert {row["status"] for row in rows} == {"finished"}
    assert {row["seed"] for row in rows} == {"0", "1"}
    assert {(row["loss"], row["loss_label"]) for row in rows} == {("my_contrastive", "MyContrastive")}
    assert all(float(row["value"]) >= 0 for row in rows if row["metric"] == "recall@1")


FLAT_BACKBONE = '''"""A plugin backbone: glyph pixels through one linear layer, named 'flat_linear'."""

from torch import nn

from harness.models import BackboneOptions, register_backbone


@register_backbone(convention="grey")
def flat_linear(options: BackboneOptions) -> tuple[nn.Module, int]:
    """Flatten a greyscale image, then one linear layer of 24 features."""
    pixels = options.in_channels * (options.image_size or 32) ** 2
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 24), nn.ReLU()), 24
'''


def test_a_plugin_backbone_trains_in_spawned_workers(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    (tmp_path / "flat_linear.py").write_text(FLAT_BACKBONE)
    exp = tiny_experiment({**SHORT, "model.backbone": "flat_linear", "grid.seeds": [0, 1]})
    args = [str(exp), "--import", str(tmp_path / "flat_linear.py"), "--results", str(tmp_path / "results")]
    done = run_cli(*args, "--jobs", "2", "--no-report", "--quiet")
    assert done.returncode == 0, done.stderr
    rows = cells_table(tmp_path / "results" / "tiny")
    assert {(row["seed"], row["status"]) for row in rows} == {("0", "finished"), ("1", "finished")}
    config = json.loads(next((tmp_path / "results" / "tiny" / "cells").glob("*/config.json")).read_text())
    assert config["model"]["backbone"] == "flat_linear"
    without = run_cli(str(exp), "--check")
    assert without.returncode == 2 and "flat_linear" in without.stderr, without.stderr


def test_without_the_plugin_the_loss_is_unknown_in_one_line(tiny_experiment: WriteExperiment) -> None:
    done = run_cli(str(tiny_experiment({"grid.losses": ["my_contrastive"]})), "--check")
    assert done.returncode == 2
    assert re.fullmatch(r"error: .*unknown loss 'my_contrastive'.*\n", done.stderr), done.stderr


def test_an_installed_plugin_is_loaded_from_its_entry_point(
    tmp_path: Path, tiny_experiment: WriteExperiment
) -> None:
    site = tmp_path / "site"
    (site / "mylab_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "mylab_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mylab-plugin\nVersion: 0.1\n"
    )
    (site / "mylab_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        f"[{plugins.ENTRY_POINT_GROUP}]\nmylab = mylab_losses\n"
    )
    shutil.copy(EXAMPLE, site / "mylab_losses.py")
    exp = tiny_experiment({"grid.losses": ["my_contrastive"]})
    done = run_cli(str(exp), "--check", env={**ONE_THREAD, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    assert "glyphs-my_contrastive-d16-s0-" in done.stdout


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz", r"cannot import plugin 'no_such_module_xyz' \(ModuleNotFoundError: "),
        ("missing.py", r"plugin file .*missing\.py not found"),
        ("broken.py", r"cannot import plugin '.*broken\.py' \(ZeroDivisionError: division by zero\)"),
    ],
)
def test_a_module_that_cannot_be_imported_is_one_line(
    spec: str, message: str, tmp_path: Path, tiny_experiment: WriteExperiment, isolated: None
) -> None:
    (tmp_path / "broken.py").write_text("REGISTERED = 1 / 0\n")
    from harness.run import main

    with pytest.raises(UserError, match=message) as caught:
        main([str(tiny_experiment({"imports": [spec]})), "--check"])
    assert "\n" not in str(caught.value) and "imports" in str(caught.value)
    with pytest.raises(UserError, match=r"^--import: "):
        main([str(tiny_experiment()), "--check", "--import", str(tmp_path / spec)])


def test_a_file_named_by_module_and_by_path_is_imported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: None
) -> None:
    shutil.copy(EXAMPLE, tmp_path / "my_loss.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    by_path = plugins.load_plugins(["my_loss.py"], base=tmp_path)
    by_name = plugins.load_plugins(["my_loss"])
    assert by_path == [str(tmp_path / "my_loss.py")] and by_name == ["my_loss"]
    assert plugins.loaded_plugins() == (str(tmp_path / "my_loss.py"), "my_loss")
    assert sys.modules["my_loss"] is plugins.import_plugin(by_path[0])
    assert "my_contrastive" in losses.available()
    assert losses.build("my_contrastive").hparams == {"lam": 0.3}
    with pytest.raises(RuntimeError, match="registered twice"):  # a second definition is still refused
        exec(compile(EXAMPLE.read_text(), "another.py", "exec"), {})


def test_worker_command_lines_carry_the_loaded_plugins(tmp_path: Path, isolated: None) -> None:
    shutil.copy(EXAMPLE, tmp_path / "my_loss.py")
    plugins.load_plugins([str(tmp_path / "my_loss.py")])
    args = argparse.Namespace(file="t.yaml", sets=[], quiet=True, results="results", workers=2)
    commands = worker_commands("harness.tune", args, [], "STORAGE", "sqlite:///s.db")
    assert [command.args[-2:] for command in commands] == [["--import", str(tmp_path / "my_loss.py")]] * 2
    cell_worker = _cell_worker(7, None).args  # a --jobs worker imports them before its first cell
    assert cell_worker[-1].endswith(f"serve_cells(7, {(str(tmp_path / 'my_loss.py'),)!r}))")


def test_imports_of_a_base_file_come_first_each_relative_to_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "base.yaml").write_text(yaml.safe_dump({"imports": ["losses_a.py", "mylab.extra"]}))
    (tmp_path / "exp.yaml").write_text(
        yaml.safe_dump({"base": "lab/base.yaml", "imports": ["b/losses_b.py"]})
    )
    assert load_raw(tmp_path / "exp.yaml")["imports"] == [
        str(tmp_path / "lab" / "losses_a.py"),
        "mylab.extra",
        str(tmp_path / "b" / "losses_b.py"),
    ]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"imports": "my_loss.py"}))
    with pytest.raises(UserError, match=r"bad\.yaml: imports: expected a list of module names or \.py files"):
        load_raw(tmp_path / "bad.yaml")
