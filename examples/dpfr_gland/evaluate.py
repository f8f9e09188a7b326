"""Evaluation for the DPFR recipe: sliding-window prediction, GlaS scores, pictures, a CLI.

- :func:`predict`: class probabilities of a full-size image from a network trained on crops,
  by the recipe's one sliding window (:func:`~examples.dpfr_gland.tiling.blend_tiles`: tiles a
  multiple of 32, overlapping, softmax probabilities blended with a Gaussian window);
  :func:`predict_probabilities` does it at the network's ``scale`` and maps the result back to
  the native grid;
- :func:`evaluate`: over any dataset of ``(image uint8 [H, W, 3], instances [H, W])`` pairs,
  predictions are turned into instances by :func:`~examples.dpfr_gland.targets.classes_to_instances`
  and scored with :func:`densessl.metrics.glas_metrics` (pooled, the official GlaS numbers,
  and the per-image mean) and a pixel Dice;
- :func:`save_predictions`: side-by-side pictures (image with ground-truth outlines | image
  with predicted outlines), written atomically.

Command line (the checkpoint is the training script's: a dict with the network's state dict
under ``"teacher"``, ``"model"`` or ``"student"``, the teacher preferred, and a ``"config"`` dict
holding at least ``backbone``)::

    python -m examples.dpfr_gland.evaluate --checkpoint CKPT --data DIR --layout glas --split testA --out DIR
"""

from __future__ import annotations

__all__ = [
    "evaluate",
    "load_checkpoint_model",
    "main",
    "predict",
    "predict_instances",
    "predict_probabilities",
    "native_postprocess",
    "evaluate_semantic",
    "prediction_picture",
    "save_predictions",
    "score_table",
    "semantic_table",
]

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from densessl.checks import FLOAT_DTYPES, check_finite, check_int_in_range, check_tensor
from densessl.metrics import glas_metrics, object_dice, object_f1, object_hausdorff

from .augment import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from .checkpoint import atomic_write, atomic_write_text, load_checkpoint_model
from .synthetic import draw_outlines
from .targets import classes_to_instances
from .tiling import TileSpec, blend_tiles, model_stride

# ----------------------------------------------------------------------------- prediction


