"""The recipe's pseudo-label rules (examples/dpfr_gland/pseudo.py) and per-pixel loss weights.

Oracles: hand-made teacher maps (two touching glands whose seam the teacher is unsure of),
hand-counted quotas, ``F.cross_entropy(reduction="none")`` for the weighted loss and, with probability
targets, for ``distill``'s soft cross-entropy; autograd for its gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from densessl.functional import masked_cross_entropy
from examples.dpfr_gland.pseudo import PseudoLabelRule, class_share_pseudo_labels, soft_cross_entropy
from examples.dpfr_gland.targets import BACKGROUND, CONTOUR, INTERIOR, instance_pseudo_labels


def _touching_glands() -> torch.Tensor:
    """Teacher probabilities: two glands side by side (columns 4..13 and 14..23 of rows 4..15);
    sure of their interiors, unsure of their edges and of the seam (contour 0.5, interior 0.4)."""
    probs = torch.zeros(1, 3, 20, 28)
    probs[0, BACKGROUND] = 0.97
    probs[0, INTERIOR] = 0.02
    probs[0, CONTOUR] = 0.01
    for left in (4, 14):
        probs[0, :, 4:16, left : left + 10] = torch.tensor([0.1, 0.4, 0.5])[:, None, None]  # the unsure edge
        probs[0, :, 6:14, left + 2 : left + 8] = torch.tensor([0.01, 0.97, 0.02])[:, None, None]  # sure interior
    return probs


def test_instance_labels_give_every_gland_its_contour_where_the_entropy_filter_drops_it():
    probs = _touching_glands()
    entropy = PseudoLabelRule("entropy", threshold=0.5, min_class_keep=0.0)(probs.log())
    assert int((entropy.labels == CONTOUR).sum()) == 0  # the seam and the edges: never sure enough
    labels, mask = instance_pseudo_labels(probs, threshold=0.5, min_size=4, contour_width=2)
    # the two glands stay two: a contour band separates them along the seam (columns 12..15)
    seam = labels[0, 8:12, 12:16]
    assert bool((seam == CONTOUR).any(dim=1).all())
    contour_share = float((labels == CONTOUR).sum() / mask.sum())
    assert contour_share > 0.2
    assert bool((labels[mask] != 255).all()) and bool((labels[~mask] == 255).all())
    from scipy import ndimage

    assert ndimage.label((labels[0] == INTERIOR).numpy())[1] == 2  # two glands, not one merged
    # the sure background far away is kept as background
    assert labels[0, 0, 0] == BACKGROUND and mask[0, 0, 0]


def test_instance_labels_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"probs must be \[B, 3, H, W\].*got shape \(3, 4, 4\)"):
        instance_pseudo_labels(torch.rand(3, 4, 4))


def test_class_share_quotas_follow_the_target_shares_surest_first():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10, 10) * 3
    probs = logits.softmax(1)
    shares = torch.tensor([0.5, 0.3, 0.2])
    labels, mask = class_share_pseudo_labels(probs, shares, keep=0.3)
    conf, arg = probs.max(1)
    total = 0.3 * arg.numel()
    for c in range(3):
        quota = min(round(total * float(shares[c])), int((arg == c).sum()))
        kept = mask & (arg == c)
        assert int(kept.sum()) == quota
        if quota and int((arg == c).sum()) > quota:  # the kept ones are the surest of the class
            assert float(conf[kept].min()) >= float(conf[(arg == c) & ~mask].max())
    assert bool((labels[mask] == arg[mask]).all()) and bool((labels[~mask] == 255).all())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), scale=st.floats(0.1, 5.0))
def test_soft_weights_are_one_above_the_mean_and_fall_with_confidence_below(seed, scale):
    rule = PseudoLabelRule("soft").eval()  # eval: the running mean and variance stay put
    logits = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed)) * scale
    pseudo = rule(logits)
    conf = logits.softmax(1).max(1).values
    assert bool(pseudo.mask.all()) and bool((pseudo.labels == logits.argmax(1)).all())
    w = pseudo.weight
    assert bool(((w > 0) & (w <= 1)).all())
    assert bool((w[conf >= rule.mean] == 1).all())
    order = conf.flatten().argsort()
    assert bool((w.flatten()[order].diff() >= -1e-6).all())  # monotone in confidence


def test_soft_running_statistics_follow_the_batches_in_training_and_round_trip():
    rule = PseudoLabelRule("soft", momentum=0.5)
    confident = torch.zeros(2, 3, 4, 4)
    confident[:, 0] = 10.0
    rule(confident)
    assert float(rule.mean) == pytest.approx(0.5 * (1 / 3) + 0.5 * float(confident.softmax(1).max(1).values.mean()))
    copy = PseudoLabelRule("soft")
    copy.load_state_dict(rule.state_dict())
    assert float(copy.mean) == float(rule.mean) and float(copy.var) == float(rule.var)
    with pytest.raises(ValueError, match="rule must be one of"):
        PseudoLabelRule("flexmatch")


def test_pixel_weights_scale_each_pixels_loss_and_keep_the_mean_over_used_pixels():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0, 0] = 255
    weight = torch.rand(2, 4, 5)
    per_pixel = F.cross_entropy(logits, labels.clamp(max=2), reduction="none")
    used = labels != 255
    expected = (per_pixel * weight * used).sum() / used.sum()
    got = masked_cross_entropy(logits, labels, pixel_weight=weight)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(
        masked_cross_entropy(logits, labels, pixel_weight=torch.ones(2, 4, 5)), masked_cross_entropy(logits, labels)
    )
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(
        ValueError, match=r"pixel_weight must have the labels' shape \(2, 4, 5\), got shape \(2, 4, 6\)"
    ):
        masked_cross_entropy(logits, labels, pixel_weight=torch.ones(2, 4, 6))
    with pytest.raises(ValueError, match=r"pixel_weight must lie in \[0, 1\]"):
        masked_cross_entropy(logits, labels, pixel_weight=torch.full((2, 4, 5), 1.5))


@pytest.mark.parametrize("rule", ["instance", "class_share", "soft", "distill"])
def test_every_rule_trains_a_step_and_its_state_resumes(rule):
    from examples.dpfr_gland.config import TrainConfig
    from examples.dpfr_gland.step import Trainer

    config = TrainConfig(
        method="mean_teacher",
        pseudo_labels=rule,
        crop_size=32,
        supervised_warmup=0,
        rampup=0,
        iterations=2,
        amp=False,
        device="cpu",
    )
    trainer = Trainer(config, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 3, (2, 32, 32))
    logs = trainer.step((x, y), torch.randn(2, 3, 32, 32))
    assert all(torch.isfinite(v).all() for v in logs.values())
    assert {"pseudo_background", "pseudo_interior", "pseudo_contour"} <= set(logs)
    state = trainer.state_dict()
    assert "pseudo_rule" in state
    again = Trainer(config, torch.device("cpu"))
    again.load_state_dict(state)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.pseudo_labeler.state_dict().values(), trainer.pseudo_labeler.state_dict().values())
    )


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), weighted=st.booleans())
def test_soft_cross_entropy_is_torchs_probability_target_loss_and_pulls_toward_the_target(seed, weighted):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).softmax(1)
    weight = torch.rand(3, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    got = soft_cross_entropy(logits.float(), target.float(), None if weight is None else weight.float())
    expected = F.cross_entropy(logits, target, weight=weight, reduction="none").mean()  # torch's own rule
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    if weight is None:  # the gradient is softmax - target per pixel, over the number of pixels
        (grad,) = torch.autograd.grad(soft_cross_entropy(logits, target), logits)
        torch.testing.assert_close(grad, (logits.softmax(1) - target) / (2 * 4 * 5))


def test_distill_teaches_the_seam_contour_the_hard_rules_delete():
    probs = _touching_glands()
    edge = probs[0, CONTOUR] == 0.5
    probs[0, :, edge] = torch.tensor([0.1, 0.6, 0.3])[:, None]  # the edges and the seam: interior 0.6, contour 0.3
    logits = probs.log()
    pseudo = PseudoLabelRule("distill")(logits)
    torch.testing.assert_close(pseudo.target, probs)
    hard = PseudoLabelRule("entropy")(logits)
    assert torch.equal(pseudo.labels, hard.labels) and torch.equal(pseudo.mask, hard.mask)
    assert not bool((hard.labels[0][edge] == CONTOUR).any())  # the hard rule teaches the edge as interior
    # a student that predicts almost no contour: the soft target raises the contour on every edge
    # pixel; the entropy rule keeps no edge pixel (its surest 20 % of interior are the sure cores),
    # so its loss teaches the edge nothing
    student = torch.tensor([0.1, 0.9, 1e-3]).log().view(1, 3, 1, 1).expand_as(probs).clone().requires_grad_(True)
    (soft,) = torch.autograd.grad(soft_cross_entropy(student, pseudo.target), student)
    (hard_grad,) = torch.autograd.grad(masked_cross_entropy(student, hard.labels), student)
    assert bool((soft[0, CONTOUR][edge] < 0).all())
    assert not bool(hard.mask[0][edge].any()) and bool((hard_grad[0, :, edge] == 0).all())
    with pytest.raises(ValueError, match=r"logits and target must both be \[B, K, H, W\], got \(1, 3, 20, 28\)"):
        soft_cross_entropy(student, probs[:, :2])
    with pytest.raises(ValueError, match=r"weight must be \[K=3\]"):
        soft_cross_entropy(student, probs, torch.ones(2))
