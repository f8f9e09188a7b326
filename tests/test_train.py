"""Tests of the DPFR training recipe (examples/dpfr_gland/train.py).

Oracles: EMA arithmetic recomputed in float64 from parameter snapshots; gradient snapshots
taken at the flow's own optimiser step; forward-hook counts; a pixelwise label oracle for
CutMix alignment; uninterrupted runs for exact resume; index bookkeeping for the batch stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.dpfr_gland import train as T
from examples.dpfr_gland.model import CENetOutput

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(
    synthetic_size=80,
    synthetic_train=6,
    synthetic_test=1,
    crop_size=64,
    batch_labelled=2,
    batch_unlabelled=2,
    flow_hidden=32,
    flow_warmup=1,
    supervised_warmup=0,
    rampup=0,
    projection_hidden=16,
    projection_dim=8,
    num_anchors=16,
    num_negatives=32,
    log_every=1,
    eval_pictures=0,
    label_ratio="1/3",
)


def tiny_config(**overrides: object) -> T.TrainConfig:
    return T.TrainConfig(**{**TINY, **overrides})


def batches(seed: int = 0, n_l: int = 2, n_u: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    labelled = (torch.randn(n_l, 3, size, size, generator=g), torch.randint(0, 3, (n_l, size, size), generator=g))
    return labelled, torch.randn(n_u, 3, size, size, generator=g)


# ----------------------------------------------------------------------------- configuration


def test_config_defaults_follow_the_paper_except_the_measured_step():
    config = T.TrainConfig()
    assert (config.alpha_perturbed, config.alpha_contrast) == (0.5, 0.3)
    assert (config.num_anchors, config.temperature, config.flow_lr) == (256, 0.5, 1e-3)
    # the step: DDFP's site, relative length (measured in the recipe README; the paper's
    # absolute xi = 3 is xi=3, xi_relative=false)
    assert (config.perturb_at, config.xi, config.xi_relative, config.flow_normalize) == ("classifier", 0.25, True, True)


@pytest.mark.parametrize("name", ["demo_cpu", "glas_full", "crag_full", "pgland_full"])
def test_shipped_configs_load(name):
    config = T.load_config(ROOT / "examples" / "dpfr_gland" / "configs" / f"{name}.json")
    assert config.method == "dpfr"
    if name != "demo_cpu":  # the paper's setting: CE-Net ResNet-101 from ImageNet, 416 px, 8 + 8, poly
        assert (config.backbone, config.pretrained, config.crop_size) == ("resnet101", "imagenet", 416)
        assert (config.batch_labelled, config.batch_unlabelled, config.lr_schedule) == (8, 8, "poly")
        assert config.device == "auto"
        splits = {"glas_full": ["testA", "testB"], "crag_full": ["valid"], "pgland_full": ["test"]}
        assert T.evaluation_splits(config) == splits[name]
        assert (config.task, config.num_classes) == (("semantic", 2) if name == "pgland_full" else ("instance", 3))
    else:
        assert config.dataset == "synthetic" and config.iterations <= 500


def test_load_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"itrations": 3}))
    with pytest.raises(ValueError, match="'itrations'.*iterations"):
        T.load_config(path)
    path.write_text(json.dumps({"iterations": "3"}))
    with pytest.raises(TypeError, match="iterations must be a int, got str"):
        T.load_config(path)
    path.write_text(json.dumps({"cutmix": 1}))
    with pytest.raises(TypeError, match="cutmix"):
        T.load_config(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="JSON object"):
        T.load_config(path)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        T.load_config(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        T.load_config(tmp_path / "missing.json")
    path.write_text(json.dumps({"_comment": "skipped", "lr": 1}))
    assert T.load_config(path).lr == 1.0 and isinstance(T.load_config(path).lr, float)


def test_overrides_convert_to_field_types():
    config = T.apply_overrides(T.TrainConfig(), ["iterations=7", "lr=2e-3", "cutmix=no", "method=fr", "data=a=b"])
    assert (config.iterations, config.lr, config.cutmix, config.method, config.data) == (7, 2e-3, False, "fr", "a=b")
    assert T.TrainConfig().iterations != 7  # the input is not modified


@pytest.mark.parametrize(
    "assignment, pattern",
    [
        ("iterations=abc", "iterations: expected int"),
        ("lr=fast", "lr: expected float"),
        ("amp=maybe", "amp: expected a bool"),
        ("nosuchkey=1", "'nosuchkey'"),
        ("xi", "key=value"),
        ("method=teacher", "method must be one of"),
        ("crop_size=100", "crop_size must be a positive multiple of 32"),
        ("iterations=0", "iterations must be >= 1"),
        ("lr=nan", "lr must be a finite number"),
        ("ema_decay=1.5", "ema_decay"),
        ("label_ratio=2", "label_ratio"),
        ("flow_warmup=0", "flow_warmup"),
    ],
)
def test_override_errors_name_the_key(assignment, pattern):
    with pytest.raises(ValueError, match=pattern):
        T.apply_overrides(T.TrainConfig(), [assignment])


def test_cli_reports_bad_set(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("{}")
    with pytest.raises(SystemExit):
        T.main(["--config", str(path), "--set", "batch_labeled=2"])
    assert "batch_labeled" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        T.main(["--config", str(path), "--out", str(tmp_path), "--resume"])
    assert "checkpoint.pt does not exist" in capsys.readouterr().err


def test_real_data_needs_a_path():
    with pytest.raises(ValueError, match="data must name the glas folder"):
        T.build_datasets(T.TrainConfig(dataset="glas"))


def test_unsupervised_weight_schedule():
    # hand-computed: exp(-5 (1 - r)^2)
    assert T.unsupervised_weight(0, 10, 10) == 0.0
    assert T.unsupervised_weight(9, 10, 10) == 0.0
    assert T.unsupervised_weight(10, 10, 10) == pytest.approx(np.exp(-5.0))
    assert T.unsupervised_weight(15, 10, 10) == pytest.approx(np.exp(-1.25))
    assert T.unsupervised_weight(20, 10, 10) == 1.0
    assert T.unsupervised_weight(0, 0, 0) == 1.0
    values = [T.unsupervised_weight(t, 3, 7) for t in range(15)]
    assert values == sorted(values)


# ----------------------------------------------------------------------------- batch stream


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(1, 9),
    batch=st.integers(1, 4),
    start=st.integers(0, 12),
    world=st.integers(1, 3),
    seed=st.integers(0, 5),
)
def test_batch_stream_resumes_and_covers(size, batch, start, world, seed):
    streams = [iter(T.BatchStream(size, batch, seed, rank, world)) for rank in range(world)]
    full = [[next(s) for _ in range(start + 3)] for s in streams]
    for rank in range(world):
        resumed = iter(T.BatchStream(size, batch, seed, rank, world, start=start))
        assert [next(resumed) for _ in range(3)] == full[rank][start:]  # skipping = starting later
        serials = [serial for b in full[rank] for _, serial in b]
        assert serials == list(range(len(serials)))
    # each epoch, the ranks together visit every index (DistributedSampler pads by repeating)
    per_rank = -(-size // world)
    first_epoch = [k for rank in range(world) for b in full[rank] for k, s in b if s < per_rank]
    if all(len(full[r]) * batch >= per_rank for r in range(world)):
        assert set(first_epoch) == set(range(size))


def test_batch_stream_rejects_empty():
    with pytest.raises(ValueError, match="size"):
        T.BatchStream(0, 2)


def test_view_dataset_is_deterministic_per_serial():
    train_set, _ = T.build_datasets(tiny_config())
    views = T.ViewDataset(train_set, [0, 1], 64, seed=3, contour_width=2)
    image, classes = views[(1, 5)]
    again, classes_again = views[(1, 5)]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert classes.dtype == torch.int64 and set(classes.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(image, again) and torch.equal(classes, classes_again)
    assert not torch.equal(image, views[(1, 6)][0])


# ----------------------------------------------------------------------------- the step


@pytest.mark.parametrize("buffers", ["ema", "copy"])
def test_teacher_gets_no_gradient_and_moves_only_by_ema(buffers):
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="dpfr", ema_decay=0.9, teacher_buffers=buffers))
    teacher = trainer.teacher.model
    assert all(not p.requires_grad for p in teacher.parameters())
    student_ids = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not student_ids & {id(p) for p in teacher.parameters()}
    before = [p.detach().double().clone() for p in teacher.parameters()]
    before_buffers = [b.double().clone() for b in teacher.buffers()]
    for step in range(3):
        trainer.step(*batches(step))
        after = [p.detach().double() for p in teacher.parameters()]
        student = [p.detach().double() for p in trainer.student.parameters()]
        decay = min(1 - 1 / (step + 1), 0.9)  # d_t = min(1 - 1/(t+1), decay)
        for b, a, s in zip(before, after, student):
            torch.testing.assert_close(a, decay * b + (1 - decay) * s, rtol=1e-5, atol=1e-6)
        assert all(p.grad is None for p in teacher.parameters())
        # BatchNorm statistics: averaged like the weights ("ema") or copied ("copy"); counters copied
        for b, bt, bs in zip(before_buffers, teacher.buffers(), trainer.student.buffers()):
            if buffers == "copy" or not bt.is_floating_point():
                assert torch.equal(bt, bs)
            else:
                torch.testing.assert_close(bt.double(), decay * b + (1 - decay) * bs.double(), rtol=1e-5, atol=1e-6)
        before = [a.clone() for a in after]
        before_buffers = [b.double().clone() for b in teacher.buffers()]


def test_flow_changes_only_through_its_own_optimiser(monkeypatch):
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="dpfr", flow_warmup=1, threshold=1.2))  # keeps every pixel
    flow_ids = {id(p) for p in trainer.flow.parameters()}
    assert not flow_ids & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    trainer.step(*batches(0))  # fits the flow once; perturbation starts at t = 1
    snapshots = {}
    real_step = trainer.flow_optimizer.step

    def recording_step(*args, **kwargs):
        snapshots["grads"] = [None if p.grad is None else p.grad.clone() for p in trainer.flow.parameters()]
        snapshots["params"] = [p.detach().clone() for p in trainer.flow.parameters()]
        out = real_step(*args, **kwargs)
        snapshots["stepped"] = [p.detach().clone() for p in trainer.flow.parameters()]
        return out

    monkeypatch.setattr(trainer.flow_optimizer, "step", recording_step)
    calls = []
    real_perturb = trainer.perturbation.forward
    monkeypatch.setattr(trainer.perturbation, "forward", lambda f, *a, **k: calls.append(f.shape) or real_perturb(f))
    logs = trainer.step(*batches(1))
    assert calls and calls[0][0] == 2  # the perturbed branch ran, on the unlabelled images only
    assert float(logs["fdp"]) > 0
    changed = any(not torch.equal(a, b) for a, b in zip(snapshots["params"], snapshots["stepped"]))
    assert changed  # the flow's own step moved it
    for p, grad, stepped in zip(trainer.flow.parameters(), snapshots["grads"], snapshots["stepped"]):
        # the student's backward (after the flow's step) added nothing to the flow's gradients ...
        assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)
        # ... and nothing but the flow's optimiser changed its parameters
        assert torch.equal(p.detach(), stepped)


def test_one_teacher_pass_per_step_and_one_student_forward():
    # dpfr: one batched teacher pass over [labelled; weak unlabelled] (the flow needs the
    # teacher's labelled features); the student runs once on [labelled; strong unlabelled] and
    # decodes the unlabelled site maps a second time, perturbed, inside that one forward.
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="dpfr"))
    seen = []
    trainer.teacher.model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    student_io = []
    trainer.student.register_forward_hook(
        lambda module, inputs, output: student_io.append((inputs[0].shape[0], output.logits.shape[0]))
    )
    for step in range(3):
        trainer.step(*batches(step, n_l=2, n_u=3))
    assert seen == [5, 5, 5]
    # outputs: 5 clean rows, then 3 perturbed rows from t >= flow_warmup = 1
    assert student_io == [(5, 5), (5, 8), (5, 8)]
    # mean_teacher: the teacher sees the unlabelled batch only
    mt = T.Trainer(tiny_config(method="mean_teacher"))
    seen.clear()
    mt.teacher.model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    mt.step(*batches(0, n_l=2, n_u=3))
    assert seen == [3]


def test_perturbed_branch_changes_the_output_and_the_log_says_how_much():
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="dpfr", threshold=1.2))
    outputs = []
    trainer.student.register_forward_hook(lambda module, inputs, output: outputs.append(output.logits.detach()))
    trainer.step(*batches(0))
    logs = trainer.step(*batches(1))
    logits = outputs[-1]
    clean, perturbed = logits[2:4], logits[4:6]
    assert clean.shape == perturbed.shape
    assert not torch.allclose(clean, perturbed)  # the step reaches the decoded output
    assert {"fdp_gain", "flip"} <= set(logs)
    expected_flip = (clean.argmax(1) != perturbed.argmax(1)).float().mean()
    torch.testing.assert_close(logs["flip"], expected_flip)
    torch.testing.assert_close(logs["fdp_gain"], logs["fdp"] - logs["mt"])


def test_random_direction_control_steps_the_same_length_in_a_fresh_direction():
    # perturb_direction="random": FDP's control. Same per-pixel length as the density step
    # (xi * ||f||, relative), a direction unrelated to the density, a new draw every step, and
    # reproducible from the run's seed.
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="fdp", perturb_direction="random", xi=0.3, threshold=1.2))
    import densessl

    assert not isinstance(trainer.perturbation, densessl.DensityPerturbation)
    steps = []
    real = trainer.perturbation.forward

    def recording(f):
        out = real(f)  # drawn once: the step recorded is the step the training used
        steps.append((f.detach(), out.detach()))
        return out

    trainer.perturbation.forward = recording
    trainer.step(*batches(0))  # t = 0: flow warm-up, no perturbation yet
    logs = [trainer.step(*batches(1)), trainer.step(*batches(2))]
    assert len(steps) == 2
    for features, perturbed in steps:
        rho = perturbed - features
        torch.testing.assert_close(
            torch.linalg.vector_norm(rho, dim=1), 0.3 * torch.linalg.vector_norm(features, dim=1), rtol=1e-4, atol=1e-6
        )
    cosine = torch.nn.functional.cosine_similarity(steps[0][1] - steps[0][0], steps[1][1] - steps[1][0], dim=1)
    assert cosine.abs().mean() < 0.3  # independent directions (the features differ little between steps)
    assert all(float(row["flip"]) >= 0 and torch.isfinite(row["fdp"]) for row in logs)
    again = T.Trainer(tiny_config(method="fdp", perturb_direction="random", xi=0.3, threshold=1.2))
    again.perturbation.generator = again._generator(1, 5)
    torch.testing.assert_close(again.perturbation(steps[0][0]) - steps[0][0], steps[0][1] - steps[0][0])
    with pytest.raises(ValueError, match="perturb_direction"):
        tiny_config(perturb_direction="sideways")


def test_class_balanced_unlabelled_loss_weights_the_kept_labels_to_the_labelled_shares():
    from densessl.functional import balancing_weights

    results = {}
    for balance in (False, True):
        torch.manual_seed(0)
        trainer = T.Trainer(tiny_config(method="mean_teacher", unsup_class_balance=balance, threshold=0.5))
        seen = []
        import examples.dpfr_gland.step as S

        original = S.masked_cross_entropy
        S.masked_cross_entropy = lambda *a, seen=seen, original=original, **k: seen.append((a, k)) or original(*a, **k)
        try:
            logs = trainer.step(*batches(0))
        finally:
            S.masked_cross_entropy = original
        results[balance] = (logs, seen)
    plain, balanced = results[False][0], results[True][0]
    assert "weight_contour" not in plain and {"weight_background", "weight_interior", "weight_contour"} <= set(balanced)
    (_, k_sup), (args_mt, k_mt) = results[True][1][:2]
    assert k_sup.get("weight") is None  # the labelled loss is never reweighted
    y_u = args_mt[1]
    expected = balancing_weights(y_u, trainer.alignment.target, ignore_index=k_mt["ignore_index"])
    torch.testing.assert_close(k_mt["weight"], expected)
    used = y_u[y_u != k_mt["ignore_index"]]
    torch.testing.assert_close((expected[used]).float().mean(), torch.tensor(1.0))  # mean weight 1 over kept pixels


def test_fr_and_dpfr_contrast_the_clean_decoder_maps():
    for method in ("fr", "dpfr"):
        torch.manual_seed(0)
        trainer = T.Trainer(tiny_config(method=method))
        decoders, projected = [], []
        trainer.student.register_forward_hook(lambda m, i, out, d=decoders: d.append(out.decoder.detach()))
        trainer.projector.register_forward_hook(lambda m, i, out, p=projected: p.append(i[0].detach()))
        for step in range(2):
            trainer.step(*batches(step))
        torch.testing.assert_close(projected[-1], decoders[-1][:4])  # labelled + clean unlabelled rows


def test_cutmix_with_one_unlabelled_image_is_an_error():
    with pytest.raises(ValueError, match="cutmix.*batch_unlabelled >= 2"):
        tiny_config(method="mean_teacher", batch_unlabelled=1)
    tiny_config(method="mean_teacher", batch_unlabelled=1, cutmix=False)


def _majority(labels: np.ndarray, block: int, min_fraction: float = 0.0) -> np.ndarray:
    """Naive per-block majority vote (ties to the smaller class; a winner covering less than
    ``min_fraction`` of the block -> 255), the oracle of the flow's labels."""
    b, h, w = labels.shape
    out = np.zeros((b, h // block, w // block), dtype=np.int64)
    for i in range(b):
        for y in range(h // block):
            for x in range(w // block):
                cell = labels[i, y * block : (y + 1) * block, x * block : (x + 1) * block]
                counts = np.bincount(cell.ravel(), minlength=3)
                out[i, y, x] = counts.argmax() if counts.max() >= min_fraction * cell.size else 255
    return out


@pytest.mark.parametrize("site", ["classifier", "bottleneck"])
def test_flow_fits_teacher_features_labelled_by_class_unlabelled_by_mixture(monkeypatch, site):
    # The paper's objective: the teacher's features of labelled images under their true class,
    # of unlabelled images under the mixture (no pseudo labels), all detached.
    torch.manual_seed(0)
    trainer = T.Trainer(
        tiny_config(
            method="fdp", flow_noise=0.0, perturb_at=site, flow_pixels=10**6, flow_normalize=site == "classifier"
        )
    )
    teacher_features = []
    trainer.teacher.model.register_forward_hook(lambda m, i, out: teacher_features.append(out.features))
    seen = []
    real_nll = trainer.flow.nll
    monkeypatch.setattr(trainer.flow, "nll", lambda f, y, **k: seen.append((f, y)) or real_nll(f, y, **k))
    labelled, unlabelled = batches(0)
    trainer.step(labelled, unlabelled)
    ((features, labels),) = seen
    c = trainer.flow.channels
    expected = teacher_features[0].permute(0, 2, 3, 1).reshape(-1, c)  # [labelled; unlabelled] teacher rows
    if trainer.config.flow_normalize:  # the flow sees L2-normalised features (and so does the perturbation)
        expected = torch.nn.functional.normalize(expected, dim=1)
    assert not features.requires_grad  # detached
    torch.testing.assert_close(features.reshape(c, -1).t(), expected.detach())
    block = 32 if site == "bottleneck" else 1
    truth = _majority(labelled[1].numpy(), block, min_fraction=0.5).reshape(-1)
    flat = labels.reshape(-1)
    assert flat[: truth.size].tolist() == truth.tolist()
    assert bool((flat[truth.size :] == 255).all())  # unlabelled pixels: the mixture
    if site == "classifier":  # the full-resolution site keeps every class, contours included
        assert set(flat[: truth.size].tolist()) == {0, 1, 2}
    # at most flow_pixels pixels per step
    trainer.config.flow_pixels = 5
    seen.clear()
    trainer.step(*batches(1))
    assert seen[0][0].shape == (1, c, 1, 5) and seen[0][1].shape == (1, 1, 5)


class _ImageTeacher:
    """A stand-in teacher whose pseudo labels are a pixelwise function of its input image."""

    def __init__(self) -> None:
        self.model = torch.nn.Identity()

    @staticmethod
    def labels_of(images: torch.Tensor) -> torch.Tensor:
        return (images[:, 0] > 0).long() + (images[:, 1] > 0).long()

    def __call__(self, images: torch.Tensor) -> CENetOutput:
        logits = 30.0 * torch.nn.functional.one_hot(self.labels_of(images), 3).permute(0, 3, 1, 2).float()
        return CENetOutput(logits, images[:, :, ::32, ::32], images)

    def update(self, student: torch.nn.Module) -> None:
        pass


def test_cutmix_keeps_pseudo_labels_aligned_with_student_pixels(monkeypatch):
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="mean_teacher"))
    trainer.teacher = _ImageTeacher()
    from examples.dpfr_gland import augment

    monkeypatch.setattr(augment, "strong_from_weak", lambda images, generator: images.clone())
    boxes = []
    real_cutmix = augment.cutmix

    def recording_cutmix(*args, **kwargs):
        out = real_cutmix(*args, **kwargs)
        boxes.append(out[-1])
        return out

    monkeypatch.setattr(augment, "cutmix", recording_cutmix)
    inputs, targets = [], []
    trainer.student.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    from examples.dpfr_gland import step as S

    real_ce = S.masked_cross_entropy
    monkeypatch.setattr(
        S, "masked_cross_entropy", lambda logits, labels, **k: targets.append(labels) or real_ce(logits, labels, **k)
    )
    labelled, unlabelled = batches(0, n_l=2, n_u=4)
    trainer.step(labelled, unlabelled)
    student_unlabelled = inputs[0][2:6]
    used_labels = targets[1]  # sup, then the Mean Teacher CE on the unlabelled part
    assert boxes[0].any(dim=(1, 2)).all()  # every image got a pasted box
    assert not torch.equal(student_unlabelled, unlabelled)  # the student saw mixed images
    mismatched = int((used_labels != _ImageTeacher.labels_of(student_unlabelled)).sum())
    assert mismatched == 0  # labels aligned with the student's pixels everywhere


def test_contrast_is_positive_with_several_pseudo_classes():
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="fr"))
    trainer.teacher = _ImageTeacher()  # pseudo labels of all three classes
    logs = trainer.step(*batches(0))
    assert float(logs["contrast"]) > 0 and torch.isfinite(logs["loss"])
    trainer.teacher.labels_of = staticmethod(lambda images: torch.zeros_like(images[:, 0], dtype=torch.long))
    (x_l, y_l), x_u = batches(1)
    # Pseudo labels of one class: the labelled pixels' true classes still make a contrast.
    assert float(trainer.step((x_l, y_l), x_u)["contrast"]) > 0
    # Everything one class: a zero, not NaN.
    assert float(trainer.step((x_l, torch.zeros_like(y_l)), x_u)["contrast"]) == 0.0


