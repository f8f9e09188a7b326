"""The network's scale (examples/dpfr_gland/scale.py) end to end, split files, and seams.

Oracles: block means for area averaging at an integer factor; hand-made label maps for nearest
resampling; a colour-coded picture and a per-pixel "perfect" model, whose instances at any scale
must score 1 on the native grid; the untiled image for the probabilities' round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from examples.dpfr_gland.augment import to_tensor
from examples.dpfr_gland.batches import build_datasets, build_test_sets, split_part
from examples.dpfr_gland.config import TrainConfig
from examples.dpfr_gland.data import write_synthetic
from examples.dpfr_gland.evaluate import evaluate, predict, predict_instances, predict_probabilities
from examples.dpfr_gland.large import predict_large
from examples.dpfr_gland.scale import ScaledDataset, image_mpp, resize_image, resize_labels, scale_for, scaled_size
from examples.dpfr_gland.targets import instances_to_classes


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 20), w=st.integers(1, 20), factor=st.sampled_from([2, 3, 4]), seed=st.integers(0, 99))
def test_shrinking_by_an_integer_factor_is_the_block_mean(h, w, factor, seed):
    image = np.random.default_rng(seed).integers(0, 256, (h * factor, w * factor, 3), dtype=np.uint8)
    small = resize_image(image, (h, w))
    blocks = image.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
    assert small.shape == (h, w, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(float) - blocks).max() <= 1.0  # Pillow rounds the box mean


def test_label_maps_are_moved_never_blended():
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0], [3, 3, 0, 0]])
    assert resize_labels(labels, (2, 2)).tolist() == [[1, 2], [3, 0]]
    big = resize_labels(labels, (8, 8))
    assert set(np.unique(big)) == {0, 1, 2, 3} and big[0, 0] == 1 and big[7, 7] == 0
    assert (resize_labels(big, (4, 4)) == labels).all()  # enlarge then shrink: the same map


def test_a_scale_that_leaves_less_than_the_stride_is_a_named_error():
    with pytest.raises(ValueError, match=r"scale=0.1 leaves image of 200x300 px at 20x30 px, smaller than 32"):
        scaled_size(200, 300, 0.1, minimum=32)
    data = ScaledDataset([(np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.int32))], 0.2, minimum=32)
    with pytest.raises(ValueError, match="image 0 of 100x100 px at 20x20 px"):
        data[0]
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            scaled_size(10, 10, bad)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        TrainConfig(scale=0.0)


def test_mpp_is_read_from_tiff_tags_and_sets_the_scale(tmp_path):
    from PIL import Image

    path = tmp_path / "a.tif"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, resolution=20000, resolution_unit="cm")  # 0.5 um/px
    assert image_mpp(path) == pytest.approx(0.5)
    assert scale_for(1.0, target_mpp=1.25, mpp=image_mpp(path)) == pytest.approx(0.4)
    plain = tmp_path / "b.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(plain)
    assert image_mpp(plain) is None and scale_for(0.4, target_mpp=1.25, mpp=image_mpp(plain)) == 0.4


def _pointwise(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, classes, 1))


def test_probabilities_come_back_on_the_native_grid_and_scale_one_is_plain_predict():
    image = np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    model = _pointwise()
    plain = predict(model, to_tensor(image), tile=64, overlap=16)
    torch.testing.assert_close(predict_probabilities(model, image, scale=1.0, tile=64, overlap=16), plain)
    half = predict_probabilities(model, image, scale=0.5, tile=64, overlap=16)
    assert half.shape == (3, 90, 130)
    torch.testing.assert_close(half.sum(0), torch.ones(90, 130))
    # a flat image is flat at any scale: the round trip adds nothing
    flat = np.full((90, 130, 3), 120, np.uint8)
    torch.testing.assert_close(
        predict_probabilities(model, flat, scale=0.37, tile=32),
        predict(model, to_tensor(flat), tile=32),
        atol=1e-5,
        rtol=1e-5,
    )


class _ColourClasses(nn.Module):
    """A per-pixel 'perfect' model for colour-coded pictures: red = background, green = interior,
    blue = contour (the logits are the normalised channels, scaled)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * x


