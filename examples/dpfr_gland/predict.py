"""Segment new images: sliding-window prediction of any folder of images, no labels needed.

Run::

    python -m examples.dpfr_gland.predict --weights outputs/demo/dpfr/model.pt --images DIR_OR_FILE --out DIR

``--weights`` takes the small inference export every run writes (``model.pt``) or a resume
checkpoint (``checkpoint.pt``; ``--network student|teacher`` picks the network). Every image
(PNG, BMP, TIFF or JPEG; grey and RGBA are turned into RGB; or a ``uint8 [H, W, 3]`` ``.npy``
array, memory-mapped and read tile by tile) is predicted at full size by
:func:`examples.dpfr_gland.large.predict_large` (tiles blended with a Gaussian window, one band
of tiles in memory) and written as

- ``NAME_instances.png``: the glands, a 16-bit label map (0 = background, ``1..n``); a 32-bit
  ``NAME_instances.tif`` instead when there are more than 65 535 glands;
- ``NAME_classes.png``: the 3-class map (0 background, 1 interior, 2 contour), 8-bit;
- ``NAME_overlay.png``: the image with each gland's outline in its own colour;
- with ``--geojson``, ``NAME.geojson``: one polygon per gland (holes kept, its area and mean
  probability), a ``FeatureCollection`` in full-image pixel coordinates that QuPath imports.

A memory-mapped image larger than :data:`IN_MEMORY_PIXELS` (8192², e.g. a 16 384² ``.npy`` or
uncompressed TIFF) is predicted out of core: its class, probability and instance maps live in
memory-mapped work files beside the outputs (removed at the end), the instance and class maps are
written as tiled, zlib-compressed BigTIFFs (``NAME_instances.tif``, ``NAME_classes.tif``), the
overlay is subsampled to 4096 pixels on its long side, and the GeoJSON is streamed feature by
feature — memory follows the image's width, not its area (``benchmarks/large_image.py``).

A model of the semantic task (PGland) writes the class map (classes ``0..K-1``) and the overlay.

A file that cannot be read is named in the error; ``--on-error skip`` reports it and goes on
(the default ``stop`` refuses the run before anything is written for that file).
"""

from __future__ import annotations

__all__ = ["IN_MEMORY_PIXELS", "main", "predict_file", "predict_folder"]

import argparse
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from .checkpoint import atomic_write
from .data import IMAGE_EXTENSIONS, _images_in, _natural_key, read_image
from .evaluate import load_checkpoint_model, native_postprocess, predict_probabilities
from .geojson import gland_features, write_geojson
from .large import WINDOWS, instances_by_strips, predict_large, tiff_regions
from .scale import image_mpp, scale_for
from .synthetic import draw_outlines
from .tasks import TASKS, Task, task_of

#: a memory-mapped image (``.npy``, uncompressed TIFF) with more pixels than this is predicted out of
#: core: its maps go through memory-mapped work files beside the outputs, and are written as tiled
#: TIFFs; only a band of tiles and a strip of rows are in memory at once.
IN_MEMORY_PIXELS = 8192 * 8192


def _save(path: Path, image: Image.Image, fmt: str) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def _memory_mapped_tiff(path: Path) -> np.ndarray | None:
    """An uncompressed RGB TIFF memory-mapped (tifffile), or ``None`` to read it as usual."""
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    try:
        array = tiff_regions(str(path)).array
    except (ImportError, ValueError, OSError):
        return None  # compressed, tiled, not RGB, or no tifffile: Pillow reads it whole
    return array


