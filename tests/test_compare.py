"""The side-by-side command (examples/dpfr_gland/compare.py) behind `make demo`."""

from __future__ import annotations

import json

import pytest

from examples.dpfr_gland import compare as C
from examples.dpfr_gland.config import TrainConfig

TINY = dict(
    synthetic_size=64,
    synthetic_train=6,
    synthetic_test=2,
    crop_size=64,
    iterations=2,
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


@pytest.mark.slow
def test_compare_trains_each_method_on_one_config_and_tabulates(tmp_path, capsys):
    config = TrainConfig(**TINY)
    results = C.compare(config, ["mean_teacher", "dpfr"], tmp_path, pictures=1, progress=False)
    assert list(results) == ["mean_teacher", "dpfr"]
    for method in results:
        saved = json.loads((tmp_path / method / "config.json").read_text())
        assert saved["method"] == method
        # the same seed, budget and data for every method: only the method differs
        assert {k: v for k, v in saved.items() if k != "method"} == {
            k: v for k, v in json.loads((tmp_path / "dpfr" / "config.json").read_text()).items() if k != "method"
        }
        assert results[method]["num_images"] == 2 and "teacher" in results[method]
    printed = capsys.readouterr().out
    assert "| mean_teacher |" in printed and "| dpfr |" in printed
    assert "| dpfr student |" in printed and "| dpfr teacher |" in printed  # each run's own table
    for name in ("comparison.json", "comparison.png", "predictions.png"):
        assert (tmp_path / name).is_file()
    # a finished run of the same config is not trained again
    stamp = (tmp_path / "dpfr" / "checkpoint.pt").stat().st_mtime_ns
    C.compare(config, ["dpfr"], tmp_path, pictures=0, progress=False)
    assert (tmp_path / "dpfr" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert "not trained again" in capsys.readouterr().out


@pytest.mark.parametrize("methods", [[], ["dpfr", "dpfr"], ["nope"]])
def test_compare_refuses_bad_method_lists(methods, tmp_path):
    with pytest.raises(ValueError, match="methods must be distinct names"):
        C.compare(TrainConfig(**TINY), methods, tmp_path)


def test_cli_refuses_a_repeated_method(tmp_path, capsys):
    with pytest.raises(SystemExit):
        C.main(
            [
                "--config",
                "examples/dpfr_gland/configs/demo_cpu.json",
                "--methods",
                "dpfr",
                "dpfr",
                "--out",
                str(tmp_path),
            ]
        )
    assert "each method once" in capsys.readouterr().err


@pytest.mark.slow
def test_every_run_writes_a_small_inference_export_that_predicts_like_the_student(tmp_path):
    import numpy as np
    import torch

    from examples.dpfr_gland.augment import to_tensor
    from examples.dpfr_gland.batches import build_datasets
    from examples.dpfr_gland.evaluate import load_checkpoint_model, predict
    from examples.dpfr_gland.loop import train

    config = TrainConfig(**{**TINY, "method": "dpfr"})
    train(config, tmp_path, progress=False)
    export = torch.load(tmp_path / "model.pt", weights_only=True)
    assert export["format"] == "dpfr-inference-1" and export["weights"] == "student"
    assert set(export) == {"model", "config", "weights", "format"}  # no optimiser, teacher or flow
    assert (tmp_path / "model.pt").stat().st_size < 0.2 * (tmp_path / "checkpoint.pt").stat().st_size
    small, _ = load_checkpoint_model(tmp_path / "model.pt")
    full, _ = load_checkpoint_model(tmp_path / "checkpoint.pt", weights="student")
    _, test = build_datasets(config)
    image = to_tensor(test[0][0])
    p_small, p_full = predict(small, image, tile=64), predict(full, image, tile=64)
    # float16 storage: probabilities within 1e-2, argmax equal on almost every pixel
    assert float((p_small - p_full).abs().max()) < 1e-2
    assert float((p_small.argmax(0) == p_full.argmax(0)).float().mean()) > 0.999
    assert np.isfinite(p_small.numpy()).all()


@pytest.mark.slow
def test_glas_runs_score_testA_and_testB_separately(tmp_path, capsys):
    from examples.dpfr_gland.data import write_synthetic
    from examples.dpfr_gland.loop import train

    write_synthetic(tmp_path / "glas", "glas", num=12, size=64, seed=0)
    config = TrainConfig(
        **{
            **TINY,
            "method": "mean_teacher",
            "dataset": "glas",
            "data": str(tmp_path / "glas"),
            "test_split": "testA,testB",
            "label_ratio": "1/2",
        }
    )
    metrics = train(config, tmp_path / "run", progress=False)["metrics"]
    assert set(metrics["splits"]) == {"testA", "testB"}
    assert metrics["pooled_f1"] == metrics["splits"]["testA"]["pooled_f1"]  # the first split is the headline
    assert all("teacher" in scores for scores in metrics["splits"].values())
    printed = capsys.readouterr().out
    assert "| mean_teacher student testA |" in printed and "| mean_teacher teacher testB |" in printed
    with pytest.raises(ValueError, match="test_split must name"):
        TrainConfig(dataset="glas", data="x", test_split=" , ")


def test_a_fresh_run_into_a_used_folder_starts_a_new_log(tmp_path):
    import json

    from examples.dpfr_gland.loop import train

    config = TrainConfig(**{**TINY, "method": "supervised", "iterations": 2})
    train(config, tmp_path, progress=False)
    train(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1]
