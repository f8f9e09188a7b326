"""Tests of the recipe's views: weak (geometry), strong (photometric only), CutMix, conversions.

Oracles: NumPy float64 arithmetic, coordinate-encoded images (every pixel knows where it came
from), the 8-element dihedral group, SciPy's Gaussian filter, naive per-sample loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from examples.dpfr_gland.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _gaussian_blur,
    cutmix,
    from_tensor,
    strong_from_weak,
    to_tensor,
    weak_view,
)
from examples.dpfr_gland.synthetic import SyntheticGlands

OFF = dict(jitter_p=0.0, stain_p=0.0, grayscale_p=0.0, blur_p=0.0, noise_std=0.0)


# ----------------------------------------------------------------------------- to_tensor / from_tensor


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), batch=st.booleans(), seed=st.integers(0, 2**31))
def test_to_tensor_matches_numpy_and_round_trips(h, w, batch, seed):
    shape = (2, h, w, 3) if batch else (h, w, 3)
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    x = to_tensor(image)
    expected = (image.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    expected = np.moveaxis(expected, -1, -3)
    assert x.dtype == torch.float32 and tuple(x.shape) == expected.shape
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)
    back = from_tensor(x)
    assert back.dtype == np.uint8 and np.array_equal(back, image)


def test_to_tensor_accepts_uint8_tensor_and_custom_stats():
    image = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)
    x = to_tensor(image, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(x.flatten().numpy(), [0.0, 128 / 255, 1.0], atol=1e-7)
    assert np.array_equal(from_tensor(x, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), image.numpy())


def test_from_tensor_clips_out_of_range():
    x = torch.full((3, 1, 1), 100.0)
    assert from_tensor(x).tolist() == [[[255, 255, 255]]]


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: to_tensor(np.zeros((4, 4, 3), np.float32)), TypeError, "image"),
        (lambda: to_tensor(np.zeros((4, 4, 4), np.uint8)), ValueError, "image"),
        (lambda: to_tensor(np.zeros((4, 4), np.uint8)), ValueError, "image"),
        (lambda: to_tensor(np.zeros((4, 4, 3), np.uint8), std=(1.0, 0.0, 1.0)), ValueError, "std"),
        (lambda: to_tensor(np.zeros((4, 4, 3), np.uint8), mean=(0.5, 0.5)), ValueError, "mean"),
        (lambda: from_tensor(torch.zeros(4, 2, 2)), ValueError, "tensor"),
        (lambda: from_tensor(torch.zeros(2, 2, dtype=torch.float32)), ValueError, "tensor"),
        (lambda: from_tensor(torch.zeros(3, 2, 2, dtype=torch.int64)), TypeError, "tensor"),
        (lambda: from_tensor(torch.full((3, 2, 2), float("nan"))), ValueError, "tensor"),
    ],
)
def test_conversion_bad_inputs(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ----------------------------------------------------------------------------- weak view


def _coordinate_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose R, G channels are the row and column and instances = 1 + row * w + col."""
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    instances = (1 + rows * w + cols).astype(np.int32)
    return image, instances


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    out = []
    for flipped in (a, a[:, ::-1]):
        out += [np.rot90(flipped, k, axes=(0, 1)) for k in range(4)]
    return out


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    out_h=st.integers(1, 8),
    out_w=st.integers(1, 8),
    seed=st.integers(0, 2**31),
)
def test_weak_view_is_a_dihedral_transform_of_a_crop_applied_to_both(h, w, out_h, out_w, seed):
    image, instances = _coordinate_image(h, w)
    view, labels = weak_view(image, instances, np.random.default_rng(seed), (out_h, out_w))
    assert view.shape == (out_h, out_w, 3) and labels.shape == (out_h, out_w) and labels.dtype == np.int32
    assert view.flags.c_contiguous and labels.flags.c_contiguous
    # the image and the label map were moved together: each pixel's colour encodes its label
    rows, cols = (labels - 1) // w, (labels - 1) % w
    assert np.array_equal(view[..., 0], rows) and np.array_equal(view[..., 1], cols)
    # the view is one of the 8 symmetries of one crop window of the original
    r0, c0 = rows.min(), cols.min()
    crop_h, crop_w = rows.max() - r0 + 1, cols.max() - c0 + 1
    window = instances[r0 : r0 + crop_h, c0 : c0 + crop_w]
    assert window.size == labels.size
    assert any(t.shape == labels.shape and np.array_equal(t, labels) for t in _dihedral(window))