def _coded_sample(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    instances = np.zeros((size, size), np.int32)
    label = 0
    for top in range(8, size - 60, 70):
        for left in range(8, size - 60, 70):
            label += 1
            h, w = rng.integers(40, 60, size=2)
            instances[top : top + h, left : left + w] = label
    classes = instances_to_classes(instances, contour_width=4)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    return colours[classes], instances


def test_instances_at_half_scale_score_on_the_native_grid_against_the_native_labels():
    image, instances = _coded_sample()
    model = _ColourClasses()
    # contour 4 native px = 2 network px; min_size and dilation are given at the network's scale
    pred = predict_instances(model, image, tile=64, scale=0.5, min_size=4, dilation=2)
    assert pred.shape == instances.shape
    scores = evaluate(model, [(image, instances)], tile=64, scale=0.5, min_size=4, dilation=2)
    assert (
        scores["pooled_f1"] == 1.0 and scores["pooled_dice"] > 0.97 and scores["pooled_hausdorff"] <= 3.0
    )  # about a network pixel (2 native)
    # the same glands scored at the scale (not mapped back) would be a different, smaller grid
    assert len(np.unique(pred)) == len(np.unique(instances))


def test_the_out_of_core_path_maps_back_like_the_in_memory_one():
    image, _ = _coded_sample(200, seed=1)
    model = _ColourClasses()
    in_memory = predict_probabilities(model, image, scale=0.5, tile=64).argmax(0).numpy()
    banded = predict_large(model, image, tile=64, overlap=16, scale=0.5)
    assert banded.shape == in_memory.shape
    assert (banded == in_memory).mean() > 0.97  # nearest (bands) against bilinear (in memory): borders only


def test_tile_borders_disagree_no_more_than_the_inside_of_tiles():
    """Seams: with the Gaussian window, the change of the prediction from one column to the next
    across a tile border is no larger than inside tiles; a plain average shows the border."""
    torch.manual_seed(3)
    # zero padding: every tile's edge pixels see a different context than their neighbours in the
    # next tile, which is what makes seams
    model = nn.Sequential(
        nn.Conv2d(3, 16, 7, padding=3),
        nn.ReLU(),
        nn.Conv2d(16, 16, 7, padding=3),
        nn.ReLU(),
        nn.Conv2d(16, 3, 7, padding=3),
    )
    from scipy import ndimage

    # a smooth picture, so that the prediction changes slowly inside tiles and a seam would stand out
    noise = np.random.default_rng(4).normal(size=(3, 64, 448))
    image = torch.as_tensor(ndimage.gaussian_filter(noise, sigma=(0, 6, 6)) * 10, dtype=torch.float32)
    tile, overlap = 64, 32
    starts = list(range(0, 448 - tile + 1, tile - overlap))
    borders = sorted({s for s in starts[1:]} | {s + tile for s in starts[:-1]})
    excess = {}
    for window in ("gaussian", "uniform"):
        probs = predict(model, image, tile=tile, overlap=overlap, window=window)
        step = (probs[:, :, 1:] - probs[:, :, :-1]).abs().amax(dim=0).mean(dim=0)  # column c -> c + 1
        across = torch.stack([step[b - 1] for b in borders]).mean()
        inside = torch.cat([step[c - 1 : c] for c in range(8, 440) if all(abs(c - b) > 3 for b in borders)]).mean()
        excess[window] = float(across - inside)
    # no larger than inside to within 0.002 of probability: the window's edge weight is about 4e-4
    # of its centre's, never zero, so a tile's padded edge still leaks a trace (measured: excess
    # 0.0010 with the Gaussian window, 0.0083 with a plain average)
    assert excess["gaussian"] <= 2e-3, excess
    assert excess["gaussian"] < 0.2 * excess["uniform"], excess  # the test can fail: plain averages seam


def test_training_data_are_at_the_scale_and_test_data_native():
    config = TrainConfig(synthetic_size=128, synthetic_train=2, synthetic_test=1, scale=0.5, crop_size=32)
    train, test = build_datasets(config)
    assert train[0][0].shape == (64, 64, 3) and train[0][1].shape == (64, 64)
    assert test[0][0].shape == (128, 128, 3)
    assert build_test_sets(config)["test"][0][0].shape == (128, 128, 3)


def test_a_split_file_picks_images_by_name_from_every_reader_split(tmp_path):
    root = write_synthetic(tmp_path / "glas", "glas", 6, preset="easy", size=48)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"_note": "skipped", "fit": ["train_3", "testB_1"], "check": ["testA_2", "train_1"]}))
    config = TrainConfig(
        dataset="glas", data=str(root), split_file=str(split), train_split="fit", test_split="check", crop_size=32
    )
    train, test = build_datasets(config)
    assert train.names == ["train_3", "testB_1"] and test.names == ["testA_2", "train_1"]
    assert list(build_test_sets(config)) == ["check"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fit": ["train_3", "train_99", "nope"]}))
    with pytest.raises(ValueError, match="part 'fit' names 2 image\\(s\\) that .* does not hold: train_99, nope"):
        split_part(TrainConfig(dataset="glas", data=str(root), split_file=str(bad)), "fit")
    with pytest.raises(ValueError, match="has no part 'test'; it has 'fit', 'check'"):
        split_part(config, "test")
    with pytest.raises(FileNotFoundError, match="split_file 'missing'"):
        TrainConfig(dataset="glas", data=str(root), split_file="missing")


def test_the_shipped_glas_split_covers_every_image_once_and_keeps_patients_apart():
    import csv
    from pathlib import Path

    from examples.dpfr_gland.config import resolve_split_file

    parts = {
        k: v for k, v in json.loads(resolve_split_file("glas_train85").read_text()).items() if not k.startswith("_")
    }
    names = [n for part in parts.values() for n in part]
    assert sorted(names, key=lambda n: int(n.split("_")[1])) == [f"train_{i}" for i in range(1, 86)]
    assert {k: len(v) for k, v in parts.items()} == {"train": 52, "validation": 12, "test": 21}
    grades = Path(__file__).resolve().parents[2] / "shared" / "data" / "glas-train" / "Grade.csv"
    if not grades.is_file():
        pytest.skip(f"patients: {grades} is absent (the GlaS images are not part of the project)")
    patient = {row[0]: row[1] for row in list(csv.reader(grades.open()))[1:]}
    owners = [{patient[n] for n in part} for part in parts.values()]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1 :])


def test_the_generator_writes_glands_of_glas_size_at_glas_image_size(tmp_path):
    from examples.dpfr_gland.data import GlaSDataset, main

    def median_area(root):
        areas = []
        for image, instances in GlaSDataset(root, "train"):  # noqa: B007 (the last image's shape is returned)
            counts = np.bincount(instances.ravel())[1:]
            areas += counts[counts > 0].tolist()
        return float(np.median(areas)), image.shape

    plain, _ = median_area(write_synthetic(tmp_path / "plain", "glas", 6, preset="medium", size=(261, 388)))
    assert (
        main(
            [
                "synth",
                "--out",
                str(tmp_path / "big"),
                "--layout",
                "glas",
                "--num",
                "6",
                "--shape",
                "522x775",
                "--zoom",
                "2",
            ]
        )
        == 0
    )
    big, shape = median_area(tmp_path / "big")
    assert shape == (522, 775, 3)
    assert 3.0 < big / plain < 5.0  # twice the size: about four times the area (the same glands, enlarged)
    with pytest.raises(ValueError, match="zoom must be a number >= 1"):
        write_synthetic(tmp_path / "bad", "glas", 2, zoom=0.5)
