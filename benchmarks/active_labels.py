"""What to label next, measured: strategies for picking images to label, against random picking.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.active_labels`` (``--scale toy`` in CI).

Data: synthetic ``medium`` glands with a minority appearance (``synthetic_mix="hard:0.1"``: a
tenth of the images, training and test alike, from the ``hard`` preset), so that what is picked
matters. Each seed starts from ``start`` random labelled images and trains ``dpfr`` (round 0,
shared by all strategies). Then, per strategy and round, the finished run scores the unlabelled
training images (:func:`examples.dpfr_gland.suggest.score_images`: the flow's low-density share,
the teacher's entropy), ``step`` more images are labelled —

- ``random``: drawn uniformly;
- ``entropy``: the most uncertain;
- ``density``: the largest low-density share;
- ``combined``: the rank mean of both, picked with the diversity term
  (:func:`densessl.functional.diverse_top_k`);

— and the recipe is trained again from scratch with the same budget. Reported: pooled O.F1 of
the student against the number of labelled images (mean ± std over seeds), how many minority
images each strategy picked, the label-efficiency target per measure (the combined strategy
reaching random's final O.F1 with at most two-thirds of its labels), and how well each score
singles out the minority images of the unlabelled pool (:func:`ranking_quality`: AUROC, and
minority images in the top ``step`` against random's expectation).

The run's own 40 test images hold 6 of the minority appearance, too few to say whether picking
them helped, so every finished student is also scored on a *wide* test set
(:func:`score_by_appearance`: ``wide_test`` images of the same generator, the run's test images
first), pooled over all of them, over the minority ones and over the rest.

Each run is written to ``benchmarks/results/active_labels/<scale>/`` as soon as its training
ends and is skipped when restarted; the scores above are added next, and ``--rescore`` (which
trains nothing) adds them to rows that lack them, from each run's ``model.pt`` and
``checkpoint.pt``. The figure goes to ``docs/_static/active_labels.png`` (cpu scale).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._io import write_result
from benchmarks._study import Folders, Study, run_study, selected, train_quietly
from examples.dpfr_gland.checkpoint import atomic_write, atomic_write_text
from examples.dpfr_gland.config import TrainConfig, apply_overrides, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "entropy", "density", "combined")

SCALES: dict[str, dict[str, Any]] = {
    "toy": dict(
        config=dict(
            synthetic_size=64,
            synthetic_train=12,
            synthetic_test=2,
            crop_size=64,
            iterations=3,
            supervised_warmup=0,
            rampup=0,
            flow_warmup=1,
            eval_tile=64,
            eval_overlap=16,
            num_anchors=8,
            num_negatives=16,
            flow_hidden=16,
            projection_hidden=16,
            projection_dim=8,
        ),
        seeds=(0,),
        start=2,
        step=2,
        rounds=1,
        wide_test=4,
    ),
    "cpu": dict(
        config=dict(
            synthetic_size=128,
            synthetic_train=64,
            synthetic_test=40,
            crop_size=96,
            iterations=400,
            supervised_warmup=60,
            rampup=60,
            flow_warmup=60,
            eval_tile=128,
            eval_overlap=32,
            batch_labelled=2,
            batch_unlabelled=2,
            ema_decay=0.95,
            flow_hidden=64,
            projection_hidden=64,
            projection_dim=32,
            num_anchors=64,
            num_negatives=128,
        ),
        seeds=(0, 1, 2),
        start=4,
        step=4,
        rounds=2,
        wide_test=200,
    ),
}
_COMMON = dict(
    method="dpfr",
    dataset="synthetic",
    synthetic_preset="medium",
    synthetic_mix="hard:0.1",
    synthetic_seed=3001,
    device="cpu",
    num_workers=0,
    log_every=50,
    eval_pictures=0,
    checkpoint_every=0,
)


def _config(scale: dict, seed: int, labelled: list[int], sets: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    config = TrainConfig(
        **{**_COMMON, **scale["config"], "seed": seed, "labelled": ",".join(map(str, sorted(labelled)))}
    )
    return apply_overrides(config, list(sets))


def score_by_appearance(model: Any, config: TrainConfig, count: int) -> dict[str, dict[str, float]]:
    """Pooled GlaS scores of ``model`` on ``count`` synthetic test images of ``config``, split by appearance.

    The images are the run's test split widened to ``count`` (``synthetic_test=count``: the
    generator keys each image by its index, so the run's own test images come first and are the
    same), predicted as the recipe's evaluation does.

    Args:
        model: a 3-class segmentation network (eval mode is set).
        config: the run's configuration (synthetic data with ``synthetic_mix``).
        count: how many test images.

    Returns:
        ``{"all" | "minority" | "majority" | "own": {"pooled_f1", "pooled_dice", "pooled_hausdorff",
        "images"}}``; ``"own"`` is the first ``config.synthetic_test`` images (the run's test set),
        to check against the score the training run reported. A group without images is left out.
    """
    import torch

    from densessl.metrics import glas_metrics
    from examples.dpfr_gland.batches import build_datasets
    from examples.dpfr_gland.evaluate import predict_instances

    if config.dataset != "synthetic":
        raise ValueError(f"config.dataset must be 'synthetic' to widen its test set, got {config.dataset!r}")
    test = build_datasets(dataclasses.replace(config, synthetic_test=count))[1]
    model.eval()
    preds, gts = [], []
    with torch.no_grad():
        for i in range(len(test)):
            image, instances = test[i]
            preds.append(predict_instances(model, image, **config.prediction_options))
            gts.append(np.asarray(instances))
    minority = set(test.minority)
    groups = {
        "all": list(range(len(test))),
        "minority": sorted(minority),
        "majority": [i for i in range(len(test)) if i not in minority],
        "own": list(range(min(config.synthetic_test, len(test)))),
    }
    return {
        name: {
            **{
                f"pooled_{k}": v
                for k, v in glas_metrics([preds[i] for i in members], [gts[i] for i in members]).items()
            },
            "images": len(members),
        }
        for name, members in groups.items()
        if members
    }


def _wide_score(run: Path, config: TrainConfig, count: int) -> dict[str, Any]:
    from examples.dpfr_gland.evaluate import load_checkpoint_model

    student, _ = load_checkpoint_model(run / "model.pt")
    return {**score_by_appearance(student, config, count), "source": "model.pt"}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positive`` items from the rest
    (the Mann-Whitney statistic, ties counted half; 0.5 is a random ranking).

    Example:
        >>> auroc(np.array([0.9, 0.1, 0.5, 0.5]), np.array([True, False, True, False]))
        0.875
    """
    from scipy.stats import mannwhitneyu

    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"positive must hold both classes, got {n_pos} positive and {n_neg} negative")
    # U of the positives counts the (positive, negative) pairs ranked right, ties half
    return float(mannwhitneyu(scores[positive], scores[~positive]).statistic / (n_pos * n_neg))


