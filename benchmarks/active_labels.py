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

— and the recipe is trained again from scratch with the same budget. Reported: pooled O.F1 /
O.Dice of the student on the test images against the number of labelled images (mean ± std over
seeds), how many minority images each strategy picked, and the label-efficiency target (the
combined strategy reaching random's final O.F1 with at most two-thirds of its labels). Each run
is written to ``benchmarks/results/active_labels/<scale>/`` at once and skipped when restarted;
the figure goes to ``docs/_static/active_labels.png`` (cpu scale).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._io import write_result
from examples.dpfr_gland.checkpoint import atomic_write, atomic_write_text
from examples.dpfr_gland.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "entropy", "density", "combined")

SCALES: dict[str, dict[str, Any]] = {
    "toy": dict(config=dict(synthetic_size=64, synthetic_train=12, synthetic_test=2, crop_size=64, iterations=3,
                            supervised_warmup=0, rampup=0, flow_warmup=1, eval_tile=64, eval_overlap=16,
                            num_anchors=8, num_negatives=16, flow_hidden=16, projection_hidden=16, projection_dim=8),
                seeds=(0,), start=2, step=2, rounds=1),
    "cpu": dict(config=dict(synthetic_size=128, synthetic_train=64, synthetic_test=40, crop_size=96, iterations=400,
                            supervised_warmup=60, rampup=60, flow_warmup=60, eval_tile=128, eval_overlap=32,
                            batch_labelled=2, batch_unlabelled=2, ema_decay=0.95, flow_hidden=64,
                            projection_hidden=64, projection_dim=32, num_anchors=64, num_negatives=128),
                seeds=(0, 1, 2), start=4, step=4, rounds=2),
}
_COMMON = dict(method="dpfr", dataset="synthetic", synthetic_preset="medium", synthetic_mix="hard:0.1",
               synthetic_seed=3001, device="cpu", num_workers=0, log_every=50, eval_pictures=0, checkpoint_every=0)


def _config(scale: dict, seed: int, labelled: list[int]) -> TrainConfig:
    return TrainConfig(**{**_COMMON, **scale["config"], "seed": seed, "labelled": ",".join(map(str, sorted(labelled)))})


def _train(config: TrainConfig, out: Path) -> dict[str, Any]:
    from examples.dpfr_gland.loop import train

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = train(config, out, progress=False)
    (out / "train.log").write_text(log.getvalue())
    return result["metrics"]


