"""Density-descending feature perturbation as a module (DDFP / DPFR's FDP)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._checks import check_features, check_labels, check_number, check_same_spatial
from .functional._perturbation import density_perturbation
from .utils import eval_mode

__all__ = ["DensityPerturbation"]


class DensityPerturbation(nn.Module):
    r"""Move every pixel's features a fixed distance towards lower density.

    ``forward(features)`` returns ``features + rho`` with
    :math:`\rho = \xi\, g / \lVert g \rVert`, :math:`g = \nabla_x(-\log p(x))` per pixel
    over channels (see :func:`densessl.functional.density_perturbation`). ``rho`` is a
    constant: the result's gradient with respect to ``features`` is the identity, and
    no parameter of ``density`` or ``head`` receives a gradient. During the gradient
    computation ``density`` and ``head`` are put in eval mode (no BatchNorm statistics
    update, no dropout), and each submodule's own train/eval flag is restored after.

    ``density`` and ``head`` are *held, not registered* as submodules: they do not
    appear in ``parameters()``, ``state_dict()`` or ``.to()`` of this module (or of a
    student network that holds it). The density model is trained by its own optimiser
    on detached features, and the head is a block of the student that the student
    already owns; registering them would put the density into the student's optimiser
    and checkpoints and save the head twice. Move, save and train them where they are
    owned. Copies follow the same ownership:

    - ``copy.deepcopy`` (and so :class:`~densessl.EMATeacher`) *shares* the density —
      there is one density model, updated by its owner — and copies the head along
      with the rest, so the copy of a network that holds both its block and this
      module perturbs through its own copy of the block;
    - ``pickle`` (and ``torch.save`` of a whole module) drops the density and keeps
      the head: after loading, ``density`` is ``None`` and a call raises until it is
      set again with ``perturb.density = model``.

    Args:
        density: any object with ``log_prob(features) -> [B, H, W]`` (and
            ``log_prob(features, labels)`` if ``labels`` are passed), e.g.
            :class:`densessl.FlowDensityHead`. It must be differentiable in its input
            and accept float32 (float64 for float64 features).
        xi: step length per pixel (``>= 0``; DPFR uses 3, DDFP 4).
        relative: if True the step is ``xi * ||features||`` per pixel.
        head: optional module (or callable) applied to the perturbed tensor before the
            density: the gradient is that of ``-log p(head(x))`` with respect to ``x``
            (DDFP perturbs a block's input and measures density at its output).
        eps: gradient norm at or below which a pixel counts as flat (gets ``rho = 0``).

    Shapes:
        - features: ``[B, C, H, W]``, float16/bfloat16/float32/float64
        - mask: ``[B, H, W]`` bool, True = perturb this pixel
        - labels: ``[B, H', W']`` integer, at the density input's size (``H, W`` without
          a head); ``ignore_index`` where unknown, as the density defines it
        - returns: ``[B, C, H, W]``, features' dtype

    Raises:
        TypeError: ``density`` has no callable ``log_prob``, ``head`` is not callable,
            or inputs have wrong dtypes.
        ValueError: ``xi < 0`` or infinite, ``eps <= 0``, or inputs of the wrong shape.

    References:
        Wang et al., "Density-Descending Feature Perturbation for Semi-supervised
        Semantic Segmentation" (DDFP), CVPR 2024.

    Example:
        >>> import torch
        >>> from densessl import DensityPerturbation
        >>> class StandardNormal:  # log N(x; 0, I) up to a constant, per pixel
        ...     def log_prob(self, x):
        ...         return -0.5 * (x ** 2).sum(dim=1)
        >>> perturb = DensityPerturbation(StandardNormal(), xi=1.0)
        >>> x = torch.tensor([[[[3.0]], [[4.0]]]], requires_grad=True)
        >>> y = perturb(x)
        >>> y.flatten()
        tensor([3.6000, 4.8000], grad_fn=<ViewBackward0>)
        >>> len(list(perturb.parameters()))
        0
    """

    def __init__(
        self,
        density: object,
        xi: float = 3.0,
        relative: bool = False,
        head: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if not callable(getattr(density, "log_prob", None)):
            raise TypeError(f"density must have a callable log_prob(features), got {type(density).__name__}")
        if head is not None and not callable(head):
            raise TypeError(f"head must be a module or callable, got {type(head).__name__}")
        if not isinstance(relative, bool):
            raise TypeError(f"relative must be a bool, got {type(relative).__name__}")
        self.xi = float(check_number("xi", xi, low=0.0, finite=True))
        self.eps = float(check_number("eps", eps, low=0.0, low_inclusive=False))
        self.relative = relative
        # Written into __dict__ so that nn.Module.__setattr__ does not register them
        # (see the class docstring for why).
        self.__dict__["_density"] = density
        self.__dict__["_head"] = head

    @property
    def density(self) -> object:
        """The density model (held, not registered as a submodule); ``None`` after unpickling."""
        return self.__dict__["_density"]

    @density.setter
    def density(self, density: object) -> None:
        if not callable(getattr(density, "log_prob", None)):
            raise TypeError(f"density must have a callable log_prob(features), got {type(density).__name__}")
        self.__dict__["_density"] = density

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "density":  # the property, not nn.Module's submodule registration
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __deepcopy__(self, memo: dict[int, Any]) -> DensityPerturbation:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            # the density is shared; everything else (the head included) is copied through
            # the memo, so a head that is a block of the network being copied maps to the
            # copy's block
            new.__dict__[key] = value if key == "_density" else copy.deepcopy(value, memo)
        return new

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_density"] = None  # owned elsewhere, with its own checkpoint
        return state

    @property
    def head(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The block applied before the density, or ``None`` (held, not registered)."""
        return self.__dict__["_head"]

    def extra_repr(self) -> str:
        return (
            f"density={type(self.density).__name__}, xi={self.xi}, relative={self.relative}, "
            f"head={None if self.head is None else type(self.head).__name__}"
        )

    def perturbation(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The step ``rho`` alone (no graph, features' dtype); ``forward`` adds it.

        Args:
            features: feature map to perturb.
            labels: forwarded as ``density.log_prob(h, labels)`` (class-conditional density).
            mask: pixels to perturb (True); keyword only.

        Shapes:
            - features: ``[B, C, H, W]``
            - mask: ``[B, H, W]`` bool
            - labels: ``[B, H', W']`` integer, the density input's spatial size
            - returns: ``[B, C, H, W]``, per-pixel norm ``<= xi`` (``<= xi * ||features||``
              if relative)

        Returns:
            ``rho``.

        Raises:
            ValueError: wrong shapes (the message names the argument).
            TypeError: wrong dtypes.
            RuntimeError: no density (after unpickling; set ``perturb.density``).

        Example:
            >>> import torch
            >>> from densessl import DensityPerturbation
            >>> class StandardNormal:
            ...     def log_prob(self, x):
            ...         return -0.5 * (x ** 2).sum(dim=1)
            >>> rho = DensityPerturbation(StandardNormal(), xi=2.0).perturbation(torch.randn(2, 8, 4, 4))
            >>> torch.linalg.vector_norm(rho, dim=1).max().item()
            2.0...
        """
        check_features("features", features)
        if labels is not None:
            labels = check_labels("labels", labels, ignore_index=None)
        density: Any = self.density  # any object with log_prob (duck-typed, see the class docstring)
        head = self.head
        if density is None:
            raise RuntimeError(
                "DensityPerturbation has no density (it is not pickled with the module): "
                "set it again with perturb.density = model"
            )

        def log_prob(x: torch.Tensor) -> torch.Tensor:
            h = x if head is None else head(x)
            if labels is None:
                return density.log_prob(h)
            check_same_spatial("head(features)" if head is not None else "features", h, "labels", labels)
            return density.log_prob(h, labels)

        with eval_mode(density, head):
            return density_perturbation(features, log_prob, self.xi, mask=mask, relative=self.relative, eps=self.eps)

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return ``features + rho`` (gradient w.r.t. ``features``: the identity).

        Args:
            features: feature map to perturb.
            labels: forwarded to ``density.log_prob`` (class-conditional density).
            mask: pixels to perturb (True); keyword only.

        Shapes:
            - features: ``[B, C, H, W]``
            - mask: ``[B, H, W]`` bool
            - labels: ``[B, H', W']`` integer
            - returns: ``[B, C, H, W]``, features' dtype

        Returns:
            The perturbed features.

        Raises:
            ValueError: wrong shapes.
            TypeError: wrong dtypes.
        """
        return features + self.perturbation(features, labels, mask=mask)
