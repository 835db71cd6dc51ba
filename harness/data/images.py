"""A dataset of image files on disk with integer labels; unreadable files fail as one-line DataErrors.

:func:`require_files` checks a list of image files up front (each is a non-empty regular file) and
:meth:`ImageDataset.verify` with ``decode`` decodes each one, so a missing or damaged image stops
``--check`` instead of a run.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.data.transforms import Transform
from harness.errors import DataError

# PIL modes of 16-bit greyscale pixels (native, little- and big-endian).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(DataError):
    """An image file cannot be decoded. Stays one line when a DataLoader worker re-raises it.

    torch re-raises a worker's exception as ``type(err)(text)`` where the text holds the worker's whole
    traceback; this keeps only the original message (the traceback's last line).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1]
        super().__init__(message)
        self.reason = reason or "unreadable"  # why, in a few words


class ImageDataset(torch.utils.data.Dataset):
    """``ds[i] -> (transform(image i), label i)``.

    ``files`` are paths relative to ``root``; ``labels`` are 0..C-1 within the split; ``class_ids`` the
    dataset's original class id of each image (same order). ``title`` and ``source`` name the dataset
    and where to get it, for error messages.
    """

    def __init__(
        self,
        root: Path,
        files: Sequence[str],
        labels: np.ndarray,
        class_ids: np.ndarray,
        transform: Transform,
        *,
        title: str,
        source: str,
    ) -> None:
        if not len(files) == len(labels) == len(class_ids):
            raise ValueError("files, labels and class_ids must have the same length")
        self.root = Path(root)
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_ids = np.asarray(class_ids, dtype=np.int64)
        self.transform = transform
        self.title = title
        self.source = source

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        return self.transform(image), int(self.labels[index])

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def load(self, index: int) -> Image.Image:
        """Decode image ``index`` as RGB; DataError naming the file if it is missing,
        unreadable or truncated."""
        path = self.path(index)
        try:
            with Image.open(path) as image:
                return self._to_rgb(image, path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise ImageReadError(
                f"{self.title}: cannot read image {path} ({reason}); the file is missing or damaged: "
                f"restore it from {self.source}",
                reason,
            ) from None

    def _to_rgb(self, image: Image.Image, path: Path) -> Image.Image:
        """``image`` as 8-bit RGB; 16-bit greyscale is scaled (65535 -> 255), other deep modes are refused.

        PIL's own ``convert("RGB")`` clips 16-bit values at 255, turning such an image almost pure white.
        """
        if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
            pixels = np.asarray(image).astype(np.int64)
            if pixels.size == 0 or 0 <= pixels.min() <= pixels.max() <= 65535:  # else refused below
                return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
        if image.mode in ("I", "F") or image.mode.startswith("I;"):
            raise ImageReadError(
                f"{self.title}: image {path} has {image.mode} pixels (32-bit integer or float), "
                "which cannot be read as 8-bit RGB faithfully; convert it to an 8-bit RGB or greyscale file",
                f"{image.mode} pixels, not 8-bit",
            )
        return image.convert("RGB")

    def verify(self, *, decode: bool = False, progress: bool = False) -> None:
        """:func:`require_files` on this dataset's images; ``decode``: also decode each one (slow), behind a
        tqdm bar on a terminal with ``progress``. The bad files are one DataError, as for a missing one."""
        require_files(self.root, self.files, title=self.title, source=self.source)
        if not decode:
            return
        from tqdm import tqdm

        bad = []
        bar = tqdm(range(len(self.files)), desc=f"decoding {self.title}", disable=None if progress else True)
        for index in bar:  # disable=None: a bar only on a terminal
            try:
                self.load(index)
            except ImageReadError as err:
                bad.append((self.files[index], err.reason))
        _refuse(bad, "unreadable", self.root, len(self.files), title=self.title, source=self.source)


SHOWN_FILES = 3
"""How many of the bad files a :func:`require_files` error names (the count covers every one)."""


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image file (missing, empty, not a regular file), or None; never opens it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return err.strerror or type(err).__name__
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    return "empty" if info.st_size == 0 else None


def require_files(root: Path, files: Sequence[str], *, title: str, source: str) -> None:
    """DataError (one line: how many, the first few with why, where to get them) unless every ``root / file``
    is a non-empty regular file (one ``stat`` each, nothing opened)."""
    bad = [(name, why) for name in files if (why := file_problem(root / name))]
    _refuse(bad, "missing or empty", root, len(files), title=title, source=source)


def _refuse(
    bad: list[tuple[str, str]], what: str, root: Path, total: int, *, title: str, source: str
) -> None:
    """The one DataError for ``bad`` (file, why) pairs, when there are any."""
    if bad:
        shown = ", ".join(f"{name} ({why})" for name, why in bad[:SHOWN_FILES])
        more = f" and {len(bad) - SHOWN_FILES:,} more" if len(bad) > SHOWN_FILES else ""
        raise DataError(
            f"{title}: {len(bad):,} of {total:,} image files are {what} under {root}: {shown}{more}; "
            f"restore them from {source}"
        )
