"""The recipe's one sliding window: tiles of any image, blended with a smooth window, band by band.

Every map the recipe produces — the scores of :mod:`~examples.dpfr_gland.evaluate`, ``compare``
and the studies, the maps of ``predict`` on images of any size, the teacher's scores and
densities that ``suggest`` ranks by — comes from :func:`blend_tiles`, cut as one
:class:`TileSpec` says:

1. tiles of ``tile x tile`` pixels (on a side shorter than a tile, that side rounded up to a
   multiple of the network's stride, :func:`model_stride`, and padded by edge replication)
   start every ``tile - overlap`` pixels, the last one flush with the image's edge;
2. each tile's maps (its softmax probabilities by default; any ``head`` of the network's
   output) are weighted by :func:`window_weights` (Gaussian by
   default: high in the tile's middle, low at its edges, where a network sees the least
   context) and summed; the weighted mean is the prediction, so no seam shows where tiles meet;
3. rows are handed out band by band as soon as no later tile touches them, so a caller can hold
   one band of ``K x tile x W`` floats at a time (whole slides) or concatenate them (one image).

Peers: MONAI's ``sliding_window_inference`` (Gaussian importance map, ``sigma_scale`` 0.125),
TIAToolbox's semantic segmentor (tile-by-tile reading with margins).
"""

from __future__ import annotations

__all__ = [
    "STRIDE",
    "WINDOWS",
    "TileSpec",
    "blend_tiles",
    "logits_of",
    "model_device",
    "model_stride",
    "probabilities",
    "tile_starts",
    "window_weights",
]

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from densessl.checks import check_finite, check_int_in_range
from densessl.utils import eval_mode

#: The stride of a network that does not state its own ``size_multiple`` (CE-Net's: five halvings).
STRIDE = 32
#: The blending windows :func:`window_weights` knows.
WINDOWS = ("gaussian", "cosine", "uniform")


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with neither).

    Example:
        >>> model_device(torch.nn.Conv2d(3, 3, 1))
        device(type='cpu')
    """
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def model_stride(model: nn.Module) -> int:
    """The side a network's input must be a multiple of: its ``size_multiple``, else :data:`STRIDE`.

    A wrapper (``DistributedDataParallel``, an exported module) is looked through to its
    ``.module``. Tiles are multiples of it, and a side shorter than a tile is padded up to one.

    Example:
        >>> model_stride(torch.nn.Conv2d(3, 3, 1))
        32
        >>> class Net(torch.nn.Conv2d):
        ...     size_multiple = 16
        >>> model_stride(Net(3, 3, 1))
        16
    """
    stride = getattr(model, "size_multiple", None)
    if stride is None and isinstance(getattr(model, "module", None), nn.Module):
        return model_stride(model.module)
    stride = STRIDE if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"model.size_multiple must be a positive int, got {stride!r}")
    return stride


def logits_of(output: object) -> torch.Tensor:
    """The logits of a model's output: a tensor, an object with ``.logits``, or a tuple's first item.

    Raises:
        TypeError: none of these.

    Example:
        >>> logits_of((torch.zeros(1, 3, 2, 2), "features")).shape
        torch.Size([1, 3, 2, 2])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        "model output must be a logits tensor [B, K, H, W], an object with a .logits tensor, or a tuple "
        f"whose first item is the logits, got {type(output).__name__}"
    )


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``0..size`` with windows of ``tile``, the last one flush with the end.

    Example:
        >>> tile_starts(100, 32, 24), tile_starts(20, 32, 24)
        ([0, 24, 48, 68], [0])
    """
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def window_weights(height: int, width: int, kind: str = "gaussian") -> torch.Tensor:
    """Blending weights of one tile: high in the middle, low (never zero) at the edges.

    ``gaussian``: ``exp(-d^2 / 2 sigma^2)`` per axis with ``sigma = side / 8`` (MONAI's default
    scale); ``cosine``: ``sin^2(pi (i + 1/2) / side)`` per axis (a Hann window); ``uniform``: ones
    (a plain average, which shows seams where tiles disagree). Weights are clamped to ``>= 1e-3``
    so that a pixel covered by one tile edge only still gets its tile's prediction.

    Args:
        height: tile height.
        width: tile width.
        kind: one of ``"gaussian"``, ``"cosine"``, ``"uniform"``.

    Shapes:
        - returns: ``[height, width]`` float32, in ``[1e-3, 1]``

    Raises:
        ValueError: an unknown ``kind``.

    Example:
        >>> w = window_weights(8, 8)
        >>> float(w[3:5, 3:5].min()) > float(w[0, 0]) >= 1e-3
        True
    """
    if kind not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {kind!r}")

    def axis(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64) + 0.5
        if kind == "gaussian":
            return torch.exp(-0.5 * ((i - n / 2) / (n / 8)) ** 2)
        if kind == "cosine":
            return torch.sin(math.pi * i / n) ** 2
        return torch.ones(n, dtype=torch.float64)

    w = axis(height)[:, None] * axis(width)[None, :]
    return (w / w.max()).clamp(min=1e-3).float()


@dataclass(frozen=True)
class TileSpec:
    """How the sliding window cuts, batches and blends: one value every command passes on.

    Args:
        tile: tile side in pixels at the network's scale (a multiple of the network's stride,
            checked against the model by :func:`blend_tiles`).
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile``; ``None``: a
            quarter of the tile.
        batch_size: tiles per forward pass, ``>= 1``.
        window: blending window, ``"gaussian"``, ``"cosine"`` or ``"uniform"``
            (:func:`window_weights`).
        amp: autocast on CUDA (bfloat16 where supported, else float16); ignored on the CPU.

    Raises:
        ValueError: an option out of range (the message names it).

    Example:
        >>> TileSpec(64)
        TileSpec(tile=64, overlap=16, batch_size=4, window='gaussian', amp=True)
        >>> TileSpec(64, overlap=64)
        Traceback (most recent call last):
        ...
        ValueError: overlap must be <= 63, got 64
    """

    tile: int = 256
    overlap: int | None = None
    batch_size: int = 4
    window: str = "gaussian"
    amp: bool = True

    def __post_init__(self) -> None:
        tile = check_int_in_range("tile", self.tile, 1)
        overlap = tile // 4 if self.overlap is None else check_int_in_range("overlap", self.overlap, 0, tile - 1)
        object.__setattr__(self, "overlap", overlap)
        check_int_in_range("batch_size", self.batch_size, 1)
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if not isinstance(self.amp, bool):
            raise TypeError(f"amp must be a bool, got {type(self.amp).__name__}")

    @property
    def step(self) -> int:
        """Pixels between the starts of neighbouring tiles (``tile - overlap``)."""
        assert self.overlap is not None
        return self.tile - self.overlap

    def check(self, stride: int) -> None:
        """Raise ``ValueError`` unless ``tile`` is a multiple of the network's ``stride``."""
        if self.tile < stride or self.tile % stride:
            raise ValueError(f"tile must be a multiple of {stride} (the network's stride), got {self.tile}")


