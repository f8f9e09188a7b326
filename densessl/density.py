"""Exact per-pixel log-densities of feature maps: a 1x1 normalizing flow + a class-Gaussian prior.

:class:`FlowDensityHead` treats every pixel's channel vector of a feature map
``[B, C, H, W]`` as one sample of a normalizing flow (so the density factorises over
pixels and the log-det is exact per pixel) whose base distribution is a
:class:`GaussianMixturePrior` with one diagonal Gaussian per class.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._checks import (
    FLOAT_DTYPES,
    check_features,
    check_labels,
    check_mask,
    check_number,
    check_same_spatial,
    check_tensor,
)
from .flows import ActNorm, InvertibleLinear, ZukoTransform, _is_zuko_lazy_transform, fixed_lu_weights, glow_flow
from .functional._density import _mixture_log_prob, diagonal_normal_log_prob, mixture_log_prob, mixture_posterior
from .functional._pixels import flatten_pixels, unflatten_pixels
from .utils import eval_mode

__all__ = ["FlowDensityHead", "GaussianMixturePrior"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Rows of the no-grad pass that initialises ActNorm-like layers: at least this many
# (when the batch has them), even with a smaller chunk size.
_INIT_ROWS = 4096


class GaussianMixturePrior(nn.Module):
    """One diagonal Gaussian per class, with mixture weights: the flow's base distribution.

    Means start as independent ``N(0, mean_scale^2)`` draws (so classes are
    distinguishable from the first step), log-scales at zero (unit variance) and mixture
    weights uniform. Scales and weights are learnable unless switched off (then they are
    fixed buffers).

    Args:
        num_classes: number of classes ``K >= 1``.
        features: dimension ``D`` of a sample.
        learn_scales: learn per-class, per-dimension log standard deviations.
        learn_weights: learn the mixture logits.
        mean_scale: standard deviation of the random initial means.

    Shapes:
        - z: ``[N, D]``, floating point
        - labels: ``[N]``, integer, ``0..K-1`` or ``ignore_index``
        - returns: ``[N, K]`` (``log_prob_per_class``, ``posterior``) or ``[N]``
          (``log_prob``), float32 (float64 for float64 ``z``), autocast disabled

    Raises:
        ValueError: ``num_classes < 1``, ``features < 1``, ``mean_scale < 0`` or infinite, or inputs of
            the wrong shape or labels out of range.

    Example:
        >>> import torch
        >>> from densessl.density import GaussianMixturePrior
        >>> prior = GaussianMixturePrior(2, 3)
        >>> z = torch.randn(5, 3)
        >>> prior.log_prob_per_class(z).shape, prior.log_prob(z).shape, prior.posterior(z).sum(1)
        (torch.Size([5, 2]), torch.Size([5]), tensor([1., 1., 1., 1., 1.], grad_fn=<SumBackward1>))
    """

    def __init__(
        self,
        num_classes: int,
        features: int,
        learn_scales: bool = True,
        learn_weights: bool = True,
        mean_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = int(check_number("num_classes", num_classes, low=1, integer=True))
        self.features = int(check_number("features", features, low=1, integer=True))
        scale = float(check_number("mean_scale", mean_scale, low=0.0, finite=True))
        self.means = nn.Parameter(scale * torch.randn(self.num_classes, self.features))
        log_scales = torch.zeros(self.num_classes, self.features)
        logits = torch.zeros(self.num_classes)
        if learn_scales:
            self.log_scales = nn.Parameter(log_scales)
        else:
            self.register_buffer("log_scales", log_scales)
        if learn_weights:
            self.mixture_logits = nn.Parameter(logits)
        else:
            self.register_buffer("mixture_logits", logits)

    def _check_z(self, z: object) -> torch.Tensor:
        z = check_tensor("z", z, ndim=2, dims="[N, D]", dtypes=FLOAT_DTYPES)
        if z.shape[1] != self.features:
            raise ValueError(f"z must have D={self.features} columns [N, D], got shape {tuple(z.shape)}")
        return z

    def log_prob_per_class(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; mu_k, diag(sigma_k^2))`` for every class: ``[N, D] -> [N, K]``."""
        z = self._check_z(z)
        return diagonal_normal_log_prob(z, self.means, self.log_scales)

    def log_prob(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, ignore_index: int = 255, joint: bool = False
    ) -> torch.Tensor:
        """``log p(z | y)`` where labelled, the mixture ``log p(z)`` where ``ignore_index`` or unlabelled.

        With ``joint=True`` labelled rows get ``log p(z, y) = log pi_y + log p(z | y)``.
        Returns ``[N]``; see :func:`densessl.functional.mixture_log_prob`.
        """
        return mixture_log_prob(self.log_prob_per_class(z), self.mixture_logits, labels, ignore_index, joint)

    def _log_prob_validated(
        self, z: torch.Tensor, labels: torch.Tensor | None, ignore_index: int, joint: bool
    ) -> torch.Tensor:
        # Labels already checked by the caller (FlowDensityHead): no second range check,
        # which would read them back to the host once more.
        return _mixture_log_prob(self.log_prob_per_class(z), self.mixture_logits, labels, ignore_index, joint)

    def posterior(self, z: torch.Tensor) -> torch.Tensor:
        """Class posterior ``p(k | z)`` by Bayes' rule: ``[N, D] -> [N, K]``."""
        return mixture_posterior(self.log_prob_per_class(z), self.mixture_logits)