def _write_tiled_tiff(path: Path, array: np.ndarray, dtype: np.dtype, tile: int = 512) -> Path:
    """A 2-D map (e.g. memory-mapped) written as a zlib-compressed tiled BigTIFF, one row of tiles
    read at a time (the ``tifffile`` extra)."""
    import tifffile

    height, width = array.shape

    def tiles():
        for y in range(0, height, tile):
            band = np.asarray(array[y : y + tile]).astype(dtype)
            band = np.pad(band, ((0, tile - band.shape[0]), (0, (-width) % tile)))
            for x in range(0, width, tile):
                yield band[:, x : x + tile]

    # tifffile wants a named file: a unique temp name beside the target, then a rename
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width),
            dtype=dtype,
            tile=(tile, tile),
            bigtiff=True,
            compression="zlib",
            photometric="minisblack",
            metadata=None,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _overlay_downsampled(image: np.ndarray, instances: np.ndarray, side: int, strip: int = 2048) -> np.ndarray:
    """The outline overlay of a large image at (at most) ``side`` pixels on its long side: the image
    and the instances are subsampled by a whole factor strip by strip, then outlined."""
    height, width = instances.shape
    step = max(1, -(-max(height, width) // side))
    rows = max(step, strip - strip % step)  # a whole number of steps per strip keeps the sampling regular
    pictures, labels = [], []
    for y in range(0, height, rows):
        pictures.append(np.asarray(image[y : y + rows : step, ::step]))
        labels.append(np.asarray(instances[y : y + rows : step, ::step]))
    return draw_outlines(np.ascontiguousarray(np.concatenate(pictures)), np.concatenate(labels), width=1)


def _predict_out_of_core(
    model: nn.Module,
    image: np.ndarray,
    out: Path,
    stem: str,
    tile: int,
    overlap: int,
    batch_size: int,
    min_size: int,
    dilation: int,
    amp: bool,
    geojson: bool,
    window: str,
    tile_progress: bool,
    overlay_side: int,
    scale: float = 1.0,
) -> dict[str, Any]:
    try:  # checked first: the TIFFs are written only after the whole prediction
        import tifffile  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"an image of {image.shape[0]}x{image.shape[1]} pixels is predicted out of core and "
            f"written as tiled TIFFs, which needs tifffile (pip install tifffile, the recipe's "
            f"'large' extra)"
        ) from error
    height, width = image.shape[:2]
    work = out / f".{stem}.work"  # memory-mapped maps, removed when the outputs are written
    work.mkdir(parents=True, exist_ok=True)
    try:
        classes = np.lib.format.open_memmap(work / "classes.npy", mode="w+", dtype=np.uint8, shape=(height, width))
        probability = (
            np.lib.format.open_memmap(work / "probability.npy", mode="w+", dtype=np.float16, shape=(height, width))
            if geojson
            else None
        )
        predict_large(
            model,
            image,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            window=window,
            amp=amp,
            out=classes,
            probability_out=probability,
            progress=tile_progress,
            scale=scale,
        )
        instances = np.lib.format.open_memmap(work / "instances.npy", mode="w+", dtype=np.int32, shape=(height, width))
        instances_by_strips(classes, min_size=min_size, dilation=dilation, out=instances)
        glands = max((int(np.asarray(instances[y : y + 2048]).max()) for y in range(0, height, 2048)), default=0)
        instance_path = _write_tiled_tiff(
            out / f"{stem}_instances.tif", instances, np.dtype(np.uint16 if glands <= 65535 else np.uint32)
        )
        class_path = _write_tiled_tiff(out / f"{stem}_classes.tif", classes, np.dtype(np.uint8))
        overlay_path = _save(
            out / f"{stem}_overlay.png", Image.fromarray(_overlay_downsampled(image, instances, overlay_side)), "PNG"
        )
        geojson_path = (
            write_geojson(out / f"{stem}.geojson", gland_features(instances, probability)) if geojson else None
        )
        del classes, probability, instances
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "image": stem,
        "glands": glands,
        "instances": str(instance_path),
        "classes": str(class_path),
        "overlay": str(overlay_path),
        "geojson": None if geojson_path is None else str(geojson_path),
    }


