"""The recipe's configuration: every knob of a run, read from JSON and ``--set KEY=VALUE``.

:class:`TrainConfig` holds the fields (the JSON files in ``configs/`` name them);
:func:`load_config`, :func:`config_from_dict` and :func:`apply_overrides` build one and
name the key of any bad value.
"""

from __future__ import annotations

__all__ = [
    "Bounds",
    "METHODS",
    "METHOD_SECTIONS",
    "SECTIONS",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "fields_read",
    "load_config",
    "resolve_split_file",
]

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from .data import parse_ratio
from .tasks import task_of


#: The ablation switches, from the plainest to the full recipe.
# The choices of the string fields, declared beside each field as its type (checked on construction).
@dataclass(frozen=True)
class Bounds:
    """The range of a numeric config field, declared beside it in its type (``Annotated``).

    Args:
        low: the least value (``None``: unbounded).
        high: the greatest value (``None``: unbounded).
        open_low: ``low`` itself is excluded.
        open_high: ``high`` itself is excluded.
        multiple: the value must be a multiple of this (ints).

    Example:
        >>> Bounds(0, 1, open_high=True).check("alignment_momentum", 0.5)
        >>> Bounds(1).check("iterations", 0)
        Traceback (most recent call last):
        ...
        ValueError: iterations must be >= 1, got 0
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    multiple: int | None = None

    def words(self, kind: type) -> str:
        """The range in words, as error messages say it."""
        if self.multiple is not None:
            return f"a positive multiple of {self.multiple}"
        finite = "a finite number " if kind is float else ""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{finite}{'>' if self.open_low else '>='} {self.low:g}"
        return f"{finite}{'<' if self.open_high else '<='} {self.high:g}"

    def check(self, name: str, value: float) -> None:
        """Raise ``ValueError`` naming ``name`` when ``value`` is outside the range."""
        bad = isinstance(value, float) and not math.isfinite(value)
        if self.low is not None:
            bad |= value <= self.low if self.open_low else value < self.low
        if self.high is not None:
            bad |= value >= self.high if self.open_high else value > self.high
        if self.multiple is not None:
            bad |= value % self.multiple != 0
        if bad:
            raise ValueError(f"{name} must be {self.words(type(value))}, got {value}")


#: Numeric field types with their bounds (``TrainConfig`` checks every field against its own).
Count = Annotated[int, Bounds(1)]
Steps = Annotated[int, Bounds(0)]
Positive = Annotated[float, Bounds(0, open_low=True)]
NonNegative = Annotated[float, Bounds(0)]
Fraction = Annotated[float, Bounds(0, 1)]
Pixels32 = Annotated[int, Bounds(32, multiple=32)]

Method = Literal["supervised", "mean_teacher", "fdp", "fr", "dpfr"]
TaskName = Literal["instance", "semantic"]
Dataset = Literal["synthetic", "glas", "crag", "folder"]
SyntheticPreset = Literal["easy", "medium", "hard"]
Backbone = Literal["resnet34", "resnet50", "resnet101"]
LrSchedule = Literal["constant", "poly"]
PseudoLabels = Literal["entropy", "instance", "class_share", "soft", "distill"]
PerturbAt = Literal["bottleneck", "decoder", "classifier"]
PerturbDirection = Literal["density", "random"]
TeacherBuffers = Literal["ema", "copy"]
FlowSource = Literal["teacher", "student"]
METHODS: tuple[str, ...] = typing.get_args(Method)
_IGNORE = 255


# ----------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Every knob of a training run; JSON files in ``configs/`` hold its fields by name.

    Args:
        method: one of :data:`METHODS`.
        task: ``"instance"`` (GlaS / CRAG: glands as instances, trained as 3 classes — background,
            interior, contour — and scored with the GlaS object metrics) or ``"semantic"``
            (PGland: ``semantic_classes`` classes straight from the masks, scored with pixel F1,
            Dice and mIoU; the flow's mixture has one component per class).
        semantic_classes: ``K`` of the semantic task (2: background and gland; masks with any
            non-zero value are gland then, so 0/255 masks and instance maps both work).
        dataset: ``"synthetic"`` (in memory, no files), ``"glas"``, ``"crag"`` or ``"folder"``.
        data: the dataset folder (GlaS/CRAG root; for ``folder``, a root holding
            ``images/`` and ``masks/``); unused for ``synthetic``.
        test_data: ``folder`` only: a root with ``images/`` and ``masks/`` to test on
            (empty: the training folder's unlabelled part is not used for testing; no test).
        split_file: a JSON file mapping part names to image names (file stems) of the
            ``data`` folder (any of its reader splits), e.g. ``{"train": [...], "validation":
            [...], "test": [...]}``; with it, ``train_split`` and ``test_split`` name parts of
            this file. A bare name is looked up in the recipe's ``splits/`` folder:
            ``glas_train85`` splits the 85 GlaS training images by patient into 52 / 12 / 21
            (train / validation / test). Empty: the reader's own splits.
        train_split: reader split to train on (GlaS/CRAG ``"train"``).
        test_split: reader split(s) to test on, comma-separated, each scored and reported
            separately (GlaS ``"testA,testB"``, CRAG ``"valid"``); the first is the headline of
            ``metrics.json``.
        synthetic_preset: ``easy``/``medium``/``hard`` for ``synthetic``.
        synthetic_size: side of synthetic images in pixels.
        synthetic_train: number of synthetic training images.
        synthetic_test: number of synthetic test images.
        synthetic_seed: generator seed of the synthetic images (``-1``: the run's ``seed``). The
            training images are the generator's indices ``0 .. synthetic_train - 1``, the test
            images the next ``synthetic_test``; fix it to compare seeds on the same images.
        synthetic_mix: ``"PRESET:SHARE"`` (e.g. ``"hard:0.1"``): that share of the synthetic images,
            training and test alike, come from another preset — a minority appearance (empty: none).
        label_ratio: labelled fraction, ``"1/8"``, ``"1/4"``, ``"1/2"``, ``"0.25"``, ...
        labelled: the labelled training images by index, comma-separated (e.g. chosen by
            ``examples.dpfr_gland.suggest``); empty: ``label_ratio`` draws them by ``seed``.
        seed: seed of the split, the initialisation, the views and every random draw.
        backbone: ``resnet34``, ``resnet50`` or ``resnet101``.
        pretrained: the encoder's initial weights: ``"imagenet"`` (torchvision's default ImageNet
            weights of the backbone, fetched once into torch's hub cache), a weights name such as
            ``"IMAGENET1K_V2"``, a local path of a torchvision-format ResNet state dict, or
            ``""`` / ``"none"`` (random weights).
        scale: the scale the network works at, in network pixels per native pixel (0.4: images
            shrunk to 40 %, glands of 100 px become 40 px). Training images are resampled to it
            (area averaging; label maps by nearest neighbour, then the 3-class targets are made at
            that scale), evaluation and ``predict`` resample each image to it and map the
            predictions back, so every score is on the native grid against the native label maps
            (the GlaS protocol). It travels in ``model.pt``; ``crop_size``, ``eval_tile``,
            ``contour_width`` and ``min_size`` are in network pixels. Choose it so that a crop
            holds several whole glands: real GlaS/CRAG glands are about 100 px across at 20x.
        target_mpp: microns per pixel the network works at, for images that state theirs (TIFF
            resolution tags, OpenSlide ``mpp``): ``predict`` then uses ``image_mpp / target_mpp``
            for such an image and ``scale`` for the others (0: always ``scale``).
        crop_size: weak-view crop side, a multiple of 32.
        batch_labelled: labelled images per step and process.
        batch_unlabelled: unlabelled images per step and process.
        iterations: optimiser steps in total.
        lr: student (and projection head) learning rate (Adam).
        lr_schedule: ``"poly"`` (the learning rate at iteration ``t`` is
            ``lr * (1 - t / iterations) ** lr_power``, as in CE-Net and DPFR, so that the last
            weights are those of a converged run, not of one noisy step) or ``"constant"``.
        lr_power: the power of the poly schedule.
        weight_decay: student weight decay (AdamW style, decoupled).
        contour_weight: weight of the contour class in every cross-entropy of the instance task
            (labelled, unlabelled and perturbed; the others weigh 1). On real GlaS every supervised
            student predicts about half the truth's contour share (0.045-0.056 against 0.091 at
            the network's scale), so touching glands merge; > 1 pays the thin class more.
        ema_decay: teacher EMA decay.
        threshold: pseudo-label entropy threshold in nats (``K = 3``: 0.5 keeps p >= ~0.8).
        pseudo_labels: the pseudo-label rule (:mod:`examples.dpfr_gland.pseudo`): ``"entropy"``
            (the entropy threshold with ``min_class_keep``), ``"instance"`` (the teacher's glands
            as instances, each given its full contour band by the labelled targets' rule: the
            contour the entropy filter drops comes back), ``"class_share"`` (DARS: per-class
            thresholds so that the kept pseudo labels carry the labelled class shares) or
            ``"soft"`` (SoftMatch: every pixel, weighted by a truncated Gaussian of its confidence)
            or ``"distill"`` (no hard label: a cross-entropy against the teacher's whole class
            distribution on every pixel, so a contour the teacher gives 0.3 is taught as 0.3, not
            as interior; the sure pixels' labels still serve the contrast and the flow).
        min_class_keep: per class of the teacher's argmax, the least fraction of its pixels
            kept as pseudo labels, the surest first (:class:`densessl.EntropyPseudoLabeler`;
            0: the entropy threshold alone, as in the paper). Default 0.2: with the threshold
            alone no contour pixel was ever kept (``kept_contour`` 0.00 in every
            semi-supervised run of ``benchmarks.ssl_quality``), so the unlabelled losses taught
            background and interior only and eroded the class that separates touching glands.
        distribution_alignment: align the teacher's class scores to the labelled pixels' class
            frequencies before pseudo-labelling (:class:`densessl.DistributionAlignment`; the
            contour class, under-predicted by the teacher, is boosted). Default on, for the
            same measurement.
        unsup_class_balance: weight the unlabelled cross-entropies per class so that the kept
            pseudo labels carry the labelled pixels' class shares
            (:func:`densessl.functional.balancing_weights`; the shares are the distribution
            alignment's running labelled frequencies, else the batch's). Off by default: a lever
            against the contour erosion the quality study measured; on its hard validation runs
            it adds about one O.F1 point (3 seeds, see ``docs/benchmarks.rst``).
        alignment_momentum: momentum of the alignment's running class distributions.
        unsup_weight: :math:`\\lambda_u`, weight of the Mean Teacher CE.
        alpha_perturbed: :math:`\\alpha_1`, weight of the perturbed branch's CE.
        alpha_contrast: :math:`\\alpha_2`, weight of the contrastive loss.
        xi: perturbation length per pixel (a fraction of ``||f||`` with ``xi_relative``; the
            paper's absolute 3 is ``xi=3, xi_relative=false``).
        xi_relative: the length is ``xi * ||f||`` per pixel. Default: the demo's ``d1`` has
            ``||f|| ~ 5``, where an absolute 3 is 60 % of the norm and the network learns to make
            the perturbed branch *easier* than the clean one (``fdp_gain`` -0.04 on average);
            ``0.25 ||f||`` keeps it harder (+0.016). See the recipe README.
        supervised_warmup: iterations with unsupervised weight 0.
        rampup: iterations over which the unsupervised weight then rises to 1.
        flow_warmup: iterations of flow training before the perturbation starts (>= 1).
        flow_depth: flow steps of the density head.
        flow_hidden: coupling width of the density head (64: the classifier site's flow runs on
            every full-resolution pixel when it perturbs, so its width sets most of FDP's cost).
        flow_lr: the flow's Adam learning rate.
        flow_grad_clip: clip the flow's gradient norm to this value (0: no clipping); without
            it the flow NLL diverged late in one demo run (3.6 -> 437 nats per dim; with 1.0 it stayed below 7.6).
        flow_pixels: most pixels per flow step (a random subset beyond); binds at the full-resolution
            "classifier" site (96 px crops, 2 + 2 images: 36 864 pixels), never at the bottleneck (36).
        flow_noise: standard deviation of the Gaussian noise added to the flow's features.
        num_anchors: contrast anchors per class.
        num_negatives: contrast negatives per anchor.
        temperature: contrast temperature.
        projection_hidden: projection head hidden width.
        projection_dim: embedding size.
        perturb_at: where the model perturbs: ``"bottleneck"`` (``e4``), ``"decoder"`` (``d1``, the
            density on ``d1``) or ``"classifier"`` (``d1``, the density on the classifier block's
            output: DDFP's site); see the recipe README for what each does to the output.
        perturb_direction: ``"density"`` (FDP: along the gradient of ``-log p``) or ``"random"``,
            the control that says whether the direction matters: a step of the same length per
            pixel (``xi``, or ``xi * ||f||``) in a uniformly random direction, drawn afresh every
            step; the flow still trains, so the cost and the schedule are the same.
        augment_labelled: give the labelled views the strong view's photometric changes too
            (colour jitter, H&E stain jitter, grey, blur, noise:
            :func:`~examples.dpfr_gland.augment.strong_from_weak`; no pixel moves, so the targets
            stay). Off by default (the synthetic studies ran without it); on real slides, whose
            stains differ between patients, it is the supervised baseline's regulariser.
        cutmix: CutMix the student's unlabelled strong views (boxes are pasted between images
            of the batch, so it needs ``batch_unlabelled >= 2``).
        teacher_buffers: how the EMA teacher follows the student's BatchNorm statistics:
            ``"copy"`` (the student's, as they are) or ``"ema"`` (averaged like the weights).
        flow_normalize: L2-normalise every pixel's features before the flow, when it is trained
            and when it perturbs, so that the step turns a feature's direction instead of
            growing its norm (measured in the recipe README: without it the density step at
            ``d1`` is barely harder than a random one).
        flow_labelled_source: whose features of the labelled images train the flow:
            ``"teacher"`` (the paper's :math:`F_t^l`; the teacher then runs on the labelled
            images too, +14 % FLOPs of a mean-teacher step at the paper's configuration) or
            ``"student"`` (the clean student pass's, detached: no extra pass).
        flow_pseudo_labels: score unlabelled teacher features under their pseudo labels
            instead of the mixture (the paper and DDFP use the mixture).
        flow_label_fraction: when labels are downsampled to the density's resolution, the
            least share of a block its majority class must cover (else the block is ignored).
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
        eval_every: also score the student (and the teacher) on every test split every this many
            iterations (0: only at the end). The scores go to ``curve.jsonl`` and to
            ``metrics.json``'s ``curve``, so a budget can be chosen on a validation part and read
            off on the test part of the same run (``test_split="validation,test"``).

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

    method: Method = "dpfr"
    task: TaskName = "instance"
    semantic_classes: Annotated[int, Bounds(2)] = 2
    dataset: Dataset = "synthetic"
    data: str = ""
    test_data: str = ""
    split_file: str = ""
    train_split: str = "train"
    test_split: str = "testA"
    synthetic_preset: SyntheticPreset = "medium"
    synthetic_size: int = 128
    synthetic_train: Count = 16
    synthetic_test: Count = 4
    synthetic_seed: Annotated[int, Bounds(-1)] = -1
    synthetic_mix: str = ""
    label_ratio: str = "1/4"
    labelled: str = ""
    seed: Steps = 0
    backbone: Backbone = "resnet34"
    pretrained: str = ""
    scale: Positive = 1.0
    target_mpp: NonNegative = 0.0
    crop_size: Pixels32 = 96
    batch_labelled: Count = 2
    batch_unlabelled: Count = 2
    iterations: Count = 100
    lr: Positive = 1e-3
    lr_schedule: LrSchedule = "poly"
    lr_power: Positive = 0.9
    weight_decay: NonNegative = 1e-4
    contour_weight: Positive = 1.0
    ema_decay: Fraction = 0.99
    threshold: Positive = 0.5
    pseudo_labels: PseudoLabels = "entropy"
    min_class_keep: Fraction = 0.2
    distribution_alignment: bool = True
    unsup_class_balance: bool = False
    alignment_momentum: Annotated[float, Bounds(0, 1, open_high=True)] = 0.99
    unsup_weight: NonNegative = 1.0
    alpha_perturbed: NonNegative = 0.5
    alpha_contrast: NonNegative = 0.3
    xi: NonNegative = 0.25
    xi_relative: bool = True
    supervised_warmup: Steps = 20
    rampup: Steps = 20
    flow_warmup: int = 20
    flow_depth: Count = 2
    flow_hidden: Count = 64
    flow_lr: Positive = 1e-3
    flow_grad_clip: NonNegative = 1.0
    flow_pixels: Count = 20000
    flow_noise: NonNegative = 0.01
    num_anchors: Count = 256
    num_negatives: Count = 512
    temperature: Positive = 0.5
    projection_hidden: Count = 256
    projection_dim: Count = 128
    perturb_at: PerturbAt = "classifier"
    perturb_direction: PerturbDirection = "density"
    cutmix: bool = True
    augment_labelled: bool = False
    teacher_buffers: TeacherBuffers = "copy"
    flow_normalize: bool = True
    flow_labelled_source: FlowSource = "teacher"
    flow_pseudo_labels: bool = False
    flow_label_fraction: Fraction = 0.5
    contour_width: Count = 2
    min_size: Steps = 16
    device: str = "auto"
    amp: bool = True
    num_workers: Steps = 0
    log_every: Count = 10
    checkpoint_every: Steps = 0
    eval_tile: Pixels32 = 256
    eval_overlap: Steps = 32
    eval_limit: Steps = 0
    eval_pictures: Steps = 4
    eval_every: Steps = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind = _field_types()[f.name]
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), kind))
            for bounds in getattr(kind, "__metadata__", ()):
                bounds.check(f.name, getattr(self, f.name))
        if self.contour_weight != 1.0 and not task_of(self).has_instances:
            raise ValueError(
                f"contour_weight applies to the instance task (it has a contour class), got "
                f"contour_weight={self.contour_weight} with task={self.task!r}"
            )
        if self.split_file:
            if self.dataset == "synthetic":
                raise ValueError("split_file names images of a data folder; dataset='synthetic' has none")
            resolve_split_file(self.split_file)
        if self.dataset in ("glas", "crag") and not any(p.strip() for p in self.test_split.split(",")):
            raise ValueError(f"test_split must name at least one split, got {self.test_split!r}")
        if self.synthetic_mix:
            preset, _, share = self.synthetic_mix.partition(":")
            try:
                share_value = float(share)
            except ValueError:
                share_value = -1.0
            if preset not in ("easy", "medium", "hard") or not 0 <= share_value <= 1:
                raise ValueError(
                    f"synthetic_mix must be 'PRESET:SHARE' with a preset easy/medium/hard and a share "
                    f"in [0, 1], got {self.synthetic_mix!r}"
                )
        if self.labelled:
            try:
                indices = [int(part) for part in self.labelled.split(",")]
            except ValueError:
                indices = [-1]
            if min(indices) < 0 or len(set(indices)) != len(indices):
                raise ValueError(
                    f"labelled must list distinct image indices >= 0, comma-separated, got {self.labelled!r}"
                )
        if self.cutmix and self.semi and self.batch_unlabelled < 2:
            raise ValueError(
                f"cutmix pastes boxes between unlabelled images of a batch and needs "
                f"batch_unlabelled >= 2, got {self.batch_unlabelled}; set cutmix=false"
            )
        if self.uses_flow and self.flow_warmup < 1:
            raise ValueError(
                f"flow_warmup must be >= 1 for method {self.method!r} (the flow must be fitted "
                f"before it perturbs), got {self.flow_warmup}"
            )
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
    def num_classes(self) -> int:
        """The network's number of classes: 3 for the instance task, ``semantic_classes`` otherwise."""
        return task_of(self).num_classes(self.semantic_classes)

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

    @property
    def window_options(self) -> dict[str, Any]:
        """How this run's images go through the sliding window: the keyword arguments ``tile``,
        ``overlap``, ``amp`` and ``scale`` of
        :func:`~examples.dpfr_gland.evaluate.predict_probabilities` (and of every caller of it)."""
        return {"tile": self.eval_tile, "overlap": self.eval_overlap, "amp": self.amp, "scale": self.scale}

    @property
    def prediction_options(self) -> dict[str, Any]:
        """:attr:`window_options` plus how probabilities become instances (``min_size``,
        ``dilation``): the keyword arguments of
        :func:`~examples.dpfr_gland.evaluate.predict_instances`, ``evaluate`` and ``save_predictions``.

        Example:
            >>> sorted(TrainConfig().prediction_options)
            ['amp', 'dilation', 'min_size', 'overlap', 'scale', 'tile']
        """
        return {**self.window_options, "min_size": self.min_size, "dilation": self.contour_width}


