"""Pixel contrast for segmentation: a hard-anchor InfoNCE loss and the projection head
that produces its embeddings."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_features, check_number
from .functional._contrast import HARD_SELECTIONS, hard_anchor_contrast

__all__ = ["HardAnchorContrast", "ProjectionHead"]


class HardAnchorContrast(nn.Module):
    """Hard-anchor pixel contrast with detached class-mean positives (ReCo / U2PL).

    For each class present among the used pixels (label not ``ignore_index``, ``mask``
    True), the ``num_anchors`` hardest pixels (farthest from the class mean, or least
    confident under ``probabilities``) are pulled towards the detached, re-normalised
    class mean and pushed from ``num_negatives`` pixels of other classes, with cosine
    similarities and temperature ``τ``; the loss is the mean InfoNCE over all anchors.
    See :func:`densessl.functional.hard_anchor_contrast` for the exact definition.
    With fewer than two classes the loss is a zero still connected to the graph.

    Args:
        temperature: ``τ > 0``.
        num_anchors: most anchors per class (``None``: every pixel of the class).
        num_negatives: negatives drawn per anchor (``None``: every other-class pixel,
            deterministic; memory ``[anchors, pixels]``).
        ignore_index: label of pixels to skip.
        hard_selection: ``"auto"`` (default: least confident when ``probabilities``
            are given, else farthest from the class mean), ``"distance"`` (lowest
            cosine to the class mean) or ``"confidence"`` (lowest probability of the
            own class; ``forward`` then needs ``probabilities``).
        num_classes: optional ``K``; labels outside ``0..K-1`` (other than
            ``ignore_index``) are then refused. Without it labels are only checked to be
            ``>= 0`` (or ``< K`` of ``probabilities`` when those are given).

    Shapes:
        - embeddings: ``[B, D, H, W]``, float, finite
        - labels: ``[B, H, W]``, integer, ``>= 0`` or ``ignore_index``
        - mask: ``[B, H, W]``, bool (optional)
        - probabilities: ``[B, K, H, W]``, summing to 1 over ``K`` (optional)
        - output: scalar, float32 (float64 for float64 embeddings), ``>= 0``

    Raises:
        ValueError: a non-positive or infinite temperature or count, an unknown ``hard_selection``.
        TypeError: a non-number temperature or a non-integer count.

    References:
        Liu et al., "Bootstrapping Semantic Segmentation with Regional Contrast"
        (ReCo), ICLR 2022; Wang et al., "Semi-Supervised Semantic Segmentation Using
        Unreliable Pseudo-Labels" (U2PL), CVPR 2022.

    Example:
        >>> import torch
        >>> from densessl import HardAnchorContrast
        >>> loss_fn = HardAnchorContrast(temperature=0.5, num_anchors=4, num_negatives=8)
        >>> emb = torch.randn(2, 16, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 8, 8))
        >>> loss = loss_fn(emb, labels, generator=torch.Generator().manual_seed(0))
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
        >>> loss.backward()
        >>> loss_fn(emb, torch.zeros(2, 8, 8, dtype=torch.long)).item()  # one class
        0.0
    """

    def __init__(
        self,
        temperature: float = 0.5,
        num_anchors: int | None = 256,
        num_negatives: int | None = 512,
        ignore_index: int = 255,
        hard_selection: str = "auto",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = float(check_number("temperature", temperature, low=0.0, low_inclusive=False, finite=True))
        self.num_anchors = (
            None if num_anchors is None else int(check_number("num_anchors", num_anchors, low=1, integer=True))
        )
        self.num_negatives = (
            None if num_negatives is None else int(check_number("num_negatives", num_negatives, low=1, integer=True))
        )
        self.ignore_index = int(check_number("ignore_index", ignore_index, integer=True))
        if hard_selection not in HARD_SELECTIONS:
            raise ValueError(f"hard_selection must be one of {HARD_SELECTIONS}, got {hard_selection!r}")
        self.hard_selection = hard_selection
        self.num_classes = (
            None if num_classes is None else int(check_number("num_classes", num_classes, low=1, integer=True))
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        probabilities: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The contrastive loss of one batch.

        Args:
            embeddings: per-pixel embeddings (normalised inside).
            labels: class per pixel or ``ignore_index``.
            mask: optional extra selection (True = use the pixel); this and the
                arguments after it are keyword only.
            probabilities: class probabilities, for ``"confidence"``/``"auto"``
                anchor selection; labels must then be below its ``K``.
            generator: random source for the negatives (on the embeddings' device).

        Shapes:
            - embeddings: ``[B, D, H, W]``
            - labels: ``[B, H, W]``
            - mask: ``[B, H, W]``, bool
            - probabilities: ``[B, K, H, W]``
            - returns: scalar

        Returns:
            The mean InfoNCE over all anchors (a graph-connected zero with fewer than
            two classes).
        """
        loss = hard_anchor_contrast(
            embeddings,
            labels,
            mask=mask,
            probabilities=probabilities,
            temperature=self.temperature,
            num_anchors=self.num_anchors,
            num_negatives=self.num_negatives,
            ignore_index=self.ignore_index,
            hard_selection=self.hard_selection,
            generator=generator,
            num_classes=self.num_classes,
        )
        assert isinstance(loss, torch.Tensor)
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, num_anchors={self.num_anchors}, "
            f"num_negatives={self.num_negatives}, ignore_index={self.ignore_index}, "
            f"hard_selection={self.hard_selection!r}, num_classes={self.num_classes}"
        )


class ProjectionHead(nn.Module):
    """The contrastive embedding head: 1x1 conv -> BatchNorm -> ReLU -> 1x1 conv.

    Maps a decoder feature map to per-pixel embeddings for
    :class:`HardAnchorContrast` (which normalises them), pixel by pixel.

    Args:
        in_channels: ``C`` of the input features.
        hidden_channels: width of the hidden layer.
        out_channels: ``D``, the embedding size.

    Shapes:
        - input: ``[B, C, H, W]``, float
        - output: ``[B, D, H, W]``, same dtype

    Raises:
        ValueError: a channel count below 1 (constructor) or an input whose ``C``
            differs from ``in_channels`` (forward).
        TypeError: a non-integer channel count.

    Example:
        >>> import torch
        >>> from densessl import ProjectionHead
        >>> head = ProjectionHead(64, hidden_channels=32, out_channels=16)
        >>> head(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, in_channels: int, hidden_channels: int = 256, out_channels: int = 128) -> None:
        super().__init__()
        self.in_channels = int(check_number("in_channels", in_channels, low=1, integer=True))
        hidden = int(check_number("hidden_channels", hidden_channels, low=1, integer=True))
        out = int(check_number("out_channels", out_channels, low=1, integer=True))
        self.net = nn.Sequential(
            nn.Conv2d(self.in_channels, hidden, kernel_size=1, bias=False),  # BN supplies the bias
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embed every pixel.

        Args:
            features: decoder features.

        Shapes:
            - features: ``[B, C, H, W]``
            - returns: ``[B, D, H, W]``

        Returns:
            The embeddings (not normalised).
        """
        check_features("features", features)
        if features.shape[1] != self.in_channels:
            raise ValueError(
                f"features must have {self.in_channels} channels in dim 1 [B, C, H, W], "
                f"got shape {tuple(features.shape)}"
            )
        return self.net(features)
