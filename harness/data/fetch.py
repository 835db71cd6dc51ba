"""Install the official benchmarks under a data root (download, verify, extract, check) and inspect them.

:func:`fetch_dataset` follows the table of :mod:`harness.data.sources`: each archive is downloaded
into ``<root>/.fetch/downloads/`` (resumable ``.part`` files, progress bar) or taken from a folder the
user filled by hand (``from_dir``), verified (MD5, or where none is published the number of files it
holds) before anything is extracted, extracted into ``<root>/.fetch/<folder>.partial/``, checked
with the loader's own reading and official counts, and only then renamed to ``<root>/<folder>``. So
the dataset folder is either absent or complete: a failure at any step (offline, wrong checksum, full
disk, an interrupted extraction) leaves nothing there, and what was downloaded stays under
``.fetch/`` for the next run to resume. :func:`inspect_dataset` says whether a dataset is present,
missing or wrong (and why), as ``python -m harness.data check`` prints it.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Never, TextIO

from harness.data.images import require_files
from harness.data.official import OfficialDataset, check_splits
from harness.data.sources import SOURCES, Archive, DatasetSource
from harness.download import CHUNK_BYTES, Checksum, DownloadFailed, download, file_digest, part_path
from harness.errors import DataError

if TYPE_CHECKING:
    from tqdm import tqdm

WORK_FOLDER = ".fetch"  # under the data root: downloads in progress, extraction in progress, locks
MIRROR_ENV = "HARNESS_DATA_MIRROR"
COMMAND = "python -m harness.data"
SEARCH_DEPTH = 3  # --from DIR: where to look for a file: DIR, DIR/*, DIR/*/*


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_dataset` found: ``state`` is ``present``, ``missing`` or ``wrong``."""

    name: str
    state: str
    detail: str

    def line(self) -> str:
        return f"{self.name}: {self.state}: {self.detail}"


def work_folder(root: Path) -> Path:
    return root / WORK_FOLDER


def verify_tree(spec: OfficialDataset, folder: Path) -> str:
    """Read ``folder`` as the loader does, with the official counts; a summary, or the loader's DataError."""
    lists = spec.read(folder)
    check_splits(spec, folder, lists, strict_counts=True)
    for images in lists.values():
        require_files(folder, images.files, title=spec.title, source=spec.source)
    total = sum(len(images.files) for images in lists.values())
    splits = ", ".join(f"{split} {len(images.files):,}" for split, images in lists.items())
    return f"{total:,} images: {splits}; official counts checked"


def inspect_dataset(source: DatasetSource, root: Path) -> Inspection:
    """Whether ``root`` holds the complete dataset of ``source``: present, missing, or wrong and why."""
    spec = source.dataset
    folder = root / spec.folder
    if not folder.exists():
        pending = [a.name for a in source.archives if part_path(downloads(root) / a.name).exists()]
        resume = f" (a download of {', '.join(pending)} is under way in {downloads(root)})" if pending else ""
        return Inspection(
            spec.name,
            "missing",
            f"no {folder}{resume}; run: {COMMAND} fetch {spec.name} --root {root}",
        )
    try:
        return Inspection(spec.name, "present", f"{folder} ({verify_tree(spec, folder)})")
    except DataError as err:
        return Inspection(spec.name, "wrong", str(err))


def downloads(root: Path) -> Path:
    return work_folder(root) / "downloads"


def archive_checksum(archive: Archive) -> Checksum | None:
    return Checksum("md5", archive.md5) if archive.md5 else None


def describe_files(source: DatasetSource) -> str:
    """``car_ims.tgz (md5 d5c8...) and cars_annos.mat (md5 b407...)``, for manual steps."""
    named = [
        f"{a.name} (md5 {a.md5})" if a.md5 else f"{a.name} (no published checksum)" for a in source.archives
    ]
    return " and ".join(named)


def by_hand_step(source: DatasetSource, root: Path) -> str:
    """One line: which files to get from where, and the command that installs them."""
    return (
        f"download {describe_files(source)} from {source.by_hand} into a folder DIR, then run: "
        f"{COMMAND} fetch {source.dataset.name} --root {root} --from DIR"
    )


