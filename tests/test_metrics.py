"""Tests of densessl.metrics: hand-computed cases, a brute-force float64 oracle, real GlaS maps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from densessl.metrics import (
    glas_metrics,
    mean_iou,
    object_dice,
    object_f1,
    object_hausdorff,
    pixel_dice,
    pixel_f1,
)

DATA = Path(__file__).parent / "data" / "glas_testA_sample"


def all_three(pred, gt, **kw):
    return object_f1(pred, gt), object_dice(pred, gt), object_hausdorff(pred, gt, **kw)


# ---------------------------------------------------------------------------------------
# Brute-force oracle: loops over objects, float64, all-pairs (cdist) or k-d tree distances.


def hausdorff_cdist(a: np.ndarray, b: np.ndarray) -> float:
    d = cdist(a.astype(np.float64), b.astype(np.float64))
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def hausdorff_kdtree(a: np.ndarray, b: np.ndarray) -> float:
    return float(max(cKDTree(b).query(a)[0].max(), cKDTree(a).query(b)[0].max()))


def oracle_sides(pred, gt, far=None, distance=hausdorff_cdist, hausdorff=True):
    """Per-object (area, dice, hausdorff) on each side and the TP count, straight from the definition."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if far is None:
        far = math.hypot(*gt.shape)
    g_labels = [int(v) for v in np.unique(gt) if v != 0]
    s_labels = [int(v) for v in np.unique(pred) if v != 0]
    g_pix = {i: np.argwhere(gt == i) for i in g_labels}
    s_pix = {j: np.argwhere(pred == j) for j in s_labels}
    inter = {(i, j): int(np.sum((gt == i) & (pred == j))) for i in g_labels for j in s_labels}

    def best(k, others, key):  # max overlap, ties to the smaller label (labels are sorted)
        top, arg = 0, None
        for o in others:
            c = inter[key(k, o)]
            if c > top:
                top, arg = c, o
        return arg, top

    tp = 0
    for j in s_labels:
        i, c = best(j, g_labels, lambda j, i: (i, j))
        if i is not None and c / len(g_pix[i]) > 0.5:
            tp += 1

    def side(mine, mine_pix, others, others_pix, key):
        rows = []
        for k in mine:
            o, c = best(k, others, key)
            area = len(mine_pix[k])
            if o is None:
                dice = 0.0
                if not hausdorff:
                    h = 0.0
                elif others:
                    h = min(distance(mine_pix[k], others_pix[q]) for q in others)
                else:
                    h = far
            else:
                dice = 2.0 * c / (area + len(others_pix[o]))
                h = distance(mine_pix[k], others_pix[o]) if hausdorff else 0.0
            rows.append((area, dice, h))
        return rows

    g_rows = side(g_labels, g_pix, s_labels, s_pix, lambda i, j: (i, j))
    s_rows = side(s_labels, s_pix, g_labels, g_pix, lambda j, i: (i, j))
    return {"tp": tp, "n_gt": len(g_labels), "n_pred": len(s_labels), "g": g_rows, "s": s_rows}


def oracle_scores(images):
    """Pooled scores of a list of oracle_sides results."""
    tp = sum(r["tp"] for r in images)
    fp = sum(r["n_pred"] for r in images) - tp
    fn = sum(r["n_gt"] for r in images) - tp
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    g = [row for r in images for row in r["g"]]
    s = [row for r in images for row in r["s"]]

    def weighted(rows, col):
        total = sum(row[0] for row in rows)
        return sum(row[0] * row[col] for row in rows) / total

    def combine(col, both_empty):
        terms = [weighted(rows, col) for rows in (g, s) if rows]
        return both_empty if not terms else sum(terms) / len(terms)

    return {"f1": f1, "dice": combine(1, 1.0), "hausdorff": combine(2, 0.0)}


