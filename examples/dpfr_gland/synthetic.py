"""Synthetic H&E gland images with instance maps: data every demo and test can use anywhere.

An image is built in four steps, all vectorised with numpy and :mod:`scipy.ndimage`:

1. *Layout.* Glands are radial-Fourier-perturbed ellipses; in harder presets some are placed
   overlapping a neighbour and the overlap is split between them (each pixel goes to the gland
   whose normalised radius it is deepest inside), so the two instances share a boundary.
   Gland-like *distractors* (pseudo-glands, vessels with red cells, lymphoid clusters, pale
   spaces) are placed in the stroma; they are **not** in the instance map.
2. *Tissue.* From each structure's depth below its outline: an epithelial ring with
   hematoxylin-rich nuclei along its basal side (stratified and enlarged in malignant glands),
   goblet vacuoles, a pale lumen; eosin-pink fibrous stroma with scattered fibroblasts and
   lymphocytes. Nuclei are stamped from a bank of oriented ellipses (no per-pixel loops).
3. *Stain mixing* (Beer-Lambert): optical density ``OD = c_H * h + c_E * e`` with per-image
   jitter of the stain vectors ``h``, ``e`` and of the staining strength; ``RGB = 255 exp(-OD)``.
4. *Optics.* Blur and sensor noise.

Presets run from ``easy`` (few separated glands, clear contrast) to ``hard`` (crowded and
touching glands, many distractors, weak contrast, strong stain variation). A 256x256 sample
takes a few tens of milliseconds on one CPU core (``benchmarks/bench_synthetic.py``).
"""

from __future__ import annotations

__all__ = [
    "GlandPreset",
    "GlandSample",
    "PRESETS",
    "SyntheticGlands",
    "contact_sheet",
    "draw_outlines",
    "instance_boundaries",
    "stain_mix",
    "write_contact_sheet",
]

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

# Ruifrok & Johnston (2001) optical-density vectors of hematoxylin and eosin (RGB).
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_EOSIN = np.array([0.072, 0.990, 0.105])


@dataclass(frozen=True)
class GlandPreset:
    """The knobs of one difficulty level. Lengths are in pixels, counts per 256x256 area.

    Args:
        glands: range of the number of glands.
        radius: range of gland radii.
        irregularity: amplitude of the Fourier perturbation of the outline (0 = ellipse).
        touching: probability that a gland is placed overlapping an earlier one (then split).
        gap: least stroma between glands that are not placed touching.
        distractors: range of the number of gland-like distractors in the stroma.
        contrast: 1 = textbook lumen/epithelium/stroma contrast; lower blends glands into stroma.
        stain_jitter: standard deviation of the per-image perturbation of the stain vectors.
        blur: Gaussian blur sigma.
        noise: standard deviation of the pixel noise, as a fraction of 255.
        malignant: probability that an image is malignant (irregular glands, thick stratified
            epithelium, small lumens).

    Example:
        >>> import dataclasses
        >>> crowded = dataclasses.replace(PRESETS["hard"], glands=(14, 16), distractors=(0, 0))
        >>> bool(SyntheticGlands(crowded, size=64).draw(0).distractors.any())
        False
    """

    glands: tuple[int, int]
    radius: tuple[float, float]
    irregularity: float
    touching: float
    gap: float
    distractors: tuple[int, int]
    contrast: float
    stain_jitter: float
    blur: float
    noise: float
    malignant: float


#: The presets, from easy to hard.
PRESETS: dict[str, GlandPreset] = {
    "easy": GlandPreset(
        glands=(3, 5),
        radius=(28, 44),
        irregularity=0.08,
        touching=0.0,
        gap=10,
        distractors=(0, 1),
        contrast=1.0,
        stain_jitter=0.02,
        blur=0.6,
        noise=0.01,
        malignant=0.2,
    ),
    "medium": GlandPreset(
        glands=(4, 7),
        radius=(24, 48),
        irregularity=0.14,
        touching=0.3,
        gap=4,
        distractors=(2, 4),
        contrast=0.8,
        stain_jitter=0.05,
        blur=0.8,
        noise=0.02,
        malignant=0.5,
    ),
    "hard": GlandPreset(
        glands=(7, 11),
        radius=(22, 50),
        irregularity=0.2,
        touching=0.6,
        gap=1,
        distractors=(4, 7),
        contrast=0.6,
        stain_jitter=0.09,
        blur=1.1,
        noise=0.035,
        malignant=0.6,
    ),
}


