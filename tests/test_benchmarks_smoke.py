"""The recipe's benchmarks run end to end at smoke size (their numbers come from full runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st


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

    config = T.TrainConfig(
        method="mean_teacher",
        synthetic_size=64,
        synthetic_train=6,
        synthetic_test=1,
        crop_size=64,
        iterations=2,
        label_ratio="1/3",
        eval_pictures=0,
        eval_tile=64,
        eval_overlap=16,
        supervised_warmup=0,
        rampup=0,
        log_every=1,
    )
    T.train(config, tmp_path / "run", progress=False)
    result = teacher_vs_student.main([str(tmp_path / "run"), "--count", "2", "--out", str(tmp_path / "r.json")])
    (row,) = result["rows"]
    assert set(row["student"]) == set(row["teacher"]) == set(teacher_vs_student.KEYS)
    assert (tmp_path / "r.json").is_file()


@pytest.mark.slow
def test_ssl_quality_toy_study_runs_resumes_and_draws(tmp_path):
    import json

    from benchmarks import ssl_quality

    args = [
        "--scale",
        "toy",
        "--methods",
        "supervised,mean_teacher,dpfr",
        "--results",
        str(tmp_path / "r"),
        "--outputs",
        str(tmp_path / "o"),
        "--figures",
        str(tmp_path / "f"),
    ]
    summary = ssl_quality.main(args)
    cells = {(c["group"], c["method"], c["label_ratio"], json.dumps(c["extra"])) for c in summary["cells"]}
    assert {m for g, m, _, _ in cells if g == "main"} == {"supervised", "mean_teacher", "dpfr"}
    assert any(g == "ratio" for g, *_ in cells) and any(g == "sweep" for g, *_ in cells)
    main_dpfr = next(c for c in summary["cells"] if c["group"] == "main" and c["method"] == "dpfr")
    assert main_dpfr["student"]["pooled_f1"]["n"] == 2  # two seeds: a mean and a spread
    assert main_dpfr["keep"]["kept_contour"] is not None and main_dpfr["teacher"] is not None
    runs = sorted((tmp_path / "r").glob("*_s*.json"))
    row = json.loads(runs[0].read_text())
    assert {"student", "class_shares", "history", "wall_s", "fingerprint"} <= set(row)
    for name in ("quality_by_method", "quality_by_ratio", "loss_terms", "keep_rates", "features"):
        assert (tmp_path / "f" / f"{name}.png").is_file()
    # a second start trains nothing: every run is found finished by its fingerprint
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    ssl_quality.main(args)
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps
    # a variant (--set) is trained as its own run, beside the recipe's, which stay as they are
    variant = [
        "--scale",
        "toy",
        "--methods",
        "supervised",
        "--seeds",
        "0",
        "--groups",
        "main",
        "--set",
        "lr=0.002",
        "--outputs",
        str(tmp_path / "o2"),
        "--results",
        str(tmp_path / "r2"),
        "--figures",
        str(tmp_path / "f2"),
    ]
    changed = ssl_quality.main(variant)
    assert changed["runs"] == 1 and changed["sets"] == ["lr=0.002"]
    (run,) = (tmp_path / "r2").glob("*_s0.json")
    assert json.loads(run.read_text())["config"]["lr"] == 0.002
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps


@pytest.mark.parametrize("scale", ["toy", "cpu", "gpu"])
def test_ssl_quality_plan_is_valid_and_every_run_distinct(scale):
    from benchmarks import ssl_quality as Q

    runs = Q.plan(Q.SCALES[scale])
    configs = [Q._config(spec, Q.SCALES[scale], "test") for spec in runs]  # each a valid TrainConfig
    assert len({spec.name for spec in runs}) == len(runs)
    fingerprints = [Q._fingerprint(c) for c in configs]
    # the sweep may repeat the recipe's own setting, the pseudo group's default rule is main's
    # mean_teacher (then trained once); nothing else repeats
    repeated = {f for f in fingerprints if fingerprints.count(f) > 1}
    again = [spec for spec, f in zip(runs, fingerprints) if f in repeated and spec is not runs[fingerprints.index(f)]]
    assert all(
        spec.group == "sweep" or (spec.group == "pseudo" and spec.extra == (("pseudo_labels", "entropy"),))
        for spec in again
    )
    main = [(s, c) for s, c in zip(runs, configs) if s.group == "main" and s.preset not in Q.REAL_CONFIGS]
    assert {c.method for _, c in main} == set(Q.METHODS) and {c.label_ratio for _, c in main} == {"1/8"}
    real = [(s, c) for s, c in zip(runs, configs) if s.preset in Q.REAL_CONFIGS]
    if Q.SCALES[scale].real:  # the real preset: the curve, then the methods at 1/8 and 1/4, on a fixed part
        curve = [c for s, c in real if s.group == "curve"]
        assert {c.method for c in curve} == {"supervised"} and {c.label_ratio for c in curve} == set(Q.CURVE_RATIOS)
        assert runs.index(real[0][0]) < min(runs.index(s) for s, _ in real if s.group == "main")
        assert {c.test_split for _, c in real} == {"test"} and {c.split_file for _, c in real} == {"glas_train85"}
        assert {c.method for s, c in real if s.group == "main"} == set(Q.METHODS[1:])
        # the pseudo-label rules under mean_teacher at 1/8, beside supervised, only when asked for
        pseudo = [(s, c) for s, c in real if s.group == "pseudo"]
        assert {(c.method, c.pseudo_labels) for _, c in pseudo} == {("mean_teacher", rule) for rule in Q.PSEUDO_RULES}
        assert {c.label_ratio for _, c in pseudo} == {"1/8"}
    assert len({s.seed for s, _ in main}) >= 2
    # one preset: the same images for every method and seed, from a generator seed no tuning used
    for preset in Q.SCALES[scale].presets:
        seeds = {c.synthetic_seed for s, c in main if s.preset == preset}
        assert seeds == {Q.DATA_SEEDS["test"][preset]} and Q.DATA_SEEDS["validation"][preset] not in seeds
    assert not set(Q.DATA_SEEDS["test"].values()) & {0, 1, 2}  # the demo's data seeds


@pytest.mark.slow
def test_ssl_quality_real_preset_runs_on_a_glas_layout_folder_and_reports(tmp_path, capsys):
    """The real-data preset on generated glands in the GlaS layout (tests never read real images):
    the curve and two methods train, every row has per-image object counts, the report has the
    curve, the paired differences and the learning-curve figure."""
    from benchmarks import ssl_quality
    from examples.dpfr_gland.data import write_synthetic

    data = write_synthetic(tmp_path / "glas", "glas", 165, preset="easy", size=96)  # train_1 .. train_85
    args = [
        "--scale",
        "toy",
        "--presets",
        "glas",
        "--groups",
        "curve,main",
        "--methods",
        "supervised,mean_teacher",
        "--seeds",
        "0",
        "--data",
        f"glas={data}",
        "--results",
        str(tmp_path / "r"),
        "--outputs",
        str(tmp_path / "o"),
        "--figures",
        str(tmp_path / "f"),
    ]
    summary = ssl_quality.main(args)
    cells = {(c["group"], c["method"], c["label_ratio"]) for c in summary["cells"]}
    assert {("curve", "supervised", r) for r in ssl_quality.CURVE_RATIOS} <= cells
    assert {("main", "mean_teacher", r) for r in ssl_quality.MAIN_RATIOS} <= cells
    row = json.loads(next((tmp_path / "r").glob("glas_mean_teacher_1of8_s0.json")).read_text())
    assert row["config"]["scale"] == 0.5 and row["num_test_images"] == 21
    assert len(row["objects"]["per_image"]) == 21
    text = capsys.readouterr().out
    assert "glas: supervised learning curve" in text and "O.F1 - supervised" in text
    assert (tmp_path / "f" / "glas_learning_curve.png").is_file()
    # the pseudo-label rules on the validation part, paired against the default rule
    pseudo = ssl_quality.main(
        [
            "--scale",
            "toy",
            "--presets",
            "glas",
            "--groups",
            "pseudo,curve",
            "--seeds",
            "0",
            "--ratios",
            "1/8",
            "--split",
            "validation",
            "--data",
            f"glas={data}",
            "--results",
            str(tmp_path / "r2"),
            "--outputs",
            str(tmp_path / "o2"),
            "--figures",
            str(tmp_path / "f2"),
        ]
    )
    assert {c["extra"].get("pseudo_labels", c["method"]) for c in pseudo["cells"]} == {
        *ssl_quality.PSEUDO_RULES,
        "supervised",
    }
    row = json.loads(next((tmp_path / "r2").glob("glas_mean_teacher_1of8_s0_pseudo_labelssoft.json")).read_text())
    assert row["config"]["test_split"] == "validation" and row["num_test_images"] == 12
    text = capsys.readouterr().out
    assert "pseudo-label rules under mean_teacher" in text and "on the validation part" in text
    assert "O.F1 - entropy" in text
    missing = ssl_quality.main(
        [
            "--scale",
            "toy",
            "--presets",
            "glas",
            "--data",
            f"glas={tmp_path / 'none'}",
            "--results",
            str(tmp_path / "r3"),
            "--outputs",
            str(tmp_path / "o3"),
            "--figures",
            str(tmp_path / "f3"),
            "--groups",
            "curve",
        ]
    )
    assert missing["runs"] == 0 and "skipping the real preset 'glas'" in capsys.readouterr().out


def test_paired_difference_is_paired_by_seed_and_its_interval_holds_the_estimate():
    from benchmarks.ssl_quality import paired_difference

    rng = np.random.default_rng(0)
    base = [{"seed": s, "objects": {"per_image": rng.integers(1, 9, (30, 3)).tolist()}} for s in range(3)]
    for row in base:
        for counts in row["objects"]["per_image"]:
            counts[2] = min(counts[2], counts[0], counts[1])
    better = [
        {"seed": r["seed"], "objects": {"per_image": [[p, g, min(p, g)] for p, g, _ in r["objects"]["per_image"]]}}
        for r in base
    ]
    d = paired_difference(better, base)
    assert d["n"] == 3 and d["wins"] == 3 and d["low"] <= d["mean"] <= d["high"] and d["low"] > 0
    assert paired_difference(base, base)["mean"] == 0.0
    assert paired_difference(better[:1], base[1:]) is None  # no seed in common: nothing to pair


def test_the_budget_is_chosen_on_validation_only_and_read_off_on_test(tmp_path):
    from benchmarks.ssl_quality import budget_choice, budget_figure, budget_table

    def point(t, split, f1, weights="student"):
        return {"iteration": t, "split": split, "weights": weights, "pooled_f1": f1}

    # validation peaks at 400 (0.7, tied at 800: the earlier wins); test would peak at 600, unseen;
    # the teacher's better scores and a validation point without its test twin are not read
    curve = [point(200, "validation", 0.5), point(200, "test", 0.40), point(400, "validation", 0.7)]
    curve += [point(400, "test", 0.45), point(600, "validation", 0.6), point(600, "test", 0.60)]
    curve += [point(800, "validation", 0.7), point(800, "test", 0.50), point(900, "validation", 0.9)]
    curve += [point(400, "validation", 0.99, "teacher"), point(400, "test", 0.99, "teacher")]
    assert budget_choice(curve) == {
        "iteration": 400,
        "validation": 0.7,
        "test_at_choice": 0.45,
        "test_final": 0.50,
        "final_iteration": 800,
    }
    assert budget_choice([p for p in curve if p["split"] == "test"]) is None
    row = {"preset": "glas", "label_ratio": "1/8", "method": "supervised", "seed": 0, "curve": curve}
    ((_, header, body),) = budget_table([row, {**row, "curve": None}])
    assert body == [["glas", "1/8", "supervised", "0", "400 of 800", "0.700", "0.450", "0.500"]]
    assert len(header) == len(body[0])
    assert budget_figure([row], tmp_path / "budget.png").stat().st_size > 0
    assert budget_figure([{**row, "curve": None}], tmp_path / "none.png") is None


def test_ssl_quality_reuses_a_run_only_when_every_field_its_method_reads_is_unchanged():
    import dataclasses

    from benchmarks._study import reusable
    from examples.dpfr_gland.config import TrainConfig

    for method, reused in (("supervised", True), ("mean_teacher", False), ("dpfr", False)):
        stored = dataclasses.asdict(TrainConfig(method=method))
        assert reusable(stored, TrainConfig(method=method))
        assert reusable(stored, TrainConfig(method=method, min_class_keep=0.3)) == reused
    fr = dataclasses.asdict(TrainConfig(method="fr"))
    assert reusable(fr, TrainConfig(method="fr", xi=3.0))  # fr has no perturbation
    assert not reusable(fr, TrainConfig(method="fr", num_anchors=8))
    del fr["task"]  # a field added to the recipe after the run: its default
    assert reusable(fr, TrainConfig(method="fr"))
    assert not reusable(fr, TrainConfig(method="fr", seed=1))


@pytest.mark.slow
def test_large_image_benchmark_measures_every_stage(tmp_path):
    from benchmarks import large_image

    argv = [
        "--sides",
        "256",
        "--models",
        "colour,cenet",
        "--tile",
        "128",
        "--overlap",
        "32",
        "--out",
        str(tmp_path / "r.json"),
        "--cache",
        str(tmp_path / "cache"),
    ]
    result = large_image.main(argv)
    tiled = [r for r in result["rows"] if r["mode"] == "tiled"]
    assert {r["model"] for r in tiled} == {"colour", "cenet"}
    for row in tiled:
        assert set(row["stages"]) == {"predict_large", "instances_by_strips", "geojson"}
        assert all(v["seconds_per_mp"] > 0 for v in row["stages"].values())
    (untiled,) = [r for r in result["rows"] if r["mode"] == "untiled"]
    assert 0.9 <= untiled["class_agreement_with_tiled"] <= 1.0  # blending differs from a plain average
    (whole,) = [r for r in result["rows"] if r["mode"] == "predict_file"]
    assert set(whole["files_mib"]) == {
        "slide_256_instances.tif",
        "slide_256_classes.tif",
        "slide_256_overlay.png",
        "slide_256.geojson",
    }
    colour = next(r for r in tiled if r["model"] == "colour")
    assert whole["glands"] == colour["glands"] > 0  # the command finds the glands the stages found
    # a restart measures nothing again: every row comes back from the results file
    assert large_image.main(argv)["rows"] == result["rows"]


@pytest.mark.slow
def test_active_labels_toy_study_runs_every_strategy_and_resumes(tmp_path):
    from benchmarks import active_labels

    args = [
        "--scale",
        "toy",
        "--results",
        str(tmp_path / "r"),
        "--outputs",
        str(tmp_path / "o"),
        "--figure",
        str(tmp_path / "f.png"),
    ]
    summary = active_labels.main(args)
    assert set(summary["curve"]) == set(active_labels.STRATEGIES)
    for points in summary["curve"].values():
        assert [p["num_labelled"] for p in points] == [2, 4]  # start + one round of 2
    assert summary["target"] is not None and (tmp_path / "f.png").is_file()
    rows = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("s*_r*.json")]
    for row in rows:  # every finished student is scored on the wide test set, its own test images first
        assert row["wide"]["all"]["images"] == active_labels.SCALES["toy"]["wide_test"]
        assert row["wide"]["own"]["images"] == row["config"]["synthetic_test"]
    start = next(r for r in rows if r["strategy"] == "start")
    assert set(start["ranking"]) >= {"low_density", "entropy", "combined", "pool", "minority_in_pool"}
    assert start["ranking"]["pool"] == start["config"]["synthetic_train"] - len(start["labelled"])
    assert all("ranking" not in r for r in rows if r["round"] == 1)  # the last round picks nothing
    assert summary["target"]["complete"] and summary["target"]["met"] in (True, False)
    assert [e["round"] for e in summary["ranking"]] == [0]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").glob("s*_r*.json")}
    active_labels.main(args)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "r").glob("s*_r*.json")} == stamps
    # --rescore fills what a row lacks (the wide score from model.pt, the ranking from
    # checkpoint.pt), recreates no missing row and trains nothing (no model file is rewritten)
    models = {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*.pt")}
    start_path = tmp_path / "r" / "s0_start_r0.json"
    start = json.loads(start_path.read_text())
    wide, ranking = start.pop("wide"), start.pop("ranking")
    start_path.write_text(json.dumps(start))
    gone = tmp_path / "r" / "s0_random_r1.json"
    gone.unlink()
    active_labels.main([*args, "--rescore"])
    start = json.loads(start_path.read_text())
    assert start["wide"] == wide and start["ranking"] == ranking
    assert not gone.exists()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "o").rglob("*.pt")} == models


@given(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30))
def test_auroc_equals_the_pair_count(items):
    from benchmarks.active_labels import auroc

    scores = np.array([float(v) for v, _ in items])
    positive = np.array([p for _, p in items])
    if positive.all() or not positive.any():
        with pytest.raises(ValueError, match="positive must hold both classes"):
            auroc(scores, positive)
        return
    # independent oracle: the share of (positive, negative) pairs ranked right, ties half
    pairs = [(a > b) + 0.5 * (a == b) for a in scores[positive] for b in scores[~positive]]
    assert auroc(scores, positive) == pytest.approx(float(np.mean(pairs)))


def test_auroc_hand_case():
    from benchmarks.active_labels import auroc

    # positives 0.9 and 0.5 against negatives 0.1 and 0.5: three pairs right, one tie -> 3.5 / 4
    assert auroc(np.array([0.9, 0.1, 0.5, 0.5]), np.array([True, False, True, False])) == 0.875


def test_active_labels_overrides_reach_every_run_and_a_variant_gets_its_own_folder(tmp_path, monkeypatch):
    from benchmarks import active_labels

    config = active_labels._config(active_labels.SCALES["cpu"], 1, [5, 2], ["iterations=1200"])
    assert config.iterations == 1200 and config.seed == 1 and config.labelled == "2,5"
    monkeypatch.setattr(active_labels, "RESULTS", tmp_path)
    # --report on an empty variant folder: the folder is named by the overrides, nothing is trained
    summary = active_labels.main(["--report", "--set", "iterations=1200", "--outputs", str(tmp_path / "o")])
    assert summary["sets"] == ["iterations=1200"] and summary["curve"] == {}
    assert [p.name for p in (tmp_path / "active_labels").iterdir()] == [
        "cpu_set-" + hashlib.sha256(b"iterations=1200").hexdigest()[:8]
    ]
    with pytest.raises(ValueError, match="iteration"):
        active_labels._config(active_labels.SCALES["cpu"], 0, [1], ["iterations=-3"])


def test_summary_pairs_seeds_and_the_target_ignores_the_shared_start():
    from benchmarks.active_labels import summarise

    def row(seed, strategy, round_, f1):
        return {
            "seed": seed,
            "strategy": strategy,
            "round": round_,
            "num_labelled": 4 + 4 * round_,
            "minority_labelled": 0,
            "pooled_f1": f1,
        }

    rows = [row(0, "start", 0, 0.70), row(1, "start", 0, 0.60)]
    rows += [
        row(0, "random", 1, 0.50),
        row(1, "random", 1, 0.70),
        row(0, "combined", 1, 0.55),
        row(1, "combined", 1, 0.60),
        row(0, "entropy", 1, 0.50),
        row(1, "entropy", 1, 0.70),
        row(0, "density", 1, 0.40),
    ]
    summary = summarise(rows)
    combined = next(e for e in summary["paired"] if e["strategy"] == "combined")
    assert combined["f1"]["diffs"] == pytest.approx([0.05, -0.10]) and combined["f1"]["positive"] == 1
    density = next(e for e in summary["paired"] if e["strategy"] == "density")
    assert density["seeds"] == 1  # only seed 0 has both runs
    # random's final (8 labels) is 0.60 and combined's 8-label mean 0.575: not reached. The start
    # (0.65 at 4 labels) is above 0.60 but is not combined's doing, so it does not count.
    target = summary["target"]
    assert target["random_final"] == pytest.approx(0.60) and target["combined_labels_to_reach"] is None
    assert target["met"] is False and target["shortfall_at_two_thirds"] is None  # no pick at <= 2/3 of 8
    # a cell missing a seed leaves the target undecided
    assert summarise(rows[:-6] + [row(0, "combined", 1, 0.9)])["target"]["met"] is None


def test_wide_test_score_splits_by_appearance_and_its_own_part_equals_the_recipe_evaluation():
    import torch

    from benchmarks.active_labels import score_by_appearance
    from densessl.metrics import glas_metrics
    from examples.dpfr_gland.batches import build_datasets
    from examples.dpfr_gland.config import TrainConfig
    from examples.dpfr_gland.evaluate import evaluate, predict_instances

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, kernel_size=3, padding=1)  # a weak but not blank segmenter
    config = TrainConfig(
        synthetic_size=64,
        crop_size=64,
        synthetic_train=2,
        synthetic_test=3,
        synthetic_mix="hard:0.5",
        synthetic_seed=5,
        eval_tile=64,
        eval_overlap=16,
        min_size=4,
    )
    scores = score_by_appearance(model, config, 8)
    wide = build_datasets(dataclasses.replace(config, synthetic_test=8))[1]
    minority = [i for i, name in enumerate(wide.names) if name.endswith("_minority")]
    assert 0 < len(minority) < 8  # both groups are present at this seed
    assert scores["minority"]["images"] == len(minority)
    assert scores["majority"]["images"] == 8 - len(minority) and scores["all"]["images"] == 8
    # the run's own test images come first and unchanged: the recipe's evaluate gives the same score
    own = evaluate(model, build_datasets(config)[1], tile=64, overlap=16, min_size=4, dilation=config.contour_width)
    assert scores["own"]["pooled_f1"] == pytest.approx(own["pooled_f1"])
    assert own["pooled_dice"] > 0  # the model finds objects, so the equalities below can fail
    assert scores["own"]["pooled_dice"] == pytest.approx(own["pooled_dice"])
    assert scores["own"]["pooled_hausdorff"] == pytest.approx(own["pooled_hausdorff"])
    preds = [
        predict_instances(model, wide[i][0], tile=64, overlap=16, min_size=4, dilation=config.contour_width)
        for i in minority
    ]
    expected = glas_metrics(preds, [wide[i][1] for i in minority])
    assert scores["minority"]["pooled_f1"] == pytest.approx(expected["f1"])
    assert scores["minority"]["pooled_dice"] == pytest.approx(expected["dice"])
    with pytest.raises(ValueError, match="config.dataset must be 'synthetic'"):
        score_by_appearance(model, TrainConfig(dataset="glas", data="x"), 8)


def test_truth_class_shares_are_counted_at_the_networks_scale():
    """The truth's contour is ``contour_width`` network pixels wide, as in training: at scale 0.5 a
    disc's contour band holds about twice the share it would at native resolution."""
    from benchmarks.ssl_quality import truth_shares
    from examples.dpfr_gland.config import TrainConfig
    from examples.dpfr_gland.targets import instances_to_classes

    yy, xx = np.mgrid[:200, :200]
    instances = ((yy - 100) ** 2 + (xx - 100) ** 2 < 60**2).astype(np.int32)
    dataset = [(np.zeros((200, 200, 3), np.uint8), instances)]
    native = np.bincount(instances_to_classes(instances, contour_width=2).ravel(), minlength=3) / instances.size
    at_half = truth_shares(dataset, TrainConfig(scale=0.5, contour_width=2))
    assert truth_shares(dataset, TrainConfig(scale=1.0, contour_width=2))["contour"] == pytest.approx(native[2])
    assert 1.7 < at_half["contour"] / native[2] < 2.3
    assert sum(at_half.values()) == pytest.approx(1.0)


