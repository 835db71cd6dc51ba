"""Cars-196 (Stanford Cars): classes 1-98 train (8,054 images), 99-196 test (8,131).

Layout: ``<root>/cars196/cars_annos.mat`` and ``<root>/cars196/car_ims/*.jpg``. The ``annotations``
struct array holds ``relative_im_path`` (relative to the folder), the bounding box, ``class`` (1-based)
and ``test``; the ``test`` flag (the classification split) and the boxes are ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from harness.data.official import ImageList, OfficialDataset, regular_file, split_by_class_range

CLASS_RANGES = {"train": (1, 98), "test": (99, 196)}
FIELDS = ("relative_im_path", "class")


def read_cars(folder: Path) -> dict[str, ImageList]:
    """Read the ``annotations`` struct array of ``cars_annos.mat`` and split by class id."""
    path = folder / CARS.list_files[0]
    try:
        mat = scipy.io.loadmat(regular_file(CARS, path), squeeze_me=True)
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as err:
        raise CARS.error(f"cannot read {path} as a MATLAB file ({' '.join(str(err).split())})") from None
    annotations = np.atleast_1d(mat.get("annotations", np.empty(0)))
    missing = [name for name in FIELDS if name not in (annotations.dtype.names or ())]
    if missing:
        raise CARS.error(f"{path} has no `annotations` struct array with field {missing[0]!r}")
    files = [str(name) for name in annotations["relative_im_path"]]
    class_ids = np.array(
        [class_number(path, value, index) for index, value in enumerate(annotations["class"], start=1)],
        dtype=np.int64,
    )
    return split_by_class_range(CARS, path, ImageList(files, class_ids), CLASS_RANGES)


def class_number(path: Path, value: object, index: int) -> int:
    """The ``class`` of annotation ``index`` (1-based) as an int; DataError for a non-integer such as 1.7."""
    number = np.asarray(value)
    real = number.ndim == 0 and np.issubdtype(number.dtype, np.number) and not np.iscomplexobj(number)
    if real and (np.issubdtype(number.dtype, np.integer) or float(number).is_integer()):
        return int(number)
    raise CARS.error(
        f"{path}: annotation {index} has class {number.tolist()!r}, expected an integer class id (1-196)",
        f"restore the official cars_annos.mat from {CARS.source}",
    )


CARS = OfficialDataset(
    name="cars",
    title="Cars-196",
    folder="cars196",
    list_files=("cars_annos.mat",),
    source="the Stanford Cars page http://ai.stanford.edu/~jkrause/cars/car_dataset.html "
    "(car_ims.tgz + cars_annos.mat, or a mirror of them)",
    eval_mode="leave_one_out",
    default_ks=(1, 2, 4, 8, 16, 32),
    images={"train": 8054, "test": 8131},
    classes={"train": 98, "test": 98},
    read=read_cars,
)
