"""harness.download against the loopback server: resuming, starting over, a whole file, the reasons."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from loopback import LoopbackFiles, closed_port_url

from harness.download import Checksum, DownloadFailed, download, part_path

DATA = bytes(range(256)) * 400


def md5(data: bytes) -> Checksum:
    return Checksum("md5", hashlib.md5(data).hexdigest())


def test_a_server_that_ignores_ranges_makes_the_download_start_over(
    tmp_path: Path, loopback: LoopbackFiles
) -> None:
    loopback.honour_ranges = False
    target = tmp_path / "file.bin"
    part_path(target).write_bytes(b"stale bytes of another file")
    assert download([loopback.serve("file.bin", DATA)], target, checksum=md5(DATA)) == target
    assert target.read_bytes() == DATA and not part_path(target).exists()
    assert [r.range for r in loopback.requests] == ["bytes=27-"]


def test_a_part_file_that_is_already_whole_is_verified_without_a_body(
    tmp_path: Path, loopback: LoopbackFiles
) -> None:
    target = tmp_path / "file.bin"
    part_path(target).write_bytes(DATA)
    download([loopback.serve("file.bin", DATA)], target, checksum=md5(DATA))  # the server answers 416
    assert target.read_bytes() == DATA
    assert [r.range for r in loopback.requests] == [f"bytes={len(DATA)}-"]


def test_every_url_and_its_reason_are_named_and_a_cut_part_is_kept(
    tmp_path: Path, loopback: LoopbackFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("harness.download.RECONNECTS", 0)
    url = loopback.serve("file.bin", DATA)
    loopback.cut_after["/file.bin"] = 1000
    target = tmp_path / "file.bin"
    urls = [closed_port_url("file.bin"), loopback.url("missing.bin"), url]
    with pytest.raises(DownloadFailed) as err:
        download(urls, target, checksum=md5(DATA))
    assert str(err.value) == (
        f"cannot download file.bin ({urls[0]}: connection refused; {urls[1]}: HTTP 404 Not Found; "
        f"{url}: connection cut once, last at byte 1,000 of {len(DATA):,})"
    )
    assert part_path(target).read_bytes() == DATA[:1000], "kept for the next run to resume"
    assert not target.exists()