def test_one_pass_test_measurements_equal_evaluations_instances_and_argmax():
    """The study's one prediction per image gives the counts of evaluation's own instances and
    the argmax shares of the same probabilities (at a scale, so the native grid is exercised)."""
    import torch

    from benchmarks.ssl_quality import test_measurements
    from densessl.metrics import object_counts
    from examples.dpfr_gland.config import TrainConfig
    from examples.dpfr_gland.evaluate import predict_instances, predict_probabilities
    from examples.dpfr_gland.synthetic import SyntheticGlands

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, kernel_size=3, padding=1)
    glands = SyntheticGlands("easy", size=96, seed=3)
    dataset = [glands.sample(i) for i in range(3)]
    config = TrainConfig(scale=0.5, eval_tile=64, eval_overlap=16, min_size=4, contour_width=2)
    shares, objects = test_measurements(model, dataset, config)
    assert objects["predicted"] > 0  # the random net does find objects: the comparison is not of empties
    for (image, instances), counts in zip(dataset, objects["per_image"]):
        pred = predict_instances(model, image, tile=64, overlap=16, min_size=4, dilation=2, scale=0.5)
        assert tuple(counts) == object_counts(pred, instances)
    argmax = sum(
        np.bincount(predict_probabilities(model, image, scale=0.5, tile=64, overlap=16).argmax(0).ravel(), minlength=3)
        for image, _ in dataset
    )
    assert shares["predicted"]["contour"] == pytest.approx(argmax[2] / argmax.sum())


