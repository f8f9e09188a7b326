"""Pseudo labels from a teacher's logits, kept only where the prediction is confident."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ._checks import check_logits, check_mask, check_number
from .functional._entropy import entropy

__all__ = ["EntropyPseudoLabeler", "PseudoLabels"]


class PseudoLabels(NamedTuple):
    """Pseudo labels, the pixels kept, and the entropy that decided it.

    The fields are ``labels`` (the argmax class where kept, ``ignore_index``
    elsewhere), ``mask`` (True where kept) and ``entropy`` (per-pixel softmax entropy,
    in nats or as a fraction of ``log K``).

    Shapes:
        - labels: ``[B, H, W]``, int64, ``0..K-1`` or ``ignore_index``
        - mask: ``[B, H, W]``, bool
        - entropy: ``[B, H, W]``, float32 (float64 for float64 logits)

    Example:
        >>> import torch
        >>> from densessl import PseudoLabels
        >>> pl = PseudoLabels(torch.tensor([[[0, 255]]]), torch.tensor([[[True, False]]]),
        ...                   torch.tensor([[[0.1, 0.9]]]))
        >>> float(pl.kept_fraction)
        0.5
    """

    #: ``[B, H, W]`` int64: the argmax class where kept, ``ignore_index`` elsewhere.
    labels: torch.Tensor
    #: ``[B, H, W]`` bool: True where the pixel was kept.
    mask: torch.Tensor
    #: ``[B, H, W]`` float32 (float64 for float64 logits): the softmax entropy that decided it.
    entropy: torch.Tensor

    @property
    def kept_fraction(self) -> torch.Tensor:
        """Fraction of all pixels in the batch that were kept (0-dim float32 tensor; 0 if empty).

        A tensor rather than a float, so that logging it need not synchronise the
        device and it can be all-reduced across processes; ``float(...)`` it to print.
        """
        count = max(self.mask.numel(), 1)
        return self.mask.sum(dtype=torch.float32) / count


class EntropyPseudoLabeler(nn.Module):
    r"""Turn logits into hard pseudo labels, dropping pixels whose entropy is too high.

    A pixel keeps its argmax class iff the natural-log entropy of ``softmax(logits)``
    is *strictly below* ``threshold`` (and the optional input ``mask`` is True); every
    other pixel gets ``ignore_index``. With ``normalized=True`` the entropy is divided
    by ``log K`` and ``threshold`` is a fraction in ``(0, 1]``. Runs under
    ``torch.no_grad()``; all outputs are detached. Pair it with
    :func:`densessl.functional.masked_cross_entropy`, which returns a zero with a graph
    when nothing is kept.

    With ``K = 3`` a threshold of 0.5 nats keeps a pixel only when its largest
    probability is about 0.8 or more, so a freshly initialised teacher keeps none.

    A single threshold keeps the classes the teacher is sure of and drops the uncertain
    ones: in gland segmentation almost no pixel of the thin contour class passes it, and the
    unlabelled loss then teaches background and interior only. ``min_class_keep = q`` also
    keeps, within each class of the argmax, the ``ceil(q * n_c)`` pixels of lowest entropy
    (of its ``n_c`` pixels allowed by ``mask``): a per-class threshold that never drops a
    predicted class entirely (ties at the cut are kept too).

    Args:
        threshold: entropy below which a pixel is kept, ``> 0`` (nats; ``<= 1`` when
            normalized).
        normalized: compare ``entropy / log K`` instead of the entropy in nats.
        ignore_index: label written where a pixel is dropped (must not be a class index).
        min_class_keep: least fraction of each predicted class's pixels kept, in ``[0, 1]``
            (0: the threshold alone decides).

    Shapes:
        - logits: ``[B, K, H, W]`` float, finite
        - mask: ``[B, H, W]`` bool, False forces a pixel to be dropped (e.g. padding)
        - returns: :class:`PseudoLabels` of ``[B, H, W]`` tensors

    Raises:
        ValueError: a ``threshold`` outside its range, wrong shapes, or an
            ``ignore_index`` in ``0..K-1``.
        TypeError: wrong types or dtypes.

    Example:
        >>> import torch
        >>> from densessl import EntropyPseudoLabeler
        >>> logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # K = 3, 1 x 2 pixels
        >>> out = EntropyPseudoLabeler(threshold=0.5)(logits)
        >>> out.labels.tolist(), out.mask.tolist(), float(out.kept_fraction)
        ([[[0, 255]]], [[[True, False]]], 0.5)
        >>> out.entropy
        tensor([[[0.0799, 1.0986]]])
        >>> # class 1 is predicted on two uncertain pixels: keep the surer half of them
        >>> logits = torch.tensor([[[[5.0, 0.0, 0.0]], [[0.0, 0.4, 0.2]], [[0.0, 0.0, 0.0]]]])
        >>> EntropyPseudoLabeler(0.5, min_class_keep=0.5)(logits).labels.tolist()
        [[[0, 1, 255]]]
    """

    def __init__(
        self, threshold: float, normalized: bool = False, ignore_index: int = 255, min_class_keep: float = 0.0
    ) -> None:
        super().__init__()
        self.min_class_keep = float(check_number("min_class_keep", min_class_keep, low=0.0, high=1.0))
        if not isinstance(normalized, bool):
            raise TypeError(f"normalized must be a bool, got {type(normalized).__name__}")
        high = 1.0 if normalized else None
        self.threshold = float(check_number("threshold", threshold, low=0.0, low_inclusive=False, high=high))
        self.normalized = normalized
        self.ignore_index = int(check_number("ignore_index", ignore_index, integer=True))

    def extra_repr(self) -> str:
        extra = f", min_class_keep={self.min_class_keep}" if self.min_class_keep else ""
        return f"threshold={self.threshold}, normalized={self.normalized}, ignore_index={self.ignore_index}{extra}"

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, *, mask: torch.Tensor | None = None) -> PseudoLabels:
        """Pseudo-label every pixel of ``logits``.

        Args:
            logits: the teacher's class scores.
            mask: optional pixels that may be kept (False forces ``ignore_index``); keyword only.

        Shapes:
            - logits: ``[B, K, H, W]``
            - mask: ``[B, H, W]`` bool
            - returns: :class:`PseudoLabels` (labels int64, mask bool, entropy float32)

        Returns:
            The :class:`PseudoLabels`.

        Raises:
            ValueError: wrong shapes, NaN/Inf logits, or ``ignore_index`` in ``0..K-1``.
            TypeError: wrong dtypes.
        """
        check_logits("logits", logits)
        b, k, h, w = logits.shape
        if 0 <= self.ignore_index < k:
            raise ValueError(f"ignore_index must not be a class index 0..{k - 1} of logits, got {self.ignore_index}")
        if mask is not None:
            check_mask("mask", mask, shape=(b, h, w))
        ent = entropy(logits.detach(), dim=1, normalized=self.normalized)
        argmax = logits.detach().argmax(dim=1)
        keep = ent < self.threshold
        if self.min_class_keep > 0:
            allowed = mask if mask is not None else torch.ones_like(keep)
            for c in range(k):
                of_class = allowed & (argmax == c)
                values = ent[of_class]
                if values.numel() == 0:
                    continue
                rank = max(1, math.ceil(self.min_class_keep * values.numel()))
                cut = torch.kthvalue(values.float().cpu(), rank).values.to(ent)
                keep |= of_class & (ent <= cut)
        if mask is not None:
            keep &= mask
        dropped = torch.full_like(keep, self.ignore_index, dtype=torch.long)
        labels = torch.where(keep, argmax, dropped)
        return PseudoLabels(labels, keep, ent)
