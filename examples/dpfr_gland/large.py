"""Images of any size: class maps by tiles, blended with a window, in memory bounded by one tile row.

:func:`predict_large` reads the image region by region (a NumPy array, a memory-mapped array, or
any reader with ``shape`` and ``read_region(y, x, h, w)``), runs the network on batches of tiles,
blends overlapping tiles with a Gaussian or cosine window (so no seam shows where tiles meet) and
writes the arg-max class map — and, if asked, the winning class's probability — row band by row
band. Only one band of ``K x tile x W`` accumulated probabilities is held at a time, so memory
grows with the image's width, not its area; the outputs can themselves be memory-mapped arrays.

Peers: MONAI's ``sliding_window_inference`` (Gaussian blending of dense outputs, whole image in
memory), TIAToolbox's semantic segmentor (tile-by-tile reading with margins).
"""

from __future__ import annotations

__all__ = [
    "ArrayRegions",
    "ScaledRegions",
    "SlideRegions",
    "WINDOWS",
    "instances_by_strips",
    "predict_large",
    "tiff_regions",
    "window_weights",
]

import math
from typing import Any, Protocol

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from densessl.checks import check_int_in_range

from .augment import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from .scale import resize_image, scaled_size
from .targets import BACKGROUND, INTERIOR
from .tiling import STRIDE, WINDOWS, TileSpec, blend_tiles, model_stride, window_weights


class RegionReader(Protocol):
    """What :func:`predict_large` reads: a ``shape`` ``(H, W, 3)`` and RGB regions."""

    shape: tuple[int, ...]

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray: ...


class ArrayRegions:
    """:class:`RegionReader` over an RGB array held in memory or memory-mapped (``np.memmap``,
    ``np.load(..., mmap_mode="r")``): only the regions asked for are read.

    Args:
        array: the image.

    Shapes:
        - array: ``[H, W, 3]`` uint8
        - read_region: ``[h, w, 3]`` uint8

    Example:
        >>> import numpy as np
        >>> ArrayRegions(np.zeros((4, 5, 3), np.uint8)).read_region(1, 2, 2, 3).shape
        (2, 3, 3)
    """

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"image must be a uint8 [H, W, 3] array, got {array.dtype} {array.shape}")
        self.array = array
        self.shape = array.shape

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[y : y + h, x : x + w])


class SlideRegions:
    """:class:`RegionReader` over an OpenSlide-style slide (``openslide.OpenSlide``, TIAToolbox's
    readers): anything with ``dimensions`` ``(W, H)`` and ``read_region((x, y), level, (w, h))``
    returning an RGBA picture. Level 0 (full resolution) by default.

    Args:
        slide: the opened slide.
        level: the pyramid level (its size is ``slide.level_dimensions[level]`` when the slide
            has levels).

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> class Fake:
        ...     dimensions = (6, 4)
        ...     def read_region(self, location, level, size):
        ...         return Image.new("RGBA", size, (10, 20, 30, 255))
        >>> SlideRegions(Fake()).read_region(1, 2, 2, 3)[0, 0].tolist()
        [10, 20, 30]
    """

    def __init__(self, slide: Any, level: int = 0) -> None:
        self.slide, self.level = slide, level
        levels = getattr(slide, "level_dimensions", None)
        width, height = levels[level] if levels else slide.dimensions
        self.shape = (int(height), int(width), 3)
        self._scale = getattr(slide, "level_downsamples", [1.0] * (level + 1))[level]

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        # OpenSlide takes the location in level-0 pixels and the size in the level's pixels
        location = (int(round(x * self._scale)), int(round(y * self._scale)))
        picture = self.slide.read_region(location, self.level, (w, h))
        return np.ascontiguousarray(np.asarray(picture.convert("RGB"), dtype=np.uint8))


def tiff_regions(path: str) -> ArrayRegions:
    """A TIFF too large to load, memory-mapped by ``tifffile`` (the ``large`` extra): an
    uncompressed, contiguous RGB TIFF is read region by region straight from the file.

    Raises:
        ImportError: tifffile is not installed (``pip install "densessl[large]"``-style extra
            of the recipe: ``tifffile``).
        ValueError: the TIFF is compressed or tiled, so it cannot be memory-mapped (convert it,
            or open it with OpenSlide and :class:`SlideRegions`).
    """
    try:
        import tifffile
    except ImportError as error:  # pragma: no cover - the test extra installs it
        raise ImportError("tiff_regions needs tifffile: pip install tifffile") from error
    try:
        array = tifffile.memmap(path, mode="r")
    except ValueError as error:
        raise ValueError(
            f"{path} cannot be memory-mapped ({error}): it is compressed or tiled; convert it to "
            f"an uncompressed TIFF or .npy, or read it with OpenSlide (SlideRegions)"
        ) from error
    return ArrayRegions(array)