def test_relative_step_scales_with_the_features():
    trainer = T.Trainer(tiny_config(method="fdp", xi=0.5, xi_relative=True, perturb_at="decoder"))
    features = 10.0 * torch.randn(2, trainer.flow.channels, 2, 2)
    step = trainer.perturbation(features) - features
    torch.testing.assert_close(step.norm(dim=1), 0.5 * features.norm(dim=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", T.METHODS)
def test_the_logged_total_is_the_papers_equation_of_the_logged_terms(method):
    """L = sup + w(t) (lambda_u mt + alpha_1 fdp + alpha_2 contrast), each term as logged, the absent
    ones zero; during the ramp (0 < w < 1) and with the perturbation on."""
    torch.manual_seed(0)
    config = tiny_config(
        method=method,
        supervised_warmup=0,
        rampup=4,
        flow_warmup=1,
        unsup_weight=0.7,
        alpha_perturbed=0.4,
        alpha_contrast=0.2,
    )
    trainer = T.Trainer(config)
    for t in range(3):
        labelled, unlabelled = batches(t)
        logs = trainer.step(labelled, None if method == "supervised" else unlabelled)
    terms = {k: float(logs.get(k, 0.0)) for k in ("sup", "mt", "fdp", "contrast")}
    w = float(logs["weight"])
    assert 0.0 < w < 1.0
    expected = terms["sup"] + w * (0.7 * terms["mt"] + 0.4 * terms["fdp"] + 0.2 * terms["contrast"])
    assert float(logs["loss"]) == pytest.approx(expected, rel=1e-6)
    assert ("fdp" in logs) == config.uses_flow and ("contrast" in logs) == config.uses_contrast
    if config.uses_flow:
        assert float(logs["fdp"]) > 0 and float(logs["flip"]) >= 0  # the perturbed branch ran


def test_semi_supervised_step_needs_unlabelled():
    trainer = T.Trainer(tiny_config(method="mean_teacher"))
    labelled, _ = batches(0)
    with pytest.raises(ValueError, match="unlabelled"):
        trainer.step(labelled, None)


def test_supervised_step_has_no_teacher_flow_or_head():
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="supervised"))
    assert trainer.teacher is None and trainer.flow is None and trainer.projector is None
    logs = trainer.step(batches(0)[0], None)
    assert set(logs) == {"loss", "sup", "weight"} and torch.isfinite(logs["loss"])


