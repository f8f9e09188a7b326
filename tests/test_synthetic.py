"""Synthetic gland generator (examples/dpfr_gland/synthetic.py).

Oracles: repeated and reordered draws (determinism), naive per-pixel loops and per-instance
dilations from scipy (adjacency, boundaries), Beer-Lambert computed with ``math.exp`` per
channel, and a distance transform for the lumen/ring/stroma brightness order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from examples.dpfr_gland.synthetic import (
    PRESETS,
    GlandPreset,
    SyntheticGlands,
    contact_sheet,
    draw_outlines,
    instance_boundaries,
    stain_mix,
)


def _touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of distinct instances with 4-adjacent pixels, by dilating each instance in turn."""
    pairs = set()
    cross = ndimage.generate_binary_structure(2, 1)
    for label in range(1, int(instances.max()) + 1):
        ring = ndimage.binary_dilation(instances == label, structure=cross) & (instances != label)
        pairs |= {(label, int(other)) for other in np.unique(instances[ring]) if other > label}
    return pairs


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_seed_same_arrays_in_any_order(preset):
    first = SyntheticGlands(preset, size=64, seed=7)
    later = first.draw(2)
    fresh = SyntheticGlands(preset, size=64, seed=7)
    again = fresh.draw(2)  # drawn first here, third above
    for a, b in zip(later, again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other_seed = SyntheticGlands(preset, size=64, seed=8).draw(2)
    other_index = fresh.draw(3)
    assert not np.array_equal(later.image, other_seed.image)
    assert not np.array_equal(later.image, other_index.image)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("size", [64, (48, 80)])
def test_contracts_and_contiguous_instance_labels(preset, size):
    glands = SyntheticGlands(preset, size=size, seed=0)
    shape = (size, size) if isinstance(size, int) else size
    for index in range(3):
        sample = glands.draw(index)
        assert sample.image.shape == (*shape, 3) and sample.image.dtype == np.uint8
        assert sample.instances.shape == shape and sample.instances.dtype == np.int32
        assert sample.distractors.shape == shape and sample.distractors.dtype == bool
        assert sample.grade in ("benign", "malignant")
        n = int(sample.instances.max())
        assert n >= 1
        areas = np.bincount(sample.instances.ravel(), minlength=n + 1)
        assert len(areas) == n + 1 and (areas[1:] >= glands.min_area).all()  # 1..n, none empty
        assert sample.image.std() > 10  # not a flat image


def test_min_area_drops_small_glands_and_keeps_labels_contiguous():
    for min_area in (40, 1500):
        glands = SyntheticGlands("hard", size=128, seed=5, min_area=min_area)
        for index in range(4):
            instances = glands.sample(index)[1]
            areas = np.bincount(instances.ravel())
            assert (areas[1:] >= min_area).all()
            assert len(areas) == int(instances.max()) + 1


def test_generate_stacks_the_samples():
    glands = SyntheticGlands("medium", size=48, seed=2)
    images, instances = glands.generate(3, start=5)
    assert images.shape == (3, 48, 48, 3) and instances.shape == (3, 48, 48)
    for i in range(3):
        image, labels = glands.sample(5 + i)
        np.testing.assert_array_equal(images[i], image)
        np.testing.assert_array_equal(instances[i], labels)


def test_hard_preset_has_touching_glands_and_easy_does_not():
    hard = [_touching_pairs(SyntheticGlands("hard", size=256, seed=0).sample(i)[1]) for i in range(6)]
    easy = [_touching_pairs(SyntheticGlands("easy", size=256, seed=0).sample(i)[1]) for i in range(6)]
    assert sum(bool(p) for p in hard) >= 5
    assert not any(easy)


def test_presets_grow_harder_from_easy_to_medium_to_hard():
    """Over the same indices: more glands, more touching pairs, more distractors, and a
    larger share of the image covered by glands, strictly from easy to medium to hard."""
    stats = []
    for preset in ("easy", "medium", "hard"):
        samples = [SyntheticGlands(preset, size=192, seed=3).draw(i) for i in range(6)]
        stats.append(
            (
                np.mean([len(np.unique(s.instances[s.instances > 0])) for s in samples]),
                np.mean([len(_touching_pairs(s.instances)) for s in samples]),
                np.mean([ndimage.label(s.distractors)[1] for s in samples]),
                np.mean([(s.instances > 0).mean() for s in samples]),
            )
        )
    for easier, harder in zip(stats, stats[1:]):
        assert all(a < b for a, b in zip(easier, harder)), stats


def test_distractors_are_present_and_never_labelled():
    found = 0
    for index in range(5):
        sample = SyntheticGlands("hard", size=256, seed=1).draw(index)
        found += int(sample.distractors.sum())
        assert (sample.instances[sample.distractors] == 0).all()
        # Distractors sit in the stroma, not against a gland: a pixel of clearance at least.
        near = ndimage.binary_dilation(sample.distractors)
        assert (sample.instances[near] == 0).all()
    assert found > 500


def test_lumen_is_pale_and_nuclear_ring_dark():
    """In benign easy images: lumen core brighter than stroma, which is brighter than the outer ring."""
    glands = SyntheticGlands("easy", size=256, seed=0)
    checked = 0
    for index in range(8):
        sample = glands.draw(index)
        if sample.grade != "benign":
            continue
        brightness = sample.image.astype(np.float64).mean(axis=2)
        inside = ndimage.distance_transform_edt(sample.instances > 0)
        outside = ndimage.distance_transform_edt(sample.instances == 0)
        lumen = inside > 14
        ring = (inside > 0) & (inside <= 4)
        stroma = (outside > 6) & ~ndimage.binary_dilation(sample.distractors, iterations=3)
        if lumen.sum() < 20:
            continue
        assert brightness[lumen].mean() > brightness[stroma].mean() + 20
        assert brightness[ring].mean() < brightness[stroma].mean() - 10
        checked += 1
    assert checked >= 3


def test_stain_mix_matches_beer_lambert_per_channel():
    rng = np.random.default_rng(0)
    c_h, c_e = rng.uniform(0, 2, (3, 4)), rng.uniform(0, 2, (3, 4))
    h, e = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    got = stain_mix(c_h, c_e, h, e)
    for i in range(3):
        for j in range(4):
            for k in range(3):
                assert got[i, j, k] == pytest.approx(255 * math.exp(-(c_h[i, j] * h[k] + c_e[i, j] * e[k])), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(arrays(np.int32, st.tuples(st.integers(1, 7), st.integers(1, 7)), elements=st.integers(0, 3)))
def test_instance_boundaries_matches_naive_loop(labels):
    got = instance_boundaries(labels)
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            neighbours = [
                labels[v, u] for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)) if 0 <= v < h and 0 <= u < w
            ]
            expected = labels[y, x] > 0 and any(n != labels[y, x] for n in neighbours)
            assert got[y, x] == expected


