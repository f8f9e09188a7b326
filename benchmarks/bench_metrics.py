"""GlaS object metrics: speed on a 1512x1512 map, and against a brute-force oracle.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.bench_metrics`` (about half a minute
on CPU). A synthetic scene of ~40 elliptic glands is drawn at full size (1512x1512) and
at a quarter of it (378x378); the prediction is the ground truth perturbed: shifted,
rescaled and rotated, some glands split in two, some merged with a neighbour, some
missed, and a few false blobs on the background. ``object_f1``, ``object_dice`` and
``object_hausdorff`` are timed (median of repeats) at full size; at quarter size the
same three are timed against a brute-force float64 oracle (loops over objects,
all-pairs ``scipy.spatial.distance.cdist`` Hausdorff) and the values compared. Prints
a table and writes ``benchmarks/results/bench_metrics.json``.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.spatial.distance import cdist

from densessl.metrics import object_dice, object_f1, object_hausdorff

__all__ = ["brute_force", "main", "synthetic_pair"]

RESULTS = Path(__file__).parent / "results" / "bench_metrics.json"


def _ellipse(out: np.ndarray, label: int, centre, axes, angle: float, keep=None) -> None:
    """Paint an ellipse (only its bounding box is touched); ``keep(rr, cc)`` selects a part."""
    h, w = out.shape
    reach = max(axes) + 1
    r0, r1 = max(int(centre[0] - reach), 0), min(int(centre[0] + reach) + 1, h)
    c0, c1 = max(int(centre[1] - reach), 0), min(int(centre[1] + reach) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    y, x = rr - centre[0], cc - centre[1]
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    inside = (u / axes[1]) ** 2 + (v / axes[0]) ** 2 <= 1
    if keep is not None:
        inside &= keep(y, x)
    out[r0:r1, c0:c1][inside] = label


def synthetic_pair(size: int = 1512, objects: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` int32 instance maps of ``size x size`` with about ``objects`` glands."""
    rng = np.random.default_rng(seed)
    scale = size / 1512
    gt = np.zeros((size, size), dtype=np.int32)
    pred = np.zeros_like(gt)
    centres = []
    while len(centres) < objects:  # rejection sampling keeps glands mostly apart
        c = rng.uniform(0.06, 0.94, 2) * size
        if all(math.dist(c, o) > 150 * scale for o in centres) or rng.random() < 0.02:
            centres.append(c)
    next_label = 1000  # predicted labels unrelated to gt labels
    painted: list[tuple[np.ndarray, int]] = []  # (centre, pred label) of whole predicted glands
    for k, centre in enumerate(centres, start=1):
        axes = rng.uniform(40, 110, 2) * scale
        angle = rng.uniform(0, math.pi)
        _ellipse(gt, 3 * k + 7, centre, axes, angle)  # non-consecutive labels
        fate = rng.random()
        if fate < 0.1:  # missed
            continue
        shifted = centre + rng.normal(0, 4 * scale, 2)
        scaled = axes * rng.uniform(0.85, 1.15, 2)
        turned = angle + rng.normal(0, 0.1)
        if fate < 0.2:  # split in two along a random line through the centre
            t = rng.uniform(0, math.pi)
            _ellipse(
                pred, next_label, shifted, scaled, turned, keep=lambda y, x, t=t: x * math.cos(t) + y * math.sin(t) < 0
            )
            _ellipse(
                pred,
                next_label + 1,
                shifted,
                scaled,
                turned,
                keep=lambda y, x, t=t: x * math.cos(t) + y * math.sin(t) >= 0,
            )
            next_label += 2
            continue
        label = next_label
        if fate < 0.3 and painted:  # merged with the nearest gland predicted so far
            label = min(painted, key=lambda p: math.dist(p[0], centre))[1]
        _ellipse(pred, label, shifted, scaled, turned)
        painted.append((centre, label))
        next_label += 1
    for _ in range(5):  # false positives on the background
        _ellipse(pred, next_label, rng.uniform(0, size, 2), rng.uniform(10, 30, 2) * scale, rng.uniform(0, math.pi))
        next_label += 1
    return pred, gt


