"""User errors are one line, also when a DataLoader worker raised them."""

from __future__ import annotations

import pytest
import torch

from harness.errors import DataError, UserError, cli_main, did_you_mean


class _Broken(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        raise DataError(f"glyphs: cache file /x/y.npz is truncated (item {index}); delete it to re-render")


def test_worker_error_keeps_only_the_original_line() -> None:
    loader = torch.utils.data.DataLoader(_Broken(), num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert str(info.value) == "glyphs: cache file /x/y.npz is truncated (item 0); delete it to re-render"


def test_cli_main_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    def main(argv: list[str] | None) -> int:
        raise UserError("train.iterations: must be >= 1\n(got -3)")

    with pytest.raises(SystemExit) as info:
        cli_main(main, [])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: train.iterations: must be >= 1 (got -3)\n"


def test_did_you_mean_names_the_close_matches_else_every_choice() -> None:
    names = ("cub", "cars", "sop", "inshop", "glyphs")
    assert did_you_mean("glyph", names) == "; did you mean 'glyphs'?"
    losses = iter(["lifted", "lifted_star", "lifted_star_m", "ms"])
    assert did_you_mean("lifted_sta", losses) == "; did you mean 'lifted_star' or 'lifted_star_m'?"
    assert did_you_mean("imagenet", names) == "; expected one of 'cub', 'cars', 'sop', 'inshop', 'glyphs'"
