"""The embedded ``glyphs`` benchmark: characters rendered from matplotlib's fonts, cached on disk.

Each class is one Unicode character; its instances are jittered renderings of it in the 16 DejaVu
(Sans, Serif, Sans Mono) and STIX (General) faces, regular/bold/italic, that matplotlib installs. The
class list is built from the characters that the canonical face (DejaVu Sans) and at least
``min_fonts`` faces have (their cmaps, read with matplotlib's ``ft2font``): characters whose canonical
rendering equals or nearly equals that of an earlier character (Latin A, Greek Alpha, Cyrillic A ...)
are merged into the first one, then ``num_classes`` of the rest are drawn with ``class_seed`` and split
in halves: the first half trains, the second tests (class-disjoint, like CUB-200-2011). A validation
split is carved from the training classes with :func:`harness.data.splits.split_classes`.

The images (uint8, ``image_size`` square, white ink on a darker background) are rendered once per
parameter set into ``<cache_dir>/glyphs-<hash>.npz`` (written atomically) and reused afterwards.
Every rendering is a pure function of the parameters (``seed``, jitter strength, size), the character
and the instance number.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import types
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
import numpy as np
import PIL
import torch
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch.nn import functional as F

from harness.data.splits import DatasetSplits, split_classes
from harness.errors import UserError
from harness.files import atomic_write_bytes

GENERATOR_VERSION = 1  # bump whenever a change makes the renderings differ

FONT_FACES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
CANONICAL_FACE = 0  # DejaVu Sans: the face whose renderings define which characters look alike
CANVAS = 64  # side of the canonical rendering (and of the supersampled canvas for 32-pixel images)
FONT_SIZE_FRACTION = 42 / 64  # font size relative to the canvas side
LOOKALIKE_DISTANCE = 0.03  # 1 - IoU of the canonical ink below which two characters are one class
CHARACTER_CATEGORIES = "LNPS"  # letters, numbers, punctuation, symbols (no marks, spaces, controls)
EVAL_KS = (1, 2, 4, 8, 16, 32)
DEFAULT_TRAIN_SHIFT = 2
DRAWS_PER_INSTANCE = 48  # uniform numbers each instance reads (>= what _render_ink uses)
MAX_CLUTTER = 3
CLUTTER_CHANCE = 0.3  # chance of each of the MAX_CLUTTER strokes, times jitter


@dataclass(frozen=True)
class GlyphParams:
    """Everything the rendered images depend on; its hash names the cache file."""

    num_classes: int = 400
    instances_per_class: int = 64
    image_size: int = 32
    min_fonts: int = 16
    jitter: float = 1.0
    seed: int = 0
    class_seed: int = 0

    def check(self) -> None:
        """Raise :class:`UserError` for values the generator cannot honour."""
        if self.num_classes < 8 or self.num_classes % 2:
            raise UserError(f"glyphs: num_classes is {self.num_classes}; expected an even number >= 8")
        if self.instances_per_class < 2:
            raise UserError(f"glyphs: instances_per_class is {self.instances_per_class}; expected >= 2")
        if not 16 <= self.image_size <= 128:
            raise UserError(
                f"glyphs: image_size is {self.image_size}; glyphs renders small images, expected 16-128 "
                "(set data.image_size: 32)"
            )
        if not 1 <= self.min_fonts <= len(FONT_FACES):
            raise UserError(f"glyphs: min_fonts is {self.min_fonts}; expected 1-{len(FONT_FACES)}")
        if not 0.0 <= self.jitter <= 2.0:
            raise UserError(f"glyphs: jitter is {self.jitter}; expected a strength in [0, 2]")

    def cache_key(self) -> str:
        """A short hash of the parameters, the generator version and the font/rasteriser versions."""
        identity = {
            **asdict(self),
            "generator": GENERATOR_VERSION,
            "matplotlib": matplotlib.__version__,
            "pillow": PIL.__version__,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GlyphClasses:
    """The class list: one character per class; the first ``num_classes // 2`` train, the rest test."""

    characters: tuple[str, ...]
    faces: tuple[tuple[int, ...], ...]  # per class: indices into FONT_FACES that really have the glyph
    merged_into: Mapping[str, str]  # look-alike character -> the pool character it was merged into

    @property
    def num_train_classes(self) -> int:
        return len(self.characters) // 2