def predict(
    model: nn.Module,
    image: torch.Tensor,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    amp: bool = True,
    window: str = "gaussian",
) -> torch.Tensor:
    """Class probabilities of a full image by the recipe's one sliding window
    (:func:`~examples.dpfr_gland.tiling.blend_tiles`).

    Tiles of ``tile x tile`` pixels (a side shorter than a tile: rounded up to a multiple of 32,
    padded by edge replication) start every ``tile - overlap`` pixels, the last one flush with the
    edge; their softmax probabilities are blended with a smooth ``window`` (Gaussian: no seam
    where tiles meet). The model runs in eval mode under ``torch.no_grad()`` (each submodule's
    mode is restored afterwards), on the device of its parameters, under ``torch.autocast``
    (bfloat16 where supported, else float16) on CUDA when ``amp`` is set; probabilities are
    blended in float32. The model may return the logits, an object with a ``.logits`` attribute
    (e.g. ``CENetOutput``) or a tuple whose first item is the logits.

    Args:
        model: the segmentation network, ``[b, 3, h, w] -> [b, K, h, w]`` logits.
        image: one normalised image (:func:`~examples.dpfr_gland.augment.to_tensor`) or a batch.
        tile: tile side in pixels, a positive multiple of 32.
        overlap: pixels a tile shares with the next one, ``0 <= overlap < tile``
            (``None``: ``tile // 4``).
        batch_size: tiles per forward pass, ``>= 1``.
        amp: use autocast on CUDA (ignored on the CPU).
        window: ``"gaussian"`` (default), ``"cosine"`` or ``"uniform"``
            (:func:`~examples.dpfr_gland.tiling.window_weights`).

    Shapes:
        - image: ``[3, H, W]`` or ``[B, 3, H, W]``, float, finite, any ``H, W >= 1``
        - returns: ``[K, H, W]`` or ``[B, K, H, W]``, float32, on ``image``'s device, in
          ``[0, 1]``, summing to 1 over ``K``

    Returns:
        The class probabilities.

    Raises:
        TypeError: ``model`` is not a module, ``image`` is not a float tensor, or the model's
            output has no logits.
        ValueError: ``image`` has the wrong rank or NaN/Inf, an option out of range, or the
            model's logits do not match the tile's batch and spatial size.

    Example:
        >>> import torch
        >>> model = torch.nn.Conv2d(3, 3, kernel_size=1)
        >>> probs = predict(model, torch.zeros(3, 50, 70), tile=32, overlap=16)
        >>> probs.shape, bool(torch.allclose(probs.sum(0), torch.ones(50, 70)))
        (torch.Size([3, 50, 70]), True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    image = check_tensor(
        "image",
        image,
        ndim=(3, 4),
        dims="[3, H, W] or [B, 3, H, W]",
        dtypes=FLOAT_DTYPES,
        dtype_words="float16, bfloat16, float32 or float64",
    )
    check_finite("image", image)
    spec = TileSpec(tile, overlap, batch_size, window, amp)
    single = image.dim() == 3
    images = image[None] if single else image
    h, w = images.shape[-2:]
    results = []
    for x in images:
        bands = [
            probs
            for _, probs in blend_tiles(
                model,
                h,
                w,
                lambda y0, x0, th, tw, x=x: x[:, y0 : y0 + th, x0 : x0 + tw],
                spec,
            )
        ]
        results.append(torch.cat(bands, dim=1))
    out = torch.stack(results).to(image.device)
    return out[0] if single else out


def predict_probabilities(
    model: nn.Module,
    image: np.ndarray,
    scale: float = 1.0,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    amp: bool = True,
    window: str = "gaussian",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Class probabilities of an RGB picture on its native grid, the network working at ``scale``.

    The picture is resampled to ``scale`` (:func:`~examples.dpfr_gland.scale.resize_image`: area
    averaging when shrinking), normalised, predicted by :func:`predict`, and the probabilities
    are resampled back to the native size (bilinear, so they still sum to 1). At ``scale=1``
    this is :func:`predict` of :func:`~examples.dpfr_gland.augment.to_tensor`.

    Args:
        model: the network (see :func:`predict`).
        image: the RGB picture at its native resolution.
        scale: network pixels per native pixel (the training config's ``scale``).
        tile: tile side at the network's scale (see :func:`predict`).
        overlap: see :func:`predict`.
        batch_size: see :func:`predict`.
        amp: see :func:`predict`.
        window: see :func:`predict`.
        mean: normalisation mean.
        std: normalisation standard deviation.

    Shapes:
        - image: ``[H, W, 3]`` uint8
        - returns: ``[K, H, W]`` float32 on the CPU, summing to 1 over ``K``

    Raises:
        ValueError: a scale that leaves the picture smaller than the network's stride (32 px);
            as :func:`predict` otherwise.

    Example:
        >>> import numpy as np, torch
        >>> probs = predict_probabilities(torch.nn.Conv2d(3, 2, 1), np.zeros((90, 70, 3), np.uint8), scale=0.5, tile=32)
        >>> probs.shape
        torch.Size([2, 90, 70])
    """
    from .scale import resize_image, scaled_size

    native = image.shape[:2]
    size = scaled_size(*native, scale, minimum=min(model_stride(model), *native), what="image")
    probs = predict(
        model,
        to_tensor(resize_image(image, size), mean, std),
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        amp=amp,
        window=window,
    ).cpu()
    if tuple(probs.shape[-2:]) != tuple(native):
        probs = F.interpolate(probs[None], size=native, mode="bilinear", align_corners=False)[0]
    return probs


