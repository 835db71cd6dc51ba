"""harness/paper/: the paper's Tables 2-5 as tidy CSV: shape, keys and spot values as printed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

PAPER_DIR = Path(__file__).resolve().parents[1] / "harness" / "paper"
COLUMNS = [
    "table",
    "dataset",
    "method",
    "loss",
    "implemented",
    "similarities",
    "embedding_size",
    "k",
    "recall",
]
KEY = ["table", "dataset", "method", "embedding_size", "k"]


def _table(number: int) -> pd.DataFrame:
    return pd.read_csv(PAPER_DIR / f"table{number}.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return pd.concat([_table(n) for n in (2, 3, 4, 5)], ignore_index=True)


@pytest.mark.parametrize(
    ("number", "rows", "datasets", "ks"),
    [
        (2, 32, {"cars"}, [1, 2, 4, 8]),
        (3, 102, {"cub", "cars"}, [1, 2, 4, 8, 16, 32]),
        (4, 42, {"inshop"}, [1, 10, 20, 30, 40, 50]),
        (5, 36, {"sop"}, [1, 10, 100, 1000]),
    ],
)
def test_shape(number, rows, datasets, ks):
    table = _table(number)
    assert list(table.columns) == COLUMNS
    assert len(table) == rows
    assert set(table["table"]) == {number}
    assert set(table["dataset"]) == datasets
    assert sorted(set(table["k"])) == ks
    assert table["recall"].dtype == float and table["recall"].between(0, 100).all()
    assert table["embedding_size"].dtype == int
    assert not table.duplicated(KEY).any()


def test_table2_is_the_cars_ablation_at_64(paper):
    table2 = paper[paper.table == 2]
    assert set(table2.embedding_size) == {64}
    methods = list(dict.fromkeys(table2.method))
    assert methods == [
        "Binomial",
        "LiftedStruct*",
        "MS mining",
        "BinLifted",
        "MS weighting",
        "Binomial_m",
        "LiftedStruct*_m",
        "MS",
    ]
    similarities = table2.drop_duplicates("method").set_index("method")["similarities"].to_dict()
    assert similarities == {
        "Binomial": "S",
        "LiftedStruct*": "N",
        "MS mining": "P",
        "BinLifted": "SN",
        "MS weighting": "SN",
        "Binomial_m": "SP",
        "LiftedStruct*_m": "NP",
        "MS": "SNP",
    }
    assert (paper[paper.table != 2].similarities == "").all()


def test_loss_names_and_implemented(paper):
    implemented = paper[paper.implemented]
    assert (implemented.loss != "").all() and (paper[~paper.implemented].loss == "").all()
    assert dict(zip(implemented.method, implemented.loss, strict=True)) == {
        "Binomial": "binomial",
        "LiftedStruct*": "lifted_star",
        "MS mining": "ms_mining",
        "BinLifted": "binlifted",
        "MS weighting": "ms_weighting",
        "Binomial_m": "binomial_m",
        "LiftedStruct*_m": "lifted_star_m",
        "MS": "ms",
    }
    others = set(paper[~paper.implemented].method)
    assert others == {
        "Clustering",
        "ProxyNCA",
        "Smart Mining",
        "Margin",
        "HDC",
        "HTL",
        "ABIER",
        "ABE",
        "FashionNet",
    }


def _recall(paper: pd.DataFrame, table: int, dataset: str, method: str, size: int) -> list[float]:
    rows = paper[
        (paper.table == table)
        & (paper.dataset == dataset)
        & (paper.method == method)
        & (paper.embedding_size == size)
    ]
    return rows.sort_values("k")["recall"].tolist()


def test_spot_values_as_printed(paper):
    assert _recall(paper, 2, "cars", "Binomial", 64) == [71.9, 80.0, 86.4, 91.0]
    assert _recall(paper, 2, "cars", "LiftedStruct*_m", 64) == [72.2, 81.7, 88.0, 92.4]
    assert _recall(paper, 3, "cub", "MS", 512) == [65.7, 77.0, 86.3, 91.2, 95.0, 97.3]
    assert _recall(paper, 3, "cars", "HTL", 512) == [81.4, 88.0, 92.7, 95.7, 97.4, 99.0]
    assert _recall(paper, 3, "cub", "Margin", 128) == [63.6, 74.4, 83.1, 90.0, 94.2]  # K=32 is "-"
    assert _recall(paper, 4, "inshop", "FashionNet", 4096) == [53.0, 73.0, 76.0, 77.0, 79.0, 80.0]
    assert _recall(paper, 4, "inshop", "MS", 128) == [88.0, 97.2, 98.1, 98.5, 98.7, 98.8]
    assert _recall(paper, 5, "sop", "ProxyNCA", 64) == [73.7]  # the other three are "-"
    assert _recall(paper, 5, "sop", "MS", 64) == [74.1, 87.8, 94.7, 98.2]


def test_table3_ms64_cars_equals_table2_ms(paper):
    table2_ms = _recall(paper, 2, "cars", "MS", 64)
    assert table2_ms == [77.3, 85.3, 90.5, 94.2]
    assert _recall(paper, 3, "cars", "MS", 64)[:4] == table2_ms


def test_readme_names_every_table():
    readme = (PAPER_DIR / "README.md").read_text()
    for number in (2, 3, 4, 5):
        assert f"table{number}.csv" in readme and f"Table {number}" in readme
