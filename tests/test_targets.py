"""Tests for examples/dpfr_gland/targets.py: instances -> 3 classes -> instances.

Oracles: hand-built rings from the distance-to-a-rectangle formula, a naive per-instance
loop over ``scipy.ndimage.binary_dilation``/``binary_erosion``, GlaS object metrics on the
real GlaS testA ground truth and on synthetic touching glands, and object counts. The
round trip is scored twice, by ``densessl.metrics`` and by an independent small matcher
written here (checked on hand cases), and must pass the thresholds under both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage

from densessl.metrics import object_dice, object_f1
from examples.dpfr_gland.targets import (
    BACKGROUND,
    CONTOUR,
    INTERIOR,
    classes_to_instances,
    disk,
    instances_to_classes,
)

GLAS = Path(__file__).parent / "data" / "glas_testA_sample"


# --------------------------------------------------------------------------- metrics


def _contingency(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``overlap[s, g]`` = pixels of pred label ``s`` and gt label ``g`` (row/col 0 = background)."""
    pred = pred.astype(np.int64).ravel()
    gt = gt.astype(np.int64).ravel()
    n_pred, n_gt = int(pred.max()) + 1, int(gt.max()) + 1
    return np.bincount(pred * n_gt + gt, minlength=n_pred * n_gt).reshape(n_pred, n_gt)


def _object_f1(pred: np.ndarray, gt: np.ndarray) -> float:
    """GlaS object F1: a predicted object is a TP when it covers > 50 % of the gt object it
    overlaps most (each gt object can be matched once: predicted objects are disjoint)."""
    overlap = _contingency(pred, gt)
    pred_ids = [s for s in range(1, overlap.shape[0]) if overlap[s].sum() > 0]
    gt_ids = [g for g in range(1, overlap.shape[1]) if overlap[:, g].sum() > 0]
    gt_area = overlap.sum(axis=0)
    tp = 0
    for s in pred_ids:
        if overlap.shape[1] > 1:
            g = 1 + int(np.argmax(overlap[s, 1:]))
            tp += bool(overlap[s, g] > 0.5 * gt_area[g])
    fp, fn = len(pred_ids) - tp, len(gt_ids) - tp
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0


def _object_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """GlaS object Dice: area-weighted Dice of each object with its max-overlap partner, both ways."""
    overlap = _contingency(pred, gt)

    def one_side(ov: np.ndarray) -> float:  # rows: the side whose objects are weighted
        area_row, area_col = ov.sum(axis=1), ov.sum(axis=0)
        rows = [r for r in range(1, ov.shape[0]) if area_row[r] > 0]
        total = sum(area_row[r] for r in rows)
        score = 0.0
        for r in rows:
            partner = 1 + int(np.argmax(ov[r, 1:])) if ov.shape[1] > 1 else 0
            inter = ov[r, partner] if partner else 0
            dice = 2 * inter / (area_row[r] + area_col[partner]) if inter else 0.0
            score += area_row[r] / total * dice
        return score

    return 0.5 * (one_side(overlap.T) + one_side(overlap))


def test_metric_helpers_on_hand_cases():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 6:10] = 2  # 16 px
    assert _object_f1(gt, gt) == 1.0 and _object_dice(gt, gt) == 1.0
    # prediction finds only object 1: TP 1, FN 1 -> F1 2/3; Dice: gt side 1/2, pred side 1 -> 3/4
    pred = np.where(gt == 1, 1, 0)
    assert _object_f1(pred, gt) == pytest.approx(2 / 3)
    assert _object_dice(pred, gt) == pytest.approx(0.75)
    # a prediction covering only 8 of object 1's 16 pixels is not > 50 %: FP 1, FN 2
    half = np.zeros_like(gt)
    half[0:2, 0:4] = 5
    assert _object_f1(half, gt) == 0.0
    # its Dice with object 1 is 2*8/(8+16) = 2/3; gt side weights 1/2 each (object 2 has 0)
    assert _object_dice(half, gt) == pytest.approx(0.5 * (0.5 * 2 / 3 + 2 / 3))
    # one predicted object covering both gt objects is one TP (not two), one FN
    merged = np.where(gt > 0, 1, 0)
    merged[4:6, 0:10] = 1
    assert _object_f1(merged, gt) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- helpers