def brute_force(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Object F1, Dice, Hausdorff from the definitions: loops over objects, all-pairs distances."""
    g_labels = [int(v) for v in np.unique(gt) if v]
    s_labels = [int(v) for v in np.unique(pred) if v]
    g_pix = {i: np.argwhere(gt == i).astype(np.float64) for i in g_labels}
    s_pix = {j: np.argwhere(pred == j).astype(np.float64) for j in s_labels}
    inter = {(i, j): int(np.sum((gt == i) & (pred == j))) for i in g_labels for j in s_labels}

    def hausdorff(a, b):
        d = cdist(a, b)
        return max(d.min(axis=1).max(), d.min(axis=0).max())

    def best(k, others, key):
        top, arg = 0, None
        for o in others:
            if inter[key(k, o)] > top:
                top, arg = inter[key(k, o)], o
        return arg, top

    tp = sum(
        1
        for j in s_labels
        if (m := best(j, g_labels, lambda j, i: (i, j)))[0] is not None and m[1] / len(g_pix[m[0]]) > 0.5
    )
    f1 = 2 * tp / (len(g_labels) + len(s_labels))

    def side(mine, mine_pix, others, others_pix, key):
        total = sum(len(p) for p in mine_pix.values())
        dice = haus = 0.0
        for k in mine:
            o, c = best(k, others, key)
            w = len(mine_pix[k]) / total
            if o is None:
                haus += w * min(hausdorff(mine_pix[k], others_pix[q]) for q in others)
            else:
                dice += w * 2 * c / (len(mine_pix[k]) + len(others_pix[o]))
                haus += w * hausdorff(mine_pix[k], others_pix[o])
        return dice, haus

    gd, gh = side(g_labels, g_pix, s_labels, s_pix, lambda i, j: (i, j))
    sd, sh = side(s_labels, s_pix, g_labels, g_pix, lambda j, i: (i, j))
    return f1, (gd + sd) / 2, (gh + sh) / 2


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> dict:
    rows = []
    pred, gt = synthetic_pair(1512)
    info = {
        "size": "1512x1512",
        "gt_objects": int(np.unique(gt).size - 1),
        "pred_objects": int(np.unique(pred).size - 1),
    }
    for name, fn in (("object_f1", object_f1), ("object_dice", object_dice), ("object_hausdorff", object_hausdorff)):
        t, value = _median_time(lambda fn=fn: fn(pred, gt), repeats=5)
        rows.append({**info, "metric": name, "fast_s": t, "value": value})

    small_pred, small_gt = synthetic_pair(378)
    oracle_s, oracle = _median_time(lambda: brute_force(small_pred, small_gt), repeats=1)
    small_info = {
        "size": "378x378",
        "gt_objects": int(np.unique(small_gt).size - 1),
        "pred_objects": int(np.unique(small_pred).size - 1),
    }
    fast = [object_f1, object_dice, object_hausdorff]
    fast_s, fast_values = _median_time(lambda: [fn(small_pred, small_gt) for fn in fast], repeats=5)
    rows.append(
        {
            **small_info,
            "metric": "all three",
            "fast_s": fast_s,
            "oracle_s": oracle_s,
            "speedup": oracle_s / fast_s,
            "value": fast_values,
            "oracle_value": list(oracle),
            "max_abs_diff": max(abs(a - b) for a, b in zip(fast_values, oracle)),
        }
    )

    header = f"{'map':<10} {'gt/pred objs':>12} {'metric':<17} {'fast ms':>9} {'oracle ms':>10} {'speedup':>8}  value"
    print(header)
    print("-" * len(header))
    for r in rows:
        oracle_ms = f"{r['oracle_s'] * 1e3:>10.0f}" if "oracle_s" in r else f"{'':>10}"
        speed = f"{r['speedup']:>7.0f}x" if "speedup" in r else f"{'':>8}"
        value = r["value"] if isinstance(r["value"], float) else [round(v, 4) for v in r["value"]]
        print(
            f"{r['size']:<10} {str(r['gt_objects']) + '/' + str(r['pred_objects']):>12} {r['metric']:<17} "
            f"{r['fast_s'] * 1e3:>9.1f} {oracle_ms} {speed}  {value}"
        )
    print(f"fast vs oracle, largest |difference| over F1, Dice, Hausdorff: {rows[-1]['max_abs_diff']:.1e}")
    out = {
        "benchmark": "GlaS object metrics: fast (cropped EDT) vs brute force (all-pairs cdist)",
        "device": "cpu",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": platform.machine(),
        "repeats_fast": 5,
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")
    return out


if __name__ == "__main__":
    main()
