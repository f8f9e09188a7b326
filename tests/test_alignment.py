"""Distribution alignment (densessl.DistributionAlignment, functional.align_distribution) and the
per-class minimum keep of EntropyPseudoLabeler. Oracles: float64 NumPy re-computation of
p * t / s renormalised, hand-computed running means, per-class counting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import densessl
from densessl.functional import align_distribution


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_aligned_softmax_is_p_times_target_over_source_renormalised(k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 3, 4, generator=g, dtype=torch.float64) * 3
    source = torch.rand(k, generator=g, dtype=torch.float64) + 0.01
    target = torch.rand(k, generator=g, dtype=torch.float64)
    got = align_distribution(logits, source, target, eps=1e-6).softmax(1).numpy()
    p = np.exp(logits.numpy() - logits.numpy().max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = p * ((target.numpy() + 1e-6) / (source.numpy() + 1e-6))[None, :, None, None]
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_equal_source_and_target_change_nothing_and_gradients_flow():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    dist = torch.tensor([0.2, 0.3, 0.5])
    out = align_distribution(logits, dist, dist)
    torch.testing.assert_close(out, logits)
    out.sum().backward()
    assert logits.grad is not None


@pytest.mark.parametrize(
    "source,target,pattern",
    [
        (torch.ones(2), torch.ones(3) / 3, "source must have K=3"),
        (torch.ones(3), torch.tensor([0.5, 0.6, -0.1]), "target must be >= 0"),
        (torch.tensor([1.0, float("nan"), 0.0]), torch.ones(3), "source must be finite"),
        (torch.ones(1, 3), torch.ones(3), r"source must be a 1-D tensor \[K\]"),
    ],
)
def test_align_distribution_names_the_bad_argument(source, target, pattern):
    with pytest.raises(ValueError, match=pattern):
        align_distribution(torch.zeros(1, 3, 2, 2), source, target)


def test_running_means_follow_the_momentum_and_only_train_mode_updates_the_source():
    align = densessl.DistributionAlignment(num_classes=2, momentum=0.5)
    align.observe_labels(torch.tensor([[[0, 0, 0, 1]]]))  # first batch: replaces the uniform start
    torch.testing.assert_close(align.target, torch.tensor([0.75, 0.25]))
    align.observe_labels(torch.tensor([[[1, 1, 255, 255]]]))  # ignored pixels skipped: [0, 1]
    torch.testing.assert_close(align.target, torch.tensor([0.375, 0.625]))
    align.observe_labels(torch.full((1, 2, 2), 255))  # nothing labelled: unchanged
    torch.testing.assert_close(align.target, torch.tensor([0.375, 0.625]))
    p0 = torch.tensor([0.9, 0.1])
    align(torch.log(p0).view(1, 2, 1, 1))
    torch.testing.assert_close(align.source, p0)
    align(torch.log(torch.tensor([0.5, 0.5])).view(1, 2, 1, 1))
    torch.testing.assert_close(align.source, torch.tensor([0.7, 0.3]))
    align.eval()
    out = align(torch.log(torch.tensor([0.1, 0.9])).view(1, 2, 1, 1))
    torch.testing.assert_close(align.source, torch.tensor([0.7, 0.3]))  # eval: applied, not updated
    expected = torch.tensor([0.1 * 0.375 / 0.7, 0.9 * 0.625 / 0.3])
    torch.testing.assert_close(out.softmax(1).flatten(), expected / expected.sum(), rtol=1e-4, atol=1e-6)


def test_alignment_state_round_trips_and_refuses_bad_arguments():
    align = densessl.DistributionAlignment(3)
    align.observe_labels(torch.tensor([[[0, 1, 2, 2]]]))
    align(torch.randn(1, 3, 2, 2))
    copy = densessl.DistributionAlignment(3)
    copy.load_state_dict(align.state_dict())
    for name in ("source", "target", "initialized"):
        torch.testing.assert_close(getattr(copy, name), getattr(align, name))
    with pytest.raises(ValueError, match="logits must have 3 classes"):
        align(torch.randn(1, 2, 2, 2))
    with pytest.raises(ValueError, match="momentum"):
        densessl.DistributionAlignment(3, momentum=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        densessl.DistributionAlignment(1)
    with pytest.raises(ValueError, match="labels must hold class indices"):
        align.observe_labels(torch.tensor([[[0, 7]]]))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 1.0), st.floats(0.05, 1.2), st.booleans())
def test_min_class_keep_keeps_at_least_that_share_of_every_predicted_class(seed, q, threshold, use_mask):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, 6, generator=g)
    mask = torch.rand(2, 5, 6, generator=g) > 0.3 if use_mask else None
    plain = densessl.EntropyPseudoLabeler(threshold)(logits, mask=mask)
    out = densessl.EntropyPseudoLabeler(threshold, min_class_keep=q)(logits, mask=mask)
    allowed = mask if mask is not None else torch.ones(2, 5, 6, dtype=torch.bool)
    argmax = logits.argmax(1)
    assert bool((out.mask >= plain.mask).all())  # only adds to what the threshold keeps
    assert not bool((out.mask & ~allowed).any())  # never keeps a masked-out pixel
    for c in range(3):
        n = int((allowed & (argmax == c)).sum())
        kept = int((out.mask & (argmax == c)).sum())
        assert kept >= math.ceil(q * n)
        if n:  # the kept pixels of a class are its surest ones
            ent = out.entropy[allowed & (argmax == c)]
            kept_ent = out.entropy[out.mask & (argmax == c)]
            dropped_ent = ent[~out.mask[allowed & (argmax == c)]]
            if dropped_ent.numel():
                assert float(kept_ent.max()) <= float(dropped_ent.min())
    assert torch.equal(out.labels[out.mask], argmax[out.mask])


def test_min_class_keep_zero_and_one():
    logits = torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(
        densessl.EntropyPseudoLabeler(0.3, min_class_keep=0.0)(logits).mask,
        densessl.EntropyPseudoLabeler(0.3)(logits).mask,
    )
    assert bool(densessl.EntropyPseudoLabeler(0.3, min_class_keep=1.0)(logits).mask.all())
    with pytest.raises(ValueError, match="min_class_keep"):
        densessl.EntropyPseudoLabeler(0.3, min_class_keep=1.5)


# ----------------------------------------------------------------------------- balancing weights


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.integers(0, 10_000))
def test_balancing_weights_give_each_class_its_target_share_of_the_loss(k, seed):
    from densessl.functional import balancing_weights

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (2, 6, 7), generator=g)
    labels[torch.rand(2, 6, 7, generator=g) < 0.3] = 255
    target = torch.rand(k, generator=g, dtype=torch.float64) + 0.05
    w = balancing_weights(labels, target, max_weight=1e9).double()
    used = labels[labels != 255]
    counts = np.bincount(used.numpy(), minlength=k).astype(np.float64)
    present = counts > 0
    mass = w.numpy() * counts  # each class's total weight in a weighted-mean loss
    assert math.isclose(mass.sum() / counts.sum(), 1.0, rel_tol=1e-5)  # the mean weight is 1
    goal = target.numpy() * present / (target.numpy() * present).sum()  # absent classes cannot carry weight
    np.testing.assert_allclose(mass / mass.sum(), goal, rtol=1e-4, atol=1e-6)
    assert (w.numpy()[~present] == 0).all()


def test_balancing_weights_hand_cases_clipping_and_bad_inputs():
    from densessl.functional import balancing_weights

    labels = torch.tensor([[[0] * 98 + [1, 2]]])  # class 1 and 2: one pixel each
    raw = balancing_weights(labels, torch.tensor([1 / 3, 1 / 3, 1 / 3]), max_weight=5.0)
    # before the rescaling: w0 = (1/3)/0.98, w1 = w2 = min((1/3)/0.01, 5) = 5
    w0, w1 = (1 / 3) / 0.98, 5.0
    mean = w0 * 0.98 + 2 * w1 * 0.01
    torch.testing.assert_close(raw, torch.tensor([w0, w1, w1]) / mean)
    assert balancing_weights(torch.full((1, 2, 2), 255), torch.tensor([0.5, 0.5])).tolist() == [0.0, 0.0]
    # every used pixel's class has target 0: nothing to balance towards, all zeros ("no weighting")
    assert balancing_weights(torch.tensor([[[0, 0]]]), torch.tensor([0.0, 1.0])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="labels"):
        balancing_weights(torch.tensor([[[0, 3]]]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="target must be >= 0"):
        balancing_weights(torch.tensor([[[0, 1]]]), torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="max_weight"):
        balancing_weights(torch.tensor([[[0, 1]]]), torch.tensor([0.5, 0.5]), max_weight=0)