def test_weak_view_reaches_all_eight_symmetries_and_is_deterministic():
    image, instances = _coordinate_image(4, 4)
    rng = np.random.default_rng(0)
    seen = {weak_view(image, instances, rng, 4)[1].tobytes() for _ in range(300)}
    assert len(seen) == 8
    a = weak_view(image, instances, np.random.default_rng(5), 3)
    b = weak_view(image, instances, np.random.default_rng(5), 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_weak_view_without_flips_and_rotations_is_a_plain_crop():
    image, instances = _coordinate_image(20, 30)
    rng = np.random.default_rng(1)
    windows = set()
    for _ in range(30):
        view, labels = weak_view(image, instances, rng, (5, 7), flip=False, rotate=False)
        r, c = view[0, 0, 0], view[0, 0, 1]
        assert np.array_equal(labels, instances[r : r + 5, c : c + 7])
        assert np.array_equal(view, image[r : r + 5, c : c + 7])
        windows.add((int(r), int(c)))
    assert len(windows) > 10  # the crop position is random


def test_weak_view_pads_small_images_with_fill_and_background():
    image, instances = _coordinate_image(5, 6)
    for seed in range(10):
        view, labels = weak_view(image, instances, np.random.default_rng(seed), (9, 8), fill=200)
        inside = labels > 0
        assert inside.sum() == 5 * 6  # the whole image is inside the canvas
        assert (view[~inside] == 200).all() and (labels[~inside] == 0).all()
        assert set(np.unique(labels[inside])) == set(range(1, 31))


def test_weak_view_keeps_labels_and_dtype():
    glands = SyntheticGlands("medium", size=64, seed=0)
    image, instances = glands.sample(0)
    instances = instances.astype(np.uint16)
    view, labels = weak_view(image, instances, np.random.default_rng(0), 48)
    assert labels.dtype == np.uint16
    assert set(np.unique(labels)) <= set(np.unique(instances))


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(image=np.zeros((8, 8, 3), np.float32)), TypeError, "image"),
        (dict(image=np.zeros((8, 8), np.uint8)), ValueError, "image"),
        (dict(instances=np.zeros((8, 7), np.int32)), ValueError, "instances"),
        (dict(instances=np.zeros((8, 8), np.float32)), TypeError, "instances"),
        (dict(rng=0), TypeError, "rng"),
        (dict(size=0), ValueError, "size"),
        (dict(size=(4, 0)), ValueError, r"size\[1\]"),
        (dict(size="4"), TypeError, "size"),
        (dict(fill=300), ValueError, "fill"),
    ],
)
def test_weak_view_bad_inputs(kwargs, error, name):
    args = dict(
        image=np.zeros((8, 8, 3), np.uint8), instances=np.zeros((8, 8), np.int32), rng=np.random.default_rng(0), size=4
    )
    args.update(kwargs)
    with pytest.raises(error, match=name):
        weak_view(**args)


# ----------------------------------------------------------------------------- strong view


def _glands_batch(n: int = 4, size: int = 48) -> torch.Tensor:
    images, _ = SyntheticGlands("medium", size=size, seed=3).generate(n)
    return to_tensor(images)


def test_strong_view_is_deterministic_by_generator_and_keeps_shape_dtype():
    weak = _glands_batch()
    a = strong_from_weak(weak, torch.Generator().manual_seed(1))
    b = strong_from_weak(weak, torch.Generator().manual_seed(1))
    c = strong_from_weak(weak, torch.Generator().manual_seed(2))
    assert a.shape == weak.shape and a.dtype == weak.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    n1 = strong_from_weak(weak, np.random.default_rng(4))
    n2 = strong_from_weak(weak, np.random.default_rng(4))
    assert torch.equal(n1, n2)
    for dtype in (torch.float64, torch.bfloat16):
        out = strong_from_weak(weak.to(dtype), torch.Generator().manual_seed(1))
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_strong_view_carries_no_graph():
    weak = _glands_batch(2).requires_grad_(True)
    assert not strong_from_weak(weak, torch.Generator().manual_seed(0)).requires_grad