def native_postprocess(min_size: int, dilation: int, scale: float) -> tuple[int, int]:
    """``min_size`` (pixels of area) and ``dilation`` (pixels of width), given at the network's
    scale, in native pixels: instances are made on the native grid.

    Example:
        >>> native_postprocess(16, 2, 0.5)
        (64, 4)
    """
    return int(round(min_size / scale**2)), int(round(dilation / scale))


# ----------------------------------------------------------------------------- datasets


def _samples(dataset: object, limit: int | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(index, image, instances)`` of a map-style dataset or any iterable of pairs."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        count = len(dataset) if limit is None else min(limit, len(dataset))
        source: Any = (dataset[i] for i in range(count))
    else:
        source = iter(dataset)  # type: ignore[call-overload]
    for index, sample in enumerate(source):
        if limit is not None and index >= limit:
            return
        if not (isinstance(sample, (tuple, list)) and len(sample) >= 2):
            raise TypeError(f"dataset[{index}] must be a pair (image, instances), got {type(sample).__name__}")
        image, instances = np.asarray(sample[0]), np.asarray(sample[1])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"dataset[{index}] image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if instances.shape != image.shape[:2] or instances.dtype.kind not in "iu":
            raise ValueError(
                f"dataset[{index}] instances must be an integer [H, W] map of the image's size "
                f"{image.shape[:2]}, got {instances.dtype} {instances.shape}"
            )
        yield index, image, instances


def _length(dataset: object, limit: int | None) -> int | None:
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)


def _names(dataset: object) -> list[str] | None:
    names = getattr(dataset, "names", None)
    return [str(n) for n in names] if isinstance(names, Sequence) and not isinstance(names, str) else None


def predict_instances(
    model: nn.Module,
    image: np.ndarray,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    min_size: int = 16,
    dilation: int = 2,
    amp: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: float = 1.0,
) -> np.ndarray:
    """Gland instances of one RGB picture on its native grid: :func:`predict_probabilities`, then
    ``classes_to_instances`` (with ``min_size`` and ``dilation`` brought from the network's scale
    to native pixels by :func:`native_postprocess`).

    Args:
        model: a 3-class (background, interior, contour) segmentation network.
        image: the RGB picture.
        tile: see :func:`predict`.
        overlap: see :func:`predict`.
        batch_size: see :func:`predict`.
        min_size: smallest interior component kept, in pixels.
        dilation: growth of the interiors back to glands, in pixels (the targets' contour width).
        amp: see :func:`predict`.
        mean: normalisation mean (:func:`~examples.dpfr_gland.augment.to_tensor`).
        std: normalisation standard deviation.
        scale: network pixels per native pixel (the training config's ``scale``); ``min_size``
            and ``dilation`` are in network pixels.

    Shapes:
        - image: ``[H, W, 3]``, uint8
        - returns: ``[H, W]``, int32, 0 = background, ``1..n`` the glands

    Returns:
        The predicted instance map.

    Raises:
        TypeError: see :func:`predict` and :func:`~examples.dpfr_gland.augment.to_tensor`.
        ValueError: the model does not give 3 classes, or as in :func:`predict`.

    Example:
        >>> import numpy as np, torch
        >>> model = torch.nn.Conv2d(3, 3, kernel_size=1)
        >>> predict_instances(model, np.zeros((40, 40, 3), np.uint8), tile=32).shape
        (40, 40)
    """
    probs = predict_probabilities(
        model, image, scale=scale, tile=tile, overlap=overlap, batch_size=batch_size, amp=amp, mean=mean, std=std
    )
    if probs.shape[0] != 3:
        raise ValueError(
            f"model output (logits) must have 3 classes (background, interior, contour), got {probs.shape[0]}"
        )
    min_size, dilation = native_postprocess(min_size, dilation, scale)
    return classes_to_instances(probs, min_size=min_size, dilation=dilation).numpy()


