"""Exponential moving averages of tensor lists (the Mean-Teacher update)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._checks import check_number

__all__ = ["ema_decay", "ema_update_"]


def ema_decay(step: int, decay: float) -> float:
    r"""The warm-up decay :math:`\min(1 - 1/(t+1),\ \text{decay})` of a Mean-Teacher update.

    At ``t = 0`` the decay is 0 (the teacher becomes a copy of the student), then
    ``1/2, 2/3, 3/4, ...`` (the teacher is the plain mean of the students seen so far)
    until it reaches ``decay``.

    Args:
        step: number of updates already applied before this one (``t >= 0``).
        decay: the long-run decay in ``[0, 1]``.

    Returns:
        The decay to use for update number ``step`` (a Python float).

    Raises:
        ValueError: ``step < 0`` or ``decay`` outside ``[0, 1]``.
        TypeError: ``step`` is not an integer or ``decay`` not a number.

    References:
        Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017.

    Example:
        >>> from densessl.functional import ema_decay
        >>> [round(ema_decay(t, 0.99), 4) for t in (0, 1, 2, 3, 1000)]
        [0.0, 0.5, 0.6667, 0.75, 0.99]
    """
    check_number("step", step, low=0, integer=True)
    check_number("decay", decay, low=0.0, high=1.0)
    return min(1.0 - 1.0 / (step + 1), float(decay))


def ema_update_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], decay: float) -> None:
    r"""In place, ``target = decay * target + (1 - decay) * source`` for every pair.

    Runs as two fused ``torch._foreach_*`` calls (one kernel launch per device and
    dtype group, not one per tensor) under ``torch.no_grad()``; ``sources`` are read,
    never modified.

    Args:
        targets: floating-point tensors updated in place (e.g. teacher parameters).
        sources: tensors of the same shapes, dtypes and devices (e.g. student parameters).
        decay: weight kept on the target, in ``[0, 1]``; ``0`` copies the sources.

    Shapes:
        - targets[i]: any shape, floating point
        - sources[i]: ``targets[i].shape``, same dtype and device

    Raises:
        ValueError: the lists differ in length, a pair differs in shape or device,
            or ``decay`` is outside ``[0, 1]``.
        TypeError: a pair differs in dtype or a target is not floating point.

    Example:
        >>> import torch
        >>> from densessl.functional import ema_update_
        >>> teacher, student = [torch.zeros(2)], [torch.ones(2)]
        >>> ema_update_(teacher, student, decay=0.75)
        >>> teacher[0]
        tensor([0.2500, 0.2500])
    """
    check_number("decay", decay, low=0.0, high=1.0)
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise ValueError(f"sources must have as many tensors as targets ({len(targets)}), got {len(sources)}")
    for i, (t, s) in enumerate(zip(targets, sources)):
        if not t.is_floating_point():
            raise TypeError(f"targets[{i}] must be floating point, got {str(t.dtype).replace('torch.', '')}")
        if t.shape != s.shape:
            raise ValueError(
                f"sources[{i}] must have shape {tuple(t.shape)} like targets[{i}], got shape {tuple(s.shape)}"
            )
        if t.dtype != s.dtype:
            raise TypeError(f"sources[{i}] must have dtype {t.dtype} like targets[{i}], got {s.dtype}")
        if t.device != s.device:
            raise ValueError(f"sources[{i}] must be on device {t.device} like targets[{i}], got {s.device}")
    if not targets:
        return
    decay = float(decay)
    with torch.no_grad():
        torch._foreach_mul_(targets, decay)
        torch._foreach_add_(targets, sources, alpha=1.0 - decay)
