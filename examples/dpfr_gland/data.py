"""Gland data for the DPFR recipe: readers, label-ratio splits and the data command line.

Every reader yields ``(image, instances)`` pairs:

- ``image``: ``uint8`` array ``[H, W, 3]`` (RGB);
- ``instances``: ``int32`` array ``[H, W]``, 0 = background, each gland its own label.

Readers:

- :class:`GlaSDataset`: the GlaS challenge release in its flat layout (``train_N.bmp`` with
  ``train_N_anno.bmp``, ``testA_*``, ``testB_*`` and ``Grade.csv``);
- :class:`CRAGDataset`: CRAG (``train|valid/Images`` with ``Annotation`` or ``Annotations``);
- :class:`FolderDataset`: any folder of images with same-named instance masks.

Every error about a file names that file. Synthetic glands live in
:mod:`examples.dpfr_gland.synthetic`; this module's command line writes them to disk in any of
the three layouts so that the real readers are exercised::

    python -m examples.dpfr_gland.data synth --out DIR --layout glas --num 40 --preset hard
    python -m examples.dpfr_gland.data sheet --out sheet.png
"""

from __future__ import annotations

__all__ = [
    "CRAGDataset",
    "FolderDataset",
    "GlaSDataset",
    "IMAGE_EXTENSIONS",
    "PairedDataset",
    "label_split",
    "parse_ratio",
    "read_glas_grades",
    "read_image",
    "read_instances",
    "read_pair",
    "write_image",
    "write_instances",
    "write_synthetic",
]

import argparse
import csv
import math
import operator
import re
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .synthetic import SyntheticGlands, write_contact_sheet

#: File extensions the readers look for (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".bmp", ".png", ".tif", ".tiff", ".jpg", ".jpeg")

# Pillow modes that hold one integer channel; "P" holds palette indices, which are the labels.
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "1")