def candidate_urls(archive: Archive, mirrors: Sequence[str]) -> list[str]:
    """Each mirror's ``<mirror>/<file name>`` first (in the order given), then the table's URLs."""
    return [f"{mirror.rstrip('/')}/{archive.name}" for mirror in mirrors] + list(archive.urls)


def prepare_root(root: Path) -> Path:
    """Create ``root`` (and its work folder) if needed and make sure files can be written there.

    A root that cannot be created or written raises the OSError (no permission, read-only, a file in
    the way), which the command line turns into one line.
    """
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=root):  # a writable root, not only an existing one
        pass
    work_folder(root).mkdir(exist_ok=True)
    return root


@contextmanager
def dataset_lock(root: Path, name: str, out: TextIO) -> Iterator[None]:
    """One fetch of a dataset into a root at a time (others wait, saying so)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(work_folder(root) / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{name}: another fetch into {root} is running; waiting for it", file=out, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def fetch_dataset(
    name: str,
    root: Path,
    *,
    sources: Mapping[str, DatasetSource] | None = None,
    mirrors: Sequence[str] = (),
    from_dir: Path | None = None,
    keep_archives: bool = False,
    out: TextIO | None = None,
) -> str:
    """Install dataset ``name`` under ``root`` (see the module docstring); returns the one-line outcome.

    ``mirrors``: base URLs tried before the table's URLs; ``from_dir``: a folder holding the files
    downloaded by hand (nothing is downloaded then). Every failure is one line (DataError or the
    OSError of a filesystem fault) and leaves ``<root>/<folder>`` as it was.
    """
    out = out if out is not None else sys.stderr
    source = (SOURCES if sources is None else sources)[name]
    spec = source.dataset
    root = prepare_root(root)
    target = root / spec.folder
    with dataset_lock(root, name, out):
        if target.exists():
            found = inspect_dataset(source, root)
            if found.state == "present":
                return f"{name}: already installed at {found.detail}; nothing to do"
            raise DataError(
                f"{target} exists but is not a complete copy ({found.detail}); move it away (or delete it) "
                f"and fetch again, or repair it by hand"
            )
        if from_dir is not None:
            files = [
                (archive, find_by_hand(source, archive, from_dir.expanduser(), out))
                for archive in source.archives
            ]
        else:
            files = [(archive, obtain(source, archive, root, mirrors, out)) for archive in source.archives]
        summary = install(source, files, root, out)
        if from_dir is None and not keep_archives:
            for _, path in files:
                path.unlink(missing_ok=True)
            remove_if_empty(downloads(root))
    return f"{name}: installed {target} ({summary})"


def obtain(source: DatasetSource, archive: Archive, root: Path, mirrors: Sequence[str], out: TextIO) -> Path:
    """The verified archive in the downloads folder: kept from an earlier run, or downloaded now."""
    spec = source.dataset
    target = downloads(root) / archive.name
    checksum = archive_checksum(archive)
    if target.is_file():
        if checksum is None or checksum.matches(file_digest(target, checksum.algorithm)):
            print(f"{spec.name}: {archive.name} already downloaded ({target})", file=out, flush=True)
            return target
        target.unlink()
    urls = candidate_urls(archive, mirrors)
    if not urls:
        raise DataError(f"{spec.title} cannot be downloaded automatically; {by_hand_step(source, root)}")
    try:
        return download(urls, target, checksum=checksum, label=archive.name, out=out)
    except DownloadFailed as err:
        raise DataError(f"{spec.title}: {err}; {by_hand_step(source, root)}") from None


def find_by_hand(source: DatasetSource, archive: Archive, folder: Path, out: TextIO) -> Path:
    """``archive`` in ``folder`` (or up to two folder levels below it), verified by its MD5 if it has one."""
    spec = source.dataset
    if not folder.is_dir():
        raise DataError(f"{spec.title}: --from {folder} is not a folder; give the folder holding the files")
    found = None
    for depth in range(SEARCH_DEPTH):
        matches = sorted(p for p in folder.glob("/".join(["*"] * depth + [archive.name])) if p.is_file())
        if matches:
            found = matches[0]
            break
    if found is None:
        raise DataError(
            f"{spec.title}: no {archive.name} in {folder} (nor in its subfolders two levels down); "
            f"get it from {source.by_hand}"
        )
    checksum = archive_checksum(archive)
    if checksum is not None:
        print(f"{spec.name}: verifying {found} ({checksum.algorithm})", file=out, flush=True)
        digest = file_digest(found, checksum.algorithm)
        if not checksum.matches(digest):
            raise DataError(
                f"{spec.title}: {found} has md5 {digest}, expected {archive.md5} (the official file); "
                f"download it again from {source.by_hand}"
            )
    return found


def install(source: DatasetSource, files: Sequence[tuple[Archive, Path]], root: Path, out: TextIO) -> str:
    """Extract ``files`` into a temporary folder, check it as the loader does, rename it into place."""
    spec = source.dataset
    stage = work_folder(root) / f"{spec.folder}.partial"
    if stage.exists():  # left by an extraction that was killed: start it again
        shutil.rmtree(stage)
    try:
        stage.mkdir()
        for archive, path in files:
            print(f"{spec.name}: extracting {path.name}", file=out, flush=True)
            unpack(spec, archive, path, stage, out)
        try:
            summary = verify_tree(spec, stage)
        except DataError as err:
            raise DataError(
                f"the extracted files fail the loader's check, nothing installed: {err}"
            ) from None
        stage.rename(root / spec.folder)
        return summary
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def unpack(spec: OfficialDataset, archive: Archive, path: Path, stage: Path, out: TextIO) -> None:
    """Put the content of ``path`` (the file ``archive`` describes) into the dataset folder ``stage``."""
    if archive.unpack == "file":
        dest = stage / archive.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return
    try:
        if archive.unpack == "tgz":
            untar(spec, archive, path, stage, out)
        else:
            unzip(spec, archive, path, stage, out)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile) as err:
        raise DataError(
            f"{spec.title}: {path} is a damaged {archive.unpack} archive ({' '.join(str(err).split())}); "
            "delete it and fetch again"
        ) from None


def require_count(spec: OfficialDataset, archive: Archive, path: Path, files: int) -> None:
    if files < archive.min_files:
        raise DataError(
            f"{spec.title}: {path} holds {files:,} files under {archive.strip or 'its top folder'}, expected "
            f"at least {archive.min_files:,} (an incomplete download?); delete it and fetch again"
        )


def member_path(spec: OfficialDataset, archive: Archive, name: str) -> str | None:
    """Where member ``name`` goes inside the dataset folder, or None for a member outside ``archive.strip``.

    DataError for a member that would land outside the folder (an absolute path or ``..``).
    """
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if parts and (parts[0] == "/" or ".." in parts):
        raise DataError(f"{spec.title}: {archive.name} holds the unsafe member path {name!r}; refused")
    if archive.strip:
        if not parts or parts[0] != archive.strip:
            return None
        parts = parts[1:]
    return "/".join(parts) or None


def progress(total: int | None, label: str, out: TextIO) -> tqdm[Never]:
    """A tqdm bar counting extracted files, shown on a terminal only."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="file", file=out, disable=not out.isatty(), dynamic_ncols=True)