def evaluate_semantic(
    model: nn.Module,
    dataset: object,
    num_classes: int = 2,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    amp: bool = True,
    limit: int | None = None,
    progress: bool = False,
    scale: float = 1.0,
) -> dict[str, float]:
    """Score a semantic segmenter (the PGland task) with pixel F1, Dice and mIoU.

    Each image is predicted by :func:`predict` and reduced by argmax; its target is
    :func:`~examples.dpfr_gland.targets.semantic_targets` of the dataset's mask. Keys:

    - ``pixel_f1``: foreground (any class but 0) F1 with the pixels of all images pooled;
    - ``pixel_dice``: the foreground Dice of each image, averaged over images;
    - ``miou``: the mean over classes of the IoU, pixels of all images pooled (classes absent
      from prediction and truth skipped, :func:`densessl.metrics.mean_iou`);
    - ``num_images``.

    Args:
        model: a network giving ``num_classes`` scores per pixel.
        dataset: ``(image, mask)`` items as in :func:`evaluate`.
        num_classes: ``K``.
        tile: see :func:`predict`.
        overlap: see :func:`predict`.
        batch_size: see :func:`predict`.
        amp: see :func:`predict`.
        limit: score only the first ``limit`` images.
        progress: show a tqdm bar.
        scale: network pixels per native pixel (:func:`predict_probabilities`); scores are on
            the native grid.

    Returns:
        The scores as Python floats (``num_images`` an int).

    Raises:
        ValueError: an empty dataset; a model that does not give ``num_classes`` classes; a mask
            value outside the classes.

    Example:
        >>> import numpy as np, torch
        >>> mask = np.zeros((32, 32), np.int32)
        >>> scores = evaluate_semantic(torch.nn.Conv2d(3, 2, 1), [(np.zeros((32, 32, 3), np.uint8), mask)], tile=32)
        >>> sorted(scores)
        ['miou', 'num_images', 'pixel_dice', 'pixel_f1']
    """
    from densessl.metrics import pixel_dice

    from .targets import semantic_targets

    limit = None if limit is None else check_int_in_range("limit", limit, 1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    dice = []
    tp = fp = fn = 0
    for index, image, mask in tqdm(
        _samples(dataset, limit), total=_length(dataset, limit), disable=not progress, desc="evaluate"
    ):
        probs = predict_probabilities(
            model, image, scale=scale, tile=tile, overlap=overlap, batch_size=batch_size, amp=amp
        )
        if probs.shape[0] != num_classes:
            raise ValueError(f"model output (logits) must have {num_classes} classes, got {probs.shape[0]}")
        pred = probs.argmax(0).cpu().numpy()
        gt = semantic_targets(mask, num_classes, name=f"mask of image {index}")
        confusion += np.bincount(gt.ravel() * num_classes + pred.ravel(), minlength=num_classes * num_classes).reshape(
            num_classes, num_classes
        )
        p, g = pred > 0, gt > 0
        tp += int(np.count_nonzero(p & g))
        fp += int(np.count_nonzero(p & ~g))
        fn += int(np.count_nonzero(~p & g))
        dice.append(pixel_dice(pred, gt))
    if not dice:
        raise ValueError("dataset holds no images: nothing to evaluate")
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    miou = float((np.diag(confusion)[present] / union[present]).mean()) if present.any() else 1.0
    f1 = 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)
    return {"pixel_f1": f1, "pixel_dice": float(np.mean(dice)), "miou": miou, "num_images": len(dice)}


def semantic_table(rows: dict[str, dict[str, Any]], first: str = "run") -> str:
    """Scores of :func:`evaluate_semantic` as a Markdown table, one row per entry.

    Example:
        >>> print(semantic_table({"dpfr student": {"pixel_f1": 0.9, "pixel_dice": 0.88, "miou": 0.8, "num_images": 4}}))
        | run | pixel F1 | Dice | mIoU | images |
        |---|---|---|---|---|
        | dpfr student | 0.900 | 0.880 | 0.800 | 4 |
    """
    lines = [f"| {first} | pixel F1 | Dice | mIoU | images |", "|---|---|---|---|---|"]
    for name, s in rows.items():
        lines.append(f"| {name} | {s['pixel_f1']:.3f} | {s['pixel_dice']:.3f} | {s['miou']:.3f} | {s['num_images']} |")
    return "\n".join(lines)


