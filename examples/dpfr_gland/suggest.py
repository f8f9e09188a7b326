"""What to label next: rank unlabelled images by the flow's density and the network's uncertainty.

Run::

    python -m examples.dpfr_gland.suggest --weights RUN/checkpoint.pt --images DIR --k 8 --out DIR

For every image of ``--images`` the run's EMA teacher gives the class scores and the features the
flow models (at the run's ``perturb_at`` site, normalised as in training), and the run's flow
their per-pixel log-density, all three through the recipe's one sliding window
(:func:`~examples.dpfr_gland.tiling.blend_tiles` with the run's ``eval_tile``, so an image of any
size fits in memory and is seen as evaluation sees it). Per image:

- ``low_density``: the share of pixels whose log-density lies below the ``--quantile`` of the
  labelled pixels' (:func:`densessl.functional.low_density_fraction`) — appearance the labels
  do not cover;
- ``entropy``: the mean normalised predictive entropy (:func:`densessl.functional.image_entropy`);
- ``combined``: the mean of their ranks (:func:`densessl.functional.rank_combined`).

The ``--k`` images to label are then picked greedily by ``combined`` and by distance to the ones
already picked in pooled features (:func:`densessl.functional.diverse_top_k`), so near-duplicates
do not fill the list. The labelled reference is ``--reference DIR`` (images of the labelled set) or,
by default, the run's own labelled images, rebuilt from its config (synthetic data, or a dataset
folder that is still there). Writes ``ranking.csv`` (every image, best first, the picks marked)
and ``suggestions.png`` (the picks, low-density pixels in red).
"""

from __future__ import annotations

__all__ = ["main", "score_images"]

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from densessl.functional import diverse_top_k, image_entropy, low_density_fraction, normalize_pixels, rank_combined

from .augment import to_tensor
from .checkpoint import Run, atomic_write, load_run
from .data import _images_in, read_image
from .scale import resize_image, scaled_size
from .tiling import TileSpec, blend_tiles, model_stride


def _image_maps(run: Run, image: np.ndarray, pixels: int, seed: int) -> dict[str, torch.Tensor]:
    """Teacher probabilities, per-pixel log-density and pooled features of one image, at the
    network's scale, through the recipe's one sliding window (the run's ``eval_tile``)."""
    model, flow, config = run.teacher, run.flow, run.config
    assert model is not None and flow is not None
    image = resize_image(
        image, scaled_size(*image.shape[:2], config.scale, minimum=min(model_stride(model), *image.shape[:2]))
    )
    x = to_tensor(image).to(run.device)  # at the network's scale: ranking needs no native map
    classes = config.num_classes

    def head(out: Any) -> torch.Tensor:
        """[b, K + 1 + C, h, w]: class probabilities, log-density, (normalised) features."""
        size = out.logits.shape[-2:]
        features = out.features.float()
        if config.flow_normalize:
            features = normalize_pixels(features)
        with torch.autocast(device_type=x.device.type, enabled=False):  # the flow in float32
            log_prob = flow.log_prob(features)[:, None]  # [b, 1, h', w'] at the density's resolution
        if log_prob.shape[-2:] != size:
            log_prob = F.interpolate(log_prob, size=size, mode="nearest")
        if features.shape[-2:] != size:
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return torch.cat([out.logits.float().softmax(dim=1), log_prob, features], dim=1)

    window = config.window_options
    spec = TileSpec(window["tile"], window["overlap"], amp=window["amp"])
    h, w = x.shape[-2:]
    maps = torch.cat(
        [
            band
            for _, band in blend_tiles(model, h, w, lambda y0, x0, th, tw: x[:, y0 : y0 + th, x0 : x0 + tw], spec, head)
        ],
        dim=1,
    )
    probs, log_prob, features = maps[:classes], maps[classes], maps[classes + 1 :]
    sample = log_prob.flatten()
    if sample.numel() > pixels:
        g = torch.Generator().manual_seed(seed)
        sample = sample[torch.randperm(sample.numel(), generator=g)[:pixels]]
    return {
        "log_prob": log_prob.cpu(),
        "logits": probs.clamp(min=1e-12).log().cpu(),  # logits of the blended probabilities
        "sample": sample.cpu(),
        "pooled": features.flatten(1).mean(1).cpu(),
    }