@dataclass(frozen=True)
class GlyphImages:
    """The rendered benchmark: ``images[i]`` shows ``characters[labels[i]]`` in face ``faces[i]``."""

    images: np.ndarray  # (n, size, size) uint8
    labels: np.ndarray  # (n,) int64, index into characters
    faces: np.ndarray  # (n,) uint8, index into FONT_FACES
    characters: tuple[str, ...]
    num_train_classes: int


# ------------------------------------------------------------------------------------------ fonts


def font_dir() -> Path:
    """matplotlib's bundled TrueType fonts."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def _font(face: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / FONT_FACES[face]), size)


@functools.cache
def _codepoints(face: int) -> frozenset[int]:
    return frozenset(FT2Font(str(font_dir() / FONT_FACES[face])).get_charmap())


@functools.lru_cache(maxsize=64)
def _draw_glyph(character: str, face: int, canvas: int, stroke: int = 0) -> Image.Image:
    """The character in white on black, centred on its em box, at the standard size (do not modify it)."""
    image = Image.new("L", (canvas, canvas), 0)
    font = _font(face, round(FONT_SIZE_FRACTION * canvas))
    ImageDraw.Draw(image).text(
        (canvas / 2, canvas / 2),
        character,
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    return image


def _canonical_ink(character: str, face: int = CANONICAL_FACE) -> np.ndarray:
    return np.asarray(_draw_glyph(character, face, CANVAS)).reshape(-1) > 127


# ---------------------------------------------------------------------------------------- classes


def _candidate_pool(min_fonts: int) -> list[str]:
    """Characters of the canonical face in the allowed categories that >= min_fonts faces map."""
    cmaps = [_codepoints(face) for face in range(len(FONT_FACES))]
    pool = []
    for codepoint in sorted(cmaps[CANONICAL_FACE]):
        character = chr(codepoint)
        if unicodedata.category(character)[0] not in CHARACTER_CATEGORIES:
            continue
        if sum(codepoint in cmap for cmap in cmaps) >= min_fonts:
            pool.append(character)
    return pool


def merge_lookalikes(characters: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Keep, in order, the characters whose canonical rendering differs from every kept one.

    Two renderings are alike when 1 - IoU of their ink is below :data:`LOOKALIKE_DISTANCE`; blank
    renderings are dropped. Returns the kept characters and ``{dropped: kept look-alike}``.
    """
    ink = np.stack([_canonical_ink(character) for character in characters]).astype(np.float32)
    area = ink.sum(axis=1)
    intersection = ink @ ink.T
    distance = 1.0 - intersection / np.maximum(area[:, None] + area[None, :] - intersection, 1.0)
    kept: list[int] = []
    merged: dict[str, str] = {}
    for i, character in enumerate(characters):
        if area[i] == 0:
            continue
        nearest = kept[int(distance[i, kept].argmin())] if kept else -1
        if nearest >= 0 and distance[i, nearest] < LOOKALIKE_DISTANCE:
            merged[character] = characters[nearest]
        else:
            kept.append(i)
    return [characters[i] for i in kept], merged


def faces_with_glyph(character: str) -> tuple[int, ...]:
    """Faces whose cmap has the character and whose rendering of it is not blank."""
    return tuple(
        face
        for face in range(len(FONT_FACES))
        if ord(character) in _codepoints(face) and _canonical_ink(character, face).any()
    )