def test_strong_view_with_everything_off_is_the_identity():
    weak = _glands_batch()
    out = strong_from_weak(weak, torch.Generator().manual_seed(0), **OFF)
    torch.testing.assert_close(out, weak, atol=1e-5, rtol=0)
    # the stain transform with zero jitter is colour deconvolution and back: the identity
    out = strong_from_weak(weak, torch.Generator().manual_seed(0), **{**OFF, "stain_p": 1.0, "stain": 0.0})
    torch.testing.assert_close(out, weak, atol=1e-4, rtol=0)


def test_strong_view_keeps_a_bright_spot_in_place():
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    images = np.full((8, 40, 40, 3), 20, dtype=np.uint8)
    centres = rng.integers(8, 32, size=(8, 2))
    yy, xx = np.mgrid[0:40, 0:40]
    for k, (cy, cx) in enumerate(centres):
        images[k][(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 250
    strong = from_tensor(strong_from_weak(to_tensor(images), gen)).astype(np.float64).mean(-1)
    for k, (cy, cx) in enumerate(centres):
        s = strong[k]
        bright = s > (s.max() + np.median(s)) / 2
        assert abs(yy[bright].mean() - cy) < 0.5 and abs(xx[bright].mean() - cx) < 0.5


def test_strong_view_is_pointwise_without_blur_and_noise():
    # same colour in -> same colour out, wherever the pixel is: nothing moved, nothing mixed
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(5, 3), dtype=np.uint8)
    images = palette[rng.integers(0, 5, size=(6, 20, 20))]
    strong = strong_from_weak(
        to_tensor(images),
        torch.Generator().manual_seed(0),
        jitter_p=1.0,
        stain_p=1.0,
        grayscale_p=0.5,
        blur_p=0.0,
        noise_std=0.0,
    )
    weak = to_tensor(images)
    assert not torch.allclose(strong, weak)
    for k in range(6):
        for colour in range(5):
            where = np.all(images[k] == palette[colour], axis=-1)
            if where.any():
                pixels = strong[k][:, torch.from_numpy(where)]
                torch.testing.assert_close(pixels, pixels[:, :1].expand_as(pixels), atol=1e-6, rtol=0)


def test_strong_view_correlates_with_the_weak_view_at_zero_shift():
    weak = _glands_batch(4, 64)
    strong = strong_from_weak(weak, torch.Generator().manual_seed(0))
    luma = torch.tensor([0.299, 0.587, 0.114])
    w = torch.einsum("bchw,c->bhw", weak, luma)[:, 4:-4, 4:-4]
    for shift in [(0, 0), (0, 1), (1, 0), (0, 2), (2, 2), (-1, 0), (0, -2)]:
        s = torch.einsum("bchw,c->bhw", strong, luma).roll(shift, dims=(1, 2))[:, 4:-4, 4:-4]
        r = [np.corrcoef(w[k].flatten(), s[k].flatten())[0, 1] for k in range(4)]
        if shift == (0, 0):
            best = r
            assert min(r) > 0.5
        else:
            assert all(b > x for b, x in zip(best, r)), (shift, best, r)


def test_strong_view_grayscale_is_luma():
    images = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    out = strong_from_weak(to_tensor(images), torch.Generator().manual_seed(0), **{**OFF, "grayscale_p": 1.0})
    rgb = (
        out.double() * torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None, None]
        + torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None]
    )
    expected = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    for c in range(3):
        np.testing.assert_allclose(rgb[:, c].numpy(), expected, atol=1e-5)