def _reader(image: Any) -> Any:
    if isinstance(image, np.ndarray):
        return ArrayRegions(image)
    if not (hasattr(image, "shape") and callable(getattr(image, "read_region", None))):
        raise TypeError(
            f"image must be a uint8 [H, W, 3] array or have shape and read_region(y, x, h, w), "
            f"got {type(image).__name__}"
        )
    return image


class ScaledRegions:
    """:class:`RegionReader` of another reader at ``scale``: region ``(y, x, h, w)`` at the network's
    scale is the native region under it, resampled (:func:`~examples.dpfr_gland.scale.resize_image`:
    area averaging when shrinking). Only the native pixels a region needs are read.

    Args:
        reader: the native reader (:class:`ArrayRegions`, :class:`SlideRegions`, ...).
        scale: network pixels per native pixel.

    Shapes:
        - shape: ``scaled_size(H, W, scale)`` + ``(3,)``
        - read_region: ``[h, w, 3]`` uint8

    Example:
        >>> import numpy as np
        >>> scaled = ScaledRegions(ArrayRegions(np.zeros((100, 80, 3), np.uint8)), 0.5)
        >>> scaled.shape, scaled.read_region(10, 10, 20, 30).shape
        ((50, 40, 3), (20, 30, 3))
    """

    def __init__(self, reader: Any, scale: float) -> None:
        self.reader, self.scale = reader, scale
        self.native = (int(reader.shape[0]), int(reader.shape[1]))
        self.shape = (*scaled_size(*self.native, scale, minimum=min(STRIDE, *self.native)), 3)

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        fy, fx = self.native[0] / self.shape[0], self.native[1] / self.shape[1]
        y0, x0 = int(math.floor(y * fy)), int(math.floor(x * fx))
        y1, x1 = min(self.native[0], int(math.ceil((y + h) * fy))), min(self.native[1], int(math.ceil((x + w) * fx)))
        region = np.asarray(self.reader.read_region(y0, x0, y1 - y0, x1 - x0))
        return resize_image(np.ascontiguousarray(region, dtype=np.uint8), (h, w))


