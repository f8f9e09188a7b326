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
