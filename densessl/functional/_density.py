"""Density math: the soft clamp of coupling log-scales and diagonal-Gaussian mixtures.

These functions work on row matrices (one row per pixel) and are what
:class:`densessl.density.GaussianMixturePrior` and the flow blocks call.
"""

from __future__ import annotations

import math

import torch

from .._checks import FLOAT_DTYPES, check_labels, check_number, check_tensor

__all__ = ["diagonal_normal_log_prob", "mixture_log_prob", "mixture_posterior", "soft_clamp"]

_LOG_2PI = math.log(2.0 * math.pi)


def soft_clamp(x: torch.Tensor, clamp: float) -> torch.Tensor:
    """Smoothly squash values into ``(-clamp, clamp)``: ``clamp * 2/pi * atan(x / clamp)``.

    Used on the log-scale of an affine coupling so that ``exp(s)`` can neither
    overflow nor vanish. It is smooth, odd and maps zero to zero (slope ``2/pi`` there),
    so a zero-initialised coupling still starts as the identity.

    Args:
        x: any tensor.
        clamp: the bound, ``> 0``.

    Shapes:
        - x: any shape, floating point
        - returns: the same shape and dtype, values in ``(-clamp, clamp)``

    Raises:
        ValueError: ``clamp`` is not positive and finite.

    References:
        Ardizzone et al., "Guided Image Generation with Conditional Invertible Neural
        Networks" (2019), the soft clamp of FrEIA's GLOW coupling.

    Example:
        >>> import torch
        >>> from densessl.functional import soft_clamp
        >>> soft_clamp(torch.tensor([0.0, 1e6, -1e6]), 2.0)
        tensor([ 0.0000,  2.0000, -2.0000])
    """
    check_number("clamp", clamp, low=0.0, low_inclusive=False, finite=True)
    return (2.0 * clamp / math.pi) * torch.atan(x / clamp)


