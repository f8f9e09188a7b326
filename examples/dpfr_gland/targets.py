"""Gland targets: instance maps to 3-class maps (background, interior, contour) and back.

The DPFR recipe trains a 3-class segmenter. Its targets come from instance label maps:
each gland's *contour* is its morphological gradient (dilation minus erosion with a disk),
its *interior* is the rest of the gland. Where two glands touch, both contours cover the
seam, so the interior classes of touching glands never touch and the instances can be
recovered from a prediction by connected components of the interior, removal of small
fragments and a dilation back by the contour width.

Both directions accept a NumPy array or a torch tensor and return the same kind (a tensor
comes back on its own device); the morphology runs in SciPy on the CPU.
"""

from __future__ import annotations

from typing import TypeVar, Union

import numpy as np
import torch
from scipy import ndimage

from densessl.checks import (
    FLOAT_DTYPES,
    INT_DTYPES,
    check_finite,
    check_int_in_range,
    check_labels,
    check_tensor,
)

__all__ = [
    "BACKGROUND",
    "CONTOUR",
    "INTERIOR",
    "instance_pseudo_labels",
    "NUM_CLASSES",
    "classes_to_instances",
    "disk",
    "instances_to_classes",
    "semantic_targets",
]

BACKGROUND = 0
"""Class index of background pixels in a 3-class gland map."""
INTERIOR = 1
"""Class index of gland pixels away from any gland boundary."""
CONTOUR = 2
"""Class index of gland boundary pixels (inside and outside the boundary)."""
NUM_CLASSES = 3
"""Number of classes of the 3-class gland map (background, interior, contour)."""

_ArrayT = TypeVar("_ArrayT", np.ndarray, torch.Tensor)
_Map = Union[np.ndarray, torch.Tensor]