class GlandSample(NamedTuple):
    """One synthetic image with its ground truth: ``(image, instances, distractors, grade)``."""

    #: ``uint8 [H, W, 3]`` RGB image.
    image: np.ndarray
    #: ``int32 [H, W]``; 0 = background, glands ``1..n`` (contiguous, each non-empty).
    instances: np.ndarray
    #: ``bool [H, W]``; pixels of gland-like distractors (all background in ``instances``).
    distractors: np.ndarray
    #: ``"benign"`` or ``"malignant"``.
    grade: str


def stain_mix(c_h: np.ndarray, c_e: np.ndarray, h: np.ndarray = _HEMATOXYLIN, e: np.ndarray = _EOSIN) -> np.ndarray:
    """Beer-Lambert stain mixing: ``RGB = 255 exp(-(c_H h + c_E e))``, as float.

    Args:
        c_h: hematoxylin concentration (optical density along ``h``), ``>= 0``.
        c_e: eosin concentration, ``>= 0``.
        h: hematoxylin OD vector (R, G, B).
        e: eosin OD vector.

    Shapes:

        - c_h, c_e: ``[H, W]``, float.
        - h, e: ``[3]``.
        - returns: ``[H, W, 3]``, float (float32 for float32 input, else float64) in ``(0, 255]``.

    Returns:
        The transmitted light per channel.

    Raises:
        ValueError: ``c_h`` and ``c_e`` differ in shape.

    Example:
        >>> import numpy as np
        >>> stain_mix(np.zeros((1, 1)), np.zeros((1, 1)))
        array([[[255., 255., 255.]]])
        >>> rgb = stain_mix(np.ones((1, 1)), np.zeros((1, 1)))[0, 0]   # nuclei: blue-purple
        >>> bool(rgb[2] > rgb[0] > rgb[1])
        True
    """
    c_h, c_e = np.asarray(c_h), np.asarray(c_e)
    if c_h.shape != c_e.shape:
        raise ValueError(f"c_e must have the shape of c_h {c_h.shape}, got {c_e.shape}")
    dtype = np.result_type(c_h, c_e, np.float32)
    od = np.multiply.outer(c_h, np.asarray(h, dtype=dtype)) + np.multiply.outer(c_e, np.asarray(e, dtype=dtype))
    return np.exp(-od, out=od) * dtype.type(255.0)


