"""Tests of the recipe's evaluation: sliding-window prediction, GlaS scores, pictures, checkpoints, CLI.

Oracles: a pointwise network (1x1 convolutions) run on the whole image at once, exact crops
of the image as the tiles, a "perfect" network whose logits encode the ground-truth classes (scores
must be exactly 1 / 1 / 0), densessl.metrics on stacked maps, draw_outlines for the pictures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from densessl.metrics import glas_metrics, pixel_dice
from examples.dpfr_gland.augment import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from examples.dpfr_gland.data import GlaSDataset, write_image, write_instances
from examples.dpfr_gland.evaluate import (
    evaluate,
    load_checkpoint_model,
    main,
    predict,
    predict_instances,
    save_predictions,
)
from examples.dpfr_gland.targets import classes_to_instances, instances_to_classes


def _pointwise(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, classes, 1))


class _Output(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor


class _WithLogits(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> _Output:
        logits = self.inner(x)
        return _Output(logits, logits[:, :1])


class _AsTuple(_WithLogits):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.inner(x)
        return logits, logits


class _Spy(nn.Module):
    """Records every batch of tiles it sees; predicts class 0 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.cat([x[:, :1] * 0 + 1, x[:, :2] * 0], dim=1) * self.scale


# ----------------------------------------------------------------------------- predict


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.sampled_from([32, 64]), data=st.data())
def test_sliding_window_equals_full_image_for_a_pointwise_model(h, w, tile, data):
    """Oracle: a pointwise network on the whole unpadded image at once."""
    overlap = data.draw(st.integers(0, tile - tile // 4))  # stride >= 8 keeps the tile count small
    model = _pointwise(1)
    image = torch.randn(3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    probs = predict(model, image, tile=tile, overlap=overlap, batch_size=3)
    with torch.no_grad():
        expected = model(image[None]).softmax(dim=1)[0]
    assert probs.shape == (3, h, w) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)  # float32 sums over overlaps


def test_predict_tiles_are_flush_with_the_image_and_cover_it():
    """One sliding window (tiling.blend_tiles): tiles of the full tile size, the last flush with the
    image's edge, every tile an exact crop of the image (no padding where the image is larger)."""
    spy = _Spy()
    image = torch.randn(3, 70, 100)
    probs = predict(spy, image, tile=64, overlap=16, batch_size=2)
    tiles = torch.cat(spy.seen)
    assert all(t.shape[-2:] == (64, 64) for t in spy.seen)
    assert all(len(t) <= 2 for t in spy.seen)
    canvas = np.full((3, 70, 100), np.nan, dtype=np.float32)
    starts_r, starts_c = [0, 6], [0, 36]  # stride 48, the last tile flush with the edge
    assert len(tiles) == len(starts_r) * len(starts_c)
    k = 0
    for r in starts_r:
        for c in starts_c:
            np.testing.assert_array_equal(tiles[k].numpy(), image[:, r : r + 64, c : c + 64].numpy())
            canvas[:, r : r + 64, c : c + 64] = tiles[k].numpy()
            k += 1
    assert not np.isnan(canvas).any()  # every pixel covered
    torch.testing.assert_close(probs.sum(0), torch.ones(70, 100))


def test_predict_pads_tiny_images():
    spy = _Spy()
    image = torch.arange(6.0).view(1, 2, 3).expand(3, 2, 3).contiguous()
    probs = predict(spy, image, tile=64)
    assert probs.shape == (3, 2, 3) and spy.seen[0].shape == (1, 3, 32, 32)
    padded = spy.seen[0][0, 0]
    assert torch.equal(padded[:2, :3], image[0]) and torch.isfinite(padded).all()
    one = predict(spy, torch.ones(3, 1, 1), tile=32)
    assert one.shape == (3, 1, 1)


def test_predict_accepts_logits_objects_tuples_and_batches():
    inner = _pointwise(2)
    images = torch.randn(2, 3, 40, 33)
    plain = predict(inner, images, tile=32, overlap=8)
    torch.testing.assert_close(predict(_WithLogits(inner), images, tile=32, overlap=8), plain)
    torch.testing.assert_close(predict(_AsTuple(inner), images, tile=32, overlap=8), plain)
    for k in range(2):
        torch.testing.assert_close(predict(inner, images[k], tile=32, overlap=8), plain[k])


def test_predict_uses_eval_mode_restores_modes_and_keeps_no_graph():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.9), nn.Conv2d(4, 3, 1))
    model.train()
    model[2].eval()  # a submodule deliberately in eval stays in eval
    before = model[1].running_mean.clone()
    image = torch.randn(3, 32, 32)
    a = predict(model, image, tile=32)
    b = predict(model, image, tile=32)
    torch.testing.assert_close(a, b)  # dropout off: eval mode was used
    assert torch.equal(model[1].running_mean, before)  # BatchNorm statistics untouched
    assert [m.training for m in model] == [True, True, False, True]
    assert not a.requires_grad


