"""Does density perturbation help? The DPFR ablation on synthetic glands, as a resumable study.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m benchmarks.ssl_quality`` (the ``cpu`` scale; ``--scale
gpu`` for a CUDA machine, ``--scale toy`` for the CI smoke run; ``--report`` only rebuilds the
tables and figures from the finished runs).

What it trains (the recipe's defaults with the overrides of the scale, which start from the demo
config's values as of the study's design):

- **main**: the five methods ``supervised``, ``mean_teacher``, ``fdp``, ``fr``, ``dpfr`` x the
  seeds x the presets (``medium`` and the harder ``hard``), at 1/8 labels;
- **control**: ``fdp`` with ``perturb_direction="random"`` (the same step length per pixel in a
  random direction; ``medium``, every seed): whether the density's direction matters;
- **ratio**: ``mean_teacher`` and ``dpfr`` at 1/4 and 1/2 labels (``medium``, every seed);
- **sweep**: ``dpfr`` with the paper's absolute ``xi`` in {1, 3, 5} and ``num_anchors`` T in
  {64, 256} (``medium``, seed 0);
- on real glands (the ``glas`` preset, when ``../shared/data/glas-train`` or ``--data glas=DIR``
  is there; :func:`real_plan`): **curve** (supervised at 1/16 ... all labels), **main** (the four
  semi-supervised methods at 1/8 and 1/4), **control** (FDP's random direction at 1/8) and, only
  when ``--groups`` names it and meant for ``--split validation``, **pseudo** (the pseudo-label
  rules under ``mean_teacher`` at 1/8, against the default rule and supervised, paired by seed).

Every run of one preset trains on the same synthetic images and is scored on the same test
images: both come from a generator seed (``DATA_SEEDS``) that no tuning of the recipe used (the
demo and the tuning runs use generator seeds 0-2 and ``--split validation``). The run's
``seed`` draws the labelled subset, the initialisation and every random view.

Each finished run is written at once to ``benchmarks/results/ssl_quality/<scale>/<run>.json``
(its config, student and teacher GlaS scores pooled and per image, predicted class shares on
the test images, pseudo-label keep rates per class, the logged loss terms, wall time) and is
skipped when the study is started again, so the study can stop and resume across sessions.
The summary (mean +- std over seeds) goes to ``benchmarks/results/ssl_quality_<scale>.json``
and to the figures in ``docs/_static/ssl_quality/`` (matplotlib, the ``bench`` extra).

CPU budget of the ``cpu`` scale (2 shared cores): about 3.7 hours for the 49 distinct synthetic
runs (a ``dpfr`` run of 600 iterations takes about 5 minutes, ``supervised`` about 2.5); the GlaS
preset's 42 runs about 13 hours (``configs/glas_cpu.json``: supervised about 10 minutes,
``mean_teacher`` about 16-20, ``dpfr`` about 35).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._io import write_result
from benchmarks._study import Folders, Study, effective_config, run_study, selected, train_quietly
from benchmarks._study import fingerprint as _fingerprint
from densessl.metrics import object_counts as glas_object_counts
from examples.dpfr_gland.augment import to_tensor
from examples.dpfr_gland.batches import build_datasets
from examples.dpfr_gland.checkpoint import atomic_write_text
from examples.dpfr_gland.config import METHODS, TrainConfig, apply_overrides
from examples.dpfr_gland.evaluate import native_postprocess, predict_probabilities
from examples.dpfr_gland.plots import smooth
from examples.dpfr_gland.targets import NUM_CLASSES, classes_to_instances, instances_to_classes

__all__ = ["SCALES", "RunSpec", "effective_config", "main", "plan", "summarise"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = ROOT / "docs" / "_static" / "ssl_quality"
#: Generator seeds of the study's images, per split: ``test`` seeds were never used to tune
#: the recipe; ``validation`` seeds are for tuning (the demo itself uses the run's seed, 0).
DATA_SEEDS = {"test": {"medium": 1009, "hard": 2003}, "validation": {"medium": 503, "hard": 607}}
CLASS_NAMES = ("background", "interior", "contour")
SCORE_KEYS = (
    "pooled_f1",
    "pooled_dice",
    "pooled_hausdorff",
    "per_image_f1",
    "per_image_dice",
    "per_image_hausdorff",
    "pixel_dice",
)


#: Real-data presets: the recipe config each starts from, and the folder it reads by default
#: (``--data PRESET=DIR`` names another). The images are never copied into the project.
REAL_CONFIGS = {"glas": ROOT / "examples" / "dpfr_gland" / "configs" / "glas_cpu.json"}
REAL_DATA = {"glas": ROOT.parent / "shared" / "data" / "glas-train"}
#: The part of a real preset's ``split_file`` each study split scores on.
REAL_TEST_PART = {"test": "test", "validation": "validation"}
#: Label ratios of a real preset's supervised learning curve; its main grid runs at the first two
#: of ``MAIN_RATIOS``.
CURVE_RATIOS = ("1/8", "1", "1/4", "1/2", "1/16")  # the headline gap first: a partial curve answers it
MAIN_RATIOS = ("1/8", "1/4")
#: The pseudo-label rules the ``pseudo`` group compares (``mean_teacher`` at 1/8, meant for
#: ``--split validation``: the default is chosen there, never on the test part); the first is the default.
PSEUDO_RULES = ("entropy", "instance", "class_share", "soft", "distill")


@dataclass(frozen=True)
class Scale:
    """One size of the study: the config overrides and the grid."""

    overrides: dict[str, Any]
    seeds: tuple[int, ...]
    presets: tuple[str, ...] = ("medium", "hard")
    real: tuple[str, ...] = ()
    real_overrides: dict[str, Any] = field(default_factory=dict)
    real_by_default: bool = True  # run the real presets without --presets naming them
    ratios: tuple[str, ...] = ("1/4", "1/2")
    xis: tuple[float, ...] = (1.0, 3.0, 5.0)
    anchors: tuple[int, ...] = (64, 256)
    feature_pixels: int = 300  # test pixels per class in the feature picture
    note: str = ""


# The demo config's values when the study was designed (2026-12-01), written out so that tuning
# the demo later does not silently change (and re-run) the study.
_BASE = dict(
    method="dpfr",
    dataset="synthetic",
    backbone="resnet34",
    batch_labelled=2,
    batch_unlabelled=2,
    lr=1e-3,
    ema_decay=0.95,
    flow_hidden=64,
    projection_hidden=64,
    projection_dim=32,
    num_anchors=64,
    num_negatives=128,
    num_workers=0,
    eval_tile=128,
    eval_overlap=32,
)
_CPU = dict(
    _BASE,
    synthetic_size=128,
    synthetic_train=64,
    synthetic_test=40,
    crop_size=96,
    iterations=600,
    supervised_warmup=100,
    rampup=100,
    flow_warmup=100,
    log_every=10,
    checkpoint_every=100,
    eval_pictures=0,
    device="cpu",
)
SCALES: dict[str, Scale] = {
    "toy": Scale(
        dict(
            _CPU,
            synthetic_size=64,
            synthetic_train=16,
            synthetic_test=2,
            crop_size=64,
            iterations=4,
            supervised_warmup=1,
            rampup=1,
            flow_warmup=1,
            log_every=2,
            checkpoint_every=0,
            eval_tile=64,
            num_anchors=8,
            num_negatives=16,
        ),
        seeds=(0, 1),
        presets=("medium",),
        ratios=("1/2",),
        xis=(3.0,),
        anchors=(8, 16),
        feature_pixels=20,
        real=("glas",),
        real_overrides=dict(
            iterations=4,
            crop_size=64,
            batch_labelled=2,
            batch_unlabelled=2,
            supervised_warmup=1,
            rampup=1,
            flow_warmup=1,
            log_every=2,
            checkpoint_every=0,
            eval_tile=64,
            eval_overlap=16,
            num_anchors=8,
            num_negatives=16,
            eval_pictures=0,
            scale=0.5,
        ),
        real_by_default=False,
        note="CI smoke size: proves the machinery, measures nothing",
    ),
    "cpu": Scale(
        _CPU,
        seeds=(0, 1, 2),
        real=("glas",),
        real_overrides=dict(eval_pictures=0),
        note="ResNet-34, 128 px images, 96 px crops, batch 2+2, 600 iterations, "
        "64 training / 40 test images per preset, CPU; real GlaS: configs/glas_cpu.json",
    ),
    "gpu": Scale(
        dict(
            _CPU,
            backbone="resnet50",
            synthetic_size=384,
            synthetic_train=128,
            synthetic_test=80,
            crop_size=256,
            batch_labelled=4,
            batch_unlabelled=4,
            iterations=4000,
            supervised_warmup=500,
            rampup=500,
            flow_warmup=500,
            eval_tile=384,
            checkpoint_every=500,
            device="cuda",
            num_workers=4,
            ema_decay=0.99,
        ),
        seeds=(0, 1, 2),
        note="ResNet-50, 384 px images, 256 px crops, batch 4+4, 4000 iterations, CUDA",
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study: a group (``main``/``control``/``ratio``/``sweep``) and its config keys."""

    group: str
    preset: str
    method: str
    seed: int
    label_ratio: str = "1/8"
    extra: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def overrides(self, scale: Scale, split: str, data: dict[str, Path] | None = None) -> dict[str, Any]:
        run = {"method": self.method, "seed": self.seed, "label_ratio": self.label_ratio, **dict(self.extra)}
        if self.preset in REAL_CONFIGS:  # real images: the recipe's config for them, scored on a fixed part
            base = {k: v for k, v in json.loads(REAL_CONFIGS[self.preset].read_text()).items() if not k.startswith("_")}
            folder = (data or {}).get(self.preset, REAL_DATA[self.preset])
            return {**base, **scale.real_overrides, "data": str(folder), "test_split": REAL_TEST_PART[split], **run}
        return {
            **scale.overrides,
            "synthetic_preset": self.preset,
            "synthetic_seed": DATA_SEEDS[split][self.preset],
            **run,
        }

    @property
    def name(self) -> str:
        parts = [self.preset, self.method, self.label_ratio.replace("/", "of"), f"s{self.seed}"]
        parts += [f"{k}{v}" for k, v in self.extra]
        return "_".join(parts)


