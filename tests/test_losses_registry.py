"""The public API: registry names, build/available/info, presets, hyperparameter errors, label invariance."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from loss_strategies import NAMES, make_batch, value_and_grad

import losses
from losses.registry import register_loss

# The paper's row labels (docs/ARCHITECTURE.md, loss_label) and Table 1/2 similarities for negatives.
PAPER_ROWS = {
    "binomial": ("Binomial", "S"),
    "lifted_star": ("LiftedStruct*", "N"),
    "ms_mining": ("MS mining", "P"),
    "binlifted": ("BinLifted", "SN"),
    "ms_weighting": ("MS weighting", "SN"),
    "binomial_m": ("Binomial_m", "SP"),
    "lifted_star_m": ("LiftedStruct*_m", "NP"),
    "ms": ("MS", "SNP"),
    "contrastive": ("Contrastive", "S"),
    "triplet": ("Triplet", "P"),
    "lifted": ("LiftedStruct", "N"),
}


def test_available_lists_exactly_the_papers_losses_sorted() -> None:
    assert losses.available() == sorted(PAPER_ROWS)


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_builds_a_module_returning_a_scalar(name: str) -> None:
    loss = losses.build(name)
    assert isinstance(loss, torch.nn.Module) and isinstance(loss, losses.GPWLoss) and loss.name == name
    batch = make_batch([3, 2, 4], [5, 6, 7], dim=4, seed=0, dtype=torch.float32)
    value = loss(batch.embeddings, batch.labels)
    assert value.shape == () and value.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_has_label_similarities_equation_and_one_line_typed_factory(name: str) -> None:
    entry = losses.info(name)
    assert (entry.label, entry.similarities) == PAPER_ROWS[name]
    assert entry.equation.startswith("Eq.") or entry.equation.startswith("(Eq.")
    doc = inspect.getdoc(entry.factory)
    assert doc and len(doc.splitlines()) == 1 and "Eq." in doc
    signature = inspect.signature(entry.factory)
    assert signature.return_annotation in ("GPWLoss", losses.GPWLoss)
    assert all(
        p.kind is p.KEYWORD_ONLY and p.annotation is not p.empty for p in signature.parameters.values()
    )


def test_unknown_name_raises_value_error_with_close_matches() -> None:
    with pytest.raises(ValueError, match="close matches: ms_weighting") as caught:
        losses.build("ms_weighing")
    assert isinstance(caught.value, losses.LossConfigError) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="no close match"):
        losses.build("arcface")


def test_unknown_hyperparameter_lists_the_accepted_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown hyperparameter\(s\) betta; it accepts: preset, alpha, beta"
    ):
        losses.build("ms", betta=40)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        losses.build("binomial", eps=0.1)  # binomial does not mine


@pytest.mark.parametrize(
    ("hparams", "message"),
    [
        ({"preset": "offical"}, "unknown preset 'offical'; expected one of paper, official"),
        ({"alpha": 0}, "alpha must be a positive number"),
        ({"beta": float("inf")}, "beta must be a positive number"),
        ({"lam": "one"}, "lam must be a number"),
        ({"eps": float("nan")}, "eps must be a finite number"),
    ],
)
def test_bad_hyperparameters_raise_one_line_errors(hparams: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        losses.build("ms", **hparams)


def test_presets_and_overrides() -> None:
    assert losses.build("ms").hparams == {
        "preset": "paper",
        "alpha": 2.0,
        "beta": 50.0,
        "lam": 1.0,
        "eps": 0.1,
    }
    official = losses.build("ms", preset="official").hparams
    assert (official["alpha"], official["beta"], official["lam"], official["eps"]) == (2.0, 40.0, 0.5, 0.1)
    assert losses.build("ms", preset="official", beta=45).hparams["beta"] == 45.0
    assert losses.build("lifted_star", preset="official").hparams == {
        "preset": "official",
        "alpha": 2.0,
        "beta": 40.0,
    }
    assert (
        losses.build("triplet").hparams["lam"]
        == losses.build("triplet", preset="official").hparams["lam"]
        == 0.1
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_accepts_a_preset(name: str) -> None:
    for preset in ("paper", "official"):
        assert losses.build(name, preset=preset).hparams["preset"] == preset


@pytest.mark.parametrize("name", NAMES)
def test_hparams_record_every_factory_parameter_resolved(name: str) -> None:
    """What a run records as the loss's settings: every parameter of its factory, none left as None."""
    hparams = losses.build(name).hparams
    assert list(hparams) == list(inspect.signature(losses.info(name).factory).parameters)
    assert all(value is not None for value in hparams.values())


def test_the_library_imports_nothing_from_the_harness() -> None:
    code = "import losses, sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'harness'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert issubclass(losses.LossConfigError, ValueError)


@pytest.mark.parametrize("name", NAMES)
def test_labels_may_be_any_integers(name: str) -> None:
    batch = make_batch([3, 1, 4, 2], [0, 1, 2, 3], dim=5, seed=11)
    relabelled = torch.tensor([-7, 10**9, 42, 3])[batch.labels].to(torch.int32)
    loss = losses.build(name)
    value, grad = value_and_grad(loss, batch.embeddings, batch.labels)
    value2, grad2 = value_and_grad(loss, batch.embeddings, relabelled)
    torch.testing.assert_close(value, value2)
    torch.testing.assert_close(grad, grad2)


def test_registering_a_name_twice_is_refused() -> None:
    def ms() -> losses.GPWLoss:  # pragma: no cover - never called
        """Duplicate."""
        raise AssertionError

    with pytest.raises(RuntimeError, match="registered twice"):
        register_loss(label="MS", equation="Eq. 15", similarities="SNP")(ms)


def test_last_stats_exist_before_the_first_call() -> None:
    assert losses.build("ms").last_stats == dict.fromkeys(
        ("pos_pairs", "neg_pairs", "pos_weight_mean", "neg_weight_mean"), 0.0
    )
