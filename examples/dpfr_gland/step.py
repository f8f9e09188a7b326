"""One DPFR training step, read top to bottom like the method section of the paper.

See :mod:`examples.dpfr_gland.train` for the equations; :class:`Trainer` holds the
networks and optimisers of one process and :meth:`Trainer.step` runs one iteration.
"""

from __future__ import annotations

__all__ = ["Trainer", "class_names", "unsupervised_weight"]

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import densessl
from densessl.functional import (balancing_weights, downsample_labels, flatten_pixels, masked_cross_entropy,
                                 normalize_pixels)
from densessl.utils import unwrap_model

from . import augment
from .config import TrainConfig
from .model import CENet
from .pseudo import PseudoLabelRule

_IGNORE = 255


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
    if config.task == "instance":
        return ("background", "interior", "contour")
    if config.semantic_classes == 2:
        return ("background", "gland")
    return tuple(f"class{c}" for c in range(config.semantic_classes))


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
        length = self.xi * torch.linalg.vector_norm(features.detach().float(), dim=1, keepdim=True) \
            if self.relative else self.xi
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

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu", rank: int = 0,
                 world_size: int = 1) -> None:
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.amp = bool(config.amp and self.device.type == "cuda")
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        pretrained = None if config.pretrained.lower() in ("", "none") else config.pretrained
        student = CENet(num_classes=config.num_classes, backbone=config.backbone, pretrained=pretrained,
                        perturb_at=config.perturb_at)
        student = student.to(self.device)
        self.num_classes = config.num_classes
        self.teacher = densessl.EMATeacher(student, decay=config.ema_decay, buffers=config.teacher_buffers) \
            if config.semi else None
        if self.teacher is not None:
            self.teacher.eval()
        self.flow: densessl.FlowDensityHead | None = None
        self.flow_optimizer: torch.optim.Optimizer | None = None
        self.perturbation: densessl.DensityPerturbation | _RandomStep | None = None
        if config.uses_flow:
            self.flow = densessl.FlowDensityHead(student.feature_channels, self.num_classes, depth=config.flow_depth,
                                                 hidden=config.flow_hidden, ignore_index=_IGNORE).to(self.device)
            self.flow_optimizer = torch.optim.Adam(self.flow.parameters(), lr=config.flow_lr)
            # DDFP's site ("classifier"): the step moves the block's input, the density is
            # measured at the block's output (student.density_block; None at the other sites).
            head = _DensityInput(student.density_block, config.flow_normalize)
            self.perturbation = densessl.DensityPerturbation(self.flow, xi=config.xi, relative=config.xi_relative,
                                                             head=None if head.is_identity else head)
            if config.perturb_direction == "random":
                self.perturbation = _RandomStep(config.xi, config.xi_relative)
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
        self.pseudo_labeler = PseudoLabelRule(config.pseudo_labels, config.threshold, config.min_class_keep,
                                              config.min_size, config.contour_width, ignore_index=_IGNORE).to(self.device)
        self.alignment = densessl.DistributionAlignment(self.num_classes, config.alignment_momentum,
                                                        ignore_index=_IGNORE).to(self.device) \
            if config.distribution_alignment and config.semi else None
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
            ``fdp``, ``contrast``, ``flow_nll_per_dim``, ``kept``, ``weight``, ``skipped`` (1 when
            GradScaler skipped the step and the teacher was not updated); semi-supervised
            methods also log, per class of the teacher's argmax on the unlabelled batch, the
            share of pixels it predicts (``share_background`` ...) and the share of those the
            entropy filter keeps (``kept_background``, ``kept_interior``, ``kept_contour``).

        Raises:
            ValueError: a semi-supervised method without an unlabelled batch.
        """
        config, t = self.config, self.iteration
        x_l, y_l = labelled[0].to(self.device, non_blocking=True), labelled[1].to(self.device, non_blocking=True)
        if config.augment_labelled:  # colour, stain, blur and noise on the labelled views (no pixel moves)
            x_l = augment.strong_from_weak(x_l, self._generator(t, 6))
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
        # 1. The teacher, once: pseudo labels from its logits on the weak views; with a flow,
        #    its features of the labelled images too (one batched pass, eval mode).
        teacher_on_labelled = self.flow is not None and config.flow_labelled_source == "teacher"
        teacher_in = torch.cat([x_l, x_w]) if teacher_on_labelled else x_w
        with self._autocast():
            teacher_out = self.teacher(teacher_in)
        offset = n_l if teacher_on_labelled else 0
        teacher_logits = teacher_out.logits[offset:].float()
        if self.alignment is not None:  # boost the classes the teacher under-predicts
            self.alignment.observe_labels(y_l)
            teacher_logits = self.alignment(teacher_logits)
        # the labelled class shares (running, with distribution alignment; else this batch's): the
        # class_share rule's quotas and unsup_class_balance's target
        shares = self.alignment.target if self.alignment is not None else \
            torch.bincount(y_l[y_l != _IGNORE].flatten(), minlength=self.num_classes).float()
        pseudo = self.pseudo_labeler(teacher_logits, shares=shares)
        logs["kept"] = pseudo.kept_fraction.detach()
        logs.update(_class_keep_rates(teacher_logits, pseudo.mask, class_names(config)))
        for c, name in enumerate(class_names(config)):  # what the kept pseudo labels teach, per class
            logs[f"pseudo_{name}"] = (pseudo.labels == c).sum().float() / pseudo.mask.sum().clamp(min=1).float()
        # 2. Strong views of the same weak views (pixel-aligned), then CutMix with the labels.
        x_s = augment.strong_from_weak(x_w, self._generator(t, 1))
        y_u, w_u = pseudo.labels, pseudo.weight
        if config.cutmix:  # the soft rule's per-pixel weights travel with their labels
            maps = augment.cutmix(x_s, y_u, *(() if w_u is None else (w_u,)), generator=self._generator(t, 2))
            x_s, y_u = maps[0], maps[1]
            w_u = None if w_u is None else maps[2]
        # 3. One student forward over [labelled; strong unlabelled]. With FDP (after the flow's
        #    warm-up) the unlabelled site maps are decoded a second time, perturbed: only the
        #    network after the site runs twice, and the BatchNorm batch of the clean pass is the
        #    same [x_l; x_s] for every method.
        perturb_on = config.uses_flow and t >= config.flow_warmup
        with self._autocast():
            if perturb_on:
                if isinstance(self.perturbation, _RandomStep):
                    self.perturbation.generator = self._generator(t, 5)
                out = self.student(torch.cat([x_l, x_s]), perturb=self.perturbation, perturb_last=n_u)
            else:
                out = self.student(torch.cat([x_l, x_s]))
        logits = out.logits
        # 4. Losses.
        sup = masked_cross_entropy(logits[:n_l], y_l, ignore_index=_IGNORE)
        class_weight = None
        if config.unsup_class_balance:  # the kept pseudo labels weighted to the labelled class shares
            class_weight = balancing_weights(y_u, shares, ignore_index=_IGNORE)
            for name, w in zip(class_names(config), class_weight):
                logs[f"weight_{name}"] = w.detach()
            if not bool(class_weight.any()):  # nothing to balance towards (e.g. no labelled pixel yet)
                class_weight = None
        mt = masked_cross_entropy(logits[n_l:n_l + n_u], y_u, ignore_index=_IGNORE, weight=class_weight,
                                  pixel_weight=w_u)
        unsup = config.unsup_weight * mt
        logs["sup"], logs["mt"] = sup.detach(), mt.detach()
        if config.uses_flow:
            if perturb_on:
                fdp = masked_cross_entropy(logits[n_l + n_u:], y_u, ignore_index=_IGNORE, weight=class_weight,
                                           pixel_weight=w_u)
                clean_u, perturbed_u = logits[n_l:n_l + n_u].detach(), logits[n_l + n_u:].detach()
                # What the step did to the output: the CE it added and the argmax flips.
                logs["fdp_gain"] = fdp.detach() - mt.detach()
                logs["flip"] = (clean_u.argmax(1) != perturbed_u.argmax(1)).float().mean()
            else:
                fdp = logits.sum() * 0.0
                logs["fdp_gain"] = torch.zeros(())
                logs["flip"] = torch.zeros(())
            unsup = unsup + config.alpha_perturbed * fdp
            logs["fdp"] = fdp.detach()
        if self.projector is not None and self.contrast is not None:
            # FR contrasts the clean branch's decoder maps in `fr` and `dpfr` alike (so the two
            # ablation rows differ in the perturbation only); labelled pixels (true labels) join
            # the pseudo-labelled ones, so that there are two classes before the teacher is sure.
            with self._autocast():
                embeddings = self.projector(out.decoder[:n_l + n_u])
            size = embeddings.shape[-2:]
            labels_c = torch.cat([
                downsample_labels(y, size, ignore_index=_IGNORE, mode="majority", num_classes=self.num_classes)
                for y in (y_l, y_u)
            ])
            contrast = self.contrast(embeddings.float(), labels_c, generator=self._generator(t, 4))
            unsup = unsup + config.alpha_contrast * contrast
            logs["contrast"] = contrast.detach()
        loss = sup + weight * unsup
        # 5. The flow, on the teacher's detached features: labelled pixels under their true
        #    class, unlabelled ones under the mixture (pseudo labels only if asked).
        if self.flow is not None:
            features_f = teacher_out.features.detach().float()
            if not teacher_on_labelled:  # the clean student pass's labelled features, detached
                features_f = torch.cat([out.features[:n_l].detach().float(), features_f])
            if config.flow_normalize:
                features_f = normalize_pixels(features_f)
            size = features_f.shape[-2:]
            unlabelled_f = pseudo.labels if config.flow_pseudo_labels else torch.full_like(pseudo.labels, _IGNORE)
            labels_f = torch.cat([
                downsample_labels(y, size, ignore_index=_IGNORE, mode="majority", num_classes=self.num_classes,
                                  min_fraction=config.flow_label_fraction)
                for y in (y_l, unlabelled_f)
            ])
            logs["flow_nll_per_dim"] = self._fit_flow(features_f, labels_f, t)
        # 6. Student step, then the teacher follows — unless GradScaler skipped the step (inf/NaN
        #    gradients under AMP): the teacher must not average in a student that did not move.
        stepped = self._backward_and_step(loss)
        if stepped:
            self.teacher.update(self.student)
        logs["skipped"] = torch.tensor(0.0 if stepped else 1.0)
        logs["loss"] = loss.detach()
        return logs

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
        raise ValueError(f"weights must be 'student' or 'teacher' (methods with a teacher), got {weights!r} "
                         f"for method {self.config.method!r}")
