"""The semantic task (PGland): K classes straight from the masks, pixel F1 / Dice / mIoU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.metrics import mean_iou, pixel_dice, pixel_f1
from examples.dpfr_gland import train as T
from examples.dpfr_gland.augment import to_tensor
from examples.dpfr_gland.evaluate import evaluate_semantic, load_checkpoint_model, predict
from examples.dpfr_gland.targets import semantic_targets

TINY = dict(
    task="semantic",
    synthetic_size=64,
    synthetic_train=6,
    synthetic_test=2,
    crop_size=64,
    iterations=3,
    label_ratio="1/3",
    supervised_warmup=0,
    rampup=0,
    flow_warmup=1,
    log_every=1,
    eval_pictures=0,
    eval_tile=64,
    eval_overlap=16,
    flow_hidden=16,
    projection_hidden=16,
    projection_dim=8,
    num_anchors=8,
    num_negatives=16,
)


class _Fixed(torch.nn.Module):
    """Predicts class 1 on the left half of every image (an oracle-friendly model)."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 1, :, : x.shape[-1] // 2] = 5.0
        return logits


def test_semantic_scores_equal_the_metrics_on_the_pooled_pixels():
    rng = np.random.default_rng(0)
    data = [(np.zeros((32, 48, 3), np.uint8), (rng.random((32, 48)) > 0.6).astype(np.int32) * 255) for _ in range(3)]
    scores = evaluate_semantic(_Fixed(), data, num_classes=2, tile=32)
    preds = [predict(_Fixed(), to_tensor(image), tile=32).argmax(0).numpy() for image, _ in data]
    gts = [semantic_targets(mask) for _, mask in data]
    assert scores["pixel_f1"] == pytest.approx(pixel_f1(np.stack(preds), np.stack(gts)))
    assert scores["pixel_dice"] == pytest.approx(np.mean([pixel_dice(p, g) for p, g in zip(preds, gts)]))
    assert scores["miou"] == pytest.approx(mean_iou(np.stack(preds), np.stack(gts), num_classes=2))
    assert scores["num_images"] == 3


def test_semantic_targets_of_masks_and_bad_values():
    assert semantic_targets(np.array([[0, 1, 255]])).tolist() == [[0, 1, 1]]
    assert semantic_targets(np.array([[0, 2, 1]]), num_classes=3).tolist() == [[0, 2, 1]]
    with pytest.raises(ValueError, match="mask of x must hold classes 0..2"):
        semantic_targets(np.array([[255]]), num_classes=3, name="mask of x")
    with pytest.raises(ValueError, match="semantic_classes must be >= 2"):
        T.TrainConfig(task="semantic", semantic_classes=1)


@pytest.mark.slow
def test_a_semantic_run_trains_two_classes_with_a_two_component_flow_and_scores_pixels(tmp_path, capsys):
    config = T.TrainConfig(**TINY, method="dpfr")
    trainer = T.Trainer(config)
    assert trainer.num_classes == 2 and trainer.flow.prior.num_classes == 2
    result = T.train(config, tmp_path, progress=False)
    metrics = result["metrics"]
    assert {"pixel_f1", "pixel_dice", "miou"} <= set(metrics) and "teacher" in metrics
    assert "pooled_f1" not in metrics  # no object metrics for a semantic task
    assert {"kept_background", "kept_gland"} <= set(result["history"][-1])
    assert "| dpfr student |" in capsys.readouterr().out
    model, saved = load_checkpoint_model(tmp_path / "model.pt")
    assert model.num_classes == 2 and saved["task"] == "semantic"


@pytest.mark.slow
def test_pgland_style_folder_with_0_255_masks_trains_and_predicts(tmp_path):
    from examples.dpfr_gland import predict as P
    from examples.dpfr_gland.synthetic import SyntheticGlands

    glands = SyntheticGlands("medium", size=64, seed=0)
    for split, count in (("train", 6), ("test", 2)):
        for i in range(count):
            image, instances = glands.sample(i if split == "train" else 100 + i)
            (tmp_path / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp_path / split / "images" / f"g{i}.png")
            Image.fromarray(((instances > 0) * 255).astype(np.uint8)).save(tmp_path / split / "masks" / f"g{i}.png")
    config = T.load_config(T.__file__.replace("train.py", "configs/pgland_full.json"))
    config = T.apply_overrides(
        config,
        [
            f"data={tmp_path / 'train'}",
            f"test_data={tmp_path / 'test'}",
            "pretrained=none",
            "backbone=resnet34",
            "crop_size=64",
            "batch_labelled=2",
            "batch_unlabelled=2",
            "iterations=2",
            "label_ratio=1/3",
            "device=cpu",
            "num_workers=0",
            "eval_tile=64",
            "eval_overlap=16",
            "eval_pictures=0",
            "amp=false",
            "flow_warmup=1",
            "supervised_warmup=0",
            "rampup=0",
        ],
    )
    metrics = T.train(config, tmp_path / "run", progress=False)["metrics"]
    assert metrics["num_images"] == 2 and 0.0 <= metrics["miou"] <= 1.0
    assert (
        P.main(
            [
                "--weights",
                str(tmp_path / "run" / "model.pt"),
                "--images",
                str(tmp_path / "test" / "images"),
                "--out",
                str(tmp_path / "pred"),
                "--no-progress",
            ]
        )
        == 0
    )
    classes = np.asarray(Image.open(tmp_path / "pred" / "g0_classes.png"))
    assert set(np.unique(classes)) <= {0, 1} and not list((tmp_path / "pred").glob("*_instances.png"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["task"] == "semantic"
    # the evaluate command scores the run by its own task: pixel metrics, the training's numbers
    from examples.dpfr_gland import evaluate as E

    scores = E.main(
        [
            "--checkpoint",
            str(tmp_path / "run" / "model.pt"),
            "--data",
            str(tmp_path / "test"),
            "--layout",
            "folder",
            "--out",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
        ]
    )
    assert {"pixel_f1", "miou"} <= set(scores) and "pooled_f1" not in scores
    assert scores["miou"] == pytest.approx(metrics["miou"], abs=2e-3)  # float16 export against float32
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["task"] == "semantic"