def disk(radius: int) -> np.ndarray:
    """A disk-shaped structuring element: the offsets ``(dy, dx)`` with ``dy² + dx² <= radius²``.

    Radius 1 is the 4-connected cross; radius 0 is the single centre pixel.

    Args:
        radius: the disk radius in pixels, ``>= 0``.

    Shapes:
        - returns: ``[2 * radius + 1, 2 * radius + 1]``, bool

    Returns:
        The structuring element as a boolean NumPy array.

    Raises:
        ValueError: ``radius`` is negative.
        TypeError: ``radius`` is not an integer.

    Example:
        >>> from examples.dpfr_gland.targets import disk
        >>> disk(1).astype(int)
        array([[0, 1, 0],
               [1, 1, 1],
               [0, 1, 0]])
    """
    radius = check_int_in_range("radius", radius, 0)
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def _as_tensor(name: str, x: object) -> torch.Tensor:
    """View a NumPy array or tensor as a tensor (no copy when possible) for the contract checks."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "u" and x.dtype != np.uint8:
            x = x.astype(np.int64)  # torch has no general support for uint16/32/64
        elif x.dtype.kind not in "uif":
            raise TypeError(f"{name} must have an integer or float dtype, got {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}")


def _like(result: np.ndarray, reference: object) -> _Map:
    """Return ``result`` as the same kind of object as ``reference`` (tensor on its device)."""
    if isinstance(reference, torch.Tensor):
        return torch.from_numpy(result).to(reference.device)
    return result


def instances_to_classes(instances: _ArrayT, contour_width: int = 2) -> _ArrayT:
    """Turn an instance label map into a 3-class map: background, interior, contour.

    For every instance ``k``, its contour is ``dilate(I_k, D) - erode(I_k, D)`` with ``D``
    the disk of radius ``contour_width`` (see :func:`disk`): a ring ``contour_width`` pixels
    inside and ``contour_width`` pixels outside the instance's boundary. The contour class
    is the union of all instances' contours and wins over interior and background; interior
    is every other instance pixel. Touching glands are therefore separated by a contour seam
    ``2 * contour_width`` pixels wide. The image edge is not a boundary: a gland cut by the
    edge gets no contour there (erosion ignores pixels outside the image).

    It is computed without a loop over instances: a pixel is contour exactly when its
    disk neighbourhood holds an instance label and is not uniform, i.e. when the maximum
    filter of the label map is positive and differs from the minimum filter.

    Args:
        instances: instance label map, ``0`` = background, each gland its own positive label
            (a label need not be connected). A NumPy array or a torch tensor.
        contour_width: the disk radius in pixels, ``>= 1``.

    Shapes:
        - instances: ``[H, W]`` or a batch ``[B, H, W]``, any integer dtype, values ``>= 0``
        - returns: the same shape, uint8, values in ``{0, 1, 2}`` (:data:`BACKGROUND`,
          :data:`INTERIOR`, :data:`CONTOUR`); a NumPy array for an array input, a tensor on
          the input's device for a tensor input

    Returns:
        The 3-class map.

    Raises:
        TypeError: ``instances`` is not an integer array/tensor, or ``contour_width`` is not
            an integer.
        ValueError: ``instances`` is not 2-D or 3-D, holds negative labels, or
            ``contour_width < 1``.

    Example:
        >>> import numpy as np
        >>> from examples.dpfr_gland.targets import instances_to_classes
        >>> instances = np.zeros((7, 9), dtype=np.int64)
        >>> instances[1:6, 1:4] = 1
        >>> instances[1:6, 4:8] = 2
        >>> instances_to_classes(instances, contour_width=1)
        array([[0, 2, 2, 2, 2, 2, 2, 2, 0],
               [2, 2, 2, 2, 2, 2, 2, 2, 2],
               [2, 2, 1, 2, 2, 1, 1, 2, 2],
               [2, 2, 1, 2, 2, 1, 1, 2, 2],
               [2, 2, 1, 2, 2, 1, 1, 2, 2],
               [2, 2, 2, 2, 2, 2, 2, 2, 2],
               [0, 2, 2, 2, 2, 2, 2, 2, 0]], dtype=uint8)
    """
    contour_width = check_int_in_range("contour_width", contour_width, 1)
    tensor = check_tensor(
        "instances",
        _as_tensor("instances", instances),
        ndim=(2, 3),
        dims="[H, W] or [B, H, W]",
        dtypes=INT_DTYPES,
        dtype_words="an integer type",
    )
    labels = tensor.detach().cpu().numpy()
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"instances must hold labels >= 0 (0 = background), got {int((labels < 0).sum())} "
            f"negative value(s), e.g. {int(labels.min())}"
        )
    footprint = disk(contour_width)
    if labels.ndim == 3:
        footprint = footprint[None]  # never mix images of a batch
    # 'nearest' replicates the edge; for a disk every replicated pixel is already in the
    # neighbourhood, so this is the same as ignoring pixels outside the image.
    high = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")
    low = ndimage.minimum_filter(labels, footprint=footprint, mode="nearest")
    classes = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    classes[(high > 0) & (high != low)] = CONTOUR
    return _like(classes, instances)


def _class_map(pred: object) -> tuple[np.ndarray, bool]:
    """Validate ``pred`` and reduce it to an integer class map; also say whether it was batched."""
    tensor = _as_tensor("pred", pred)
    if tensor.is_floating_point():
        tensor = check_tensor(
            "pred",
            tensor,
            ndim=(3, 4),
            dims="[3, H, W] or [B, 3, H, W] (scores)",
            dtypes=FLOAT_DTYPES,
            dtype_words="float16, bfloat16, float32 or float64",
        )
        class_dim = tensor.dim() - 3
        if tensor.shape[class_dim] != 3:
            dims = "[3, H, W]" if class_dim == 0 else "[B, 3, H, W]"
            raise ValueError(
                f"pred (scores) must have 3 classes (background, interior, contour) in dim {class_dim} "
                f"{dims}, got shape {tuple(tensor.shape)}"
            )
        check_finite("pred", tensor)
        return tensor.detach().argmax(dim=class_dim).cpu().numpy(), tensor.dim() == 4
    tensor = check_tensor(
        "pred",
        tensor,
        ndim=(2, 3),
        dims="[H, W] or [B, H, W] (class map)",
        dtypes=INT_DTYPES,
        dtype_words="an integer type (class map) or a float type (scores)",
    )
    tensor = check_labels("pred", tensor, num_classes=NUM_CLASSES, ignore_index=None, ndim=tensor.dim())
    return tensor.detach().cpu().numpy(), tensor.dim() == 3


def _instances_from_class_map(classes: np.ndarray, min_size: int, dilation: int, structure: np.ndarray) -> np.ndarray:
    """One ``[H, W]`` class map to an int32 instance map (see :func:`classes_to_instances`)."""
    components, count = ndimage.label(classes == INTERIOR, structure=structure)
    if count:
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        # relabel kept components 1..n in order of their first appearance in scan order
        new_ids = np.zeros(count + 1, dtype=np.int32)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        instances = new_ids[components]
    else:
        instances = np.zeros(classes.shape, dtype=np.int32)
    if dilation > 0 and instances.any():
        # Nearest-label growth: each pixel within `dilation` (Euclidean) of a component takes
        # the nearest component's label, so grown neighbours partition the seam, never merge.
        distance, (rows, cols) = ndimage.distance_transform_edt(instances == 0, return_indices=True)
        grow = (instances == 0) & (distance <= dilation) & (classes != BACKGROUND)
        instances[grow] = instances[rows[grow], cols[grow]]
    return instances


def classes_to_instances(
    pred: _ArrayT,
    min_size: int = 16,
    dilation: int = 2,
    connectivity: int = 1,
) -> _ArrayT:
    """Recover gland instances from a 3-class prediction (the inverse of :func:`instances_to_classes`).

    1. A float ``pred`` holds scores (probabilities or logits) and is reduced by argmax over
       its class dimension; an integer ``pred`` is already a class map.
    2. Each connected component of the :data:`INTERIOR` class is one candidate gland.
    3. Components with fewer than ``min_size`` pixels are dropped; the rest are relabelled
       ``1..n`` in scan order (first pixel row-major).
    4. Each gland grows back by ``dilation`` pixels (a Euclidean disk, the same shape as
       :func:`disk`), only into pixels predicted non-background, each pixel going to the
       nearest gland, so touching glands share their seam instead of merging.

    Use ``dilation = contour_width`` of the targets: the interior of a gland is its erosion
    by the disk, and dilating it back by the same disk restores the gland (its opening).
    A gland nowhere wider than ``2 * contour_width`` pixels has no interior and cannot
    come back (a band ``2 * contour_width + 1`` wide keeps a one-pixel interior line);
    neither can one whose interior is smaller than ``min_size``.

    Args:
        pred: a class map (integers in ``{0, 1, 2}``) or class scores (floats). A NumPy array
            or a torch tensor (not differentiated: the result is a label map).
        min_size: smallest interior component kept, in pixels, ``>= 0``.
        dilation: growth radius in pixels, ``>= 0`` (``0`` returns the interior components).
        connectivity: ``1`` (4-connected, the default: diagonal touches do not join) or
            ``2`` (8-connected) for the interior components.

    Shapes:
        - pred: class map ``[H, W]`` or ``[B, H, W]`` (any integer dtype, values ``0..2``), or
          scores ``[3, H, W]`` or ``[B, 3, H, W]`` (float, finite)
        - returns: ``[H, W]`` or ``[B, H, W]``, int32, ``0`` = background and ``1..n`` the
          glands of each image; a NumPy array for an array input, a tensor on the input's
          device for a tensor input

    Returns:
        The instance map.

    Raises:
        TypeError: ``pred`` is neither an integer nor a float array/tensor, or an argument
            is not an integer.
        ValueError: ``pred`` has the wrong rank, scores without 3 classes, NaN/Inf scores,
            class values outside ``0..2``, or an argument out of range.

    Example:
        >>> import numpy as np
        >>> from examples.dpfr_gland.targets import classes_to_instances, instances_to_classes
        >>> instances = np.zeros((7, 9), dtype=np.int64)
        >>> instances[1:6, 1:4] = 1
        >>> instances[1:6, 4:8] = 2
        >>> classes = instances_to_classes(instances, contour_width=1)
        >>> classes_to_instances(classes, min_size=1, dilation=1)
        array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
               [0, 0, 1, 0, 0, 2, 2, 0, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 0, 1, 0, 0, 2, 2, 0, 0],
               [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=int32)

        The glands come back split along their seam; only the corners, which the disk
        cannot reach from the interior, are lost.
    """
    min_size = check_int_in_range("min_size", min_size, 0)
    dilation = check_int_in_range("dilation", dilation, 0)
    connectivity = check_int_in_range("connectivity", connectivity, 1, 2)
    classes, batched = _class_map(pred)
    structure = ndimage.generate_binary_structure(2, connectivity)
    if batched:
        result = np.zeros(classes.shape, dtype=np.int32)
        for index, image in enumerate(classes):
            result[index] = _instances_from_class_map(image, min_size, dilation, structure)
    else:
        result = _instances_from_class_map(classes, min_size, dilation, structure)
    return _like(result, pred)


def semantic_targets(mask: np.ndarray, num_classes: int = 2, name: str = "mask") -> np.ndarray:
    """Class targets of the semantic task (PGland) from a mask as read from disk.

    With ``num_classes = 2`` every non-zero value is gland (class 1): binary masks stored as
    0/1 or 0/255 and instance maps all give the binary gland mask. With more classes the mask
    values are the classes and must lie in ``0..num_classes - 1``.

    Args:
        mask: the mask (any integer dtype).
        num_classes: ``K >= 2``.
        name: what to call the mask in an error (e.g. its file).

    Shapes:
        - mask: ``[H, W]``
        - returns: ``[H, W]`` int64 in ``0..K-1``

    Raises:
        ValueError: a value outside ``0..K-1`` when ``K > 2`` (names the mask and the value).

    Example:
        >>> import numpy as np
        >>> semantic_targets(np.array([[0, 255], [3, 0]])).tolist()
        [[0, 1], [1, 0]]
        >>> semantic_targets(np.array([[0, 5]]), num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: mask must hold classes 0..2 for semantic_classes=3, got value 5
    """
    mask = np.asarray(mask)
    if num_classes == 2:
        return (mask > 0).astype(np.int64)
    bad = (mask < 0) | (mask >= num_classes)
    if bad.any():
        raise ValueError(
            f"{name} must hold classes 0..{num_classes - 1} for semantic_classes={num_classes}, "
            f"got value {int(mask[bad].flat[0])}"
        )
    return mask.astype(np.int64)


def instance_pseudo_labels(
    probs: torch.Tensor,
    threshold: float = 0.5,
    min_size: int = 16,
    contour_width: int = 2,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo labels that know the glands' shape: the teacher's glands, given their full contour.

    The teacher's prediction becomes gland instances by the evaluation's own rule
    (:func:`classes_to_instances`: interior components, ``min_size``, grown back by
    ``contour_width``), and the instances become 3-class targets by the labelled targets' own
    rule (:func:`instances_to_classes`), so every gland the teacher separates gets its whole
    contour band, the seams between touching glands included — where a per-pixel filter drops the
    contour, the pixels the teacher is least sure of. A pixel is kept when the teacher is sure of
    gland against background (the binary entropy of ``p(interior) + p(contour)`` below
    ``threshold`` nats) and the derived target agrees with it, or when it lies on a derived
    contour band.

    Args:
        probs: the teacher's class probabilities (background, interior, contour).
        threshold: binary-entropy threshold in nats (``< ln 2``; 0.5 keeps ``max(g, 1 - g) >~ 0.8``).
        min_size: smallest interior component taken as a gland, in pixels.
        contour_width: the targets' contour width (and the interiors' growth), in pixels.
        ignore_index: the label of pixels not kept.

    Shapes:
        - probs: ``[B, 3, H, W]`` float, summing to 1 over the classes
        - returns: ``(labels [B, H, W] int64 in {0, 1, 2, ignore_index}, mask [B, H, W] bool)`` on
          ``probs``' device; ``mask`` is ``labels != ignore_index``

    Example:
        >>> import torch
        >>> probs = torch.zeros(1, 3, 12, 12); probs[:, 0] = 1
        >>> probs[0, :, 2:10, 2:10] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]  # a gland, no contour
        >>> labels, mask = instance_pseudo_labels(probs, min_size=4, contour_width=1)
        >>> # the contour came back: the band one pixel either side of the gland's edge (96 - 36 pixels)
        >>> sorted(labels.unique().tolist()), int((labels == CONTOUR).sum())
        ([0, 1, 2], 60)
    """
    if probs.dim() != 4 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must be [B, 3, H, W] class probabilities, got shape {tuple(probs.shape)}")
    probs = probs.detach().float()
    instances = classes_to_instances(probs, min_size=min_size, dilation=contour_width)
    derived = instances_to_classes(instances, contour_width=contour_width).long()
    gland = (probs[:, INTERIOR] + probs[:, CONTOUR]).clamp(1e-6, 1 - 1e-6)
    entropy = -(gland * gland.log() + (1 - gland) * (1 - gland).log())
    sure = entropy < threshold
    agrees = (derived != BACKGROUND) == (gland > 0.5)
    mask = (sure & agrees) | (derived == CONTOUR)
    labels = torch.where(mask, derived, torch.full_like(derived, ignore_index))
    return labels, mask