def predict_file(
    model: nn.Module,
    path: str | Path,
    out: str | Path,
    tile: int = 256,
    overlap: int | None = None,
    batch_size: int = 4,
    min_size: int = 16,
    dilation: int = 2,
    amp: bool = True,
    task: Task | str = "instance",
    geojson: bool = False,
    window: str = "gaussian",
    tile_progress: bool = False,
    in_memory_pixels: int = IN_MEMORY_PIXELS,
    overlay_side: int = 4096,
    scale: float = 1.0,
    target_mpp: float = 0.0,
) -> dict[str, Any]:
    """Predict one image file and write its instance map, class map and overlay into ``out``.

    For the semantic task (``task="semantic"``, e.g. PGland) there is no instance map: the class
    map holds the classes ``0..K-1`` and the overlay outlines the connected gland regions.

    Args:
        model: a 3-class (background, interior, contour) network, e.g. from
            :func:`~examples.dpfr_gland.checkpoint.load_checkpoint_model`.
        path: the image file.
        out: the output folder (created).
        tile: tile side (a multiple of 32) of :func:`~examples.dpfr_gland.large.predict_large`.
        overlap: pixels shared by neighbouring tiles (``None``: a quarter of ``tile``).
        batch_size: tiles per forward pass.
        min_size: smallest gland interior kept, in pixels.
        dilation: growth of the interiors back to glands (the training's contour width).
        amp: mixed precision on CUDA.
        task: the run's :class:`~examples.dpfr_gland.tasks.Task` or its name (``"instance"``, ``"semantic"``).
        geojson: also write ``NAME.geojson`` (:func:`~examples.dpfr_gland.geojson.instances_to_geojson`,
            with each gland's mean probability; instance task only).
        window: the tiles' blending window (see :func:`~examples.dpfr_gland.large.window_weights`).
        tile_progress: a progress bar over the image's tiles (for large images).
        in_memory_pixels: a memory-mapped image with more pixels is predicted out of core (instance
            task): the maps live in memory-mapped work files in ``out`` (removed at the end), the
            instance and class maps are written as tiled, zlib-compressed BigTIFFs
            (``NAME_instances.tif``, 16-bit or 32-bit; ``NAME_classes.tif``), the overlay is
            subsampled to at most ``overlay_side`` pixels and the GeoJSON is streamed.
        overlay_side: the long side of an out-of-core image's overlay picture.
        scale: network pixels per native pixel (the training config's ``scale``); the maps,
            polygons and measurements are on the native grid, ``tile``, ``min_size`` and
            ``dilation`` are at the network's scale.
        target_mpp: with an image that states its microns per pixel (TIFF resolution), the
            network works at ``image_mpp / target_mpp`` instead of ``scale`` (0: always ``scale``).

    The image is read whole and predicted as evaluation predicts it
    (:func:`~examples.dpfr_gland.evaluate.predict_probabilities`: the maps score what evaluation
    reports), except a large ``.npy`` file or uncompressed RGB TIFF, which is memory-mapped, read
    tile by tile and blended band by band (:func:`~examples.dpfr_gland.large.predict_large`), its
    glands found strip by strip (:func:`~examples.dpfr_gland.large.instances_by_strips`).

    Returns:
        ``{"image", "glands", "instances", "classes", "overlay", "geojson"}`` (paths as strings;
        ``instances`` and ``geojson`` are ``None`` when not written, ``glands`` counts regions
        for the semantic task).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable, corrupt or not an 8-bit image (names the file).

    Example:
        >>> import tempfile, numpy as np, torch
        >>> from pathlib import Path
        >>> from examples.dpfr_gland.data import write_image
        >>> folder = Path(tempfile.mkdtemp())
        >>> write_image(folder / "a.png", np.zeros((40, 50, 3), np.uint8))
        >>> result = predict_file(torch.nn.Conv2d(3, 3, 1), folder / "a.png", folder / "out", tile=64)
        >>> sorted(Path(p).name for k, p in result.items() if k in ("instances", "classes", "overlay"))
        ['a_classes.png', 'a_instances.png', 'a_overlay.png']
    """
    path, out = Path(path), Path(out)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        try:
            image = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise ValueError(f"image {path} is unreadable or corrupt: {error}") from error
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {path} must hold a uint8 [H, W, 3] array, got {image.dtype} {image.shape}")
    else:
        image = _memory_mapped_tiff(path)
        if image is None:
            image = read_image(path)
    overlap = tile // 4 if overlap is None else overlap
    mpp = image_mpp(path) if target_mpp > 0 and path.suffix.lower() != ".npy" else None
    scale = scale_for(scale, target_mpp, mpp)
    min_size, dilation = native_postprocess(min_size, dilation, scale)
    instance_task = (TASKS[task] if isinstance(task, str) else task).has_instances
    if isinstance(image, np.memmap) and instance_task and image.shape[0] * image.shape[1] > in_memory_pixels:
        result = _predict_out_of_core(
            model,
            image,
            out,
            path.stem,
            tile,
            overlap,
            batch_size,
            min_size,
            dilation,
            amp,
            geojson,
            window,
            tile_progress,
            overlay_side,
            scale,
        )
        return {**result, "image": str(path), "scale": scale}
    probs = predict_probabilities(
        model, np.asarray(image), scale=scale, tile=tile, overlap=overlap, batch_size=batch_size, amp=amp, window=window
    )
    best, winner = probs.max(dim=0)
    classes = winner.to(torch.uint8).numpy()
    probability = best.numpy() if geojson and instance_task else None
    out.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    if not instance_task:  # the semantic task: a class map, no instances
        regions, glands = ndimage.label(classes > 0)
        class_path = _save(out / f"{stem}_classes.png", Image.fromarray(classes, mode="L"), "PNG")
        overlay_path = _save(out / f"{stem}_overlay.png", Image.fromarray(draw_outlines(image, regions)), "PNG")
        return {
            "image": str(path),
            "glands": int(glands),
            "instances": None,
            "classes": str(class_path),
            "overlay": str(overlay_path),
            "geojson": None,
            "scale": scale,
        }
    instances = instances_by_strips(classes, min_size=min_size, dilation=dilation)
    glands = int(instances.max()) if instances.size else 0
    if glands <= 65535:
        instance_path = _save(out / f"{stem}_instances.png", Image.fromarray(instances.astype(np.uint16)), "PNG")
    else:  # PNG holds 16 bits; a 32-bit grey TIFF holds any count
        instance_path = _save(
            out / f"{stem}_instances.tif", Image.fromarray(instances.astype(np.int32), mode="I"), "TIFF"
        )
    class_path = _save(out / f"{stem}_classes.png", Image.fromarray(classes, mode="L"), "PNG")
    overlay_path = _save(
        out / f"{stem}_overlay.png", Image.fromarray(draw_outlines(np.asarray(image), instances)), "PNG"
    )
    geojson_path = None
    if geojson:
        geojson_path = write_geojson(out / f"{stem}.geojson", gland_features(instances, probability))  # streamed
    return {
        "image": str(path),
        "glands": glands,
        "instances": str(instance_path),
        "classes": str(class_path),
        "overlay": str(overlay_path),
        "geojson": None if geojson_path is None else str(geojson_path),
        "scale": scale,
    }


