"""3-class targets round trip: instances -> (background, interior, contour) -> instances.

Run: ``python -m benchmarks.quality_targets``. Scores the round trip with the GlaS object
metrics against the original instance maps, on the four real GlaS testA ground truths in
``tests/data/glas_testA_sample`` and on synthetic glands of the hard preset (crowded and
touching), for contour widths 1-3. Prints a table (per image and pooled) and writes
``benchmarks/results/quality_targets.json``. Target (issue 3): object F1 >= 0.95 and
object Dice >= 0.9, touching glands included.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from densessl.metrics import glas_metrics, object_dice, object_f1
from examples.dpfr_gland.synthetic import SyntheticGlands
from examples.dpfr_gland.targets import classes_to_instances, instances_to_classes

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "quality_targets.json"


def touching_pairs(instances: np.ndarray) -> int:
    """Number of unordered pairs of instances that share a 4-neighbour boundary."""
    pairs = set()
    for a, b in ((instances[:, :-1], instances[:, 1:]), (instances[:-1], instances[1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        pairs |= {tuple(sorted(p)) for p in zip(a[edge].tolist(), b[edge].tolist())}
    return len(pairs)


def cases() -> list[tuple[str, np.ndarray]]:
    out = []
    for i in range(1, 5):
        out.append(
            (
                f"glas testA_{i}",
                np.asarray(Image.open(ROOT / f"tests/data/glas_testA_sample/testA_{i}_anno.png")).astype(np.int32),
            )
        )
    glands = SyntheticGlands("hard", size=256, seed=0)
    for i in range(6):
        out.append((f"synthetic hard #{i}", glands.sample(i)[1]))
    return out


def main() -> dict:
    rows = []
    data = cases()
    for width in (1, 2, 3):
        backs = []
        for name, gt in data:
            back = classes_to_instances(instances_to_classes(gt, contour_width=width), dilation=width)
            backs.append(back)
            rows.append(
                {
                    "case": name,
                    "contour_width": width,
                    "objects": len(np.unique(gt)) - 1,
                    "touching_pairs": touching_pairs(gt),
                    "objects_back": len(np.unique(back)) - 1,
                    "f1": object_f1(back, gt),
                    "dice": object_dice(back, gt),
                }
            )
        pooled = glas_metrics(backs, [gt for _, gt in data], aggregate="pooled")
        rows.append({"case": "pooled (all above)", "contour_width": width, **pooled})
    print(f"{'case':<20} {'w':>2} {'objects':>8} {'touching':>9} {'back':>5} {'F1':>7} {'Dice':>7}")
    for r in rows:
        if "objects" in r:
            print(
                f"{r['case']:<20} {r['contour_width']:>2} {r['objects']:>8} {r['touching_pairs']:>9} "
                f"{r['objects_back']:>5} {r['f1']:>7.4f} {r['dice']:>7.4f}"
            )
        else:
            print(
                f"{r['case']:<20} {r['contour_width']:>2} {'':>8} {'':>9} {'':>5} {r['f1']:>7.4f} {r['dice']:>7.4f}"
                f"   Hausdorff {r['hausdorff']:.3f}"
            )
    worst_f1 = min(r["f1"] for r in rows)
    worst_dice = min(r["dice"] for r in rows)
    print(f"worst object F1 {worst_f1:.4f}, worst object Dice {worst_dice:.4f} (targets: >= 0.95, >= 0.9)")
    result = {"rows": rows, "worst_f1": worst_f1, "worst_dice": worst_dice}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