def _pool(config: TrainConfig, labelled: list[int]) -> tuple[Any, list[int]]:
    """The run's training images and its unlabelled pool (indices in order)."""
    from examples.dpfr_gland.batches import build_datasets

    train_set, _ = build_datasets(config)
    return train_set, [i for i in range(len(train_set)) if i not in set(labelled)]


def _pool_scores(run: Path, train_set: Any, pool: list[int], labelled: list[int]) -> dict[str, Any]:
    """:func:`~examples.dpfr_gland.suggest.score_images` of the pool by the run's checkpoint, the
    labelled images as the density reference."""
    from examples.dpfr_gland.checkpoint import load_run
    from examples.dpfr_gland.suggest import score_images

    return score_images(
        load_run(run / "checkpoint.pt", networks=("teacher", "flow")),
        [train_set[i][0] for i in pool],
        [train_set[i][0] for i in labelled],
    )


def ranking_quality(run: Path, config: TrainConfig, labelled: list[int], k: int) -> dict[str, Any]:
    """How well each score of a finished run singles out the minority images of its unlabelled pool:
    AUROC (0.5 = random picking) and how many minority images the plain top-``k`` holds."""
    train_set, pool = _pool(config, labelled)
    positive = np.array([i in set(train_set.minority) for i in pool])
    scores = _pool_scores(run, train_set, pool, labelled)
    out: dict[str, Any] = {"pool": len(pool), "minority_in_pool": int(positive.sum()), "k": k}
    for key in ("low_density", "entropy", "combined"):
        values = scores[key].double().numpy()
        top = np.argsort(-values, kind="stable")[:k]
        out[key] = {
            "auroc": auroc(values, positive) if 0 < positive.sum() < len(pool) else None,
            "minority_in_top_k": int(positive[top].sum()),
        }
    return out


