"""The recipe's pseudo-label rules: what the teacher's prediction teaches the student on unlabelled pixels.

The rules differ in which pixels they keep and how much each counts:

- ``entropy`` (the default): :class:`densessl.EntropyPseudoLabeler` — the argmax where the entropy
  is below ``threshold``, and at least ``min_class_keep`` of every predicted class (the surest);
- ``instance``: :func:`~examples.dpfr_gland.targets.instance_pseudo_labels` — the teacher's glands
  as instances, each given its full contour band by the labelled targets' own rule;
- ``class_share`` (DARS, He et al. ICCV 2021): per-class thresholds, chosen so that the kept
  pseudo labels carry the labelled pixels' class shares (``CVMI-Lab/DARS``: the kept count of
  each class is proportional to its labelled frequency, the surest pixels of the class first);
- ``soft`` (SoftMatch, Chen et al. ICLR 2023): every argmax pixel is kept, weighted by a
  truncated Gaussian of its confidence: ``1`` at or above the running mean confidence ``mu``,
  ``exp(-(p - mu)^2 / (2 var / n_sigma^2))`` below it, with ``mu`` and ``var`` running averages
  (momentum 0.999) of the batches' confidence (USB's ``n_sigma = 2``);
- ``distill``: no hard label at all — the student's unlabelled cross-entropy is taken against the
  teacher's whole (aligned) class distribution on every pixel (:func:`soft_cross_entropy`), the
  Mean Teacher's consistency (Tarvainen & Valpola, NeurIPS 2017) with a cross-entropy in place of
  their squared error. A hard argmax deletes a class wherever it is never the most probable: the
  thin contour between touching glands, which the teacher gives 0.3 and the interior 0.6, is taught
  as interior; a soft target teaches the 0.3. The entropy rule's sure pixels still give the labels
  the contrast and the flow read.

:class:`PseudoLabelRule` applies the one a config names and keeps the running state (``soft``).
"""

from __future__ import annotations

__all__ = ["RULES", "PseudoLabelRule", "class_share_pseudo_labels", "soft_cross_entropy"]

from typing import NamedTuple

import torch
from torch import nn

import densessl

from .targets import instance_pseudo_labels

#: The pseudo-label rules a config can name (``pseudo_labels``).
RULES = ("entropy", "instance", "class_share", "soft", "distill")


class Pseudo(NamedTuple):
    """Pseudo labels of one batch: ``labels`` (``ignore_index`` where not kept), ``mask`` (kept),
    ``weight`` (per-pixel factor in ``[0, 1]``, or ``None`` for all ones) and ``target`` (``distill``:
    the teacher's class probabilities ``[B, K, H, W]``, which the unlabelled cross-entropy then
    uses instead of ``labels``; ``None`` for the hard rules)."""

    labels: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor | None
    target: torch.Tensor | None = None

    @property
    def kept_fraction(self) -> torch.Tensor:
        return self.mask.float().mean()


