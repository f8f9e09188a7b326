"""The recipe's benchmarks run end to end at smoke size (their numbers come from full runs)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_perturbation_sites_quick_measures_every_site_and_step_kind():
    from benchmarks import perturbation_sites

    result = perturbation_sites.main(["--quick"])
    sites = {(r["site"], r["variant"]) for r in result["rows"]}
    assert {s for s, _ in sites} == set(perturbation_sites.SITES)
    for row in result["rows"]:
        assert {"clean", "density", "random", "opposite"} <= set(row)
        # the random step has the density step's length, so a site where the density step
        # moves nothing moves nothing at random either
        if row["density"]["max_dlogit"] == 0.0:
            assert row["random"]["max_dlogit"] == 0.0


@pytest.mark.slow
def test_step_cost_quick_counts_every_method_and_inference_equals_the_plain_network():
    from benchmarks import step_cost

    result = step_cost.main(["--quick"])
    flops = result["flops"]
    assert flops["mean_teacher"]["over_mean_teacher"] == 1.0
    assert flops["supervised"]["extrapolated"] < flops["mean_teacher"]["extrapolated"] < flops["dpfr"]["extrapolated"]
    assert flops["dpfr_student_flow"]["extrapolated"] < flops["dpfr"]["extrapolated"]  # no labelled teacher pass
    assert result["inference_flops"]["eval_model"] == result["inference_flops"]["plain_cenet"]


@pytest.mark.slow
def test_teacher_vs_student_scores_both_networks_of_a_run(tmp_path):
    from benchmarks import teacher_vs_student
    from examples.dpfr_gland import train as T

    config = T.TrainConfig(method="mean_teacher", synthetic_size=64, synthetic_train=6, synthetic_test=1,
                           crop_size=64, iterations=2, label_ratio="1/3", eval_pictures=0, eval_tile=64,
                           eval_overlap=16, supervised_warmup=0, rampup=0, log_every=1)
    T.train(config, tmp_path / "run", progress=False)
    result = teacher_vs_student.main([str(tmp_path / "run"), "--count", "2", "--out", str(tmp_path / "r.json")])
    (row,) = result["rows"]
    assert set(row["student"]) == set(row["teacher"]) == set(teacher_vs_student.KEYS)
    assert (tmp_path / "r.json").is_file()
