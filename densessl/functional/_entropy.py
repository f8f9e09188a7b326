"""Prediction entropy: how unsure a softmax classifier is at each pixel."""

from __future__ import annotations

import math

import torch

from .._checks import FLOAT_DTYPES, check_finite, check_number, check_tensor

__all__ = ["entropy"]


def entropy(logits: torch.Tensor, dim: int = 1, normalized: bool = False) -> torch.Tensor:
    r"""Natural-log entropy of ``softmax(logits)`` along ``dim``.

    :math:`H = -\sum_k p_k \log p_k` with :math:`\log p = \mathrm{log\_softmax}(\text{logits})`,
    so no probability is ever passed through ``log`` (a saturated softmax gives an exact
    ``0 * finite = 0`` term instead of ``0 * -inf = NaN``). The math runs in float32
    (float64 for float64 logits) whatever the input precision or autocast state.

    Args:
        logits: unnormalised class scores (finite).
        dim: the class dimension.
        normalized: divide by :math:`\log K` so that the result lies in ``[0, 1]`` (up
            to rounding); needs ``K >= 2``.

    Shapes:
        - logits: any shape with ``K`` classes along ``dim``, e.g. ``[B, K, H, W]``
        - returns: ``logits.shape`` without ``dim``, e.g. ``[B, H, W]``; float32
          (float64 for float64 logits); values in ``[0, log K]`` nats (``[0, 1]`` if
          ``normalized``)

    Returns:
        The entropy of every distribution, in nats (or as a fraction of ``log K``).

    Raises:
        TypeError: ``logits`` is not a floating-point tensor.
        ValueError: ``logits`` holds NaN/Inf, ``dim`` is out of range, or ``K < 2``
            with ``normalized=True``.

    Example:
        >>> import torch
        >>> from densessl.functional import entropy
        >>> logits = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
        >>> entropy(logits, dim=1)
        tensor([0.6931, 0.0000])
        >>> entropy(logits, dim=1, normalized=True)
        tensor([1., 0.])
    """
    check_tensor("logits", logits, dtypes=FLOAT_DTYPES, dtype_words="float16, bfloat16, float32 or float64")
    check_number("dim", dim, integer=True)
    if logits.dim() == 0 or not -logits.dim() <= dim < logits.dim():
        raise ValueError(f"dim must index a dimension of logits, got dim={dim} for shape {tuple(logits.shape)}")
    check_finite("logits", logits)
    k = logits.shape[dim]
    if normalized and k < 2:
        raise ValueError(
            f"logits needs at least 2 classes along dim={dim} to normalise by log K, got shape {tuple(logits.shape)}"
        )
    work = logits if logits.dtype == torch.float64 else logits.float()
    with torch.autocast(device_type=work.device.type, enabled=False):
        log_p = torch.log_softmax(work, dim=dim)
        # log_softmax <= 0 everywhere, so every term -p*log p is >= 0: no negative entropy.
        h = -(log_p.exp() * log_p).sum(dim=dim)
    if normalized:
        h = h / math.log(k)
    return h