@functools.cache
def glyph_classes(num_classes: int = 400, min_fonts: int = 16, class_seed: int = 0) -> GlyphClasses:
    """The class list: look-alikes merged, ``num_classes`` drawn with ``class_seed``, train half first.

    Each half is in code-point order. Raises :class:`UserError` when too few characters qualify.
    """
    pool, merged = merge_lookalikes(_candidate_pool(min_fonts))
    drawn: dict[str, tuple[int, ...]] = {}
    draw_order: np.ndarray | list[int] = (
        np.random.default_rng(class_seed).permutation(len(pool)) if num_classes <= len(pool) else []
    )
    for i in draw_order:
        faces = faces_with_glyph(pool[i])
        if len(faces) >= min_fonts:
            drawn[pool[i]] = faces
        if len(drawn) == num_classes:
            break
    if len(drawn) < num_classes:
        raise UserError(
            f"glyphs: num_classes is {num_classes} but at most {len(pool)} distinct characters have >= "
            f"{min_fonts} fonts; lower num_classes or min_fonts"
        )
    order = list(drawn)
    half = num_classes // 2
    characters = tuple(sorted(order[:half], key=ord) + sorted(order[half:], key=ord))
    return GlyphClasses(characters, tuple(drawn[c] for c in characters), types.MappingProxyType(merged))


# -------------------------------------------------------------------------------------- rendering


class _Draws:
    """Reads one instance's row of uniform [0, 1) numbers in order."""

    def __init__(self, row: np.ndarray) -> None:
        self._row = iter(row.tolist())

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * next(self._row)

    def chance(self, probability: float) -> bool:
        return next(self._row) < probability


def _affine_inverse(draws: _Draws, jitter: float, canvas: int) -> tuple[float, ...]:
    """PIL's AFFINE data (output -> input map) for a random scale, squash, rotation, shear and shift."""
    scale = math.exp(draws.uniform(-0.25, 0.12) * jitter)
    squash = math.exp(draws.uniform(-0.12, 0.12) * jitter)
    angle = math.radians(draws.uniform(-18.0, 18.0) * jitter)
    shear = draws.uniform(-0.25, 0.25) * jitter
    shift_x, shift_y = (draws.uniform(-0.1, 0.1) * jitter * canvas for _ in range(2))
    # forward = rotation @ shear @ diag(sx, sy); invert it in closed form
    sx, sy = scale * squash, scale / squash
    cos, sin = math.cos(angle), math.sin(angle)
    a, b = cos * sx, (cos * shear - sin) * sy
    c, d = sin * sx, (sin * shear + cos) * sy
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    centre = canvas / 2
    x, y = centre + shift_x, centre + shift_y
    return (ia, ib, centre - (ia * x + ib * y), ic, id_, centre - (ic * x + id_ * y))