def random_map(rng: np.random.Generator, shape, labels) -> np.ndarray:
    """Blobby labels: a coarse random grid upsampled, with a little pixel noise."""
    h, w = shape
    coarse = rng.choice(labels, size=(h // 2 + 1, w // 2 + 1))
    m = np.kron(coarse, np.ones((2, 2), dtype=coarse.dtype))[:h, :w]
    noise = rng.random((h, w)) < 0.1
    m[noise] = rng.choice(labels, size=int(noise.sum()))
    return m


maps_strategy = st.tuples(
    st.integers(0, 2**32 - 1),  # seed
    st.integers(1, 12),
    st.integers(1, 12),  # shape
    st.sampled_from([[0, 1], [0, 0, 1, 2], [0, 1, 2, 3], [0, 0, 0, 5, 300, 70000], [0, 7, 2**31 - 1]]),
)


def draw_pair(params):
    seed, h, w, labels = params
    rng = np.random.default_rng(seed)
    labels = np.array(labels, dtype=np.int64)
    return random_map(rng, (h, w), labels), random_map(rng, (h, w), labels)


# ---------------------------------------------------------------------------------------
# Hand-computed cases


def square_pair(shift_r, shift_c, shape=(6, 8)):
    gt = np.zeros(shape, dtype=np.int64)
    gt[0:4, 0:4] = 1
    pred = np.zeros(shape, dtype=np.int64)
    pred[shift_r : shift_r + 4, shift_c : shift_c + 4] = 9
    return pred, gt


def test_square_shifted_one_column():
    # 4x4 square vs the same square one column right: overlap 12 of 16 (> 50 %: TP, F1 1);
    # Dice 2*12/(16+16) = 0.75 both ways; every pixel is at most 1 column from the other.
    pred, gt = square_pair(0, 1)
    assert all_three(pred, gt) == pytest.approx((1.0, 0.75, 1.0))


def test_square_exactly_half_overlap_is_not_a_true_positive():
    # Shifted 2 columns: overlap 8 of 16 = exactly 50 % -> not a TP: TP 0, FP 1, FN 1 -> F1 0.
    # Dice 2*8/32 = 0.5; Hausdorff 2 (column 0 to column 2, and 5 to 3).
    pred, gt = square_pair(0, 2)
    assert all_three(pred, gt) == pytest.approx((0.0, 0.5, 2.0))
    # One more pixel of overlap (9 of 16) makes it a TP.
    pred[0, 1] = 9
    assert object_f1(pred, gt) == 1.0


def test_diagonal_shift_is_euclidean():
    # 2x2 at (0,0) vs 2x2 at (1,1): overlap 1 pixel (25 %) -> F1 0; Dice 2*1/8 = 0.25;
    # the far corners (0,0) and (2,2) are sqrt(2) from the other square.
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[0:2, 0:2] = 1
    pred = np.zeros_like(gt)
    pred[1:3, 1:3] = 1
    assert all_three(pred, gt) == pytest.approx((0.0, 0.25, math.sqrt(2)))


def test_touching_objects_boundary_moved():
    # gt: G1 cols 0-2, G2 cols 3-5 (rows 0-1, 6 px each, touching). pred: S1 cols 0-3 (8 px),
    # S2 cols 4-5 (4 px). S1 -> G1 (6 of 6) TP, S2 -> G2 (4 of 6) TP: F1 1.
    # Dice gt side: G1-S1 2*6/14 = 6/7, G2-S2 2*4/10 = 4/5, weights 1/2 each -> 29/35;
    # pred side: 8/12 * 6/7 + 4/12 * 4/5 = 88/105; object Dice = (29/35 + 88/105)/2 = 5/6.
    # Hausdorff: S1's column 3 is 1 from G1, G2's column 3 is 1 from S2 -> 1 everywhere.
    gt = np.array([[1, 1, 1, 2, 2, 2]] * 2)
    pred = np.array([[1, 1, 1, 1, 2, 2]] * 2)
    assert all_three(pred, gt) == pytest.approx((1.0, 5 / 6, 1.0))
    # Touching objects segmented exactly (other labels) are perfect.
    assert all_three(np.where(gt == 1, 40, 3), gt) == pytest.approx((1.0, 1.0, 0.0))


def test_segment_spanning_two_gt_objects():
    # gt G1 cols 0-2, G2 cols 3-5 (6 px each); one segment S over all 12 px. S overlaps both by
    # 6 -> tie -> the smaller label G1, 6 of 6: TP 1, FP 0, FN 1 -> F1 2/3.
    # Dice: G1-S = G2-S = 2*6/18 = 2/3, S-G1 = 2/3 -> 2/3. Hausdorff: S's column 5 is 3 from G1,
    # S's column 0 is 3 from G2 -> 3 everywhere.
    gt = np.array([[1, 1, 1, 2, 2, 2]] * 2)
    pred = np.full_like(gt, 7)
    assert all_three(pred, gt) == pytest.approx((2 / 3, 2 / 3, 3.0))


def test_split_object():
    # gt one 2x6 object (12 px); pred S1 cols 0-3 (8 px, 8/12 > 50 %: TP), S2 cols 4-5 (4 px: FP).
    # F1 = 2/(2+1+0) = 2/3. Dice gt: G-S1 2*8/20 = 0.8; pred: 8/12*0.8 + 4/12*(2*4/16) = 0.7 -> 0.75.
    # Hausdorff G-S1: G's column 5 is 2 from S1 -> 2. S2-G: G's column 0 is 4 from S2 -> 4.
    # gt side 2, pred side 8/12*2 + 4/12*4 = 8/3 -> (2 + 8/3)/2 = 7/3.
    gt = np.ones((2, 6), dtype=np.int64)
    pred = np.array([[1, 1, 1, 1, 2, 2]] * 2)
    assert all_three(pred, gt) == pytest.approx((2 / 3, 0.75, 7 / 3))


def test_segment_on_background_uses_nearest_gt_object():
    # 2x14 map: G1 cols 0-1, G2 cols 12-13; pred copies both and adds S3 on background at cols 5-6.
    # F1: TP 2, FP 1 -> 4/5. Dice: gt side 1, pred side (1 + 1 + 0)/3 -> 5/6.
    # Hausdorff: S3 to G1 = 5 (col 6 -> col 1), to G2 = 7 (col 5 -> col 12): nearest 5.
    # gt side 0, pred side 5/3 -> 5/6.
    gt = np.zeros((2, 14), dtype=np.int64)
    gt[:, 0:2], gt[:, 12:14] = 1, 2
    pred = gt * 10
    pred[:, 5:7] = 3
    assert all_three(pred, gt) == pytest.approx((0.8, 5 / 6, 5 / 6))


def test_empty_maps():
    empty = np.zeros((3, 4), dtype=np.int64)
    one = empty.copy()
    one[1, 1] = 4
    # Both empty: F1 1, Dice 1, Hausdorff 0.
    assert all_three(empty, empty) == (1.0, 1.0, 0.0)
    # One side empty: F1 0, Dice 0, Hausdorff the diagonal hypot(3, 4) = 5, or the override.
    for pred, gt in ((empty, one), (one, empty)):
        assert all_three(pred, gt) == (0.0, 0.0, 5.0)
        assert object_hausdorff(pred, gt, empty_distance=7.5) == 7.5
    assert glas_metrics([empty], [empty]) == {"f1": 1.0, "dice": 1.0, "hausdorff": 0.0}
    assert glas_metrics([one], [empty]) == {"f1": 0.0, "dice": 0.0, "hausdorff": 5.0}


def test_large_labels_and_dtypes():
    small = np.array([[1, 1, 0, 2], [3, 0, 0, 2]])
    pred_small = np.array([[1, 0, 0, 2], [1, 1, 0, 0]])
    expected = all_three(pred_small, small)
    big_gt = np.select([small == 1, small == 2, small == 3], [256, 70000, 2**31 - 1], 0)
    big_pred = np.select([pred_small == 1, pred_small == 2], [300, 2**30], 0)
    for dtype in (np.int32, np.int64, np.uint32, np.uint64):
        assert all_three(big_pred.astype(dtype), big_gt.astype(dtype)) == pytest.approx(expected)
    for dtype in (np.uint8, np.int8, np.int16, np.uint16):
        assert all_three(pred_small.astype(dtype), small.astype(dtype)) == pytest.approx(expected)
    tensors = torch.from_numpy(big_pred.astype(np.int32)), torch.from_numpy(big_gt)
    assert all_three(*tensors) == pytest.approx(expected)
    assert all_three(torch.from_numpy(pred_small).to(torch.uint16), torch.from_numpy(small)) == pytest.approx(expected)
    # Plain Python floats come back, not numpy scalars.
    values = [
        *all_three(*tensors),
        *glas_metrics([pred_small], [small]).values(),
        pixel_dice(pred_small, small),
        pixel_f1(pred_small, small),
        mean_iou(pred_small, small),
    ]
    assert all(type(v) is float for v in values)
    # The hand values: S1 (3 px) covers 1 of G1 (2 px) and G3 (1 px) -> tie -> G1, 1 of 2 = 50 %: FP.
    # S2 (1 px) covers 1 of G2's 2 px = 50 %: FP. TP 0 -> F1 0.
    assert expected[0] == 0.0


def test_object_f1_is_not_symmetric():
    # gt one 2x6 object; pred two exact halves. pred->gt: each half is exactly 50 %: TP 0 -> F1 0.
    # gt->pred: the object matches the first half (tie -> smaller label) and covers all of it:
    # TP 1, FP 0, FN 1 -> 2/3.
    gt = np.ones((2, 6), dtype=np.int64)
    halves = np.array([[1, 1, 1, 2, 2, 2]] * 2)
    assert object_f1(halves, gt) == 0.0
    assert object_f1(gt, halves) == pytest.approx(2 / 3)


def test_pooled_and_per_image_differ():
    # Image A: a 10x10 object found exactly. Image B (3x4): a 1-pixel object, nothing predicted.
    # Pooled: TP 1, FN 1 -> F1 2/3; Dice gt side (100*1 + 1*0)/101, pred side 1;
    # Hausdorff gt side (100*0 + 1*5)/101 (B's diagonal), pred side 0.
    # Per image: F1 (1 + 0)/2, Dice (1 + 0)/2, Hausdorff (0 + 5)/2.
    gt_a = np.zeros((12, 12), dtype=np.int64)
    gt_a[1:11, 1:11] = 1
    gt_b = np.zeros((3, 4), dtype=np.int64)
    gt_b[0, 0] = 1
    preds, gts = [gt_a.copy(), np.zeros_like(gt_b)], [gt_a, gt_b]
    pooled = glas_metrics(preds, gts)
    assert pooled == pytest.approx({"f1": 2 / 3, "dice": (100 / 101 + 1) / 2, "hausdorff": 5 / 202})
    per_image = glas_metrics(preds, gts, aggregate="per_image")
    assert per_image == pytest.approx({"f1": 0.5, "dice": 0.5, "hausdorff": 2.5})
    assert glas_metrics(preds, gts, empty_distance=0.0)["hausdorff"] == 0.0


# ---------------------------------------------------------------------------------------
# Against the brute-force oracle


@settings(max_examples=60, deadline=None)
@given(maps_strategy)
def test_single_image_matches_oracle(params):
    pred, gt = draw_pair(params)
    expected = oracle_scores([oracle_sides(pred, gt)])
    assert all_three(pred, gt) == pytest.approx((expected["f1"], expected["dice"], expected["hausdorff"]))


@settings(max_examples=25, deadline=None)
@given(st.lists(maps_strategy, min_size=1, max_size=4), st.sampled_from([None, 3.0]))
def test_glas_metrics_match_oracle(params, far):
    pairs = [draw_pair(p) for p in params]
    preds, gts = [p for p, _ in pairs], [g for _, g in pairs]
    sides = [oracle_sides(p, g, far=far) for p, g in pairs]
    assert glas_metrics(preds, gts, empty_distance=far) == pytest.approx(oracle_scores(sides))
    per_image = [oracle_scores([s]) for s in sides]
    expected = {k: float(np.mean([r[k] for r in per_image])) for k in ("f1", "dice", "hausdorff")}
    assert glas_metrics(preds, gts, aggregate="per_image", empty_distance=far) == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(maps_strategy)
def test_dice_and_hausdorff_are_symmetric(params):
    pred, gt = draw_pair(params)
    assert object_dice(pred, gt) == pytest.approx(object_dice(gt, pred))
    assert object_hausdorff(pred, gt) == pytest.approx(object_hausdorff(gt, pred))


def has_overlap_ties(pred, gt) -> bool:
    """Whether some object's largest overlap on the other side is shared by two objects."""
    for a, b in ((pred, gt), (gt, pred)):
        for k in np.unique(a[a > 0]):
            _, counts = np.unique(b[(a == k) & (b > 0)], return_counts=True)
            if counts.size > 1 and np.sum(counts == counts.max()) > 1:
                return True
    return False


@settings(max_examples=40, deadline=None)
@given(maps_strategy, st.integers(0, 2**32 - 1))
def test_label_permutation_invariance(params, seed):
    pred, gt = draw_pair(params)
    assume(not has_overlap_ties(pred, gt))  # ties go to the smaller label, so they may move
    rng = np.random.default_rng(seed)

    def permute(m):
        labels = np.unique(m[m > 0])
        new = np.unique(rng.integers(1, 2**31, size=labels.size))  # sorted: shuffled below
        assume(new.size == labels.size)
        rng.shuffle(new)
        out = np.zeros_like(m)
        for old, lab in zip(labels, new):
            out[m == old] = lab
        return out

    assert all_three(permute(pred), permute(gt)) == pytest.approx(all_three(pred, gt))


def load(n: int):
    from PIL import Image

    gt = np.array(Image.open(DATA / f"testA_{n}_anno.png"))
    pred = np.array(Image.open(DATA / f"testA_{n}_seg.png"))
    return pred, gt


def test_real_glas_sample_matches_oracle():
    images = [load(n) for n in range(1, 5)]
    preds, gts = [p for p, _ in images], [g for _, g in images]
    # F1 and Dice at full resolution (no distances needed).
    sides = [oracle_sides(p, g, hausdorff=False) for p, g in images]
    expected = oracle_scores(sides)
    got = glas_metrics(preds, gts)
    assert (got["f1"], got["dice"]) == pytest.approx((expected["f1"], expected["dice"]), rel=1e-12)
    # Hausdorff on every second pixel (k-d tree oracle, exact, ~1 s), both aggregations.
    small = [(p[::2, ::2], g[::2, ::2]) for p, g in images]
    sides = [oracle_sides(p, g, distance=hausdorff_kdtree) for p, g in small]
    got = glas_metrics([p for p, _ in small], [g for _, g in small])
    assert got == pytest.approx(oracle_scores(sides), rel=1e-12)
    per_image = [object_hausdorff(p, g) for p, g in small]
    assert per_image == pytest.approx([oracle_scores([s])["hausdorff"] for s in sides], rel=1e-12)
    # One full-resolution Hausdorff (image 2, two glands a side).
    expected = oracle_scores([oracle_sides(*images[1], distance=hausdorff_kdtree)])["hausdorff"]
    assert object_hausdorff(*images[1]) == pytest.approx(expected, rel=1e-12)
    # The sample's scores are plausible for a reasonable segmentation.
    assert 0.5 < got["f1"] <= 1 and 0.5 < got["dice"] <= 1 and 0 < got["hausdorff"] < 200


def test_real_glas_permutation_and_tensor_inputs():
    pred, gt = load(1)
    rng = np.random.default_rng(0)
    lut = np.zeros(256, dtype=np.int64)
    lut[1:] = rng.choice(np.arange(1, 10**6), size=255, replace=False)
    expected = all_three(pred, gt)
    assert all_three(lut[pred], lut[gt]) == pytest.approx(expected)
    assert all_three(torch.from_numpy(pred), torch.from_numpy(gt).int()) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------
# Pixel-level metrics


def test_pixel_dice_and_f1_hand_cases():
    gt = np.array([[0, 1, 1, 0], [0, 2, 2, 0]])  # 4 foreground pixels
    pred = np.array([[1, 1, 0, 0], [0, 3, 0, 0]])  # 3 foreground, 2 shared
    # Dice 2*2/(3+4) = 4/7; precision 2/3, recall 2/4 -> F1 2*(1/3)/(7/6) = 4/7.
    assert pixel_dice(pred, gt) == pytest.approx(4 / 7)
    assert pixel_f1(pred, gt) == pytest.approx(4 / 7)
    empty = np.zeros_like(gt)
    assert pixel_dice(empty, empty) == 1.0 and pixel_f1(empty, empty) == 1.0
    assert pixel_dice(empty, gt) == 0.0 and pixel_f1(pred, empty) == 0.0
    # A batch pools the pixels: (2 shared of 3 and 4) + (2 shared of 2 and 2) -> 2*4/(5+6).
    batch_pred = np.stack([pred, np.eye(2, 4, dtype=np.int64)])
    batch_gt = np.stack([gt, np.eye(2, 4, dtype=np.int64)])
    assert pixel_dice(torch.from_numpy(batch_pred), torch.from_numpy(batch_gt)) == pytest.approx(8 / 11)


def test_mean_iou_hand_cases():
    gt = np.array([[0, 0, 1, 1], [2, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 1]])
    # Ignoring 255: class 0 inter 1, union 3 (gt 2 + pred 2 - 1) -> 1/3; class 1 inter 2, union 3
    # -> 2/3; class 2 inter 2, union 3 -> 2/3. Mean 5/9. Class 3 (num_classes=4) is absent: skipped.
    assert mean_iou(pred, gt, ignore_index=255) == pytest.approx(5 / 9)
    assert mean_iou(pred, gt, num_classes=4, ignore_index=255) == pytest.approx(5 / 9)
    assert mean_iou(gt, gt) == 1.0
    assert mean_iou(np.zeros((1, 1), dtype=np.int64), np.full((1, 1), 255), ignore_index=255) == 1.0


@settings(max_examples=30, deadline=None)
@given(maps_strategy)
def test_pixel_metrics_match_naive_loops(params):
    seed, h, w, _ = params
    rng = np.random.default_rng(seed)
    pred, gt = rng.integers(0, 4, (h, w)), rng.integers(0, 4, (h, w))
    tp = fp = fn = 0
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        tp += p > 0 and g > 0
        fp += p > 0 and g == 0
        fn += p == 0 and g > 0
    dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    assert pixel_dice(pred, gt) == pytest.approx(dice)
    assert pixel_f1(pred, gt) == pytest.approx(dice)
    ious = []
    for c in range(4):
        union = np.sum((pred == c) | (gt == c))
        if union:
            ious.append(np.sum((pred == c) & (gt == c)) / union)
    assert mean_iou(pred, gt, num_classes=4) == pytest.approx(float(np.mean(ious)))


# ---------------------------------------------------------------------------------------
# Bad inputs


GOOD = np.zeros((4, 5), dtype=np.int64)


@pytest.mark.parametrize("fn", [object_f1, object_dice, object_hausdorff, pixel_dice, pixel_f1, mean_iou])
def test_bad_maps(fn):
    with pytest.raises(TypeError, match="pred"):
        fn(GOOD.astype(np.float32), GOOD)
    with pytest.raises(TypeError, match="gt"):
        fn(GOOD, torch.zeros(4, 5))
    with pytest.raises(TypeError, match="gt"):
        fn(GOOD, GOOD.astype(bool))
    with pytest.raises(TypeError, match="pred"):
        fn(GOOD.tolist(), GOOD)
    with pytest.raises(ValueError, match=r"pred.*\(4, 6\)"):
        fn(np.zeros((4, 6), dtype=np.int64), GOOD)
    with pytest.raises(ValueError, match="gt must hold labels >= 0"):
        fn(GOOD, GOOD - 1)
    with pytest.raises(ValueError, match=r"pred must hold labels <= 2\*\*31 - 1"):
        fn(GOOD + 2**31, GOOD)
    with pytest.raises(ValueError, match="gt"):
        fn(GOOD, np.zeros((2, 4, 5, 1), dtype=np.int64))


def test_bad_ranks_for_object_metrics():
    with pytest.raises(ValueError, match=r"pred must be a 2-D"):
        object_f1(np.zeros((1, 4, 5), dtype=np.int64), GOOD)
    with pytest.raises(ValueError, match=r"gt must be a 2-D tensor \[H, W\]"):
        object_dice(torch.zeros(4, 5, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))


def test_bad_glas_metrics_arguments():
    with pytest.raises(TypeError, match=r"preds\[1\]"):
        glas_metrics([GOOD, GOOD.astype(float)], [GOOD, GOOD])
    with pytest.raises(ValueError, match=r"gts\[0\]"):
        glas_metrics([GOOD], [GOOD[None]])
    with pytest.raises(ValueError, match=r"preds\[0\] must have the same shape as gts\[0\]"):
        glas_metrics([GOOD[:, :3]], [GOOD])
    with pytest.raises(ValueError, match="same length"):
        glas_metrics([GOOD, GOOD], [GOOD])
    with pytest.raises(ValueError, match="at least one"):
        glas_metrics([], [])
    with pytest.raises(ValueError, match="aggregate"):
        glas_metrics([GOOD], [GOOD], aggregate="mean")
    with pytest.raises(ValueError, match="single map"):
        glas_metrics(GOOD, GOOD)
    with pytest.raises(TypeError, match="preds"):
        glas_metrics(3, [GOOD])
    with pytest.raises(ValueError, match="empty_distance"):
        glas_metrics([GOOD], [GOOD], empty_distance=-1.0)
    with pytest.raises(ValueError, match="empty_distance"):
        object_hausdorff(GOOD, GOOD, empty_distance=float("nan"))


def test_bad_mean_iou_arguments():
    with pytest.raises(ValueError, match=r"pred must hold class indices in 0\.\.2"):
        mean_iou(np.array([[3]]), np.array([[0]]), num_classes=3)
    with pytest.raises(ValueError, match="gt must hold class indices.*ignore_index=255"):
        mean_iou(np.array([[0]]), np.array([[7]]), num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match="num_classes"):
        mean_iou(GOOD, GOOD, num_classes=0)
    with pytest.raises(TypeError, match="num_classes"):
        mean_iou(GOOD, GOOD, num_classes=2.5)


def _reference_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """An independent count by the GlaS rule: each segmented object's most-overlapped true object
    (ties to the smaller label) is hit when covered by more than half."""
    n_pred, n_gt = len(np.unique(pred[pred > 0])), len(np.unique(gt[gt > 0]))
    both = (pred > 0) & (gt > 0)
    if not both.any():
        return n_pred, n_gt, 0
    pairs, counts = np.unique(np.stack([pred[both], gt[both]]), axis=1, return_counts=True)
    gt_area = dict(zip(*np.unique(gt[gt > 0], return_counts=True)))
    best: dict[int, tuple[int, int]] = {}
    for (p, g), c in zip(pairs.T.tolist(), counts.tolist()):  # sorted by (p, g): a tie keeps the smaller g
        if c > best.get(p, (0, 0))[0]:
            best[p] = (c, g)
    return n_pred, n_gt, sum(1 for c, g in best.values() if 2 * c > gt_area[g])


def test_object_counts_on_a_hand_made_case():
    from densessl.metrics import object_counts, object_f1

    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1
    gt[6:10, 6:10] = 2
    pred = np.zeros((10, 10), int)
    pred[0:3, 0:4] = 5  # covers 12 of gt 1's 16 pixels: a true positive
    pred[6:7, 6:10] = 7  # covers 4 of gt 2's 16: not one
    pred[8, 0] = 9  # overlaps nothing: a false positive
    assert object_counts(pred, gt) == (3, 2, 1)
    pred[3, 0:4] = 6  # a second piece of gt 1 (4 of 16) does not count it twice
    assert object_counts(pred, gt) == (4, 2, 1)
    assert object_counts(np.zeros_like(gt), gt) == (0, 2, 0)
    half_gt, half_pred = np.array([[1, 1, 0, 2, 2]]), np.array([[5, 5, 5, 0, 7]])  # exactly half is no hit
    n_pred, n_gt, tp = object_counts(half_pred, half_gt)
    assert (n_pred, n_gt, tp) == (2, 2, 1) and 2 * tp / (n_pred + n_gt) == object_f1(half_pred, half_gt)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_object_counts_equal_an_independent_count_and_give_object_f1(seed):
    from densessl.metrics import object_counts, object_f1

    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 4, (12, 12)) * (rng.random((12, 12)) < 0.7)
    pred = rng.integers(0, 5, (12, 12)) * (rng.random((12, 12)) < 0.6)
    counts = object_counts(pred, gt)
    assert counts == _reference_counts(pred, gt)
    n_pred, n_gt, tp = counts
    assert object_f1(pred, gt) == pytest.approx(1.0 if n_pred + n_gt == 0 else 2 * tp / (n_pred + n_gt))
