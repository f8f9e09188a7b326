"""EntropyPseudoLabeler / functional.entropy against a float64 numpy oracle and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from densessl import EntropyPseudoLabeler, PseudoLabels
from densessl.functional import entropy, masked_cross_entropy


def numpy_entropy(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Float64 oracle: softmax by the max-shift trick, then -sum p log p (0 log 0 := 0)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


# ----------------------------------------------------------------------------- entropy


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2),
    k=st.integers(2, 6),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    scale=st.sampled_from([0.1, 1.0, 10.0, 200.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_entropy_matches_numpy_float64(b, k, h, w, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * scale
    ref = numpy_entropy(logits.double().numpy())
    out = entropy(logits)
    assert out.dtype == torch.float32 and out.shape == (b, h, w)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy(logits, normalized=True).numpy(), ref / math.log(k), rtol=1e-5, atol=1e-6)


def test_entropy_hand_cases_and_dims():
    # uniform over K: log K; one-hot-ish (saturated softmax): exactly 0, never NaN
    assert entropy(torch.zeros(1, 4, 1, 1)).item() == pytest.approx(math.log(4), rel=1e-6)
    saturated = torch.tensor([[[[1e4]], [[0.0]], [[-1e4]]]])
    assert entropy(saturated).item() == 0.0
    # two classes with p = (0.25, 0.75): -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335...
    two = torch.tensor([[0.0, math.log(3.0)]])
    assert entropy(two, dim=-1).item() == pytest.approx(0.5623351446, rel=1e-6)
    assert entropy(two, dim=1).item() == pytest.approx(0.5623351446, rel=1e-6)


def test_entropy_half_precision_and_autocast_run_in_float32():
    logits = torch.randn(2, 3, 4, 4)
    ref = numpy_entropy(logits.bfloat16().double().numpy())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = entropy(logits.bfloat16())
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert entropy(logits.double()).dtype == torch.float64


def test_entropy_bad_inputs():
    with pytest.raises(TypeError, match="logits"):
        entropy(torch.zeros(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="logits"):
        entropy(np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="dim"):
        entropy(torch.zeros(1, 3, 2, 2), dim=4)
    with pytest.raises(ValueError, match="logits"):
        entropy(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="logits"):
        entropy(torch.zeros(1, 1, 2, 2), normalized=True)


# ----------------------------------------------------------------------------- labeler


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 5),
    threshold=st.floats(0.05, 1.6),
    scale=st.sampled_from([0.5, 2.0, 8.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_labeler_matches_numpy(k, threshold, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 5, 3, generator=g) * scale
    out = EntropyPseudoLabeler(threshold=threshold)(logits)
    z = logits.double().numpy()
    ent = numpy_entropy(z)
    keep = ent < threshold
    near = np.abs(ent - threshold) < 1e-5  # float32 rounding may flip pixels right at the threshold
    expected = np.where(keep, z.argmax(axis=1), 255)
    assert isinstance(out, PseudoLabels)
    assert out.labels.dtype == torch.int64 and out.mask.dtype == torch.bool and out.entropy.dtype == torch.float32
    np.testing.assert_array_equal(out.mask.numpy()[~near], keep[~near])
    np.testing.assert_array_equal(out.labels.numpy()[~near], expected[~near])
    np.testing.assert_allclose(out.entropy.numpy(), ent, rtol=1e-5, atol=1e-6)
    assert float(out.kept_fraction) == pytest.approx(keep.mean(), abs=near.mean() + 1e-7)


def test_kept_fraction_hand_case():
    # 8 pixels, 3 classes: 3 saturated (entropy ~0, kept), 5 uniform (entropy ln 3 > 0.5,
    # dropped), so 3 / 8 are kept whatever the code's own formula for the fraction is.
    logits = torch.zeros(1, 3, 2, 4)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 2, 1, 3] = 30.0
    out = EntropyPseudoLabeler(threshold=0.5)(logits)
    assert float(out.kept_fraction) == 0.375
    assert out.labels.tolist() == [[[0, 1, 255, 255], [255, 255, 255, 2]]]
    with pytest.raises(TypeError):
        EntropyPseudoLabeler(threshold=0.5)(logits, torch.ones(1, 2, 4, dtype=torch.bool))


def test_threshold_boundary_equal_entropy_is_dropped():
    # uniform over 2 classes has entropy exactly the float32 value of ln 2 (checked below):
    # a threshold equal to it must drop the pixel, a slightly larger one must keep it.
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 2] = 5.0
    ent = entropy(logits)
    boundary = float(ent[0, 0, 0])
    assert boundary == pytest.approx(math.log(2), rel=1e-6)
    out = EntropyPseudoLabeler(threshold=boundary)(logits)
    assert out.mask.tolist() == [[[False, False, True]]]
    assert out.labels.tolist() == [[[255, 255, 0]]]
    above = EntropyPseudoLabeler(threshold=float(np.nextafter(np.float32(boundary), np.float32(1))))(logits)
    assert above.mask.tolist() == [[[True, True, True]]]


def test_normalized_mode():
    logits = torch.tensor([[[[0.0]], [[0.0]], [[0.0]]], [[[4.0]], [[0.0]], [[0.0]]]])  # B=2, K=3
    ent_nats = numpy_entropy(logits.double().numpy())
    out = EntropyPseudoLabeler(threshold=0.5, normalized=True)(logits)
    np.testing.assert_allclose(out.entropy.numpy(), ent_nats / math.log(3), rtol=1e-6)
    # second pixel: H = 0.2718... nats = 0.2474 of log 3 -> kept; uniform (1.0) dropped
    assert out.mask.flatten().tolist() == [False, True]
    assert out.labels.flatten().tolist() == [255, 0]


def test_input_mask_forces_ignore_and_custom_ignore_index():
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 1] = 10.0  # all pixels confident in class 1
    pad = torch.tensor([[[True, False], [True, True]]])
    out = EntropyPseudoLabeler(threshold=0.5, ignore_index=-1)(logits, mask=pad)
    assert out.labels.tolist() == [[[1, -1], [1, 1]]]
    assert out.mask.tolist() == pad.tolist()
    assert float(out.kept_fraction) == 0.75


def test_outputs_detached_and_no_grad():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = EntropyPseudoLabeler(threshold=2.0)(logits)
    assert not out.entropy.requires_grad and not out.labels.requires_grad and not out.mask.requires_grad
    assert logits.grad is None


def test_fresh_teacher_keeps_nothing_and_loss_is_zero_with_graph():
    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(8, 3, 1)  # freshly initialised: near-uniform softmax
    features = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        teacher_logits = teacher(features)
    pl = EntropyPseudoLabeler(threshold=0.5)(teacher_logits)
    assert float(pl.kept_fraction) == 0.0
    assert bool((pl.labels == 255).all())
    student_logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    loss = masked_cross_entropy(student_logits, pl.labels, mask=pl.mask)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(student_logits.grad, torch.zeros_like(student_logits))


def test_kept_fraction_of_empty_batch_is_zero():
    out = EntropyPseudoLabeler(threshold=0.5)(torch.zeros(0, 3, 2, 2))
    assert out.labels.shape == (0, 2, 2) and float(out.kept_fraction) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        EntropyPseudoLabeler(threshold=0.0)
    with pytest.raises(ValueError, match="threshold"):
        EntropyPseudoLabeler(threshold=-1.0)
    with pytest.raises(ValueError, match="threshold"):
        EntropyPseudoLabeler(threshold=1.5, normalized=True)
    with pytest.raises(TypeError, match="threshold"):
        EntropyPseudoLabeler(threshold="0.5")
    with pytest.raises(TypeError, match="ignore_index"):
        EntropyPseudoLabeler(threshold=0.5, ignore_index=2.5)
    with pytest.raises(TypeError, match="normalized"):
        EntropyPseudoLabeler(threshold=0.5, normalized="yes")
    labeler = EntropyPseudoLabeler(threshold=0.5)
    with pytest.raises(ValueError, match="logits"):
        labeler(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="logits"):
        labeler(torch.zeros(1, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits"):
        labeler(torch.full((1, 3, 2, 2), float("inf")))
    with pytest.raises(ValueError, match="mask"):
        labeler(torch.zeros(1, 3, 4, 4), mask=torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        labeler(torch.zeros(1, 3, 4, 4), mask=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="ignore_index"):
        EntropyPseudoLabeler(threshold=0.5, ignore_index=1)(torch.zeros(1, 3, 2, 2))