def class_share_pseudo_labels(
    probs: torch.Tensor, shares: torch.Tensor, keep: float, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class thresholds that make the kept pseudo labels carry ``shares`` (DARS).

    ``keep * N`` pixels are kept in all (``N`` pixels in the batch); class ``c`` gets
    ``round(keep * N * shares[c])`` of them, the most confident pixels of its argmax (all of
    them if it has fewer).

    Args:
        probs: class probabilities.
        shares: the target class shares (e.g. the labelled pixels' frequencies), summing to 1.
        keep: the overall kept fraction, in ``(0, 1]``.
        ignore_index: the label of pixels not kept.

    Shapes:
        - probs: ``[B, K, H, W]`` float
        - shares: ``[K]`` float
        - returns: ``(labels [B, H, W] int64, mask [B, H, W] bool)``

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6]]).t().reshape(1, 2, 2, 2)
        >>> labels, mask = class_share_pseudo_labels(probs, torch.tensor([0.5, 0.5]), keep=0.5)
        >>> labels.flatten().tolist()  # the surest background pixel and the one gland pixel
        [0, 255, 255, 1]
    """
    if probs.dim() != 4 or shares.shape != (probs.shape[1],):
        raise ValueError(
            f"probs must be [B, K, H, W] and shares [K], got {tuple(probs.shape)} and {tuple(shares.shape)}"
        )
    confidence, argmax = probs.detach().max(dim=1)
    total = keep * argmax.numel()
    mask = torch.zeros_like(argmax, dtype=torch.bool)
    flat_conf, flat_arg, flat_mask = confidence.flatten(), argmax.flatten(), mask.view(-1)
    for c in range(probs.shape[1]):
        members = torch.nonzero(flat_arg == c).flatten()
        quota = min(int(round(total * float(shares[c]))), members.numel())
        if quota > 0:
            best = torch.topk(flat_conf[members], quota).indices
            flat_mask[members[best]] = True
    labels = torch.where(mask, argmax, torch.full_like(argmax, ignore_index))
    return labels, mask


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of ``-sum_c weight_c * target_c * log_softmax(logits)_c``, in float32.

    Its gradient in the logits is ``softmax(logits) - target`` per pixel (all weights 1), so the
    student moves toward the teacher's distribution, minority classes included.

    Args:
        logits: the student's class scores.
        target: class probabilities per pixel (each pixel's sum 1).
        weight: optional per-class weights ``[K]``.

    Shapes:
        - logits, target: ``[B, K, H, W]``
        - weight: ``[K]``
        - returns: scalar

    Raises:
        ValueError: ``logits`` and ``target`` differ in shape or are not 4-D, or ``weight`` is not ``[K]``.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 2, 2)
        >>> round(soft_cross_entropy(logits, logits.softmax(1)).item(), 4)  # log 3
        1.0986
    """
    if logits.dim() != 4 or target.shape != logits.shape:
        raise ValueError(
            f"logits and target must both be [B, K, H, W], got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if weight is not None and weight.shape != (logits.shape[1],):
        raise ValueError(f"weight must be [K={logits.shape[1]}], got {tuple(weight.shape)}")
    per_class = -target.float() * logits.float().log_softmax(dim=1)
    if weight is not None:
        per_class = per_class * weight.float().view(1, -1, 1, 1)
    return per_class.sum(dim=1).mean()


class PseudoLabelRule(nn.Module):
    """The pseudo-label rule of a config, with its running state (``soft``'s mean and variance).

    Args:
        rule: one of :data:`RULES`.
        threshold: entropy threshold in nats (``entropy``; ``instance``'s binary entropy).
        min_class_keep: ``entropy``'s least kept share of every predicted class, and the least
            overall kept fraction of ``class_share``.
        min_size: ``instance``: smallest interior taken as a gland (network pixels).
        contour_width: ``instance``: the targets' contour width.
        ignore_index: the label of pixels not kept.
        momentum: ``soft``: momentum of the running confidence mean and variance.
        n_sigma: ``soft``: the Gaussian's width is ``sqrt(var) / n_sigma``.

    Shapes:
        - forward: logits ``[B, K, H, W]`` (and for ``class_share`` the target ``shares`` ``[K]``)
          -> :class:`Pseudo` of ``[B, H, W]`` maps

    Example:
        >>> import torch
        >>> rule = PseudoLabelRule("soft")
        >>> pseudo = rule(torch.randn(2, 3, 8, 8))
        >>> bool(pseudo.mask.all()), bool((pseudo.weight > 0).all() and (pseudo.weight <= 1).all())
        (True, True)
    """

    def __init__(
        self,
        rule: str = "entropy",
        threshold: float = 0.5,
        min_class_keep: float = 0.2,
        min_size: int = 16,
        contour_width: int = 2,
        ignore_index: int = 255,
        momentum: float = 0.999,
        n_sigma: float = 2.0,
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
        self.rule, self.threshold, self.min_class_keep = rule, threshold, min_class_keep
        self.min_size, self.contour_width, self.ignore_index = min_size, contour_width, ignore_index
        self.momentum, self.n_sigma = momentum, n_sigma
        self.entropy_rule = densessl.EntropyPseudoLabeler(
            threshold, ignore_index=ignore_index, min_class_keep=min_class_keep
        )
        self.register_buffer("mean", torch.tensor(1.0 / 3))  # SoftMatch starts at uniform confidence
        self.register_buffer("var", torch.tensor(1.0))

    def forward(self, logits: torch.Tensor, shares: torch.Tensor | None = None) -> Pseudo:
        logits = logits.detach().float()
        if self.rule in ("entropy", "distill"):
            pseudo = self.entropy_rule(logits)
            target = logits.softmax(dim=1) if self.rule == "distill" else None
            return Pseudo(pseudo.labels, pseudo.mask, None, target)
        probs = logits.softmax(dim=1)
        if self.rule == "instance":
            labels, mask = instance_pseudo_labels(
                probs, self.threshold, self.min_size, self.contour_width, self.ignore_index
            )
            return Pseudo(labels, mask, None)
        if self.rule == "class_share":
            if shares is None or float(shares.sum()) <= 0:  # no labelled pixel seen yet: the entropy rule
                pseudo = self.entropy_rule(logits)
                return Pseudo(pseudo.labels, pseudo.mask, None)
            keep = max(float(self.entropy_rule(logits).mask.float().mean()), self.min_class_keep)
            labels, mask = class_share_pseudo_labels(probs, shares / shares.sum(), keep, self.ignore_index)
            return Pseudo(labels, mask, None)
        confidence, argmax = probs.max(dim=1)
        if self.training:
            self.mean.mul_(self.momentum).add_((1 - self.momentum) * confidence.mean())
            self.var.mul_(self.momentum).add_((1 - self.momentum) * confidence.var(unbiased=True))
        below = torch.exp(-((confidence - self.mean) ** 2) / (2 * self.var / self.n_sigma**2))
        weight = torch.where(confidence >= self.mean, torch.ones_like(confidence), below)
        return Pseudo(argmax, torch.ones_like(argmax, dtype=torch.bool), weight)
