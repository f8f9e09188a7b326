r"""One DPFR training step, read top to bottom like the method section of the paper.

:class:`Trainer` holds the networks and optimisers of one process; :meth:`Trainer.step` runs
one iteration, each numbered part below a method of its own.

One iteration ``t`` (labelled batch :math:`(x_l, y_l)`, unlabelled weak batch :math:`x_w`),
numbered as in :meth:`Trainer.step`, whose total loss is the one line of equation (4):

1. **Teacher, once.** :math:`(p_T, f_T) = T([x_l;\ x_w])` — the EMA teacher (eval mode, no
   gradient) in ONE batched pass: logits :math:`p_T` and the density's features :math:`f_T`
   (the labelled half only for the flow; methods without a flow pass :math:`x_w` alone).
   :math:`(\hat y, m) = \mathrm{rule}(\tilde p_T)` on :math:`x_w`: pseudo labels and a per-pixel
   weight (:class:`~examples.dpfr_gland.pseudo.PseudoLabelRule`; ``pseudo_labels``: ``entropy``,
   the default — the argmax where the entropy is below :math:`\gamma`, or among the surest 20 % of
   its argmax class; ``instance``, ``class_share``, ``soft``), where :math:`\tilde p_T` is
   :math:`p_T` aligned to the labelled pixels' class frequencies with ``distribution_alignment``
   (:class:`densessl.DistributionAlignment`).
2. **Views.** :math:`x_s = \mathrm{strong}(x_w)` (photometric only, so pixel-aligned
   with :math:`x_w`), then CutMix :math:`(\tilde x_s, \tilde y, B) =
   \mathrm{cutmix}(x_s, \hat y)` pastes boxes between images of the batch, applied
   identically to the images and the pseudo labels.
3. **Student, one forward** on :math:`[x_l;\ \tilde x_s]`. With FDP (once :math:`t \ge
   t_{flow}`) the unlabelled images' maps at the perturbation site are decoded a second time,
   perturbed, in the same call (``CENet(..., perturb_last=B_u)``): the encoder runs once, only
   the part after the site runs twice. At the default site (``perturb_at="classifier"``,
   DDFP's) the last decoder map :math:`d_1` is moved, :math:`d_1 \mapsto d_1 + \rho`,
   :math:`\rho = \xi \lVert d_1\rVert\, g/\lVert g\rVert`,
   :math:`g = \nabla_{d_1}(-\log p_\phi(n(h(d_1))))` per pixel, where :math:`h` is the
   classifier block and :math:`n` the per-pixel L2 normalisation
   (:class:`densessl.DensityPerturbation` with ``head``, :math:`\xi = 0.25`, relative; the
   recipe README measures why). The clean pass's BatchNorm batch is :math:`[x_l;\ \tilde x_s]`
   for every method; the classifier block has no BatchNorm.
4. **Losses** (:func:`densessl.functional.masked_cross_entropy`, a zero with a graph when
   no pixel is kept):

   .. math::

      L = \mathrm{CE}(s_l, y_l) + w(t)\,\big[\lambda_u\,\mathrm{CE}(s_u, \tilde y)
          + \alpha_1\,\mathrm{CE}(s_{u}^{\rho}, \tilde y)
          + \alpha_2\,L_{con}(g([d_l;\ d_u]), [y_l;\ \tilde y]_{\downarrow})\big]

   with :math:`\lambda_u = 1`, :math:`\alpha_1 = 0.5`, :math:`\alpha_2 = 0.3`; both CE on
   :math:`\tilde y` weigh each pixel by the rule's :math:`m` (and each class by
   ``unsup_class_balance``'s weights, which bring the kept labels to the labelled class shares);
   :math:`L_{con}` is
   :class:`densessl.HardAnchorContrast` (:math:`\tau = 0.5`, 256 anchors per class) on
   :class:`densessl.ProjectionHead` embeddings of the *clean* decoder maps of the labelled
   and unlabelled images (in ``fr`` and ``dpfr`` alike), labels downsampled by majority vote.
   :math:`w(t)` is 0 during the supervised warm-up, then ramps up as
   :math:`\exp(-5(1 - r)^2)`, :math:`r \in [0, 1]`. Logged: ``fdp_gain`` = CE of the perturbed
   branch minus CE of the clean one, ``flip`` = fraction of unlabelled pixels whose argmax the
   step changed.
5. **Flow** (:class:`densessl.FlowDensityHead`, own Adam, lr 1e-3), after the student's
   forward so that the perturbation of step ``t`` used the flow of step ``t - 1``:

   .. math::

      L_\phi = -\frac{1}{|P|}\Big[\sum_{i \in P_l} \log p_\phi(f_i + \epsilon_i, y_i)
               + \sum_{i \in P_u} \log \textstyle\sum_c \pi_c\, p_\phi(f_i + \epsilon_i \mid c)\Big],
      \quad \epsilon_i \sim \mathcal N(0, \sigma^2 I)

   over the *detached*, normalised teacher features :math:`f_T` — labelled pixels under their
   true class (labels at the density's resolution; a downsampled block needs a
   ``flow_label_fraction`` majority), unlabelled pixels under the mixture (as the paper and
   DDFP; ``flow_pseudo_labels`` scores them under :math:`\hat y` instead) — on a random subset
   :math:`P` of at most ``flow_pixels`` pixels. The student's loss gives the flow no gradient.
6. **Updates.** Student step (GradScaler under CUDA AMP), then ``teacher.update(student)``
   (EMA of weights and of BatchNorm statistics, ``teacher_buffers``).

Methods (ablation): ``supervised`` (the first term of (4) only), ``mean_teacher`` (+ the
:math:`\lambda_u` term), ``fdp`` (+ :math:`\alpha_1`, flow), ``fr`` (+ :math:`\alpha_2` on the
clean branch, no flow), ``dpfr`` (everything); the absent terms are zeros in the same line.
Every random draw of iteration ``t`` comes from a :class:`Stream` of its own, seeded by
``(seed, t, rank, stream)``, so a resumed run continues exactly.
"""

