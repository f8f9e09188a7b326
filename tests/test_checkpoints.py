"""Module state survives a torch.save / torch.load(weights_only=True) round trip."""

from __future__ import annotations

import torch
from torch import nn

import densessl


def _round_trip(module: nn.Module, fresh: nn.Module, path) -> nn.Module:
    torch.save(module.state_dict(), path)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    return fresh


def test_flow_density_head_round_trip_keeps_actnorm_init(tmp_path):
    torch.manual_seed(0)
    head = densessl.FlowDensityHead(channels=6, num_classes=3, depth=2, hidden=16)
    x = 5.0 + 3.0 * torch.randn(2, 6, 4, 4)
    head.train()
    head.nll(x)  # data-dependent ActNorm init happens here
    head.eval()
    expected = head.log_prob(x)
    torch.manual_seed(1)
    fresh = densessl.FlowDensityHead(channels=6, num_classes=3, depth=2, hidden=16)
    loaded = _round_trip(head, fresh, tmp_path / "head.pt")
    loaded.train()  # a loaded head must not re-initialise ActNorm on other data
    loaded.log_prob(torch.randn(2, 6, 4, 4))
    loaded.eval()
    torch.testing.assert_close(loaded.log_prob(x), expected, rtol=0, atol=0)


def test_ema_teacher_round_trip_keeps_weights_buffers_and_step(tmp_path):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    teacher = densessl.EMATeacher(student, decay=0.9, buffers="ema")
    for _ in range(3):
        student(torch.randn(2, 3, 8, 8))  # moves BatchNorm statistics
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.1)
        teacher.update(student)
    fresh = densessl.EMATeacher(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), decay=0.9, buffers="ema")
    loaded = _round_trip(teacher, fresh, tmp_path / "teacher.pt")
    assert int(loaded.num_updates) == 3
    for (name, a), (_, b) in zip(teacher.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_projection_head_round_trip(tmp_path):
    torch.manual_seed(0)
    head = densessl.ProjectionHead(8, hidden_channels=16, out_channels=4)
    head(torch.randn(2, 8, 3, 3))
    head.eval()
    x = torch.randn(1, 8, 3, 3)
    loaded = _round_trip(head, densessl.ProjectionHead(8, hidden_channels=16, out_channels=4), tmp_path / "p.pt")
    loaded.eval()
    assert torch.equal(loaded(x), head(x))


def test_load_run_rebuilds_student_teacher_and_flow_of_a_resume_checkpoint_and_of_the_export(tmp_path):
    """One loader for both files a run writes: the networks equal the trainer's, the flow scores
    features as the trainer's flow does, and asking a file for what it lacks is a named error."""
    import dataclasses

    import pytest

    from examples.dpfr_gland.checkpoint import atomic_save, inference_export, load_run
    from examples.dpfr_gland.config import TrainConfig
    from examples.dpfr_gland.step import Trainer

    torch.manual_seed(0)
    config = TrainConfig(
        method="dpfr",
        crop_size=32,
        batch_labelled=2,
        batch_unlabelled=2,
        supervised_warmup=0,
        rampup=0,
        flow_warmup=1,
        num_anchors=8,
        num_negatives=16,
        perturb_at="decoder",
    )
    trainer = Trainer(config)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.step(
            (torch.rand(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2, 32, 32), generator=g)),
            torch.rand(2, 3, 32, 32, generator=g),
        )
    atomic_save({**trainer.state_dict(), "config": dataclasses.asdict(config)}, tmp_path / "checkpoint.pt")
    run = load_run(tmp_path / "checkpoint.pt", networks=("student", "teacher", "flow"))
    assert run.config == config and not run.student.training and not run.flow.training
    for mine, theirs in ((run.student, trainer.student), (run.teacher, trainer.teacher.model)):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    features = torch.randn(1, trainer.flow.channels, 4, 4)
    trainer.flow.eval()
    torch.testing.assert_close(run.flow.log_prob(features), trainer.flow.log_prob(features))
    atomic_save(inference_export(trainer.student.state_dict(), dataclasses.asdict(config)), tmp_path / "model.pt")
    export = load_run(tmp_path / "model.pt")
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(export.student(x).logits, run.student(x).logits, atol=2e-2, rtol=0)  # float16 copy
    with pytest.raises(ValueError, match="inference export of the student only"):
        load_run(tmp_path / "model.pt", networks=("teacher",))
    with pytest.raises(ValueError, match="holds no flow"):
        load_run(tmp_path / "model.pt", networks=("flow",))
    with pytest.raises(ValueError, match="networks must be"):
        load_run(tmp_path / "checkpoint.pt", networks=("ema",))
