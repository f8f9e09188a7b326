"""Tiled prediction of images of any size (examples/dpfr_gland/large.py).

Oracles: a per-pixel model, whose tiled result must equal the untiled one exactly; a naive
full-image accumulator of the same windowed tiles for a model that looks at neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.dpfr_gland.augment import to_tensor
from examples.dpfr_gland.large import ArrayRegions, predict_large, window_weights
from examples.dpfr_gland.tiling import tile_starts as _starts


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@settings(max_examples=12, deadline=None)
@given(
    st.integers(20, 150),
    st.integers(20, 150),
    st.sampled_from([32, 64]),
    st.sampled_from(["gaussian", "cosine", "uniform"]),
)
def test_a_per_pixel_model_gives_the_untiled_result_exactly(h, w, tile, window):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, kernel_size=1)
    image = _image(h, w)
    probability = np.zeros((h, w), np.float32)
    classes = predict_large(model, image, tile=tile, overlap=tile // 4, window=window, probability_out=probability)
    with torch.no_grad():
        probs = model(to_tensor(image)[None])[0].softmax(0)
    np.testing.assert_array_equal(classes, probs.argmax(0).numpy())
    np.testing.assert_allclose(probability, probs.max(0).values.numpy(), rtol=1e-5, atol=1e-6)


def _naive(model, image, tile, overlap, window):
    """Every tile's windowed softmax summed into full-image arrays (no band, no streaming)."""
    h, w = image.shape[:2]
    stride = tile - overlap
    weights = window_weights(tile, tile, window).double()
    total, norm = torch.zeros(3, h, w, dtype=torch.float64), torch.zeros(h, w, dtype=torch.float64)
    x = to_tensor(image)
    with torch.no_grad():
        for y0 in _starts(h, tile, stride):
            for x0 in _starts(w, tile, stride):
                probs = model(x[None, :, y0 : y0 + tile, x0 : x0 + tile])[0].softmax(0).double()
                total[:, y0 : y0 + tile, x0 : x0 + tile] += probs * weights
                norm[y0 : y0 + tile, x0 : x0 + tile] += weights
    mean = total / norm
    return mean.argmax(0).numpy(), mean.max(0).values.numpy()


@pytest.mark.parametrize("window", ["gaussian", "cosine", "uniform"])
def test_streamed_bands_equal_a_full_image_accumulator(window):
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 5, padding=2)
    )
    image = _image(150, 210, seed=2)
    probability = np.zeros((150, 210), np.float32)
    classes = predict_large(model, image, tile=64, overlap=24, window=window, batch_size=3, probability_out=probability)
    expected_classes, expected_probability = _naive(model, image, 64, 24, window)
    np.testing.assert_allclose(probability, expected_probability, rtol=1e-5, atol=1e-6)
    assert (classes == expected_classes).mean() > 0.999  # arg-max ties may break differently in float32


def test_the_image_is_read_region_by_region_and_outputs_can_be_memory_mapped(tmp_path):
    image = _image(100, 260, seed=3)
    np.save(tmp_path / "image.npy", image)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")

    class Counting(ArrayRegions):
        regions = []

        def read_region(self, y, x, h, w):
            self.regions.append((h, w))
            return super().read_region(y, x, h, w)

    reader = Counting(mapped)
    out = np.lib.format.open_memmap(tmp_path / "classes.npy", mode="w+", dtype=np.uint8, shape=(100, 260))
    model = torch.nn.Conv2d(3, 3, kernel_size=1)
    assert predict_large(model, reader, tile=64, overlap=16, out=out) is out
    assert reader.regions and max(h for h, _ in reader.regions) <= 64 and max(w for _, w in reader.regions) <= 64
    np.testing.assert_array_equal(np.load(tmp_path / "classes.npy"), predict_large(model, image, tile=64, overlap=16))


def test_gaussian_blending_has_no_seam_where_a_uniform_average_has_one():
    # a model that sees where its tile begins (its output depends on the position in the tile):
    # at a tile border a uniform average jumps, the Gaussian window fades one tile into the next
    class Positional(torch.nn.Module):
        def forward(self, x):
            ramp = torch.linspace(-2, 2, x.shape[-1])
            return torch.stack(
                [ramp.expand(x.shape[-2], -1), torch.zeros(x.shape[-2:]), -ramp.expand(x.shape[-2], -1)]
            )[None].repeat(x.shape[0], 1, 1, 1)

    image = _image(64, 256)
    jumps = {}
    for window in ("uniform", "gaussian"):
        p = np.zeros((64, 256), np.float32)
        predict_large(Positional(), image, tile=64, overlap=32, window=window, probability_out=p)
        jumps[window] = float(np.abs(np.diff(p[32], axis=0)).max())
    assert jumps["gaussian"] < 0.5 * jumps["uniform"]


