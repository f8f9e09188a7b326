"""Views for the DPFR recipe: weak (geometric) views, strong (photometric) views, CutMix.

The Mean Teacher of the recipe sees a *weak* view of an unlabelled image and the student a
*strong* view of the same pixels. The two must stay pixel-aligned, otherwise the teacher's
pseudo label at pixel ``(i, j)`` supervises the student at another place. So the work is
split:

- :func:`weak_view` (NumPy, per sample, in the data loader): all the geometry — random crop
  (with padding when the image is smaller than the crop), flips and 90° rotations, applied
  identically to the image and its instance map (labels are moved, never interpolated);
- :func:`strong_from_weak` (torch, on a batch, on any device): photometric changes only —
  colour jitter, H&E stain jitter in optical-density space, random grayscale, Gaussian blur,
  Gaussian noise — so pixel ``(i, j)`` of the strong view is pixel ``(i, j)`` of the weak one;
- :func:`cutmix`: a random box of *another image of the batch* pasted into each image, and
  identically into every map given (teacher probabilities, pseudo labels, masks).

:func:`to_tensor` and :func:`from_tensor` convert between ``uint8 [H, W, 3]`` pictures and
normalised ``float32 [3, H, W]`` tensors.

References:
    Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
    Features", ICCV 2019. Tellez et al., "Whole-slide mitosis detection in H&E breast histology
    using PHH3 as a reference to train distilled stain-invariant convolutional networks",
    IEEE TMI 2018 (stain jitter in HED space). Ruifrok & Johnston, "Quantification of
    histochemical staining by color deconvolution", 2001 (the H&E stain vectors).
"""

from __future__ import annotations

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cutmix",
    "from_tensor",
    "strong_from_weak",
    "to_tensor",
    "weak_view",
]

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from densessl.checks import FLOAT_DTYPES, check_finite, check_int_in_range, check_number, check_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean (of ``[0, 1]`` intensities) used by :func:`to_tensor` by default."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation used by :func:`to_tensor` by default."""

# Colour deconvolution (Ruifrok & Johnston 2001): rows are the optical densities of
# hematoxylin, eosin and DAB; optical density is linear in stain concentration.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------- helpers


def _size_pair(size: object) -> tuple[int, int]:
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        side = check_int_in_range("size", size, 1)
        return side, side
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        return check_int_in_range("size[0]", size[0], 1), check_int_in_range("size[1]", size[1], 1)
    raise TypeError(f"size must be an int or a pair (height, width) of ints, got {size!r}")


def _range(name: str, value: object, low: float, high: float | None = None) -> tuple[float, float]:
    """A ``(lo, hi)`` pair with ``low <= lo <= hi (<= high)``."""
    if not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2):
        raise TypeError(f"{name} must be a pair (low, high) of numbers, got {value!r}")
    lo = float(check_number(f"{name}[0]", value[0], low=low, high=high, finite=True))
    hi = float(check_number(f"{name}[1]", value[1], low=low, high=high, finite=True))
    if lo > hi:
        raise ValueError(f"{name} must satisfy low <= high, got {value!r}")
    return lo, hi


def _torch_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """Accept a ``torch.Generator``, a NumPy ``Generator`` (seeds a new torch one) or ``None``."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, np.random.Generator):
        seeded = torch.Generator()
        seeded.manual_seed(int(generator.integers(0, 2**63 - 1)))
        return seeded
    raise TypeError(
        f"{name} must be a torch.Generator, a numpy.random.Generator or None, got {type(generator).__name__}"
    )


def _uniform(
    shape: Sequence[int], low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Uniform draws in ``[low, high)`` made on the generator's device, moved to ``device``."""
    where = generator.device if generator is not None else device
    u = torch.rand(tuple(shape), generator=generator, device=where, dtype=torch.float32)
    return (low + (high - low) * u).to(device)


def _normal(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    where = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=where, dtype=torch.float32).to(device)


def _channel_stats(name: str, value: object) -> torch.Tensor:
    values = [float(check_number(f"{name}[{k}]", v, finite=True)) for k, v in enumerate(value)]
    if len(values) != 3:
        raise ValueError(f"{name} must hold 3 values (R, G, B), got {len(values)}")
    return torch.tensor(values, dtype=torch.float32)