def _uninitialized(module: nn.Module) -> bool:
    # ActNorm-like blocks (ours and nflows') carry a boolean ``initialized`` buffer; ours
    # also keep a host-side mirror, so a training step does not sync on reading it.
    for m in module.modules():
        if isinstance(m, ActNorm):
            if not m.is_initialized():
                return True
            continue
        flag = getattr(m, "initialized", None)
        if isinstance(flag, torch.Tensor) and flag.numel() == 1 and not bool(flag):
            return True
    return False


def _check_transform(transform: nn.Module, channels: int) -> None:
    """Refuse what would silently give wrong densities: batch statistics, a wrong width, low precision."""
    for name, m in transform.named_modules():
        buffers = dict(m.named_buffers(recurse=False))
        if isinstance(m, nn.modules.batchnorm._NormBase) or "running_mean" in buffers or "running_var" in buffers:
            raise ValueError(
                f"transform must not hold layers with batch statistics, got {type(m).__name__} at "
                f"{name or '(root)'}: a pixel's density would depend on the other pixels in its chunk "
                "(chunked and unchunked results differ) and running statistics would update per chunk; use ActNorm"
            )
    low = [(n, p.dtype) for n, p in transform.named_parameters() if p.dtype in _LOW_PRECISION]
    if low:
        raise TypeError(
            f"transform parameters must be float32 or float64, got {str(low[0][1]).replace('torch.', '')} "
            f"at {low[0][0]}; call transform.float()"
        )
    dtype = next((p.dtype for p in transform.parameters()), torch.float32)
    probe = torch.randn(2, channels, generator=torch.Generator().manual_seed(0)).to(dtype)
    device = next((p.device for p in transform.parameters()), torch.device("cpu"))
    try:
        with eval_mode(transform), torch.no_grad():  # eval: no data-dependent init on the probe
            out = transform(probe.to(device), None)
        z, logdet = out
        ok = tuple(z.shape) == (2, channels) and tuple(logdet.shape) == (2,)
        got = f"outputs {tuple(z.shape)} and log-det {tuple(logdet.shape)}"
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        ok, got = False, f"{type(error).__name__}: {error}"
    if not ok:
        raise ValueError(
            f"transform must map [N, C={channels}] rows to ([N, {channels}], [N]) like the head's channels, got {got}"
        )


