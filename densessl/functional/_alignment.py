"""Distribution alignment of class scores toward a target class distribution."""

from __future__ import annotations

__all__ = ["align_distribution"]

import torch

from .._checks import check_finite, check_logits, check_tensor


def align_distribution(logits: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:
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
        check_tensor(name, dist, ndim=1, dims="[K]", dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64))
        if dist.shape[0] != k:
            raise ValueError(f"{name} must have K={k} entries (the classes of logits), got shape {tuple(dist.shape)}")
        check_finite(name, dist)
        if bool((dist < 0).any()):
            raise ValueError(f"{name} must be >= 0 (a class distribution), got min {float(dist.min()):.4g}")
    shift = torch.log(target.to(torch.float32) + eps) - torch.log(source.to(torch.float32) + eps)
    return logits + shift.to(logits.device, logits.dtype).view(1, k, 1, 1)