# ----------------------------------------------------------------------------- runs


def _finite_history(history):
    return all(np.isfinite(v) for row in history for v in row.values())


@pytest.mark.slow
@pytest.mark.parametrize("method", T.METHODS)
def test_every_method_runs_and_writes_files(method, tmp_path):
    pictures = 1 if method == "dpfr" else 0
    result = T.train(tiny_config(method=method, iterations=3, eval_pictures=pictures), tmp_path, progress=False)
    assert [row["iteration"] for row in result["history"]] == [0, 1, 2]
    assert _finite_history(result["history"])
    expected = {
        "supervised": set(),
        "mean_teacher": {"mt", "kept"},
        "fdp": {"mt", "kept", "fdp", "fdp_gain", "flip", "flow_nll_per_dim"},
        "fr": {"mt", "kept", "contrast"},
        "dpfr": {"mt", "kept", "fdp", "fdp_gain", "flip", "contrast", "flow_nll_per_dim"},
    }
    semi = (
        set()
        if method == "supervised"
        else {"skipped"}
        | {f"{kind}_{c}" for kind in ("kept", "share", "pseudo") for c in ("background", "interior", "contour")}
    )
    assert set(result["history"][-1]) == {"iteration", "loss", "sup", "weight"} | expected[method] | semi
    for name in ("checkpoint.pt", "model.pt", "metrics.json", "losses.png", "config.json", "log.jsonl"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["iterations"] == 3
    assert {"pooled_f1", "pooled_dice", "pooled_hausdorff", "pixel_dice"} <= set(metrics)
    assert ("teacher" in metrics) == (method != "supervised") and metrics["evaluated"] == "student"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3 and state["config"]["method"] == method
    assert len(list((tmp_path / "predictions").glob("*.png"))) == pictures
    assert ("flow" in state) == (method in ("fdp", "dpfr")) and ("projector" in state) == (method in ("fr", "dpfr"))


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, monkeypatch):
    torch.use_deterministic_algorithms(True)
    try:
        config = tiny_config(
            method="dpfr", iterations=4, flow_warmup=1, supervised_warmup=1, rampup=2, checkpoint_every=2
        )
        straight = T.train(config, tmp_path / "straight", progress=False)["history"]
        # the same run, killed after its checkpoint at iteration 2 (the poly learning rate
        # depends on the total, so the interrupted run must be the same config)
        real_step = T.Trainer.step

        def killed_at_2(self, *args):
            if self.iteration == 2:
                raise KeyboardInterrupt
            return real_step(self, *args)

        monkeypatch.setattr(T.Trainer, "step", killed_at_2)
        with pytest.raises(KeyboardInterrupt):
            T.train(config, tmp_path / "split", progress=False)
        monkeypatch.setattr(T.Trainer, "step", real_step)
        state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
        assert state["iteration"] == 2 and len(state["history"]) == 2
        resumed = T.train(config, tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pt", progress=False)[
            "history"
        ]
    finally:
        torch.use_deterministic_algorithms(False)
    assert [row["iteration"] for row in resumed] == [0, 1, 2, 3]
    assert resumed == straight  # the same losses, bit for bit, after the interruption
    final = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    reference = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    for part in ("student", "teacher", "flow", "projector"):
        for key, value in reference[part].items():
            assert torch.equal(final[part][key], value), (part, key)


