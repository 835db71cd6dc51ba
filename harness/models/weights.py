"""The standard ImageNet weights files of the backbones: where the harness keeps them, where they come from.

With ``model.pretrained: true`` and no ``model.weights``, a backbone reads its standard file from
the cache it always read (:data:`STANDARD_WEIGHTS`); :func:`ensure_weights` downloads a missing
file there first (resumable, progress bar, one process at a time), verifying the SHA-256 prefix its
name carries as torch.hub does (``resnet50-0676ba61.pth``: the digest starts ``0676ba61``), and
reuses it afterwards. ``$HARNESS_WEIGHTS_URL`` is a base URL used instead of the official ones (a
group's internal mirror; the tests' loopback server). :func:`missing_weights` is what
``harness.run --check`` reports: a missing file that will be downloaded, or that cannot be, with
the URL and the path to put it by hand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.request import Request, urlopen

from harness.download import USER_AGENT, Checksum, DownloadFailed, download, network_reason
from harness.errors import DataError, filesystem_message

WEIGHTS_URL_ENV = "HARNESS_WEIGHTS_URL"
HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>
PROBE_TIMEOUT_S = 10.0

BNINCEPTION_FILE = "bn_inception-52deb4733.pth"
RESNET50_FILES = ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")  # IMAGENET1K_V1 (downloaded), V2


def default_bninception_weights() -> Path:
    """Where the official code (and pretrainedmodels) keep BN-Inception's ImageNet weights."""
    return Path.home() / ".torch" / "models" / BNINCEPTION_FILE


def torch_hub_checkpoints() -> Path:
    """torch's cache folder for torchvision weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class StandardWeights:
    """One backbone's standard weights file: its name, official URL and cache folder."""

    title: str
    file: str
    url: str
    folder: Callable[[], Path]
    also: tuple[str, ...] = ()  # other files in the folder that are used as they are when present

    def path(self) -> Path:
        """Where the standard file is (or will be downloaded to)."""
        return self.folder() / self.file

    def local(self) -> Path | None:
        """The first of the accepted files present in the cache folder, or None."""
        for name in (self.file, *self.also):
            if (self.folder() / name).is_file():
                return self.folder() / name
        return None

    def source_url(self) -> str:
        """The official URL, or ``$HARNESS_WEIGHTS_URL/<file>`` when that is set."""
        base = os.environ.get(WEIGHTS_URL_ENV, "")
        return f"{base.rstrip('/')}/{self.file}" if base else self.url

    def checksum(self) -> Checksum:
        """The SHA-256 prefix the file name carries."""
        found = HASH_IN_NAME.search(self.file)
        if found is None:
            raise ValueError(f"{self.file} carries no hash in its name")
        return Checksum("sha256", found.group(1))

    def by_hand(self) -> str:
        """What to do when the file cannot be downloaded: one clause."""
        return (
            f"download {self.source_url()} to {self.path()} by hand, give model.weights, "
            "or set model.pretrained: false"
        )


STANDARD_WEIGHTS: dict[str, StandardWeights] = {
    "bninception": StandardWeights(
        "BN-Inception",
        BNINCEPTION_FILE,
        "http://data.lip6.fr/cadene/pretrainedmodels/" + BNINCEPTION_FILE,  # pretrainedmodels' own URL
        lambda: default_bninception_weights().parent,
    ),
    "resnet50": StandardWeights(
        "ResNet-50",
        RESNET50_FILES[0],
        "https://download.pytorch.org/models/" + RESNET50_FILES[0],  # torchvision's IMAGENET1K_V1
        torch_hub_checkpoints,
        also=RESNET50_FILES[1:],
    ),
}


def ensure_weights(weights: StandardWeights) -> Path:
    """The local standard file, downloaded and verified first if missing; one-line DataError if it cannot."""
    found = weights.local()
    if found is not None:
        return found
    from filelock import FileLock

    path = weights.path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.parent / f".{weights.file}.lock")):  # parallel cells download it once
            found = weights.local()
            if found is not None:
                return found
            return download([weights.source_url()], path, checksum=weights.checksum(), label=weights.file)
    except DownloadFailed as err:
        raise DataError(
            f"{weights.title} pretrained weights not found at {path} and not downloaded "
            f"({err.reasons()}); {weights.by_hand()}"
        ) from None
    except OSError as err:
        fault = filesystem_message(err, {err.errno or 0: weights.by_hand()})
        if fault is None:
            raise
        raise DataError(f"{weights.title} pretrained weights cannot be downloaded: {fault}") from None


def probe(url: str) -> str | None:
    """None when ``url`` answers a one-byte range request, else why not (``connection refused``)."""
    try:
        request = Request(url, headers={"User-Agent": USER_AGENT, "Range": "bytes=0-0"})
        with urlopen(request, timeout=PROBE_TIMEOUT_S):
            return None
    except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors
        return network_reason(err)


@dataclass(frozen=True)
class MissingWeights:
    """A standard weights file missing from its cache; ``unreachable``: why it cannot be downloaded now."""

    weights: StandardWeights
    unreachable: str | None

    def line(self) -> str:
        w = self.weights
        if self.unreachable is None:
            return (
                f"model.pretrained: {w.title} weights are not at {w.path()}; they will be downloaded from "
                f"{w.source_url()} when the run starts"
            )
        return (
            f"model.pretrained: {w.title} weights not found at {w.path()} and {w.source_url()} cannot be "
            f"reached ({self.unreachable}); {w.by_hand()}"
        )


def missing_weights(backbone: str) -> MissingWeights | None:
    """The standard file ``backbone`` would load, when missing (None when present or there is none)."""
    weights = STANDARD_WEIGHTS.get(backbone)
    if weights is None or weights.local() is not None:
        return None
    return MissingWeights(weights, probe(weights.source_url()))
