"""The predict command: any folder of images in, instance / class / overlay maps out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from examples.dpfr_gland import predict as P
from examples.dpfr_gland.config import TrainConfig
from examples.dpfr_gland.data import read_instances, write_image
from examples.dpfr_gland.evaluate import load_checkpoint_model, predict_instances
from examples.dpfr_gland.large import predict_large
from examples.dpfr_gland.loop import train
from examples.dpfr_gland.synthetic import SyntheticGlands
from examples.dpfr_gland.targets import classes_to_instances


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        method="supervised",
        synthetic_size=64,
        synthetic_train=4,
        synthetic_test=1,
        crop_size=64,
        iterations=2,
        label_ratio="1/2",
        eval_pictures=0,
        eval_tile=64,
        eval_overlap=16,
        log_every=1,
    )
    train(config, out, progress=False)
    return out


def _images(folder):
    glands = SyntheticGlands("medium", size=(70, 90), seed=3)
    image = glands.sample(0)[0]
    write_image(folder / "b_10.png", image)
    write_image(folder / "b_2.png", image)
    Image.fromarray(image[..., 0]).save(folder / "grey.jpg")  # grey JPEG -> RGB
    Image.fromarray(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])).save(folder / "rgba.tif")
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return image


@pytest.mark.slow
def test_predict_writes_three_maps_per_image_that_match_predict_instances(run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    image = _images(images)
    assert (
        P.main(
            [
                "--weights",
                str(run / "model.pt"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    for stem in ("b_2", "b_10", "grey", "rgba"):
        for kind in ("instances", "classes", "overlay"):
            assert (tmp_path / "out" / f"{stem}_{kind}.png").is_file(), (stem, kind)
    saved = Image.open(tmp_path / "out" / "b_2_instances.png")
    assert saved.mode.startswith("I")  # 16 bits per pixel, whatever the count
    model, config = load_checkpoint_model(run / "model.pt")
    classes = predict_large(model, image, tile=config["eval_tile"], overlap=config["eval_overlap"])
    expected = classes_to_instances(classes, min_size=config["min_size"], dilation=config["contour_width"])
    np.testing.assert_array_equal(read_instances(tmp_path / "out" / "b_2_instances.png"), expected)
    # the maps are the ones evaluation scores (one sliding window, one rule)
    scored = predict_instances(
        model,
        image,
        tile=config["eval_tile"],
        overlap=config["eval_overlap"],
        min_size=config["min_size"],
        dilation=config["contour_width"],
    )
    np.testing.assert_array_equal(read_instances(tmp_path / "out" / "b_2_instances.png"), scored)
    classes = np.asarray(Image.open(tmp_path / "out" / "b_2_classes.png"))
    assert classes.shape == image.shape[:2] and set(np.unique(classes)) <= {0, 1, 2}
    assert np.asarray(Image.open(tmp_path / "out" / "b_2_overlay.png")).shape == image.shape
    assert "4 image(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_bad_files_are_named_and_skipped_or_refused(run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _images(images)
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit):
        P.main(
            ["--weights", str(run / "model.pt"), "--images", str(images), "--out", str(tmp_path / "a"), "--no-progress"]
        )
    assert "broken.png" in capsys.readouterr().err
    assert (
        P.main(
            [
                "--weights",
                str(run / "model.pt"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "b"),
                "--on-error",
                "skip",
                "--no-progress",
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert "skipped" in captured.err and "broken.png" in captured.out
    assert len(list((tmp_path / "b").glob("*_instances.png"))) == 4
    # a single file, and the resume checkpoint's teacher-less student
    assert (
        P.main(
            [
                "--weights",
                str(run / "checkpoint.pt"),
                "--images",
                str(images / "b_2.png"),
                "--out",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 0
    )


def test_more_than_65535_glands_go_to_a_32_bit_tiff(tmp_path, monkeypatch):
    many = np.arange(70_000, dtype=np.int32).reshape(280, 250)
    monkeypatch.setattr(P, "instances_by_strips", lambda *a, **k: many)
    write_image(tmp_path / "x.png", np.zeros((280, 250, 3), np.uint8))
    result = P.predict_file(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.png", tmp_path / "out", tile=64)
    assert result["instances"].endswith("x_instances.tif") and result["glands"] == 69_999
    np.testing.assert_array_equal(read_instances(result["instances"]), many)


def test_inference_export_refuses_the_teacher(run):
    with pytest.raises(ValueError, match="inference export of the student only"):
        load_checkpoint_model(run / "model.pt", weights="teacher")


def test_missing_inputs_are_named(tmp_path, run):
    with pytest.raises(SystemExit):
        P.main(["--weights", str(tmp_path / "none.pt"), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        P.main(
            [
                "--weights",
                str(run / "model.pt"),
                "--images",
                str(tmp_path / "empty_or_missing"),
                "--out",
                str(tmp_path / "o"),
            ]
        )


@pytest.mark.slow
def test_geojson_and_memory_mapped_npy_images(run, tmp_path):
    import json

    from examples.dpfr_gland.geojson import rasterize_geojson

    images = tmp_path / "images"
    images.mkdir()
    image = SyntheticGlands("medium", size=(100, 130), seed=5).sample(0)[0]
    np.save(images / "big.npy", image)
    assert (
        P.main(
            [
                "--weights",
                str(run / "model.pt"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "out"),
                "--geojson",
                "--tile-progress",
                "--no-progress",
                "--tile",
                "64",
                "--overlap",
                "16",
            ]
        )
        == 0
    )
    instances = read_instances(tmp_path / "out" / "big_instances.png")
    collection = json.loads((tmp_path / "out" / "big.geojson").read_text())
    np.testing.assert_array_equal(rasterize_geojson(collection, instances.shape), instances)
    for feature in collection["features"]:
        assert 0.0 <= feature["properties"]["mean_probability"] <= 1.0
    np.save(images / "bad.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(SystemExit):
        P.main(["--weights", str(run / "model.pt"), "--images", str(images / "bad.npy"), "--out", str(tmp_path / "x")])


def test_a_large_memory_mapped_image_is_predicted_out_of_core_with_the_in_memory_result(tmp_path):
    import json

    import tifffile

    from examples.dpfr_gland.geojson import rasterize_geojson

    torch.manual_seed(0)
    # a per-pixel colour rule with gland-like output: dark (epithelium-ish) pixels are "interior"
    model = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.3, 0.1]))
        model.weight[1, :, 0, 0] = -1.0
    image = SyntheticGlands("medium", size=(230, 300), seed=7).sample(0)[0]
    np.save(tmp_path / "slide.npy", image)
    mapped = np.load(tmp_path / "slide.npy", mmap_mode="r")
    options = dict(tile=64, overlap=16, geojson=True)
    small = P.predict_file(model, tmp_path / "slide.npy", tmp_path / "in_memory", in_memory_pixels=10**9, **options)
    big = P.predict_file(
        model, tmp_path / "slide.npy", tmp_path / "out_of_core", in_memory_pixels=1000, overlay_side=128, **options
    )
    assert isinstance(mapped, np.memmap) and big["instances"].endswith("slide_instances.tif")
    assert small["instances"].endswith("slide_instances.png") and big["glands"] == small["glands"] > 3
    instances = tifffile.imread(big["instances"])
    assert instances.dtype == np.uint16 and instances.shape == image.shape[:2]
    np.testing.assert_array_equal(instances, read_instances(small["instances"]))
    np.testing.assert_array_equal(tifffile.imread(big["classes"]), np.asarray(Image.open(small["classes"])))
    collection = json.loads(open(big["geojson"]).read())
    np.testing.assert_array_equal(rasterize_geojson(collection, image.shape[:2]), instances)
    assert max(Image.open(big["overlay"]).size) <= 128  # subsampled: 300 px wide at a step of 3
    assert not any(p.name.startswith(".") for p in (tmp_path / "out_of_core").iterdir())  # work files removed


def test_the_out_of_core_overlay_and_a_missing_tifffile(tmp_path, monkeypatch):
    import sys

    image = np.zeros((5000, 300, 3), np.uint8)
    instances = np.zeros((5000, 300), np.int32)
    instances[100:200, 50:100] = 1
    # a step (5000 / 1000 = 5) subsampled strip by strip equals plain striding, even with a step above the strip
    picture = P._overlay_downsampled(image, instances, 1000, strip=64)
    assert picture.shape == image[::5, ::5].shape and picture.any()
    assert P._overlay_downsampled(image, instances, 1, strip=64).shape == (1, 1, 3)
    np.save(tmp_path / "slide.npy", np.zeros((64, 80, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "tifffile", None)  # "import tifffile" now raises ImportError
    with pytest.raises(ValueError, match="needs tifffile"):  # before any work is done
        P.predict_file(
            torch.nn.Conv2d(3, 3, 1), tmp_path / "slide.npy", tmp_path / "out", tile=64, in_memory_pixels=100
        )


@pytest.mark.slow
def test_the_training_scale_travels_in_model_pt_and_predict_maps_back_to_the_native_grid(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    config = TrainConfig(
        method="supervised",
        synthetic_size=96,
        synthetic_train=4,
        synthetic_test=1,
        crop_size=32,
        iterations=2,
        label_ratio="1/2",
        eval_pictures=0,
        eval_tile=32,
        eval_overlap=8,
        log_every=1,
        scale=0.5,
    )
    train(config, out, progress=False)
    model, saved = load_checkpoint_model(out / "model.pt")
    assert saved["scale"] == 0.5
    images = tmp_path / "images"
    image = SyntheticGlands("medium", size=(70, 90), seed=3).sample(0)[0]
    write_image(images / "a.png", image)
    assert (
        P.main(
            [
                "--weights",
                str(out / "model.pt"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
                "--geojson",
            ]
        )
        == 0
    )
    written = read_instances(tmp_path / "o" / "a_instances.png")
    assert written.shape == image.shape[:2]  # the native grid
    expected = predict_instances(
        model, image, tile=32, overlap=8, min_size=saved["min_size"], dilation=saved["contour_width"], scale=0.5
    )
    np.testing.assert_array_equal(written, expected)
    polygons = json.loads((tmp_path / "o" / "a.geojson").read_text())["features"]
    if polygons:  # native coordinates: every vertex inside the 90 x 70 image
        xs = [x for f in polygons for ring in f["geometry"]["coordinates"] for x, _ in ring]
        assert max(xs) <= 90
    assert (
        P.main(
            [
                "--weights",
                str(out / "model.pt"),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "o1"),
                "--no-progress",
                "--scale",
                "1",
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit):
        P.main(
            ["--weights", str(out / "model.pt"), "--images", str(images), "--out", str(tmp_path / "o2"), "--scale", "0"]
        )
    assert "--scale" in capsys.readouterr().err
