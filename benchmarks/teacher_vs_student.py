"""Student against EMA teacher of finished training runs, on unseen synthetic test images.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.teacher_vs_student outputs/demo [RUN ...]``
(each RUN a training output folder with ``checkpoint.pt``; synthetic-data runs only). Both
networks of each checkpoint are scored with the pooled GlaS object metrics on ``--count``
images drawn from the run's own generator at indices ``--start ...`` (the training and the
run's test split use 0 .. train + test - 1), so the comparison is not the run's 4 or 16 test
images. Prints one line per run and writes ``benchmarks/results/teacher_vs_student.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._io import write_result
from examples.dpfr_gland.batches import _SyntheticSplit
from examples.dpfr_gland.evaluate import evaluate, load_checkpoint_model

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_vs_student.json"
KEYS = ("pooled_f1", "pooled_dice", "pooled_hausdorff")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="training output folders")
    parser.add_argument("--start", type=int, default=1000, help="first synthetic image index")
    parser.add_argument("--count", type=int, default=40, help="number of test images")
    parser.add_argument("--out", default=str(RESULTS), help="the JSON to write")
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        row = {"run": run}
        for weights in ("student", "teacher"):
            model, config = load_checkpoint_model(Path(run) / "checkpoint.pt", weights=weights)
            test = _SyntheticSplit(
                config["synthetic_preset"],
                config["synthetic_size"],
                config["seed"] if config.get("synthetic_seed", -1) < 0 else config["synthetic_seed"],
                args.start,
                args.count,
            )
            scores = evaluate(
                model,
                test,
                tile=config["eval_tile"],
                overlap=config["eval_overlap"],
                min_size=config["min_size"],
                dilation=config["contour_width"],
                scale=float(config.get("scale", 1.0)),
            )
            row[weights] = {k: scores[k] for k in KEYS}
        row["config"] = {
            k: config.get(k) for k in ("xi", "xi_relative", "perturb_at", "teacher_buffers", "flow_hidden")
        }
        rows.append(row)
        print(
            f"{run}: student "
            + " / ".join(f"{row['student'][k]:.3f}" for k in KEYS)
            + "  teacher "
            + " / ".join(f"{row['teacher'][k]:.3f}" for k in KEYS),
            flush=True,
        )
    result = {"start": args.start, "count": args.count, "rows": rows}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
