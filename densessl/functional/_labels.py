"""Label maps: resizing them to a feature map's size and a cross-entropy that survives
an all-ignored batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import (
    FLOAT_DTYPES,
    check_finite,
    check_labels,
    check_logits,
    check_mask,
    check_number,
    check_same_spatial,
    check_tensor,
)

__all__ = ["downsample_labels", "masked_cross_entropy"]


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or a pair (H, W) of ints, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"size must be positive, got {pair}")
    return pair


def downsample_labels(
    labels: torch.Tensor,
    size: int | Sequence[int],
    ignore_index: int = 255,
    mode: str = "nearest",
    num_classes: int | None = None,
    min_fraction: float = 0.0,
) -> torch.Tensor:
    """Resize a label map to ``size``, keeping ``ignore_index`` meaningful.

    ``"nearest"`` takes the label at each output pixel's centre (``nearest-exact``).
    ``"majority"`` takes, for each output pixel, the most frequent non-ignored label in
    the input area it covers (adaptive pooling of one-hot counts; ties go to the smaller
    class); an area made only of ignored pixels becomes ``ignore_index``, and so does an
    area whose winning label covers less than ``min_fraction`` of it (ignored pixels
    count in the area): with ``min_fraction=0.5`` a block labelled from one kept pixel
    of many stays ignored.

    Args:
        labels: integer class map; values ``0..K-1`` or ``ignore_index``.
        size: output ``(H', W')`` (or one int for a square).
        ignore_index: label of pixels that carry no class.
        mode: ``"nearest"`` or ``"majority"``.
        num_classes: ``K`` for ``"majority"``; inferred from the largest label if omitted.
        min_fraction: ``"majority"`` only: least share of the area the winner must cover
            (``0 <= min_fraction <= 1``; 0 keeps any winner).

    Shapes:
        - labels: ``[B, H, W]``
        - returns: ``[B, H', W']``, int64

    Raises:
        ValueError: bad ``size``/``mode``, a label map of the wrong rank, or labels
            outside ``0..K-1`` that are not ``ignore_index`` (without ``num_classes``:
            negative labels that are not ``ignore_index``).
        TypeError: non-integer labels.

    Example:
        >>> import torch
        >>> from densessl.functional import downsample_labels
        >>> y = torch.tensor([[[0, 0, 1, 1],
        ...                    [0, 1, 1, 1],
        ...                    [255, 255, 2, 2],
        ...                    [255, 255, 2, 0]]])
        >>> downsample_labels(y, 2, mode="majority").tolist()
        [[[0, 1], [255, 2]]]
        >>> downsample_labels(y, 2, mode="majority", min_fraction=0.8).tolist()  # 3 of 4 is too few
        [[[255, 1], [255, 255]]]
    """
    out_hw = _size_pair(size)
    if mode not in ("nearest", "majority"):
        raise ValueError(f"mode must be 'nearest' or 'majority', got {mode!r}")
    min_fraction = float(check_number("min_fraction", min_fraction, low=0.0, high=1.0))
    if min_fraction > 0 and mode != "majority":
        raise ValueError(f"min_fraction applies to mode='majority' only, got mode={mode!r}")
    if num_classes is not None:
        check_number("num_classes", num_classes, low=1, integer=True)
    labels = check_labels("labels", labels, num_classes=num_classes, ignore_index=ignore_index)
    if num_classes is None and labels.numel():
        # Without K only the lower bound is known: a negative label that is not
        # ignore_index is out of range (it would pass "nearest" silently and crash one_hot).
        negative = (labels < 0) & (labels != ignore_index)
        if bool(negative.any()):
            raise ValueError(
                f"labels must hold class indices >= 0 or ignore_index={ignore_index}, "
                f"got {int(negative.sum())} value(s) outside, e.g. {int(labels[negative][0])}"
            )
    if tuple(labels.shape[-2:]) == out_hw:
        return labels.clone()
    if mode == "nearest":
        # float32 holds integers exactly up to 2**24, far above any class count.
        resized = F.interpolate(labels[:, None].float(), size=out_hw, mode="nearest-exact")
        return resized[:, 0].round().long()
    valid = labels != ignore_index
    if num_classes is None:
        num_classes = int(labels[valid].max()) + 1 if bool(valid.any()) else 1
    else:
        bad = valid & (labels >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"labels must be < num_classes={num_classes} or ignore_index, got {int(labels[bad][0])}")
    onehot = F.one_hot(torch.where(valid, labels, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None].float()
    counts = F.adaptive_avg_pool2d(onehot, out_hw)
    top, best = counts.max(dim=1)  # the first maximum: ties -> smaller class
    empty = (counts.sum(dim=1) <= 0) | (top < min_fraction - 1e-6)
    return torch.where(empty, torch.full_like(best, ignore_index), best)


def masked_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = 255,
    mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    pixel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean pixel cross-entropy over the used pixels; zero-with-graph when none is used.

    ``torch.nn.functional.cross_entropy`` with ``reduction="mean"`` returns NaN when
    every pixel is ignored (0/0) — which is what happens with pseudo labels from a
    freshly initialised teacher. Here the loss is ``sum / max(count, 1)``: with no used
    pixel it is an exact zero that still depends on ``logits`` (its gradient is zero).
    The loss is computed in float32 (or float64) even for half-precision logits.

    Args:
        logits: unnormalised class scores.
        labels: class indices ``0..K-1`` or ``ignore_index``.
        ignore_index: label to skip (this and the arguments after it are keyword only).
        mask: optional extra selection; a pixel is used iff ``mask`` is True and its
            label is not ``ignore_index``.
        weight: optional per-class weights ``[K]`` (as in ``F.cross_entropy``; the
            mean is then weighted, like torch's).
        pixel_weight: optional per-pixel factors in ``[0, 1]`` (soft pseudo-label confidence,
            SoftMatch): each used pixel's loss is multiplied by its factor; the mean is still
            over the used pixels (a pixel of factor 0.5 counts half), not over the factors.

    Shapes:
        - logits: ``[B, K, H, W]``
        - labels: ``[B, H, W]``
        - mask: ``[B, H, W]`` bool
        - weight: ``[K]``, float, finite
        - pixel_weight: ``[B, H, W]``, float, in ``[0, 1]``
        - returns: scalar

    Returns:
        The mean cross-entropy over used pixels (float32, float64 for float64 logits).

    Raises:
        ValueError: wrong ranks, mismatched sizes, labels outside ``0..K-1`` that are
            not ``ignore_index``, non-finite logits or weight, a weight not of length ``K``,
            a ``pixel_weight`` of another shape than ``labels`` or outside ``[0, 1]``.
        TypeError: non-float logits or weight, non-integer labels, a non-bool mask.

    Example:
        >>> import torch
        >>> from densessl.functional import masked_cross_entropy
        >>> logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
        >>> labels = torch.full((1, 2, 2), 255)
        >>> loss = masked_cross_entropy(logits, labels)
        >>> loss.item(), loss.requires_grad
        (0.0, True)
        >>> masked_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long)).item()
        1.0986...
    """
    check_logits("logits", logits)
    k = logits.shape[1]
    labels = check_labels("labels", labels, num_classes=k, ignore_index=ignore_index)
    check_same_spatial("logits", logits, "labels", labels)
    used = labels != ignore_index
    if mask is not None:
        check_mask("mask", mask, shape=labels.shape)
        used = used & mask
    if weight is not None:
        check_tensor(
            "weight",
            weight,
            ndim=1,
            dims=f"[K={k}]",
            dtypes=FLOAT_DTYPES,
            dtype_words="float16, bfloat16, float32 or float64",
        )
        if weight.shape[0] != k:
            raise ValueError(f"weight must have shape [K={k}], got shape {tuple(weight.shape)}")
        check_finite("weight", weight)
    work = logits if logits.dtype == torch.float64 else logits.float()
    target = torch.where(used, labels, torch.zeros_like(labels))
    per_pixel = F.cross_entropy(work, target, weight=None if weight is None else weight.to(work), reduction="none")
    if weight is None:
        denom = used.sum().to(work.dtype)
    else:  # F.cross_entropy already multiplied each pixel by weight[target]
        denom = (weight.to(work)[target] * used).sum()
    if pixel_weight is not None:
        check_tensor(
            "pixel_weight",
            pixel_weight,
            ndim=3,
            dims="[B, H, W]",
            dtypes=FLOAT_DTYPES,
            dtype_words="float16, bfloat16, float32 or float64",
        )
        if pixel_weight.shape != labels.shape:
            raise ValueError(
                f"pixel_weight must have the labels' shape {tuple(labels.shape)}, got shape {tuple(pixel_weight.shape)}"
            )
        check_finite("pixel_weight", pixel_weight)
        if bool(((pixel_weight < 0) | (pixel_weight > 1)).any()):
            raise ValueError(
                f"pixel_weight must lie in [0, 1], got values in "
                f"[{float(pixel_weight.min()):g}, {float(pixel_weight.max()):g}]"
            )
        per_pixel = per_pixel * pixel_weight.detach().to(work)
    total = (per_pixel * used).sum()
    # No used pixel: total is an exact 0 connected to logits; divide by 1 instead of 0.
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))