def plan(scale: Scale) -> list[RunSpec]:
    """Every run of ``scale``, main grid first (so that a partial study answers the headline first).

    Runs that a later group would repeat (e.g. the sweep's ``num_anchors`` equal to the
    config's) appear once, at their first place.
    """
    runs = [
        RunSpec("main", preset, method, seed) for preset in scale.presets for seed in scale.seeds for method in METHODS
    ]
    # FDP's control: the same step length in a random direction (does the density's direction matter?)
    runs += [
        RunSpec("control", scale.presets[0], "fdp", seed, extra=(("perturb_direction", "random"),))
        for seed in scale.seeds
    ]
    runs += [
        RunSpec("ratio", scale.presets[0], method, seed, ratio)
        for ratio in scale.ratios
        for seed in scale.seeds
        for method in ("mean_teacher", "dpfr")
    ]
    runs += [
        RunSpec("sweep", scale.presets[0], "dpfr", scale.seeds[0], extra=(("xi", xi), ("xi_relative", False)))
        for xi in scale.xis
    ]
    runs += [
        RunSpec("sweep", scale.presets[0], "dpfr", scale.seeds[0], extra=(("num_anchors", t),)) for t in scale.anchors
    ]
    return runs + real_plan(scale)


def real_plan(scale: Scale) -> list[RunSpec]:
    """The runs of the real-data presets: the supervised learning curve first (seed by seed, so a
    partial study already has whole curves), then the semi-supervised methods at 1/8 labels, FDP's
    random-direction control, and the methods at 1/4. Supervised at 1/8 and 1/4 (the baselines) and
    at all labels (the ceiling) are points of the curve. The ``pseudo`` group (the pseudo-label rules
    under ``mean_teacher``) is for ``--split validation`` and runs only when ``--groups`` names it;
    its supervised reference is the curve's 1/8 point on the same split."""
    runs = []
    for preset in scale.real:
        runs += [RunSpec("curve", preset, "supervised", seed, ratio) for seed in scale.seeds for ratio in CURVE_RATIOS]
        for ratio in MAIN_RATIOS:
            runs += [RunSpec("main", preset, method, seed, ratio) for seed in scale.seeds for method in METHODS[1:]]
            if ratio == MAIN_RATIOS[0]:
                runs += [
                    RunSpec("control", preset, "fdp", seed, ratio, extra=(("perturb_direction", "random"),))
                    for seed in scale.seeds
                ]
        # the pseudo-label rules, seed by seed (a partial comparison is paired); supervised at 1/8, their
        # reference, is the curve's point (``--groups curve --ratios 1/8`` on the same split)
        runs += [
            RunSpec("pseudo", preset, "mean_teacher", seed, MAIN_RATIOS[0], extra=(("pseudo_labels", rule),))
            for seed in scale.seeds
            for rule in PSEUDO_RULES
        ]
    return runs


def _config(
    spec: RunSpec, scale: Scale, split: str, sets: Sequence[str] = (), data: dict[str, Path] | None = None
) -> TrainConfig:
    """The run's config: the recipe's defaults, the scale's (or the real preset's config) and the
    run's keys, then ``--set``."""
    return apply_overrides(dataclasses.replace(TrainConfig(), **spec.overrides(scale, split, data)), list(sets))


# ----------------------------------------------------------------------------- measurements of one run


@torch.no_grad()
@torch.no_grad()
def test_measurements(model: torch.nn.Module, dataset: Any, config: TrainConfig) -> tuple[dict, dict]:
    """One prediction of every test image, two measurements: the argmax class shares beside the
    truth's (:func:`truth_shares`; contour erosion) and the gland counts (:func:`glas_object_counts`:
    whether a fall in object F1 comes from extra objects or lost ones).

    The instances are made as evaluation makes them (:func:`~examples.dpfr_gland.evaluate.predict_instances`:
    the same probabilities, then the run's ``min_size`` and ``contour_width`` on the native grid).

    Returns:
        ``(class_shares, objects)``: ``{"predicted", "truth", "truth_grid"}`` and ``{"predicted",
        "truth", "tp", "precision", "recall", "per_image"}``.
    """
    model.eval()
    min_size, dilation = native_postprocess(config.min_size, config.contour_width, config.scale)
    predicted = np.zeros(NUM_CLASSES)
    per_image = []
    for i in range(len(dataset)):
        image, instances = dataset[i]
        probs = predict_probabilities(model, image, **config.window_options)
        predicted += np.bincount(probs.argmax(0).flatten().numpy(), minlength=NUM_CLASSES)
        pred = classes_to_instances(probs, min_size=min_size, dilation=dilation).numpy()
        per_image.append(list(glas_object_counts(pred, np.asarray(instances))))
    shares = {
        "predicted": dict(zip(CLASS_NAMES, (predicted / predicted.sum()).tolist())),
        "truth": truth_shares(dataset, config),
        "truth_grid": "network",
    }
    n_pred, n_gt, tp = (int(v) for v in np.sum(per_image, axis=0))
    objects = {
        "predicted": n_pred,
        "truth": n_gt,
        "tp": tp,
        "precision": tp / max(n_pred, 1),
        "recall": tp / max(n_gt, 1),
        "per_image": per_image,
    }
    return shares, objects