SPLITS = Path(__file__).resolve().parent / "splits"


def resolve_split_file(name: str) -> Path:
    """The path of a ``split_file``: the name as given, else ``splits/NAME.json`` of the recipe.

    Raises:
        FileNotFoundError: neither exists (both named).

    Example:
        >>> resolve_split_file("glas_train85").name
        'glas_train85.json'
    """
    path = Path(name)
    if path.is_file():
        return path
    shipped = SPLITS / (name if name.endswith(".json") else f"{name}.json")
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"split_file {name!r}: neither {path} nor {shipped} exists")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig, include_extras=True)


def _check_type(name: str, value: object, kind: Any) -> object:
    """Check one config value against its field type (an int is a fine float, a bool is no int; a
    ``Literal`` field takes one of its strings; the bounds of an ``Annotated`` one are checked apart)."""
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) is Literal:
        allowed = typing.get_args(kind)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r}")
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
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
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
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


#: The config's fields by section. A method reads the sections :data:`METHOD_SECTIONS` names; the
#: studies reuse a finished run when every field its method reads is unchanged.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": (
        "task",
        "semantic_classes",
        "dataset",
        "data",
        "test_data",
        "split_file",
        "train_split",
        "test_split",
        "synthetic_preset",
        "synthetic_size",
        "synthetic_train",
        "synthetic_test",
        "synthetic_seed",
        "synthetic_mix",
        "label_ratio",
        "labelled",
        "scale",
        "target_mpp",
    ),
    "model": ("backbone", "pretrained"),
    "optimisation": (
        "method",
        "seed",
        "crop_size",
        "batch_labelled",
        "iterations",
        "lr",
        "lr_schedule",
        "lr_power",
        "weight_decay",
        "contour_weight",
        "augment_labelled",
    ),
    # the teacher, its pseudo labels and the unlabelled branch (every semi-supervised method)
    "semi": (
        "ema_decay",
        "teacher_buffers",
        "threshold",
        "pseudo_labels",
        "min_class_keep",
        "distribution_alignment",
        "alignment_momentum",
        "unsup_class_balance",
        "unsup_weight",
        "batch_unlabelled",
        "cutmix",
        "supervised_warmup",
        "rampup",
    ),
    # the flow and the density perturbation (fdp, dpfr)
    "fdp": (
        "alpha_perturbed",
        "xi",
        "xi_relative",
        "perturb_at",
        "perturb_direction",
        "flow_warmup",
        "flow_depth",
        "flow_hidden",
        "flow_lr",
        "flow_grad_clip",
        "flow_pixels",
        "flow_noise",
        "flow_normalize",
        "flow_labelled_source",
        "flow_pseudo_labels",
        "flow_label_fraction",
    ),
    # the projection head and the hard-anchor contrast (fr, dpfr)
    "fr": ("alpha_contrast", "num_anchors", "num_negatives", "temperature", "projection_hidden", "projection_dim"),
    "evaluation": (
        "contour_width",
        "min_size",
        "eval_tile",
        "eval_overlap",
        "eval_limit",
        "eval_pictures",
        "eval_every",
    ),
    "runtime": ("device", "amp", "num_workers", "log_every", "checkpoint_every"),
}
_ALWAYS = ("data", "model", "optimisation", "evaluation", "runtime")
#: The sections each method reads.
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {
    "supervised": _ALWAYS,
    "mean_teacher": (*_ALWAYS, "semi"),
    "fdp": (*_ALWAYS, "semi", "fdp"),
    "fr": (*_ALWAYS, "semi", "fr"),
    "dpfr": (*_ALWAYS, "semi", "fdp", "fr"),
}