def _pick(
    strategy: str, run: Path, config: TrainConfig, labelled: list[int], step: int, seed: int, round_: int
) -> list[int]:
    from densessl.functional import diverse_top_k

    train_set, pool = _pool(config, labelled)
    if strategy == "random":
        rng = np.random.default_rng([seed, round_, 17])
        return sorted(rng.choice(pool, size=min(step, len(pool)), replace=False).tolist())
    scores = _pool_scores(run, train_set, pool, labelled)
    key = {"entropy": "entropy", "density": "low_density", "combined": "combined"}[strategy]
    diversity = 0.5 if strategy == "combined" else 0.0
    chosen = diverse_top_k(scores[key].double(), scores["pooled"], step, diversity=diversity).tolist()
    return sorted(pool[i] for i in chosen)


def _scores_pick(row: dict, rounds: int) -> bool:
    """Whether this run's ranking scores chose images: the shared start run (every strategy scores
    it) and the non-random strategies' runs before the last round."""
    return row["round"] < rounds and (row["round"] == 0 or row["strategy"] != "random")


def complete_rows(results: Path, outputs: Path, scale: dict, only: Path | None = None) -> None:
    """Add the wide-test score (from ``model.pt``) and the ranking quality (from ``checkpoint.pt``)
    to finished rows that lack them; nothing is trained and no row is created."""
    for path in [only] if only is not None else sorted(results.glob("s*_r*.json")):
        row = json.loads(path.read_text())
        run = outputs / path.stem
        config = config_from_dict(row["config"])
        changed = False
        if "wide" not in row and (run / "model.pt").is_file():
            row["wide"], changed = _wide_score(run, config, scale["wide_test"]), True
        if "ranking" not in row and _scores_pick(row, scale["rounds"]) and (run / "checkpoint.pt").is_file():
            row["ranking"], changed = ranking_quality(run, config, row["labelled"], scale["step"]), True
        if not changed:
            continue
        atomic_write_text(path, json.dumps(row) + "\n")
        if "wide" in row:
            print(
                f"{path.stem}: wide O.F1 {row['wide']['all']['pooled_f1']:.3f} (minority "
                f"{row['wide'].get('minority', {}).get('pooled_f1', float('nan')):.3f}); own test "
                f"{row['wide']['own']['pooled_f1']:.3f} against {row['pooled_f1']:.3f} reported"
            )


@dataclasses.dataclass(frozen=True)
class Round:
    """One run of the study: a seed's shared start (round 0) or a strategy's ``round``-th retraining."""

    seed: int
    strategy: str
    round: int

    @property
    def name(self) -> str:
        return f"s{self.seed}_{self.strategy}_r{self.round}"

    @property
    def previous(self) -> str:
        """The run whose model picked this round's new labels."""
        return f"s{self.seed}_start_r0" if self.round == 1 else f"s{self.seed}_{self.strategy}_r{self.round - 1}"