def truth_shares(dataset: Any, config: TrainConfig) -> dict[str, float]:
    """Class shares of the test images' 3-class targets, made as the training targets are: the
    instance map brought to the network's scale (nearest), then a ``contour_width``-pixel contour."""
    from examples.dpfr_gland.scale import resize_labels, scaled_size

    truth = np.zeros(NUM_CLASSES)
    for i in range(len(dataset)):
        instances = np.asarray(dataset[i][1])
        if config.scale != 1.0:
            instances = resize_labels(instances, scaled_size(*instances.shape[:2], config.scale))
        truth += np.bincount(
            instances_to_classes(instances, contour_width=config.contour_width).flatten(), minlength=NUM_CLASSES
        )
    return dict(zip(CLASS_NAMES, (truth / truth.sum()).tolist()))


@torch.no_grad()
def decoder_features(
    model: torch.nn.Module, dataset: Any, config: TrainConfig, per_class: int, seed: int = 0
) -> dict[str, Any]:
    """Decoder features of test pixels projected to 2-D by PCA, ``per_class`` pixels of each class.

    The projection is linear, so distances in the picture are distances in the feature space
    (the article uses t-SNE; PCA does not invent clusters). ``separation`` is the accuracy of the
    nearest class mean in the *full* feature space (leave-one-out is unnecessary at hundreds of
    pixels per class), a number that goes with the picture.
    """
    model.eval()
    feats, labels = [], []
    for i in range(len(dataset)):
        image, instances = dataset[i]
        x = to_tensor(image)[None]
        h, w = x.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        decoder = model(x).decoder[0].float()
        size = decoder.shape[-2:]
        classes = torch.as_tensor(instances_to_classes(instances, contour_width=config.contour_width))
        classes = torch.nn.functional.pad(classes[None, None].float(), (0, pw, 0, ph), mode="replicate")[0, 0].long()
        # nearest pixel of the full-resolution class map at each decoder position
        rows = torch.arange(size[0]) * classes.shape[0] // size[0]
        cols = torch.arange(size[1]) * classes.shape[1] // size[1]
        small = classes[rows][:, cols]
        feats.append(decoder.flatten(1).t())
        labels.append(small.flatten())
    f, y = torch.cat(feats).numpy().astype(np.float64), torch.cat(labels).numpy()
    rng = np.random.default_rng(seed)
    chosen = np.concatenate(
        [
            rng.choice(np.flatnonzero(y == c), size=min(per_class, int((y == c).sum())), replace=False)
            for c in range(NUM_CLASSES)
            if (y == c).any()
        ]
    )
    f, y = f[chosen], y[chosen]
    centred = f - f.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    means = np.stack([f[y == c].mean(0) for c in range(NUM_CLASSES)])
    nearest = np.argmin(((f[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return {
        "xy": np.round(xy, 4).tolist(),
        "labels": y.tolist(),
        "explained": float((s[:2] ** 2).sum() / (s**2).sum()),
        "separation": float((nearest == y).mean()),
    }


def _tail_mean(history: Sequence[dict[str, float]], key: str) -> float | None:
    values = [row[key] for row in history[len(history) // 2 :] if key in row]
    return float(np.mean(values)) if values else None


def run_one(
    spec: RunSpec,
    scale: Scale,
    split: str,
    sets: Sequence[str],
    out_root: Path,
    features: bool,
    data: dict[str, Path] | None = None,
) -> dict:
    """Train one run (quietly: the trainer's lines go to ``train.log``) and measure it."""
    from examples.dpfr_gland.evaluate import load_checkpoint_model

    config = _config(spec, scale, split, sets, data)
    out = out_root / spec.name
    started = time.perf_counter()
    result = train_quietly(config, out)
    wall = time.perf_counter() - started
    metrics, history = result["metrics"], result["history"]
    _, test = build_datasets(config)
    row: dict[str, Any] = {
        "name": spec.name,
        "group": spec.group,
        "preset": spec.preset,
        "method": spec.method,
        "seed": spec.seed,
        "label_ratio": spec.label_ratio,
        "extra": dict(spec.extra),
        "split": split,
        "fingerprint": _fingerprint(config),
        "config": dataclasses.asdict(config),
        "wall_s": round(wall, 1),
        "student": {k: metrics[k] for k in SCORE_KEYS},
        "teacher": {k: metrics["teacher"][k] for k in SCORE_KEYS} if "teacher" in metrics else None,
        "num_test_images": metrics["num_images"],
        "history": history,
        "keep": {
            k: _tail_mean(history, k)
            for k in ("kept", *(f"kept_{c}" for c in CLASS_NAMES), *(f"share_{c}" for c in CLASS_NAMES))
        },
        "perturbation": {k: _tail_mean(history, k) for k in ("fdp_gain", "flip", "flow_nll_per_dim")},
    }
    if "curve" in metrics:  # eval_every: scores on every test split during training
        row["curve"] = metrics["curve"]
    student, _ = load_checkpoint_model(out / "checkpoint.pt", weights="student")  # float32, as trained
    row["class_shares"], row["objects"] = test_measurements(student, test, config)
    if features:
        row["features"] = decoder_features(student, test, config, scale.feature_pixels)
    return row


# ----------------------------------------------------------------------------- the summary


def _stats(values: Iterable[float | None]) -> dict[str, float] | None:
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v), "values": v}


def summarise(rows: Sequence[dict]) -> dict[str, Any]:
    """Mean +- std over seeds of every (group, preset, method, label ratio, extra) cell."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["group"], row["preset"], row["method"], row["label_ratio"], json.dumps(row["extra"], sort_keys=True))
        cells.setdefault(key, []).append(row)
    out = []
    for (group, preset, method, ratio, extra), members in cells.items():
        cell: dict[str, Any] = {
            "group": group,
            "preset": preset,
            "method": method,
            "label_ratio": ratio,
            "extra": json.loads(extra),
            "seeds": [m["seed"] for m in members],
        }
        for weights in ("student", "teacher"):
            if members[0][weights] is not None:
                cell[weights] = {k: _stats(m[weights][k] for m in members) for k in SCORE_KEYS}
        cell["keep"] = {k: _stats(m["keep"][k] for m in members) for k in members[0]["keep"]}
        cell["contour_share"] = _stats(m["class_shares"]["predicted"]["contour"] for m in members)
        cell["contour_share_truth"] = members[0]["class_shares"]["truth"]["contour"]
        cell["perturbation"] = {k: _stats(m["perturbation"][k] for m in members) for k in members[0]["perturbation"]}
        cell["wall_s"] = _stats(m["wall_s"] for m in members)
        cell["objects"] = {
            k: _stats(m["objects"][k] for m in members if "objects" in m)
            for k in ("precision", "recall", "predicted", "truth")
        }
        out.append(cell)
    order = {m: i for i, m in enumerate(METHODS)}
    out.sort(
        key=lambda c: (
            c["group"],
            c["preset"],
            order[c["method"]],
            _ratio(c["label_ratio"]),
            json.dumps(c["extra"], sort_keys=True),
        )
    )
    return {"cells": out}


def _presets(cells: Sequence[dict]) -> list[str]:
    """The synthetic presets of ``cells`` from easy to hard: the first is the study's headline (``medium``)."""
    order = ("easy", "medium", "hard")
    return sorted(
        {c["preset"] for c in cells if c["preset"] not in REAL_CONFIGS},
        key=lambda p: order.index(p) if p in order else len(order),
    )


def _pooled_f1(counts: np.ndarray) -> np.ndarray:
    """Pooled object F1 from per-image ``(predicted, true, true positives)`` counts summed over the
    last-but-one axis: ``2 TP / (predicted + true)`` (the GlaS pooling)."""
    total = counts.sum(axis=-2)
    return 2 * total[..., 2] / np.maximum(total[..., 0] + total[..., 1], 1)


def paired_difference(
    runs: Sequence[dict], baselines: Sequence[dict], draws: int = 2000, seed: int = 0
) -> dict[str, float] | None:
    """Pooled object F1 of ``runs`` minus that of ``baselines``, paired by seed, with a 95 % bootstrap
    interval over test images (the same images drawn for every seed of a draw).

    Both sides are scored from their per-image object counts (``objects.per_image``), so the
    difference and its interval come from one computation. ``wins`` counts the seeds in which the
    run is above its baseline.

    Example:
        >>> a = {"seed": 0, "objects": {"per_image": [[2, 2, 2], [1, 2, 1]]}}
        >>> b = {"seed": 0, "objects": {"per_image": [[2, 2, 1], [1, 2, 1]]}}
        >>> round(paired_difference([a], [b])["mean"], 3)
        0.286
    """
    by_seed = {r["seed"]: r for r in baselines if "per_image" in r.get("objects", {})}
    pairs = [(r, by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed and "per_image" in r.get("objects", {})]
    if not pairs:
        return None
    a = np.array([r["objects"]["per_image"] for r, _ in pairs], dtype=np.float64)  # [seeds, images, 3]
    b = np.array([q["objects"]["per_image"] for _, q in pairs], dtype=np.float64)
    if a.shape != b.shape:
        return None
    point = _pooled_f1(a) - _pooled_f1(b)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, a.shape[1], size=(draws, a.shape[1]))
    boot = (_pooled_f1(a[:, index]) - _pooled_f1(b[:, index])).mean(axis=0)  # [draws]
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "mean": float(point.mean()),
        "low": float(low),
        "high": float(high),
        "wins": int((point > 0).sum()),
        "n": len(pairs),
    }


def budget_choice(
    curve: Sequence[dict],
    weights: str = "student",
    key: str = "pooled_f1",
    on: str = "validation",
    report: str = "test",
) -> dict[str, float] | None:
    """The iteration a run's ``eval_every`` curve picks on the ``on`` part (its best ``key``; the
    earliest on a tie), with the ``report`` part's score there and at the run's end. ``None``
    when the curve lacks either part.

    Example:
        >>> curve = [{"iteration": t, "split": s, "weights": "student", "pooled_f1": f}
        ...          for t, v, r in ((200, 0.5, 0.4), (400, 0.7, 0.5), (600, 0.6, 0.6))
        ...          for s, f in (("validation", v), ("test", r))]
        >>> budget_choice(curve)
        {'iteration': 400, 'validation': 0.7, 'test_at_choice': 0.5, 'test_final': 0.6, 'final_iteration': 600}
    """
    points = {(row["iteration"], row["split"]): row[key] for row in curve if row["weights"] == weights and key in row}
    both = sorted(t for t, split in points if split == on and (t, report) in points)
    if not both:
        return None
    best = max(both, key=lambda t: (points[t, on], -t))
    return {
        "iteration": best,
        on: points[best, on],
        f"{report}_at_choice": points[best, report],
        f"{report}_final": points[both[-1], report],
        "final_iteration": both[-1],
    }


def budget_table(rows: Sequence[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The runs with an ``eval_every`` curve on a validation and a test part: the budget each
    picks on validation (student O.F1) and its test score there, against the test score at its end."""
    body = []
    for row in sorted(rows, key=lambda r: (r["preset"], r["label_ratio"], r["method"], r["seed"])):
        choice = budget_choice(row.get("curve") or [])
        if choice is None:
            continue
        body.append(
            [
                row["preset"],
                row["label_ratio"],
                row["method"],
                str(row["seed"]),
                f"{choice['iteration']} of {choice['final_iteration']}",
                f"{choice['validation']:.3f}",
                f"{choice['test_at_choice']:.3f}",
                f"{choice['test_final']:.3f}",
            ]
        )
    if not body:
        return []
    header = [
        "preset",
        "labels",
        "method",
        "seed",
        "iteration chosen",
        "validation O.F1",
        "test O.F1 there",
        "test O.F1 at the end",
    ]
    title = (
        "the budget chosen on the validation part (student pooled O.F1 every eval_every iterations), "
        "read off on the test part"
    )
    return [(title, header, body)]


def real_tables(rows: Sequence[dict], summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The real-data presets' tables: the supervised learning curve, then every method at each main
    ratio against supervised and mean_teacher (paired differences with bootstrap intervals), the gap
    it closes to supervised with all labels, contour share against the truth, object precision and recall."""
    out = []
    cells = summary["cells"]
    part = REAL_TEST_PART.get(summary.get("split", "test"), "test")
    for preset in [p for p in REAL_CONFIGS if any(c["preset"] == p for c in cells)]:
        curve = sorted(
            [c for c in cells if c["preset"] == preset and c["group"] == "curve"],
            key=lambda c: _ratio(c["label_ratio"]),
        )
        if curve:
            out.append(
                (
                    f"{preset}: supervised learning curve (student, pooled, {part} part, mean ± std over seeds)",
                    ["labels", "seeds", "O.F1", "O.Dice", "O.HD", "pixel Dice", "contour share (truth)"],
                    [
                        [
                            c["label_ratio"],
                            str(len(c["seeds"])),
                            _fmt(c["student"]["pooled_f1"]),
                            _fmt(c["student"]["pooled_dice"]),
                            _fmt(c["student"]["pooled_hausdorff"], 1),
                            _fmt(c["student"]["pixel_dice"]),
                            f"{_fmt(c['contour_share'])} ({c['contour_share_truth']:.3f})",
                        ]
                        for c in curve
                    ],
                )
            )
        ceiling = next((c for c in curve if _ratio(c["label_ratio"]) == 1), None)
        mine = [r for r in rows if r["preset"] == preset]
        for ratio in MAIN_RATIOS:
            sup_rows = [r for r in mine if r["group"] == "curve" and r["label_ratio"] == ratio]
            mt_rows = [
                r for r in mine if r["group"] == "main" and r["method"] == "mean_teacher" and r["label_ratio"] == ratio
            ]
            base = next((c for c in curve if c["label_ratio"] == ratio), None)
            these = ([base] if base else []) + [
                c
                for c in cells
                if c["preset"] == preset and c["label_ratio"] == ratio and c["group"] in ("main", "control")
            ]
            if not these:
                continue
            table = []
            for c in these:
                members = [
                    r
                    for r in mine
                    if r["group"] == c["group"]
                    and r["method"] == c["method"]
                    and r["label_ratio"] == ratio
                    and r["extra"] == c["extra"]
                ]
                label = c["method"] + (" (random direction)" if c["group"] == "control" else "")
                f1 = c["student"]["pooled_f1"]
                gap = "-"
                if ceiling and base and ceiling["student"]["pooled_f1"]["mean"] != base["student"]["pooled_f1"]["mean"]:
                    top, low = ceiling["student"]["pooled_f1"]["mean"], base["student"]["pooled_f1"]["mean"]
                    gap = f"{(f1['mean'] - low) / (top - low):+.0%}"

                def diff(against: Sequence[dict], members: list[dict] = members) -> str:
                    d = None if not against or members == list(against) else paired_difference(members, against)
                    if d is None:
                        return "-"
                    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({d['wins']}/{d['n']})"

                o = c.get("objects", {})
                table.append(
                    [
                        label,
                        str(len(c["seeds"])),
                        _fmt(f1),
                        _fmt(c["student"]["pooled_dice"]),
                        _fmt(c["student"]["pooled_hausdorff"], 1),
                        diff(sup_rows),
                        diff(mt_rows),
                        gap,
                        f"{_fmt(c['contour_share'])} ({c['contour_share_truth']:.3f})",
                        _fmt(o.get("precision")),
                        _fmt(o.get("recall")),
                    ]
                )
            out.append(
                (
                    f"{preset}, {ratio} labels: student pooled scores on the {part} part; differences paired "
                    f"by seed with a 95 % bootstrap interval over its images (seeds above)",
                    [
                        "method",
                        "seeds",
                        "O.F1",
                        "O.Dice",
                        "O.HD",
                        "O.F1 - supervised",
                        "O.F1 - mean_teacher",
                        "gap closed to supervised@all",
                        "contour share (truth)",
                        "object precision",
                        "object recall",
                    ],
                    table,
                )
            )
        out += _pseudo_table(preset, mine, cells, part)
    return out


def _pseudo_table(
    preset: str, mine: Sequence[dict], cells: Sequence[dict], part: str
) -> list[tuple[str, list[str], list[list[str]]]]:
    """The ``pseudo`` group: each pseudo-label rule under mean_teacher against the default rule
    and against supervised, paired by seed, with the share of each class the rule kept."""
    rules = [
        c
        for c in cells
        if c["preset"] == preset
        and (c["group"] == "pseudo" or (c["group"] == "curve" and c["label_ratio"] == MAIN_RATIOS[0]))
    ]
    if not rules:
        return []

    def members(c: dict) -> list[dict]:
        return [
            r
            for r in mine
            if r["group"] == c["group"] and r["label_ratio"] == c["label_ratio"] and r["extra"] == c["extra"]
        ]

    default = [r for r in mine if r["group"] == "pseudo" and r["extra"].get("pseudo_labels") == PSEUDO_RULES[0]]
    supervised = [r for r in mine if r["group"] == "curve" and r["label_ratio"] == MAIN_RATIOS[0]]
    table = []
    order = {rule: i for i, rule in enumerate(PSEUDO_RULES)}
    for c in sorted(rules, key=lambda c: (c["method"] != "supervised", order.get(c["extra"].get("pseudo_labels"), 0))):
        mine_c = members(c)

        def diff(against: Sequence[dict], mine_c: list[dict] = mine_c) -> str:
            d = None if not against or mine_c == list(against) else paired_difference(mine_c, against)
            return "-" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({d['wins']}/{d['n']})"

        kept = [c["keep"].get(f"kept_{k}") for k in CLASS_NAMES]
        o = c.get("objects", {})
        label = c["extra"].get("pseudo_labels", c["method"])
        table.append(
            [
                label,
                str(len(c["seeds"])),
                _fmt(c["student"]["pooled_f1"]),
                _fmt(c["student"]["pooled_dice"]),
                _fmt(c["student"]["pooled_hausdorff"], 1),
                diff(default),
                diff(supervised),
                f"{_fmt(c['contour_share'])} ({c['contour_share_truth']:.3f})",
                " / ".join(_fmt(k, 2) for k in kept),
                _fmt(o.get("precision")),
                _fmt(o.get("recall")),
            ]
        )
    return [
        (
            f"{preset}, 1/8 labels, pseudo-label rules under mean_teacher: student pooled scores on the {part} "
            f"part; differences paired by seed with a 95 % bootstrap interval over its images",
            [
                "rule",
                "seeds",
                "O.F1",
                "O.Dice",
                "O.HD",
                f"O.F1 - {PSEUDO_RULES[0]}",
                "O.F1 - supervised",
                "contour share (truth)",
                "kept background / interior / contour",
                "object precision",
                "object recall",
            ],
            table,
        )
    ]


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def table_data(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The study's tables as ``(title, header, rows)`` of strings (one per group and preset)."""
    out = []
    cells = summary["cells"]
    main = [c for c in cells if c["group"] == "main"]
    for preset in _presets(main):
        these = [c for c in main if c["preset"] == preset]
        header = [
            "method",
            "weights",
            "seeds",
            "O.F1",
            "O.Dice",
            "O.HD",
            "per-image O.F1",
            "per-image O.Dice",
            "per-image O.HD",
        ]
        rows = []
        for c in these:
            for weights in ("student", "teacher"):
                if c.get(weights):
                    s = c[weights]
                    rows.append(
                        [
                            c["method"],
                            weights,
                            str(len(c["seeds"])),
                            _fmt(s["pooled_f1"]),
                            _fmt(s["pooled_dice"]),
                            _fmt(s["pooled_hausdorff"], 1),
                            _fmt(s["per_image_f1"]),
                            _fmt(s["per_image_dice"]),
                            _fmt(s["per_image_hausdorff"], 1),
                        ]
                    )
        out.append((f"{preset}, 1/8 labels: GlaS object scores, mean ± std over seeds", header, rows))
        header = [
            "method",
            "student contour share (truth)",
            "object precision",
            "object recall",
            "objects (truth)",
            "kept",
            "kept background",
            "kept interior",
            "kept contour",
            "fdp_gain",
            "flip",
            "wall s",
        ]
        rows = []
        for c in these:
            k, p, o = c["keep"], c["perturbation"], c.get("objects", {})
            truth = o.get("truth")
            rows.append(
                [
                    c["method"],
                    f"{_fmt(c['contour_share'])} ({c['contour_share_truth']:.3f})",
                    _fmt(o.get("precision")),
                    _fmt(o.get("recall")),
                    f"{_fmt(o.get('predicted'), 0)} ({truth['mean']:.0f})" if truth else "-",
                    *(_fmt(k.get(key), 2) for key in ("kept", "kept_background", "kept_interior", "kept_contour")),
                    _fmt(p.get("fdp_gain"), 4),
                    _fmt(p.get("flip"), 3),
                    _fmt(c["wall_s"], 0),
                ]
            )
        out.append(
            (
                f"{preset}, 1/8 labels: diagnostics (second half of training; contour share on the test images)",
                header,
                rows,
            )
        )
    control = [c for c in cells if c["group"] == "control"]
    if control:
        rows = []
        for preset in dict.fromkeys(c["preset"] for c in control):
            for c in [c for c in main if c["preset"] == preset and c["method"] in ("mean_teacher", "fdp")] + [
                c for c in control if c["preset"] == preset
            ]:
                label = c["method"] + (" (random direction)" if c["group"] == "control" else "")
                s, p = c["student"], c["perturbation"]
                rows.append(
                    [
                        preset,
                        label,
                        str(len(c["seeds"])),
                        _fmt(s["pooled_f1"]),
                        _fmt(s["pooled_dice"]),
                        _fmt(s["pooled_hausdorff"], 1),
                        _fmt(c["contour_share"]),
                        _fmt(p.get("fdp_gain"), 4),
                        _fmt(p.get("flip"), 3),
                    ]
                )
        out.append(
            (
                "FDP against its control: the same step length in a random direction (1/8 labels, student)",
                ["preset", "method", "seeds", "O.F1", "O.Dice", "O.HD", "contour share", "fdp_gain", "flip"],
                rows,
            )
        )
    ratio = [
        c
        for c in cells
        if c["group"] == "ratio"
        or (c["group"] == "main" and c["method"] in ("mean_teacher", "dpfr") and c["preset"] == "medium")
    ]
    if any(c["group"] == "ratio" for c in ratio):
        rows = [
            [
                c["method"],
                c["label_ratio"],
                str(len(c["seeds"])),
                _fmt(c["student"]["pooled_f1"]),
                _fmt(c["student"]["pooled_dice"]),
                _fmt(c["student"]["pooled_hausdorff"], 1),
            ]
            for c in sorted(ratio, key=lambda c: (c["method"], _ratio(c["label_ratio"])))
        ]
        out.append(
            (
                "medium: student pooled scores against the label ratio",
                ["method", "labels", "seeds", "O.F1", "O.Dice", "O.HD"],
                rows,
            )
        )
    sweep = [c for c in cells if c["group"] == "sweep"]
    if sweep:
        # the recipe's own setting is the main grid's first dpfr run (not trained twice)
        default = [c for c in main if c["method"] == "dpfr" and c["preset"] == sweep[0]["preset"]]
        rows = []
        if default:
            i = default[0]["seeds"].index(min(default[0]["seeds"]))
            one = lambda stat, d=3: "-" if stat is None else f"{stat['values'][i]:.{d}f}"  # noqa: E731
            s, p = default[0]["student"], default[0]["perturbation"]
            rows.append(
                [
                    f"recipe default (main run, seed {default[0]['seeds'][i]})",
                    one(s["pooled_f1"]),
                    one(s["pooled_dice"]),
                    one(s["pooled_hausdorff"], 1),
                    one(p.get("fdp_gain"), 4),
                    one(p.get("flip")),
                ]
            )
        for c in sweep:
            p, s = c["perturbation"], c["student"]
            rows.append(
                [
                    ", ".join(f"{k}={v}" for k, v in c["extra"].items()),
                    _fmt(s["pooled_f1"]),
                    _fmt(s["pooled_dice"]),
                    _fmt(s["pooled_hausdorff"], 1),
                    _fmt(p.get("fdp_gain"), 4),
                    _fmt(p.get("flip"), 3),
                ]
            )
        out.append(
            (
                "dpfr sensitivity (medium, 1/8 labels, one seed)",
                ["setting", "O.F1", "O.Dice", "O.HD", "fdp_gain", "flip"],
                rows,
            )
        )
    return out


def tables(summary: dict, rows: Sequence[dict] = ()) -> str:
    """The study's tables in Markdown (the real presets' too when the per-run ``rows`` are given)."""
    lines = []
    for title, header, body in table_data(summary) + real_tables(rows, summary) + budget_table(rows):
        lines += [f"\n**{title}**\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _quote(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def rst_tables(summary: dict, rows: Sequence[dict] = (), real: bool = False) -> str:
    """The same tables as reStructuredText ``csv-table`` directives (for ``docs/benchmarks.rst``):
    the synthetic presets', or with ``real`` the real presets'."""
    return _rst(real_tables(rows, summary) if real else table_data(summary))


def _rst(tables: Sequence[tuple[str, list[str], list[list[str]]]]) -> str:
    parts = []
    for title, header, body in tables:
        parts.append(f".. csv-table:: {title}\n   :header: {', '.join(_quote(h) for h in header)}\n")
        parts += [f"   {', '.join(_quote(cell) for cell in row)}" for row in body]
        parts.append("")
    return "\n".join(parts) + "\n"


def budget_figure(rows: Sequence[dict], path: Path) -> Path | None:
    """Student pooled O.F1 against the iteration for every run with an ``eval_every`` curve: the
    validation part solid, the test part dashed, one colour per method (grey: all labels, the
    ceiling), one panel per seed."""
    runs = [r for r in rows if r.get("curve")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from examples.dpfr_gland.checkpoint import atomic_write

    seeds = sorted({r["seed"] for r in runs})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.6 * len(seeds), 3.4), squeeze=False, layout="constrained")
    for ax, seed in zip(axes[0], seeds):
        for row in sorted(
            (r for r in runs if r["seed"] == seed),
            key=lambda r: (-_ratio(r["label_ratio"]), METHODS.index(r["method"])),
        ):
            ceiling = _ratio(row["label_ratio"]) == 1
            colour = "0.45" if ceiling else _colour(row["method"])
            labels = "all labels" if ceiling else f"{row['label_ratio']} labels"
            for split, style in (("validation", "-"), ("test", "--")):
                points = sorted(
                    (p["iteration"], p["pooled_f1"])
                    for p in row["curve"]
                    if p["weights"] == "student" and p["split"] == split
                )
                if points:
                    ax.plot(
                        *zip(*points),
                        style,
                        marker="o",
                        ms=3,
                        color=colour,
                        label=f"{row['method']}, {labels}, {split}",
                    )
            choice = budget_choice(row["curve"])
            if choice is not None:
                ax.axvline(choice["iteration"], color=colour, lw=0.8, alpha=0.5)
        ax.set_xlabel("iteration")
        ax.set_ylabel("object F1 (student, pooled)")
        ax.set_title(f"{runs[0]['preset']}, seed {seed} (vertical: the iteration chosen on validation)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def _ratio(text: str) -> float:
    from examples.dpfr_gland.data import parse_ratio

    return parse_ratio(text)


# ----------------------------------------------------------------------------- figures


def _colour(method: str) -> str:
    """One colour per method in every figure."""
    return f"C{METHODS.index(method)}"


def figures(rows: Sequence[dict], summary: dict, folder: Path, title: str) -> list[Path]:
    """The study's pictures (matplotlib): quality by method, by label ratio, loss terms, keep rates, features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from examples.dpfr_gland.checkpoint import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Any, name: str) -> None:
        path = folder / name
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)

    cells = summary["cells"]
    main = [c for c in cells if c["group"] == "main"]
    presets = _presets(main)
    main = [c for c in main if c["preset"] in presets]  # the real presets have figures of their own
    if main:
        fig, axes = plt.subplots(len(presets), 3, figsize=(12, 3.4 * len(presets)), squeeze=False, layout="constrained")
        for r, preset in enumerate(presets):
            # FDP's random-direction control sits right of the five methods, where it ran
            these = [c for c in main if c["preset"] == preset] + [
                c for c in cells if c["group"] == "control" and c["preset"] == preset
            ]
            for col, (key, label) in enumerate(
                (
                    ("pooled_f1", "object F1"),
                    ("pooled_dice", "object Dice"),
                    ("pooled_hausdorff", "object Hausdorff (px, lower is better)"),
                )
            ):
                ax = axes[r, col]
                for i, c in enumerate(these):
                    stat = c["student"][key]
                    ax.errorbar(
                        i,
                        stat["mean"],
                        yerr=stat["std"],
                        fmt="s",
                        ms=8,
                        capsize=4,
                        color=_colour(c["method"]),
                        label="mean ± std" if i == 0 else None,
                    )
                    ax.scatter(
                        [i - 0.15] * stat["n"],
                        stat["values"],
                        color="k",
                        s=10,
                        zorder=3,
                        label="seeds" if i == 0 else None,
                    )
                    if c.get("teacher"):
                        ax.scatter(
                            [i + 0.25] * c["teacher"][key]["n"],
                            c["teacher"][key]["values"],
                            marker="x",
                            color="C3",
                            s=14,
                            zorder=3,
                            label="teacher" if i == 1 else None,
                        )
                ax.set_xticks(
                    range(len(these)),
                    [c["method"] + ("\n(random dir.)" if c["group"] == "control" else "") for c in these],
                    rotation=30,
                )
                ax.set_title(f"{preset}: {label}", fontsize=9)
                if r == 0 and col == 0:
                    ax.legend(fontsize=7)
                ax.set_xlim(-0.6, len(these) - 0.4)
                ax.grid(axis="y", alpha=0.3)
        fig.suptitle(
            f"Student quality at 1/8 labels (squares: mean ± std over seeds; dots: seeds; x: EMA teacher) — {title}",
            fontsize=10,
        )
        save(fig, "quality_by_method.png")
    for real in [p for p in REAL_CONFIGS if any(c["preset"] == p for c in cells)]:
        curve = sorted(
            [c for c in cells if c["preset"] == real and c["group"] == "curve"], key=lambda c: _ratio(c["label_ratio"])
        )
        if not curve:
            continue
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        x = [float(_ratio(c["label_ratio"])) for c in curve]
        ax.errorbar(
            x,
            [c["student"]["pooled_f1"]["mean"] for c in curve],
            yerr=[c["student"]["pooled_f1"]["std"] for c in curve],
            marker="o",
            capsize=3,
            color=_colour("supervised"),
            label="supervised (mean ± std)",
        )
        for xi, c in zip(x, curve):
            ax.scatter(
                [xi] * c["student"]["pooled_f1"]["n"], c["student"]["pooled_f1"]["values"], color="k", s=8, zorder=3
            )
        for method in METHODS[1:]:
            pts = sorted(
                (float(_ratio(c["label_ratio"])), c["student"]["pooled_f1"])
                for c in cells
                if c["preset"] == real and c["group"] == "main" and c["method"] == method
            )
            if pts:
                ax.errorbar(
                    [p for p, _ in pts],
                    [st["mean"] for _, st in pts],
                    yerr=[st["std"] for _, st in pts],
                    marker="s",
                    ls="none",
                    capsize=3,
                    color=_colour(method),
                    label=method,
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [c["label_ratio"] for c in curve])
        ax.set_xlabel("labelled fraction of the training part")
        ax.set_ylabel("object F1 (student, pooled, native grid)")
        ax.set_title(f"{real}: quality against labels (dots: seeds)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, f"{real}_learning_curve.png")
    ratio = (
        [
            c
            for c in cells
            if (c["group"] == "ratio" or c["group"] == "main")
            and c["preset"] == presets[0]
            and c["method"] in ("mean_teacher", "dpfr")
        ]
        if presets
        else []
    )
    if any(c["group"] == "ratio" for c in ratio):
        fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
        for method in ("mean_teacher", "dpfr"):
            pts = sorted(
                ((_ratio(c["label_ratio"]), c["student"]["pooled_f1"]) for c in ratio if c["method"] == method)
            )
            ax.errorbar(
                [p for p, _ in pts],
                [s["mean"] for _, s in pts],
                yerr=[s["std"] for _, s in pts],
                marker="o",
                capsize=3,
                label=method,
                color=_colour(method),
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labelled fraction")
        ax.set_ylabel("object F1 (student, pooled)")
        ax.set_title(f"Quality against label ratio ({presets[0]})", fontsize=10)
        ax.legend()
        save(fig, "quality_by_ratio.png")
    first = [
        r
        for r in rows
        if r["group"] == "main" and presets and r["preset"] == presets[0] and r["seed"] == min(x["seed"] for x in rows)
    ]
    if first:
        keys = ("sup", "mt", "fdp", "contrast", "flow_nll_per_dim", "fdp_gain")
        fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3), layout="constrained")
        for ax, key in zip(axes, keys):
            for r in first:
                pts = [(h["iteration"], h[key]) for h in r["history"] if key in h]
                if pts:
                    its, values = map(np.asarray, zip(*pts))
                    colour = _colour(r["method"])
                    ax.plot(its, values, color=colour, lw=0.5, alpha=0.25)
                    ax.plot(its, smooth(values), color=colour, lw=1.5, label=r["method"])
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
        axes[0].legend(fontsize=7)
        fig.suptitle(
            f"Loss terms over training ({presets[0]}, seed {first[0]['seed']}; faint: every logged step, "
            f"bold: moving mean over 10)",
            fontsize=10,
        )
        save(fig, "loss_terms.png")
    semi = [r for r in first if r["method"] != "supervised"]
    if semi:
        fig, axes = plt.subplots(1, len(CLASS_NAMES), figsize=(10, 3), sharey=True, layout="constrained")
        for ax, name in zip(axes, CLASS_NAMES):
            for r in semi:
                pts = [(h["iteration"], h[f"kept_{name}"]) for h in r["history"] if f"kept_{name}" in h]
                if pts:
                    its, values = map(np.asarray, zip(*pts))
                    ax.plot(its, smooth(values), label=r["method"], color=_colour(r["method"]), lw=1.2)
            ax.set_title(f"pseudo labels kept: {name}", fontsize=9)
            ax.set_xlabel("iteration", fontsize=8)
        axes[0].legend(fontsize=7)
        save(fig, "keep_rates.png")
    with_features = [r for r in rows if "features" in r]
    if with_features:
        fig, axes = plt.subplots(1, len(with_features), figsize=(4.2 * len(with_features), 4), squeeze=False)
        for ax, r in zip(axes[0], with_features):
            xy, y = np.asarray(r["features"]["xy"]), np.asarray(r["features"]["labels"])
            for c, name in enumerate(CLASS_NAMES):
                ax.scatter(xy[y == c, 0], xy[y == c, 1], s=4, alpha=0.6, label=name)
            ax.set_title(
                f"{r['method']}: PCA of decoder features\n(nearest class mean "
                f"{r['features']['separation']:.2f}, 2-D explains {r['features']['explained']:.0%})",
                fontsize=9,
            )
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, 0].legend(fontsize=7, markerscale=3)
        save(fig, "features.png")
    return written


# ----------------------------------------------------------------------------- the command


class SslQuality(Study):
    """Semi-supervised methods against supervised at few labels (:mod:`benchmarks.ssl_quality`)."""

    name = "ssl_quality"
    scales = SCALES

    def results_root(self) -> Path:
        return RESULTS

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--split",
            choices=sorted(DATA_SEEDS),
            default="test",
            help="which generator seeds to train and score on (validation: for tuning)",
        )
        parser.add_argument(
            "--groups",
            default="main,control,ratio,sweep,curve",
            help="comma-separated subset of main,control,ratio,sweep,curve,pseudo (pseudo: the pseudo-label "
            "rules, for --split validation)",
        )
        parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
        parser.add_argument(
            "--presets",
            default="",
            help=f"comma-separated subset of the scale's presets, real ones ({', '.join(REAL_CONFIGS)}) included",
        )
        parser.add_argument(
            "--data",
            action="append",
            default=[],
            metavar="PRESET=DIR",
            help="the folder of a real preset (default: " + ", ".join(f"{k}={v}" for k, v in REAL_DATA.items()) + ")",
        )
        parser.add_argument(
            "--recount",
            action="store_true",
            help="(re)compute the object counts (precision / recall) of every finished run from its "
            "model.pt (float16 student), so all rows count alike, then report",
        )
        parser.add_argument(
            "--retruth",
            action="store_true",
            help="(re)compute the truth's class shares of every finished run at the network's scale "
            "(rows from before that rule counted the contour on the native grid), then report",
        )
        parser.add_argument("--ratios", default="", help="comma-separated subset of the label ratios (e.g. 1/8)")
        parser.add_argument(
            "--runs",
            default="",
            help="comma-separated run names (e.g. glas_supervised_1of8_s0), in "
            "this order: only these, once the other filters pass them",
        )
        parser.add_argument(
            "--figures",
            default="",
            help="folder of the figures (default docs/_static/ssl_quality for the cpu scale on the test split)",
        )

    def tag(self, args: argparse.Namespace) -> str:
        return args.scale if args.split == "test" else f"{args.scale}_{args.split}"

    @staticmethod
    def data(args: argparse.Namespace) -> dict[str, Path]:
        """The real presets' folders: the defaults, then ``--data``."""
        data = dict(REAL_DATA)
        for item in args.data:
            key, _, folder = item.partition("=")
            if key not in REAL_CONFIGS or not folder:
                raise SystemExit(f"--data expects PRESET=DIR with a preset of {', '.join(REAL_CONFIGS)}, got {item!r}")
            data[key] = Path(folder)
        return data

    def plan(self, args: argparse.Namespace) -> list[RunSpec]:
        scale = SCALES[args.scale]
        groups, methods = set(args.groups.split(",")), set(args.methods.split(","))
        presets = (
            set(args.presets.split(","))
            if args.presets
            else set(scale.presets) | (set(scale.real) if scale.real_by_default else set())
        )
        data = self.data(args)
        for preset in sorted(presets & set(REAL_CONFIGS)):
            if not (data[preset] / "Grade.csv").is_file() and not any(data[preset].glob("*_anno.*")):
                print(
                    f"[ssl_quality] skipping the real preset {preset!r}: no data at {data[preset]} "
                    f"(pass --data {preset}=DIR)"
                )
                presets.discard(preset)
        seeds = set(selected(args.seeds, scale.seeds))
        ratios = set(args.ratios.split(",")) if args.ratios else None
        runs = [
            r
            for r in plan(scale)
            if r.group in groups
            and r.method in methods
            and r.preset in presets
            and r.seed in seeds
            and (ratios is None or r.label_ratio in ratios)
        ]
        if args.runs:
            wanted = args.runs.split(",")
            runs = sorted((r for r in runs if r.name in wanted), key=lambda r: wanted.index(r.name))
        return runs

    def config(self, spec: RunSpec, args: argparse.Namespace, folders: Folders, stored: dict | None) -> TrainConfig:
        return _config(spec, SCALES[args.scale], args.split, args.set, self.data(args))

    def run(self, spec: RunSpec, config: TrainConfig, args: argparse.Namespace, folders: Folders) -> dict:
        scale = SCALES[args.scale]
        feature_runs = {(scale.presets[0], m, scale.seeds[0]) for m in ("mean_teacher", "dpfr")}
        features = spec.group == "main" and (spec.preset, spec.method, spec.seed) in feature_runs
        return run_one(spec, scale, args.split, args.set, folders.outputs, features, self.data(args))

    def line(self, spec: RunSpec, row: dict) -> str:
        s = row["student"]
        return (
            f"{spec.name}: O.F1 {s['pooled_f1']:.3f} O.Dice {s['pooled_dice']:.3f} "
            f"O.HD {s['pooled_hausdorff']:.1f} ({row['wall_s']:.0f} s)"
        )

    def stored(self, spec: RunSpec, row: dict, path: Path, args: argparse.Namespace, folders: Folders) -> None:
        # the resume checkpoint (student, teacher, both Adam states: ~8x model.pt) is dead weight once
        # the result is stored; model.pt (float16 student) stays for inference
        (folders.outputs / spec.name / "checkpoint.pt").unlink(missing_ok=True)

    def measure(self, args: argparse.Namespace, folders: Folders) -> None:
        if args.recount:
            from examples.dpfr_gland.evaluate import load_checkpoint_model

            for path, row in self._stored_rows(folders):
                model_path = folders.outputs / row["name"] / "model.pt"
                if not model_path.is_file():
                    continue
                config = TrainConfig(**{**dataclasses.asdict(TrainConfig()), **row["config"]})
                student, _ = load_checkpoint_model(model_path)
                counts = test_measurements(student, build_datasets(config)[1], config)[1]
                row["objects"] = {**counts, "source": "model.pt"}
                atomic_write_text(path, json.dumps(row) + "\n")
                print(
                    f"{row['name']}: precision {row['objects']['precision']:.3f} recall {row['objects']['recall']:.3f}"
                )
        if args.retruth:
            for path, row in self._stored_rows(folders):
                if row["class_shares"].get("truth_grid") == "network":
                    continue
                config = TrainConfig(**{**dataclasses.asdict(TrainConfig()), **row["config"]})
                row["class_shares"] = {
                    **row["class_shares"],
                    "truth": truth_shares(build_datasets(config)[1], config),
                    "truth_grid": "network",
                }
                atomic_write_text(path, json.dumps(row) + "\n")
                print(f"{row['name']}: truth contour share {row['class_shares']['truth']['contour']:.4f}")

    @staticmethod
    def _stored_rows(folders: Folders) -> Iterator[tuple[Path, dict]]:
        for path in sorted(folders.results.glob("*.json")):
            row = json.loads(path.read_text())
            if "name" in row:  # not the summary beside the runs (--results DIR)
                yield path, row

    def report(self, rows: list[dict], args: argparse.Namespace, folders: Folders) -> dict:
        scale, tag = SCALES[args.scale], folders.tag
        summary = summarise(rows) if rows else {"cells": []}
        summary.update(
            scale=args.scale,
            split=args.split,
            note=scale.note,
            runs=len(rows),
            sets=args.set,
            machine=f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        )
        print(tables(summary, rows) if rows else "no finished runs\n")
        docs = ROOT / "docs"
        real = any(r["preset"] in REAL_CONFIGS for r in rows)
        if rows and tag == "cpu" and not folders.custom:
            atomic_write_text(docs / "ssl_quality_tables.inc", rst_tables(summary))
            if real:
                atomic_write_text(docs / "ssl_quality_real_tables.inc", rst_tables(summary, rows, real=True))
        if rows and tag == "cpu_validation" and not folders.custom and real:
            # the tuning on the real preset's validation part (the pseudo-label rules): its own tables
            atomic_write_text(docs / "ssl_quality_real_validation_tables.inc", rst_tables(summary, rows, real=True))
        budget = budget_table(rows)
        if budget and tag.startswith("cpu") and not folders.custom:  # eval_every runs: the budget, chosen on validation
            atomic_write_text(docs / "ssl_quality_real_budget_tables.inc", _rst(budget))
            path = budget_figure(rows, FIGURES / f"{rows[0]['preset']}_budget.png")
            print(f"wrote {path}")
        write_result(folders.summary, summary)
        if rows:
            figures_dir = (
                Path(args.figures) if args.figures else (FIGURES if tag == "cpu" else folders.outputs / "figures")
            )
            for path in figures(rows, summary, figures_dir, f"{args.scale} scale, {summary['machine']}"):
                print(f"wrote {path}")
        return summary


def main(argv: Sequence[str] | None = None) -> dict:
    """The study's command line (:func:`benchmarks._study.run_study`)."""
    return run_study(SslQuality(), argv, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