def prediction_picture(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, name: str
) -> tuple[bytes, dict[str, float]]:
    """A PNG to judge one prediction by: image | ground truth | prediction, outlines per instance.

    Three panels of at least 3.5 inches (110 dpi: a 128-pixel image is drawn about 3x), each
    instance's outline in its own colour (:func:`~examples.dpfr_gland.synthetic.draw_outlines`);
    the title names the image and its object F1 / object Dice / object Hausdorff.

    Args:
        image: the RGB image.
        gt: ground-truth instances.
        pred: predicted instances.
        name: the image's name, for the title.

    Shapes:
        - image: ``[H, W, 3]`` uint8
        - gt, pred: ``[H, W]`` integer, 0 = background

    Returns:
        ``(png_bytes, scores)`` with ``scores = {"f1", "dice", "hausdorff"}`` of this image.

    Example:
        >>> import numpy as np
        >>> gt = np.zeros((32, 32), np.int32); gt[8:20, 8:20] = 1
        >>> png, scores = prediction_picture(np.zeros((32, 32, 3), np.uint8), gt, gt, "a")
        >>> png[:4], scores["f1"], scores["dice"]
        (b'\\x89PNG', 1.0, 1.0)
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = {
        "f1": float(object_f1(pred, gt)),
        "dice": float(object_dice(pred, gt)),
        "hausdorff": float(object_hausdorff(pred, gt)),
    }
    h, w = gt.shape
    side = max(3.5, min(6.0, w / 110))
    fig, axes = plt.subplots(1, 3, figsize=(3 * side, side * h / w + 0.5), layout="constrained")

    def count(instances: np.ndarray) -> int:
        return len(np.unique(instances[instances > 0]))

    panels = (
        (image, "image"),
        (draw_outlines(image, gt.astype(np.int64)), f"ground truth ({count(gt)} glands)"),
        (draw_outlines(image, pred.astype(np.int64)), f"prediction ({count(pred)} glands)"),
    )
    for ax, (picture, title) in zip(axes, panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.suptitle(
        f"{name}: object F1 {scores['f1']:.3f}, object Dice {scores['dice']:.3f}, "
        f"object Hausdorff {scores['hausdorff']:.1f} px",
        fontsize=11,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue(), scores


def _write_prediction(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, name: str) -> None:
    png, _ = prediction_picture(image, gt, pred, name)
    atomic_write(path, lambda handle: handle.write(png))


def _predicted(
    model: nn.Module,
    dataset: object,
    limit: int | None,
    progress: bool,
    desc: str,
    mean: Sequence[float],
    std: Sequence[float],
    scale: float,
    min_size: int,
    dilation: int,
    **window: Any,
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(name, image, instances, predicted instances)`` of each item of ``dataset`` in order, by
    :func:`predict_instances`: the one loop :func:`evaluate` and :func:`save_predictions` share."""
    min_size, dilation, limit = _check_options(min_size, dilation, limit)
    names = _names(dataset)
    samples = _samples(dataset, limit)
    for index, image, gt in tqdm(samples, total=_length(dataset, limit), disable=not progress, desc=desc):
        pred = predict_instances(
            model, image, min_size=min_size, dilation=dilation, mean=mean, std=std, scale=scale, **window
        )
        yield names[index] if names is not None and index < len(names) else f"{index:04d}", image, gt, pred


def _check_options(min_size: int, dilation: int, limit: int | None) -> tuple[int, int, int | None]:
    min_size = check_int_in_range("min_size", min_size, 0)
    dilation = check_int_in_range("dilation", dilation, 0)
    limit = None if limit is None else check_int_in_range("limit", limit, 1)
    return min_size, dilation, limit