@pytest.mark.slow
def test_resume_keeps_history_and_log_when_checkpoints_and_logs_interleave(tmp_path, monkeypatch):
    # checkpoint_every not a multiple of log_every: the checkpoint at 2 must hold rows 0 and 1,
    # and rows logged after it (row 2) must not appear twice in log.jsonl after the resume.
    config = tiny_config(
        method="supervised", iterations=4, log_every=3, checkpoint_every=2, synthetic_train=2, label_ratio="1/2"
    )
    straight = T.train(config, tmp_path / "straight", progress=False)["history"]
    real_step = T.Trainer.step

    def crash_at_3(self, *args, **kwargs):
        if self.iteration == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(T.Trainer, "step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        T.train(config, tmp_path / "split", progress=False)
    monkeypatch.setattr(T.Trainer, "step", real_step)
    assert [
        row["iteration"] for row in torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["history"]
    ] == [0, 1]
    resumed = T.train(config, tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pt", progress=False)
    assert resumed["history"] == straight and [row["iteration"] for row in straight] == [0, 1, 2, 3]
    logged = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert logged == straight


def test_resume_refuses_another_method(tmp_path):
    T.train(
        tiny_config(method="supervised", iterations=1, synthetic_train=2, label_ratio="1/2"), tmp_path, progress=False
    )
    with pytest.raises(ValueError, match="method='supervised'"):
        T.train(
            tiny_config(method="mean_teacher", iterations=2, synthetic_train=2, label_ratio="1/2"),
            tmp_path / "b",
            resume=tmp_path / "checkpoint.pt",
            progress=False,
        )


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    config = dict(
        TINY,
        method="dpfr",
        iterations=2,
        synthetic_train=4,
        label_ratio="1/2",
        batch_labelled=1,
        batch_unlabelled=2,
        device="cpu",
    )
    (tmp_path / "c.json").write_text(json.dumps(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "examples.dpfr_gland.train",
            "--config",
            str(tmp_path / "c.json"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert result.stdout.count("[train] it 2/2") == 1  # rank 0 alone logs
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1]  # written once, not once per rank
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pt", "config.json", "log.jsonl", "losses.png", "metrics.json", "model.pt"]
    )
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 2 and not any(k.startswith("module.") for k in state["student"])


def test_flow_gradient_is_clipped_to_the_configured_norm(monkeypatch):
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="fdp", flow_grad_clip=0.25))
    norms_after = []
    real_step = trainer.flow_optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad for p in trainer.flow.parameters() if p.grad is not None]
        norms_after.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer.flow_optimizer, "step", recording_step)
    trainer.step(*batches(0))
    assert norms_after and all(n <= 0.25 + 1e-5 for n in norms_after)


