"""End-to-end: the demo behind `make demo` runs on synthetic glands and writes its outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from examples.dpfr_gland.demo import main


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    summary = main(["--out", str(tmp_path), "--num", "8", "--size", "96", "--steps", "60"])
    assert summary["train_images"] == 4 and summary["test_images"] == 3
    assert summary["labelled"] + summary["unlabelled"] == 4
    assert summary["targets_round_trip_pooled"]["f1"] >= 0.95
    assert summary["perturbation_log_p_drop"] > 0  # the step moves features toward low density
    assert 0.0 <= summary["posterior_accuracy"] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    picture = np.asarray(Image.open(tmp_path / "density_demo.png"))
    assert picture.ndim == 3 and picture.shape[1] == 4 * 96
    assert (tmp_path / "contact_sheet.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp*"))
    # Rerun into the same folder, smaller and at another size: only this run's images are read.
    again = main(["--out", str(tmp_path), "--num", "4", "--size", "48", "--steps", "2"])
    assert again["train_images"] == 2 and again["test_images"] == 1