def _draw_clutter(image: Image.Image, draws: _Draws, jitter: float) -> None:
    """Up to three random strokes (lines or arcs) across the canvas."""
    draw = ImageDraw.Draw(image)
    canvas = image.size[0]
    for _ in range(MAX_CLUTTER):
        present = draws.chance(CLUTTER_CHANCE * jitter)
        width = max(1, round(draws.uniform(0.5, 3.5)) * canvas // 64)
        shade = round(draws.uniform(0.35, 1.0) * 255)
        x0, y0, x1, y1 = (draws.uniform(0, canvas) for _ in range(4))
        is_line = draws.chance(0.5)
        start, extent = draws.uniform(0, 360), draws.uniform(60, 240)
        if not present:
            continue
        if is_line:
            draw.line([x0, y0, x1, y1], fill=shade, width=width)
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            draw.arc(box, start, start + extent, fill=shade, width=width)


def _render_ink(
    character: str, faces: Sequence[int], draws: _Draws, jitter: float, size: int
) -> tuple[np.ndarray, int]:
    """The jittered ink (uint8, ``size`` square, 0 = background) and the face used."""
    canvas = 2 * size  # supersampled, reduced 2x at the end
    face = faces[min(int(draws.uniform(0, len(faces))), len(faces) - 1)]
    stroke = canvas // 64 if draws.chance(0.35 * jitter) else 0
    ink = _draw_glyph(character, face, canvas, stroke=stroke)
    ink = ink.transform(
        ink.size, Image.Transform.AFFINE, _affine_inverse(draws, jitter, canvas), Image.Resampling.BILINEAR
    )
    _draw_clutter(ink, draws, jitter)
    blur = draws.uniform(0.0, 1.5) * jitter * canvas / 64
    if blur > 0.05:
        ink = ink.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(ink.reduce(2)), face


def render_class(character: str, faces: Sequence[int], params: GlyphParams) -> tuple[np.ndarray, np.ndarray]:
    """All instances of one class, a pure function of ``(params.seed, character)`` and the params.

    Returns ``(images (n, size, size) uint8, faces (n,) uint8)``. Each instance reads its own row of
    random numbers, so instance i is the same whatever ``instances_per_class`` is.
    """
    rng = np.random.default_rng([params.seed, ord(character)])
    n, size, jitter = params.instances_per_class, params.image_size, params.jitter
    inks = np.empty((n, size, size), dtype=np.uint8)
    used = np.empty(n, dtype=np.uint8)
    tones = np.empty((n, 3), dtype=np.float32)  # background, foreground, noise sigma
    noise = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        row = rng.random(DRAWS_PER_INSTANCE)
        noise[i] = rng.standard_normal((size, size), dtype=np.float32)
        draws = _Draws(row)
        tones[i] = (
            draws.uniform(0.0, 0.3) * jitter,
            1.0 - draws.uniform(0.0, 0.35) * jitter,
            draws.uniform(0.0, 0.1) * jitter,
        )
        inks[i], used[i] = _render_ink(character, faces, draws, jitter, size)
    background, foreground, sigma = (tones[:, k, None, None] for k in range(3))
    images = background + (foreground - background) * (inks / np.float32(255)) + sigma * noise
    return np.clip(np.rint(images * 255), 0, 255).astype(np.uint8), used


def render_glyphs(params: GlyphParams) -> GlyphImages:
    """Render every instance of every class of ``params`` (seconds for the default 400 x 64)."""
    params.check()
    classes = glyph_classes(params.num_classes, params.min_fonts, params.class_seed)
    rendered = [render_class(c, f, params) for c, f in zip(classes.characters, classes.faces, strict=True)]
    labels = np.repeat(np.arange(params.num_classes, dtype=np.int64), params.instances_per_class)
    images = np.concatenate([images for images, _ in rendered])
    faces = np.concatenate([faces for _, faces in rendered])
    return GlyphImages(images, labels, faces, classes.characters, classes.num_train_classes)


# ------------------------------------------------------------------------------------------ cache


def default_cache_dir() -> Path:
    """``$HARNESS_CACHE`` if set, else ``~/.cache/gpw-harness/glyphs``."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpw-harness" / "glyphs"


def cache_path(cache_dir: str | os.PathLike[str] | None, params: GlyphParams) -> Path:
    """Where the images of ``params`` are cached."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / f"glyphs-{params.cache_key()}.npz"


def cache_problem(cache_dir: str | os.PathLike[str] | None) -> str | None:
    """Why the image cache folder cannot be used (a file is in the way, no permission to create or write
    it), or None; a read-only folder that already holds caches is fine. Creates nothing."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    todo = "set data.cache_dir (or $HARNESS_CACHE) to a writable folder"
    existing = next(p for p in (base, *base.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return f"glyphs: the image cache folder {base} cannot be made: {existing} is not a folder; {todo}"
    if existing == base and any(base.glob("glyphs-*.npz")):
        return None
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"glyphs: cannot write the image cache folder {base} (no permission in {existing}); {todo}"
    return None


def _save(path: Path, glyphs: GlyphImages, params: GlyphParams) -> None:
    """Write the images to ``path`` atomically (uncompressed: the cache is read on every run)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        images=glyphs.images,
        labels=glyphs.labels,
        faces=glyphs.faces,
        characters=np.array(glyphs.characters, dtype="<U1"),
        num_train_classes=np.array(glyphs.num_train_classes),
        params=np.array(json.dumps(asdict(params), sort_keys=True)),
    )
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        raise UserError(
            f"glyphs: cannot write the image cache {path} ({err.strerror or err}); set $HARNESS_CACHE or "
            "data.cache_dir to a writable folder"
        ) from None


