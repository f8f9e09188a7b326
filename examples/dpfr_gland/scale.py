"""The scale the network works at: resampling images and label maps, and a dataset at that scale.

A network sees only what its crop holds. GlaS glands are about 100 px across at the release's
20x; a 96-px crop at that scale never holds a whole one. The recipe therefore works at a
``scale`` (network pixels per native pixel, the config's ``scale``): training images are
resampled to it (area averaging for images, nearest for label maps), predictions are made at
it and mapped back to the native grid, and every score is computed at native resolution
against the native label maps (the GlaS protocol). Where an image states its microns per pixel
(a TIFF's resolution tags, a slide's ``mpp``), a ``target_mpp`` gives the scale per image:
``scale = image_mpp / target_mpp``.

Peers state it the same way: TIAToolbox reads slides at a ``resolution`` in ``units``
(``mpp``, ``power``, ``baseline``) and maps outputs back to the baseline grid.
"""

from __future__ import annotations

__all__ = ["ScaledDataset", "image_mpp", "resize_image", "resize_labels", "scale_for", "scaled_size"]

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Pillow resamplers: area averaging when shrinking (the box filter), bilinear when enlarging.
_SHRINK, _ENLARGE = Image.Resampling.BOX, Image.Resampling.BILINEAR


def _check_scale(scale: float, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {scale!r}")
    return float(scale)


def scaled_size(height: int, width: int, scale: float, minimum: int = 1, what: str = "image") -> tuple[int, int]:
    """The size of a ``height x width`` picture at ``scale`` (rounded, each side at least 1).

    Args:
        height: native height.
        width: native width.
        scale: network pixels per native pixel, ``> 0``.
        minimum: the smallest side the caller can work with (e.g. the network's stride, 32).
        what: the picture's name, for the error.

    Returns:
        ``(height, width)`` at ``scale``.

    Raises:
        ValueError: ``scale`` is not a positive number, or a side at ``scale`` is below ``minimum``
            (the message names the picture, its size and the scale).

    Example:
        >>> scaled_size(522, 775, 0.4)
        (209, 310)
        >>> scaled_size(60, 80, 0.25, minimum=32)
        Traceback (most recent call last):
        ...
        ValueError: scale=0.25 leaves image of 60x80 px at 15x20 px, smaller than 32 px (the network's stride);
        use a larger scale
    """
    scale = _check_scale(scale)
    size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
    if min(size) < minimum:
        raise ValueError(
            f"scale={scale:g} leaves {what} of {height}x{width} px at {size[0]}x{size[1]} px, smaller "
            f"than {minimum} px (the network's stride); use a larger scale"
        )
    return size


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB image resampled to ``size``: area averaging when shrinking, bilinear when enlarging.

    Args:
        image: the RGB image.
        size: ``(height, width)`` wanted.

    Shapes:
        - image: ``[H, W, 3]`` uint8
        - returns: ``[height, width, 3]`` uint8 (the input itself when the size is unchanged)

    Raises:
        ValueError: ``image`` is not ``[H, W, 3]`` uint8.

    Example:
        >>> import numpy as np
        >>> image = np.zeros((4, 4, 3), np.uint8); image[:, :2] = 200
        >>> resize_image(image, (2, 2))[..., 0].tolist()
        [[200, 0], [200, 0]]
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a uint8 [H, W, 3] array, got {got}")
    if tuple(image.shape[:2]) == tuple(size):
        return image
    shrink = size[0] * size[1] <= image.shape[0] * image.shape[1]
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((size[1], size[0]), _SHRINK if shrink else _ENLARGE)
    return np.asarray(resized, dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map (instances or classes) resampled to ``size`` by nearest neighbour: labels are
    moved, never blended. Pixel ``(i, j)`` of the result takes the native pixel under its centre.

    Args:
        labels: the label map.
        size: ``(height, width)`` wanted.

    Shapes:
        - labels: ``[H, W]`` integer
        - returns: ``[height, width]``, the same dtype

    Raises:
        ValueError: ``labels`` is not 2-D.

    Example:
        >>> import numpy as np
        >>> resize_labels(np.array([[1, 1, 2, 2], [3, 3, 4, 4]]), (1, 2)).tolist()
        [[3, 4]]
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D map [H, W], got shape {labels.shape}")
    if tuple(labels.shape) == tuple(size):
        return labels
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(np.int64), labels.shape[1] - 1)
    return np.ascontiguousarray(labels[rows[:, None], cols[None, :]])


def image_mpp(path: str | Path) -> float | None:
    """The microns per pixel an image file states, or ``None`` when it states none.

    Read from a TIFF's ``XResolution`` / ``ResolutionUnit`` tags (pixels per centimetre or inch)
    or from the ``dpi`` Pillow reports for other formats, when it is not the 72/96 dpi that
    screen images carry by default (those say nothing about a microscope). Slides opened with
    OpenSlide state theirs as ``openslide.mpp-x``.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> path = tempfile.mktemp(suffix=".tif")
        >>> Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path, resolution=40000, resolution_unit="cm")
        >>> round(image_mpp(path), 3)
        0.25
    """
    with Image.open(path) as image:
        tags = getattr(image, "tag_v2", None)
        if tags is not None and 282 in tags:
            resolution, unit = float(tags[282]), int(tags.get(296, 2))
            per_micron = {2: 25400.0, 3: 10000.0}.get(unit)
            if per_micron and resolution > 0 and resolution not in (72.0, 96.0):
                return per_micron / resolution
            return None
        dpi = image.info.get("dpi")
    if dpi and float(dpi[0]) > 0 and round(float(dpi[0])) not in (72, 96):
        return 25400.0 / float(dpi[0])
    return None


def scale_for(scale: float, target_mpp: float = 0.0, mpp: float | None = None) -> float:
    """The scale of one image: ``mpp / target_mpp`` when a target is set and the image states its
    microns per pixel, else ``scale``.

    Example:
        >>> scale_for(0.5), scale_for(0.5, target_mpp=1.0, mpp=0.25), scale_for(0.5, target_mpp=1.0)
        (0.5, 0.25, 0.5)
    """
    if target_mpp > 0 and mpp:
        return _check_scale(mpp / target_mpp, "mpp / target_mpp")
    return _check_scale(scale)


class ScaledDataset:
    """A dataset of ``(image, instances)`` pairs at ``scale``: images area-averaged, label maps by
    nearest neighbour (:func:`resize_image`, :func:`resize_labels`). Resampled pairs are kept in
    memory (``cache`` of them), since training draws the same images again and again.

    Args:
        base: a map-style dataset of ``(image uint8 [H, W, 3], instances [H, W])``.
        scale: network pixels per native pixel.
        minimum: the smallest side allowed at ``scale`` (e.g. the crop size).
        cache: how many resampled pairs to keep.

    Shapes:
        - ``dataset[i]``: ``(image uint8 [h, w, 3], instances [h, w])``, ``h, w = scaled_size(H, W, scale)``

    Raises:
        ValueError: as :func:`scaled_size` when an image is too small at ``scale`` (names it).

    Example:
        >>> import numpy as np
        >>> data = ScaledDataset([(np.zeros((100, 60, 3), np.uint8), np.ones((100, 60), np.int32))], 0.5)
        >>> [a.shape for a in data[0]]
        [(50, 30, 3), (50, 30)]
    """

    def __init__(self, base: Any, scale: float, minimum: int = 1, cache: int = 512) -> None:
        self.base, self.scale, self.minimum = base, _check_scale(scale), minimum
        self.names = getattr(base, "names", None)
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def _resampled(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, instances = self.base[index]
        name = self.names[index] if self.names is not None else f"image {index}"
        size = scaled_size(*np.asarray(instances).shape, self.scale, self.minimum, what=f"{name}")
        return resize_image(np.asarray(image), size), resize_labels(instances, size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        pair = self._cache.get(index)
        if pair is None:
            pair = self._resampled(index)
            if len(self._cache) < self.cache:
                self._cache[index] = pair
        return pair

    def __getattr__(self, name: str) -> Any:  # grades, minority, ... of the base dataset
        if name.startswith("_") or name in ("base", "scale", "minimum", "names", "cache"):
            raise AttributeError(name)
        return getattr(self.base, name)
