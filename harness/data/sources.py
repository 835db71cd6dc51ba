"""Where each official benchmark's files come from: archives, URLs, checksums and how they unpack (a table).

One :class:`DatasetSource` per dataset lists the files as their authors publish them, each with its
canonical URL first and known mirrors after it, the MD5 the field's tools check (In-Shop publishes
none: the number of images in ``img.zip`` is checked instead, then the loader's official counts)
and how the file lands in the dataset folder the loader expects. :mod:`harness.data.fetch` reads
this table and nothing else; tests pass their own table of fixture archives.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.data.cars import CARS
from harness.data.cub import CUB
from harness.data.inshop import INSHOP
from harness.data.official import OfficialDataset
from harness.data.sop import SOP

UNPACK_KINDS = ("tgz", "zip", "file")


@dataclass(frozen=True)
class Archive:
    """One published file and how it becomes part of the dataset folder.

    ``unpack``: ``tgz`` or ``zip`` (extracted; the members under ``strip/`` land in the dataset folder,
    members outside it are left out) or ``file`` (copied to ``dest`` inside the dataset folder).
    """

    name: str  # the file name as published, e.g. "CUB_200_2011.tgz"
    urls: tuple[str, ...]  # the canonical URL first, then known mirrors; () when only a person can get it
    md5: str | None  # None where the authors publish no checksum
    unpack: str
    strip: str = ""  # tgz/zip: the folder inside the archive that holds the dataset folder's content
    dest: str = ""  # file: its path inside the dataset folder
    min_files: int = 0  # zip/tgz: the regular files it must hold at least (checked where no md5 exists)

    def __post_init__(self) -> None:
        if self.unpack not in UNPACK_KINDS:
            raise ValueError(f"{self.name}: unpack {self.unpack!r} is not one of {UNPACK_KINDS}")
        if self.unpack == "file" and not self.dest:
            raise ValueError(f"{self.name}: a file archive needs its dest inside the dataset folder")


@dataclass(frozen=True)
class DatasetSource:
    """The files of one benchmark and where a person gets them when no URL works."""

    dataset: OfficialDataset  # the loader's description: folder name, list files, official counts
    archives: tuple[Archive, ...]
    by_hand: str  # where to download the files in a browser (a page, a Drive folder)


CUB_SOURCE = DatasetSource(
    CUB,
    (
        Archive(
            "CUB_200_2011.tgz",
            ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",),
            md5="97eceeb196236b17998738112f37df78",
            unpack="tgz",
            strip="CUB_200_2011",
        ),
    ),
    by_hand="the Caltech data repository https://data.caltech.edu/records/65de6-vp158",
)

# The Stanford URLs are dead (torchvision's StanfordCars(download=True) refuses for that reason); they
# stay listed in case they return or a proxy caches them. The copies on Kaggle need a login.
CARS_MIRRORS = ("http://ai.stanford.edu/~jkrause/car196/", "http://imagenet.stanford.edu/internal/car196/")
CARS_SOURCE = DatasetSource(
    CARS,
    (
        Archive(
            "car_ims.tgz",
            tuple(base + "car_ims.tgz" for base in CARS_MIRRORS),
            md5="d5c8f0aa497503f355e17dc7886c3f14",
            unpack="tgz",
        ),
        Archive(
            "cars_annos.mat",
            tuple(base + "cars_annos.mat" for base in CARS_MIRRORS),
            md5="b407c6086d669747186bd1d764ff9dbc",
            unpack="file",
            dest="cars_annos.mat",
        ),
    ),
    by_hand="a copy of the original Stanford files (the Stanford URL is dead; Kaggle hosts copies, "
    "behind a login)",
)

SOP_SOURCE = DatasetSource(
    SOP,
    (
        Archive(
            "Stanford_Online_Products.zip",
            (
                "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
                "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            ),
            md5="7f73d41a2f44250d4779881525aea32e",
            unpack="zip",
            strip="Stanford_Online_Products",
        ),
    ),
    by_hand="https://cvgl.stanford.edu/projects/lifted_struct/",
)

INSHOP_IMAGES = 52712  # rows of list_eval_partition.txt: 25,882 train + 14,218 query + 12,612 gallery
INSHOP_SOURCE = DatasetSource(
    INSHOP,
    (
        Archive("img.zip", (), md5=None, unpack="zip", min_files=INSHOP_IMAGES),
        Archive("list_eval_partition.txt", (), md5=None, unpack="file", dest="Eval/list_eval_partition.txt"),
    ),
    by_hand="the DeepFashion In-shop Google Drive folder "
    "https://drive.google.com/drive/folders/0B7EVK8r0v71pVDZFQXRsMDZCX1E (Img/img.zip, not the "
    "password-protected img_highres.zip, and Eval/list_eval_partition.txt)",
)

SOURCES: dict[str, DatasetSource] = {
    source.dataset.name: source for source in (CUB_SOURCE, CARS_SOURCE, SOP_SOURCE, INSHOP_SOURCE)
}