def instance_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels of a labelled object that touch a pixel of another label (4-neighbourhood).

    The image border is not a boundary; between two touching objects both sides are marked.

    Args:
        labels: label map, 0 = background.

    Shapes:

        - labels: ``[H, W]``, integer.
        - returns: ``[H, W]``, bool.

    Returns:
        The inner boundary mask of every object.

    Example:
        >>> import numpy as np
        >>> labels = np.array([[0, 1, 1, 2], [0, 1, 1, 2], [0, 0, 0, 0]])
        >>> instance_boundaries(labels).astype(int)
        array([[0, 1, 1, 1],
               [0, 1, 1, 1],
               [0, 0, 0, 0]])
    """
    labels = np.asarray(labels)
    differs = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    differs[1:, :] |= vertical
    differs[:-1, :] |= vertical
    differs[:, 1:] |= horizontal
    differs[:, :-1] |= horizontal
    return differs & (labels > 0)


_PALETTE = np.array(
    [
        [255, 220, 0],
        [0, 230, 120],
        [0, 200, 255],
        [255, 80, 200],
        [255, 140, 0],
        [140, 255, 60],
        [80, 120, 255],
        [255, 60, 60],
        [200, 120, 255],
        [0, 255, 230],
    ],
    dtype=np.uint8,
)


def draw_outlines(image: np.ndarray, instances: np.ndarray, width: int = 2) -> np.ndarray:
    """Draw each instance's outline on a copy of the image, one colour per instance.

    Args:
        image: RGB image.
        instances: label map, 0 = background.
        width: outline width in pixels.

    Shapes:

        - image: ``[H, W, 3]``, ``uint8``.
        - instances: ``[H, W]``, integer.
        - returns: ``[H, W, 3]``, ``uint8``.

    Returns:
        The image with outlines.

    Raises:
        ValueError: ``image`` is not ``uint8 [H, W, 3]`` or ``instances`` is not ``[H, W]``.

    Example:
        >>> import numpy as np
        >>> out = draw_outlines(np.zeros((4, 4, 3), np.uint8), np.pad(np.ones((2, 2), int), 1), width=1)
        >>> int((out.sum(-1) > 0).sum())
        4
    """
    image, instances = np.asarray(image), np.asarray(instances)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if instances.shape != image.shape[:2]:
        raise ValueError(f"instances must have shape {image.shape[:2]} (the image's), got {instances.shape}")
    edges = instance_boundaries(instances)
    if width > 1:
        # Thicken inwards only, so that each outline pixel has the colour of the gland it lies in.
        edges = ndimage.binary_dilation(edges, iterations=width - 1) & (instances > 0)
    out = np.array(image, dtype=np.uint8, copy=True)
    out[edges] = _PALETTE[(instances[edges] - 1) % len(_PALETTE)]
    return out


# ----------------------------------------------------------------------------- nuclei stamps

_STAMP = 11  # stamp side in pixels (odd)
_ORIENTATIONS = 12
_SCALES = (0.8, 1.0, 1.25)
# Semi-axes (along, across) of each nucleus kind.
_KINDS = {
    "epithelial": (3.0, 1.6),
    "malignant": (3.6, 2.4),
    "fibroblast": (3.6, 1.0),
    "lymphocyte": (1.7, 1.7),
    "flat": (3.2, 1.0),
    "goblet": (2.4, 2.2),
}


@functools.lru_cache(maxsize=1)
def _stamp_bank() -> np.ndarray:
    """Soft filled ellipses ``[kinds, scales, orientations, S*S]`` in ``[0, 1]``."""
    half = _STAMP // 2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    angles = np.arange(_ORIENTATIONS) * math.pi / _ORIENTATIONS
    bank = np.empty((len(_KINDS), len(_SCALES), _ORIENTATIONS, _STAMP * _STAMP))
    for k, (along, across) in enumerate(_KINDS.values()):
        for s, scale in enumerate(_SCALES):
            a, b = along * scale, across * scale
            u = np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy
            v = -np.sin(angles)[:, None, None] * xx + np.cos(angles)[:, None, None] * yy
            rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            bank[k, s] = np.clip((1.0 - rho) * 2.5 + 0.5, 0.0, 1.0).reshape(_ORIENTATIONS, -1)
    return bank


def _stamp(
    canvas: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    kind: str,
    angles: np.ndarray,
    rng: np.random.Generator,
    strength: tuple[float, float] = (0.75, 1.0),
) -> None:
    """Stamp nuclei of one kind at ``(ys, xs)`` with orientations ``angles`` (radians), in place (max)."""
    if len(ys) == 0:
        return
    bank = _stamp_bank()[list(_KINDS).index(kind)]
    half = _STAMP // 2
    height, width = canvas.shape
    padded_width = width + 2 * half
    orient = np.round(np.mod(angles, math.pi) / math.pi * _ORIENTATIONS).astype(int) % _ORIENTATIONS
    scale = rng.integers(0, len(_SCALES), size=len(ys))
    values = bank[scale, orient] * rng.uniform(*strength, size=(len(ys), 1))
    oy, ox = np.mgrid[0:_STAMP, 0:_STAMP]
    offsets = (oy * padded_width + ox).ravel()
    index = (ys * padded_width + xs)[:, None] + offsets[None, :]
    padded = np.zeros((height + 2 * half) * padded_width)
    np.maximum.at(padded, index.ravel(), values.ravel())
    padded = padded.reshape(height + 2 * half, padded_width)[half:-half, half:-half]
    np.maximum(canvas, padded, out=canvas)


def _points_in(mask: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random pixel coordinates inside ``mask`` (with replacement)."""
    flat = np.flatnonzero(mask)
    if flat.size == 0 or count <= 0:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    chosen = flat[rng.integers(0, flat.size, size=count)]
    return np.divmod(chosen, mask.shape[1])