def _open(path: Path, what: str) -> Image.Image:
    """Open ``path`` with Pillow, turning every failure into an error that names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{what} {path} is unreadable or corrupt: {error}") from error
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as ``uint8 [H, W, 3]``.

    Grey images are repeated over the three channels; an alpha channel is dropped.

    Args:
        path: an image file Pillow can read (BMP, PNG, TIFF, JPEG, ...).

    Shapes:

        - returns: ``[H, W, 3]``, ``uint8``, values ``0..255``.

    Returns:
        The image as a numpy array.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file is unreadable or corrupt, or not an 8-bit image (names the file).

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "a.png"
        >>> write_image(path, np.full((2, 3, 3), 7, dtype=np.uint8))
        >>> read_image(path).shape, read_image(path).dtype
        ((2, 3, 3), dtype('uint8'))
    """
    path = Path(path)
    image = _open(path, "image")
    if image.mode in ("RGB", "RGBA", "RGBX", "P", "L", "LA", "CMYK", "YCbCr"):
        array = np.asarray(image.convert("RGB"))
    else:
        raise ValueError(f"image {path} has Pillow mode {image.mode!r}; expected an 8-bit RGB or grey image")
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_instances(path: str | Path) -> np.ndarray:
    """Read an instance label map as ``int32 [H, W]`` (0 = background, one label per gland).

    8-bit and 16-bit grey maps and palette maps (the palette index is the label) are read as
    they are. A three-channel map is accepted only when its channels are equal (a grey map
    saved as RGB); a colour-coded RGB annotation is an error, since its colours are not labels.

    Args:
        path: a BMP, PNG or TIFF label map.

    Shapes:

        - returns: ``[H, W]``, ``int32``, values ``>= 0``.

    Returns:
        The label map as a numpy array.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file is unreadable, corrupt, an RGB (colour) annotation or holds
            negative or non-integer values (names the file).

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "a_anno.bmp"
        >>> write_instances(path, np.array([[0, 1], [2, 2]]))
        >>> read_instances(path)
        array([[0, 1],
               [2, 2]], dtype=int32)
    """
    path = Path(path)
    image = _open(path, "annotation")
    if image.mode in _LABEL_MODES:
        array = np.asarray(image)
    elif image.mode in ("RGB", "RGBA", "RGBX", "LA"):
        array = np.asarray(image)
        channels = array[..., :3] if image.mode != "LA" else array[..., :1]
        if not (channels == channels[..., :1]).all():
            raise ValueError(
                f"annotation {path} is an RGB image with differing channels; expected an instance "
                f"label map (8/16-bit grey or palette, 0 = background)"
            )
        array = channels[..., 0]
    else:
        raise ValueError(f"annotation {path} has Pillow mode {image.mode!r}; expected an integer label map")
    if array.ndim != 2:
        raise ValueError(f"annotation {path} must be a 2-D label map, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise ValueError(f"annotation {path} must hold integer labels, got dtype {array.dtype}")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise ValueError(f"annotation {path} holds negative labels (min {array.min()})")
    return np.ascontiguousarray(array, dtype=np.int32)


def read_pair(image_path: str | Path, annotation_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one image with its instance annotation and check that their sizes agree.

    Args:
        image_path: the RGB image.
        annotation_path: its instance label map.

    Shapes:

        - image: ``[H, W, 3]``, ``uint8``.
        - instances: ``[H, W]``, ``int32``, 0 = background.

    Returns:
        ``(image, instances)``.

    Raises:
        FileNotFoundError: either file is missing (names it).
        ValueError: either file is unreadable, or the sizes differ (names both files).

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image(root / "x.png", np.zeros((4, 5, 3), dtype=np.uint8))
        >>> write_instances(root / "x_anno.png", np.ones((4, 5), dtype=np.int32))
        >>> image, instances = read_pair(root / "x.png", root / "x_anno.png")
        >>> image.shape, instances.shape, int(instances.max())
        ((4, 5, 3), (4, 5), 1)
    """
    image = read_image(image_path)
    instances = read_instances(annotation_path)
    if image.shape[:2] != instances.shape:
        raise ValueError(
            f"annotation {annotation_path} has size {instances.shape} (rows, cols) but image "
            f"{image_path} has size {image.shape[:2]}"
        )
    return image, instances


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write a ``uint8 [H, W, 3]`` RGB image (format from the file extension).

    Args:
        path: where to write (``.bmp``, ``.png``, ``.tif``, ...); parent folders are created.
        image: the image.

    Shapes:

        - image: ``[H, W, 3]``, ``uint8``.

    Raises:
        ValueError: ``image`` has the wrong shape.
        TypeError: ``image`` is not ``uint8``.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> write_image(Path(tempfile.mkdtemp()) / "a.bmp", np.zeros((2, 2, 3), dtype=np.uint8))
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape [H, W, 3], got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8, got {image.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(path)


def write_instances(path: str | Path, instances: np.ndarray) -> None:
    """Write an instance label map losslessly: 8-bit grey, or 16-bit PNG/TIFF above 255 labels.

    Args:
        path: where to write; BMP holds at most label 255, PNG and TIFF up to 65535.
        instances: the label map (any integer dtype, values ``>= 0``).

    Shapes:

        - instances: ``[H, W]``, integer, ``0..65535``.

    Raises:
        ValueError: wrong shape, negative labels, or labels too large for the format.
        TypeError: ``instances`` is not an integer array.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "big.png"
        >>> write_instances(path, np.array([[0, 300]]))
        >>> read_instances(path)
        array([[  0, 300]], dtype=int32)
    """
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"instances must have shape [H, W], got {instances.shape}")
    if instances.dtype.kind not in "iub":
        raise TypeError(f"instances must be an integer array, got dtype {instances.dtype}")
    path = Path(path)
    low, high = (int(instances.min()), int(instances.max())) if instances.size else (0, 0)
    if low < 0:
        raise ValueError(f"instances must be >= 0, got min {low} (writing {path})")
    if high <= 255:
        image = Image.fromarray(instances.astype(np.uint8), mode="L")
    elif high <= 65535 and path.suffix.lower() in (".png", ".tif", ".tiff"):
        image = Image.fromarray(instances.astype(np.uint16))
    else:
        raise ValueError(f"instances max label {high} does not fit the format of {path} (BMP: 255, PNG/TIFF: 65535)")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _natural_key(name: str) -> list[object]:
    """Sort key that orders ``train_2`` before ``train_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, in natural name order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _find_with_stem(folder: Path, stem: str) -> Path | None:
    """The image file named ``stem`` + any known extension in ``folder`` (first by extension order)."""
    for suffix in IMAGE_EXTENSIONS:
        for candidate in (folder / (stem + suffix), folder / (stem + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


class PairedDataset:
    """A list of (image file, annotation file) pairs, read on access.

    The base of the readers below; usable directly with explicit file lists. Works with
    ``torch.utils.data.DataLoader`` (map-style: ``__len__`` and ``__getitem__``).

    Args:
        image_paths: the images.
        annotation_paths: their annotations, in the same order.
        names: a name per sample (default: the image file stems).

    Shapes:

        - ``dataset[i]``: ``(image uint8 [H, W, 3], instances int32 [H, W])``.

    Raises:
        ValueError: the lists differ in length or are empty.
        FileNotFoundError: an annotation is missing (names it and its image).

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image(root / "a.png", np.zeros((3, 3, 3), dtype=np.uint8))
        >>> write_instances(root / "a_mask.png", np.eye(3, dtype=np.int32))
        >>> data = PairedDataset([root / "a.png"], [root / "a_mask.png"])
        >>> len(data), data.names, int(data[0][1].sum())
        (1, ['a'], 3)
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        annotation_paths: Sequence[str | Path],
        names: Sequence[str] | None = None,
    ) -> None:
        self.image_paths = [Path(p) for p in image_paths]
        self.annotation_paths = [Path(p) for p in annotation_paths]
        if len(self.image_paths) != len(self.annotation_paths):
            raise ValueError(
                f"annotation_paths must match image_paths in length, got {len(self.annotation_paths)} "
                f"and {len(self.image_paths)}"
            )
        if not self.image_paths:
            raise ValueError("image_paths is empty: a dataset needs at least one image")
        for image, annotation in zip(self.image_paths, self.annotation_paths):
            if not annotation.is_file():
                raise FileNotFoundError(f"annotation {annotation} for image {image} does not exist")
        self.names = list(names) if names is not None else [p.stem for p in self.image_paths]
        if len(self.names) != len(self.image_paths):
            raise ValueError(
                f"names must match image_paths in length, got {len(self.names)} and {len(self.image_paths)}"
            )

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        return read_pair(self.image_paths[index], self.annotation_paths[index])

    def __repr__(self) -> str:
        root = self.image_paths[0].parent
        return f"{type(self).__name__}({len(self)} samples in {root})"


class FolderDataset(PairedDataset):
    """Any folder of images with same-named instance masks, paired by file stem.

    An image ``images_dir/NAME.ext`` pairs with ``masks_dir/NAME{mask_suffix}.ext2`` (any known
    extension; ``ext2`` may differ from ``ext``). When both folders are the same, files whose
    stem ends in ``mask_suffix`` are masks, not images.

    Args:
        images_dir: the folder of RGB images.
        masks_dir: the folder of instance label maps (may equal ``images_dir``).
        mask_suffix: appended to an image's stem to name its mask, e.g. ``"_anno"``.

    Shapes:

        - ``dataset[i]``: ``(image uint8 [H, W, 3], instances int32 [H, W])``.

    Raises:
        FileNotFoundError: a folder or an image's mask is missing (names the path).
        ValueError: no images in ``images_dir`` (names the folder), or ``mask_suffix`` is empty
            while both folders are the same.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image(root / "images" / "g1.png", np.zeros((4, 4, 3), dtype=np.uint8))
        >>> write_instances(root / "masks" / "g1.png", np.ones((4, 4), dtype=np.int32))
        >>> data = FolderDataset(root / "images", root / "masks")
        >>> data.names, data[0][0].shape
        (['g1'], (4, 4, 3))
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, mask_suffix: str = "") -> None:
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        for folder, what in ((images_dir, "images_dir"), (masks_dir, "masks_dir")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} {folder} is not a folder")
        same = images_dir.resolve() == masks_dir.resolve()
        if same and not mask_suffix:
            raise ValueError(f"mask_suffix must be non-empty when images and masks share the folder {images_dir}")
        images = _images_in(images_dir)
        if same:
            images = [p for p in images if not p.stem.endswith(mask_suffix)]
        if not images:
            raise ValueError(f"images_dir {images_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        masks = []
        for image in images:
            mask = _find_with_stem(masks_dir, image.stem + mask_suffix)
            if mask is None:
                raise FileNotFoundError(
                    f"annotation {masks_dir / (image.stem + mask_suffix)}.* for image {image} does not exist"
                )
            masks.append(mask)
        super().__init__(images, masks)


_GLAS_SPLITS = ("train", "testA", "testB")


def read_glas_grades(path: str | Path) -> dict[str, str]:
    """Read GlaS ``Grade.csv``: sample name -> ``"benign"`` or ``"malignant"``.

    The released file pads its header cells with spaces
    (``name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)``); every cell is
    stripped, and header names are matched case-insensitively.

    Args:
        path: the ``Grade.csv`` file.

    Returns:
        A dict from sample name (e.g. ``"train_1"``) to its GlaS grade, lower case.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the header lacks a ``name`` or ``grade (GlaS)`` column, or a row is short
            (names the file and line).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "Grade.csv"
        >>> _ = path.write_text("name, Patient ID, grade (GlaS)\\ntestA_1,4, malignant\\n")
        >>> read_glas_grades(path)
        {'testA_1': 'malignant'}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grade file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [[cell.strip() for cell in row] for row in csv.reader(handle)]
    rows = [row for row in rows if any(row)]
    if not rows:
        raise ValueError(f"grade file {path} is empty")
    header = [cell.lower() for cell in rows[0]]
    try:
        name_col = header.index("name")
        grade_col = header.index("grade (glas)")
    except ValueError:
        raise ValueError(f"grade file {path} needs columns 'name' and 'grade (GlaS)', got header {rows[0]}") from None
    grades = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(name_col, grade_col):
            raise ValueError(f"grade file {path} line {line} has {len(row)} cells, expected {len(header)}")
        grades[row[name_col]] = row[grade_col].lower()
    return grades


class GlaSDataset(PairedDataset):
    """The GlaS challenge data (Warwick, MICCAI 2015) in its released flat layout.

    ``root`` holds ``train_N.bmp`` with ``train_N_anno.bmp`` (85 pairs), ``testA_N``
    (60) and ``testB_N`` (20), and ``Grade.csv`` with each sample's grade. Samples are
    ordered by N. Annotations may also be PNG or TIFF.

    Args:
        root: the folder of the release (``Warwick QU Dataset (Released 2016_07_08)``).
        split: ``"train"``, ``"testA"`` or ``"testB"``.

    Shapes:

        - ``dataset[i]``: ``(image uint8 [H, W, 3], instances int32 [H, W])``.

    Attributes:
        names: sample names such as ``"train_1"``.
        grades: per sample ``"benign"``/``"malignant"`` from ``Grade.csv``, or ``None`` when the
            file or the sample's row is absent.

    Raises:
        ValueError: unknown ``split``; no ``{split}_N`` images in ``root`` (names the folder).
        FileNotFoundError: ``root`` or an annotation is missing (names the file).

    References:
        Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS
        challenge contest", Medical Image Analysis 35, 2017.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image(root / "train_1.bmp", np.zeros((4, 4, 3), dtype=np.uint8))
        >>> write_instances(root / "train_1_anno.bmp", np.ones((4, 4), dtype=np.int32))
        >>> _ = (root / "Grade.csv").write_text("name, Patient ID, grade (GlaS)\\ntrain_1,1, benign\\n")
        >>> data = GlaSDataset(root, "train")
        >>> data.names, data.grades, data[0][1].shape
        (['train_1'], ['benign'], (4, 4))
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root)
        if split not in _GLAS_SPLITS:
            raise ValueError(f"split must be one of {_GLAS_SPLITS}, got {split!r}")
        if not root.is_dir():
            raise FileNotFoundError(f"root {root} is not a folder")
        pattern = re.compile(rf"^{split}_(\d+)$")
        images = [p for p in _images_in(root) if pattern.match(p.stem)]
        if not images:
            raise ValueError(
                f"root {root} holds no {split}_N images (GlaS layout: {split}_1.bmp, {split}_1_anno.bmp, ...)"
            )
        images.sort(key=lambda p: int(pattern.match(p.stem).group(1)))
        annotations = []
        for image in images:
            annotation = _find_with_stem(root, image.stem + "_anno")
            if annotation is None:
                expected = root / f"{image.stem}_anno.bmp"
                raise FileNotFoundError(f"annotation {expected} for image {image} does not exist")
            annotations.append(annotation)
        super().__init__(images, annotations)
        self.split = split
        grade_file = root / "Grade.csv"
        table = read_glas_grades(grade_file) if grade_file.is_file() else {}
        self.grades: list[str | None] = [table.get(name) for name in self.names]


class CRAGDataset(FolderDataset):
    """The CRAG colorectal adenocarcinoma gland data (Graham et al., 2019).

    Layout: ``root/{split}/Images/*.png`` with same-named instance maps in
    ``root/{split}/Annotation/`` (or ``Annotations/``, as some copies name it).

    Args:
        root: the dataset folder holding ``train/`` and ``valid/``.
        split: ``"train"`` or ``"valid"``.

    Shapes:

        - ``dataset[i]``: ``(image uint8 [H, W, 3], instances int32 [H, W])``.

    Raises:
        ValueError: unknown ``split``; no images (names the folder).
        FileNotFoundError: the ``Images`` or annotation folder, or an annotation, is missing.

    References:
        Graham et al., "MILD-Net: Minimal information loss dilated network for gland instance
        segmentation in colon histology images", Medical Image Analysis 52, 2019.

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> write_image(root / "valid" / "Images" / "test_1.png", np.zeros((4, 4, 3), dtype=np.uint8))
        >>> write_instances(root / "valid" / "Annotation" / "test_1.png", np.ones((4, 4), dtype=np.int32))
        >>> CRAGDataset(root, "valid").names
        ['test_1']
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        root = Path(root)
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        base = root / split
        annotations = next((base / n for n in ("Annotation", "Annotations") if (base / n).is_dir()), None)
        if annotations is None:
            raise FileNotFoundError(
                f"annotation folder {base / 'Annotation'} (or {base / 'Annotations'}) does not exist"
            )
        super().__init__(base / "Images", annotations)
        self.split = split


def parse_ratio(ratio: float | str | Fraction) -> Fraction:
    """Parse a label ratio given as a number or a string such as ``"1/8"``, ``"0.25"`` or ``"50%"``.

    Args:
        ratio: the fraction of samples that keep their labels, in ``(0, 1]``.

    Returns:
        The ratio as an exact :class:`fractions.Fraction`.

    Raises:
        ValueError: unparsable, or not in ``(0, 1]``.
        TypeError: neither a number nor a string.

    Example:
        >>> parse_ratio("1/8"), parse_ratio("50%"), parse_ratio(0.25)
        (Fraction(1, 8), Fraction(1, 2), Fraction(1, 4))
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, str, Fraction)):
        raise TypeError(f"ratio must be a number or a string like '1/8', got {type(ratio).__name__}")
    try:
        if isinstance(ratio, str):
            text = ratio.strip()
            value = Fraction(text[:-1].strip()) / 100 if text.endswith("%") else Fraction(text)
        else:
            if isinstance(ratio, float) and not math.isfinite(ratio):
                raise ValueError
            # limit_denominator turns 0.1 (binary) back into 1/10.
            value = Fraction(ratio).limit_denominator(1_000_000)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"ratio must be a fraction like '1/8', '0.25' or '50%', got {ratio!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return value


def label_split(
    names_or_n: int | Sequence[object], ratio: float | str | Fraction, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split samples into labelled and unlabelled indices at a label ratio, deterministically by seed.

    The labelled count is ``round(ratio * n)`` (halves round up) and at least 1; the two index
    sets are disjoint, cover ``0..n-1`` and are each sorted. The same ``(n, ratio, seed)`` always
    gives the same split (numpy's PCG64 permutation), on every platform.

    Args:
        names_or_n: the number of samples, or a sequence of samples (only its length is used).
        ratio: labelled fraction in ``(0, 1]``: a number or a string such as ``"1/8"``.
        seed: the seed of the permutation.

    Shapes:

        - returns: two ``int64`` arrays, ``[k]`` and ``[n - k]``.

    Returns:
        ``(labelled_indices, unlabelled_indices)``.

    Raises:
        ValueError: ``n < 1`` or a bad ``ratio``.
        TypeError: ``seed`` or ``n`` is not an integer.

    Example:
        >>> labelled, unlabelled = label_split(16, "1/4", seed=0)
        >>> len(labelled), len(unlabelled), sorted([*labelled, *unlabelled]) == list(range(16))
        (4, 12, True)
    """
    if isinstance(names_or_n, (int, np.integer)) and not isinstance(names_or_n, bool):
        n = int(names_or_n)
    elif isinstance(names_or_n, (str, bytes)) or not hasattr(names_or_n, "__len__"):
        raise TypeError(f"names_or_n must be an int or a sequence of samples, got {type(names_or_n).__name__}")
    else:
        n = len(names_or_n)
    if n < 1:
        raise ValueError(f"names_or_n must give at least 1 sample, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    fraction = parse_ratio(ratio)
    count = max(1, math.floor(fraction * n + Fraction(1, 2)))
    order = np.random.default_rng(int(seed)).permutation(n)
    return np.sort(order[:count]).astype(np.int64), np.sort(order[count:]).astype(np.int64)


# ----------------------------------------------------------------------------- command line


def _split_counts(num: int, weights: Sequence[int]) -> list[int]:
    """Split ``num`` into parts proportional to ``weights`` (largest remainders), each >= 1 if possible."""
    total = sum(weights)
    raw = [num * w / total for w in weights]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: num - sum(counts)]:
        counts[i] += 1
    for i, c in enumerate(counts):  # move one sample into an empty part from the largest part
        if c == 0 and num >= len(counts):
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    return counts


def _layout_files(out: Path, layout: str) -> set[Path]:
    """The files under ``out`` that the reader of ``layout`` would pick up as samples."""
    if layout == "glas":
        folders, stem = [out], re.compile(r"^(train|testA|testB)_\d+(_anno)?$")
    elif layout == "crag":
        folders = [out / s / d for s in ("train", "valid") for d in ("Images", "Annotation")]
        stem = None
    else:
        folders, stem = [out / "images", out / "masks"], None
    return {
        p for folder in folders if folder.is_dir() for p in _images_in(folder) if stem is None or stem.match(p.stem)
    }


def write_synthetic(
    out: str | Path,
    layout: str,
    num: int,
    preset: str = "medium",
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    overwrite: bool = False,
    zoom: float = 1.0,
) -> Path:
    """Write ``num`` synthetic gland images to ``out`` in the GlaS, CRAG or plain-folder layout.

    ``glas``: ``train_N.bmp``/``train_N_anno.bmp``, ``testA_N``, ``testB_N`` in GlaS's
    proportions (85:60:20) and a ``Grade.csv`` with GlaS's padded header. ``crag``:
    ``train|valid/Images/*.png`` with ``Annotation/*.png`` (173:40). ``folder``:
    ``images/synth_N.png`` with ``masks/synth_N.png``. Sample ``i`` of the whole run is
    ``SyntheticGlands(preset, size, seed).draw(i)``.

    Files of the layout already in ``out`` that this run would not rewrite (left by an
    earlier run with a larger ``num``, say) would be read back as samples of this run, so
    they are an error unless ``overwrite`` is set, which deletes them first. Rewriting the
    same files (the same command again) is always allowed.

    Args:
        out: the output folder (created).
        layout: ``"glas"``, ``"crag"`` or ``"folder"``.
        num: the number of images over all splits.
        preset: the :class:`~examples.dpfr_gland.synthetic.SyntheticGlands` preset.
        size: image side in pixels, or ``(height, width)`` (GlaS's most common: ``(522, 775)``).
        seed: the generator seed.
        overwrite: delete the layout's files in ``out`` that this run does not rewrite.
        zoom: draw at ``size / zoom`` and enlarge by ``zoom`` (images bilinear, label maps by
            nearest neighbour), so glands are ``zoom`` times the generator's size: about 43 px
            across at 1; at 1.9 the median gland area is about real GlaS's at 20x (10 400 px^2).
            The scale path of the recipe is exercised the way real data will exercise it.

    Returns:
        ``out`` as a path.

    Raises:
        ValueError: unknown ``layout``, or ``num < 1``.
        FileExistsError: ``out`` holds files of the layout that this run would not rewrite
            and ``overwrite`` is not set (names one of them).

    Example:
        >>> import tempfile
        >>> root = write_synthetic(tempfile.mkdtemp(), "glas", 3, preset="easy", size=32)
        >>> [len(GlaSDataset(root, split)) for split in ("train", "testA", "testB")]
        [1, 1, 1]
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    out = Path(out)
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if not (math.isfinite(zoom) and zoom >= 1):
        raise ValueError(f"zoom must be a number >= 1, got {zoom!r}")
    drawn = (max(32, round(shape[0] / zoom)), max(32, round(shape[1] / zoom)))
    generator = SyntheticGlands(preset=preset, size=drawn, seed=seed)

    def draw(index: int) -> Any:
        sample = generator.draw(index)
        if drawn == shape:
            return sample
        from .scale import resize_image, resize_labels

        return sample._replace(
            image=resize_image(sample.image, shape), instances=resize_labels(sample.instances, shape)
        )

    if layout == "glas":
        splits = list(zip(_GLAS_SPLITS, _split_counts(num, (85, 60, 20))))
    elif layout == "crag":
        splits = list(zip(("train", "valid"), _split_counts(num, (173, 40))))
    elif layout == "folder":
        splits = [("synth", num)]
    else:
        raise ValueError(f"layout must be 'glas', 'crag' or 'folder', got {layout!r}")
    planned = set()
    for split, count in splits:
        for n in range(1, count + 1):
            if layout == "glas":
                planned |= {out / f"{split}_{n}.bmp", out / f"{split}_{n}_anno.bmp"}
            elif layout == "crag":
                planned |= {
                    out / split / "Images" / f"{split}_{n}.png",
                    out / split / "Annotation" / f"{split}_{n}.png",
                }
            else:
                planned |= {out / "images" / f"synth_{n}.png", out / "masks" / f"synth_{n}.png"}
    stale = sorted(_layout_files(out, layout) - planned, key=lambda p: _natural_key(str(p)))
    if stale and not overwrite:
        raise FileExistsError(
            f"{out} already holds {len(stale)} {layout}-layout file(s) this run would not rewrite, e.g. "
            f"{stale[0]}; they would be read as samples of this run. Write to an empty folder or "
            f"pass overwrite=True (--overwrite) to delete them"
        )
    for path in stale:
        path.unlink()
    rows = []
    index = 0
    for split, count in splits:
        for n in range(1, count + 1):
            sample = draw(index)
            if layout == "glas":
                write_image(out / f"{split}_{n}.bmp", sample.image)
                write_instances(out / f"{split}_{n}_anno.bmp", sample.instances)
                subtype = "adenomatous" if sample.grade == "malignant" else "healthy"
                rows.append(f"{split}_{n},{index // 4 + 1},{sample.grade},{subtype}")
            elif layout == "crag":
                write_image(out / split / "Images" / f"{split}_{n}.png", sample.image)
                write_instances(out / split / "Annotation" / f"{split}_{n}.png", sample.instances)
            else:
                write_image(out / "images" / f"synth_{n}.png", sample.image)
                write_instances(out / "masks" / f"synth_{n}.png", sample.instances)
            index += 1
    if layout == "glas":
        header = "name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)"
        (out / "Grade.csv").write_text("\n".join([header, *rows]) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The data command line: ``synth`` writes synthetic glands to disk, ``sheet`` a contact sheet.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``); ``--help`` lists them.

    Returns:
        The exit status, 0.

    Raises:
        SystemExit: bad arguments, or ``synth`` into a folder holding files of the layout
            that it would not rewrite, without ``--overwrite`` (see :func:`write_synthetic`);
            argparse prints the message.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> main(["synth", "--out", out, "--layout", "folder", "--num", "2", "--size", "32"])
        wrote 2 synthetic 'medium' samples in the folder layout to ...
        0
    """
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write synthetic glands in the GlaS, CRAG or folder layout")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--layout", choices=("glas", "crag", "folder"), default="glas")
    synth.add_argument("--num", type=int, default=40, help="number of images in all splits together")
    synth.add_argument("--sheet", help="also write a contact sheet PNG of the first samples here")
    synth.add_argument(
        "--overwrite", action="store_true", help="delete files of the layout in --out left by an earlier, larger run"
    )
    synth.add_argument(
        "--zoom",
        type=float,
        default=1.0,
        help="glands this many times the generator's size (1.9: median gland area about GlaS's 10 400 px^2 at 20x)",
    )
    synth.add_argument(
        "--shape",
        default="",
        metavar="HxW",
        help="image size as HEIGHTxWIDTH instead of a square --size (GlaS: 522x775)",
    )
    sheet = commands.add_parser("sheet", help="write a contact sheet PNG of synthetic samples with outlines")
    sheet.add_argument("--out", required=True, help="the PNG to write")
    sheet.add_argument("--num", type=int, default=4, help="samples per preset")
    for command in (synth, sheet):
        command.add_argument("--preset", default=None, help="easy, medium or hard (sheet: all three by default)")
        command.add_argument("--size", type=int, default=256)
        command.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "synth":
        if args.num < 1:
            parser.error(f"--num must be >= 1, got {args.num}")
        preset = args.preset or "medium"
        size: int | tuple[int, int] = args.size
        if args.shape:
            try:
                height, width = (int(part) for part in args.shape.lower().split("x"))
            except ValueError:
                parser.error(f"--shape must be HEIGHTxWIDTH, e.g. 522x775, got {args.shape!r}")
            size = (height, width)
        try:
            out = write_synthetic(
                args.out,
                args.layout,
                args.num,
                preset=preset,
                size=size,
                seed=args.seed,
                overwrite=args.overwrite,
                zoom=args.zoom,
            )
        except (FileExistsError, ValueError) as error:
            parser.error(str(error))
        print(f"wrote {args.num} synthetic '{preset}' samples in the {args.layout} layout to {out}")
        if args.sheet:
            write_contact_sheet(args.sheet, presets=(preset,), num=min(args.num, 4), size=args.size, seed=args.seed)
            print(f"wrote contact sheet {args.sheet}")
    else:
        presets = (args.preset,) if args.preset else ("easy", "medium", "hard")
        write_contact_sheet(args.out, presets=presets, num=args.num, size=args.size, seed=args.seed)
        print(f"wrote contact sheet {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
