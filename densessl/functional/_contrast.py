"""Pixel contrast with hard anchors (ReCo / U2PL style): class means, hard-anchor
selection, negative sampling and an overflow-free InfoNCE.

All similarities are cosines of L2-normalised embeddings, computed in float32 (or
float64 when given) even under autocast, so that large-norm features cannot overflow
(raw dot products of un-normalised features did, in the DPFR article's code).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._checks import (
    FLOAT_DTYPES,
    check_features,
    check_labels,
    check_mask,
    check_number,
    check_probabilities,
    check_same_spatial,
    check_tensor,
)
from ._pixels import flatten_pixels

__all__ = [
    "ContrastIndices",
    "class_means",
    "hard_anchor_contrast",
    "info_nce",
    "sample_negatives",
    "select_hard_anchors",
]

HARD_SELECTIONS = ("distance", "confidence", "auto")

# Sampled negatives: when there are more used pixels N than M*D, the similarities come
# from gathered [A, M, D] negative embeddings (in chunks of at most this many numbers,
# 16 MiB of float32) instead of one [A, N] matrix product. Measured on CPU (768 anchors,
# M=512): the product wins at N=7370, D=128 (67 vs 183 ms); the gather at N=30000, D=32.
_GATHER_CHUNK = 1 << 22


class ContrastIndices(NamedTuple):
    """Which pixels :func:`hard_anchor_contrast` used, as flat pixel indices.

    A flat index ``i`` is pixel ``(b, h, w)`` with ``i = (b*H + h)*W + w`` (the row
    order of :func:`~densessl.functional.flatten_pixels`).

    Shapes:
        - anchors: ``[A]`` int64, the anchor pixels, grouped by class (ascending),
          hardest first within a class
        - anchor_classes: ``[A]`` int64, each anchor's class
        - negatives: ``[A, M]`` int64, the negative pixels of each anchor, or ``None``
          when every other-class pixel was a negative (``num_negatives=None``)

    Example:
        >>> import torch
        >>> from densessl.functional import hard_anchor_contrast
        >>> emb = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
        >>> labels = torch.tensor([[[0, 0], [1, 255]]])
        >>> loss, idx = hard_anchor_contrast(emb, labels, num_anchors=1, num_negatives=3,
        ...                                  return_indices=True)
        >>> idx.anchor_classes.tolist(), idx.negatives.shape
        ([0, 1], torch.Size([2, 3]))
        >>> idx.negatives[0].tolist()  # class 0's only other-class pixel is pixel 2
        [2, 2, 2]
    """

    anchors: torch.Tensor
    anchor_classes: torch.Tensor
    negatives: torch.Tensor | None


def _check_rows(name: str, rows: object) -> torch.Tensor:
    return check_tensor(
        name,
        rows,
        ndim=2,
        dims="[N, D]",
        dtypes=FLOAT_DTYPES,
        dtype_words="float16, bfloat16, float32 or float64",
    )


def _check_row_labels(name: str, labels: object, n: int | None = None) -> torch.Tensor:
    labels = check_labels(name, labels, ndim=1, ignore_index=None)
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [N={n}], got shape {tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} must hold class indices >= 0, got {int(labels.min())}")
    return labels


def _check_optional_count(name: str, value: object) -> int | None:
    if value is None:
        return None
    return int(check_number(name, value, low=1, integer=True))


def class_means(rows: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Re-normalised mean of each class's L2-normalised rows.

    Each row is L2-normalised, the rows of class ``c`` are averaged, and the average is
    L2-normalised again: a unit vector pointing at the class's centre on the sphere. A
    class with no row gets a zero vector. The result is differentiable; detach it
    yourself where the mean must act as a fixed target.

    Args:
        rows: one embedding per row (need not be normalised).
        labels: the class of each row.
        num_classes: ``K``; labels must lie in ``0..K-1``.

    Shapes:
        - rows: ``[N, D]``, float
        - labels: ``[N]``, integer in ``0..K-1``
        - returns: ``[K, D]``, unit rows (zero rows for absent classes), float32 or
          float64 (float64 only if ``rows`` is)

    Raises:
        ValueError: wrong ranks, mismatched ``N``, labels outside ``0..K-1``.
        TypeError: non-float rows or non-integer labels.

    Example:
        >>> import torch
        >>> from densessl.functional import class_means
        >>> rows = torch.tensor([[2.0, 0.0], [0.0, 5.0], [0.0, 1.0]])
        >>> class_means(rows, torch.tensor([0, 0, 2]), 3)
        tensor([[0.7071, 0.7071],
                [0.0000, 0.0000],
                [0.0000, 1.0000]])
    """
    rows = _check_rows("rows", rows)
    labels = _check_row_labels("labels", labels, rows.shape[0])
    k = int(check_number("num_classes", num_classes, low=1, integer=True))
    if labels.numel() and int(labels.max()) >= k:
        raise ValueError(f"labels must hold class indices in 0..{k - 1}, got {int(labels.max())}")
    work = rows.double() if rows.dtype == torch.float64 else rows.float()
    unit = F.normalize(work, dim=1)
    sums = torch.zeros(k, work.shape[1], dtype=work.dtype, device=work.device).index_add(0, labels, unit)
    return F.normalize(sums, dim=1)


