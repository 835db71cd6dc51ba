"""HTTP downloads that resume after a cut, show progress and verify a checksum before anything uses them.

:func:`download` tries a list of URLs in order (an override or mirror first, the canonical source,
then known mirrors). Bytes go to ``<target>.part`` beside the target; a cut connection is picked up
where it stopped with an HTTP ``Range`` request (in this run, and by a later run that finds the
``.part`` file), a server that ignores ``Range`` makes it start over. The finished file's hash is
checked and only then is it renamed to ``target``; a file that fails the check is deleted
and the next URL is tried. Network failures of every URL end in one :class:`DownloadFailed`
listing each URL and why; a local filesystem fault (full disk, no permission) is raised as the
OSError it is, naming the ``.part`` file, so :func:`harness.errors.cli_main` prints it in one line.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from harness.errors import UserError, one_line

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
RECONNECTS = 5  # attempts to resume one URL after its connection was cut, within one download
PART_SUFFIX = ".part"
USER_AGENT = "gpw-harness"


@dataclass(frozen=True)
class Checksum:
    """A hex digest (or, as in torch.hub's file names, its first digits) of one ``hashlib`` algorithm."""

    algorithm: str  # a hashlib name: "md5", "sha256"
    digest: str

    def matches(self, found: str) -> bool:
        return found.lower().startswith(self.digest.lower())

    def describe(self) -> str:
        return f"{self.algorithm} {self.digest}{'...' if len(self.digest) < self.full_length() else ''}"

    def full_length(self) -> int:
        return hashlib.new(self.algorithm).digest_size * 2


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of the file at ``path``."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def part_path(target: Path) -> Path:
    """Where the bytes of ``target`` collect while it downloads."""
    return target.with_name(target.name + PART_SUFFIX)


class DownloadFailed(UserError):
    """No URL gave the file: ``attempts`` holds (url, reason) for each one tried."""

    def __init__(self, target: Path, attempts: list[tuple[str, str]]) -> None:
        self.target = target
        self.attempts = attempts
        super().__init__(f"cannot download {target.name} ({self.reasons()})")

    def reasons(self) -> str:
        return "; ".join(f"{url}: {reason}" for url, reason in self.attempts) or "no URL to try"


class _Unreachable(Exception):
    """This URL gives nothing usable now (refused, unknown host, HTTP error, cut too often)."""


class _Cut(Exception):
    """The connection ended before the whole file came."""


def network_reason(err: BaseException) -> str:
    """A short phrase for a failed request: ``connection refused``, ``HTTP 404 Not Found``, ``timed out``."""
    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = err.reason if isinstance(err, URLError) else err
    if isinstance(reason, BaseException):
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    else:
        text = str(reason)
    return one_line(text).lower() or type(err).__name__


class PartFile:
    """The ``.part`` file a download appends to; every write fault names the file."""

    def __init__(self, path: Path, *, append: bool) -> None:
        self.path = path
        self.handle: BinaryIO = open(path, "ab" if append else "wb")  # noqa: SIM115 (closed by close())

    def append(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except OSError as err:
            if err.filename is None:
                err.filename = str(self.path)
            raise

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError as err:  # the last buffered bytes are written here
            if err.filename is None:
                err.filename = str(self.path)
            raise


def download(
    urls: Sequence[str],
    target: Path,
    *,
    checksum: Checksum | None,
    label: str | None = None,
    timeout: float = TIMEOUT_S,
    out: TextIO | None = None,
) -> Path:
    """Download ``target`` from the first of ``urls`` giving a file that matches ``checksum`` (None: any).

    Returns ``target``. Raises :class:`DownloadFailed` (one line, every URL and its reason) when none
    does; a ``.part`` file left by a cut connection stays for the next run to resume.
    """
    out = out if out is not None else sys.stderr
    part = part_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    attempts: list[tuple[str, str]] = []
    for url in urls:
        try:
            _fetch(url, part, label or target.name, timeout, out)
        except _Unreachable as err:
            attempts.append((url, str(err)))
            continue
        problem = _check(part, checksum)
        if problem:
            part.unlink(missing_ok=True)  # a resumed file may mix two versions: start afresh next time
            attempts.append((url, problem))
            continue
        os.replace(part, target)
        return target
    raise DownloadFailed(target, attempts)


def _check(path: Path, checksum: Checksum | None) -> str | None:
    """Why the downloaded file is not the expected one, or None."""
    if checksum is not None:
        found = file_digest(path, checksum.algorithm)
        if not checksum.matches(found):
            return f"wrong checksum ({checksum.algorithm} {found}, expected {checksum.describe()})"
    return None


def _fetch(url: str, part: Path, label: str, timeout: float, out: TextIO) -> None:
    """Bring the whole file at ``url`` into ``part``, resuming what is there; _Unreachable if it cannot."""
    cuts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            response = urlopen(Request(url, headers=headers), timeout=timeout)
        except HTTPError as err:
            if err.code == 416 and have:  # nothing after `have`: the file is whole, the checksum decides
                return
            raise _Unreachable(network_reason(err)) from None
        except (URLError, OSError, http.client.HTTPException, ValueError) as err:
            raise _Unreachable(network_reason(err)) from None
        with response:
            resumed = have if have and _resumes_at(response, have) else 0
            length = response.headers.get("Content-Length")
            total = resumed + int(length) if length and length.isdecimal() else None
            if not cuts:
                where = f", resuming at {resumed:,} bytes" if resumed else ""
                print(f"downloading {url}{where}", file=out, flush=True)
            try:
                _copy(response, PartFile(part, append=bool(resumed)), resumed, total, label, out)
                return
            except _Cut as err:
                cuts += 1
                if cuts > RECONNECTS:
                    times = "once" if cuts == 1 else f"{cuts} times"
                    raise _Unreachable(f"connection cut {times}, last {err}") from None
                print(f"{label}: connection cut ({err}); resuming", file=out, flush=True)


def _resumes_at(response: http.client.HTTPResponse, have: int) -> bool:
    """Whether the server answered the Range request with the bytes from ``have`` on (206 Partial Content)."""
    content_range = response.headers.get("Content-Range", "")
    return response.status == 206 and content_range.startswith(f"bytes {have}-")


def _copy(
    response: http.client.HTTPResponse, part: PartFile, start: int, total: int | None, label: str, out: TextIO
) -> None:
    """Append the response body to ``part`` with a progress bar; _Cut when it stops short of ``total``."""
    from tqdm import tqdm

    done = start
    bar = tqdm(
        total=total,
        initial=start,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=out,
        disable=not out.isatty(),
        dynamic_ncols=True,
    )
    try:
        while True:
            try:
                data = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
                raise _Cut(f"at byte {done:,}: {network_reason(err)}") from None
            if not data:
                break
            part.append(data)
            done += len(data)
            bar.update(len(data))
    finally:
        bar.close()
        part.close()
    if total is not None and done < total:
        raise _Cut(f"at byte {done:,} of {total:,}")