def _check_std(std: torch.Tensor) -> None:
    if bool((std <= 0).any()):
        raise ValueError(f"std must be positive, got {std.tolist()}")


# ----------------------------------------------------------------------------- conversions


def to_tensor(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Turn an RGB picture (or a stack of them) into a normalised float tensor, channels first.

    ``x = (image / 255 - mean) / std`` per channel. :func:`from_tensor` inverts it exactly
    (up to the rounding to integers).

    Args:
        image: RGB picture(s), a NumPy array or a uint8 tensor.
        mean: per-channel mean of ``[0, 1]`` intensities.
        std: per-channel standard deviation, positive.

    Shapes:
        - image: ``[H, W, 3]`` or ``[B, H, W, 3]``, uint8
        - returns: ``[3, H, W]`` or ``[B, 3, H, W]``, float32 (CPU)

    Returns:
        The normalised tensor.

    Raises:
        TypeError: ``image`` is not a uint8 array/tensor.
        ValueError: ``image`` is not ``[H, W, 3]`` or ``[B, H, W, 3]``; ``std`` not positive.

    Example:
        >>> import numpy as np
        >>> x = to_tensor(np.full((2, 2, 3), 255, dtype=np.uint8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        >>> x.shape, x.dtype, float(x.max())
        (torch.Size([3, 2, 2]), torch.float32, 1.0)
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image must have dtype uint8, got {image.dtype}")
        # a read-only array (e.g. np.asarray of a PIL image) is copied: torch wants writable memory
        tensor = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
    else:
        tensor = check_tensor("image", image, dtypes=(torch.uint8,), dtype_words="uint8")
    if tensor.dim() not in (3, 4) or tensor.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] or [B, H, W, 3] (RGB), got shape {tuple(tensor.shape)}")
    mean_t, std_t = _channel_stats("mean", mean), _channel_stats("std", std)
    _check_std(std_t)
    x = tensor.detach().cpu().movedim(-1, -3).to(torch.float32) / 255.0
    return ((x - mean_t[:, None, None]) / std_t[:, None, None]).contiguous()


def from_tensor(
    tensor: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Turn a normalised tensor back into an RGB picture (the inverse of :func:`to_tensor`).

    ``image = round(clip((x * std + mean) * 255, 0, 255))``.

    Args:
        tensor: normalised image(s), channels first.
        mean: the mean used to normalise.
        std: the standard deviation used to normalise, positive.

    Shapes:
        - tensor: ``[3, H, W]`` or ``[B, 3, H, W]``, float, finite
        - returns: ``[H, W, 3]`` or ``[B, H, W, 3]``, uint8 NumPy array

    Returns:
        The picture(s).

    Raises:
        TypeError: ``tensor`` is not a float tensor.
        ValueError: ``tensor`` is not ``[3, H, W]`` or ``[B, 3, H, W]``, or holds NaN/Inf.

    Example:
        >>> import numpy as np
        >>> image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
        >>> bool((from_tensor(to_tensor(image)) == image).all())
        True
    """
    tensor = check_tensor(
        "tensor",
        tensor,
        ndim=(3, 4),
        dims="[3, H, W] or [B, 3, H, W]",
        dtypes=FLOAT_DTYPES,
        dtype_words="float16, bfloat16, float32 or float64",
    )
    if tensor.shape[-3] != 3:
        raise ValueError(f"tensor must have 3 channels (RGB) in dim -3, got shape {tuple(tensor.shape)}")
    check_finite("tensor", tensor)
    mean_t, std_t = _channel_stats("mean", mean), _channel_stats("std", std)
    _check_std(std_t)
    x = tensor.detach().cpu().to(torch.float32) * std_t[:, None, None] + mean_t[:, None, None]
    x = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.movedim(-3, -1).numpy())


# ----------------------------------------------------------------------------- weak view


def weak_view(
    image: np.ndarray,
    instances: np.ndarray,
    rng: np.random.Generator,
    size: int | tuple[int, int],
    flip: bool = True,
    rotate: bool = True,
    fill: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """A random geometric view of an image and its instance map: crop, flips, 90° rotations.

    The same crop window, flips and rotation are applied to the image and to the instances;
    labels are moved, never interpolated, so the instance map stays a valid label map (a
    gland cut by the crop keeps its label; convert to 3-class targets after the crop).

    An image smaller than ``size`` along an axis is placed at a random offset on a canvas
    of colour ``fill`` (white, like empty glass), whose instances are background. For a
    non-square ``size``, odd rotations are drawn from a crop of the transposed size, so the
    output always has shape ``size``. All randomness comes from ``rng``.

    Args:
        image: RGB image.
        instances: instance label map, 0 = background.
        rng: the random source (``numpy.random.default_rng(seed)``).
        size: output ``(height, width)``, or one int for a square.
        flip: draw horizontal and vertical flips (each with probability 1/2).
        rotate: draw a rotation by ``k * 90°``, ``k`` uniform in ``0..3``.
        fill: the padding value of the image, ``0..255``.

    Shapes:
        - image: ``[H, W, 3]``, uint8
        - instances: ``[H, W]``, any integer dtype, values ``>= 0``
        - returns: ``([h, w, 3] uint8, [h, w] same dtype as instances)`` with
          ``(h, w) = size``, C-contiguous copies

    Returns:
        ``(image, instances)`` of the view.

    Raises:
        TypeError: wrong dtypes, or ``rng`` is not a ``numpy.random.Generator``.
        ValueError: wrong ranks, the maps' sizes differ, or ``size`` / ``fill`` out of range.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> image = np.zeros((40, 50, 3), dtype=np.uint8)
        >>> instances = np.zeros((40, 50), dtype=np.int32)
        >>> instances[5:15, 5:25] = 7
        >>> view, labels = weak_view(image, instances, rng, size=32)
        >>> view.shape, labels.shape, labels.dtype, set(np.unique(labels)) <= {0, 7}
        ((32, 32, 3), (32, 32), dtype('int32'), True)
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"image must be a uint8 numpy array [H, W, 3], got {got}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] (RGB), got shape {image.shape}")
    if not isinstance(instances, np.ndarray) or instances.dtype.kind not in "iu":
        got = instances.dtype if isinstance(instances, np.ndarray) else type(instances).__name__
        raise TypeError(f"instances must be an integer numpy array [H, W], got {got}")
    if instances.shape != image.shape[:2]:
        raise ValueError(f"instances must have the image's size {image.shape[:2]} [H, W], got shape {instances.shape}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    out_h, out_w = _size_pair(size)
    fill = check_int_in_range("fill", fill, 0, 255)

    turns = int(rng.integers(4)) if rotate else 0
    if turns % 2 and out_h != out_w:
        crop_h, crop_w = out_w, out_h  # rotated by 90° it becomes (out_h, out_w)
    else:
        crop_h, crop_w = out_h, out_w
    height, width = instances.shape
    canvas_h, canvas_w = max(height, crop_h), max(width, crop_w)
    if (canvas_h, canvas_w) != (height, width):
        top, left = int(rng.integers(canvas_h - height + 1)), int(rng.integers(canvas_w - width + 1))
        padded = np.full((canvas_h, canvas_w, 3), fill, dtype=np.uint8)
        padded[top : top + height, left : left + width] = image
        padded_labels = np.zeros((canvas_h, canvas_w), dtype=instances.dtype)
        padded_labels[top : top + height, left : left + width] = instances
        image, instances = padded, padded_labels
    top, left = int(rng.integers(canvas_h - crop_h + 1)), int(rng.integers(canvas_w - crop_w + 1))
    image = image[top : top + crop_h, left : left + crop_w]
    instances = instances[top : top + crop_h, left : left + crop_w]
    if flip:
        if rng.random() < 0.5:
            image, instances = image[:, ::-1], instances[:, ::-1]
        if rng.random() < 0.5:
            image, instances = image[::-1], instances[::-1]
    if turns:
        image, instances = np.rot90(image, turns, axes=(0, 1)), np.rot90(instances, turns, axes=(0, 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(instances)


# ----------------------------------------------------------------------------- strong view


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma of ``[B, 3, H, W]`` in ``[0, 1]`` as ``[B, 1, H, W]``."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _stain_jitter(
    x: torch.Tensor, sigma: float, apply: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Scale and shift each stain's concentration: ``c' = c * a + b`` in HED space."""
    b = x.shape[0]
    scale = _uniform((b, 3), 1 - sigma, 1 + sigma, generator, x.device)
    shift = _uniform((b, 3), -sigma, sigma, generator, x.device)
    scale = torch.where(apply[:, None], scale, torch.ones_like(scale))
    shift = torch.where(apply[:, None], shift, torch.zeros_like(shift))
    # optical density of 8-bit intensities: od = -log((255 x + 1) / 256), finite at x = 0
    od = -torch.log((255.0 * x + 1.0) / 256.0)
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB.to(x))
    hed = hed * scale[:, :, None, None] + shift[:, :, None, None]
    od = torch.einsum("bdhw,dc->bchw", hed, _RGB_FROM_HED.to(x))
    return ((256.0 * torch.exp(-od) - 1.0) / 255.0).clamp(0.0, 1.0)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with one ``sigma`` per sample (``0`` = unchanged), reflect padding."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    safe = sigma.clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (offsets == 0).to(torch.float32).expand(b, -1)
    kernel = torch.where((sigma > 0)[:, None], kernel, delta)  # [B, 2r+1]
    weight = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    mode = "reflect" if radius < min(h, w) else "replicate"
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=mode), weight[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode=mode), weight[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def strong_from_weak(
    images: torch.Tensor,
    generator: torch.Generator | np.random.Generator | None = None,
    *,
    jitter_p: float = 0.8,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    stain_p: float = 0.5,
    stain: float = 0.05,
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 1.5),
    noise_std: float = 0.03,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """A strong, purely photometric view of a batch of (weak-view) images.

    Every operation changes colours or mixes a pixel with its neighbours, none moves a
    pixel, so the strong view stays aligned with the weak view the teacher sees. Per sample,
    independently, in this order (on intensities in ``[0, 1]``, after undoing the
    normalisation with ``mean`` / ``std``):

    1. with probability ``jitter_p``: brightness ``x * u``, contrast around the image's
       mean luma, saturation around each pixel's luma, factors ``u`` uniform in
       ``[1 - s, 1 + s]`` for ``s`` = ``brightness``, ``contrast``, ``saturation``;
    2. with probability ``stain_p``: H&E stain jitter, each stain concentration (colour
       deconvolution of the optical density) scaled by ``U(1 - stain, 1 + stain)`` and
       shifted by ``U(-stain, stain)``;
    3. with probability ``grayscale_p``: grayscale (luma in all three channels);
    4. with probability ``blur_p``: Gaussian blur, sigma uniform in ``blur_sigma`` pixels
       (reflect padding);
    5. Gaussian noise of a standard deviation uniform in ``[0, noise_std]``;

    then clipping to ``[0, 1]`` and normalising again. Vectorised over the batch (no loop
    over samples); the result is a function of ``images`` and the generator's state only.
    Computed in float32 and returned in the input dtype; no gradient flows (views are data).

    Args:
        images: normalised images (from :func:`to_tensor`), e.g. the weak views.
        generator: the random source: a ``torch.Generator`` (the draws are made on its device
            and moved to the images'), a ``numpy.random.Generator`` (seeds a torch one), or
            ``None`` for torch's global generator.
        jitter_p: probability of the colour jitter, in ``[0, 1]``.
        brightness: brightness factor half-range, in ``[0, 1]``.
        contrast: contrast factor half-range, in ``[0, 1]``.
        saturation: saturation factor half-range, in ``[0, 1]``.
        stain_p: probability of the stain jitter, in ``[0, 1]``.
        stain: stain scale/shift half-range, in ``[0, 1]``.
        grayscale_p: probability of grayscale, in ``[0, 1]``.
        blur_p: probability of the blur, in ``[0, 1]``.
        blur_sigma: ``(low, high)`` blur sigma in pixels, ``0 < low <= high``.
        noise_std: largest noise standard deviation (of ``[0, 1]`` intensities), ``>= 0``.
        mean: the per-channel mean the images were normalised with.
        std: the per-channel standard deviation the images were normalised with.

    Shapes:
        - images: ``[B, 3, H, W]``, float16/bfloat16/float32/float64, finite
        - returns: ``[B, 3, H, W]``, same dtype and device, normalised like ``images``

    Returns:
        The strong views.

    Raises:
        TypeError: ``images`` is not a float tensor or ``generator`` is of the wrong type.
        ValueError: ``images`` is not ``[B, 3, H, W]`` or not finite; an option out of range.

    Example:
        >>> import numpy as np, torch
        >>> weak = to_tensor(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
        >>> strong = strong_from_weak(weak, torch.Generator().manual_seed(0))
        >>> strong.shape, bool(torch.equal(strong, strong_from_weak(weak, torch.Generator().manual_seed(0))))
        (torch.Size([2, 3, 16, 16]), True)
    """
    images = check_tensor(
        "images",
        images,
        ndim=4,
        dims="[B, 3, H, W]",
        dtypes=FLOAT_DTYPES,
        dtype_words="float16, bfloat16, float32 or float64",
    )
    if images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (RGB) in dim 1 [B, 3, H, W], got shape {tuple(images.shape)}")
    check_finite("images", images)
    generator = _torch_generator(generator)
    for name, value in (
        ("jitter_p", jitter_p),
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
        ("stain_p", stain_p),
        ("stain", stain),
        ("grayscale_p", grayscale_p),
        ("blur_p", blur_p),
    ):
        check_number(name, value, low=0.0, high=1.0)
    noise_std = float(check_number("noise_std", noise_std, low=0.0, finite=True))
    sigma_low, sigma_high = _range("blur_sigma", blur_sigma, 0.0)
    if sigma_low <= 0:
        raise ValueError(f"blur_sigma must be positive, got {blur_sigma!r}")
    mean_t, std_t = _channel_stats("mean", mean), _channel_stats("std", std)
    _check_std(std_t)

    b, device = images.shape[0], images.device
    mean_t, std_t = mean_t.to(device)[:, None, None], std_t.to(device)[:, None, None]
    with torch.no_grad():
        x = (images.detach().to(torch.float32) * std_t + mean_t).clamp(0.0, 1.0)

        def coin(p: float) -> torch.Tensor:
            return _uniform((b,), 0.0, 1.0, generator, device) < p

        def factor(s: float, apply: torch.Tensor) -> torch.Tensor:
            u = _uniform((b,), 1.0 - s, 1.0 + s, generator, device)
            return torch.where(apply, u, torch.ones_like(u))[:, None, None, None]

        jitter = coin(jitter_p)
        x = (x * factor(brightness, jitter)).clamp(0.0, 1.0)
        grey_mean = _grey(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - grey_mean) * factor(contrast, jitter) + grey_mean).clamp(0.0, 1.0)
        grey = _grey(x)
        x = ((x - grey) * factor(saturation, jitter) + grey).clamp(0.0, 1.0)

        x = _stain_jitter(x, float(stain), coin(stain_p), generator)

        to_grey = coin(grayscale_p)[:, None, None, None]
        x = torch.where(to_grey, _grey(x).expand_as(x), x)

        blur = coin(blur_p)
        sigma = _uniform((b,), sigma_low, sigma_high, generator, device)
        x = _gaussian_blur(x, torch.where(blur, sigma, torch.zeros_like(sigma)), sigma_high)

        level = _uniform((b,), 0.0, noise_std, generator, device)[:, None, None, None]
        x = x + level * _normal(x.shape, generator, device)

        x = x.clamp(0.0, 1.0)
        return ((x - mean_t) / std_t).to(images.dtype)


# ----------------------------------------------------------------------------- CutMix


def _derangement(b: int, generator: torch.Generator | None) -> torch.Tensor:
    """A random permutation of ``0..b-1`` without fixed points (one cycle through a shuffle)."""
    where = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(b, generator=generator, device=where).cpu()
    source = torch.empty(b, dtype=torch.long)
    source[order] = order.roll(-1)  # order[i] takes from order[i + 1]
    return source


def cutmix(
    images: torch.Tensor,
    *maps: torch.Tensor,
    generator: torch.Generator | np.random.Generator | None = None,
    area: tuple[float, float] = (0.1, 0.5),
    p: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """CutMix between the images of a batch: paste a box of another image into each one.

    For each sample ``i`` a box covering a fraction ``r ~ U(area)`` of the image (the
    image's aspect ratio, side lengths rounded, placed uniformly inside the image) is taken
    from sample ``source[i]`` at the same place and pasted into sample ``i``; ``source`` is a
    random permutation without fixed points, so every sample is a source exactly once and
    never its own. The same boxes and sources are applied to the images and to every map
    given, so pseudo labels, probabilities and masks stay aligned with the pixels. Real
    image content is pasted (not noise). With probability ``1 - p`` a sample keeps an empty
    box. With a batch of one there is nothing to mix: the inputs come back as given and
    the box mask is all ``False``.

    Args:
        images: the batch (any number of channels, any dtype).
        *maps: per-pixel maps of the same batch: probabilities or logits ``[B, K, H, W]``,
            labels ``[B, H, W]``, masks ``[B, H, W]`` bool, ...
        generator: the random source (``torch.Generator``, ``numpy.random.Generator`` or
            ``None`` for torch's global one); draws are made on its device.
        area: ``(low, high)`` box area fraction, ``0 <= low <= high <= 1``.
        p: probability that a sample gets a box, in ``[0, 1]``.

    Shapes:
        - images: ``[B, C, H, W]``, any dtype
        - maps[k]: ``[B, H, W]`` or ``[B, ..., H, W]``, any dtype, same ``B, H, W`` and device
        - returns: ``(images, *maps, box)``: the mixed tensors in their shapes and dtypes,
          and ``box`` ``[B, H, W]`` bool, ``True`` where sample ``i`` now holds pixels of
          its source

    Returns:
        The mixed images, the mixed maps in the order given, and the box mask.

    Raises:
        TypeError: an argument is not a tensor, or ``generator`` is of the wrong type.
        ValueError: ``images`` is not 4-D, a map's batch/spatial size or device differs,
            ``area`` or ``p`` out of range.

    Example:
        >>> import torch
        >>> images = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 3, 8, 8)
        >>> labels = torch.arange(2).view(2, 1, 1).expand(2, 8, 8)
        >>> mixed, mixed_labels, box = cutmix(images, labels, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.equal(mixed[:, 0], mixed_labels.float())), bool(box.any(dim=(1, 2)).all())
        (True, True)

    References:
        Yun et al., "CutMix", ICCV 2019.
    """
    images = check_tensor("images", images, ndim=4, dims="[B, C, H, W]")
    b, _, h, w = images.shape
    for k, m in enumerate(maps):
        name = f"maps[{k}]"
        m = check_tensor(name, m)
        if m.dim() < 3:
            raise ValueError(f"{name} must be [B, H, W] or [B, ..., H, W], got shape {tuple(m.shape)}")
        if (m.shape[0], m.shape[-2], m.shape[-1]) != (b, h, w):
            raise ValueError(
                f"{name} must match images in batch and spatial size (B={b}, H={h}, W={w}), got shape {tuple(m.shape)}"
            )
        if m.device != images.device:
            raise ValueError(f"{name} must be on the same device as images ({images.device}), got {m.device}")
    generator = _torch_generator(generator)
    low, high = _range("area", area, 0.0, 1.0)
    p = float(check_number("p", p, low=0.0, high=1.0))
    if b < 2:
        return (images, *maps, torch.zeros(b, h, w, dtype=torch.bool, device=images.device))

    cpu = torch.device("cpu")
    source = _derangement(b, generator)
    ratio = _uniform((b,), low, high, generator, cpu)
    apply = _uniform((b,), 0.0, 1.0, generator, cpu) < p
    box_h = (h * ratio.sqrt()).round().long().clamp(0, h)
    box_w = (w * ratio.sqrt()).round().long().clamp(0, w)
    box_h = torch.where(apply, box_h, torch.zeros_like(box_h))
    top = (_uniform((b,), 0.0, 1.0, generator, cpu) * (h - box_h + 1)).floor().long().clamp_max(h - box_h)
    left = (_uniform((b,), 0.0, 1.0, generator, cpu) * (w - box_w + 1)).floor().long().clamp_max(w - box_w)

    device = images.device
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    top, left, box_h, box_w = (t.to(device)[:, None, None] for t in (top, left, box_h, box_w))
    box = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    source = source.to(device)

    def paste(x: torch.Tensor) -> torch.Tensor:
        mask = box.view(b, *([1] * (x.dim() - 3)), h, w)
        return torch.where(mask, x[source], x)

    return (paste(images), *(paste(m) for m in maps), box)
