"""Methods side by side: train each on the same config, seed and budget, then one table and pictures.

Run (the README's main command, ``make demo``, does this with the demo config)::

    python -m examples.dpfr_gland.compare --config examples/dpfr_gland/configs/demo_cpu.json \\
        --methods mean_teacher dpfr --out outputs/demo

Each method trains in ``OUT/<method>/`` with :func:`examples.dpfr_gland.loop.train` (a finished
run, one whose ``metrics.json`` exists for the same config, is not trained again). Then the
command prints one table (method x pooled object F1 / object Dice / object Hausdorff of the
student, the EMA teacher's F1 beside) and writes ``OUT/comparison.json``, ``OUT/comparison.png``
(the scores as bars) and ``OUT/predictions.png`` (the first test images: ground truth and each
method's glands, outlined).
"""

from __future__ import annotations

__all__ = ["compare", "main"]

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .batches import build_datasets
from .checkpoint import atomic_write, atomic_write_text
from .config import METHODS, TrainConfig, apply_overrides, load_config
from .loop import train

_KEYS = (("pooled_f1", "O.F1"), ("pooled_dice", "O.Dice"), ("pooled_hausdorff", "O.HD"))


def _finished(folder: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a finished run of exactly ``config`` in ``folder``, else ``None``."""
    try:
        saved = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return metrics if saved == dataclasses.asdict(config) and metrics.get("iterations") == config.iterations else None


def table(results: dict[str, dict[str, Any]]) -> str:
    """The comparison as a Markdown table (student scores; the teacher's object F1 beside).

    Args:
        results: method -> its ``metrics.json`` content.

    Example:
        >>> row = {"pooled_f1": 0.5, "pooled_dice": 0.6, "pooled_hausdorff": 20.0, "num_images": 16}
        >>> print(table({"mean_teacher": row}))
        | method (student) | O.F1 | O.Dice | O.HD | teacher O.F1 | test images |
        |---|---|---|---|---|---|
        | mean_teacher | 0.500 | 0.600 | 20.0 | - | 16 |
    """
    lines = ["| method (student) | O.F1 | O.Dice | O.HD | teacher O.F1 | test images |", "|---|---|---|---|---|---|"]
    for method, m in results.items():
        teacher = m.get("teacher")
        lines.append(
            f"| {method} | {m['pooled_f1']:.3f} | {m['pooled_dice']:.3f} | {m['pooled_hausdorff']:.1f} | "
            f"{teacher['pooled_f1']:.3f} | {m['num_images']} |"
            if teacher
            else f"| {method} | {m['pooled_f1']:.3f} | {m['pooled_dice']:.3f} | {m['pooled_hausdorff']:.1f} | "
            f"- | {m['num_images']} |"
        )
    return "\n".join(lines)


def _pictures(results: dict[str, dict[str, Any]], config: TrainConfig, out: Path, count: int) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import load_checkpoint_model, predict_instances
    from .synthetic import draw_outlines

    def save(fig: Any, path: Path) -> Path:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        return path

    methods = list(results)
    fig, axes = plt.subplots(1, len(_KEYS), figsize=(3.2 * len(_KEYS), 3))
    for ax, (key, label) in zip(axes, _KEYS):
        ax.bar(range(len(methods)), [results[m][key] for m in methods], color=[f"C{i}" for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_title(label + (" (px, lower is better)" if key == "pooled_hausdorff" else ""), fontsize=9)
    fig.suptitle(f"student, {results[methods[0]]['num_images']} test images, seed {config.seed}", fontsize=9)
    written = [save(fig, out / "comparison.png")]
    _, test = build_datasets(config)
    if test is None or count == 0:
        return written
    models = {m: load_checkpoint_model(out / m / "checkpoint.pt", weights="student")[0] for m in methods}
    count = min(count, len(test))
    fig, axes = plt.subplots(count, 1 + len(methods), figsize=(2.6 * (1 + len(methods)), 2.6 * count), squeeze=False)
    for i in range(count):
        image, gt = test[i]
        panels = [("ground truth", gt)] + [
            (
                m,
                predict_instances(models[m], image, **config.prediction_options),
            )
            for m in methods
        ]
        for ax, (name, instances) in zip(axes[i], panels):
            ax.imshow(draw_outlines(image, np.asarray(instances)))
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
    written.append(save(fig, out / "predictions.png"))
    return written


def compare(
    config: TrainConfig, methods: Sequence[str], out: str | Path, pictures: int = 3, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Train every method of ``methods`` on ``config`` (its seed and budget), score, tabulate, draw.

    Args:
        config: the shared configuration (its ``method`` is replaced by each of ``methods``).
        methods: the methods to compare, each one of :data:`~examples.dpfr_gland.config.METHODS`.
        out: the output folder (``<method>/`` per run, ``comparison.json``, ``comparison.png``,
            ``predictions.png``).
        pictures: test images in ``predictions.png`` (0: no such picture).
        progress: show each run's progress bar.

    Returns:
        method -> its ``metrics.json`` content (student scores at the top level, ``"teacher"``).

    Raises:
        ValueError: an unknown or repeated method, or no method.
    """
    methods = list(methods)
    if not methods or len(set(methods)) != len(methods) or any(m not in METHODS for m in methods):
        raise ValueError(f"methods must be distinct names from {METHODS}, got {methods}")
    out = Path(out)
    results = {}
    for method in methods:
        run = dataclasses.replace(config, method=method)
        metrics = _finished(out / method, run)
        if metrics is None:
            metrics = train(run, out / method, progress=progress)["metrics"]
        else:
            print(f"[compare] {method}: finished run in {out / method}, not trained again", flush=True)
        results[method] = metrics
    atomic_write_text(out / "comparison.json", json.dumps(results, indent=2) + "\n")
    print("\n" + table(results) + "\n", flush=True)
    for path in _pictures(results, config, out, pictures):
        print(f"[compare] wrote {path}", flush=True)
    print(f"[compare] per run: {out}/<method>/losses.png, predictions/, metrics.json", flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """The comparison command line (see the module docstring). Returns the exit status, 0."""
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON config shared by every method")
    parser.add_argument("--methods", nargs="+", default=["mean_teacher", "dpfr"], choices=METHODS)
    parser.add_argument("--out", default="outputs/compare", help="output folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field for every method (repeatable)",
    )
    parser.add_argument("--pictures", type=int, default=3, help="test images in predictions.png")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args.overrides)
    except (ValueError, TypeError, FileNotFoundError) as error:
        parser.error(str(error))
    if len(set(args.methods)) != len(args.methods):
        parser.error(f"--methods: each method once, got {args.methods}")
    compare(config, args.methods, args.out, pictures=args.pictures, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
