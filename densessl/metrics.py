"""GlaS object-level F1, Dice and Hausdorff, and pixel-level Dice, F1 and mean IoU.

The object-level metrics follow the MICCAI 2015 Gland Segmentation (GlaS) challenge
(Sirinukunwattana et al., 2017). Inputs are instance maps: ``[H, W]`` integer arrays
(numpy or torch, any integer dtype, labels ``0..2**31 - 1``), ``0`` the background and
every other label one object; an object need not be connected and labels need not be
consecutive.

Two aggregations exist for a set of images, and every number says which one it is:

- ``"pooled"`` (the official GlaS score): F1 from the true/false positives and false
  negatives summed over all images; Dice and Hausdorff with area weights normalised
  over all objects of the whole set.
- ``"per_image"``: the mean over images of the single-image scores.

For one image (:func:`object_f1`, :func:`object_dice`, :func:`object_hausdorff`) the
two coincide.

The matching rules, exactly:

- A segmented object is matched to the ground-truth object it overlaps most (ties to
  the smaller label); it is a true positive iff the overlap covers **more than** 50 %
  of that ground-truth object (exactly 50 % is not enough). False positives are the
  other segmented objects, false negatives the ground-truth objects without a true
  positive.
- Object Dice is ``1/2 [sum_i g_i D(G_i, S*(G_i)) + sum_j s_j D(G*(S_j), S_j)]``
  with ``g_i = |G_i| / sum |G|``, ``s_j = |S_j| / sum |S|`` and ``S*(G_i)``,
  ``G*(S_j)`` the maximally overlapping object on the other side (ties to the smaller
  label). An object overlapping nothing has Dice 0.
- Object Hausdorff uses the same weights and matches; an object overlapping nothing is
  matched to the object on the other side, in the same image, with the smallest
  Hausdorff distance. Distances are Euclidean, in pixels, over all pixels of both
  objects.

Undefined cases (documented on each function):

- both maps empty: F1 1, Dice 1, Hausdorff 0;
- one side empty: F1 0, Dice 0, Hausdorff the image diagonal ``hypot(H, W)`` (or
  ``empty_distance``). Pooled over a set, an object in an image whose other side is
  empty gets that image's diagonal; if one side is empty in the whole set, only the
  other side's weighted term is used (for Dice that term is 0);
- no true positive: F1 0.

Distances are computed with one Euclidean distance transform per direction on the
bounding box of each matched pair, not on all-pairs point sets; the nearest object
for an unmatched one is searched in order of a cheap lower bound, stopping as soon
as the bound exceeds the best distance found.

References:
    Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS
    challenge contest", Medical Image Analysis 35, 2017.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ._checks import check_number, check_tensor

__all__ = [
    "glas_metrics",
    "mean_iou",
    "object_counts",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "pixel_dice",
    "pixel_f1",
]

_TORCH_INT_DTYPES = tuple(
    getattr(torch, name)
    for name in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64")
    if hasattr(torch, name)
)
_MAX_LABEL = 2**31 - 1
_AGGREGATES = ("pooled", "per_image")


# ----------------------------------------------------------------------------------------
# Input handling


def _as_label_array(name: str, x: object, ndim: Sequence[int] = (2,)) -> np.ndarray:
    """A numpy integer label map of one of the ranks ``ndim``, labels in ``0..2**31-1``."""
    dims = " or ".join(f"{n}-D" for n in ndim)
    words = {2: "[H, W]", 3: "[B, H, W]"}
    shape_words = " or ".join(words[n] for n in ndim)
    if isinstance(x, torch.Tensor):
        check_tensor(
            name, x, ndim=tuple(ndim), dims=shape_words, dtypes=_TORCH_INT_DTYPES, dtype_words="an integer type"
        )
        x = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        if x.ndim not in tuple(ndim):
            raise ValueError(f"{name} must be a {dims} array {shape_words}, got shape {tuple(x.shape)}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"{name} must have dtype an integer type, got {x.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
    if x.size:
        low, high = int(x.min()), int(x.max())
        if low < 0:
            raise ValueError(f"{name} must hold labels >= 0 (0 = background), got minimum {low}")
        if high > _MAX_LABEL:
            raise ValueError(f"{name} must hold labels <= 2**31 - 1 (int32), got maximum {high}")
    if x.dtype.kind == "u" and x.dtype.itemsize >= 4:
        x = x.astype(np.int64)  # numpy will not cast uint64 to an index type implicitly
    return x


def _check_pair(
    pred_name: str, pred: object, gt_name: str, gt: object, ndim: Sequence[int] = (2,)
) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_label_array(pred_name, pred, ndim)
    gt = _as_label_array(gt_name, gt, ndim)
    if pred.shape != gt.shape:
        raise ValueError(
            f"{pred_name} must have the same shape as {gt_name} {tuple(gt.shape)}, "
            f"got shape {tuple(pred.shape)} for {pred_name}"
        )
    return pred, gt


def _check_empty_distance(empty_distance: float | None) -> float | None:
    if empty_distance is None:
        return None
    return float(check_number("empty_distance", empty_distance, low=0.0))


# ----------------------------------------------------------------------------------------
# One image: relabelling, overlaps and matches


def _relabel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels to ``0..n`` (0 stays background, order kept); return the map and areas.

    ``areas[k]`` is the pixel count of label ``k`` (``areas[0]`` the background's).
    """
    flat = x.reshape(-1)
    high = int(flat.max()) if flat.size else 0
    if high <= max(4 * flat.size, 1 << 16):
        # A lookup table is linear time; np.unique would sort the whole map.
        counts = np.bincount(flat, minlength=1)
        present = counts > 0
        present[0] = True
        lut = (np.cumsum(present) - 1).astype(np.int32)
        return lut[x], counts[present]
    values, unique_inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse: np.ndarray = unique_inverse.astype(np.int32).reshape(x.shape)
    if values[0] != 0:
        inverse += 1
        counts = np.concatenate([[0], counts])
    return inverse, counts