def _load(path: Path) -> GlyphImages | None:
    """The cached images, or None when the file is missing or unreadable (it is then rendered again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return GlyphImages(
                images=data["images"],
                labels=data["labels"],
                faces=data["faces"],
                characters=tuple(str(c) for c in data["characters"]),
                num_train_classes=int(data["num_train_classes"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def load_or_render(cache_dir: str | os.PathLike[str] | None, params: GlyphParams) -> GlyphImages:
    """The images of ``params`` from the cache, rendering (and caching) them on first use."""
    params.check()
    path = cache_path(cache_dir, params)
    glyphs = _load(path) if path.is_file() else None
    if glyphs is None:
        glyphs = render_glyphs(params)
        _save(path, glyphs, params)
    return glyphs


# ---------------------------------------------------------------------------------------- datasets


class GlyphDataset(torch.utils.data.Dataset):
    """Glyph images as normalised float tensors ``1 x size x size``; ``shift > 0`` adds random shifts.

    ``characters[label]`` is the character of a label. The random shift (training only) moves the
    image by up to ``shift`` pixels in each direction, repeating the border; it draws from torch's
    global generator, so it is reproducible under ``torch.manual_seed`` (and per DataLoader worker).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        characters: Sequence[str],
        *,
        mean: float,
        std: float,
        shift: int = 0,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.characters = tuple(characters)
        self.mean = float(mean)
        self.std = float(std)
        self.shift = int(shift)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch at once (the DataLoader calls this): the same images and the same random
        shifts, drawn in the same order from the same generator, as one :meth:`__getitem__` per index."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = (self.images[index].float().unsqueeze(1) - self.mean) / self.std
        if self.shift:
            count, size = len(index), images.shape[-1]
            offsets = torch.randint(0, 2 * self.shift + 1, (count, 2))  # (dy, dx) per image, in order
            padded = F.pad(images, [self.shift] * 4, mode="replicate")
            span = torch.arange(size)
            rows = (offsets[:, 0, None] + span)[:, :, None]  # count x size x 1
            cols = (offsets[:, 1, None] + span)[:, None, :]  # count x 1 x size
            images = padded[torch.arange(count)[:, None, None], 0, rows, cols].unsqueeze(1)
        return list(zip(images.unbind(0), self.labels[index.numpy()].tolist(), strict=True))


def build_glyph_splits(
    cache_dir: str | os.PathLike[str] | None,
    *,
    val_fraction: float,
    val_seed: int,
    val_folds: int = 0,
    val_fold: int = 0,
    seed: int = 0,
    image_size: int = 32,
    convention: str = "grey",
    num_classes: int = 400,
    instances_per_class: int = 64,
    min_fonts: int = 16,
    jitter: float = 1.0,
    train_shift: int = DEFAULT_TRAIN_SHIFT,
) -> DatasetSplits:
    """The glyphs benchmark as :class:`DatasetSplits` (leave-one-out, K = 1, 2, 4, 8, 16, 32).

    ``seed`` selects the renderings (keep it fixed to compare losses on one dataset); the validation
    classes (``val_fraction`` of the training classes, drawn with ``val_seed``, or class fold
    ``val_fold`` of ``val_folds``) come out of ``train``.
    Images are normalised with the mean and standard deviation of the training split's pixels.
    """
    if convention != "grey":
        raise UserError(
            f"glyphs: images are greyscale but the backbone expects the {convention!r} convention; "
            "use model.backbone: small_cnn"
        )
    params = GlyphParams(num_classes, instances_per_class, image_size, min_fonts, jitter, seed)
    glyphs = load_or_render(cache_dir, params)
    is_train = glyphs.labels < glyphs.num_train_classes
    train_idx = np.flatnonzero(is_train)
    fit_idx, val_idx = split_classes(
        glyphs.labels[train_idx], val_fraction, val_seed, folds=val_folds, fold=val_fold
    )
    fit_idx, val_idx = train_idx[fit_idx], train_idx[val_idx]
    test_idx = np.flatnonzero(~is_train)
    pixels = glyphs.images[fit_idx]
    mean, std = float(pixels.mean()), float(pixels.std())

    def dataset(indices: np.ndarray, shift: int = 0) -> GlyphDataset:
        return GlyphDataset(
            glyphs.images[indices], glyphs.labels[indices], glyphs.characters, mean=mean, std=std, shift=shift
        )

    return DatasetSplits(
        train=dataset(fit_idx, train_shift),
        val=dataset(val_idx) if len(val_idx) else None,
        test=dataset(test_idx),
        eval_mode="leave_one_out",
        default_ks=EVAL_KS,
    )
