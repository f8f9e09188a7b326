"""Density-descending feature perturbation: a fixed-length step per pixel towards lower density."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import check_features, check_finite, check_mask, check_number, check_tensor

__all__ = ["density_perturbation"]


def _unit_directions(g: torch.Tensor, eps: float) -> torch.Tensor:
    """``g / ||g||`` per pixel (over dim 1); pixels with ``||g|| <= eps`` give 0.

    The vector is first divided by its largest entry, so squaring neither overflows
    (huge gradients) nor underflows to 0 (tiny ones) before the norm is taken.
    """
    scale = g.abs().amax(dim=1, keepdim=True)
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = g / safe_scale
    scaled_norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)  # in [1, sqrt(C)] where scale > 0
    flat = (scale * scaled_norm <= eps) | (scale == 0)
    return torch.where(flat, torch.zeros_like(g), scaled / torch.where(flat, torch.ones_like(scaled_norm), scaled_norm))


def density_perturbation(
    features: torch.Tensor,
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor],
    xi: float,
    *,
    mask: torch.Tensor | None = None,
    relative: bool = False,
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""The per-pixel step :math:`\rho = \xi\, g / \lVert g \rVert` with :math:`g = \nabla_x(-\log p(x))`.

    Each pixel's channel vector moves by exactly ``xi`` (or ``xi * ||features||`` with
    ``relative=True``) in the direction in which its negative log-density grows
    fastest: towards the low-density region a decision boundary should lie in.

    The gradient is taken of ``-sum(log_prob_fn(x))`` with respect to a detached
    float32 (float64 for float64 features) copy ``x`` of ``features``, with autocast
    disabled and grad mode enabled (so it works under ``torch.no_grad()``), through
    ``torch.autograd.grad(..., inputs=[x])``: no parameter used by ``log_prob_fn``
    gets a ``.grad``. The returned ``rho`` carries no graph and has the features'
    dtype. Pixels whose gradient norm is ``<= eps`` (flat density), or where ``mask``
    is False, get ``rho = 0``.

    Args:
        features: feature map to perturb (finite).
        log_prob_fn: maps the float32/float64 copy of ``features`` to per-pixel log
            densities; it may first apply a block of the network (then its output
            may have another spatial size). It must be differentiable in its input.
        xi: step length per pixel (``>= 0``).
        mask: pixels to perturb (True); keyword only, like ``relative`` and ``eps``. Where
            ``log_prob_fn``'s output has the features' ``[B, H, W]`` size, masked-out pixels also leave the objective,
            so e.g. padding does not steer its neighbours through a spatial block.
        relative: if True the step is ``xi * ||features||`` per pixel (so ``xi`` is a
            fraction of each pixel's norm).
        eps: gradient norm at or below which a pixel counts as flat (``> 0``).

    Shapes:
        - features: ``[B, C, H, W]``, float16/bfloat16/float32/float64
        - log_prob_fn(x): ``[B, H', W']`` float (``[B, H, W]`` without a spatial block)
        - mask: ``[B, H, W]`` bool
        - returns: ``[B, C, H, W]``, features' dtype, no graph; per-pixel norm
          ``<= xi`` (``<= xi * ||features||`` if ``relative``), up to rounding

    Returns:
        The perturbation ``rho``; add it to the features yourself.

    Raises:
        ValueError: bad shapes, ``xi < 0`` or infinite, ``eps <= 0``, or a ``log_prob_fn`` output of
            the wrong shape, holding NaN/Inf, or without a graph (computed under
            ``torch.no_grad()``). An output with a graph that does not reach its input
            is a flat density: ``rho`` is then all zeros.
        TypeError: wrong dtypes or types.

    References:
        Wang et al., "Density-Descending Feature Perturbation for Semi-supervised
        Semantic Segmentation" (DDFP), CVPR 2024.

    Example:
        >>> import torch
        >>> from densessl.functional import density_perturbation
        >>> x = torch.tensor([[[[3.0]], [[4.0]]]])      # one pixel, C = 2
        >>> log_prob = lambda f: -0.5 * (f ** 2).sum(1)  # standard normal, up to a constant
        >>> density_perturbation(x, log_prob, xi=1.0).flatten()  # along x / ||x||
        tensor([0.6000, 0.8000])
    """
    check_features("features", features)
    check_number("xi", xi, low=0.0, finite=True)
    check_number("eps", eps, low=0.0, low_inclusive=False)
    if not isinstance(relative, bool):
        raise TypeError(f"relative must be a bool, got {type(relative).__name__}")
    if not callable(log_prob_fn):
        raise TypeError(f"log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
    b, _, h, w = features.shape
    if mask is not None:
        check_mask("mask", mask, shape=(b, h, w))

    work_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    with torch.enable_grad(), torch.autocast(device_type=features.device.type, enabled=False):
        x = features.detach().to(work_dtype).requires_grad_(True)
        # A non-leaf view goes in: module hooks (FlopCounterMode's module tracker) that meet
        # the leaf itself as a module input fail inside autograd.grad.
        log_p = log_prob_fn(x.view_as(x))
        check_tensor("log_prob_fn(features)", log_p, ndim=3, dims="[B, H', W']")
        if log_p.shape[0] != b:
            raise ValueError(
                f"log_prob_fn(features) must have batch size B={b} in [B, H', W'], got shape {tuple(log_p.shape)}"
            )
        check_finite("log_prob_fn(features)", log_p)
        if not log_p.requires_grad:
            raise ValueError(
                "log_prob_fn(features) must depend differentiably on features "
                "(got a result without a graph: is it computed under torch.no_grad()?)"
            )
        nll = -log_p
        if mask is not None and tuple(log_p.shape) == (b, h, w):
            nll = torch.where(mask, nll, torch.zeros_like(nll))
        (grad,) = torch.autograd.grad(nll.sum(), inputs=[x], allow_unused=True)
    if grad is None:  # the density ignores x: flat everywhere
        return torch.zeros_like(features)
    check_finite("gradient of -log_prob_fn(features)", grad)

    length = xi * torch.linalg.vector_norm(x.detach(), dim=1, keepdim=True) if relative else xi
    rho = length * _unit_directions(grad, eps)
    if mask is not None:
        rho = torch.where(mask[:, None], rho, torch.zeros_like(rho))
    return rho.to(features.dtype)