def _square_classes(shape, top, left, size, width):
    """Hand oracle for one square: inner ring = square minus its ``width``-shrunk copy, outer
    ring = pixels outside whose Euclidean distance to the square is ``<= width``."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    bottom, right = top + size - 1, left + size - 1
    dy = np.maximum(np.maximum(top - rows, rows - bottom), 0)
    dx = np.maximum(np.maximum(left - cols, cols - right), 0)
    inside = (dy == 0) & (dx == 0)
    core = (rows >= top + width) & (rows <= bottom - width) & (cols >= left + width) & (cols <= right - width)
    outer = ~inside & (dy**2 + dx**2 <= width**2)
    expected = np.zeros(shape, dtype=np.uint8)
    expected[inside] = CONTOUR
    expected[core] = INTERIOR
    expected[outer] = CONTOUR
    return expected


def _naive_classes(instances: np.ndarray, width: int) -> np.ndarray:
    """Per-instance loop: contour_k = dilate(I_k) - erode(I_k); pixels outside the image are
    ignored (dilation: outside = not in set; erosion: outside = in set)."""
    footprint = disk(width)
    contour = np.zeros(instances.shape, dtype=bool)
    for k in np.unique(instances[instances > 0]):
        mask = instances == k
        grown = ndimage.binary_dilation(mask, structure=footprint)
        shrunk = ndimage.binary_erosion(mask, structure=footprint, border_value=1)
        contour |= grown & ~shrunk
    classes = np.where(instances > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    classes[contour] = CONTOUR
    return classes


def _synthetic_touching_glands(seed: int, shape=(192, 192), count=9) -> np.ndarray:
    """Ellipses that overlap; overlaps go to the nearest centre, so glands touch along seams."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(float)
    best = np.full(shape, np.inf)
    instances = np.zeros(shape, dtype=np.int64)
    for label in range(1, count + 1):
        cy, cx = rng.uniform(25, shape[0] - 25), rng.uniform(25, shape[1] - 25)
        ay, ax = rng.uniform(14, 30, size=2)
        angle = rng.uniform(0, np.pi)
        y, x = rows - cy, cols - cx
        u = (np.cos(angle) * x + np.sin(angle) * y) / ax
        v = (-np.sin(angle) * x + np.cos(angle) * y) / ay
        radius = u**2 + v**2
        take = (radius <= 1) & (radius < best)
        instances[take] = label
        best[take] = radius[take]
    # keep the largest piece of each label (a nearest-centre split can leave slivers)
    cleaned = np.zeros_like(instances)
    new = 0
    for label in range(1, count + 1):
        pieces, n = ndimage.label(instances == label)
        if n == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        if sizes.max() < 200:
            continue
        new += 1
        cleaned[pieces == 1 + int(np.argmax(sizes))] = new
    return cleaned


def _touching_pairs(instances: np.ndarray) -> int:
    """Number of 4-neighbour pixel pairs with two different positive labels."""
    pairs = 0
    for a, b in ((instances[1:], instances[:-1]), (instances[:, 1:], instances[:, :-1])):
        pairs += int(((a > 0) & (b > 0) & (a != b)).sum())
    return pairs


def _glas(index: int) -> np.ndarray:
    return np.array(Image.open(GLAS / f"testA_{index}_anno.png"))


# --------------------------------------------------------------------------- hand cases


def test_disk_is_euclidean():
    assert disk(0).tolist() == [[True]]
    assert disk(1).astype(int).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13  # 1 + 4 (axis 1) + 4 (axis 2) + 4 diagonals (1, 1)
    assert disk(3).sum() == 29  # Gauss circle problem, N(3) = 29


@pytest.mark.parametrize("width", [1, 2, 3])
def test_single_square_gives_ring_of_the_right_width(width):
    instances = np.zeros((24, 26), dtype=np.int32)
    instances[6:18, 7:19] = 4
    classes = instances_to_classes(instances, contour_width=width)
    assert classes.dtype == np.uint8 and classes.shape == instances.shape
    np.testing.assert_array_equal(classes, _square_classes(instances.shape, 6, 7, 12, width))


