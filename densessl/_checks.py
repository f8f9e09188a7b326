"""The one place that validates tensor contracts and words the errors.

Every public entry point of densessl calls these helpers, so that a contract violation
always reads the same way: the argument's name, what was expected, what was received.

Shape errors raise :class:`ValueError`; dtype and type errors raise :class:`TypeError`.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "FLOAT_DTYPES",
    "INT_DTYPES",
    "check_features",
    "check_finite",
    "check_int_in_range",
    "check_labels",
    "check_logits",
    "check_mask",
    "check_number",
    "check_probabilities",
    "check_same_spatial",
    "check_tensor",
    "value_checks",
    "value_checks_enabled",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

_VALUE_CHECKS = True


def value_checks_enabled() -> bool:
    """Whether public APIs check the *values* of their inputs (default ``True``).

    Value checks are the ones that read a tensor back to the host: NaN/Inf in float
    inputs, label ranges, probabilities in ``[0, 1]`` summing to one. Shape, dtype and
    device checks never read data and always run.
    """
    return _VALUE_CHECKS


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager that turns the value checks (NaN/Inf, label range) on or off.

    Like ``validate_args`` of ``torch.distributions``: each value check reads the tensor
    back to the host (a device sync on GPU), so a training loop that has been debugged
    may switch them off for speed. Shape, dtype and device checks stay on.

    Args:
        enabled: ``True`` to check values, ``False`` to skip those checks.

    Example:
        >>> import torch, densessl
        >>> with densessl.value_checks(False):
        ...     densessl.value_checks_enabled()
        False
        >>> densessl.value_checks_enabled()
        True
    """
    global _VALUE_CHECKS
    previous = _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS = previous


def _shape(x: torch.Tensor) -> str:
    return str(tuple(x.shape))


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    dims: str | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    dtype_words: str | None = None,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of the given rank(s) and dtype(s); return it.

    ``dims`` is a human description such as ``"[B, C, H, W]"`` used in the message.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            desc = f" {dims}" if dims else ""
            raise ValueError(f"{name} must be a {want} tensor{desc}, got shape {_shape(x)}")
    if dtypes is not None and x.dtype not in tuple(dtypes):
        words = dtype_words or ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype {words}, got {str(x.dtype).replace('torch.', '')}")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf (skipped when value checks are off)."""
    if _VALUE_CHECKS and x.is_floating_point() and x.numel() > 0:
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} must be finite, got {bad} NaN/Inf value(s) in shape {_shape(x)}")
    return x


def check_features(name: str, x: object, *, finite: bool = True) -> torch.Tensor:
    """A feature map: ``[B, C, H, W]``, floating point, finite."""
    x = check_tensor(
        name,
        x,
        ndim=4,
        dims="[B, C, H, W]",
        dtypes=FLOAT_DTYPES,
        dtype_words="float16, bfloat16, float32 or float64",
    )
    if finite:
        check_finite(name, x)
    return x


def check_logits(name: str, x: object, *, num_classes: int | None = None) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` (floating, finite, K >= 2 or K == num_classes)."""
    x = check_features(name, x)
    k = x.shape[1]
    if num_classes is not None and k != num_classes:
        raise ValueError(f"{name} must have {num_classes} classes in dim 1 [B, K, H, W], got shape {_shape(x)}")
    if k < 2:
        raise ValueError(f"{name} needs at least 2 classes in dim 1 [B, K, H, W], got shape {_shape(x)}")
    return x


def check_probabilities(name: str, x: object, *, atol: float = 1e-3) -> torch.Tensor:
    """Probabilities ``[B, K, H, W]`` in [0, 1] summing to one over dim 1."""
    x = check_logits(name, x)
    if not _VALUE_CHECKS:
        return x
    if x.numel() and (bool((x < 0).any()) or bool((x > 1).any())):
        raise ValueError(
            f"{name} must hold probabilities in [0, 1], got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )
    s = x.float().sum(dim=1)
    if x.numel() and not torch.allclose(s, torch.ones_like(s), atol=atol):
        raise ValueError(
            f"{name} must sum to 1 over dim 1 (classes), got sums in [{float(s.min()):.4g}, {float(s.max()):.4g}]"
        )
    return x


def check_labels(
    name: str,
    labels: object,
    *,
    num_classes: int | None = None,
    ignore_index: int | None = 255,
    ndim: int = 3,
) -> torch.Tensor:
    """Integer labels ``[B, H, W]`` with values in ``0..num_classes-1`` or ``ignore_index``.

    Returns the labels as int64 (a copy only if the dtype differs). The range check
    reads the labels back to the host and is skipped when value checks are off.
    """
    dims = "[B, H, W]" if ndim == 3 else None
    labels = check_tensor(
        name,
        labels,
        ndim=ndim,
        dims=dims,
        dtypes=INT_DTYPES,
        dtype_words="an integer type (int64 preferred)",
    )
    labels = labels.long()
    if num_classes is not None and labels.numel() and _VALUE_CHECKS:
        valid = (labels >= 0) & (labels < num_classes)
        if ignore_index is not None:
            valid |= labels == ignore_index
        if not bool(valid.all()):
            bad = labels[~valid]
            ign = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
            raise ValueError(
                f"{name} must hold class indices in 0..{num_classes - 1}{ign}, "
                f"got {bad.numel()} value(s) outside, e.g. {int(bad[0])}"
            )
    return labels


def check_mask(name: str, mask: object, *, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A boolean mask, optionally of an exact shape (usually ``[B, H, W]``)."""
    mask = check_tensor(name, mask, dtypes=(torch.bool,), dtype_words="bool")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {_shape(mask)}")
    return mask


def check_same_spatial(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Two maps must share a device and their batch and spatial sizes (first and last two dims).

    ``a`` is ``[B, *, H, W]`` or ``[B, H, W]``; so is ``b``.
    """
    if a.device != b.device:
        raise ValueError(f"{name_b} must be on the same device as {name_a} ({a.device}), got {b.device}")
    ba, ha, wa = a.shape[0], a.shape[-2], a.shape[-1]
    bb, hb, wb = b.shape[0], b.shape[-2], b.shape[-1]
    if (ba, ha, wa) != (bb, hb, wb):
        raise ValueError(
            f"{name_b} must match {name_a} in batch and spatial size (B={ba}, H={ha}, W={wa}), "
            f"got shape {_shape(b)} for {name_b} and {_shape(a)} for {name_a}; "
            "resize labels explicitly with densessl.functional.downsample_labels"
        )


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
    finite: bool = False,
) -> float | int:
    """A real (or integer) constructor argument within ``[low, high]``; raises ``ValueError``.

    With ``finite=True`` an infinite value is refused too (NaN always is).
    """
    # numbers.Real / Integral also admit numpy scalars (config values often are); bools are refused.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if value != value:  # NaN
        raise ValueError(f"{name} must not be NaN")
    if finite and value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (not low_inclusive and value == low)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and (value > high or (not high_inclusive and value == high)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value}")
    return value


def check_int_in_range(name: str, value: object, low: int, high: int | None = None) -> int:
    """An integer argument with ``low <= value (<= high)``."""
    return int(check_number(name, value, low=low, high=high, integer=True))
