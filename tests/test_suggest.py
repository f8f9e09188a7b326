"""The suggest command: which unlabelled images to label next."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from examples.dpfr_gland import suggest as S
from examples.dpfr_gland import train as T
from examples.dpfr_gland.synthetic import SyntheticGlands


@pytest.mark.slow
def test_suggest_ranks_an_unseen_appearance_and_skips_duplicates(tmp_path, capsys):
    config = T.TrainConfig(
        method="dpfr",
        synthetic_size=64,
        synthetic_train=6,
        synthetic_test=1,
        crop_size=64,
        iterations=30,
        label_ratio="1/2",
        supervised_warmup=0,
        rampup=0,
        flow_warmup=1,
        log_every=10,
        eval_pictures=0,
        eval_tile=64,
        eval_overlap=16,
        flow_hidden=16,
        projection_hidden=16,
        projection_dim=8,
        num_anchors=8,
        num_negatives=16,
    )
    T.train(config, tmp_path / "run", progress=False)
    images = tmp_path / "unlabelled"
    images.mkdir()
    glands = SyntheticGlands("medium", size=64, seed=0)
    for i in range(5):
        Image.fromarray(glands.sample(50 + i)[0]).save(images / f"normal_{i}.png")
    odd = 255 - glands.sample(60)[0]  # an inverted stain
    for name in ("odd.png", "odd_copy1.png", "odd_copy2.png"):  # and two exact duplicates of it
        Image.fromarray(odd).save(images / name)
    assert (
        S.main(
            [
                "--weights",
                str(tmp_path / "run" / "checkpoint.pt"),
                "--images",
                str(images),
                "--k",
                "3",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "out" / "ranking.csv").open()))
    assert len(rows) == 8 and [int(r["rank"]) for r in rows] == list(range(1, 9))
    assert [r["picked"] for r in rows[:3]] == ["1"] * 3 and all(r["picked"] == "0" for r in rows[3:])
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        assert 0.0 <= float(r["low_density"]) <= 1.0 and 0.0 <= float(r["entropy"]) <= 1.0
    # the inverted stain is the most uncertain image, and identical images score identically
    assert float(by_name["odd.png"]["entropy"]) > max(float(by_name[f"normal_{i}.png"]["entropy"]) for i in range(5))
    assert (
        by_name["odd.png"]["combined"] == by_name["odd_copy1.png"]["combined"] == by_name["odd_copy2.png"]["combined"]
    )
    # duplicates do not fill the list: at most one of the three identical images is picked
    assert sum(by_name[n]["picked"] == "1" for n in ("odd.png", "odd_copy1.png", "odd_copy2.png")) <= 1
    assert (tmp_path / "out" / "suggestions.png").is_file()
    assert "label next:" in capsys.readouterr().out


@pytest.mark.slow
def test_suggest_needs_a_run_with_a_flow(tmp_path, capsys):
    config = T.TrainConfig(
        method="mean_teacher",
        synthetic_size=64,
        synthetic_train=4,
        synthetic_test=1,
        crop_size=64,
        iterations=1,
        label_ratio="1/2",
        eval_pictures=0,
        eval_tile=64,
        eval_overlap=16,
    )
    T.train(config, tmp_path / "run", progress=False)
    with pytest.raises(SystemExit):
        S.main(
            [
                "--weights",
                str(tmp_path / "run" / "checkpoint.pt"),
                "--images",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert "holds no flow" in capsys.readouterr().err