class ActiveLabels(Study):
    """The strategies for picking images to label, against random picking (:mod:`benchmarks.active_labels`)."""

    name = "active_labels"
    scales = SCALES
    train_alike_once = False  # two strategies that pick the same images are still two points of the curve

    def results_root(self) -> Path:
        return RESULTS

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--figure", default="")
        parser.add_argument(
            "--rescore",
            action="store_true",
            help="train nothing: add the wide-test score (model.pt) and the ranking quality "
            "(checkpoint.pt) to finished runs that lack them, then report",
        )
        parser.add_argument(
            "--strategies", default=",".join(STRATEGIES), help="comma-separated subset of the strategies"
        )

    def trains(self, args: argparse.Namespace) -> bool:
        return not (args.report or args.rescore)

    def plan(self, args: argparse.Namespace) -> list[Round]:
        scale = SCALES[args.scale]
        seeds = selected(args.seeds, scale["seeds"])
        strategies = selected(args.strategies, STRATEGIES)
        rounds = range(1, scale["rounds"] + 1)
        return [Round(seed, "start", 0) for seed in seeds] + [
            Round(seed, s, r) for seed in seeds for r in rounds for s in strategies
        ]

    def config(self, spec: Round, args: argparse.Namespace, folders: Folders, stored: dict | None) -> TrainConfig:
        scale = SCALES[args.scale]
        if stored is not None:  # the labels it was trained on: reused when the study would train alike on them
            return _config(scale, spec.seed, stored["labelled"], args.set)
        if spec.round == 0:
            rng = np.random.default_rng([spec.seed, 0, 17])
            count = _config(scale, spec.seed, [0], args.set).synthetic_train
            labelled = sorted(rng.choice(count, size=scale["start"], replace=False).tolist())
        else:
            labelled = json.loads((folders.results / f"{spec.previous}.json").read_text())["labelled"]
            picked = _pick(
                spec.strategy,
                folders.outputs / spec.previous,
                _config(scale, spec.seed, labelled, args.set),
                labelled,
                scale["step"],
                spec.seed,
                spec.round,
            )
            labelled = sorted(labelled + picked)
        return _config(scale, spec.seed, labelled, args.set)

    def run(self, spec: Round, config: TrainConfig, args: argparse.Namespace, folders: Folders) -> dict:
        from examples.dpfr_gland.batches import build_datasets

        metrics = train_quietly(config, folders.outputs / spec.name)["metrics"]
        train_set, _ = build_datasets(config)
        labelled = [int(i) for i in config.labelled.split(",")]
        return {
            "seed": spec.seed,
            "strategy": spec.strategy,
            "round": spec.round,
            "labelled": labelled,
            "num_labelled": len(labelled),
            "minority_labelled": len(set(labelled) & set(train_set.minority)),
            "pooled_f1": metrics["pooled_f1"],
            "pooled_dice": metrics["pooled_dice"],
            "pooled_hausdorff": metrics["pooled_hausdorff"],
            "config": dataclasses.asdict(config),
        }

    def line(self, spec: Round, row: dict) -> str:
        return (
            f"{spec.name}: {row['num_labelled']} labelled ({row['minority_labelled']} minority), "
            f"O.F1 {row['pooled_f1']:.3f}"
        )

    def stored(self, spec: Round, row: dict, path: Path, args: argparse.Namespace, folders: Folders) -> None:
        # the training is the costly part and is stored; the scores are filled in now, or by the pass
        # of measure() (or --rescore) if they fail or are interrupted
        complete_rows(folders.results, folders.outputs, SCALES[args.scale], only=path)

    def measure(self, args: argparse.Namespace, folders: Folders) -> None:
        if not args.report:
            complete_rows(folders.results, folders.outputs, SCALES[args.scale])

    def report(self, rows: list[dict], args: argparse.Namespace, folders: Folders) -> dict:
        summary = summarise(rows)
        summary["sets"] = args.set
        write_result(folders.summary, summary)
        tables = [summary["table"], summary["paired_table"], summary["target_table"], summary["ranking_table"]]
        for line in [line for table in tables for line in [*table, ""]][:-1]:
            print(line)
        if rows:
            default = ROOT / "docs" / "_static" / "active_labels.png" if folders.tag == "cpu" else None
            figure = Path(args.figure) if args.figure else default or folders.outputs / "active_labels.png"
            draw(summary, figure)
            print(f"wrote {figure}")
            if folders.tag == "cpu" and not folders.custom:
                atomic_write_text(ROOT / "docs" / "active_labels_tables.inc", rst_tables(summary))
        return summary