def test_flow_labelled_features_from_the_student_need_no_labelled_teacher_pass(monkeypatch):
    torch.manual_seed(0)
    trainer = T.Trainer(
        tiny_config(
            method="fdp", flow_labelled_source="student", flow_noise=0.0, flow_pixels=10**6, flow_normalize=False
        )
    )
    seen, student_features = [], []
    trainer.teacher.model.register_forward_hook(lambda m, i, out: seen.append(i[0].shape[0]))
    trainer.student.register_forward_hook(lambda m, i, out: student_features.append(out.features.detach()))
    fitted = []
    real_nll = trainer.flow.nll
    monkeypatch.setattr(trainer.flow, "nll", lambda f, y, **k: fitted.append(f) or real_nll(f, y, **k))
    trainer.step(*batches(0))
    assert seen == [2]  # the unlabelled batch only
    c = trainer.flow.channels
    rows = fitted[0].reshape(c, -1).t()
    torch.testing.assert_close(rows[: 2 * 64 * 64], student_features[0][:2].permute(0, 2, 3, 1).reshape(-1, c))


def test_per_class_keep_rates_add_up_to_the_kept_fraction():
    # oracle: the kept fraction is the share-weighted sum of the per-class keep rates
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="mean_teacher", threshold=0.9))
    for step in range(2):
        logs = trainer.step(*batches(step))
    names = ("background", "interior", "contour")
    shares = [float(logs[f"share_{n}"]) for n in names]
    rates = [float(logs[f"kept_{n}"]) for n in names]
    assert sum(shares) == pytest.approx(1.0)
    assert all(0.0 <= r <= 1.0 for r in rates)
    assert sum(s * r for s, r in zip(shares, rates)) == pytest.approx(float(logs["kept"]), abs=1e-6)