def _pick(strategy: str, run: Path, config: TrainConfig, labelled: list[int], step: int, seed: int,
          round_: int) -> list[int]:
    from densessl.functional import diverse_top_k
    from examples.dpfr_gland.batches import build_datasets
    from examples.dpfr_gland.suggest import _trainer, score_images

    train_set, _ = build_datasets(config)
    pool = [i for i in range(len(train_set)) if i not in set(labelled)]
    if strategy == "random":
        rng = np.random.default_rng([seed, round_, 17])
        return sorted(rng.choice(pool, size=min(step, len(pool)), replace=False).tolist())
    trainer = _trainer(run / "checkpoint.pt", "cpu")
    scores = score_images(trainer, [train_set[i][0] for i in pool], [train_set[i][0] for i in labelled])
    key = {"entropy": "entropy", "density": "low_density", "combined": "combined"}[strategy]
    diversity = 0.5 if strategy == "combined" else 0.0
    chosen = diverse_top_k(scores[key].double(), scores["pooled"], step, diversity=diversity).tolist()
    return sorted(pool[i] for i in chosen)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--results", default="")
    parser.add_argument("--outputs", default="")
    parser.add_argument("--figure", default="")
    parser.add_argument("--report", action="store_true", help="only the summary and the figure")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    results = Path(args.results) if args.results else RESULTS / "active_labels" / args.scale
    outputs = Path(args.outputs) if args.outputs else ROOT / "outputs" / "active_labels" / args.scale
    figure = Path(args.figure) if args.figure else (ROOT / "docs" / "_static" / "active_labels.png"
                                                    if args.scale == "cpu" else outputs / "active_labels.png")
    results.mkdir(parents=True, exist_ok=True)
    plan = [(seed, "start", 0) for seed in scale["seeds"]]
    plan += [(seed, s, r) for seed in scale["seeds"] for r in range(1, scale["rounds"] + 1) for s in STRATEGIES]
    if not args.report:
        from examples.dpfr_gland.batches import build_datasets
        from tqdm import tqdm

        bar = tqdm(plan, desc=f"active_labels {args.scale}", unit="run")
        for seed, strategy, round_ in bar:
            name = f"s{seed}_{strategy}_r{round_}"
            path = results / f"{name}.json"
            if path.is_file():
                continue
            bar.set_postfix_str(name)
            if round_ == 0:
                rng = np.random.default_rng([seed, 0, 17])
                count = _config(scale, seed, [0]).synthetic_train
                labelled = sorted(rng.choice(count, size=scale["start"], replace=False).tolist())
                previous = None
            else:
                prev_name = f"s{seed}_start_r0" if round_ == 1 else f"s{seed}_{strategy}_r{round_ - 1}"
                previous = json.loads((results / f"{prev_name}.json").read_text())
                labelled = previous["labelled"]
                labelled = sorted(labelled + _pick(strategy, outputs / prev_name, _config(scale, seed, labelled),
                                                   labelled, scale["step"], seed, round_))
            config = _config(scale, seed, labelled)
            metrics = _train(config, outputs / name)
            train_set, _ = build_datasets(config)
            row = {"seed": seed, "strategy": strategy, "round": round_, "labelled": labelled,
                   "num_labelled": len(labelled), "minority_labelled": len(set(labelled) & set(train_set.minority)),
                   "pooled_f1": metrics["pooled_f1"], "pooled_dice": metrics["pooled_dice"],
                   "pooled_hausdorff": metrics["pooled_hausdorff"], "config": dataclasses.asdict(config)}
            atomic_write_text(path, json.dumps(row) + "\n")
            bar.write(f"{name}: {len(labelled)} labelled ({row['minority_labelled']} minority), O.F1 "
                      f"{row['pooled_f1']:.3f}")
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("s*_r*.json"))]
    summary = summarise(rows)
    write_result(results / "summary.json" if args.results else RESULTS / f"active_labels_{args.scale}.json", summary)
    for line in summary["table"]:
        print(line)
    if rows:
        draw(summary, figure)
        print(f"wrote {figure}")
    return summary


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Mean ± std of O.F1 per (strategy, number of labelled images); round 0 belongs to every strategy."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        for strategy in (STRATEGIES if row["strategy"] == "start" else (row["strategy"],)):
            cells.setdefault((strategy, row["num_labelled"]), []).append(row)
    curve = {}
    for (strategy, n), members in sorted(cells.items()):
        f1 = [m["pooled_f1"] for m in members]
        curve.setdefault(strategy, []).append({
            "num_labelled": n, "f1_mean": float(np.mean(f1)), "f1_std": float(np.std(f1, ddof=1)) if len(f1) > 1 else 0.0,
            "seeds": len(f1), "minority_labelled": float(np.mean([m["minority_labelled"] for m in members]))})
    table = ["| strategy | labelled | seeds | O.F1 | minority images labelled |", "|---|---|---|---|---|"]
    for strategy in STRATEGIES:
        for point in curve.get(strategy, []):
            table.append(f"| {strategy} | {point['num_labelled']} | {point['seeds']} | {point['f1_mean']:.3f} ± "
                         f"{point['f1_std']:.3f} | {point['minority_labelled']:.1f} |")
    target = None
    if curve.get("random") and curve.get("combined"):
        final = curve["random"][-1]
        reached = [p["num_labelled"] for p in curve["combined"] if p["f1_mean"] >= final["f1_mean"]]
        target = {"random_final_labels": final["num_labelled"], "random_final_f1": final["f1_mean"],
                  "combined_labels_to_reach": min(reached) if reached else None,
                  "met": bool(reached) and min(reached) <= 2 / 3 * final["num_labelled"]}
    return {"curve": curve, "table": table, "target": target}


def draw(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    for n, strategy in enumerate(STRATEGIES):
        points = summary["curve"].get(strategy, [])
        if points:
            ax.errorbar([p["num_labelled"] for p in points], [p["f1_mean"] for p in points],
                        yerr=[p["f1_std"] for p in points], marker="o", capsize=3, label=strategy, color=f"C{n}")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("object F1 (student, pooled)")
    ax.set_title("Picking what to label (synthetic glands, 10 % minority appearance)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


if __name__ == "__main__":
    main()