from __future__ import annotations

__all__ = ["Stream", "Trainer", "class_names", "unsupervised_weight"]

import enum
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import densessl
from densessl.functional import (
    balancing_weights,
    downsample_labels,
    flatten_pixels,
    masked_cross_entropy,
    normalize_pixels,
)
from densessl.utils import unwrap_model

from . import augment
from .config import TrainConfig
from .model import CENet
from .pseudo import Pseudo, PseudoLabelRule, soft_cross_entropy
from .tasks import task_of

_IGNORE = 255


class Stream(enum.IntEnum):
    """The named random streams of one iteration: each draws from its own generator, seeded by
    ``(seed, iteration, rank, stream)`` (the values are part of every stored run: never renumber)."""

    STRONG_VIEW = 1  # the unlabelled images' strong views
    CUTMIX = 2  # CutMix's boxes and partners
    FLOW = 3  # the flow's input noise and pixel subset
    CONTRAST = 4  # the contrast's anchors and negatives
    RANDOM_STEP = 5  # FDP's random-direction control
    LABELLED_VIEW = 6  # the labelled images' photometric view (augment_labelled)


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


# ----------------------------------------------------------------------------- the step


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: no collisions between nearby keys)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def class_names(config: TrainConfig) -> tuple[str, ...]:
    """The classes' names in logs: background, interior, contour (instance task); background,
    gland (semantic, 2 classes); ``class0`` ... (semantic, more).

    Example:
        >>> class_names(TrainConfig(task="semantic"))
        ('background', 'gland')
    """
    return task_of(config).class_names(config.num_classes)


def _unlabelled_cross_entropy(logits: torch.Tensor, pseudo: Pseudo, weight: torch.Tensor | None) -> torch.Tensor:
    """The CE of an unlabelled branch on its (mixed) pseudo labels: against ``distill``'s soft
    targets on every pixel, else on the kept hard labels weighted per pixel by the rule's weight."""
    if pseudo.target is not None:
        return soft_cross_entropy(logits, pseudo.target, weight)
    return masked_cross_entropy(logits, pseudo.labels, ignore_index=_IGNORE, weight=weight, pixel_weight=pseudo.weight)