def predict_large(
    model: nn.Module,
    image: Any,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    window: str = "gaussian",
    amp: bool = True,
    out: np.ndarray | None = None,
    probability_out: np.ndarray | None = None,
    progress: bool = False,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    scale: float = 1.0,
) -> np.ndarray:
    """The arg-max class map of an image of any size, tile by tile, in bounded memory.

    The tiles are those of the recipe's one sliding window,
    :func:`~examples.dpfr_gland.tiling.blend_tiles` (smooth blending, no seams); each band of
    rows it finishes is reduced to its arg-max (and the winning probability) and written to
    ``out`` (and ``probability_out``), so only one band of ``K x tile x W`` floats is held.
    With ``scale``, the network works on :class:`ScaledRegions` and each finished band's class
    map is mapped back to the native grid by nearest neighbour (the in-memory path,
    :func:`~examples.dpfr_gland.evaluate.predict_probabilities`, resamples the probabilities
    bilinearly instead; the two agree up to a native pixel along class borders).

    Args:
        model: a segmentation network ``[b, 3, h, w] -> [b, K, h, w]`` logits (or an output
            with ``.logits``).
        image: a uint8 ``[H, W, 3]`` array (memory-mapped or not) or a reader with ``shape``
            and ``read_region(y, x, h, w) -> uint8 [h, w, 3]``.
        tile: tile side at the network's scale, a positive multiple of 32.
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile``.
        batch_size: tiles per forward pass.
        window: blending window, ``"gaussian"`` (default), ``"cosine"`` or ``"uniform"``.
        amp: autocast on CUDA.
        out: where to write the class map (e.g. an ``np.memmap``); a new array if ``None``.
        probability_out: where to write the winning class's blended probability, or ``None``.
        progress: a tqdm bar over tiles.
        mean: normalisation mean.
        std: normalisation standard deviation.
        scale: network pixels per native pixel.

    Shapes:
        - image: ``[H, W, 3]`` uint8
        - out, returns: ``[H, W]`` uint8 (class indices ``0..K-1``), native grid
        - probability_out: ``[H, W]`` float16 or float32

    Returns:
        The class map (``out`` itself when given).

    Raises:
        TypeError: an image that is neither an array nor a reader.
        ValueError: options out of range; outputs of the wrong shape; a model whose logits do not
            match its tiles; a scale that leaves the image below the network's stride.

    Example:
        >>> import numpy as np, torch
        >>> model = torch.nn.Conv2d(3, 3, kernel_size=1)
        >>> predict_large(model, np.zeros((70, 90, 3), np.uint8), tile=32, overlap=8).shape
        (70, 90)
    """
    reader = _reader(image)
    height, width = int(reader.shape[0]), int(reader.shape[1])
    spec = TileSpec(tile, overlap, batch_size, window, amp)
    spec.check(model_stride(model))  # before any output is written
    if out is None:
        out = np.empty((height, width), np.uint8)
    for name, array in (("out", out), ("probability_out", probability_out)):
        if array is not None and tuple(array.shape) != (height, width):
            raise ValueError(f"{name} must have shape {(height, width)}, got {tuple(array.shape)}")
    network = reader if scale == 1 else ScaledRegions(reader, scale)
    net_h, net_w = int(network.shape[0]), int(network.shape[1])
    # native row / column -> the network pixel under its centre (identity at scale 1)
    source_rows = np.minimum(((np.arange(height) + 0.5) * net_h / height).astype(np.int64), net_h - 1)
    source_cols = torch.as_tensor(np.minimum(((np.arange(width) + 0.5) * net_w / width).astype(np.int64), net_w - 1))

    def read(y: int, x: int, h: int, w: int) -> torch.Tensor:
        region = np.asarray(network.read_region(y, x, h, w))
        if region.shape != (h, w, 3) or region.dtype != np.uint8:
            raise ValueError(
                f"read_region({y}, {x}, {h}, {w}) must give a uint8 [{h}, {w}, 3] array, "
                f"got {region.dtype} {region.shape}"
            )
        return to_tensor(region, mean=mean, std=std)

    for top, probs in blend_tiles(
        model,
        net_h,
        net_w,
        read,
        spec,
        progress=progress,
    ):
        best, classes = probs.max(dim=0)
        rows = np.flatnonzero((source_rows >= top) & (source_rows < top + probs.shape[1]))
        if rows.size == 0:  # enlarging: a band of network rows no native row looks at
            continue
        pick = torch.as_tensor(source_rows[rows] - top)
        cols = source_cols.to(classes.device)
        out[rows[0] : rows[-1] + 1] = classes[pick][:, cols].to(torch.uint8).cpu().numpy()
        if probability_out is not None:
            probability_out[rows[0] : rows[-1] + 1] = best[pick][:, cols].cpu().numpy().astype(probability_out.dtype)
    return out


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def instances_by_strips(
    classes: np.ndarray,
    min_size: int = 16,
    dilation: int = 2,
    connectivity: int = 1,
    strip: int = 1024,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`~examples.dpfr_gland.targets.classes_to_instances` of a class map too large to
    label at once, strip by strip; glands cut by a strip border stay whole.

    Pass 1 labels the interior components of each strip of ``strip`` rows and joins the labels
    that touch across a border (union-find over the two border rows, 4- or 8-connected as
    ``connectivity`` says), summing their sizes and keeping their first pixel, so ``min_size``
    applies to whole glands and glands are numbered ``1..n`` in scan order of their first pixel,
    as untiled. Pass 2 grows each strip's glands by ``dilation`` into non-background pixels, each
    pixel to its nearest gland, on the strip plus ``dilation + 1`` rows of its neighbours: every
    interior pixel within reach is in view. The result equals the untiled one up to ties of
    equal distance between two glands.

    Args:
        classes: the class map (0 background, 1 interior, 2 contour), e.g. of :func:`predict_large`;
            a memory-mapped array works, it is read strip by strip.
        min_size: smallest gland interior kept, in pixels.
        dilation: growth of the interiors back to glands, in pixels.
        connectivity: 1 (4-connected) or 2 (8-connected) interiors.
        strip: rows per strip (memory is about ``strip + 2 (dilation + 1)`` rows of a few arrays).
        out: where to write the instances (e.g. an ``np.memmap`` of int32); new if ``None``.

    Shapes:
        - classes: ``[H, W]`` integer in ``0..2``
        - out, returns: ``[H, W]`` int32, 0 = background, ``1..n`` the glands

    Example:
        >>> import numpy as np
        >>> from examples.dpfr_gland.targets import classes_to_instances
        >>> classes = np.zeros((40, 12), np.uint8); classes[3:37, 3:9] = 2; classes[5:35, 5:7] = 1
        >>> bool((instances_by_strips(classes, min_size=4, strip=8) == classes_to_instances(classes, 4)).all())
        True
    """
    height, width = classes.shape
    strip = check_int_in_range("strip", strip, 1)
    structure = ndimage.generate_binary_structure(2, connectivity)
    if out is None:
        out = np.zeros((height, width), np.int32)
    bounds = [(y, min(y + strip, height)) for y in range(0, height, strip)]

    def local(k: int) -> tuple[np.ndarray, int]:
        y0, y1 = bounds[k]
        return ndimage.label(np.asarray(classes[y0:y1]) == INTERIOR, structure=structure)

    # pass 1: provisional ids (strip offset + local label), sizes, first pixels, joins at borders
    offsets, sizes, firsts = [], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
    total = 1  # id 0: background
    previous_last_row: np.ndarray | None = None
    joins: list[tuple[int, int]] = []
    for k, (y0, y1) in enumerate(bounds):
        labels, count = local(k)
        offsets.append(total)
        global_labels = np.where(labels > 0, labels + total - 1, 0)
        flat = np.arange(y0, y1)[:, None] * width + np.arange(width)[None, :]
        sizes.append(np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.int64))
        first = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(first, labels.ravel(), flat.ravel())
        firsts.append(first[1:])
        if previous_last_row is not None:
            top = global_labels[0]
            shifts = (0,) if connectivity == 1 else (-1, 0, 1)
            for shift in shifts:
                above = np.roll(previous_last_row, shift)
                if shift == -1:
                    above[-1] = 0
                elif shift == 1:
                    above[0] = 0
                touching = (above > 0) & (top > 0)
                joins += list(zip(above[touching].tolist(), top[touching].tolist()))
        previous_last_row = global_labels[-1].copy()
        total += count
    union = _UnionFind(total)
    for a, b in set(joins):
        union.union(a, b)
    roots = np.array([union.find(i) for i in range(total)], dtype=np.int64)
    size = np.bincount(roots, weights=np.concatenate(sizes).astype(np.float64), minlength=total)
    first = np.full(total, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, roots, np.concatenate(firsts))
    kept = np.flatnonzero((size >= min_size) & (np.arange(total) == roots) & (np.arange(total) > 0))
    kept = kept[np.argsort(first[kept], kind="stable")]
    final_of_root = np.zeros(total, np.int32)
    final_of_root[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    final = final_of_root[roots]  # provisional id -> final id (0: dropped)

    def interiors(k: int) -> np.ndarray:
        labels, _ = local(k)
        return np.where(labels > 0, final[labels + offsets[k] - 1], 0).astype(np.int32)

    # pass 2: grow each strip's glands, seeing dilation + 1 rows of its neighbours
    margin = dilation + 1
    cache: dict[int, np.ndarray] = {}
    for k, (y0, y1) in enumerate(bounds):
        for j in list(cache):
            if j < k - 1:
                del cache[j]
        lo, hi = max(0, y0 - margin), min(height, y1 + margin)
        parts = []
        for j, (b0, b1) in enumerate(bounds):
            if b1 > lo and b0 < hi:
                if j not in cache:
                    cache[j] = interiors(j)
                parts.append(cache[j][max(lo, b0) - b0 : min(hi, b1) - b0])
        instances = np.concatenate(parts)
        window = np.asarray(classes[lo:hi])
        if dilation > 0 and instances.any():
            distance, (rows, cols) = ndimage.distance_transform_edt(instances == 0, return_indices=True)
            grow = (instances == 0) & (distance <= dilation) & (window != BACKGROUND)
            instances[grow] = instances[rows[grow], cols[grow]]
        out[y0:y1] = instances[y0 - lo : y1 - lo]
    return out
