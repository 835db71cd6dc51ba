"""``python -m harness.data fetch / check`` against a loopback server serving fixture archives in each
official format."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from data_trees import FIXTURE_COUNTS, TREES
from loopback import LoopbackFiles, closed_port_url

import harness.data.fetch as fetch_module
import harness.download
from harness.data import build_splits
from harness.data.__main__ import main
from harness.data.sources import SOURCES, Archive, DatasetSource
from harness.errors import EXIT_USER_ERROR, cli_main


def tgz(folder: Path, arcname: str, extra: dict[str, bytes] | None = None) -> bytes:
    """``folder`` as a gzipped tar whose top folder is ``arcname`` (plus loose ``extra`` files at the top)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zipped(folder: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, f"{arcname}/{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def official_archives(name: str, tmp_path: Path) -> dict[str, bytes]:
    """The fixture tree of ``name`` packed as its authors publish it: archive file name -> bytes."""
    folder = TREES[name](tmp_path / "tree")
    if name == "cub":  # the real archive also holds attributes.txt beside its top folder
        return {"CUB_200_2011.tgz": tgz(folder, "CUB_200_2011", {"attributes.txt": b"1 has_bill_shape\n"})}
    if name == "cars":
        return {
            "car_ims.tgz": tgz(folder / "car_ims", "car_ims"),
            "cars_annos.mat": (folder / "cars_annos.mat").read_bytes(),
        }
    if name == "sop":
        return {"Stanford_Online_Products.zip": zipped(folder, "Stanford_Online_Products")}
    return {
        "img.zip": zipped(folder / "img", "img"),
        "list_eval_partition.txt": (folder / "Eval" / "list_eval_partition.txt").read_bytes(),
    }


def fixture_source(
    name: str, tmp_path: Path, server: LoopbackFiles, **urls: tuple[str, ...]
) -> DatasetSource:
    """The production entry of ``name`` with the fixture's counts, MD5s and loopback URLs.

    ``urls`` maps an archive (its name with '.' as '_') to its URL list; the default serves it from
    ``server`` at ``/<name>``. In-Shop keeps no MD5, as in production, and needs the fixture's image count.
    """
    production = SOURCES[name]
    images, classes = FIXTURE_COUNTS[name]
    archives = []
    for archive, (file_name, data) in zip(
        production.archives, official_archives(name, tmp_path).items(), strict=True
    ):
        assert archive.name == file_name
        served = urls.get(file_name.replace(".", "_"), (server.serve(file_name, data),))
        server.files.setdefault("/" + file_name, data)
        archives.append(
            replace(
                archive,
                urls=served,
                md5=hashlib.md5(data).hexdigest() if archive.md5 else None,
                min_files=7 * 3 if archive.min_files else 0,
            )
        )
    return replace(
        production,
        dataset=replace(production.dataset, images=images, classes=classes),
        archives=tuple(archives),
    )


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_nothing_installed(root: Path, name: str) -> None:
    assert not (root / SOURCES[name].dataset.folder).exists()
    assert not list((root / ".fetch").glob("*.partial"))


@dataclass
class FetchSetup:
    """The loopback server, the data root, and the fetch/check command line run in this process."""

    tmp_path: Path
    server: LoopbackFiles
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    @property
    def root(self) -> Path:
        return self.tmp_path / "data"

    def source(self, name: str, **urls: tuple[str, ...]) -> DatasetSource:
        return fixture_source(name, self.tmp_path / f"{name}-archives", self.server, **urls)

    def use(self, source: DatasetSource) -> DatasetSource:
        """Make ``source`` the table's entry for its dataset (for this test)."""
        self.monkeypatch.setitem(SOURCES, source.dataset.name, source)
        return source

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        """``python -m harness.data ARGV``: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            cli_main(main, argv)
        captured = self.capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    def fail(self, argv: list[str]) -> str:
        """Run ``argv``, which must fail with exit code 2 and one ``error:`` line (returned), no traceback."""
        code, _, err = self.run(argv)
        lines = error_lines(err)
        assert code == EXIT_USER_ERROR and len(lines) == 1 and "Traceback" not in err, err
        return lines[0]


@pytest.fixture()
def fx(
    tmp_path: Path,
    loopback: LoopbackFiles,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> FetchSetup:
    return FetchSetup(tmp_path, loopback, monkeypatch, capsys)


@pytest.mark.parametrize("name", list(TREES))
def test_fetch_downloads_verifies_installs_and_the_loader_reads_it(name: str, fx: FetchSetup) -> None:
    source = fx.use(fx.source(name))
    root = fx.root
    code, out, err = fx.run(["fetch", name, "--root", str(root)])
    assert code == 0, err
    folder = root / source.dataset.folder
    assert out == f"{name}: installed {folder} (21 images: " + out.split("(21 images: ")[1]
    assert "official counts checked" in out
    splits = build_splits(name, root, image_size=16, strict_counts=False)
    assert len(splits.train) == 12
    assert not (root / ".fetch" / "downloads").exists(), "the archives are deleted once installed"
    if name == "cub":
        assert not (folder / "attributes.txt").exists() and not (root / "attributes.txt").exists()
    code, out, _ = fx.run(["check", name, "--root", str(root)])
    assert code == 0 and out.startswith(f"{name}: present: {folder} (21 images")


def test_a_second_fetch_does_nothing_and_says_so_in_one_line(fx: FetchSetup) -> None:
    fx.use(fx.source("cub"))
    root = fx.root
    assert fx.run(["fetch", "cub", "--root", str(root)])[0] == 0
    asked = len(fx.server.requests)
    code, out, err = fx.run(["fetch", "cub", "--root", str(root)])
    assert code == 0 and err == ""
    assert out.count("\n") == 1 and out.startswith(f"cub: already installed at {root / 'CUB_200_2011'}")
    assert out.rstrip().endswith("nothing to do")
    assert len(fx.server.requests) == asked, "nothing is downloaded again"


def test_a_cut_connection_resumes_with_a_range_request(fx: FetchSetup) -> None:
    fx.use(fx.source("sop"))
    size = len(fx.server.files["/Stanford_Online_Products.zip"])
    fx.server.cut_after["/Stanford_Online_Products.zip"] = size // 3
    code, out, err = fx.run(["fetch", "sop", "--root", str(fx.root)])
    assert code == 0, err
    assert [r.range for r in fx.server.asked("Stanford_Online_Products.zip")] == [None, f"bytes={size // 3}-"]
    assert "connection cut" in err and "resuming" in err
    assert "installed" in out


def test_a_part_file_left_by_an_earlier_run_is_resumed(fx: FetchSetup) -> None:
    fx.use(fx.source("cub"))
    data = fx.server.files["/CUB_200_2011.tgz"]
    part = fx.root / ".fetch" / "downloads" / "CUB_200_2011.tgz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    code, _, err = fx.run(["fetch", "cub", "--root", str(fx.root)])
    assert code == 0, err
    assert [r.range for r in fx.server.asked("CUB_200_2011.tgz")] == ["bytes=1000-"]
    assert "resuming at 1,000 bytes" in err and not part.exists()


def test_a_wrong_checksum_extracts_nothing(fx: FetchSetup) -> None:
    source = fx.source("cub")
    fx.use(replace(source, archives=(replace(source.archives[0], md5="0" * 32),)))
    root = fx.root
    line = fx.fail(["fetch", "cub", "--root", str(root)])
    assert "wrong checksum (md5 " in line and "expected md5 " + "0" * 32 in line
    assert "--from DIR" in line  # the manual way out
    assert_nothing_installed(root, "cub")
    assert not list((root / ".fetch" / "downloads").iterdir()), "the bad file is not kept"


def test_mirrors_are_tried_in_order_and_a_dead_one_falls_through(fx: FetchSetup) -> None:
    dead = (closed_port_url("CUB_200_2011.tgz"), fx.server.url("gone/CUB_200_2011.tgz"))
    source = fx.source("cub")
    fx.use(replace(source, archives=(replace(source.archives[0], urls=(*dead, *source.archives[0].urls)),)))
    code, _, err = fx.run(["fetch", "cub", "--root", str(fx.root)])
    assert code == 0, err
    assert [r.path for r in fx.server.requests] == ["/gone/CUB_200_2011.tgz", "/CUB_200_2011.tgz"]


def test_the_mirror_option_is_tried_first(fx: FetchSetup) -> None:
    source = fx.source("cars")
    for name, data in list(fx.server.files.items()):
        fx.server.serve("internal" + name, data)
    fx.use(source)
    argv = ["fetch", "cars", "--root", str(fx.root), "--mirror", fx.server.url("empty")]
    code, _, err = fx.run([*argv, "--mirror", fx.server.url("internal/")])
    assert code == 0, err
    paths = [r.path for r in fx.server.requests]
    assert paths == [
        "/empty/car_ims.tgz",
        "/internal/car_ims.tgz",
        "/empty/cars_annos.mat",
        "/internal/cars_annos.mat",
    ]


def test_the_mirror_environment_variable(fx: FetchSetup) -> None:
    source = fx.source("sop")
    fx.use(replace(source, archives=(replace(source.archives[0], urls=(closed_port_url("x"),)),)))
    fx.monkeypatch.setenv(fetch_module.MIRROR_ENV, fx.server.base)
    code, _, err = fx.run(["fetch", "sop", "--root", str(fx.root)])
    assert code == 0, err


def test_offline_is_one_line_naming_each_url_and_the_manual_step(fx: FetchSetup) -> None:
    source = fx.source("cars", car_ims_tgz=(closed_port_url("car_ims.tgz"),))
    fx.use(source)
    root = fx.root
    line = fx.fail(["fetch", "cars", "--root", str(root)])
    assert "Cars-196: cannot download car_ims.tgz (http://127.0.0.1:" in line and "connection refused" in line
    assert f"then run: python -m harness.data fetch cars --root {root} --from DIR" in line
    assert "car_ims.tgz (md5 " in line and "cars_annos.mat (md5 " in line
    assert_nothing_installed(root, "cars")


def test_inshop_has_a_manual_step_and_installs_from_a_folder(fx: FetchSetup, tmp_path: Path) -> None:
    source = fx.source("inshop", img_zip=(), list_eval_partition_txt=())
    fx.use(source)
    root = fx.root
    line = fx.fail(["fetch", "inshop", "--root", str(root)])
    assert "In-Shop Clothes Retrieval cannot be downloaded automatically" in line
    assert "img.zip (no published checksum) and list_eval_partition.txt" in line
    assert "drive.google.com" in line and "--from DIR" in line
    by_hand = tmp_path / "Downloads" / "In-shop Clothes Retrieval Benchmark"  # the Drive folder's layout
    for name, data in official_archives("inshop", tmp_path / "again").items():
        where = by_hand / ("Img" if name == "img.zip" else "Eval") / name
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(data)
    code, out, err = fx.run(["fetch", "inshop", "--root", str(root), "--from", str(tmp_path / "Downloads")])
    assert code == 0, err
    assert out.startswith(f"inshop: installed {root / 'InShop'} (21 images: train 12, query 3, gallery 6")
    assert (by_hand / "Img" / "img.zip").exists(), "the user's files are left where they are"
    assert fx.server.requests == []


def test_from_a_folder_the_checksum_is_verified(fx: FetchSetup, tmp_path: Path) -> None:
    fx.use(fx.source("cub"))
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "CUB_200_2011.tgz").write_bytes(b"something else")
    line = fx.fail(["fetch", "cub", "--root", str(fx.root), "--from", str(manual)])
    assert f"{manual / 'CUB_200_2011.tgz'} has md5 {hashlib.md5(b'something else').hexdigest()}" in line
    (manual / "CUB_200_2011.tgz").unlink()
    code, _, err = fx.run(["fetch", "cub", "--root", str(fx.root), "--from", str(manual)])
    assert code == EXIT_USER_ERROR and f"no CUB_200_2011.tgz in {manual}" in err
    assert_nothing_installed(fx.root, "cub")


def test_a_full_disk_while_downloading_is_one_line_and_resumable(fx: FetchSetup) -> None:
    fx.use(fx.source("cub"))

    class FullDisk(io.BytesIO):
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    fx.monkeypatch.setattr(harness.download, "open", lambda path, mode: FullDisk(), raising=False)
    root = fx.root
    line = fx.fail(["fetch", "cub", "--root", str(root)])
    part = root / ".fetch" / "downloads" / "CUB_200_2011.tgz.part"
    assert line.startswith(f"error: cub: {part}: No space left on device (ENOSPC); free some space")
    assert "resumed" in line
    assert_nothing_installed(root, "cub")


def test_a_full_disk_while_extracting_leaves_nothing_in_the_dataset_folder(fx: FetchSetup) -> None:
    fx.use(fx.source("sop"))
    real_copy = fetch_module.shutil.copyfileobj
    calls = []

    def fill_up(source, sink, length=0) -> None:
        calls.append(1)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), sink.name)
        real_copy(source, sink, length)

    fx.monkeypatch.setattr(fetch_module.shutil, "copyfileobj", fill_up)
    root = fx.root
    code, _, err = fx.run(["fetch", "sop", "--root", str(root)])
    assert code == EXIT_USER_ERROR and "(ENOSPC); free some space" in err
    assert_nothing_installed(root, "sop")
    assert (root / ".fetch" / "downloads" / "Stanford_Online_Products.zip").is_file(), "kept for the re-run"
    fx.monkeypatch.setattr(fetch_module.shutil, "copyfileobj", real_copy)
    asked = len(fx.server.requests)
    code, _, err = fx.run(["fetch", "sop", "--root", str(root)])
    assert code == 0 and "already downloaded" in err and len(fx.server.requests) == asked


def test_an_interrupted_extraction_leaves_nothing_and_the_next_fetch_starts_it_again(fx: FetchSetup) -> None:
    fx.use(fx.source("cub"))
    real_extract = tarfile.TarFile.extract
    extracted = []

    def interrupt(self, member, *args, **kwargs) -> None:
        if len(extracted) == 5:
            raise KeyboardInterrupt
        extracted.append(member.name)
        real_extract(self, member, *args, **kwargs)

    fx.monkeypatch.setattr(tarfile.TarFile, "extract", interrupt)
    root = fx.root
    code, _, err = fx.run(["fetch", "cub", "--root", str(root)])
    assert code == 130 and "interrupted" in err
    assert_nothing_installed(root, "cub")
    fx.monkeypatch.setattr(tarfile.TarFile, "extract", real_extract)
    (root / ".fetch" / "CUB_200_2011.partial" / "images").mkdir(parents=True)  # as a kill -9 would leave it
    assert fx.run(["check", "--root", str(root)])[1].startswith(f"cub: missing: no {root / 'CUB_200_2011'}")
    code, out, _ = fx.run(["fetch", "cub", "--root", str(root)])
    assert code == 0 and "installed" in out
    assert not (root / ".fetch" / "CUB_200_2011.partial").exists()


def test_files_that_fail_the_loader_check_are_not_installed(fx: FetchSetup) -> None:
    source = fx.source("cars")
    official_images = replace(source.dataset, images=SOURCES["cars"].dataset.images)
    fx.use(replace(source, dataset=official_images))
    root = fx.root
    line = fx.fail(["fetch", "cars", "--root", str(root)])
    assert "the extracted files fail the loader's check, nothing installed" in line
    assert "has 12 images, expected 8,054" in line
    assert_nothing_installed(root, "cars")


def test_an_incomplete_inshop_zip_is_refused_before_extraction(fx: FetchSetup) -> None:
    source = fx.source("inshop")
    fx.use(replace(source, archives=(replace(source.archives[0], min_files=52712), source.archives[1])))
    code, _, err = fx.run(["fetch", "inshop", "--root", str(fx.root)])
    assert code == EXIT_USER_ERROR
    assert "img.zip holds 21 files under its top folder, expected at least 52,712" in error_lines(err)[0]
    assert_nothing_installed(fx.root, "inshop")


def test_a_damaged_archive_is_one_line(fx: FetchSetup) -> None:
    source = fx.source("inshop")
    fx.server.files["/img.zip"] = b"PK\x03\x04 not really a zip"
    fx.use(source)
    code, _, err = fx.run(["fetch", "inshop", "--root", str(fx.root)])
    assert code == EXIT_USER_ERROR
    assert "img.zip is a damaged zip archive" in error_lines(err)[0]


def test_an_unwritable_root_is_one_line(fx: FetchSetup, tmp_path: Path) -> None:
    fx.use(fx.source("cub"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = fx.fail(["fetch", "cub", "--root", str(blocker / "data")])
    assert "(ENOTDIR)" in line and "choose another --root" in line
    assert fx.server.requests == []


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders, so this cannot fail as root"
)
def test_a_read_only_root_is_one_line(fx: FetchSetup) -> None:
    fx.use(fx.source("cub"))
    root = fx.root
    root.mkdir()
    root.chmod(0o555)
    try:
        code, _, err = fx.run(["fetch", "cub", "--root", str(root)])
    finally:
        root.chmod(0o755)
    assert code == EXIT_USER_ERROR and "(EACCES); check the permissions of" in error_lines(err)[0]


def test_an_existing_incomplete_folder_is_never_overwritten(fx: FetchSetup) -> None:
    fx.use(fx.source("cub"))
    root = fx.root
    (root / "CUB_200_2011").mkdir(parents=True)
    (root / "CUB_200_2011" / "notes.txt").write_text("mine")
    code, _, err = fx.run(["fetch", "cub", "--root", str(root)])
    assert code == EXIT_USER_ERROR
    assert f"{root / 'CUB_200_2011'} exists but is not a complete copy" in error_lines(err)[0]
    assert (root / "CUB_200_2011" / "notes.txt").read_text() == "mine" and fx.server.requests == []


def test_check_says_present_missing_and_wrong(fx: FetchSetup, tmp_path: Path) -> None:
    root = fx.root
    for name in ("cub", "sop", "inshop"):
        fx.use(fx.source(name))
    fx.use(replace(SOURCES["cars"], dataset=fx.source("cars").dataset))
    for name in ("cub", "sop", "inshop"):
        TREES[name](root)
    code, out, _ = fx.run(["check", "--root", str(root)])
    lines = out.splitlines()
    assert code == 0, "a missing dataset that was not named is no failure"
    assert [line.split(":")[:2] for line in lines] == [
        ["cub", " present"],
        ["cars", " missing"],
        ["sop", " present"],
        ["inshop", " present"],
    ]
    assert f"no {root / 'cars196'}; run: python -m harness.data fetch cars --root {root}" in lines[1]
    assert fx.run(["check", "cars", "--root", str(root)])[0] == EXIT_USER_ERROR, "named and missing"
    (root / "Stanford_Online_Products" / "bicycle_final" / "2_1.JPG").unlink()
    (root / "InShop" / "Eval" / "list_eval_partition.txt").write_text(
        "3\nimage_name item_id evaluation_status\n"
    )
    code, out, _ = fx.run(["check", "--root", str(root)])
    assert code == EXIT_USER_ERROR
    sop, inshop = out.splitlines()[2:]
    assert sop.startswith("sop: wrong: Stanford Online Products: 1 of 12 image files are missing")
    assert "bicycle_final/2_1.JPG" in sop
    assert inshop.startswith("inshop: wrong: In-Shop Clothes Retrieval:") and "declares '3' rows" in inshop


def test_check_with_the_official_counts_names_the_count(fx: FetchSetup, tmp_path: Path) -> None:
    TREES["cub"](tmp_path)
    code, out, _ = fx.run(["check", "cub", "--root", str(tmp_path)])
    assert code == EXIT_USER_ERROR
    assert out.startswith("cub: wrong: CUB-200-2011: the train split read from") and "expected 5,864" in out


def test_unknown_names_and_a_missing_root_are_one_line(fx: FetchSetup, tmp_path: Path) -> None:
    code, _, err = fx.run(["fetch", "cub200", "--root", str(tmp_path)])
    assert code == EXIT_USER_ERROR and error_lines(err) == [
        "error: unknown dataset 'cub200'; did you mean 'cub'?"
    ]
    fx.monkeypatch.delenv("HARNESS_DATA", raising=False)
    code, _, err = fx.run(["check"])
    assert code == EXIT_USER_ERROR and "give --root DIR or set HARNESS_DATA=DIR" in err
    code, _, err = fx.run(["check", "--root", str(tmp_path / "nowhere")])
    assert code == EXIT_USER_ERROR and "does not exist" in err


def test_the_production_table_holds_the_published_checksums_and_the_loader_folders() -> None:
    md5 = {a.name: a.md5 for source in SOURCES.values() for a in source.archives}
    assert md5 == {
        "CUB_200_2011.tgz": "97eceeb196236b17998738112f37df78",
        "car_ims.tgz": "d5c8f0aa497503f355e17dc7886c3f14",
        "cars_annos.mat": "b407c6086d669747186bd1d764ff9dbc",
        "Stanford_Online_Products.zip": "7f73d41a2f44250d4779881525aea32e",
        "img.zip": None,
        "list_eval_partition.txt": None,
    }
    from harness.data import OFFICIAL

    assert {name: s.dataset for name, s in SOURCES.items()} == OFFICIAL
    inshop = SOURCES["inshop"]
    assert inshop.archives[0].min_files == sum(inshop.dataset.images.values()) == 52712
    assert all(
        url.startswith(("http://", "https://", "ftp://"))
        for s in SOURCES.values()
        for a in s.archives
        for url in a.urls
    )
    with pytest.raises(ValueError, match="needs its dest"):
        Archive("x.txt", (), None, "file")