def score_images(
    run: Run, images: Sequence[np.ndarray], reference: Sequence[np.ndarray], quantile: float = 0.05, pixels: int = 4096
) -> dict[str, Any]:
    """The ranking scores of ``images`` against the labelled ``reference`` images.

    Args:
        run: the run's teacher and flow (:func:`~examples.dpfr_gland.checkpoint.load_run` of its
            ``checkpoint.pt`` with ``networks=("teacher", "flow")``).
        images: the unlabelled images to rank.
        reference: labelled images (their pixels' log-densities set the threshold).
        quantile: see :func:`densessl.functional.low_density_fraction`.
        pixels: pixels sampled per reference image.

    Shapes:
        - each image: ``[H, W, 3]`` uint8 (any size)

    Returns:
        ``{"low_density", "entropy", "combined"}`` as ``[N]`` tensors, ``"pooled"`` ``[N, C]`` and
        ``"low_maps"`` (per image, a bool map of its low-density pixels at the network's scale).
    """
    if not reference:
        raise ValueError("reference: at least one labelled image is needed")
    ref = torch.cat([_image_maps(run, image, pixels, n)["sample"] for n, image in enumerate(reference)])
    threshold = torch.quantile(ref.double(), quantile).item()
    low, entropy, pooled, maps = [], [], [], []
    for image in images:
        m = _image_maps(run, image, pixels, 0)
        low.append(low_density_fraction(m["log_prob"][None], ref, quantile))
        entropy.append(image_entropy(m["logits"][None]))
        pooled.append(m["pooled"])
        maps.append(m["log_prob"] < threshold)
    low_t, entropy_t = torch.cat(low), torch.cat(entropy)
    return {
        "low_density": low_t,
        "entropy": entropy_t,
        "combined": rank_combined(low_t, entropy_t),
        "pooled": torch.stack(pooled),
        "low_maps": maps,
    }


def _reference_images(config: Any) -> list[np.ndarray]:
    from .batches import _native_datasets
    from .loop import labelled_split

    train, _ = _native_datasets(config)  # native: _image_maps brings every image to the run's scale
    labelled, _ = labelled_split(config, len(train))
    return [train[i][0] for i in labelled]


def _contact_sheet(images: list[np.ndarray], maps: list[torch.Tensor], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(images))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    for n, (ax, image, low, name) in enumerate(zip(axes.flat, images, maps, names)):
        h, w = image.shape[:2]
        # the map is at the network's scale: the nearest cell of each native pixel
        rows = np.arange(h) * low.shape[0] // h
        cols = np.arange(w) * low.shape[1] // w
        big = low.numpy()[rows][:, cols]
        shown = image.copy()
        shown[big] = (0.5 * shown[big] + 0.5 * np.array([230, 30, 30])).astype(np.uint8)
        ax.imshow(shown)
        ax.set_title(f"{n + 1}. {name}", fontsize=8)
    fig.suptitle("label next (red: pixels less likely than 95 % of the labelled ones)", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring). Returns the exit status, 0."""
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.suggest", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="checkpoint.pt of an fdp or dpfr run (it holds the flow)")
    parser.add_argument("--images", required=True, help="folder of unlabelled images")
    parser.add_argument("--k", type=int, default=8, help="how many images to suggest")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--reference", default=None, help="folder of labelled images (default: the run's own)")
    parser.add_argument(
        "--quantile", type=float, default=0.05, help="low density: below this quantile of labelled pixels"
    )
    parser.add_argument("--diversity", type=float, default=0.5, help="0: plain top-k; 1: spread only")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        run = load_run(Path(args.weights), args.device, networks=("teacher", "flow"))
        files = _images_in(Path(args.images)) if Path(args.images).is_dir() else []
        if not files:
            raise ValueError(f"--images: no image files in {args.images}")
        reference = (
            [read_image(p) for p in _images_in(Path(args.reference))]
            if args.reference
            else _reference_images(run.config)
        )
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    images = [read_image(p) for p in files]
    scores = score_images(run, images, reference, quantile=args.quantile)
    picks = diverse_top_k(scores["combined"], scores["pooled"], args.k, diversity=args.diversity).tolist()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    order = picks + [int(i) for i in torch.argsort(scores["combined"], descending=True) if int(i) not in picks]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "name", "picked", "combined", "low_density", "entropy"])
    for rank, i in enumerate(order, start=1):
        writer.writerow(
            [
                rank,
                files[i].name,
                int(i in picks),
                f"{float(scores['combined'][i]):.4f}",
                f"{float(scores['low_density'][i]):.4f}",
                f"{float(scores['entropy'][i]):.4f}",
            ]
        )
    atomic_write(out / "ranking.csv", lambda handle: handle.write(buffer.getvalue().encode()))
    _contact_sheet(
        [images[i] for i in picks],
        [scores["low_maps"][i] for i in picks],
        [files[i].name for i in picks],
        out / "suggestions.png",
    )
    print(f"[suggest] label next: {', '.join(files[i].name for i in picks)}")
    print(f"[suggest] wrote {out / 'ranking.csv'} and {out / 'suggestions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
