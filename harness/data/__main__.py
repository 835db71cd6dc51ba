"""``python -m harness.data fetch NAME... --root DIR`` installs the benchmarks; ``check`` says what is there.

``fetch`` downloads (or, with ``--from DIR``, takes the files downloaded by hand), verifies, extracts and
checks each dataset (:mod:`harness.data.fetch`); ``--mirror URL`` (or ``$HARNESS_DATA_MIRROR``) is a base
URL tried first for every file. ``check`` prints one line per dataset: present, missing or wrong (which
file, which count). ``cache NAME`` builds the pre-decoded image cache a run with ``data.decoded_cache:
true`` reads (:mod:`harness.data.decoded_cache`) and prints its size. Each failure is one line; the exit
code is 2 when any dataset could not be installed, or (``check``) is wrong, or was named and is missing.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from harness.data.fetch import MIRROR_ENV, fetch_dataset, inspect_dataset
from harness.data.official import DATA_ROOT_ENV
from harness.data.sources import SOURCES
from harness.errors import EXIT_USER_ERROR, ArgumentParser, UserError, cli_main, filesystem_message, one_line

ALL = "all"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m harness.data", description="Install and check the official benchmarks."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    names = f"{', '.join(SOURCES)} or {ALL}"
    fetch = commands.add_parser("fetch", help="download, verify, extract and check datasets")
    fetch.add_argument("names", nargs="+", metavar="NAME", help=f"datasets to install: {names}")
    fetch.add_argument("--root", help=f"the data root (default ${DATA_ROOT_ENV})")
    fetch.add_argument(
        "--from",
        dest="from_dir",
        metavar="DIR",
        help="install from DIR, the folder holding the files downloaded by hand (verified; no download)",
    )
    fetch.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help=f"a base URL holding the files by name, tried first (repeatable; default ${MIRROR_ENV})",
    )
    fetch.add_argument(
        "--keep-archives", action="store_true", help="keep the downloaded archives in ROOT/.fetch/downloads"
    )
    check = commands.add_parser("check", help="say which datasets are present, missing or wrong")
    check.add_argument("names", nargs="*", metavar="NAME", help=f"datasets to check (default {ALL})")
    check.add_argument("--root", help=f"the data root (default ${DATA_ROOT_ENV})")
    cache = commands.add_parser("cache", help="build the pre-decoded image cache of a dataset")
    cache.add_argument("name", metavar="NAME", help=f"the dataset: {', '.join(SOURCES)}")
    cache.add_argument("--root", help=f"the data root (default ${DATA_ROOT_ENV})")
    cache.add_argument(
        "--cache-dir", help="where the cache goes (config data.cache_dir; default $HARNESS_CACHE)"
    )
    cache.add_argument("--image-size", type=int, default=224, help="data.image_size (default 224)")
    cache.add_argument(
        "--resize-size", type=int, default=None, help="data.options.resize_size (default 256 for 224 px)"
    )
    cache.add_argument(
        "--convention", default="bninception", help="the backbone's input convention (default bninception)"
    )
    cache.add_argument(
        "--no-strict-counts", action="store_true", help="accept a subset (config data.strict_counts: false)"
    )
    return parser


def dataset_names(given: list[str]) -> list[str]:
    """The datasets named (``all`` for every one), in the table's order; UserError for an unknown name."""
    unknown = [name for name in given if name != ALL and name not in SOURCES]
    if unknown:
        from harness.errors import did_you_mean

        raise UserError(f"unknown dataset {unknown[0]!r}{did_you_mean(unknown[0], [*SOURCES, ALL])}")
    return [name for name in SOURCES if ALL in given or name in given]


def data_root(given: str | None) -> Path:
    root = given or os.environ.get(DATA_ROOT_ENV, "")
    if not root:
        raise UserError(f"no data root: give --root DIR or set {DATA_ROOT_ENV}=DIR")
    return Path(root).expanduser()