def test_single_square_width_one_by_hand():
    instances = np.zeros((6, 6), dtype=np.uint8)
    instances[1:5, 1:5] = 1
    expected = np.array(
        [
            [0, 2, 2, 2, 2, 0],
            [2, 2, 2, 2, 2, 2],
            [2, 2, 1, 1, 2, 2],
            [2, 2, 1, 1, 2, 2],
            [2, 2, 2, 2, 2, 2],
            [0, 2, 2, 2, 2, 0],
        ]
    )
    np.testing.assert_array_equal(instances_to_classes(instances, contour_width=1), expected)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_two_touching_squares_split_by_contour(width):
    instances = np.zeros((30, 40), dtype=np.int64)
    instances[5:25, 5:20] = 1
    instances[5:25, 20:35] = 2  # touches label 1 along the column boundary at 20
    classes = instances_to_classes(instances, contour_width=width)
    # the seam: width columns on each side of the boundary are contour on every row of the squares
    assert (classes[5:25, 20 - width : 20 + width] == CONTOUR).all()
    # and the column just beyond the seam is interior on the squares' middle rows
    assert (classes[5 + width : 25 - width, 20 - width - 1] == INTERIOR).all()
    assert (classes[5 + width : 25 - width, 20 + width] == INTERIOR).all()
    _, count = ndimage.label(classes == INTERIOR)
    assert count == 2
    recovered = classes_to_instances(classes, min_size=1, dilation=width)
    assert recovered.max() == 2
    assert _object_f1(recovered, instances) == 1.0
    # the seam is split between the two glands, not merged
    assert set(np.unique(recovered[15, 5:20])) == {1} and set(np.unique(recovered[15, 20:35])) == {2}


@pytest.mark.parametrize("width", [1, 2, 3])
def test_narrowest_gland_with_an_interior_is_2w_plus_1_wide(width):
    # The disk of radius w fits inside a band 2w + 1 wide (its centre line stays interior)
    # but not inside one 2w wide, so such a gland has no interior and cannot come back.
    for band, has_interior in ((2 * width, False), (2 * width + 1, True)):
        instances = np.zeros((30, 40), dtype=np.int64)
        instances[8 : 8 + band, 5:35] = 1
        interior = instances_to_classes(instances, contour_width=width) == INTERIOR
        assert interior.any() == has_interior
        if has_interior:
            assert (interior.sum(axis=0) <= 1).all()  # one pixel across
        recovered = classes_to_instances(instances_to_classes(instances, width), min_size=1, dilation=width)
        assert (recovered.max() == 1) == has_interior