def _class_keep_rates(logits: torch.Tensor, kept: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per class of the teacher's argmax: the share it predicts (``share_<class>``) and the share
    of those pixels the entropy filter keeps (``kept_<class>``; 0 where the class is absent)."""
    argmax = logits.detach().argmax(dim=1)
    logs = {}
    for c, name in enumerate(names):
        predicted = argmax == c
        count = predicted.sum()
        logs[f"share_{name}"] = count.float() / argmax.numel()
        logs[f"kept_{name}"] = (predicted & kept).sum().float() / count.clamp(min=1).float()
    return logs


class _DensityInput(nn.Module):
    """What the density sees of a perturbed map: the block after the site (if any), then
    (with ``flow_normalize``) per-pixel L2 normalisation — the flow's training features are
    the teacher's at the same point. A module, so that ``DensityPerturbation`` puts the
    block in eval mode while it takes the gradient."""

    def __init__(self, block: nn.Module | None, normalize: bool) -> None:
        super().__init__()
        self.block, self.normalize = block, normalize
        self.is_identity = block is None and not normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.block is None else self.block(x)
        return normalize_pixels(h) if self.normalize else h


class _RandomStep(nn.Module):
    """FDP's control (``perturb_direction="random"``): ``features + rho`` with ``rho`` of the
    density step's length per pixel (``xi``, or ``xi * ||f||`` when relative) in a uniformly random
    direction (a normalised Gaussian), from ``generator`` (set by the trainer every step)."""

    def __init__(self, xi: float, relative: bool) -> None:
        super().__init__()
        self.xi, self.relative = xi, relative
        self.generator: torch.Generator | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(features.shape, generator=self.generator, device=features.device, dtype=torch.float32)
        direction = noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True).clamp_min(1e-12)
        length = (
            self.xi * torch.linalg.vector_norm(features.detach().float(), dim=1, keepdim=True)
            if self.relative
            else self.xi
        )
        return features + (direction * length).to(features.dtype)


class _FlowLoss(nn.Module):
    """``flow.nll`` as a ``forward``, so that DDP can wrap the flow's training loss."""

    def __init__(self, flow: densessl.FlowDensityHead) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.flow.nll(features, labels)


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

    def __init__(
        self, config: TrainConfig, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.amp = bool(config.amp and self.device.type == "cuda")
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        pretrained = None if config.pretrained.lower() in ("", "none") else config.pretrained
        student = CENet(
            num_classes=config.num_classes,
            backbone=config.backbone,
            pretrained=pretrained,
            perturb_at=config.perturb_at,
        )
        student = student.to(self.device)
        self.num_classes = config.num_classes
        self.teacher = (
            densessl.EMATeacher(student, decay=config.ema_decay, buffers=config.teacher_buffers)
            if config.semi
            else None
        )
        if self.teacher is not None:
            self.teacher.eval()
        self.flow: densessl.FlowDensityHead | None = None
        self.flow_optimizer: torch.optim.Optimizer | None = None
        self.perturbation: densessl.DensityPerturbation | _RandomStep | None = None
        if config.uses_flow:
            self.flow = densessl.FlowDensityHead(
                student.feature_channels,
                self.num_classes,
                depth=config.flow_depth,
                hidden=config.flow_hidden,
                ignore_index=_IGNORE,
            ).to(self.device)
            self.flow_optimizer = torch.optim.Adam(self.flow.parameters(), lr=config.flow_lr)
            # DDFP's site ("classifier"): the step moves the block's input, the density is
            # measured at the block's output (student.density_block; None at the other sites).
            if config.perturb_direction == "random":  # FDP's control: the same step length, a random direction
                self.perturbation = _RandomStep(config.xi, config.xi_relative)
            else:
                head = _DensityInput(student.density_block, config.flow_normalize)
                self.perturbation = densessl.DensityPerturbation(
                    self.flow, xi=config.xi, relative=config.xi_relative, head=None if head.is_identity else head
                )
        self.projector: nn.Module | None = None
        self.contrast: densessl.HardAnchorContrast | None = None
        params = list(student.parameters())
        if config.uses_contrast:
            self.projector = densessl.ProjectionHead(
                student.decoder_channels, config.projection_hidden, config.projection_dim
            ).to(self.device)
            self.contrast = densessl.HardAnchorContrast(
                config.temperature,
                config.num_anchors,
                config.num_negatives,
                ignore_index=_IGNORE,
                num_classes=self.num_classes,
            )
            params += list(self.projector.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        # the classes' weights in every cross-entropy (None: all 1, torch's plain mean)
        self.class_weight: torch.Tensor | None = None
        if config.contour_weight != 1.0:
            self.class_weight = torch.ones(self.num_classes, device=self.device)
            self.class_weight[2] = config.contour_weight
        self.pseudo_labeler = PseudoLabelRule(
            config.pseudo_labels,
            config.threshold,
            config.min_class_keep,
            config.min_size,
            config.contour_width,
            ignore_index=_IGNORE,
        ).to(self.device)
        self.alignment = (
            densessl.DistributionAlignment(self.num_classes, config.alignment_momentum, ignore_index=_IGNORE).to(
                self.device
            )
            if config.distribution_alignment and config.semi
            else None
        )
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
            "student": unwrap_model(self.student).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.flow is not None and self.flow_optimizer is not None:
            state["flow"] = self.flow.state_dict()
            state["flow_optimizer"] = self.flow_optimizer.state_dict()
        if self.projector is not None:
            state["projector"] = unwrap_model(self.projector).state_dict()
        if self.alignment is not None:
            state["alignment"] = self.alignment.state_dict()
        if self.config.semi:
            state["pseudo_rule"] = self.pseudo_labeler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (strictly: every part this method has must be there).

        Args:
            state: a dict from :meth:`state_dict` (e.g. of :func:`load_checkpoint`).

        Raises:
            KeyError: a part this trainer's method has is missing from ``state``.
            RuntimeError: weights that do not fit the networks (``load_state_dict``'s message).
        """
        unwrap_model(self.student).load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.flow is not None and self.flow_optimizer is not None:
            self.flow.load_state_dict(state["flow"])
            self.flow_optimizer.load_state_dict(state["flow_optimizer"])
        if self.projector is not None:
            unwrap_model(self.projector).load_state_dict(state["projector"])
        if self.alignment is not None:
            self.alignment.load_state_dict(state["alignment"])
        if "pseudo_rule" in state:  # checkpoints from before the rules had state have none
            self.pseudo_labeler.load_state_dict(state["pseudo_rule"])
        self.iteration = int(state["iteration"])

    # -- one step -------------------------------------------------------------------

    def _generator(self, iteration: int, purpose: Stream) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(_seed(self.config.seed, iteration, self.rank, purpose))

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    def _fit_flow(self, features: torch.Tensor, labels: torch.Tensor, iteration: int) -> torch.Tensor:
        """One Adam step of the flow on detached features; returns the nll per dimension (detached)."""
        assert self.flow is not None and self.flow_optimizer is not None
        config = self.config
        features = features.detach().float()
        generator = self._generator(iteration, Stream.FLOW)
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
                    _FlowLoss(self.flow),
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=True,
                )
            else:
                self._flow_loss = _FlowLoss(self.flow)
        loss = self._flow_loss(features, labels)
        self.flow_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.flow_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), config.flow_grad_clip)
        self.flow_optimizer.step()
        return loss.detach() / features.shape[1]

    def step(
        self, labelled: tuple[torch.Tensor, torch.Tensor], unlabelled: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """One training iteration, the module docstring's equations in order; advances :attr:`iteration`.

        Args:
            labelled: ``(images, classes)`` of the labelled batch.
            unlabelled: weak views of the unlabelled batch (``None`` for ``supervised``).

        Shapes:

            - labelled images: ``[B_l, 3, S, S]`` float32; classes ``[B_l, S, S]`` int64 in ``0..2``.
            - unlabelled: ``[B_u, 3, S, S]`` float32.

        Returns:
            Detached 0-dim tensors: ``loss``, ``sup``, ``weight``, and as the method has them ``mt``,
            ``fdp`` (with ``fdp_gain``, ``flip``), ``contrast``, ``flow_nll_per_dim``, ``kept``,
            ``skipped`` (1 when GradScaler skipped the step and the teacher was not updated);
            semi-supervised methods also log, per class of the teacher's argmax on the unlabelled
            batch, the share of pixels it predicts (``share_background`` ...), the share of those the
            rule keeps (``kept_background`` ...) and the class shares of the kept labels
            (``pseudo_background`` ...).

        Raises:
            ValueError: a semi-supervised method without an unlabelled batch.
        """
        config, t = self.config, self.iteration
        x_l, y_l = self._labelled_views(labelled, t)
        w = unsupervised_weight(t, config.supervised_warmup, config.rampup)
        self._train_mode()
        if not config.semi:
            with self._autocast():
                s_l = self.student(x_l).logits
            sup = masked_cross_entropy(s_l, y_l, ignore_index=_IGNORE, weight=self.class_weight)
            self._backward_and_step(sup)
            return {"weight": torch.tensor(w), "sup": sup.detach(), "loss": sup.detach()}
        if unlabelled is None:
            raise ValueError(f"unlabelled: method {config.method!r} needs an unlabelled batch, got None")
        x_w = unlabelled.to(self.device, non_blocking=True)
        logs: dict[str, torch.Tensor] = {"weight": torch.tensor(w)}
        teacher_out, pseudo, shares = self._teach(x_l, y_l, x_w, logs)  # 1. teacher, once
        x_s, mixed = self._strong_views(x_w, pseudo, t)  # 2. views
        out = self._student_forward(x_l, x_s, t)  # 3. student, once
        n_l, n_u = x_l.shape[0], x_w.shape[0]
        s_l, s_u, s_rho = out.logits[:n_l], out.logits[n_l : n_l + n_u], out.logits[n_l + n_u :]
        class_weight = self._class_weight(mixed.labels, shares, logs)  # 4. losses
        sup = masked_cross_entropy(s_l, y_l, ignore_index=_IGNORE, weight=self.class_weight)
        mt = _unlabelled_cross_entropy(s_u, mixed, class_weight)
        fdp = self._perturbed_loss(out.logits, s_u, s_rho, mixed, class_weight, mt, logs)
        con = self._contrast_loss(out.decoder[: n_l + n_u], y_l, mixed.labels, t, logs)
        loss = sup + w * (config.unsup_weight * mt + config.alpha_perturbed * fdp + config.alpha_contrast * con)
        logs.update(sup=sup.detach(), mt=mt.detach(), loss=loss.detach())
        if self.flow is not None:  # 5. the flow
            logs["flow_nll_per_dim"] = self._fit_flow(*self._flow_batch(teacher_out, out, x_l, y_l, pseudo), t)
        stepped = self._backward_and_step(loss)  # 6. updates
        if stepped:  # the teacher must not average in a student that GradScaler did not move
            self.teacher.update(self.student)
        logs["skipped"] = torch.tensor(0.0 if stepped else 1.0)
        return logs

    # -- the step's parts, in its order ----------------------------------------------

    def _labelled_views(self, labelled: tuple[torch.Tensor, torch.Tensor], t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled batch on the device; with ``augment_labelled``, its photometric strong view
        (colour, stain, blur, noise: no pixel moves, so the labels still fit)."""
        x_l = labelled[0].to(self.device, non_blocking=True)
        y_l = labelled[1].to(self.device, non_blocking=True)
        if self.config.augment_labelled:
            x_l = augment.strong_from_weak(x_l, self._generator(t, Stream.LABELLED_VIEW))
        return x_l, y_l

    def _train_mode(self) -> None:
        self.student.train()
        if self.projector is not None:
            self.projector.train()

    def _teach(
        self, x_l: torch.Tensor, y_l: torch.Tensor, x_w: torch.Tensor, logs: dict[str, torch.Tensor]
    ) -> tuple[Any, Pseudo, torch.Tensor]:
        """Step 1: the teacher's one pass (over ``[x_l; x_w]`` when the flow learns from the
        teacher's labelled features, else ``x_w``), its pseudo labels on ``x_w`` by the config's
        rule, and the labelled class shares (the ``class_share`` quotas and ``unsup_class_balance``'s
        target: running with distribution alignment, else this batch's)."""
        config = self.config
        assert self.teacher is not None
        on_labelled = self._teacher_on_labelled
        with self._autocast():
            teacher_out = self.teacher(torch.cat([x_l, x_w]) if on_labelled else x_w)
        logits = teacher_out.logits[x_l.shape[0] if on_labelled else 0 :].float()
        if self.alignment is not None:  # boost the classes the teacher under-predicts
            self.alignment.observe_labels(y_l)
            logits = self.alignment(logits)
        shares = (
            self.alignment.target
            if self.alignment is not None
            else torch.bincount(y_l[y_l != _IGNORE].flatten(), minlength=self.num_classes).float()
        )
        pseudo = self.pseudo_labeler(logits, shares=shares)
        logs["kept"] = pseudo.kept_fraction.detach()
        logs.update(_class_keep_rates(logits, pseudo.mask, class_names(config)))
        for c, name in enumerate(class_names(config)):  # what the unlabelled loss teaches, per class
            logs[f"pseudo_{name}"] = (
                pseudo.target[:, c].mean()  # distill: the teacher's mean probability of the class
                if pseudo.target is not None
                else (pseudo.labels == c).sum().float() / pseudo.mask.sum().clamp(min=1).float()
            )
        return teacher_out, pseudo, shares

    @property
    def _teacher_on_labelled(self) -> bool:
        return self.flow is not None and self.config.flow_labelled_source == "teacher"

    def _strong_views(self, x_w: torch.Tensor, pseudo: Pseudo, t: int) -> tuple[torch.Tensor, Pseudo]:
        """Step 2: strong views of the weak views (pixel-aligned), then CutMix of images, pseudo
        labels, mask and (the ``soft`` rule's) per-pixel weights or (``distill``'s) targets alike."""
        x_s = augment.strong_from_weak(x_w, self._generator(t, Stream.STRONG_VIEW))
        if not self.config.cutmix:
            return x_s, pseudo
        optional = [m for m in (pseudo.weight, pseudo.target) if m is not None]
        x_s, labels, mask, *rest = augment.cutmix(
            x_s, pseudo.labels, pseudo.mask, *optional, generator=self._generator(t, Stream.CUTMIX)
        )[:-1]
        weight = rest.pop(0) if pseudo.weight is not None else None
        target = rest.pop(0) if pseudo.target is not None else None
        return x_s, Pseudo(labels, mask, weight, target)

    def _perturbing(self, t: int) -> bool:
        return self.config.uses_flow and t >= self.config.flow_warmup

    def _student_forward(self, x_l: torch.Tensor, x_s: torch.Tensor, t: int) -> Any:
        """Step 3: one student forward over ``[x_l; x_s]``. With FDP after the flow's warm-up the
        unlabelled site maps are decoded a second time, perturbed (logits ``[x_l; x_s; x_s^rho]``):
        only the network after the site runs twice, and the clean pass's BatchNorm batch is
        ``[x_l; x_s]`` for every method."""
        with self._autocast():
            if not self._perturbing(t):
                return self.student(torch.cat([x_l, x_s]))
            if isinstance(self.perturbation, _RandomStep):
                self.perturbation.generator = self._generator(t, Stream.RANDOM_STEP)
            return self.student(torch.cat([x_l, x_s]), perturb=self.perturbation, perturb_last=x_s.shape[0])

    def _class_weight(
        self, y_u: torch.Tensor, shares: torch.Tensor, logs: dict[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """The per-class weights of the unlabelled CE: ``unsup_class_balance``'s, which bring the kept
        pseudo labels to the labelled class shares, times ``contour_weight``'s (``None``: all 1)."""
        if not self.config.unsup_class_balance:
            return self.class_weight
        weight = balancing_weights(y_u, shares, ignore_index=_IGNORE)
        for name, w in zip(class_names(self.config), weight):
            logs[f"weight_{name}"] = w.detach()
        if not bool(weight.any()):  # nothing to balance towards (e.g. no labelled pixel yet)
            return self.class_weight
        return weight if self.class_weight is None else weight * self.class_weight

    def _perturbed_loss(
        self,
        logits: torch.Tensor,
        s_u: torch.Tensor,
        s_rho: torch.Tensor,
        mixed: Pseudo,
        class_weight: torch.Tensor | None,
        mt: torch.Tensor,
        logs: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """FDP's term: the perturbed branch's CE on the same pseudo labels (a zero with a graph during
        the flow's warm-up, a plain zero without FDP). Logs ``fdp``, ``fdp_gain`` (its CE minus the
        clean branch's) and ``flip`` (the share of unlabelled pixels whose argmax the step changed)."""
        if not self.config.uses_flow:
            return torch.zeros((), device=logits.device)
        if s_rho.shape[0] == 0:  # the flow's warm-up: no perturbed branch yet
            fdp = logits.sum() * 0.0
            logs.update(fdp_gain=torch.zeros(()), flip=torch.zeros(()))
        else:
            fdp = _unlabelled_cross_entropy(s_rho, mixed, class_weight)
            logs["fdp_gain"] = fdp.detach() - mt.detach()
            logs["flip"] = (s_u.detach().argmax(1) != s_rho.detach().argmax(1)).float().mean()
        logs["fdp"] = fdp.detach()
        return fdp

    def _contrast_loss(
        self, decoder: torch.Tensor, y_l: torch.Tensor, y_u: torch.Tensor, t: int, logs: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """FR's term: hard-anchor contrast of the projected *clean* decoder maps (in ``fr`` and ``dpfr``
        alike, so the two ablation rows differ in the perturbation only); the labelled pixels (true
        labels) join the pseudo-labelled ones, so there are two classes before the teacher is sure.
        A plain zero without FR."""
        if self.projector is None or self.contrast is None:
            return torch.zeros((), device=decoder.device)
        with self._autocast():
            embeddings = self.projector(decoder)
        size = embeddings.shape[-2:]
        labels = torch.cat(
            [
                downsample_labels(y, size, ignore_index=_IGNORE, mode="majority", num_classes=self.num_classes)
                for y in (y_l, y_u)
            ]
        )
        con = self.contrast(embeddings.float(), labels, generator=self._generator(t, Stream.CONTRAST))
        logs["contrast"] = con.detach()
        return con

    def _flow_batch(
        self, teacher_out: Any, out: Any, x_l: torch.Tensor, y_l: torch.Tensor, pseudo: Pseudo
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 5's data: detached features of the labelled images (the teacher's, or the clean
        student pass's with ``flow_labelled_source="student"``) and of the unlabelled ones (the
        teacher's), normalised as the density sees them; labels at the density's resolution, the
        unlabelled ones ignored (the mixture) unless ``flow_pseudo_labels``."""
        config = self.config
        features = teacher_out.features.detach().float()
        if not self._teacher_on_labelled:
            features = torch.cat([out.features[: x_l.shape[0]].detach().float(), features])
        if config.flow_normalize:
            features = normalize_pixels(features)
        size = features.shape[-2:]
        unlabelled = pseudo.labels if config.flow_pseudo_labels else torch.full_like(pseudo.labels, _IGNORE)
        labels = torch.cat(
            [
                downsample_labels(
                    y,
                    size,
                    ignore_index=_IGNORE,
                    mode="majority",
                    num_classes=self.num_classes,
                    min_fraction=config.flow_label_fraction,
                )
                for y in (y_l, unlabelled)
            ]
        )
        return features, labels

    def learning_rate(self, iteration: int) -> float:
        """The student's learning rate at ``iteration`` (``config.lr`` under ``lr_schedule``).

        A function of the iteration alone, so that a resumed run follows the same schedule.

        Example:
            >>> trainer = Trainer(TrainConfig(method="supervised", iterations=10, lr=1.0, lr_power=1.0))
            >>> [round(trainer.learning_rate(t), 2) for t in (0, 5, 9)]
            [1.0, 0.5, 0.1]
        """
        config = self.config
        if config.lr_schedule == "constant":
            return config.lr
        return config.lr * max(1.0 - iteration / config.iterations, 0.0) ** config.lr_power

    def _backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backward, optimiser step (through GradScaler), iteration + 1; whether the step was taken.

        GradScaler skips a step whose gradients hold inf/NaN and then lowers its scale, so a
        lower scale after ``update()`` means this step was skipped (only with AMP enabled).
        """
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return scale is None or self.scaler.get_scale() >= scale

    def eval_model(self, weights: str = "student") -> nn.Module:
        """The network to evaluate: the student (the headline, as in the paper) or the EMA teacher.

        Args:
            weights: ``"student"`` or ``"teacher"``.

        Raises:
            ValueError: an unknown ``weights``, or ``"teacher"`` for a method without one.
        """
        if weights == "student":
            return unwrap_model(self.student)
        if weights == "teacher" and self.teacher is not None:
            return self.teacher.model
        raise ValueError(
            f"weights must be 'student' or 'teacher' (methods with a teacher), got {weights!r} "
            f"for method {self.config.method!r}"
        )
