"""What to label next: per-image scores from density and uncertainty, and a diverse top-k."""

from __future__ import annotations

__all__ = ["diverse_top_k", "low_density_fraction", "rank_combined", "image_entropy"]

import torch
from scipy.stats import rankdata

from .._checks import check_finite, check_logits, check_mask, check_number, check_tensor
from ._entropy import entropy

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def low_density_fraction(
    log_prob: torch.Tensor, reference: torch.Tensor, quantile: float = 0.05, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per image, the share of pixels less likely under the density than most labelled pixels.

    The threshold is the ``quantile`` of ``reference`` (log-densities of labelled pixels, e.g.
    :meth:`densessl.FlowDensityHead.log_prob` of the labelled images' features): a pixel below
    it looks like few labelled pixels. An image of an appearance the labels do not cover has a
    large share.

    Args:
        log_prob: per-pixel log-density of the images to rank.
        reference: log-densities of labelled pixels (any number, flattened).
        quantile: in ``(0, 1)``.
        mask: pixels to count (True); others are left out of numerator and denominator.

    Shapes:
        - log_prob: ``[B, H, W]`` float
        - reference: ``[N]`` (or any shape) float, ``N >= 1``
        - mask: ``[B, H, W]`` bool
        - returns: ``[B]`` float32 in ``[0, 1]`` (0 for an image without a counted pixel)

    Example:
        >>> import torch
        >>> reference = torch.linspace(0, 1, 101)            # labelled pixels: log p in [0, 1]
        >>> log_prob = torch.stack([torch.full((2, 2), 0.5), torch.tensor([[-3.0, 0.5], [-2.0, 0.5]])])
        >>> low_density_fraction(log_prob, reference, quantile=0.05).tolist()
        [0.0, 0.5]
    """
    check_tensor("log_prob", log_prob, ndim=3, dims="[B, H, W]", dtypes=_FLOATS)
    check_finite("log_prob", log_prob)
    check_tensor("reference", reference, dtypes=_FLOATS)
    if reference.numel() == 0:
        raise ValueError("reference must hold at least one labelled pixel's log-density, got none")
    check_finite("reference", reference)
    q = float(check_number("quantile", quantile, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False))
    threshold = torch.quantile(reference.detach().flatten().double(), q).to(log_prob.device)
    low = log_prob.detach().double() < threshold
    counted = torch.ones_like(low) if mask is None else check_mask("mask", mask, shape=tuple(log_prob.shape))
    total = counted.flatten(1).sum(1)
    return ((low & counted).flatten(1).sum(1) / total.clamp(min=1)).float()


def image_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, the mean predictive entropy (normalised by ``log K``, so in ``[0, 1]``).

    Shapes:
        - logits: ``[B, K, H, W]`` float
        - mask: ``[B, H, W]`` bool (pixels to average; an image without one scores 0)
        - returns: ``[B]`` float32

    Example:
        >>> import torch
        >>> sure, unsure = torch.tensor([9.0, 0.0]), torch.tensor([0.0, 0.0])
        >>> logits = torch.stack([sure, unsure])[:, :, None, None]
        >>> [round(v, 3) for v in image_entropy(logits).tolist()]
        [0.002, 1.0]
    """
    check_logits("logits", logits)
    h = entropy(logits.detach(), dim=1, normalized=True)
    counted = (
        torch.ones_like(h, dtype=torch.bool)
        if mask is None
        else check_mask("mask", mask, shape=(logits.shape[0], *logits.shape[2:]))
    )
    return ((h * counted).flatten(1).sum(1) / counted.flatten(1).sum(1).clamp(min=1)).float()


def _ranks(scores: torch.Tensor) -> torch.Tensor:
    """Scores to ``[0, 1]`` by rank (ties share their mean rank): scales of different scores agree."""
    n = scores.numel()
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    ranks = rankdata(scores.detach().cpu().double().numpy(), method="average") - 1.0
    return torch.from_numpy(ranks) / (n - 1)


def rank_combined(density: torch.Tensor, uncertainty: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """Combine two per-image scores by their ranks: ``weight * rank(density) + (1 - weight) * rank(uncertainty)``.

    Ranks (scaled to ``[0, 1]``) make the two comparable whatever their units.

    Shapes:
        - density, uncertainty: ``[N]``
        - returns: ``[N]`` float64 in ``[0, 1]``

    Example:
        >>> import torch
        >>> rank_combined(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([3.0, 2.0, 1.0])).tolist()
        [0.5, 0.75, 0.25]
    """
    for name, x in (("density", density), ("uncertainty", uncertainty)):
        check_tensor(name, x, ndim=1, dims="[N]", dtypes=_FLOATS)
        check_finite(name, x)
    if density.shape != uncertainty.shape:
        raise ValueError(
            f"density and uncertainty must have the same shape, got {tuple(density.shape)} "
            f"and {tuple(uncertainty.shape)}"
        )
    w = float(check_number("weight", weight, low=0.0, high=1.0))
    return w * _ranks(density) + (1 - w) * _ranks(uncertainty)


def diverse_top_k(scores: torch.Tensor, features: torch.Tensor, k: int, diversity: float = 0.5) -> torch.Tensor:
    """Greedy top-``k`` that trades score against redundancy with what is already chosen.

    The first pick is the best score. Each next pick maximises
    ``(1 - diversity) * rank(score) + diversity * d / max(d)``, where ``d`` is an image's cosine
    distance (``1 - cos``) to its nearest already-chosen image in ``features`` (e.g. pooled
    encoder features): a near-duplicate of a chosen image has ``d ~ 0`` and waits (the greedy
    k-centre / max-cover heuristic, weighted by the score).

    Args:
        scores: per-image score, higher = more worth labelling.
        features: per-image feature vectors.
        k: how many to choose, ``1 <= k``; at most ``N`` are returned.
        diversity: in ``[0, 1]``; 0 is the plain top-k by score.

    Shapes:
        - scores: ``[N]`` float
        - features: ``[N, D]`` float
        - returns: ``[min(k, N)]`` int64, indices in the order chosen

    Example:
        >>> import torch
        >>> scores = torch.tensor([0.9, 0.89, 0.5])
        >>> features = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])   # 0 and 1 are duplicates
        >>> diverse_top_k(scores, features, k=2).tolist(), diverse_top_k(scores, features, 2, diversity=0).tolist()
        ([0, 2], [0, 1])
    """
    check_tensor("scores", scores, ndim=1, dims="[N]", dtypes=_FLOATS)
    check_finite("scores", scores)
    check_tensor("features", features, ndim=2, dims="[N, D]", dtypes=_FLOATS)
    check_finite("features", features)
    if features.shape[0] != scores.shape[0]:
        raise ValueError(f"features must have one row per score ({scores.shape[0]}), got shape {tuple(features.shape)}")
    k = int(check_number("k", k, low=1, integer=True))
    lam = float(check_number("diversity", diversity, low=0.0, high=1.0))
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    ranked = _ranks(scores.detach().cpu())
    unit = torch.nn.functional.normalize(features.detach().cpu().double(), dim=1)
    chosen = [int(torch.argmax(ranked))]
    nearest = 1.0 - unit @ unit[chosen[0]]
    while len(chosen) < min(k, n):
        spread = nearest / nearest.max() if float(nearest.max()) > 0 else torch.zeros_like(nearest)
        value = (1 - lam) * ranked + lam * spread
        value[chosen] = -float("inf")
        pick = int(torch.argmax(value))
        chosen.append(pick)
        nearest = torch.minimum(nearest, 1.0 - unit @ unit[pick])
    return torch.tensor(chosen, dtype=torch.long)