def select_hard_anchors(
    scores: torch.Tensor, labels: torch.Tensor, num_anchors: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``num_anchors`` lowest-scoring rows of every class, without a loop.

    The score says how *easy* a row is (its cosine to its class mean, or the
    probability of its own class): the hardest anchors are the lowest scores. Rows are
    sorted by score and then, stably, by class, so each class forms one run, hardest
    first; a row is kept if its rank within its run is below ``num_anchors``. Ties keep
    the row order.

    Args:
        scores: easiness of each row (lower = harder).
        labels: class of each row, ``>= 0``.
        num_anchors: most anchors per class; ``None`` keeps every row.

    Shapes:
        - scores: ``[N]``, float
        - labels: ``[N]``, integer
        - returns: ``(index [A], classes [A])``, both int64; ``index`` points into the
          rows, grouped by class (ascending), hardest first;
          ``A = sum_c min(n_c, num_anchors)``

    Raises:
        ValueError: wrong ranks or sizes, negative labels, ``num_anchors < 1``.
        TypeError: non-integer labels or ``num_anchors``.

    Example:
        >>> import torch
        >>> from densessl.functional import select_hard_anchors
        >>> scores = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.2])
        >>> labels = torch.tensor([0, 0, 0, 1, 1])
        >>> select_hard_anchors(scores, labels, 2)
        (tensor([1, 2, 4, 3]), tensor([0, 0, 1, 1]))
    """
    scores = check_tensor("scores", scores, ndim=1, dims="[N]")
    if not scores.is_floating_point():
        raise TypeError(f"scores must have a floating dtype, got {str(scores.dtype).replace('torch.', '')}")
    labels = _check_row_labels("labels", labels, scores.shape[0])
    num_anchors = _check_optional_count("num_anchors", num_anchors)
    by_score = torch.argsort(scores, stable=True)
    order = by_score[torch.argsort(labels[by_score], stable=True)]
    sorted_labels = labels[order]
    if num_anchors is None:
        return order, sorted_labels
    n = labels.shape[0]
    if n == 0:
        return order, sorted_labels
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=labels.device) - starts[sorted_labels]
    keep = rank < num_anchors
    return order[keep], sorted_labels[keep]


def sample_negatives(
    labels: torch.Tensor,
    anchor_classes: torch.Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each anchor, ``num_negatives`` rows of *other* classes, uniformly with replacement.

    Row ``j`` of the other classes' rows is found by arithmetic on the class-sorted row
    order (skip the anchor's own run), so no ``[A, N]`` mask is ever built.

    Args:
        labels: class of each candidate row, ``>= 0``.
        anchor_classes: class of each anchor; every anchor's class must leave at least
            one row of another class.
        num_negatives: ``M``, negatives per anchor.
        generator: random source (on the labels' device) for reproducible draws.

    Shapes:
        - labels: ``[N]``, integer
        - anchor_classes: ``[A]``, integer
        - returns: ``[A, M]``, int64 indices into the rows

    Raises:
        ValueError: wrong ranks, negative labels, ``num_negatives < 1``, or an anchor
            class with no other-class row.
        TypeError: non-integer labels or ``num_negatives``.

    Example:
        >>> import torch
        >>> from densessl.functional import sample_negatives
        >>> labels = torch.tensor([0, 1, 0, 2])
        >>> neg = sample_negatives(labels, torch.tensor([0, 0]), 5, torch.Generator().manual_seed(0))
        >>> neg.shape, bool((labels[neg] != 0).all())
        (torch.Size([2, 5]), True)
    """
    labels = _check_row_labels("labels", labels)
    anchor_classes = _check_row_labels("anchor_classes", anchor_classes)
    m = int(check_number("num_negatives", num_negatives, low=1, integer=True))
    n = labels.shape[0]
    k = int(max(int(labels.max()) if n else 0, int(anchor_classes.max()) if anchor_classes.numel() else 0)) + 1
    counts = torch.bincount(labels, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(labels, stable=True)
    own = counts[anchor_classes]
    n_other = n - own
    if anchor_classes.numel() and int(n_other.min()) < 1:
        raise ValueError("anchor_classes holds a class with no row of another class in labels to draw negatives from")
    u = torch.rand(anchor_classes.shape[0], m, dtype=torch.float64, device=labels.device, generator=generator)
    j = torch.minimum((u * n_other[:, None]).long(), (n_other - 1)[:, None])
    start = starts[anchor_classes][:, None]
    return order[j + own[:, None] * (j >= start)]


def info_nce(
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-anchor InfoNCE from similarities, by ``logsumexp`` (no overflow).

    ``loss_a = -log( exp(s_ap/τ) / (exp(s_ap/τ) + Σ_n exp(s_an/τ)) )``
    ``= logsumexp([s_ap, s_a1, ..., s_aM] / τ) - s_ap/τ``, always ``>= 0``.

    Args:
        positive: similarity of each anchor to its positive.
        negatives: similarity of each anchor to each negative.
        temperature: ``τ > 0``.
        negative_mask: which negatives count (``False`` ones are left out); all when
            ``None``.

    Shapes:
        - positive: ``[A]``, float
        - negatives: ``[A, M]``, float
        - negative_mask: ``[A, M]``, bool
        - returns: ``[A]``, float, ``>= 0``

    Raises:
        ValueError: mismatched shapes, ``temperature <= 0`` or infinite.

    Example:
        >>> import torch
        >>> from densessl.functional import info_nce
        >>> info_nce(torch.tensor([1.0]), torch.tensor([[1.0, 1.0, 1.0]]), 0.5)  # log 4
        tensor([1.3863])
    """
    positive = check_tensor("positive", positive, ndim=1, dims="[A]")
    negatives = check_tensor("negatives", negatives, ndim=2, dims="[A, M]")
    if negatives.shape[0] != positive.shape[0]:
        raise ValueError(f"negatives must have shape [A={positive.shape[0]}, M], got shape {tuple(negatives.shape)}")
    tau = float(check_number("temperature", temperature, low=0.0, low_inclusive=False, finite=True))
    scaled = negatives / tau
    if negative_mask is not None:
        check_mask("negative_mask", negative_mask, shape=negatives.shape)
        scaled = scaled.masked_fill(~negative_mask, float("-inf"))
    logits = torch.cat([positive[:, None] / tau, scaled], dim=1)
    return torch.logsumexp(logits, dim=1) - positive / tau


def _sampled_similarities(anchors: torch.Tensor, rows: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """``sim[a, m] = <anchors[a], rows[negatives[a, m]]>`` by the cheaper of two routes."""
    a, m = negatives.shape
    n, d = rows.shape
    if n <= m * d:  # one [A, N] matrix product holds fewer numbers than [A, M, D] gathers
        return torch.gather(anchors @ rows.T, 1, negatives)
    step = max(1, _GATHER_CHUNK // max(1, m * d))
    parts = [
        torch.einsum("ad,amd->am", anchors[i : i + step], rows[negatives[i : i + step]])
        for i in range(0, a, step)  # chunks of anchors, not pixels: bounds the gather's memory
    ]
    return torch.cat(parts, dim=0) if parts else anchors.new_zeros(0, m)


def hard_anchor_contrast(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    probabilities: torch.Tensor | None = None,
    temperature: float = 0.5,
    num_anchors: int | None = 256,
    num_negatives: int | None = 512,
    ignore_index: int = 255,
    hard_selection: str = "auto",
    generator: torch.Generator | None = None,
    return_indices: bool = False,
    num_classes: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ContrastIndices]:
    """Hard-anchor pixel contrast with detached class-mean positives (ReCo / U2PL).

    A pixel is *used* if its label is not ``ignore_index`` and ``mask`` is True. Every
    used embedding is L2-normalised. For every class ``c`` present among the used pixels:

    - positive: the mean of class ``c``'s normalised embeddings, re-normalised and
      **detached** (a fixed target: gradients reach only anchors and negatives);
    - anchors: the ``num_anchors`` hardest pixels of class ``c``: lowest cosine to
      the class mean (``"distance"``) or lowest probability of class ``c``
      (``"confidence"``, needs ``probabilities``; ``"auto"`` picks ``"confidence"``
      exactly when ``probabilities`` is given);
    - negatives: ``num_negatives`` used pixels of the other classes per anchor, drawn
      uniformly with replacement (``generator``), or every other-class pixel when
      ``num_negatives`` is ``None`` (deterministic).

    The loss is the mean over all anchors of all classes of
    ``-log( exp(s_ap/τ) / (exp(s_ap/τ) + Σ_n exp(s_an/τ)) )`` with cosine
    similarities ``s``, computed by ``logsumexp`` in float32 (float64 if given) even
    under autocast. With fewer than two classes present the loss is
    ``embeddings.sum() * 0``: an exact zero still connected to the graph.

    Args:
        embeddings: per-pixel embeddings (e.g. a :class:`~densessl.ProjectionHead`
            output); any positive scale per pixel gives the same loss.
        labels: class per pixel or ``ignore_index``.
        mask: optional extra selection of pixels (True = use).
        probabilities: class probabilities for ``"confidence"`` selection; when given,
            labels must be below its ``K``.
        temperature: ``τ > 0``.
        num_anchors: most anchors per class (``None``: every pixel is an anchor).
        num_negatives: negatives per anchor (``None``: all other-class pixels).
        ignore_index: label of pixels to skip.
        hard_selection: ``"auto"`` (default; confidence when ``probabilities`` are
            given, else distance), ``"distance"`` or ``"confidence"``.
        generator: random source for the negatives (on the embeddings' device).
        return_indices: also return the :class:`ContrastIndices` that were used.
        num_classes: optional ``K``: labels must then lie in ``0..K-1`` (or be
            ``ignore_index``); taken from ``probabilities`` when those are given.

    Shapes:
        - embeddings: ``[B, D, H, W]``, float, finite
        - labels: ``[B, H, W]``, integer, ``0..K-1`` (``>= 0`` without ``K``) or ``ignore_index``
        - mask: ``[B, H, W]``, bool
        - probabilities: ``[B, K, H, W]``, in ``[0, 1]``, summing to 1 over ``K``
        - returns: scalar, float32 (float64 for float64 embeddings), ``>= 0``

    Returns:
        The loss, or ``(loss, ContrastIndices)`` when ``return_indices`` is True.

    Raises:
        ValueError: wrong ranks, mismatched batch/spatial sizes, labels outside
            ``0..K-1`` (with probabilities) or negative, bad numbers or options.
        TypeError: wrong dtypes (float embeddings, integer labels, bool mask).

    References:
        Liu et al., "Bootstrapping Semantic Segmentation with Regional Contrast"
        (ReCo), ICLR 2022; Wang et al., "Semi-Supervised Semantic Segmentation Using
        Unreliable Pseudo-Labels" (U2PL), CVPR 2022.

    Example:
        >>> import torch
        >>> from densessl.functional import hard_anchor_contrast
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]).T.reshape(1, 2, 2, 2)
        >>> labels = torch.tensor([[[0, 0], [1, 1]]])
        >>> loss = hard_anchor_contrast(emb, labels, num_negatives=None)
        >>> round(loss.item(), 4)
        0.288
        >>> hard_anchor_contrast(emb, torch.zeros(1, 2, 2, dtype=torch.long)).item()
        0.0
    """
    check_features("embeddings", embeddings)
    if probabilities is not None:
        check_probabilities("probabilities", probabilities)
        check_same_spatial("embeddings", embeddings, "probabilities", probabilities)
    if num_classes is not None:
        num_classes = int(check_number("num_classes", num_classes, low=1, integer=True))
        if probabilities is not None and probabilities.shape[1] != num_classes:
            raise ValueError(
                f"probabilities must have K=num_classes={num_classes} classes in dim 1, "
                f"got shape {tuple(probabilities.shape)}"
            )
    elif probabilities is not None:
        num_classes = probabilities.shape[1]
    labels = check_labels("labels", labels, num_classes=num_classes, ignore_index=ignore_index)
    check_same_spatial("embeddings", embeddings, "labels", labels)
    used = labels != ignore_index
    if used.numel() and bool((labels[used] < 0).any()):
        raise ValueError(
            f"labels must hold class indices >= 0 or ignore_index={ignore_index}, got {int(labels[used].min())}"
        )
    if mask is not None:
        check_mask("mask", mask, shape=labels.shape)
        used = used & mask
    tau = float(check_number("temperature", temperature, low=0.0, low_inclusive=False, finite=True))
    num_anchors = _check_optional_count("num_anchors", num_anchors)
    num_negatives = _check_optional_count("num_negatives", num_negatives)
    if hard_selection not in HARD_SELECTIONS:
        raise ValueError(f"hard_selection must be one of {HARD_SELECTIONS}, got {hard_selection!r}")
    if hard_selection == "confidence" and probabilities is None:
        raise ValueError("probabilities must be given when hard_selection='confidence'")
    by_confidence = hard_selection == "confidence" or (hard_selection == "auto" and probabilities is not None)

    work_dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    # Zero with a graph: the exit for fewer than two classes (never 0/0 = NaN).
    zero = embeddings.to(work_dtype).sum() * 0
    flat_used = used.reshape(-1)
    pixel_index = torch.nonzero(flat_used).squeeze(1)
    row_labels = labels.reshape(-1)[pixel_index]
    empty = ContrastIndices(
        pixel_index[:0], row_labels[:0], None if num_negatives is None else pixel_index.new_zeros(0, num_negatives)
    )
    if row_labels.numel() == 0:
        return (zero, empty) if return_indices else zero
    k = num_classes if num_classes is not None else int(row_labels.max()) + 1
    counts = torch.bincount(row_labels, minlength=k)
    if int((counts > 0).sum()) < 2:
        return (zero, empty) if return_indices else zero

    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        rows = flatten_pixels(embeddings)[pixel_index].to(work_dtype)
        unit = F.normalize(rows, dim=1)
        means = class_means(unit.detach(), row_labels, k)
        if by_confidence:
            probs = flatten_pixels(probabilities)[pixel_index].to(work_dtype)  # type: ignore[arg-type]
            scores = probs.gather(1, row_labels[:, None]).squeeze(1)
        else:
            scores = (unit.detach() * means[row_labels]).sum(dim=1)
        anchor_rows, anchor_classes = select_hard_anchors(scores, row_labels, num_anchors)
        anchors = unit[anchor_rows]
        positive = (anchors * means[anchor_classes]).sum(dim=1)
        if num_negatives is None:
            sims = anchors @ unit.T
            other = row_labels[None, :] != anchor_classes[:, None]
            per_anchor = info_nce(positive, sims, tau, negative_mask=other)
            negative_rows = None
        else:
            negative_rows = sample_negatives(row_labels, anchor_classes, num_negatives, generator)
            per_anchor = info_nce(positive, _sampled_similarities(anchors, unit, negative_rows), tau)
        loss = per_anchor.mean()
    if not return_indices:
        return loss
    return loss, ContrastIndices(
        pixel_index[anchor_rows], anchor_classes, None if negative_rows is None else pixel_index[negative_rows]
    )