def main(argv: list[str] | None = None) -> dict:
    """The study's command line (:func:`benchmarks._study.run_study`)."""
    return run_study(ActiveLabels(), argv, description=__doc__.splitlines()[0])


# (name in the summary, where in a row, what the table calls it)
MEASURES = (
    ("f1", ("pooled_f1",), "O.F1, own test"),
    ("wide_f1", ("wide", "all", "pooled_f1"), "O.F1, wide test"),
    ("minority_f1", ("wide", "minority", "pooled_f1"), "O.F1, wide minority"),
    ("majority_f1", ("wide", "majority", "pooled_f1"), "O.F1, wide majority"),
)


def _lookup(row: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return float(row)


def _reach(curve: dict, measure: str) -> dict[str, Any] | None:
    """Whether ``combined`` reaches random's final mean ``measure`` with at most 2/3 of its labels.

    Only points after a pick count (the shared start is not ``combined``'s doing), and only once
    random's final point and every ``combined`` point have every seed (``complete``; ``met`` is
    ``None`` before that)."""
    random = [p for p in curve.get("random", []) if p["round"] > 0 and f"{measure}_mean" in p]
    combined = [p for p in curve.get("combined", []) if p["round"] > 0 and f"{measure}_mean" in p]
    if not random or not combined:
        return None
    seeds = max(p["seeds"] for points in curve.values() for p in points)
    final = max(random, key=lambda p: p["num_labelled"])
    complete = final["seeds"] == seeds and all(p["seeds"] == seeds for p in combined)
    limit = 2 / 3 * final["num_labelled"]
    reached = [p["num_labelled"] for p in combined if p[f"{measure}_mean"] >= final[f"{measure}_mean"]]
    at_limit = [p for p in combined if p["num_labelled"] <= limit]
    return {
        "measure": measure,
        "complete": complete,
        "random_final_labels": final["num_labelled"],
        "random_final": final[f"{measure}_mean"],
        "combined_labels_to_reach": min(reached) if reached else None,
        "combined_at_two_thirds": at_limit[-1][f"{measure}_mean"] if at_limit else None,
        "shortfall_at_two_thirds": (final[f"{measure}_mean"] - at_limit[-1][f"{measure}_mean"] if at_limit else None),
        "met": (bool(reached) and min(reached) <= limit) if complete else None,
    }


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Mean ± std of each measure per (strategy, number of labelled images); round 0 belongs to
    every strategy. A measure is reported for a cell only when every run in it has it."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        for strategy in STRATEGIES if row["strategy"] == "start" else (row["strategy"],):
            cells.setdefault((strategy, row["num_labelled"]), []).append(row)
    curve: dict[str, list[dict[str, Any]]] = {}
    for (strategy, n), members in sorted(cells.items()):
        point: dict[str, Any] = {
            "num_labelled": n,
            "round": members[0]["round"],
            "seeds": len(members),
            "minority_labelled": float(np.mean([m["minority_labelled"] for m in members])),
        }
        for name, keys, _ in MEASURES:
            values = [_lookup(m, keys) for m in members]
            if all(v is not None for v in values):
                point[f"{name}_mean"] = float(np.mean(values))
                point[f"{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        curve.setdefault(strategy, []).append(point)
    wide = next((r["wide"] for r in rows if "wide" in r), None)  # every row's wide set has the same size
    names = [
        label + (f" ({wide[group]['images']} images)" if wide and group in wide else "")
        for (_, keys, label), group in zip(MEASURES, ("own", "all", "minority", "majority"))
    ]
    table = [
        "| strategy | labelled | seeds | " + " | ".join(names) + " | minority images labelled |",
        "|---|---|---|" + "---|" * len(MEASURES) + "---|",
    ]
    for strategy in STRATEGIES:
        for p in curve.get(strategy, []):
            cols = [
                (
                    "–"
                    if f"{m}_mean" not in p
                    else f"{p[f'{m}_mean']:.3f}" + (f" ± {p[f'{m}_std']:.3f}" if p["seeds"] > 1 else " (1 seed)")
                )
                for m, _, _ in MEASURES
            ]
            table.append(
                f"| {strategy} | {p['num_labelled']} | {p['seeds']} | "
                + " | ".join(cols)
                + f" | {p['minority_labelled']:.1f} |"
            )
    targets = {m: _reach(curve, m) for m, _, _ in MEASURES}
    ranking = summarise_ranking(rows)
    paired = summarise_paired(rows)
    labels = {m: label for m, _, label in MEASURES}
    target_table = [
        "| measure | random, final | combined at <= 2/3 of its labels | random − combined | combined reaches it at "
        "| met |",
        "|---|---|---|---|---|---|",
    ]
    for m, t in targets.items():
        if t is None:
            continue
        at = "–" if t["combined_at_two_thirds"] is None else f"{t['combined_at_two_thirds']:.3f}"
        short = "–" if t["shortfall_at_two_thirds"] is None else f"{t['shortfall_at_two_thirds']:+.3f}"
        reach = "not reached" if t["combined_labels_to_reach"] is None else f"{t['combined_labels_to_reach']} labels"
        met = "incomplete" if t["met"] is None else ("yes" if t["met"] else "no")
        target_table.append(
            f"| {labels[m]} | {t['random_final']:.3f} ({t['random_final_labels']} labels) | {at} "
            f"| {short} | {reach} | {met} |"
        )
    return {
        "curve": curve,
        "table": table,
        "target": targets["f1"],
        "targets": {m: t for m, t in targets.items() if t is not None},
        "target_table": target_table,
        "ranking": ranking,
        "ranking_table": ranking_table(ranking),
        "paired": paired,
        "paired_table": paired_table(paired),
    }


def summarise_paired(rows: list[dict]) -> list[dict[str, Any]]:
    """Each strategy minus random, seed by seed, at the same round (the same number of labels and
    the same starting run): the mean difference of each measure and in how many seeds it is > 0."""
    by_key = {(r["seed"], r["strategy"], r["round"]): r for r in rows}
    out = []
    rounds = sorted({r["round"] for r in rows if r["round"] > 0})
    for strategy in STRATEGIES[1:]:
        for round_ in rounds:
            seeds = sorted(
                s for (s, st, rd) in by_key if st == strategy and rd == round_ and (s, "random", round_) in by_key
            )
            if not seeds:
                continue
            entry: dict[str, Any] = {
                "strategy": strategy,
                "round": round_,
                "seeds": len(seeds),
                "num_labelled": by_key[(seeds[0], strategy, round_)]["num_labelled"],
            }
            for name, keys, _ in MEASURES:
                diffs = [
                    (_lookup(by_key[(s, strategy, round_)], keys), _lookup(by_key[(s, "random", round_)], keys))
                    for s in seeds
                ]
                if all(a is not None and b is not None for a, b in diffs):
                    d = [a - b for a, b in diffs]
                    entry[name] = {"mean": float(np.mean(d)), "positive": int(sum(v > 0 for v in d)), "diffs": d}
            out.append(entry)
    return out


def paired_table(paired: list[dict[str, Any]]) -> list[str]:
    labels = {m: label for m, _, label in MEASURES}
    lines = [
        "| strategy − random | labelled | seeds | " + " | ".join(labels.values()) + " |",
        "|---|---|---|" + "---|" * len(MEASURES),
    ]
    for e in paired:
        cols = [
            f"{(round(e[m]['mean'], 3) or 0.0):+.3f} ({e[m]['positive']} of {e['seeds']} > 0)" if m in e else "–"
            for m in labels
        ]
        lines.append(f"| {e['strategy']} | {e['num_labelled']} | {e['seeds']} | " + " | ".join(cols) + " |")
    return lines


def summarise_ranking(rows: list[dict]) -> list[dict[str, Any]]:
    """Per round whose scores picked images (0: the shared start runs; later rounds: the entropy,
    density and combined runs, pooled), mean AUROC of each score for the pool's minority images
    and minority images in its top-k, beside what random picking expects (``k`` × the pool's minority share)."""
    by_round: dict[int, list[dict]] = {}
    for row in rows:  # a random run's scores pick nothing (see _scores_pick)
        if isinstance(row.get("ranking"), dict) and (row["round"] == 0 or row["strategy"] != "random"):
            by_round.setdefault(row["round"], []).append(row["ranking"])
    out = []
    for round_, members in sorted(by_round.items()):
        entry: dict[str, Any] = {
            "round": round_,
            "runs": len(members),
            "random_expected_in_top_k": float(np.mean([m["k"] * m["minority_in_pool"] / m["pool"] for m in members])),
        }
        for key in ("low_density", "entropy", "combined"):
            values = [m[key]["auroc"] for m in members if m[key]["auroc"] is not None]
            entry[key] = {
                "auroc_mean": float(np.mean(values)) if values else None,
                "auroc_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "minority_in_top_k": float(np.mean([m[key]["minority_in_top_k"] for m in members])),
            }
        out.append(entry)
    return out


def ranking_table(ranking: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| round scored | runs | score | AUROC, minority vs rest (0.5 = random) | minority in top-k (random expects) |",
        "|---|---|---|---|---|",
    ]
    for entry in ranking:
        for key in ("low_density", "entropy", "combined"):
            e = entry[key]
            auc = "–" if e["auroc_mean"] is None else f"{e['auroc_mean']:.2f} ± {e['auroc_std']:.2f}"
            lines.append(
                f"| {entry['round']} | {entry['runs']} | {key} | {auc} | {e['minority_in_top_k']:.1f} "
                f"({entry['random_expected_in_top_k']:.1f}) |"
            )
    return lines


def rst_tables(summary: dict) -> str:
    """The summary's Markdown tables as reStructuredText ``csv-table`` directives (for the docs)."""

    def cells(line: str) -> list[str]:
        return ['"' + c.strip().replace('"', '""') + '"' for c in line.strip().strip("|").split("|")]

    parts = []
    for title, lines in (
        ("Student O.F1 against labelled images (mean ± std over seeds)", summary["table"]),
        ("Each strategy minus random, seed by seed, at the same number of labels", summary["paired_table"]),
        ("The label-efficiency target: combined against random's final round", summary["target_table"]),
        ("How well each score singles out the pool's minority images", summary["ranking_table"]),
    ):
        if len(lines) < 3:
            continue
        parts.append(f".. csv-table:: {title}\n   :header: {', '.join(cells(lines[0]))}\n")
        parts += [f"   {', '.join(cells(line))}" for line in lines[2:]]
        parts.append("")
    return "\n".join(parts) + "\n"


def draw(summary: dict, path: Path) -> None:
    """O.F1 against labelled images per strategy: the wide test set (all, minority) where the runs
    have it, else the runs' own test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_wide = any("wide_f1_mean" in p for points in summary["curve"].values() for p in points)
    panels = (
        [("wide_f1", "all test images (wide set)"), ("minority_f1", "minority-appearance test images")]
        if have_wide
        else [("f1", "the runs' own test images")]
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), layout="constrained", squeeze=False)
    for ax, (measure, title) in zip(axes[0], panels):
        for n, strategy in enumerate(STRATEGIES):
            points = [p for p in summary["curve"].get(strategy, []) if f"{measure}_mean" in p]
            if points:
                # strategies share round 0: a small sideways offset keeps their error bars apart
                x = [p["num_labelled"] + 0.12 * (n - 1.5) for p in points]
                ax.errorbar(
                    x,
                    [p[f"{measure}_mean"] for p in points],
                    yerr=[p[f"{measure}_std"] for p in points],
                    marker="o",
                    capsize=3,
                    label=strategy,
                    color=f"C{n}",
                )
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("object F1 (student, pooled)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Picking what to label (synthetic glands, 10 % minority appearance; mean ± std over seeds)", fontsize=9
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


if __name__ == "__main__":
    main()