def filesystem_fault(err: OSError, root: Path) -> UserError | None:
    """The one-line UserError for a filesystem fault under the data root, or None for another OSError."""
    elsewhere = f"or choose another --root than {root}"
    full = f"free some space ({elsewhere}) and run fetch again: finished downloads are kept and resumed"
    remedies = {
        errno.ENOSPC: full,
        errno.EDQUOT: full,
        errno.EACCES: f"check the permissions of {root} and the folders in it, {elsewhere}",
        errno.EPERM: f"check the permissions of {root} and the folders in it, {elsewhere}",
        errno.EROFS: f"the file system is read-only; {elsewhere}",
        errno.ENOTDIR: f"a file is in the way of a folder the data root needs; move it, {elsewhere}",
        errno.EEXIST: f"a file is in the way of a folder the data root needs; move it, {elsewhere}",
    }
    message = filesystem_message(err, remedies)
    return UserError(message) if message else None


def fetch_command(args: argparse.Namespace) -> int:
    root = data_root(args.root)
    mirrors = args.mirror or [m for m in os.environ.get(MIRROR_ENV, "").split() if m]
    from_dir = Path(args.from_dir) if args.from_dir else None
    failed = 0
    for name in dataset_names(args.names):
        try:
            outcome = fetch_dataset(
                name, root, mirrors=mirrors, from_dir=from_dir, keep_archives=args.keep_archives
            )
        except UserError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr, flush=True)
            continue
        except OSError as err:
            fault = filesystem_fault(err, root)
            if fault is None:
                raise
            failed += 1
            print(f"error: {name}: {fault}", file=sys.stderr, flush=True)
            continue
        print(outcome, flush=True)
    return EXIT_USER_ERROR if failed else 0


def check_command(args: argparse.Namespace) -> int:
    root = data_root(args.root)
    if not root.is_dir():
        raise UserError(f"the data root {root} does not exist or is not a folder; give --root DIR")
    named = bool(args.names) and ALL not in args.names
    bad = 0
    for name in dataset_names(args.names or [ALL]):
        found = inspect_dataset(SOURCES[name], root)
        print(one_line(found.line()), flush=True)
        bad += found.state == "wrong" or (named and found.state == "missing")
    return EXIT_USER_ERROR if bad else 0


def cache_command(args: argparse.Namespace) -> int:
    """Build (or find) the decoded cache a run with these data settings uses; print its file and size."""
    import time

    from harness.data import build_splits
    from harness.data.decoded_cache import cache_splits
    from harness.data.images import ImageDataset
    from harness.data.official import cache_rule
    from harness.data.registry import DatasetRequest

    name = dataset_names([args.name])[0] if args.name != ALL else ""
    if not name:
        raise UserError("cache takes one dataset name, not all")
    options = {} if args.resize_size is None else {"resize_size": args.resize_size}
    splits = build_splits(
        name,
        str(data_root(args.root)),
        image_size=args.image_size,
        convention=args.convention,
        strict_counts=not args.no_strict_counts,
        **options,
    )
    parts = {
        k: d
        for k in ("train", "test", "query", "gallery")
        if isinstance(d := getattr(splits, k), ImageDataset)
    }
    request = DatasetRequest(
        root=args.root, image_size=args.image_size, convention=args.convention, options=options
    )
    started = time.perf_counter()
    _, cache, built = cache_splits(parts, cache_rule(request), name=name, cache_dir=args.cache_dir)
    how = f"built in {time.perf_counter() - started:.1f} s" if built else "already built"
    print(
        f"{name}: decoded cache of {len(cache):,} images, {cache.paths.size_bytes() / 2**30:.2f} GiB "
        f"({cache.paths.size_bytes():,} bytes), {how}: {cache.paths.pixels}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"fetch": fetch_command, "check": check_command, "cache": cache_command}
    return commands[args.command](args)


if __name__ == "__main__":
    cli_main(main)