def _linear_weights(size: int, coarse: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index and weight of the right one, for each of ``size`` points on a ``coarse`` grid."""
    position = np.linspace(0.0, coarse - 1.0, size, dtype=np.float32)
    low = np.minimum(position.astype(np.intp), coarse - 2)
    return low, position - low


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Smooth zero-mean, unit-ish float32 noise with features about ``cell`` pixels across."""
    small = (max(3, math.ceil(shape[0] / cell) + 1), max(3, math.ceil(shape[1] / cell) + 1))
    coarse = rng.standard_normal(small).astype(np.float32)
    # Separable bilinear upsampling by indexing: cheaper than ndimage.zoom or BLAS here.
    ly, fy = _linear_weights(shape[0], small[0])
    lx, fx = _linear_weights(shape[1], small[1])
    rows = coarse[ly] * (1 - fy)[:, None] + coarse[ly + 1] * fy[:, None]
    field = rows[:, lx] * (1 - fx) + rows[:, lx + 1] * fx
    return (field - field.mean()) / (field.std() + 1e-6)


# ----------------------------------------------------------------------------- layout


def _blob_depth(
    shape: tuple[int, int],
    centre: np.ndarray,
    radius: float,
    aspect: float,
    angle: float,
    harmonics: np.ndarray,
    phases: np.ndarray,
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Normalised radius ``d`` (< 1 inside) of a Fourier-perturbed ellipse, over its bounding box."""
    reach = radius * (1.0 + np.abs(harmonics).sum()) + 1.0
    y0, y1 = max(0, int(centre[0] - reach)), min(shape[0], int(centre[0] + reach) + 2)
    x0, x1 = max(0, int(centre[1] - reach)), min(shape[1], int(centre[1] + reach) + 2)
    box = (slice(y0, y1), slice(x0, x1))
    if y1 <= y0 or x1 <= x0:
        return box, np.empty((0, 0))
    yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(centre[0]))[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(centre[1]))[None, :]
    u = math.cos(angle) * xx + math.sin(angle) * yy
    v = (-math.sin(angle) * xx + math.cos(angle) * yy) / aspect
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    for order, (amplitude, phase) in enumerate(zip(harmonics, phases), start=2):  # a few harmonics
        outline += np.float32(amplitude) * np.cos(order * theta + np.float32(phase))
    return box, np.hypot(u, v) / (np.float32(radius) * outline)


def _random_blob(rng: np.random.Generator, radius: float, irregularity: float, aspect: tuple[float, float]) -> dict:
    """Random shape parameters of one blob: aspect, angle and decaying Fourier harmonics."""
    orders = np.arange(2, 6)
    return {
        "radius": radius,
        "aspect": rng.uniform(*aspect),
        "angle": rng.uniform(0, math.pi),
        "harmonics": irregularity * rng.uniform(0.3, 1.0, size=len(orders)) / (orders - 1) ** 0.8,
        "phases": rng.uniform(0, 2 * math.pi, size=len(orders)),
    }


def _extent(blob: dict) -> float:
    return blob["radius"] * (1.0 + np.abs(blob["harmonics"]).sum())


def _layout_glands(
    rng: np.random.Generator, shape: tuple[int, int], preset: GlandPreset, malignant: bool
) -> np.ndarray:
    """Place glands and split overlaps between touching ones; returns an int32 instance map."""
    height, width = shape
    area = height * width / 256.0**2
    count = max(1, round(rng.integers(preset.glands[0], preset.glands[1] + 1) * area))
    irregularity = preset.irregularity * (1.6 if malignant else 1.0)
    blobs: list[dict] = []
    centres = np.empty((0, 2))
    extents = np.empty(0)
    for _ in range(count * 15):
        if len(blobs) == count:
            break
        blob = _random_blob(rng, rng.uniform(*preset.radius), irregularity, (0.55, 1.0))
        spacing = extents + _extent(blob) + preset.gap  # least centre distance to each earlier gland
        if blobs and rng.random() < preset.touching:
            j = int(rng.integers(len(blobs)))
            direction = rng.uniform(0, 2 * math.pi)
            distance = (blobs[j]["radius"] + blob["radius"]) * rng.uniform(0.7, 0.85)
            centre = centres[j] + distance * np.array([math.sin(direction), math.cos(direction)])
            spacing[j] = 0.0  # this one it is meant to overlap
        else:
            centre = rng.uniform([0, 0], [height, width])
        if not (0 <= centre[0] < height and 0 <= centre[1] < width):
            continue
        if np.all(np.hypot(*(centres - centre).T) >= spacing):
            blobs.append(blob)
            centres = np.vstack([centres, centre])
            extents = np.append(extents, _extent(blob))
    best = np.full(shape, 1.0, dtype=np.float32)  # pixels with d >= 1 are outside every gland
    instances = np.zeros(shape, dtype=np.int32)
    for label, (blob, centre) in enumerate(zip(blobs, centres), start=1):
        box, depth = _blob_depth(shape, centre, **blob)
        if depth.size == 0:
            continue
        closer = depth < best[box]
        best[box] = np.where(closer, depth, best[box])
        instances[box] = np.where(closer, label, instances[box])
    return instances


def _relabel(instances: np.ndarray, min_area: int) -> np.ndarray:
    """Drop objects smaller than ``min_area`` and number the rest ``1..n``."""
    areas = np.bincount(instances.ravel())
    keep = areas >= min_area
    keep[0] = False
    lookup = np.zeros(len(areas), dtype=np.int32)
    lookup[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return lookup[instances]


_DISTRACTOR_KINDS = ("pseudogland", "vessel", "cluster", "space")


def _layout_distractors(
    rng: np.random.Generator, instances: np.ndarray, preset: GlandPreset
) -> tuple[np.ndarray, list[str]]:
    """Place gland-like distractors in the stroma, clear of every gland; returns labels 1..m and kinds."""
    shape = instances.shape
    area = shape[0] * shape[1] / 256.0**2
    count = round(rng.integers(preset.distractors[0], preset.distractors[1] + 1) * area)
    labels = np.zeros(shape, dtype=np.int32)
    kinds: list[str] = []
    if count == 0:
        return labels, kinds
    # Distance to the nearest gland, at half resolution (it only needs to be roughly right:
    # the margin below is generous); a full-resolution transform costs as much as the rest.
    coarse = ndimage.distance_transform_edt(instances[::2, ::2] == 0) * 2.0 - 2.0
    clearance = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(count * 10):
        if len(kinds) == count:
            break
        kind = _DISTRACTOR_KINDS[int(rng.choice(4, p=[0.4, 0.25, 0.2, 0.15]))]
        radius = rng.uniform(6, 0.6 * preset.radius[1]) if kind != "cluster" else rng.uniform(6, 12)
        aspect = (0.25, 0.5) if kind == "vessel" else (0.6, 1.0)
        blob = _random_blob(rng, radius, preset.irregularity, aspect)
        room = _extent(blob) + 3
        ys, xs = _points_in(clearance > room, 1, rng)
        if len(ys) == 0:
            continue
        centre = np.array([ys[0], xs[0]], dtype=np.float64)
        if any(np.linalg.norm(centre - c) < room + r for c, r in placed):
            continue
        box, depth = _blob_depth(shape, centre, **blob)
        inside = (depth < 1) & (labels[box] == 0)
        if inside.sum() < 12:
            continue
        labels[box][inside] = len(kinds) + 1
        kinds.append(kind)
        placed.append((centre, room))
    return labels, kinds


# ----------------------------------------------------------------------------- rendering


def _render(
    rng: np.random.Generator,
    instances: np.ndarray,
    distractor_labels: np.ndarray,
    distractor_kinds: Sequence[str],
    preset: GlandPreset,
    malignant: bool,
) -> np.ndarray:
    """Concentration maps -> stain mixing -> blur and noise; returns uint8 RGB."""
    shape = instances.shape
    n = int(instances.max())
    structures = np.where(distractor_labels > 0, distractor_labels + n, instances)
    depth = ndimage.distance_transform_edt(~instance_boundaries(structures)).astype(np.float32)
    gland = instances > 0

    # Epithelium width per gland: malignant epithelium is thick and stratified.
    width = (rng.uniform(10, 16, size=n + 1) if malignant else rng.uniform(8, 12, size=n + 1)).astype(np.float32)
    width_map = width[instances]
    epithelium = gland & (depth < width_map)
    lumen = gland & ~epithelium

    stroma_h, stroma_e = 0.07, 0.42
    horizontal = bool(rng.random() < 0.5)
    fibre_sigma = (0.8, 3.0) if horizontal else (3.0, 0.8)
    fibres = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), fibre_sigma)
    fibres /= fibres.std() + 1e-6
    c_h = np.full(shape, stroma_h, dtype=np.float32)
    c_e = stroma_e * np.clip(1.0 + 0.22 * fibres + 0.2 * _smooth_field(rng, shape, 48), 0.3, 2.0)

    # Glands: weak contrast pulls lumen and epithelium towards the stroma.
    k = preset.contrast
    epi_h, epi_e = (0.3, 0.36) if malignant else (0.24, 0.30)
    c_h[epithelium] = stroma_h + k * (epi_h - stroma_h)
    c_e[epithelium] = stroma_e + k * (epi_e - stroma_e) + 0.04 * fibres[epithelium]
    secretion = np.clip(_smooth_field(rng, shape, 12), 0, None) * 0.1
    c_h[lumen] = stroma_h + k * (0.02 - stroma_h)
    c_e[lumen] = stroma_e + k * (0.04 - stroma_e) + secretion[lumen]

    nuclei = np.zeros(shape, dtype=np.float32)
    goblets = np.zeros(shape, dtype=np.float32)

    def normal_angle(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Direction of steepest depth increase (across the ring) at the given pixels."""
        y0, y1 = np.maximum(ys - 1, 0), np.minimum(ys + 1, shape[0] - 1)
        x0, x1 = np.maximum(xs - 1, 0), np.minimum(xs + 1, shape[1] - 1)
        return np.arctan2(depth[y1, xs] - depth[y0, xs], depth[ys, x1] - depth[ys, x0])

    # Epithelial nuclei: basal and elongated across the ring (benign), everywhere and big (malignant).
    band = epithelium & (depth >= 1.0) & (depth < (0.5 if not malignant else 0.9) * width_map)
    ys, xs = _points_in(band, int(band.sum() / (14 if malignant else 11)), rng)
    _stamp(nuclei, ys, xs, "malignant" if malignant else "epithelial", normal_angle(ys, xs), rng)
    if not malignant:
        apical = epithelium & (depth >= 0.5 * width_map)
        ys, xs = _points_in(apical, int(apical.sum() / 22), rng)
        _stamp(goblets, ys, xs, "goblet", rng.uniform(0, math.pi, len(ys)), rng, (0.5, 0.9))

    # Stroma: fibroblasts along the fibres, and lymphocytes.
    stroma = structures == 0
    ys, xs = _points_in(stroma, int(stroma.sum() / 320), rng)
    _stamp(
        nuclei,
        ys,
        xs,
        "fibroblast",
        (0.0 if horizontal else math.pi / 2) + rng.normal(0.0, 0.3, len(ys)),
        rng,
        (0.55, 0.9),
    )
    ys, xs = _points_in(stroma, int(stroma.sum() / 700), rng)
    _stamp(nuclei, ys, xs, "lymphocyte", np.zeros(len(ys)), rng, (0.8, 1.0))

    # Distractors, each gland-like in one way and not a gland.
    for label, (kind, box) in enumerate(zip(distractor_kinds, ndimage.find_objects(distractor_labels)), start=1):
        region = np.zeros(shape, dtype=bool)
        region[box] = distractor_labels[box] == label
        if kind == "pseudogland":  # a ring of flat nuclei around a pale pink centre, no epithelium
            c_e[region] *= 0.5
            c_h[region] *= 0.5
            ring = region & (depth < 2.5)
            ys, xs = _points_in(ring, int(ring.sum() / 6), rng)
            _stamp(nuclei, ys, xs, "flat", normal_angle(ys, xs) + math.pi / 2, rng)
        elif kind == "vessel":  # thin wall, lumen full of red cells
            core = region & (depth >= 2)
            c_e[core] = 0.95 + 0.15 * fibres[core]
            c_h[core] = 0.02
            wall = region & (depth < 2)
            ys, xs = _points_in(wall, int(wall.sum() / 8), rng)
            _stamp(nuclei, ys, xs, "flat", normal_angle(ys, xs) + math.pi / 2, rng)
        elif kind == "cluster":  # lymphoid aggregate: crowded small dark nuclei
            ys, xs = _points_in(region, int(region.sum() / 7), rng)
            _stamp(nuclei, ys, xs, "lymphocyte", np.zeros(len(ys)), rng, (0.85, 1.0))
        else:  # empty space (fat, tear): looks like a lumen
            c_e[region] = 0.02
            c_h[region] = 0.01

    chromatin = np.clip(1.0 + 0.25 * rng.standard_normal(shape).astype(np.float32), 0.5, 1.5)
    c_h = c_h * (1.0 - 0.6 * goblets) + (1.2 if malignant else 1.3) * nuclei * chromatin
    c_e = c_e * (1.0 - 0.5 * nuclei) * (1.0 - 0.7 * goblets) + 0.1 * nuclei

    # Per-image staining strength and stain vectors, uneven section thickness, then optics:
    # blurring the concentrations stands in for blurring the image (one pass per stain).
    thickness = np.clip(1.0 + 0.08 * _smooth_field(rng, shape, 64), 0.7, 1.3)
    sigma = math.hypot(0.5, preset.blur)
    c_h = ndimage.gaussian_filter(c_h * (rng.uniform(0.8, 1.2) * thickness), sigma)
    c_e = ndimage.gaussian_filter(c_e * (rng.uniform(0.8, 1.2) * thickness), sigma)
    h = np.clip(_HEMATOXYLIN + preset.stain_jitter * rng.standard_normal(3), 0.02, None)
    e = np.clip(_EOSIN + preset.stain_jitter * rng.standard_normal(3), 0.02, None)
    rgb = stain_mix(c_h, c_e, (h / np.linalg.norm(h)).astype(np.float32), (e / np.linalg.norm(e)).astype(np.float32))
    rgb += rng.normal(0.0, preset.noise * 255.0, size=rgb.shape).astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class SyntheticGlands:
    """Synthetic H&E gland images with instance maps, deterministic per ``(seed, index)``.

    ``sample(i)`` is always the same arrays for the same ``(preset, size, seed, i)``, on any
    machine and in any order of calls, so any index can be drawn by any data-loader worker.

    Args:
        preset: ``"easy"``, ``"medium"``, ``"hard"`` or a :class:`GlandPreset`.
        size: image side, or ``(height, width)``; gland and nucleus sizes stay in pixels, the
            number of glands grows with the area.
        seed: the seed of the whole sequence.
        min_area: glands cut down to fewer pixels than this (at the border or by a neighbour)
            become background.

    Shapes:

        - ``sample(i)``: ``(image uint8 [H, W, 3], instances int32 [H, W])``.
        - ``generate(n)``: ``(images uint8 [n, H, W, 3], instances int32 [n, H, W])``.

    Raises:
        ValueError: unknown preset, size below 32, or a negative seed or index.
        TypeError: ``seed`` or ``size`` is not an integer.

    Example:
        >>> glands = SyntheticGlands("easy", size=64, seed=0)
        >>> image, instances = glands.sample(0)
        >>> image.shape, image.dtype, instances.shape, instances.dtype
        ((64, 64, 3), dtype('uint8'), (64, 64), dtype('int32'))
        >>> bool((glands.sample(0)[0] == image).all())
        True
    """

    def __init__(
        self, preset: str | GlandPreset = "medium", size: int | tuple[int, int] = 256, seed: int = 0, min_area: int = 40
    ) -> None:
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)} or a GlandPreset, got {preset!r}")
            preset = PRESETS[preset]
        elif not isinstance(preset, GlandPreset):
            raise TypeError(f"preset must be a name or a GlandPreset, got {type(preset).__name__}")
        shape = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
        if len(shape) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in shape):
            raise TypeError(f"size must be an int or a pair of ints, got {size!r}")
        if min(shape) < 32:
            raise ValueError(f"size must be at least 32 pixels, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.preset = preset
        self.shape = (int(shape[0]), int(shape[1]))
        self.seed = int(seed)
        self.min_area = int(min_area)

    def __repr__(self) -> str:
        return f"SyntheticGlands(shape={self.shape}, seed={self.seed}, preset={self.preset})"

    def draw(self, index: int) -> GlandSample:
        """Draw sample ``index`` with its distractor mask and grade.

        Args:
            index: the sample's index, ``>= 0``.

        Returns:
            A :class:`GlandSample` ``(image, instances, distractors, grade)``.

        Raises:
            ValueError: ``index`` is negative.
            TypeError: ``index`` is not an integer.

        Example:
            >>> sample = SyntheticGlands("hard", size=96, seed=1).draw(3)
            >>> bool((sample.instances[sample.distractors] == 0).all()), sample.grade in ("benign", "malignant")
            (True, True)
        """
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, int(index)])
        malignant = bool(rng.random() < self.preset.malignant)
        instances = _relabel(_layout_glands(rng, self.shape, self.preset, malignant), self.min_area)
        distractors, kinds = _layout_distractors(rng, instances, self.preset)
        image = _render(rng, instances, distractors, kinds, self.preset, malignant)
        return GlandSample(image, instances, distractors > 0, "malignant" if malignant else "benign")

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as ``(image, instances)``; see :meth:`draw`.

        Args:
            index: the sample's index, ``>= 0``.

        Shapes:

            - returns: ``(image uint8 [H, W, 3], instances int32 [H, W])``.

        Returns:
            The image and its instance map (0 = background, glands ``1..n``).

        Raises:
            ValueError: ``index`` is negative.
            TypeError: ``index`` is not an integer.

        Example:
            >>> image, instances = SyntheticGlands("easy", size=48, seed=2).sample(0)
            >>> image.shape, int(instances.max()) >= 1
            ((48, 48, 3), True)
        """
        sample = self.draw(index)
        return sample.image, sample.instances

    def generate(self, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``start .. start + n - 1`` stacked.

        Args:
            n: the number of samples, ``>= 1``.
            start: the index of the first sample.

        Shapes:

            - returns: ``(images uint8 [n, H, W, 3], instances int32 [n, H, W])``.

        Returns:
            The stacked images and instance maps; entry ``i`` is ``sample(start + i)``.

        Raises:
            ValueError: ``n`` is not a positive integer, or ``start`` is negative.
            TypeError: ``start`` is not an integer.

        Example:
            >>> images, instances = SyntheticGlands("easy", size=48).generate(2)
            >>> images.shape, instances.shape
            ((2, 48, 48, 3), (2, 48, 48))
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        pairs = [self.sample(start + i) for i in range(int(n))]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def contact_sheet(
    rows: Sequence[Sequence[GlandSample]], labels: Sequence[str] | None = None, gap: int = 4
) -> np.ndarray:
    """Tile samples into one image: each sample as the raw image beside its outlined instances.

    Args:
        rows: samples per row (all the same size).
        labels: an optional caption per row.
        gap: white pixels between tiles.

    Shapes:

        - returns: ``[rows * (H + gap) + gap, cols * (2 W + gap) + gap, 3]``, ``uint8``.

    Returns:
        The sheet as an RGB array.

    Example:
        >>> glands = SyntheticGlands("easy", size=48)
        >>> contact_sheet([[glands.draw(0), glands.draw(1)]]).shape
        (56, 204, 3)
    """
    from PIL import Image, ImageDraw

    height, width = rows[0][0].image.shape[:2]
    columns = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (height + gap) + gap, columns * (2 * width + gap) + gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, sample in enumerate(row):
            y, x = gap + r * (height + gap), gap + c * (2 * width + gap)
            sheet[y : y + height, x : x + width] = sample.image
            sheet[y : y + height, x + width : x + 2 * width] = draw_outlines(sample.image, sample.instances)
    if labels:
        canvas = Image.fromarray(sheet)
        pen = ImageDraw.Draw(canvas)
        for r, label in enumerate(labels):
            pen.text((gap + 4, gap + r * (height + gap) + 4), label, fill=(0, 0, 0))
        sheet = np.asarray(canvas).copy()
    return sheet


def write_contact_sheet(
    path: str | Path, presets: Sequence[str] = ("easy", "medium", "hard"), num: int = 4, size: int = 256, seed: int = 0
) -> Path:
    """Write a contact sheet PNG: one row per preset, ``num`` samples each, raw | outlined.

    Args:
        path: the PNG to write; parent folders are created.
        presets: one row per preset name.
        num: samples per row (indices ``0..num-1``).
        size: image side in pixels.
        seed: the generator seed.

    Returns:
        ``path`` as a path.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> write_contact_sheet(Path(tempfile.mkdtemp()) / "sheet.png", ("easy",), num=1, size=32).name
        'sheet.png'
    """
    rows = [[SyntheticGlands(p, size=size, seed=seed).draw(i) for i in range(num)] for p in presets]
    labels = [f"{p}: {', '.join(s.grade for s in row)}" for p, row in zip(presets, rows)]
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(rows, labels)).save(path)
    return path