def predict_folder(
    model: nn.Module, images: str | Path, out: str | Path, on_error: str = "stop", progress: bool = True, **options: Any
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """:func:`predict_file` for one file or every image directly inside a folder (natural name order).

    Args:
        model: the network.
        images: an image file or a folder of them (PNG, BMP, TIFF, JPEG).
        out: the output folder.
        on_error: ``"stop"`` (raise at the first unreadable file) or ``"skip"`` (report and go on).
        progress: show a tqdm bar.
        **options: passed to :func:`predict_file`.

    Returns:
        ``(results, skipped)``: one :func:`predict_file` dict per image written, and
        ``(file, reason)`` per file skipped.

    Raises:
        FileNotFoundError: ``images`` does not exist.
        ValueError: no image in the folder; an unreadable file with ``on_error="stop"``
            (the message names it); an unknown ``on_error``.
    """
    from tqdm import tqdm

    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
    source = Path(images)
    if not source.exists():
        raise FileNotFoundError(f"images {source} does not exist")
    files = (
        [source]
        if source.is_file()
        else sorted(
            [*_images_in(source), *(p for p in source.iterdir() if p.is_file() and p.suffix.lower() == ".npy")],
            key=lambda p: _natural_key(p.name),
        )
    )
    if not files:
        raise ValueError(f"images: no {'/'.join(IMAGE_EXTENSIONS)} file in {source}")
    results, skipped = [], []
    for file in tqdm(files, desc="predict", unit="image", disable=not progress):
        try:
            results.append(predict_file(model, file, out, **options))
        except (ValueError, FileNotFoundError) as error:
            if on_error == "stop":
                raise ValueError(f"{error} (use --on-error skip to go on without it)") from error
            skipped.append((str(file), str(error)))
            print(f"[predict] skipped {file}: {error}", file=sys.stderr, flush=True)
    return results, skipped


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring). Returns the exit status: 0, or 1 if files were skipped."""
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="model.pt (inference export) or checkpoint.pt")
    parser.add_argument("--images", required=True, help="an image file or a folder of images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--network",
        choices=("student", "teacher"),
        default="student",
        help="which network of a resume checkpoint (model.pt holds the student)",
    )
    parser.add_argument("--tile", type=int, default=None, help="tile side, a multiple of 32 (default: the run's)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: the run's, or tile/4)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--min-size", type=int, default=None, help="smallest gland interior kept (default: the run's)")
    parser.add_argument("--dilation", type=int, default=None, help="interior growth (default: the run's contour width)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop", help="what to do with unreadable files")
    parser.add_argument("--geojson", action="store_true", help="also write NAME.geojson (QuPath) per image")
    parser.add_argument("--window", choices=WINDOWS, default="gaussian", help="blending window of the tiles")
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="network pixels per image pixel (default: the run's scale, from the checkpoint)",
    )
    parser.add_argument(
        "--target-mpp",
        type=float,
        default=None,
        help="microns per pixel to work at, for images that state theirs (default: the run's)",
    )
    parser.add_argument("--tile-progress", action="store_true", help="a progress bar over each image's tiles")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        model, config = load_checkpoint_model(args.weights, device, weights=args.network)
    except (FileNotFoundError, ValueError) as error:
        parser.error(f"--weights: {error}")
    options = dict(
        tile=args.tile if args.tile is not None else int(config.get("eval_tile", 256)),
        overlap=args.overlap if args.overlap is not None else config.get("eval_overlap"),
        batch_size=args.batch_size,
        min_size=args.min_size if args.min_size is not None else int(config.get("min_size", 16)),
        dilation=args.dilation if args.dilation is not None else int(config.get("contour_width", 2)),
        task=task_of(config),
        geojson=args.geojson,
        window=args.window,
        tile_progress=args.tile_progress,
        scale=args.scale if args.scale is not None else float(config.get("scale", 1.0)),
        target_mpp=args.target_mpp if args.target_mpp is not None else float(config.get("target_mpp", 0.0)),
    )
    try:
        scale_for(options["scale"], options["target_mpp"])
    except ValueError as error:
        parser.error(f"--scale: {error}")
    try:
        results, skipped = predict_folder(
            model, args.images, args.out, on_error=args.on_error, progress=not args.no_progress, **options
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    glands = sum(r["glands"] for r in results)
    print(
        f"[predict] {len(results)} image(s), {glands} gland(s) -> {args.out}"
        + (f"; skipped {len(skipped)}: " + ", ".join(f for f, _ in skipped) if skipped else "")
    )
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
