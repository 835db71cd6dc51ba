"""Which paper row a cell may be judged against, and the protocol it ran with, each choice's bias named."""

from __future__ import annotations

import pandas as pd

from harness.results import loss_label

PAPER_PRESETS = ("", "paper")
"""Presets whose hyperparameters are the paper's (empty: the loss's default, the paper's values)."""

PAPER_BIAS = (
    "the paper selected its checkpoint on the test set (its numbers are optimistic: biases the paper's "
    "up, ours look lower)"
)
TEST_SELECTED = "test-selected (opt-in, optimistic, as the official code)"
"""How a row whose checkpoint was selected on the test set (``train.select_on: test``) is labelled."""
BIAS_LEGEND = (
    "↓: the choice biases our number down relative to the paper's; =: it matches the paper's protocol; "
    "±: direction unknown, usually small."
)


def paper_mismatch(cell: pd.Series, config: dict | None) -> str:
    """Why a cell ran a configuration the paper has no row for ('' when its loss,
    preset and label are the paper's).

    ``cell``: its cells.csv row (loss, loss_label, preset); ``config``: its config.json (None when
    unreadable: then cells.csv alone decides). A non-paper preset (e.g. official), a label other than
    the loss library's, or explicit hyperparameters all make it a configuration of our own.
    """
    loss_config = (config or {}).get("loss") or {}
    preset = str(cell["preset"] or loss_config.get("preset") or "")
    if preset not in PAPER_PRESETS:
        return f"preset {preset}"
    label = loss_config.get("label") or cell["loss_label"]
    if label and label != loss_label(str(cell["loss"])):
        return f"own label {label!r}"
    hparams = loss_config.get("hparams") or {}
    if hparams:
        return "own hyperparameters " + ", ".join(f"{k}={v}" for k, v in sorted(hparams.items()))
    return ""


def protocol_biases(config: dict | None, env: dict | None, weights: str, *, coincide: bool) -> str:
    """The protocol one cell's ``weights`` view ran with, each choice marked with its bias against the paper.

    Reads ``data.val_fraction``, ``train.select_on``, ``train.amp`` of config.json and ``device`` of
    env.json; '' when config.json is unreadable.
    """
    if not config:
        return ""
    fraction = (config.get("data") or {}).get("val_fraction")
    train = config.get("train") or {}
    parts = []
    if fraction is not None:
        parts.append(
            f"{100 * (1 - fraction):.0f}% of training classes ↓" if fraction > 0 else "all training classes ="
        )
    if weights == "final" or coincide or train.get("select_on") == "final":
        parts.append("final weights ↓")
    elif train.get("select_on") == "test":
        parts.append(TEST_SELECTED + " =")
    else:
        parts.append("val-selected ↓")
    device = str((env or {}).get("device") or "")
    amp = str(train.get("amp") or "auto")
    if device.startswith("cuda") and amp != "off":
        parts.append(f"{'bf16' if amp in ('auto', 'bf16') else amp} ±")
    return "; ".join(parts)


PROTOCOL_NOTES = (
    "Protocol, per row: *N% of training classes ↓*: the validation classes (data.val_fraction) are held out "
    "of training, the paper trained on all; *val-selected ↓*: the checkpoint with the best validation "
    "Recall@1, not inflated the way the paper's test-selected one is; *final weights ↓*: the last iteration, "
    "no selection (train.select_on: final, the `paper` variants); *" + TEST_SELECTED + " =*: selected on the "
    "test set like the paper (train.select_on: test, an explicit opt-in), optimistic in the same way; "
    "*bf16 ±*: GPU runs train in bf16, the paper in fp32."
)