def _best_partner(
    rows: np.ndarray,
    cols: np.ndarray,
    overlap: np.ndarray,
    n_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row label ``1..n_rows`` the column of largest overlap (ties: smaller column).

    Returns ``[n_rows + 1]`` int64 partners (``0`` where a row overlaps nothing) and the
    ``[n_rows + 1]`` int64 overlaps with them.
    """
    best = np.zeros(n_rows + 1, dtype=np.int64)
    best_overlap = np.zeros(n_rows + 1, dtype=np.int64)
    if rows.size:
        order = np.lexsort((cols, -overlap, rows))
        rows_sorted = rows[order]
        first = np.ones(rows_sorted.size, dtype=bool)
        first[1:] = rows_sorted[1:] != rows_sorted[:-1]
        best[rows_sorted[first]] = cols[order][first]
        best_overlap[rows_sorted[first]] = overlap[order][first]
    return best, best_overlap


@dataclass
class _Matches:
    """Relabelled maps, areas, the sparse overlap table and the max-overlap matches."""

    gt: np.ndarray  # [H, W] int32, 0..n_gt
    pred: np.ndarray  # [H, W] int32, 0..n_pred
    gt_area: np.ndarray  # [n_gt + 1]
    pred_area: np.ndarray  # [n_pred + 1]
    pred_for_gt: np.ndarray  # [n_gt + 1], the max-overlap pred label, 0 = no overlap
    gt_for_pred: np.ndarray  # [n_pred + 1], the max-overlap gt label, 0 = no overlap
    gt_overlap: np.ndarray  # [n_gt + 1], pixels shared with pred_for_gt
    pred_overlap: np.ndarray  # [n_pred + 1], pixels shared with gt_for_pred

    @property
    def n_gt(self) -> int:
        return self.gt_area.size - 1

    @property
    def n_pred(self) -> int:
        return self.pred_area.size - 1


def _match(pred: np.ndarray, gt: np.ndarray) -> _Matches:
    gt_r, gt_area = _relabel(gt)
    pred_r, pred_area = _relabel(pred)
    n_gt, n_pred = gt_area.size - 1, pred_area.size - 1
    both = (gt_r > 0) & (pred_r > 0)
    codes = gt_r[both].astype(np.int64) * (n_pred + 1) + pred_r[both]
    table_size = (n_gt + 1) * (n_pred + 1)
    if table_size <= max(4 * codes.size, 1 << 20):
        counts = np.bincount(codes, minlength=table_size)
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(codes, return_counts=True)
    g, p = keys // (n_pred + 1), keys % (n_pred + 1)
    pred_for_gt, gt_overlap = _best_partner(g, p, counts, n_gt)
    gt_for_pred, pred_overlap = _best_partner(p, g, counts, n_pred)
    return _Matches(
        gt=gt_r,
        pred=pred_r,
        gt_area=gt_area.astype(np.int64),
        pred_area=pred_area.astype(np.int64),
        pred_for_gt=pred_for_gt,
        gt_for_pred=gt_for_pred,
        gt_overlap=gt_overlap,
        pred_overlap=pred_overlap,
    )


# ----------------------------------------------------------------------------------------
# Hausdorff distances between objects


class _Objects:
    """Bounding boxes (inclusive ``r0, r1, c0, c1``) and extreme pixels of each object."""

    def __init__(self, labels: np.ndarray, n: int) -> None:
        self.labels = labels
        self.slices = ndimage.find_objects(labels, max_label=n) if n else []
        self.boxes = np.array(
            [[s[0].start, s[0].stop - 1, s[1].start, s[1].stop - 1] for s in self.slices],
            dtype=np.float64,
        ).reshape(n, 4)
        self._extremes: np.ndarray | None = None

    def extremes(self) -> np.ndarray:
        """``[n, 4, 2]`` one pixel on the top, bottom, left and right edge of each box."""
        if self._extremes is None:
            points = np.empty((len(self.slices), 4, 2), dtype=np.float64)
            for k, (rows, cols) in enumerate(self.slices):
                mask = self.labels[rows, cols] == k + 1
                top = np.flatnonzero(mask[0])[0]
                bottom = np.flatnonzero(mask[-1])[0]
                left = np.flatnonzero(mask[:, 0])[0]
                right = np.flatnonzero(mask[:, -1])[0]
                points[k] = [
                    [rows.start, cols.start + top],
                    [rows.stop - 1, cols.start + bottom],
                    [rows.start + left, cols.start],
                    [rows.start + right, cols.stop - 1],
                ]
            self._extremes = points
        return self._extremes


def _distance_to_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[P, 2]`` points, ``[N, 4]`` boxes -> ``[P, N]`` Euclidean distance to each box."""
    r, c = points[:, 0:1], points[:, 1:2]
    dr = np.maximum(np.maximum(boxes[None, :, 0] - r, r - boxes[None, :, 1]), 0.0)
    dc = np.maximum(np.maximum(boxes[None, :, 2] - c, c - boxes[None, :, 3]), 0.0)
    return np.hypot(dr, dc)


class _HausdorffTable:
    """Hausdorff distances between gt and pred objects of one image, computed on demand."""

    def __init__(self, m: _Matches) -> None:
        self.m = m
        self.gt_objects = _Objects(m.gt, m.n_gt)
        self.pred_objects = _Objects(m.pred, m.n_pred)
        self._cache: dict[tuple[int, int], float] = {}

    def pair(self, i: int, j: int) -> float:
        """Hausdorff distance between gt object ``i`` and pred object ``j`` (labels >= 1)."""
        key = (i, j)
        if key not in self._cache:
            gs, ps = self.gt_objects.slices[i - 1], self.pred_objects.slices[j - 1]
            # Both objects lie inside the union box, so a distance transform on the crop
            # gives exact distances to each of them.
            rows = slice(min(gs[0].start, ps[0].start), max(gs[0].stop, ps[0].stop))
            cols = slice(min(gs[1].start, ps[1].start), max(gs[1].stop, ps[1].stop))
            a = self.m.gt[rows, cols] == i
            b = self.m.pred[rows, cols] == j
            if self.m.gt_area[i] * self.m.pred_area[j] <= a.size:
                # Small objects (a speck against a gland): all pairs cost less than two
                # distance transforms of the box; squared distances are exact integers.
                d2 = ((np.argwhere(a)[:, None, :] - np.argwhere(b)[None, :, :]) ** 2).sum(axis=-1)
                self._cache[key] = math.sqrt(max(d2.min(axis=1).max(), d2.min(axis=0).max()))
            else:
                a_to_b = ndimage.distance_transform_edt(~b)[a].max()
                b_to_a = ndimage.distance_transform_edt(~a)[b].max()
                self._cache[key] = float(max(a_to_b, b_to_a))
        return self._cache[key]

    def nearest(self, k: int, gt_side: bool) -> float:
        """Smallest Hausdorff distance from object ``k`` to any object on the other side."""
        mine, other = (self.gt_objects, self.pred_objects) if gt_side else (self.pred_objects, self.gt_objects)
        # H(A, B) >= d(p, box(B)) for any pixel p of A, and symmetrically: a lower bound.
        bound = np.maximum(
            _distance_to_boxes(mine.extremes()[k - 1], other.boxes).max(axis=0),
            _distance_to_boxes(other.extremes().reshape(-1, 2), mine.boxes[k - 1 : k]).reshape(-1, 4).max(axis=1),
        )
        best = math.inf
        for idx in np.argsort(bound, kind="stable"):
            if bound[idx] >= best:
                break
            j = int(idx) + 1
            best = min(best, self.pair(k, j) if gt_side else self.pair(j, k))
        return best


# ----------------------------------------------------------------------------------------
# Per-image sums and their aggregation


@dataclass
class _ImageSums:
    """Unnormalised per-image quantities; sums of these over images give the pooled score."""

    tp: int = 0
    n_gt: int = 0
    n_pred: int = 0
    gt_area: float = 0.0  # sum |G_i|
    pred_area: float = 0.0  # sum |S_j|
    gt_dice: float = 0.0  # sum |G_i| D(G_i, S*(G_i))
    pred_dice: float = 0.0  # sum |S_j| D(G*(S_j), S_j)
    gt_hausdorff: float = 0.0  # sum |G_i| H(G_i, S*(G_i))
    pred_hausdorff: float = 0.0  # sum |S_j| H(G*(S_j), S_j)

    def __add__(self, other: _ImageSums) -> _ImageSums:
        return _ImageSums(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


def _image_sums(pred: np.ndarray, gt: np.ndarray, *, hausdorff: bool, empty_distance: float | None) -> _ImageSums:
    m = _match(pred, gt)
    sums = _ImageSums(n_gt=m.n_gt, n_pred=m.n_pred)
    g_area, p_area = m.gt_area[1:].astype(np.float64), m.pred_area[1:].astype(np.float64)
    sums.gt_area, sums.pred_area = float(g_area.sum()), float(p_area.sum())

    # F1: the matched gt object of each segment, true positive iff overlap > 50 % of it.
    matched_gt_area = m.gt_area[m.gt_for_pred[1:]]  # area of the background for unmatched: never a TP
    sums.tp = int(np.count_nonzero((m.gt_for_pred[1:] > 0) & (2 * m.pred_overlap[1:] > matched_gt_area)))

    # Dice with the maximally overlapping object; no overlap -> overlap 0 -> Dice 0.
    partner_area = m.pred_area[m.pred_for_gt[1:]]
    sums.gt_dice = float(np.sum(2.0 * m.gt_overlap[1:] * g_area / (g_area + partner_area)))
    partner_area = m.gt_area[m.gt_for_pred[1:]]
    sums.pred_dice = float(np.sum(2.0 * m.pred_overlap[1:] * p_area / (p_area + partner_area)))

    if hausdorff and (m.n_gt or m.n_pred):
        far = math.hypot(*gt.shape) if empty_distance is None else empty_distance
        table = _HausdorffTable(m)
        for i in range(1, m.n_gt + 1):
            j = int(m.pred_for_gt[i])
            h = table.pair(i, j) if j else (table.nearest(i, gt_side=True) if m.n_pred else far)
            sums.gt_hausdorff += m.gt_area[i] * h
        for j in range(1, m.n_pred + 1):
            i = int(m.gt_for_pred[j])
            h = table.pair(i, j) if i else (table.nearest(j, gt_side=False) if m.n_gt else far)
            sums.pred_hausdorff += m.pred_area[j] * h
    return sums


def _two_sided(gt_sum: float, gt_area: float, pred_sum: float, pred_area: float, both_empty: float) -> float:
    """The two-sided area-weighted mean; one side empty -> the other side's term alone."""
    terms = [s / a for s, a in ((gt_sum, gt_area), (pred_sum, pred_area)) if a > 0]
    return float(sum(terms) / len(terms)) if terms else both_empty


def _scores(s: _ImageSums) -> dict[str, float]:
    fp, fn = s.n_pred - s.tp, s.n_gt - s.tp
    denominator = 2 * s.tp + fp + fn
    return {
        "f1": 1.0 if denominator == 0 else 2.0 * s.tp / denominator,
        "dice": _two_sided(s.gt_dice, s.gt_area, s.pred_dice, s.pred_area, both_empty=1.0),
        "hausdorff": _two_sided(s.gt_hausdorff, s.gt_area, s.pred_hausdorff, s.pred_area, both_empty=0.0),
    }


# ----------------------------------------------------------------------------------------
# Public object-level metrics


def object_f1(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """GlaS object-level F1 score of one image.

    Each segmented object is matched to the ground-truth object it overlaps most (ties
    to the smaller label) and is a true positive iff the overlap covers **more than**
    50 % of that ground-truth object. ``FP`` = segmented objects - ``TP``, ``FN`` =
    ground-truth objects - ``TP``, and ``F1 = 2 TP / (2 TP + FP + FN)``. Not symmetric
    in ``pred`` and ``gt``.

    Undefined cases: both maps empty -> 1.0; one side empty or no true positive -> 0.0.

    Args:
        pred: segmented instance map, ``0`` = background.
        gt: ground-truth instance map, ``0`` = background.

    Shapes:
        - pred: ``[H, W]``, any integer dtype (numpy or torch), labels ``0..2**31-1``
        - gt: ``[H, W]``, same shape as ``pred``

    Returns:
        The F1 score in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: a map that is not 2-D, shapes that differ, negative labels or labels
            above ``2**31 - 1``.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import object_f1
        >>> gt = np.array([[1, 1, 0, 2, 2]])
        >>> pred = np.array([[5, 5, 5, 0, 7]])  # 5 covers all of 1 (TP); 7 covers half of 2 (FP)
        >>> object_f1(pred, gt)  # TP 1, FP 1, FN 1
        0.5

    References:
        Sirinukunwattana et al., Medical Image Analysis 35, 2017 (the GlaS challenge).
    """
    pred, gt = _check_pair("pred", pred, "gt", gt)
    return _scores(_image_sums(pred, gt, hausdorff=False, empty_distance=None))["f1"]


def object_counts(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[int, int, int]:
    """The counts behind :func:`object_f1`: segmented objects, ground-truth objects, true positives.

    Summed over images they give the pooled object F1 ``2 TP / (segmented + ground truth)``,
    object precision ``TP / segmented`` and recall ``TP / ground truth``, and a bootstrap over
    images resamples them (the counts of one image are what it contributes to the pool).

    Args:
        pred: segmented instance map, ``0`` = background.
        gt: ground-truth instance map, ``0`` = background.

    Shapes:
        - pred: ``[H, W]``, any integer dtype (numpy or torch), labels ``0..2**31-1``
        - gt: ``[H, W]``, same shape as ``pred``

    Returns:
        ``(segmented, ground_truth, true_positives)`` as Python ints.

    Raises:
        ValueError: as :func:`object_f1`.
        TypeError: as :func:`object_f1`.

    Example:
        >>> import numpy as np
        >>> object_counts(np.array([[5, 5, 5, 0, 7]]), np.array([[1, 1, 0, 2, 2]]))
        (2, 2, 1)
    """
    pred, gt = _check_pair("pred", pred, "gt", gt)
    s = _image_sums(pred, gt, hausdorff=False, empty_distance=None)
    return s.n_pred, s.n_gt, s.tp


def object_dice(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """GlaS object-level Dice of one image (two-sided, area weighted).

    ``1/2 [sum_i g_i D(G_i, S*(G_i)) + sum_j s_j D(G*(S_j), S_j)]`` with
    ``g_i = |G_i| / sum |G|``, ``s_j = |S_j| / sum |S|``, ``D(A, B) = 2|A & B| / (|A| + |B|)``
    and ``S*(G_i)``, ``G*(S_j)`` the maximally overlapping object on the other side (ties
    to the smaller label). An object overlapping nothing has Dice 0. Symmetric in
    ``pred`` and ``gt``.

    Undefined cases: both maps empty -> 1.0; one side empty -> 0.0.

    Args:
        pred: segmented instance map, ``0`` = background.
        gt: ground-truth instance map, ``0`` = background.

    Shapes:
        - pred: ``[H, W]``, any integer dtype (numpy or torch), labels ``0..2**31-1``
        - gt: ``[H, W]``, same shape as ``pred``

    Returns:
        The object Dice in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: a map that is not 2-D, shapes that differ, negative labels or labels
            above ``2**31 - 1``.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import object_dice
        >>> gt = np.array([[1, 1, 1, 1, 0, 0]])
        >>> pred = np.array([[0, 0, 3, 3, 3, 3]])  # overlap 2 of 4 and 4: D = 0.5 both ways
        >>> object_dice(pred, gt)
        0.5

    References:
        Sirinukunwattana et al., Medical Image Analysis 35, 2017 (the GlaS challenge).
    """
    pred, gt = _check_pair("pred", pred, "gt", gt)
    return _scores(_image_sums(pred, gt, hausdorff=False, empty_distance=None))["dice"]


def object_hausdorff(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    empty_distance: float | None = None,
) -> float:
    """GlaS object-level Hausdorff distance of one image (two-sided, area weighted).

    The same weights and max-overlap matches as :func:`object_dice`; an object that
    overlaps nothing is matched to the object on the other side with the smallest
    Hausdorff distance. The Hausdorff distance between two objects is the larger of the
    two directed distances, Euclidean, in pixels, over all pixels of both objects.
    Symmetric in ``pred`` and ``gt``.

    Undefined cases: both maps empty -> 0.0; one side empty -> ``empty_distance``, by
    default the image diagonal ``hypot(H, W)``.

    Args:
        pred: segmented instance map, ``0`` = background.
        gt: ground-truth instance map, ``0`` = background.
        empty_distance: the distance given to objects when the other side is empty
            (``None``: the image diagonal).

    Shapes:
        - pred: ``[H, W]``, any integer dtype (numpy or torch), labels ``0..2**31-1``
        - gt: ``[H, W]``, same shape as ``pred``

    Returns:
        The object Hausdorff distance in pixels (``>= 0``) as a Python float.

    Raises:
        ValueError: a map that is not 2-D, shapes that differ, labels out of range, or a
            negative ``empty_distance``.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import object_hausdorff
        >>> gt = np.zeros((4, 6), dtype=np.int64); gt[1:3, 0:2] = 1
        >>> pred = np.zeros_like(gt); pred[1:3, 1:3] = 4  # the same square, one column right
        >>> object_hausdorff(pred, gt)
        1.0
        >>> object_hausdorff(np.zeros_like(gt), gt, empty_distance=100.0)
        100.0

    References:
        Sirinukunwattana et al., Medical Image Analysis 35, 2017 (the GlaS challenge).
    """
    pred, gt = _check_pair("pred", pred, "gt", gt)
    empty_distance = _check_empty_distance(empty_distance)
    return _scores(_image_sums(pred, gt, hausdorff=True, empty_distance=empty_distance))["hausdorff"]


def _as_map_list(name: str, maps: object) -> list[object]:
    if isinstance(maps, (np.ndarray, torch.Tensor)) and maps.ndim == 2:
        raise ValueError(f"{name} must be a sequence of [H, W] maps, got a single map of shape {tuple(maps.shape)}")
    if isinstance(maps, (str, bytes)) or not isinstance(maps, (Iterable, np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a sequence of [H, W] maps, got {type(maps).__name__}")
    return list(maps)


def glas_metrics(
    preds: Sequence[np.ndarray | torch.Tensor],
    gts: Sequence[np.ndarray | torch.Tensor],
    aggregate: str = "pooled",
    empty_distance: float | None = None,
) -> dict[str, float]:
    """GlaS object F1, Dice and Hausdorff of a set of images.

    ``aggregate="pooled"`` is the official GlaS definition: F1 from the ``TP``, ``FP``
    and ``FN`` summed over all images, Dice and Hausdorff with the area weights
    normalised over all objects of the whole set (so a large image with many glands
    counts more). ``aggregate="per_image"`` is the mean over images of
    :func:`object_f1`, :func:`object_dice` and :func:`object_hausdorff`.

    Undefined cases: the single-image rules of those functions apply per image. Pooled,
    an object whose image has no objects on the other side gets that image's
    ``empty_distance`` (by default its diagonal ``hypot(H, W)``); if one side is empty
    in every image, Dice is 0 and Hausdorff is the other side's weighted term alone;
    both sides empty everywhere gives F1 1, Dice 1, Hausdorff 0.

    Args:
        preds: segmented instance maps, one per image.
        gts: ground-truth instance maps, in the same order.
        aggregate: ``"pooled"`` (official) or ``"per_image"``.
        empty_distance: the distance given to objects whose image has nothing on the
            other side (``None``: that image's diagonal).

    Shapes:
        - preds[k]: ``[H_k, W_k]``, any integer dtype (numpy or torch), labels ``0..2**31-1``
        - gts[k]: the same shape as ``preds[k]``

    Returns:
        ``{"f1": ..., "dice": ..., "hausdorff": ...}``, Python floats.

    Raises:
        ValueError: sequences of different or zero length, a bad ``aggregate``, a map
            that is not 2-D, maps of an image whose shapes differ, labels out of range.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import glas_metrics
        >>> gts = [np.array([[1, 1, 0, 0]]), np.array([[1, 1, 0, 2]])]
        >>> preds = [np.array([[1, 1, 0, 0]]), np.array([[0, 0, 0, 2]])]
        >>> glas_metrics(preds, gts)  # TP 2, FP 0, FN 1; Dice (3/5 + 3/3) / 2; H (6/5 + 0) / 2
        {'f1': 0.8, 'dice': 0.8, 'hausdorff': 0.6}
        >>> glas_metrics(preds, gts, aggregate="per_image")["f1"]  # (1 + 2/3) / 2
        0.833...

    References:
        Sirinukunwattana et al., Medical Image Analysis 35, 2017 (the GlaS challenge).
    """
    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
    empty_distance = _check_empty_distance(empty_distance)
    pred_list, gt_list = _as_map_list("preds", preds), _as_map_list("gts", gts)
    if len(pred_list) != len(gt_list):
        raise ValueError(f"preds and gts must have the same length, got {len(pred_list)} and {len(gt_list)}")
    if not pred_list:
        raise ValueError("preds and gts must hold at least one image, got 0")
    sums = []
    for k, (pred, gt) in enumerate(zip(pred_list, gt_list)):
        pred, gt = _check_pair(f"preds[{k}]", pred, f"gts[{k}]", gt)
        sums.append(_image_sums(pred, gt, hausdorff=True, empty_distance=empty_distance))
    if aggregate == "pooled":
        total = _ImageSums()
        for s in sums:
            total = total + s
        return _scores(total)
    per_image = [_scores(s) for s in sums]
    return {key: float(np.mean([p[key] for p in per_image])) for key in ("f1", "dice", "hausdorff")}


# ----------------------------------------------------------------------------------------
# Pixel-level metrics on semantic maps


def _foreground_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    p, g = pred > 0, gt > 0
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


def pixel_dice(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Pixel-level foreground Dice ``2 |P & G| / (|P| + |G|)``, every non-zero label foreground.

    Pixels of all maps in a batch are pooled (one Dice over all pixels). Both maps
    without foreground -> 1.0; one side without foreground -> 0.0.

    Args:
        pred: predicted semantic (or instance) map, ``0`` = background.
        gt: ground-truth map, ``0`` = background.

    Shapes:
        - pred: ``[H, W]`` or ``[B, H, W]``, any integer dtype, labels ``0..2**31-1``
        - gt: the same shape as ``pred``

    Returns:
        The Dice in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: a map of the wrong rank, shapes that differ, labels out of range.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import pixel_dice
        >>> pixel_dice(np.array([[1, 1, 0, 0]]), np.array([[0, 2, 2, 0]]))  # 2 * 1 / (2 + 2)
        0.5
    """
    pred, gt = _check_pair("pred", pred, "gt", gt, ndim=(2, 3))
    tp, fp, fn = _foreground_counts(pred, gt)
    return 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)


def pixel_f1(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> float:
    """Pixel-level foreground F1, the harmonic mean of pixel precision and recall.

    ``precision = |P & G| / |P|``, ``recall = |P & G| / |G|``; for binary foreground this
    equals :func:`pixel_dice` (the segmentation and detection literatures name the same
    number differently). Both maps without foreground -> 1.0; one side without
    foreground or no overlap -> 0.0. Pixels of all maps in a batch are pooled.

    Args:
        pred: predicted semantic (or instance) map, ``0`` = background.
        gt: ground-truth map, ``0`` = background.

    Shapes:
        - pred: ``[H, W]`` or ``[B, H, W]``, any integer dtype, labels ``0..2**31-1``
        - gt: the same shape as ``pred``

    Returns:
        The F1 in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: a map of the wrong rank, shapes that differ, labels out of range.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import pixel_f1
        >>> pixel_f1(np.array([[1, 1, 1, 0]]), np.array([[1, 0, 0, 0]]))  # P 1/3, R 1
        0.5
    """
    pred, gt = _check_pair("pred", pred, "gt", gt, ndim=(2, 3))
    tp, fp, fn = _foreground_counts(pred, gt)
    if tp + fp + fn == 0:
        return 1.0
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2.0 * precision * recall / (precision + recall)


def mean_iou(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> float:
    """Mean intersection over union of the classes of a semantic map (background included).

    ``IoU_c = |P = c & G = c| / |P = c or G = c|`` over the pixels whose ground truth is
    not ``ignore_index``, averaged over the classes ``0..num_classes-1`` that occur in
    ``pred`` or ``gt`` (a class absent from both has no IoU and is skipped). Pixels of
    all maps in a batch are pooled. No counted pixel at all -> 1.0.

    Args:
        pred: predicted class map.
        gt: ground-truth class map.
        num_classes: ``K``; by default the largest label (outside ``ignore_index``) + 1.
        ignore_index: a ground-truth label whose pixels are not counted.

    Shapes:
        - pred: ``[H, W]`` or ``[B, H, W]``, any integer dtype, labels ``0..K-1``
        - gt: the same shape as ``pred``, labels ``0..K-1`` or ``ignore_index``

    Returns:
        The mean IoU in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: a map of the wrong rank, shapes that differ, labels outside
            ``0..K-1`` (``ignore_index`` excepted in ``gt``), ``num_classes < 1``.
        TypeError: a map that is not an integer numpy array or tensor.

    Example:
        >>> import numpy as np
        >>> from densessl.metrics import mean_iou
        >>> mean_iou(np.array([[0, 1, 1, 1]]), np.array([[0, 0, 1, 1]]))  # (1/2 + 2/3) / 2
        0.5833...
    """
    pred, gt = _check_pair("pred", pred, "gt", gt, ndim=(2, 3))
    if ignore_index is not None:
        ignore_index = int(check_number("ignore_index", ignore_index, integer=True))
    keep = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
    p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    if num_classes is None:
        num_classes = int(max(p.max(initial=0), g.max(initial=0))) + 1
    num_classes = int(check_number("num_classes", num_classes, low=1, integer=True))
    for name, x in (("pred", p), ("gt", g)):
        if x.size and int(x.max()) >= num_classes:
            extra = f" or ignore_index={ignore_index}" if name == "gt" and ignore_index is not None else ""
            raise ValueError(f"{name} must hold class indices in 0..{num_classes - 1}{extra}, got {int(x.max())}")
    confusion = np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, -1)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return 1.0 if not present.any() else float(np.mean(inter[present] / union[present]))