def evaluate(
    model: nn.Module,
    dataset: object,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    min_size: int = 16,
    dilation: int = 2,
    amp: bool = True,
    limit: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: float = 1.0,
) -> dict[str, float]:
    """Score a 3-class gland segmenter on a dataset with the GlaS object metrics and pixel Dice.

    Each image is predicted by :func:`predict` (sliding window), turned into instances by
    :func:`~examples.dpfr_gland.targets.classes_to_instances` (``min_size``, ``dilation``) and
    compared with its ground-truth instances. Keys of the result:

    - ``pooled_f1``, ``pooled_dice``, ``pooled_hausdorff``: the official GlaS aggregation
      (objects of all images pooled; :func:`densessl.metrics.glas_metrics` ``"pooled"``);
    - ``per_image_f1``, ``per_image_dice``, ``per_image_hausdorff``: the mean over images;
    - ``pixel_dice``: foreground (any gland) Dice of the predicted instance maps, with the
      pixel counts pooled over all images;
    - ``num_images``.

    Hausdorff distances are in pixels of the images as given: with ``scale``, the network works
    at that scale and its predictions are mapped back, so scores are always on the native grid,
    against the native label maps (the GlaS protocol).

    Args:
        model: the network (see :func:`predict`); it must give 3 classes.
        dataset: a map-style dataset (``len``, ``[i]``) or an iterable of
            ``(image, instances)`` pairs, e.g. :class:`~examples.dpfr_gland.data.GlaSDataset`.
        tile: see :func:`predict`.
        overlap: see :func:`predict`.
        batch_size: see :func:`predict`.
        min_size: smallest interior component kept, in pixels, ``>= 0``.
        dilation: growth of the interiors back to glands (the targets' contour width), ``>= 0``.
        amp: see :func:`predict`.
        limit: score only the first ``limit`` images (``None``: all).
        out: when given, also write the pictures of :func:`save_predictions` into this folder.
        progress: show a tqdm progress bar.
        mean: normalisation mean (:func:`~examples.dpfr_gland.augment.to_tensor`).
        std: normalisation standard deviation.
        scale: network pixels per native pixel (:func:`predict_instances`).

    Shapes:
        - dataset items: ``(image uint8 [H, W, 3], instances [H, W] any integer dtype)``

    Returns:
        The scores as a dict of Python floats (``num_images`` an int).

    Raises:
        TypeError: see :func:`predict`; a dataset item that is not a pair.
        ValueError: an empty dataset, a malformed item, options out of range, a model that
            does not give 3 classes.

    Example:
        >>> import numpy as np, torch
        >>> gt = np.zeros((32, 32), np.int32)
        >>> model = torch.nn.Conv2d(3, 3, kernel_size=1)
        >>> scores = evaluate(model, [(np.zeros((32, 32, 3), np.uint8), gt)], tile=32)
        >>> sorted(scores)
        ['num_images', 'per_image_dice', 'per_image_f1', 'per_image_hausdorff', 'pixel_dice',
         'pooled_dice', 'pooled_f1', 'pooled_hausdorff']

    References:
        Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS
        challenge contest", Medical Image Analysis 35, 2017.
    """
    options = dict(tile=tile, overlap=overlap, batch_size=batch_size, min_size=min_size, dilation=dilation, amp=amp)
    folder = None if out is None else Path(out)
    preds, gts = [], []
    tp = fp = fn = 0
    for name, image, gt, pred in _predicted(model, dataset, limit, progress, "evaluate", mean, std, scale, **options):
        preds.append(pred)
        gts.append(gt)
        p, g = pred > 0, gt > 0
        tp += int(np.count_nonzero(p & g))
        fp += int(np.count_nonzero(p & ~g))
        fn += int(np.count_nonzero(~p & g))
        if folder is not None:
            _write_prediction(folder / f"{name}.png", image, gt, pred, name)
    if not preds:
        raise ValueError("dataset holds no images: nothing to evaluate")
    pooled = glas_metrics(preds, gts, aggregate="pooled")
    per_image = glas_metrics(preds, gts, aggregate="per_image")
    scores: dict[str, float] = {f"pooled_{k}": v for k, v in pooled.items()}
    scores.update({f"per_image_{k}": v for k, v in per_image.items()})
    scores["pixel_dice"] = 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)
    scores["num_images"] = len(preds)
    return scores


