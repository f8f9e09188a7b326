"""Per-pixel reshaping and normalisation of feature maps."""

from __future__ import annotations

import torch
from einops import rearrange

from .._checks import check_features, check_number, check_tensor

__all__ = ["flatten_pixels", "normalize_pixels", "unflatten_pixels"]


def flatten_pixels(features: torch.Tensor) -> torch.Tensor:
    """Turn a feature map into a matrix with one row per pixel.

    Args:
        features: feature map.

    Shapes:
        - features: ``[B, C, H, W]``
        - returns: ``[B*H*W, C]`` (row ``(b*H + h)*W + w`` is pixel ``(b, h, w)``)

    Raises:
        ValueError: ``features`` is not 4-D.
        TypeError: ``features`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from densessl.functional import flatten_pixels, unflatten_pixels
        >>> x = torch.randn(2, 3, 4, 5)
        >>> rows = flatten_pixels(x)
        >>> rows.shape
        torch.Size([40, 3])
        >>> torch.equal(unflatten_pixels(rows, x.shape), x)
        True
    """
    check_features("features", features, finite=False)
    return rearrange(features, "b c h w -> (b h w) c")


def unflatten_pixels(rows: torch.Tensor, shape: torch.Size | tuple[int, int, int, int]) -> torch.Tensor:
    """Inverse of :func:`flatten_pixels`.

    Args:
        rows: one row per pixel.
        shape: the ``(B, C, H, W)`` shape of the map to rebuild (``C`` may differ from
            ``rows.shape[1]``; the number of columns of ``rows`` wins).

    Shapes:
        - rows: ``[B*H*W, C']``
        - returns: ``[B, C', H, W]``

    Raises:
        ValueError: ``rows`` is not ``[B*H*W, C']`` for the given ``shape``, or ``shape``
            is not four sizes.
        TypeError: ``rows`` is not a tensor.

    Example:
        >>> import torch
        >>> from densessl.functional import unflatten_pixels
        >>> unflatten_pixels(torch.zeros(12, 7), (1, 3, 3, 4)).shape
        torch.Size([1, 7, 3, 4])
    """
    check_tensor("rows", rows)
    if len(shape) != 4:
        raise ValueError(f"shape must be the four sizes (B, C, H, W), got {tuple(shape)}")
    b, _, h, w = shape
    if rows.dim() != 2 or rows.shape[0] != b * h * w:
        raise ValueError(f"rows must have shape [B*H*W={b * h * w}, C], got shape {tuple(rows.shape)}")
    return rearrange(rows, "(b h w) c -> b c h w", b=b, h=h, w=w)


def normalize_pixels(features: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise every pixel's channel vector.

    A pixel whose vector has norm below ``eps`` is divided by ``eps`` instead (so an
    all-zero pixel stays zero instead of becoming NaN).

    Args:
        features: feature map.
        eps: smallest norm divided by.

    Shapes:
        - features: ``[B, C, H, W]``
        - returns: ``[B, C, H, W]``, each pixel with norm 1 (or 0)

    Raises:
        ValueError: ``features`` is not 4-D or holds NaN/Inf, or ``eps <= 0``.
        TypeError: ``features`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from densessl.functional import normalize_pixels
        >>> y = normalize_pixels(torch.tensor([[[[3.0]], [[4.0]]]]))
        >>> y.flatten().tolist()
        [0.6, 0.8]
    """
    check_features("features", features)
    check_number("eps", eps, low=0.0, low_inclusive=False)
    return torch.nn.functional.normalize(features, p=2.0, dim=1, eps=eps)