def test_poly_schedule_sets_the_optimiser_learning_rate_every_step():
    trainer = T.Trainer(tiny_config(method="supervised", iterations=4, lr=1e-2, lr_power=0.9))
    seen = []
    for step in range(4):
        trainer.step(*batches(step)[:1], None)
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([1e-2 * (1 - t / 4) ** 0.9 for t in range(4)])
    constant = T.Trainer(tiny_config(method="supervised", iterations=4, lr=1e-2, lr_schedule="constant"))
    constant.step(*batches(0)[:1], None)
    assert constant.optimizer.param_groups[0]["lr"] == 1e-2
    with pytest.raises(ValueError, match="lr_schedule"):
        tiny_config(lr_schedule="cosine")


_DDP_TEACHERS = r"""
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from examples.dpfr_gland import train as T

dist.init_process_group("gloo")
rank = dist.get_rank()
config = T.TrainConfig(method="dpfr", synthetic_size=80, crop_size=64, flow_hidden=16, flow_warmup=1,
                       supervised_warmup=0, rampup=0, projection_hidden=16, projection_dim=8, num_anchors=8,
                       num_negatives=16, device="cpu", iterations=6)


def batches(seed):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 3, (2, 64, 64), generator=g)),
            torch.randn(2, 3, 64, 64, generator=g))


def teacher_digest(trainer):
    return {k: v.double().sum().item() for k, v in trainer.teacher.state_dict().items()}  # weights and buffers


def same_on_every_rank(trainer, when):
    digests = [None, None]
    dist.all_gather_object(digests, teacher_digest(trainer))
    bad = [k for k in digests[0] if digests[0][k] != digests[1][k]]
    assert not bad, (when, bad[:5])
    return digests[0]


trainer = T.Trainer(config, "cpu", rank, 2)
for t in range(3):  # each rank its own batches: BatchNorm statistics differ per rank
    trainer.step(*batches(100 * rank + t))
same_on_every_rank(trainer, "after 3 steps")
state = [trainer.state_dict() if rank == 0 else None]
dist.broadcast_object_list(state, src=0)  # rank 0's checkpoint, as a resume reads it
resumed = T.Trainer(config, "cpu", rank, 2)
resumed.load_state_dict(state[0])
assert same_on_every_rank(resumed, "after loading") == same_on_every_rank(trainer, "before")
resumed.step(*batches(200 + rank))
same_on_every_rank(resumed, "after a resumed step")
unsynced = T.Trainer(config, "cpu", rank, 2)
unsynced.teacher.sync_buffers = False
for t in range(2):
    unsynced.step(*batches(300 * rank + t))
digests = [None, None]
dist.all_gather_object(digests, teacher_digest(unsynced))
assert digests[0] != digests[1], "without the broadcast the teachers' statistics differ (the test can fail)"
if rank == 0:
    print("TEACHERS EQUAL")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_teachers_have_equal_weights_and_buffers_on_every_rank(tmp_path):
    script = tmp_path / "teachers.py"
    script.write_text(_DDP_TEACHERS)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "TEACHERS EQUAL" in result.stdout


def test_the_teacher_skips_steps_that_grad_scaler_skipped():
    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="mean_teacher"))
    trainer.step(*batches(0))
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}

    class SkippingScaler:  # what GradScaler does on inf/NaN gradients: no step, then a lower scale
        def __init__(self):
            self.value = 1024.0

        def is_enabled(self):
            return True

        def get_scale(self):
            return self.value

        def scale(self, loss):
            return loss

        def step(self, optimizer):
            pass

        def update(self):
            self.value /= 2

    fake = SkippingScaler()
    trainer.scaler = fake
    logs = trainer.step(*batches(1))
    assert float(logs["skipped"]) == 1.0 and trainer.iteration == 2
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_cuda_n_under_torchrun_is_refused():
    from examples.dpfr_gland.loop import _resolve_device

    with pytest.raises(ValueError, match="each process takes cuda:LOCAL_RANK"):
        _resolve_device(tiny_config(device="cuda:1"), local_rank=0, world_size=2)
    assert _resolve_device(tiny_config(device="cpu"), local_rank=1, world_size=2) == torch.device("cpu")


def test_labelled_indices_and_a_minority_appearance():
    from examples.dpfr_gland.batches import build_datasets
    from examples.dpfr_gland.loop import labelled_split

    labelled, unlabelled = labelled_split(tiny_config(labelled="4,1"), 6)
    assert labelled.tolist() == [1, 4] and unlabelled.tolist() == [0, 2, 3, 5]
    with pytest.raises(ValueError, match="labelled lists image 9"):
        labelled_split(tiny_config(labelled="9"), 6)
    with pytest.raises(ValueError, match="labelled must list distinct"):
        tiny_config(labelled="1,1")
    with pytest.raises(ValueError, match="synthetic_mix"):
        tiny_config(synthetic_mix="hard")
    plain, _ = build_datasets(tiny_config(synthetic_train=40, synthetic_test=1))
    mixed, _ = build_datasets(tiny_config(synthetic_train=40, synthetic_test=1, synthetic_mix="hard:0.25"))
    assert 3 <= len(mixed.minority) <= 20  # about a quarter
    for i in range(40):  # the majority images are the plain ones, the minority ones differ
        same = np.array_equal(plain[i][0], mixed[i][0])
        assert same == (i not in mixed.minority)
        assert mixed.names[i].endswith("_minority") == (i in mixed.minority)


def test_contour_weight_weighs_the_contour_class_in_every_cross_entropy(monkeypatch):
    """sup and the unlabelled CEs are torch's class-weighted mean with weight [1, 1, w]; the
    semantic task, which has no contour class, refuses the option."""
    import torch.nn.functional as F

    from examples.dpfr_gland import step as S

    torch.manual_seed(0)
    trainer = T.Trainer(tiny_config(method="mean_teacher", contour_weight=3.0, supervised_warmup=0, rampup=0))
    calls = []
    real = S.masked_cross_entropy
    monkeypatch.setattr(
        S,
        "masked_cross_entropy",
        lambda logits, labels, **k: calls.append((logits, labels, k)) or real(logits, labels, **k),
    )
    logs = trainer.step(*batches(0))
    (s_l, y_l, k_sup), (_, _, k_mt) = calls[:2]
    expected = F.cross_entropy(s_l.float(), y_l, weight=torch.tensor([1.0, 1.0, 3.0]), ignore_index=255)
    assert float(logs["sup"]) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert k_mt["weight"].tolist() == [1.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="contour_weight applies to the instance task"):
        T.TrainConfig(task="semantic", contour_weight=2.0)
    with pytest.raises(ValueError, match="contour_weight must be"):
        T.TrainConfig(contour_weight=0.0)


def test_every_config_field_is_in_exactly_one_section_and_dotted_keys_name_their_section():
    import collections
    import dataclasses

    from examples.dpfr_gland.config import METHOD_SECTIONS, SECTIONS, fields_read

    names = [f.name for f in dataclasses.fields(T.TrainConfig)]
    listed = collections.Counter(n for fields in SECTIONS.values() for n in fields)
    assert set(listed) == set(names) and max(listed.values()) == 1
    assert set(METHOD_SECTIONS) == set(T.METHODS)
    # each method reads what it uses: the supervised step reads no teacher field, fr no flow field
    assert not fields_read("supervised") & set(SECTIONS["semi"]) and "xi" not in fields_read("fr")
    assert fields_read("dpfr") == frozenset(names)
    assert T.apply_overrides(T.TrainConfig(), ["fdp.xi=0.5", "fr.num_anchors=8"]).num_anchors == 8
    with pytest.raises(ValueError, match="'xi' is not in section 'fr'"):
        T.apply_overrides(T.TrainConfig(), ["fr.xi=0.5"])
    with pytest.raises(ValueError, match="unknown config section 'flow'"):
        T.apply_overrides(T.TrainConfig(), ["flow.xi=0.5"])


def test_the_choice_fields_declare_their_choices_and_they_match_the_code_that_reads_them():
    import typing

    from examples.dpfr_gland import config as C
    from examples.dpfr_gland.model import BACKBONES
    from examples.dpfr_gland.pseudo import RULES
    from examples.dpfr_gland.tasks import TASKS

    assert typing.get_args(C.TaskName) == tuple(TASKS) and typing.get_args(C.PseudoLabels) == RULES
    assert set(typing.get_args(C.Backbone)) <= set(BACKBONES)
    with pytest.raises(ValueError, match="pseudo_labels must be one of 'entropy', 'instance'"):
        T.TrainConfig(pseudo_labels="hard")
    with pytest.raises(TypeError, match="method must be a str"):
        T.TrainConfig(method=3)


def test_every_numeric_field_declares_its_bounds_and_they_are_enforced():
    import dataclasses
    import typing

    from examples.dpfr_gland import config as C

    hints = typing.get_type_hints(T.TrainConfig, include_extras=True)
    unbounded = {"synthetic_size", "flow_warmup"}  # checked against other fields in __post_init__
    checked = 0
    for f in dataclasses.fields(T.TrainConfig):
        kind = hints[f.name]
        base = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
        if base not in (int, float) or f.name in unbounded:
            continue
        bounds = [m for m in getattr(kind, "__metadata__", ()) if isinstance(m, C.Bounds)]
        assert len(bounds) == 1, f"{f.name} declares no bounds"
        (b,) = bounds
        assert b.low is not None
        below = b.low if b.open_low else b.low - 1
        with pytest.raises(ValueError, match=rf"^{f.name} must be "):
            T.TrainConfig(**{f.name: base(below)})
        if b.high is not None:
            with pytest.raises(ValueError, match=rf"^{f.name} must be in "):
                T.TrainConfig(**{f.name: base(b.high if b.open_high else b.high + 1)})
        if base is float:
            with pytest.raises(ValueError, match=rf"^{f.name} must be "):
                T.TrainConfig(**{f.name: float("nan")})
        checked += 1
    assert checked >= 40
    with pytest.raises(ValueError, match="eval_tile must be a positive multiple of 32, got 48"):
        T.TrainConfig(eval_tile=48)
    assert T.TrainConfig(ema_decay=1.0, alignment_momentum=0.0, min_class_keep=0.0).ema_decay == 1.0


def test_every_stored_result_row_and_shipped_config_still_loads():
    """The rows the studies committed carry flat config dicts from older versions of the config:
    each must load (unknown keys would be an error; bounds must hold for every stored value)."""
    import json
    from pathlib import Path

    from examples.dpfr_gland.config import config_from_dict

    rows = sorted((Path(__file__).parents[1] / "benchmarks" / "results").rglob("*.json"))
    loaded = 0
    for path in rows:
        row = json.loads(path.read_text())
        if isinstance(row, dict) and isinstance(row.get("config"), dict) and "method" in row["config"]:
            config_from_dict(row["config"])
            loaded += 1
    assert loaded >= 100


@pytest.mark.slow
def test_scores_during_training_change_nothing_else_and_survive_a_resume(tmp_path, monkeypatch):
    # eval_every=2 of 5 iterations: points at 2 and 4 and the final one at 5, for the student
    # and the teacher; the run's losses and weights equal those of the same run without them.
    config = tiny_config(method="mean_teacher", iterations=5, checkpoint_every=3)
    plain = T.train(config, tmp_path / "plain", progress=False)
    scored = T.train(
        tiny_config(method="mean_teacher", iterations=5, checkpoint_every=3, eval_every=2),
        tmp_path / "scored",
        progress=False,
    )
    assert scored["history"] == plain["history"]
    a = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "scored" / "checkpoint.pt", weights_only=True)
    for part in ("student", "teacher"):  # evaluation in between moved no weight and no buffer
        assert all(torch.equal(a[part][k], v) for k, v in b[part].items()), part
    curve = scored["metrics"]["curve"]
    assert [(row["iteration"], row["weights"]) for row in curve] == [
        (t, w) for t in (2, 4, 5) for w in ("student", "teacher")
    ]
    assert all(row["split"] == "test" and 0.0 <= row["pooled_f1"] <= 1.0 for row in curve)
    assert curve[-2]["pooled_f1"] == scored["metrics"]["pooled_f1"]  # the final point is the headline
    assert curve[-1]["pooled_f1"] == scored["metrics"]["teacher"]["pooled_f1"]
    logged = [json.loads(line) for line in (tmp_path / "scored" / "curve.jsonl").read_text().splitlines()]
    assert logged == curve and "curve" not in plain["metrics"]

    # killed after the checkpoint at 3: the resumed run keeps the point at 2 and adds 4 and 5
    real_step = T.Trainer.step

    def killed_at_4(self, *args):
        if self.iteration == 4:
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(T.Trainer, "step", killed_at_4)
    split = tiny_config(method="mean_teacher", iterations=5, checkpoint_every=3, eval_every=2)
    with pytest.raises(KeyboardInterrupt):
        T.train(split, tmp_path / "split", progress=False)
    monkeypatch.setattr(T.Trainer, "step", real_step)
    resumed = T.train(split, tmp_path / "split", resume=tmp_path / "split" / "checkpoint.pt", progress=False)
    assert [(row["iteration"], row["weights"]) for row in resumed["metrics"]["curve"]] == [
        (t, w) for t in (2, 4, 5) for w in ("student", "teacher")
    ]
