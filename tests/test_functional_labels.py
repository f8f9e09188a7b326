"""downsample_labels, masked_cross_entropy, the pixel helpers and the contract checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import densessl
from densessl.functional import (
    downsample_labels,
    flatten_pixels,
    masked_cross_entropy,
    normalize_pixels,
    unflatten_pixels,
)

IGN = 255


def _majority_oracle(labels: np.ndarray, factor: int, num_classes: int) -> np.ndarray:
    """Block-wise majority vote written as plain loops (ties -> smaller class)."""
    b, h, w = labels.shape
    out = np.full((b, h // factor, w // factor), IGN, dtype=np.int64)
    for i in range(b):
        for y in range(h // factor):
            for x in range(w // factor):
                block = labels[i, y * factor : (y + 1) * factor, x * factor : (x + 1) * factor].ravel()
                block = block[block != IGN]
                if block.size:
                    counts = np.bincount(block, minlength=num_classes)
                    out[i, y, x] = int(np.argmax(counts))
    return out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    factor=st.sampled_from([1, 2, 3, 4]),
    cells=st.integers(1, 4),
    k=st.integers(1, 5),
    ignore_frac=st.floats(0.0, 1.0),
)
def test_majority_matches_loop_oracle(seed, factor, cells, k, ignore_frac):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=(2, cells * factor, cells * factor))
    labels[rng.random(labels.shape) < ignore_frac] = IGN
    got = downsample_labels(torch.from_numpy(labels), cells, mode="majority", num_classes=k)
    np.testing.assert_array_equal(got.numpy(), _majority_oracle(labels, factor, k))


def test_majority_all_ignored_block_stays_ignored():
    y = torch.tensor([[[IGN, IGN, 1, 1], [IGN, IGN, 1, 0]]])
    assert downsample_labels(y, (1, 2), mode="majority").tolist() == [[[IGN, 1]]]


def test_nearest_takes_block_centre_and_preserves_ignore():
    # 4x4 -> 2x2 with nearest-exact samples input pixel 2*i + 1 (the centre-right of each block).
    y = torch.arange(16).reshape(1, 4, 4)
    y[0, 1, 1] = IGN
    got = downsample_labels(y, 2, mode="nearest")
    assert got.tolist() == [[[IGN, 7], [13, 15]]]
    assert got.dtype == torch.int64


def test_downsample_same_size_is_a_copy_and_upsampling_works():
    y = torch.randint(0, 3, (1, 5, 5))
    out = downsample_labels(y, (5, 5))
    assert torch.equal(out, y) and out.data_ptr() != y.data_ptr()
    up = downsample_labels(torch.tensor([[[0, 1]]]), (2, 4))
    assert up.tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1]]]


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(labels=torch.zeros(4, 4, dtype=torch.long), size=2), ValueError, "labels"),
        (dict(labels=torch.zeros(1, 4, 4), size=2), TypeError, "labels"),
        (dict(labels=torch.zeros(1, 4, 4, dtype=torch.long), size=0), ValueError, "size"),
        (dict(labels=torch.zeros(1, 4, 4, dtype=torch.long), size=(2, 2, 2)), ValueError, "size"),
        (dict(labels=torch.zeros(1, 4, 4, dtype=torch.long), size=2, mode="bilinear"), ValueError, "mode"),
        (dict(labels=torch.full((1, 4, 4), 7), size=2, num_classes=3, mode="majority"), ValueError, "labels"),
        (dict(labels=torch.full((1, 4, 4), -1), size=2, num_classes=3), ValueError, "labels"),
        # negative labels are out of range even without num_classes (nearest used to pass them
        # through silently, majority crashed in one_hot without naming the argument)
        (dict(labels=torch.full((1, 4, 4), -3), size=2), ValueError, "labels"),
        (dict(labels=torch.full((1, 4, 4), -3), size=2, mode="majority"), ValueError, "labels"),
        (dict(labels=torch.full((1, 4, 4), -3), size=4), ValueError, "labels"),
    ],
)
def test_downsample_rejects_bad_input(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        downsample_labels(**kwargs)


def test_downsample_negative_ignore_index_is_allowed():
    y = torch.tensor([[[-1, -1], [0, 1]]])
    assert downsample_labels(y, 1, ignore_index=-1, mode="majority").tolist() == [[[0]]]
    assert downsample_labels(y, (2, 1), ignore_index=-1).tolist() == [[[-1], [1]]]
    assert downsample_labels(torch.full((1, 2, 2), -1), 1, ignore_index=-1, mode="majority").tolist() == [[[-1]]]


# --------------------------------------------------------------------------- cross-entropy


def test_masked_ce_matches_torch_when_pixels_are_used():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    labels = torch.randint(0, 4, (2, 5, 6), generator=g)
    labels[0, :2] = IGN
    ours = masked_cross_entropy(logits, labels)
    ref = F.cross_entropy(logits, labels, ignore_index=IGN)
    torch.testing.assert_close(ours, ref)
    w = torch.tensor([0.5, 1.0, 2.0, 3.0])
    torch.testing.assert_close(
        masked_cross_entropy(logits, labels, weight=w), F.cross_entropy(logits, labels, weight=w, ignore_index=IGN)
    )


def test_masked_ce_mask_equals_ignoring_those_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (1, 4, 4), generator=g)
    mask = torch.rand(1, 4, 4, generator=g) > 0.5
    ref = F.cross_entropy(logits, torch.where(mask, labels, IGN), ignore_index=IGN)
    torch.testing.assert_close(masked_cross_entropy(logits, labels, mask=mask), ref)


def test_masked_ce_all_ignored_is_zero_with_graph_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.full((2, 4, 4), IGN)
    assert torch.isnan(F.cross_entropy(logits, labels, ignore_index=IGN))  # why this function exists
    loss = masked_cross_entropy(logits, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    wloss = masked_cross_entropy(logits, labels, weight=torch.ones(3))
    assert wloss.item() == 0.0


def test_masked_ce_half_precision_logits_give_float32_loss():
    logits = torch.randn(1, 3, 4, 4).to(torch.bfloat16)
    loss = masked_cross_entropy(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize(
    "logits, labels, kw, exc, word",
    [
        (torch.randn(3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), {}, ValueError, "logits"),
        (torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long), {}, ValueError, "labels"),
        (torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4), {}, TypeError, "labels"),
        (torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 3), {}, ValueError, "labels"),
        (
            torch.randn(1, 3, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"mask": torch.ones(1, 4, 4)},
            TypeError,
            "mask",
        ),
        (
            torch.randn(1, 3, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"weight": torch.ones(2)},
            ValueError,
            "weight",
        ),
        (torch.full((1, 3, 2, 2), float("nan")), torch.zeros(1, 2, 2, dtype=torch.long), {}, ValueError, "logits"),
        # weight that is not a float [K] tensor used to raise AttributeError or be cast silently
        (
            torch.randn(1, 3, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"weight": [1.0, 2.0, 3.0]},
            TypeError,
            "weight",
        ),
        (
            torch.randn(1, 3, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"weight": torch.ones(3, 1)},
            ValueError,
            "weight",
        ),
        (
            torch.randn(1, 3, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"weight": torch.ones(3, dtype=torch.long)},
            TypeError,
            "weight",
        ),
        (
            torch.randn(1, 3, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"weight": torch.tensor([1.0, float("nan"), 1.0])},
            ValueError,
            "weight",
        ),
    ],
)
def test_masked_ce_rejects_bad_input(logits, labels, kw, exc, word):
    with pytest.raises(exc, match=word):
        masked_cross_entropy(logits, labels, **kw)


# --------------------------------------------------------------------------- pixels and checks


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6))
def test_flatten_round_trip_and_row_order(b, c, h, w):
    x = torch.randn(b, c, h, w)
    rows = flatten_pixels(x)
    assert torch.equal(unflatten_pixels(rows, x.shape), x)
    bi, hi, wi = b - 1, h - 1, w - 1
    assert torch.equal(rows[(bi * h + hi) * w + wi], x[bi, :, hi, wi])


def test_normalize_pixels_unit_norm_and_zero_safe():
    x = torch.randn(2, 6, 3, 3) * 100
    x[0, :, 0, 0] = 0
    n = normalize_pixels(x).norm(dim=1)
    assert torch.allclose(n[n > 0], torch.ones_like(n[n > 0]))
    assert n[0, 0, 0] == 0
    with pytest.raises(ValueError, match="eps"):
        normalize_pixels(x, eps=0.0)


def test_value_checks_can_be_switched_off_and_restore():
    bad = torch.full((1, 3, 2, 2), float("inf"))
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="finite"):
        masked_cross_entropy(bad, labels)
    with densessl.value_checks(False):
        masked_cross_entropy(bad, labels)  # no check; the caller asked for speed
    assert densessl.value_checks_enabled()


def test_numpy_scalars_are_accepted_as_numbers_and_bools_are_not():
    import densessl._checks as checks

    assert checks.check_number("xi", np.float32(2.5), low=0.0) == 2.5
    assert type(checks.check_number("n", np.int64(3), low=1, integer=True)) is int
    with pytest.raises(TypeError, match="n must be an integer"):
        checks.check_number("n", np.float64(3.0), integer=True)
    with pytest.raises(TypeError, match="flag"):
        checks.check_number("flag", np.bool_(True))
    with pytest.raises(TypeError, match="flag"):
        checks.check_number("flag", True)
    layer = densessl.HardAnchorContrast(temperature=np.float64(0.5), num_anchors=np.int64(8))
    assert layer.num_anchors == 8


def test_labels_on_another_device_are_named():
    # A meta tensor stands in for a second device (CI has no GPU).
    from densessl._checks import check_same_spatial

    logits = torch.randn(1, 3, 2, 2)
    labels = torch.zeros(1, 2, 2, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="labels must be on the same device as logits"):
        check_same_spatial("logits", logits, "labels", labels)


def test_majority_min_fraction_ignores_blocks_labelled_from_few_pixels():
    # A 32x32 block got the label of its single kept pixel; with min_fraction the winner
    # must cover that share of the block (ignored pixels count in the block).
    y = torch.full((1, 4, 4), 255)
    y[0, 0, 0] = 2  # one kept pixel in the top-left 2x2 block
    y[0, 2:, 2:] = torch.tensor([[1, 1], [1, 0]])  # 3 of 4 in the bottom-right block
    assert downsample_labels(y, 2, mode="majority").tolist() == [[[2, 255], [255, 1]]]
    assert downsample_labels(y, 2, mode="majority", min_fraction=0.5).tolist() == [[[255, 255], [255, 1]]]
    assert downsample_labels(y, 2, mode="majority", min_fraction=1.0).tolist() == [[[255, 255], [255, 255]]]
    with pytest.raises(ValueError, match="min_fraction"):
        downsample_labels(y, 2, mode="majority", min_fraction=1.5)
    with pytest.raises(ValueError, match="min_fraction"):
        downsample_labels(y, 2, mode="nearest", min_fraction=0.5)
