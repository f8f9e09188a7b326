r"""DPFR training for gland segmentation: Mean Teacher + flow density perturbation + contrast.

Run on one process or many::

    python -m examples.dpfr_gland.train --config examples/dpfr_gland/configs/demo_cpu.json --out outputs/train
    python -m examples.dpfr_gland.train --config CFG --out DIR --set method=mean_teacher --set iterations=50
    python -m examples.dpfr_gland.train --config CFG --out DIR --resume           # from DIR/checkpoint.pt
    torchrun --nproc_per_node=N -m examples.dpfr_gland.train --config CFG --out DIR

One iteration ``t`` (labelled batch :math:`(x_l, y_l)`, unlabelled weak batch :math:`x_w`):

1. **Teacher, once.** :math:`(p_T, f_T) = T(x_w)` — the EMA teacher (eval mode, no
   gradient) gives logits :math:`p_T` and bottleneck features :math:`f_T` in ONE pass.
   :math:`\hat y = \arg\max p_T` where the entropy :math:`H(\mathrm{softmax}\,p_T) <
   \gamma`, else ignored (:class:`densessl.EntropyPseudoLabeler`). No teacher pass on the
   labelled batch.
2. **Views.** :math:`x_s = \mathrm{strong}(x_w)` (photometric only, so pixel-aligned
   with :math:`x_w`), then CutMix :math:`(\tilde x_s, \tilde y, B) =
   \mathrm{cutmix}(x_s, \hat y)` pastes boxes between images of the batch, applied
   identically to the images and the pseudo labels.
3. **Student, one forward** on :math:`[x_l;\ \tilde x_s;\ \tilde x_s]`; the third part is
   perturbed at the bottleneck (FDP, only once :math:`t \ge t_{flow}`):
   :math:`f \mapsto f + \xi\, g/\lVert g\rVert`, :math:`g = \nabla_f(-\log p_\phi(f))`
   (:class:`densessl.DensityPerturbation`, :math:`\xi = 3`, per pixel). One forward keeps
   BatchNorm statistics over the whole batch and DDP to one forward per backward.
4. **Losses** (:func:`densessl.functional.masked_cross_entropy`, a zero with a graph when
   no pixel is kept):

   .. math::

      L = \mathrm{CE}(s_l, y_l) + w(t)\,\big[\lambda_u\,\mathrm{CE}(s_u, \tilde y)
          + \alpha_1\,\mathrm{CE}(s_{u}^{\rho}, \tilde y)
          + \alpha_2\,L_{con}(g(d_u^{\rho}), \tilde y_{\downarrow})\big]

   with :math:`\alpha_1 = 0.5`, :math:`\alpha_2 = 0.3`; :math:`L_{con}` is
   :class:`densessl.HardAnchorContrast` (:math:`\tau = 0.5`, 256 anchors per class) on
   :class:`densessl.ProjectionHead` embeddings of the perturbed branch's last decoder map
   :math:`d_u^{\rho}` (of the clean branch before :math:`t_{flow}` or for ``method="fr"``),
   with :math:`\tilde y` downsampled by majority vote, together with the labelled images'
   decoder maps and their true labels (so the loss has two classes to contrast before the
   teacher is confident about glands). :math:`w(t)` is 0 during the
   supervised warm-up, then ramps up as :math:`\exp(-5(1 - r)^2)`, :math:`r \in [0, 1]`.
5. **Flow** (:class:`densessl.FlowDensityHead`, own Adam, lr 1e-3), after the student's
   forward so that the perturbation of step ``t`` used the flow of step ``t - 1``:

   .. math::

      L_\phi = -\frac{1}{|P|}\sum_{i \in P} \log p_\phi(f_i + \epsilon_i \mid y_i),
      \quad \epsilon_i \sim \mathcal N(0, \sigma^2 I)

   over the *detached* teacher features :math:`f_T` with :math:`\hat y` downsampled by
   majority vote (ignored pixels score under the mixture) and the detached labelled
   student features with :math:`y_l` downsampled, on a random subset :math:`P` of at most
   ``flow_pixels`` pixels (DDFP's recipe). The student's loss gives the flow no gradient.
6. **Updates.** Student step (GradScaler under CUDA AMP), then ``teacher.update(student)``
   (EMA of weights, BatchNorm buffers copied).

Methods (ablation): ``supervised`` (step 4's first term only), ``mean_teacher`` (+ the
:math:`\lambda_u` term), ``fdp`` (+ :math:`\alpha_1`, flow), ``fr`` (+ :math:`\alpha_2` on the
clean branch, no flow), ``dpfr`` (everything).

All randomness of iteration ``t`` (views, CutMix, noise, pixel subsets, negatives) is drawn
from generators seeded by ``(seed, t, rank)``, and the batches from a stream indexed by
``t``, so ``--resume`` continues exactly where a run stopped. Checkpoints are written
atomically (temporary file + rename) and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

__all__ = [
    "METHODS",
    "BatchStream",
    "TrainConfig",
    "Trainer",
    "ViewDataset",
    "apply_overrides",
    "build_datasets",
    "config_from_dict",
    "draw_loss_curves",
    "load_checkpoint",
    "load_config",
    "main",
    "train",
    "unsupervised_weight",
]

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import densessl
from densessl.functional import downsample_labels, masked_cross_entropy
from densessl.functional import flatten_pixels

from . import augment, evaluate
from .data import CRAGDataset, FolderDataset, GlaSDataset, label_split, parse_ratio
from .model import CENet
from .synthetic import SyntheticGlands
from .targets import instances_to_classes

#: The ablation switches, from the plainest to the full recipe.
METHODS = ("supervised", "mean_teacher", "fdp", "fr", "dpfr")
_DATASETS = ("synthetic", "glas", "crag", "folder")
_IGNORE = 255


# ----------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Every knob of a training run; JSON files in ``configs/`` hold its fields by name.

    Args:
        method: one of :data:`METHODS`.
        dataset: ``"synthetic"`` (in memory, no files), ``"glas"``, ``"crag"`` or ``"folder"``.
        data: the dataset folder (GlaS/CRAG root; for ``folder``, a root holding
            ``images/`` and ``masks/``); unused for ``synthetic``.
        test_data: ``folder`` only: a root with ``images/`` and ``masks/`` to test on
            (empty: the training folder's unlabelled part is not used for testing; no test).
        train_split: reader split to train on (GlaS/CRAG ``"train"``).
        test_split: reader split to test on (GlaS ``"testA"``/``"testB"``, CRAG ``"valid"``).
        synthetic_preset: ``easy``/``medium``/``hard`` for ``synthetic``.
        synthetic_size: side of synthetic images in pixels.
        synthetic_train: number of synthetic training images.
        synthetic_test: number of synthetic test images.
        label_ratio: labelled fraction, ``"1/8"``, ``"1/4"``, ``"1/2"``, ``"0.25"``, ...
        seed: seed of the split, the initialisation, the views and every random draw.
        backbone: ``resnet34``, ``resnet50`` or ``resnet101``.
        pretrained: local path of a torchvision-format ResNet state dict (empty: none).
        crop_size: weak-view crop side, a multiple of 32.
        batch_labelled: labelled images per step and process.
        batch_unlabelled: unlabelled images per step and process.
        iterations: optimiser steps in total.
        lr: student (and projection head) learning rate (Adam).
        weight_decay: student weight decay (AdamW style, decoupled).
        ema_decay: teacher EMA decay.
        threshold: pseudo-label entropy threshold in nats (``K = 3``: 0.5 keeps p >= ~0.8).
        unsup_weight: :math:`\\lambda_u`, weight of the Mean Teacher CE.
        alpha_perturbed: :math:`\\alpha_1`, weight of the perturbed branch's CE.
        alpha_contrast: :math:`\\alpha_2`, weight of the contrastive loss.
        xi: perturbation length per pixel.
        xi_relative: the length is ``xi * ||f||`` per pixel instead (ResNet bottleneck
            features have norms of ~40 at initialisation, so an absolute ``xi = 3`` is a small step).
        supervised_warmup: iterations with unsupervised weight 0.
        rampup: iterations over which the unsupervised weight then rises to 1.
        flow_warmup: iterations of flow training before the perturbation starts (>= 1).
        flow_depth: flow steps of the density head.
        flow_hidden: coupling width of the density head.
        flow_lr: the flow's Adam learning rate.
        flow_grad_clip: clip the flow's gradient norm to this value (0: no clipping); without
            it the flow NLL diverged late in one demo run (3.6 -> 437 nats per dim; with 1.0 it stayed below 7.6).
        flow_pixels: most pixels per flow step (a random subset beyond).
        flow_noise: standard deviation of the Gaussian noise added to the flow's features.
        num_anchors: contrast anchors per class.
        num_negatives: contrast negatives per anchor.
        temperature: contrast temperature.
        projection_hidden: projection head hidden width.
        projection_dim: embedding size.
        perturb_at: where the model perturbs: ``"bottleneck"`` or ``"decoder"``.
        cutmix: CutMix the student's unlabelled strong views.
        contour_width: contour width of the 3-class targets.
        min_size: smallest interior component kept when predictions become instances.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        amp: mixed precision (``torch.autocast`` + GradScaler) when on CUDA.
        num_workers: data-loader workers per process.
        log_every: iterations between log lines.
        checkpoint_every: iterations between checkpoints (0: only at the end).
        eval_tile: sliding-window tile for evaluation (a multiple of 32).
        eval_overlap: tile overlap for evaluation.
        eval_limit: evaluate at most this many test images (0: all).
        eval_pictures: number of prediction pictures to write.

    Raises:
        ValueError: a field out of range (the message names the field).
        TypeError: a field of the wrong type (names the field).

    Example:
        >>> config = TrainConfig(method="mean_teacher", iterations=10)
        >>> config.method, config.alpha_perturbed
        ('mean_teacher', 0.5)
        >>> TrainConfig(crop_size=100)
        Traceback (most recent call last):
        ...
        ValueError: crop_size must be a positive multiple of 32, got 100
    """

    method: str = "dpfr"
    dataset: str = "synthetic"
    data: str = ""
    test_data: str = ""
    train_split: str = "train"
    test_split: str = "testA"
    synthetic_preset: str = "medium"
    synthetic_size: int = 128
    synthetic_train: int = 16
    synthetic_test: int = 4
    label_ratio: str = "1/4"
    seed: int = 0
    backbone: str = "resnet34"
    pretrained: str = ""
    crop_size: int = 96
    batch_labelled: int = 2
    batch_unlabelled: int = 2
    iterations: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    threshold: float = 0.5
    unsup_weight: float = 1.0
    alpha_perturbed: float = 0.5
    alpha_contrast: float = 0.3
    xi: float = 3.0
    xi_relative: bool = False
    supervised_warmup: int = 20
    rampup: int = 20
    flow_warmup: int = 20
    flow_depth: int = 2
    flow_hidden: int = 256
    flow_lr: float = 1e-3
    flow_grad_clip: float = 1.0
    flow_pixels: int = 20000
    flow_noise: float = 0.01
    num_anchors: int = 256
    num_negatives: int = 512
    temperature: float = 0.5
    projection_hidden: int = 256
    projection_dim: int = 128
    perturb_at: str = "bottleneck"
    cutmix: bool = True
    contour_width: int = 2
    min_size: int = 16
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    eval_tile: int = 256
    eval_overlap: int = 32
    eval_limit: int = 0
    eval_pictures: int = 4

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), _field_types()[f.name]))
        _one_of("method", self.method, METHODS)
        _one_of("dataset", self.dataset, _DATASETS)
        _one_of("backbone", self.backbone, ("resnet34", "resnet50", "resnet101"))
        _one_of("perturb_at", self.perturb_at, ("bottleneck", "decoder"))
        _one_of("synthetic_preset", self.synthetic_preset, ("easy", "medium", "hard"))
        for name in ("crop_size", "eval_tile"):
            value = getattr(self, name)
            if value < 32 or value % 32:
                raise ValueError(f"{name} must be a positive multiple of 32, got {value}")
        for name in ("batch_labelled", "batch_unlabelled", "iterations", "flow_depth", "flow_hidden",
                     "flow_pixels", "num_anchors", "num_negatives", "projection_hidden", "projection_dim",
                     "contour_width", "log_every", "synthetic_train", "synthetic_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("supervised_warmup", "rampup", "num_workers", "checkpoint_every", "eval_overlap",
                     "eval_limit", "eval_pictures", "min_size", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "flow_lr", "threshold", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("weight_decay", "unsup_weight", "alpha_perturbed", "alpha_contrast", "xi", "flow_noise",
                     "flow_grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.ema_decay <= 1:
            raise ValueError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.uses_flow and self.flow_warmup < 1:
            raise ValueError(f"flow_warmup must be >= 1 for method {self.method!r} (the flow must be fitted "
                             f"before it perturbs), got {self.flow_warmup}")
        if self.eval_overlap >= self.eval_tile:
            raise ValueError(f"eval_overlap must be smaller than eval_tile={self.eval_tile}, got {self.eval_overlap}")
        if self.synthetic_size < self.crop_size and self.dataset == "synthetic":
            raise ValueError(f"synthetic_size must be >= crop_size={self.crop_size}, got {self.synthetic_size}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        try:
            parse_ratio(self.label_ratio)
        except ValueError as error:
            raise ValueError(f"label_ratio: {error}") from None

    @property
    def semi(self) -> bool:
        """Whether the method uses unlabelled data (a teacher)."""
        return self.method != "supervised"

    @property
    def uses_flow(self) -> bool:
        """Whether the method trains a flow and perturbs (FDP)."""
        return self.method in ("fdp", "dpfr")

    @property
    def uses_contrast(self) -> bool:
        """Whether the method adds the contrastive loss (FR)."""
        return self.method in ("fr", "dpfr")


def _one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_type(name: str, value: object, kind: Any) -> object:
    """Check one config value against its field type (an int is a fine float, a bool is no int)."""
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__} {value!r}")


def _unknown_key(key: str) -> ValueError:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.8)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def load_config(path: str | Path) -> TrainConfig:
    """Read a :class:`TrainConfig` from a JSON object; missing keys keep their defaults.

    Keys starting with ``_`` are comments and skipped.

    Args:
        path: the JSON file.

    Returns:
        The configuration.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON object, an unknown key (named, with close matches) or a
            value out of range (names the key).
        TypeError: a value of the wrong type (names the key).

    Example:
        >>> import json, tempfile
        >>> path = tempfile.mktemp(suffix=".json")
        >>> _ = open(path, "w").write(json.dumps({"method": "fdp", "iterations": 5}))
        >>> load_config(path).iterations
        5
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"config {path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must hold a JSON object, got {type(raw).__name__}")
    return config_from_dict(raw)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a plain dict (as in a checkpoint); unknown keys are errors.

    Keys starting with ``_`` are comments and skipped; missing keys keep their defaults.

    Args:
        raw: field names to values.

    Returns:
        The validated configuration.

    Raises:
        ValueError: an unknown key (named, with close matches) or a value out of range.
        TypeError: a value of the wrong type (names the key).

    Example:
        >>> config_from_dict({"_note": "skipped", "method": "fr", "iterations": 5}).iterations
        5
        >>> config_from_dict({"iteratons": 5})
        Traceback (most recent call last):
        ...
        ValueError: unknown config key 'iteratons'; did you mean iterations?
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key not in names:
            raise _unknown_key(key)
        values[key] = value
    return TrainConfig(**values)


def _parse_value(key: str, text: str, kind: Any) -> object:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected a bool (true/false), got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected {kind.__name__}, got {text!r}") from None
    return text


def apply_overrides(config: TrainConfig, assignments: Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` overrides, each value converted to its field's type.

    Args:
        config: the configuration to start from (not modified).
        assignments: strings ``"key=value"``; bools accept ``true/false/1/0/yes/no``.

    Returns:
        A new, validated configuration.

    Raises:
        ValueError: a malformed assignment, an unknown key, an unconvertible or out-of-range
            value (the message names the key).

    Example:
        >>> apply_overrides(TrainConfig(), ["method=fr", "lr=0.01", "cutmix=false"]).cutmix
        False
        >>> apply_overrides(TrainConfig(), ["iteration=3"])
        Traceback (most recent call last):
        ...
        ValueError: unknown config key 'iteration'; did you mean iterations?
    """
    types = _field_types()
    values = dataclasses.asdict(config)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        if key not in types:
            raise _unknown_key(key)
        values[key] = _parse_value(key, text, types[key])
    try:
        return TrainConfig(**values)
    except TypeError as error:  # cannot happen after conversion, but keep the contract
        raise ValueError(str(error)) from None


def unsupervised_weight(iteration: int, warmup: int, rampup: int) -> float:
    """The schedule :math:`w(t)` of the unsupervised losses: 0, then a sigmoid-shaped ramp to 1.

    :math:`w(t) = 0` for :math:`t < t_w`, :math:`\\exp(-5 (1 - r)^2)` with
    :math:`r = (t - t_w) / t_r` during the ramp, and 1 after it (Laine & Aila, 2017).

    Args:
        iteration: the iteration ``t``, ``>= 0``.
        warmup: supervised-only iterations ``t_w``.
        rampup: ramp length ``t_r`` (0: a step to 1).

    Returns:
        The weight in ``[0, 1]``.

    Example:
        >>> [round(unsupervised_weight(t, 2, 4), 3) for t in (0, 1, 2, 4, 6, 9)]
        [0.0, 0.0, 0.007, 0.287, 1.0, 1.0]
    """
    if iteration < warmup:
        return 0.0
    if rampup <= 0 or iteration >= warmup + rampup:
        return 1.0
    r = (iteration - warmup) / rampup
    return float(math.exp(-5.0 * (1.0 - r) ** 2))


# ----------------------------------------------------------------------------- data


class _SyntheticSplit:
    """Synthetic glands ``start .. start + count - 1``, drawn once and held in memory."""

    def __init__(self, preset: str, size: int, seed: int, start: int, count: int) -> None:
        glands = SyntheticGlands(preset=preset, size=size, seed=seed)
        self.samples = [glands.sample(start + i) for i in range(count)]
        self.names = [f"synth_{start + i}" for i in range(count)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.samples[index]


def build_datasets(config: TrainConfig) -> tuple[Any, Any | None]:
    """The training and test datasets of ``config`` (map-style, ``(image, instances)`` items).

    Args:
        config: the run's configuration.

    Returns:
        ``(train, test)``; ``test`` is ``None`` when the layout has no test split to use.

    Raises:
        ValueError: ``data`` is empty for a dataset that reads files (names the key).

    Example:
        >>> train, test = build_datasets(TrainConfig(synthetic_train=2, synthetic_test=1))
        >>> len(train), len(test), train[0][0].shape
        (2, 1, (128, 128, 3))
    """
    if config.dataset == "synthetic":
        size, seed = config.synthetic_size, config.seed
        train = _SyntheticSplit(config.synthetic_preset, size, seed, 0, config.synthetic_train)
        test = _SyntheticSplit(config.synthetic_preset, size, seed, config.synthetic_train, config.synthetic_test)
        return train, test
    if not config.data:
        raise ValueError(f"data must name the {config.dataset} folder for dataset={config.dataset!r} "
                         f"(e.g. --set data=/path/to/{config.dataset})")
    root = Path(config.data)
    if config.dataset == "glas":
        return GlaSDataset(root, config.train_split), GlaSDataset(root, config.test_split)
    if config.dataset == "crag":
        return CRAGDataset(root, config.train_split), CRAGDataset(root, config.test_split)
    train = FolderDataset(root / "images", root / "masks")
    test = FolderDataset(Path(config.test_data) / "images", Path(config.test_data) / "masks") \
        if config.test_data else None
    return train, test


class ViewDataset:
    """Weak views of a subset of a dataset, each drawn from its own seeded generator.

    Items are requested as ``(k, serial)`` pairs (from :class:`BatchStream`): ``k`` picks
    ``base[indices[k]]`` and ``serial`` (the item's position in this rank's stream) seeds
    its view, so a view does not depend on workers or on where a run was resumed.

    Args:
        base: a map-style dataset of ``(image uint8 [H, W, 3], instances int32 [H, W])``.
        indices: the subset (labelled or unlabelled indices of ``base``).
        crop_size: the weak view's side.
        seed: run seed.
        stream: 0 for the labelled stream, 1 for the unlabelled one.
        rank: the process rank.
        labelled: also return the 3-class targets.
        contour_width: contour width of the targets.

    Shapes:

        - item (labelled): ``(image float32 [3, S, S], classes int64 [S, S] in 0..2)``.
        - item (unlabelled): ``image float32 [3, S, S]``.

    Example:
        >>> import numpy as np
        >>> len(ViewDataset([(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.int32))], [0], 32))
        1
    """

    def __init__(self, base: Any, indices: Sequence[int], crop_size: int, seed: int = 0, stream: int = 0,
                 rank: int = 0, labelled: bool = True, contour_width: int = 2) -> None:
        self.base, self.indices = base, [int(i) for i in indices]
        self.crop_size, self.seed, self.stream, self.rank = crop_size, seed, stream, rank
        self.labelled, self.contour_width = labelled, contour_width

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        k, serial = item
        image, instances = self.base[self.indices[k]]
        rng = np.random.default_rng([self.seed, self.stream, self.rank, serial])
        image, instances = augment.weak_view(image, instances, rng, self.crop_size)
        tensor = augment.to_tensor(image)
        if not self.labelled:
            return tensor
        classes = instances_to_classes(np.ascontiguousarray(instances), contour_width=self.contour_width)
        return tensor, torch.from_numpy(classes.astype(np.int64))


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class BatchStream:
    """An endless, resumable stream of batches of ``(k, serial)`` items for one rank.

    Epoch ``e`` visits this rank's share of a :class:`~torch.utils.data.DistributedSampler`
    permutation (seeded by ``seed`` and ``e``); the stream runs on across epochs, so a
    subset smaller than a batch still fills batches. Batch ``t`` is a pure function of
    ``(size, batch_size, seed, rank, world_size, t)``: starting at ``start`` gives the
    same batches as skipping ``start`` batches, without loading them.

    Args:
        size: the number of items.
        batch_size: items per batch.
        seed: shuffling seed.
        rank: this process's rank.
        world_size: the number of processes.
        start: the first batch to yield.

    Example:
        >>> stream = iter(BatchStream(5, 2, seed=0))
        >>> first, second = next(stream), next(stream)
        >>> next(iter(BatchStream(5, 2, seed=0, start=1))) == second
        True
        >>> [serial for _, serial in first]
        [0, 1]
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1 (a non-empty subset), got {size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def _epoch(self, epoch: int) -> list[int]:
        sampler = DistributedSampler(_Sized(self.size), num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_epoch = len(self._epoch(0))
        serial = self.start * self.batch_size
        epoch, offset = divmod(serial, per_epoch)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == per_epoch:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                batch.append((order[offset], serial))
                offset, serial = offset + 1, serial + 1
            yield batch


def _loader(dataset: ViewDataset, stream: BatchStream, num_workers: int, pin: bool) -> Iterator[Any]:
    return iter(DataLoader(dataset, batch_sampler=stream, num_workers=num_workers, pin_memory=pin,
                           persistent_workers=num_workers > 0))


# ----------------------------------------------------------------------------- the step


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: no collisions between nearby keys)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class _TailPerturbation:
    """Apply ``perturb`` to the last ``count`` images of a batch only (the perturbed branch)."""

    def __init__(self, perturb: nn.Module, count: int) -> None:
        self.perturb, self.count = perturb, count

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        head, tail = features[: -self.count], features[-self.count:]
        return torch.cat([head, self.perturb(tail)])


class _FlowLoss(nn.Module):
    """``flow.nll`` as a ``forward``, so that DDP can wrap the flow's training loss."""

    def __init__(self, flow: densessl.FlowDensityHead) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.flow.nll(features, labels)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


class Trainer:
    """The networks, optimisers and the DPFR step of one process (see the module docstring).

    Args:
        config: the run's configuration.
        device: where to train.
        rank: this process's rank.
        world_size: the number of processes (> 1: DDP-wrap student, flow and head).

    Attributes:
        student: the CE-Net being trained (DDP-wrapped under DDP).
        teacher: its :class:`densessl.EMATeacher` (``None`` for ``supervised``).
        flow: the :class:`densessl.FlowDensityHead` (``None`` without FDP).
        projector: the :class:`densessl.ProjectionHead` (``None`` without FR).
        iteration: the number of steps done.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> trainer = Trainer(TrainConfig(method="supervised", crop_size=32))
        >>> labelled = (torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
        >>> logs = trainer.step(labelled, None)
        >>> sorted(logs), trainer.iteration, bool(torch.isfinite(logs["loss"]))
        (['loss', 'sup', 'weight'], 1, True)
    """

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu", rank: int = 0,
                 world_size: int = 1) -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.amp = bool(config.amp and self.device.type == "cuda")
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        pretrained = config.pretrained or None
        student = CENet(num_classes=3, backbone=config.backbone, pretrained=pretrained,
                                  perturb_at=config.perturb_at)
        student = student.to(self.device)
        self.num_classes = 3
        self.teacher = densessl.EMATeacher(student, decay=config.ema_decay, buffers="copy") if config.semi else None
        if self.teacher is not None:
            self.teacher.eval()
        self.flow: densessl.FlowDensityHead | None = None
        self.flow_optimizer: torch.optim.Optimizer | None = None
        self.perturbation: densessl.DensityPerturbation | None = None
        if config.uses_flow:
            self.flow = densessl.FlowDensityHead(student.feature_channels, self.num_classes, depth=config.flow_depth,
                                                 hidden=config.flow_hidden, ignore_index=_IGNORE).to(self.device)
            self.flow_optimizer = torch.optim.Adam(self.flow.parameters(), lr=config.flow_lr)
            self.perturbation = densessl.DensityPerturbation(self.flow, xi=config.xi, relative=config.xi_relative)
        self.projector: nn.Module | None = None
        self.contrast: densessl.HardAnchorContrast | None = None
        params = list(student.parameters())
        if config.uses_contrast:
            self.projector = densessl.ProjectionHead(student.decoder_channels, config.projection_hidden,
                                                     config.projection_dim).to(self.device)
            self.contrast = densessl.HardAnchorContrast(config.temperature, config.num_anchors,
                                                        config.num_negatives, ignore_index=_IGNORE,
                                                        num_classes=self.num_classes)
            params += list(self.projector.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.pseudo_labeler = densessl.EntropyPseudoLabeler(config.threshold, ignore_index=_IGNORE)
        self.student: nn.Module = student
        self._flow_loss: nn.Module | None = None
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student = DistributedDataParallel(student, device_ids=ids)
            if self.projector is not None:
                self.projector = DistributedDataParallel(self.projector, device_ids=ids)
        self.iteration = 0

    # -- state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimisers, scaler, iteration (plain tensors and numbers)."""
        state: dict[str, Any] = {
            "iteration": self.iteration,
            "student": _unwrap(self.student).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.flow is not None and self.flow_optimizer is not None:
            state["flow"] = self.flow.state_dict()
            state["flow_optimizer"] = self.flow_optimizer.state_dict()
        if self.projector is not None:
            state["projector"] = _unwrap(self.projector).state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (strictly: every part this method has must be there).

        Args:
            state: a dict from :meth:`state_dict` (e.g. of :func:`load_checkpoint`).

        Raises:
            KeyError: a part this trainer's method has is missing from ``state``.
            RuntimeError: weights that do not fit the networks (``load_state_dict``'s message).
        """
        _unwrap(self.student).load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.flow is not None and self.flow_optimizer is not None:
            self.flow.load_state_dict(state["flow"])
            self.flow_optimizer.load_state_dict(state["flow_optimizer"])
        if self.projector is not None:
            _unwrap(self.projector).load_state_dict(state["projector"])
        self.iteration = int(state["iteration"])

    # -- one step -------------------------------------------------------------------

    def _generator(self, iteration: int, purpose: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(
            _seed(self.config.seed, iteration, self.rank, purpose))

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    def _fit_flow(self, features: torch.Tensor, labels: torch.Tensor, iteration: int) -> torch.Tensor:
        """One Adam step of the flow on detached features; returns the nll per dimension (detached)."""
        assert self.flow is not None and self.flow_optimizer is not None
        config = self.config
        features = features.detach().float()
        generator = self._generator(iteration, 3)
        if config.flow_noise > 0:
            noise = torch.randn(features.shape, generator=generator, device=self.device)
            features = features + config.flow_noise * noise
        # Pixels are independent samples of the per-pixel flow: keep a random subset of at most
        # flow_pixels of them as one [1, C, 1, P] row (labels [1, 1, P]), so the flow runs on the
        # subset only.
        rows, row_labels = flatten_pixels(features), labels.reshape(-1)
        if rows.shape[0] > config.flow_pixels:
            chosen = torch.randperm(rows.shape[0], generator=generator, device=self.device)[: config.flow_pixels]
            rows, row_labels = rows[chosen], row_labels[chosen]
        features = rows.t().reshape(1, rows.shape[1], 1, rows.shape[0])
        labels = row_labels.reshape(1, 1, -1)
        self.flow.train()
        if self._flow_loss is None:
            if self.world_size > 1:
                # ActNorm initialises from the first batch it sees, which differs per rank:
                # initialise here, then let DDP's constructor broadcast rank 0's parameters.
                with torch.no_grad():
                    self.flow.log_prob(features)
                self._flow_loss = DistributedDataParallel(
                    _FlowLoss(self.flow), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=True)
            else:
                self._flow_loss = _FlowLoss(self.flow)
        loss = self._flow_loss(features, labels)
        self.flow_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.flow_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), config.flow_grad_clip)
        self.flow_optimizer.step()
        return loss.detach() / features.shape[1]

    def step(self, labelled: tuple[torch.Tensor, torch.Tensor],
             unlabelled: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One training iteration (see the module docstring); advances :attr:`iteration`.

        Args:
            labelled: ``(images, classes)`` of the labelled batch.
            unlabelled: weak views of the unlabelled batch (``None`` for ``supervised``).

        Shapes:

            - labelled images: ``[B_l, 3, S, S]`` float32; classes ``[B_l, S, S]`` int64 in ``0..2``.
            - unlabelled: ``[B_u, 3, S, S]`` float32.

        Returns:
            Detached 0-dim tensors: ``loss``, ``sup``, and as the method has them ``mt``,
            ``fdp``, ``contrast``, ``flow_nll_per_dim``, ``kept``, ``weight``.

        Raises:
            ValueError: a semi-supervised method without an unlabelled batch.
        """
        config, t = self.config, self.iteration
        x_l, y_l = labelled[0].to(self.device, non_blocking=True), labelled[1].to(self.device, non_blocking=True)
        logs: dict[str, torch.Tensor] = {}
        weight = unsupervised_weight(t, config.supervised_warmup, config.rampup)
        logs["weight"] = torch.tensor(weight)
        self.student.train()
        if self.projector is not None:
            self.projector.train()
        if not config.semi:
            with self._autocast():
                out = self.student(x_l)
            loss = masked_cross_entropy(out.logits, y_l, ignore_index=_IGNORE)
            logs["sup"] = loss.detach()
            self._backward_and_step(loss)
            logs["loss"] = loss.detach()
            return logs
        if unlabelled is None:
            raise ValueError(f"unlabelled: method {config.method!r} needs an unlabelled batch, got None")
        x_w = unlabelled.to(self.device, non_blocking=True)
        n_l, n_u = x_l.shape[0], x_w.shape[0]
        assert self.teacher is not None
        # 1. One teacher pass: pseudo labels and the flow's features come from it.
        with self._autocast():
            teacher_out = self.teacher(x_w)
        pseudo = self.pseudo_labeler(teacher_out.logits.float())
        logs["kept"] = pseudo.kept_fraction.detach()
        # 2. Strong views of the same weak views (pixel-aligned), then CutMix with the labels.
        x_s = augment.strong_from_weak(x_w, self._generator(t, 1))
        y_u = pseudo.labels
        if config.cutmix:
            x_s, y_u, _ = augment.cutmix(x_s, y_u, generator=self._generator(t, 2))
        # 3. One student forward over labelled, clean unlabelled and perturbed unlabelled.
        perturb_on = config.uses_flow and t >= config.flow_warmup
        parts = [x_l, x_s, x_s] if perturb_on else [x_l, x_s]
        perturb = _TailPerturbation(self.perturbation, n_u) if perturb_on else None
        with self._autocast():
            out = self.student(torch.cat(parts), perturb=perturb)
        logits = out.logits
        sup = masked_cross_entropy(logits[:n_l], y_l, ignore_index=_IGNORE)
        mt = masked_cross_entropy(logits[n_l:n_l + n_u], y_u, ignore_index=_IGNORE)
        unsup = config.unsup_weight * mt
        logs["sup"], logs["mt"] = sup.detach(), mt.detach()
        if config.uses_flow:
            fdp = masked_cross_entropy(logits[n_l + n_u:], y_u, ignore_index=_IGNORE) if perturb_on \
                else logits.sum() * 0.0
            unsup = unsup + config.alpha_perturbed * fdp
            logs["fdp"] = fdp.detach()
        if self.projector is not None and self.contrast is not None:
            unlabelled_decoder = out.decoder[n_l + n_u:] if perturb_on else out.decoder[n_l:n_l + n_u]
            # Labelled pixels (true labels) join the pseudo-labelled ones: early on the teacher is
            # confident about background only, and a contrast over a single class is zero.
            with self._autocast():
                embeddings = self.projector(torch.cat([out.decoder[:n_l], unlabelled_decoder]))
            size = embeddings.shape[-2:]
            labels_c = torch.cat([
                downsample_labels(y, size, ignore_index=_IGNORE, mode="majority", num_classes=self.num_classes)
                for y in (y_l, y_u)
            ])
            contrast = self.contrast(embeddings.float(), labels_c, generator=self._generator(t, 4))
            unsup = unsup + config.alpha_contrast * contrast
            logs["contrast"] = contrast.detach()
        loss = sup + weight * unsup
        # 5. The flow: detached teacher features (pseudo labels) + detached labelled student features.
        if self.flow is not None:
            size = teacher_out.features.shape[-2:]
            labels_f = torch.cat([
                downsample_labels(pseudo.labels, size, ignore_index=_IGNORE, mode="majority",
                                  num_classes=self.num_classes),
                downsample_labels(y_l, size, ignore_index=_IGNORE, mode="majority", num_classes=self.num_classes),
            ])
            features_f = torch.cat([teacher_out.features.detach(), out.features[:n_l].detach()])
            logs["flow_nll_per_dim"] = self._fit_flow(features_f, labels_f, t)
        # 6. Student step, then the teacher follows.
        self._backward_and_step(loss)
        self.teacher.update(self.student)
        logs["loss"] = loss.detach()
        return logs

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1

    def eval_model(self) -> nn.Module:
        """The network to evaluate: the teacher's model for semi-supervised methods, else the student."""
        model = self.teacher.model if self.teacher is not None else _unwrap(self.student)
        return model


# ----------------------------------------------------------------------------- files


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a reader never sees half a checkpoint


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True`` (no pickled code runs).

    Args:
        path: the checkpoint file.
        map_location: where to put its tensors.

    Returns:
        ``{"iteration", "student", "optimizer", "scaler", "config", "history", ...}``
        (plus ``teacher``, ``flow``, ``flow_optimizer``, ``projector`` as the method has them).

    Raises:
        FileNotFoundError: no such file.

    Example:
        >>> load_checkpoint("no/such/checkpoint.pt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: checkpoint no/such/checkpoint.pt does not exist
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127)]


def draw_loss_curves(history: Sequence[dict[str, float]], path: str | Path, size: tuple[int, int] = (640, 360)) -> None:
    """Draw every logged series against the iteration into a PNG (Pillow only), one colour each.

    Each series is scaled to its own range (printed in the legend), so losses of very
    different sizes stay readable.

    Args:
        history: one dict per logged iteration with ``"iteration"`` and the values.
        path: the PNG to write (atomically).
        size: picture ``(width, height)``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "losses.png"
        >>> draw_loss_curves([{"iteration": 0, "loss": 2.0}, {"iteration": 1, "loss": 1.0}], path)
        >>> path.is_file()
        True
    """
    width, height = size
    picture = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    left, right, top, bottom = 40, width - 10, 10, height - 25
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    keys = sorted({k for row in history for k in row if k != "iteration"})
    its = [row["iteration"] for row in history]
    lo_it, hi_it = (min(its), max(its)) if its else (0, 1)
    span_it = max(hi_it - lo_it, 1)
    for n, key in enumerate(keys):
        points = [(row["iteration"], row[key]) for row in history if key in row and math.isfinite(row[key])]
        if not points:
            continue
        values = [v for _, v in points]
        lo, hi = min(values), max(values)
        span = hi - lo if hi > lo else 1.0
        xy = [(left + (i - lo_it) / span_it * (right - left), bottom - (v - lo) / span * (bottom - top))
              for i, v in points]
        colour = _COLOURS[n % len(_COLOURS)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        else:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=colour)
        draw.text((left + 6, top + 4 + 12 * n), f"{key} [{lo:.3g}, {hi:.3g}]", fill=colour)
    draw.text((left, bottom + 6), f"iteration {lo_it} .. {hi_it}", fill=(0, 0, 0))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    picture.save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- evaluation


def _evaluate(model: nn.Module, dataset: Any, config: TrainConfig, out: Path) -> dict[str, Any]:
    """Test metrics by :func:`examples.dpfr_gland.evaluate.evaluate`, pictures by ``save_predictions``."""
    options = dict(tile=config.eval_tile, overlap=config.eval_overlap, min_size=config.min_size,
                   dilation=config.contour_width, amp=config.amp)
    metrics = evaluate.evaluate(model, dataset, limit=config.eval_limit or None, **options)
    if config.eval_pictures:
        evaluate.save_predictions(model, dataset, out / "predictions", limit=config.eval_pictures,
                                  progress=False, **options)
    return dict(metrics)


# ----------------------------------------------------------------------------- the run


def _resolve_device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if config.device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(config.device)


def train(config: TrainConfig, out: str | Path, resume: str | Path | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says, write checkpoints, metrics and the loss picture to ``out``.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is set up
    here (gloo on CPU, nccl on CUDA) and torn down at the end; only rank 0 writes files.

    Args:
        config: the run's configuration.
        out: the output folder (``checkpoint.pt``, ``metrics.json``, ``losses.png``, ``log.jsonl``).
        resume: a checkpoint to continue from (its iteration, weights, optimisers, history;
            ``log.jsonl`` is rewritten from that history, dropping rows logged after it).
        progress: show a tqdm bar on rank 0.

    Returns:
        ``{"history": [...], "metrics": {...}, "iteration": int}`` (metrics on rank 0 only).

    Raises:
        ValueError: a checkpoint whose method differs from ``config.method``.
    """
    out = Path(out)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(config, local_rank)
    own_group = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    try:
        return _train(config, out, resume, progress, rank, world_size, device)
    finally:
        if own_group:
            dist.destroy_process_group()


def _train(config: TrainConfig, out: Path, resume: str | Path | None, progress: bool, rank: int,
           world_size: int, device: torch.device) -> dict[str, Any]:
    main_process = rank == 0
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = build_datasets(config)
    labelled_idx, unlabelled_idx = label_split(len(train_set), config.label_ratio, seed=config.seed)
    if config.semi and len(unlabelled_idx) == 0:
        raise ValueError(f"label_ratio={config.label_ratio!r} leaves no unlabelled image for {config.method!r}")
    trainer = Trainer(config, device, rank, world_size)
    history: list[dict[str, float]] = []
    if resume is not None:
        state = load_checkpoint(resume, map_location=device)
        saved_method = state.get("config", {}).get("method")
        if saved_method is not None and saved_method != config.method:
            raise ValueError(f"resume: checkpoint {resume} was trained with method={saved_method!r}, "
                             f"the config says {config.method!r}")
        trainer.load_state_dict(state)
        history = list(state.get("history", []))
    start = trainer.iteration
    pin = device.type == "cuda"
    views = dict(crop_size=config.crop_size, seed=config.seed, rank=rank, contour_width=config.contour_width)
    labelled_loader = _loader(
        ViewDataset(train_set, labelled_idx, stream=0, labelled=True, **views),
        BatchStream(len(labelled_idx), config.batch_labelled, config.seed, rank, world_size, start),
        config.num_workers, pin)
    unlabelled_loader = None
    if config.semi:
        unlabelled_loader = _loader(
            ViewDataset(train_set, unlabelled_idx, stream=1, labelled=False, **views),
            BatchStream(len(unlabelled_idx), config.batch_unlabelled, config.seed + 1, rank, world_size, start),
            config.num_workers, pin)
    if main_process:
        _write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        if resume is not None:  # rows logged after the checkpoint will be logged again: drop them
            _write_text(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history))
        print(f"[train] {config.method} on {config.dataset}: {len(labelled_idx)} labelled / "
              f"{len(unlabelled_idx)} unlabelled images, {world_size} process(es) on {device}, "
              f"iterations {start}..{config.iterations}", flush=True)

    def save() -> None:
        if main_process:
            state = trainer.state_dict()
            state["config"] = dataclasses.asdict(config)
            state["history"] = history
            _atomic_save(state, out / "checkpoint.pt")

    bar = None
    if main_process and progress:
        from tqdm import tqdm
        bar = tqdm(total=config.iterations, initial=start, desc=config.method, dynamic_ncols=True, file=sys.stderr)
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []
    started = time.perf_counter()
    log_file = out / "log.jsonl"
    while trainer.iteration < config.iterations:
        t = trainer.iteration
        labelled = next(labelled_loader)
        unlabelled = next(unlabelled_loader) if unlabelled_loader is not None else None
        pending.append((t, trainer.step(labelled, unlabelled)))
        done = trainer.iteration
        checkpoint_due = bool(config.checkpoint_every) and done % config.checkpoint_every == 0 \
            and done < config.iterations
        # Flush before every checkpoint too: rows still pending when a checkpoint is written
        # would be missing from its history (and from log.jsonl) after a resume.
        if done % config.log_every == 0 or done == config.iterations or checkpoint_due:
            rows = _gather_logs(pending, world_size, device)
            pending = []
            history.extend(rows)
            for row in rows:  # the same (all-reduced) values on every rank: all stop together
                if not all(math.isfinite(v) for v in row.values()):
                    raise FloatingPointError(f"non-finite loss at iteration {row['iteration']}: {row}")
            if main_process:
                with log_file.open("a") as handle:
                    for row in rows:
                        handle.write(json.dumps(row) + "\n")
                last = rows[-1]
                # "+ 0.0" turns the -0.0 of graph-connected zeros into 0 for the log line
                text = " ".join(f"{k}={v + 0.0:.4g}" for k, v in last.items() if k != "iteration")
                rate = (done - start) / max(time.perf_counter() - started, 1e-9)
                message = f"[train] it {done}/{config.iterations} {text} ({rate:.2f} it/s)"
                if bar is not None:
                    bar.write(message)
                else:
                    print(message, flush=True)
        if bar is not None:
            bar.update(1)
        if checkpoint_due:
            save()
    if bar is not None:
        bar.close()
    save()
    metrics: dict[str, Any] = {}
    if main_process:
        if history:
            draw_loss_curves(history, out / "losses.png")
        if test_set is not None:
            metrics = _evaluate(trainer.eval_model(), test_set, config, out)
            if trainer.teacher is not None:  # the student too: early on the EMA teacher lags behind it
                metrics["student"] = _evaluate(_unwrap(trainer.student), test_set,
                                               dataclasses.replace(config, eval_pictures=0), out)
        metrics["method"] = config.method
        metrics["iterations"] = trainer.iteration
        metrics["evaluated"] = "teacher" if trainer.teacher is not None else "student"
        if history:
            metrics["final_losses"] = {k: v for k, v in history[-1].items() if k != "iteration"}
        _write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(f"[train] wrote {out / 'checkpoint.pt'}, {out / 'metrics.json'}, {out / 'losses.png'}", flush=True)
    if world_size > 1:
        dist.barrier()
    return {"history": history, "metrics": metrics, "iteration": trainer.iteration}


def _gather_logs(pending: list[tuple[int, dict[str, torch.Tensor]]], world_size: int,
                 device: torch.device) -> list[dict[str, float]]:
    """Turn the pending per-step tensors into floats with one host sync (averaged over ranks)."""
    if not pending:
        return []
    keys = sorted(pending[0][1])
    table = torch.stack([torch.stack([logs[k].float().to(device) for k in keys]) for _, logs in pending])
    if world_size > 1:
        dist.all_reduce(table)
        table /= world_size
    values = table.cpu().tolist()
    return [{"iteration": t, **dict(zip(keys, row))} for (t, _), row in zip(pending, values)]


def main(argv: Sequence[str] | None = None) -> int:
    """The training command line (see the module docstring).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status, 0.

    Raises:
        SystemExit: bad arguments, a bad config or ``--set`` (argparse prints the message,
            which names the key).
    """
    parser = argparse.ArgumentParser(prog="python -m examples.dpfr_gland.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON config (examples/dpfr_gland/configs/*.json)")
    parser.add_argument("--out", default="outputs/train", help="output folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue from CKPT (default: OUT/checkpoint.pt)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args.overrides)
    except (ValueError, TypeError, FileNotFoundError) as error:
        parser.error(str(error))
    resume = None
    if args.resume is not None:
        resume = Path(args.out) / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        if not resume.is_file():
            parser.error(f"--resume: checkpoint {resume} does not exist")
    train(config, args.out, resume=resume, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
