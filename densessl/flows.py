"""Per-pixel normalizing-flow blocks with the nflows ``Transform`` interface.

Every block maps a row matrix ``[N, C]`` (one row = one pixel's channel vector) and
returns ``(outputs, logabsdet)`` with ``logabsdet`` of shape ``[N]``, from both
``forward(inputs, context=None)`` and ``inverse(inputs, context=None)``. That is the
interface of ``nflows.transforms.Transform``, so these blocks and nflows transforms
can be mixed in a :class:`FlowSequence`, wrapped by an ``nflows`` ``Flow``, or passed
to :class:`densessl.density.FlowDensityHead` — without nflows being a dependency.
The blocks are unconditional: ``context`` is accepted and ignored. Blocks with
parameters compute in their parameters' dtype: float16/bfloat16/float32 rows are cast
to it, float64 rows need a float64 block (``.double()``), else ``TypeError``.

References:
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions" (2018).
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from ._checks import FLOAT_DTYPES, INT_DTYPES, check_number, check_tensor
from .functional._density import soft_clamp

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "FlowSequence",
    "InvertibleLinear",
    "Permutation",
    "RandomPermutation",
    "ReversePermutation",
    "ZukoTransform",
    "fixed_lu_weights",
    "glow_flow",
]


def _check_rows(inputs: object, features: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate ``[N, C]`` rows; with ``dtype`` (the block's parameter dtype), bring them to it.

    Lower-precision rows are upcast (the block's math runs in its own precision);
    float64 rows given to a lower-precision block are refused, as by
    :class:`~densessl.density.FlowDensityHead`, instead of failing inside a matmul.
    """
    rows = check_tensor("inputs", inputs, ndim=2, dims="[N, C]", dtypes=FLOAT_DTYPES)
    if rows.shape[1] != features:
        raise ValueError(f"inputs must have C={features} columns [N, C], got shape {tuple(rows.shape)}")
    if dtype is not None and rows.dtype != dtype:
        if rows.dtype == torch.float64:
            raise TypeError(
                f"inputs has dtype float64 but the block's parameters are {str(dtype).replace('torch.', '')}; "
                "call .double() on the block or pass float32 inputs"
            )
        rows = rows.to(dtype)
    return rows


def _check_features(features: object, minimum: int = 1) -> int:
    return int(check_number("features", features, low=minimum, integer=True))


