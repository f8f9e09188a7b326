"""Distribution alignment of class scores toward a target class distribution, and class
weights that give a set of pseudo labels a target class distribution."""

from __future__ import annotations

__all__ = ["align_distribution", "balancing_weights"]

import torch

from .._checks import check_finite, check_labels, check_logits, check_number, check_tensor


def align_distribution(
    logits: torch.Tensor, source: torch.Tensor, target: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    r"""Shift class scores so that their softmax is :math:`p \cdot \pi_t / \pi_s`, renormalised.

    ``softmax(align_distribution(z, s, t)) = normalise(softmax(z) * t / s)`` per pixel: classes
    the model predicts less often (``source``) than they occur (``target``) are boosted. This is
    ReMixMatch's distribution alignment, written on logits: ``z + log t - log s``.

    Args:
        logits: class scores.
        source: the model's average predicted class distribution (e.g. a running mean over
            unlabelled pixels), positive.
        target: the class distribution to align to (e.g. the labelled pixels' frequencies), >= 0.
        eps: added to ``source`` and ``target`` before the logarithm, so that an absent
            class gives a large finite shift, never ``inf``.

    Shapes:
        - logits: ``[B, K, H, W]`` float
        - source, target: ``[K]`` float
        - returns: ``[B, K, H, W]``, ``logits``' dtype

    Returns:
        The aligned scores (a graph through ``logits``; ``source`` and ``target`` are data).

    Raises:
        ValueError: shapes that do not match, negative or non-finite distributions.
        TypeError: non-tensor or non-float inputs.

    References:
        Berthelot et al., "ReMixMatch: Semi-supervised learning with distribution matching
        and augmentation anchoring", ICLR 2020.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 2, 1, 1)  # 50 / 50
        >>> aligned = align_distribution(logits, torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5]))
        >>> aligned.softmax(1).flatten().tolist()  # the rarely predicted class is boosted x4
        [0.2, 0.8]
    """
    check_logits("logits", logits)
    k = logits.shape[1]
    for name, dist in (("source", source), ("target", target)):
        check_tensor(
            name, dist, ndim=1, dims="[K]", dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64)
        )
        if dist.shape[0] != k:
            raise ValueError(f"{name} must have K={k} entries (the classes of logits), got shape {tuple(dist.shape)}")
        check_finite(name, dist)
        if bool((dist < 0).any()):
            raise ValueError(f"{name} must be >= 0 (a class distribution), got min {float(dist.min()):.4g}")
    shift = torch.log(target.to(torch.float32) + eps) - torch.log(source.to(torch.float32) + eps)
    return logits + shift.to(logits.device, logits.dtype).view(1, k, 1, 1)


def balancing_weights(
    labels: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, max_weight: float = 10.0
) -> torch.Tensor:
    r"""Per-class weights under which the used pixels of ``labels`` have the class distribution ``target``.

    ``w_c = target_c / share_c`` with ``share_c`` the fraction of non-ignored pixels labelled
    ``c``, clipped to ``max_weight`` and rescaled so that the mean weight over those pixels is
    1 (a weighted sum then keeps the scale of a plain one; a weighted mean such as
    :func:`masked_cross_entropy` divides the scale out anyway). With ``weight=w`` class ``c``'s
    pixels hold ``target_c`` of the total weight, up to the clipping: pseudo labels that an
    entropy filter kept mostly from the easy classes stop teaching those classes alone. A class
    absent from ``labels`` gets weight 0 (it has no pixel to weigh). When every used pixel's
    class has target 0 (or no pixel is used) there is nothing to balance towards: the weights
    are all 0, which callers should read as "no weighting" (``None``).

    Args:
        labels: class indices ``0..K-1`` or ``ignore_index`` (e.g. pseudo labels).
        target: the class distribution to reach (e.g. the labelled pixels' running
            frequencies), ``>= 0``.
        ignore_index: label of unused pixels.
        max_weight: largest weight before the rescaling (> 0), so that a class with a handful
            of pixels cannot dominate.

    Shapes:
        - labels: ``[B, H, W]`` integer
        - target: ``[K]`` float
        - returns: ``[K]`` float32, on ``labels``' device

    Raises:
        ValueError: a label outside ``0..K-1`` (other than ``ignore_index``), a negative or
            non-finite ``target``, ``max_weight <= 0``.
        TypeError: non-tensor inputs.

    Example:
        >>> import torch
        >>> labels = torch.tensor([[[0, 0, 0, 1]]])  # 3/4 class 0, 1/4 class 1
        >>> [round(w, 3) for w in balancing_weights(labels, torch.tensor([0.5, 0.5])).tolist()]
        [0.667, 2.0]
    """
    check_tensor(
        "target", target, ndim=1, dims="[K]", dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64)
    )
    check_finite("target", target)
    if bool((target < 0).any()):
        raise ValueError(f"target must be >= 0 (a class distribution), got min {float(target.min()):.4g}")
    k = target.shape[0]
    labels = check_labels("labels", labels, num_classes=k, ignore_index=ignore_index)
    max_weight = float(check_number("max_weight", max_weight, low=0.0, low_inclusive=False))
    used = labels[labels != ignore_index]
    if used.numel() == 0:
        return torch.zeros(k, device=labels.device)
    counts = torch.bincount(used.flatten(), minlength=k).to(torch.float32)
    share = counts / counts.sum()
    goal = target.to(labels.device, torch.float32)
    goal = goal / goal.sum().clamp_min(1e-12)
    weight = torch.where(counts > 0, goal / share.clamp_min(1e-12), torch.zeros_like(share)).clamp(max=max_weight)
    mean = (weight * share).sum()  # the mean weight over the used pixels
    return weight / mean.clamp_min(1e-12)