def untar(spec: OfficialDataset, archive: Archive, path: Path, stage: Path, out: TextIO) -> None:
    """Extract the members under ``archive.strip`` (tar's ``data`` filter: no links out), count them."""
    files = 0
    with tarfile.open(path, "r:*") as tar, progress(None, archive.name, out) as bar:
        for member in tar:
            relative = member_path(spec, archive, member.name)
            if relative is None:
                continue
            member.name = relative
            tar.extract(member, stage, filter="data")
            if member.isfile():
                files += 1
                bar.update()
    require_count(spec, archive, path, files)


def unzip(spec: OfficialDataset, archive: Archive, path: Path, stage: Path, out: TextIO) -> None:
    """Count the files under ``archive.strip`` (an incomplete zip is refused first), extract them."""
    with zipfile.ZipFile(path) as zipped:
        members = [
            (info, relative)
            for info in zipped.infolist()
            if (relative := member_path(spec, archive, info.filename)) is not None
        ]
        files = sum(not info.is_dir() for info, _ in members)
        require_count(spec, archive, path, files)
        with progress(files, archive.name, out) as bar:
            for info, relative in members:
                dest = stage / relative
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, open(dest, "wb") as sink:  # reading checks the CRC-32
                    shutil.copyfileobj(source, sink, CHUNK_BYTES)
                bar.update()


def remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty, or already gone
        folder.rmdir()