def test_predict_restores_modes_when_the_model_fails():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        predict(model, torch.zeros(3, 32, 32), tile=32)
    assert model.training


class _Stride2(nn.Module):
    def forward(self, x):
        return x[:, :, ::2, ::2]


class _Words(nn.Module):
    def forward(self, x):
        return "logits"


class _NaN(nn.Module):
    def forward(self, x):
        return torch.full_like(x, float("nan"))


@pytest.mark.parametrize(
    "model, image, kwargs, error, name",
    [
        ("model", torch.zeros(3, 32, 32), {}, TypeError, "model"),
        (None, torch.zeros(32, 32), {}, ValueError, "image"),
        (None, torch.zeros(3, 32, 32, dtype=torch.int64), {}, TypeError, "image"),
        (None, torch.full((3, 32, 32), float("inf")), {}, ValueError, "image"),
        (None, torch.zeros(3, 32, 32), dict(tile=48), ValueError, "tile"),
        (None, torch.zeros(3, 32, 32), dict(tile=16), ValueError, "tile"),
        (None, torch.zeros(3, 32, 32), dict(tile=32, overlap=32), ValueError, "overlap"),
        (None, torch.zeros(3, 32, 32), dict(batch_size=0), ValueError, "batch_size"),
        (_Stride2(), torch.zeros(3, 32, 32), {}, ValueError, "model output"),
        (_Words(), torch.zeros(3, 32, 32), {}, TypeError, "model output"),
        (_NaN(), torch.zeros(3, 32, 32), {}, ValueError, "model output"),
    ],
)
def test_predict_bad_inputs(model, image, kwargs, error, name):
    with pytest.raises(error, match=name):
        predict(_pointwise() if model is None else model, image, **kwargs)


# ----------------------------------------------------------------------------- evaluate


_CLASS_RED = torch.tensor([0.0, 120.0, 240.0])  # red value of a pixel of each class