def test_the_study_harness_trains_what_no_stored_row_holds_once_and_reports_every_row(tmp_path):
    import dataclasses

    from benchmarks._study import Study, run_study
    from examples.dpfr_gland.config import TrainConfig

    @dataclasses.dataclass(frozen=True)
    class Spec:
        name: str
        lr: float

    trained: list[str] = []

    class Toy(Study):
        name = "toy"
        scales = {"cpu": None}
        plan_specs = [Spec("a", 1e-3), Spec("b", 2e-3), Spec("twin_of_a", 1e-3)]

        def plan(self, args):
            return self.plan_specs

        def config(self, spec, args, folders, stored):
            return TrainConfig(method="supervised", lr=spec.lr, iterations=int(args.set[0].split("=")[1]))

        def run(self, spec, config, args, folders):
            trained.append(spec.name)
            return {"name": spec.name, "config": dataclasses.asdict(config)}

        def stored(self, spec, row, path, args, folders):
            assert json.loads(path.read_text()) == row  # on disk before anything after it can fail

        def report(self, rows, args, folders):
            return {"rows": sorted(r["name"] for r in rows), "folder": folders.results}

    argv = ["--set", "iterations=5", "--results", str(tmp_path / "r"), "--outputs", str(tmp_path / "o")]
    first = run_study(Toy(), argv)
    assert trained == ["a", "b"] and first["rows"] == ["a", "b"]  # the twin trains alike: once
    assert run_study(Toy(), argv)["rows"] == ["a", "b"] and trained == ["a", "b"]  # resumed: nothing trains
    stale = json.loads((tmp_path / "r" / "b.json").read_text())
    stale["config"]["lr"] = 5e-3  # a stored row the study would no longer train: trained again
    (tmp_path / "r" / "b.json").write_text(json.dumps(stale))
    run_study(Toy(), argv)
    assert trained == ["a", "b", "b"]
    assert run_study(Toy(), [*argv, "--report"])["rows"] == ["a", "b"] and len(trained) == 3
    Toy.train_alike_once = False  # a study whose alike runs are distinct points (active_labels)
    run_study(Toy(), argv)
    assert trained == ["a", "b", "b", "twin_of_a"]
