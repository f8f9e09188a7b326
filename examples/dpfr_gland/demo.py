"""The gland demo on built-in synthetic data: runs anywhere, on the CPU, in about a minute.

What it does (each step uses the real code path, not a shortcut):

1. writes synthetic H&E glands to disk in the GlaS layout and reads them back with
   :class:`~examples.dpfr_gland.data.GlaSDataset`;
2. splits the training images into labelled / unlabelled at a ratio;
3. turns instances into 3-class targets (background, interior, contour) and back, and
   scores the round trip with the GlaS object metrics;
4. fits a :class:`densessl.FlowDensityHead` on per-pixel colour features of the labelled
   images, reports its posterior accuracy on the test images, and shows that a
   :class:`densessl.DensityPerturbation` step lowers the log-density of the features;
5. writes pictures: a contact sheet, targets, posterior and log-density maps.

Run: ``python -m examples.dpfr_gland.demo --out outputs/demo`` (``make demo`` does the set-up
first). The full DPFR training recipe builds on these pieces.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

import densessl
from densessl.metrics import glas_metrics, mean_iou

from .data import GlaSDataset, label_split, write_synthetic
from .synthetic import draw_outlines, write_contact_sheet
from .targets import classes_to_instances, instances_to_classes

__all__ = ["main", "pixel_features"]

# background, interior, contour as RGB for pictures
_CLASS_COLOURS = np.array([[20, 20, 20], [80, 200, 120], [250, 200, 40]], dtype=np.uint8)


def pixel_features(image: np.ndarray) -> np.ndarray:
    """Per-pixel features for the density demo: optical density at three smoothing scales.

    Args:
        image: RGB image.

    Shapes:
        - image: ``[H, W, 3]`` uint8
        - returns: ``[9, H, W]`` float32 (per-image standardised optical density of R, G, B at
          smoothing sigma 0, 2 and 6 pixels)

    Returns:
        The feature map (channels first).

    Example:
        >>> import numpy as np
        >>> pixel_features(np.full((8, 8, 3), 255, dtype=np.uint8)).shape
        (9, 8, 8)
    """
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    # Standardise per image: stains vary from slide to slide (and per synthetic image).
    od = (od - od.mean(axis=(0, 1))) / (od.std(axis=(0, 1)) + 1e-6)
    scales = [od] + [ndimage.gaussian_filter(od, sigma=(s, s, 0)) for s in (2.0, 6.0)]
    return np.concatenate(scales, axis=2).transpose(2, 0, 1).astype(np.float32)


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)  # atomic: a reader never sees half a picture


def _heat(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [2, 98])
    t = np.clip((values - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.stack([255 * t, 255 * (1 - np.abs(2 * t - 1)), 255 * (1 - t)], axis=-1).astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the demo (see the module docstring) and return its summary.

    The synthetic data goes to ``OUT/data``; layout files left there by an earlier run of
    the demo are replaced, so the demo can be rerun into the same ``--out`` with other
    settings.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``): ``--out``, ``--num``,
            ``--preset``, ``--size``, ``--ratio``, ``--steps``, ``--seed``; ``--help``
            lists them.

    Returns:
        The summary also written to ``OUT/summary.json``: image counts, the split, the
        pooled GlaS scores of the targets round trip, the density head's posterior
        accuracy and mean IoU, and the log-density drop under a perturbation.

    Raises:
        SystemExit: bad arguments (argparse's usage message).

    Example:
        >>> import tempfile
        >>> summary = main(["--out", tempfile.mkdtemp(), "--num", "4", "--size", "48", "--steps", "2"])
        data: ...
        >>> summary["train_images"], summary["test_images"]
        (2, 1)
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument(
        "--num", type=int, default=16, help="synthetic images, split over train/testA/testB as GlaS's 85:60:20"
    )
    parser.add_argument("--preset", default="medium", choices=["easy", "medium", "hard"])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--ratio", default="1/4", help="labelled fraction of the training images")
    parser.add_argument("--steps", type=int, default=600, help="density-head training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. synthetic glands on disk, read back by the real reader
    # overwrite: a rerun with a smaller --num must not read the earlier run's extra images
    data_dir = write_synthetic(
        out / "data", "glas", args.num, preset=args.preset, size=args.size, seed=args.seed, overwrite=True
    )
    train, test = GlaSDataset(data_dir, "train"), GlaSDataset(data_dir, "testA")
    write_contact_sheet(out / "contact_sheet.png", presets=(args.preset,), num=4, size=args.size, seed=args.seed)
    print(f"data: {len(train)} train / {len(test)} test images in {data_dir}")

    # 2. labelled / unlabelled split
    labelled, unlabelled = label_split(len(train), args.ratio, seed=args.seed)
    print(f"split {args.ratio}: {len(labelled)} labelled, {len(unlabelled)} unlabelled")

    # 3. targets round trip, scored with the official (pooled) GlaS metrics
    gts = [test[i][1] for i in range(len(test))]
    back = [classes_to_instances(instances_to_classes(g)) for g in gts]
    round_trip = glas_metrics(back, gts, aggregate="pooled")
    print("targets round trip (pooled GlaS): " + ", ".join(f"{k} {v:.4f}" for k, v in round_trip.items()))

    # 4. a flow density head on colour features of the labelled images
    # Labelled pixels train log p(x | y); unlabelled pixels (label = ignore_index) train the
    # mixture log p(x), which is also what teaches the mixture weights the class frequencies.
    feats = torch.from_numpy(np.stack([pixel_features(image) for image, _ in train]))
    classes = torch.full((len(train), args.size, args.size), 255, dtype=torch.long)
    for i in labelled:
        classes[i] = torch.from_numpy(instances_to_classes(train[i][1])).long()
    mean, std = feats.mean(dim=(0, 2, 3), keepdim=True), feats.std(dim=(0, 2, 3), keepdim=True)
    feats = (feats - mean) / std
    head = densessl.FlowDensityHead(channels=feats.shape[1], num_classes=3, depth=2, hidden=64)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    rows_per_step = 4096
    flat_feats = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    flat_labels = classes.reshape(-1)
    for _ in tqdm(range(args.steps), desc="density head", disable=None):
        pick = torch.randint(0, flat_feats.shape[0], (rows_per_step,))
        # rows as a [1, C, 1, N] map: pixels are independent, so any arrangement is a valid batch
        batch = flat_feats[pick].T[None, :, None, :]
        # Small Gaussian noise (as DDFP does) keeps the flow from collapsing onto the
        # nearly rank-2 stain subspace of the colour features.
        batch = batch + 0.1 * torch.randn_like(batch)
        loss = head.nll(batch, flat_labels[pick][None, None, :])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    test_feats = (torch.from_numpy(np.stack([pixel_features(test[i][0]) for i in range(len(test))])) - mean) / std
    test_classes = torch.from_numpy(np.stack([instances_to_classes(g) for g in gts])).long()
    head.eval()
    with torch.no_grad():
        posterior = head.posterior(test_feats)
        log_p = head.log_prob(test_feats)
    predicted = posterior.argmax(1)
    accuracy = float((predicted == test_classes).float().mean())
    majority = float((test_classes == test_classes.flatten().mode().values).float().mean())
    miou = mean_iou(
        predicted.flatten(1).numpy().reshape(-1, args.size), test_classes.numpy().reshape(-1, args.size), num_classes=3
    )
    perturb = densessl.DensityPerturbation(head, xi=1.0)
    with torch.no_grad():
        log_p_perturbed = head.log_prob(perturb(test_feats))
    drop = float((log_p - log_p_perturbed).mean())
    print(
        f"density head: posterior pixel accuracy {accuracy:.3f} (majority class {majority:.3f}), "
        f"3-class mIoU {miou:.3f}; "
        f"a xi=1 perturbation lowers log p by {drop:.3f} nats per pixel on average"
    )

    # 5. pictures
    rows = []
    for i in range(min(4, len(test))):
        image = test[i][0]
        rows.append(
            np.concatenate(
                [
                    draw_outlines(image, gts[i]),
                    _CLASS_COLOURS[test_classes[i].numpy()],
                    _CLASS_COLOURS[posterior[i].argmax(0).numpy()],
                    _heat(log_p[i].numpy()),
                ],
                axis=1,
            )
        )
    _save(out / "density_demo.png", np.concatenate(rows, axis=0))

    summary = {
        "train_images": len(train),
        "test_images": len(test),
        "labelled": len(labelled),
        "unlabelled": len(unlabelled),
        "targets_round_trip_pooled": round_trip,
        "posterior_accuracy": accuracy,
        "majority_class_accuracy": majority,
        "posterior_mean_iou": miou,
        "perturbation_log_p_drop": drop,
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    print(
        f"wrote {out / 'contact_sheet.png'}, {out / 'density_demo.png'} (columns: image with outlines, "
        f"target, posterior class, log p) and {out / 'summary.json'}"
    )
    return summary


if __name__ == "__main__":
    main()