def save_predictions(
    model: nn.Module,
    dataset: object,
    out: str | Path,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    min_size: int = 16,
    dilation: int = 2,
    amp: bool = True,
    limit: int | None = None,
    progress: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: float = 1.0,
) -> list[Path]:
    """Write one PNG per image: image | ground-truth outlines | predicted outlines, with its scores.

    See :func:`prediction_picture` (matplotlib; each gland outlined in its own colour, the
    title names the image and its object F1 / Dice / Hausdorff). Files are named
    after ``dataset.names`` when the dataset has them (else ``0000.png``, ...), written to a
    temporary file and renamed, so a reader never sees half a picture.

    Args:
        model: the network (see :func:`predict`).
        dataset: as in :func:`evaluate`.
        out: the output folder (created).
        tile: see :func:`predict`.
        overlap: see :func:`predict`.
        batch_size: see :func:`predict`.
        min_size: see :func:`evaluate`.
        dilation: see :func:`evaluate`.
        amp: see :func:`predict`.
        limit: only the first ``limit`` images (``None``: all).
        progress: show a tqdm progress bar.
        mean: normalisation mean.
        std: normalisation standard deviation.
        scale: network pixels per native pixel; pictures are on the native grid.

    Shapes:
        - each picture: a PNG of :func:`prediction_picture` (image | ground truth | prediction)

    Returns:
        The paths written, in dataset order.

    Raises:
        TypeError: as in :func:`evaluate`.
        ValueError: as in :func:`evaluate`.

    Example:
        >>> import tempfile, numpy as np, torch
        >>> model = torch.nn.Conv2d(3, 3, kernel_size=1)
        >>> data = [(np.zeros((32, 40, 3), np.uint8), np.zeros((32, 40), np.int32))]
        >>> paths = save_predictions(model, data, tempfile.mkdtemp(), tile=32, progress=False)
        >>> [p.name for p in paths]
        ['0000.png']
    """
    options = dict(tile=tile, overlap=overlap, batch_size=batch_size, min_size=min_size, dilation=dilation, amp=amp)
    folder = Path(out)
    written = []
    for name, image, gt, pred in _predicted(model, dataset, limit, progress, "pictures", mean, std, scale, **options):
        path = folder / f"{name}.png"
        _write_prediction(path, image, gt, pred, name)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- checkpoints and CLI


def _dataset(data: str, layout: str, split: str) -> object:
    from .data import CRAGDataset, FolderDataset, GlaSDataset

    root = Path(data)
    if layout == "glas":
        return GlaSDataset(root, split)
    if layout == "crag":
        return CRAGDataset(root, split)
    return FolderDataset(root / "images", root / "masks")


_TABLE = (
    ("pooled_f1", "O.F1", 3),
    ("pooled_dice", "O.Dice", 3),
    ("pooled_hausdorff", "O.HD", 1),
    ("per_image_f1", "img O.F1", 3),
    ("per_image_dice", "img O.Dice", 3),
    ("per_image_hausdorff", "img O.HD", 1),
    ("pixel_dice", "pixel Dice", 3),
)