class FlowDensityHead(nn.Module):
    """Exact per-pixel log-density of a feature map under a flow with a class-Gaussian prior.

    Each pixel's channel vector ``x`` is mapped by a per-pixel (1x1) flow ``z = f(x)``
    and scored as ``log p(x) = log p_prior(z) + log|det df/dx|``. The prior is a
    :class:`GaussianMixturePrior` with one component per class, so the head gives
    class-conditional densities ``log p(x | y)``, the marginal ``log p(x)`` and the
    class posterior ``p(y | x)``.

    The density math runs in float32 (float64 for float64 features or a float64 head)
    with autocast disabled, whatever the caller's autocast state; outputs are float32
    or float64. ``log_prob`` is differentiable w.r.t. the features.

    The head's parameters must be float32 or float64: a head cast to float16/bfloat16
    is refused with a ``TypeError`` (call ``head.float()``), because the flow's log-det
    and ``exp`` of its scales lose nats in low precision. Low-precision *features* are
    fine (computed in float32).

    Pixels are independent, so inputs with more than ``chunk_size`` pixels are pushed
    through the flow ``chunk_size`` pixels at a time: without gradients chunk by chunk,
    with gradients under activation checkpointing (each chunk's activations are
    recomputed in the backward pass), which bounds the flow's memory by one chunk. The
    invertible linear maps ``W = P L U`` are formed once per call (when the call has at
    least ``C`` pixels) and shared by every chunk and recompute. In training mode,
    uninitialised ActNorm layers are first initialised, in a no-grad pass, on a
    strided subsample (at most ``max(chunk_size, 4096)`` pixels) of the *used* pixels
    (``mask`` of :meth:`nll`); with too few used pixels they stay uninitialised.

    A ``transform`` must not hold layers with batch statistics (BatchNorm, nflows'
    ``BatchNorm``): their output for one pixel depends on the other pixels of the batch,
    so chunked and unchunked results would differ and running statistics would update
    once per chunk and recompute. Use ActNorm. A zuko lazy transform
    (``zuko.flows.MAF(...).transform`` and the like) is wrapped in
    :class:`~densessl.flows.ZukoTransform`.

    Args:
        channels: number of feature channels ``C >= 2``.
        num_classes: number of classes ``K >= 1`` (one Gaussian each).
        depth: number of (ActNorm, InvertibleLinear, AffineCoupling) steps of the built-in
            flow (default 2).
        hidden: conditioner width of the built-in couplings (default 256).
        clamp: soft-clamp bound of the couplings' log-scales (default 2.0).
        transform: optional replacement flow: any module with the nflows ``Transform``
            interface on ``[N, C]`` rows (e.g. an ``nflows.transforms`` object), or a zuko
            lazy transform; ``depth``, ``hidden`` and ``clamp`` must then not be given.
        chunk_size: pixels per flow evaluation; ``None`` never chunks.
        ignore_index: label of unlabelled pixels.
        learn_scales: learn the prior's per-class scales (else unit variance).
        learn_weights: learn the prior's mixture weights (else uniform).

    Shapes:
        - features: ``[B, C, H, W]``, float16/bfloat16/float32/float64, finite
        - labels: ``[B, H, W]``, integer, ``0..K-1`` or ``ignore_index``
        - mask: ``[B, H, W]``, bool

    Raises:
        ValueError: bad constructor arguments (also ``depth``/``hidden``/``clamp`` given
            with a ``transform``, a ``transform`` that does not map ``[N, C]`` rows to
            ``[N, C]``, or one with batch statistics); features with the wrong rank or
            channel count; labels or mask not matching the features' batch/spatial size;
            labels out of range.
        TypeError: non-float features, non-integer labels, a non-bool mask, a
            ``transform`` without the Transform interface, float64 features given to
            a float32 head, or a float16/bfloat16 head or transform.

    References:
        Kingma & Dhariwal, "Glow" (2018); Wang et al., "Density-Descending Feature
        Perturbation for Semi-supervised Semantic Segmentation" (DDFP, CVPR 2024).

    Example:
        >>> import torch
        >>> from densessl.density import FlowDensityHead
        >>> _ = torch.manual_seed(0)
        >>> head = FlowDensityHead(channels=4, num_classes=3, depth=1, hidden=16)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> z, logdet = head(x)
        >>> z.shape, logdet.shape
        (torch.Size([2, 4, 5, 5]), torch.Size([2, 5, 5]))
        >>> head.log_prob(x).shape, head.posterior(x).shape
        (torch.Size([2, 5, 5]), torch.Size([2, 3, 5, 5]))
        >>> labels = torch.randint(0, 3, (2, 5, 5))
        >>> head.nll(x, labels).ndim, head.nll(x, labels, per_dim=True).ndim
        (0, 0)
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        depth: int | None = None,
        hidden: int | None = None,
        clamp: float | None = None,
        transform: nn.Module | None = None,
        chunk_size: int | None = 8192,
        ignore_index: int = 255,
        learn_scales: bool = True,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        self.channels = int(check_number("channels", channels, low=2, integer=True))
        self.num_classes = int(check_number("num_classes", num_classes, low=1, integer=True))
        if chunk_size is not None:
            chunk_size = int(check_number("chunk_size", chunk_size, low=1, integer=True))
        self.chunk_size = chunk_size
        self.ignore_index = int(check_number("ignore_index", ignore_index, integer=True))
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index must not be a class index 0..{self.num_classes - 1}, got {self.ignore_index}"
            )
        if transform is None:
            transform = glow_flow(
                self.channels,
                depth=2 if depth is None else depth,
                hidden=256 if hidden is None else hidden,
                clamp=2.0 if clamp is None else clamp,
            )
        else:
            for name, value in (("depth", depth), ("hidden", hidden), ("clamp", clamp)):
                if value is not None:
                    raise ValueError(
                        f"{name} configures the built-in flow and must not be given with transform "
                        f"(got {name}={value!r}); configure the transform itself"
                    )
            if _is_zuko_lazy_transform(transform):
                transform = ZukoTransform(transform)
            if not isinstance(transform, nn.Module) or not callable(getattr(transform, "inverse", None)):
                raise TypeError(
                    "transform must be an nn.Module with forward(inputs, context) and inverse(inputs, context) "
                    f"(the nflows Transform interface), got {type(transform).__name__}"
                )
            _check_transform(transform, self.channels)
        self.transform: typing.Any = transform  # an nn.Module with forward and inverse (checked above)
        self.prior = GaussianMixturePrior(self.num_classes, self.channels, learn_scales, learn_weights)

    # -- plumbing -------------------------------------------------------------------

    def _param_dtype(self) -> torch.dtype:
        dtype = self.prior.means.dtype
        if dtype in _LOW_PRECISION or any(p.dtype in _LOW_PRECISION for p in self.transform.parameters()):
            low = next(p.dtype for p in self.parameters() if p.dtype in _LOW_PRECISION)
            raise TypeError(
                f"FlowDensityHead parameters must be float32 or float64, the head has "
                f"{str(low).replace('torch.', '')} ones: density math in low precision loses nats; "
                "call head.float() (features may stay low precision: they are computed in float32)"
            )
        return dtype

    @contextlib.contextmanager
    def _full_precision(self, device: torch.device) -> Iterator[None]:
        # Density math in low precision loses the log-det and overflows exp(s): keep
        # autocast off inside, whatever the caller's autocast state.
        with torch.autocast(device_type=device.type, enabled=False):
            yield

    def _rows(self, features: object, name: str = "features") -> torch.Tensor:
        features = check_features(name, features)
        if features.shape[1] != self.channels:
            raise ValueError(
                f"{name} must have C={self.channels} channels [B, C, H, W], got shape {tuple(features.shape)}"
            )
        device = self.prior.means.device
        if features.device != device:
            raise ValueError(
                f"{name} must be on the head's device ({device}), got {features.device}; move the head with .to(device)"
            )
        work = self._param_dtype()
        if features.dtype == torch.float64 and work != torch.float64:
            raise TypeError(
                f"{name} has dtype float64 but the head's parameters are "
                f"{str(work).replace('torch.', '')}; call head.double() or pass float32 features"
            )
        return flatten_pixels(features).to(work)

    def _labels(self, features: torch.Tensor, labels: object) -> torch.Tensor:
        labels = check_labels("labels", labels, num_classes=self.num_classes, ignore_index=self.ignore_index)
        check_same_spatial("features", features, "labels", labels)
        return labels.reshape(-1)

    def _initialize(self, rows: torch.Tensor, used: torch.Tensor | None) -> None:
        """Data-dependent init of ActNorm-like layers on (a subsample of) the used rows."""
        if used is not None:
            rows = rows[used]  # one host sync, on the initialising call only
        cap = max(self.chunk_size or rows.shape[0], _INIT_ROWS)
        stride = max(-(-rows.shape[0] // cap), 1)
        with torch.no_grad():
            self.transform(rows[::stride], None)

    def _transform_rows(
        self, rows: torch.Tensor, used: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = rows.shape[0]
        actnorms = [m for m in self.transform.modules() if isinstance(m, ActNorm)]
        if self.training and _uninitialized(self.transform):
            # Before the pass over all pixels (and outside any checkpointed chunk, whose
            # recompute would differ): initialise on the used pixels only.
            self._initialize(rows, used)
        # W = P L U once per call, shared by every chunk and checkpoint recompute; with
        # fewer rows than channels the factors are cheaper (and W is not formed).
        linears = [m for m in self.transform.modules() if isinstance(m, InvertibleLinear)] if n >= self.channels else []
        weights = [m.weight() for m in linears]

        def run(chunk: torch.Tensor, *lu_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            saved = [m._init_allowed for m in actnorms]
            try:
                for m in actnorms:  # initialised above (or deliberately not, too few rows)
                    m._init_allowed = False
                with fixed_lu_weights(linears, lu_weights):
                    return self.transform(chunk, None)
            finally:
                for m, flag in zip(actnorms, saved):
                    m._init_allowed = flag

        if self.chunk_size is None or n <= self.chunk_size:
            return run(rows, *weights)
        needs_grad = torch.is_grad_enabled() and (
            rows.requires_grad or any(p.requires_grad for p in self.transform.parameters())
        )
        outputs, logdets = [], []
        for chunk in rows.split(self.chunk_size):
            if needs_grad:
                z, logdet = checkpoint(run, chunk, *weights, use_reentrant=False)
            else:
                z, logdet = run(chunk, *weights)
            outputs.append(z)
            logdets.append(logdet)
        return torch.cat(outputs), torch.cat(logdets)

    # -- public API -----------------------------------------------------------------

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map every pixel through the flow.

        Args:
            features: the feature map.

        Shapes:
            - features: ``[B, C, H, W]``
            - returns: ``(z [B, C, H, W], logdet [B, H, W])``, float32 or float64

        Returns:
            The latent map and the per-pixel ``log|det df/dx|``.
        """
        with self._full_precision(features.device if isinstance(features, torch.Tensor) else torch.device("cpu")):
            rows = self._rows(features)
            z, logdet = self._transform_rows(rows)
        b, _, h, w = features.shape
        return unflatten_pixels(z, features.shape), logdet.reshape(b, h, w)

    def _log_prob_rows(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None,
        used: torch.Tensor | None = None,
        joint: bool = False,
    ) -> torch.Tensor:
        with self._full_precision(features.device if isinstance(features, torch.Tensor) else torch.device("cpu")):
            rows = self._rows(features)
            flat_labels = None if labels is None else self._labels(features, labels)
            z, logdet = self._transform_rows(rows, used)
            return self.prior._log_prob_validated(z, flat_labels, self.ignore_index, joint) + logdet

    def log_prob(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel log-density, differentiable w.r.t. ``features``.

        With ``labels``: ``log p(x | y)`` at labelled pixels and the mixture ``log p(x)``
        where the label is ``ignore_index``. Without labels: the mixture everywhere.

        Args:
            features: the feature map.
            labels: optional class map at the features' resolution (resize it with
                :func:`densessl.functional.downsample_labels` first).

        Shapes:
            - features: ``[B, C, H, W]``
            - labels: ``[B, H, W]``
            - returns: ``[B, H, W]``, float32 or float64

        Returns:
            The log-density of every pixel (in nats, summed over the ``C`` dimensions).
        """
        out = self._log_prob_rows(features, labels)
        b, _, h, w = features.shape
        return out.reshape(b, h, w)

    def nll(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        per_dim: bool = False,
    ) -> torch.Tensor:
        """Mean negative log-likelihood over the used pixels: the flow's training loss.

        A pixel is used when ``mask`` is True there (every pixel without a mask). Labels
        do not drop pixels: a labelled pixel contributes the joint ``-log p(x, y) =
        -log pi_y - log p(x | y)`` (so the mixture weights ``pi`` learn the class
        frequencies from labelled pixels) and an ``ignore_index`` pixel the marginal
        ``-log p(x)``. With no used pixel the result is an exact zero still connected to
        the graph (not NaN). In training mode uninitialised ActNorm layers initialise on
        the used pixels only.

        Args:
            features: the feature map (usually detached teacher features).
            labels: optional class map at the features' resolution.
            mask: optional selection of pixels.
            per_dim: divide by ``C`` (nats per dimension, comparable across widths).

        Shapes:
            - features: ``[B, C, H, W]``
            - labels: ``[B, H, W]``
            - mask: ``[B, H, W]``, bool
            - returns: scalar, float32 or float64

        Returns:
            ``mean(-log p)`` over used pixels, or that divided by ``C`` if ``per_dim``.
        """
        used = None
        if mask is not None:
            features = check_features("features", features)
            b, _, h, w = features.shape
            check_mask("mask", mask, shape=(b, h, w))
            used = mask.reshape(-1)
        log_p = self._log_prob_rows(features, labels, used, joint=True)
        if used is None:
            loss = -log_p.sum() / max(log_p.numel(), 1)
        else:
            total = -torch.where(used, log_p, torch.zeros_like(log_p)).sum()
            # No used pixel: total is an exact zero connected to the graph; divide by 1,
            # not 0. The count stays a tensor: no host sync in the training step.
            loss = total / used.sum().clamp_min(1).to(log_p.dtype)
        return loss / self.channels if per_dim else loss

    def posterior(self, features: torch.Tensor) -> torch.Tensor:
        """Class posterior ``p(y | x)`` of every pixel (the log-det cancels in Bayes' rule).

        Args:
            features: the feature map.

        Shapes:
            - features: ``[B, C, H, W]``
            - returns: ``[B, K, H, W]``, float32 or float64, summing to one over ``K``

        Returns:
            The per-pixel class probabilities.
        """
        z, _ = self.forward(features)
        with self._full_precision(z.device):
            post = self.prior.posterior(flatten_pixels(z))
        return unflatten_pixels(post, z.shape)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents back to features, ``x = f^-1(z)`` (unchunked).

        Args:
            z: a latent map.

        Shapes:
            - z: ``[B, C, H, W]``
            - returns: ``[B, C, H, W]``

        Returns:
            The features whose latents are ``z``.
        """
        with self._full_precision(z.device if isinstance(z, torch.Tensor) else torch.device("cpu")):
            rows = self._rows(z, "z")
            x, _ = self.transform.inverse(rows, None)
        return unflatten_pixels(x, z.shape)