class _Perfect(nn.Module):
    """A pointwise "network" that reads the class from the pixel's red value (see _encode)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255.0
        return -((red[:, None] - _CLASS_RED[None, :, None, None]) ** 2) / 100.0


def _encode(instances: np.ndarray, contour_width: int = 2) -> np.ndarray:
    classes = instances_to_classes(instances, contour_width=contour_width)
    image = np.full(instances.shape + (3,), 90, dtype=np.uint8)
    image[..., 0] = _CLASS_RED.numpy().astype(np.uint8)[classes]
    return image


def _discs(h: int, w: int, centres: list[tuple[int, int, int]]) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    instances = np.zeros((h, w), dtype=np.int32)
    for label, (cy, cx, r) in enumerate(centres, start=1):
        instances[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = label
    return instances


def _disc_dataset() -> list[tuple[np.ndarray, np.ndarray]]:
    maps = [
        _discs(70, 90, [(20, 20, 9), (45, 60, 12), (15, 70, 7)]),
        _discs(64, 50, [(30, 25, 15)]),
        _discs(40, 40, []),
    ]
    return [(_encode(m), m) for m in maps]


def test_evaluate_a_perfect_model_scores_one_one_zero():
    data = _disc_dataset()
    for _image, gt in data:  # precondition: the targets round trip is exact for discs
        assert np.array_equal(classes_to_instances(instances_to_classes(gt), min_size=16, dilation=2) > 0, gt > 0)
    scores = evaluate(_Perfect(), data, tile=32, overlap=8, min_size=16, dilation=2)
    assert scores["num_images"] == 3
    for key in ("pooled_f1", "pooled_dice", "per_image_f1", "per_image_dice", "pixel_dice"):
        assert scores[key] == pytest.approx(1.0), key
    assert scores["pooled_hausdorff"] == pytest.approx(0.0, abs=1e-9)
    assert scores["per_image_hausdorff"] == pytest.approx(0.0, abs=1e-9)


def test_evaluate_agrees_with_densessl_metrics_on_an_imperfect_model():
    data = _disc_dataset()[:2]
    # shift the encoded class picture: predictions now miss by a few pixels
    shifted = [(np.roll(image, (3, -4), axis=(0, 1)), gt) for image, gt in data]
    scores = evaluate(_Perfect(), shifted, tile=64, overlap=16)
    preds = [predict_instances(_Perfect(), image, tile=64, overlap=16) for image, _ in shifted]
    gts = [gt for _, gt in shifted]
    pooled = glas_metrics(preds, gts, aggregate="pooled")
    per_image = glas_metrics(preds, gts, aggregate="per_image")
    for k in ("f1", "dice", "hausdorff"):
        assert scores[f"pooled_{k}"] == pytest.approx(pooled[k])
        assert scores[f"per_image_{k}"] == pytest.approx(per_image[k])
    assert 0 < scores["pooled_dice"] < 1 and scores["pooled_hausdorff"] > 1
    # pooled pixel Dice == pixel_dice over all pixels of the images, flattened into one map
    flat_pred = np.concatenate([p.ravel() for p in preds])[None]
    flat_gt = np.concatenate([g.ravel() for g in gts])[None]
    assert scores["pixel_dice"] == pytest.approx(pixel_dice(flat_pred, flat_gt))


def test_evaluate_an_all_background_model_scores_zero():
    class Background(nn.Module):
        def forward(self, x):
            return torch.cat([torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :2])], dim=1)

    scores = evaluate(Background(), _disc_dataset()[:2], tile=32)
    assert scores["pooled_f1"] == 0.0 and scores["pooled_dice"] == 0.0 and scores["pixel_dice"] == 0.0


def test_evaluate_limit_and_iterables():
    data = _disc_dataset()
    assert evaluate(_Perfect(), data, tile=32, limit=2)["num_images"] == 2
    assert evaluate(_Perfect(), iter(data), tile=32, limit=1)["num_images"] == 1


@pytest.mark.parametrize(
    "data, kwargs, error, name",
    [
        ([], {}, ValueError, "dataset"),
        ([(np.zeros((32, 32, 3), np.float32), np.zeros((32, 32), np.int32))], {}, ValueError, "image"),
        ([(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 31), np.int32))], {}, ValueError, "instances"),
        ([np.zeros((32, 32, 3), np.uint8)], {}, TypeError, "dataset"),
        (None, dict(min_size=-1), ValueError, "min_size"),
        (None, dict(dilation=-1), ValueError, "dilation"),
        (None, dict(limit=0), ValueError, "limit"),
    ],
)
def test_evaluate_bad_inputs(data, kwargs, error, name):
    data = _disc_dataset() if data is None else data
    with pytest.raises(error, match=name):
        evaluate(_Perfect(), data, tile=32, **kwargs)


def test_evaluate_needs_three_classes():
    with pytest.raises(ValueError, match="3 classes"):
        evaluate(_pointwise(classes=2), _disc_dataset(), tile=32)


# ----------------------------------------------------------------------------- pictures


class _Named(list):
    names = ["first", "second"]


def test_save_predictions_writes_large_three_panel_pictures_with_their_scores(tmp_path, monkeypatch):
    from densessl.metrics import object_dice, object_f1, object_hausdorff
    from examples.dpfr_gland import evaluate as E

    data = _Named(_disc_dataset()[:2])
    drawn = []
    real = E.prediction_picture

    def spy(image, gt, pred, name):
        png, scores = real(image, gt, pred, name)
        drawn.append((name, gt, pred, scores))
        return png, scores

    monkeypatch.setattr(E, "prediction_picture", spy)
    paths = save_predictions(_Perfect(), data, tmp_path / "pictures", tile=32, progress=False)
    assert [p.name for p in paths] == ["first.png", "second.png"]
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["first.png", "second.png"]  # no temp files
    for path, (image, gt), (name, gt_drawn, pred, scores) in zip(paths, data, drawn):
        assert name == path.stem and np.array_equal(gt_drawn, gt)
        np.testing.assert_array_equal(pred, predict_instances(_Perfect(), image, tile=32))
        # the title's numbers are this image's object scores
        assert scores == {
            "f1": object_f1(pred, gt),
            "dice": object_dice(pred, gt),
            "hausdorff": object_hausdorff(pred, gt),
        }
        picture = np.asarray(Image.open(path))
        h, w = gt.shape
        assert picture.shape[1] >= 3 * 3 * w and picture.shape[0] >= 3 * h  # three panels, each drawn >= 3x
    # evaluate(out=...) writes the same pictures
    evaluate(_Perfect(), data, tile=32, out=tmp_path / "again")
    for path in paths:
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "again" / path.name)))


# ----------------------------------------------------------------------------- with the real CE-Net


def _model_lib():
    """The model module, or a skip of this test only (model.py is written beside this file)."""
    return pytest.importorskip("examples.dpfr_gland.model")


def test_predict_with_a_real_cenet_on_a_synthetic_image():
    from examples.dpfr_gland.synthetic import SyntheticGlands

    torch.manual_seed(0)
    net = _model_lib().CENet(backbone="resnet34").train()
    image, _ = SyntheticGlands("easy", size=64, seed=0).sample(0)
    x = to_tensor(image)
    probs = predict(net, x, tile=64)
    with torch.no_grad():
        expected = net.eval()(x[None]).logits.softmax(dim=1)[0]
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)  # one tile: the plain forward
    tiled = predict(net, x, tile=32, overlap=16)
    assert tiled.shape == (3, 64, 64)
    torch.testing.assert_close(tiled.sum(0), torch.ones(64, 64))


def _glas_folder(root: Path, count: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    data = [
        (_encode(_discs(64, 64, [(20, 20, 9), (44, 40, 12)])), _discs(64, 64, [(20, 20, 9), (44, 40, 12)])),
        (_encode(_discs(64, 96, [(30, 60, 14)])), _discs(64, 96, [(30, 60, 14)])),
    ][:count]
    for n, (image, instances) in enumerate(data, start=1):
        write_image(root / f"testA_{n}.bmp", image)
        write_instances(root / f"testA_{n}_anno.bmp", instances)
    return data


@pytest.mark.slow
def test_checkpoint_loading_and_the_command_line(tmp_path):
    import densessl

    torch.manual_seed(0)
    student = _model_lib().CENet(backbone="resnet34")
    teacher = densessl.EMATeacher(student, decay=0.5)
    for _ in range(2):  # the first update copies, the second averages: teacher and student differ
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(0.9)
        teacher.update(student)
    config = {
        "backbone": "resnet34",
        "perturb_at": "bottleneck",
        "eval_tile": 64,
        "eval_overlap": 16,
        "min_size": 16,
        "contour_width": 2,
    }
    path = tmp_path / "checkpoint.pt"
    torch.save({"student": student.state_dict(), "teacher": teacher.state_dict(), "config": config}, path)

    model, loaded_config = load_checkpoint_model(path)
    assert loaded_config == config and not model.training
    for name, value in model.state_dict().items():  # the student's weights by default (the paper's)
        assert torch.equal(value, student.state_dict()[name]), name
    teacher_model, _ = load_checkpoint_model(path, weights="teacher")
    for name, value in teacher_model.state_dict().items():
        assert torch.equal(value, teacher.model.state_dict()[name]), name
    assert not torch.equal(teacher_model.state_dict()["head.4.weight"], student.state_dict()["head.4.weight"])
    with pytest.raises(ValueError, match="weights"):
        load_checkpoint_model(path, weights="ema")

    data_root = tmp_path / "glas"
    data_root.mkdir()
    _glas_folder(data_root)
    scores = main(
        [
            "--checkpoint",
            str(path),
            "--data",
            str(data_root),
            "--layout",
            "glas",
            "--split",
            "testA",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ]
    )
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["scores"] == scores and scores["num_images"] == 2 and record["weights"] == "student"
    assert record["tile"] == 64 and record["overlap"] == 16
    assert sorted(p.name for p in (tmp_path / "out" / "pictures").iterdir()) == ["testA_1.png", "testA_2.png"]
    # the same numbers as evaluate() on the reader's dataset
    again = evaluate(model, GlaSDataset(data_root, "testA"), tile=64, overlap=16)
    assert again == scores


def test_checkpoint_errors_name_the_problem(tmp_path):
    _model_lib()
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint_model(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"config": {"backbone": "resnet34"}}, bad)
    with pytest.raises(ValueError, match="state dict"):
        load_checkpoint_model(bad)
    torch.save({"model": {"conv.weight": torch.zeros(1)}, "config": {"backbone": "resnet34"}}, bad)
    with pytest.raises(ValueError, match="missing keys"):
        load_checkpoint_model(bad)
    torch.save({"model": {}, "config": {}}, bad)
    with pytest.raises(ValueError, match="backbone"):
        load_checkpoint_model(bad)