def probabilities(output: object) -> torch.Tensor:
    """The default map :func:`blend_tiles` blends: the softmax over classes of a model's logits.

    Raises:
        ValueError: logits holding NaN or Inf.

    Example:
        >>> probabilities(torch.zeros(1, 2, 3, 3))[0, :, 0, 0]
        tensor([0.5000, 0.5000])
    """
    logits = logits_of(output)
    check_finite("model output (logits)", logits)
    return logits.float().softmax(dim=1)


def blend_tiles(
    model: nn.Module,
    height: int,
    width: int,
    read: Callable[[int, int, int, int], torch.Tensor],
    spec: TileSpec | None = None,
    head: Callable[[object], torch.Tensor] = probabilities,
    progress: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The sliding window: blended per-pixel maps of an image, one finished band of rows at a time.

    ``read(y, x, h, w)`` gives the normalised ``[3, h, w]`` pixels of a region (the image's own
    values; padding is done here). The network runs in eval mode under ``no_grad`` on the device
    of its parameters, ``spec.batch_size`` tiles at a time, under ``torch.autocast`` (bfloat16
    where supported) on CUDA when ``spec.amp`` is set. ``head`` turns the network's output into
    the maps to blend — by default :func:`probabilities` (the class softmax); ``suggest`` blends
    probabilities, log-densities and features in one pass. Maps are blended in float32. Tiles
    are multiples of the network's stride (:func:`model_stride`).

    Args:
        model: ``[b, 3, h, w] -> [b, K, h, w]`` logits (or an output with ``.logits``, or a tuple).
        height: the image's height.
        width: the image's width.
        read: the region reader.
        spec: tile, overlap, batch size, window and AMP (default ``TileSpec()``).
        head: the model's output -> ``[b, C, h, w]`` maps at the tiles' size.
        progress: a tqdm bar over tiles.

    Shapes:
        - read: returns ``[3, h, w]`` float
        - yields: ``(top, maps)`` with ``maps`` ``[C, n, width]`` float32 on the model's device,
          the rows ``top .. top + n - 1``; bands come in order and cover ``0..height`` once

    Raises:
        ValueError: options out of range; a tile that is not a multiple of the network's stride;
            a region of the wrong shape; maps that do not match their tiles, or hold NaN/Inf.

    Example:
        >>> import torch
        >>> image = torch.zeros(3, 70, 50)
        >>> bands = list(blend_tiles(torch.nn.Conv2d(3, 2, 1), 70, 50,
        ...                          lambda y, x, h, w: image[:, y:y + h, x:x + w], TileSpec(32, overlap=8)))
        >>> sum(b.shape[1] for _, b in bands), bands[0][1].shape[0]
        (70, 2)
    """
    spec = TileSpec() if spec is None else spec
    if not isinstance(spec, TileSpec):
        raise TypeError(f"spec must be a TileSpec, got {type(spec).__name__}")
    stride_of_model = model_stride(model)
    spec.check(stride_of_model)
    height = check_int_in_range("height", height, 1)
    width = check_int_in_range("width", width, 1)
    tile_h = min(spec.tile, math.ceil(height / stride_of_model) * stride_of_model)
    tile_w = min(spec.tile, math.ceil(width / stride_of_model) * stride_of_model)
    rows, cols = tile_starts(height, tile_h, spec.step), tile_starts(width, tile_w, spec.step)
    device = model_device(model)
    weights = window_weights(tile_h, tile_w, spec.window).to(device)
    use_amp = spec.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    band: torch.Tensor | None = None  # [C, tile_h, width]: weighted sums of rows top .. top + tile_h - 1
    band_weight = torch.zeros(tile_h, width, device=device)
    top = 0  # the first row not handed out yet
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows) * len(cols), desc="tiles", unit="tile")

    def region(y: int, x: int) -> torch.Tensor:
        h, w = min(tile_h, height - y), min(tile_w, width - x)
        pixels = read(y, x, h, w)
        if not isinstance(pixels, torch.Tensor) or tuple(pixels.shape) != (3, h, w):
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"read({y}, {x}, {h}, {w}) must give a [3, {h}, {w}] tensor, got {got}")
        pixels = pixels.to(device, torch.float32)
        if (h, w) != (tile_h, tile_w):  # only where the image is smaller than a tile
            pixels = torch.nn.functional.pad(pixels[None], (0, tile_w - w, 0, tile_h - h), mode="replicate")[0]
        return pixels

    def finished(until: int) -> Iterator[tuple[int, torch.Tensor]]:
        nonlocal band, top
        n = until - top
        if n <= 0 or band is None:
            return
        yield top, band[:, :n] / band_weight[:n]
        band = torch.cat([band[:, n:], torch.zeros_like(band[:, :n])], dim=1)
        band_weight.copy_(torch.cat([band_weight[n:], torch.zeros_like(band_weight[:n])]))
        top = until

    with eval_mode(model), torch.no_grad():
        for y in rows:
            yield from finished(y)  # rows above this row of tiles are final
            windows = [(y, x) for x in cols]
            for first in range(0, len(windows), spec.batch_size):
                chunk = windows[first : first + spec.batch_size]
                tiles = torch.stack([region(ty, tx) for ty, tx in chunk])
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                    maps = head(model(tiles))
                if not isinstance(maps, torch.Tensor):
                    raise TypeError(f"head must return a tensor, got {type(maps).__name__}")
                if maps.dim() != 4 or maps.shape[0] != len(chunk) or maps.shape[-2:] != tiles.shape[-2:]:
                    raise ValueError(
                        f"model output (the maps of head={getattr(head, '__name__', head)}) must be "
                        f"[{len(chunk)}, C, {tile_h}, {tile_w}] for tiles of shape {tuple(tiles.shape)}, "
                        f"got shape {tuple(maps.shape)}"
                    )
                check_finite("model output", maps)
                maps = maps.float() * weights
                if band is None:
                    band = torch.zeros(maps.shape[1], tile_h, width, device=device)
                h = min(tile_h, height - y)
                for k, (_, x) in enumerate(chunk):
                    w = min(tile_w, width - x)
                    band[:, :h, x : x + w] += maps[k, :, :h, :w]
                    band_weight[:h, x : x + w] += weights[:h, :w]
                if bar is not None:
                    bar.update(len(chunk))
        yield from finished(height)
    if bar is not None:
        bar.close()
