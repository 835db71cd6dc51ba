"""Retrieval examples and embedding maps: the test set embedded again by the cells that kept their weights.

For each figure family (dataset, embedding size, variant), one cell per loss at one seed (by default the
control row's first seed with kept weights; the control is the one the planned comparisons use) is
rebuilt from its ``config.json`` (:func:`harness.builders.load_splits`,
:func:`~harness.builders.build_model`),
given its kept weights (``weights_selected.pt``, or ``weights_final.pt`` where the report shows final
weights only) and embeds the test set with the trainer's own :func:`harness.train.embed`. From these
embeddings come the retrieval grid (the same test queries for every loss, some chosen where the losses'
top-1 results disagree) and the t-SNE maps of a fixed set of test classes. Every choice is seeded.
Without kept weights nothing is embedded and the report says so in one line.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.errors import DamagedFileError, UserError
from harness.report import example_plots
from harness.report.decisions import control_row
from harness.report.figures import Figure, Skipped, family_name, slug, variant_slug
from harness.report.reading import FIGURE_FAMILY, ReportContext
from harness.report.tables import esc, weights_shown
from harness.results import cell_paths

if TYPE_CHECKING:
    from harness.data import LabelledDataset

RETRIEVAL_QUERIES = 4
"""Queries in the retrieval grid (the same for every loss)."""
RETRIEVAL_K = 5
"""Neighbours shown per query."""
CANDIDATE_QUERIES = 2000
"""At most this many random test queries are searched for ones where the losses disagree."""
MAP_IMAGES_PER_CLASS = 60
"""At most this many images per class in a map (a seeded random subset)."""
EXAMPLES_SEED = 0
"""Seed of every random choice here: candidate queries, map classes and images, t-SNE."""
KEEP_WEIGHTS_NOTE = (
    "Retrieval examples and embedding maps need the trained weights: run the experiment with "
    "`train.keep_weights: true` (no finished cell here kept them)."
)


@dataclass
class EmbeddedCell:
    """One cell's test set (queries and gallery; the same set when evaluated leave-one-out), embedded."""

    row: str
    cell_id: str
    convention: str
    queries: LabelledDataset
    gallery: LabelledDataset
    query_embeddings: np.ndarray
    gallery_embeddings: np.ndarray
    query_labels: np.ndarray
    gallery_labels: np.ndarray
    leave_one_out: bool

    def neighbours(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` most similar gallery images (cosine: the embeddings are unit vectors) of each query,
        best first, as gallery indices; leave-one-out never returns the query itself."""
        import torch

        gallery = torch.from_numpy(self.gallery_embeddings)
        out = []
        for start in range(0, len(queries), 256):
            chunk = np.asarray(queries[start : start + 256])
            similarity = torch.from_numpy(self.query_embeddings[chunk]) @ gallery.T
            if self.leave_one_out:
                similarity[torch.arange(len(chunk)), torch.from_numpy(chunk)] = -math.inf
            out.append(torch.topk(similarity, min(k, gallery.shape[0] - self.leave_one_out), dim=1).indices)
        return torch.cat(out).numpy() if out else np.zeros((0, k), dtype=np.int64)


def embed_cell(exp_dir: Path, row: str, cell_id: str, record: dict, weights: str) -> EmbeddedCell:
    """Rebuild a cell's model from its config.json record, load its kept ``weights``, embed its test set."""
    import torch

    from harness.builders import build_model, load_splits
    from harness.config import CellConfig
    from harness.models import backbone_entry
    from harness.train import embed

    cfg = CellConfig.model_validate(
        {k: v for k, v in record.items() if k not in ("cell_id", "resolved_loss")}
    )
    splits = load_splits(cfg)
    leave_one_out = splits.eval_mode == "leave_one_out"
    queries = splits.test if leave_one_out else splits.query
    gallery = splits.test if leave_one_out else splits.gallery
    assert queries is not None and gallery is not None  # DatasetSplits holds the sets of its eval_mode
    model = build_model(cfg, in_channels=int(queries[0][0].shape[0]))
    path = cell_paths(exp_dir, cell_id).weights(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        raise DamagedFileError(
            f"{path}: not a readable weights file ({type(err).__name__}); delete it and train the cell again "
            "with train.keep_weights: true"
        ) from None
    model.load_state_dict(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    options: dict[str, Any] = {
        "device": device,
        "batch_size": cfg.evaluate.batch_size,
        "workers": cfg.data.workers,
        "amp": None,
    }
    query_embeddings, query_labels = embed(model, queries, **options)
    gallery_embeddings, gallery_labels = (
        (query_embeddings, query_labels) if leave_one_out else embed(model, gallery, **options)
    )
    return EmbeddedCell(
        row=row,
        cell_id=cell_id,
        convention=backbone_entry(cfg.model.backbone).convention,
        queries=queries,
        gallery=gallery,
        query_embeddings=query_embeddings.numpy(),
        gallery_embeddings=gallery_embeddings.numpy(),
        query_labels=query_labels.numpy(),
        gallery_labels=gallery_labels.numpy(),
        leave_one_out=leave_one_out,
    )


def choose_queries(
    cells: list[EmbeddedCell], count: int, seed: int = EXAMPLES_SEED
) -> tuple[np.ndarray, int]:
    """``count`` query indices (and how many of them the losses disagree on): up to half where the losses'
    top-1 results are right for some and wrong for others, the rest where they agree, all drawn with
    ``seed`` from at most :data:`CANDIDATE_QUERIES` random queries."""
    first = cells[0]
    candidates = np.random.default_rng(seed).permutation(len(first.query_labels))[:CANDIDATE_QUERIES]
    right = np.stack(
        [
            cell.gallery_labels[cell.neighbours(candidates, 1)[:, 0]] == cell.query_labels[candidates]
            for cell in cells
        ]
    )
    disagree = right.any(axis=0) & ~right.all(axis=0)
    split = candidates[disagree][: math.ceil(count / 2)]
    rest = candidates[~disagree][: count - len(split)]
    more = candidates[disagree][len(split) : len(split) + count - len(split) - len(rest)]
    return np.concatenate([split, more, rest]), len(split) + len(more)


def choose_classes(labels: np.ndarray, count: int, seed: int = EXAMPLES_SEED) -> list[int]:
    """``count`` of the classes in ``labels`` (all of them when there are fewer), drawn with ``seed``,
    sorted."""
    present = np.unique(labels)
    return sorted(
        int(c) for c in np.random.default_rng(seed).choice(present, min(count, len(present)), replace=False)
    )


def _shown(dataset: LabelledDataset, index: int, label: int, convention: str) -> example_plots.Shown:
    from harness.data.transforms import to_display_image

    return example_plots.Shown(to_display_image(dataset[int(index)][0], convention), int(label), int(index))


def _family_cells(ctx: ReportContext, family: pd.DataFrame) -> tuple[int | None, list[tuple[str, str]], str]:
    """The seed shown and one (row, cell id) per loss at it, or None and why not."""
    rows = ctx.ordered(family["row"])
    control = control_row(ctx, family, rows)
    mine = family[family["row"] == control]
    wanted = ctx.options.examples_seed
    if wanted is None:
        seed = int((mine if len(mine) else family)["seed"].min())
    elif (family["seed"] == wanted).any():
        seed = int(wanted)
    else:
        return None, [], f"no cell with kept weights has seed {wanted} (--examples-seed)"
    at_seed = family[family["seed"] == seed].sort_values("cell_id")
    chosen = [
        (row, str(at_seed.loc[at_seed["row"] == row, "cell_id"].iloc[0]))
        for row in rows
        if (at_seed["row"] == row).any()
    ]
    return seed, chosen, ""


def example_figures(ctx: ReportContext) -> tuple[list[Figure | Skipped], str]:
    """The retrieval grid and the embedding map of every figure family whose cells kept their weights, and
    the one line the Figures section says when no cell kept them ('' otherwise)."""
    shown = weights_shown(ctx.finished)
    if not shown:
        return [], ""
    weights = shown[0]
    per_cell = ctx.finished.drop_duplicates("cell_id")
    kept = per_cell[[cell_paths(ctx.exp_dir, str(c)).weights(weights).is_file() for c in per_cell["cell_id"]]]
    if kept.empty:
        return [], KEEP_WEIGHTS_NOTE
    out: list[Figure | Skipped] = []
    for key, family in per_cell.groupby(list(FIGURE_FAMILY), sort=True):
        dataset, size, variant = key
        name = family_name(ctx, dataset, size, variant)
        titles = (f"Retrieval examples: {name}", f"Embedding map (t-SNE): {name}")
        family_kept = kept[kept["cell_id"].isin(family["cell_id"])]
        if family_kept.empty:
            out += [
                Skipped(t, "no finished cell here kept its weights (`train.keep_weights: true`)")
                for t in titles
            ]
            continue
        seed, chosen, why = _family_cells(ctx, family_kept)
        if seed is None:
            out += [Skipped(t, why) for t in titles]
            continue
        missing = [cell_id for _, cell_id in chosen if cell_id not in ctx.files.configs]
        if missing:
            out += [Skipped(t, f"no readable config.json in {esc(missing[0])}") for t in titles]
            continue
        try:
            cells = [
                embed_cell(ctx.exp_dir, row, cell_id, ctx.files.configs[cell_id], weights)
                for row, cell_id in chosen
            ]
        except (UserError, OSError, RuntimeError, ValueError) as err:
            first = (str(err).splitlines() or [type(err).__name__])[0]
            out += [Skipped(t, f"the test set could not be embedded again ({esc(first)})") for t in titles]
            continue
        same = [c for c in cells if np.array_equal(c.query_labels, cells[0].query_labels)]
        left_out = [c.row for c in cells if c not in same]
        stem_tail = (dataset, f"d{size}", variant_slug(variant))
        where = f"seed {seed}, {ctx.weights_titles[weights].split(' (')[0]}"
        note = (
            f" Left out (another test set: other data settings): {', '.join(esc(r) for r in left_out)}."
            if left_out
            else ""
        )
        out.append(_retrieval_figure(ctx, same, titles[0], where, note, stem_tail))
        out.append(_map_figure(ctx, same, titles[1], where, note, stem_tail))
    return out, ""


def _retrieval_figure(
    ctx: ReportContext, cells: list[EmbeddedCell], title: str, where: str, note: str, stem_tail: tuple
) -> Figure:
    chosen, disagreeing = choose_queries(cells, RETRIEVAL_QUERIES)
    first = cells[0]
    queries = [_shown(first.queries, i, first.query_labels[i], first.convention) for i in chosen]
    neighbours = {
        cell.row: [
            [_shown(cell.gallery, j, cell.gallery_labels[j], cell.convention) for j in found]
            for found in cell.neighbours(chosen, RETRIEVAL_K)
        ]
        for cell in cells
    }
    files = example_plots.retrieval_grid(
        queries,
        neighbours,
        title=f"{title} ({where})",
        stem=ctx.exp_dir / "figures" / slug("retrieval", *stem_tail),
    )
    source = "the test set" if first.leave_one_out else "the query set, neighbours from the gallery"
    caption = (
        f"{len(chosen)} queries from {source} (black frame) and their {RETRIEVAL_K} most similar test images "
        "(cosine similarity of the embeddings), best first: green frame and ✓ when of the query's class, "
        "red and ✗ when not. One block of rows per loss, the same queries in every block; "
        f"{disagreeing} of them where the losses' top-1 results disagree (searched among up to "
        f"{CANDIDATE_QUERIES} random queries, seed {EXAMPLES_SEED}), the rest where they agree."
    )
    return Figure(title, files, caption + note)


def _map_figure(
    ctx: ReportContext, cells: list[EmbeddedCell], title: str, where: str, note: str, stem_tail: tuple
) -> Figure | Skipped:
    from sklearn.manifold import TSNE

    labels = cells[0].gallery_labels
    classes = choose_classes(labels, ctx.options.map_classes)
    rng = np.random.default_rng(EXAMPLES_SEED)
    chosen = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:MAP_IMAGES_PER_CLASS] for c in classes])
    )
    if len(chosen) < 5:
        return Skipped(title, f"only {len(chosen)} test images in the chosen classes: too few for a map")
    perplexity = min(30.0, (len(chosen) - 1) / 3)
    points = {
        cell.row: (
            TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=EXAMPLES_SEED).fit_transform(
                cell.gallery_embeddings[chosen]
            ),
            labels[chosen],
        )
        for cell in cells
    }
    files = example_plots.embedding_maps(
        points,
        classes=classes,
        class_names={c: f"class {c}" for c in classes},
        title=title.replace(": ", f" of {len(classes)} test classes: ", 1) + f" ({where})",
        stem=ctx.exp_dir / "figures" / slug("embedding_map", *stem_tail),
    )
    caption = (
        f"t-SNE (scikit-learn, perplexity {perplexity:.0f}, PCA start, seed {EXAMPLES_SEED}) of the test "
        f"embeddings of {len(classes)} test classes drawn with seed {EXAMPLES_SEED} "
        f"(`--map-classes`; at most "
        f"{MAP_IMAGES_PER_CLASS} images each), one panel per loss, the same classes and colours in every "
        "panel. A t-SNE map keeps neighbourhoods, not distances: tight, separate clusters mean classes the "
        "embedding keeps apart; the gaps between clusters and the axes carry no meaning."
    )
    return Figure(title, files, caption + note)