def test_strong_view_brightness_is_a_per_sample_factor_in_range():
    images = np.random.default_rng(0).integers(20, 200, size=(6, 8, 8, 3), dtype=np.uint8)
    out = strong_from_weak(
        to_tensor(images),
        torch.Generator().manual_seed(0),
        **{**OFF, "jitter_p": 1.0, "brightness": 0.2, "contrast": 0.0, "saturation": 0.0},
    )
    rgb = from_tensor(out).astype(np.float64)
    factors = rgb / images
    for k in range(6):
        f = np.median(factors[k])
        assert 0.8 - 0.02 <= f <= 1.2 + 0.02
        np.testing.assert_allclose(rgb[k], images[k] * f, atol=0.51 + 1e-9 + 0.5 * f)
    assert np.std([np.median(factors[k]) for k in range(6)]) > 0.01  # drawn per sample


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.6])
def test_gaussian_blur_matches_scipy(sigma):
    x = torch.rand(2, 3, 12, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    out = _gaussian_blur(x, torch.tensor([sigma, 0.0]), sigma)
    radius = int(np.ceil(3 * sigma))
    # torch's 'reflect' padding is scipy's 'mirror'; truncate so that scipy uses the same radius
    expected = ndimage.gaussian_filter(
        x[0].double().numpy(), sigma=(0, sigma, sigma), mode="mirror", truncate=(radius + 0.25) / sigma
    )
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    torch.testing.assert_close(out[1], x[1])  # sigma 0: unchanged


def test_strong_view_noise_level_is_bounded():
    weak = to_tensor(np.full((16, 32, 32, 3), 128, dtype=np.uint8))
    out = strong_from_weak(weak, torch.Generator().manual_seed(0), **{**OFF, "noise_std": 0.05})
    rgb = out * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = (rgb - 128 / 255).std(dim=(1, 2, 3))
    assert float(std.max()) < 0.055 and float(std.max()) > 0.01


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(images=torch.zeros(2, 4, 8, 8)), ValueError, "images"),
        (dict(images=torch.zeros(3, 8, 8)), ValueError, "images"),
        (dict(images=torch.zeros(2, 3, 8, 8, dtype=torch.int64)), TypeError, "images"),
        (dict(images=torch.full((1, 3, 4, 4), float("nan"))), ValueError, "images"),
        (dict(generator="seed"), TypeError, "generator"),
        (dict(jitter_p=1.5), ValueError, "jitter_p"),
        (dict(brightness=-0.1), ValueError, "brightness"),
        (dict(blur_sigma=(0.0, 1.0)), ValueError, "blur_sigma"),
        (dict(blur_sigma=(2.0, 1.0)), ValueError, "blur_sigma"),
        (dict(noise_std=float("inf")), ValueError, "noise_std"),
    ],
)
def test_strong_view_bad_inputs(kwargs, error, name):
    args = dict(images=torch.zeros(2, 3, 8, 8))
    args.update(kwargs)
    with pytest.raises(error, match=name):
        strong_from_weak(**args)


# ----------------------------------------------------------------------------- CutMix


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    if not mask.any():
        return None
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(2, 6),
    h=st.integers(4, 20),
    w=st.integers(4, 20),
    seed=st.integers(0, 2**31),
    low=st.floats(0.0, 1.0),
    width=st.floats(0.0, 1.0),
)
def test_cutmix_pastes_another_images_box_into_images_and_maps(b, h, w, seed, low, width):
    high = min(1.0, low + width)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=gen)
    probs = torch.rand(b, 4, h, w, generator=gen)
    labels = torch.randint(0, 255, (b, h, w), generator=gen)
    mask = torch.rand(b, h, w, generator=gen) > 0.5
    mixed, mixed_probs, mixed_labels, mixed_mask, box = cutmix(
        images, probs, labels, mask, generator=torch.Generator().manual_seed(seed), area=(low, high)
    )
    assert box.dtype == torch.bool and box.shape == (b, h, w)
    sources = []
    for i in range(b):  # naive per-sample oracle
        inside = box[i].numpy()
        r0, r1, c0, c1 = _box_of(inside) or (0, 0, 0, 0)
        full = np.zeros_like(inside)
        full[r0:r1, c0:c1] = True
        assert np.array_equal(inside, full)  # a rectangle
        # the sides are those of the image scaled by sqrt(area fraction), rounded (+-1 for float32)
        side_low, side_high = np.sqrt(low), np.sqrt(high)
        for extent, size in ((r1 - r0, h), (c1 - c0, w)):
            assert np.round(size * side_low) - 1 <= extent <= np.round(size * side_high) + 1
        b_inside = torch.from_numpy(inside)
        assert torch.equal(mixed[i][:, ~b_inside], images[i][:, ~b_inside])  # outside unchanged
        if inside.any():
            candidates = [j for j in range(b) if torch.equal(mixed[i][:, b_inside], images[j][:, b_inside])]
            assert len(candidates) == 1 and candidates[0] != i
            j = candidates[0]
            sources.append(j)
        else:
            j = i
        for original, result in ((probs, mixed_probs), (labels, mixed_labels), (mask, mixed_mask)):
            expected = torch.where(b_inside, original[j], original[i])
            assert result.dtype == original.dtype and torch.equal(result[i], expected)
    assert len(set(sources)) == len(sources)  # each sample is a source at most once


