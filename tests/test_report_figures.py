"""What the report's figures show: panels, axis labels, legends that match what is drawn, the notes on them,
the near-threshold marks, and the retrieval examples and embedding maps of a tiny trained grid."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from figure_checks import legend_labels, legend_mismatches, record_figures
from matplotlib.colors import to_hex
from test_report import CARS_D64_FIGURES, Spec, build_results

from harness import report, run
from harness.builders import load_splits
from harness.config import CellConfig
from harness.report import example_plots, examples, figures, plots

matplotlib.use("Agg")

import matplotlib.pyplot as plt


@pytest.fixture()
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, matplotlib.figure.Figure]:
    """The figures saved during the test, by file stem."""
    return record_figures(monkeypatch)


def _data_axes(figure: matplotlib.figure.Figure) -> list[plt.Axes]:
    """The axes that show data (not colour bars)."""
    return [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]


def test_legend_check_finds_an_entry_that_matches_nothing():
    figure, ax = plt.subplots()
    ax.plot([1, 2], [1, 2], color="C0", marker="o", label="A")
    ax.legend(
        [ax.get_lines()[0], matplotlib.lines.Line2D([], [], color="black", linewidth=2)],
        ["A", "ours (band: 95% CI)"],
    )
    assert legend_mismatches(figure) == ["ours (band: 95% CI)"]
    plt.close(figure)


def test_every_report_figure_has_one_kind_of_weights_and_legends_of_drawn_artists(tmp_path, drawn):
    exp_dir = build_results(tmp_path, Spec())
    text = report.write_report(exp_dir).read_text()
    assert set(drawn) >= CARS_D64_FIGURES
    for stem in CARS_D64_FIGURES:
        assert legend_mismatches(drawn[stem]) == [], stem
    # Recall@K: one panel (the validation-selected weights), each loss's line and the paper's key
    recall = drawn["recall_at_k_cars_d64"]
    (ax,) = _data_axes(recall)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("K (log scale)", "Recall@K on the test set (%)")
    assert legend_labels(recall) == ["Binomial", "MS mining", "MS", "paper"]
    assert ax.get_legend().get_title().get_text() == "loss (ours: line, band: 95% CI)"
    assert recall.get_suptitle() == "Recall@K: Cars-196, embedding 64 (validation-selected weights)"
    assert sum(line.get_linestyle() == "-" for line in ax.get_lines()) == 3  # ours, one per loss
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 3  # the paper, one per loss
    # the ablation: one kind of weights, 3 losses x (seed dots + mean) and the paper's diamonds
    ablation = drawn["ablation_cars_d64"]
    (ax,) = _data_axes(ablation)
    assert (
        ax.get_ylabel() == "Recall@1 on the test set (%)" and ax.get_xlabel() == "loss (paper's ablation row)"
    )
    assert legend_labels(ablation) == ["validation-selected weights: mean, 95% CI", "one seed", "paper"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Binomial", "MS mining", "MS"]
    assert len(ax.containers) == 3  # one error bar per loss, not one per loss and kind of weights
    # the weights left out are named in the captions, with the largest gap (selected = final + 0.5 points)
    note = (
        "Not drawn: the final weights, whose means differ from the drawn validation-selected weights "
        "by at most 0.50"
    )
    assert text.count(note) == 2
    assert (
        len(_data_axes(drawn["training_cars_d64"])) == 4
        and len(_data_axes(drawn["pair_weights_cars_d64"])) == 2
    )
    # no cell kept its weights: one line says what the examples need, and nothing is drawn for them
    assert examples.KEEP_WEIGHTS_NOTE in text and not any(
        s.startswith(("retrieval", "embedding_map")) for s in drawn
    )


def _long_tailed_weights() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    parts = []
    for row in ("Narrow", "Tailed"):
        negative = rng.lognormal(-9.0, 1.0, 2000)
        if row == "Tailed":
            negative[:15] = 10.0 ** rng.uniform(-27, -20, 15)  # a few pairs far below the rest
        parts += [
            pd.DataFrame({"row": row, "kind": "positive", "weight": rng.lognormal(-6.0, 0.05, 400)}),
            pd.DataFrame({"row": row, "kind": "negative", "weight": negative}),
        ]
    return pd.concat(parts, ignore_index=True)


def test_pair_weights_axis_is_cut_at_a_stated_quantile(tmp_path, drawn):
    weights = _long_tailed_weights()
    plots.pair_weight_distributions(
        weights, order=["Narrow", "Tailed"], title="Pair weights", stem=tmp_path / "pw"
    )
    positive, negative = _data_axes(drawn["pw"])
    floor = float(np.quantile(weights.loc[weights["kind"] == "negative", "weight"], plots.CUT_QUANTILE))
    assert negative.get_ylim()[0] == pytest.approx(floor)
    note = negative.get_title(loc="left").replace("\n", " ")
    assert note.startswith(f"Axis cut at {floor:.1e}, the 1% quantile of all negative weights")
    negatives = weights[weights["kind"] == "negative"]
    share = {row: 100 * float((g["weight"] < floor).mean()) for row, g in negatives.groupby("row")}
    assert share["Tailed"] > share["Narrow"] > 0.1
    assert note.endswith(
        f"share of each loss's pairs: Tailed {share['Tailed']:.1f}%, Narrow {share['Narrow']:.1f}%."
    )
    assert "Axis cut" not in positive.get_title(
        loc="left"
    )  # the positive weights span a narrow band: kept whole
    assert positive.get_ylim()[0] < weights.loc[weights["kind"] == "positive", "weight"].min()


def test_training_curves_name_constant_pair_counts_in_plain_words(tmp_path, drawn):
    log = pd.DataFrame(
        [
            {
                "row": row,
                "seed": 0,
                "iteration": it,
                "loss": 1.0 / it,
                "pos_pairs": pos,
                "neg_pairs": 50.0 * it,
            }
            for row, pos in (("A", 320.0), ("B", 320.0), ("C", None))
            for it in (1, 2, 3)
        ]
    )
    log.loc[log["row"] == "C", "pos_pairs"] = [300.0, 250.0, 200.0]
    evals = pd.DataFrame([{"row": r, "seed": 0, "iteration": 3, "value": 50.0} for r in "ABC"])
    styles = plots.label_styles(["A", "B", "C"])
    plots.training_curves(
        log,
        evals,
        order=["A", "B", "C"],
        styles=styles,
        eval_label="val",
        title="T",
        stem=tmp_path / "training",
    )
    axes = _data_axes(drawn["training"])
    assert len(axes) == 4
    assert [ax.get_ylabel() for ax in axes] == [
        "training loss ÷ its first logged value",
        "Recall@1 on val (%)",
        "mined positive pairs per batch",
        "mined negative pairs per batch",
    ]
    assert axes[2].get_title(loc="left").replace("\n", " ") == (
        "A and B: 320 pairs at every iteration (these lines lie on top of each other)"
    )
    assert legend_mismatches(drawn["training"]) == []


def test_decisions_near_the_threshold_are_marked_in_the_tables(tmp_path):
    exp_dir = build_results(tmp_path, Spec(ks=(1,), cell_files=()))
    cells = pd.read_csv(exp_dir / "cells.csv", dtype=str, keep_default_na=False)
    for seed, offset in (("1", 0.03), ("2", -0.03)):  # Binomial's paired differences to MS: SD 3 points
        hit = (cells["loss"] == "binomial") & (cells["seed"] == seed) & (cells["metric"] == "recall@1")
        cells.loc[hit, "value"] = (cells.loc[hit, "value"].astype(float) + offset).round(6).astype(str)
    cells.to_csv(exp_dir / "cells.csv", index=False)
    text = report.write_report(exp_dir).read_text()
    lead = text.split("## At a glance")[1].split("\n## ")[0]
    binomial = next(line for line in lead.splitlines() if line.startswith("| Binomial |"))
    assert binomial.endswith("| 0.019 | MS better (near the threshold) |")  # t = 7.1 on 2 df
    mining = next(line for line in lead.splitlines() if line.startswith("| MS mining |"))
    assert mining.endswith("| 0 | MS better |")  # exact: not near anything
    assert "*near the threshold*: a Holm p between 0.01 and 0.1; a re-run on another machine can flip" in lead
    detail = text.split("## Between losses in detail")[1]
    assert "MS better (near the threshold)" in detail and "*near the threshold*" in detail


# ------------------------------------------------------------------ retrieval examples and embedding maps


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory, glyph_cache: Path) -> Path:
    """The tiny glyphs grid (MS and Binomial, one seed, 24 iterations) trained with its weights kept."""
    from conftest import write_tiny_experiment

    folder = tmp_path_factory.mktemp("kept")
    experiment = write_tiny_experiment(folder, glyph_cache, {"train.keep_weights": True})
    assert run.main([str(experiment), "--results", str(folder / "results"), "--quiet", "--no-report"]) == 0
    return folder / "results" / "tiny"


def _spine_colour(ax: plt.Axes) -> str:
    return to_hex(ax.spines["top"].get_edgecolor())


def test_retrieval_grid_marks_each_neighbour_by_its_label(kept, drawn):
    text = report.write_report(kept, reference=False).read_text()
    assert "](figures/retrieval_glyphs_d16.png)" in text and "](figures/embedding_map_glyphs_d16.png)" in text
    assert examples.KEEP_WEIGHTS_NOTE not in text
    grid = drawn["retrieval_glyphs_d16"]
    images = [ax for ax in grid.axes if ax.get_gid()]
    k, queries = examples.RETRIEVAL_K, examples.RETRIEVAL_QUERIES
    by_loss: dict[str, list[plt.Axes]] = {}
    for ax in images:
        by_loss.setdefault(ax.get_gid().split("|")[0], []).append(ax)
    assert sorted(by_loss) == ["Binomial", "MS"]
    assert all(
        len(axes) == queries * (k + 1) for axes in by_loss.values()
    )  # queries x (query + k neighbours)
    record = json.loads(next((kept / "cells").glob("glyphs-ms-*/config.json")).read_text())
    config = CellConfig.model_validate(
        {k: v for k, v in record.items() if k not in ("cell_id", "resolved_loss")}
    )
    labels = np.asarray(load_splits(config).test.labels)
    query_of: dict[tuple[str, str], int] = {}
    for ax in images:
        loss, query, shown = ax.get_gid().split("|")
        if shown.startswith("query "):
            query_of[(loss, query)] = int(shown.split()[1])
            assert _spine_colour(ax) == to_hex(example_plots.QUERY_COLOUR)
    assert len(set(query_of.values())) == queries  # distinct queries ...
    assert {q for (loss, _), q in query_of.items() if loss == "MS"} == set(
        query_of.values()
    )  # ... the same for both
    marks = []
    for ax in images:
        loss, query, shown = ax.get_gid().split("|")
        if shown.startswith("neighbour "):
            index, asked = int(shown.split()[1]), query_of[(loss, query)]
            assert index != asked  # leave-one-out: never the query itself
            correct = labels[index] == labels[asked]
            marks.append(correct)
            assert _spine_colour(ax) == (
                example_plots.CORRECT_COLOUR if correct else example_plots.WRONG_COLOUR
            )
            assert ax.get_xlabel() == ("✓" if correct else "✗")
    assert len(marks) == 2 * queries * k


def test_embedding_map_has_one_panel_per_loss_with_the_same_classes(kept, drawn):
    ctx, _ = report.load_context(kept, options=report.ReportOptions(map_classes=6))
    examples.example_figures(ctx)
    figure = drawn["embedding_map_glyphs_d16"]
    axes = _data_axes(figure)
    assert [ax.get_title() for ax in axes] == ["Binomial", "MS"]
    assert all((ax.get_xlabel(), ax.get_ylabel()) == ("t-SNE 1", "t-SNE 2") for ax in axes)
    names = legend_labels(figure)
    assert len(names) == 6 and all(name.startswith("class ") for name in names)
    assert legend_mismatches(figure) == []
    for ax in axes:  # every panel: one scatter per class, in the legend's names and colours
        assert [c.get_label() for c in ax.collections] == names
    colours = [[to_hex(c.get_facecolor()[0]) for c in ax.collections] for ax in axes]
    assert colours[0] == colours[1]
    # another seed than the grid's: both are skipped, with the reason
    ctx.options = report.ReportOptions(examples_seed=5)
    items, note = examples.example_figures(ctx)
    assert note == "" and [(item.title, item.reason) for item in items] == [
        (title, "no cell with kept weights has seed 5 (--examples-seed)")
        for title in (
            "Retrieval examples: glyphs, embedding 16",
            "Embedding map (t-SNE): glyphs, embedding 16",
        )
    ]


def test_damaged_kept_weights_skip_the_examples_with_the_reason(kept, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(kept, copy)
    for path in (copy / "cells").glob("glyphs-ms-*/weights_selected.pt"):
        path.write_bytes(b"not a torch file")
    ctx, _ = report.load_context(copy)
    items, note = examples.example_figures(ctx)
    assert note == "" and len(items) == 2
    assert all(isinstance(item, figures.Skipped) for item in items)
    for item in items:
        assert item.reason.startswith("the test set could not be embedded again (")
        assert (
            "weights\\_selected.pt: not a readable weights file (UnpicklingError); delete it" in item.reason
        )


# Draws one critical-difference diagram whose crossbars join several losses (no pair is separated).
_CD_SCRIPT = """
import sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import pandas as pd
from harness.report.comparison_plots import critical_difference
labels = ["MS", "Binomial", "LiftedStruct*", "BinLifted", "MS weighting", "Binomial_m"]
ranks = pd.Series([1.5, 2.5, 3.0, 3.5, 4.0, 6.5], index=labels)
pvalues = pd.DataFrame(1.0, index=labels, columns=labels)
pvalues.loc["MS", "Binomial_m"] = pvalues.loc["Binomial_m", "MS"] = 0.001
critical_difference(ranks, pvalues, critical_difference=2.1, styles={}, title="cd", stem=Path(sys.argv[1]))
"""


def test_critical_difference_file_is_the_same_in_every_process(tmp_path):
    """scikit-posthocs joins a crossbar's losses in set order, which depends on the process's string hashes;
    the figure must not, or a report rebuilt from the same stored runs would differ."""
    import subprocess
    import sys

    svgs = []
    for seed in ("1", "2", "3"):
        (tmp_path / seed).mkdir()
        stem = tmp_path / seed / "critical_difference"  # one name: the svg ids are salted with it
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", _CD_SCRIPT, str(stem)], check=True, env=env, timeout=120)
        svgs.append(stem.with_suffix(".svg").read_bytes())
    assert len(svgs[0]) > 1000
    assert svgs[1] == svgs[0] and svgs[2] == svgs[0]