def test_outlines_only_touch_instance_pixels():
    sample = SyntheticGlands("medium", size=96, seed=4).draw(0)
    outlined = draw_outlines(sample.image, sample.instances)
    changed = (outlined != sample.image).any(axis=2)
    assert changed.any()
    assert (sample.instances[changed] > 0).all()
    sheet = contact_sheet([[sample]])
    assert sheet.shape == (96 + 8, 2 * 96 + 8, 3)
    with pytest.raises(ValueError, match="instances"):
        draw_outlines(sample.image, sample.instances[:-1])
    with pytest.raises(ValueError, match="image"):
        draw_outlines(sample.image[..., 0], sample.instances)
    with pytest.raises(ValueError, match="c_e"):
        stain_mix(np.zeros((2, 2)), np.zeros((2, 3)))


def test_constructor_and_index_errors():
    with pytest.raises(ValueError, match="preset"):
        SyntheticGlands("impossible")
    with pytest.raises(TypeError, match="preset"):
        SyntheticGlands(3)
    with pytest.raises(ValueError, match="size"):
        SyntheticGlands("easy", size=16)
    with pytest.raises(TypeError, match="size"):
        SyntheticGlands("easy", size=64.0)
    with pytest.raises(ValueError, match="seed"):
        SyntheticGlands("easy", seed=-1)
    with pytest.raises(TypeError, match="seed"):
        SyntheticGlands("easy", seed=1.5)
    glands = SyntheticGlands("easy", size=64)
    with pytest.raises(ValueError, match="index"):
        glands.sample(-1)
    with pytest.raises(TypeError, match="index"):
        glands.sample(1.0)
    with pytest.raises(ValueError, match="n"):
        glands.generate(0)


def test_custom_preset_is_used():
    crowded = GlandPreset(
        glands=(12, 12),
        radius=(20, 22),
        irregularity=0.0,
        touching=0.9,
        gap=0,
        distractors=(0, 0),
        contrast=1.0,
        stain_jitter=0.0,
        blur=0.5,
        noise=0.0,
        malignant=0.0,
    )
    sample = SyntheticGlands(crowded, size=128, seed=0).draw(0)
    assert not sample.distractors.any()
    assert sample.grade == "benign"
    assert sample.instances.max() >= 2