def score_table(rows: dict[str, dict[str, Any]], first: str = "run") -> str:
    """Scores of :func:`evaluate` as a Markdown table: pooled and per-image object F1 / Dice /
    Hausdorff, pixel Dice and the number of images, one row per entry of ``rows``.

    Args:
        rows: row name (e.g. ``"dpfr student"``) -> the scores of :func:`evaluate`.
        first: the heading of the name column.

    Example:
        >>> scores = dict(pooled_f1=0.8, pooled_dice=0.85, pooled_hausdorff=20.0, per_image_f1=0.7,
        ...               per_image_dice=0.8, per_image_hausdorff=25.0, pixel_dice=0.9, num_images=16)
        >>> print(score_table({"dpfr student": scores}))
        | run | O.F1 | O.Dice | O.HD | img O.F1 | img O.Dice | img O.HD | pixel Dice | images |
        |---|---|---|---|---|---|---|---|---|
        | dpfr student | 0.800 | 0.850 | 20.0 | 0.700 | 0.800 | 25.0 | 0.900 | 16 |
    """
    header = [first, *(name for _, name, _ in _TABLE), "images"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scores in rows.items():
        cells = [f"{scores[key]:.{digits}f}" if key in scores else "-" for key, _, digits in _TABLE]
        lines.append("| " + " | ".join([name, *cells, str(scores.get("num_images", "-"))]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """The command line: score a checkpoint on a dataset, write ``metrics.json`` and pictures.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The scores of :func:`evaluate`.

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt)")
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument(
        "--layout",
        choices=("glas", "crag", "folder"),
        default="glas",
        help="glas: flat GlaS release; crag: SPLIT/Images + Annotation; folder: images/ + masks/",
    )
    parser.add_argument("--split", default="testA", help="testA / testB / train (GlaS), valid / train (CRAG)")
    parser.add_argument("--out", required=True, help="output folder: metrics.json and pictures/")
    parser.add_argument("--tile", type=int, default=None, help="tile side, a multiple of 32 (default: config or 256)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in pixels (default: config or tile/4)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument(
        "--min-size", type=int, default=None, help="smallest gland interior kept (default: config or 16)"
    )
    parser.add_argument(
        "--dilation", type=int, default=None, help="interior growth (default: config contour_width or 2)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="network pixels per image pixel (default: the run's scale); scores are on the native grid",
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--no-pictures", action="store_true", help="do not write pictures")
    parser.add_argument(
        "--weights",
        choices=("student", "teacher"),
        default="student",
        help="which network of a training checkpoint (default: student, the paper's)",
    )
    args = parser.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model, config = load_checkpoint_model(args.checkpoint, device, weights=args.weights)
    dataset = _dataset(args.data, args.layout, args.split)
    tile = args.tile if args.tile is not None else int(config.get("eval_tile", 256))
    overlap = args.overlap if args.overlap is not None else config.get("eval_overlap")
    min_size = args.min_size if args.min_size is not None else int(config.get("min_size", 16))
    dilation = args.dilation if args.dilation is not None else int(config.get("contour_width", 2))
    scale = args.scale if args.scale is not None else float(config.get("scale", 1.0))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .tasks import task_of  # the run's task: a semantic (PGland) run is scored with pixel metrics

    task = task_of(config)
    num_classes = task.num_classes(int(config.get("semantic_classes", 2)))
    scores = task.score(
        model,
        dataset,
        num_classes=num_classes,
        tile=tile,
        overlap=overlap,
        batch_size=args.batch_size,
        min_size=min_size,
        dilation=dilation,
        amp=True,
        limit=args.limit,
        pictures=None if args.no_pictures else out / "pictures",
        progress=True,
        scale=scale,
    )
    record = {
        "checkpoint": str(args.checkpoint),
        "weights": args.weights,
        "data": str(args.data),
        "layout": args.layout,
        "split": args.split,
        "tile": tile,
        "overlap": overlap,
        "min_size": min_size,
        "dilation": dilation,
        "scale": scale,
        "task": task.name,
        "scores": scores,
    }
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2))
    print("\n" + task.table({f"{args.weights} ({args.split})": scores}) + "\n")
    pictures = f" and pictures in {out / 'pictures'}" if task.has_instances and not args.no_pictures else ""
    print(f"wrote {out / 'metrics.json'}{pictures}")
    return scores


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