def diagonal_normal_log_prob(z: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-density of every row under every one of ``K`` diagonal Gaussians.

    ``out[n, k] = log N(z[n]; means[k], diag(exp(log_scales[k]))**2)``. The squared
    Mahalanobis distance is expanded into three matrix products, so memory is
    ``O(N*K + N*D)`` and never ``O(N*K*D)``.

    Args:
        z: the rows (one pixel each).
        means: one mean per component.
        log_scales: per-component, per-dimension log standard deviations.

    Shapes:
        - z: ``[N, D]``, floating point
        - means: ``[K, D]``
        - log_scales: ``[K, D]``
        - returns: ``[N, K]``, float32 (float64 for float64 ``z``), computed with
          autocast disabled

    Raises:
        ValueError: wrong ranks or mismatched ``D``/``K``.
        TypeError: non-float inputs.

    Example:
        >>> import torch
        >>> from densessl.functional import diagonal_normal_log_prob
        >>> z = torch.zeros(1, 2)
        >>> diagonal_normal_log_prob(z, torch.zeros(1, 2), torch.zeros(1, 2))  # -log(2 pi)
        tensor([[-1.8379]])
    """
    check_tensor("z", z, ndim=2, dims="[N, D]", dtypes=FLOAT_DTYPES)
    check_tensor("means", means, ndim=2, dims="[K, D]", dtypes=FLOAT_DTYPES)
    check_tensor("log_scales", log_scales, ndim=2, dims="[K, D]", dtypes=FLOAT_DTYPES)
    if means.shape[1] != z.shape[1]:
        raise ValueError(f"means must have D={z.shape[1]} columns like z, got shape {tuple(means.shape)}")
    if log_scales.shape != means.shape:
        raise ValueError(
            f"log_scales must have the shape of means {tuple(means.shape)}, got shape {tuple(log_scales.shape)}"
        )
    # Density math in float32 (float64 for float64 z) with autocast off: the expanded
    # quadratic form cancels catastrophically in bfloat16/float16 matrix products.
    work = torch.float64 if z.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.to(work)
        means = means.to(work)
        log_scales = log_scales.to(work)
        inv_var = torch.exp(-2.0 * log_scales)  # [K, D]
        # sum_d (z - mu)^2 / s^2 = z^2 . (1/s^2) - 2 z . (mu/s^2) + mu^2 . (1/s^2)
        quad = (z * z) @ inv_var.T - 2.0 * (z @ (means * inv_var).T) + (means * means * inv_var).sum(dim=1)
        quad = quad.clamp_min(0.0)  # rounding of the expansion can dip a hair below zero
        const = log_scales.sum(dim=1) + 0.5 * z.shape[1] * _LOG_2PI  # [K]
        return -0.5 * quad - const


def _check_per_class(per_class: torch.Tensor, mixture_logits: torch.Tensor) -> None:
    check_tensor("log_probs", per_class, ndim=2, dims="[N, K]", dtypes=FLOAT_DTYPES)
    check_tensor("mixture_logits", mixture_logits, ndim=1, dims="[K]", dtypes=FLOAT_DTYPES)
    if mixture_logits.shape[0] != per_class.shape[1]:
        raise ValueError(
            f"mixture_logits must have K={per_class.shape[1]} entries like log_probs [N, K], "
            f"got shape {tuple(mixture_logits.shape)}"
        )


def mixture_log_prob(
    log_probs: torch.Tensor,
    mixture_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    ignore_index: int = 255,
    joint: bool = False,
) -> torch.Tensor:
    """Marginal, class-conditional or joint log-density from per-component log-densities.

    Without ``labels`` every row gets the mixture
    ``log p(z) = logsumexp_k(log pi_k + log p(z | k))`` with ``pi = softmax(mixture_logits)``.
    With ``labels``, a labelled row gets its class-conditional ``log p(z | y)`` — or, with
    ``joint=True``, the joint ``log p(z, y) = log pi_y + log p(z | y)``, the term whose
    gradient trains the mixture weights on labelled rows — and a row labelled
    ``ignore_index`` gets the mixture.

    Args:
        log_probs: per-component log-densities ``log p(z | k)``.
        mixture_logits: unnormalised log mixture weights.
        labels: optional class index per row, ``0..K-1`` or ``ignore_index``.
        ignore_index: label of rows that get the mixture.
        joint: add ``log pi_y`` at labelled rows.

    Shapes:
        - log_probs: ``[N, K]``
        - mixture_logits: ``[K]``
        - labels: ``[N]``, integer
        - returns: ``[N]``

    Raises:
        ValueError: mismatched shapes or labels out of range.
        TypeError: non-float log-probs or non-integer labels.

    Example:
        >>> import torch
        >>> from densessl.functional import mixture_log_prob
        >>> lp = torch.log(torch.tensor([[0.2, 0.6]]))
        >>> mixture_log_prob(lp, torch.zeros(2)).exp()  # 0.5 * 0.2 + 0.5 * 0.6
        tensor([0.4000])
        >>> mixture_log_prob(lp, torch.zeros(2), labels=torch.tensor([1])).exp()
        tensor([0.6000])
        >>> mixture_log_prob(lp, torch.zeros(2), labels=torch.tensor([1]), joint=True).exp()  # 0.5 * 0.6
        tensor([0.3000])
    """
    _check_per_class(log_probs, mixture_logits)
    if labels is not None:
        labels = check_labels("labels", labels, num_classes=log_probs.shape[1], ignore_index=ignore_index, ndim=1)
        if labels.shape[0] != log_probs.shape[0]:
            raise ValueError(
                f"labels must have N={log_probs.shape[0]} entries like log_probs, got shape {tuple(labels.shape)}"
            )
    return _mixture_log_prob(log_probs, mixture_logits, labels, ignore_index, joint)


def _mixture_log_prob(
    log_probs: torch.Tensor,
    mixture_logits: torch.Tensor,
    labels: torch.Tensor | None,
    ignore_index: int,
    joint: bool,
) -> torch.Tensor:
    """:func:`mixture_log_prob` on inputs already validated (no second label check)."""
    log_weights = torch.log_softmax(mixture_logits.to(log_probs.dtype), dim=0)
    weighted = log_probs + log_weights
    marginal = torch.logsumexp(weighted, dim=1)
    if labels is None:
        return marginal
    labelled = labels != ignore_index
    index = torch.where(labelled, labels, torch.zeros_like(labels))
    per_label = weighted if joint else log_probs
    picked = per_label.gather(1, index[:, None])[:, 0]
    return torch.where(labelled, picked, marginal)


def mixture_posterior(log_probs: torch.Tensor, mixture_logits: torch.Tensor) -> torch.Tensor:
    """Bayes' rule: ``p(k | z) = pi_k p(z | k) / sum_j pi_j p(z | j)``.

    Args:
        log_probs: per-component log-densities ``log p(z | k)``.
        mixture_logits: unnormalised log mixture weights.

    Shapes:
        - log_probs: ``[N, K]``
        - mixture_logits: ``[K]``
        - returns: ``[N, K]``, rows summing to one

    Raises:
        ValueError: mismatched shapes.

    Example:
        >>> import torch
        >>> from densessl.functional import mixture_posterior
        >>> mixture_posterior(torch.log(torch.tensor([[0.2, 0.6]])), torch.zeros(2))
        tensor([[0.2500, 0.7500]])
    """
    _check_per_class(log_probs, mixture_logits)
    log_weights = torch.log_softmax(mixture_logits.to(log_probs.dtype), dim=0)
    return torch.softmax(log_probs + log_weights, dim=1)