def fields_read(method: str) -> frozenset[str]:
    """The config fields ``method`` reads (the others cannot change its result).

    Example:
        >>> sorted(fields_read("dpfr") - fields_read("fr"))[:3]
        ['alpha_perturbed', 'flow_depth', 'flow_grad_clip']
    """
    if method not in METHOD_SECTIONS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHOD_SECTIONS))}, got {method!r}")
    return frozenset(name for section in METHOD_SECTIONS[method] for name in SECTIONS[section])


def apply_overrides(config: TrainConfig, assignments: Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` overrides, each value converted to its field's type.

    Args:
        config: the configuration to start from (not modified).
        assignments: strings ``"key=value"`` or ``"section.key=value"`` (:data:`SECTIONS`, e.g.
            ``fdp.xi=0.5``); bools accept ``true/false/1/0/yes/no``.

    Returns:
        A new, validated configuration.

    Raises:
        ValueError: a malformed assignment, an unknown key or section, a key outside the section
            named, an unconvertible or out-of-range value (the message names the key).

    Example:
        >>> apply_overrides(TrainConfig(), ["method=fr", "lr=0.01", "cutmix=false"]).cutmix
        False
        >>> apply_overrides(TrainConfig(), ["fdp.xi=0.5"]).xi
        0.5
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
        section, dot, name = key.rpartition(".")
        if dot:
            if section not in SECTIONS:
                raise ValueError(
                    f"unknown config section {section!r} in {assignment!r}; the sections are {', '.join(SECTIONS)}"
                )
            if name not in SECTIONS[section]:
                raise ValueError(f"{name!r} is not in section {section!r} ({', '.join(SECTIONS[section])})")
            key = name
        if key not in types:
            raise _unknown_key(key)
        values[key] = _parse_value(key, text, types[key])
    try:
        return TrainConfig(**values)
    except TypeError as error:  # cannot happen after conversion, but keep the contract
        raise ValueError(str(error)) from None
