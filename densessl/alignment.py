"""Distribution alignment: pseudo labels that keep the classes' proportions."""

from __future__ import annotations

__all__ = ["DistributionAlignment"]

import torch
from torch import nn

from ._checks import check_labels, check_logits, check_number
from .functional._alignment import align_distribution


class DistributionAlignment(nn.Module):
    r"""Align a teacher's class scores to the labelled data's class frequencies.

    Holds two running means (buffers, so they are saved and follow ``.to()``): ``source``,
    the teacher's average softmax over the pixels it scores, and ``target``, the class
    frequencies of the labelled pixels it is shown (:meth:`observe_labels`). ``forward``
    returns ``logits + log target - log source`` (:func:`densessl.functional.align_distribution`):
    a class the teacher under-predicts — in gland segmentation the thin contour class, which
    semi-supervised training erodes — is boosted before pseudo labels are drawn.

    Both means start at the first batch's values and then follow
    ``m <- momentum * m + (1 - momentum) * batch``. ``source`` is updated only in training
    mode (in eval mode the module only applies the stored alignment).

    Args:
        num_classes: ``K``.
        momentum: of the running means, in ``[0, 1)``.
        ignore_index: label value :meth:`observe_labels` skips.
        eps: see :func:`~densessl.functional.align_distribution`.

    Shapes:
        - logits: ``[B, K, H, W]`` float, finite
        - labels (:meth:`observe_labels`): ``[B, H, W]`` int, ``0..K-1`` or ``ignore_index``
        - returns: ``[B, K, H, W]``, detached, ``logits``' dtype

    Raises:
        ValueError: arguments out of range; logits with another number of classes.

    References:
        Berthelot et al., "ReMixMatch", ICLR 2020 (distribution alignment).

    Example:
        >>> import torch
        >>> align = DistributionAlignment(num_classes=2, momentum=0.9)
        >>> align.observe_labels(torch.tensor([[[0, 1]]]))  # half of each class
        >>> logits = torch.tensor([[[[2.0, 2.0]], [[0.0, 0.0]]]])  # the teacher says class 0
        >>> aligned = align(logits)
        >>> bool((aligned.softmax(1)[:, 1] > logits.softmax(1)[:, 1]).all())  # class 1 boosted
        True
        >>> [round(v, 3) for v in align.source.tolist()], align.target.tolist()
        ([0.881, 0.119], [0.5, 0.5])
    """

    source: torch.Tensor
    target: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, num_classes: int, momentum: float = 0.99, ignore_index: int = 255, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_classes = int(check_number("num_classes", num_classes, integer=True, low=2))
        self.momentum = float(check_number("momentum", momentum, low=0.0, high=1.0, high_inclusive=False))
        self.ignore_index = int(check_number("ignore_index", ignore_index, integer=True))
        self.eps = float(check_number("eps", eps, low=0.0, low_inclusive=False))
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.register_buffer("source", uniform.clone())
        self.register_buffer("target", uniform.clone())
        # [source seen, target seen]: the first batch replaces the uniform start
        self.register_buffer("initialized", torch.zeros(2, dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}, ignore_index={self.ignore_index}"

    def _update(self, which: int, buffer: torch.Tensor, value: torch.Tensor) -> None:
        if bool(self.initialized[which]):
            buffer.mul_(self.momentum).add_(value.to(buffer), alpha=1.0 - self.momentum)
        else:
            buffer.copy_(value)
            self.initialized[which] = True

    @torch.no_grad()
    def observe_labels(self, labels: torch.Tensor) -> None:
        """Fold the class frequencies of labelled pixels into ``target`` (ignored pixels skipped).

        Args:
            labels: ground-truth classes.

        Shapes:
            - labels: ``[B, H, W]`` integer
        """
        labels = check_labels("labels", labels, num_classes=self.num_classes, ignore_index=self.ignore_index)
        valid = labels[labels != self.ignore_index]
        if valid.numel() == 0:
            return
        counts = torch.bincount(valid.flatten(), minlength=self.num_classes).float()
        self._update(1, self.target, counts / counts.sum())

    @torch.no_grad()
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Update ``source`` with these logits (training mode), then return them aligned.

        Args:
            logits: the teacher's class scores.

        Shapes:
            - logits: ``[B, K, H, W]``
            - returns: ``[B, K, H, W]``
        """
        check_logits("logits", logits, num_classes=self.num_classes)
        if self.training and logits.numel():
            self._update(0, self.source, logits.detach().float().softmax(1).mean(dim=(0, 2, 3)))
        return align_distribution(logits.detach(), self.source, self.target, eps=self.eps)