def test_bad_inputs_are_named():
    model = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="tile must be a multiple of 32"):
        predict_large(model, _image(40, 40), tile=40, overlap=8)
    with pytest.raises(ValueError, match="overlap"):
        predict_large(model, _image(40, 40), tile=32, overlap=32)
    with pytest.raises(ValueError, match=r"out must have shape \(40, 40\)"):
        predict_large(model, _image(40, 40), tile=32, overlap=8, out=np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="read_region"):
        predict_large(model, [[1, 2]], tile=32, overlap=8)
    with pytest.raises(ValueError, match="window must be one of"):
        window_weights(8, 8, "box")


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 50),
    st.integers(3, 90),
    st.sampled_from([1, 2]),
    st.sampled_from([0, 1, 2, 3]),
    st.sampled_from([0, 16]),
)
def test_strips_give_the_untiled_instances_glands_straddling_every_border(
    seed, strip, connectivity, dilation, min_size
):
    from densessl.metrics import object_dice, object_f1
    from examples.dpfr_gland.large import instances_by_strips
    from examples.dpfr_gland.synthetic import SyntheticGlands
    from examples.dpfr_gland.targets import classes_to_instances, instances_to_classes

    _, truth = SyntheticGlands("hard", size=(150, 120), seed=seed).sample(0)  # crowded, touching glands
    classes = instances_to_classes(truth, contour_width=2).astype(np.uint8)
    expected = classes_to_instances(classes, min_size=min_size, dilation=dilation, connectivity=connectivity)
    got = instances_by_strips(classes, min_size=min_size, dilation=dilation, connectivity=connectivity, strip=strip)
    assert got.dtype == np.int32 and got.shape == expected.shape
    assert object_f1(got, expected) == 1.0 and object_dice(got, expected) >= 0.99
    # the same numbering (scan order of first pixels), the same pixels but for equal-distance ties
    assert got.max() == expected.max() and (got == expected).mean() > 0.999


def test_strips_read_a_memory_mapped_class_map_and_write_a_memory_mapped_result(tmp_path):
    from examples.dpfr_gland.large import instances_by_strips
    from examples.dpfr_gland.synthetic import SyntheticGlands
    from examples.dpfr_gland.targets import classes_to_instances, instances_to_classes

    _, truth = SyntheticGlands("medium", size=(300, 200), seed=1).sample(0)
    classes = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.uint8, shape=truth.shape)
    classes[:] = instances_to_classes(truth, contour_width=2)
    out = np.lib.format.open_memmap(tmp_path / "i.npy", mode="w+", dtype=np.int32, shape=truth.shape)
    assert instances_by_strips(classes, strip=37, out=out) is out
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), classes_to_instances(np.asarray(classes)))


def test_a_memory_mapped_tiff_and_an_openslide_style_slide_are_read_by_region(tmp_path):
    import tifffile
    from PIL import Image

    from examples.dpfr_gland.large import SlideRegions, tiff_regions

    image = _image(90, 130, seed=7)
    tifffile.imwrite(tmp_path / "slide.tif", image)  # uncompressed, contiguous: memory-mappable
    model = torch.nn.Conv2d(3, 3, kernel_size=1)
    expected = predict_large(model, image, tile=64, overlap=16)
    np.testing.assert_array_equal(
        predict_large(model, tiff_regions(str(tmp_path / "slide.tif")), tile=64, overlap=16), expected
    )

    class Slide:  # the OpenSlide calling convention: (x, y) location, level, (w, h) size, RGBA out
        dimensions = (130, 90)

        def read_region(self, location, level, size):
            (x, y), (w, h) = location, size
            rgba = np.dstack([image[y : y + h, x : x + w], np.full((h, w), 255, np.uint8)])
            return Image.fromarray(rgba, "RGBA")

    np.testing.assert_array_equal(predict_large(model, SlideRegions(Slide()), tile=64, overlap=16), expected)
    tifffile.imwrite(tmp_path / "packed.tif", image, compression="zlib")
    with pytest.raises(ValueError, match="cannot be memory-mapped"):
        tiff_regions(str(tmp_path / "packed.tif"))
