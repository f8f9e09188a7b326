"""What to label next: low-density share, image entropy, rank combination, diverse top-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import densessl
from densessl.functional import diverse_top_k, image_entropy, low_density_fraction, rank_combined


def test_an_image_of_unseen_appearance_ranks_first_by_density():
    # a flow fitted on "labelled" features of two appearances; one unlabelled image shows a third
    torch.manual_seed(0)
    flow = densessl.FlowDensityHead(4, 2, depth=2, hidden=16)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    seen = torch.cat([torch.randn(8, 4, 6, 6) * 0.3 + 1.0, torch.randn(8, 4, 6, 6) * 0.3 - 1.0])
    for _ in range(150):
        loss = flow.nll(seen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    with torch.no_grad():
        reference = flow.log_prob(seen)
        unlabelled = torch.cat(
            [
                torch.randn(5, 4, 6, 6) * 0.3 + 1.0,
                torch.randn(1, 4, 6, 6) * 0.3 + 4.0,
                torch.randn(4, 4, 6, 6) * 0.3 - 1.0,
            ]
        )  # image 5 is the new appearance
        scores = low_density_fraction(flow.log_prob(unlabelled), reference, quantile=0.05)
    assert int(scores.argmax()) == 5 and float(scores[5]) > 0.9
    assert float(scores[torch.arange(10) != 5].max()) < 0.3


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.99))
def test_low_density_fraction_matches_a_numpy_count(seed, q):
    g = torch.Generator().manual_seed(seed)
    log_prob = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    reference = torch.randn(50, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, 5, generator=g) > 0.3
    got = low_density_fraction(log_prob, reference, quantile=q, mask=mask)
    threshold = np.quantile(reference.numpy(), q)
    for b in range(3):
        m = mask[b].numpy()
        want = (log_prob[b].numpy()[m] < threshold).mean() if m.any() else 0.0
        assert float(got[b]) == pytest.approx(want, abs=1e-6)


def test_image_entropy_is_the_mean_normalised_entropy_over_the_mask():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 0] = 20.0  # image 0: certain everywhere
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    mask[1, 0] = False
    got = image_entropy(logits, mask=mask)
    assert float(got[0]) < 1e-6 and float(got[1]) == pytest.approx(1.0)


def test_duplicates_do_not_fill_the_top_k():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 16))
    # image 0 has four near-duplicates (1..4), all scoring high; 5..10 are distinct, scoring lower
    features = np.concatenate(
        [np.repeat(base[:1], 5, axis=0) + rng.normal(scale=0.01, size=(5, 16)), rng.normal(size=(6, 16))]
    )
    scores = torch.tensor([1.0, 0.99, 0.98, 0.97, 0.96, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25])
    features = torch.tensor(features)
    plain = diverse_top_k(scores, features, k=4, diversity=0.0).tolist()
    diverse = diverse_top_k(scores, features, k=4, diversity=0.5).tolist()
    assert plain == [0, 1, 2, 3]
    assert diverse[0] == 0 and len(set(diverse) & {0, 1, 2, 3, 4}) == 1
    assert diverse_top_k(scores, features, k=50).numel() == 11  # at most N, no repeats
    assert len(set(diverse_top_k(scores, features, k=50).tolist())) == 11


def test_rank_combination_and_bad_inputs():
    assert rank_combined(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 5.0]), weight=1.0).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="same shape"):
        rank_combined(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="reference must hold"):
        low_density_fraction(torch.zeros(1, 2, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="quantile"):
        low_density_fraction(torch.zeros(1, 2, 2), torch.zeros(3), quantile=1.0)
    with pytest.raises(ValueError, match="one row per score"):
        diverse_top_k(torch.ones(3), torch.ones(2, 4), k=1)
    with pytest.raises(ValueError, match=r"log_prob must be a 3-D tensor \[B, H, W\]"):
        low_density_fraction(torch.zeros(2, 2), torch.zeros(3))