class ActNorm(nn.Module):
    """Per-channel affine normalisation ``y = x * exp(log_scale) + shift``.

    On the first forward call in training mode with at least ``min_init_rows`` rows
    the parameters are set from the data so that the output has zero mean and unit
    variance per channel (GLOW's data-dependent initialisation). A call with fewer
    rows (an empty batch, one pixel) leaves the layer as it is, uninitialised, and a
    later call initialises it. The ``initialized`` flag is a persistent buffer: a module
    loaded from a ``state_dict`` keeps its parameters and never re-initialises. Before
    initialisation (e.g. in eval mode) the block is the identity. Once seen initialised,
    the flag is not read back again (no device sync per training step) until the next
    ``load_state_dict``; to re-initialise, load an uninitialised state or call
    :meth:`initialize`.

    **Dead channels.** A channel whose standard deviation in the initialising batch is
    at most ``dead_ratio`` times the median standard deviation of the live channels
    (constant, e.g. an all-zero ReLU unit) is not scaled by ``1 / std`` — that would be
    ``1e6`` for a zero channel and blow the NLL up as soon as the channel carries
    signal. It gets the median live channel's scale instead (its shift still centres
    it). If no channel varies at all, every scale stays 1.

    Args:
        features: number of channels ``C``.
        eps: standard deviation at or below which a channel counts as constant.
        min_init_rows: fewest rows a data-dependent initialisation uses (``>= 2``).
        dead_ratio: a channel with ``std <= dead_ratio * median live std`` is dead
            (``0 <= dead_ratio < 1``).

    Shapes:
        - inputs: ``[N, C]``, floating point
        - returns: ``(outputs [N, C], logabsdet [N])``; ``logabsdet = sum(log_scale)``

    Raises:
        ValueError: ``features < 1``, ``eps <= 0`` or infinite, ``min_init_rows < 2``,
            ``dead_ratio`` outside ``[0, 1)``, or inputs of the wrong shape.
        TypeError: non-float inputs, or float64 inputs to a float32 block.

    Example:
        >>> import torch
        >>> from densessl.flows import ActNorm
        >>> _ = torch.manual_seed(0)
        >>> norm = ActNorm(3)
        >>> y, logdet = norm(5 + 2 * torch.randn(1000, 3))
        >>> bool(norm.initialized), y.mean(0).abs().max() < 1e-4, y.std(0, unbiased=False)
        (True, tensor(True), tensor([1.0000, 1.0000, 1.0000], grad_fn=<StdBackward0>))
        >>> dead = torch.randn(1000, 3)
        >>> dead[:, 0] = 0.0  # a dead unit gets the typical scale, not 1 / 1e-6
        >>> norm = ActNorm(3)
        >>> _ = norm(dead)
        >>> norm.log_scale.exp().max() < 2
        tensor(True)
    """

    initialized: torch.Tensor

    def __init__(self, features: int, eps: float = 1e-6, min_init_rows: int = 8, dead_ratio: float = 1e-2) -> None:
        super().__init__()
        self.features = _check_features(features)
        self.eps = float(check_number("eps", eps, low=0.0, low_inclusive=False, finite=True))
        self.min_init_rows = int(check_number("min_init_rows", min_init_rows, low=2, integer=True))
        self.dead_ratio = float(check_number("dead_ratio", dead_ratio, low=0.0, high=1.0, high_inclusive=False))
        self.log_scale = nn.Parameter(torch.zeros(self.features))
        self.shift = nn.Parameter(torch.zeros(self.features))
        self.register_buffer("initialized", torch.tensor(False), persistent=True)
        # Host-side mirror of ``initialized`` once it has been seen True, so that a
        # training forward does not read the buffer back (a device sync) every call.
        # Reset whenever a state dict is loaded (the buffer is then read once more).
        self._known_initialized = False
        # FlowDensityHead switches data-dependent init off while it runs the flow on
        # all pixels, after initialising on the used ones (see its ``nll(mask=...)``).
        self._init_allowed = True

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def is_initialized(self) -> bool:
        """Whether the data-dependent initialisation has happened (reads the buffer at most
        until it is first seen True, or again after ``load_state_dict``)."""
        if not self._known_initialized and bool(self.initialized):
            self._known_initialized = True
        return self._known_initialized

    @torch.no_grad()
    def initialize(self, inputs: torch.Tensor) -> None:
        """Set the parameters so that ``inputs`` come out with zero mean, unit variance.

        Dead channels get the median live channel's scale (see the class docstring).

        Args:
            inputs: a batch of at least ``min_init_rows`` rows.

        Shapes:
            - inputs: ``[N, C]``, ``N >= min_init_rows``

        Raises:
            ValueError: fewer than ``min_init_rows`` rows, or the wrong width.
        """
        rows = _check_rows(inputs, self.features).to(self.log_scale.dtype)
        if rows.shape[0] < self.min_init_rows:
            raise ValueError(
                f"inputs must have at least {self.min_init_rows} rows (min_init_rows) to initialise "
                f"ActNorm, got shape {tuple(rows.shape)}"
            )
        mean = rows.mean(dim=0)
        std = rows.std(dim=0, unbiased=False)
        live = std > self.eps
        # median over live channels without a host read: NaN-out the dead ones
        typical = torch.nanmedian(torch.where(live, std, torch.full_like(std, float("nan"))))
        typical = torch.where(torch.isnan(typical), torch.ones_like(typical), typical)
        dead = ~live | (std <= self.dead_ratio * typical)
        std = torch.where(dead, typical.expand_as(std), std)
        self.log_scale.copy_(-torch.log(std))
        self.shift.copy_(-mean / std)
        self.initialized.fill_(True)
        self._known_initialized = True

    def forward(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``y = x * exp(log_scale) + shift`` (initialising first, in training, if needed)."""
        rows = _check_rows(inputs, self.features, self.log_scale.dtype)
        if self.training and self._init_allowed and rows.shape[0] >= self.min_init_rows and not self.is_initialized():
            self.initialize(rows)
        outputs = rows * torch.exp(self.log_scale) + self.shift
        logabsdet = self.log_scale.sum().expand(rows.shape[0])
        return outputs, logabsdet

    def inverse(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = (y - shift) * exp(-log_scale)``."""
        rows = _check_rows(inputs, self.features, self.log_scale.dtype)
        outputs = (rows - self.shift) * torch.exp(-self.log_scale)
        logabsdet = (-self.log_scale.sum()).expand(rows.shape[0])
        return outputs, logabsdet


class InvertibleLinear(nn.Module):
    """An invertible ``C x C`` linear map (GLOW's 1x1 convolution), LU-parametrised.

    ``W = P @ L @ (U + diag(sign * exp(log_s)))`` with a fixed permutation ``P``, a
    unit lower-triangular ``L``, a strictly upper-triangular ``U`` and fixed signs, so
    ``log|det W| = sum(log_s)`` costs ``O(C)``. When ``N >= C`` rows come in, ``W`` is
    formed once per call (``2 C^3`` FLOPs) and applied with a single ``[N, C] x [C, C]``
    product; for fewer rows the two factors are applied one after the other instead
    (``4 N C^2`` FLOPs, cheaper than forming ``W``). :class:`~densessl.density.FlowDensityHead`
    forms ``W`` once per call of its own and hands it to every pixel chunk and
    checkpoint recompute (see :func:`fixed_lu_weights`). The inverse uses two
    triangular solves. Initialised from a random orthogonal matrix (so the block starts
    volume-preserving). ``P`` is stored as an index vector and applied by gathering.

    Args:
        features: number of channels ``C``.

    Shapes:
        - inputs: ``[N, C]``, floating point
        - returns: ``(outputs [N, C], logabsdet [N])``

    Raises:
        ValueError: ``features < 1`` or inputs of the wrong shape.
        TypeError: non-float inputs, or float64 inputs to a float32 block.

    Example:
        >>> import torch
        >>> from densessl.flows import InvertibleLinear
        >>> _ = torch.manual_seed(0)
        >>> lin = InvertibleLinear(4)
        >>> x = torch.randn(5, 4)
        >>> y, logdet = lin(x)
        >>> torch.allclose(lin.inverse(y)[0], x, atol=1e-5), logdet.shape
        (True, torch.Size([5]))
    """

    permutation: torch.Tensor
    inverse_permutation: torch.Tensor
    sign: torch.Tensor
    lower_mask: torch.Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = d = _check_features(features)
        q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        # P @ A == A[permutation]: row i of P has its one in column permutation[i]
        self.register_buffer("permutation", p.argmax(dim=1))
        self.register_buffer("inverse_permutation", torch.argsort(self.permutation))
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(d, d), diagonal=-1))
        self.lower = nn.Parameter(torch.tril(lower, diagonal=-1).float())
        self.upper = nn.Parameter(torch.triu(upper, diagonal=1).float())
        self.log_s = nn.Parameter(torch.log(diag.abs()).float())
        # Set by ``fixed_lu_weights`` for the duration of one flow call: W formed outside.
        self._fixed_weight: torch.Tensor | None = None

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.features, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The matrix ``W = P L U`` (``[C, C]``); ``forward`` computes ``x @ W.T``."""
        lower, upper = self._factors()
        return (lower @ upper)[self.permutation]

    def forward(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``y = x @ W.T`` with ``log|det W| = sum(log_s)``."""
        rows = _check_rows(inputs, self.features, self.log_s.dtype)
        if self._fixed_weight is not None:
            outputs = nn.functional.linear(rows, self._fixed_weight)
        elif rows.shape[0] >= self.features:
            outputs = nn.functional.linear(rows, self.weight())
        else:  # y = ((x U^T) L^T) P^T
            lower, upper = self._factors()
            outputs = nn.functional.linear(nn.functional.linear(rows, upper), lower)[:, self.permutation]
        return outputs, self.log_s.sum().expand(rows.shape[0])

    def inverse(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve ``x @ W.T = y``: ``x = y P L^-T U^-T`` by two triangular solves."""
        rows = _check_rows(inputs, self.features, self.log_s.dtype)
        lower, upper = self._factors()
        t = rows[:, self.inverse_permutation]  # y @ P
        t = torch.linalg.solve_triangular(lower.T, t, upper=True, left=False, unitriangular=True)
        outputs = torch.linalg.solve_triangular(upper.T, t, upper=False, left=False)
        return outputs, (-self.log_s.sum()).expand(rows.shape[0])


class Permutation(nn.Module):
    """A fixed permutation of the channels (volume-preserving: ``logabsdet = 0``).

    Args:
        permutation: a permutation of ``0..C-1``; ``outputs[:, i] = inputs[:, permutation[i]]``.

    Shapes:
        - inputs: ``[N, C]``
        - returns: ``(outputs [N, C], logabsdet [N])`` (zeros)

    Raises:
        ValueError: ``permutation`` is not a 1-D permutation of ``0..C-1``.
        TypeError: ``permutation`` is not an integer tensor.

    Example:
        >>> import torch
        >>> from densessl.flows import Permutation
        >>> perm = Permutation(torch.tensor([2, 0, 1]))
        >>> perm(torch.tensor([[10.0, 11.0, 12.0]]))[0]
        tensor([[12., 10., 11.]])
    """

    permutation: torch.Tensor
    inverse_permutation: torch.Tensor

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__()
        permutation = check_tensor(
            "permutation",
            permutation,
            ndim=1,
            dims="[C]",
            dtypes=INT_DTYPES,
            dtype_words="an integer type (int64 preferred)",
        )
        d = permutation.numel()
        expected = torch.arange(d, device=permutation.device)
        if d < 1 or not torch.equal(torch.sort(permutation.long()).values, expected):
            raise ValueError(f"permutation must be a permutation of 0..C-1, got {permutation.tolist()}")
        self.features = d
        self.register_buffer("permutation", permutation.long().clone())
        self.register_buffer("inverse_permutation", torch.argsort(self.permutation))

    def forward(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reorder the columns."""
        rows = _check_rows(inputs, self.features)
        return rows[:, self.permutation], rows.new_zeros(rows.shape[0])

    def inverse(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo the reordering."""
        rows = _check_rows(inputs, self.features)
        return rows[:, self.inverse_permutation], rows.new_zeros(rows.shape[0])


class RandomPermutation(Permutation):
    """A random (drawn once, then fixed and saved) permutation of the channels.

    Args:
        features: number of channels ``C``.
        generator: optional ``torch.Generator`` for a reproducible draw.

    Shapes:
        - inputs: ``[N, C]``
        - returns: ``(outputs [N, C], logabsdet [N])`` (zeros)

    Example:
        >>> import torch
        >>> from densessl.flows import RandomPermutation
        >>> perm = RandomPermutation(5, generator=torch.Generator().manual_seed(0))
        >>> sorted(perm.permutation.tolist())
        [0, 1, 2, 3, 4]
    """

    def __init__(self, features: int, generator: torch.Generator | None = None) -> None:
        super().__init__(torch.randperm(_check_features(features), generator=generator))


class ReversePermutation(Permutation):
    """Reverse the channel order (``C-1, ..., 0``).

    Args:
        features: number of channels ``C``.

    Shapes:
        - inputs: ``[N, C]``
        - returns: ``(outputs [N, C], logabsdet [N])`` (zeros)

    Example:
        >>> import torch
        >>> from densessl.flows import ReversePermutation
        >>> ReversePermutation(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0]
        tensor([[3., 2., 1.]])
    """

    def __init__(self, features: int) -> None:
        super().__init__(torch.arange(_check_features(features) - 1, -1, -1))


class AffineCoupling(nn.Module):
    """GLOW affine coupling: the first half of the channels conditions the second.

    ``x = [x1, x2]`` with ``x1`` the first ``C // 2`` channels (odd ``C`` is fine);
    ``(s, t) = MLP(x1)``, ``s = soft_clamp(s, clamp)``, ``y = [x1, x2 * exp(s) + t]`` and
    ``log|det| = sum(s)``. The MLP's last layer is zero-initialised, so the block starts
    as the identity. Channel mixing between couplings comes from
    :class:`InvertibleLinear` or a permutation.

    Args:
        features: number of channels ``C >= 2``.
        hidden: width of the conditioner's two hidden layers.
        clamp: bound of the soft clamp on ``s`` (``exp(s)`` stays in ``(e^-clamp, e^clamp)``).

    Shapes:
        - inputs: ``[N, C]``, floating point
        - returns: ``(outputs [N, C], logabsdet [N])``

    Raises:
        ValueError: ``features < 2``, ``hidden < 1``, ``clamp <= 0`` or infinite, or inputs of the wrong shape.
        TypeError: non-float inputs, or float64 inputs to a float32 block.

    Example:
        >>> import torch
        >>> from densessl.flows import AffineCoupling
        >>> coupling = AffineCoupling(5, hidden=8)
        >>> x = torch.randn(3, 5)
        >>> y, logdet = coupling(x)  # identity at initialisation
        >>> torch.equal(y, x), logdet.tolist()
        (True, [0.0, 0.0, 0.0])
    """

    def __init__(self, features: int, hidden: int = 256, clamp: float = 2.0) -> None:
        super().__init__()
        self.features = _check_features(features, minimum=2)
        self.hidden = int(check_number("hidden", hidden, low=1, integer=True))
        self.clamp = float(check_number("clamp", clamp, low=0.0, low_inclusive=False, finite=True))
        self.split = self.features // 2
        out = self.features - self.split
        self.conditioner = nn.Sequential(
            nn.Linear(self.split, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, 2 * out),
        )
        last = typing.cast(nn.Linear, self.conditioner[-1])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def _dtype(self) -> torch.dtype:
        return typing.cast(nn.Linear, self.conditioner[0]).weight.dtype

    def _scale_shift(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_scale, shift = self.conditioner(x1).chunk(2, dim=1)
        return soft_clamp(raw_scale, self.clamp), shift

    def forward(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``y2 = x2 * exp(s(x1)) + t(x1)``; ``y1 = x1``."""
        rows = _check_rows(inputs, self.features, self._dtype)
        x1, x2 = rows[:, : self.split], rows[:, self.split :]
        log_scale, shift = self._scale_shift(x1)
        outputs = torch.cat([x1, x2 * torch.exp(log_scale) + shift], dim=1)
        return outputs, log_scale.sum(dim=1)

    def inverse(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x2 = (y2 - t(y1)) * exp(-s(y1))``; ``x1 = y1``."""
        rows = _check_rows(inputs, self.features, self._dtype)
        y1, y2 = rows[:, : self.split], rows[:, self.split :]
        log_scale, shift = self._scale_shift(y1)
        outputs = torch.cat([y1, (y2 - shift) * torch.exp(-log_scale)], dim=1)
        return outputs, -log_scale.sum(dim=1)


class FlowSequence(nn.Module):
    """Compose transforms (like ``nflows.transforms.CompositeTransform``), summing log-dets.

    Any object with the nflows ``Transform`` interface may be an element (our blocks
    or ``nflows.transforms.*``).

    Args:
        transforms: the blocks, applied in order by ``forward`` and in reverse by ``inverse``.

    Shapes:
        - inputs: ``[N, C]``
        - returns: ``(outputs [N, C], logabsdet [N])``, the sum over all blocks

    Raises:
        ValueError: an empty sequence.
        TypeError: an element that is not an ``nn.Module`` with an ``inverse`` method.

    Example:
        >>> import torch
        >>> from densessl.flows import ActNorm, FlowSequence, ReversePermutation
        >>> flow = FlowSequence([ReversePermutation(2), ActNorm(2)]).eval()  # eval: no ActNorm init
        >>> y, logdet = flow(torch.tensor([[1.0, 2.0]]))
        >>> y, logdet
        (tensor([[2., 1.]], grad_fn=<AddBackward0>), tensor([0.], grad_fn=<AddBackward0>))
    """

    def __init__(self, transforms: Iterable[nn.Module]) -> None:
        super().__init__()
        transforms = list(transforms)
        if not transforms:
            raise ValueError("transforms must hold at least one transform, got an empty sequence")
        for i, t in enumerate(transforms):
            if not isinstance(t, nn.Module) or not callable(getattr(t, "inverse", None)):
                raise TypeError(
                    f"transforms[{i}] must be an nn.Module with forward/inverse (nflows Transform interface), "
                    f"got {type(t).__name__}"
                )
        self.transforms = nn.ModuleList(transforms)

    def forward(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply every block in order."""
        rows = check_tensor("inputs", inputs, ndim=2, dims="[N, C]", dtypes=FLOAT_DTYPES)
        total = rows.new_zeros(rows.shape[0])
        for transform in self.transforms:
            rows, logabsdet = transform(rows, context)
            total = total + logabsdet
        return rows, total

    def inverse(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo every block, last first."""
        rows = check_tensor("inputs", inputs, ndim=2, dims="[N, C]", dtypes=FLOAT_DTYPES)
        total = rows.new_zeros(rows.shape[0])
        for transform in reversed(self.transforms):
            rows, logabsdet = typing.cast(typing.Any, transform).inverse(rows, context)
            total = total + logabsdet
        return rows, total


@contextlib.contextmanager
def fixed_lu_weights(layers: Sequence[InvertibleLinear], weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, each ``layers[i]`` applies the given ``weights[i]`` as its ``W``.

    A caller that runs one flow over many pixel chunks (or recomputes chunks under
    activation checkpointing) forms every ``W = P L U`` once with
    :meth:`InvertibleLinear.weight` and passes it here, instead of letting each chunk
    form it again (``2 C^3`` FLOPs a layer a chunk). The weights keep their graph, so
    gradients still reach the LU parameters.

    Args:
        layers: the flow's :class:`InvertibleLinear` blocks.
        weights: one ``[C, C]`` matrix for each (usually ``layer.weight()``).

    Shapes:
        - weights[i]: ``[C, C]``, the layer's parameter dtype

    Raises:
        ValueError: a different number of layers and weights, or a weight of the wrong shape.

    Example:
        >>> import torch
        >>> from densessl.flows import InvertibleLinear, fixed_lu_weights
        >>> lin = InvertibleLinear(3)
        >>> x = torch.randn(2, 3)
        >>> with fixed_lu_weights([lin], [lin.weight()]):
        ...     y, _ = lin(x)
        >>> torch.allclose(y, lin(x)[0], atol=1e-6)
        True
    """
    layers, weights = list(layers), list(weights)
    if len(layers) != len(weights):
        raise ValueError(f"weights must hold one matrix per layer ({len(layers)}), got {len(weights)}")
    for i, (layer, w) in enumerate(zip(layers, weights)):
        if tuple(w.shape) != (layer.features, layer.features):
            raise ValueError(f"weights[{i}] must have shape {(layer.features, layer.features)}, got {tuple(w.shape)}")
    saved = [layer._fixed_weight for layer in layers]
    try:
        for layer, w in zip(layers, weights):
            layer._fixed_weight = w
        yield
    finally:
        for layer, old in zip(layers, saved):
            layer._fixed_weight = old


class ZukoTransform(nn.Module):
    """Adapt a zuko lazy transform (``zuko.flows.LazyTransform``) to the nflows interface.

    zuko builds its transforms inside the module's ``forward(context)`` and exposes
    ``call_and_ladj``; this wrapper turns an unconditional one into a block with
    ``forward(inputs, context) -> (outputs, logabsdet)`` and the matching ``inverse``, so
    it can be passed as ``FlowDensityHead(transform=...)`` (the head wraps a zuko lazy
    transform by itself) or put in a :class:`FlowSequence`. zuko is not imported here:
    any module whose call returns an object with ``call_and_ladj`` and ``inv`` works.

    Args:
        transform: the lazy transform, e.g. ``zuko.flows.MAF(features=C).transform``.

    Shapes:
        - inputs: ``[N, C]``
        - returns: ``(outputs [N, C], logabsdet [N])``

    Raises:
        TypeError: ``transform`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from torch import distributions as D
        >>> from densessl.flows import ZukoTransform
        >>> class Shift(torch.nn.Module):  # a lazy transform in zuko's sense
        ...     def forward(self, context=None):
        ...         return D.AffineTransform(torch.ones(3), torch.full((3,), 2.0), event_dim=1)
        >>> y, ladj = ZukoTransform(Shift())(torch.zeros(2, 3))
        >>> y[0].tolist(), ladj.tolist()  # log|det| = 3 log 2
        ([1.0, 1.0, 1.0], [2.079441..., 2.079441...])
    """

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        if not isinstance(transform, nn.Module):
            raise TypeError(f"transform must be an nn.Module (a zuko LazyTransform), got {type(transform).__name__}")
        self.lazy = transform

    def _built(self, context: object) -> typing.Any:
        return self.lazy() if context is None else self.lazy(context)

    @staticmethod
    def _call(t: typing.Any, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(t, "call_and_ladj"):
            return t.call_and_ladj(rows)
        y = t(rows)  # a plain torch.distributions.Transform
        return y, t.log_abs_det_jacobian(rows, y)

    def forward(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(x), log|det df/dx|)``."""
        rows = check_tensor("inputs", inputs, ndim=2, dims="[N, C]", dtypes=FLOAT_DTYPES)
        return self._call(self._built(context), rows)

    def inverse(self, inputs: torch.Tensor, context: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f^-1(y), log|det df^-1/dy|)``."""
        rows = check_tensor("inputs", inputs, ndim=2, dims="[N, C]", dtypes=FLOAT_DTYPES)
        return self._call(self._built(context).inv, rows)


def _is_zuko_lazy_transform(obj: object) -> bool:
    """Whether ``obj`` is a ``zuko.lazy.LazyTransform`` (checked without importing zuko)."""
    return any(c.__name__ == "LazyTransform" and c.__module__.startswith("zuko") for c in type(obj).__mro__)


def glow_flow(features: int, depth: int = 2, hidden: int = 256, clamp: float = 2.0) -> FlowSequence:
    """A GLOW-style per-pixel flow: ``depth`` x (ActNorm, InvertibleLinear, AffineCoupling).

    Args:
        features: number of channels ``C >= 2``.
        depth: number of (actnorm, invertible linear, coupling) steps, ``>= 1``.
        hidden: conditioner width of every coupling.
        clamp: soft-clamp bound of every coupling's log-scale.

    Shapes:
        - inputs: ``[N, C]``
        - returns: ``(outputs [N, C], logabsdet [N])``

    Raises:
        ValueError: bad ``features``/``depth``/``hidden``/``clamp``.

    Example:
        >>> from densessl.flows import glow_flow
        >>> flow = glow_flow(4, depth=2, hidden=16)
        >>> [type(t).__name__ for t in flow.transforms][:3]
        ['ActNorm', 'InvertibleLinear', 'AffineCoupling']
        >>> len(flow.transforms)
        6
    """
    features = _check_features(features, minimum=2)
    depth = int(check_number("depth", depth, low=1, integer=True))
    blocks: list[nn.Module] = []
    for _ in range(depth):
        blocks += [ActNorm(features), InvertibleLinear(features), AffineCoupling(features, hidden, clamp)]
    return FlowSequence(blocks)
