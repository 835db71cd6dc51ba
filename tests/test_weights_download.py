"""Standard pretrained weights: downloaded from a loopback server, hash-checked, reused; --check wording."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import NO_WEIGHTS_SERVER
from loopback import LoopbackFiles

from harness import run
from harness.errors import EXIT_USER_ERROR, DataError, cli_main
from harness.models import build_model
from harness.models.weights import BNINCEPTION_FILE, STANDARD_WEIGHTS, WEIGHTS_URL_ENV, StandardWeights


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home and torch cache: no weights file is present anywhere the backbones look."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home"


def bninception_file() -> bytes:
    """A BN-Inception state dict as the real file holds one (random values; nothing downloaded)."""
    import pretrainedmodels

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(pretrainedmodels.bninception(num_classes=1000, pretrained=None).state_dict(), buffer)
    return buffer.getvalue()


def serve_bninception(
    loopback: LoopbackFiles, monkeypatch: pytest.MonkeyPatch, data: bytes, digest: str | None = None
) -> StandardWeights:
    """Serve ``data`` as the standard file, under a name carrying ``digest`` (default: its SHA-256 prefix)."""
    name = f"bn_inception-{digest or hashlib.sha256(data).hexdigest()[:9]}.pth"
    loopback.serve(name, data)
    monkeypatch.setenv(WEIGHTS_URL_ENV, loopback.base)
    weights = replace(STANDARD_WEIGHTS["bninception"], file=name)
    monkeypatch.setitem(STANDARD_WEIGHTS, "bninception", weights)
    return weights


def test_missing_weights_are_downloaded_verified_and_reused(
    home: Path, loopback: LoopbackFiles, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bninception_file()
    weights = serve_bninception(loopback, monkeypatch, data)
    loopback.cut_after["/" + weights.file] = len(data) // 2
    model = build_model("bninception", 8, pretrained=True)
    path = home / ".torch" / "models" / weights.file
    assert weights.path() == path and path.read_bytes() == data
    assert [r.range for r in loopback.asked(weights.file)] == [None, f"bytes={len(data) // 2}-"]
    expected = torch.load(io.BytesIO(data), weights_only=True)
    loaded = model.backbone.trunk.net.state_dict()
    trunk = {k: v for k, v in expected.items() if not k.startswith("last_linear.")}  # the head is dropped
    assert len(trunk) > 100 and all(torch.equal(loaded[k], v) for k, v in trunk.items())
    assert f"downloading {loopback.url(weights.file)}" in capsys.readouterr().err
    build_model("bninception", 8, pretrained=True)
    assert len(loopback.asked(weights.file)) == 2, "the cached file is reused"


def test_a_file_that_does_not_match_the_hash_in_its_name_is_refused(
    home: Path, loopback: LoopbackFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = serve_bninception(loopback, monkeypatch, b"not the weights", digest="52deb4733")
    with pytest.raises(DataError) as err:
        build_model("bninception", 8, pretrained=True)
    message = str(err.value)
    found = hashlib.sha256(b"not the weights").hexdigest()
    assert "\n" not in message and f"wrong checksum (sha256 {found}, expected sha256 52deb4733...)" in message
    assert f"download {loopback.url(weights.file)} to {weights.path()} by hand" in message
    assert list(weights.path().parent.glob("bn_inception*")) == [], "nothing is kept, not even a .part"


def test_offline_is_one_line_with_the_url_and_the_path(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEIGHTS_URL_ENV, NO_WEIGHTS_SERVER)
    with pytest.raises(DataError) as err:
        build_model("resnet50", 8, pretrained=True)
    path = home.parent / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    url = f"{NO_WEIGHTS_SERVER}/resnet50-0676ba61.pth"
    assert str(err.value) == (
        f"ResNet-50 pretrained weights not found at {path} and not downloaded ({url}: connection refused); "
        f"download {url} to {path} by hand, give model.weights, or set model.pretrained: false"
    )


def test_an_unwritable_cache_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HOME", str(blocker / "home"))
    with pytest.raises(DataError) as err:
        build_model("bninception", 8, pretrained=True)
    message = str(err.value)
    assert (
        message.startswith("BN-Inception pretrained weights cannot be downloaded: ")
        and "(ENOTDIR)" in message
    )
    assert f"to {blocker / 'home' / '.torch' / 'models' / BNINCEPTION_FILE} by hand" in message


def test_the_table_holds_the_files_and_urls_of_torchvision_and_pretrainedmodels() -> None:
    import pretrainedmodels
    import torchvision

    resnet, bninception = STANDARD_WEIGHTS["resnet50"], STANDARD_WEIGHTS["bninception"]
    assert resnet.url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert bninception.url == pretrainedmodels.pretrained_settings["bninception"]["imagenet"]["url"]
    assert resnet.checksum().digest == "0676ba61" and bninception.checksum().digest == "52deb4733"
    assert bninception.file == BNINCEPTION_FILE


RunPretrained = Callable[..., tuple[int, str, str]]


@pytest.fixture()
def run_pretrained(tiny_experiment: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> RunPretrained:
    """``run_pretrained(*argv)``: ``harness.run`` on the tiny experiment with a pretrained BN-Inception."""
    path = tiny_experiment({"model.backbone": "bninception", "model.pretrained": True})

    def call(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            cli_main(run.main, [str(path), *argv])
        captured = capsys.readouterr()
        return int(stop.value.code or 0), captured.out, captured.err

    return call


def test_check_says_missing_weights_will_be_downloaded(
    home: Path, loopback: LoopbackFiles, monkeypatch: pytest.MonkeyPatch, run_pretrained: RunPretrained
) -> None:
    loopback.serve(BNINCEPTION_FILE, b"weights")
    monkeypatch.setenv(WEIGHTS_URL_ENV, loopback.base)
    code, out, err = run_pretrained("--check")
    path = home / ".torch" / "models" / BNINCEPTION_FILE
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"note: model.pretrained: BN-Inception weights are not at {path}; they will be downloaded from "
        f"{loopback.url(BNINCEPTION_FILE)} when the run starts"
    )
    assert out.splitlines()[1].startswith("ok: ")
    assert [r.range for r in loopback.requests] == ["bytes=0-0"], "--check asks for one byte, no download"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"in place")
    code, out, _ = run_pretrained("--check")
    assert code == 0 and "note:" not in out


def test_check_and_run_offline_name_the_url_and_the_path(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_pretrained: RunPretrained
) -> None:
    monkeypatch.setenv(WEIGHTS_URL_ENV, NO_WEIGHTS_SERVER)
    path = home / ".torch" / "models" / BNINCEPTION_FILE
    url = f"{NO_WEIGHTS_SERVER}/{BNINCEPTION_FILE}"
    expected = (
        f"error: tiny: model.pretrained: BN-Inception weights not found at {path} and {url} cannot be "
        f"reached (connection refused); download {url} to {path} by hand, give model.weights, or set "
        "model.pretrained: false"
    )
    code, out, err = run_pretrained("--check")
    assert code == EXIT_USER_ERROR and err.splitlines() == [expected] and "ok:" not in out
    code, _, err = run_pretrained("--results", str(tmp_path / "results"), "--jobs", "1")
    assert code == EXIT_USER_ERROR and err.splitlines() == [expected]
    assert not (tmp_path / "results").exists()