def test_cutmix_sources_form_a_derangement():
    b = 5
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 6, 6).contiguous()
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        mixed, box = cutmix(images, generator=gen, area=(0.5, 0.5))
        assert box.any(dim=(1, 2)).all()
        source = tuple(int(mixed[i, 0][box[i]][0]) for i in range(b))
        assert sorted(source) == list(range(b)) and all(s != i for i, s in enumerate(source))
        seen.add(source)
    assert len(seen) > 5


def test_cutmix_is_deterministic_by_generator():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = cutmix(images, generator=torch.Generator().manual_seed(3))
    b = cutmix(images, generator=torch.Generator().manual_seed(3))
    c = cutmix(images, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[-1], c[-1])
    n1 = cutmix(images, generator=np.random.default_rng(1))
    n2 = cutmix(images, generator=np.random.default_rng(1))
    assert all(torch.equal(x, y) for x, y in zip(n1, n2))


def test_cutmix_batch_of_one_and_p_zero_are_no_ops():
    images, labels = torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long)
    mixed, mixed_labels, box = cutmix(images, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mixed, images) and torch.equal(mixed_labels, labels)
    assert box.shape == (1, 8, 8) and not box.any()
    images = torch.rand(3, 3, 8, 8)
    mixed, box = cutmix(images, generator=torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(mixed, images) and not box.any()


def test_cutmix_passes_gradients_to_the_source_pixels():
    images = torch.rand(3, 2, 6, 6, requires_grad=True)
    mixed, box = cutmix(images, generator=torch.Generator().manual_seed(0), area=(0.3, 0.3))
    weights = torch.rand(3, 2, 6, 6)
    (mixed * weights).sum().backward()
    expected = torch.zeros(3, 2, 6, 6)  # naive scatter of d(sum)/d(pixel) through the paste
    for i in range(3):
        j = next(j for j in range(3) if j != i and torch.equal(mixed[i][:, box[i]], images[j][:, box[i]]))
        expected[i][:, ~box[i]] += weights[i][:, ~box[i]]
        expected[j][:, box[i]] += weights[i][:, box[i]]
    torch.testing.assert_close(images.grad, expected)


@pytest.mark.parametrize(
    "args, kwargs, error, name",
    [
        ((torch.zeros(2, 8, 8),), {}, ValueError, "images"),
        (("images",), {}, TypeError, "images"),
        ((torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 7)), {}, ValueError, r"maps\[0\]"),
        ((torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8)), {}, ValueError, r"maps\[0\]"),
        ((torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), torch.zeros(8, 8)), {}, ValueError, r"maps\[1\]"),
        ((torch.zeros(2, 3, 8, 8), np.zeros((2, 8, 8))), {}, TypeError, r"maps\[0\]"),
        ((torch.zeros(2, 3, 8, 8),), dict(area=(0.6, 0.2)), ValueError, "area"),
        ((torch.zeros(2, 3, 8, 8),), dict(area=(0.1, 1.5)), ValueError, "area"),
        ((torch.zeros(2, 3, 8, 8),), dict(p=1.5), ValueError, "p"),
        ((torch.zeros(2, 3, 8, 8),), dict(generator=3), TypeError, "generator"),
    ],
)
def test_cutmix_bad_inputs(args, kwargs, error, name):
    with pytest.raises(error, match=name):
        cutmix(*args, **kwargs)