def test_image_edge_is_not_a_boundary():
    instances = np.ones((5, 5), dtype=np.int64)
    np.testing.assert_array_equal(instances_to_classes(instances, 2), np.full((5, 5), INTERIOR))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    width=st.integers(1, 3),
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    labels=st.integers(1, 5),
    block=st.integers(1, 5),
)
def test_matches_naive_per_instance_morphology(seed, width, shape, labels, block):
    rng = np.random.default_rng(seed)
    # blocky random maps so that instances have interiors, touching neighbours and gaps
    coarse = rng.integers(0, labels + 1, size=(-(-shape[0] // block), -(-shape[1] // block)))
    instances = np.kron(coarse, np.ones((block, block), dtype=np.int64))[: shape[0], : shape[1]]
    np.testing.assert_array_equal(instances_to_classes(instances, width), _naive_classes(instances, width))


def test_batch_equals_per_image_and_torch_matches_numpy():
    maps = np.stack([_synthetic_touching_glands(seed, shape=(96, 96), count=5) for seed in (1, 2, 3)])
    batch = instances_to_classes(maps, 2)
    for image, classes in zip(maps, batch):
        np.testing.assert_array_equal(classes, instances_to_classes(image, 2))
    as_tensor = instances_to_classes(torch.from_numpy(maps), 2)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.uint8
    np.testing.assert_array_equal(as_tensor.numpy(), batch)

    back = classes_to_instances(batch, min_size=16, dilation=2)
    assert back.shape == maps.shape and back.dtype == np.int32
    for image, recovered in zip(batch, back):
        np.testing.assert_array_equal(recovered, classes_to_instances(image, min_size=16, dilation=2))
    back_tensor = classes_to_instances(torch.from_numpy(batch), min_size=16, dilation=2)
    assert isinstance(back_tensor, torch.Tensor) and back_tensor.dtype == torch.int32
    np.testing.assert_array_equal(back_tensor.numpy(), back)


# --------------------------------------------------------------------------- back to instances


def test_scores_are_reduced_by_argmax_over_the_class_dim():
    classes = instances_to_classes(_synthetic_touching_glands(5, shape=(96, 96), count=5), 2)
    generator = torch.Generator().manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(classes).long(), 3).permute(2, 0, 1).double()
    logits = 4.0 * onehot + 0.5 * torch.rand(onehot.shape, generator=generator, dtype=torch.float64)
    expected = classes_to_instances(classes)
    np.testing.assert_array_equal(classes_to_instances(logits.softmax(dim=0)).numpy(), expected)
    np.testing.assert_array_equal(classes_to_instances(logits.float().numpy()), expected)
    batched = classes_to_instances(torch.stack([logits, logits]))
    assert tuple(batched.shape) == (2, 96, 96)
    np.testing.assert_array_equal(batched[1].numpy(), expected)


def test_min_size_removes_small_components_and_relabels_consecutively():
    classes = np.zeros((20, 30), dtype=np.uint8)
    classes[1:4, 1:4] = INTERIOR  # 9 px
    classes[8:12, 10:15] = INTERIOR  # 20 px
    classes[14:19, 22:28] = INTERIOR  # 30 px
    recovered = classes_to_instances(classes, min_size=10, dilation=0)
    assert recovered[2, 2] == 0
    assert sorted(np.unique(recovered).tolist()) == [0, 1, 2]
    assert (recovered[8:12, 10:15] == 1).all() and (recovered[14:19, 22:28] == 2).all()
    assert classes_to_instances(classes, min_size=9, dilation=0).max() == 3


def test_dilation_grows_only_into_predicted_foreground_by_the_radius():
    classes = np.zeros((21, 21), dtype=np.uint8)
    classes[8:14, 7:14] = CONTOUR  # the disk of radius 3 around (10, 10) reaches past it
    classes[10, 10] = INTERIOR
    classes[10, 12] = BACKGROUND  # a hole the growth must not fill
    recovered = classes_to_instances(classes, min_size=1, dilation=3)
    rows, cols = np.mgrid[:21, :21]
    within = (rows - 10) ** 2 + (cols - 10) ** 2 <= 9
    expected = (within & (classes != BACKGROUND)).astype(np.int32)
    assert (within & (classes == BACKGROUND)).sum() > 1  # the restriction matters here
    np.testing.assert_array_equal(recovered, expected)


def test_empty_and_all_background_inputs():
    assert classes_to_instances(np.zeros((4, 5), dtype=np.int64)).tolist() == np.zeros((4, 5)).tolist()
    assert instances_to_classes(np.zeros((0, 3, 3), dtype=np.int64)).shape == (0, 3, 3)
    assert classes_to_instances(np.zeros((0, 3, 3), dtype=np.int64)).shape == (0, 3, 3)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("index", [1, 2, 3, 4])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_round_trip_on_glas_ground_truth(index, width):
    gt = _glas(index)
    recovered = classes_to_instances(instances_to_classes(gt, contour_width=width), dilation=width)
    assert object_f1(recovered, gt) >= 0.95 and _object_f1(recovered, gt) >= 0.95
    assert object_dice(recovered, gt) >= 0.9 and _object_dice(recovered, gt) >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("width", [1, 2, 3])
def test_round_trip_on_synthetic_touching_glands(seed, width):
    gt = _synthetic_touching_glands(seed)
    assert _touching_pairs(gt) > 0  # the map really has touching glands
    classes = instances_to_classes(gt, contour_width=width)
    recovered = classes_to_instances(classes, dilation=width)
    assert object_f1(recovered, gt) >= 0.95 and _object_f1(recovered, gt) >= 0.95
    assert object_dice(recovered, gt) >= 0.9 and _object_dice(recovered, gt) >= 0.9
    # without the contour seam, touching glands would merge: the test has teeth
    merged, _ = ndimage.label(gt > 0)
    assert object_f1(merged, gt) < 0.95 and _object_f1(merged, gt) < 0.95


@st.composite
def _separate_blobs(draw):
    """Discs and rectangles on a 64x64 canvas that never touch (8-neighbourhood)."""
    width = draw(st.integers(1, 3))
    instances = np.zeros((64, 64), dtype=np.int64)
    rows, cols = np.mgrid[:64, :64]
    count = 0
    for _ in range(draw(st.integers(1, 6))):
        cy, cx = draw(st.integers(0, 63)), draw(st.integers(0, 63))
        half = draw(st.integers(2 * width + 3, 2 * width + 8))
        if draw(st.booleans()):
            blob = (rows - cy) ** 2 + (cols - cx) ** 2 <= half**2
        else:
            blob = (abs(rows - cy) <= half) & (abs(cols - cx) <= draw(st.integers(2 * width + 3, 12)))
        halo = ndimage.binary_dilation(blob, structure=np.ones((3, 3), dtype=bool))
        if (instances[halo] > 0).any():
            continue  # would touch or overlap another blob
        # clipped by the edge a blob could be a sliver; keep only solid ones
        if ndimage.binary_erosion(blob, structure=disk(width), border_value=1).sum() < 16:
            continue
        count += 1
        instances[blob] = count
    return instances, width


@settings(max_examples=30, deadline=None)
@given(_separate_blobs())
def test_round_trip_recovers_the_number_of_separate_blobs(case):
    instances, width = case
    recovered = classes_to_instances(instances_to_classes(instances, width), dilation=width)
    assert recovered.max() == instances.max()
    assert len(np.unique(recovered)) == len(np.unique(instances))


# --------------------------------------------------------------------------- bad inputs


def test_instances_bad_inputs():
    with pytest.raises(TypeError, match="instances"):
        instances_to_classes(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="instances"):
        instances_to_classes(np.zeros((4, 4), dtype=bool))
    with pytest.raises(TypeError, match="instances"):
        instances_to_classes([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match=r"instances.*\(4,\)"):
        instances_to_classes(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="instances"):
        instances_to_classes(torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="instances.*negative"):
        instances_to_classes(np.array([[0, -1], [1, 2]]))
    with pytest.raises(ValueError, match="contour_width"):
        instances_to_classes(np.zeros((4, 4), dtype=np.int64), contour_width=0)
    with pytest.raises(TypeError, match="contour_width"):
        instances_to_classes(np.zeros((4, 4), dtype=np.int64), contour_width=1.5)
    # unsigned wider than uint8 is accepted (GlaS-style maps with > 255 glands)
    assert instances_to_classes(np.full((3, 3), 300, dtype=np.uint16)).tolist() == [[1] * 3] * 3


def test_pred_bad_inputs():
    with pytest.raises(ValueError, match="pred.*0..2"):
        classes_to_instances(np.array([[0, 1], [3, 2]]))
    with pytest.raises(ValueError, match="pred.*0..2"):
        classes_to_instances(torch.tensor([[0, -1], [1, 2]]))
    with pytest.raises(ValueError, match=r"pred.*3 classes.*\(2, 4, 4\)"):
        classes_to_instances(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"pred.*3 classes.*\(1, 4, 4, 4\)"):
        classes_to_instances(torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="pred"):
        classes_to_instances(torch.zeros(4, 4))  # float scores need a class dim
    with pytest.raises(ValueError, match="pred"):
        classes_to_instances(np.zeros((1, 1, 4, 4), dtype=np.int64))
    nan = torch.zeros(3, 4, 4)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pred.*finite"):
        classes_to_instances(nan)
    with pytest.raises(TypeError, match="pred"):
        classes_to_instances(np.zeros((4, 4), dtype=bool))
    with pytest.raises(TypeError, match="pred"):
        classes_to_instances(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="pred"):
        classes_to_instances("classes")
    ok = np.zeros((4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="min_size"):
        classes_to_instances(ok, min_size=-1)
    with pytest.raises(ValueError, match="dilation"):
        classes_to_instances(ok, dilation=-2)
    with pytest.raises(ValueError, match="connectivity"):
        classes_to_instances(ok, connectivity=3)
    with pytest.raises(TypeError, match="dilation"):
        classes_to_instances(ok, dilation=2.0)
